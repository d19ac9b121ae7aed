"""``encryption.json``: the replica's own statement that it is encrypted, and since when.

It is the one plaintext object walrewind writes at the root of an encrypted replica, so that a
command without a key can refuse it by name (instead of taking ciphertext for damage), and so
that encryption is decided per *generation*, like the format version (FORMAT.md section 9):

* ``plaintext_generations`` are the generations that existed when the first daemon with a key
  came; they stay plaintext (readable without a key until retention removes them) and nothing is
  added to them but compaction's merged segments (bytes that were stored there in plaintext already);
* every other generation is encrypted: each of its objects must be a ``WREC`` object (a plaintext
  object there is refused as tampering), and its LIST sizes are converted to plaintext sizes;
* ``lease/`` bodies are encrypted once the marker exists (older plaintext ones are still read).

Its ``mac`` (HMAC-SHA256 under a key derived from a master key, ``mac_key_id``) lets a reader with
that key trust ``plaintext_generations``: a marker edited to pass off planted plaintext history as
old does not verify.  A reader that does not hold ``mac_key_id`` trusts no plaintext generation.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, replace

from ..errors import EncryptionKeyError, ObjectCorrupt, ObjectNotFound
from .base import Storage
from .keys import Keyring

MARKER_KEY = "encryption.json"
MARKER_VERSION = 1
_GEN_RE = re.compile(r"generations/([0-9a-f]{16}-[0-9a-f]{8})/")


def generation_of(key: str) -> str | None:
    """The generation id a replica key belongs to (None for lease/ and other keys)."""
    m = _GEN_RE.match(key)
    return m.group(1) if m else None


@dataclass(frozen=True)
class Marker:
    plaintext_generations: tuple[str, ...]
    key_ids: tuple[str, ...]  # keys whose objects the replica may hold (for messages and rekey)
    created_us: int
    mac_key_id: str = ""
    mac: str = ""

    def body(self) -> bytes:
        """What the MAC covers: every field but ``mac``, canonical JSON."""
        return json.dumps({"version": MARKER_VERSION, "encrypted": True,
                           "plaintext_generations": list(self.plaintext_generations),
                           "key_ids": list(self.key_ids), "created_us": self.created_us,
                           "mac_key_id": self.mac_key_id}, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, keyring: Keyring) -> "Marker":
        key = keyring.current
        unsigned = replace(self, mac_key_id=key.key_id, mac="")
        return replace(unsigned, mac=key.marker_mac(unsigned.body()))

    def to_bytes(self) -> bytes:
        data = json.loads(self.body())
        data["mac"] = self.mac
        return json.dumps(data, sort_keys=True, indent=1).encode() + b"\n"

    @classmethod
    def parse(cls, data: bytes, where: str) -> "Marker":
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or raw.get("version") != MARKER_VERSION or raw.get("encrypted") is not True:
                raise ValueError("not an encryption marker of version 1")
            return cls(tuple(str(g) for g in raw["plaintext_generations"]), tuple(str(k) for k in raw["key_ids"]),
                       int(raw["created_us"]), str(raw.get("mac_key_id", "")), str(raw.get("mac", "")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ObjectCorrupt(f"{where}: unreadable encryption marker ({exc}); refusing to guess whether "
                                "the replica is encrypted") from None

    def verify(self, keyring: Keyring | None, where: str) -> bool:
        """True when ``keyring`` holds the MAC key and the MAC matches; ObjectCorrupt if it does not
        match (the marker was altered); False when it cannot be checked."""
        key = keyring.find(self.mac_key_id) if keyring is not None else None
        if key is None:
            return False
        import hmac

        if not hmac.compare_digest(key.marker_mac(self.body()), self.mac):
            raise ObjectCorrupt(f"{where}: the encryption marker does not authenticate under key id "
                                f"{self.mac_key_id}: it was altered; refusing to trust the replica's plaintext")
        return True


def read_marker(inner: Storage) -> Marker | None:
    """The replica's marker (one GET), or None for a replica that is not encrypted."""
    try:
        data = inner.get(MARKER_KEY)
    except ObjectNotFound:
        return None
    return Marker.parse(data, f"{inner.url}/{MARKER_KEY}")


def generations(inner: Storage) -> tuple[list[str], list[str]]:
    """(every generation id, those holding a snapshot), sorted, from one LIST."""
    every: set[str] = set()
    with_snapshot: set[str] = set()
    for info in inner.list("generations/"):
        gen = generation_of(info.key)
        if gen is not None:
            every.add(gen)
            if "/snapshots/" in info.key:
                with_snapshot.add(gen)
    return sorted(every), sorted(with_snapshot)


def check_replica_encryption(storage: Storage, keyring: Keyring | None) -> str | None:
    """The daemon's start-up check, before it writes anything.  Returns None to go on as usual,
    or a message to log when the daemon must start a new generation (the newest one is plaintext).

    * No key: refuses (EncryptionKeyError) a replica that has a marker.
    * A key, no marker: writes the marker.  An empty replica is encrypted from its first object;
      a replica with history keeps it as plaintext generations and gets the message.
    * A key and a marker: checks the marker's MAC (a daemon must be able to), adds the writing
      key's id to ``key_ids`` if new, and returns the message if the newest generation is plaintext.
    """
    inner = getattr(storage, "unwrapped", storage)
    where = f"{inner.url}/{MARKER_KEY}"
    marker = read_marker(inner)
    if keyring is None:
        if marker is not None:
            raise EncryptionKeyError(
                f"{inner.url} is encrypted (key ids {', '.join(marker.key_ids)}): a daemon without its key "
                "would ship plaintext into it; give the key with encryption_key_file in the config, "
                "--encryption-key-file FILE, or WALREWIND_ENCRYPTION_KEY")
        return None
    _all, with_snapshot = generations(inner)
    if marker is None:
        marker = Marker(tuple(_all), (keyring.current.key_id,), time.time_ns() // 1000).signed(keyring)
        if not inner.put_if_absent(MARKER_KEY, marker.to_bytes()):
            marker = read_marker(inner)  # another daemon (or rekey) wrote it at the same moment
            assert marker is not None
    if not marker.verify(keyring, where):
        raise EncryptionKeyError(
            f"{where} is authenticated with key id {marker.mac_key_id}, which is not among the keys given "
            f"(key ids {keyring.describe()}): a writer must be able to check it; give that key too "
            "(after the writing key), or run `walrewind rekey` with both")
    if keyring.current.key_id not in marker.key_ids:
        marker = replace(marker, key_ids=(*marker.key_ids, keyring.current.key_id)).signed(keyring)
        inner.put(MARKER_KEY, marker.to_bytes())
    if hasattr(storage, "set_marker"):
        storage.set_marker(marker)  # type: ignore[attr-defined]
    newest = with_snapshot[-1] if with_snapshot else None
    if newest is not None and newest in marker.plaintext_generations:
        plain = [g for g in marker.plaintext_generations if g in _all]
        return (f"{inner.url} holds unencrypted history ({len(plain)} generation(s), the newest {newest}); it "
                f"stays as it is, readable without a key until retention removes it. New history is encrypted "
                f"with key id {keyring.current.key_id}: starting a new generation")
    return None
