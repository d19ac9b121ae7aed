"""Reading committed transactions out of SQLite -wal files, synthetic and real.

Every real WAL here is written by the stdlib ``sqlite3`` in a *subprocess* that exits with
``os._exit(0)`` right after its last commit, so the connection never closes, never checkpoints and
never deletes the -wal.  The test process itself never opens these databases with any SQLite
library; it only copies and reads bytes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from walrewind.engine.sqlite import walfile
from walrewind.engine.sqlite.walfile import (
    FRAME_HEADER_SIZE,
    MAGIC_BE,
    MAGIC_LE,
    WAL_HEADER_SIZE,
    WalFile,
    WalPosition,
    WalTransaction,
    checksum_words,
    frame_checksums,
    parse_header,
)

MASK = 0xFFFFFFFF


# ----------------------------------------------------------------------------- reference checksum


def ref_checksum(data: bytes, big_endian: bool, start: tuple[int, int]) -> tuple[int, int]:
    """SQLite's walChecksumBytes, straight from the file-format spec, without numpy."""
    fmt = ">" if big_endian else "<"
    words = struct.unpack(f"{fmt}{len(data) // 4}I", data)
    s0, s1 = start
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & MASK
        s1 = (s1 + words[i + 1] + s0) & MASK
    return s0, s1


def words_of(data: bytes, big_endian: bool) -> np.ndarray:
    return np.frombuffer(data, dtype=">u4" if big_endian else "<u4").astype(np.uint64)


def chain_reference(frames: bytes, page_size: int, big_endian: bool, start: tuple[int, int]) -> list[tuple[int, int]]:
    frame_size = FRAME_HEADER_SIZE + page_size
    out = []
    state = start
    for off in range(0, len(frames) - frame_size + 1, frame_size):
        frame = frames[off : off + frame_size]
        covered = frame[:8] + frame[FRAME_HEADER_SIZE:]
        state = checksum_words(words_of(covered, big_endian), state)
        out.append(state)
    return out


U32 = st.integers(min_value=0, max_value=MASK)


@st.composite
def frame_runs(draw):
    page_size = draw(st.sampled_from([512, 1024, 4096, 8192]))
    count = draw(st.integers(min_value=1, max_value=4))
    fill = draw(st.sampled_from(["random", "ones", "zeros", "mixed"]))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    size = count * (FRAME_HEADER_SIZE + page_size)
    rng = random.Random(seed)
    if fill == "random":
        data = rng.randbytes(size)
    elif fill == "ones":
        data = b"\xff" * size
    elif fill == "zeros":
        data = bytes(size)
    else:
        data = bytes(rng.choice((0, 0xFF, rng.randrange(256))) for _ in range(size))
    # Sometimes add a partial trailing frame, which must be ignored.
    tail = draw(st.integers(min_value=0, max_value=FRAME_HEADER_SIZE + page_size - 1))
    data += rng.randbytes(tail)
    return page_size, count, data


@settings(max_examples=60, deadline=None)
@given(run=frame_runs(), big_endian=st.booleans(), s0=U32, s1=U32)
@example(run=(512, 1, b"\xff" * (24 + 512)), big_endian=False, s0=MASK, s1=MASK)
@example(run=(8192, 2, b"\xff" * 2 * (24 + 8192)), big_endian=True, s0=MASK, s1=MASK)
def test_frame_checksums_match_the_chained_reference(run, big_endian, s0, s1):
    page_size, count, data = run
    got = frame_checksums(data, page_size, big_endian, (s0, s1))
    expected = chain_reference(data, page_size, big_endian, (s0, s1))
    assert len(got) == count == len(expected)
    assert got == expected
    assert all(isinstance(a, int) and isinstance(b, int) for a, b in got)


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=512).map(lambda b: b[: len(b) - len(b) % 8]),
    big_endian=st.booleans(),
    s0=U32,
    s1=U32,
)
def test_checksum_words_is_sqlites_algorithm(data, big_endian, s0, s1):
    assert checksum_words(words_of(data, big_endian), (s0, s1)) == ref_checksum(data, big_endian, (s0, s1))


