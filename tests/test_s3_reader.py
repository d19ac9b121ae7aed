"""engine/storage/s3read.py: the boto3-free, read-only S3 backend restores use.

Its signatures are checked against AWS's published example and against botocore's own signer
(keys and query values that need escaping, a session token); its reads against a real S3 server
(SeaweedFS) next to the boto3 backend, and a whole restore through it.
"""

from __future__ import annotations

import datetime
import os
import unittest.mock
import uuid

import pytest
from walrewind.engine.errors import ObjectNotFound, StorageError
from walrewind.engine.storage import ObjectInfo, open_storage
from walrewind.engine.storage.s3 import S3Storage
from walrewind.engine.storage.s3read import S3Reader
from walrewind.engine.storage.s3write import S3Writer

WHEN = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    return monkeypatch


def test_signature_matches_the_aws_example():
    reader = S3Reader("examplebucket", "", "s3://examplebucket", "https://s3.amazonaws.com", "us-east-1", False,
                      ("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", None), 10, 30, 5)
    path, query = reader._target("test.txt", None)
    headers = reader._sign(path, query, {"Range": "bytes=0-9"}, now=datetime.datetime(2013, 5, 24, tzinfo=datetime.timezone.utc))
    assert headers["Authorization"].endswith("Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    assert "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date," in headers["Authorization"]


@pytest.mark.parametrize("key, params", [
    ("gen/a b+c=d~e.seg", None),
    (None, {"list-type": "2", "prefix": "pre fix+x/gen/", "continuation-token": "a/b+c==", "max-keys": "1"}),
])
def test_signature_matches_botocore(key, params):
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    reader = S3Reader("bkt", "pre fix+x/", "s3://bkt", "http://127.0.0.1:9000", "eu-west-1", True,
                      ("AK", "SK/x+y", "TOKEN"), 10, 30, 5)
    path, query = reader._target(key, params)
    mine = reader._sign(path, query, {"Range": "bytes=5-9"}, now=WHEN)
    request = AWSRequest(method="GET", url=f"http://127.0.0.1:9000{path}" + (f"?{query}" if query else ""),
                         headers={"Range": "bytes=5-9"})
    with unittest.mock.patch.object(botocore.auth, "get_current_datetime", return_value=WHEN.replace(tzinfo=None)):
        botocore.auth.S3SigV4Auth(Credentials("AK", "SK/x+y", "TOKEN"), "s3", "eu-west-1").add_auth(request)
    assert request.headers["X-Amz-Date"] == mine["x-amz-date"]
    assert mine["Authorization"].split("Signature=")[1] == request.headers["Authorization"].split("Signature=")[1]


def test_used_only_when_credentials_and_region_need_no_lookup(clean_env, tmp_path):
    endpoint = "?endpoint=http://127.0.0.1:9"
    assert S3Reader.from_url("s3://bkt/p" + endpoint) is None  # boto3's chain would decide the credentials
    assert isinstance(S3Reader.from_url("s3://AK:SK@bkt/p" + endpoint), S3Reader)
    assert S3Reader.from_url("s3://AK:SK@bkt/p") is None  # AWS without a region: boto3 (redirects)
    reader = S3Reader.from_url("s3://AK:S%2FK@bkt/p?region=eu-west-1")
    assert reader is not None and reader.endpoint == "https://s3.eu-west-1.amazonaws.com" and reader._creds[1] == "S/K"
    assert "AK" not in reader.url and reader.url == "s3://bkt/p?region=eu-west-1"
    clean_env.setenv("AWS_ACCESS_KEY_ID", "AK")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "SK")
    assert isinstance(S3Reader.from_url("s3://bkt/p" + endpoint), S3Reader)
    clean_env.setenv("AWS_PROFILE", "work")  # boto3 would use the profile instead
    assert S3Reader.from_url("s3://bkt/p" + endpoint) is None
    clean_env.delenv("AWS_PROFILE")
    (tmp_path / "no-aws-config").write_text("[default]\nregion = eu-central-1\n")
    assert S3Reader.from_url("s3://bkt/p" + endpoint) is None  # the region comes from the config file
    assert S3Reader.from_url("s3://bkt/p" + endpoint + "&region=eu-west-1") is not None
    assert S3Reader.from_url("s3://bkt/p" + endpoint + "&endpiont=x") is None  # S3Storage reports it


