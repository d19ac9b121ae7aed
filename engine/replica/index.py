"""What a replica holds, from one LIST: generations, snapshots, segments, heartbeats, the window.

Planning never opens an object: everything needed to choose snapshots and segments is in the key
names (see layout.py).  Only the chosen objects are downloaded, and each is verified on use.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

from ..errors import ObjectCorrupt
from ..storage import Storage
from . import layout
from .format import decode_segment

HEADER_PROBE = 64 << 10
_PREFIX = struct.Struct("<4sHI")


def object_header(storage: Storage, key: str) -> dict:
    """The JSON header of a snapshot or segment from one ranged read, without downloading it.

    Not verified (the digest covers the whole object): good for identity and hints, never for
    restoring.  Raises ObjectCorrupt when the bytes are not an object header.
    """
    head = storage.get_range(key, 0, HEADER_PROBE)
    if len(head) < _PREFIX.size:
        raise ObjectCorrupt(f"{storage.url}/{key}: object is truncated ({len(head)} bytes)")
    magic, _version, head_len = _PREFIX.unpack_from(head, 0)
    if magic not in (b"WRSG", b"WRSN"):
        raise ObjectCorrupt(f"{storage.url}/{key}: not a walrewind object (bad magic)")
    if _PREFIX.size + head_len > len(head):
        head = storage.get_range(key, 0, _PREFIX.size + head_len)
    try:
        header = json.loads(head[_PREFIX.size : _PREFIX.size + head_len])
    except ValueError as exc:
        raise ObjectCorrupt(f"{storage.url}/{key}: unreadable header ({exc})") from None
    if not isinstance(header, dict):
        raise ObjectCorrupt(f"{storage.url}/{key}: unreadable header")
    return header


def _agrees(inner: layout.SegmentKey, outer: layout.SegmentKey) -> bool:
    """Whether ``outer`` can hold the same records as ``inner`` judging from names: its txid range
    contains inner's and its times bracket inner's (equal where the txid ranges share an end)."""
    if not (outer.first_txid <= inner.first_txid and inner.last_txid <= outer.last_txid):
        return False
    if (inner.first_txid, inner.last_txid) == (outer.first_txid, outer.last_txid):
        return False  # same txids under two names: two histories, never a compaction leftover
    if not (outer.first_ts_us <= inner.first_ts_us and inner.last_ts_us <= outer.last_ts_us):
        return False
    if inner.first_txid == outer.first_txid and inner.first_ts_us != outer.first_ts_us:
        return False
    if inner.last_txid == outer.last_txid and inner.last_ts_us != outer.last_ts_us:
        return False
    return True


def normalise_segments(
    segments: list[layout.SegmentKey],
) -> tuple[list[layout.SegmentKey], list[layout.SegmentKey]]:
    """Sort segments by txid and drop those contained in another present segment.

    A compaction creates a merged segment before deleting its sources, so for a while (or for
    good, if it is interrupted) the replica holds both; the merged one is a verified bit-for-bit
    concatenation of the sources, so readers use it and ignore the contained ones.  A segment
    whose range is contained but whose times disagree with the covering one, or with identical
    txids under another name, is kept: ``Generation.overlaps`` then reports two writers.
    Returns (kept, superseded), both in txid order.
    """
    ordered = sorted(segments, key=lambda s: (s.first_txid, -s.last_txid, s.first_ts_us, s.last_ts_us))
    kept: list[layout.SegmentKey] = []
    superseded: list[layout.SegmentKey] = []
    reach: layout.SegmentKey | None = None  # the kept segment reaching the highest txid so far
    for seg in ordered:
        if reach is not None and _agrees(seg, reach):
            superseded.append(seg)
            continue
        kept.append(seg)
        if reach is None or seg.last_txid > reach.last_txid:
            reach = seg
    return kept, superseded


@dataclass
class Generation:
    id: str
    snapshots: list[layout.SnapshotKey] = field(default_factory=list)
    segments: list[layout.SegmentKey] = field(default_factory=list)
    heartbeats: list[layout.HeartbeatKey] = field(default_factory=list)
    # Segments dropped by normalise_segments(): each is contained in a present segment that
    # covers it (left by a compaction between "merged object created" and "sources deleted").
    superseded: list[layout.SegmentKey] = field(default_factory=list)

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
        (the lease should make that impossible); such history must not be restored blindly.

        Runs on the normalised list (``normalise_segments``), so a segment contained in another
        one that agrees with it (a compaction's leftovers) is not an overlap; a partial overlap is.
        Each segment is compared with the one reaching furthest before it, not only its neighbour.
        """
        out = []
        reach: layout.SegmentKey | None = None
        for seg in self.segments:
            if reach is not None and seg.first_txid <= reach.last_txid:
                out.append((reach, seg))
            if reach is None or seg.last_txid > reach.last_txid:
                reach = seg
        return out

    @property
    def transaction_count(self) -> int:
        return sum(s.last_txid - s.first_txid + 1 for s in self.segments)

    @property
    def restorable(self) -> bool:
        return bool(self.snapshots)

    @property
    def has_history(self) -> bool:
        """False for a generation reduced by retention to snapshots alone (no segment, no
        heartbeat): its snapshots are kept points, not a history that can be replayed."""
        return bool(self.segments or self.heartbeats)

    @property
    def exact_snapshot(self) -> layout.SnapshotKey | None:
        """Where this generation's transaction-exact window starts: the earliest snapshot from which
        segments continue without a gap to the generation's last txid (docs/FORMAT.md, "Exact
        window and kept snapshots").  None when no snapshot has such a chain (a missing segment).

        Retention deletes segments older than a newer snapshot, so older snapshots ("tier"
        snapshots) can only be restored as they are; deciding this from names keeps planning LIST-only.
        """
        if not self.snapshots:
            return None
        end = self.last_txid
        run: tuple[int, int] | None = None  # the covered txid run ending at `end`, if any
        for seg in self.segments:  # sorted by first_txid; merging tolerates contained segments
            if run is not None and seg.first_txid <= run[1] + 1:
                run = (run[0], max(run[1], seg.last_txid))
            else:
                run = (seg.first_txid, seg.last_txid)
        best = None
        for snap in reversed(self.snapshots):
            if snap.txid >= end or (run is not None and run[0] <= snap.txid + 1 and run[1] >= end):  # type: ignore[operator]
                best = snap
            else:
                break  # an older snapshot would need a superset of the missing txids
        return best

    @property
    def holes(self) -> list[tuple[int, int]]:
        """Missing transactions, as (first, last) txid ranges, judged from names alone.

        A range is a hole when no present segment holds it and no snapshot bridges it (a snapshot
        at its last txid means retention dropped the segments before a newer base on purpose: the
        history simply starts there).  Also a hole: txids after the last segment that a heartbeat
        vouches for (the daemon uploaded them, and they are gone).
        """
        if not self.snapshots:
            return []
        snapshot_txids = sorted(s.txid for s in self.snapshots)
        out: list[tuple[int, int]] = []
        covered = snapshot_txids[0]  # every txid up to here is restorable-to (or before the history)
        for seg in self.segments:
            bridge = max([covered] + [t for t in snapshot_txids if t < seg.first_txid])
            if seg.first_txid > bridge + 1:
                out.append((bridge + 1, seg.first_txid - 1))
            covered = max(bridge, seg.last_txid)
        covered = max(covered, snapshot_txids[-1])
        vouched = self.vouched_txid or 0
        if vouched > covered:
            out.append((covered + 1, vouched))
        return out

    @property
    def tier_snapshots(self) -> list[layout.SnapshotKey]:
        """Snapshots older than the exact window: restorable only to the snapshot itself."""
        exact = self.exact_snapshot
        return [s for s in self.snapshots if exact is not None and s.txid < exact.txid]


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
            gen.segments, gen.superseded = normalise_segments(gen.segments)
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

    def exact_window(self) -> tuple[Generation, layout.SnapshotKey] | None:
        """(generation, snapshot) where the replica's transaction-exact window starts.

        Walks back from the newest generation while each generation is exact from its own first
        snapshot; an older generation reduced to snapshots (``has_history`` False) is not part of
        the window.  None when the newest generation has no gap-free chain (a missing segment):
        then there is no exact window to speak of and restores report the hole instead.
        """
        found = None
        for i, gen in enumerate(reversed(self.generations)):
            exact = gen.exact_snapshot if (i == 0 or gen.has_history) else None
            if exact is None:
                break
            found = (gen, exact)
            if exact.txid != gen.snapshots[0].txid:
                break
        return found

    def kept_snapshots(self) -> list[layout.SnapshotKey]:
        """Snapshots older than the exact window (kept by retention tiers): restorable as they are."""
        window = self.exact_window()
        if window is None:
            return []
        start = window[1]
        return [s for g in self.generations for s in g.snapshots if (s.generation, s.txid) < (start.generation, start.txid)]

    def db_id(self) -> str | None:
        if not self.generations:
            return None
        snap = self.generations[-1].snapshots[0]
        return object_header(self.storage, snap.key).get("db_id")

    def load_segment(self, seg: layout.SegmentKey):
        return decode_segment(self.storage.get(seg.key), f"{self.storage.url}/{seg.key}")

    def summary(self) -> dict:
        """Everything `walrewind ls` prints, as plain data."""
        from ..timeparse import format_us

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
                    "exact_from": format_us(g.exact_snapshot.ts_us) if g.exact_snapshot and g.has_history else None,
                    "segments": len(g.segments),
                    "transactions": g.transaction_count,
                    "holes": [list(h) for h in g.holes],
                }
            )
        latest = self.latest()
        window = self.exact_window()
        return {
            "replica": self.storage.url,
            "earliest": format_us(self.earliest_us()) if self.generations else None,
            # Transaction-exact from here to "latest"; before it only the snapshots listed below.
            "exact_from": format_us(window[1].ts_us) if window else None,
            "exact_from_txid": window[1].txid if window else None,
            "snapshots_beyond_window": [
                {"generation": s.generation, "txid": s.txid, "time": format_us(s.ts_us)} for s in self.kept_snapshots()
            ],
            "latest": format_us(latest[1]) if latest else None,
            "latest_txid": latest[0] if latest else None,
            "complete_through": (
                format_us(self.generations[-1].complete_through_us) if self.generations else None  # type: ignore[arg-type]
            ),
            "transactions": sum(g.transaction_count for g in self.generations),
            # Missing transactions ([first, last] txid ranges): points after a hole's start cannot be
            # restored exactly until a later snapshot (docs/FORMAT.md, "Choosing objects from names").
            "holes": [list(h) for g in self.generations for h in g.holes],
            "generations": gens,
        }
