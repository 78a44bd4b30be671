"""Just enough of CRIU's image format to read page maps: which virtual pages a pages-N.img holds.

A pagemap image is two 32-bit magics, then length-prefixed protobuf messages: PagemapHead
{1: pages_id} and PagemapEntry {1: vaddr, 2: nr_pages, 3: in_parent, 4: flags}. The pages of the
entries flagged PE_PRESENT are stored, in entry order, in pages-<pages_id>.img.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from queue_controller.runtime.errors import RuntimeFailure

IMG_COMMON_MAGIC = 0x54564319
PAGEMAP_MAGIC = 0x56084025
PE_PARENT = 1 << 0
PE_PRESENT = 1 << 2


@dataclass(frozen=True)
class PageMap:
    pages_id: int
    entries: tuple[tuple[int, int], ...]  # (vaddr, nr_pages) of the pages stored in the pages file

    @property
    def pages_file(self) -> str:
        return f"pages-{self.pages_id}.img"


def _varints(msg: bytes) -> dict[int, int]:
    """Decode a protobuf message whose fields are all varints (true for these two messages)."""
    fields: dict[int, int] = {}
    pos = 0
    while pos < len(msg):
        key, pos = _varint(msg, pos)
        if key & 7 != 0:
            raise ValueError(f"unexpected wire type {key & 7}")
        value, pos = _varint(msg, pos)
        fields[key >> 3] = value
    return fields


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def read_pagemap(path: Path) -> PageMap:
    data = path.read_bytes()
    try:
        magic, kind = struct.unpack_from("<II", data, 0)
        if (magic, kind) != (IMG_COMMON_MAGIC, PAGEMAP_MAGIC):
            raise ValueError("bad magic")
        pos = 8
        messages = []
        while pos < len(data):
            (size,) = struct.unpack_from("<I", data, pos)
            messages.append(_varints(data[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        head, rest = messages[0], messages[1:]
    except (ValueError, IndexError, struct.error) as exc:
        raise RuntimeFailure(f"cannot parse CRIU page map {path.name}: {exc}") from None
    entries = []
    for entry in rest:
        flags = entry.get(4)
        present = flags & PE_PRESENT if flags is not None else not entry.get(3)
        if present and not (flags or 0) & PE_PARENT:
            entries.append((entry[1], entry[2]))
    return PageMap(pages_id=head.get(1, 0), entries=tuple(entries))


def pagemaps(images: Path) -> dict[str, PageMap]:
    """Every page map of an images directory, by file name (pagemap-<pid>.img, pagemap-shmem-…)."""
    return {p.name: read_pagemap(p) for p in sorted(images.glob("pagemap-*.img"))}
