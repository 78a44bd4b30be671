"""Discrete-event simulation of a cluster driven by the real engine (`engine.decide`).

Time advances from event to event (arrivals, restores done, checkpoints done, vacates done, finishes,
node failures and repairs). Every event asks for a decision cycle, but cycles run at most once per
`sched_interval_s` simulated seconds (Slurm's sched_interval idea): events in between are batched into
the next cycle. The engine sees the running jobs and the first `queue_depth` pending jobs in queue order
(Slurm's bf_max_job_test idea); deeper jobs wait for a later cycle.

A run of a job on its nodes is a sequence of phases; each phase's time lands in one bucket, so the
GPU-seconds a job holds are exactly accounted for (see `SimJob`):

- RESTORING: a resumed job reads its checkpoint back (`restore_s`), no progress.
- WORKING: progress accrues at rate 1.
- PAUSED: a periodic checkpoint; the job is frozen while it dumps (blocking checkpoint, as CRIU does
  without pre-dump), so the finish moves later by the checkpoint time. Chosen over a background dump
  because it is the conservative, easily accounted cost.
- VACATE_CKPT: preempted by checkpoint; the dump takes `checkpoint_s`, then the job is pending again with
  all progress kept.
- VACATE_KILL: preempted by kill; progress since its last checkpoint is lost at once, and the pods take
  `kill_grace_s` (terminationGracePeriodSeconds) to go.

A node failure ends every run on the node at once: progress since the last completed checkpoint is lost
(an in-flight dump is lost too), and the job is pending again, resuming from its last checkpoint.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import IntEnum

from queue_controller.engine import (
    GPU,
    Admit,
    Checkpoint,
    Decisions,
    Job,
    JobState,
    Node,
    PendingReason,
    PodSet,
    Policy,
    Preempt,
    PreemptMode,
    Resume,
    Snapshot,
    decide,
)
from queue_controller.engine.ordering import work_credit
from queue_controller.predictions import EstimateLearner
from queue_controller.sim.cluster import GIB_MILLI, CheckpointModel, ClusterSpec, QueueLayout
from queue_controller.sim.trace import TraceJob

# Why GPUs stood idle, as the engine's own waiting reasons tell at each decision cycle (`idle_by_reason`):
# - placement: a waiting job that fits the free GPU count (and its quota) has no set of nodes with room
#   for every pod: gang fragmentation across nodes;
# - quota: a waiting job that fits the free GPU count lacks quota;
# - reservation: held for a reserved gang: a job that fits would delay a reservation, or no waiting job
#   fits the free GPUs while a reservation is being gathered;
# - victims: room being made by preemption, waiting for the victims' checkpoints (or kills) to finish;
# - gang_too_big: jobs wait, but every one of them needs more GPUs than are free, and none holds a
#   reservation (fragmentation by size);
# - no_job: nothing waits;
# - other: any other reason (strict FIFO, no matching nodes...).
# Idle time that follows a release before the next decision cycle is `between_cycles` (metrics.py).
IDLE_REASONS = ("placement", "quota", "reservation", "victims", "gang_too_big", "no_job", "other")
_IDLE_OF = {
    PendingReason.CAPACITY: "placement",
    PendingReason.QUOTA: "quota",
    PendingReason.BACKFILL_BLOCKED: "reservation",
    PendingReason.RESERVATION: "reservation",
    PendingReason.WAITING_FOR_PREEMPTION: "victims",
}


def idle_by_reason(idle: int, waiting: Iterable[tuple[int, str | None]], reserved: bool,
                   any_waiting: bool) -> dict[str, int]:
    """Attribute `idle` GPUs to reasons. `waiting`: (GPUs, idle reason or None) of the waiting jobs in
    queue order; each job that fits what is still unattributed takes its GPUs' worth for its reason."""
    out: dict[str, int] = {}
    left = idle
    for gpus, why in waiting:
        if left <= 0:
            break
        if 0 < gpus <= left:
            k = why or "other"
            out[k] = out.get(k, 0) + gpus
            left -= gpus
    if left > 0:
        k = "reservation" if reserved else ("gang_too_big" if any_waiting else "no_job")
        out[k] = out.get(k, 0) + left
    return out


class SimulationError(RuntimeError):
    """An invariant broke (over-commit, a decision about an unknown job): a bug in engine or simulator."""


