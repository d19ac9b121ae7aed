"""walrewind's Python API: scripted restores, the same workflows the CLI runs.

    import walrewind
    result = walrewind.restore("prod", "/tmp/before.db", timestamp="2024-01-15T10:29:00Z")
    print(result.txid, result.committed_at, result.checksum)
    found = walrewind.bisect("prod", "SELECT sum(amount) FROM ledger", since="2 hours ago")
    print(found.txid, found.committed_at, found.before, found.after)
    walrewind.mark("prod", "before-migration")          # a named restore point ...
    walrewind.restore("prod", "/tmp/pre.db", mark="before-migration")   # ... restored exactly

``source`` is a configured database name (the config file found the way the CLI finds it, or
``config=PATH``) or a replica URL/path; a configured name wins.  Every error is a
``walrewind.WalrewindError`` subclass (``TargetTooOld``, ``HistoryGap``, ``ObjectCorrupt``, ...).
Shipped as the top-level ``walrewind`` package (pyproject.toml maps it onto engine/api/); it
imports the engine only when a function is called, so ``import walrewind`` stays cheap.
Reference and runnable examples: docs/API.md.
"""

from __future__ import annotations

from walrewind.engine.errors import (  # noqa: F401  (re-exported: part of the API)
    ConfigError,
    DaemonError,
    EncryptionError,
    EncryptionKeyError,
    HistoryGap,
    MarkBroken,
    MarkError,
    MarkExists,
    MarkInexact,
    MarkNotFound,
    MarkTimeout,
    ObjectCorrupt,
    OutputExists,
    QueryFailed,
    ReplicaEmpty,
    RestoreError,
    StorageError,
    TargetTooOld,
    TimestampError,
    UnknownSource,
    UsageError,
    VerificationFailed,
    WalrewindError,
)

_CALLS = ("BisectResult", "Mark", "RestoreResult", "Window", "bisect", "mark", "marks", "restore", "unmark", "window")


def __getattr__(name: str):
    """The functions and result types, imported on first use: ``import walrewind.cli`` (every
    command) loads this package and must not pay for them."""
    if name in _CALLS:
        from . import calls

        return getattr(calls, name)
    raise AttributeError(f"module 'walrewind' has no attribute {name!r}")


__all__ = [
    "restore", "window", "bisect", "mark", "marks", "unmark", "RestoreResult", "Window", "BisectResult", "Mark",
    "QueryFailed",
    "WalrewindError", "UsageError", "TimestampError", "TargetTooOld", "UnknownSource", "ConfigError",
    "RestoreError", "ReplicaEmpty", "HistoryGap", "VerificationFailed", "OutputExists", "ObjectCorrupt",
    "StorageError", "DaemonError", "EncryptionError", "EncryptionKeyError",
    "MarkError", "MarkExists", "MarkNotFound", "MarkTimeout", "MarkInexact", "MarkBroken",
]