def test_a_run_up_to_python_checksum_frames_is_walked_without_importing_numpy():
    """A fresh daemon reading an old tail of 100 frames (numpy not loaded yet) walks it in plain
    Python: the same checksums, and numpy (~15 MB of RSS, ~0.3 s) is not imported for it."""
    page_size, count = 1024, 100
    data = random.Random(7).randbytes(count * (FRAME_HEADER_SIZE + page_size))
    script = textwrap.dedent("""
        import json, sys
        from walrewind.engine.sqlite.walfile import frame_checksums
        got = frame_checksums(open(sys.argv[1], "rb").read(), 1024, False, (5, 6))
        print(json.dumps({"sums": got, "numpy": "numpy" in sys.modules}))
    """)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "frames")
        Path(path).write_bytes(data)
        proc = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["numpy"] is False
    assert [tuple(x) for x in out["sums"]] == chain_reference(data, page_size, False, (5, 6))
    assert count <= walfile.PYTHON_CHECKSUM_FRAMES


def test_frame_checksums_of_less_than_one_frame_is_empty():
    assert frame_checksums(b"", 4096, False, (1, 2)) == []
    assert frame_checksums(bytes(4096 + 23), 4096, False, (1, 2)) == []


# ----------------------------------------------------------------------------- headers


def make_header(
    page_size_field: int = 4096,
    big_endian: bool = False,
    salts: tuple[int, int] = (0x11223344, 0x55667788),
    ckpt_seq: int = 0,
    magic: int | None = None,
) -> bytes:
    magic = magic if magic is not None else (MAGIC_BE if big_endian else MAGIC_LE)
    head = struct.pack(">6I", magic, 3007000, page_size_field, ckpt_seq, *salts)
    c = ref_checksum(head, big_endian, (0, 0))
    return head + struct.pack(">2I", *c)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("page_size", [512, 1024, 4096, 8192, 32768])
def test_parse_header_accepts_valid(page_size, big_endian):
    hdr = parse_header(make_header(page_size, big_endian, ckpt_seq=7))
    assert hdr is not None
    assert hdr.page_size == page_size
    assert hdr.big_endian is big_endian
    assert hdr.ckpt_seq == 7
    assert (hdr.salt1, hdr.salt2) == (0x11223344, 0x55667788)
    assert hdr.salts == bytes.fromhex("1122334455667788")


def test_parse_header_page_size_one_means_65536():
    hdr = parse_header(make_header(1))
    assert hdr is not None and hdr.page_size == 65536


def test_parse_header_ignores_bytes_after_the_header():
    assert parse_header(make_header() + b"\x00" * 100) is not None


@pytest.mark.parametrize("length", [0, 1, 24, 31])
def test_parse_header_rejects_short_buffer(length):
    assert parse_header(make_header()[:length]) is None


@pytest.mark.parametrize("magic", [0, 0x377F0681, 0x377F0684, 0x82067F37, MASK])
def test_parse_header_rejects_wrong_magic(magic):
    # checksum computed correctly for the bytes, so only the magic is wrong
    assert parse_header(make_header(magic=magic)) is None


@pytest.mark.parametrize("page_size", [0, 2, 256, 511, 1000, 3000, 4097, 65536 * 2, 0x80000000])
def test_parse_header_rejects_bad_page_size(page_size):
    assert parse_header(make_header(page_size)) is None


@pytest.mark.parametrize("position", range(32))
def test_parse_header_rejects_any_flipped_byte(position):
    raw = bytearray(make_header())
    raw[position] ^= 0x01
    assert parse_header(bytes(raw)) is None


def test_parse_header_rejects_checksum_of_the_other_endianness():
    head = make_header(big_endian=False)
    swapped = head[:24] + struct.pack(">2I", *ref_checksum(head[:24], True, (0, 0)))
    assert parse_header(swapped) is None


# ----------------------------------------------------------------------------- real WAL files

