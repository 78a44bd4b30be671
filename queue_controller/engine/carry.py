"""What one decision cycle leaves for the next (`Carry`): caches of what the next snapshot did not change.

A cycle spends a fixed part of its time on facts that rarely change from one cycle to the next: the
node index (each flavor's pool, which of its nodes a selector and tolerations allow), the running jobs'
accounting (their pods on nodes, their quota usage) and the pending jobs in queue order. A `Carry`
keeps them between cycles, and a cycle takes from it only what its own snapshot still determines:

- the node index, while the nodes and flavors are the same: the very same tuples (the simulator's), or
  equal ones (a snapshot built anew from unchanged records);
- each running job's account, while the nodes, flavors and queues are the same and so is the job: the
  very same object, or an equal one (the controller converts running jobs afresh every cycle);
- the queue order, by deltas: a job that arrived, or whose priority or queue-order time changed, is
  inserted by bisection; a job that left is dropped; every other job keeps its place, since the order
  depends only on priority, queue-order time and key (`ordering.order_key`);
- each waiting job's shape, numbered (`Carry.shape`), while the job is the very same object (the
  controller keeps a waiting job's engine record while its inputs are unchanged);
- the waiting records (`decisions.Waiting`): a record equal in every field to the last cycle's is that
  same object again (comparing costs half of making one, and most records do not change).

It is a cache, never an input: a cycle given an empty `Carry` decides exactly what one given a full one
decides (tests/unit/test_engine_incremental.py runs both side by side over random multi-cycle scenarios,
and test_engine_golden.py holds both to the recorded decisions). It reads no clock and does no I/O.
`decide` without one uses a module-wide `Carry`, so the simulator and the controller carry from cycle
to cycle without asking; two callers taking turns on it only lose the carry, never a decision.

- which (queue, shape) pairs the queues can admit at all (`fit.inadmissible`), while the queues are the
  same or equal (a refusal is worked out each cycle: its message names the pod set of the first job
  of its shape).

Not carried, because it depends on `now` or on what the cycle has done so far: failed-shape and
preemption memos, capacity profiles, the victim order, the per-resource free-capacity order.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import compress
from operator import attrgetter, is_not

from queue_controller.engine.decisions import Waiting
from queue_controller.engine.ordering import CreditMemo, order_key
from queue_controller.engine.placement import NodeIndex
from queue_controller.engine.quota import FR
from queue_controller.engine.snapshot import ClusterQueue, Flavor, Job, Node

_key_of = attrgetter("key")

# Above this many pending jobs inserted at once (arrived, or moved in the order), sorting them all is
# cheaper than inserting each one into the carried order.
_MAX_INSERTS = 256


# Not frozen: one is made for each running job accounted afresh (1,000 in a full cycle), and a frozen
# dataclass's constructor costs several times a plain one's. Never changed once made.
@dataclass(slots=True)
class Account:
    """What one running job holds: its quota usage, its pods on nodes, its requests per flavor."""

    job: Job
    delta: dict[FR, int]
    nodes: list[tuple[str, Mapping[str, int]]]
    by_flavor: dict[str, dict[str, int]]


@dataclass(slots=True)
class Accounting:
    """The running jobs' accounting at the start of the last cycle."""

    source: tuple[tuple[Node, ...], tuple[Flavor, ...], tuple[ClusterQueue, ...]]
    accounts: dict[str, Account]  # by job key; valid for a job equal to `Account.job` only
    free: dict[str, dict[str, int]]  # every node's free resources after accounting them
    usage: dict[str, dict[FR, int]]  # every queue's usage after accounting them


