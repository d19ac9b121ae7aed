"""Every error walrewind raises on purpose, in one place.

``WalrewindError`` is the base of all of them.  The CLI catches it once and prints ``Error: ...``
with a non-zero exit; anything else reaching the user is a bug and keeps its traceback.  Each
subclass is a kind of failure a person can act on, and its name is part of the Python API: code
may catch ``TargetTooOld`` or ``LeaseHeld`` and expect them to keep their meaning.

Messages say what happened and what to do instead; they never contain credentials.
"""

from __future__ import annotations


class WalrewindError(Exception):
    """Base of every error raised on purpose; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


# --------------------------------------------------------------------------- what the user asked for
class UsageError(WalrewindError):
    """A request that cannot be carried out as asked (a name taken, options that conflict, ...)."""


class TimestampError(UsageError, ValueError):
    """A typed moment is malformed, in the future, or outside what can be restored."""


class DurationError(UsageError, ValueError):
    """A duration ('7d', '36h', 'off') that cannot be parsed."""


class InvalidName(UsageError, ValueError):
    """A database name that cannot be used (it would become part of a file name)."""


class UnknownSource(UsageError):
    """Neither a configured database name nor a replica URL or path."""


class NameTaken(UsageError):
    """A database name that is already in use."""


class OutputExists(UsageError):
    """The restore's output file exists (pass --force to replace it) or cannot be created there."""


class QueryFailed(UsageError):
    """A query given to ``bisect`` cannot be parsed, or fails where the search starts (the message says where)."""


class ConfigError(WalrewindError):
    """The configuration file is missing, malformed, or names something invalid."""


# --------------------------------------------------------------------------- what the replica holds
class RestoreError(WalrewindError):
    """A restore cannot be done as asked; the message says why and what can be done instead."""


class TargetTooOld(RestoreError, TimestampError):
    """The target is before anything the replica can still restore (retention removed it)."""


class ReplicaEmpty(RestoreError):
    """The replica holds no restorable history (nothing replicated yet, or a wrong URL/prefix)."""


class HistoryGap(RestoreError):
    """Objects the target needs are missing (a hole) or were written by two daemons."""


class VerificationFailed(RestoreError):
    """A restored file does not match the checksum recorded for its transaction."""


class ObjectCorrupt(WalrewindError):
    """A replica object is corrupt, truncated, or of an unknown format version; the message names it."""


class CompactionError(WalrewindError):
    """Compaction refused to merge (an unreadable source, two histories); nothing was deleted."""


# --------------------------------------------------------------------------- the object store
class StorageError(WalrewindError):
    """The object store failed or refused (after retries); the message names the URL and key."""


class ObjectNotFound(StorageError):
    pass


class StoreUnreachable(StorageError):
    """The store could not be reached, or kept failing transiently (timeouts, resets, 5xx, throttling)
    after every retry.  Worth trying again later; the daemon spools meanwhile."""


class ObjectConflict(StorageError):
    """A create-only write found a different object under the key (another writer)."""


class EncryptionError(WalrewindError):
    """Encryption at rest refused an operation: see the two subclasses.  Never a StorageError or
    ObjectCorrupt, so a restore does not mistake a missing key for a damaged object and fall back."""


class EncryptionKeyError(EncryptionError):
    """A key is missing, wrong or malformed: the message names the key id needed, never a key."""


class EncryptionRefused(EncryptionError):
    """A writer with a key was asked to add plaintext to a replica (or a generation) that is not
    encrypted, or a writer without a key to add to an encrypted one."""


# --------------------------------------------------------------------------- the daemon
class DaemonError(WalrewindError):
    """The replication daemon cannot start or had to stop; the message says why."""


class NotReplicable(DaemonError):
    """The file is not a database the daemon can replicate (missing, not SQLite, not in WAL mode)."""


class StateLocked(DaemonError):
    """Another daemon holds this state directory."""


class LeaseError(DaemonError):
    """Fencing: the replica path belongs to another daemon or another database."""


class LeaseHeld(LeaseError):
    """Another daemon that still looks alive holds the replica path's lease."""


class LeaseLost(LeaseError):
    """Our lease was taken over (``--takeover`` elsewhere): stop writing at once."""


class ForeignReplica(LeaseError):
    """The replica path holds another database's history."""


# --------------------------------------------------------------------------- local databases
class DatabaseError(WalrewindError):
    """A local SQLite file (restored copy, source, catalog) cannot be read or queried."""


# --------------------------------------------------------------------------- sqld (libSQL server)
class SqldError(WalrewindError):
    """sqld's admin or HTTP API refused a request or could not be reached; the message says which."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status  # the HTTP status, None when sqld could not be reached
        self.body = body


# --------------------------------------------------------------------------- named restore points
class MarkError(WalrewindError):
    """A named restore point (``walrewind mark``) could not be made, found or used."""


class MarkExists(MarkError, UsageError):
    """A mark of that name already exists in the replica (marks are create-only)."""


class MarkNotFound(MarkError, UsageError):
    """No mark of that name in the replica."""


class MarkTimeout(MarkError):
    """The daemon did not upload the marked point within the timeout; no mark was written."""


class MarkInexact(MarkError):
    """The marked point cannot be located to the transaction (a RESYNC or LATE record lies in the
    way, or SQLite's commit counter went backwards); no mark was written."""


class MarkBroken(MarkError, HistoryGap):
    """A mark's history is gone from the replica (its generation, snapshot or segments deleted)."""
