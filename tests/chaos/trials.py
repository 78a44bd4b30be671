"""Chaos trials (issue 14): one fault injected into a running mix of jobs, the invariants checked.

A trial is a function of its seed: `random.Random(seed)` draws the job mix (sizes, run times, memory and
so checkpoint durations, priorities, arrival delays) and the fault's moments (when the controller is
killed, for how long the API server is down, which node goes NotReady and when). Timing on a shared
machine is not reproducible, but the plan is: a failing seed, rerun with `CKQ_CHAOS_SEED=<seed>`, replays
the same plan. The pytest tier (tests/chaos/test_chaos.py) runs a few seeds per fault; `bench/chaos.py`
soaks many. Both call `run_trial`.

Faults (FAULTS):
- `controller-kill`: the controller SIGKILLed at random moments and restarted, while jobs preempt each
  other by (simulated) checkpoint and take periodic checkpoints;
- `leader-failover`: two replicas with `--leader-election`; the leader SIGKILLed at random moments, the
  standby takes over (the failover time — SIGKILL to the Lease held by a live replica — is measured);
- `apiserver-restart`: the dev cluster's kube-apiserver stopped for a random 10-30 s and started again,
  in place (same flags, same etcd: `restart_apiserver`);
- `node-notready`: the node of a job made NotReady (through kwok) while the job runs or is being
  checkpointed; the job must be restored on another node from its last checkpoint;
- `node-deleted`: the Node object of a running job deleted (a machine gone for good); the job must be
  restored on another node from its last checkpoint; the node is created again afterwards;
- `etcd-restart`: the cluster's etcd stopped for a random 5-20 s and started again, in place, while the
  API server stays up (it answers errors meanwhile);
- `watch-cut`: the controller talks to the API server through a proxy (tests/chaos/proxy.py) that resets
  every connection — its watch streams and requests in flight — 3-5 times at random moments.

Every trial runs in its own namespace with its own ClusterQueue, and cleans up after itself.
"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from queue_controller.devcluster import processes
from queue_controller.devcluster.components import apiserver_ready
from queue_controller.devcluster.nodes import node_is_ready, set_node_ready
from queue_controller.devcluster.state import ClusterPaths, ClusterState
from queue_controller.wire import ATTEMPT_LABEL, RESTORE_FROM_ANNOTATION
from tests.chaos.invariants import Watcher, poll_final, queue_limits, traceback_violations
from tests.chaos.proxy import CuttingProxy
from tests.plugins.controller import ControllerProcess, Kube, cjob, cluster_queue, local_queue

# The API server's restart last: a session's later tests then find it back (each trial waits for that too).
FAULTS = ("controller-kill", "leader-failover", "node-notready", "node-deleted", "watch-cut", "etcd-restart",
          "apiserver-restart")
# Faults during which a controller's request may fail for a moment and the cycle retry (see
# invariants.traceback_violations).
OUTAGE_FAULTS = {"apiserver-restart", "etcd-restart", "watch-cut"}
LEASE_NAMESPACE, LEASE_NAME = "ckq-system", "ckq-controller"
FAILOVER_GOAL_S = 15.0


@dataclass
class TrialResult:
    fault: str
    seed: int
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what happened: the plan, measured failovers
    failovers_s: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.violations

    def report(self) -> str:
        head = (f"chaos trial {self.fault} seed={self.seed}: {'passed' if self.passed else 'FAILED'} "
                f"in {self.seconds:.0f}s (rerun: CKQ_CHAOS_SEED={self.seed})")
        return "\n  ".join([head, *self.notes, *(f"VIOLATION {v}" for v in self.violations)])


@dataclass
class Trial:
    """What a trial works with: the cluster, its own namespace and queue, its controllers' logs."""

    kube: Kube
    fault: str
    seed: int
    workdir: Path
    rng: random.Random
    result: TrialResult
    namespace: str = ""
    cq: str = ""
    started: float = field(default_factory=time.monotonic)
    plan_start: float = 0.0  # when the jobs were submitted: the steps' offsets count from here
    controllers: list[ControllerProcess] = field(default_factory=list)
    expected: dict[str, str] = field(default_factory=dict)  # job -> terminal phase it must reach
    teardown: list[Callable[[], None]] = field(default_factory=list)  # after the controllers stop

    def note(self, line: str) -> None:
        self.result.notes.append(f"t={time.monotonic() - self.started:5.1f}s {line}")

    def controller(self, extra: list[str] | None = None, kubeconfig: str | None = None) -> ControllerProcess:
        """A `ckq controller` process with a log of its own (ControllerProcess waits for "started" in it)."""
        log = self.workdir / f"controller-{len(self.controllers)}.log"
        c = ControllerProcess(kubeconfig or self.kube.kubeconfig, "iass", log, extra)
        c.start()
        self.controllers.append(c)
        return c

    def create_job(self, name: str, **kw: Any) -> None:
        self.expected[name] = "Succeeded"
        try:
            self.kube.create("checkpointablejobs", cjob(name, "main", **kw), self.namespace)
        except ApiException as e:
            if e.status != 409:  # a retry after a lost response finds it created
                raise

    def status(self, job: str) -> dict[str, Any]:
        return self.kube.job(self.namespace, job).get("status") or {}