PREAMBLE = """
import os, random, sqlite3, sys
db, out = sys.argv[1], sys.argv[2]
rng = random.Random({seed})
conn = sqlite3.connect({uri!r}.replace("DB", db), uri=True, isolation_level=None)
conn.execute("PRAGMA page_size={page_size}")
assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
conn.execute("PRAGMA wal_autocheckpoint=0")
commits = 0

def dump():
    global commits
    commits += 1
    with open(os.path.join(out, f"{{commits}}.img"), "wb") as f:
        f.write(conn.serialize())

def txn(*stmts):
    conn.execute("BEGIN")
    for s in stmts:
        if isinstance(s, tuple):
            conn.execute(*s)
        else:
            conn.execute(s)
    conn.execute("COMMIT")
    dump()

def save_wal(name):
    with open(db + "-wal", "rb") as src, open(os.path.join(out, name), "wb") as dst:
        dst.write(src.read())
"""

EPILOGUE = """
with open(os.path.join(out, "commits"), "w") as f:
    f.write(str(commits))
os._exit(0)  # no close: no checkpoint, the -wal stays as the last commit left it
"""


@dataclass
class RealWal:
    dir: Path
    db: Path  # copy of the main database file as the writer left it
    wal: Path  # copy of the -wal
    commits: int
    page_size: int

    def image(self, k: int) -> bytes:
        """The database as the writer's connection saw it after its k-th commit."""
        return (self.dir / "out" / f"{k}.img").read_bytes()

    def extra(self, name: str) -> Path:
        return self.dir / "out" / name


