"""Chaos trials on the real checkpoint path (issue 14): a fault in the middle of a CRIU checkpoint of a real
process on a real node, and the invariants checked — above all that the process's memory survives.

The workload draws a random nonce when it starts and extends a sha256 chain over a buffer in memory (as
in tests/e2e/test_real_checkpoints.py), with a buffer of 64-256 MiB so that a dump takes long enough to be
interrupted. A run that ends with the nonce the first pod printed and the digest an uninterrupted run
gives kept its memory through every checkpoint, fault and restore; a restarted one cannot.

A trial is a function of its seed (`random.Random(f"{fault}:{seed}")`): the buffer size, the periodic
interval, which checkpoint the fault hits (a periodic leave-running one, or the preemption checkpoint an
urgent job causes), the moment (the Checkpoint just created, its container just frozen, or a random
delay into the dump) and, for the agent, how long it stays down.

Faults (REAL_FAULTS):
- `agent-kill`: the node agent of the job's node SIGKILLed at that moment and started again 0-4 s later
  (what a DaemonSet's restart does). The new agent carries the checkpoint on from the Checkpoint's status
  and its journal, or the checkpoint fails cleanly; images of Checkpoints deleted while it was down are
  collected when it lists them again;
- `ckq-run-kill`: the container's `ckq-run` (the workload's parent) SIGKILLed mid-checkpoint: the
  container dies with it, the checkpoint fails, and the job must come back from its last completed
  checkpoint, losing at most about one interval;
- `agent-kill-staging` (nodes with stores of their own, `storeMode: node-local`): the job is preempted on
  one node and resumed on the other (the first cordoned), whose agent stages the images from the first
  node's agent over HTTP; the seed picks which agent is SIGKILLed — the one serving or the one fetching
  — and when (0-1.5 s after the restored pod is bound, so before, during or after the transfer). The
  restore must still come back with the job's memory: a transfer cut off is asked for again.

Checked after every trial, beside the tier's watcher (one attempt running at a time, quota) and the end
state (every job Succeeded, no orphaned pods or Checkpoints): the final nonce and digest; the work lost at
most one interval (plus the dump); no Checkpoint left Pending or Running; no partial dump (`.tmp-*`) left;
the stored images exactly those the Completed Checkpoints record, and none at all once the job is
deleted; no traceback in the controller's or the agents' logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from queue_controller.devcluster import processes, realnode
from queue_controller.devcluster.cluster import AGENT_READY
from queue_controller.devcluster.state import ClusterState
from queue_controller.runtime.store import TMP_PREFIX
from queue_controller.store.filesystem import CHECKPOINTS, FilesystemStore
from queue_controller.store.transfer import STAGING_PREFIX
from queue_controller.wire import ATTEMPT_LABEL, node_store_root
from tests.chaos.invariants import Watcher, poll_final, queue_limits, traceback_violations
from tests.chaos.trials import TrialResult, TrialTimeout, cleanup
from tests.plugins.controller import ControllerProcess, Kube, cjob, cluster_queue, local_queue
from tests.plugins.realnodes import REAL_FLAVOR

REAL_FAULTS = ("agent-kill", "ckq-run-kill", "agent-kill-staging")
NODE_LOCAL_FAULTS = {"agent-kill-staging"}  # run on a cluster whose nodes share no store
STEPS, STEP_S = 300, 0.1
MOMENTS = ("created", "frozen", "dumping")


def workload(buffer_mb: int) -> str:
    return f"""
import hashlib, os, time
# One write per line: print() writes each part on its own, and a checkpoint taken between two of
# them splits the line across two containers' logs.
def say(*parts):
    os.write(1, (" ".join(map(str, parts)) + "\\n").encode())
nonce = os.urandom(16).hex()
say("nonce", nonce)
buf = bytearray(hashlib.sha256(nonce.encode()).digest() * ({buffer_mb} * 32768))
state = hashlib.sha256(nonce.encode()).digest()
for step in range({STEPS}):
    buf[step % len(buf)] = state[0]
    state = hashlib.sha256(state + bytes(buf[:4096])).digest()
    time.sleep({STEP_S})
