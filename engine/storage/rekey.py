"""``walrewind rekey``: rewrite the objects encrypted under older keys with the current key.

Objects are create-only and their names are their identity, so an object cannot be rewritten
under a temporary name and renamed (S3 has no rename, and the name is bound into the ciphertext).
Instead each one is replaced in place, in an order that never leaves a name without a valid object:

1. download the stored object to a temporary file and decrypt it (authenticated) into another,
   hashing the plaintext;
2. encrypt that plaintext under the current key into a third file, and decrypt *that* again:
   its plaintext hash must be the same (the new object is verified before it goes anywhere);
3. check that the stored object is still the one read in step 1 (same header: not deleted or
   replaced meanwhile), then replace it with ``put_file`` -- ``rename(2)`` on a local replica, a
   PUT on S3: readers see the old object or the new one, never a mix or nothing;
4. download it again and check the plaintext hash once more (a failure puts the old bytes back).

At every moment the name holds either the old ciphertext (readable with the old key, which the
caller keeps until rekey reports that no object needs it) or the new, verified one; a run that is
interrupted anywhere is finished by running it again.  The remaining race: retention deleting the
object between step 3's check and the PUT brings it back; it is deleted again by the next
retention run (a leftover object never hides a hole: planning reads names).

Plaintext generations (marker.py) are left as they are; retention removes them in time.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from ..errors import (
    EncryptionKeyError,
    EncryptionRefused,
    ObjectCorrupt,
    ObjectNotFound,
)
from . import sealed
from .base import Storage
from .encrypted import EncryptedStorage
from .marker import MARKER_KEY, read_marker

Progress = Callable[[str, int, int], None]


@dataclass
class RekeyReport:
    key_id: str
    dry_run: bool
    rewritten: list[str] = field(default_factory=list)
    bytes: int = 0
    current: int = 0  # objects already under the current key
    plaintext: int = 0  # objects of plaintext generations (and the marker)
    unavailable: dict[str, int] = field(default_factory=dict)  # key id not given -> objects left
    vanished: list[str] = field(default_factory=list)  # deleted or replaced while rekey ran
    seconds: float = 0.0

    @property
    def done(self) -> bool:
        """No object needs any key but the current one (the older keys may be retired)."""
        return not self.unavailable and not self.dry_run

    def to_json(self) -> dict:
        return {"key_id": self.key_id, "dry_run": self.dry_run, "rewritten": len(self.rewritten),
                "rewritten_keys": self.rewritten, "bytes": self.bytes, "already_current": self.current,
                "plaintext": self.plaintext, "needing_other_keys": self.unavailable, "vanished": self.vanished,
                "done": self.done, "seconds": round(self.seconds, 3)}


def _decrypt_file(storage: EncryptedStorage, key: str, src: str, dst: str | None) -> str:
    """sha256 of the plaintext of the stored object in file ``src`` (written to ``dst`` if given)."""
    digest = hashlib.sha256()
    with open(src, "rb") as f, open(dst or os.devnull, "wb") as out:
        def write(data: bytes) -> None:
            digest.update(data)
            out.write(data)

        sealed.unseal_stream(storage.keyring, key, f, write, f"{storage.url}/{key}")
    return digest.hexdigest()


def _rewrite(storage: EncryptedStorage, key: str, head: bytes, workdir: str) -> int | None:
    """Steps 1-4 of the module docstring for one object; its new size, or None if it vanished."""
    inner, keyring = storage.inner, storage.keyring
    assert keyring is not None
    old, plain, new = (os.path.join(workdir, name) for name in ("old", "plain", "new"))
    try:
        inner.get_to_file(key, old)
    except ObjectNotFound:
        return None
    with open(old, "rb") as f:
        if f.read(sealed.HEADER_SIZE) != head:
            return None  # replaced since it was looked at: look again on the next run
    want = _decrypt_file(storage, key, old, plain)
    with open(plain, "rb") as src, open(new, "wb") as dst:
        sealed.seal_stream(keyring.current, key, src, dst.write)
        dst.flush()
        os.fsync(dst.fileno())
    if _decrypt_file(storage, key, new, None) != want:
        raise ObjectCorrupt(f"{storage.url}/{key}: the re-encrypted object does not decrypt to the same bytes; "
                            "left as it was")
    try:
        if inner.get_range(key, 0, sealed.HEADER_SIZE) != head:
            return None
    except ObjectNotFound:
        return None
    inner.put_file(key, new)
    inner.get_to_file(key, plain)  # read back what readers will now get
    if _decrypt_file(storage, key, plain, None) != want:
        inner.put_file(key, old)
        raise ObjectCorrupt(f"{storage.url}/{key}: the replaced object did not read back; the old one was put back")
    return os.path.getsize(new)


def rekey(storage: Storage, dry_run: bool = False, progress: Progress | None = None,
          workdir: str | None = None) -> RekeyReport:
    """Rewrite every object under an older key with ``storage``'s current (first) key."""
    started = time.monotonic()
    if not isinstance(storage, EncryptedStorage) or storage.keyring is None:
        raise EncryptionKeyError("rekey needs the keys: the new one first, then the old ones (--encryption-key-file, "
                                 "encryption_key_file in the config, or WALREWIND_ENCRYPTION_KEY)")
    inner, keyring = storage.inner, storage.keyring
    where = f"{inner.url}/{MARKER_KEY}"
    marker = read_marker(inner)
    if marker is None:
        raise EncryptionRefused(f"{inner.url} is not encrypted (no {MARKER_KEY}): nothing to rekey; the daemon "
                                "with a key starts encrypted history")
    if not marker.verify(keyring, where):
        raise EncryptionKeyError(f"{where} is authenticated with key id {marker.mac_key_id}, which is not among "
                                 f"the keys given (key ids {keyring.describe()}); give it too")
    report = RekeyReport(keyring.current.key_id, dry_run)
    if not dry_run and keyring.current.key_id not in marker.key_ids:
        marker = replace(marker, key_ids=(*marker.key_ids, keyring.current.key_id)).signed(keyring)
        inner.put(MARKER_KEY, marker.to_bytes())
    listing = [info for info in inner.list("") if not info.key.split("/")[-1].startswith(".")]
    with tempfile.TemporaryDirectory(prefix="walrewind-rekey-", dir=workdir) as tmp:
        os.chmod(tmp, 0o700)  # plaintext passes through here
        for n, info in enumerate(listing, 1):
            if progress:
                progress("objects", n, len(listing))
            try:
                head = inner.get_range(info.key, 0, sealed.HEADER_SIZE)
            except ObjectNotFound:
                report.vanished.append(info.key)
                continue
            if info.key == MARKER_KEY or not sealed.is_sealed(head):
                report.plaintext += 1
                continue
            key_id = sealed.Header.parse(head, f"{inner.url}/{info.key}").key_id
            if key_id == keyring.current.key_id:
                report.current += 1
            elif keyring.find(key_id) is None:
                report.unavailable[key_id] = report.unavailable.get(key_id, 0) + 1
            elif dry_run:
                report.rewritten.append(info.key)
                report.bytes += info.size
            else:
                size = _rewrite(storage, info.key, head, tmp)
                if size is None:
                    report.vanished.append(info.key)
                else:
                    report.rewritten.append(info.key)
                    report.bytes += size
    if report.done:
        marker = replace(marker, key_ids=(keyring.current.key_id,)).signed(keyring)
        inner.put(MARKER_KEY, marker.to_bytes())
    storage.set_marker(marker if not dry_run else read_marker(inner))
    report.seconds = time.monotonic() - started
    return report
