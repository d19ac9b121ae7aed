"""The replication state of one database, owned by the daemon and passed to its stages.

One object holds where the history stands: the replica-side identity (db_id, generation, page
size), the reader's position in the WAL (``pos``, the last verified commit ``verified_pos`` and
SQLite's commit counter there, ``anchor``), the next txid, the page hashes of the state the
spool ends at (``hashes``) and of the state the replica ends at (``uploaded_hashes``), and the
uploaded point as saved in ``state.json``.  The reader advances the read side, the uploader the
uploaded side; :func:`save_uploaded` and :func:`load_matching` are the only state.json I/O (the
point itself mostly advances in the hashes log: engine/daemon/hashlog.py, state version 2).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DaemonError
from ..sqlite.pagehash import PageChanges, PageHashes
from ..sqlite.walfile import WalPosition
from .spool import StateDir

STATE_VERSION = 2  # 2: the uploaded point advances in the hashes log (hashlog.py), not in state.json
READS_VERSIONS = (1, 2)  # a version 1 directory is resumed, and its state.json rewritten as 2 at the first upload


@dataclass
class ReplicationState:
    db_id: str = ""
    generation: str = ""
    page_size: int = 0
    # read side (the reader thread)
    pos: WalPosition | None = None  # where reading resumes
    verified_pos: WalPosition | None = None  # the last commit SQLite's counter vouched for
    anchor: int | None = None  # SQLite's commit counter (iChange) at verified_pos
    next_txid: int = 0
    last_ts: int = 0
    hashes: PageHashes | None = None  # the database as of the spool's last record
    # uploaded side (the uploader thread)
    uploaded_hashes: PageHashes | None = None  # the database as of the replica's last record
    uploaded_pos: WalPosition | None = None
    uploaded_change: int | None = None


def load_matching(state_dir: StateDir, db_path: str, replica_url: str) -> dict | None:
    """The saved uploaded point, if it is for this database and this replica."""
    saved = state_dir.load_state()
    if not saved or saved.get("db_path") != db_path or saved.get("replica") != replica_url:
        return None
    if saved.get("version") not in READS_VERSIONS:
        raise DaemonError(
            f"state directory {state_dir.path} has format version {saved.get('version')}; this build "
            f"reads versions {', '.join(map(str, READS_VERSIONS))} (use a matching walrewind or a fresh --state-dir)"
        )
    return saved


def save_uploaded(state_dir: StateDir, rs: ReplicationState, db_path: str, replica_url: str, txid: int, ts: int,
                  position: WalPosition | None, change: int | None, changes: PageChanges | None = None,
                  first_txid: int | None = None) -> None:
    """Persist the uploaded point (and the page hashes of that same point, rs.uploaded_hashes;
    ``changes``: the pages txids ``first_txid``..``txid`` changed, appended to the hashes log)."""
    state_dir.save_state(
        {
            "version": STATE_VERSION,
            "db_path": db_path,
            "db_id": rs.db_id,
            "replica": replica_url,
            "generation": rs.generation,
            "page_size": rs.page_size,
            "uploaded_txid": txid,
            "uploaded_ts_us": ts,
            "position": position.to_json() if position else None,
            "change": change,
        },
        rs.uploaded_hashes,
        changes,
        first_txid,
    )
    rs.uploaded_pos = position
    rs.uploaded_change = change


def resume_from(rs: ReplicationState, saved: dict, state_dir: StateDir) -> None:
    """Load the uploaded side from a matching saved state."""
    rs.db_id = saved["db_id"]
    rs.generation = saved["generation"]
    rs.page_size = saved["page_size"]
    rs.uploaded_hashes = state_dir.load_hashes()
    rs.uploaded_pos = WalPosition.from_json(saved["position"]) if saved["position"] else None
    rs.uploaded_change = saved.get("change")
