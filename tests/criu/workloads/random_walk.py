"""A stateful numpy workload: large arrays, a seeded RNG, an output file kept open the whole run.

usage: random_walk.py OUT_DIR STEPS [MIB]
"""

import hashlib
import sys
import time
from pathlib import Path

import numpy as np

out_dir, steps = Path(sys.argv[1]), int(sys.argv[2])
mib = int(sys.argv[3]) if len(sys.argv) > 3 else 16
rng = np.random.default_rng(20261123)
walk = np.zeros(mib * (1 << 20) // 8)
velocity = rng.standard_normal(walk.size)
log = (out_dir / "walk.log").open("a")
for step in range(steps):
    velocity[step % 64 :: 64] = rng.standard_normal(velocity[step % 64 :: 64].size)
    walk += velocity * 0.01
    log.write(f"{step} {hashlib.sha256(walk.tobytes()).hexdigest()} {walk[:4].tolist()}\n")
    log.flush()
    (out_dir / "progress").write_text(str(step))
    time.sleep(0.05)
log.close()
np.save(out_dir / "final.npy", walk)
