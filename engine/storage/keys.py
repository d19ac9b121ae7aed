"""Encryption keys: where they come from, their ids, and the keys derived from them.

A master key is 32 random bytes, written as base64 (``walrewind keygen`` prints one).  Keys come
from, in this order (the first key found *writes*, every key found *reads*, so keys can rotate):

1. ``--encryption-key-file FILE`` on the command line (repeatable);
2. ``encryption_key_file`` in the config file (``[databases.NAME]`` or ``[sqld]``; a path or a list);
3. ``WALREWIND_ENCRYPTION_KEY`` in the environment.

A key file holds one key per line (blank lines and ``#`` comments ignored).  The master key is
never used directly: HKDF-SHA256 derives a key id (a 16-hex-digit fingerprint that is safe to
print and is stored in every encrypted object so that readers know which key they need), one
data key per object name, and the key that authenticates the replica's ``encryption.json``.

Nothing here ever puts a key, or a line of a key file, into a message: errors name the file, the
line number and what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from ..errors import EncryptionKeyError

ENV_VAR = "WALREWIND_ENCRYPTION_KEY"
KEY_BYTES = 32
_ID_INFO = b"walrewind key id"
_OBJECT_INFO = b"walrewind object v1"
_MARKER_INFO = b"walrewind marker v1"


def _hkdf(master: bytes, info: bytes, length: int = 32) -> bytes:
    from cryptography.hazmat.primitives import (
        hashes,  # on first use: a plaintext replica never pays for it
    )
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master)


@dataclass(frozen=True)
class MasterKey:
    """One master key and its public fingerprint.  ``repr`` shows the id only."""

    secret: bytes = field(repr=False)
    key_id: str  # 16 lowercase hex digits
    source: str = ""  # where it came from, for messages ("FILE line 2", "WALREWIND_ENCRYPTION_KEY")

    @classmethod
    def from_bytes(cls, secret: bytes, source: str = "") -> "MasterKey":
        if len(secret) != KEY_BYTES:
            raise EncryptionKeyError(f"{source or 'key'}: an encryption key is {KEY_BYTES} bytes (base64), "
                                     f"this one decodes to {len(secret)}")
        return cls(secret, _hkdf(secret, _ID_INFO, 8).hex(), source)

    @property
    def id_bytes(self) -> bytes:
        return bytes.fromhex(self.key_id)

    def object_key(self, name: str) -> bytes:
        """The AES-256 data key of the object called ``name`` (its key in the replica)."""
        return _hkdf(self.secret, _OBJECT_INFO + name.encode("utf-8"))

    def marker_mac(self, body: bytes) -> str:
        """HMAC-SHA256 of the replica's encryption marker (hex)."""
        return hmac.new(_hkdf(self.secret, _MARKER_INFO), body, "sha256").hexdigest()


@dataclass(frozen=True)
class Keyring:
    """The keys a command was given, the writing key first; never empty."""

    keys: tuple[MasterKey, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a keyring holds at least one key")

    @property
    def current(self) -> MasterKey:
        return self.keys[0]

    @property
    def ids(self) -> list[str]:
        return [k.key_id for k in self.keys]

    def find(self, key_id: str) -> MasterKey | None:
        return next((k for k in self.keys if k.key_id == key_id), None)

    def describe(self) -> str:
        """For messages: the ids of the keys given (never the keys)."""
        return ", ".join(self.ids)


def parse_key(text: str, source: str) -> MasterKey:
    """One base64 key (standard or URL-safe alphabet, padding optional)."""
    value = text.strip()
    try:
        padded = value + "=" * (-len(value) % 4)
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise EncryptionKeyError(f"{source}: not a base64 encryption key (make one with `walrewind keygen`)") from None
    return MasterKey.from_bytes(raw, source)


def read_key_file(path: str) -> list[MasterKey]:
    """Every key in ``path``, one per line, in order."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise EncryptionKeyError(f"cannot read encryption key file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise EncryptionKeyError(f"encryption key file {path} is not text (one base64 key per line)") from None
    keys = [parse_key(line, f"encryption key file {path} line {n}")
            for n, line in enumerate(lines, 1) if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise EncryptionKeyError(f"encryption key file {path} holds no key (one base64 key per line)")
    return keys


def load_keyring(files: Iterable[str] = (), config_files: Iterable[str] = (),
                 environ: Mapping[str, str] | None = None) -> Keyring | None:
    """The keys from command-line files, then config files, then the environment; None if none.

    A key given twice (by two sources) counts once, at its first place."""
    environ = os.environ if environ is None else environ
    found: list[MasterKey] = []
    for path in [*files, *config_files]:
        found.extend(read_key_file(path))
    if environ.get(ENV_VAR, "").strip():
        for n, line in enumerate(environ[ENV_VAR].split(), 1):
            found.append(parse_key(line, ENV_VAR if n == 1 else f"{ENV_VAR} (key {n})"))
    unique: dict[str, MasterKey] = {}
    for key in found:
        unique.setdefault(key.key_id, key)
    return Keyring(tuple(unique.values())) if unique else None


def generate_key() -> str:
    """A new master key, base64 (what ``walrewind keygen`` prints)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")
