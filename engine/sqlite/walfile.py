"""Read committed transactions out of a live SQLite -wal file.

The WAL is read through its own file descriptor (the -wal carries no POSIX locks, so this is safe
next to SQLite connections in the same process).  Only frames whose salts match the header and whose
checksum chain verifies are trusted, and only up to the last *commit* frame: anything after it is a
transaction still being written (or rolled back) and may be rewritten in place.

Checksums use SQLite's linear recurrence in closed form (per page size, how every input word and the
incoming (s0, s1) reach the outgoing pair): a batch of frames costs one integer matrix product.
"""

from __future__ import annotations

import os
import struct
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def _np():
    """numpy, imported on first use: ~0.2-0.4 s that a CLI command reading no WAL never pays."""
    import numpy

    return numpy

WAL_HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24
MAGIC_LE = 0x377F0682
MAGIC_BE = 0x377F0683
MASK = 0xFFFFFFFF
READ_CHUNK = 8 << 20  # the largest single pread of frames
FIRST_CHUNK_FRAMES = 16  # the first pread past a position; chunks double up to READ_CHUNK
OLD_TAIL_FRAMES = 512  # the first pread of an old generation's tail (see WalFile._scan)
PEEK_FRAMES = 4  # frames looked at past the published end for a commit being written (one pread)


@dataclass(frozen=True)
class WalHeader:
    magic: int
    version: int
    page_size: int
    ckpt_seq: int
    salt1: int
    salt2: int
    cksum: tuple[int, int]

    @property
    def big_endian(self) -> bool:
        return self.magic == MAGIC_BE

    @property
    def salts(self) -> bytes:
        return struct.pack(">II", self.salt1, self.salt2)


@dataclass(frozen=True)
class WalPosition:
    """Where reading resumes: just after a commit frame of one WAL generation.

    ``cksum`` is the running checksum after frame ``frame`` (the header checksum when frame is 0);
    None means the chain is unknown (we resumed from a snapshot taken after the WAL moved on), in
    which case the old generation's tail can never be trusted and continuity rests on the
    commit counter check in the shipper.
    """

    salt1: int
    salt2: int
    frame: int
    cksum: tuple[int, int] | None
    page_size: int
    big_endian: bool = False

    def to_json(self) -> dict:
        return {
            "salt1": self.salt1,
            "salt2": self.salt2,
            "frame": self.frame,
            "cksum": list(self.cksum) if self.cksum else None,
            "page_size": self.page_size,
            "big_endian": self.big_endian,
        }

    @classmethod
    def from_json(cls, d: dict) -> "WalPosition":
        ck = d.get("cksum")
        return cls(d["salt1"], d["salt2"], d["frame"], tuple(ck) if ck else None, d["page_size"], d["big_endian"])


@dataclass
class WalTransaction:
    """One committed transaction: the last version of every page it wrote, and the size after it."""

    pages: dict[int, bytes]
    db_pages: int
    end: WalPosition
    frames: int = 0


@dataclass
class ReadResult:
    transactions: list[WalTransaction] = field(default_factory=list)
    position: WalPosition | None = None
    header: WalHeader | None = None
    # "same": continued in the generation we knew; "restart": salt1 advanced by one and we
    # followed it (old tail read first when it was still there); "new": an unrelated generation
    # (salt jump, or no previous position); "empty": no valid WAL header right now.
    generation: str = "same"
    old_tail_transactions: int = 0


def parse_header(buf: bytes) -> WalHeader | None:
    """Parse and verify a WAL header; None when absent, torn or not yet written."""
    if len(buf) < WAL_HEADER_SIZE:
        return None
    magic, version, page_size, ckpt_seq, salt1, salt2, c1, c2 = struct.unpack(">8I", buf[:32])
    if magic not in (MAGIC_LE, MAGIC_BE):
        return None
    if page_size == 1:
        page_size = 65536
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        return None
    words = struct.unpack(">6I" if magic == MAGIC_BE else "<6I", buf[:24])
    if checksum_words(words, (0, 0)) != (c1, c2):  # 6 words: no numpy (its import costs ~0.3 s)
        return None
    return WalHeader(magic, version, page_size, ckpt_seq, salt1, salt2, (c1, c2))


CHECKSUM_CHUNK_FRAMES = 128