say("final", nonce, state.hex())
"""


def expected_digest(nonce: str, buffer_mb: int) -> str:
    head = bytearray((hashlib.sha256(nonce.encode()).digest() * 128)[:4096])  # the buffer's first 4 KiB
    state = hashlib.sha256(nonce.encode()).digest()
    for step in range(STEPS):
        if step < len(head):
            head[step] = state[0]
        state = hashlib.sha256(state + bytes(head)).digest()
    return state.hex()


class RealTrial:
    """One trial's namespace, queue, controller and notes; `result` collects what broke."""

    def __init__(self, kube: Kube, state: ClusterState, fault: str, seed: int, workdir: Path) -> None:
        self.kube, self.state, self.fault, self.seed, self.workdir = kube, state, fault, seed, workdir
        self.rng = random.Random(f"{fault}:{seed}")
        self.result = TrialResult(fault, seed)
        self.started = time.monotonic()
        self.ns = f"chaos-{uuid.uuid4().hex[:6]}"
        self.cq = f"{self.ns}-cq"
        self.controller: ControllerProcess | None = None
        self.nonce = ""  # what the workload's first run drew
        self.cordoned = ""  # a node the trial cordoned (uncordoned at the end)
        self.store = FilesystemStore(Path(state.store))
        # Where each agent's log stood at the start: only this trial's part is read for tracebacks.
        self.agent_logs = {Path(p.log): Path(p.log).stat().st_size if Path(p.log).exists() else 0
                           for p in state.processes if p.name.startswith("agent-")}

    def note(self, line: str) -> None:
        self.result.notes.append(f"t={time.monotonic() - self.started:5.1f}s {line}")

    def violate(self, line: str) -> None:
        self.result.violations.append(line)

    def job(self, name: str) -> dict[str, Any]:
        return self.kube.job(self.ns, name).get("status") or {}

    def checkpoints(self) -> list[dict[str, Any]]:
        return self.kube.list("checkpoints", self.ns)

    def pods(self, job: str, attempt: int | None = None) -> list[Any]:
        return [p for p in self.kube.pods(self.ns, job)
                if attempt is None or p.metadata.labels.get(ATTEMPT_LABEL) == str(attempt)]


