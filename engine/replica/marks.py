"""Named restore points in the replica: ``marks/<name>.json`` (docs/FORMAT.md, section 1.2).

A mark names one transaction of one generation.  It lives in the replica, next to the history it
points into, so every machine that can restore the replica sees it, and retention (which only
sees the replica) can keep what it needs.  Marks are created once (create-only write) and never
modified; ``unmark`` deletes one.  How the transaction is found is engine/workspace/markpoint.py.

What a mark needs to stay restorable (``needed_objects``) is decided from key names alone, like
restore planning: the newest snapshot of its generation at or before its txid, and the segments
from there up to and including its txid.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..errors import (
    InvalidName,
    MarkExists,
    MarkNotFound,
    ObjectCorrupt,
    ObjectNotFound,
)
from ..storage import Storage
from ..timeparse import format_us
from . import layout
from .index import Generation

MARK_VERSION = 1
PREFIX = "marks/"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", re.ASCII)  # as database names (workspace/config.py)
_KEY_RE = re.compile(r"^marks/([A-Za-z0-9][A-Za-z0-9_-]{0,63})\.json$", re.ASCII)


def validate_mark_name(name: str) -> str:
    """Mark names become key names: the rule of database names."""
    if not NAME_RE.fullmatch(name or ""):
        raise InvalidName(
            f"Invalid mark name {name!r}: use 1-64 letters, digits, '-' or '_', starting with a letter or digit "
            "(no spaces, dots or path separators)"
        )
    return name


def mark_key(name: str) -> str:
    return f"{PREFIX}{validate_mark_name(name)}.json"


@dataclass(frozen=True)
class Mark:
    """One named restore point: transaction ``txid`` of ``generation``."""

    name: str
    txid: int
    commit_us: int  # the transaction's commit time as recorded in the replica
    generation: str
    db_id: str
    created_us: int  # when `walrewind mark` wrote it
    who: str  # user@host
    note: str | None = None
    change: int | None = None  # SQLite's commit counter read by `mark` (for the record)

    def to_json(self) -> dict:
        return {
            "version": MARK_VERSION,
            "name": self.name,
            "txid": self.txid,
            "commit_us": self.commit_us,
            "commit_time": format_us(self.commit_us),
            "generation": self.generation,
            "db_id": self.db_id,
            "note": self.note,
            "who": self.who,
            "created_us": self.created_us,
            "created": format_us(self.created_us),
            "sqlite_change": self.change,
        }

    @classmethod
    def from_json(cls, doc: object, where: str) -> "Mark":
        if not isinstance(doc, dict):
            raise ObjectCorrupt(f"{where}: not a mark (a JSON object is expected)")
        if doc.get("version") != MARK_VERSION:
            raise ObjectCorrupt(f"{where}: mark format version {doc.get('version')!r} is not supported "
                                f"(this build reads {MARK_VERSION})")
        try:
            mark = cls(str(doc["name"]), int(doc["txid"]), int(doc["commit_us"]), str(doc["generation"]),
                       str(doc["db_id"]), int(doc["created_us"]), str(doc["who"]),
                       None if doc.get("note") is None else str(doc["note"]),
                       None if doc.get("sqlite_change") is None else int(doc["sqlite_change"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ObjectCorrupt(f"{where}: unreadable mark ({exc})") from None
        if not layout.GEN_RE.fullmatch(mark.generation):
            raise ObjectCorrupt(f"{where}: unreadable mark (generation {mark.generation!r})")
        return mark

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), indent=1, sort_keys=True).encode() + b"\n"


def _decode(blob: bytes, where: str) -> Mark:
    try:
        doc = json.loads(blob)
    except ValueError as exc:
        raise ObjectCorrupt(f"{where}: unreadable mark ({exc})") from None
    return Mark.from_json(doc, where)


def _exists(storage: Storage, mark: Mark) -> MarkExists:
    return MarkExists(f"mark {mark.name!r} already exists in {storage.url} (txid {mark.txid}, "
                      f"{format_us(mark.commit_us)}, made by {mark.who}); choose another name, or remove it first "
                      "with `walrewind unmark`")


def refuse_existing(storage: Storage, name: str) -> None:
    """MarkExists if ``name`` is taken (checked before ``mark`` waits for anything)."""
    existing = find_mark(storage, name)
    if existing is not None:
        raise _exists(storage, existing)


def put_mark(storage: Storage, mark: Mark) -> None:
    """Create the mark; MarkExists when the name is taken (a mark is never overwritten)."""
    if not storage.put_if_absent(mark_key(mark.name), mark.encode()):
        existing = find_mark(storage, mark.name)
        raise _exists(storage, existing or mark)


def find_mark(storage: Storage, name: str) -> Mark | None:
    key = mark_key(name)
    try:
        blob = storage.get(key)
    except ObjectNotFound:
        return None
    mark = _decode(blob, f"{storage.url}/{key}")
    if mark.name != name:
        raise ObjectCorrupt(f"{storage.url}/{key}: the mark inside is named {mark.name!r}")
    return mark


def get_mark(storage: Storage, name: str) -> Mark:
    mark = find_mark(storage, name)
    if mark is None:
        known = ", ".join(sorted(m.name for m in load_marks(storage)[0])) or "none"
        raise MarkNotFound(f"no mark {name!r} in {storage.url} (marks there: {known})")
    return mark


def load_marks(storage: Storage) -> tuple[list[Mark], dict[str, str]]:
    """Every mark (one LIST, one GET each), by name; and the keys that could not be read -> why."""
    marks: list[Mark] = []
    problems: dict[str, str] = {}
    for info in storage.list(PREFIX):
        m = _KEY_RE.fullmatch(info.key)
        if m is None:
            continue  # not a mark (a temp file of the local backend, ...)
        try:
            mark = _decode(storage.get(info.key), f"{storage.url}/{info.key}")
        except ObjectNotFound:
            continue  # unmarked meanwhile
        except ObjectCorrupt as exc:
            problems[info.key] = str(exc)
            continue
        if mark.name != m.group(1):
            problems[info.key] = f"the mark inside is named {mark.name!r}"
            continue
        marks.append(mark)
    return sorted(marks, key=lambda k: (k.txid, k.name)), problems


def delete_mark(storage: Storage, name: str) -> Mark:
    """Remove a mark (what it kept becomes ordinary history for retention); returns it."""
    mark = get_mark(storage, name)
    storage.delete(mark_key(name))
    return mark


def needed_objects(gen: Generation, txid: int) -> list[str]:
    """The keys a restore of ``txid`` in ``gen`` reads: the newest snapshot at or before it and the
    segments from there through ``txid`` (empty when no snapshot is left: the mark is broken)."""
    base = max((s for s in gen.snapshots if s.txid <= txid), key=lambda s: s.txid, default=None)
    if base is None:
        return []
    segments = [s for s in gen.segments if s.last_txid > base.txid and s.first_txid <= txid and txid > base.txid]
    return [base.key] + [s.key for s in segments]