def write_wal(root: Path, body: str, page_size: int = 4096, seed: int = 1234, uri: str = "file:DB") -> RealWal:
    live = root / "live"
    out = root / "out"
    live.mkdir(parents=True)
    out.mkdir()
    script = PREAMBLE.format(seed=seed, page_size=page_size, uri=uri) + textwrap.dedent(body) + EPILOGUE
    db = live / "test.db"
    proc = subprocess.run([sys.executable, "-c", script, str(db), str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert Path(str(db) + "-wal").exists(), "writer checkpointed or deleted its WAL"
    copy = root / "copy"
    copy.mkdir()
    shutil.copyfile(db, copy / "test.db")
    shutil.copyfile(str(db) + "-wal", copy / "test.db-wal")
    commits = int((out / "commits").read_text())
    return RealWal(root, copy / "test.db", copy / "test.db-wal", commits, page_size)


def apply(base: bytes, txns: list[WalTransaction], page_size: int) -> bytes:
    image = bytearray(base)
    for t in txns:
        size = t.db_pages * page_size
        if len(image) < size:
            image.extend(bytes(size - len(image)))
        del image[size:]
        for pgno, data in t.pages.items():
            assert len(data) == page_size
            if pgno <= t.db_pages:
                image[(pgno - 1) * page_size : pgno * page_size] = data
    return bytes(image)


def read_all(path: Path) -> walfile.ReadResult:
    wal = WalFile(str(path))
    try:
        return wal.read(None)
    finally:
        wal.close()


def same_txns(a: list[WalTransaction], b: list[WalTransaction]) -> bool:
    return [(t.pages, t.db_pages, t.end, t.frames) for t in a] == [(t.pages, t.db_pages, t.end, t.frames) for t in b]


MAIN_BODY = """
txn("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)", "CREATE INDEX t_v ON t(v)")
for i in range(8):
    txn(("INSERT INTO t(v) VALUES (?)", (rng.randbytes(rng.randrange(10, 300)),)))
txn(*[("INSERT INTO t(v) VALUES (?)", (rng.randbytes(500),)) for _ in range(60)])
txn(("UPDATE t SET v = ? WHERE id % 3 = 0", (rng.randbytes(40),)))
txn("DELETE FROM t WHERE id > 20")
txn("CREATE TABLE big(b BLOB)", ("INSERT INTO big VALUES (?)", (rng.randbytes(30000),)))
txn(("UPDATE big SET b = ?", (rng.randbytes(29000),)))
txn("DROP TABLE big")
conn.execute("VACUUM")  # rewrites the database smaller: the commit frame shrinks db_pages
dump()
for i in range(5):
    txn(("INSERT INTO t(v) VALUES (?)", (rng.randbytes(rng.randrange(10, 2000)),)))
txn(("UPDATE t SET v = v || ? WHERE id = 1", (b"x",)))
"""


@pytest.fixture(scope="module", params=[1024, 4096])
def real_wal(request, tmp_path_factory) -> RealWal:
    root = tmp_path_factory.mktemp(f"wal{request.param}")
    return write_wal(root, MAIN_BODY, page_size=request.param)


@pytest.fixture(scope="module")
def real_txns(real_wal) -> list[WalTransaction]:
    result = read_all(real_wal.wal)
    return result.transactions


def test_real_wal_header(real_wal):
    with open(real_wal.wal, "rb") as f:
        hdr = parse_header(f.read(32))
    assert hdr is not None
    assert hdr.page_size == real_wal.page_size
    assert hdr.magic in (MAGIC_LE, MAGIC_BE)


def test_real_wal_yields_every_commit_and_nothing_else(real_wal, real_txns):
    assert real_wal.commits == 22  # 1 + 8 + 6 + VACUUM + 5 + 1
    assert len(real_txns) == real_wal.commits
    result = read_all(real_wal.wal)
    assert result.generation == "new"
    assert result.position == real_txns[-1].end
    # Every frame belongs to exactly one transaction, and the file holds nothing beyond them.
    frames = [t.end.frame for t in real_txns]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)
    assert sum(t.frames for t in real_txns) == frames[-1]
    assert os.path.getsize(real_wal.wal) == WAL_HEADER_SIZE + frames[-1] * (FRAME_HEADER_SIZE + real_wal.page_size)
    # The VACUUM commit really did shrink the database (the replay below covers truncation).
    sizes = [t.db_pages for t in real_txns]
    assert any(b < a for a, b in zip(sizes, sizes[1:]))


def test_real_wal_replays_to_every_intermediate_image(real_wal, real_txns):
    base = real_wal.db.read_bytes()
    for k in range(1, real_wal.commits + 1):
        image = real_wal.image(k)
        assert real_txns[k - 1].db_pages * real_wal.page_size == len(image)
        assert apply(base, real_txns[:k], real_wal.page_size) == image, f"after commit {k}"


def test_real_wal_final_image_byte_for_byte(real_wal, real_txns):
    final = apply(real_wal.db.read_bytes(), real_txns, real_wal.page_size)
    assert final == real_wal.image(real_wal.commits)


def test_resume_after_each_transaction(real_wal, real_txns):
    wal = WalFile(str(real_wal.wal))
    try:
        for k in range(1, len(real_txns) + 1):
            result = wal.read(real_txns[k - 1].end)
            assert result.generation == "same"
            assert same_txns(result.transactions, real_txns[k:]), f"resuming after transaction {k}"
            assert result.position == real_txns[-1].end
    finally:
        wal.close()


def test_a_read_checks_the_files_identity_once_and_parses_an_unchanged_header_once(real_wal, real_txns, scratch,
                                                                                  monkeypatch):
    """One ``stat`` of the -wal per read (it used to be one per pread: three per read pass), the
    rest read through the descriptor it checked; the WAL header is parsed and verified again only
    when its bytes change; a file replaced between two reads is followed at the next."""
    path = scratch / "app.db-wal"
    shutil.copy(real_wal.wal, path)
    stats: list[str] = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: stats.append(p) or real_stat(p, *a, **k))
    parses: list[bytes] = []
    real_parse = walfile.parse_header
    monkeypatch.setattr(walfile, "parse_header", lambda buf: parses.append(buf) or real_parse(buf))
    wal = WalFile(str(path))
    try:
        for k in (1, 2, 3):
            got = wal.read(real_txns[k - 1].end)
            assert got.generation == "same" and same_txns(got.transactions, real_txns[k:])
        assert len(stats) == 3 and len(parses) == 1
        path.unlink()
        path.write_bytes(make_header(real_txns[0].end.page_size))  # another file: a new, empty WAL
        got = wal.read(real_txns[-1].end)
        assert got.generation == "new" and got.transactions == [] and len(parses) == 2
    finally:
        wal.close()


