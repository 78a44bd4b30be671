"""The node agent: dumps the containers of this node's pods for the Checkpoints that need them, and
records each dump in the Checkpoint's status.

Threads: two informers (list, then watch; list again when the watch ends or its resourceVersion is
gone; back off while the API server is unreachable) keep a cache of all Checkpoints and of the
controller's pods on this node; a ticker re-queues the in-flight Checkpoints every `resync_seconds`;
`workers` threads process one Checkpoint at a time each (never the same one twice at once); the
containers of one Checkpoint are dumped in parallel on a pool of `dump_workers`, one request at a time
per container.

For one Checkpoint (Pending or Running) whose job has pods on this node, of the job's current attempt
(the highest ckq.io/attempt among all its pods, read from the API server), the agents run a freeze
barrier through the Checkpoint's status, so that a checkpoint covers every container of every pod of
the job at one moment, and is either complete or discarded as a whole:

1. freeze: each agent stops its containers that have a live ckq-run (`freeze`, runtime/freezer.py,
   token = the Checkpoint's uid) and appends them to `status.frozen` (with `members`, the number of
   containers of the job's run, Pending -> Running, startTime, and this node's restore constraints);
2. dump: an agent dumps its containers only once `status.frozen` holds every container of every pod
   of the run (it reads the other agents' entries: no agent or controller "moves" the barrier, each
   agent sees it reached in the status). The dumps are taken frozen and stay frozen; each finished
   dump is appended as an artifact (uri, sha256 and sizeBytes from ckq-run's manifest); a failed one
   sets Failed with a message naming the pod, the container, the node and ckq-run's (CRIU's) reason;
   a barrier not reached within `barrier_timeout` of the first freeze fails it too, naming the
   containers that were not frozen;
3. commit or abort: the controller writes Completed when the artifacts cover the run (the single
   commit point), or Failed (an agent's failure, its timeout, a cancel). Every agent that froze
   something then releases it, once (`status.released` lists its node): Completed without
   leaveRunning stops the containers (ckq-run exits 75), Completed with leaveRunning and Failed
   continue them (thaw), and on Failed the agent also deletes this node's images of the checkpoint
   (the recorded artifacts, which leave the status, and any dump the journal knows but the status
   does not), so no partial checkpoint is left to restore from.

Each step is decided from the status alone (plan.next_step) and every ckq-run request repeats
harmlessly for the same token, so an agent restarted at any point carries on: a freeze asked again
answers with the first freeze's time, a dump asked again is found in the journal, a release asked
again finds nothing frozen. ckq-run's hold (barrier_timeout + commit_hold after the freeze, commit_hold
after the dump) continues a workload by itself when no release ever comes (agent or controller dead).

With a node-local store (storeMode: node-local) the agent also serves its node's images to the other
agents and stages, before a restored pod on this node starts, the images another node dumped
(`stage.Stager`; docs/checkpointing.md, "The checkpoint store").

Every write is a read-modify-write of the status subresource with the object's resourceVersion,
repeated on 409, since the agents of other nodes (and the controller) write the same object. The cache
keeps the newer (by resourceVersion) of a write's response and what the watch delivered meanwhile, so
the agent's own write never hides the controller's commit that followed it. After every full list the
agent also deletes its node's images no Checkpoint accounts for (agent/collect.py).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from queue_controller.agent import collect, plan
from queue_controller.agent.dump import Dumper, DumpRequest, DumpResult, Slot
from queue_controller.agent.kube import AgentKube, Conflict, Event, Gone, NotFound, Obj, Transient
from queue_controller.agent.plan import PodInfo
from queue_controller.agent.stage import Stager
from queue_controller.api.checkpoint import Checkpoint, FrozenContainer
from queue_controller.store.journal import Journal
from queue_controller.store.retention import delete_images

log = logging.getLogger("ckq.agent")
T = TypeVar("T")
Key = tuple[str, str]  # (namespace, name)
MAX_CONFLICTS = 20


@dataclass
class AgentSettings:
    node: str
    workers: int = 4
    dump_workers: int = 8
    resync_seconds: float = 15.0
    watch_seconds: int = 300
    max_backoff: float = 30.0
    api_patience: float = 600.0  # how long one status write keeps retrying an unreachable API server
    barrier_timeout: float = 120.0  # how long the first freeze waits for every container of the job
    commit_hold: float = 300.0  # how long a dumped container stays frozen awaiting the commit (Completed)


class Backoff:
    def __init__(self, first: float = 0.5, most: float = 30.0) -> None:
        self.most = most
        self.first = self.delay = min(first, most)

    def next(self) -> float:
        d = self.delay
        self.delay = min(self.most, self.delay * 2)
        return min(self.most, d * random.uniform(0.8, 1.2))

    def reset(self) -> None:
        self.delay = self.first


class WorkQueue:
    """Keys to process; a key is never handed out twice at once, and one added while it is being
    processed is handed out again afterwards."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.order: list[Key] = []
        self.queued: set[Key] = set()
        self.active: set[Key] = set()
        self.dirty: set[Key] = set()

    def add(self, key: Key) -> None:
        with self.cond:
            if key in self.active:
                self.dirty.add(key)
            elif key not in self.queued:
                self.queued.add(key)
                self.order.append(key)
                self.cond.notify()

    def get(self, timeout: float) -> Key | None:
        with self.cond:
            if not self.order:
                self.cond.wait(timeout)
            if not self.order:
                return None
            key = self.order.pop(0)
            self.queued.discard(key)
            self.active.add(key)
            return key

    def done(self, key: Key) -> None:
        with self.cond:
            self.active.discard(key)
            if key in self.dirty:
                self.dirty.discard(key)
                self.queued.add(key)
                self.order.append(key)
                self.cond.notify()

    def __len__(self) -> int:
        with self.cond:
            return len(self.order)


