"""Which database a replica path belongs to: the db_id to ship under, or a refusal.

Decided once at start-up from the saved state and one LIST of the replica (lease records, the
newest snapshot's header for replicas older than leases).  Two databases' histories must never
be mixed in one replica path.
"""

from __future__ import annotations

import logging
import uuid

from ..errors import ForeignReplica
from ..replica.lease import ReplicaScan
from ..storage import Storage

log = logging.getLogger("walrewind.shipper")


def decide_db_id(storage: Storage, state_path: str, db_path: str, host: str, saved: dict | None,
                 found: ReplicaScan, takeover: bool) -> str:
    """The db_id to ship under; refuses (ForeignReplica) to mix two databases in one path."""
    from ..replica.index import object_header  # only for replicas older than leases

    holder = found.holder
    replica_id = holder.db_id if holder is not None and holder.db_id else None
    if replica_id is None and found.newest_snapshot is not None:
        # A replica written before leases existed: the snapshot header names the database.
        replica_id = object_header(storage, found.newest_snapshot.key).get("db_id")
    where = f" ({holder.db_path} on host {holder.host})" if holder is not None else ""
    if saved is not None:
        if replica_id and replica_id != saved["db_id"]:
            raise ForeignReplica(
                f"{storage.url} holds the history of another database (db_id {replica_id}{where}), "
                f"but the state directory {state_path} belongs to database {saved['db_id']}: refusing "
                "to mix two databases' histories in one replica path (use another replica path)"
            )
        return saved["db_id"]
    if replica_id is None:
        return uuid.uuid4().hex
    if holder is None:
        log.warning("%s was written by an older walrewind (no lease records); continuing database %s",
                    storage.url, replica_id)
        return replica_id
    if (holder.host, holder.db_path) == (host, db_path):
        return replica_id  # the same database file; only the daemon's local state is new
    if takeover:
        log.warning("adopting database identity %s of %s on %s for %s (--takeover)",
                    replica_id, holder.db_path, holder.host, db_path)
        return replica_id
    raise ForeignReplica(
        f"{storage.url} holds the history of database {holder.db_path} on host {holder.host} "
        f"(db_id {replica_id}); refusing to append the history of {db_path} on host "
        f"{host} to it. Use another replica path, or pass --takeover if this is the same "
        "database moved to a new path or host"
    )