@dataclass(slots=True)
class Carry:
    """Caches kept from one `decide` to the next. Empty, it changes nothing but the time a cycle takes."""

    index: NodeIndex | None = None
    accounting: Accounting | None = None
    order: list[str] = field(default_factory=list)  # the last cycle's pending jobs' keys, in queue order
    order_of: dict[str, Job] = field(default_factory=dict)  # the same jobs by key
    # Each job's shape as a small number (`shape`), and the numbers given so far.
    shape_of: dict[str, tuple[Job, int]] = field(default_factory=dict)
    shape_ids: dict[tuple[object, ...], int] = field(default_factory=dict)
    # The last cycle's waiting records, by job key: a record equal in every field is taken again.
    waiting: dict[str, Waiting] = field(default_factory=dict)
    # The (queue, shape) pairs found admissible (`fit.inadmissible` said None) under these queues: that
    # depends only on the queues' configuration and the shape. (A refusal is not kept: its message
    # names the pod set of the first job of its shape in the cycle.)
    admissible: set[tuple[str, int]] = field(default_factory=set)
    admissible_source: tuple[ClusterQueue, ...] | None = None
    # Each job's copy with the policy's work credit (ordering.credited), kept so that it is the same object
    # from cycle to cycle and the caches above, keyed on identity, keep working.
    credited: CreditMemo = field(default_factory=dict)
    # How the last cycle got each part (for the bench and the tests): "carried", "equal" or "built".
    how: dict[str, str] = field(default_factory=dict)

    def begin(self, pending: int) -> None:
        """A cycle starts with `pending` jobs waiting: drop what no longer pays for its memory."""
        if len(self.shape_of) > 2 * pending + 1024 or len(self.shape_ids) > 65536:
            self.shape_of, self.shape_ids = {}, {}
            self.admissible = set()  # keyed by shape numbers, which start again

    def shape(self, job: Job) -> int:
        """What decides whether a job fits, without its identity, as a number: jobs of equal shapes fit
        (or fail) alike, so the memos of a cycle are per (queue, shape). A number, kept per Job object
        from cycle to cycle, because a memo key is looked up several times for each of 10,000 jobs per
        cycle, and a tuple of tuples is built and hashed anew each time."""
        hit = self.shape_of.get(job.key)
        if hit is not None and hit[0] is job:
            return hit[1]
        shape = _shape(job)
        number = self.shape_ids.get(shape)
        if number is None:
            number = self.shape_ids[shape] = len(self.shape_ids)
        self.shape_of[job.key] = (job, number)
        return number

    def node_index(self, nodes: tuple[Node, ...], flavors: tuple[Flavor, ...]) -> NodeIndex:
        """The index of these nodes and flavors: the carried one while they are the same."""
        last = self.index
        if last is not None:
            if last.source[0] is nodes and last.source[1] is flavors:
                self.how["index"] = "carried"
                return last
            # Tuple equality compares element by element, the same objects by identity: cheap when
            # only the tuples are new, and about a microsecond per node when the nodes are new too.
            if last.source[0] == nodes and last.source[1] == flavors:
                self.how["index"] = "equal"
                last.source = (nodes, flavors)  # the next cycle's identity test
                return last
        self.how["index"] = "built"
        index = self.index = NodeIndex(nodes, flavors)
        return index

    def accounting_for(self, source: tuple[tuple[Node, ...], tuple[Flavor, ...], tuple[ClusterQueue, ...]]
                       ) -> Accounting | None:
        """The carried accounting, when it was made on the same nodes, flavors and queues."""
        last = self.accounting
        if last is None:
            return None
        if all(a is b for a, b in zip(last.source, source, strict=True)):
            return last
        if last.source == source:
            last.source = source  # the next cycle's identity test
            return last
        return None

    def admissible_for(self, queues: tuple[ClusterQueue, ...]) -> set[tuple[str, int]]:
        """The (queue, shape) pairs known admissible, while the queues are the same or equal."""
        last = self.admissible_source
        if last is not queues and last != queues:
            self.admissible = set()
        self.admissible_source = queues
        return self.admissible

    def queue_order(self, pending: list[Job], now_of: dict[str, Job], keys: list[str] | None = None) -> list[Job]:
        """`pending` in queue order (`ordering.order_key`), from the last cycle's order and the changes.
        `now_of`: the same jobs by key (keys are unique); `keys`: their keys, in `pending`'s order, when
        the caller has them. Both are kept for the next cycle; the list returned is the caller's."""
        last = self.order_of
        moved: list[Job] = []
        if last:
            get = last.get
            # The same objects kept their places. This runs over every pending job, so it iterates in C
            # (map, compress), not in a comprehension.
            if keys is None:
                keys = list(map(_key_of, pending))
            for job in compress(pending, map(is_not, map(get, keys), pending)):
                old = get(job.key)
                if old is None or old.priority != job.priority or old.queue_order != job.queue_order:
                    moved.append(job)
                    if len(moved) > _MAX_INSERTS:
                        last = {}
                        break
        if not last:
            self.how["order"] = "built"
            # `order_key` as two stable sorts with C key functions: by (queue order, key), then by
            # priority, highest first (a reverse sort keeps equal elements in their order): a third of
            # the time of calling `order_key` for each of 10,000 jobs.
            ordered = sorted(pending, key=attrgetter("queue_order", "key"))
            ordered.sort(key=attrgetter("priority"), reverse=True)
        else:
            self.how["order"] = "carried"
            # The jobs that stayed, in their old order (their order keys are unchanged), as the new objects:
            # the keys first (membership tests on strings), then the jobs by a C-level map.
            skip = {job.key for job in moved if job.key in last}
            kept = list(filter(now_of.__contains__, self.order))
            if skip:
                kept = [k for k in kept if k not in skip]
            ordered = list(map(now_of.__getitem__, kept))
            for job in moved:
                i = bisect_right(ordered, order_key(job), key=order_key)
                ordered.insert(i, job)
                kept.insert(i, job.key)
            self.order = kept
            self.order_of = now_of
            return ordered
        self.order = [job.key for job in ordered]
        self.order_of = now_of
        return ordered

    def forget_order(self) -> None:
        self.order, self.order_of = [], {}


def _shape(job: Job) -> tuple[object, ...]:
    # Unsorted items: equal jobs built the same way share a key; a miss only costs a memo hit.
    sets = job.pod_sets
    if len(sets) == 1 and not job.restore_node_labels:
        ps = sets[0]
        if not ps.node_selector and not ps.tolerations:
            return (ps.count, *ps.requests.items())  # the common case
    return (
        tuple((ps.count, tuple(ps.requests.items()),
               tuple(ps.node_selector.items()) if ps.node_selector else (), ps.tolerations)
              for ps in job.pod_sets),
        tuple(job.restore_node_labels.items()) if job.restore_node_labels else (),
    )
