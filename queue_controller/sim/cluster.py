"""The simulated cluster: nodes and flavors, the queue layout (trace queue -> ClusterQueue), and the
checkpoint cost model. Everything here becomes frozen engine objects once, at the start of a run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from queue_controller.checkpoint.cost import GIB, CheckpointCostModel
from queue_controller.engine import (
    GPU,
    ClusterQueue,
    Flavor,
    FlavorQuotas,
    Node,
    Quota,
    ResourceGroup,
)
from queue_controller.sim.trace import TraceJob

GIB_MILLI = 2**30 * 1000  # engine memory unit: 1 byte = 1000
FLAVOR_LABEL = "ckq.io/flavor"
RESOURCES = ("cpu", "memory", GPU)


class LayoutError(ValueError):
    """A queue layout file that cannot be used; the message names the field."""


@dataclass(frozen=True, slots=True)
class NodeGroup:
    flavor: str = "default"
    count: int = 64
    gpus: int = 8
    cpu: float = 64.0
    memory_gib: float = 512.0

    def allocatable(self) -> dict[str, int]:
        return {"cpu": round(self.cpu * 1000), "memory": round(self.memory_gib * GIB_MILLI),
                GPU: self.gpus * 1000}


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    groups: tuple[NodeGroup, ...] = (NodeGroup(),)

    @staticmethod
    def uniform(nodes: int, gpus: int = 8, cpu: float = 64.0, memory_gib: float = 512.0) -> ClusterSpec:
        if nodes < 1 or gpus < 0 or cpu <= 0 or memory_gib <= 0:
            raise ValueError("need nodes >= 1, gpus >= 0, cpu > 0 and memory > 0")
        return ClusterSpec((NodeGroup("default", nodes, gpus, cpu, memory_gib),))

    @property
    def total_gpus(self) -> int:
        return sum(g.count * g.gpus for g in self.groups)

    @property
    def total_cpu(self) -> float:
        return sum(g.count * g.cpu for g in self.groups)

    @property
    def node_count(self) -> int:
        return sum(g.count for g in self.groups)

    def nodes(self) -> tuple[Node, ...]:
        out: list[Node] = []
        for g in self.groups:
            alloc = g.allocatable()
            labels = {FLAVOR_LABEL: g.flavor}
            out.extend(Node(f"{g.flavor}-{i:04d}", alloc, labels) for i in range(g.count))
        return tuple(out)

    def flavors(self) -> tuple[Flavor, ...]:
        names = dict.fromkeys(g.flavor for g in self.groups)
        return tuple(Flavor(n, {FLAVOR_LABEL: n}) for n in names)

    def capacity(self, flavor: str) -> dict[str, int]:
        total: dict[str, int] = dict.fromkeys(RESOURCES, 0)
        for g in self.groups:
            if g.flavor == flavor:
                for r, q in g.allocatable().items():
                    total[r] += q * g.count
        return total


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    cohort: str | None = None
    # Nominal quota as a fraction of each flavor's capacity; None: the whole capacity (what an admin sets
    # for a queue that may use the whole cluster).
    share: float | None = None
    borrowing_limit_share: float | None = None


@dataclass(frozen=True, slots=True)
class QueueLayout:
    """Which ClusterQueue each trace queue feeds. Unknown trace queues go to `default_queue`."""

    cluster_queues: tuple[QueueSpec, ...] = (QueueSpec("default"),)
    mapping: Mapping[str, str] = field(default_factory=dict)
    default_queue: str = "default"

    def cluster_queue_for(self, queue: str) -> str:
        return self.mapping.get(queue, self.default_queue)

    def build(self, cluster: ClusterSpec) -> tuple[ClusterQueue, ...]:
        out = []
        flavors = [f.name for f in cluster.flavors()]
        for q in self.cluster_queues:
            fqs = []
            for fl in flavors:
                cap = cluster.capacity(fl)
                quotas = {}
                for r in RESOURCES:
                    nominal = cap[r] if q.share is None else math.floor(cap[r] * q.share)
                    borrow = None if q.borrowing_limit_share is None else math.floor(cap[r] * q.borrowing_limit_share)
                    quotas[r] = Quota(nominal, borrow)
                fqs.append(FlavorQuotas(fl, quotas))
            out.append(ClusterQueue(q.name, (ResourceGroup(RESOURCES, tuple(fqs)),), cohort=q.cohort))
        return tuple(out)


def _opt_float(d: Mapping[str, Any], key: str, where: str) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
        raise LayoutError(f"{where}.{key}: expected a number >= 0, got {v!r}")
    return float(v)


def load_layout(path: Path) -> QueueLayout:
    """YAML: {clusterQueues: [{name, cohort?, share?, borrowingLimitShare?}], queues: {trace: cq},
    defaultQueue: name}."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise LayoutError(f"{path}: cannot read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise LayoutError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise LayoutError(f"{path}: expected a mapping with clusterQueues, queues, defaultQueue")
    unknown = sorted(set(data) - {"clusterQueues", "queues", "defaultQueue"})
    if unknown:
        raise LayoutError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: clusterQueues, queues, defaultQueue")
    cqs_raw = data.get("clusterQueues") or [{"name": "default"}]
    if not isinstance(cqs_raw, list):
        raise LayoutError(f"{path}: clusterQueues: expected a list")
    cqs = []
    for i, c in enumerate(cqs_raw):
        where = f"{path}: clusterQueues[{i}]"
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"]:
            raise LayoutError(f"{where}: expected a mapping with a non-empty 'name'")
        bad = sorted(set(c) - {"name", "cohort", "share", "borrowingLimitShare"})
        if bad:
            raise LayoutError(f"{where}: unknown key(s) {', '.join(bad)}; allowed: name, cohort, share, "
                              "borrowingLimitShare")
        cohort = c.get("cohort")
        if cohort is not None and not isinstance(cohort, str):
            raise LayoutError(f"{where}.cohort: expected a string")
        cqs.append(QueueSpec(c["name"], cohort, _opt_float(c, "share", where),
                             _opt_float(c, "borrowingLimitShare", where)))
    names = {c.name for c in cqs}
    mapping = data.get("queues") or {}
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in mapping.items()):
        raise LayoutError(f"{path}: queues: expected a mapping of trace queue -> ClusterQueue name")
    for k, v in mapping.items():
        if v not in names:
            raise LayoutError(f"{path}: queues.{k}: ClusterQueue {v!r} is not one of {', '.join(sorted(names))}")
    default = data.get("defaultQueue", cqs[0].name)
    if default not in names:
        raise LayoutError(f"{path}: defaultQueue: {default!r} is not one of {', '.join(sorted(names))}")
    return QueueLayout(tuple(cqs), dict(mapping), default)


