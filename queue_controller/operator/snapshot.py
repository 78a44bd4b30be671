"""Turn the cache into the engine's snapshot: Kubernetes objects in, plain integer-milli records out.

The snapshot is rebuilt every cycle, but a waiting job's engine record is not: with thousands waiting,
converting each of them every cycle was most of the cycle. `JobMemo` keeps each waiting job's record
(and whether its checkpoint mode can be served) between cycles, and reuses it while its inputs are the
very same objects: the cache replaces a job's record or status object on every change, and its
checkpoints' records likewise, so identity is the change test; the queue, the priority and the cluster's
checkpoint settings and node kinds are compared by value. Jobs holding quota are converted afresh every
cycle (their backend depends on their pods); the engine compares them with the last cycle's by value
and re-accounts only those that changed (engine/carry.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from queue_controller.api.quantity import to_milli
from queue_controller.engine import (
    ClusterQueue,
    Flavor,
    FlavorQuotas,
    Job,
    JobState,
    Node,
    PodSet,
    PodSetPlacement,
    Quota,
    ReclaimWithinCohort,
    ResourceGroup,
    Snapshot,
    Taint,
    Toleration,
    WithinClusterQueue,
)
from queue_controller.engine.snapshot import QueueingStrategy
from queue_controller.operator.cache import Cache
from queue_controller.operator.records import FlavorRecord, JobRecord, NodeRecord
from queue_controller.wire import (
    ACTIVE_PHASES,
    IN_FLIGHT_CHECKPOINT_PHASES,
    NODE_KIND_LABEL,
    POD_DONE_PHASES,
    TERMINAL_PHASES,
    parse_time,
)

T = TypeVar("T")

# (checkpoint seconds, restore seconds) a backend expects for a job, before any is measured.
Estimator = Callable[[JobRecord], tuple[float, float]]


@dataclass(frozen=True, slots=True)
class Fit:
    """Whether a waiting job may be queued (`refused`: a CamelCase condition reason and a message, when
    not), and the only kind of node it may be placed on (`wire.node_kind`; None: any)."""

    refused: tuple[str, str] | None = None
    only_kind: str | None = None


# The job condition (abnormal-true: True while the job's checkpoint mode cannot be served, with the reason;
# False once it can, with reason Simulated or CRIU saying what checkpoints it), also its pending reason.
MODE_CONDITION = "CheckpointModeUnavailable"

# What the checkpoint backends can serve for a waiting job (operator.backends.JobBackends.admissible).
Fitter = Callable[[JobRecord], Fit]


@dataclass(slots=True)
class Unqueued:
    """Jobs the engine never sees, and why (reported in their status)."""

    reasons: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (reason, message)
    wake: float | None = None  # when the first job backing off after a pods-ready timeout is queued again
    # key -> the CheckpointModeUnavailable condition's reason, for jobs refused for their checkpoint mode
    refused: dict[str, str] = field(default_factory=dict)


def _taints(raw: list[dict[str, object]]) -> tuple[Taint, ...]:
    return tuple(Taint(str(t.get("key", "")), str(t.get("value", "") or ""), str(t.get("effect", "NoSchedule")))
                 for t in raw)


def _tolerations(raw: list[dict[str, object]]) -> tuple[Toleration, ...]:
    return tuple(Toleration(str(t.get("key", "") or ""), str(t.get("operator", "Equal") or "Equal"),
                            str(t.get("value", "") or ""), str(t.get("effect", "") or "")) for t in raw)


def cluster_queue(cache: Cache, name: str) -> ClusterQueue | None:
    rec = cache.cluster_queues.get(name)
    if rec is None or rec.spec is None:
        return None
    spec = rec.spec
    groups = []
    for g in spec.resource_groups:
        fqs = []
        for fq in g.flavors:
            res = {}
            for r in fq.resources:
                res[r.name] = Quota(
                    to_milli(r.nominal_quota),
                    None if r.borrowing_limit is None else to_milli(r.borrowing_limit),
                    None if r.lending_limit is None else to_milli(r.lending_limit),
                )
            fqs.append(FlavorQuotas(fq.name, res))
        groups.append(ResourceGroup(tuple(g.covered_resources), tuple(fqs)))
    # A queue's own preemption/backfill fields refine the policy only where the admin wrote them.
    within = reclaim = None
    if "preemption" in rec.fields_set:
        within = WithinClusterQueue(spec.preemption.within_cluster_queue)
        reclaim = ReclaimWithinCohort(spec.preemption.reclaim_within_cohort)
    backfill = depth = None
    if "backfill" in rec.fields_set:
        backfill = spec.backfill.enabled
        depth = max(spec.backfill.reservation_depth, 1)
    weight = 1.0
    if spec.fair_sharing is not None:
        weight = to_milli(spec.fair_sharing.weight) / 1000.0
    return ClusterQueue(name, tuple(groups), cohort=spec.cohort,
                        queueing_strategy=QueueingStrategy(spec.queueing_strategy),
                        within_cluster_queue=within, reclaim_within_cohort=reclaim,
                        backfill_enabled=backfill, reservation_depth=depth, fair_weight=weight)


def latest_completed_checkpoint(cache: Cache, job_key: str) -> tuple[str, float, float, dict[str, str]] | None:
    """(name, completion time, run time kept, restore node labels) of the job's newest Completed one."""
    done = [c for c in cache.job_checkpoints(job_key) if c.phase == "Completed"]
    if not done:
        return None
    c = max(done, key=lambda c: (parse_time(c.status.get("completionTime")) or c.created, c.name))
    constraints = (c.status.get("restoreConstraints") or {}).get("nodeLabels") or {}
    kept = c.kept_run_time
    return c.name, parse_time(c.status.get("completionTime")) or c.created, kept, dict(constraints)


