"""ckq-run's gang-checkpoint verbs with real CRIU: freeze the whole tree, dump it while frozen (it stays
frozen), then thaw, stop, or let the hold run out; a dump taken while frozen restores and continues."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from queue_controller.runtime import control, procfs
from queue_controller.runtime.freezer import _state
from tests.plugins.criu import lines, wait_for

pytestmark = pytest.mark.criu

WL = Path(__file__).parent / "workloads"
PY = sys.executable
CHECKPOINTED = 75


def ask(ckq_dir: Path, **payload: object) -> dict:
    return control.request(ckq_dir / control.SOCKET_NAME, dict(payload), timeout=120)


def workload_states(pod) -> list[str]:
    """The scheduler states of the workload's processes (host PIDs: the tree under ckq-run, less
    ckq-run itself and the CRIU helpers it may run)."""
    sup = pod.supervisor_pid()
    out = []
    for pid in procfs.tree(sup):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"tree.py" in cmd and pid != sup:
            out.append(_state(pid) or "gone")
    return out


def manifest(ckq_dir: Path, ckpt_id: str) -> dict:
    return json.loads((ckq_dir / "checkpoints" / ckpt_id / "manifest.json").read_text())


def test_freeze_dump_thaw_then_restore_continues(pod, tmp_path: Path) -> None:
    out = tmp_path / "scratch"
    out.mkdir()
    log = out / "tree.log"
    cmd = [PY, str(WL / "tree.py"), str(log), "400"]
    ckq = tmp_path / "ckq"
    p1 = pod(ckq, cmd, "--writable", str(out))
    wait_for(lambda: len(lines(log)) >= 20, what="20 numbers through the pipe")

    frozen = ask(ckq, op="freeze", token="uid-1", holdSeconds=300)
    assert frozen["ok"] and frozen["stopped"], frozen
    states = workload_states(p1)
    assert len(states) == 2 and set(states) == {"T"}, states  # parent and child both stopped
    again = ask(ckq, op="freeze", token="uid-1", holdSeconds=300)  # an agent restarted: same freeze
    assert again["frozenAt"] == frozen["frozenAt"]
    other = ask(ckq, op="freeze", token="uid-2", holdSeconds=300)
    assert not other["ok"] and "another checkpoint" in other["error"] and other["busyWith"] == "uid-1"
    plain = ask(ckq, op="checkpoint", leaveRunning=True)
    assert not plain["ok"] and "frozen for checkpoint uid-1" in plain["error"]

    dumped = ask(ckq, op="checkpoint", token="uid-1", leaveRunning=False)
    assert dumped["ok"], dumped
    m = manifest(ckq, dumped["id"])
    assert m["leaveRunning"] is True  # a gang member's dump never ends it: the commit does
    assert m["frozenAt"] == frozen["frozenAt"] <= m["dumpStartedAt"]
    assert set(workload_states(p1)) == {"T"}  # still frozen after the dump, awaiting the commit
    at_dump = len(lines(log))

    assert ask(ckq, op="thaw", token="uid-1") == {"ok": True, "thawed": True}
    assert ask(ckq, op="thaw", token="uid-1") == {"ok": True, "thawed": False}  # idempotent
    wait_for(lambda: len(lines(log)) >= at_dump + 20, what="the tree to run on after the thaw")
    p1.kill()

    p2 = pod(ckq, cmd, "--restore", dumped["id"])  # restored stopped by CRIU, continued by ckq-run
    assert p2.wait() == 0, p2.output()
    numbers = [int(line.split()[0]) for line in lines(log)]
    assert numbers == list(range(400))  # rolled back to the dump, then continued: no gap, no repeat


def test_stop_after_a_frozen_dump_exits_75(pod, tmp_path: Path) -> None:
    out = tmp_path / "scratch"
    out.mkdir()
    log = out / "tree.log"
    ckq = tmp_path / "ckq"
    p1 = pod(ckq, [PY, str(WL / "tree.py"), str(log), "400"], "--writable", str(out))
    wait_for(lambda: len(lines(log)) >= 10, what="10 numbers")
    assert ask(ckq, op="freeze", token="u", holdSeconds=300)["ok"]
    refused = ask(ckq, op="stop", token="u")
    assert not refused["ok"] and "no checkpoint was taken" in refused["error"]
    assert ask(ckq, op="checkpoint", token="u")["ok"]
    assert ask(ckq, op="stop", token="u") == {"ok": True, "stopped": True}
    assert p1.wait() == CHECKPOINTED, p1.output()


def test_hold_runs_out_the_tree_thaws_itself_and_is_not_dumped(pod, tmp_path: Path) -> None:
    out = tmp_path / "scratch"
    out.mkdir()
    log = out / "tree.log"
    ckq = tmp_path / "ckq"
    p1 = pod(ckq, [PY, str(WL / "tree.py"), str(log), "400"], "--writable", str(out))
    wait_for(lambda: len(lines(log)) >= 10, what="10 numbers")
    assert ask(ckq, op="freeze", token="u", holdSeconds=1)["ok"]
    at_freeze = len(lines(log))
    # No go-ahead comes (a dead agent): the tree continues by itself once the hold is over.
    wait_for(lambda: len(lines(log)) >= at_freeze + 10, what="the tree to thaw itself after its hold")
    late = ask(ckq, op="checkpoint", token="u")
    assert not late["ok"] and "ran out" in late["error"], late
    refreeze = ask(ckq, op="freeze", token="u", holdSeconds=300)
    assert not refreeze["ok"] and "ran out of time" in refreeze["error"]
    assert ask(ckq, op="thaw", token="u") == {"ok": True, "thawed": False}
    assert not any(n for n in (ckq / "checkpoints").iterdir() if not n.name.startswith("."))
    p1.kill()
