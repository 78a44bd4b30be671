"""Encryption at rest for checkpoint files: AES-256-GCM in 4 MiB chunks (a STREAM construction).

Each file gets a random 8-byte nonce prefix; chunk i uses nonce = prefix || i (32-bit) and the
associated data binds the chunk to the file's relative path, its index and whether it is the last one,
so chunks cannot be reordered, truncated, or swapped between files without the tag check failing.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from queue_controller.runtime.errors import RuntimeFailure

MAGIC = b"CKQENC1\n"
CHUNK = 4 << 20
TAG = 16
ALGORITHM = "AES-256-GCM-STREAM-4MiB"


class DecryptionError(RuntimeFailure):
    """Wrong key or tampered ciphertext."""


class KeyUnavailable(RuntimeFailure):
    """The key asked for is missing or malformed (ckq-run exits EXIT_KEY before starting anything)."""


def load_key(path: str | os.PathLike[str]) -> bytes:
    """A 32-byte key from a file holding 32 raw bytes, 64 hex digits, or base64 of 32 bytes."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise KeyUnavailable(f"cannot read the encryption key file {path}: {exc.strerror}") from None
    text = raw.strip()
    candidates: list[bytes] = [raw] if len(raw) == 32 else []
    with contextlib.suppress(binascii.Error, ValueError):
        candidates.append(binascii.unhexlify(text))
    with contextlib.suppress(binascii.Error, ValueError):
        candidates.append(base64.b64decode(text, validate=True))
    for key in candidates:
        if len(key) == 32:
            return key
    raise KeyUnavailable(
        f"encryption key file {path} must hold a 256-bit key: 32 raw bytes, 64 hex digits or base64"
    )


def load_default_key(path: str | os.PathLike[str]) -> bytes | None:
    """The namespace's default key (an optional Secret volume, docs/security.md): the key when `path`
    exists; None when its directory is empty (the namespace has no such Secret: images are stored
    unencrypted, and their manifests say so); KeyUnavailable when the Secret exists without that data
    key, or holds no valid key (a misconfigured default never silently means "unencrypted")."""
    file = Path(path)
    if file.exists():
        return load_key(file)
    try:
        # A Secret volume's own bookkeeping entries (`..data`, `..<timestamp>`) start with two dots.
        present = [e.name for e in file.parent.iterdir() if not e.name.startswith("..")]
    except FileNotFoundError:
        present = []
    except OSError as exc:
        raise KeyUnavailable(f"cannot read the encryption key directory {file.parent}: {exc.strerror}") from None
    if present:
        raise KeyUnavailable(f"the default key Secret is mounted at {file.parent} but has no data key "
                             f"{file.name!r} (it has: {', '.join(sorted(present))})")
    return None


def key_id(key: bytes) -> str:
    """A non-secret fingerprint recorded in the manifest, so a wrong key is named before decrypting."""
    return hashlib.sha256(b"ckq-key-id\0" + key).hexdigest()[:16]


def _aad(relpath: str, index: int, last: bool) -> bytes:
    return relpath.encode() + b"\0" + struct.pack(">I?", index, last)


def encrypt_file(key: bytes, src: Path, dst: Path, relpath: str) -> None:
    aes = AESGCM(key)
    prefix = os.urandom(8)
    size = src.stat().st_size
    with src.open("rb") as fin, dst.open("wb") as fout:
        fout.write(MAGIC + prefix)
        index = 0
        remaining = size
        while True:
            block = fin.read(min(CHUNK, remaining))
            remaining -= len(block)
            last = remaining <= 0
            nonce = prefix + struct.pack(">I", index)
            fout.write(aes.encrypt(nonce, block, _aad(relpath, index, last)))
            index += 1
            if last:
                break


def decrypt_file(key: bytes, src: Path, dst: Path, relpath: str) -> None:
    aes = AESGCM(key)
    with src.open("rb") as fin, dst.open("wb") as fout:
        head = fin.read(len(MAGIC) + 8)
        if not head.startswith(MAGIC):
            raise DecryptionError(f"{relpath} is not a ckq-encrypted file")
        prefix = head[len(MAGIC):]
        index = 0
        block = fin.read(CHUNK + TAG)
        while True:
            following = fin.read(CHUNK + TAG)
            last = not following
            try:
                fout.write(aes.decrypt(prefix + struct.pack(">I", index), block, _aad(relpath, index, last)))
            except InvalidTag:
                raise DecryptionError(
                    f"cannot decrypt {relpath}: wrong key or the file was modified"
                ) from None
            if last:
                return
            block = following
            index += 1