def _wait(what: str, fn: Any, timeout: float, poll: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            got = fn()
            if got:
                return got
        if time.monotonic() > deadline:
            raise TrialTimeout(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def real_job(name: str, *, cpu: str, script: str, priority: int = 0, memory: str = "128Mi",
             **spec: Any) -> dict[str, Any]:
    body = cjob(name, "main", gpus=0, pods=1, priority=priority, mode="CRIU", **spec)
    container = body["spec"]["podSets"][0]["template"]["spec"]["containers"][0]
    container.update({"image": "ckq.local/python:3", "imagePullPolicy": "IfNotPresent",
                      "command": ["python3", "-u", "-c", script],
                      "resources": {"requests": {"cpu": cpu, "memory": memory}}})
    body["metadata"]["annotations"] = {}
    return body


def _log_line(kube: Kube, ns: str, pod: str, pattern: str) -> re.Match[str] | None:
    try:
        return re.search(pattern, kube.core.read_namespaced_pod_log(pod, ns), re.M)
    except ApiException:
        return None


def _workload_pid(state: ClusterState, node_name: str, buffer_mb: int) -> int | None:
    """The host pid of this trial's workload on a real node (python3 -u -c <its script>)."""
    node = next(n for n in state.real_nodes if n.name == node_name)
    marker = f"* ({buffer_mb} * 32768)".encode()
    for pid in realnode.iter_processes_of(node):
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if cmd[:2] == [b"python3", b"-u"] and marker in b" ".join(cmd):
                return pid
    return None


def _ppid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


# ---- the faults -----------------------------------------------------------------------------------

def kill_agent(t: RealTrial, node: str, down_s: float) -> None:
    """SIGKILL the node agent of `node`, and `down_s` later start it again with its command line, log and
    cgroup (as the DaemonSet's restart would); returns once it says it started."""
    state = ClusterState.load(t.state.paths) or t.state
    index = next(i for i, p in enumerate(state.processes) if p.name == f"agent-{node}")
    rec = state.processes[index]
    own = rec.pid in processes._CHILDREN  # started by this process: the new one dies with it too
    with contextlib.suppress(ProcessLookupError):
        os.killpg(rec.pid, signal.SIGKILL)
    _wait(f"agent {rec.pid} gone", lambda: not processes.is_alive(rec), 10)
    processes._CHILDREN.pop(rec.pid, None)
    time.sleep(down_s)  # the outage itself: its length is part of the fault
    log = Path(rec.log)
    before = log.read_text(errors="replace").count(AGENT_READY) if log.exists() else 0
    real = next(n for n in state.real_nodes if n.name == node)
    new = processes.start(rec.name, list(rec.argv), log, die_with_parent=own,
                          cgroup_procs=realnode.cgroup_procs_files(f"{real.cgroup}/agent"),
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    state.processes[index] = new
    state.save()
    _wait(f"the agent of {node} started again",
          lambda: log.read_text(errors="replace").count(AGENT_READY) > before or not processes.is_alive(new), 60)
    if not processes.is_alive(new):
        raise RuntimeError(f"the agent of {node} exited on restart:\n{processes.tail(new.log)}")


def _target(t: RealTrial, which: str, seen: set[str]) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for c in t.checkpoints():
            if c["metadata"]["name"] in seen:
                continue
            if which == "preemption" and c["spec"]["reason"] == "Preemption":
                return c
            if which == "periodic" and c["spec"]["reason"] == "Periodic":
                return c
        return None
    found: dict[str, Any] = _wait(f"a {which} checkpoint", find, 90, poll=0.05)
    return found


def _at_moment(t: RealTrial, name: str, moment: str, delay: float) -> str:
    """Wait until the Checkpoint `name` reaches `moment`; returns its phase then (for the notes)."""
    def status() -> dict[str, Any]:
        return t.kube.get("checkpoints", name, t.ns).get("status") or {}
    if moment in ("frozen", "dumping"):
        with contextlib.suppress(TrialTimeout):  # over before it was seen frozen: the fault comes late
            _wait(f"{name} frozen", lambda: status().get("frozen") or status().get("phase") in ("Completed", "Failed"),
                  60, poll=0.02)
    if moment == "dumping":
        time.sleep(delay)
    return str(status().get("phase"))


def run_real_trial(kube: Kube, state: ClusterState, fault: str, seed: int, workdir: Path,
                   *, finish_timeout: float = 300.0) -> TrialResult:
    """One trial of `fault` with `seed` on a real-node cluster (`state`): never raises for a broken
    invariant; the result lists the violations."""
    workdir.mkdir(parents=True, exist_ok=True)
    t = RealTrial(kube, state, fault, seed, workdir)
    rng = t.rng
    buffer_mb = rng.choice([64, 128, 256])
    interval = rng.choice([5, 6, 8])
    which = rng.choice(["periodic", "preemption"])
    moment = rng.choice(MOMENTS)
    delay = round(rng.uniform(0.05, 1.0), 2)
    down = round(rng.uniform(0.0, 4.0), 1)
    if fault in NODE_LOCAL_FAULTS:
        t.note(f"plan: buffer {buffer_mb} MiB, interval {interval}s, fault {fault}, agent down {down}s")
    else:
        t.note(f"plan: buffer {buffer_mb} MiB, interval {interval}s, fault {fault} at the {which} checkpoint's "
               f"'{moment}' moment{f' + {delay}s' if moment == 'dumping' else ''}"
               f"{f', agent down {down}s' if fault == 'agent-kill' else ''}")
    cq = cluster_queue(t.cq, gpus=0, flavors=(REAL_FLAVOR,), preemption={"withinClusterQueue": "LowerPriority"})
    cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQuota"] = "2"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=t.ns)))
    kube.create("clusterqueues", cq)
    kube.create("localqueues", local_queue("main", t.ns, t.cq), t.ns)
    expected = {"steady": "Succeeded"}
    watcher = Watcher(kube.kubeconfig, t.ns, {"main": t.cq}, queue_limits([cq]),
                      flavor_of=lambda pod: REAL_FLAVOR)
    watcher.start()
    try:
        try:
            t.controller = ControllerProcess(kube.kubeconfig, "iass", workdir / "controller.log")
            t.controller.start()
            _trial(t, buffer_mb, interval, which, moment, delay, down, expected)
            t.result.violations += poll_final(kube.core, kube.custom, t.ns, expected, finish_timeout)
            _check_end(t, buffer_mb, interval)
        except Exception as e:  # a deadline passed, or the fault could not be injected: the trial failed
            t.violate(f"{type(e).__name__}: {e}")
        finally:
            watcher.stop()
        t.result.violations += watcher.violations
        with contextlib.suppress(Exception):
            _check_images_go_with_the_job(t)
    finally:
        if t.controller is not None:
            t.controller.stop()
        t.result.violations += traceback_violations(_logs_of_trial(t), outage=False)
        t.result.seconds = time.monotonic() - t.started
        _cleanup(kube, t)
    return t.result


def _trial(t: RealTrial, buffer_mb: int, interval: int, which: str, moment: str, delay: float, down: float,
           expected: dict[str, str]) -> None:
    if t.fault == "agent-kill-staging":
        _staging_trial(t, buffer_mb, interval, down, expected)
        return
    body = real_job("steady", cpu="1", memory=f"{buffer_mb + 128}Mi", script=workload(buffer_mb),
                    checkpoint={"interval": f"{interval}s", "retain": 2})
    t.kube.create("checkpointablejobs", body, t.ns)
    pod = _wait("steady's first pod running", lambda: [p for p in t.pods("steady", 1) if p.status.phase == "Running"],
                120)[0]
    t.nonce = _wait("the nonce", lambda: _log_line(t.kube, t.ns, pod.metadata.name, r"^nonce ([0-9a-f]{32})$"),
                    60).group(1)
    _wait_checkpoint_holding_the_nonce(t)
    seen = {c["metadata"]["name"] for c in t.checkpoints()}
    if which == "preemption":
        expected["urgent"] = "Succeeded"
        t.kube.create("checkpointablejobs", real_job("urgent", cpu="2", priority=100,
                                                    script="import time; time.sleep(3)"), t.ns)
    target = _target(t, which, seen)
    name = target["metadata"]["name"]
    phase = _at_moment(t, name, moment, delay)
    node = str(pod.spec.node_name)
    if t.fault == "agent-kill":
        t.note(f"SIGKILL the agent of {node} at {name} ({phase}); down {down}s")
        kill_agent(t, node, down)
        t.note("agent started again")
    else:
        workload_pid = _workload_pid(t.state, node, buffer_mb)
        if workload_pid is None:
            t.note(f"at {name} ({phase}) the workload is no longer on {node}: nothing to kill")
            return
        ckq_run = _ppid(workload_pid)
        t.note(f"SIGKILL ckq-run (pid {ckq_run}) of steady at {name} ({phase})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(ckq_run, signal.SIGKILL)


def _staging_trial(t: RealTrial, buffer_mb: int, interval: int, down: float, expected: dict[str, str]) -> None:
    """Preempted on node A, resumed on node B (A cordoned): an agent killed while B stages A's images."""
    victim = t.rng.choice(["serving", "fetching"])
    delay = round(t.rng.uniform(0.0, 1.5), 2)
    body = real_job("steady", cpu="1", memory=f"{buffer_mb + 128}Mi", script=workload(buffer_mb),
                    checkpoint={"interval": f"{interval}s", "retain": 2})
    t.kube.create("checkpointablejobs", body, t.ns)
    pod = _wait("steady's first pod running", lambda: [p for p in t.pods("steady", 1) if p.status.phase == "Running"],
                120)[0]
    first_node = str(pod.spec.node_name)
    t.nonce = _wait("the nonce", lambda: _log_line(t.kube, t.ns, pod.metadata.name, r"^nonce ([0-9a-f]{32})$"),
                    60).group(1)
    _wait_checkpoint_holding_the_nonce(t)
    # Cordoned first (its running pod stays): the urgent job and then the restore go to the other node.
    # (Cordoned later, a pod the controller had just placed there could not be bound.)
    t.kube.core.patch_node(first_node, {"spec": {"unschedulable": True}})
    t.cordoned = first_node
    expected["urgent"] = "Succeeded"
    t.kube.create("checkpointablejobs", real_job("urgent", cpu="2", priority=100,
                                                script="import time; time.sleep(3)"), t.ns)
    _wait("steady suspended by its preemption checkpoint", lambda: t.job("steady").get("phase") == "Suspended", 120)
    restored = _wait("steady's restored pod bound to the other node",
                     lambda: [p for p in t.pods("steady", 2) if p.spec.node_name], 180, poll=0.05)[0]
    other = str(restored.spec.node_name)
    time.sleep(delay)  # the moment: before, during or after the transfer
    node = first_node if victim == "serving" else other
    t.note(f"steady resumes on {other} from {first_node}'s images; {delay}s after the pod was bound, SIGKILL the "
           f"{victim} agent ({node}); down {down}s")
    kill_agent(t, node, down)
    t.note("agent started again")
    staged = [e.message for e in t.kube.core.list_namespaced_event(t.ns).items if e.reason in ("Staged",
                                                                                               "StagingFailed")]
    t.note(f"staging events so far: {[m[:100] for m in staged]}")


def _wait_checkpoint_holding_the_nonce(t: RealTrial) -> None:
    """Wait for a periodic checkpoint that began after the nonce was seen in the log, so that a restore
    from it must bring that nonce back. (One completed earlier may hold the process before it drew its
    nonce: on a loaded machine the interpreter can take longer to start than the first interval, and a
    restore from that checkpoint rightly draws a new one.)"""
    before = {c["metadata"]["name"] for c in t.checkpoints()}

    def done() -> bool:
        return any(c["metadata"]["name"] not in before and c["spec"]["reason"] == "Periodic"
                   and (c.get("status") or {}).get("phase") == "Completed" for c in t.checkpoints())
    _wait("a periodic checkpoint begun after the nonce was printed", done, 90)


def _final(t: RealTrial) -> tuple[str, str] | None:
    pods = t.pods("steady")
    last = max(pods, key=lambda p: int(p.metadata.labels[ATTEMPT_LABEL]))
    m = _log_line(t.kube, t.ns, last.metadata.name, r"^final ([0-9a-f]{32}) ([0-9a-f]{64})$")
    return (m.group(1), m.group(2)) if m else None


def _check_end(t: RealTrial, buffer_mb: int, interval: int) -> None:
    st = t.job("steady")
    t.note(f"steady: attempt {st.get('attempt')}, checkpoints {st.get('checkpoints', 0)}, preemptions "
           f"{st.get('preemptions', 0)}, restarts {st.get('restarts', 0)}, ran {st.get('runTimeSeconds')}s, "
           f"lost {st.get('lostRunTimeSeconds', 0)}s")
    final = _final(t)
    nonce = t.nonce
    if final is None:
        t.violate("steady's last pod printed no final line")
    elif final[0] != nonce:
        t.violate(f"steady ended with nonce {final[0]}, not the {nonce} it drew: its memory was lost (restarted)")
        for p in sorted(t.pods("steady"), key=lambda p: int(p.metadata.labels[ATTEMPT_LABEL])):
            with contextlib.suppress(Exception):
                head = [line[:300] for line in t.kube.core.read_namespaced_pod_log(p.metadata.name, t.ns).splitlines()
                        if not line.startswith("step")]
                t.note(f"pod {p.metadata.name} restore-from "
                       f"{(p.metadata.annotations or {}).get('ckq.io/restore-from')}: {head}")
    elif final[1] != expected_digest(nonce, buffer_mb):
        t.violate("steady's final digest is not an uninterrupted run's: its memory was damaged")
    lost = float(st.get("lostRunTimeSeconds") or 0)
    if lost > interval + 6:
        t.violate(f"steady lost {lost}s of work, more than one interval ({interval}s) and a dump")
    def settled() -> list[dict[str, Any]] | None:
        ckpts = t.checkpoints()
        return ckpts if all((c.get("status") or {}).get("phase") in ("Completed", "Failed") for c in ckpts) else None
    # A checkpoint begun as the job finished is ended by the controller's next pass: allow it that.
    with contextlib.suppress(TrialTimeout):
        _wait("every checkpoint ended", settled, 30, poll=0.5)
    ckpts = t.checkpoints()
    for c in ckpts:
        phase = (c.get("status") or {}).get("phase")
        t.note(f"checkpoint {c['metadata']['name']} {c['spec']['reason']} {phase}"
               f"{': ' + (c['status'].get('message') or '')[:140] if phase == 'Failed' else ''}")
        if phase not in ("Completed", "Failed"):
            t.violate(f"checkpoint {c['metadata']['name']} left {phase!r}")
    recorded = {a["uri"] for c in ckpts if (c.get("status") or {}).get("phase") == "Completed"
                for a in c["status"].get("artifacts") or ()}

    def images_match() -> bool:
        return _stored(t) == recorded
    with contextlib.suppress(TrialTimeout):  # deletions of pruned and failed checkpoints may lag a moment
        _wait("the stored images to match the Completed checkpoints", images_match, 30, poll=0.5)
    stored = _stored(t)
    for uri in sorted(stored - recorded):
        t.violate(f"image {uri} stored but no Completed Checkpoint records it (orphaned)")
    for uri in sorted(recorded - stored):
        t.violate(f"image {uri} recorded by a Completed Checkpoint but not in the store")
    for leftover in _partial_dumps(t):
        t.violate(f"partial dump left in the store: {leftover}")


def _stores(t: RealTrial) -> list[FilesystemStore]:
    """The stores images live in: the shared one, or each real node's own (node-local)."""
    if t.state.store_mode != "node-local":
        return [t.store]
    return [FilesystemStore(Path(node_store_root(t.state.store, n.name)), uri_root=t.state.store)
            for n in t.state.real_nodes]


def _stored(t: RealTrial) -> set[str]:
    return {sc.uri for store in _stores(t) for sc in store.list(namespace=t.ns) if not sc.pruned}


def _partial_dumps(t: RealTrial) -> list[str]:
    """Dumps ckq-run did not finish (`.tmp-*`) and copies an agent did not finish staging."""
    out = []
    for store in _stores(t):
        root = Path(store.root) / t.ns
        if root.is_dir():
            for prefix in (TMP_PREFIX, STAGING_PREFIX):
                out += [str(p) for p in root.glob(f"*/*/*/{CHECKPOINTS}/{prefix}*")]
    return out


def _check_images_go_with_the_job(t: RealTrial) -> None:
    """Deleting the job deletes its Checkpoints (garbage collection) and so every image it had."""
    for job in t.kube.list("checkpointablejobs", t.ns):
        t.kube.delete("checkpointablejobs", job["metadata"]["name"], t.ns)
    try:
        _wait("the job's images deleted with it", lambda: not _stored(t), 90, poll=0.5)
    except TrialTimeout:
        t.violate(f"images left in the store after the job was deleted: {sorted(_stored(t))}")


def _logs_of_trial(t: RealTrial) -> list[Path]:
    out = [t.workdir / "controller.log"]
    for path, offset in t.agent_logs.items():
        piece = t.workdir / path.name
        with contextlib.suppress(OSError), path.open("rb") as fh:
            fh.seek(offset)
            piece.write_bytes(fh.read())
            out.append(piece)
    return out


def _cleanup(kube: Kube, t: RealTrial) -> None:
    if t.cordoned:
        with contextlib.suppress(Exception):
            kube.core.patch_node(t.cordoned, {"spec": {"unschedulable": False}})
    cleanup(kube, t.ns, t.cq)
