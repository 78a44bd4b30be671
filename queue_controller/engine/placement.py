"""Free capacity per node and gang placement of pod sets onto concrete nodes.

Placement is best-fit on the pod's dominant resource (GPU when it asks for GPUs): the fullest node that
still fits is filled first, which keeps whole nodes free for large gangs.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from queue_controller.engine.snapshot import (
    GPU,
    Flavor,
    Node,
    PodSet,
    Resources,
    Toleration,
    tolerates_all,
)


def _pods_that_fit(free: Mapping[str, int], asks: list[tuple[str, int]], most: int) -> int:
    """How many pods asking `asks` (each > 0) fit into `free`, up to `most`."""
    k = most
    for r, q in asks:
        avail = free.get(r, 0)
        if avail < q:
            return 0
        if avail < k * q:
            k = avail // q
    return k


def dominant_resource(requests: Resources) -> str:
    if requests.get(GPU, 0) > 0:
        return GPU
    return "cpu" if requests.get("cpu", 0) > 0 else next(iter(sorted(requests)), "cpu")


class Candidates(list[str]):
    """The nodes a pod set may use, in pool order, with the same names as a set for membership tests."""

    def __init__(self, names: Iterable[str]) -> None:
        super().__init__(names)
        self.members = frozenset(self)


@dataclass(slots=True)
class Pool:
    """The nodes of one flavor that are Ready and schedulable."""

    flavor: Flavor
    nodes: list[str]
    max_allocatable: dict[str, int] = field(default_factory=dict)


class NodeIndex:
    """What the nodes and flavors alone decide: each flavor's pool, and which of its nodes a pod set's
    selector and tolerations allow (filled on use). It reads nothing that a cycle changes, so it is kept
    from one cycle to the next while the snapshot's nodes and flavors stay the same (carry.py)."""

    def __init__(self, nodes: tuple[Node, ...], flavors: tuple[Flavor, ...]) -> None:
        self.source = (nodes, flavors)
        self.nodes: dict[str, Node] = {n.name: n for n in nodes}
        self.pools: dict[str, Pool] = {}
        usable = [n for n in nodes if n.ready and not n.unschedulable]
        for fl in flavors:
            members = [
                n.name for n in usable if all(n.labels.get(k) == v for k, v in fl.node_labels.items())
            ]
            pool = Pool(fl, members)
            for name in members:
                for r, q in self.nodes[name].allocatable.items():
                    if q > pool.max_allocatable.get(r, 0):
                        pool.max_allocatable[r] = q
            self.pools[fl.name] = pool
        self.candidates: dict[tuple[object, ...], Candidates] = {}