def engine_job(cache: Cache, rec: JobRecord, cq_name: str, priority: int, estimator: Estimator,
               only_kind: str | None = None) -> Job:
    spec = rec.spec
    assert spec is not None
    status = rec.status
    pod_sets = []
    for ps in spec.pod_sets:
        tmpl = ps.template.spec
        selector = dict(tmpl.node_selector)
        if only_kind is not None:  # the engine's view only: every snapshot node carries its kind
            selector[NODE_KIND_LABEL] = only_kind
        pod_sets.append(PodSet(ps.name, ps.count, rec.requests.get(ps.name) or {}, selector,
                               _tolerations([t.to_wire() for t in tmpl.tolerations]) if tmpl.tolerations else ()))
    phase = rec.phase
    active = phase in ACTIVE_PHASES and bool(status.get("admission"))
    placement: tuple[PodSetPlacement, ...] = ()
    if active:
        adm = status["admission"]
        placement = tuple(PodSetPlacement(a["name"], a.get("flavor") or "", tuple(a.get("nodes") or ()))
                          for a in adm.get("podSetAssignments") or ())
    ckpts = cache.job_checkpoints(rec.key)
    measured = [float(c.status["durationSeconds"]) for c in ckpts
                if c.phase == "Completed" and c.status.get("durationSeconds") is not None]
    if measured:
        ckpt_cost = restore_cost = measured[-1]
    elif spec.checkpoint.mode != "None":
        ckpt_cost, restore_cost = estimator(rec)
    else:
        ckpt_cost = restore_cost = 0.0
    interval = spec.checkpoint.interval_seconds()
    latest = latest_completed_checkpoint(cache, rec.key) if ckpts else None
    inflight = [c for c in ckpts if c.phase in IN_FLIGHT_CHECKPOINT_PHASES]
    vacating = active and (phase == "Checkpointing" or any(not c.leave_running for c in inflight))
    return Job(
        key=rec.key, cluster_queue=cq_name, priority=priority, queue_order=rec.created,
        pod_sets=tuple(pod_sets), state=JobState.ADMITTED if active else JobState.PENDING,
        checkpointable=spec.checkpoint.mode != "None", checkpoint_cost_s=ckpt_cost, restore_cost_s=restore_cost,
        runtime_estimate_s=None if spec.runtime_estimate_seconds is None else float(spec.runtime_estimate_seconds),
        run_time_s=float(status.get("runTimeSeconds") or 0.0),
        started_at=parse_time(status.get("runStartTime")) if active else None,
        last_checkpoint_at=latest[1] if latest else None,
        checkpoint_interval_s=interval if isinstance(interval, float) else None,
        checkpoint_interval_auto=interval == "auto",
        checkpoint=latest[0] if latest and not active else None,
        restore_node_labels=latest[3] if latest and not active else {},
        placement=placement,
        backfilled=bool((status.get("admission") or {}).get("backfill")) if active else False,
        vacating=vacating,
        preempted_for=status.get("preemptedFor") if vacating else None,
        checkpointing=bool(inflight) and not vacating,
        admitted_at=parse_time((status.get("admission") or {}).get("time")) if active else None,
    )


@dataclass(slots=True)
class _Memo:
    rec: JobRecord
    status: dict[str, object]
    fit: Fit
    cq_name: str = ""
    priority: int = 0
    checkpoints: tuple[object, ...] = ()
    job: Job | None = None


