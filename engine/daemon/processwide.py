"""One instance per process of the parts that serve every database of a many-database process."""

from __future__ import annotations

import threading
from typing import TypeVar

S = TypeVar("S", bound="ProcessWide")


class ProcessWide:
    """``shared()`` makes the subclass's one instance on first use (its threads then serve every
    database of the process: engine/daemon/prober.py, maintenancepool.py, uploadloop.py)."""

    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls: type[S]) -> S:
        with ProcessWide._shared_lock:
            instance = cls.__dict__.get("_instance")
            if instance is None:
                instance = cls()
                cls._instance = instance  # type: ignore[attr-defined]
            return instance
