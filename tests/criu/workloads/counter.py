"""Counts slowly into a file; holds a recognisable secret in memory; optional exit code and SIGTERM trap.

usage: counter.py OUT_FILE COUNT [EXIT_CODE]
"""

import signal
import sys
import time

out, count = sys.argv[1], int(sys.argv[2])
code = int(sys.argv[3]) if len(sys.argv) > 3 else 0
secret = ("CKQ-SECRET-MARKER-" * 4096).encode()  # must never appear in an encrypted checkpoint
ballast = bytearray(8 << 20)
log = open(out, "a")  # noqa: SIM115 - kept open across the dump on purpose


def on_term(_sig, _frame):
    log.write("got SIGTERM\n")
    log.flush()
    sys.exit(7)


signal.signal(signal.SIGTERM, on_term)
for i in range(count):
    ballast[(i * 4096) % len(ballast)] = i % 256
    log.write(f"{i}\n")
    log.flush()
    time.sleep(0.05)
sys.exit(code)