# ---- the job mix ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlannedJob:
    name: str
    at_s: float  # created this long after the trial's start
    spec: dict[str, Any]


def job_mix(rng: random.Random) -> list[PlannedJob]:
    """Low-priority training jobs with short periodic checkpoints that fill the queue, and urgent jobs
    arriving later that preempt them by checkpoint. Memory sets the simulated checkpoint's duration
    (1 GiB/s: 1-4 s)."""
    jobs = []
    for i in range(rng.randint(2, 3)):
        jobs.append(PlannedJob(f"train-{i}", 0.0, dict(
            gpus=8, priority=0, runtime_s=rng.randint(14, 22), memory=rng.choice(["1Gi", "2Gi", "4Gi"]),
            checkpoint={"interval": rng.choice(["5s", "10s"])})))
    for i in range(rng.randint(1, 2)):
        jobs.append(PlannedJob(f"urgent-{i}", round(rng.uniform(3.0, 12.0), 1), dict(
            gpus=8, priority=rng.choice([50, 100]), runtime_s=rng.randint(4, 8), memory="1Gi")))
    return jobs


def submit_plan(t: Trial, plan: list[PlannedJob]) -> list[tuple[float, str, Callable[[], None]]]:
    """The jobs of `plan` as timed steps (those due at 0 are created now)."""
    steps: list[tuple[float, str, Callable[[], None]]] = []
    t.plan_start = time.monotonic()
    for job in plan:
        def create(job: PlannedJob = job) -> None:
            t.create_job(job.name, **job.spec)
        if job.at_s <= 0:
            create()
        else:
            steps.append((job.at_s, f"create {job.name}", create))
    t.note("jobs: " + ", ".join(f"{j.name}(p{j.spec['priority']},{j.spec['runtime_s']}s,{j.spec['memory']}"
                                 f"{',every ' + j.spec['checkpoint']['interval'] if 'checkpoint' in j.spec else ''}"
                                 f"@{j.at_s}s)" for j in plan))
    return steps


def run_steps(t: Trial, steps: list[tuple[float, str, Callable[[], None]]]) -> None:
    """Run the timed steps, each at its offset from the jobs' submission. Job arrivals run on a thread of
    their own, so a fault step that blocks (a restart, a failover, an outage) does not hold them back;
    the fault steps run in order on this thread (late, when an earlier one took longer)."""
    arrivals = [s for s in steps if s[1].startswith("create ")]
    faults = [s for s in steps if not s[1].startswith("create ")]
    errors: list[BaseException] = []

    def play(chosen: list[tuple[float, str, Callable[[], None]]]) -> None:
        for at, what, step in sorted(chosen, key=lambda s: s[0]):
            delay = at - (time.monotonic() - t.plan_start)
            if delay > 0:
                time.sleep(delay)  # the plan's timing, drawn from the seed; nothing is asserted here
            t.note(what)
            for attempt in range(30):  # a job created during an API server outage waits for its return
                try:
                    step()
                    break
                except Exception as e:
                    if attempt == 29 or not what.startswith("create "):
                        errors.append(e)
                        return
                    time.sleep(2.0)

    thread = threading.Thread(target=play, args=(arrivals,), name="chaos-arrivals", daemon=True)
    thread.start()
    try:
        play(faults)
    finally:
        thread.join(timeout=120)
    if errors:
        raise errors[0]


# ---- faults ---------------------------------------------------------------------------------------

