"""Free capacity per node and gang placement of pod sets onto concrete nodes.

Placement is best-fit on the pod's dominant resource (GPU when it asks for GPUs): the fullest node that
still fits is filled first, which keeps whole nodes free for large gangs.
"""

from __future__ import annotations

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


class Capacity:
    """Free resources of every node, changed as the cycle admits, preempts and rolls back."""

    def __init__(self, nodes: Sequence[Node], flavors: Iterable[Flavor]) -> None:
        self.nodes: dict[str, Node] = {n.name: n for n in nodes}
        self.free: dict[str, dict[str, int]] = {}
        for n in nodes:
            free = dict(n.allocatable)
            for r, q in n.other_usage.items():
                free[r] = free.get(r, 0) - q
            self.free[n.name] = free
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
        # Shapes that did not fit. Outside what-ifs, capacity only shrinks during a cycle (preemptions free
        # nothing until the victims are gone), so a failed shape stays failed: Kueue's equivalence idea.
        # Callers pass a shape key only when nothing of the current attempt is consumed yet, so a
        # rollback never revives a shape recorded as failed.
        self._failed: set[tuple[object, ...]] = set()
        self.speculative = 0  # >0 while a what-if (preemption search) has capacity added back
        self._candidates: dict[tuple[object, ...], Candidates] = {}
        # Per resource, the nodes with some of it free. On a busy cluster these are few, and a gang
        # placement or a pool's free total need only look at them instead of at every node. Built on
        # first use for a resource (after the running jobs are accounted), then kept by `consume`.
        self._holders: dict[str, set[str]] = {}

    def consume(self, node: str, requests: Resources, sign: int = 1) -> None:
        free = self.free[node]
        holders = self._holders
        for r, q in requests.items():
            left = free[r] = free.get(r, 0) - sign * q
            index = holders.get(r)
            if index is not None:
                if left > 0:
                    index.add(node)
                else:
                    index.discard(node)

    def holders(self, resource: str) -> set[str]:
        """The nodes with some of `resource` free now."""
        index = self._holders.get(resource)
        if index is None:
            index = self._holders[resource] = {n for n, f in self.free.items() if f.get(resource, 0) > 0}
        return index

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
        names: Iterable[str] = candidates
        if need_dom > 0:
            # Only nodes with some of the dominant resource free can take a pod: when they are fewer
            # than the candidates, walk them instead. The order does not matter: `fitting` is sorted.
            holders = self.holders(dom)
            if len(holders) < len(candidates):
                members = candidates.members if isinstance(candidates, Candidates) else frozenset(candidates)
                names = [n for n in holders if n in members]
        fitting: list[tuple[int, str, int]] = []
        total = 0
        # The hot loop of a cycle: most nodes fail on the dominant resource, so that is checked first.
        for name in names:
            f = free[name]
            have = f.get(dom, 0)
            if have < need_dom:
                continue
            k = count
            for r, q in asks:
                avail = f.get(r, 0)
                if avail < q:
                    k = 0
                    break
                if avail < k * q:
                    k = avail // q
            if k > 0:
                fitting.append((have, name, k))
                total += k
        if total < count:
            if key is not None:
                self._failed.add(key)
            return None
        fitting.sort()
        chosen: list[str] = []
        for _, name, k in fitting:
            take = min(k, count - len(chosen))
            chosen.extend([name] * take)
            if len(chosen) == count:
                break
        for name in chosen:
            self.consume(name, requests)
        return chosen

    def unplace(self, nodes: Iterable[str], requests: Resources) -> None:
        for name in nodes:
            self.release(name, requests)
