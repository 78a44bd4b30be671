"""Small builders for engine snapshots in tests: whole units in, milli-units out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from queue_controller.engine import (
    GPU,
    ClusterQueue,
    Decisions,
    Flavor,
    FlavorQuotas,
    Job,
    JobState,
    Node,
    PodSet,
    PodSetPlacement,
    Quota,
    ResourceGroup,
    Snapshot,
    Taint,
    Toleration,
)
from queue_controller.policies import load_policy

M = 1000
GIB = 2**30 * M
FLAVOR_LABEL = "ckq.io/flavor"

# The shipped policy profiles.
IASS = load_policy("iass")
KUEUE = load_policy("kueue")
EASY = load_policy("easy")
FIFO = load_policy("fifo")


def node(name: str, gpus: int = 8, cpu: int = 64, mem_gib: int = 512, flavor: str = "h100",
         labels: Mapping[str, str] | None = None, taints: tuple[Taint, ...] = (), ready: bool = True,
         other: Mapping[str, int] | None = None) -> Node:
    lab = {FLAVOR_LABEL: flavor, **(labels or {})}
    return Node(name, {"cpu": cpu * M, "memory": mem_gib * GIB, GPU: gpus * M}, lab, taints, ready,
                other_usage=dict(other or {}))


def flavor(name: str = "h100", taints: tuple[Taint, ...] = (),
           tolerations: tuple[Toleration, ...] = ()) -> Flavor:
    return Flavor(name, {FLAVOR_LABEL: name}, taints, tolerations)


def queue(name: str = "cq", gpus: int = 16, cohort: str | None = None, flavors: Iterable[str] = ("h100",),
          borrowing: int | None = None, lending: int | None = None, cpu: int = 10_000,
          **kw: object) -> ClusterQueue:
    fqs = tuple(
        FlavorQuotas(f, {
            "cpu": Quota(cpu * M),
            "memory": Quota(100_000 * GIB),
            GPU: Quota(gpus * M, None if borrowing is None else borrowing * M,
                       None if lending is None else lending * M),
        })
        for f in flavors
    )
    if cohort is None:
        # Without a cohort every limit is the nominal quota.
        return ClusterQueue(name, (ResourceGroup(("cpu", "memory", GPU), fqs),), **kw)  # type: ignore[arg-type]
    return ClusterQueue(name, (ResourceGroup(("cpu", "memory", GPU), fqs),), cohort=cohort,
                        **kw)  # type: ignore[arg-type]


def job(key: str, gpus: int = 8, pods: int = 1, priority: int = 0, t: float = 0.0, cq: str = "cq",
        checkpointable: bool = True, cpu: int = 1, **kw: object) -> Job:
    ps = PodSet("main", pods, {"cpu": cpu * M, "memory": 8 * GIB, GPU: gpus * M})
    kw.setdefault("checkpoint_cost_s", 30.0)
    kw.setdefault("restore_cost_s", 20.0)
    return Job(key if "/" in key else f"ns/{key}", cq, priority, t, (ps,),
               checkpointable=checkpointable, **kw)  # type: ignore[arg-type]


def running(j: Job, nodes: Iterable[str], flavor_name: str = "h100", started_at: float = 0.0,
            **kw: object) -> Job:
    nodes = tuple(nodes)
    assert len(nodes) == j.pod_sets[0].count
    return replace(j, state=JobState.ADMITTED, placement=(PodSetPlacement("main", flavor_name, nodes),),
                   started_at=started_at, admitted_at=started_at, **kw)  # type: ignore[arg-type]


def snapshot(nodes: Iterable[Node], queues: Iterable[ClusterQueue], jobs: Iterable[Job],
             flavors: Iterable[Flavor] | None = None) -> Snapshot:
    nodes = tuple(nodes)
    if flavors is None:
        names = sorted({n.labels[FLAVOR_LABEL] for n in nodes})
        flavors = tuple(flavor(n) for n in names)
    return Snapshot(nodes, tuple(flavors), tuple(queues), tuple(jobs))


def admitted(d: Decisions) -> list[str]:
    from queue_controller.engine import Admit, Resume

    return [a.job for a in d.actions if isinstance(a, Admit | Resume)]
