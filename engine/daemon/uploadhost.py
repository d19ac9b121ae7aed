"""What the uploader is given by the daemon it serves (engine/daemon/replicator.Replicator).

A protocol, so that uploader.py does not import the daemon (which imports it).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .spool import StateDir


class UploadHost(Protocol):
    """What the uploader is given (the daemon provides it; no import of the daemon here)."""

    state: "StateDir"
    storage: Any
    stats: Any
    lease: Any
    ready: threading.Event
    overflow: Any
    fatal: BaseException | None
    pending_snapshot: tuple[str, str] | None
    upload_interval: float
    heartbeat_interval: float

    @property
    def generation(self) -> str: ...

    @property
    def db_id(self) -> str: ...

    @property
    def page_size(self) -> int: ...

    @property
    def uploaded_hashes(self) -> Any: ...

    @property
    def spooled_through_us(self) -> int: ...

    @property
    def startup_done(self) -> bool: ...

    def complete_startup(self) -> bool: ...

    def save_state(self, txid: int, ts: int, position: Any, change: int | None, changes: Any = None,
                   first_txid: int | None = None) -> None: ...

    def ensure_lease(self) -> None: ...

    def refresh_tail(self) -> int: ...

    @property
    def stopping(self) -> bool: ...

    def stop(self) -> None: ...