class JobMemo:
    """Waiting jobs' engine records, kept between cycles while their inputs stay the same objects."""

    def __init__(self) -> None:
        self._entries: dict[str, _Memo] = {}
        self._env: object = None
        self.parts = _Parts()  # nodes, flavors and queues, kept the same way

    def begin(self, env: object) -> None:
        """A new build; `env` (the cluster's checkpoint settings and node kinds) changed: forget all."""
        if env != self._env:
            self._entries.clear()
            self._env = env

    def fit(self, rec: JobRecord, fitter: Fitter | None) -> tuple[Fit, _Memo]:
        m = self._entries.get(rec.key)
        if m is None or m.rec is not rec or m.status is not rec.status:
            m = _Memo(rec, rec.status, fitter(rec) if fitter is not None else Fit())
            self._entries[rec.key] = m
        return m.fit, m

    def prune(self, live: int, jobs: Mapping[str, JobRecord]) -> None:
        if len(self._entries) > 2 * live + 64:  # jobs that left the queue or were deleted
            self._entries = {k: m for k, m in self._entries.items() if jobs.get(k) is m.rec}


BACKOFF_REASON = "PodsReadyBackoff"


def build(cache: Cache, estimator: Estimator, fitter: Fitter | None = None, memo: JobMemo | None = None,
          env: object = None, now: float | None = None) -> tuple[Snapshot, Unqueued]:
    """The engine's snapshot of the cache, and the jobs the engine does not see (with why). `memo`: the
    waiting jobs' records from earlier builds, valid while `env` is equal. `now`: jobs backing off after
    a pods-ready timeout stay out of the queue until their `requeueAt` (None: no one backs off)."""
    unq = Unqueued()
    jobs: list[Job] = []
    if memo is not None:
        memo.begin(env)
    waiting = 0
    admits: dict[tuple[str, str], bool] = {}  # (ClusterQueue, namespace) -> admitted by its selector
    for rec in cache.jobs.values():
        phase = rec.status.get("phase") or "Pending"
        if phase in TERMINAL_PHASES:
            continue
        if rec.spec is None:
            unq.reasons[rec.key] = ("InvalidSpec", rec.spec_error)
            continue
        active = phase in ACTIVE_PHASES
        if rec.spec.suspend and not active:
            continue  # suspended by its user: not queued until resumed
        if not active and now is not None and (state := rec.status.get("requeueState")):
            at = parse_time(state.get("requeueAt"))
            if at is not None and at > now:
                # Why its pods could not start (not running in time, an encryption key missing) is in
                # the PodsReady condition and the Event of the requeue.
                unq.reasons[rec.key] = (BACKOFF_REASON, f"its pods could not all start after "
                                        f"{state.get('count', 1)} admission(s) (see the PodsReady condition); "
                                        f"back in the queue at {state.get('requeueAt')}")
                unq.wake = at if unq.wake is None else min(unq.wake, at)
                continue
        lq = cache.local_queues.get(f"{rec.namespace}/{rec.spec.queue_name}")
        if lq is None and not active:
            unq.reasons[rec.key] = ("LocalQueueNotFound",
                                    f"LocalQueue {rec.spec.queue_name!r} does not exist in namespace {rec.namespace!r}")
            continue
        if lq is not None and not active:
            allowed = admits.get((lq.cluster_queue, rec.namespace))
            if allowed is None:
                cq_rec = cache.cluster_queues.get(lq.cluster_queue)
                ns_labels = cache.namespaces.get(rec.namespace, {"kubernetes.io/metadata.name": rec.namespace})
                allowed = cq_rec is None or cq_rec.spec is None or cq_rec.spec.admits_namespace(ns_labels)
                admits[(lq.cluster_queue, rec.namespace)] = allowed
            if not allowed:
                unq.reasons[rec.key] = ("NamespaceNotAllowed",
                                        f"ClusterQueue {lq.cluster_queue!r} does not admit namespace "
                                        f"{rec.namespace!r} (spec.namespaceSelector; unset admits none, {{}} all)")
                continue
        if rec.spec.priority is not None:
            priority = rec.spec.priority
        elif rec.spec.priority_class_name:
            value = cache.priority_classes.get(rec.spec.priority_class_name)
            if value is None and not active:
                unq.reasons[rec.key] = ("PriorityClassNotFound",
                                        f"PriorityClass {rec.spec.priority_class_name!r} does not exist")
                continue
            priority = value or 0
        else:
            priority = 0
        entry = None
        if active:
            fit = Fit()
        elif memo is not None:
            fit, entry = memo.fit(rec, fitter)
        else:
            fit = fitter(rec) if fitter is not None else Fit()
        if fit.refused is not None:
            reason, message = fit.refused
            unq.reasons[rec.key] = (MODE_CONDITION, message)
            unq.refused[rec.key] = reason
            continue
        cq_name = lq.cluster_queue if lq is not None else str((rec.status.get("admission") or {}).get("clusterQueue"))
        if entry is None:
            jobs.append(engine_job(cache, rec, cq_name, priority, estimator, fit.only_kind))
            continue
        waiting += 1
        ckpts = tuple(cache.job_checkpoints(rec.key)) if rec.key in cache.checkpoints_by_job else ()
        if (entry.job is None or entry.cq_name != cq_name or entry.priority != priority
                or len(entry.checkpoints) != len(ckpts)
                or any(a is not b for a, b in zip(entry.checkpoints, ckpts, strict=True))):
            entry.job = engine_job(cache, rec, cq_name, priority, estimator, fit.only_kind)
            entry.cq_name, entry.priority, entry.checkpoints = cq_name, priority, ckpts
        jobs.append(entry.job)
    if memo is not None:
        memo.prune(waiting, cache.jobs)

    accounted: set[str] = set()
    for j in jobs:
        if j.state is JobState.ADMITTED:
            attempt = int(cache.jobs[j.key].status.get("attempt") or 0)
            accounted.update(p.key for p in cache.job_pods(j.key) if p.attempt == attempt)
    other: dict[str, dict[str, int]] = {}
    for pod in cache.pods.values():
        if pod.node is None or pod.phase in POD_DONE_PHASES or pod.key in accounted:
            continue
        use = other.setdefault(pod.node, {})
        for r, q in pod.requests.items():
            use[r] = use.get(r, 0) + q
    parts = memo.parts if memo is not None else _Parts()

    def node(n: NodeRecord) -> Node:
        labels = n.labels if n.labels.get(NODE_KIND_LABEL) == n.kind else {**n.labels, NODE_KIND_LABEL: n.kind}
        return Node(n.name, n.allocatable, labels, _taints(n.taints), n.ready, n.unschedulable, other.get(n.name, {}))

    def flavor(f: FlavorRecord) -> Flavor:
        return Flavor(f.name, f.node_labels, _taints(f.node_taints), _tolerations(f.tolerations))

    nodes = parts.tuple_of("nodes", [
        parts.one(("node", n.name), (n, tuple(sorted(other.get(n.name, {}).items()))), partial(node, n))
        for n in sorted(cache.nodes.values(), key=lambda n: n.name)])
    flavors = parts.tuple_of("flavors", [parts.one(("flavor", f.name), (f,), partial(flavor, f))
                                         for f in sorted(cache.flavors.values(), key=lambda f: f.name)])
    queues = parts.tuple_of("queues", [
        q for q in (parts.one(("queue", name), (cache.cluster_queues[name],), partial(cluster_queue, cache, name))
                    for name in sorted(cache.cluster_queues)) if q is not None])
    return Snapshot(nodes, flavors, queues, tuple(jobs)), unq


