"""Encryption at rest, the storage wrapper alone (engine/storage/encrypted.py, sealed.py, keys.py,
marker.py): what is stored, what is read back, and what is refused."""

from __future__ import annotations

import base64
import os
import random

import pytest
from walrewind.engine.errors import EncryptionKeyError, EncryptionRefused, ObjectCorrupt
from walrewind.engine.storage import (
    EncryptedStorage,
    check_replica_encryption,
    load_keyring,
    open_storage,
    put_file_immutable,
    put_immutable,
    sealed,
)
from walrewind.engine.storage.keys import Keyring, MasterKey, generate_key, parse_key
from walrewind.engine.storage.local import LocalStorage
from walrewind.engine.storage.marker import MARKER_KEY, Marker, read_marker

GEN = "0000000000000001-0badcafe"
SEG = f"generations/{GEN}/segments/{'0' * 15}1-{'0' * 15}2-{'0' * 15}3-{'0' * 15}4.seg"
SNAP = f"generations/{GEN}/snapshots/{'0' * 15}1-{'0' * 15}3.snap"


def keyring(*texts: str) -> Keyring:
    return Keyring(tuple(parse_key(t, "test") for t in texts))


def fixed_key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


@pytest.fixture
def enc(tmp_path):
    """An encrypted replica set up as the daemon's start-up check leaves it."""
    ring = keyring(fixed_key(1))
    store = open_storage(str(tmp_path / "r"), keyring=ring)
    assert check_replica_encryption(store, ring) is None  # empty: encrypted from the first object
    return store, ring, tmp_path / "r"


@pytest.mark.parametrize("size", [0, 1, sealed.CHUNK - 1, sealed.CHUNK, sealed.CHUNK + 1, 3 * sealed.CHUNK + 17])
def test_sizes_round_trip_and_every_range_reads_right(enc, size):
    store, _ring, root = enc
    data = random.Random(size).randbytes(size)
    assert store.put_if_absent(SNAP, data)
    stored = os.path.getsize(root / SNAP)
    assert stored == sealed.stored_size(size) and sealed.plain_size(stored) == size
    assert [(i.key, i.size) for i in store.list("generations/")] == [(SNAP, size)]
    assert store.get(SNAP) == data
    rng = random.Random(7)
    for _ in range(40):
        start = rng.randrange(0, size + 10)
        length = rng.randrange(1, 2 * sealed.CHUNK)
        assert store.get_range(SNAP, start, length) == data[start:start + length]
    assert store.local_path(SNAP) is None  # encrypted objects are read through get_range
    out = root.parent / "out.bin"
    assert store.get_to_file(SNAP, str(out)) == size and out.read_bytes() == data


def test_a_fresh_reader_without_a_listing_reads_ranges_too(enc):
    store, ring, root = enc
    data = random.Random(1).randbytes(2 * sealed.CHUNK)  # ends exactly on a chunk boundary
    store.put_if_absent(SNAP, data)
    fresh = open_storage(str(root), create=False, keyring=ring)  # no LIST: the last chunk is unknown
    assert fresh.get_range(SNAP, sealed.CHUNK - 5, sealed.CHUNK + 5) == data[sealed.CHUNK - 5:]
    assert fresh.get_range(SNAP, 2 * sealed.CHUNK, 10) == b""


def test_nothing_readable_is_stored_and_each_write_is_fresh(enc):
    store, _ring, root = enc
    text = b"the same plaintext, twice over " * 100
    store.put(f"generations/{GEN}/heartbeats/a", text)
    store.put(f"generations/{GEN}/heartbeats/b", text)
    a, b = (root / f"generations/{GEN}/heartbeats/a").read_bytes(), (root / f"generations/{GEN}/heartbeats/b").read_bytes()
    assert a[:4] == b"WREC" and b"plaintext" not in a and a[24:] != b[24:]


