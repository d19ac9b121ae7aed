"""Faults between the daemon (or a restore) and S3, and damage to stored objects.

* A fault-injecting proxy (tests/faultproxy.py) in front of SeaweedFS drops connections before and
  after the server handled a request, answers 500/503, delays and stalls answers past the read
  timeout, and cuts response bodies short, during replication *and* during restores: restores
  stay exact and the history continuous.
* A flipped bit, a truncated object, a missing segment, two overlapping writers: restore refuses,
  naming the object and the last point that can still be restored.
"""

from __future__ import annotations

import os
import uuid

import pytest
from faultproxy import FaultProxy
from harness import (
    DaemonThread,
    assert_no_invented_states,
    create_db,
    judge,
    read_log,
    run_writer,
    wait_for,
)
from walrewind.engine.errors import ObjectConflict, RestoreError
from walrewind.engine.replica import layout
from walrewind.engine.replica.format import FLAG_RESYNC
from walrewind.engine.replica.index import Replica
from walrewind.engine.restore.restorer import restore
from walrewind.engine.storage import open_storage, put_file_immutable, put_immutable

pytestmark = pytest.mark.s3

MiB = 1 << 20
FAULTY = dict(drop_request=0.05, drop_response=0.05, error_500=0.04, error_503=0.04, slow=0.05, stall=0.003,
              truncate=0.05)


def proxied(proxy: FaultProxy, bucket: str, prefix: str) -> str:
    # Short read timeout so a stalled answer becomes a retried timeout quickly; more attempts than
    # the default because every attempt faces a ~30% fault rate here.
    return f"s3://{bucket}/{prefix}?endpoint={proxy.endpoint}&read_timeout=1&max_attempts=10"


def fast_retries(store):
    """Backoff timing is not what these tests check; keep them quick."""
    store.retry.base, store.retry.cap = 0.02, 0.5
    return store


@pytest.mark.slow
def test_storage_operations_through_faults(seaweed_s3, tmp_path):
    """Every Storage call the engine makes, with ~30% of HTTP requests failing: multipart upload
    (parallel parts), create-only puts whose answer is lost, listings, parallel ranged downloads."""
    with FaultProxy(seaweed_s3.endpoint, seed=40, rates=FAULTY, stall_seconds=1.5) as proxy:
        store = fast_retries(open_storage(proxied(proxy, seaweed_s3.bucket, f"faults/{uuid.uuid4().hex}")))
        store.multipart_threshold = store.part_size = 5 * MiB  # S3's minimum part size
        store.range_chunk = 1 * MiB
        big = tmp_path / "big.bin"
        data = os.urandom(11 * MiB + 12345)
        big.write_bytes(data)
        assert put_file_immutable(store, "big", str(big)) is True
        assert put_file_immutable(store, "big", str(big)) is False  # identical: a no-op
        blobs = {f"small/{i:03d}": os.urandom(2000 + i) for i in range(25)}
        for key, blob in blobs.items():
            put_immutable(store, key, blob)
            put_immutable(store, key, blob)
        with pytest.raises(ObjectConflict):
            put_immutable(store, "small/000", b"different history")
        assert [o.key for o in store.list("small/")] == sorted(blobs)
        assert all(store.get(key) == blob for key, blob in blobs.items())
        assert store.get_to_file("big", str(tmp_path / "copy.bin")) == len(data)
        assert (tmp_path / "copy.bin").read_bytes() == data
        counts = store.request_counts()
        assert counts["UploadPart"] >= 3 and counts["GetObject"] > 12, counts
        assert {"drop_request", "drop_response", "truncate"} <= set(proxy.counts), dict(proxy.counts)
        assert {"error_500", "error_503"} & set(proxy.counts), dict(proxy.counts)
        assert store.retry_stats.retries >= 10 and store.retry_stats.gave_up == 0
        store.close()


@pytest.mark.slow
def test_replication_and_restore_through_faults_stay_exact(seaweed_s3, tmp_path):
    prefix = f"faults/{uuid.uuid4().hex}"
    direct = seaweed_s3.url(prefix)
    db, log = str(tmp_path / "app.db"), str(tmp_path / "log")
    create_db(db)
    run_writer({"db": db, "txns": 10, "big_every": 1, "big_rows": 50, "seed": 40})  # a few hundred KB
    with FaultProxy(seaweed_s3.endpoint, seed=41, rates=FAULTY, stall_seconds=1.5) as proxy:
        daemon = DaemonThread(db, proxied(proxy, seaweed_s3.bucket, prefix), str(tmp_path / "state"), upload_interval=0.1)
        store = fast_retries(daemon.shipper.storage)
        with daemon as shipper:
            run_writer({"db": db, "log": log, "checksums": True, "rate": 100, "txns": 300, "seed": 42})
        assert sum(proxy.counts.values()) >= 5, dict(proxy.counts)
        assert store.retry_stats.retries > 0

        txns, _ = read_log(log)
        records = assert_no_invented_states(direct, txns)
        txids = [r.txid for r in records]
        assert txids == list(range(txids[0], txids[0] + len(txids))), "history must be continuous"
        assert not any(r.flags & FLAG_RESYNC for r in records)
        assert shipper.stats.uploaded_txid == shipper.stats.last_txid

        # Restores through the same faults: parallel ranged GETs of the snapshot, prefetched segments.
        proxy.counts.clear()
        reader = fast_retries(open_storage(proxied(proxy, seaweed_s3.bucket, prefix), create=False))
        reader.range_chunk = 64 << 10
        out = str(tmp_path / "latest.db")
        result = restore(reader, out)
        assert judge(out, result.page_size, txns, txns[0]["checksum"], txns[-1]["end"] + 10**7).restored_index == txns[-1]["i"]
        for n, fraction in enumerate((0.1, 0.3, 0.5, 0.7, 0.9)):
            target = int(txns[1]["begin"] + fraction * (txns[-1]["end"] - txns[1]["begin"]))
            out = str(tmp_path / f"t{n}.db")
            result = restore(reader, out, target_us=target)
            v = judge(out, result.page_size, txns, txns[0]["checksum"], target)
            assert v.exact, f"target {target}: got txn {v.restored_index}, allowed {v.allowed}"
        assert sum(proxy.counts.values()) >= 5, dict(proxy.counts)
        reader.close()