def _key(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _uid(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def _rv(obj: Obj) -> int:
    """An object's resourceVersion as a number (etcd's revision), 0 when absent or not a number."""
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _fail(message: str, ckpt: Checkpoint) -> bool:
    return plan.mark_failed(ckpt, message, _now())


class Agent:
    def __init__(self, kube: AgentKube, dumper: Dumper, settings: AgentSettings) -> None:
        self.kube = kube
        self.dumper = dumper
        self.store = dumper.store
        self.s = settings
        self.node = settings.node
        self.lock = threading.Lock()
        self.checkpoints: dict[Key, Obj] = {}
        self.pods: dict[Key, PodInfo] = {}
        self.queue = WorkQueue()
        self.done: set[tuple[str, Slot]] = set()  # (Checkpoint uid, container) recorded or failed
        self.slot_locks: dict[Slot, threading.Lock] = {}
        self.stop = threading.Event()
        self.synced = {"checkpoints": threading.Event(), "pods": threading.Event()}
        self.dump_pool = ThreadPoolExecutor(max_workers=settings.dump_workers, thread_name_prefix="ckq-dump")
        self._labels: tuple[float, dict[str, str]] | None = None
        self._warned: set[str] = set()
        self.stager: Stager | None = None  # node-local stores only (the cli sets it)
        self._listed_at = 0.0  # when the last full list of Checkpoints was requested (epoch)

    def checkpoint_of(self, namespace: str, name: str) -> Obj | None:
        with self.lock:
            return self.checkpoints.get((namespace, name))

    # ---- the cache ----------------------------------------------------------------------------------
    def uri_recorded(self, uri: str) -> bool:
        """Whether a cached Checkpoint records `uri` as an artifact (the stager's question)."""
        with self.lock:
            objs = list(self.checkpoints.values())
        return any(isinstance(a, dict) and a.get("uri") == uri
                   for o in objs for a in (o.get("status") or {}).get("artifacts") or ())

    def list_checkpoints(self) -> tuple[list[Obj], str]:
        at = time.time()
        items, rv = self.kube.list_checkpoints()
        self._listed_at = at
        return items, rv

    def checkpoints_listed(self, items: list[Obj]) -> None:
        with self.lock:
            self.checkpoints = {_key(o): o for o in items}
        self.requeue_all()
        # Deletions this agent did not see (it was down, or its watch was) left images behind: collect.
        self.dump_pool.submit(self.collect_garbage, items, self._listed_at)

    def collect_garbage(self, items: list[Obj], listed_at: float) -> None:
        """Delete this node's stored images that no listed Checkpoint accounts for (agent/collect.py)."""
        try:
            listed = [collect.Listed(
                uid=str((o.get("metadata") or {}).get("uid") or ""),
                phase=(o.get("status") or {}).get("phase"),
                uris=frozenset(str(a["uri"]) for a in (o.get("status") or {}).get("artifacts") or ()
                               if isinstance(a, dict) and a.get("uri")))
                for o in items]
            stored = self.store.list()
            claims: dict[str, collect.Claim] = {}
            for ns, job, pod_set, index, container in {
                    (sc.ref.namespace, sc.ref.job, sc.ref.pod_set, sc.ref.index, sc.ref.container) for sc in stored}:
                with self.store.open_container(ns, job, pod_set, index, container) as cfd:
                    for e in Journal(cfd).entries():
                        if e.checkpointId:
                            uri = self.store.uri_for(ns, job, pod_set, index, container, e.checkpointId)
                            claims[uri] = collect.Claim(e.uid, e.node)
            doomed = collect.garbage(stored, claims, listed, node=self.node, node_local=self.stager is not None,
                                     listed_at=listed_at)
            by_ns: dict[str, list[str]] = {}
            for sc in doomed:
                by_ns.setdefault(sc.ref.namespace, []).append(sc.uri)
            for ns, uris in sorted(by_ns.items()):
                result = delete_images(self.store, ns, sorted(uris))
                log.info("store: %d image(s) in namespace %s that no Checkpoint accounts for (deleted while this "
                         "agent was not watching): deleted %d, kept for a later checkpoint %d, already gone %d%s",
                         len(uris), ns, len(result.deleted), len(result.deferred), len(result.missing),
                         "".join(f"; refused {u}: {why}" for u, why in result.refused))
        except Exception as exc:  # retried at the next list
            log.warning("store: collecting unaccounted images failed: %s: %s", type(exc).__name__, exc)

    def checkpoint_event(self, kind: str, obj: Obj) -> None:
        key = _key(obj)
        with self.lock:
            if kind == "DELETED":
                self.checkpoints.pop(key, None)
        if kind == "DELETED":
            # Retention (the job's `retain`) and garbage collection delete Checkpoint objects: their
            # images go too. Each agent deletes the images its node dumped, so a store that is not
            # shared is cleaned as well, and a shared one is not raced over.
            self.dump_pool.submit(self.delete_images, obj)
            return
        with self.lock:
            old = self.checkpoints.get(key)
            if old is not None and _rv(obj) < _rv(old) and _uid(old) == _uid(obj):
                return  # older than this agent's own write that is already cached (its event follows)
            self.checkpoints[key] = obj
        if self._relevant(obj):
            self.queue.add(key)

    def delete_images(self, obj: Obj) -> None:
        try:
            ckpt = Checkpoint.model_validate(obj)
        except ValueError as exc:
            log.warning("a deleted Checkpoint could not be read, its images stay: %s", exc)
            return
        # A node-local store may also hold copies this node staged for a restore: every artifact is
        # looked for (an absent one counts as already gone).
        mine = [a.uri for a in (ckpt.status.artifacts if ckpt.status else [])
                if a.node == self.node or self.stager is not None]
        if not mine:
            return
        result = delete_images(self.store, ckpt.metadata.namespace or "", mine)
        log.info("checkpoint %s deleted: images deleted %d, kept for a later checkpoint %d, already gone %d%s",
                 ckpt.metadata.name, len(result.deleted), len(result.deferred), len(result.missing),
                 "".join(f"; refused {u}: {why}" for u, why in result.refused))

    def pods_listed(self, items: list[Obj]) -> None:
        pods = {}
        for o in items:
            info = PodInfo.from_dict(o)
            if info is not None:
                pods[_key(o)] = info
        with self.lock:
            self.pods = pods
        self.requeue_all()
        self.stage_local_pods()

    def pod_event(self, kind: str, obj: Obj) -> None:
        info = PodInfo.from_dict(obj)
        key = _key(obj)
        with self.lock:
            if kind == "DELETED" or info is None:
                self.pods.pop(key, None)
            else:
                self.pods[key] = info
        if info is not None:
            self.requeue_job(info.namespace, info.job)
            if self.stager is not None and kind != "DELETED":
                self.stager.consider(info)

    def stage_local_pods(self) -> None:
        """Stage what this node's restored pods need (node-local stores; each pod once per process)."""
        if self.stager is None:
            return
        with self.lock:
            pods = list(self.pods.values())
        for p in pods:
            self.stager.consider(p)

    def _has_local_pods(self, namespace: str, job: str) -> bool:
        with self.lock:
            return any(p.namespace == namespace and p.job == job for p in self.pods.values())

    def _relevant(self, obj: Obj) -> bool:
        phase = (obj.get("status") or {}).get("phase")
        if phase not in plan.ACTIVE:
            return plan.to_release(obj.get("status") or {}, self.node)
        ns, _ = _key(obj)
        return self._has_local_pods(ns, str((obj.get("spec") or {}).get("jobName") or ""))

    def requeue_job(self, namespace: str, job: str) -> None:
        with self.lock:
            keys = [k for k, o in self.checkpoints.items()
                    if k[0] == namespace and (o.get("spec") or {}).get("jobName") == job]
        for k in keys:
            with self.lock:
                obj = self.checkpoints.get(k)
            if obj is not None and self._relevant(obj):
                self.queue.add(k)

    def requeue_all(self) -> None:
        with self.lock:
            objs = list(self.checkpoints.values())
        for o in objs:
            if self._relevant(o):
                self.queue.add(_key(o))

    # ---- API calls with patience --------------------------------------------------------------------
    def patiently(self, what: str, fn: Callable[[], T]) -> T:
        """fn(), retried with backoff while the API server is unreachable (up to api_patience)."""
        backoff = Backoff(most=self.s.max_backoff)
        deadline = time.monotonic() + self.s.api_patience
        while True:
            try:
                return fn()
            except Transient as exc:
                if self.stop.is_set() or time.monotonic() > deadline:
                    raise
                delay = backoff.next()
                log.warning("api: %s failed (%s); retrying in %.1fs", what, exc, delay)
                if self.stop.wait(delay):
                    raise

    def node_labels(self) -> dict[str, str]:
        cached = self._labels
        if cached is not None and time.monotonic() - cached[0] < 60:
            return cached[1]
        node = self.patiently(f"reading node {self.node}", lambda: self.kube.get_node(self.node))
        labels = {str(k): str(v) for k, v in ((node.get("metadata") or {}).get("labels") or {}).items()}
        self._labels = (time.monotonic(), labels)
        return labels

    def update_status(self, key: Key, uid: str, mutate: Callable[[Checkpoint], bool],
                      active_only: bool = True) -> Checkpoint | None:
        """Read the Checkpoint, apply `mutate` to its status model, write it with the resourceVersion it
        was read at; again on 409. None if it is gone (or replaced by another of the same name)."""
        ns, name = key
        for _ in range(MAX_CONFLICTS):
            try:
                raw = self.patiently(f"reading checkpoint {ns}/{name}", lambda: self.kube.get_checkpoint(ns, name))
            except NotFound:
                return None
            ckpt = Checkpoint.model_validate(raw)
            if ckpt.metadata.uid != uid:
                return None
            if active_only and not plan.acts_on(ckpt):
                return ckpt
            if not mutate(ckpt):
                return ckpt
            assert ckpt.status is not None
            body = dict(raw)
            body["status"] = ckpt.status.to_wire()
            try:
                new = self.patiently(f"writing the status of checkpoint {ns}/{name}",
                                     functools.partial(self.kube.replace_checkpoint_status, ns, name, body))
            except Conflict:
                continue
            except NotFound:
                return None
            with self.lock:
                # Only if newer than what the watch has put there meanwhile: the controller may have
                # written the commit (Completed) right after this write, and its event may already be
                # in the cache. Overwriting it with this older copy hid the commit from the agent until
                # its next full list — the container stayed frozen for minutes (found by the ckq-run-kill
                # chaos soak).
                if key in self.checkpoints and _rv(new) >= _rv(self.checkpoints[key]):
                    self.checkpoints[key] = new
            return Checkpoint.model_validate(new)
        raise RuntimeError(f"checkpoint {ns}/{name}: {MAX_CONFLICTS} conflicting writes in a row")

    # ---- one Checkpoint -----------------------------------------------------------------------------
    def process(self, key: Key) -> None:
        with self.lock:
            raw = self.checkpoints.get(key)
            local = list(self.pods.values())
        if raw is None:
            return
        try:
            ckpt = Checkpoint.model_validate(raw)
        except ValidationError as exc:
            self._warn_once(f"invalid:{key}", "checkpoint %s/%s is not a valid Checkpoint (%s); ignoring it",
                            *key, exc.errors()[0].get("msg"))
            return
        uid = ckpt.metadata.uid or ""
        if not uid:
            return
        name = f"{key[0]}/{key[1]}"
        if not plan.acts_on(ckpt):  # ended: release what this node froze for it, once
            step = plan.next_step(ckpt, self.node, set(), set(), _now(), self.s.barrier_timeout)
            if step.release:
                self._release(key, uid, name, ckpt, step)
            return
        mine = plan.local_pods(ckpt, local)
        if not mine:
            return
        ns, job = key[0], ckpt.spec.job_name
        have = plan.recorded(ckpt.status)
        candidates: dict[plan.Member, tuple[PodInfo, Slot]] = {}
        resumed: set[Slot] = set()
        for pod in mine:
            for c in pod.containers:
                slot = Slot(ns, job, pod.pod_set, pod.index, c)
                if (pod.pod_set, pod.index, c) in have or (uid, slot) in self.done:
                    continue
                if self.dumper.journaled(slot, uid):
                    resumed.add(slot)
                    candidates[(pod.pod_set, pod.index, c)] = (pod, slot)
                elif pod.running and self.dumper.live(slot):
                    candidates[(pod.pod_set, pod.index, c)] = (pod, slot)
        if not candidates:  # the usual case for a Checkpoint this node is done with: no API call
            return
        job_pods = self.patiently(f"listing the pods of job {ns}/{job}", lambda: self.kube.list_job_pods(ns, job))
        every = [p for p in (PodInfo.from_dict(o) for o in job_pods) if p is not None]
        attempt = plan.current_attempt(every)
        if attempt is None:
            attempt = plan.current_attempt(mine)
        candidates = {m: v for m, v in candidates.items() if v[0].attempt == attempt}
        if not candidates:
            return
        gang = plan.members(every, attempt) | plan.members(mine, attempt)
        gpu = any(p.gpu for p in mine if p.attempt == attempt)
        current: Checkpoint | None = ckpt
        for _ in range(2):  # freeze; then, when this node's freeze completed the barrier, dump at once
            if current is None or not plan.acts_on(current):
                return
            step = plan.next_step(current, self.node, set(candidates), gang, _now(), self.s.barrier_timeout)
            if step.fail:
                self.update_status(key, uid, functools.partial(_fail, step.fail))
                log.error("checkpoint %s: %s -> Failed", name, step.fail)
                return
            if step.freeze:
                current = self._freeze(key, uid, name, [(m, *candidates[m]) for m in step.freeze], len(gang), gpu)
                continue
            if step.dump:
                self._dump_all(key, uid, name, current, [candidates[m] for m in step.dump if m in candidates],
                               resumed)
            return

    def _freeze(self, key: Key, uid: str, name: str, todo: list[tuple[plan.Member, PodInfo, Slot]],
                gang_size: int, gpu: bool) -> Checkpoint | None:
        """Stop these containers (in parallel) and record them in `frozen`, with Running and this node's
        restore constraints. A container that cannot be frozen fails the checkpoint (what was frozen is
        recorded, so the release continues it)."""
        hold = self.s.barrier_timeout + self.s.commit_hold
        futures = {self.dump_pool.submit(self.dumper.freeze, slot, uid, hold): (m, pod, slot)
                   for m, pod, slot in todo}
        entries: list[FrozenContainer] = []
        errors: list[str] = []
        for fut in as_completed(futures):
            (ps, index, c), pod, _slot = futures[fut]
            at, error = fut.result()
            if at is None and error is None:
                log.info("checkpoint %s: %s/%s is frozen for another checkpoint of the job; freezing it once "
                         "that one is released", name, pod.name, c)
            elif at is None:
                errors.append(f"pod {pod.namespace}/{pod.name} container {c} on node {self.node}: cannot be "
                              f"frozen: {error}")
            else:
                entries.append(FrozenContainer(pod_set=ps, index=index, container=c, node=self.node,
                                               frozen_at=datetime.fromtimestamp(at, UTC)))
        labels = plan.node_constraints(self.node_labels(), gpu)
        message = "; ".join(errors)

        def mutate(c: Checkpoint) -> bool:
            changed = plan.mark_running(c, _now())
            changed = plan.merge_constraints(c, labels)[0] or changed
            changed = plan.add_frozen(c, entries, gang_size) or changed
            return (bool(message) and plan.mark_failed(c, message, _now())) or changed

        after = self.update_status(key, uid, mutate)
        recorded = after is not None and {(e.pod_set, e.index, e.container) for e in entries} <= (
            plan.frozen(after.status))
        if after is None or (not plan.acts_on(after) and not recorded):
            # Ended (or gone) before the freeze could be recorded: no release will find it, so now.
            for _m, _pod, slot in todo:
                self.dumper.release(slot, uid, "thaw")
            return None
        log.info("checkpoint %s: froze %s on %s (%d of %d containers of the job frozen)%s", name,
                 ", ".join(f"{e.pod_set}-{e.index}/{e.container}" for e in entries) or "nothing", self.node,
                 len(plan.frozen(after.status)), gang_size, f"; failed: {message}" if message else "")
        return after

    def _dump_all(self, key: Key, uid: str, name: str, ckpt: Checkpoint, todo: list[tuple[PodInfo, Slot]],
                  resumed: set[Slot]) -> None:
        """The barrier is reached: dump this node's frozen containers in parallel; each stays frozen
        until the checkpoint ends (the release)."""
        log.info("checkpoint %s: every container of the job is frozen; dumping %d on %s (%s, leaveRunning=%s): %s",
                 name, len(todo), self.node, ckpt.spec.reason, ckpt.spec.leave_running,
                 ", ".join(f"{p.name}/{s.container}{' (asked before a restart)' if s in resumed else ''}"
                           for p, s in todo))
        futures: dict[Future[DumpResult], tuple[PodInfo, Slot]] = {
            self.dump_pool.submit(self._dump_one, slot, DumpRequest(
                uid=uid, checkpoint=name, leave_running=True, node=self.node, pod=pod.name, frozen=True,
                hold=self.s.commit_hold)): (pod, slot)
            for pod, slot in todo
        }
        for fut in as_completed(futures):
            pod, slot = futures[fut]
            self._record(key, uid, name, pod, slot.container, slot, fut.result())

    def _release(self, key: Key, uid: str, name: str, ckpt: Checkpoint, step: plan.Step) -> None:
        """The checkpoint ended: thaw (failed, or leaveRunning) or stop (completed) the containers this
        node froze for it; on a failure delete this node's images of it (recorded, or taken and not yet
        recorded: the journal knows), then note the node in `released`."""
        assert ckpt.status is not None and step.release is not None
        ns, job = key[0], ckpt.spec.job_name
        slots = [Slot(ns, job, f.pod_set, f.index, f.container) for f in ckpt.status.frozen if f.node == self.node]
        how = [f"{s.pod_set}-{s.index}/{s.container} {self.dumper.release(s, uid, step.release)}" for s in slots]
        deleted = ""
        if step.discard:
            uris = {a.uri for a in ckpt.status.artifacts if a.node == self.node}
            for s in slots:
                taken = self.dumper.taken(s, uid)
                if taken:
                    uris.add(self.store.uri_for(*s.args(), taken))
            if uris:
                result = delete_images(self.store, ns, sorted(uris))
                deleted = (f"; images deleted {len(result.deleted)}, already gone {len(result.missing)}"
                           f"{''.join(f', kept {u}: {why}' for u, why in result.refused)}"
                           f"{f', kept for a later checkpoint {len(result.deferred)}' if result.deferred else ''}")
        self.update_status(key, uid, lambda c: plan.mark_released(c, self.node, step.discard), active_only=False)
        self.requeue_job(ns, job)  # a later checkpoint of the job may be waiting to freeze these
        log.info("checkpoint %s %s: released on %s (%s): %s%s", name, ckpt.status.phase, self.node, step.release,
                 ", ".join(how) or "nothing frozen here", deleted)

    def _dump_one(self, slot: Slot, req: DumpRequest) -> DumpResult:
        with self.lock:
            lock = self.slot_locks.setdefault(slot, threading.Lock())
        with lock:  # one request at a time per container, whichever Checkpoint asks
            return self.dumper.dump(slot, req)

    def _record(self, key: Key, uid: str, name: str, pod: PodInfo, container: str, slot: Slot,
                result: DumpResult) -> None:
        where = f"pod {pod.namespace}/{pod.name} container {container} on node {self.node}"
        if result.manifest is not None:
            m = result.manifest
            uri = self.store.uri_for(*slot.args(), m.id)
            artifact = plan.artifact_for(pod, container, self.node, uri, m)
            after = self.update_status(key, uid, lambda c: plan.add_artifact(c, artifact, m.durationSeconds),
                                       active_only=False)
            if after is None:
                log.warning("checkpoint %s: gone before %s's checkpoint %s could be recorded (the image stays "
                            "in the store)", name, where, m.id)
            self.done.add((uid, slot))
            how = "found after a restart" if result.adopted else f"{m.durationSeconds:.2f}s"
            log.info("checkpoint %s: %s: ckq-run checkpoint %s, %d bytes (%s), recorded", name, where, m.id,
                     m.sizeBytes, how)
            return
        message = f"{where}: {result.error}"
        after = self.update_status(key, uid, lambda c: plan.mark_failed(c, message, _now()))
        self.done.add((uid, slot))
        log.error("checkpoint %s: dump failed, %s%s", name, message,
                  " -> Failed" if after is not None and after.status and after.status.phase == "Failed" else "")

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    # ---- threads ------------------------------------------------------------------------------------
    def _informer(self, name: str, lister: Callable[[], tuple[list[Obj], str]],
                  watcher: Callable[[str], Iterator[Event]], on_list: Callable[[list[Obj]], None],
                  on_event: Callable[[str, Obj], None]) -> None:
        backoff = Backoff(most=self.s.max_backoff)
        failing = False
        while not self.stop.is_set():
            try:
                items, rv = lister()
                on_list(items)
                self.synced[name].set()
                backoff.reset()
                if failing:
                    log.info("api: watching %s again (%d listed)", name, len(items))
                    failing = False
                for kind, obj in watcher(rv):
                    if self.stop.is_set():
                        return
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        on_event(kind, obj)
            except Gone:
                log.info("api: the %s watch expired; listing again", name)
            except Exception as exc:
                failing = True
                delay = backoff.next()
                log.warning("api: watching %s failed (%s); retrying in %.1fs", name, exc, delay)
                self.stop.wait(delay)

    def _worker(self) -> None:
        while not self.stop.is_set():
            key = self.queue.get(timeout=0.5)
            if key is None:
                continue
            try:
                self.process(key)
            except Exception as exc:  # retried at the next resync
                log.error("checkpoint %s/%s: %s: %s (retrying within %.0fs)", *key, type(exc).__name__, exc,
                          self.s.resync_seconds)
            finally:
                self.queue.done(key)

    def _ticker(self) -> None:
        while not self.stop.wait(self.s.resync_seconds):
            self.requeue_all()
            self.stage_local_pods()  # a pod seen before its Checkpoint was

    def start(self) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=self._informer, name="ckq-watch-checkpoints", daemon=True, args=(
                "checkpoints", self.list_checkpoints,
                lambda rv: self.kube.watch_checkpoints(rv, self.s.watch_seconds),
                self.checkpoints_listed, self.checkpoint_event)),
            threading.Thread(target=self._informer, name="ckq-watch-pods", daemon=True, args=(
                "pods", lambda: self.kube.list_node_pods(self.node),
                lambda rv: self.kube.watch_node_pods(self.node, rv, self.s.watch_seconds),
                self.pods_listed, self.pod_event)),
            threading.Thread(target=self._ticker, name="ckq-resync", daemon=True),
            *(threading.Thread(target=self._worker, name=f"ckq-worker-{i}", daemon=True)
              for i in range(self.s.workers)),
        ]
        for t in threads:
            t.start()
        return threads

    def wait_synced(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for ev in self.synced.values():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not ev.wait(left):
                return False
        return True

    def shutdown(self) -> None:
        self.stop.set()
        with contextlib.suppress(Exception):
            self.dump_pool.shutdown(wait=False, cancel_futures=True)
        if self.stager is not None:
            self.stager.shutdown()
