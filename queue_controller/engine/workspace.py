"""The cycle workspace: what one decision cycle knows, and changes, while it walks the pending jobs.

A cycle starts from the snapshot: node capacity (`placement.Capacity`), quota usage (`quota.QuotaLedger`),
and the jobs already admitted, accounted as `Running` entries. The rules then read and change it:
`fit` consumes capacity and quota, `backfill` keeps one capacity `Profile` per flavor, `preemption`
marks victims, `periodic_checkpoints` emits checkpoints, and every decision goes to `out`.

The workspace sits at the bottom of the engine: it imports no rule module, and each rule module imports
it (and the rules below it), never the loop in `scheduler.py`. That is what lets the rules live in
modules of their own without import cycles.

What-if state. Preemption has to ask "would the job fit if these jobs were gone?". `lift(run)` takes a
running job's pods off their nodes and its usage off the quota ledger; `restore(run)` puts them back,
exactly. These are Kueue's cache snapshot `RemoveWorkload` / `AddWorkload`. While a what-if is open,
`cap.speculative` is above zero so that nothing learned then (failed shapes) is remembered as a fact
of the cycle.

Carried state. What the next snapshot does not change (the node index, the running jobs' accounting,
the queue order) is taken over from the last cycle through a `Carry` (carry.py): a cache whose absence
changes no decision.

Per-queue policy lookups. A policy profile gives defaults; a ClusterQueue's own fields (queueing
strategy, backfill, reservation depth, preemption rules) refine them. The lookups here are the one place
that merges the two.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import attrgetter, is_, not_
from typing import Any

from queue_controller.engine.carry import Account, Accounting, Carry
from queue_controller.engine.decisions import Decisions, PendingReason
from queue_controller.engine.ordering import Share, dominant_share, order_key
from queue_controller.engine.placement import Capacity
from queue_controller.engine.policy import Policy, PreemptionMode
from queue_controller.engine.profile import INF, Profile
from queue_controller.engine.quota import FR, QuotaLedger
from queue_controller.engine.snapshot import (
    ClusterQueue,
    Job,
    JobState,
    PodSet,
    QueueingStrategy,
    ReclaimWithinCohort,
    ResourceGroup,
    Snapshot,
    WithinClusterQueue,
)

# A job that overran its runtime estimate is assumed to end within this long (Slurm's bf_resolution).
OVERRUN_GRACE_S = 60.0

# The pending reasons that more room would cure: only jobs blocked this way may preempt or get a
# reservation. (A set, also because looking up an enum member costs more than a set lookup.)
NEEDS_ROOM = frozenset({PendingReason.QUOTA, PendingReason.CAPACITY})

_state_of = attrgetter("state")
_key_of = attrgetter("key")

# Why a pending job waits: (reason, message, reserved start). Turned into `Waiting` records, with
# positions in queue order, at the end of the cycle.
WaitReason = tuple[PendingReason, str, float | None]


@dataclass(slots=True)
class Running:
    """A job that holds (or will hold) resources during this cycle: admitted before it, or admitted or
    promised room by it."""

    job: Job
    delta: dict[FR, int]  # its quota usage
    nodes: list[tuple[str, Mapping[str, int]]]  # (node, per-pod requests), one entry per pod
    end: float  # estimated end, INF when unknown
    by_flavor: dict[str, dict[str, int]] = field(default_factory=dict)  # aggregate requests per flavor


@dataclass(slots=True)
class QueueState:
    """What the walk has learned about one ClusterQueue so far, and its policy settings, looked up once."""

    strict: bool = False  # StrictFIFO (`Workspace.strict`)
    backfill: bool = False  # reservations and backfill (`Workspace.backfill_enabled`)
    depth: int = 1  # reservations per cycle (`Workspace.reservation_depth`)
    hard_blocked: bool = False  # StrictFIFO head blocked without a reservation
    deferred: bool = False  # a job was set aside for the borrowing pass: the rest of the queue follows it
    reservations: int = 0
    preemption_attempts: int = 0
    # A job of the queue needed room and got none this cycle: under fair sharing the jobs behind it may not
    # preempt other queues' jobs (the room would fit it first; fair_share.py).
    unserved: bool = False
    blocked_why: WaitReason | None = None  # what every job behind a hard-blocked head waits for


class Workspace:
    """The mutable state of one cycle, built from a snapshot. Rules change it; the loop reads `out`."""

    def __init__(self, snapshot: Snapshot, now: float, policy: Policy, carry: Carry | None = None) -> None:
        """`carry`: what earlier cycles left (carry.py); None: nothing, every part is worked out afresh."""
        if carry is None:
            carry = Carry()
        self.now = now
        self.policy = policy
        self.out = Decisions()
        self.queues: dict[str, ClusterQueue] = {q.name: q for q in snapshot.cluster_queues}
        self.flavors = {f.name: f for f in snapshot.flavors}
        self.cap = Capacity(snapshot.nodes, snapshot.flavors, carry.node_index(snapshot.nodes, snapshot.flavors))
        self.ledger = QuotaLedger(snapshot.cluster_queues)
        self.qstate: dict[str, QueueState] = {
            name: QueueState(self.strict(q), self.backfill_enabled(q), self.reservation_depth(q))
            for name, q in self.queues.items()
        }
        self.preemption_budget = policy.preemption_attempts_per_queue
        self.profiles: dict[str, Profile] = {}  # per flavor, built on first use (backfill.profile)
        self.running: dict[str, Running] = {}  # admitted before this cycle, by job key
        self.claimed: set[str] = set()  # victims (new or in flight) that some beneficiary counts on
        self.victims: set[str] = set()  # chosen this cycle
        self.admitted_now: list[Running] = []  # admitted, or promised room, by this cycle
        # Running jobs whose estimated end this cycle moved (victims: gone once checkpointed), and per
        # share group the running jobs by their ends as the cycle began (backfill.quota_start).
        self.ended_early: list[Running] = []
        self.release_order: dict[str, list[tuple[float, str, Running]]] = {}
        # Per share group, its running jobs that could be checkpointed (backfill.checkpointable_victims).
        self.checkpointable_runs: dict[str, list[Running]] = {}
        self.preempting = policy.preemption.mode is not PreemptionMode.NEVER
        self.predicting = policy.backfill.runtime_predictions.enabled  # `remaining`
        self.node_mtbf_s = snapshot.node_mtbf_s
        self.why: dict[str, WaitReason] = {}
        # Memos. Capacity and quota only shrink during the main pass, so a shape that failed stays failed
        # (Kueue's equivalence hashing): jobs of one shape in one queue that did not fit, and the highest
        # priority for which a shape found no victims.
        self.failed_fit: dict[tuple[object, ...], PendingReason] = {}
        self.failed_preemption: dict[tuple[object, ...], int] = {}
        self.pool_nodes: dict[tuple[str, ...], frozenset[str]] = {}  # flavors -> their pools' nodes
        # Per share group, its running jobs in victim order (the preemption rule's, kept here so that it
        # is computed once per cycle: the order does not depend on the preemptor).
        self.victim_ranking: dict[str, Any] = {}
        self._group_cache: dict[tuple[str, tuple[str, ...]], ResourceGroup | None] = {}
        # What decides whether a job fits, without its identity, as a number: equal shapes fit (or fail)
        # alike, and the memos are per (queue, shape) (`Carry.shape`).
        self.shape: Callable[[Job], int] = carry.shape

        # Split and keyed by C-level iteration (map, compress, zip): these run over every job each cycle.
        jobs = snapshot.jobs
        is_pending = list(map(is_, map(_state_of, jobs), repeat(JobState.PENDING, len(jobs))))
        pending = list(compress(jobs, is_pending))
        admitted = list(compress(jobs, map(not_, is_pending)))
        carry.begin(len(pending))
        # (queue, shape) -> why the queue can never admit such a job, or None (fit.inadmissible); the
        # pairs the last cycle found admissible under the same queues to begin with.
        self.inadmissible: dict[tuple[str, int], WaitReason | None] = dict.fromkeys(
            carry.admissible_for(snapshot.cluster_queues))
        # `shape`'s own memo, for the walk's fast path to look a job up without a call (scheduler._walk).
        self.shape_of: Mapping[str, tuple[Job, int]] = carry.shape_of
        admitted.sort(key=order_key)
        self._account_all(snapshot, admitted, carry)
        # Preemption candidates: running jobs by the group they may be preempted within, and the jobs
        # already being vacated (free room soon, at no extra cost).
        self.by_group: dict[str, list[Running]] = {}
        self.vacating: list[Running] = []
        self.owners: set[str] = set()  # jobs that victims being vacated were preempted for
        for run in self.running.values():
            if run.job.vacating:
                self.vacating.append(run)
                if run.job.preempted_for is not None:
                    self.owners.add(run.job.preempted_for)
            else:
                self.by_group.setdefault(self.share_group(run.job.cluster_queue), []).append(run)
        keys = list(map(_key_of, pending))
        by_key = dict(zip(keys, pending, strict=True))
        self.waiting: Set[str] = by_key.keys()  # the pending jobs' keys
        if len(by_key) == len(pending):
            # The last cycle's order, with the jobs that arrived or moved inserted (carry.py).
            self.pending = carry.queue_order(pending, by_key, keys)
        else:
            # Duplicate keys (never from the adapters): sorted afresh, nothing carried. Under fair sharing
            # the loop takes the queues' heads in share order (fair_sharing.py); each queue's jobs are
            # still in this order.
            carry.forget_order()
            pending.sort(key=order_key)
            self.pending = pending
        # Fair sharing's book: each queue's usage as its share sees it. The ledger's usage, less the jobs
        # being vacated (their room is promised elsewhere), plus the jobs promised room by preemption
        # (which the ledger only partly holds while their victims still do). Kept only under fair sharing.
        self.fair = policy.fair_sharing.enabled
        self.share_usage: dict[str, dict[FR, int]] = {}
        self.share_touched: set[str] = set()  # queues whose book moved since the admission order looked
        if self.fair:
            self.share_usage = {name: dict(self.ledger.usage[name]) for name in self.queues}
            for run in self.vacating:
                self.charge_share(run.job.cluster_queue, run.delta, -1)

    # ---- fair sharing -----------------------------------------------------------------------------

    def charge_share(self, cq: str, delta: Mapping[FR, int], sign: int = 1) -> None:
        """Add (or take away) usage in fair sharing's book (`share_usage`)."""
        usage = self.share_usage.get(cq)
        if usage is None:
            return
        self.share_touched.add(cq)
        for fr, q in delta.items():
            usage[fr] = usage.get(fr, 0) + sign * q

    def share(self, cq: str, plus: Mapping[FR, int] | None = None, minus: Mapping[FR, int] | None = None) -> Share:
        """`cq`'s dominant resource share now, or with `plus` admitted and `minus` gone."""
        usage: Mapping[FR, int] = self.share_usage.get(cq, {})
        if plus or minus:
            changed = dict(usage)
            for delta, sign in ((plus, 1), (minus, -1)):
                for fr, q in (delta or {}).items():
                    changed[fr] = changed.get(fr, 0) + sign * q
            usage = changed
        return dominant_share(self.ledger, cq, usage)

    # ---- setup ------------------------------------------------------------------------------------

    def _account_all(self, snapshot: Snapshot, admitted: list[Job], carry: Carry) -> None:
        """Account every job admitted before this cycle (in queue order), starting from what the last
        cycle accounted on the same nodes, flavors and queues (carry.py): then only the jobs that changed
        (started, left, or became a different job) are worked out again."""
        source = (snapshot.nodes, snapshot.flavors, snapshot.cluster_queues)
        carried = carry.accounting_for(source)
        free = self.cap.free
        usage: dict[str, dict[FR, int]] = {}
        accounts: dict[str, Account] = {}
        by_key = {job.key: job for job in admitted}
        unique = len(by_key) == len(admitted)
        if carried is not None and unique:
            # Start from the free capacity and usage after the last cycle's accounting; take out the jobs
            # that are gone or changed. An equal Job (the controller's, converted afresh) is the same job.
            for name, f in carried.free.items():
                free[name] = dict(f)
            usage = {q: dict(u) for q, u in carried.usage.items()}
            for key, kept in carried.accounts.items():
                now_job = by_key.get(key)
                if now_job is kept.job or (now_job is not None and now_job == kept.job):
                    accounts[key] = kept
                    continue
                for node, req in kept.nodes:
                    f = free[node]
                    for r, q in req.items():
                        f[r] = f.get(r, 0) + q
                if kept.delta:
                    u = usage[kept.job.cluster_queue]
                    for fr, q in kept.delta.items():
                        u[fr] -= q
            carry.how["accounting"] = "carried"
        else:
            carried = None
            carry.how["accounting"] = "built"
        for job in admitted:
            acct = accounts.get(job.key) if carried is not None else None
            if acct is None:
                acct = accounts[job.key] = self._account_running(job, usage)
            self.running[job.key] = Running(job, acct.delta, acct.nodes, self._end(job), acct.by_flavor)
        carry.accounting = (Accounting(source, accounts, {n: dict(f) for n, f in free.items()},
                                       {q: dict(u) for q, u in usage.items()}) if unique else None)
        # Charged once per queue: the cohort's pool accounting telescopes, so the sum is the same.
        for name, total in usage.items():
            if name in self.queues:
                self.ledger.add(name, total)

    def _account_running(self, job: Job, usage: dict[str, dict[FR, int]]) -> Account:
        """Account a job admitted before this cycle: its pods on their nodes, its quota usage added to
        `usage` (per queue, for the ledger). Written for speed: it runs for every job that started since
        the last cycle, and for every running job when nothing is carried over."""
        delta: dict[FR, int] = {}
        nodes: list[tuple[str, Mapping[str, int]]] = []
        by_flavor: dict[str, dict[str, int]] = {}
        sets = job.pod_sets
        cq = job.cluster_queue
        known = cq in self.queues
        covered = self.ledger.limits_of(cq) if known else {}
        free = self.cap.free
        for pl in job.placement:
            # Almost every job has one pod set: find it without building a dict.
            ps: PodSet | None = sets[0] if sets else None
            if ps is None or ps.name != pl.name:
                ps = next((p for p in sets if p.name == pl.name), None)
                if ps is None:
                    continue
            requests = ps.requests
            flavor = pl.flavor
            pods = len(pl.nodes)
            agg = by_flavor.get(flavor)
            if agg is None:
                agg = by_flavor[flavor] = {}
            for r, q in requests.items():
                total = q * pods
                agg[r] = agg.get(r, 0) + total
                fr = (flavor, r)
                if fr in covered:
                    delta[fr] = delta.get(fr, 0) + total
            # `cap.consume`, inlined: nothing has asked the capacity for its index yet.
            for node in pl.nodes:
                f = free.get(node)
                if f is not None:
                    for r, q in requests.items():
                        f[r] = f.get(r, 0) - q
                    nodes.append((node, requests))
        if delta:
            acc = usage.get(cq)
            if acc is None:
                acc = usage[cq] = {}
            for fr, q in delta.items():
                acc[fr] = acc.get(fr, 0) + q
        return Account(job, delta, nodes, by_flavor)

    def _end(self, job: Job) -> float:
        """A running job's estimated end: INF when unknown, a grace period from now once overrun."""
        now = self.now
        if job.vacating:
            return now + job.checkpoint_cost_s
        rem = self.remaining(job)
        if rem is None:
            return INF
        end = (job.started_at if job.started_at is not None else now) + rem
        return now + OVERRUN_GRACE_S if end <= now else end

    # ---- facts about jobs -------------------------------------------------------------------------

    def remaining(self, job: Job) -> float | None:
        """Estimated seconds of work left (the policy's default estimate when the job gives none), or
        None when unknown, not counting the current run (callers measure it from `started_at`).

        Under a policy with runtime predictions, the adapter's learned prediction stands in for the
        estimate until the job has run past it (queue_controller/predictions.py). Past it the user's
        estimate holds again, as in Tsafrir et al.'s scheme: an underpredicted job is then planned by the
        bound its user gave, not assumed to be about to end cycle after cycle (`OVERRUN_GRACE_S`)."""
        pred = job.runtime_prediction_s
        if pred is not None and self.predicting:
            done = job.run_time_s
            if job.started_at is not None:
                done += self.now - job.started_at
            if done < pred:
                return max(pred - job.run_time_s, 0.0)
        est = job.runtime_estimate_s
        if est is None:
            est = self.policy.backfill.default_runtime_estimate_seconds
        if est is None:
            return None
        return max(est - job.run_time_s, 0.0)

    def share_group(self, cq_name: str) -> str:
        """Jobs that can preempt one another share a queue or a cohort."""
        cq = self.queues.get(cq_name)
        if cq is not None and cq.cohort is not None:
            return "cohort/" + cq.cohort
        return "queue/" + cq_name

    # ---- per-queue policy lookups -----------------------------------------------------------------

    def strict(self, cq: ClusterQueue) -> bool:
        return self.policy.strict_fifo or cq.queueing_strategy is QueueingStrategy.STRICT_FIFO

    def backfill_enabled(self, cq: ClusterQueue) -> bool:
        return cq.backfill_enabled if cq.backfill_enabled is not None else self.policy.backfill.enabled

    def reservation_depth(self, cq: ClusterQueue) -> int:
        return cq.reservation_depth if cq.reservation_depth is not None else self.policy.backfill.reservation_depth

    def within(self, cq: ClusterQueue) -> WithinClusterQueue:
        return cq.within_cluster_queue or self.policy.preemption.within_cluster_queue

    def reclaim(self, cq: ClusterQueue) -> ReclaimWithinCohort:
        return cq.reclaim_within_cohort or self.policy.preemption.reclaim_within_cohort

    def group_for(self, cq: ClusterQueue, resources: tuple[str, ...]) -> ResourceGroup | None:
        """The resource group covering most of a pod set's requested resources (one flavor per pod set)."""
        key = (cq.name, resources)
        if key not in self._group_cache:
            best: ResourceGroup | None = None
            best_n = 0
            for g in cq.resource_groups:
                n = sum(1 for r in resources if r in g.covered_resources)
                if n > best_n:
                    best, best_n = g, n
            self._group_cache[key] = best
        return self._group_cache[key]

    # ---- what-if ----------------------------------------------------------------------------------

    def lift(self, run: Running) -> None:
        """Take a running job off its nodes and out of its queue's usage, as if it were gone."""
        for node, req in run.nodes:
            self.cap.release(node, req)
        if run.job.cluster_queue in self.queues:
            self.ledger.remove(run.job.cluster_queue, run.delta)

    def restore(self, run: Running) -> None:
        """Undo `lift`."""
        for node, req in run.nodes:
            self.cap.consume(node, req)
        if run.job.cluster_queue in self.queues:
            self.ledger.add(run.job.cluster_queue, run.delta)

    # ---- output -----------------------------------------------------------------------------------

    def wake(self, t: float) -> None:
        """Ask to be called again at `t` at the latest."""
        if self.out.next_wakeup is None or t < self.out.next_wakeup:
            self.out.next_wakeup = t
