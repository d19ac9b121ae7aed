"""The encrypted object format (``WREC``, docs/FORMAT.md section 10): a small header, then the
plaintext in fixed-size chunks, each sealed with AES-256-GCM.

    header  magic "WREC" | version u16 = 1 | chunk_shift u8 | flags u8 = 0 | key_id 8 | nonce_prefix 8
    chunk i AES-256-GCM(data key, nonce = nonce_prefix || u32be(i),
                        aad = header || u32le(i) || u8(last) || object name)  ->  ciphertext || 16-byte tag

The data key is HKDF(master key, "walrewind object v1" || object name): an object renamed (moved
to another key) or swapped for another fails to authenticate, and so does a chunk moved within
its object (the index), an object cut short at a chunk boundary (the last flag) or a header
edited (it is in every chunk's aad).  Chunking is what keeps ranged reads cheap: bytes
``start .. end`` need only the chunks that cover them, and the stored size of an object follows
from its plaintext size alone (``stored_size``), so a LIST tells both.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, Callable

from ..errors import EncryptionKeyError, ObjectCorrupt
from .keys import ENV_VAR, Keyring, MasterKey

MAGIC = b"WREC"
VERSION = 1
CHUNK_SHIFT = 18  # 256 KiB: short GIL holds (AES-GCM keeps the GIL), a 64 KiB header probe reads one chunk
CHUNK = 1 << CHUNK_SHIFT
TAG = 16
_HEADER = struct.Struct("<4sHBB8s8s")
HEADER_SIZE = _HEADER.size  # 24
_AAD_TAIL = struct.Struct("<IB")


def _aesgcm(key: bytes):
    """AES-GCM from `cryptography`, and the error it raises for a chunk that does not
    authenticate; imported on first use (~40 ms): a plaintext replica never pays for it."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key), InvalidTag


def decrypt_into_available() -> bool:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return hasattr(AESGCM, "decrypt_into")  # cryptography >= 46
KEY_HINT = f"give it with --encryption-key-file FILE, encryption_key_file in the config, or {ENV_VAR}"