def restart_apiserver(kubeconfig: str, down_s: float, *, timeout: float = 90.0) -> float:
    """Stop the dev cluster's kube-apiserver (SIGTERM, as a node's shutdown would), wait `down_s`, start it
    again with the same command line and log, and wait until it is ready. Returns the seconds it was
    unreachable. The cluster's state file records the new process, so `ckq dev down` (and the session
    fixture) stop it. Needs a cluster started by `ckq dev up` or the test fixture: its state sits beside
    its kubeconfig."""
    return restart_component(kubeconfig, "kube-apiserver", down_s, timeout=timeout)


def restart_component(kubeconfig: str, name: str, down_s: float, *, timeout: float = 90.0) -> float:
    """`restart_apiserver` for any process of the dev cluster (`etcd`, ...): stopped, `down_s` later started
    again in place; returns once the API server is ready again (its readiness checks etcd)."""
    paths = ClusterPaths(Path(kubeconfig).parent)
    state = ClusterState.load(paths)
    if state is None:
        raise RuntimeError(f"no dev cluster state beside {kubeconfig}: cannot restart its {name}")
    index = next(i for i, p in enumerate(state.processes) if p.name == name)
    rec = state.processes[index]
    t0 = time.monotonic()
    processes.stop(rec)
    time.sleep(down_s)  # the outage itself: its length is the fault
    # A child of this process (dies with it) only when the cluster is: a cluster of `ckq dev up` keeps
    # its API server after the trial.
    new = processes.start(rec.name, list(rec.argv), Path(rec.log), die_with_parent=_own_cluster(state))
    state.processes[index] = new
    state.save()
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if apiserver_ready(state.paths, state.ports["apiserver"]):
                return time.monotonic() - t0
        if not processes.is_alive(new):
            raise RuntimeError(f"{name} exited on restart:\n{processes.tail(new.log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API server not ready {timeout:.0f}s after {name}'s restart")
        time.sleep(0.2)


def _own_cluster(state: ClusterState) -> bool:
    # The etcd of a cluster this process started is one of its children.
    etcd = next((p for p in state.processes if p.name == "etcd"), None)
    return etcd is not None and etcd.pid in processes._CHILDREN


def identity(c: ControllerProcess) -> str:
    """The Lease identity of a replica (leader.default_identity: host and pid)."""
    assert c.proc is not None
    return f"{socket.gethostname()}_{c.proc.pid}"


def lease_holder(kube: Kube) -> str:
    try:
        lease = client.CoordinationV1Api(kube.api).read_namespaced_lease(LEASE_NAME, LEASE_NAMESPACE)
    except ApiException:
        return ""
    return str((lease.spec and lease.spec.holder_identity) or "")


def alive(c: ControllerProcess) -> bool:
    return c.proc is not None and c.proc.poll() is None


# ---- the trials -----------------------------------------------------------------------------------

def _controller_kill(t: Trial) -> None:
    plan = job_mix(t.rng)
    kills = sorted(round(t.rng.uniform(1.0, 16.0), 1) for _ in range(t.rng.randint(2, 3)))
    gaps = [round(t.rng.uniform(0.2, 2.0), 1) for _ in kills]
    t.controller()
    steps = submit_plan(t, plan)
    for at, gap in zip(kills, gaps, strict=True):
        def kill(gap: float = gap) -> None:
            t.controllers[-1].kill(signal.SIGKILL)
            time.sleep(gap)  # how long no controller runs: part of the fault
            t.controller()
        steps.append((at, f"SIGKILL the controller, restart after {gap}s", kill))
    run_steps(t, steps)


