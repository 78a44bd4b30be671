"""Updates a small slice of a large array in place each step (no big temporaries) and maps one new
128 KiB array per step (so the memory layout shifts between dumps), then checks everything against a
fresh recomputation: "ok" proves the memory survived intact.

usage: sparse_update.py OUT_FILE STEPS [MIB]
"""

import sys
import time

import numpy as np

out, steps = sys.argv[1], int(sys.argv[2])
n = (int(sys.argv[3]) if len(sys.argv) > 3 else 32) * (1 << 20) // 8
x = np.random.default_rng(7).standard_normal(n)
extra = []
with open(out, "a") as log:
    for step in range(steps):
        lo = (step * 4096) % (n - 4096)
        x[lo : lo + 4096] += 1.0
        extra.append(np.full(16384, step, dtype=np.float64))  # 128 KiB: its own mmap
        log.write(f"{step}\n")
        log.flush()
        time.sleep(0.02)
    y = np.random.default_rng(7).standard_normal(n)
    for step in range(steps):
        lo = (step * 4096) % (n - 4096)
        y[lo : lo + 4096] += 1.0
    grown = all(bool((e == i).all()) for i, e in enumerate(extra))
    log.write("ok\n" if np.array_equal(x, y) and grown else "MISMATCH\n")
