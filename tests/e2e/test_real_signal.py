"""Signal checkpoint mode through the controller on real nodes (issue 10): the application saves its own
state when ckq-run signals it, the node agent records that state as the Checkpoint's artifact, and a
restored pod starts the application afresh with the saved state at $CKQ_RESTORE_DIR.

The workload is test_real_checkpoints.py's (a random nonce drawn at the very start, a sha256 chain over
a buffer), speaking the Signal protocol itself, as an app in any language would: on the signal it
finishes its step, writes {nonce, chain state, buffer head, step} to the `stateDir` named in
$CKQ_CHECKPOINT_DIR/ckq-request.json and creates `ackFile`. A restored run ends with the nonce the first
run drew and the digest of an uninterrupted run; a restart from zero would draw another nonce.

The pods run locked down (drop ALL capabilities, seccomp RuntimeDefault, no privilege escalation):
Signal mode needs none of what CRIU needs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import test_real_checkpoints as criu_e2e
from tests.e2e.test_real_checkpoints import (
    BUFFER,
    STEP_S,
    STEPS,
    _nonce_of,
    _only_pod,
    _queue,
    expected_digest,
    real_job,
)
from tests.plugins.controller import ControllerProcess, Kube
from tests.plugins.realnodes import RealCluster

pytestmark = pytest.mark.e2e

# The CRIU tier's fixtures: its cluster objects, a namespace per test, the controller.
real_kube = criu_e2e.real_kube
real_ns = criu_e2e.real_ns
controller = criu_e2e.controller

SIGNAL_WORKLOAD = f"""
import hashlib, json, os, signal, time
from pathlib import Path
# One write per line: print() writes each part on its own, and a checkpoint taken between two of
# them splits the line across two containers' logs.
def say(*parts):
    os.write(1, (" ".join(map(str, parts)) + "\\n").encode())
asked = False
def on_signal(signum, frame):
    global asked
    asked = True