def _words(buf: bytes, big_endian: bool) -> "np.ndarray":
    np = _np()
    return np.frombuffer(buf, dtype=">u4" if big_endian else "<u4").astype(np.uint64)


def checksum_words(words, start: tuple[int, int]) -> tuple[int, int]:
    """SQLite's WAL checksum over 32-bit words (headers, a few frames, and the tests' reference)."""
    s0, s1 = start
    w = words if isinstance(words, tuple) else [int(x) for x in words]
    for i in range(0, len(w), 2):
        s0 = (s0 + w[i] + s1) & MASK
        s1 = (s1 + w[i + 1] + s0) & MASK
    return s0, s1


@lru_cache(maxsize=8)
def _coefficients(nwords: int) -> "tuple[np.ndarray, tuple[int, int, int, int]]":
    """How each of ``nwords`` input words and the incoming (s0, s1) reach the outgoing (s0, s1).

    Returns (C, A): C is (nwords, 2) so that ``words @ C`` gives the data part, and A is the 2x2
    matrix applied to the incoming state.  All arithmetic is mod 2**32, which uint64 wrap-around
    preserves because 2**32 divides 2**64.
    """
    np = _np()
    n = nwords + 2
    s0 = np.zeros(n, dtype=np.uint64)
    s1 = np.zeros(n, dtype=np.uint64)
    s0[nwords] = 1
    s1[nwords + 1] = 1
    for i in range(0, nwords, 2):
        s0 = s0 + s1
        s0[i] += np.uint64(1)
        s0 &= np.uint64(MASK)
        s1 = s1 + s0
        s1[i + 1] += np.uint64(1)
        s1 &= np.uint64(MASK)
    coeff = np.stack([s0[:nwords], s1[:nwords]], axis=1).copy()
    a = (int(s0[nwords]), int(s0[nwords + 1]), int(s1[nwords]), int(s1[nwords + 1]))
    return coeff, a


SMALL_CHECKSUM_FRAMES = 8  # up to this many frames the chain is walked in plain Python ...
PYTHON_CHECKSUM_FRAMES = 256  # ... and up to this many while numpy is not imported yet