class _Parts:
    """The snapshot's nodes, flavors and queues kept between builds: an object is rebuilt only when its
    record (replaced by the cache on every change) or its inputs changed, and a tuple is the very same
    tuple while its elements are — so the engine's node index and its accounting of running jobs carry
    over from one cycle to the next without comparing every element (engine/carry.py)."""

    def __init__(self) -> None:
        self._objects: dict[tuple[str, str], tuple[tuple[Any, ...], Any]] = {}
        self._tuples: dict[str, tuple[Any, ...]] = {}

    def one(self, key: tuple[str, str], inputs: tuple[Any, ...], make: Callable[[], T]) -> T:
        kept = self._objects.get(key)
        if kept is not None and len(kept[0]) == len(inputs) and all(
                a is b or (type(a) is tuple and a == b) for a, b in zip(kept[0], inputs, strict=True)):
            return kept[1]  # type: ignore[no-any-return]
        made = make()
        self._objects[key] = (inputs, made)
        return made

    def tuple_of(self, kind: str, items: list[T]) -> tuple[T, ...]:
        last = self._tuples.get(kind)
        if last is not None and len(last) == len(items) and all(a is b for a, b in zip(last, items, strict=True)):
            return last
        new = self._tuples[kind] = tuple(items)
        if len(self._objects) > 4 * (sum(len(t) for t in self._tuples.values()) + 16):  # deleted objects
            live = {id(o) for t in self._tuples.values() for o in t}
            self._objects = {k: v for k, v in self._objects.items() if id(v[1]) in live}
        return new


def checkpoint_runtime(cache: Cache, name_key: str) -> float:
    rec = cache.checkpoints.get(name_key)
    if rec is None:
        return 0.0
    return rec.kept_run_time
