"""What a replica holds, from one LIST: generations, snapshots, segments, heartbeats, the window.

Planning never opens an object: everything needed to choose snapshots and segments is in the key
names (see layout.py).  Only the chosen objects are downloaded, and each is verified on use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import layout
from .format import decode_segment, read_snapshot
from .storage import Storage, StorageError


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
    def transaction_count(self) -> int:
        return sum(s.last_txid - s.first_txid + 1 for s in self.segments)

    @property
    def restorable(self) -> bool:
        return bool(self.snapshots)


class Replica:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.generations: list[Generation] = []
        self.refresh()

    def refresh(self) -> None:
        gens: dict[str, Generation] = {}
        for info in self.storage.list("generations/"):
            parsed = layout.parse_key(info.key)
            if parsed is None:
                continue
            gen = gens.setdefault(parsed.generation, Generation(parsed.generation))
            if isinstance(parsed, layout.SnapshotKey):
                gen.snapshots.append(parsed)
            elif isinstance(parsed, layout.SegmentKey):
                gen.segments.append(parsed)
            else:
                gen.heartbeats.append(parsed)
        for gen in gens.values():
            gen.snapshots.sort(key=lambda s: s.txid)
            gen.segments.sort(key=lambda s: s.first_txid)
            gen.heartbeats.sort(key=lambda h: h.ts_us)
        self.generations = sorted((g for g in gens.values() if g.restorable), key=lambda g: g.id)

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
        header, _ = read_snapshot(self.storage.get(snap.key), snap.key)
        return header.get("db_id")

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