def frame_checksums(frames: bytes, page_size: int, big_endian: bool, start: tuple[int, int]) -> list[tuple[int, int]]:
    """Running checksum after each frame of a contiguous run of frames, chained from ``start``.

    A few frames are walked in plain Python (~125-145 us per 4 KiB frame), up to
    PYTHON_CHECKSUM_FRAMES until numpy is imported anyway: its import costs ~0.3 s of CPU and
    ~15 MB of RSS for good; the usual unvouched run, an old tail after a WAL restart, is short.
    """
    frame_size = FRAME_HEADER_SIZE + page_size
    count = len(frames) // frame_size
    if count == 0:
        return []
    if count <= SMALL_CHECKSUM_FRAMES or (count <= PYTHON_CHECKSUM_FRAMES and "numpy" not in sys.modules):
        fmt = f"{'>' if big_endian else '<'}{frame_size // 4}I"
        out = []
        state = start
        for words in struct.iter_unpack(fmt, frames[: count * frame_size]):
            state = checksum_words(words[:2] + words[6:], state)
            out.append(state)
        return out
    np = _np()
    matrix = np.frombuffer(frames, dtype=">u4" if big_endian else "<u4", count=count * frame_size // 4)
    matrix = matrix.reshape(count, frame_size // 4)
    coeff, (a00, a01, a10, a11) = _coefficients(2 + page_size // 4)
    # The checksum covers the first 8 bytes of the frame header (2 words) and then the page.
    # Chunks keep the uint64 copies in cache: twice as fast as one big conversion.
    head_coeff, page_coeff = coeff[:2], coeff[2:]
    out = []
    s0, s1 = start
    for first in range(0, count, CHECKSUM_CHUNK_FRAMES):
        part = matrix[first : first + CHECKSUM_CHUNK_FRAMES]
        contrib = (part[:, :2].astype(np.uint64) @ head_coeff + part[:, 6:].astype(np.uint64) @ page_coeff) & np.uint64(MASK)
        for c0, c1 in contrib.tolist():
            s0, s1 = (a00 * s0 + a01 * s1 + c0) & MASK, (a10 * s0 + a11 * s1 + c1) & MASK
            out.append((s0, s1))
    return out


class _HeaderSums:
    """``sums[i]``: the running checksum a frame's header records (for vouched frames)."""

    __slots__ = ("buf", "frame_size")

    def __init__(self, buf: bytes, frame_size: int) -> None:
        self.buf, self.frame_size = buf, frame_size

    def __getitem__(self, i: int) -> tuple[int, int]:
        if i < 0:
            i += len(self.buf) // self.frame_size
        return struct.unpack_from(">2I", self.buf, i * self.frame_size + 16)


class WalFile:
    """A read-only view of ``<db>-wal`` that reopens itself when the file is replaced."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._ino: int | None = None
        self._published: tuple[bytes, int] | None = None  # of the read() in progress
        self._vouched = False  # ... and whether its frames up to mxFrame need no chain walk
        self._head: tuple[bytes, WalHeader | None] = (b"", None)  # the WAL header read() last read

    def _ensure_open(self) -> int | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.close()
            return None
        if self._fd is None or st.st_ino != self._ino:
            self.close()
            self._fd = os.open(self.path, os.O_RDONLY)
            self._ino = os.fstat(self._fd).st_ino
        return self._fd

    def last_write_us(self) -> int | None:
        """When the -wal was last written (its mtime, µs), or None without one."""
        try:
            return os.stat(self.path).st_mtime_ns // 1000
        except FileNotFoundError:
            return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read_at(self, offset: int, size: int) -> bytes:
        fd = self._ensure_open()
        if fd is None:
            return b""
        return os.pread(fd, size, offset)

    def header(self) -> WalHeader | None:
        return parse_header(self.read_at(0, WAL_HEADER_SIZE))

    def peek_commit(self, salts: bytes, max_frame: int, page_size: int,
                    limit: int = PEEK_FRAMES, recheck: bool = True) -> tuple[bytes, int, tuple[int, int]] | int:
        """The first commit frame already *written* past published frame ``max_frame``.

        A writer appends its frames, then (``synchronous=FULL``) fsyncs, and only then publishes
        the commit in the wal-index.  The observer looks here at the WAL write's file event, so a
        commit is seen within one wake-up even while its fsync runs, instead of by a second
        look after it.  Only frame headers are read (``limit`` at most, one pread): a frame
        carrying the generation's salts and a non-zero commit size is a commit frame being
        written now.  A header torn by the concurrent write, or a commit whose writer died before
        publishing it (the next writer then reuses the frames), is caught later: the caller
        records the frame's running checksum and the reader only accepts this evidence for the
        transaction ending at exactly that frame with exactly that running checksum.  Other salts
        after ``max_frame``: the file's header tells whether the WAL restarted (look from frame 1).
        Returns ``(salts, frame, running checksum)``, or else how many frames of a transaction
        were found written with no commit frame among them: 0 (nothing written past the end),
        fewer than ``limit`` (a transaction still being written: its next write comes after this
        look, so its file event will come too) or ``limit`` (too long to tell).  At every WAL write:
        the descriptor is checked against a replaced file only when nothing was found and
        ``recheck`` (False: the caller's look just saw a commit published; its next look checks).
        """
        fd = self._fd if self._fd is not None else self._ensure_open()
        if fd is None:
            return 0
        frame_size = FRAME_HEADER_SIZE + page_size
        # One pread for the frames' headers (a system call right after a wake-up costs ~15-20 us
        # here, copying a few pages ~1 us): the commit frame is usually one of the first.
        buf = os.pread(fd, (limit - 1) * frame_size + FRAME_HEADER_SIZE, WAL_HEADER_SIZE + max_frame * frame_size)
        for i in range(limit):
            at = i * frame_size
            fh = buf[at : at + FRAME_HEADER_SIZE]
            if len(fh) < FRAME_HEADER_SIZE or fh[8:16] != salts or fh[0:4] == b"\0\0\0\0":
                if i == 0:  # nothing written yet, a restarted WAL, or a replaced file
                    ino = self._ino
                    fd = self._ensure_open() if recheck else fd  # reopens a replaced file
                    if fd is None:
                        return 0
                    if self._ino != ino:
                        return self.peek_commit(salts, max_frame, page_size, limit)  # look in the live file
                    head = os.pread(fd, WAL_HEADER_SIZE, 0)
                    if len(head) == WAL_HEADER_SIZE and head[16:24] != salts:  # a restarted WAL, or a new one:
                        # its page size from its own header (the wal-index of a WAL not yet written says 65536)
                        return self.peek_commit(head[16:24], 0, int.from_bytes(head[8:12], "big") or page_size, limit)
                return i  # (frames of this generation found: the descriptor is the live file's)
            if fh[4:8] != b"\0\0\0\0":
                return salts, max_frame + 1 + i, struct.unpack_from(">2I", fh, 16)
        return limit

    def read(self, pos: WalPosition | None, max_bytes: int | None = None,
             published: tuple[bytes, int] | None = None, vouched: bool = False) -> ReadResult:
        """Every committed transaction after ``pos`` (from the start of the WAL when None).

        ``published`` = (salts, mxFrame) from the wal-index: SQLite has committed exactly the
        frames up to mxFrame of that generation, so a scan of it stops there instead of reading
        whatever stale frames of earlier generations follow in the file.  Every frame is read
        once, from our position only: per commit the cost is the commit's own frames, never the
        WAL's length.

        ``vouched``: the caller holds a read transaction and read ``published`` after taking it.
        Then SQLite's wal-index vouches for those frames (they are committed, and no WAL restart
        can overwrite them while our read mark is held), so they are not run through the
        checksum chain: each frame's salts and page number are still checked, and the running
        checksum is taken from its header.  Frames of any other generation (an old tail after
        a restart, a scan without a wal-index) are always chain-verified: there the chain is the
        only evidence.
        """
        self._published = published
        self._vouched = vouched and published is not None
        fd = self._ensure_open()  # the file's identity: checked once per read, not at every pread
        raw = b"" if fd is None else os.pread(fd, WAL_HEADER_SIZE, 0)
        if raw != self._head[0]:  # (the same bytes are not parsed and verified again)
            self._head = (raw, parse_header(raw))
        header = self._head[1]
        result = ReadResult(header=header, position=pos)
        if header is None:
            result.generation = "empty"
            return result
        if pos is not None and pos.cksum is None and header.salts == struct.pack(">II", pos.salt1, pos.salt2):
            # We know the frame count but not the chain (resumed from a pinned snapshot): verify
            # the chain from the header and keep only what comes after our frame.
            start = WalPosition(header.salt1, header.salt2, 0, header.cksum, header.page_size, header.big_endian)
            result.position = start
            self._scan(header.salts, start, result, None)
            anchor = [t.end for t in result.transactions if t.end.frame == pos.frame]
            if pos.frame == 0 or anchor:
                if anchor:
                    result.position = max(anchor[0], result.position, key=lambda p: p.frame)
                result.transactions = [t for t in result.transactions if t.end.frame > pos.frame]
                return result
            result.transactions = []
            result.generation = "new"
            pos = None
        if pos is not None and header.salt1 == pos.salt1 and header.salt2 == pos.salt2:
            if not self._still_ours(pos):
                # Same salts but our frame is gone: treat it as an unrelated generation.
                result.generation = "new"
                pos = None
            else:
                self._scan(header.salts, pos, result, max_bytes)
                return result
        elif pos is not None and header.salt1 == (pos.salt1 + 1) & MASK and pos.cksum is not None:
            # The WAL restarted once.  Frames of the old generation after our position may still be
            # on disk beyond what the new generation has overwritten: read them first.
            result.generation = "restart"
            old_salts = struct.pack(">II", pos.salt1, pos.salt2)
            before = len(result.transactions)
            cut = self._scan(old_salts, pos, result, max_bytes)
            result.old_tail_transactions = len(result.transactions) - before
            if cut:
                # The batch ended inside the old tail: the next read continues it.  Going on with
                # the new generation now would skip the rest of the old tail.
                return result
        else:
            result.generation = "new"
        start = WalPosition(header.salt1, header.salt2, 0, header.cksum, header.page_size, header.big_endian)
        result.position = start
        self._scan(header.salts, start, result, max_bytes)
        return result

    def _still_ours(self, pos: WalPosition) -> bool:
        if pos.frame == 0 or pos.cksum is None:
            return True
        off = WAL_HEADER_SIZE + (pos.frame - 1) * (FRAME_HEADER_SIZE + pos.page_size)
        hdr = os.pread(self._fd, FRAME_HEADER_SIZE, off)  # (read(): the descriptor it checked)
        if len(hdr) < FRAME_HEADER_SIZE:
            return False
        _pgno, _commit, s1, s2, c1, c2 = struct.unpack(">6I", hdr)
        return (s1, s2) == (pos.salt1, pos.salt2) and (c1, c2) == pos.cksum

    def _scan(self, salts: bytes, pos: WalPosition, result: ReadResult, max_bytes: int | None) -> bool:
        """Append committed transactions after ``pos`` whose frames carry ``salts`` (for read(),
        through the descriptor it checked).  True when it stopped at ``max_bytes`` (there may
        be more), False at the end of the valid frames."""
        if pos.cksum is None:
            return False
        page_size = pos.page_size
        frame_size = FRAME_HEADER_SIZE + page_size
        frame = pos.frame
        cksum = pos.cksum
        pending: dict[int, bytes] = {}
        pending_frames = 0
        last_commit: tuple[int, int, bytes] | None = None
        scanned = 0
        limit = None
        published = self._published
        vouched = False
        if published is not None and published[0] == salts:
            limit = published[1]  # SQLite committed no frame of this generation past it
            vouched = self._vouched
        max_want = max(READ_CHUNK - READ_CHUNK % frame_size, frame_size)
        # Start small and double: past the valid end the file may hold megabytes of an earlier
        # generation's frames, which must not be read and checksummed at every wake-up.  A scan
        # of another generation than the wal-index names (an old tail after a restart) reads up
        # to OLD_TAIL_FRAMES at once: the new generation overwrites that tail as it grows, so
        # it is copied first and verified after (the salt check keeps stale frames cheap).
        first = FIRST_CHUNK_FRAMES if published is None or published[0] == salts else OLD_TAIL_FRAMES
        want = min(max_want, first * frame_size)
        while True:
            if limit is not None:
                if frame >= limit:
                    break
                want = min(want, (limit - frame) * frame_size)
            offset = WAL_HEADER_SIZE + frame * frame_size
            asked = want
            buf = os.pread(self._fd, want, offset)
            want = min(max_want, want * 2)
            count = len(buf) // frame_size
            if count == 0:
                break
            if not vouched:
                # Only frames carrying the generation's salts can be valid: checksum just those
                # (past the valid end, e.g. after a restart, the file holds older generations'
                # frames, and the chain walk is the one thing here that needs numpy).
                same = 0
                while same < count and buf[same * frame_size + 8 : same * frame_size + 16] == salts:
                    same += 1
                if same == 0:
                    break
                count = same
            buf = buf[: count * frame_size]
            # Vouched frames (see read()) carry their running checksum in their own header.
            sums = _HeaderSums(buf, frame_size) if vouched else frame_checksums(buf, page_size, pos.big_endian, cksum)
            stop = False
            for i in range(count):
                base = i * frame_size
                pgno, commit, s1, s2, c1, c2 = struct.unpack_from(">6I", buf, base)
                if buf[base + 8 : base + 16] != salts or pgno == 0 or (not vouched and (c1, c2) != sums[i]):
                    stop = True
                    break
                page = buf[base + FRAME_HEADER_SIZE : base + frame_size]
                if commit and not pending and last_commit == (pgno, commit, page) and result.transactions:
                    # Sector padding (psow=0, synchronous=FULL): SQLite repeats the commit frame
                    # to fill the sector.  Same commit, so it extends the previous transaction.
                    prev = result.transactions[-1]
                    prev.end = WalPosition(prev.end.salt1, prev.end.salt2, frame + i + 1, sums[i], page_size, pos.big_endian)
                    prev.frames += 1
                    result.position = prev.end
                    continue
                pending[pgno] = page
                pending_frames += 1
                if commit:
                    last_commit = (pgno, commit, page)
                    end = WalPosition(
                        int.from_bytes(salts[:4], "big"),
                        int.from_bytes(salts[4:], "big"),
                        frame + i + 1,
                        sums[i],
                        page_size,
                        pos.big_endian,
                    )
                    result.transactions.append(WalTransaction(pending, commit, end, pending_frames))
                    result.position = end
                    pending = {}
                    pending_frames = 0
            if stop or count * frame_size < asked:
                break
            frame += count
            cksum = sums[-1]
            scanned += count * frame_size
            # A soft limit: stop at a transaction boundary once enough was read, so a huge backlog
            # is shipped in bounded batches while a single huge transaction is still read whole.
            if max_bytes is not None and scanned >= max_bytes and result.transactions:
                return True
        # Frames after the last commit are dropped on purpose: they may be rewritten before commit.
        return False
