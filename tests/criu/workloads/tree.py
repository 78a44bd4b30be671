"""A process tree: the parent forks a child that sends numbers over a pipe; the parent logs them.

usage: tree.py OUT_FILE COUNT
"""

import os
import sys
import time

out, count = sys.argv[1], int(sys.argv[2])
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.close(r)
    for i in range(count):
        os.write(w, f"{i}\n".encode())
        time.sleep(0.03)
    os._exit(0)
os.close(w)
log = open(out, "a")  # noqa: SIM115 - kept open across the dump on purpose
with os.fdopen(r) as pipe:
    for line in pipe:
        log.write(f"{line.strip()} {os.getpid()} {child}\n")
        log.flush()
_, status = os.waitpid(child, 0)
sys.exit(0 if status == 0 else 1)
