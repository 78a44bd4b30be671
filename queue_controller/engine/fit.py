"""Fit: flavor assignment and gang placement of one job, within quota (Kueue's flavorassigner).

Each pod set is charged to one flavor. The resource group covering most of the pod set's requested
resources lists the candidate flavors, in order; the first flavor where the queue's quota (cohort
included) has room *and* the flavor's nodes can hold every pod of the pod set wins (Kueue's default
flavor fungibility). Pods go onto concrete nodes by best fit (`placement.Capacity.place`).

A job is a gang: every pod of every pod set is placed, or none is. On failure nothing stays consumed and
the most telling reason over the flavors tried comes back, in this order of preference: some flavor had
quota but no set of nodes with room (`InsufficientCapacity`), some flavor had no quota
(`InsufficientQuota`), a pod is larger than any matching node (`NeverFits`), no node matches
(`NoMatchingNodes`).

Capacity and quota only shrink while the cycle walks the queue, so a shape that failed once in a queue
fails again: failures are memoized per (queue, shape), outside preemption's what-ifs.

Inadmissible jobs (`inadmissible`, asked before anything else): a job its queue can never admit as the
queue is configured, whatever runs or leaves. As Kueue's flavor assigner:
- a pod asks for a resource that no resource group of the ClusterQueue covers (`ResourceNotCovered`).
  Quota is charged only for covered resources, so such a job would otherwise take, say, GPUs from a queue
  that has quota for cpu and memory only, and never be charged for them;
- a pod set asks, in all, more of some resource than the queue could ever hold in *every* flavor it
  could use (`NeverFitsQuota`): more than its nominal quota without a cohort, or than its guaranteed
  part plus the cohort's whole pool, within its borrowing limit (`QuotaLedger.ceiling`). Waiting as
  `InsufficientQuota` it would wait forever, and would hold a reservation that delays other jobs.
Either way the job holds nothing: it does not preempt, reserve, or block a StrictFIFO queue. It is
asked again each cycle, so a queue given more quota admits it. (Pod sets are checked one by one: two
that each fit the ceiling but not together still wait as `InsufficientQuota`.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from queue_controller.engine.decisions import PendingReason
from queue_controller.engine.quota import FR
from queue_controller.engine.snapshot import ClusterQueue, Job, PodSet, PodSetPlacement
from queue_controller.engine.workspace import WaitReason, Workspace


@dataclass(slots=True)
class Fit:
    """Where a job would run, and what it charges."""

    placement: tuple[PodSetPlacement, ...]
    delta: dict[FR, int]  # quota usage
    by_flavor: dict[str, dict[str, int]]  # aggregate requests per flavor, for backfill profiles


def inadmissible(ws: Workspace, job: Job, cq: ClusterQueue) -> WaitReason | None:
    """Why `cq` can never admit `job` as configured, or None. Depends only on the job's shape and the
    queue, so it is worked out once per (queue, shape) and cycle."""
    key = (cq.name, ws.shape(job))
    known = ws.inadmissible.get(key, UNSEEN)
    if known is UNSEEN:
        known = ws.inadmissible[key] = _inadmissible(ws, job, cq)
    return known


# Not in the memo yet (compared by identity).
UNSEEN: WaitReason = (PendingReason.QUOTA, "not looked at yet", None)


def _inadmissible(ws: Workspace, job: Job, cq: ClusterQueue) -> WaitReason | None:
    covered = {r for g in cq.resource_groups for r in g.covered_resources}
    for ps in job.pod_sets:
        for r in requested(ps):
            if r not in covered:
                return (PendingReason.RESOURCE_NOT_COVERED,
                        f"pod set {ps.name!r} asks for {r}, and ClusterQueue {cq.name!r} has no quota for it", None)
    ledger = ws.ledger
    for ps in job.pod_sets:
        group = ws.group_for(cq, requested(ps))
        if group is None:
            continue
        short: list[str] = []
        for fq in group.flavors:
            # The resources this flavor charges (as `_fit_uncached`), the first the queue cannot hold.
            for r in requested(ps):
                fr = (fq.name, r)
                if not ledger.covers(cq.name, fq.name, r):
                    continue
                total = ps.requests[r] * ps.count
                most = ledger.ceiling(cq.name, fr)
                if total > most:
                    short.append(f"asks {_amount(total)} {r}, the queue can hold at most {_amount(most)} "
                                 f"of it in flavor {fq.name}")
                    break
            else:
                break  # this flavor could hold the pod set
        else:
            if short:
                return (PendingReason.NEVER_FITS_QUOTA,
                        f"pod set {ps.name!r} never fits ClusterQueue {cq.name!r}: " + "; ".join(short), None)
    return None


def _amount(milli: int) -> str:
    """An amount in whole units (bytes for memory), as a person would read it."""
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli / 1000:g}"


def requested(ps: PodSet) -> tuple[str, ...]:
    """The resources a pod set actually asks for, sorted: what picks its resource group."""
    return tuple(sorted(r for r, q in ps.requests.items() if q > 0))


def find_fit(ws: Workspace, job: Job, cq: ClusterQueue, commit: bool) -> Fit | PendingReason:
    """Find flavors and nodes for every pod of the job within quota. Consumes capacity (and quota
    when `commit`); on failure changes nothing and returns the most telling reason."""
    memo = None
    if commit and not ws.cap.speculative:
        memo = (cq.name, ws.shape(job))
        known = ws.failed_fit.get(memo)
        if known is not None:
            return known
    result = _fit_uncached(ws, job, cq, commit)
    if memo is not None and not isinstance(result, Fit):
        ws.failed_fit[memo] = result
    return result


def _fit_uncached(ws: Workspace, job: Job, cq: ClusterQueue, commit: bool) -> Fit | PendingReason:
    cap = ws.cap
    ledger = ws.ledger
    placed: list[tuple[PodSetPlacement, Mapping[str, int]]] = []
    delta: dict[FR, int] = {}
    by_flavor: dict[str, dict[str, int]] = {}
    for index, ps in enumerate(job.pod_sets):
        group = ws.group_for(cq, requested(ps))
        reason = PendingReason.QUOTA if group is None else PendingReason.NO_MATCHING_NODES
        done = False
        for fq in group.flavors if group is not None else ():
            pool = cap.pools.get(fq.name)
            flavor = ws.flavors.get(fq.name)
            if pool is None or flavor is None or not pool.nodes:
                continue
            ps_delta = {(fq.name, r): q * ps.count for r, q in ps.requests.items()
                        if q > 0 and ledger.covers(cq.name, fq.name, r)}
            merged = ps_delta  # the first pod set's (almost every job has one): nothing to add it to
            if delta:
                merged = dict(delta)
                for k, v in ps_delta.items():
                    merged[k] = merged.get(k, 0) + v
            if not ledger.fits(cq.name, merged):
                if reason is not PendingReason.CAPACITY:
                    reason = PendingReason.QUOTA
                continue
            cands = cap.candidates(pool, ps, flavor.tolerations, job.restore_node_labels)
            if not cands:
                continue
            if cap.never_fits(pool, ps.requests):
                if reason is PendingReason.NO_MATCHING_NODES:
                    reason = PendingReason.UNSATISFIABLE
                continue
            shape = None
            if index == 0 and not ps.node_selector and not ps.tolerations and not job.restore_node_labels:
                shape = (fq.name,)
            nodes = cap.place(cands, ps.requests, ps.count, shape)
            if nodes is None:
                reason = PendingReason.CAPACITY
                continue
            placed.append((PodSetPlacement(ps.name, fq.name, tuple(nodes)), ps.requests))
            delta = merged
            agg = by_flavor.setdefault(fq.name, {})
            for r, q in ps.requests.items():
                agg[r] = agg.get(r, 0) + q * ps.count
            done = True
            break
        if not done:
            for pl, req in placed:
                cap.unplace(pl.nodes, req)
            return reason
    if commit:
        ledger.add(cq.name, delta)
    else:
        for pl, req in placed:
            cap.unplace(pl.nodes, req)
    return Fit(tuple(pl for pl, _ in placed), delta, by_flavor)


def release(ws: Workspace, job: Job, fit: Fit) -> None:
    """Undo a committed `fit`: give back its nodes and its quota."""
    reqs = {ps.name: ps.requests for ps in job.pod_sets}
    for pl in fit.placement:
        ws.cap.unplace(pl.nodes, reqs[pl.name])
    ws.ledger.remove(job.cluster_queue, fit.delta)


@dataclass(slots=True)
class Room:
    """Some nodes a job could be placed on, and how much of one resource is free there."""

    nodes: frozenset[str]
    free: int


def pool_free(ws: Workspace, job: Job, cq: ClusterQueue, resource: str) -> list[Room]:
    """Free amount of `resource` where the job could go: one entry per flavor for a job of one pod set
    (it is placed in one flavor, whole), one over every flavor's nodes otherwise. The job fits only if
    some entry has its whole request of the resource free."""
    keys: list[tuple[str, ...]]
    if len(job.pod_sets) == 1:
        group = ws.group_for(cq, requested(job.pod_sets[0]))
        keys = [(fq.name,) for fq in (group.flavors if group is not None else ())]
    else:
        flavors: set[str] = set()
        for ps in job.pod_sets:
            group = ws.group_for(cq, requested(ps))
            flavors.update(fq.name for fq in (group.flavors if group is not None else ()))
        keys = [tuple(sorted(flavors))]
    return [Room(names, _free_in(ws, names, resource)) for names in (_nodes_of(ws, key) for key in keys)]


def _nodes_of(ws: Workspace, key: tuple[str, ...]) -> frozenset[str]:
    """The nodes of these flavors' pools."""
    names = ws.pool_nodes.get(key)
    if names is None:
        found: set[str] = set()
        for f in key:
            pool = ws.cap.pools.get(f)
            if pool is not None:
                found.update(pool.nodes)
        names = ws.pool_nodes[key] = frozenset(found)
    return names


def _free_in(ws: Workspace, names: frozenset[str], resource: str) -> int:
    free = ws.cap.free
    total = 0
    # Only nodes with some of it free count: walk whichever of them and the pools' nodes is smaller.
    order = ws.cap.by_free(resource)
    if len(order) < len(names):
        for q, n in order:
            if n in names:
                total += q
    else:
        for n in names:
            q = free[n].get(resource, 0)
            if q > 0:
                total += q
    return total
