"""What a replica holds, from one LIST: generations, snapshots, segments, heartbeats, the window.

Planning never opens an object: everything needed to choose snapshots and segments is in the key
names (see layout.py).  Only the chosen objects are downloaded, and each is verified on use.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

from . import layout
from .format import FormatError, decode_segment
from .storage import Storage

HEADER_PROBE = 64 << 10
_PREFIX = struct.Struct("<4sHI")


def object_header(storage: Storage, key: str) -> dict:
    """The JSON header of a snapshot or segment from one ranged read, without downloading it.

    Not verified (the digest covers the whole object): good for identity and hints, never for
    restoring.  Raises FormatError when the bytes are not an object header.
    """
    head = storage.get_range(key, 0, HEADER_PROBE)
    if len(head) < _PREFIX.size:
        raise FormatError(f"{storage.url}/{key}: object is truncated ({len(head)} bytes)")
    magic, _version, head_len = _PREFIX.unpack_from(head, 0)
    if magic not in (b"WRSG", b"WRSN"):
        raise FormatError(f"{storage.url}/{key}: not a walrewind object (bad magic)")
    if _PREFIX.size + head_len > len(head):
        head = storage.get_range(key, 0, _PREFIX.size + head_len)
    try:
        header = json.loads(head[_PREFIX.size : _PREFIX.size + head_len])
    except ValueError as exc:
        raise FormatError(f"{storage.url}/{key}: unreadable header ({exc})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{storage.url}/{key}: unreadable header")
    return header


@dataclass
class Generation:
    id: str
    snapshots: list[layout.SnapshotKey] = field(default_factory=list)
    segments: list[layout.SegmentKey] = field(default_factory=list)
    heartbeats: list[layout.HeartbeatKey] = field(default_factory=list)

    @property
    def start_us(self) -> int | None:
        return self.snapshots[0].ts_us if self.snapshots else None

    @property
    def first_txid(self) -> int | None:
        return self.snapshots[0].txid if self.snapshots else None

    @property
    def last_txid(self) -> int | None:
        txids = [s.txid for s in self.snapshots] + [s.last_txid for s in self.segments]
        return max(txids) if txids else None

    @property
    def last_commit_us(self) -> int | None:
        stamps = [s.ts_us for s in self.snapshots] + [s.last_ts_us for s in self.segments]
        return max(stamps) if stamps else None

    @property
    def complete_through_us(self) -> int | None:
        """Until when the daemon vouched for this history (newest heartbeat or commit)."""
        stamps = [h.ts_us for h in self.heartbeats]
        if self.last_commit_us is not None:
            stamps.append(self.last_commit_us)
        return max(stamps) if stamps else None

    @property
    def vouched_txid(self) -> int | None:
        """The newest txid a heartbeat says was uploaded (segments after the last one present
        must exist up to it, or some are missing)."""
        return max((h.txid for h in self.heartbeats), default=None)

    def overlaps(self) -> list[tuple[layout.SegmentKey, layout.SegmentKey]]:
        """Pairs of segments whose txid ranges overlap: two writers appended to one generation
        (the lease should make that impossible); such history must not be restored blindly."""
        out = []
        for prev, seg in zip(self.segments, self.segments[1:]):
            if seg.first_txid <= prev.last_txid:
                out.append((prev, seg))
        return out

    @property
    def transaction_count(self) -> int:
        return sum(s.last_txid - s.first_txid + 1 for s in self.segments)

    @property
    def restorable(self) -> bool:
        return bool(self.snapshots)


class Replica:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.generations: list[Generation] = []
        self.sizes: dict[str, int] = {}  # object sizes from the listing (restores bound prefetching)
        self.refresh()

    def refresh(self) -> None:
        gens: dict[str, Generation] = {}
        sizes: dict[str, int] = {}
        for info in self.storage.list("generations/"):
            parsed = layout.parse_key(info.key)
            if parsed is None:
                continue
            sizes[info.key] = info.size
            gen = gens.setdefault(parsed.generation, Generation(parsed.generation))
            if isinstance(parsed, layout.SnapshotKey):
                gen.snapshots.append(parsed)
            elif isinstance(parsed, layout.SegmentKey):
                gen.segments.append(parsed)
            else:
                gen.heartbeats.append(parsed)
        for gen in gens.values():
            gen.snapshots.sort(key=lambda s: s.txid)
            gen.segments.sort(key=lambda s: (s.first_txid, s.last_txid))
            gen.heartbeats.sort(key=lambda h: h.ts_us)
        self.generations = sorted((g for g in gens.values() if g.restorable), key=lambda g: g.id)
        self.sizes = sizes

    @property
    def empty(self) -> bool:
        return not self.generations

    def earliest_us(self) -> int | None:
        return self.generations[0].start_us if self.generations else None

    def latest(self) -> tuple[int, int] | None:
        """(txid, commit time) of the newest restorable point."""
        if not self.generations:
            return None
        gen = self.generations[-1]
        return gen.last_txid, gen.last_commit_us  # type: ignore[return-value]

    def db_id(self) -> str | None:
        if not self.generations:
            return None
        snap = self.generations[-1].snapshots[0]
        return object_header(self.storage, snap.key).get("db_id")

    def load_segment(self, seg: layout.SegmentKey):
        return decode_segment(self.storage.get(seg.key), f"{self.storage.url}/{seg.key}")

    def summary(self) -> dict:
        """Everything `walrewind ls` prints, as plain data."""
        from .timeparse import format_us

        gens = []
        for g in self.generations:
            gens.append(
                {
                    "generation": g.id,
                    "start": format_us(g.start_us) if g.start_us is not None else None,
                    "first_txid": g.first_txid,
                    "last_txid": g.last_txid,
                    "last_commit": format_us(g.last_commit_us) if g.last_commit_us is not None else None,
                    "complete_through": format_us(g.complete_through_us) if g.complete_through_us else None,
                    "snapshots": [{"txid": s.txid, "time": format_us(s.ts_us)} for s in g.snapshots],
                    "segments": len(g.segments),
                    "transactions": g.transaction_count,
                }
            )
        latest = self.latest()
        return {
            "replica": self.storage.url,
            "earliest": format_us(self.earliest_us()) if self.generations else None,
            "latest": format_us(latest[1]) if latest else None,
            "latest_txid": latest[0] if latest else None,
            "complete_through": (
                format_us(self.generations[-1].complete_through_us) if self.generations else None  # type: ignore[arg-type]
            ),
            "transactions": sum(g.transaction_count for g in self.generations),
            "generations": gens,
        }
