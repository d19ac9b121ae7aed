"""Where objects live in a replica, and how their names encode what a restore needs to choose them.

    generations/<gen>/snapshots/<txid:016x>-<ts_us:016x>.snap
    generations/<gen>/segments/<first_txid:016x>-<last_txid:016x>-<first_ts:016x>-<last_ts:016x>.seg
    generations/<gen>/heartbeats/<ts_us:016x>-<txid:016x>

A generation is one continuous history that starts with a snapshot.  Its id starts with the start
time in hex so generations sort chronologically.  Fixed-width hex keeps lexicographic order equal
to numeric order, so a sorted LIST is already a timeline and no object has to be opened to plan.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

GEN_RE = re.compile(r"[0-9a-f]{16}-[0-9a-f]{8}")  # use with fullmatch
_SNAP_RE = re.compile(r"^generations/([0-9a-f]{16}-[0-9a-f]{8})/snapshots/([0-9a-f]{16})-([0-9a-f]{16})\.snap$")
_SEG_RE = re.compile(
    r"^generations/([0-9a-f]{16}-[0-9a-f]{8})/segments/([0-9a-f]{16})-([0-9a-f]{16})-([0-9a-f]{16})-([0-9a-f]{16})\.seg$"
)
_BEAT_RE = re.compile(r"^generations/([0-9a-f]{16}-[0-9a-f]{8})/heartbeats/([0-9a-f]{16})-([0-9a-f]{16})$")


def new_generation_id(now_us: int) -> str:
    return f"{now_us:016x}-{secrets.token_hex(4)}"


@dataclass(frozen=True, order=True)
class SnapshotKey:
    generation: str
    txid: int
    ts_us: int

    @property
    def key(self) -> str:
        return f"generations/{self.generation}/snapshots/{self.txid:016x}-{self.ts_us:016x}.snap"


@dataclass(frozen=True, order=True)
class SegmentKey:
    generation: str
    first_txid: int
    last_txid: int
    first_ts_us: int
    last_ts_us: int

    @property
    def key(self) -> str:
        return (
            f"generations/{self.generation}/segments/"
            f"{self.first_txid:016x}-{self.last_txid:016x}-{self.first_ts_us:016x}-{self.last_ts_us:016x}.seg"
        )


@dataclass(frozen=True, order=True)
class HeartbeatKey:
    generation: str
    ts_us: int
    txid: int

    @property
    def key(self) -> str:
        return f"generations/{self.generation}/heartbeats/{self.ts_us:016x}-{self.txid:016x}"


def parse_key(key: str) -> SnapshotKey | SegmentKey | HeartbeatKey | None:
    """Recognise one of our object keys; anything else (foreign files, temp files) is None."""
    if m := _SEG_RE.fullmatch(key):
        return SegmentKey(m.group(1), *(int(g, 16) for g in m.groups()[1:]))
    if m := _SNAP_RE.fullmatch(key):
        return SnapshotKey(m.group(1), int(m.group(2), 16), int(m.group(3), 16))
    if m := _BEAT_RE.fullmatch(key):
        return HeartbeatKey(m.group(1), int(m.group(2), 16), int(m.group(3), 16))
    return None