@pytest.mark.slow
def test_outage_through_proxy_is_spooled_and_drained(seaweed_s3, tmp_path):
    """An unreachable endpoint (every connection reset): the app never notices, the backlog is
    reported, and it drains in order afterwards."""
    prefix = f"down/{uuid.uuid4().hex}"
    db, log = str(tmp_path / "app.db"), str(tmp_path / "log")
    create_db(db)
    with FaultProxy(seaweed_s3.endpoint, seed=43) as proxy:
        url = f"s3://{seaweed_s3.bucket}/{prefix}?endpoint={proxy.endpoint}&max_attempts=2&connect_timeout=1"
        with DaemonThread(db, url, str(tmp_path / "state")) as shipper:
            proxy.down = True
            run_writer({"db": db, "log": log, "checksums": True, "rate": 100, "txns": 150, "seed": 44})
            assert shipper.stats.upload_errors > 0
            assert shipper.stats.replica_unreachable_since_us > 0
            backlog = shipper.backlog()
            assert backlog["transactions"] > 0 and backlog["bytes"] > 0 and backlog["replica_unreachable_since"]
            proxy.down = False
            wait_for(lambda: shipper.stats.backlog_txns == 0 and not shipper.stats.replica_unreachable_since_us,
                     timeout=30, what="the backlog to drain")
        assert shipper.stats.uploaded_txid == shipper.stats.last_txid
    txns, _ = read_log(log)
    latencies = sorted(t["end"] - t["begin"] for t in txns[1:])
    assert latencies[int(len(latencies) * 0.99)] < 50_000, "the application must not wait for S3"
    records = assert_no_invented_states(seaweed_s3.url(prefix), txns)
    assert not any(r.flags & FLAG_RESYNC for r in records)
    out = str(tmp_path / "latest.db")
    result = restore(open_storage(seaweed_s3.url(prefix), create=False), out)
    assert f"{result.checksum:016x}" == txns[-1]["checksum"]


# -- damaged objects ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def damaged_source(seaweed_s3, tmp_path_factory):
    """A small replica with several segments, replicated once; each test damages its own copy."""
    base = tmp_path_factory.mktemp("damage")
    db, log = str(base / "app.db"), str(base / "log")
    prefix = f"damage/{uuid.uuid4().hex}"
    create_db(db)
    with DaemonThread(db, seaweed_s3.url(prefix), str(base / "state"), upload_interval=0.1):
        run_writer({"db": db, "log": log, "checksums": True, "rate": 100, "txns": 120, "seed": 45})
    txns, _ = read_log(log)
    return prefix, txns


@pytest.fixture
def damaged(seaweed_s3, damaged_source):
    """A private copy of the source replica: (url, boto3 client, full-key prefix, Replica, txns)."""
    src_prefix, txns = damaged_source
    prefix = f"damage/{uuid.uuid4().hex}"
    client = seaweed_s3.client()
    for obj in client.list_objects_v2(Bucket=seaweed_s3.bucket, Prefix=src_prefix + "/").get("Contents", []):
        key = obj["Key"][len(src_prefix) + 1 :]
        body = client.get_object(Bucket=seaweed_s3.bucket, Key=obj["Key"])["Body"].read()
        client.put_object(Bucket=seaweed_s3.bucket, Key=f"{prefix}/{key}", Body=body)
    url = seaweed_s3.url(prefix)
    replica = Replica(open_storage(url, create=False))
    assert len(replica.generations[-1].segments) >= 4
    yield url, client, prefix, replica, txns
    client.close()


def _rewrite(seaweed_s3, client, prefix: str, key: str, change) -> None:
    full = f"{prefix}/{key}"
    body = client.get_object(Bucket=seaweed_s3.bucket, Key=full)["Body"].read()
    client.put_object(Bucket=seaweed_s3.bucket, Key=full, Body=change(body))


