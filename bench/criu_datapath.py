"""CRIU data path benchmark: ckq-run checkpoint/restore time versus the disk's raw write bandwidth.

For each resident size (default 256 MiB, 1 GiB, 4 GiB) in one run:
  * raw: write the same number of bytes to the same disk with fsync (the bandwidth ceiling);
  * full: `ckq-run checkpoint --leave-running` of a process holding that much memory;
  * incremental: after the process rewrites 10% of its pages (every 10th page, the worst spread),
    a repeat checkpoint, taken against the full one;
  * restore: `ckq-run --restore` of the full checkpoint in a fresh PID + mount namespace.
Goals: dump >= 80% of raw bandwidth; incremental >= 5x cheaper than full.
Prints a table, then one JSON object as the last line. Needs root and unshare (like the criu tier).

usage: python bench/criu_datapath.py [--sizes-mib 256,1024,4096] [--dir PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CKQ_RUN = str(Path(sys.executable).with_name("ckq-run"))

HOLDER = r'''
import mmap, os, sys, time
size, ready = int(sys.argv[1]), sys.argv[2]
mem = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # like a heap
stamp = os.urandom(64)
for off in range(0, size, 4096):  # make every page resident and distinct
    mem[off:off + 8] = off.to_bytes(8, "little")
    mem[off + 8:off + 72] = stamp
open(ready, "w").write("ready")
rounds = 0
while True:
    if os.path.exists(ready + ".dirty"):
        rounds += 1
        for off in range(0, size, 40960):  # every 10th page: 10% of the pages, spread out
            mem[off + 100] = rounds % 256
        os.unlink(ready + ".dirty")
        open(ready + ".dirtied", "w").close()
    time.sleep(0.02)
'''


def raw_write(path: Path, size: int, kick: bool) -> float:
    """Seconds to write `size` bytes and fsync them. With kick, writeback is started every 4 MiB
    (as the dump path does), which is the best this disk does; without, it is `dd conv=fsync`."""
    from queue_controller.runtime.follow import start_writeback

    block = os.urandom(4 << 20)
    start = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for i in range(size // len(block)):
            os.write(fd, block)
            if kick:
                start_writeback(fd, i * len(block), len(block))
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.monotonic() - start
    path.unlink()
    return elapsed


def wait_file(path: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {path}")
        time.sleep(0.02)


def start_pod(ckq: Path, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    cmd = ["unshare", "--pid", "--fork", "--mount-proc", "--mount", CKQ_RUN, "--dir", str(ckq), *args]
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill_pod(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def checkpoint(ckq: Path) -> dict[str, object]:
    res = subprocess.run([CKQ_RUN, "checkpoint", "--dir", str(ckq), "--leave-running", "--json"],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"checkpoint failed: {res.stderr}")
    manifest: dict[str, object] = json.loads(res.stdout)
    return manifest


def one(size_mib: int, base: Path, staging: str) -> dict[str, float]:
    size = size_mib << 20
    work = base / f"m{size_mib}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # The baseline is the faster of both ways of writing, so the ratio is conservative.
    raw_s = min(raw_write(work / "raw.bin", size, kick=False), raw_write(work / "raw.bin", size, kick=True))
    script = work / "holder.py"
    script.write_text(HOLDER)
    ready = work / "ready"
    ckq = work / "ckq"
    pod = start_pod(ckq, ["--staging", staging, "--", sys.executable, str(script), str(size), str(ready)],
                    work / "pod.log")
    try:
        wait_file(ready)
        full = checkpoint(ckq)
        (work / "ready.dirty").touch()
        wait_file(work / "ready.dirtied")
        incr = checkpoint(ckq)
    finally:
        kill_pod(pod)
    start = time.monotonic()
    restored = start_pod(ckq, ["--restore", str(full["id"])], work / "restore.log")
    try:
        while b"workload running" not in (work / "restore.log").read_bytes():
            if restored.poll() is not None:
                raise SystemExit("restore failed:\n" + (work / "restore.log").read_text())
            time.sleep(0.01)
        restore_s = time.monotonic() - start
    finally:
        kill_pod(restored)
    logical = float(full["logicalSizeBytes"])  # type: ignore[arg-type]
    full_s, incr_s = float(full["durationSeconds"]), float(incr["durationSeconds"])  # type: ignore[arg-type]
    result = {
        "size_mib": size_mib,
        "raw_write_mb_s": size / raw_s / 1e6,
        "dump_s": full_s,
        "dump_mb_s": logical / full_s / 1e6,
        "dump_vs_raw": (logical / full_s) / (size / raw_s),
        "full_bytes": float(full["sizeBytes"]),  # type: ignore[arg-type]
        "incr_s": incr_s,
        "incr_bytes": float(incr["sizeBytes"]),  # type: ignore[arg-type]
        "incr_time_ratio": full_s / incr_s,
        "incr_bytes_ratio": float(full["sizeBytes"]) / float(incr["sizeBytes"]),  # type: ignore[arg-type]
        "restore_s": restore_s,
        "full_phases": full.get("phases"),
        "incr_phases": incr.get("phases"),
    }
    shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mib", default="256,1024,4096")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir under /var/tmp)")
    parser.add_argument("--staging", default="auto", help="ckq-run --staging for the incremental dump")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        raise SystemExit("criu_datapath needs root and unshare")
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="ckq-criu-bench-", dir="/var/tmp"))
    results = []
    try:
        for size in (int(s) for s in args.sizes_mib.split(",")):
            results.append(one(size, base, args.staging))
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    head = f"{'MiB':>6} {'raw MB/s':>9} {'dump s':>7} {'dump MB/s':>10} {'vs raw':>7} {'incr s':>7} " \
           f"{'t ratio':>8} {'incr MiB':>9} {'B ratio':>8} {'restore s':>10}"
    print(head)
    for r in results:
        print(f"{r['size_mib']:>6} {r['raw_write_mb_s']:>9.0f} {r['dump_s']:>7.2f} {r['dump_mb_s']:>10.0f} "
              f"{r['dump_vs_raw']:>7.0%} {r['incr_s']:>7.2f} {r['incr_time_ratio']:>7.1f}x "
              f"{r['incr_bytes'] / 2**20:>9.1f} {r['incr_bytes_ratio']:>7.1f}x {r['restore_s']:>10.2f}")
    summary = {
        "benchmark": "criu_datapath",
        "results": results,
        "goal_dump_vs_raw_min": 0.8,
        "goal_incremental_min_ratio": 5.0,
        "dump_goal_met": all(r["dump_vs_raw"] >= 0.8 for r in results),
        "incremental_goal_met_bytes": all(r["incr_bytes_ratio"] >= 5 for r in results),
        "incremental_goal_met_time": all(r["incr_time_ratio"] >= 5 for r in results),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