class Phase(IntEnum):
    QUEUED = 0  # not arrived yet, or pending
    RESTORING = 1
    WORKING = 2
    PAUSED = 3
    VACATE_CKPT = 4
    VACATE_KILL = 5
    DONE = 6


class _Ev(IntEnum):
    # Order of events at the same instant: state changes first, the decision cycle last.
    FAIL = 0
    REPAIR = 1
    FINISH = 2
    VACATE_DONE = 3
    CKPT_DONE = 4
    RESTORE_DONE = 5
    ARRIVAL = 6
    DECIDE = 9


@dataclass(frozen=True, slots=True)
class SimConfig:
    sched_interval_s: float = 10.0
    queue_depth: int = 1000
    kill_grace_s: float = 30.0
    checkpoint: CheckpointModel = field(default_factory=CheckpointModel)
    node_mtbf_s: float | None = None  # None: nodes never fail
    repair_s: float = 3600.0
    seed: int = 0
    record_segments: bool = True  # per-phase segments, for the node timeline plot
    # Check every node's free capacity after each admission (cheap; raises SimulationError).
    check_overcommit: bool = True

    def __post_init__(self) -> None:
        if self.sched_interval_s < 0 or self.queue_depth < 1 or self.kill_grace_s < 0 or self.repair_s <= 0:
            raise ValueError("need sched_interval_s >= 0, queue_depth >= 1, kill_grace_s >= 0, repair_s > 0")
        if self.node_mtbf_s is not None and self.node_mtbf_s <= 0:
            raise ValueError("node_mtbf_s must be > 0 (or None for no failures)")


@dataclass(slots=True)
class SimJob:
    """One trace job and everything that happened to it. Times in seconds; `*_s` buckets are wall time
    while holding resources (multiply by `gpus` for GPU-seconds)."""

    idx: int
    trace: TraceJob
    gpus: int
    cpu_milli: int
    mem_milli: int
    checkpoint_s: float
    restore_s: float
    base: Job  # the pending engine view without run state
    engine: Job
    cluster_queue: str
    # Its queue-order time under the policy (submit time less `ordering.work_credit`): the engine's order,
    # which decides the first `queue_depth` pending jobs it is shown.
    order: float = 0.0
    phase: Phase = Phase.QUEUED
    phase_start: float = 0.0
    epoch: int = 0  # bumps whenever scheduled events of this job become stale
    progress: float = 0.0  # work done in the current run's lineage, at phase_start
    kept: float = 0.0  # progress the job restarts from when pending
    ckpt_progress: float | None = None  # progress held in its newest completed checkpoint
    vacate_keep: float = 0.0
    checkpoints: int = 0
    nodes: tuple[str, ...] = ()  # one per pod
    run_start: float = 0.0
    first_start: float | None = None
    end: float | None = None
    preempt_ckpt: int = 0
    preempt_kill: int = 0
    periodic: int = 0
    failures: int = 0
    runs: int = 0
    # Cycles in which the engine preempted victims for this job, and how many of those came after an
    # earlier one while it was still pending (the engine re-planning for the same start: a thrash sign).
    preempt_rounds: int = 0
    repeat_preempt_rounds: int = 0
    rounds_pending: int = 0  # preemption rounds since this job last started
    # As a victim: (beneficiary idx, the beneficiary's runs then, the nodes it was preempted from) of the
    # newest preemption, until this job runs again; `undone` counts preemptions after which it ran again on
    # one of those nodes before its beneficiary had started (room made for nothing).
    preempted_for: tuple[int, int, frozenset[str]] | None = None
    undone: int = 0
    backfill_runs: int = 0
    # Buckets (seconds while holding resources).
    restore_time: float = 0.0
    periodic_time: float = 0.0
    vacate_ckpt_time: float = 0.0
    grace_time: float = 0.0
    working_time: float = 0.0
    lost_work: float = 0.0  # progress discarded (kills, failures)
    held_time: float = 0.0  # total time holding resources (= sum of the phases above)