def test_create_only_retries_compare_plaintext(enc, tmp_path):
    store, _ring, _root = enc
    assert put_immutable(store, SEG, b"segment bytes")
    assert not put_immutable(store, SEG, b"segment bytes")  # a retry: same plaintext, another nonce
    with pytest.raises(Exception, match="different content"):
        put_immutable(store, SEG, b"other bytes")
    big = tmp_path / "big.bin"
    big.write_bytes(random.Random(3).randbytes(sealed.CHUNK * 2 + 5))
    assert put_file_immutable(store, SNAP, str(big))
    assert not put_file_immutable(store, SNAP, str(big))
    assert store.get(SNAP) == big.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".walrewind")] == []  # temp files removed


def test_tampering_renaming_swapping_and_truncation_are_caught(enc):
    store, ring, root = enc
    data = random.Random(2).randbytes(2 * sealed.CHUNK + 100)
    store.put_if_absent(SNAP, data)
    store.put_if_absent(SEG, b"a segment")
    path = root / SNAP
    blob = path.read_bytes()

    def reread(mutated: bytes, key: str = SNAP) -> None:
        (root / key).write_bytes(mutated)
        reader = open_storage(str(root), create=False, keyring=ring)
        list(reader.list("generations/"))
        with pytest.raises(ObjectCorrupt):
            reader.get(key)
        with pytest.raises(ObjectCorrupt):
            reader.get_range(key, 0, len(data))

    flipped = bytearray(blob)
    flipped[sealed.HEADER_SIZE + sealed.CHUNK + 40] ^= 1
    reread(bytes(flipped))
    header_edit = bytearray(blob)
    header_edit[17] ^= 1  # the nonce prefix
    reread(bytes(header_edit))
    span = sealed.CHUNK + sealed.TAG
    reread(blob[:sealed.HEADER_SIZE + 2 * span])  # cut at a chunk boundary
    swapped = blob[:sealed.HEADER_SIZE] + blob[sealed.HEADER_SIZE + span:sealed.HEADER_SIZE + 2 * span] + \
        blob[sealed.HEADER_SIZE:sealed.HEADER_SIZE + span] + blob[sealed.HEADER_SIZE + 2 * span:]
    reread(swapped)
    path.write_bytes(blob)
    reread((root / SEG).read_bytes())  # another object's ciphertext under this name
    other = f"generations/{GEN}/segments/{'0' * 15}5-{'0' * 15}6-{'0' * 15}7-{'0' * 15}8.seg"
    (root / other).write_bytes(blob)  # this object moved to another name
    with pytest.raises(ObjectCorrupt, match="renamed or swapped"):
        open_storage(str(root), create=False, keyring=ring).get(other)


def test_plaintext_planted_in_an_encrypted_generation_is_refused(enc):
    _store, ring, root = enc
    (root / SEG).parent.mkdir(parents=True)
    (root / SEG).write_bytes(b"WRSG planted plaintext")
    for reader in (open_storage(str(root), create=False, keyring=ring), open_storage(str(root), create=False)):
        with pytest.raises(ObjectCorrupt, match="is not encrypted, but its generation is"):
            reader.get(SEG)


def test_wrong_and_missing_keys_name_the_key_id_and_never_the_key(enc):
    store, ring, root = enc
    store.put_if_absent(SEG, b"payload")
    wanted = ring.current.key_id
    wrong = keyring(fixed_key(2))
    for reader in (open_storage(str(root), create=False, keyring=wrong), open_storage(str(root), create=False)):
        for read in (lambda r: r.get(SEG), lambda r: r.get_range(SEG, 0, 5)):
            with pytest.raises(EncryptionKeyError) as err:
                read(reader)
            assert wanted in str(err.value) and fixed_key(1) not in str(err.value) and fixed_key(2) not in str(err.value)
    assert isinstance(open_storage(str(root), create=False), EncryptedStorage)  # the keyless guard
    with pytest.raises(EncryptionRefused, match="needs its key"):
        open_storage(str(root), create=False).put_if_absent(SEG + "x", b"plain")
    with pytest.raises(EncryptionKeyError, match=wanted):
        check_replica_encryption(LocalStorage(str(root)), None)  # a daemon without the key


