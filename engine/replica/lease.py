"""Fencing: at most one daemon ships into a replica path, and only one database's history goes there.

Objects (all create-only, never overwritten; see docs/DESIGN.md section 9 and docs/FORMAT.md):

    lease/<epoch:016x>                          who holds epoch N (JSON, below)
    lease/renewals/<epoch:016x>-<ts_us:016x>    "the holder of epoch N was alive at ts" (empty)

S3's create-only PUT is a compare-and-set on *new* keys, so the lease is a sequence of epochs:
taking the lease means creating ``lease/<newest + 1>``; of two daemons racing for the same epoch
exactly one create succeeds.  Holding epoch N is proven by the absence of ``lease/<N + 1>``.

* **Liveness.** The holder renews by writing heartbeats (``generations/<gen>/heartbeats/<ts>-<txid>``,
  at most one a minute, which restores use anyway) or, while it cannot vouch for completeness
  (spool full, tail stuck), an empty ``lease/renewals/`` object.  A starting daemon lists ``lease/``
  and ``generations/`` once and takes the newest of the epoch's ``since``, its renewals and any
  heartbeat as the holder's last sign of life; the lease expires ``lease_us`` after it.
* **Start.** Free when there is no epoch, the newest epoch is a release marker, the holder is this
  same daemon slot (same host and state directory: our flock on that directory proves the old
  process is gone), the lease expired, or ``takeover`` is given.  Otherwise: refused, naming the
  holder (host, pid, since, database) and when its lease expires.
* **Fencing.** Before every upload the holder checks, without a request, that its own lease is
  still valid: ``last renewal + lease_us - margin`` (margin = lease/4, covering clock skew between
  hosts).  If it is not (S3 was unreachable, so renewals failed), it re-acquires by creating
  ``lease/<N + 1>``; if that object exists, another daemon took over and this one stops without
  uploading.  Once a minute (with its heartbeat) it also checks that ``lease/<N + 1>`` does not
  exist, which is how a daemon displaced by ``--takeover`` learns it within a minute.
* **Release.** A clean stop creates ``lease/<N + 1>`` marked ``released``: the next daemon starts
  at once, and the stopping one is fenced by construction.

Every epoch object also records the database identity (``db_id``, path, host), which is how a
daemon refuses to append a different database's history to a replica path (engine/daemon/identity.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field

from .. import defaults
from ..errors import ForeignReplica, LeaseError, LeaseHeld, LeaseLost, ObjectNotFound  # noqa: F401
from ..storage import Storage
from ..timeparse import format_us
from . import layout

log = logging.getLogger("walrewind.lease")

LEASE_SECONDS = defaults.LEASE_SECONDS
LEASE_VERSION = 1
_EPOCH_RE = re.compile(r"lease/([0-9a-f]{16})")
_RENEWAL_RE = re.compile(r"lease/renewals/([0-9a-f]{16})-([0-9a-f]{16})")
KEEP_EPOCHS = 3  # older epoch objects are deleted after a successful acquire (best effort)


def now_us() -> int:
    return time.time_ns() // 1000


def epoch_key(epoch: int) -> str:
    return f"lease/{epoch:016x}"


def renewal_key(epoch: int, ts_us: int) -> str:
    return f"lease/renewals/{epoch:016x}-{ts_us:016x}"


@dataclass
class Holder:
    """Content of ``lease/<epoch>`` (JSON with these keys; readers ignore unknown keys)."""

    epoch: int
    host: str
    pid: int
    since_us: int
    state_dir: str
    db_path: str
    db_id: str
    lease_us: int
    released: bool = False
    version: int = LEASE_VERSION

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, blob: bytes, key: str) -> "Holder":
        try:
            data = json.loads(blob)
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except (ValueError, TypeError, KeyError) as exc:
            raise LeaseError(f"lease object {key} is unreadable ({exc}); refusing to guess who holds the replica") from None

    def describe(self) -> str:
        return (
            f"pid {self.pid} on host {self.host} (since {format_us(self.since_us)}, database {self.db_path}, "
            f"state directory {self.state_dir})"
        )


@dataclass
class ReplicaScan:
    """What a starting daemon learns from its only two LISTs (``lease/`` and ``generations/``)."""

    epochs: list[int] = field(default_factory=list)
    renewals: dict[int, list[int]] = field(default_factory=dict)
    newest_heartbeat_us: int | None = None
    max_txid: int = 0
    generations_with_snapshot: set[str] = field(default_factory=set)
    newest_snapshot: layout.SnapshotKey | None = None  # first snapshot of the newest restorable generation
    earliest_snapshot_us: int | None = None  # the oldest snapshot's moment: where the restorable window starts
    holder: Holder | None = None  # content of the newest epoch

    @property
    def newest_epoch(self) -> int:
        return self.epochs[-1] if self.epochs else 0


def scan(storage: Storage) -> ReplicaScan:
    out = ReplicaScan()
    for info in storage.list("lease/"):
        if m := _EPOCH_RE.fullmatch(info.key):
            out.epochs.append(int(m.group(1), 16))
        elif m := _RENEWAL_RE.fullmatch(info.key):
            out.renewals.setdefault(int(m.group(1), 16), []).append(int(m.group(2), 16))
    out.epochs.sort()
    snapshots: dict[str, layout.SnapshotKey] = {}
    for info in storage.list("generations/"):
        parsed = layout.parse_key(info.key)
        if isinstance(parsed, layout.SegmentKey):
            out.max_txid = max(out.max_txid, parsed.last_txid)
        elif isinstance(parsed, layout.SnapshotKey):
            out.max_txid = max(out.max_txid, parsed.txid)
            first = snapshots.get(parsed.generation)
            if first is None or parsed.txid < first.txid:
                snapshots[parsed.generation] = parsed
            out.earliest_snapshot_us = min(out.earliest_snapshot_us or parsed.ts_us, parsed.ts_us)
        elif isinstance(parsed, layout.HeartbeatKey):
            out.max_txid = max(out.max_txid, parsed.txid)
            out.newest_heartbeat_us = max(out.newest_heartbeat_us or 0, parsed.ts_us)
    out.generations_with_snapshot = set(snapshots)
    if snapshots:
        out.newest_snapshot = snapshots[max(snapshots)]
    if out.epochs:
        key = epoch_key(out.newest_epoch)
        out.holder = Holder.from_bytes(storage.get(key), key)
    return out


class Lease:
    """This daemon's side of the protocol described in the module docstring."""

    def __init__(self, storage: Storage, state_dir: str, db_path: str, lease_seconds: float = LEASE_SECONDS) -> None:
        self.storage = storage
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.state_dir = state_dir
        self.db_path = db_path
        self.lease_us = int(lease_seconds * 1_000_000)
        self.margin_us = self.lease_us // 4
        self.epoch: int | None = None
        self.db_id: str | None = None
        self.since_us = 0
        self.last_beat_us = 0
        self.reacquired = 0
        self._renewal: str | None = None

    # -- start ---------------------------------------------------------------------------------
    def is_mine(self, holder: Holder) -> bool:
        return holder.host == self.host and holder.state_dir == self.state_dir

    def last_alive_us(self, found: ReplicaScan) -> int:
        holder = found.holder
        assert holder is not None
        stamps = [holder.since_us, *found.renewals.get(holder.epoch, ())]
        if found.newest_heartbeat_us is not None:
            stamps.append(found.newest_heartbeat_us)
        return max(stamps)

    def check_free(self, found: ReplicaScan, takeover: bool) -> None:
        """Raise LeaseHeld unless this daemon may take the lease now."""
        holder = found.holder
        if holder is None or holder.released or self.is_mine(holder):
            return
        alive = self.last_alive_us(found)
        expires = alive + holder.lease_us
        if now_us() >= expires:
            log.warning("lease of %s expired at %s; taking over", holder.describe(), format_us(expires))
            return
        if takeover:
            log.warning("taking the lease over from %s (--takeover); it stops at its next lease check", holder.describe())
            return
        raise LeaseHeld(
            f"{self.storage.url} is being replicated by another walrewind daemon: {holder.describe()}, "
            f"last seen alive {format_us(alive)}; its lease expires {format_us(expires)} unless renewed. "
            "Two daemons must never ship into one replica path: stop that daemon, wait for its lease to "
            "expire, or pass --takeover if it is gone for good"
        )

    def acquire(self, found: ReplicaScan, db_id: str) -> None:
        """Create ``lease/<newest + 1>`` (create-only: of two racing daemons one wins)."""
        self.db_id = db_id
        self._create(found.newest_epoch + 1)
        for old in found.epochs:
            if old <= (self.epoch or 0) - KEEP_EPOCHS:
                self._delete_quietly(epoch_key(old))
        for old, stamps in found.renewals.items():
            if old < (self.epoch or 0):
                for ts in stamps:
                    self._delete_quietly(renewal_key(old, ts))

    def _holder(self, epoch: int, released: bool = False) -> Holder:
        return Holder(epoch, self.host, self.pid, now_us(), self.state_dir, self.db_path, self.db_id or "",
                      self.lease_us, released=released)

    def _create(self, epoch: int) -> None:
        holder = self._holder(epoch)
        since = holder.since_us
        key = epoch_key(epoch)
        if not self.storage.put_if_absent(key, holder.to_bytes()):
            other = Holder.from_bytes(self.storage.get(key), key)
            if self.epoch is None:
                raise LeaseHeld(
                    f"{self.storage.url}: another walrewind daemon took the lease at the same moment: "
                    f"{other.describe()}"
                )
            raise LeaseLost(
                f"{self.storage.url}: the replica was taken over by another walrewind daemon, "
                f"{other.describe()}{' (it has stopped since)' if other.released else ''}, while this one "
                f"could not renew its lease (last renewal {format_us(self.last_beat_us)}); stopping without "
                "uploading anything more (what was not uploaded stays in the local spool)"
            )
        self.epoch = epoch
        self.since_us = since
        self.last_beat_us = since
        log.info("holding the lease on %s as epoch %d", self.storage.url, epoch)

    def _delete_quietly(self, key: str) -> None:
        try:
            self.storage.delete(key)
        except Exception as exc:  # housekeeping only
            log.debug("could not delete %s: %s", key, exc)

    # -- while running -------------------------------------------------------------------------
    @property
    def valid_until_us(self) -> int:
        return self.last_beat_us + self.lease_us - self.margin_us

    def ensure(self) -> bool:
        """Before every upload: no request while the lease is valid; else re-acquire or LeaseLost.

        Returns True when the lease had to be re-acquired (a new epoch)."""
        assert self.epoch is not None
        if now_us() < self.valid_until_us:
            return False
        previous = self.epoch
        self._create(previous + 1)
        self.reacquired += 1
        log.warning(
            "lease epoch %d had expired (no renewal since %s); re-acquired as epoch %d",
            previous, format_us(self.last_beat_us), self.epoch,
        )
        return True

    def check_fenced(self) -> None:
        """One GET: does ``lease/<epoch + 1>`` exist?  Then another daemon took over (LeaseLost)."""
        assert self.epoch is not None
        key = epoch_key(self.epoch + 1)
        blob = self.storage.get_if_present(key)
        if blob is None:
            return
        other = Holder.from_bytes(blob, key)
        raise LeaseLost(
            f"{self.storage.url}: the replica was taken over by another walrewind daemon, {other.describe()}; "
            "stopping without uploading anything more (what was not uploaded stays in the local spool)"
        )

    def renewed(self, ts_us: int) -> None:
        """A heartbeat (or renewal) stamped ``ts_us`` was written."""
        self.last_beat_us = max(self.last_beat_us, ts_us)

    def renew(self) -> None:
        """Renew without a heartbeat (used while the daemon cannot vouch for completeness)."""
        assert self.epoch is not None
        ts = now_us()
        key = renewal_key(self.epoch, ts)
        self.storage.put_marker(key)
        if self._renewal:
            self._delete_quietly(self._renewal)
        self._renewal = key
        self.renewed(ts)

    def release(self) -> None:
        """Clean stop: mark the lease free (``lease/<epoch + 1>`` with ``released``)."""
        if self.epoch is None:
            return
        try:
            self.storage.put_if_absent(epoch_key(self.epoch + 1), self._holder(self.epoch + 1, released=True).to_bytes())
        except Exception as exc:  # the next daemon then waits for expiry (or --takeover)
            log.warning("could not release the lease on %s: %s", self.storage.url, exc)
            return
        if self._renewal:
            self._delete_quietly(self._renewal)