def _leader_failover(t: Trial) -> None:
    with contextlib.suppress(ApiException):
        t.kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=LEASE_NAMESPACE)))
    plan = job_mix(t.rng)
    kills = sorted(round(t.rng.uniform(2.0, 14.0), 1) for _ in range(t.rng.randint(1, 2)))
    extra = ["--leader-election"]
    replicas = [t.controller(extra), t.controller(extra)]
    _wait(t, "a leader", lambda: lease_holder(t.kube) in {identity(c) for c in replicas}, 60)
    steps = submit_plan(t, plan)

    def failover() -> None:
        by_id = {identity(c): c for c in replicas if alive(c)}
        leader = by_id.get(lease_holder(t.kube))
        if leader is None:
            t.note("no live leader to kill (a failover still in progress)")
            return
        leader.kill(signal.SIGKILL)  # no clean hand-over: the standby waits for the Lease to run out
        killed = time.monotonic()
        standby = [c for c in replicas if alive(c)]
        ids = {identity(c) for c in standby}
        _wait(t, "the standby to take the Lease", lambda: lease_holder(t.kube) in ids, 60)
        took = time.monotonic() - killed
        t.result.failovers_s.append(round(took, 1))
        t.note(f"failover: {took:.1f}s from SIGKILL to the standby holding the Lease (goal <= "
               f"{FAILOVER_GOAL_S:.0f}s)")
        replicas.remove(leader)
        replicas.append(t.controller(extra))  # the killed replica comes back as the new standby

    for at in kills:
        steps.append((at, "SIGKILL the leader", failover))
    run_steps(t, steps)


def _apiserver_restart(t: Trial) -> None:
    plan = job_mix(t.rng)
    at = round(t.rng.uniform(3.0, 12.0), 1)
    down = round(t.rng.uniform(10.0, 30.0), 1)
    t.controller()
    steps = submit_plan(t, plan)

    def outage() -> None:
        took = restart_apiserver(t.kube.kubeconfig, down)
        t.note(f"API server back, ready {took:.1f}s after it was stopped")
        _wait(t, "every node Ready again", lambda: all(node_is_ready(n) for n in t.kube.core.list_node().items),
              120)

    steps.append((at, f"stop the kube-apiserver for {down}s", outage))
    run_steps(t, steps)


def _node_notready(t: Trial) -> None:
    when = t.rng.choice(["running", "periodic-checkpoint", "preemption-checkpoint"])
    interval = t.rng.choice(["3s", "4s"])
    # The preemption checkpoint must last long enough to catch (8 GiB: ~8 s); a periodic one too.
    memory = "8Gi" if when != "running" else t.rng.choice(["1Gi", "2Gi"])
    t.controller()
    t.create_job("fragile", gpus=8, priority=0, runtime_s=t.rng.randint(25, 35), memory=memory,
                 checkpoint={"interval": interval})
    t.note(f"job fragile every {interval}, {memory}; node NotReady while {when}")
    _wait(t, "fragile's first checkpoint", lambda: t.status("fragile").get("lastCheckpoint"), 90)
    if when == "running":
        time.sleep(round(t.rng.uniform(0.0, 3.0), 1))  # a random moment of the run: the fault's timing
    elif when == "periodic-checkpoint":
        done = t.status("fragile")["lastCheckpoint"]["name"]
        _wait(t, "a periodic checkpoint in flight", lambda: any(
            (c.get("status") or {}).get("phase") == "Running" and c["metadata"]["name"] != done
            for c in t.kube.list("checkpoints", t.namespace)), 60)
    else:
        t.create_job("urgent", gpus=8, priority=100, runtime_s=5, memory="1Gi")
        _wait(t, "fragile Checkpointing for the urgent job", lambda: t.status("fragile").get("phase")
              == "Checkpointing", 60)
    st = t.status("fragile")
    node = st["admission"]["podSetAssignments"][0]["nodes"][0]
    attempt = int(st["attempt"])
    t.note(f"node {node} NotReady (fragile at attempt {attempt}, phase {st['phase']}, last checkpoint "
           f"{st['lastCheckpoint']['name']})")
    set_node_ready(t.kube.kubeconfig, node, False)
    try:
        _expect_restored_elsewhere(t, node, attempt, "NotReady")
    finally:
        set_node_ready(t.kube.kubeconfig, node, True)


def _expect_restored_elsewhere(t: Trial, node: str, attempt: int, how: str) -> None:
    """After `node` failed (`how`): job fragile's next attempt runs elsewhere, restored from its last
    checkpoint, not from zero; what does not hold is recorded as a violation."""
    def restored() -> Any:
        # Pods of a later attempt running, with the restore reference of the job's last checkpoint.
        last = (t.status("fragile").get("lastCheckpoint") or {}).get("name")
        pods = [p for p in t.kube.pods(t.namespace, "fragile")
                if int(p.metadata.labels[ATTEMPT_LABEL]) > attempt and p.status.phase == "Running"]
        return pods and last and [(p.spec.node_name, (p.metadata.annotations or {}).get(
            RESTORE_FROM_ANNOTATION), last) for p in pods]

    seen = _wait(t, "fragile restored from a checkpoint", restored, 120)
    t.note(f"restored: {seen}")
    for pod_node, ref, last in seen:
        if pod_node == node:
            t.result.violations.append(f"fragile restored on the {how} node {node}")
        if ref != last:
            t.result.violations.append(f"fragile's pod restores from {ref!r}, not its last checkpoint {last!r}")
    if float(t.status("fragile").get("runTimeSeconds") or 0) <= 0:
        t.result.violations.append("fragile restarted from zero though it had a checkpoint")


