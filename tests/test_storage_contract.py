"""The Storage contract, checked against every backend: the local directory and S3 (SeaweedFS).

Anything the engine relies on (create-only writes, sorted relative listings, idempotent deletes,
errors that name the location) must hold for both, so each test runs once per backend.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pytest
from botocore.exceptions import ClientError
from seaweed_server import free_ports
from walrewind.engine.errors import ObjectConflict, ObjectNotFound, StorageError
from walrewind.engine.storage import (
    ObjectInfo,
    Storage,
    open_storage,
    put_file_immutable,
    put_immutable,
)
from walrewind.engine.storage.local import LocalStorage
from walrewind.engine.storage.s3 import S3Storage
from walrewind.engine.storage.s3write import S3Writer

MiB = 1 << 20


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3), pytest.param("s3-light", marks=pytest.mark.s3)])
def storage(request, tmp_path) -> Iterator[Storage]:
    if request.param == "local":
        store: Storage = LocalStorage(str(tmp_path / "replica"))
    elif request.param == "s3":
        server = request.getfixturevalue("seaweed_s3")
        store = open_storage(server.url(f"contract/{uuid.uuid4().hex}"))
        assert isinstance(store, S3Storage)  # no credentials given: boto3's chain decides
    else:
        server = request.getfixturevalue("seaweed_s3")
        url = server.url(f"contract/{uuid.uuid4().hex}").replace("s3://", "s3://walrewind:walrewind@", 1)
        store = open_storage(url)
        assert isinstance(store, S3Writer)  # explicit credentials: no boto3 on the write path
    try:
        yield store
    finally:
        store.close()


def write_random_file(path, size: int) -> str:
    """Write ``size`` random bytes in 1 MiB chunks; returns the SHA-256 of the content."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            chunk = os.urandom(min(MiB, remaining))
            digest.update(chunk)
            f.write(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


# -- the contract, per backend ---------------------------------------------------------------


def test_put_get_round_trip(storage: Storage) -> None:
    storage.put("a/b/c.bin", b"hello")
    assert storage.get("a/b/c.bin") == b"hello"
    storage.put("a/b/c.bin", b"replaced")  # plain put is for scratch keys and may overwrite
    assert storage.get("a/b/c.bin") == b"replaced"
    storage.put("empty", b"")
    assert storage.get("empty") == b""


def test_get_missing_raises_object_not_found_naming_key(storage: Storage) -> None:
    with pytest.raises(ObjectNotFound, match="missing/key.bin"):
        storage.get("missing/key.bin")


def test_put_if_absent_never_overwrites(storage: Storage) -> None:
    assert storage.put_if_absent("seg/0001", b"first") is True
    assert storage.put_if_absent("seg/0001", b"second") is False
    assert storage.put_if_absent("seg/0001", b"first") is False
    assert storage.get("seg/0001") == b"first"


def test_a_marker_is_an_empty_create_only_object(storage: Storage) -> None:
    """Heartbeats and lease renewals: an empty object, created once, listed with size 0."""
    assert storage.put_marker("hb/0001-0005") is True
    assert storage.put_marker("hb/0001-0005") is False
    assert storage.get("hb/0001-0005") == b""
    assert [(o.key, o.size) for o in storage.list("hb/")] == [("hb/0001-0005", 0)]


def test_replace_marker_leaves_the_new_marker_only(storage: Storage) -> None:
    """A heartbeat replaces the previous one (restores read the newest): afterwards the new name
    holds an empty object and the old name nothing, in one directory or across two (a new
    generation); an old marker already gone, or none, just makes the new one."""
    assert storage.put_marker("g1/hb/0001-0005") is True
    storage.replace_marker("g1/hb/0001-0005", "g1/hb/0002-0005")
    assert [(o.key, o.size) for o in storage.list("g1/")] == [("g1/hb/0002-0005", 0)]
    storage.replace_marker("g1/hb/0002-0005", "g2/hb/0003-0006")
    assert [o.key for o in storage.list("g")] == ["g2/hb/0003-0006"]
    storage.replace_marker("g2/hb/0000-0000", "g2/hb/0004-0007")  # the old one was pruned
    storage.replace_marker(None, "g2/hb/0005-0007")  # a daemon's first
    assert [o.key for o in storage.list("g")] == ["g2/hb/0003-0006", "g2/hb/0004-0007", "g2/hb/0005-0007"]
    assert storage.get("g2/hb/0005-0007") == b""


def test_get_if_present_answers_none_for_a_missing_object(storage: Storage) -> None:
    """The lease check with every heartbeat: usually nothing there."""
    assert storage.get_if_present("lease/0000000000000002") is None
    assert storage.put_if_absent("lease/0000000000000002", b"holder")
    assert storage.get_if_present("lease/0000000000000002") == b"holder"


def test_put_immutable_identical_is_noop_and_different_conflicts(storage: Storage) -> None:
    assert put_immutable(storage, "gen/1/seg", b"payload") is True
    assert put_immutable(storage, "gen/1/seg", b"payload") is False
    with pytest.raises(ObjectConflict, match="gen/1/seg"):
        put_immutable(storage, "gen/1/seg", b"other payload")
    assert storage.get("gen/1/seg") == b"payload"


def test_list_returns_sorted_relative_keys_with_sizes(storage: Storage) -> None:
    objects = {"b/c/d": b"1234", "a/2": b"22", "ab": b"", "a/1": b"1", "a-b": b"333", "a/sub/x": b"xx"}
    for key, data in objects.items():
        assert storage.put_if_absent(key, data)

    # Code point order: "-" (0x2d) < "/" (0x2f) < "b".  SeaweedFS itself lists "a/..." before "a-b".
    assert list(storage.list("")) == [
        ObjectInfo("a-b", 3),
        ObjectInfo("a/1", 1),
        ObjectInfo("a/2", 2),
        ObjectInfo("a/sub/x", 2),
        ObjectInfo("ab", 0),
        ObjectInfo("b/c/d", 4),
    ]
    assert [o.key for o in storage.list("a/")] == ["a/1", "a/2", "a/sub/x"]
    assert [o.key for o in storage.list("a")] == ["a-b", "a/1", "a/2", "a/sub/x", "ab"]
    assert [o.key for o in storage.list("a/s")] == ["a/sub/x"]
    assert [o.key for o in storage.list("b/c/")] == ["b/c/d"]
    assert list(storage.list("nothing/")) == []


@pytest.mark.slow
def test_list_more_than_one_page(storage: Storage) -> None:
    # S3 returns at most 1000 keys per ListObjectsV2 call; 1100 forces a continuation token.
    keys = [f"many/{i:05d}" for i in range(1100)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        assert all(pool.map(lambda k: storage.put_if_absent(k, k.encode()), keys))
    listed = list(storage.list("many/"))
    assert [o.key for o in listed] == keys
    assert {o.size for o in listed} == {len(keys[0])}
    assert [o.key for o in storage.list("many/009")] == [f"many/{i:05d}" for i in range(900, 1000)]


def test_delete_is_idempotent(storage: Storage) -> None:
    storage.put("d/x", b"x")
    storage.delete("d/x")
    with pytest.raises(ObjectNotFound):
        storage.get("d/x")
    storage.delete("d/x")
    storage.delete("never/existed")
    assert list(storage.list("d/")) == []
    assert storage.put_if_absent("d/x", b"again") is True


def test_put_file_if_absent_small(storage: Storage, tmp_path) -> None:
    path = tmp_path / "small.bin"
    path.write_bytes(b"small file")
    other = tmp_path / "other.bin"
    other.write_bytes(b"different")
    assert storage.put_file_if_absent("files/small", str(path)) is True
    assert storage.put_file_if_absent("files/small", str(other)) is False
    assert storage.get("files/small") == b"small file"
    assert put_file_immutable(storage, "files/small", str(path)) is False
    with pytest.raises(ObjectConflict):
        put_file_immutable(storage, "files/small", str(other))


@pytest.mark.slow
def test_put_file_if_absent_large(storage: Storage, tmp_path) -> None:
    # Over the 64 MiB multipart threshold, with a short last part.
    size = 64 * MiB + 3 * MiB + 12345
    path = tmp_path / "large.bin"
    digest = write_random_file(path, size)
    other = tmp_path / "other.bin"
    other.write_bytes(b"x")

    assert storage.put_file_if_absent("files/large", str(path)) is True
    assert storage.put_file_if_absent("files/large", str(path)) is False
    assert storage.put_file_if_absent("files/large", str(other)) is False
    assert list(storage.list("files/")) == [ObjectInfo("files/large", size)]
    assert hashlib.sha256(storage.get("files/large")).hexdigest() == digest


# -- S3 specifics ----------------------------------------------------------------------------


@pytest.fixture
def s3_store(seaweed_s3) -> Iterator[S3Storage]:
    store = S3Storage.from_url(seaweed_s3.url(f"contract/{uuid.uuid4().hex}"))
    try:
        yield store
    finally:
        store.close()


def _pending_uploads(seaweed_s3, store: S3Storage) -> list[str]:
    client = seaweed_s3.client()
    try:
        uploads = client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix).get("Uploads", [])
    finally:
        client.close()
    return [u["Key"] for u in uploads]


@pytest.mark.s3
def test_s3_keys_live_under_the_prefix(seaweed_s3, s3_store: S3Storage) -> None:
    s3_store.put("k/1", b"v")
    client = seaweed_s3.client()
    try:
        body = client.get_object(Bucket=seaweed_s3.bucket, Key=s3_store.prefix + "k/1")["Body"].read()
    finally:
        client.close()
    assert body == b"v"
    assert s3_store.prefix.startswith("contract/") and s3_store.prefix.endswith("/")


@pytest.mark.slow
@pytest.mark.s3
def test_s3_multipart_falls_back_when_conditional_complete_is_rejected(
    seaweed_s3, s3_store: S3Storage, tmp_path, monkeypatch
) -> None:
    """Servers without If-None-Match on CompleteMultipartUpload: HEAD, then complete plainly."""
    monkeypatch.setattr(s3_store, "multipart_threshold", 5 * MiB)
    monkeypatch.setattr(s3_store, "part_size", 5 * MiB)
    real_complete = s3_store._client.complete_multipart_upload
    conditional_calls = []

    def complete(**kwargs):
        if "IfNoneMatch" in kwargs:
            conditional_calls.append(kwargs["Key"])
            raise ClientError(
                {"Error": {"Code": "NotImplemented", "Message": "not supported"},
                 "ResponseMetadata": {"HTTPStatusCode": 501}},
                "CompleteMultipartUpload",
            )
        return real_complete(**kwargs)

    monkeypatch.setattr(s3_store._client, "complete_multipart_upload", complete)
    path = tmp_path / "mid.bin"
    digest = write_random_file(path, 11 * MiB + 7)
    assert s3_store.put_file_if_absent("mp/obj", str(path)) is True
    assert conditional_calls == [s3_store.prefix + "mp/obj"]
    assert s3_store.put_file_if_absent("mp/obj", str(path)) is False
    assert hashlib.sha256(s3_store.get("mp/obj")).hexdigest() == digest
    assert _pending_uploads(seaweed_s3, s3_store) == []


@pytest.mark.slow
@pytest.mark.s3
def test_s3_multipart_failure_aborts_upload(seaweed_s3, s3_store: S3Storage, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(s3_store, "multipart_threshold", 5 * MiB)
    monkeypatch.setattr(s3_store, "part_size", 5 * MiB)
    real_upload_part = s3_store._client.upload_part

    def upload_part(**kwargs):
        if kwargs["PartNumber"] == 2:
            raise ClientError(
                {"Error": {"Code": "InternalError", "Message": "injected"},
                 "ResponseMetadata": {"HTTPStatusCode": 500}},
                "UploadPart",
            )
        return real_upload_part(**kwargs)

    monkeypatch.setattr(s3_store._client, "upload_part", upload_part)
    path = tmp_path / "mid.bin"
    write_random_file(path, 11 * MiB)
    with pytest.raises(StorageError, match="mp/broken.*injected"):
        s3_store.put_file_if_absent("mp/broken", str(path))
    assert _pending_uploads(seaweed_s3, s3_store) == []
    with pytest.raises(ObjectNotFound):
        s3_store.get("mp/broken")


@pytest.mark.s3
def test_s3_reader_on_missing_bucket_names_bucket(seaweed_s3) -> None:
    url = f"s3://nonexistent-bucket/x?endpoint={seaweed_s3.endpoint}"
    with pytest.raises(StorageError, match="bucket 'nonexistent-bucket' does not exist"):
        open_storage(url, create=False)


@pytest.mark.s3
def test_s3_reader_on_existing_bucket_opens(seaweed_s3) -> None:
    store = open_storage(seaweed_s3.url(f"contract/{uuid.uuid4().hex}"), create=False)
    try:
        assert list(store.list("")) == []
    finally:
        store.close()


@pytest.mark.slow
def test_s3_unreachable_endpoint_names_endpoint() -> None:
    (port,) = free_ports(1)  # nothing listens here
    endpoint = f"http://127.0.0.1:{port}"
    url = f"s3://walrewind-test/x?endpoint={endpoint}&max_attempts=1&connect_timeout=2"
    with pytest.raises(StorageError, match=f"cannot reach endpoint {endpoint}"):
        open_storage(url, create=False)
    store = open_storage(url, create=True)  # writers do not probe up front; the first call fails
    try:
        with pytest.raises(StorageError, match=f"s3://walrewind-test/x/k: .*cannot reach endpoint {endpoint}"):
            store.get("k")
    finally:
        store.close()


def test_s3_probe_is_one_request_and_says_unreachable() -> None:
    """The daemon probes an unreachable store every fraction of a second: one request, no retries,
    and StoreUnreachable (a StorageError the daemon waits out) rather than a permanent failure."""
    import time

    from walrewind.engine.errors import StoreUnreachable

    (port,) = free_ports(1)  # nothing listens here
    store = open_storage(f"s3://walrewind-test/x?endpoint=http://127.0.0.1:{port}&connect_timeout=2", create=True)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnreachable, match=f"probe failed: cannot reach endpoint http://127.0.0.1:{port}"):
            store.probe()
        assert store.request_counts() == {"ListObjectsV2": 1} and time.monotonic() - started < 2
        with pytest.raises(StoreUnreachable, match="after 5 attempts"):  # ordinary calls retry first
            store.get("k")
    finally:
        store.close()


@pytest.mark.s3
def test_s3_probe_answers_when_the_store_does(seaweed_s3) -> None:
    store = open_storage(seaweed_s3.url(f"contract/{uuid.uuid4().hex}"))
    try:
        store.probe()
        assert store.request_counts() == {"ListObjectsV2": 1}
    finally:
        store.close()


@pytest.mark.s3
def test_s3_endpoint_from_environment(seaweed_s3, monkeypatch) -> None:
    """No ?endpoint=: boto3 takes AWS_ENDPOINT_URL_S3, and path style / dummy credentials follow."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", seaweed_s3.endpoint)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    store = open_storage(f"s3://{seaweed_s3.bucket}/contract/{uuid.uuid4().hex}", create=False)
    try:
        assert store.put_if_absent("env/k", b"v") is True
        assert store.get("env/k") == b"v"
    finally:
        store.close()


def test_s3_url_parsing_without_network() -> None:
    store = S3Storage.from_url(
        "s3://AKIDEXAMPLE:s3cr3t%2Fx@bkt/some/prefix/?endpoint=http://127.0.0.1:9&region=eu-west-1"
    )
    try:
        assert "s3cr3t" not in store.url and "AKIDEXAMPLE" not in store.url
        assert store.url == "s3://bkt/some/prefix/?endpoint=http://127.0.0.1:9&region=eu-west-1"
        assert (store.bucket, store.prefix, store.endpoint) == ("bkt", "some/prefix/", "http://127.0.0.1:9")
    finally:
        store.close()
    with pytest.raises(StorageError, match="unknown query parameter.*endpiont"):
        S3Storage.from_url("s3://bkt/p?endpiont=http://127.0.0.1:9")
    with pytest.raises(StorageError, match="no bucket"):
        S3Storage.from_url("s3:///p")


@pytest.mark.slow
@pytest.mark.s3
def test_s3_server_restart_keeps_data_and_outage_is_a_storage_error(seaweed_s3) -> None:
    """The fixture's stop()/start() (used by outage tests) keeps ports and data."""
    url = seaweed_s3.url(f"contract/{uuid.uuid4().hex}")
    store = open_storage(url)
    impatient = open_storage(url + "&max_attempts=1&connect_timeout=2")
    try:
        assert store.put_if_absent("before", b"survives") is True
        pid = seaweed_s3.pid
        seaweed_s3.stop()
        assert seaweed_s3.pid is None
        with pytest.raises(StorageError, match=f"cannot reach endpoint {seaweed_s3.endpoint}"):
            impatient.get("before")
        seaweed_s3.start()
        assert seaweed_s3.pid not in (None, pid)
        assert store.get("before") == b"survives"
        assert store.put_if_absent("before", b"other") is False
        assert store.put_if_absent("after", b"new") is True
    finally:
        store.close()
        impatient.close()


def test_local_delete_removes_empty_directories_only(tmp_path) -> None:
    """Retention and compaction delete whole generations: no tree of empty directories stays."""
    store = LocalStorage(str(tmp_path / "rep"))
    store.put_if_absent("generations/g1/segments/a", b"1")
    store.put_if_absent("generations/g1/snapshots/b", b"2")
    store.delete("generations/g1/segments/a")
    assert not (tmp_path / "rep" / "generations" / "g1" / "segments").exists()
    assert store.get("generations/g1/snapshots/b") == b"2"
    store.delete("generations/g1/snapshots/b")
    assert os.listdir(tmp_path / "rep") == []  # the replica root itself stays
    assert store.put_if_absent("generations/g1/segments/a", b"3")  # and can be written again


@pytest.mark.parametrize("unnamed", [True, False])
def test_local_create_only_put_leaves_no_temp_file(tmp_path, unnamed) -> None:
    """The unnamed-file protocol (O_TMPFILE + linkat) and the named one (mkstemp + link) agree:
    create-only, nothing left beside the object, an existing object never replaced."""
    store = LocalStorage(str(tmp_path / "rep"))
    store._unnamed = store._unnamed and unnamed
    assert store.put_if_absent("generations/g1/segments/a", b"first")
    assert store.put_if_absent("generations/g1/segments/a", b"second") is False
    src = tmp_path / "src"
    src.write_bytes(b"x" * 3_000_000)
    assert store.put_file_if_absent("generations/g1/segments/b", str(src))
    other = tmp_path / "other"
    other.write_bytes(b"y")
    assert store.put_file_if_absent("generations/g1/segments/b", str(other)) is False
    assert store.get("generations/g1/segments/a") == b"first"
    assert store.get("generations/g1/segments/b") == src.read_bytes()
    assert sorted(os.listdir(tmp_path / "rep" / "generations" / "g1" / "segments")) == ["a", "b"]


def test_local_put_remakes_a_directory_another_store_removed(tmp_path) -> None:
    """Known directories are cached; one removed under the cache (another process's retention
    deleting a generation's last object) is made again at the next put."""
    store, other = LocalStorage(str(tmp_path / "rep")), LocalStorage(str(tmp_path / "rep"))
    assert store.put_if_absent("generations/g1/segments/a", b"1")
    other.delete("generations/g1/segments/a")
    assert not (tmp_path / "rep" / "generations").exists()
    assert store.put_if_absent("generations/g1/segments/b", b"2")
    assert store.get("generations/g1/segments/b") == b"2"
    store._unnamed = False
    other.delete("generations/g1/segments/b")
    assert store.put_if_absent("generations/g1/segments/c", b"3")
    assert [o.key for o in store.list("generations/")] == ["generations/g1/segments/c"]
