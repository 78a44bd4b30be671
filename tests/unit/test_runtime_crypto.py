"""Chunked AES-GCM at rest: round trip, wrong key, tampering, key file formats."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from queue_controller.runtime import crypto
from queue_controller.runtime.errors import RuntimeFailure

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("size", [0, 1, crypto.CHUNK, crypto.CHUNK + 5, 2 * crypto.CHUNK])
def test_round_trip(tmp_path: Path, size: int) -> None:
    key = os.urandom(32)
    src, enc, dec = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    src.write_bytes(os.urandom(size))
    crypto.encrypt_file(key, src, enc, "images/a")
    assert enc.read_bytes()[: len(crypto.MAGIC)] == crypto.MAGIC
    crypto.decrypt_file(key, enc, dec, "images/a")
    assert dec.read_bytes() == src.read_bytes()


def test_wrong_key_tamper_rename_and_truncation_fail(tmp_path: Path) -> None:
    key = os.urandom(32)
    src, enc, out = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    src.write_bytes(os.urandom(crypto.CHUNK + 100))
    crypto.encrypt_file(key, src, enc, "x")
    with pytest.raises(crypto.DecryptionError, match="wrong key"):
        crypto.decrypt_file(os.urandom(32), enc, out, "x")
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt_file(key, enc, out, "y")  # bound to its path
    data = bytearray(enc.read_bytes())
    truncated = tmp_path / "t"
    truncated.write_bytes(bytes(data[: len(crypto.MAGIC) + 8 + crypto.CHUNK + crypto.TAG]))
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt_file(key, truncated, out, "x")  # the last-chunk flag catches truncation
    data[100] ^= 1
    enc.write_bytes(bytes(data))
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt_file(key, enc, out, "x")


def test_key_file_formats(tmp_path: Path) -> None:
    key = os.urandom(32)
    for name, content in (("raw", key), ("hex", key.hex().encode() + b"\n"), ("b64", base64.b64encode(key))):
        (tmp_path / name).write_bytes(content)
        assert crypto.load_key(tmp_path / name) == key
    (tmp_path / "short").write_text("abcd")
    with pytest.raises(RuntimeFailure, match="256-bit"):
        crypto.load_key(tmp_path / "short")
    with pytest.raises(RuntimeFailure, match="cannot read"):
        crypto.load_key(tmp_path / "missing")
    assert crypto.key_id(key) != crypto.key_id(os.urandom(32))