signal.signal(getattr(signal, os.environ["CKQ_CHECKPOINT_SIGNAL"]), on_signal)
saved = os.environ.get("CKQ_RESTORE_DIR")
if saved:
    state_file = json.loads(Path(saved, "state.json").read_text())
    nonce, first = state_file["nonce"], state_file["step"] + 1
    buf = bytearray(hashlib.sha256(nonce.encode()).digest() * ({BUFFER} // 32))
    buf[:4096] = bytes.fromhex(state_file["head"])
    state = bytes.fromhex(state_file["state"])
    say("resumed", nonce, "at step", first)
else:
    nonce, first = os.urandom(16).hex(), 0
    say("nonce", nonce)
    buf = bytearray(hashlib.sha256(nonce.encode()).digest() * ({BUFFER} // 32))
    state = hashlib.sha256(nonce.encode()).digest()
for step in range(first, {STEPS}):
    buf[step % len(buf)] = state[0]
    state = hashlib.sha256(state + bytes(buf[:4096])).digest()
    if step % 20 == 0:
        say("step", step, state.hex())
    if asked:  # a safe point: the state after a whole step
        asked = False
        req = json.loads(Path(os.environ["CKQ_CHECKPOINT_DIR"], "ckq-request.json").read_text())
        Path(req["stateDir"], "state.json").write_text(json.dumps(
            {{"nonce": nonce, "step": step, "state": state.hex(), "head": buf[:4096].hex()}}))
        Path(req["ackFile"]).touch()
        say("saved at step", step)
    time.sleep({STEP_S})
say("final", nonce, state.hex())
"""

DEAF_WORKLOAD = """
import signal, time
signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # never answers a checkpoint request
print("started", flush=True)
time.sleep(3600)
"""

LOCKED_DOWN = {"capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
               "allowPrivilegeEscalation": False}


def signal_job(name: str, *, script: str = SIGNAL_WORKLOAD, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
    body = real_job(name, "main", pods=1, cpu="1", script=script,
                    checkpoint={"mode": "Signal", **(checkpoint or {})})
    body["spec"]["podSets"][0]["template"]["spec"]["containers"][0]["securityContext"] = LOCKED_DOWN
    return body


def _line(kube: Kube, ns: str, pod: str, pattern: str) -> re.Match[str] | None:
    return re.search(pattern, kube.core.read_namespaced_pod_log(pod, ns), re.M)


def _started_locked_down(kube: Kube, ns: str, job: str) -> tuple[Any, str]:
    """The job's first pod, checked to run ckq-run in signal mode with no added privilege; its nonce."""
    kube.wait_phase(ns, job, "Running", timeout=120)
    pod = kube.wait("the first pod", lambda: _only_pod(kube, ns, job, "1"), timeout=30)
    (c,) = pod.spec.containers
    assert c.command[:2] == ["/ckq-runtime/bin/ckq-run", "--dir"] and "signal" in c.command
    sc = c.security_context
    assert sc.capabilities.add is None and sc.capabilities.drop == ["ALL"]
    assert sc.seccomp_profile.type == "RuntimeDefault" and sc.allow_privilege_escalation is False
    nonce = kube.wait("the nonce", lambda: _nonce_of(kube, ns, pod.metadata.name), timeout=60)
    return pod, nonce


def _check_saved_state(ckpt: dict[str, Any], nonce: str, store: str) -> None:
    """The artifact is the app's own state, in the store, with its size and sha256."""
    (art,) = ckpt["status"]["artifacts"]
    assert re.fullmatch(r"[0-9a-f]{64}", art["sha256"]) and 0 < art["sizeBytes"] < BUFFER  # state, not memory
    root = Path(art["uri"].removeprefix("file://"))
    assert Path(store) in root.parents
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["mode"] == "Signal" and manifest["sha256"] == art["sha256"]
    saved = json.loads((root / "state" / "state.json").read_text())
    assert saved["nonce"] == nonce and 0 <= saved["step"] < STEPS


def _resumed_from_saved_state(kube: Kube, ns: str, job: str, attempt: str, nonce: str) -> None:
    pod = _only_pod(kube, ns, job, attempt)
    assert pod is not None
    resumed = _line(kube, ns, pod.metadata.name, r"^resumed ([0-9a-f]{32}) at step (\d+)$")
    assert resumed is not None, "the restored pod did not start from the saved state"
    assert resumed.group(1) == nonce and int(resumed.group(2)) > 0
    assert _line(kube, ns, pod.metadata.name, r"^nonce ") is None  # it drew no nonce of its own
    final = _line(kube, ns, pod.metadata.name, r"^final ([0-9a-f]{32}) ([0-9a-f]{64})$")
    assert final is not None and (final.group(1), final.group(2)) == (nonce, expected_digest(nonce))


def test_a_signal_mode_job_preempted_resumes_from_the_state_it_saved(
    real_kube: Kube, real_ns: str, controller: ControllerProcess, real_cluster: RealCluster
) -> None:
    kube, ns = real_kube, real_ns
    cq = _queue(kube, ns, "2")
    try:
        kube.create("checkpointablejobs", signal_job("saver"), ns)
        _, nonce = _started_locked_down(kube, ns, "saver")
        kube.create("checkpointablejobs", real_job("urgent", "main", pods=1, cpu="2", priority=100,
                                                   script="import time; time.sleep(3)"), ns)
        suspended = kube.wait_phase(ns, "saver", "Suspended", timeout=180)["status"]
        assert suspended["preemptions"] == 1
        ckpt = kube.get("checkpoints", suspended["lastCheckpoint"]["name"], ns)
        assert ckpt["spec"]["reason"] == "Preemption" and ckpt["status"]["phase"] == "Completed"
        assert ckpt["status"]["message"].startswith("Signal: 1 container(s) saved by the application")
        _check_saved_state(ckpt, nonce, real_cluster.state.store)
        kube.wait_phase(ns, "saver", "Succeeded", timeout=240)
        _resumed_from_saved_state(kube, ns, "saver", "2", nonce)
    finally:
        kube.delete("clusterqueues", cq)


def test_a_signal_mode_job_suspended_by_its_user_resumes_from_the_state_it_saved(
    real_kube: Kube, real_ns: str, controller: ControllerProcess, real_cluster: RealCluster
) -> None:
    kube, ns = real_kube, real_ns
    cq = _queue(kube, ns, "2")
    try:
        kube.create("checkpointablejobs", signal_job("paused"), ns)
        _, nonce = _started_locked_down(kube, ns, "paused")
        kube.patch("checkpointablejobs", "paused", {"spec": {"suspend": True}}, ns)
        suspended = kube.wait_phase(ns, "paused", "Suspended", timeout=120)["status"]
        ckpt = kube.get("checkpoints", suspended["lastCheckpoint"]["name"], ns)
        assert ckpt["spec"]["reason"] == "User" and ckpt["status"]["phase"] == "Completed"
        _check_saved_state(ckpt, nonce, real_cluster.state.store)
        kube.patch("checkpointablejobs", "paused", {"spec": {"suspend": False}}, ns)
        kube.wait_phase(ns, "paused", "Succeeded", timeout=240)
        _resumed_from_saved_state(kube, ns, "paused", "2", nonce)
    finally:
        kube.delete("clusterqueues", cq)


def test_an_app_that_never_acks_fails_its_checkpoint_naming_the_timeout_and_is_stopped_as_after_a_failed_dump(
    real_kube: Kube, real_ns: str, controller: ControllerProcess
) -> None:
    """A user's suspend of an app that ignores the signal: ckq-run gives up after timeoutSeconds less a
    margin (20 s - 10 s), the agent fails the Checkpoint with ckq-run's reason, the controller says so in a
    CheckpointFailed Event, and does what it does after a failed CRIU dump of a suspend (iass: the job is
    stopped without a checkpoint and stays Suspended, its progress counted as lost)."""
    kube, ns = real_kube, real_ns
    cq = _queue(kube, ns, "2")
    try:
        kube.create("checkpointablejobs", signal_job("deaf", script=DEAF_WORKLOAD,
                                                     checkpoint={"timeoutSeconds": 20}), ns)
        kube.wait_phase(ns, "deaf", "Running", timeout=120)
        pod = kube.wait("the first pod", lambda: _only_pod(kube, ns, "deaf", "1"), timeout=30)
        # ckq-run has started the app, so its control socket is up when the agent is asked to dump.
        kube.wait("the app's start", lambda: _line(kube, ns, pod.metadata.name, r"^started$"), timeout=60)
        kube.patch("checkpointablejobs", "deaf", {"spec": {"suspend": True}}, ns)

        def failed_event() -> str | None:
            events = kube.core.list_namespaced_event(ns).items
            return next((e.message for e in events if e.reason == "CheckpointFailed"
                         and e.involved_object.name == "deaf"), None)

        message = kube.wait("a CheckpointFailed Event", failed_event, timeout=120)
        assert "the workload did not acknowledge SIGUSR1 within 10s" in message, message
        assert f"pod {ns}/{pod.metadata.name} container train on node" in message  # where, from the agent
        st = kube.wait_phase(ns, "deaf", "Suspended", timeout=60)["status"]
        assert st["checkpointFailures"] == 1 and "lastCheckpoint" not in st
        (ckpt,) = kube.list("checkpoints", ns)
        assert ckpt["spec"]["reason"] == "User" and ckpt["status"]["phase"] == "Failed"
        assert "did not acknowledge SIGUSR1 within 10s" in ckpt["status"]["message"]
    finally:
        kube.delete("checkpointablejobs", "deaf", ns)
        kube.delete("clusterqueues", cq)
