"""Every user-facing default, defined once.

The config loader, the CLI's ``--help`` texts and the daemon all read these, so a default can
never say one thing in the docs and do another.  Durations are written the way a user types them
(parsed by engine/timeparse.py).
"""

from __future__ import annotations

import os

# The daemon
UPLOAD_INTERVAL_SECONDS = 1.0  # one segment per interval while there are commits
MAX_WAL_MB = 1024  # a daemon that cannot keep up stops holding the WAL past this (0: never)
CHECKPOINT_FRAMES = 0  # daemon-driven checkpoints: off (the application's own bound the WAL)
HEARTBEAT_SECONDS = 60.0  # "still replicating, nothing missed" objects, busy or idle
LEASE_SECONDS = 300.0  # how long a replica path stays fenced after its daemon went silent
SPOOL_LIMIT_BYTES = 4 << 30  # read but not yet uploaded (hours of a busy database)
SPOOL_MIN_FREE_BYTES = 256 << 20  # never take the spool's filesystem below this much free space
LAG_BUDGET_SECONDS = 60.0  # /healthz and `walrewind status`: healthy while the lag is within this

# Retention and maintenance
RETENTION = "7d"  # every moment of this period restorable to the transaction ("off": delete nothing)
KEEP_DAILY = 7  # beyond it: the newest snapshot of each of the last N UTC days ...
KEEP_WEEKLY = 4  # ... ISO weeks ...
KEEP_MONTHLY = 12  # ... and months (0 disables a tier)
RETENTION_GRACE = "1h"  # restores that planned this long ago still find their objects
SNAPSHOT_INTERVAL = "24h"  # a new base snapshot at least this often ...
SNAPSHOT_VOLUME = 4.0  # ... or once the history since the last one exceeds this x the database
COMPACT_AFTER = "1h"  # segments older than this are merged into larger ones
VERIFY_INTERVAL = "off"  # restore drills this often

# The workspace
DATA_DIR = "walrewind-data"  # restored databases + catalog, relative to the config file
CONFIG_NAME = "walrewind.toml"


def state_root(environ=None) -> str:
    """``$XDG_STATE_HOME/walrewind`` (else ~/.local/state/walrewind): daemons' state, fleets' health."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "walrewind")


def state_dir_for(db_path: str, environ=None) -> str:
    """Where a daemon keeps its spool and state for ``db_path`` when not told otherwise."""
    return os.path.join(state_root(environ), os.path.abspath(db_path).strip("/").replace("/", "__"))