@pytest.mark.s3
def test_reads_like_the_boto3_backend(seaweed_s3, clean_env):
    prefix = f"reader/{uuid.uuid4().hex}"
    url = seaweed_s3.url(prefix).replace("s3://", "s3://AK:SK@")
    writer = S3Storage.from_url(url)  # the boto3 backend, to compare with (open_storage would give S3Writer)
    keys = {f"many/{i:05d}": os.urandom(i % 7) for i in range(1050)}
    keys.update({"a b/c+d=e.bin": b"x" * 100, "a-b": b"333"})
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: writer.put_if_absent(*kv), keys.items()))
    reader = open_storage(url, create=False, read_only=True)
    assert isinstance(reader, S3Reader) and isinstance(writer, S3Storage)
    assert list(reader.list("")) == list(writer.list(""))
    assert [o.key for o in reader.list("a")] == ["a b/c+d=e.bin", "a-b"]
    assert reader.get("a b/c+d=e.bin") == b"x" * 100
    assert reader.get_range("a b/c+d=e.bin", 90, 20) == b"x" * 10
    assert reader.get_range("a b/c+d=e.bin", 100, 5) == b""
    assert list(reader.list("many/0000")) == [ObjectInfo(f"many/{i:05d}", i % 7) for i in range(10)]
    with pytest.raises(ObjectNotFound, match="missing/key"):
        reader.get("missing/key")
    with pytest.raises(ObjectNotFound, match="missing/key"):
        reader.get_range("missing/key", 0, 10)
    with pytest.raises(StorageError, match="read-only"):
        reader.put_if_absent("k", b"v")
    with pytest.raises(StorageError, match="read-only"):
        reader.delete("a-b")
    big = os.urandom(3 * 1024 * 1024 + 17)
    writer.put_if_absent("big", big)
    reader.range_chunk = 1024 * 1024
    assert reader.get_to_file("big", str(seaweed_s3.workdir) + "/big.out") == len(big)
    with open(str(seaweed_s3.workdir) + "/big.out", "rb") as f:
        assert f.read() == big
    os.unlink(str(seaweed_s3.workdir) + "/big.out")
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        open_storage(url.replace(seaweed_s3.bucket, "no-such-bucket", 1), create=False, read_only=True)
    reader.close()
    writer.close()


def test_unreachable_endpoint_names_it(clean_env):
    from seaweed_server import free_ports

    (port,) = free_ports(1)
    url = f"s3://AK:SK@b/x?endpoint=http://127.0.0.1:{port}&max_attempts=2&connect_timeout=2"
    reader = S3Reader.from_url(url)
    reader.retry.sleep = lambda s: None
    with pytest.raises(StorageError, match=f"s3://b/x/k: get failed: cannot reach endpoint http://127.0.0.1:{port}.*after 2 attempts"):
        reader.get("k")
    assert reader.retry_stats.retries == 1