def _etcd_restart(t: Trial) -> None:
    plan = job_mix(t.rng)
    at = round(t.rng.uniform(3.0, 12.0), 1)
    down = round(t.rng.uniform(5.0, 20.0), 1)
    t.controller()
    steps = submit_plan(t, plan)

    def outage() -> None:
        took = restart_component(t.kube.kubeconfig, "etcd", down)
        t.note(f"etcd back; the API server ready {took:.1f}s after etcd was stopped")
        _wait(t, "every node Ready again", lambda: all(node_is_ready(n) for n in t.kube.core.list_node().items),
              120)

    steps.append((at, f"stop etcd for {down}s", outage))
    run_steps(t, steps)


def _watch_cut(t: Trial) -> None:
    plan = job_mix(t.rng)
    cuts = sorted(round(t.rng.uniform(1.0, 18.0), 1) for _ in range(t.rng.randint(3, 5)))
    proxy = CuttingProxy.for_kubeconfig(t.kube.kubeconfig, t.workdir / "kubeconfig-through-proxy")
    try:
        t.controller(kubeconfig=str(t.workdir / "kubeconfig-through-proxy"))
        steps = submit_plan(t, plan)
        for at in cuts:
            def cut() -> None:
                t.note(f"cut {proxy.cut()} connections of the controller")
            steps.append((at, "reset every connection of the controller", cut))
        run_steps(t, steps)
    finally:
        # The jobs finish with the proxy still in place (the controller reconnects through it); it goes
        # once the controllers have stopped.
        def close() -> None:
            t.note(f"proxy: {proxy.accepted} connections accepted, {proxy.cuts} cuts")
            proxy.stop()
        t.teardown.append(close)


def _node_deleted(t: Trial) -> None:
    t.controller()
    t.create_job("fragile", gpus=8, priority=0, runtime_s=t.rng.randint(25, 35),
                 memory=t.rng.choice(["1Gi", "2Gi"]), checkpoint={"interval": t.rng.choice(["3s", "4s"])})
    _wait(t, "fragile's first checkpoint", lambda: t.status("fragile").get("lastCheckpoint"), 90)
    time.sleep(round(t.rng.uniform(0.0, 3.0), 1))  # a random moment of the run: the fault's timing
    st = t.status("fragile")
    node = st["admission"]["podSetAssignments"][0]["nodes"][0]
    attempt = int(st["attempt"])
    saved = t.kube.api.sanitize_for_serialization(t.kube.core.read_node(node))
    t.note(f"node {node} deleted (fragile at attempt {attempt}, phase {st['phase']}, last checkpoint "
           f"{st['lastCheckpoint']['name']})")
    t.kube.core.delete_node(node)
    try:
        _expect_restored_elsewhere(t, node, attempt, "deleted")
    finally:
        meta = saved["metadata"]
        for k in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
            meta.pop(k, None)
        saved["spec"].pop("unschedulable", None)
        with contextlib.suppress(ApiException):  # the machine comes back: same name, labels and capacity
            t.kube.core.create_node(saved)
        _wait(t, f"node {node} back and Ready", lambda: node_is_ready(t.kube.core.read_node(node)), 60)


TRIALS: dict[str, Callable[[Trial], None]] = {
    "node-deleted": _node_deleted,
    "watch-cut": _watch_cut,
    "etcd-restart": _etcd_restart,
    "controller-kill": _controller_kill,
    "leader-failover": _leader_failover,
    "apiserver-restart": _apiserver_restart,
    "node-notready": _node_notready,
}


