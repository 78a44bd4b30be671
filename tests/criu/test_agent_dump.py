"""The node agent's dump step against a real ckq-run and CRIU: a host `ckq-run --dir D` whose D is laid
out as `wire.container_store_dir` says, checkpointed through its socket for two Checkpoints (leave
running, then stop) by the agent's Dumper and by Agent.process with a fake API server; the artifacts
verify (tree hash, incremental chain), the workload stops with 75, and a restore from the recorded id
ends with the nonce the first process drew and the digest of an uninterrupted run."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from queue_controller import wire
from queue_controller.agent.agent import Agent, AgentSettings
from queue_controller.agent.dump import Dumper, DumpRequest, Slot
from queue_controller.store import FilesystemStore
from tests.plugins.criu import CKQ_RUN, wait_for
from tests.unit.test_agent_loop import FakeKube, ckpt_obj
from tests.unit.test_agent_plan import pod as pod_obj

pytestmark = pytest.mark.criu

CHECKPOINTED = 75
STEPS = 1500
WORKLOAD = f"""
import hashlib, os, sys, time
# One write per line: print() writes each part on its own, and a checkpoint taken between two of
# them splits the line across two containers' logs.
def say(*parts):
    os.write(1, (" ".join(map(str, parts)) + "\\n").encode())
nonce = os.urandom(16).hex()
say("nonce", nonce)
d = hashlib.sha256(nonce.encode()).digest()
for i in range({STEPS}):
    d = hashlib.sha256(d).digest()
    if i % 10 == 0:
        say("step", i)
    time.sleep(0.01)
say("final", nonce, d.hex())
"""


def expected_digest(nonce: str) -> str:
    d = hashlib.sha256(nonce.encode()).digest()
    for _ in range(STEPS):
        d = hashlib.sha256(d).digest()
    return d.hex()


def steps(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.startswith("step "))


def test_agent_dumps_a_real_ckq_run_and_the_restore_continues(criu_bin: str, pod, tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "store")
    slot = Slot("team-a", "train", "worker", 0, "main")
    d = store.dir_for(*slot.args())
    assert str(d) == wire.container_store_dir(str(tmp_path / "store"), "team-a", "train", "worker", 0, "main")
    out = tmp_path / "first.out"
    with out.open("wb") as fh:
        host = subprocess.Popen([CKQ_RUN, "--dir", str(d), "--", "python3", "-u", "-c", WORKLOAD],
                                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        dumper = Dumper(store, timeout=120)
        wait_for(lambda: dumper.live(slot) and steps(out) >= 5, what="the workload and ckq-run's socket")
        [nonce] = [line.split()[1] for line in out.read_text().splitlines() if line.startswith("nonce ")]

        # A periodic Checkpoint: leaveRunning, straight through the dump step.
        periodic = DumpRequest(uid="uid-periodic", checkpoint="team-a/train-1-periodic-1", leave_running=True,
                               node="real-0", pod="train-1-worker-0")
        first = dumper.dump(slot, periodic)
        assert first.ok and first.manifest is not None, first.error
        before = steps(out)
        wait_for(lambda: steps(out) >= before + 3, what="the workload to keep running after a leave-running dump")
        assert dumper.live(slot)

        # A preemption Checkpoint through the agent (fake API server): the workload stops.
        kube = FakeKube()
        kube.add(ckpt_obj(name="train-1-preemption-1", uid="uid-preempt"))
        kube.pods = [pod_obj("train-1-worker-0")]
        agent = Agent(kube, dumper, AgentSettings(node="real-0"))  # type: ignore[arg-type]
        agent.checkpoints_listed(kube.list_checkpoints()[0])
        agent.pods_listed(kube.list_node_pods("real-0")[0])
        agent.process(("team-a", "train-1-preemption-1"))  # frozen (a gang of one), dumped, still frozen
        assert host.poll() is None and kube.status("train-1-preemption-1")["artifacts"]
        kube.objs[("team-a", "train-1-preemption-1")]["status"]["phase"] = "Completed"  # the controller's commit
        agent.checkpoints_listed(kube.list_checkpoints()[0])
        agent.process(("team-a", "train-1-preemption-1"))  # the release: stop
        assert host.wait(timeout=120) == CHECKPOINTED, out.read_text()
    finally:
        if host.poll() is None:
            os.killpg(host.pid, signal.SIGKILL)
            host.wait()

    st = kube.status("train-1-preemption-1")
    assert st["phase"] == "Completed" and st["released"] == ["real-0"], st
    [art] = st["artifacts"]
    ckpt_id = wire.checkpoint_id_of(art["uri"])
    assert art["uri"] == store.uri_for("team-a", "train", "worker", 0, "main", ckpt_id)
    manifest = store.verify(art["uri"], "team-a", sha256=art["sha256"])  # tree hash of it and its parent
    assert manifest.parent == first.manifest.id  # incremental on the periodic one
    assert art["sizeBytes"] == manifest.sizeBytes > 0 and art["node"] == "real-0"
    assert st["sizeBytes"] == art["sizeBytes"] and st["durationSeconds"] > 0

    # Asked again (another event, a restarted agent): no second dump.
    again = dumper.dump(slot, DumpRequest(uid="uid-preempt", checkpoint="team-a/train-1-preemption-1",
                                          leave_running=False, node="real-0", pod="train-1-worker-0"))
    assert again.adopted and again.manifest is not None and again.manifest.id == ckpt_id
    assert [c.ref.checkpoint_id for c in store.list("team-a", "train")] == sorted([first.manifest.id, ckpt_id])

    # The restore brings the same process back: same nonce, the digest of an uninterrupted run.
    restored = pod(d, ["python3", "-u", "-c", WORKLOAD], "--restore", ckpt_id)
    assert restored.wait(timeout=180) == 0, restored.output()
    final = [line for line in restored.output().splitlines() if line.startswith("final ")]
    assert final == [f"final {nonce} {expected_digest(nonce)}"], restored.output()

    # Retention: the periodic checkpoint is the parent of the kept one, so it waits for it.
    first_uri = store.uri_for("team-a", "train", "worker", 0, "main", first.manifest.id)
    assert store.delete(first_uri, "team-a") == "deferred"
    store.verify(art["uri"], "team-a")
    assert store.delete(art["uri"], "team-a") == "deleted"
    assert store.list("team-a") == []
