"""Incremental page storage: keep only the memory pages that changed since the parent checkpoint.

CRIU's own incremental dumps need the kernel's soft-dirty bits (CONFIG_MEM_SOFT_DIRTY), which many
kernels (this platform's included) do not have. So CRIU always writes full ``pages-*.img`` files and
ckq compares them, page by page at the same offset, with the parent's logical pages. A changed page is
appended to ``pages-N.img.delta``; an unchanged run becomes a reference to the ancestor file that
physically holds it. ``pages-N.img.runs.json`` lists the runs; a restore rebuilds the full file.

Runs are ``[count, ref, file, start]``: ``count`` pages taken from page ``start`` of ``file`` in the
images directory of checkpoint ``ref`` (``""`` = this checkpoint). References are always resolved to
the ancestor that physically stores the page, so a restore reads each page once, whatever the depth.
"""

from __future__ import annotations

import bisect
import ctypes
import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

from queue_controller.runtime.criu_images import PageMap
from queue_controller.runtime.errors import RuntimeFailure

PAGE = 4096
BLOCK_PAGES = 512  # compare 2 MiB at a time; fall back to single pages only inside changed blocks
RUNS_SUFFIX = ".runs.json"
DELTA_SUFFIX = ".delta"

Run = tuple[int, str, str, int]


@dataclass
class DeltaStats:
    logical_bytes: int = 0
    stored_bytes: int = 0


def page_files(images: Path) -> list[str]:
    """Names of the logical page files of a CRIU images directory (full or delta-encoded)."""
    names = {p.name for p in images.glob("pages-*.img")}
    names |= {p.name[: -len(RUNS_SUFFIX)] for p in images.glob("pages-*.img" + RUNS_SUFFIX)}
    return sorted(names)


def logical_runs(checkpoints: Path, ckpt_id: str, name: str) -> tuple[list[Run], int] | None:
    """The physical runs behind checkpoint ckpt_id's logical page file `name`, or None if absent."""
    images = checkpoints / ckpt_id / "images"
    runs_file = images / (name + RUNS_SUFFIX)
    if runs_file.is_file():
        data = json.loads(runs_file.read_text())
        runs = [(int(c), (r or ckpt_id), str(f), int(s)) for c, r, f, s in data["runs"]]
        return runs, int(data["pages"])
    full = images / name
    if full.is_file():
        pages = full.stat().st_size // PAGE
        return [(pages, ckpt_id, name, 0)], pages
    return None


_libc = ctypes.CDLL(None)
_libc.memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.memcmp.restype = ctypes.c_int


class _Mapped:
    """A read-only view of a file by address, for memcmp without copying through Python buffers.

    ACCESS_COPY (a private writable mapping) only because ctypes needs a writable buffer to give an
    address; nothing writes to it, so no page is ever copied."""

    def __init__(self, fd: int, length: int, offset: int = 0) -> None:
        self.mm = mmap.mmap(fd, length, offset=offset, access=mmap.ACCESS_COPY)
        self._anchor: ctypes.Array[ctypes.c_char] | None = (ctypes.c_char * length).from_buffer(self.mm)
        self.addr = ctypes.addressof(self._anchor)

    def close(self) -> None:
        self._anchor = None  # drop the buffer export first, or mmap.close() refuses
        self.mm.close()