@pytest.mark.s3
def test_restore_through_the_reader_survives_a_truncated_snapshot(seaweed_s3, clean_env, tmp_path):
    from harness import DaemonThread, create_db, read_log, run_writer
    from walrewind.engine.maintenance.snapshots import build_snapshot
    from walrewind.engine.restore.restorer import restore

    url = seaweed_s3.url(f"reader-restore/{uuid.uuid4().hex}").replace("s3://", "s3://AK:SK@")
    db, log = str(tmp_path / "app.db"), str(tmp_path / "log")
    create_db(db)
    with DaemonThread(db, url, str(tmp_path / "state")):
        run_writer({"db": db, "log": log, "checksums": True, "rate": 200, "txns": 120, "seed": 8, "big_every": 30})
    txns, _ = read_log(log)
    full = open_storage(url, create=False)
    newer = build_snapshot(full, txid=60, workdir=str(tmp_path))
    client = seaweed_s3.client()
    key = full.prefix + newer.key
    body = client.get_object(Bucket=seaweed_s3.bucket, Key=key)["Body"].read()
    client.put_object(Bucket=seaweed_s3.bucket, Key=key, Body=body[: len(body) // 2])  # truncated in place
    reader = open_storage(url, create=False, read_only=True)
    assert isinstance(reader, S3Reader)
    result = restore(reader, str(tmp_path / "latest.db"))
    assert f"{result.checksum:016x}" == txns[-1]["checksum"] and result.quick_check == "ok"
    assert list(result.skipped) == [newer.key] and any(newer.key in w for w in result.warnings)
    assert restore(full, str(tmp_path / "boto3.db")).checksum == result.checksum


def test_https_endpoint_with_a_private_ca(clean_env, tmp_path):
    """TLS through AWS_CA_BUNDLE (as boto3 honours it), against a minimal S3 look-alike."""
    import http.server
    import shutil
    import ssl
    import subprocess
    import threading
    from urllib.parse import parse_qs, urlparse

    if shutil.which("openssl") is None:
        pytest.skip("openssl not available to make a certificate")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    objects = {"p/generations/a": b"0123456789", "p/generations/b": b"xyz"}
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 - http.server's naming
            seen.append(self.headers.get("Authorization", ""))
            url = urlparse(self.path)
            if url.path == "/bkt/":
                prefix = parse_qs(url.query).get("prefix", [""])[0]
                items = "".join(f"<Contents><Key>{k}</Key><Size>{len(v)}</Size></Contents>"
                                for k, v in sorted(objects.items()) if k.startswith(prefix))
                body = f"<ListBucketResult><IsTruncated>false</IsTruncated>{items}</ListBucketResult>".encode()
                status = 200
            elif url.path[len("/bkt/"):] in objects:
                body, status = objects[url.path[len("/bkt/"):]], 200
                if self.headers.get("Range"):
                    lo, hi = (int(x) for x in self.headers["Range"].split("=")[1].split("-"))
                    body, status = body[lo : hi + 1], 206
            else:
                body, status = b"<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>", 404
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"s3://AK:SK@bkt/p?endpoint=https://127.0.0.1:{server.server_address[1]}&max_attempts=1"
        clean_env.setenv("AWS_CA_BUNDLE", cert)
        reader = S3Reader.from_url(url)
        assert [o.key for o in reader.list("generations/")] == ["generations/a", "generations/b"]
        assert reader.get_range("generations/a", 2, 3) == b"234" and reader.get("generations/b") == b"xyz"
        with pytest.raises(ObjectNotFound, match="generations/c"):
            reader.get("generations/c")
        assert all(a.startswith("AWS4-HMAC-SHA256 Credential=AK/") for a in seen)
        reader.close()
        clean_env.delenv("AWS_CA_BUNDLE")  # an unknown CA is refused, not ignored
        strict = S3Reader.from_url(url.replace("max_attempts=1", "max_attempts=3"))
        with pytest.raises(StorageError, match="CERTIFICATE_VERIFY_FAILED") as err:
            strict.get("generations/b")
        assert "after 3 attempts" not in str(err.value) and strict.retry_stats.retries == 0
    finally:
        server.shutdown()


@pytest.mark.s3
def test_writer_without_boto3_interoperates_with_the_boto3_backend(seaweed_s3, clean_env):
    url = seaweed_s3.url(f"writer/{uuid.uuid4().hex}").replace("s3://", "s3://AK:SK@")
    light, full = open_storage(url), S3Storage.from_url(url)
    assert isinstance(light, S3Writer)
    assert light.put_if_absent("seg/0001", b"one") is True
    assert full.put_if_absent("seg/0001", b"other") is False  # what S3Writer made, boto3 sees as there
    assert full.put_if_absent("seg/0002", b"two") is True
    assert light.put_if_absent("seg/0002", b"other") is False
    light.put("lease/current", b"epoch 3")
    assert full.get("lease/current") == b"epoch 3" and light.get("seg/0002") == b"two"
    light.delete("seg/0002")
    light.delete("seg/0002")  # idempotent
    assert [o.key for o in full.list("")] == ["lease/current", "seg/0001"]
    light.probe()
    light.close()
    full.close()


def test_writer_unreachable_is_store_unreachable(clean_env):
    from seaweed_server import free_ports
    from walrewind.engine.errors import StoreUnreachable

    (port,) = free_ports(1)
    writer = S3Writer.from_url(f"s3://AK:SK@b/x?endpoint=http://127.0.0.1:{port}&max_attempts=2&connect_timeout=2")
    writer.retry.sleep = lambda s: None
    with pytest.raises(StoreUnreachable, match=f"s3://b/x/k: create failed: cannot reach endpoint http://127.0.0.1:{port}"):
        writer.put_if_absent("k", b"v")
    with pytest.raises(StoreUnreachable, match="probe failed"):
        writer.probe()