def test_several_keys_read_the_first_writes(enc):
    store, ring, root = enc
    store.put_if_absent(SEG, b"under key 1")
    rotated = keyring(fixed_key(3), fixed_key(1))
    assert check_replica_encryption(open_storage(str(root), keyring=rotated), rotated) is None
    both = open_storage(str(root), keyring=rotated)
    both.put_if_absent(SNAP, b"under key 3")
    assert both.get(SEG) == b"under key 1" and both.get(SNAP) == b"under key 3"
    assert (root / SNAP).read_bytes()[8:16].hex() == rotated.current.key_id
    marker = read_marker(LocalStorage(str(root)))
    assert marker is not None and marker.key_ids == (ring.current.key_id, rotated.current.key_id)


def test_an_unencrypted_replica_with_history_keeps_it_and_takes_nothing_plain(tmp_path):
    root = tmp_path / "r"
    plain = LocalStorage(str(root))
    plain.put_if_absent(SNAP, b"WRSN old plaintext snapshot")
    ring = keyring(fixed_key(1))
    keyed = open_storage(str(root), keyring=ring)
    with pytest.raises(EncryptionRefused, match="no encryption.json"):
        keyed.put_if_absent(SEG, b"WRSG new segment")  # before the daemon's check: nothing plain
    note = check_replica_encryption(keyed, ring)
    assert note and GEN in note and "starting a new generation" in note
    assert keyed.get(SNAP) == b"WRSN old plaintext snapshot"  # old history reads as it is
    with pytest.raises(EncryptionRefused, match=f"generation {GEN} is not encrypted"):
        keyed.put_if_absent(SEG, b"WRSG new segment")
    head = b'{"compacted_from":2,"x":1}'
    compacted = b"WRSG\x01\x00" + len(head).to_bytes(4, "little") + head
    assert keyed.put_if_absent(SEG, compacted)  # compaction repacks plaintext that is stored there already
    assert (root / SEG).read_bytes() == compacted
    new_gen = f"generations/0000000000000002-0badcafe/snapshots/{'0' * 15}9-{'0' * 15}9.snap"
    keyed.put_if_absent(new_gen, b"WRSN new history")
    assert (root / new_gen).read_bytes()[:4] == b"WREC"
    assert check_replica_encryption(keyed, ring) is None  # the newest generation is encrypted now
    assert open_storage(str(root), create=False).get(SNAP).startswith(b"WRSN")  # readable without a key


def test_an_altered_marker_is_refused_by_a_reader_with_the_key(tmp_path):
    root = tmp_path / "r"
    LocalStorage(str(root)).put_if_absent(SNAP, b"WRSN old")
    ring = keyring(fixed_key(1))
    check_replica_encryption(open_storage(str(root), keyring=ring), ring)
    marker = read_marker(LocalStorage(str(root)))
    forged = Marker(marker.plaintext_generations + ("0000000000000009-00000000",), marker.key_ids,
                    marker.created_us, marker.mac_key_id, marker.mac)
    (root / MARKER_KEY).write_bytes(forged.to_bytes())
    with pytest.raises(ObjectCorrupt, match="was altered"):
        open_storage(str(root), create=False, keyring=ring).get(SNAP)


def test_keys_files_environment_and_ids(tmp_path):
    k1, k2 = generate_key(), generate_key()
    assert len(base64.b64decode(k1)) == 32 and k1 != k2
    f = tmp_path / "keys"
    f.write_text(f"# rotated 2024-06\n{k1}\n\n{k2}\n")
    ring = load_keyring([str(f)], environ={"WALREWIND_ENCRYPTION_KEY": k2})
    assert [k.secret for k in ring.keys] == [base64.b64decode(k1), base64.b64decode(k2)]
    assert len(ring.current.key_id) == 16 and ring.current.key_id != MasterKey.from_bytes(base64.b64decode(k2)).key_id
    assert k1 not in repr(ring)
    assert load_keyring(environ={}) is None
    bad = tmp_path / "bad"
    bad.write_text("not a key: a secret-looking line!\n")
    with pytest.raises(EncryptionKeyError, match="line 1: not a base64") as err:
        load_keyring([str(bad)], environ={})
    assert "secret-looking" not in str(err.value)
    with pytest.raises(EncryptionKeyError, match="decodes to 16"):
        load_keyring(environ={"WALREWIND_ENCRYPTION_KEY": base64.b64encode(b"x" * 16).decode()})
    with pytest.raises(EncryptionKeyError, match="cannot read"):
        load_keyring([str(tmp_path / "missing")], environ={})