class _Reader:
    """Addresses of a parent's logical pages through its runs, keeping the physical files mapped."""

    def __init__(self, checkpoints: Path, runs: list[Run]) -> None:
        self.checkpoints = checkpoints
        self.runs = runs
        self.starts: list[int] = []
        pos = 0
        for run in runs:
            self.starts.append(pos)
            pos += run[0]
        self.maps: dict[tuple[str, str], _Mapped] = {}

    def base(self, ref: str, name: str) -> int:
        key = (ref, name)
        if key not in self.maps:
            path = self.checkpoints / ref / "images" / name
            fd = os.open(path, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                if size == 0:
                    raise RuntimeFailure(f"parent page file {ref}/{name} is empty but referenced")
                self.maps[key] = _Mapped(fd, size)
            finally:
                os.close(fd)
        return self.maps[key].addr

    def segments(self, first: int, count: int) -> list[Run]:
        """Physical pieces covering logical pages [first, first+count), clipped to the parent's size."""
        out: list[Run] = []
        k = max(bisect.bisect_right(self.starts, first) - 1, 0)  # runs can number in the 100 000s
        while k < len(self.runs) and self.starts[k] < first + count:
            start = self.starts[k]
            n, ref, name, phys = self.runs[k]
            lo, hi = max(first, start), min(first + count, start + n)
            if lo < hi:
                out.append((hi - lo, ref, name, phys + lo - start))
            k += 1
        return out

    def close(self) -> None:
        for mapped in self.maps.values():
            mapped.close()


def _append(runs: list[Run], run: Run) -> None:
    if runs:
        n, ref, name, phys = runs[-1]
        if ref == run[1] and name == run[2] and phys + n == run[3]:
            runs[-1] = (n + run[0], ref, name, phys)
            return
    runs.append(run)


class _Encoder:
    """Writes one delta-encoded pages file: the changed pages, and runs referencing the rest."""

    def __init__(self, images: Path, checkpoints: Path, parent_runs: list[Run], name: str) -> None:
        self.images = images
        self.name = name
        self.reader = _Reader(checkpoints, parent_runs)
        self.runs: list[Run] = []
        self.delta = (images / (name + DELTA_SUFFIX)).open("wb")
        self.stored = 0  # pages written to the delta

    def store(self, new: _Mapped, index: int, count: int = 1) -> None:
        """New page(s) at `index` of the mapping go to the delta."""
        self.delta.write(new.mm[index * PAGE : (index + count) * PAGE])
        _append(self.runs, (count, "", self.name + DELTA_SUFFIX, self.stored))
        self.stored += count

    def match(self, new: _Mapped, index: int, parent_index: int, count: int) -> None:
        """Compare `count` pages at `index` of the mapping with the parent's logical pages from
        `parent_index`; reference the equal ones, store the others."""
        for first in range(0, count, BLOCK_PAGES):
            n_block = min(BLOCK_PAGES, count - first)
            self._block(new, index + first, parent_index + first, n_block)

    def _block(self, new: _Mapped, index: int, parent_index: int, count: int) -> None:
        segs = self.reader.segments(parent_index, count)
        pieces = []  # (offset in block, pages, parent address)
        pos = 0
        for n, ref, name, phys in segs:
            pieces.append((pos, n, self.reader.base(ref, name) + phys * PAGE))
            pos += n
        base = new.addr + index * PAGE
        if pos == count and all(_libc.memcmp(base + off * PAGE, old, n * PAGE) == 0 for off, n, old in pieces):
            for seg in segs:
                _append(self.runs, seg)
            return
        # Something changed in this block: decide page by page.
        for (off, n, old), (_, ref, name, phys) in zip(pieces, segs, strict=True):
            for i in range(n):
                if _libc.memcmp(base + (off + i) * PAGE, old + i * PAGE, PAGE) == 0:
                    _append(self.runs, (1, ref, name, phys + i))
                else:
                    self.store(new, index + off + i)
        if pos < count:  # beyond the parent's end: new memory
            self.store(new, index + pos, count - pos)

    def close(self, pages: int) -> int:
        """Write the runs; returns the bytes stored."""
        self.delta.close()
        self.reader.close()
        (self.images / (self.name + RUNS_SUFFIX)).write_text(json.dumps({"pages": pages, "runs": self.runs}))
        return self.stored * PAGE

    def abort(self) -> None:
        self.delta.close()
        self.reader.close()


class DeltaSink:
    """Delta-encodes one pages file against the parent's file of the same name, page offset by page
    offset, while CRIU is still writing it (see follow.py). Right when the memory layout is unchanged;
    otherwise encode_aligned() redoes it by virtual address once CRIU has written the page maps."""

    def __init__(self, images: Path, checkpoints: Path, parent_runs: list[Run], name: str) -> None:
        self.images = images
        self.name = name
        self.encoder = _Encoder(images, checkpoints, parent_runs, name)
        self.fd = os.open(images / name, os.O_RDONLY)
        self.done = 0  # pages consumed

    def feed(self, upto_bytes: int) -> None:
        total = min(upto_bytes, os.fstat(self.fd).st_size) // PAGE
        while self.done < total:
            count = min(BLOCK_PAGES, total - self.done)
            new = _Mapped(self.fd, count * PAGE, self.done * PAGE)
            try:
                self.encoder.match(new, 0, self.done, count)
            finally:
                new.close()
            self.done += count

    def finish(self, drop_full: bool = True) -> int:
        """Write the runs (and drop the full file); returns the bytes stored."""
        os.close(self.fd)
        stored = self.encoder.close(self.done)
        if drop_full:
            (self.images / self.name).unlink()  # ideally before writeback: it never reaches the disk
        return stored

    def abort(self) -> None:
        os.close(self.fd)
        self.encoder.abort()


def encode_aligned(images: Path, checkpoints: Path, parent_id: str, name: str, new_map: PageMap,
                   parent_map: PageMap) -> int:
    """Delta-encode images/name against the parent by virtual address: a page is compared with the
    parent's page at the same address, wherever the layout moved it. Returns the bytes stored."""
    parent = logical_runs(checkpoints, parent_id, parent_map.pages_file)
    if parent is None:
        raise RuntimeFailure(f"parent {parent_id} has a page map but no {parent_map.pages_file}")
    intervals = []  # (vaddr, pages, parent logical index), sorted by address
    index = 0
    for vaddr, n in parent_map.entries:
        intervals.append((vaddr, n, index))
        index += n
    intervals.sort()
    starts = [iv[0] for iv in intervals]
    encoder = _Encoder(images, checkpoints, parent[0], name)
    fd = os.open(images / name, os.O_RDONLY)
    size = os.fstat(fd).st_size
    new = _Mapped(fd, size) if size else None
    try:
        k = 0  # logical page index in the new file
        for vaddr, n in new_map.entries:
            assert new is not None
            end = vaddr + n * PAGE
            cur = vaddr
            while cur < end:
                j = bisect.bisect_right(starts, cur) - 1
                if j >= 0 and cur < intervals[j][0] + intervals[j][1] * PAGE:
                    pv, pn, pidx = intervals[j]
                    stop = min(end, pv + pn * PAGE)
                    encoder.match(new, k + (cur - vaddr) // PAGE, pidx + (cur - pv) // PAGE, (stop - cur) // PAGE)
                else:
                    following = intervals[j + 1][0] if j + 1 < len(intervals) else end
                    stop = min(end, max(following, cur + PAGE))
                    encoder.store(new, k + (cur - vaddr) // PAGE, (stop - cur) // PAGE)
                cur = stop
            k += n
    except BaseException:
        encoder.abort()
        raise
    finally:
        if new is not None:
            new.close()
        os.close(fd)
    return encoder.close(size // PAGE)


def encode_delta(images: Path, checkpoints: Path, parent_id: str) -> DeltaStats:
    """Replace each full pages-*.img in `images` by a delta against checkpoint `parent_id`."""
    stats = DeltaStats()
    for name in sorted(p.name for p in images.glob("pages-*.img")):
        size = (images / name).stat().st_size
        stats.logical_bytes += size
        parent = logical_runs(checkpoints, parent_id, name)
        if parent is None:  # a process that did not exist in the parent: keep its pages whole
            stats.stored_bytes += size
            continue
        sink = DeltaSink(images, checkpoints, parent[0], name)
        sink.feed(size)
        stats.stored_bytes += sink.finish()
    return stats


def materialize(images: Path, checkpoints: Path, ckpt_id: str, out: Path) -> None:
    """Rebuild every delta-encoded pages file of checkpoint `ckpt_id` as a full file under `out`."""
    for runs_file in sorted(images.glob("pages-*.img" + RUNS_SUFFIX)):
        name = runs_file.name[: -len(RUNS_SUFFIX)]
        resolved = logical_runs(checkpoints, ckpt_id, name)
        if resolved is None:
            continue
        with (out / name).open("wb") as dst:
            for n, ref, src_name, phys in resolved[0]:
                src = checkpoints / ref / "images" / src_name
                try:
                    with src.open("rb") as fin:
                        _copy_range(fin.fileno(), dst.fileno(), phys * PAGE, n * PAGE)
                except FileNotFoundError:
                    raise RuntimeFailure(
                        f"checkpoint {ckpt_id} needs pages from {ref}/{src_name}, which is missing "
                        "(an ancestor checkpoint was deleted?)"
                    ) from None


def _copy_range(src: int, dst: int, offset: int, length: int) -> None:
    done = 0
    while done < length:
        n = os.copy_file_range(src, dst, length - done, offset + done)
        if n <= 0:
            raise RuntimeFailure("page file ended early while rebuilding a checkpoint")
        done += n
