"""Work-around for an engine gap: hold the capacity a preemption plan counts on.

When a job makes room by preemption, the engine does not keep the *currently free* part of its plan
away from jobs behind it in the same cycle, so a lower job can be admitted into that free part; when the
victims are gone the preemptor still does not fit, preempts again, and the victims are re-admitted into
the room just freed - a preemption loop (reproducer in docs/simulator.md). Kueue avoids this by adding a
preemptor's request to the cycle's usage.

Until the engine does that, the simulator (when `SimConfig.hold_preempted_capacity` is on) drops
admissions that could take such a job's room, among jobs that come after it in the same ClusterQueue or
cohort:
- behind a single-pod preemptor, admissions onto nodes where a victim is still vacating (a one-pod job
  only preempts when no node has room for it, so its plan is a victim's node);
- behind a gang preemptor, every admission (its plan may also use free room on other nodes, and the
  engine does not say where).
Coarser than the engine could be, but no lower job overtakes a preemptor.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

from queue_controller.engine import Action, Admit, Decisions, Job, PendingReason, Resume
from queue_controller.engine.ordering import order_key


def hold_for_preemptors(out: Decisions, jobs: Mapping[str, Job], group_of: Mapping[str, str],
                        vacating_nodes: Set[str]) -> list[Action]:
    """`out.actions` without admissions that could take a preemptor's room. `group_of` maps a
    ClusterQueue to its cohort (or to itself when it has none); `vacating_nodes` are the nodes of jobs
    being preempted."""
    first_pod: dict[str, tuple[int, float, str]] = {}  # earliest single-pod preemptor per group
    first_gang: dict[str, tuple[int, float, str]] = {}
    for key, w in out.waiting.items():
        if w.reason is PendingReason.WAITING_FOR_PREEMPTION and key in jobs:
            job = jobs[key]
            g = group_of.get(job.cluster_queue, job.cluster_queue)
            k = order_key(job)
            first = first_pod if sum(ps.count for ps in job.pod_sets) == 1 else first_gang
            if g not in first or k < first[g]:
                first[g] = k
    if not first_pod and not first_gang:
        return list(out.actions)
    kept: list[Action] = []
    for a in out.actions:
        if isinstance(a, Admit | Resume) and a.job in jobs:
            job = jobs[a.job]
            g = group_of.get(job.cluster_queue, job.cluster_queue)
            k = order_key(job)
            if g in first_gang and k > first_gang[g]:
                continue
            if (g in first_pod and k > first_pod[g]
                    and any(n in vacating_nodes for pl in a.placement for n in pl.nodes)):
                continue
        kept.append(a)
    return kept
