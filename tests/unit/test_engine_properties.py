"""Property tests of the engine's invariants over random clusters, queues and jobs, run for several
cycles with the decisions applied between them (admit, preempt, finish, resume)."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queue_controller.engine import (
    GPU,
    Admit,
    Checkpoint,
    ClusterQueue,
    Decisions,
    Flavor,
    FlavorQuotas,
    Job,
    JobState,
    Node,
    PendingReason,
    PodSet,
    Policy,
    Preempt,
    PreemptMode,
    PreemptReason,
    Quota,
    ResourceGroup,
    Resume,
    Snapshot,
    WithinClusterQueue,
    decide,
)
from queue_controller.engine.ordering import order_key
from queue_controller.policies import load_policy

pytestmark = pytest.mark.unit

M = 1000
INADMISSIBLE = (PendingReason.RESOURCE_NOT_COVERED, PendingReason.NEVER_FITS_QUOTA)
POLICIES = {name: load_policy(name) for name in ("fifo", "kueue", "easy", "iass", "fair")}
FLAVORS = (Flavor("h100", {"f": "h100"}), Flavor("a100", {"f": "a100"}))
RES = ("cpu", GPU)


@st.composite
def clusters(draw: st.DrawFn, ample_quota: bool = False,
             one_flavor: bool = False) -> tuple[list[Node], list[ClusterQueue], list[Job]]:
    nodes = []
    for i in range(draw(st.integers(1, 5))):
        fl = "h100" if one_flavor else draw(st.sampled_from(("h100", "a100")))
        gpus = draw(st.sampled_from((4, 8)))
        other = {GPU: draw(st.sampled_from((0, 0, 0, 1))) * M}
        nodes.append(Node(f"n{i}", {"cpu": 32 * M, GPU: gpus * M}, {"f": fl}, other_usage=other,
                          ready=draw(st.booleans()) or i == 0))
    queues = []
    for q in range(draw(st.integers(1, 3))):
        cohort = draw(st.sampled_from((None, "c")))
        order = draw(st.permutations(("h100", "a100")))
        fqs = []
        for fl in order:
            res = {}
            for r in RES:
                nominal = 1000 if ample_quota else draw(st.integers(0, 16))
                borrow = None if cohort is None else draw(st.sampled_from((None, 0, 4)))
                lend = None if cohort is None else draw(st.sampled_from((None, 0, nominal // 2)))
                res[r] = Quota(nominal * M, None if borrow is None else borrow * M, None if lend is None else lend * M)
            fqs.append(FlavorQuotas(fl, res))
        within = draw(st.sampled_from((None, *WithinClusterQueue)))
        queues.append(ClusterQueue(f"q{q}", (ResourceGroup(RES, tuple(fqs)),), cohort=cohort,
                                   within_cluster_queue=within))
    jobs = []
    for j in range(draw(st.integers(1, 12))):
        pods = draw(st.integers(1, 3))
        ps = PodSet("main", pods, {"cpu": draw(st.integers(1, 8)) * M, GPU: draw(st.integers(0, 8)) * M})
        jobs.append(Job(
            f"ns/j{j}", draw(st.sampled_from([q.name for q in queues] + ["q-missing"])),
            draw(st.integers(0, 3)), float(draw(st.integers(0, 50))), (ps,),
            checkpointable=draw(st.booleans()), checkpoint_cost_s=float(draw(st.integers(0, 30))),
            restore_cost_s=5.0, runtime_estimate_s=draw(st.sampled_from((None, 50.0, 300.0))),
            checkpoint_interval_s=draw(st.sampled_from((None, 60.0))),
        ))
    return nodes, queues, jobs


def check_capacity(snap: Snapshot, jobs: Iterable[Job]) -> None:
    used: dict[str, dict[str, int]] = {n.name: dict(n.other_usage) for n in snap.nodes}
    for j in jobs:
        if j.state is not JobState.ADMITTED:
            continue
        reqs = {ps.name: ps.requests for ps in j.pod_sets}
        for pl in j.placement:
            for node in pl.nodes:
                for r, q in reqs[pl.name].items():
                    used[node][r] = used[node].get(r, 0) + q
    for n in snap.nodes:
        for r, q in used[n.name].items():
            assert q <= n.allocatable.get(r, 0) or q == n.other_usage.get(r, 0), (n.name, r, q)


def check_quota(queues: list[ClusterQueue], jobs: Iterable[Job]) -> None:
    usage: dict[str, dict[tuple[str, str], int]] = {q.name: {} for q in queues}
    for j in jobs:
        if j.state is not JobState.ADMITTED or j.cluster_queue not in usage:
            continue
        reqs = {ps.name: ps.requests for ps in j.pod_sets}
        for pl in j.placement:
            for r, q in reqs[pl.name].items():
                k = (pl.flavor, r)
                usage[j.cluster_queue][k] = usage[j.cluster_queue].get(k, 0) + q * len(pl.nodes)
    pool: dict[tuple[str, str], int] = {}
    pool_used: dict[tuple[str, str], int] = {}
    for q in queues:
        for fq in q.resource_groups[0].flavors:
            for r, quota in fq.resources.items():
                u = usage[q.name].get((fq.name, r), 0)
                if q.cohort is None:
                    assert u <= quota.nominal, (q.name, fq.name, r)
                    continue
                if quota.borrowing_limit is not None:
                    assert u <= quota.nominal + quota.borrowing_limit
                lend = quota.nominal if quota.lending_limit is None else quota.lending_limit
                pool[(fq.name, r)] = pool.get((fq.name, r), 0) + lend
                pool_used[(fq.name, r)] = pool_used.get((fq.name, r), 0) + max(0, u - (quota.nominal - lend))
    for k, v in pool_used.items():
        assert v <= pool[k], ("cohort over-committed", k)


def check_decisions(snap: Snapshot, d: Decisions, policy: Policy) -> None:
    jobs = {j.key: j for j in snap.jobs}
    queues = {q.name: q for q in snap.cluster_queues}
    victims = {p.victim for p in d.of_type(Preempt)}
    beneficiaries = {p.beneficiary for p in d.of_type(Preempt)}
    assert not victims & beneficiaries
    started = set()
    for a in d.actions:
        if isinstance(a, Admit | Resume):
            j = jobs[a.job]
            assert j.state is JobState.PENDING and a.job not in started
            started.add(a.job)
            # Gang: every pod set, every pod, or nothing.
            assert {pl.name for pl in a.placement} == {ps.name for ps in j.pod_sets}
            for pl in a.placement:
                (ps,) = [p for p in j.pod_sets if p.name == pl.name]
                assert len(pl.nodes) == ps.count
            assert a.job not in d.waiting
        elif isinstance(a, Preempt):
            v, b = jobs[a.victim], jobs[a.beneficiary]
            assert v.state is JobState.ADMITTED and not v.vacating
            assert b.state is JobState.PENDING
            if a.mode is PreemptMode.CHECKPOINT:
                assert v.checkpointable and policy.preemption.mode.value == "Checkpoint"
            if a.reason is PreemptReason.IN_CLUSTER_QUEUE:
                assert v.cluster_queue == b.cluster_queue
                # Never an equal or higher priority unless the queue allows newer equal ones.
                assert v.priority < b.priority or (
                    v.priority == b.priority and order_key(b) < order_key(v)
                    and queues[b.cluster_queue].within_cluster_queue
                    in (WithinClusterQueue.LOWER_OR_NEWER_EQUAL_PRIORITY, None)
                )
                assert order_key(b) < order_key(v)  # edges only go down the order: no cycles
            elif a.reason is PreemptReason.RESERVATION_DUE:
                assert v.backfilled and order_key(b) < order_key(v)
            else:
                assert v.cluster_queue != b.cluster_queue
                assert queues[v.cluster_queue].cohort == queues[b.cluster_queue].cohort is not None
        elif isinstance(a, Checkpoint):
            assert jobs[a.job].state is JobState.ADMITTED and jobs[a.job].checkpointable
    pending = {j.key for j in snap.jobs if j.state is JobState.PENDING}
    assert started | set(d.waiting) == pending
    if policy.strict_fifo:
        for a in d.actions:
            if isinstance(a, Admit | Resume):
                j = jobs[a.job]
                for w, why in d.waiting.items():
                    if why.reason in INADMISSIBLE:
                        continue  # a job its queue can never admit does not block it
                    o = jobs[w]
                    assert not (o.cluster_queue == j.cluster_queue and order_key(o) < order_key(j))


def apply(jobs: dict[str, Job], d: Decisions, now: float, policy: Policy) -> None:
    for a in d.actions:
        if isinstance(a, Admit | Resume):
            jobs[a.job] = replace(jobs[a.job], state=JobState.ADMITTED, placement=a.placement, started_at=now,
                                  admitted_at=now, backfilled=a.backfill)
        elif isinstance(a, Preempt):
            jobs[a.victim] = replace(jobs[a.victim], vacating=True)
        elif isinstance(a, Checkpoint):
            jobs[a.job] = replace(jobs[a.job], last_checkpoint_at=now, checkpoint=f"{a.job}-{now}")


def settle(jobs: dict[str, Job], rng: random.Random, now: float) -> None:
    """Victims finish leaving; some running jobs complete."""
    for key, j in list(jobs.items()):
        if j.state is not JobState.ADMITTED:
            continue
        if j.vacating:
            ran = now - (j.started_at or now)
            jobs[key] = replace(j, state=JobState.PENDING, placement=(), vacating=False, backfilled=False,
                                started_at=None, checkpoint=f"{key}-{now}" if j.checkpointable else j.checkpoint,
                                run_time_s=j.run_time_s + ran)
        elif rng.random() < 0.3:
            del jobs[key]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), st.sampled_from(sorted(POLICIES)), st.randoms(use_true_random=False),
       st.lists(st.integers(0, 200), min_size=2, max_size=5))
def test_invariants_hold_over_cycles(cluster, policy_name, rng, steps) -> None:
    nodes, queues, initial = cluster
    policy = POLICIES[policy_name]
    jobs = {j.key: j for j in initial}
    now = 100.0
    for step in steps:
        snap = Snapshot(tuple(nodes), FLAVORS, tuple(queues), tuple(jobs.values()))
        d = decide(snap, now, policy)
        check_decisions(snap, d, policy)
        apply(jobs, d, now, policy)
        check_capacity(snap, jobs.values())
        check_quota(queues, jobs.values())
        now += step
        settle(jobs, rng, now)


@settings(max_examples=80, deadline=None)
@given(clusters(), st.sampled_from(sorted(POLICIES)), st.randoms(use_true_random=False))
def test_decisions_are_deterministic_whatever_the_input_order(cluster, policy_name, rng) -> None:
    nodes, queues, jobs = cluster
    policy = POLICIES[policy_name]
    # Run a cycle first so there are running jobs to preempt and checkpoint.
    first = decide(Snapshot(tuple(nodes), FLAVORS, tuple(queues), tuple(jobs)), 0.0, policy)
    state = {j.key: j for j in jobs}
    apply(state, first, 0.0, policy)
    extra = [replace(j, key=j.key + "-late", queue_order=j.queue_order + 100, priority=j.priority + 1)
             for j in jobs]
    all_jobs = [*state.values(), *extra]
    a = decide(Snapshot(tuple(nodes), FLAVORS, tuple(queues), tuple(all_jobs)), 500.0, policy)
    shuffled_jobs = list(all_jobs)
    rng.shuffle(shuffled_jobs)
    shuffled_nodes = list(nodes)
    rng.shuffle(shuffled_nodes)
    b = decide(Snapshot(tuple(shuffled_nodes), FLAVORS, tuple(queues), tuple(shuffled_jobs)), 500.0, policy)
    assert a == b


NO_PREEMPT_EASY = POLICIES["easy"].model_copy(update={"preemption": POLICIES["fifo"].preemption})


@settings(max_examples=120, deadline=None)
@given(clusters(ample_quota=True, one_flavor=True))
def test_backfill_never_delays_the_first_reservation(cluster) -> None:
    nodes, queues, jobs = cluster
    jobs = [replace(j, runtime_estimate_s=j.runtime_estimate_s or 100.0) for j in jobs]
    # Some jobs run first, so later ones are blocked and reservations form.
    state = {j.key: j for j in jobs}
    apply(state, decide(Snapshot(tuple(nodes), FLAVORS, tuple(queues), tuple(jobs)), 0.0, NO_PREEMPT_EASY),
          0.0, NO_PREEMPT_EASY)
    late = [replace(j, key=j.key + "-late", queue_order=100.0 + j.queue_order) for j in jobs]
    state.update({j.key: j for j in late})
    snap = Snapshot(tuple(nodes), FLAVORS, tuple(queues), tuple(state.values()))
    d = decide(snap, 10.0, NO_PREEMPT_EASY)
    held = sorted((w for w in d.waiting.values() if w.reason is PendingReason.RESERVATION),
                  key=lambda w: order_key(state[w.job]))
    if not held:
        return
    first = held[0]
    apply(state, d, 10.0, NO_PREEMPT_EASY)
    again = decide(Snapshot(tuple(nodes), FLAVORS, tuple(queues), tuple(state.values())), 10.0, NO_PREEMPT_EASY)
    w = again.waiting[first.job]
    assert w.reason is PendingReason.RESERVATION
    assert w.reserved_start is not None and first.reserved_start is not None
    assert w.reserved_start <= first.reserved_start + 1e-9