@dataclass(slots=True)
class SimResult:
    jobs: list[SimJob]
    cluster: ClusterSpec
    policy: str
    config: SimConfig
    # (time, allocated GPUs, allocated CPU milli) at every change.
    usage: list[tuple[float, int, int]]
    # (start, end, phase, job idx, backfilled) per phase of every run; nodes via `run_nodes`.
    segments: list[tuple[float, float, int, int, bool, tuple[str, ...]]]
    # (time, kind, job idx, nodes): preempt-checkpoint, preempt-kill, failure.
    events: list[tuple[float, str, int, tuple[str, ...]]]
    first_submit: float
    last_submit: float
    makespan_end: float
    decide_calls: int
    decide_seconds: float
    wall_seconds: float
    checkpoints: int
    node_failures: int
    # (time, idle GPUs right after the decision cycle, those GPUs by `IDLE_REASONS`), per cycle.
    idle_marks: list[tuple[float, int, dict[str, int]]] = field(default_factory=list)


def _engine_job(tj: TraceJob, cq: str, ckpt_s: float, restore_s: float) -> Job:
    pods = tj.pods
    req = {
        "cpu": math.ceil(tj.cpu * 1000 / pods),
        "memory": math.ceil(tj.memory_gib * GIB_MILLI / pods),
        GPU: tj.gpus // pods * 1000,
    }
    return Job(
        key=tj.id,
        cluster_queue=cq,
        priority=tj.priority,
        queue_order=tj.submit_s,
        pod_sets=(PodSet("main", pods, {r: q for r, q in req.items() if q > 0}),),
        checkpointable=tj.checkpointable,
        checkpoint_cost_s=ckpt_s if tj.checkpointable else 0.0,
        restore_cost_s=restore_s if tj.checkpointable else 0.0,
        runtime_estimate_s=tj.estimate_s,
    )