def test_config_encryption_key_file_per_database_and_for_sqld(tmp_path, monkeypatch):
    monkeypatch.delenv("WALREWIND_ENCRYPTION_KEY", raising=False)
    from walrewind.engine.errors import ConfigError
    from walrewind.engine.workspace.config import load_config
    from walrewind.engine.workspace.sources import resolve_source

    k1, k2 = tmp_path / "k1", tmp_path / "k2"
    k1.write_text(fixed_key(1) + "\n")
    k2.write_text(fixed_key(2) + "\n")
    cfg = tmp_path / "walrewind.toml"
    cfg.write_text('[databases.app]\npath = "app.db"\nreplica = "r/app"\nencryption_key_file = "k1"\n'
                   '[sqld]\ndata_dir = "sqld"\nreplica = "r/sqld"\nencryption_key_file = ["k2", "k1"]\n')
    config = load_config(str(cfg))
    assert config.databases["app"].encryption_key_files == (str(k1),)
    assert config.sqld.namespace("ns").keyring(environ={}).ids == [ring.current.key_id for ring in (
        keyring(fixed_key(2)), keyring(fixed_key(1)))]
    src = resolve_source("app", config, key_files=(str(k2),))  # --encryption-key-file writes first
    assert src.keyring().ids == [keyring(fixed_key(2)).current.key_id, keyring(fixed_key(1)).current.key_id]
    cfg.write_text('[databases.app]\npath = "app.db"\nreplica = "r/app"\nencryption_key_file = 7\n')
    with pytest.raises(ConfigError, match="encryption_key_file must be a file path"):
        load_config(str(cfg))


def test_a_daemon_with_a_key_starts_a_new_generation_over_plaintext_history(tmp_path):
    """Never append encrypted history to a plaintext generation, nor plaintext to an encrypted one:
    the first daemon with a key leaves the plaintext generation as it is and starts a new one."""
    import os
    import time

    from harness import DaemonThread, create_db, run_writer
    from walrewind.engine.replica.index import Replica
    from walrewind.engine.restore.restorer import restore

    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    create_db(db)

    def replicate(state: str, ring=None, seed: int = 1) -> None:
        with DaemonThread(db, replica, str(tmp_path / state), upload_interval=0.05, keyring=ring) as daemon:
            run_writer({"db": db, "txns": 10, "rate": 0, "seed": seed, "id_base": 1000 * seed, "log": os.devnull})
            deadline = time.monotonic() + 30
            while daemon.stats.uploaded_txid < daemon.stats.last_txid or daemon.stats.last_txid < 10 * seed:
                assert time.monotonic() < deadline
                time.sleep(0.01)

    replicate("plain")
    ring = keyring(fixed_key(7))
    replicate("plain", ring, seed=2)  # the same state directory: without the rule it would continue
    gens = Replica(open_storage(replica, create=False, keyring=ring)).generations
    assert len(gens) == 2
    plain, encrypted = gens
    stored = [os.path.join(d, n) for d, _sub, files in os.walk(os.path.join(replica, "generations", encrypted.id))
              for n in files]
    heads = [open(path, "rb").read(4) for path in stored if os.path.getsize(path)]
    assert heads and all(head == b"WREC" for head in heads)  # every object of the new generation is encrypted
    latest = restore(open_storage(replica, create=False, keyring=ring), str(tmp_path / "latest.db"))
    assert latest.txid == encrypted.last_txid
    old = restore(open_storage(replica, create=False), str(tmp_path / "old.db"), target_txid=plain.last_txid)
    assert old.txid == plain.last_txid  # the plaintext history stays readable without a key