class Capacity:
    """Free resources of every node, changed as the cycle admits, preempts and rolls back."""

    def __init__(self, nodes: Sequence[Node], flavors: Iterable[Flavor], index: NodeIndex | None = None) -> None:
        """`index`: the index of these very nodes and flavors, when the caller has it (carry.py)."""
        if index is None:
            index = NodeIndex(tuple(nodes), tuple(flavors))
        self.nodes = index.nodes
        self.pools = index.pools
        self.free: dict[str, dict[str, int]] = {}
        for n in nodes:
            free = dict(n.allocatable)
            for r, q in n.other_usage.items():
                free[r] = free.get(r, 0) - q
            self.free[n.name] = free
        # Shapes that did not fit. Outside what-ifs, capacity only shrinks during a cycle (preemptions free
        # nothing until the victims are gone), so a failed shape stays failed: Kueue's equivalence idea.
        # Callers pass a shape key only when nothing of the current attempt is consumed yet, so a
        # rollback never revives a shape recorded as failed.
        self._failed: set[tuple[object, ...]] = set()
        self.speculative = 0  # >0 while a what-if (preemption search) has capacity added back
        self._candidates = index.candidates
        # Per resource, the nodes with some of it free, as (free, name) in ascending order: best fit is
        # the first entry that fits, and on a busy cluster there are few entries. A gang placement or a
        # pool's free total walks this instead of every node. Built on first use for a resource (after
        # the running jobs are accounted), then kept by `consume`.
        self._by_free: dict[str, list[tuple[int, str]]] = {}

    def consume(self, node: str, requests: Resources, sign: int = 1) -> None:
        free = self.free[node]
        index = self._by_free
        for r, q in requests.items():
            old = free.get(r, 0)
            new = free[r] = old - sign * q
            order = index.get(r)
            if order is not None and new != old:
                if old > 0:
                    del order[bisect_left(order, (old, node))]
                if new > 0:
                    insort(order, (new, node))

    def by_free(self, resource: str) -> list[tuple[int, str]]:
        """The nodes with some of `resource` free now, as (free, name), least free first."""
        order = self._by_free.get(resource)
        if order is None:
            order = self._by_free[resource] = sorted(
                (f[resource], n) for n, f in self.free.items() if f.get(resource, 0) > 0)
        return order

    def release(self, node: str, requests: Resources) -> None:
        self.consume(node, requests, -1)

    def candidates(self, pool: Pool, pod_set: PodSet, extra_tolerations: tuple[Toleration, ...],
                   restore_labels: Mapping[str, str]) -> Candidates:
        """The pool's nodes this pod set may use (selector, restore labels, taints). Cached: most jobs
        share the same few combinations."""
        key = (pool.flavor.name, tuple(pod_set.node_selector.items()), pod_set.tolerations, extra_tolerations,
               tuple(restore_labels.items()))
        hit = self._candidates.get(key)
        if hit is None:
            hit = self._candidates[key] = Candidates(self._filter(pool, pod_set, extra_tolerations, restore_labels))
        return hit

    def _filter(self, pool: Pool, pod_set: PodSet, extra_tolerations: tuple[Toleration, ...],
                restore_labels: Mapping[str, str]) -> list[str]:
        tolerations = pod_set.tolerations + extra_tolerations
        out = []
        for name in pool.nodes:
            node = self.nodes[name]
            if pod_set.node_selector and any(node.labels.get(k) != v for k, v in pod_set.node_selector.items()):
                continue
            if restore_labels and any(node.labels.get(k) != v for k, v in restore_labels.items()):
                continue
            if node.taints and not tolerates_all(tolerations, node.taints):
                continue
            out.append(name)
        return out

    def never_fits(self, pool: Pool, requests: Resources) -> bool:
        """No node of the pool could ever hold one such pod, even empty."""
        return any(q > pool.max_allocatable.get(r, 0) for r, q in requests.items() if q > 0)

    def place(self, candidates: Sequence[str], requests: Resources, count: int,
              shape_key: tuple[object, ...] | None = None) -> list[str] | None:
        """Pick `count` nodes (with repetition) for identical pods and consume their capacity.

        Returns None and changes nothing when they do not all fit.
        """
        if count <= 0:
            return []
        key = None
        if shape_key is not None and not self.speculative:
            key = (*shape_key, tuple(sorted(requests.items())), count)
            if key in self._failed:
                return None
        dom = dominant_resource(requests)
        need_dom = requests.get(dom, 0)
        asks = [(r, q) for r, q in requests.items() if q > 0]
        free = self.free
        chosen: list[str] = []
        if need_dom > 0:
            # Best fit: the candidates with enough of the dominant resource free, least free first (then
            # by name), each taking as many pods as it can hold. The index is in that order already, so
            # the walk stops as soon as every pod has a node; only a failure walks all of it.
            members = candidates.members if isinstance(candidates, Candidates) else frozenset(candidates)
            order = self.by_free(dom)
            for i in range(bisect_left(order, (need_dom, "")), len(order)):
                name = order[i][1]
                if name not in members:
                    continue
                k = _pods_that_fit(free[name], asks, count - len(chosen))
                if k:
                    chosen.extend([name] * k)
                    if len(chosen) == count:
                        break
        else:
            fitting: list[tuple[int, str, int]] = []
            for name in candidates:
                f = free[name]
                have = f.get(dom, 0)
                if have < need_dom:
                    continue
                k = _pods_that_fit(f, asks, count)
                if k:
                    fitting.append((have, name, k))
            fitting.sort()
            for _, name, k in fitting:
                chosen.extend([name] * min(k, count - len(chosen)))
                if len(chosen) == count:
                    break
        if len(chosen) < count:
            if key is not None:
                self._failed.add(key)
            return None
        for name in chosen:
            self.consume(name, requests)
        return chosen

    def unplace(self, nodes: Iterable[str], requests: Resources) -> None:
        for name in nodes:
            self.release(name, requests)