class Simulator:
    def __init__(self, trace: list[TraceJob], policy: Policy, cluster: ClusterSpec,
                 layout: QueueLayout | None = None, config: SimConfig | None = None) -> None:
        self.policy = policy
        self.cluster = cluster
        # The engine entry point; replaceable so a benchmark can time or profile each cycle.
        self.decide_fn: Callable[[Snapshot, float, Policy], Decisions] = decide
        self.layout = layout or QueueLayout()
        self.cfg = config or SimConfig()
        self.rng = random.Random(self.cfg.seed)
        self.flavors = cluster.flavors()
        self.cluster_queues = self.layout.build(cluster)
        self.node_list: list[Node] = list(cluster.nodes())
        self.node_index = {n.name: i for i, n in enumerate(self.node_list)}
        self.nodes_tuple = tuple(self.node_list)
        self.free: dict[str, dict[str, int]] = {n.name: dict(n.allocatable) for n in self.node_list}
        self.on_node: dict[str, set[int]] = {n.name: set() for n in self.node_list}
        ck = self.cfg.checkpoint
        self.jobs: list[SimJob] = []
        self.by_key: dict[str, SimJob] = {}
        for i, tj in enumerate(sorted(trace, key=lambda j: (j.submit_s, j.id))):
            cq = self.layout.cluster_queue_for(tj.queue)
            cs, rs = ck.checkpoint_s(tj), ck.restore_s(tj)
            base = _engine_job(tj, cq, cs, rs)
            ps = base.pod_sets[0]
            sj = SimJob(i, tj, tj.gpus, ps.requests.get("cpu", 0) * tj.pods,
                        ps.requests.get("memory", 0) * tj.pods, cs, rs, base, base, cq,
                        order=tj.submit_s - work_credit(base, policy.ordering))
            self.jobs.append(sj)
            if tj.id in self.by_key:
                raise ValueError(f"duplicate job id {tj.id!r}")
            self.by_key[tj.id] = sj
        self.heap: list[tuple[float, int, int, int, int]] = []  # time, kind, seq, job/node idx, epoch
        self.seq = 0
        self.live = 0  # events that can change job state (not DECIDE, not FAIL)
        self.pending: list[tuple[int, float, str, int]] = []  # sorted queue order
        self.admitted: dict[int, Job] = {}
        self.next_decide: float | None = None
        self.last_decide = -math.inf
        self.alloc_gpus = 0
        self.alloc_cpu = 0
        self.usage: list[tuple[float, int, int]] = []
        self.idle_marks: list[tuple[float, int, dict[str, int]]] = []
        self.segments: list[tuple[float, float, int, int, bool, tuple[str, ...]]] = []
        self.events: list[tuple[float, str, int, tuple[str, ...]]] = []
        self.done = 0
        self.checkpoints = 0
        self.node_failures = 0
        self.decide_calls = 0
        self.decide_seconds = 0.0
        self.now = 0.0
        # Learned run-time predictions, under a policy that uses them: the simulator is the adapter that
        # learns (queue_controller/predictions.py). A job's group is its trace queue, the trace's closest
        # thing to a user or team (traces carry no user).
        rp = policy.backfill.runtime_predictions
        self.learner = EstimateLearner(rp) if rp.enabled else None

    # ---- event plumbing ----------------------------------------------------------------------------

    def _push(self, t: float, kind: _Ev, ref: int, epoch: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, int(kind), self.seq, ref, epoch))
        if kind not in (_Ev.DECIDE, _Ev.FAIL):
            self.live += 1

    def _request_decide(self, t: float) -> None:
        target = max(t, self.last_decide + self.cfg.sched_interval_s)
        if self.next_decide is None or target < self.next_decide:
            self.next_decide = target
            self._push(target, _Ev.DECIDE, 0)

    def _record_usage(self, t: float) -> None:
        if self.usage and self.usage[-1][0] == t:
            self.usage[-1] = (t, self.alloc_gpus, self.alloc_cpu)
        else:
            self.usage.append((t, self.alloc_gpus, self.alloc_cpu))

    # ---- phases ------------------------------------------------------------------------------------

    def _close_phase(self, sj: SimJob, t: float) -> None:
        dur = t - sj.phase_start
        ph = sj.phase
        if ph is Phase.WORKING:
            sj.working_time += dur
            sj.progress = min(sj.progress + dur, sj.trace.runtime_s)
        elif ph is Phase.RESTORING:
            sj.restore_time += dur
        elif ph is Phase.PAUSED:
            sj.periodic_time += dur
        elif ph is Phase.VACATE_CKPT:
            sj.vacate_ckpt_time += dur
        elif ph is Phase.VACATE_KILL:
            sj.grace_time += dur
        else:
            return
        sj.held_time += dur
        if self.cfg.record_segments and dur > 0:
            self.segments.append((sj.phase_start, t, int(ph), sj.idx, sj.engine.backfilled, sj.nodes))

    def _enter(self, sj: SimJob, phase: Phase, t: float) -> None:
        sj.phase = phase
        sj.phase_start = t

    def _start_working(self, sj: SimJob, t: float) -> None:
        self._enter(sj, Phase.WORKING, t)
        self._push(t + max(sj.trace.runtime_s - sj.progress, 0.0), _Ev.FINISH, sj.idx, sj.epoch)

    def _set_engine(self, sj: SimJob, job: Job) -> None:
        sj.engine = job
        if job.state is JobState.ADMITTED:
            self.admitted[sj.idx] = job

    # ---- resources ---------------------------------------------------------------------------------

    def _take(self, sj: SimJob, nodes: tuple[str, ...], t: float) -> None:
        req = sj.base.pod_sets[0].requests
        for name in nodes:
            if not self.node_list[self.node_index[name]].ready:
                raise SimulationError(f"t={t:.1f}: job {sj.trace.id} placed on failed node {name}")
            free = self.free[name]
            for r, q in req.items():
                free[r] -= q
                if self.cfg.check_overcommit and free[r] < 0:
                    raise SimulationError(
                        f"t={t:.1f}: over-commit of {r} on node {name} admitting job {sj.trace.id}")
            self.on_node[name].add(sj.idx)
        self.alloc_gpus += sj.gpus
        self.alloc_cpu += sj.cpu_milli
        self._record_usage(t)

    def _release(self, sj: SimJob, t: float) -> None:
        req = sj.base.pod_sets[0].requests
        for name in sj.nodes:
            free = self.free[name]
            for r, q in req.items():
                free[r] += q
            self.on_node[name].discard(sj.idx)
        self.alloc_gpus -= sj.gpus
        self.alloc_cpu -= sj.cpu_milli
        self._record_usage(t)
        self.admitted.pop(sj.idx, None)
        sj.nodes = ()

    def _to_pending(self, sj: SimJob, keep: float) -> None:
        sj.kept = keep
        sj.progress = keep
        sj.phase = Phase.QUEUED
        sj.epoch += 1
        ckpt = f"{sj.trace.id}-ckpt-{sj.checkpoints}" if sj.ckpt_progress is not None else None
        sj.engine = replace(sj.base, run_time_s=keep, checkpoint=ckpt, runtime_prediction_s=self._predict(sj))
        bisect.insort(self.pending, (-sj.trace.priority, sj.order, sj.trace.id, sj.idx))

    def _predict(self, sj: SimJob) -> float | None:
        return None if self.learner is None else self.learner.predict(sj.trace.queue, sj.trace.estimate_s)

    def _remove_pending(self, sj: SimJob) -> None:
        key = (-sj.trace.priority, sj.order, sj.trace.id, sj.idx)
        i = bisect.bisect_left(self.pending, key)
        if i >= len(self.pending) or self.pending[i] != key:
            raise SimulationError(f"job {sj.trace.id} admitted but not pending")
        del self.pending[i]

    # ---- applying decisions ------------------------------------------------------------------------

    def _admit(self, a: Admit | Resume, t: float) -> None:
        sj = self.by_key.get(a.job)
        if sj is None or sj.phase is not Phase.QUEUED or sj.engine.state is not JobState.PENDING:
            raise SimulationError(f"t={t:.1f}: engine admitted {a.job!r}, which is not pending")
        self._remove_pending(sj)
        nodes = tuple(n for pl in a.placement for n in pl.nodes)
        self._take(sj, nodes, t)
        sj.nodes = nodes
        sj.runs += 1
        sj.backfill_runs += int(a.backfill)
        sj.rounds_pending = 0
        sj.run_start = t
        if sj.first_start is None:
            sj.first_start = t
        sj.epoch += 1
        self._set_engine(sj, replace(sj.engine, state=JobState.ADMITTED, placement=a.placement, started_at=t,
                                     admitted_at=t, backfilled=a.backfill, last_checkpoint_at=None))
        if isinstance(a, Resume):
            self._enter(sj, Phase.RESTORING, t)
            self._push(t + sj.restore_s, _Ev.RESTORE_DONE, sj.idx, sj.epoch)
        else:
            self._start_working(sj, t)

    def _preempt(self, p: Preempt, t: float) -> None:
        sj = self.by_key.get(p.victim)
        if sj is None or sj.phase not in (Phase.RESTORING, Phase.WORKING, Phase.PAUSED):
            raise SimulationError(f"t={t:.1f}: engine preempted {p.victim!r}, which is not running")
        self._close_phase(sj, t)
        sj.epoch += 1
        ben = self.by_key.get(p.beneficiary)
        sj.preempted_for = None if ben is None else (ben.idx, ben.runs, frozenset(sj.nodes))
        if p.mode is PreemptMode.CHECKPOINT and sj.trace.checkpointable:
            sj.vacate_keep = sj.progress
            sj.preempt_ckpt += 1
            self._enter(sj, Phase.VACATE_CKPT, t)
            self._set_engine(sj, replace(sj.engine, vacating=True, checkpointing=True, preempted_for=p.beneficiary))
            self._push(t + sj.checkpoint_s, _Ev.VACATE_DONE, sj.idx, sj.epoch)
            self.events.append((t, "preempt-checkpoint", sj.idx, sj.nodes))
        else:
            sj.vacate_keep = sj.ckpt_progress or 0.0
            sj.lost_work += sj.progress - sj.vacate_keep
            sj.preempt_kill += 1
            self._enter(sj, Phase.VACATE_KILL, t)
            self._set_engine(sj, replace(sj.engine, vacating=True, preempted_for=p.beneficiary))
            self._push(t + self.cfg.kill_grace_s, _Ev.VACATE_DONE, sj.idx, sj.epoch)
            self.events.append((t, "preempt-kill", sj.idx, sj.nodes))

    def _checkpoint(self, c: Checkpoint, t: float) -> None:
        sj = self.by_key.get(c.job)
        if sj is None or sj.engine.state is not JobState.ADMITTED:
            raise SimulationError(f"t={t:.1f}: engine asked to checkpoint {c.job!r}, which is not admitted")
        if sj.phase is not Phase.WORKING or not sj.trace.checkpointable:
            return  # still restoring: the engine asks again next cycle, as the due date stays past
        self._close_phase(sj, t)
        sj.epoch += 1
        self._enter(sj, Phase.PAUSED, t)
        self._set_engine(sj, replace(sj.engine, checkpointing=True))
        self._push(t + sj.checkpoint_s, _Ev.CKPT_DONE, sj.idx, sj.epoch)

    def _decide(self, t: float) -> int:
        depth = self.cfg.queue_depth
        if self.learner is not None:
            # A pending job's prediction follows its group's newest factor; a running job keeps the one it
            # started with (a new Job object would be accounted again, and its plan should not move).
            for e in self.pending[:depth]:
                sj = self.jobs[e[3]]
                pred = self._predict(sj)
                if pred != sj.engine.runtime_prediction_s:
                    sj.engine = replace(sj.engine, runtime_prediction_s=pred)
        jobs = [*self.admitted.values(), *(self.jobs[e[3]].engine for e in self.pending[:depth])]
        # The modelled MTBF goes in the snapshot, as the controller's measured one does: the engine uses it
        # for Young's checkpoint interval instead of the policy's nodeMtbfSeconds.
        snap = Snapshot(self.nodes_tuple, self.flavors, self.cluster_queues, tuple(jobs), self.cfg.node_mtbf_s)
        t0 = time.perf_counter()
        out = self.decide_fn(snap, t, self.policy)
        self.decide_seconds += time.perf_counter() - t0
        self.decide_calls += 1
        self.last_decide = t
        beneficiaries: set[str] = set()
        started: list[SimJob] = []
        for a in out.actions:
            if isinstance(a, Preempt):
                beneficiaries.add(a.beneficiary)
                self._preempt(a, t)
            elif isinstance(a, Admit | Resume):
                self._admit(a, t)
                started.append(self.by_key[a.job])
            elif isinstance(a, Checkpoint):
                self._checkpoint(a, t)
        for sj in started:  # after the whole cycle: a beneficiary starting in the same cycle counts as first
            if sj.preempted_for is not None:
                ben, runs, old = sj.preempted_for
                sj.undone += int(self.jobs[ben].runs == runs and not old.isdisjoint(sj.nodes))
                sj.preempted_for = None
        for key in beneficiaries:
            sj = self.by_key[key]
            sj.preempt_rounds += 1
            if sj.phase is Phase.QUEUED:  # still pending (not admitted in this very cycle)
                sj.repeat_preempt_rounds += int(sj.rounds_pending > 0)
                sj.rounds_pending += 1
        if out.next_wakeup is not None and out.next_wakeup > t:
            self._request_decide(out.next_wakeup)
        self._mark_idle(t, out)
        return len(out.actions)

    def _mark_idle(self, t: float, out: Decisions) -> None:
        """Record why the GPUs still free after this cycle stay idle (`idle_by_reason`)."""
        idle = self.cluster.total_gpus - self.alloc_gpus
        if idle <= 0:
            self.idle_marks.append((t, 0, {}))
            return
        reserved = any(w.reason is PendingReason.RESERVATION for w in out.waiting.values())
        jobs = self.jobs
        waiting = out.waiting
        # Queue order; beyond the queue depth the engine gave no reason ("other"). Lazily: the walk
        # stops once every idle GPU is attributed.
        order = ((jobs[e[3]].gpus, _IDLE_OF.get(w.reason) if (w := waiting.get(jobs[e[3]].trace.id)) else "other")
                 for e in self.pending)
        self.idle_marks.append((t, idle, idle_by_reason(idle, order, reserved, bool(self.pending))))

    # ---- events ------------------------------------------------------------------------------------

    def _on_event(self, kind: _Ev, ref: int, epoch: int, t: float) -> None:
        if kind is _Ev.ARRIVAL:
            sj = self.jobs[ref]
            self._to_pending(sj, 0.0)
        elif kind is _Ev.FAIL:
            self._fail(ref, t)
        elif kind is _Ev.REPAIR:
            self._set_ready(ref, True)
            if self.cfg.node_mtbf_s is not None:
                self._push(t + self.rng.expovariate(1.0 / self.cfg.node_mtbf_s), _Ev.FAIL, ref)
        else:
            sj = self.jobs[ref]
            if epoch != sj.epoch:
                return  # stale: the job was paused, preempted or failed since
            self._close_phase(sj, t)
            if kind is _Ev.FINISH:
                sj.progress = sj.trace.runtime_s
                sj.phase = Phase.DONE
                sj.end = t
                sj.epoch += 1
                self._release(sj, t)
                self.done += 1
                if self.learner is not None:
                    self.learner.observe(sj.trace.queue, sj.trace.runtime_s, sj.trace.estimate_s)
            elif kind is _Ev.RESTORE_DONE:
                self._start_working(sj, t)
            elif kind is _Ev.CKPT_DONE:
                sj.checkpoints += 1
                sj.periodic += 1
                self.checkpoints += 1
                sj.ckpt_progress = sj.progress
                self._set_engine(sj, replace(sj.engine, checkpointing=False, last_checkpoint_at=t,
                                             checkpoint=f"{sj.trace.id}-ckpt-{sj.checkpoints}"))
                self._start_working(sj, t)
            elif kind is _Ev.VACATE_DONE:
                if sj.phase is Phase.VACATE_CKPT:
                    sj.checkpoints += 1
                    self.checkpoints += 1
                    sj.ckpt_progress = sj.vacate_keep
                self._release(sj, t)
                self._to_pending(sj, sj.vacate_keep)
        self._request_decide(t)

    def _set_ready(self, index: int, ready: bool) -> None:
        self.node_list[index] = replace(self.node_list[index], ready=ready)
        self.nodes_tuple = tuple(self.node_list)

    def _fail(self, index: int, t: float) -> None:
        name = self.node_list[index].name
        self.node_failures += 1
        for idx in sorted(self.on_node[name]):
            sj = self.jobs[idx]
            self._close_phase(sj, t)
            keep = sj.ckpt_progress or 0.0
            if sj.phase is Phase.VACATE_KILL:
                keep = sj.vacate_keep  # already counted as lost at the kill
            elif sj.phase is Phase.VACATE_CKPT:
                sj.lost_work += sj.vacate_keep - keep  # the dump in flight is lost with the node
            else:
                sj.lost_work += sj.progress - keep
            sj.failures += 1
            self.events.append((t, "failure", sj.idx, sj.nodes))
            self._release(sj, t)
            self._to_pending(sj, keep)
        self._set_ready(index, False)
        self._push(t + self.cfg.repair_s, _Ev.REPAIR, index)

    # ---- main loop ---------------------------------------------------------------------------------

    def run(self) -> SimResult:
        wall0 = time.perf_counter()
        for sj in self.jobs:
            self._push(sj.trace.submit_s, _Ev.ARRIVAL, sj.idx)
        if self.cfg.node_mtbf_s is not None:
            for i in range(len(self.node_list)):
                self._push(self.rng.expovariate(1.0 / self.cfg.node_mtbf_s), _Ev.FAIL, i)
        self._record_usage(self.jobs[0].trace.submit_s if self.jobs else 0.0)
        n = len(self.jobs)
        while self.heap and self.done < n:
            if self.live == 0 and self.next_decide is None:
                break  # only node failures remain: they cannot finish anything
            t, kind_i, _, ref, epoch = heapq.heappop(self.heap)
            kind = _Ev(kind_i)
            self.now = t
            if kind is _Ev.DECIDE:
                if self.next_decide != t:
                    continue  # superseded by an earlier request
                self.next_decide = None
                acted = self._decide(t)
                if not acted and self.live == 0:
                    break  # nothing can change any more: the rest never fits
                continue
            if kind is not _Ev.FAIL:
                self.live -= 1
            self._on_event(kind, ref, epoch, t)
        end = max((sj.end for sj in self.jobs if sj.end is not None), default=self.now)
        submits = [sj.trace.submit_s for sj in self.jobs] or [0.0]
        return SimResult(
            jobs=self.jobs, cluster=self.cluster, policy=self.policy.name, config=self.cfg, usage=self.usage,
            segments=self.segments, events=self.events, first_submit=min(submits), last_submit=max(submits),
            makespan_end=end, decide_calls=self.decide_calls, decide_seconds=self.decide_seconds,
            wall_seconds=time.perf_counter() - wall0, checkpoints=self.checkpoints,
            node_failures=self.node_failures, idle_marks=self.idle_marks,
        )


def simulate(trace: list[TraceJob], policy: Policy, cluster: ClusterSpec, layout: QueueLayout | None = None,
             config: SimConfig | None = None) -> SimResult:
    return Simulator(trace, policy, cluster, layout, config).run()