@dataclass(frozen=True, slots=True)
class CheckpointModel:
    """Checkpoint and restore time from the checkpoint size: every pod writes its share in parallel
    (the shared cost model, `queue_controller.checkpoint.cost`, in GiB and GiB/s)."""

    latency_s: float = 5.0  # freeze, metadata, sync
    bandwidth_gib_s: float = 2.0  # per pod, to checkpoint storage
    restore_latency_s: float = 10.0  # new pod start, image and checkpoint fetch setup
    restore_bandwidth_gib_s: float = 2.0

    @property
    def cost(self) -> CheckpointCostModel:
        # Bytes are GiB times a power of two, so the seconds are bit-for-bit what GiB arithmetic gives.
        return CheckpointCostModel(self.latency_s, self.bandwidth_gib_s * GIB, self.restore_latency_s,
                                   self.restore_bandwidth_gib_s * GIB)

    def size_gib(self, job: TraceJob) -> float:
        return job.checkpoint_gib if job.checkpoint_gib is not None else job.memory_gib

    def checkpoint_s(self, job: TraceJob) -> float:
        return self.cost.checkpoint_s(self.size_gib(job) * GIB, job.pods)

    def restore_s(self, job: TraceJob) -> float:
        return self.cost.restore_s(self.size_gib(job) * GIB, job.pods)
