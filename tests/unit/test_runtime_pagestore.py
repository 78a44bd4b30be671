"""Incremental page storage: deltas against a parent chain and rebuilding full page files."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from queue_controller.runtime import criu_images, pagestore
from queue_controller.runtime.pagestore import PAGE

pytestmark = pytest.mark.unit


def _ckpt(root: Path, ckpt_id: str, pages: bytes) -> Path:
    images = root / ckpt_id / "images"
    images.mkdir(parents=True)
    (images / "pages-1.img").write_bytes(pages)
    return images


def _rebuild(root: Path, ckpt_id: str, tmp: Path) -> bytes:
    out = tmp / f"out-{ckpt_id}"
    out.mkdir()
    pagestore.materialize(root / ckpt_id / "images", root, ckpt_id, out)
    return (out / "pages-1.img").read_bytes()


def test_chain_stores_only_changed_pages_and_rebuilds_exactly(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    n = 600  # spans several comparison blocks
    base = bytearray(os.urandom(n * PAGE))
    _ckpt(root, "a", bytes(base))

    v2 = bytearray(base)
    v2[5 * PAGE : 6 * PAGE] = os.urandom(PAGE)
    v2[300 * PAGE + 7] ^= 0xFF
    images = _ckpt(root, "b", bytes(v2))
    stats = pagestore.encode_delta(images, root, "a")
    assert stats.stored_bytes == 2 * PAGE
    assert not (images / "pages-1.img").exists()
    assert _rebuild(root, "b", tmp_path) == bytes(v2)

    v3 = bytearray(v2) + os.urandom(3 * PAGE)  # the process grew
    v3[10 * PAGE] ^= 1
    images = _ckpt(root, "c", bytes(v3))
    stats = pagestore.encode_delta(images, root, "b")
    assert stats.stored_bytes == 4 * PAGE
    assert _rebuild(root, "c", tmp_path) == bytes(v3)
    # References resolve to the checkpoint that physically holds each page, never through "b"'s runs.
    runs = pagestore.logical_runs(root, "c", "pages-1.img")
    assert runs is not None and {r[1] for r in runs[0]} <= {"a", "b", "c"}


def test_missing_ancestor_is_named(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    _ckpt(root, "a", os.urandom(4 * PAGE))
    parent = (root / "a/images/pages-1.img").read_bytes()
    images = _ckpt(root, "b", os.urandom(PAGE) + parent[PAGE:])
    pagestore.encode_delta(images, root, "a")
    (root / "a" / "images" / "pages-1.img").unlink()
    with pytest.raises(Exception, match="missing"):
        _rebuild(root, "b", tmp_path)


def _pagemap_bytes(pages_id: int, entries: list[tuple[int, int]]) -> bytes:
    def varint(v: int) -> bytes:
        out = bytearray()
        while True:
            byte, v = v & 0x7F, v >> 7
            out.append(byte | (0x80 if v else 0))
            if not v:
                return bytes(out)

    def msg(fields: list[tuple[int, int]]) -> bytes:
        body = b"".join(varint(num << 3) + varint(val) for num, val in fields)
        return struct.pack("<I", len(body)) + body

    out = struct.pack("<II", criu_images.IMG_COMMON_MAGIC, criu_images.PAGEMAP_MAGIC) + msg([(1, pages_id)])
    for vaddr, n in entries:
        out += msg([(1, vaddr), (2, n), (4, criu_images.PE_PRESENT)])
    return out


def test_pagemap_parsing(tmp_path: Path) -> None:
    (tmp_path / "pagemap-1001.img").write_bytes(_pagemap_bytes(3, [(0x7F0000001000, 2), (0x5000, 1)]))
    maps = criu_images.pagemaps(tmp_path)
    assert maps["pagemap-1001.img"] == criu_images.PageMap(3, ((0x7F0000001000, 2), (0x5000, 1)))
    assert maps["pagemap-1001.img"].pages_file == "pages-3.img"


def test_aligned_delta_follows_moved_memory(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    a, b, c = (os.urandom(40 * PAGE) for _ in range(3))
    _ckpt(root, "p", a + b)
    parent_map = criu_images.PageMap(1, ((0x100000, 40), (0x900000, 40)))
    # A new 8-page mapping appeared between the two, and one page of the second one changed.
    changed = bytearray(b)
    changed[5 * PAGE] ^= 1
    new_pages = a + c[: 8 * PAGE] + bytes(changed)
    images = _ckpt(root, "n", new_pages)
    new_map = criu_images.PageMap(1, ((0x100000, 40), (0x500000, 8), (0x900000, 40)))
    stored = pagestore.encode_aligned(images, root, "p", "pages-1.img", new_map, parent_map)
    assert stored == 9 * PAGE  # the new mapping and the changed page, nothing shifted
    (images / "pages-1.img").unlink()
    assert _rebuild(root, "n", tmp_path) == new_pages