def test_vouched_frames_read_the_same_without_the_checksum_walk(real_wal, real_txns, monkeypatch):
    """Frames the wal-index vouches for give the same transactions and positions (the running
    checksum taken from each frame's header equals the chain), stop at the published mxFrame,
    and never call the checksum walk."""
    header = parse_header(real_wal.wal.read_bytes()[:32])
    wal = WalFile(str(real_wal.wal))
    monkeypatch.setattr(walfile, "frame_checksums", lambda *a: pytest.fail("checksum walk on vouched frames"))
    try:
        for k in (0, 1, 7, len(real_txns) - 1):
            start = real_txns[k - 1].end if k else None
            for limit in (len(real_txns), k + 3):
                mx = real_txns[min(limit, len(real_txns)) - 1].end.frame
                got = wal.read(start, published=(header.salts, mx), vouched=True)
                want = [t for t in real_txns[k:] if t.end.frame <= mx]
                assert same_txns(got.transactions, want), (k, limit)
                assert got.position == (want[-1].end if want else start or got.position)
    finally:
        wal.close()


def test_position_json_round_trip(real_txns):
    for t in real_txns:
        assert WalPosition.from_json(t.end.to_json()) == t.end


def test_small_read_chunks_and_byte_limited_batches(real_wal, real_txns, monkeypatch):
    frame_size = FRAME_HEADER_SIZE + real_wal.page_size
    # Chunk boundaries fall inside multi-frame transactions.
    monkeypatch.setattr(walfile, "READ_CHUNK", 3 * frame_size + 7)
    assert same_txns(read_all(real_wal.wal).transactions, real_txns)
    # A soft byte limit returns prefixes that add up to everything, each ending at a commit.
    wal = WalFile(str(real_wal.wal))
    try:
        pos, got, batches = None, [], 0
        while True:
            result = wal.read(pos, max_bytes=1)
            if not result.transactions:
                break
            batches += 1
            got.extend(result.transactions)
            pos = result.position
            assert pos == result.transactions[-1].end
        assert batches > 1
        assert same_txns(got, real_txns)
    finally:
        wal.close()


@pytest.fixture
def scratch():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def frame_end(frame: int, page_size: int) -> int:
    return WAL_HEADER_SIZE + frame * (FRAME_HEADER_SIZE + page_size)


def expected_prefix(txns: list[WalTransaction], usable_bytes: int, page_size: int) -> int:
    """How many transactions lie entirely within the first ``usable_bytes`` of the WAL."""
    return sum(1 for t in txns if frame_end(t.end.frame, page_size) <= usable_bytes)


def test_truncated_in_the_last_transaction(real_wal, real_txns, scratch):
    ps = real_wal.page_size
    last, before = real_txns[-1], real_txns[-2]
    assert last.frames >= 2, "the last transaction should span several frames"
    raw = real_wal.wal.read_bytes()
    start = frame_end(before.end.frame, ps)
    cuts = [start + 1, start + FRAME_HEADER_SIZE, frame_end(before.end.frame + 1, ps), len(raw) - 1]
    for cut in cuts:
        path = scratch / f"cut{cut}-wal"
        path.write_bytes(raw[:cut])
        txns = read_all(path).transactions
        assert same_txns(txns, real_txns[:-1]), cut
        assert apply(real_wal.db.read_bytes(), txns, ps) == real_wal.image(real_wal.commits - 1)


def test_garbage_over_the_last_transaction(real_wal, real_txns, scratch):
    ps = real_wal.page_size
    raw = real_wal.wal.read_bytes()
    start = frame_end(real_txns[-2].end.frame, ps)
    rng = random.Random(99)
    for cut in (start, start + 5, frame_end(real_txns[-2].end.frame + 1, ps)):
        for garbage in (rng.randbytes(FRAME_HEADER_SIZE + ps), rng.randbytes(3 * (FRAME_HEADER_SIZE + ps) + 17)):
            path = scratch / "g-wal"
            path.write_bytes(raw[:cut] + garbage)
            txns = read_all(path).transactions
            assert same_txns(txns, real_txns[:-1])
    # Garbage after a complete WAL changes nothing.
    path = scratch / "tail-wal"
    path.write_bytes(raw + rng.randbytes(2 * (FRAME_HEADER_SIZE + ps)))
    assert same_txns(read_all(path).transactions, real_txns)