def stored_size(plain: int) -> int:
    """Size of the encrypted object holding ``plain`` bytes (an empty body is one empty chunk)."""
    chunks = max(1, -(-plain // CHUNK))
    return HEADER_SIZE + plain + chunks * TAG


def plain_size(stored: int) -> int:
    """Inverse of ``stored_size`` (for sizes from a LIST); 0 for anything too small to be one."""
    if stored < HEADER_SIZE + TAG:
        return 0
    chunks = -(-(stored - HEADER_SIZE) // (CHUNK + TAG))
    return max(0, stored - HEADER_SIZE - chunks * TAG)


def is_sealed(head: bytes) -> bool:
    return head[:4] == MAGIC


@dataclass(frozen=True)
class Header:
    raw: bytes
    version: int
    chunk: int
    key_id: str
    nonce_prefix: bytes

    @classmethod
    def parse(cls, head: bytes, where: str) -> "Header":
        if len(head) < HEADER_SIZE or head[:4] != MAGIC:
            raise ObjectCorrupt(f"{where}: encrypted object header is truncated or damaged")
        magic, version, shift, flags, key_id, prefix = _HEADER.unpack_from(head, 0)
        if version != VERSION:
            raise ObjectCorrupt(f"{where}: encrypted object format version {version} is not supported "
                                f"(this walrewind reads version {VERSION})")
        if not 12 <= shift <= 30 or flags:
            raise ObjectCorrupt(f"{where}: encrypted object header is damaged (chunk shift {shift}, flags {flags})")
        return cls(bytes(head[:HEADER_SIZE]), version, 1 << shift, key_id.hex(), prefix)


def key_for(keyring: Keyring | None, key_id: str, where: str) -> MasterKey:
    """The master key with ``key_id``, or an EncryptionKeyError naming it (and never a key)."""
    key = keyring.find(key_id) if keyring is not None else None
    if key is not None:
        return key
    if keyring is None:
        raise EncryptionKeyError(f"{where} is encrypted with key id {key_id} and no encryption key was given; "
                                 f"{KEY_HINT}")
    raise EncryptionKeyError(f"{where} is encrypted with key id {key_id}, which is not among the keys given "
                             f"(key ids {keyring.describe()}); {KEY_HINT}")


class Sealer:
    """Encrypts one object, chunk by chunk, under ``key`` (a fresh random nonce prefix per object)."""

    def __init__(self, key: MasterKey, name: str) -> None:
        self.name = name.encode("utf-8")
        self.aead, _ = _aesgcm(key.object_key(name))
        self.header = _HEADER.pack(MAGIC, VERSION, CHUNK_SHIFT, 0, key.id_bytes, os.urandom(8))
        self._prefix = self.header[16:24]

    def chunk(self, index: int, data: bytes, last: bool) -> bytes:
        aad = self.header + _AAD_TAIL.pack(index, last) + self.name
        return self.aead.encrypt(self._prefix + index.to_bytes(4, "big"), data, aad)


class Opener:
    """Decrypts chunks of one stored object whose header is ``header``."""

    def __init__(self, keyring: Keyring | None, name: str, header: Header, where: str) -> None:
        self.header, self.where = header, where
        self.name = name.encode("utf-8")
        self.aead, self._invalid = _aesgcm(key_for(keyring, header.key_id, where).object_key(name))

    def chunk(self, index: int, sealed: bytes | memoryview, last: bool) -> bytes:
        aad = self.header.raw + _AAD_TAIL.pack(index, last) + self.name
        try:
            return self.aead.decrypt(self.header.nonce_prefix + index.to_bytes(4, "big"), sealed, aad)
        except self._invalid:
            raise ObjectCorrupt(
                f"{self.where}: chunk {index} does not authenticate under key id {self.header.key_id} "
                "(the object was damaged, cut short, renamed or swapped for another)") from None

    def chunk_into(self, index: int, sealed: memoryview, last: bool | None, out: memoryview) -> None:
        """Decrypt into ``out`` (``len(sealed) - TAG`` bytes): no intermediate copy (cryptography >= 46).
        ``last=None``: a full chunk read without knowing whether the object goes on after it."""
        if last is None:
            try:
                return self.chunk_into(index, sealed, False, out)
            except ObjectCorrupt:
                return self.chunk_into(index, sealed, True, out)
        aad = self.header.raw + _AAD_TAIL.pack(index, last) + self.name
        try:
            self.aead.decrypt_into(self.header.nonce_prefix + index.to_bytes(4, "big"), sealed, aad, out)
        except self._invalid:
            raise ObjectCorrupt(
                f"{self.where}: chunk {index} does not authenticate under key id {self.header.key_id} "
                "(the object was damaged, cut short, renamed or swapped for another)") from None

    def chunk_either(self, index: int, sealed: bytes | memoryview) -> bytes:
        """A full-size chunk read without knowing whether the object goes on after it."""
        try:
            return self.chunk(index, sealed, False)
        except ObjectCorrupt:
            return self.chunk(index, sealed, True)


def seal(key: MasterKey, name: str, data: bytes | memoryview) -> bytes:
    """The whole encrypted object for ``data``."""
    sealer = Sealer(key, name)
    view = memoryview(data)
    count = max(1, -(-len(view) // CHUNK))
    parts = [sealer.header]
    for i in range(count):
        parts.append(sealer.chunk(i, view[i * CHUNK:(i + 1) * CHUNK], i == count - 1))
    return b"".join(parts)


def unseal(keyring: Keyring | None, name: str, blob: bytes | memoryview, where: str) -> bytes:
    """The plaintext of a whole encrypted object: every chunk, the last one marked last."""
    view = memoryview(blob)
    header = Header.parse(view[:HEADER_SIZE], where)
    opener = Opener(keyring, name, header, where)
    span = header.chunk + TAG
    body = view[HEADER_SIZE:]
    if len(body) < TAG:
        raise ObjectCorrupt(f"{where}: encrypted object is truncated ({len(blob)} bytes)")
    count = -(-len(body) // span)
    return b"".join(opener.chunk(i, body[i * span:(i + 1) * span], i == count - 1) for i in range(count))


def seal_stream(key: MasterKey, name: str, src: BinaryIO, write: Callable[[bytes], object]) -> int:
    """Encrypt everything ``src`` holds, chunk by chunk (bounded memory); returns the stored size."""
    sealer = Sealer(key, name)
    write(sealer.header)
    total = HEADER_SIZE
    index, data = 0, src.read(CHUNK)
    while True:
        following = src.read(CHUNK) if len(data) == CHUNK else b""
        out = sealer.chunk(index, data, not following)
        write(out)
        total += len(out)
        if not following:
            return total
        index, data = index + 1, following


def unseal_stream(keyring: Keyring | None, name: str, src: BinaryIO, write: Callable[[bytes], object],
                  where: str) -> int:
    """Decrypt a stored object read from ``src`` chunk by chunk; returns the plaintext size."""
    header = Header.parse(src.read(HEADER_SIZE), where)
    opener = Opener(keyring, name, header, where)
    span = header.chunk + TAG
    index, data, total = 0, src.read(span), 0
    if len(data) < TAG:
        raise ObjectCorrupt(f"{where}: encrypted object is truncated")
    while True:
        following = src.read(span) if len(data) == span else b""
        plain = opener.chunk(index, data, not following)
        write(plain)
        total += len(plain)
        if not following:
            return total
        index, data = index + 1, following