def _wait(t: Trial, what: str, fn: Callable[[], Any], timeout: float) -> Any:
    """Poll until `fn` is truthy; on the deadline the trial fails, naming what it waited for."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):  # an outage or a restart in progress: not yet
            got = fn()
            if got:
                return got
        if time.monotonic() > deadline:
            raise TrialTimeout(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


class TrialTimeout(AssertionError):
    pass


# ---- one trial, end to end ------------------------------------------------------------------------

def run_trial(kube: Kube, fault: str, seed: int, workdir: Path, *, finish_timeout: float = 240.0) -> TrialResult:
    """Run one trial of `fault` with `seed` on the cluster of `kube`: set up a namespace and a queue, start
    the watcher, inject the fault into the job mix, wait for the jobs to finish, check every invariant,
    clean up. Never raises for a broken invariant: the result lists the violations."""
    result = TrialResult(fault, seed)
    workdir.mkdir(parents=True, exist_ok=True)
    t = Trial(kube, fault, seed, workdir, random.Random(f"{fault}:{seed}"), result)
    t.namespace = f"chaos-{uuid.uuid4().hex[:6]}"
    t.cq = f"{t.namespace}-cq"
    gpus = 8 if fault in ("node-notready", "node-deleted") else 16
    cq = cluster_queue(t.cq, gpus, preemption={"withinClusterQueue": "LowerPriority"})
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=t.namespace)))
    kube.create("clusterqueues", cq)
    kube.create("localqueues", local_queue("main", t.namespace, t.cq), t.namespace)
    watcher = Watcher(kube.kubeconfig, t.namespace, {"main": t.cq}, queue_limits([cq]))
    watcher.start()
    try:
        try:
            TRIALS[fault](t)
            t.note("fault done; waiting for every job to finish")
            result.violations += poll_final(kube.core, kube.custom, t.namespace, t.expected, finish_timeout,
                                            on_poll=lambda: _exited(t))
        except Exception as e:  # a deadline passed, or a fault could not be injected: the trial failed
            result.violations.append(f"{type(e).__name__}: {e}")
        finally:
            watcher.stop()
            for c in t.controllers:
                c.stop()
            for fn in t.teardown:
                fn()
        result.violations += watcher.violations
        result.violations += traceback_violations([c.log_path for c in t.controllers],
                                                  outage=fault in OUTAGE_FAULTS)
        t.note(f"watcher: {watcher.events} events, {watcher.reconnects} reconnects")
        with contextlib.suppress(Exception):
            t.note("jobs: " + ", ".join(_summary(j) for j in kube.list("checkpointablejobs", t.namespace)))
        with contextlib.suppress(Exception):  # why jobs were restarted or requeued, for the post-mortem
            for ev in kube.core.list_namespaced_event(t.namespace).items:
                if ev.type == "Warning":
                    t.note(f"event {ev.involved_object.name} {ev.reason}: {(ev.message or '')[:160]}")
    finally:
        result.seconds = time.monotonic() - t.started
        _cleanup(kube, t)
    return result


def _summary(job: dict[str, Any]) -> str:
    st = job.get("status") or {}
    return (f"{job['metadata']['name']} {st.get('phase')} attempt {st.get('attempt')} preemptions "
            f"{st.get('preemptions', 0)} checkpoints {st.get('checkpoints', 0)} restarts {st.get('restarts', 0)} "
            f"ran {st.get('runTimeSeconds', 0)}s lost {st.get('lostRunTimeSeconds', 0)}s")


def _exited(t: Trial) -> None:
    # A controller that exited on its own (not killed by the trial) is a violation, recorded once.
    for c in list(t.controllers):
        if c.proc is not None and c.proc.poll() not in (None, -signal.SIGKILL):
            t.result.violations.append(f"controller {c.log_path.name} exited with {c.proc.returncode}")
            c.proc = None


def _cleanup(kube: Kube, t: Trial) -> None:
    cleanup(kube, t.namespace, t.cq)


def cleanup(kube: Kube, namespace: str, cq: str) -> None:
    """A trial's jobs, pods, ClusterQueue and namespace deleted, whatever state they are in."""
    with contextlib.suppress(Exception):
        for job in kube.list("checkpointablejobs", namespace):
            kube.delete("checkpointablejobs", job["metadata"]["name"], namespace)
    with contextlib.suppress(Exception):
        kube.core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
    with contextlib.suppress(Exception):
        kube.delete("clusterqueues", cq)
    with contextlib.suppress(Exception):
        kube.core.delete_namespace(namespace)