def test_copied_frame_from_earlier_in_the_wal_is_not_accepted(real_wal, real_txns, scratch):
    """A stale but individually well-formed frame (right salts, old checksum) ends the chain."""
    ps = real_wal.page_size
    fs = FRAME_HEADER_SIZE + ps
    raw = real_wal.wal.read_bytes()
    cut = frame_end(real_txns[-2].end.frame, ps)
    stale = raw[frame_end(real_txns[0].end.frame - 1, ps) : frame_end(real_txns[0].end.frame, ps)]
    assert len(stale) == fs
    path = scratch / "stale-wal"
    path.write_bytes(raw[:cut] + stale)
    assert same_txns(read_all(path).transactions, real_txns[:-1])


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(cut_fraction=st.floats(min_value=0, max_value=1), garbage=st.binary(max_size=64), pad=st.booleans())
@example(cut_fraction=0.7890625, garbage=b"\x00", pad=True)  # CI found it: a zero frame after a cut
def test_any_truncation_keeps_exactly_the_complete_transactions(real_wal, real_txns, cut_fraction, garbage, pad):
    ps = real_wal.page_size
    raw = real_wal.wal.read_bytes()
    cut = int(cut_fraction * len(raw))
    tail = garbage * ((FRAME_HEADER_SIZE + ps) // max(len(garbage), 1) + 1) if pad and garbage else garbage
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x-wal"
        path.write_bytes(raw[:cut] + tail)
        result = read_all(path)
    if cut < WAL_HEADER_SIZE:
        # Header gone or torn (garbage cannot forge a header checksum).
        assert result.transactions == []
        return
    # Garbage that happens to repeat the original bytes (zeros over a page's zeroed free space)
    # leaves those frames intact: what counts is how far the file still equals the original.
    written = raw[:cut] + tail
    intact = next((i for i, (a, b) in enumerate(zip(written, raw)) if a != b), min(len(written), len(raw)))
    n = expected_prefix(real_txns, intact, ps)
    assert same_txns(result.transactions, real_txns[:n])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(where=st.floats(min_value=0, max_value=1, exclude_max=True), bit=st.integers(min_value=0, max_value=7))
def test_a_flipped_bit_stops_reading_before_its_transaction(real_wal, real_txns, where, bit):
    ps = real_wal.page_size
    fs = FRAME_HEADER_SIZE + ps
    raw = bytearray(real_wal.wal.read_bytes())
    pos = int(where * len(raw))
    raw[pos] ^= 1 << bit
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x-wal"
        path.write_bytes(raw)
        result = read_all(path)
    if pos < WAL_HEADER_SIZE:
        assert result.transactions == [] and result.generation == "empty"
        return
    frame = (pos - WAL_HEADER_SIZE) // fs + 1  # 1-based frame holding the flipped byte
    kept = [t for t in real_txns if t.end.frame < frame]
    assert same_txns(result.transactions, kept)


def test_flip_in_a_middle_frame_explicitly(real_wal, real_txns, scratch):
    ps = real_wal.page_size
    # The big multi-frame transaction in the middle: flip a byte in its second frame's page.
    k = max(range(len(real_txns)), key=lambda i: real_txns[i].frames)
    first_frame = real_txns[k].end.frame - real_txns[k].frames + 1
    raw = bytearray(real_wal.wal.read_bytes())
    raw[frame_end(first_frame, ps) + FRAME_HEADER_SIZE + 100] ^= 0x40
    path = scratch / "flip-wal"
    path.write_bytes(raw)
    txns = read_all(path).transactions
    assert k > 0 and real_txns[k].frames > 2
    assert same_txns(txns, real_txns[:k])
    assert apply(real_wal.db.read_bytes(), txns, ps) == real_wal.image(k)


def to_big_endian_wal(raw: bytes, page_size: int) -> bytes:
    """Re-encode a little-endian WAL as a big-endian-checksum WAL (what a BE host writes)."""
    head = struct.pack(">I", MAGIC_BE) + raw[4:24]
    state = ref_checksum(head, True, (0, 0))
    out = bytearray(head + struct.pack(">2I", *state))
    fs = FRAME_HEADER_SIZE + page_size
    for off in range(WAL_HEADER_SIZE, len(raw) - fs + 1, fs):
        frame = raw[off : off + fs]
        state = ref_checksum(frame[:8] + frame[FRAME_HEADER_SIZE:], True, state)
        out += frame[:16] + struct.pack(">2I", *state) + frame[FRAME_HEADER_SIZE:]
    return bytes(out)


def test_big_endian_wal_reads_the_same_transactions(real_wal, real_txns, scratch):
    raw = real_wal.wal.read_bytes()
    assert struct.unpack(">I", raw[:4])[0] == MAGIC_LE  # this host writes little-endian checksums
    path = scratch / "be-wal"
    path.write_bytes(to_big_endian_wal(raw, real_wal.page_size))
    result = read_all(path)
    assert result.header is not None and result.header.big_endian
    txns = result.transactions
    assert len(txns) == len(real_txns)
    for a, b in zip(txns, real_txns):
        assert (a.pages, a.db_pages, a.frames, a.end.frame) == (b.pages, b.db_pages, b.frames, b.end.frame)
        assert a.end.big_endian
    assert apply(real_wal.db.read_bytes(), txns, real_wal.page_size) == real_wal.image(real_wal.commits)
    # ... and resuming keeps the endianness.
    wal = WalFile(str(path))
    try:
        assert same_txns(wal.read(txns[3].end).transactions, txns[4:])
    finally:
        wal.close()


def test_missing_or_empty_wal(scratch):
    assert read_all(scratch / "nope-wal").generation == "empty"
    (scratch / "empty-wal").write_bytes(b"")
    assert read_all(scratch / "empty-wal").generation == "empty"
    (scratch / "hdr-wal").write_bytes(make_header(1024))
    result = read_all(scratch / "hdr-wal")
    assert result.generation == "new" and result.transactions == []


# ----------------------------------------------------------------------------- rolled-back spills

ROLLBACK_BODY = """
conn.execute("PRAGMA cache_size=2")
txn("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
txn(("INSERT INTO t(v) VALUES (?)", (b"a" * 100,)))
conn.execute("BEGIN")
for i in range(300):
    conn.execute("INSERT INTO t(v) VALUES (?)", (rng.randbytes(800),))
conn.execute("ROLLBACK")
save_wal("after_rollback.wal")
txn(("INSERT INTO t(v) VALUES (?)", (b"b" * 100,)))
txn(("UPDATE t SET v = ? WHERE id = 1", (b"c" * 50,)))
"""


@pytest.fixture(scope="module")
def rolled_back(tmp_path_factory) -> RealWal:
    return write_wal(tmp_path_factory.mktemp("rollback"), ROLLBACK_BODY, page_size=1024)


def test_spilled_frames_of_a_rollback_are_never_returned(rolled_back, scratch):
    ps = rolled_back.page_size
    fs = FRAME_HEADER_SIZE + ps
    # Right after the ROLLBACK: only the two commits, though the spill left many frames behind.
    spilled = rolled_back.extra("after_rollback.wal").read_bytes()
    path = scratch / "rb-wal"
    path.write_bytes(spilled)
    txns = read_all(path).transactions
    assert len(txns) == 2
    assert (len(spilled) - WAL_HEADER_SIZE) // fs > txns[-1].end.frame + 10, "the large insert did not spill"
    assert apply(rolled_back.db.read_bytes(), txns, ps) == rolled_back.image(2)


def test_commits_after_a_rollback_overwrite_the_spill(rolled_back):
    ps = rolled_back.page_size
    fs = FRAME_HEADER_SIZE + ps
    result = read_all(rolled_back.wal)
    txns = result.transactions
    assert rolled_back.commits == 4
    assert len(txns) == 4
    # Stale spilled frames are still on disk beyond the last commit ...
    assert (os.path.getsize(rolled_back.wal) - WAL_HEADER_SIZE) // fs > txns[-1].end.frame
    # ... but the image is exactly what the writer committed.
    base = rolled_back.db.read_bytes()
    for k in range(1, 5):
        assert apply(base, txns[:k], ps) == rolled_back.image(k)


# ----------------------------------------------------------------------------- regressions (bugs found and fixed)


def test_sector_padding_frames_are_not_extra_transactions(tmp_path):
    body = """
    conn.execute("PRAGMA synchronous=FULL")
    txn("CREATE TABLE t(x)")
    for i in range(4):
        txn(("INSERT INTO t VALUES (?)", (rng.randbytes(100),)))
    """
    wal = write_wal(tmp_path, body, page_size=4096, uri="file:DB?psow=0")
    txns = read_all(wal.wal).transactions
    # The bytes still replay correctly; only the transaction count is wrong.
    assert apply(wal.db.read_bytes(), txns, 4096) == wal.image(wal.commits)
    assert len(txns) == wal.commits


# ----------------------------------------------------------------------------- resuming without a chain / across a restart


def test_resume_from_a_position_without_checksum(real_wal, real_txns):
    """A position known only by frame number (resumed from a pinned snapshot) still resumes exactly."""
    wal = WalFile(str(real_wal.wal))
    try:
        first = real_txns[0].end
        for k in range(0, len(real_txns) + 1):
            frame = real_txns[k - 1].end.frame if k else 0
            pos = WalPosition(first.salt1, first.salt2, frame, None, real_wal.page_size)
            result = wal.read(pos)
            assert same_txns(result.transactions, real_txns[k:]), k
            assert result.position == real_txns[-1].end
    finally:
        wal.close()


RESTART_BODY = """
txn("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
for i in range(14):
    txn(("INSERT INTO t(v) VALUES (?)", (rng.randbytes(rng.randrange(100, 900)),)))
save_wal("before.wal")
with open(db, "rb") as src, open(os.path.join(out, "before.db"), "wb") as dst:
    dst.write(src.read())
busy, log, done = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
assert busy == 0 and log == done, (busy, log, done)
# The next writer restarts the WAL at frame 1 with salt1 + 1; the old tail stays on disk.
txn(("UPDATE t SET v = ? WHERE id = 3", (b"new",)))
txn(("INSERT INTO t(v) VALUES (?)", (b"after restart",)))
"""


@pytest.fixture(scope="module")
def restarted(tmp_path_factory) -> RealWal:
    return write_wal(tmp_path_factory.mktemp("restart"), RESTART_BODY, page_size=1024)


def test_restart_reads_the_old_tail_then_the_new_generation(restarted, scratch, monkeypatch):
    ps = restarted.page_size
    before_path = scratch / "before-wal"
    before_path.write_bytes(restarted.extra("before.wal").read_bytes())
    old = read_all(before_path).transactions
    assert len(old) == 15
    new_hdr = parse_header(restarted.wal.read_bytes()[:32])
    assert new_hdr is not None and new_hdr.salt1 == (old[0].end.salt1 + 1) & MASK
    new_only = read_all(restarted.wal)
    assert new_only.generation == "new" and len(new_only.transactions) == 2
    k = 10  # resume after old transaction 10: its frames are beyond what the new generation rewrote
    assert old[k - 1].end.frame > new_only.transactions[-1].end.frame
    wal = WalFile(str(restarted.wal))
    try:
        result = wal.read(old[k - 1].end)
    finally:
        wal.close()
    assert result.generation == "restart"
    assert result.old_tail_transactions == len(old) - k
    assert same_txns(result.transactions, old[k:] + new_only.transactions)
    assert result.position == new_only.transactions[-1].end
    # In byte-limited batches (a daemon that is behind), the old tail is read to its end before
    # the new generation, whatever the batch size.
    wal = WalFile(str(restarted.wal))
    try:
        for chunk in (1, 2 * (FRAME_HEADER_SIZE + ps)):
            monkeypatch.setattr(walfile, "READ_CHUNK", chunk)
            pos, got = old[k - 1].end, []
            while (batch := wal.read(pos, max_bytes=1)).transactions:
                got.extend(batch.transactions)
                pos = batch.position
            assert same_txns(got, old[k:] + new_only.transactions), chunk
    finally:
        wal.close()
    # Replaying the old generation from its starting file, then the new one, gives the final image.
    base = restarted.extra("before.db").read_bytes()
    assert apply(base, old, ps) == restarted.image(15)
    assert apply(base, old + new_only.transactions, ps) == restarted.image(restarted.commits)
