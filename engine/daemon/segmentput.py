"""Create-only segment uploads, and what an existing object under the same key may be."""

from __future__ import annotations

import logging

from ..errors import ObjectConflict, ObjectCorrupt
from ..replica.format import decode_segment
from ..storage import Storage

log = logging.getLogger("walrewind.shipper")


def put_segment_file(storage: Storage, key: str, path: str) -> None:
    """Create-only upload from a file; an existing object must hold the same history."""
    if storage.put_file_if_absent(key, path):
        return
    with open(path, "rb") as f:  # rare: a retry, or a restart re-uploading a spool file
        put_segment(storage, key, f.read(), already_tried=True)


def put_segment(storage: Storage, key: str, blob: bytes, already_tried: bool = False) -> None:
    """Create-only upload; an existing object must hold the same history (``already_tried``:
    the create was refused already, only the comparison is left).

    Identical bytes: a retry whose first answer was lost.  Same header and records but another
    ``lease_epoch``: the same spool file uploaded before a restart or a lease re-acquisition.
    Anything else is another writer's history under our key: ObjectConflict (never overwrite).
    """
    if not already_tried and storage.put_if_absent(key, blob):
        return
    existing = storage.get(key)
    if existing == blob:
        return
    try:
        old_header, old_records = decode_segment(existing, key)
        new_header, new_records = decode_segment(blob, key)
    except ObjectCorrupt as exc:
        raise ObjectConflict(f"{storage.url}: object {key} already exists and is unreadable ({exc}); "
                             "refusing to overwrite history") from None
    epoch = old_header.pop("lease_epoch", None)
    new_header.pop("lease_epoch", None)
    if old_header == new_header and old_records == new_records:
        log.info("segment %s was already uploaded (under another lease epoch)", key)
        return
    raise ObjectConflict(
        f"{storage.url}: object {key} already exists with a different history "
        f"(written under lease epoch {epoch}); refusing to overwrite it"
    )