def _flip(body: bytes, offset: int) -> bytes:
    b = bytearray(body)
    b[offset] ^= 0x10
    return bytes(b)


def test_bit_flip_in_segment_names_it_and_the_last_good_point(seaweed_s3, damaged, tmp_path):
    url, client, prefix, replica, txns = damaged
    gen = replica.generations[-1]
    victim = gen.segments[len(gen.segments) // 2]
    before = gen.segments[len(gen.segments) // 2 - 1]
    _rewrite(seaweed_s3, client, prefix, victim.key, lambda b: _flip(b, len(b) // 2))
    with pytest.raises(RestoreError) as err:
        restore(replica.storage, str(tmp_path / "x.db"))
    message = str(err.value)
    assert victim.key in message and "checksum mismatch" in message
    assert f"use --txid {before.last_txid}" in message
    assert not (tmp_path / "x.db").exists() and list(tmp_path.iterdir()) == []
    # the point it names really restores, and exactly
    result = restore(replica.storage, str(tmp_path / "ok.db"), target_txid=before.last_txid)
    assert f"{result.checksum:016x}" in {t["checksum"] for t in txns}


@pytest.mark.slow
def test_bit_flip_in_snapshot_names_it(seaweed_s3, damaged, tmp_path):
    url, client, prefix, replica, txns = damaged
    snap = replica.generations[-1].snapshots[0]
    _rewrite(seaweed_s3, client, prefix, snap.key, lambda b: _flip(b, len(b) - 100))
    for target in ({}, {"target_txid": snap.txid}, {"target_us": txns[-1]["end"]}):
        with pytest.raises(RestoreError, match=snap.key.replace(".", r"\.")) as err:
            restore(replica.storage, str(tmp_path / "x.db"), **target)
        assert "checksum mismatch" in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_truncated_segment_names_it(seaweed_s3, damaged, tmp_path):
    url, client, prefix, replica, txns = damaged
    victim = replica.generations[-1].segments[1]
    _rewrite(seaweed_s3, client, prefix, victim.key, lambda b: b[: len(b) // 3])
    with pytest.raises(RestoreError) as err:
        restore(replica.storage, str(tmp_path / "x.db"))
    assert victim.key in str(err.value)
    assert f"use --txid {replica.generations[-1].segments[0].last_txid}" in str(err.value)


def test_missing_segment_names_the_gap_before_downloading(seaweed_s3, damaged, tmp_path):
    url, client, prefix, replica, txns = damaged
    segs = replica.generations[-1].segments
    client.delete_object(Bucket=seaweed_s3.bucket, Key=f"{prefix}/{segs[2].key}")
    fresh = Replica(replica.storage)
    with pytest.raises(RestoreError) as err:
        restore(fresh.storage, str(tmp_path / "x.db"), replica=fresh)
    message = str(err.value)
    assert f"transactions {segs[2].first_txid}..{segs[2].last_txid}" in message and "missing" in message
    assert segs[3].key in message and f"use --txid {segs[1].last_txid}" in message
    # a target inside the gap's possible time range is refused too (the missing commits' times are unknown)
    with pytest.raises(RestoreError, match="missing"):
        restore(fresh.storage, str(tmp_path / "x.db"), target_us=segs[2].last_ts_us, replica=fresh)
    # a target before it still restores exactly
    target = segs[0].last_ts_us
    result = restore(fresh.storage, str(tmp_path / "early.db"), target_us=target, replica=fresh)
    assert judge(str(tmp_path / "early.db"), result.page_size, txns, txns[0]["checksum"], target).exact


@pytest.mark.slow
def test_missing_last_segment_is_caught_by_the_heartbeat(seaweed_s3, damaged, tmp_path):
    url, client, prefix, replica, txns = damaged
    gen = replica.generations[-1]
    assert gen.vouched_txid == gen.segments[-1].last_txid  # the final heartbeat vouches for the end
    client.delete_object(Bucket=seaweed_s3.bucket, Key=f"{prefix}/{gen.segments[-1].key}")
    fresh = Replica(replica.storage)
    with pytest.raises(RestoreError, match="missing") as err:
        restore(fresh.storage, str(tmp_path / "x.db"), replica=fresh)
    assert f"use --txid {gen.segments[-2].last_txid}" in str(err.value)


@pytest.mark.slow
def test_overlapping_segments_from_two_writers_are_refused(seaweed_s3, damaged, tmp_path):
    url, client, prefix, replica, txns = damaged
    seg = replica.generations[-1].segments[1]
    body = client.get_object(Bucket=seaweed_s3.bucket, Key=f"{prefix}/{seg.key}")["Body"].read()
    rogue = layout.SegmentKey(seg.generation, seg.first_txid, seg.last_txid + 5, seg.first_ts_us + 1, seg.last_ts_us + 1)
    client.put_object(Bucket=seaweed_s3.bucket, Key=f"{prefix}/{rogue.key}", Body=body)
    fresh = Replica(replica.storage)
    with pytest.raises(RestoreError, match="overlapping") as err:
        restore(fresh.storage, str(tmp_path / "x.db"), replica=fresh)
    assert seg.key in str(err.value) and rogue.key in str(err.value)
