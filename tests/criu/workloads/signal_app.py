"""A Signal-mode app: saves its counter with the ckq helper, resumes from CKQ_RESTORE_DIR.

usage: signal_app.py OUT_FILE COUNT
"""

import sys
import time

from queue_controller.runtime import workload

out, count = sys.argv[1], int(sys.argv[2])
state = {"i": 0}
restored = workload.restore_dir()
if restored:
    state["i"] = int((restored / "counter").read_text())
workload.on_checkpoint(lambda d: (d / "counter").write_text(str(state["i"])), at_safe_points=True)
with open(out, "a") as log:
    while state["i"] < count:
        log.write(f"{state['i']}\n")
        log.flush()
        state["i"] += 1
        workload.checkpoint_if_requested()
        time.sleep(0.03)
