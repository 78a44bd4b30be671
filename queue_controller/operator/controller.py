"""The scheduling loop.

One loop: reconcile what is in flight (checkpoints, then jobs and their pods), take a snapshot of the
cache, call `engine.decide()`, carry out the decisions, and publish why the others wait. Handlers
never decide; they only feed the cache and kick the loop. The clock is read once per cycle, and every
step of the cycle sees that same `now`.

Admissions are written behind the loop, as Kueue does: the cache assumes the admitted status at once
(`Cache.assume`), so the next cycle counts the job's quota as taken, and the status write and the pods'
creation follow in the background while the loop goes on; the job is busy (no decision, no lifecycle
step) until they end, and a write that fails gives its room back. A cycle used to last as long as its
writes, and at scale that held every finished job's quota and the next admission for tens of seconds.
A cycle that decided nothing is followed by a pause paced by its own deciding time (`PACE`).

Every step is idempotent and every durable fact lives in Kubernetes objects (job and checkpoint
status, annotations, deterministic pod and checkpoint names), so a restarted controller rebuilds its
cache and carries on without creating anything twice. The steps live in their own modules:

    status.py       the status writer: typed merge patches, conditions, Events, bounded concurrency
    actuators.py    Admit / Resume / Preempt / periodic Checkpoint
    checkpoints.py  the Checkpoint object's lifecycle
    jobs.py         the job lifecycle: pods running, finished, failed; nodes lost; user suspend
    runs.py         a run's pods, started and stopped, and the requeue
    waiting.py      waiting jobs' reasons, queue status and the head of each queue
    backends.py     the backend registry: each job's checkpoint backend, or why none can serve it
    settings.py     the cluster's checkpoint settings (the ConfigMap ckq-system/ckq-config)
    failures.py     the failure rate observed (the measured MTBF) and each job's checkpoint interval
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import replace
from typing import Any

import aiohttp

from queue_controller.checkpoint.base import CheckpointBackend
from queue_controller.engine import Admit, Decisions, Policy, Preempt, Resume, decide
from queue_controller.operator import metrics
from queue_controller.operator.actuators import Actuators
from queue_controller.operator.backends import JobBackends
from queue_controller.operator.cache import Cache
from queue_controller.operator.checkpoints import Checkpoints
from queue_controller.operator.failures import FailureRate, Intervals
from queue_controller.operator.jobs import JobLifecycle
from queue_controller.operator.kube import ApiError, Kube
from queue_controller.operator.predictions import RuntimePredictions
from queue_controller.operator.records import JobRecord
from queue_controller.operator.runs import Runs
from queue_controller.operator.settings import SettingsSource
from queue_controller.operator.snapshot import JobMemo, build
from queue_controller.operator.status import StatusWriter
from queue_controller.operator.waiting import Waiting

log = logging.getLogger("ckq.controller")
POLL_S = 1.0  # checkpoints in flight are polled this often
BEHIND_WRITES = 32  # admissions written at once behind the loop
PACE = 9.0  # after a cycle that decided nothing, wait this many times its deciding time


class Controller:
    def __init__(self, cache: Cache, kube: Kube, policy: Policy, backends: Mapping[str, CheckpointBackend],
                 clock: Callable[[], float] = time.time, settings: SettingsSource | None = None) -> None:
        """`backends`: the Simulated backend (key "Simulated"); the CRIU backend is built from the cluster's
        settings (the ConfigMap, read through `settings`)."""
        self.cache = cache
        self.kube = kube
        self.policy = policy
        self.backends = dict(backends)
        self.clock = clock
        self.settings = settings if settings is not None else SettingsSource(kube)
        self.kicked = asyncio.Event()
        self.next_wakeup: float | None = None
        # Called after every cycle; set by main to plan the APScheduler wake-up at `next_wakeup`. Without
        # it (tests driving cycles by hand) the loop falls back to a timeout of its own.
        self.on_cycle: Callable[[], None] | None = None
        self.cycles = 0
        self.last_cycle_at = 0.0
        # Whether this replica may decide now (leader election; always, when it runs alone).
        self.leading: Callable[[], bool] = lambda: True
        self.memo = JobMemo()  # waiting jobs' engine records, kept between cycles
        self.decide_s = 0.0  # how long the last cycle's snapshot and decision took (it paces the loop)
        self.progressed = False  # whether the last cycle decided anything
        self.behind: dict[str, asyncio.Task[None]] = {}  # job key -> its admission being written
        # Fewer than the client's 64 connections: the cycle's own writes (jobs finished, whose quota the
        # next admissions wait for) must not queue behind a burst of admissions.
        self._behind_slots = asyncio.Semaphore(BEHIND_WRITES)
        self.job_backends = JobBackends(self.backends["Simulated"], cache, kube, self.settings.current)
        self.writer = StatusWriter(cache, kube)
        self.waiting = Waiting(cache, self.writer)
        self.runs = Runs(cache, kube, self.writer, self.job_backends)
        self.failures = FailureRate(policy.checkpoints.node_mtbf_seconds)
        self.predictions = RuntimePredictions(policy.backfill.runtime_predictions)
        self.intervals = Intervals(policy, self.failures)
        self.checkpoints = Checkpoints(cache, kube, self.writer, self.job_backends, self.runs, policy, self.intervals)
        self.jobs = JobLifecycle(cache, self.writer, self.runs, self.checkpoints, self.waiting, self.intervals)
        self.actuators = Actuators(cache, self.writer, self.runs, self.checkpoints, self.waiting)

    @property
    def admissions(self) -> int:
        """Jobs admitted or resumed since start."""
        return self.actuators.admissions

    def kick(self) -> None:
        self.kicked.set()

    def estimate(self, job: JobRecord) -> tuple[float, float]:
        """(checkpoint, restore) seconds the job's backend expects, for the engine's snapshot."""
        return self.job_backends.estimate(job)

    def _write_behind(self, key: str, write: Coroutine[Any, Any, None]) -> None:
        """Run an admission's write in the background, at most BEHIND_WRITES at once; the job is
        busy until it ends (the loop neither decides for it nor moves it on), and its end kicks the loop."""
        async def run() -> None:
            try:
                async with self._behind_slots:
                    await write
            except (ApiError, aiohttp.ClientError, TimeoutError) as e:  # the API server refused or was away
                log.warning("admission of %s not written (the next cycle decides again): %s", key, e)
            except Exception:
                log.exception("admission of %s failed", key)
            finally:
                write.close()  # never started (cancelled while waiting): nothing is left pending
                self.cache.settle(key)  # a write that never ran leaves the job as the API server has it

        task = asyncio.create_task(run(), name=f"admit {key}")
        self.behind[key] = task

        def done(t: asyncio.Task[None]) -> None:
            if self.behind.get(key) is t:
                del self.behind[key]
            self.kick()

        task.add_done_callback(done)

    async def settled(self) -> None:
        """Wait for the admissions being written (tests, and a clean shutdown)."""
        while self.behind:
            await asyncio.gather(*list(self.behind.values()), return_exceptions=True)

    async def run(self, debounce_s: float = 0.05) -> None:
        """Run cycles whenever something changed, or when a due date comes. Never returns."""
        while True:
            timeout = None
            if self.next_wakeup is not None and self.on_cycle is None:
                timeout = max(self.next_wakeup - self.clock(), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.kicked.wait(), timeout)
            # Let a burst of events land in the cache first. A cycle that decided nothing is followed by a
            # pause of PACE times its deciding time (snapshot and engine, which hold the event loop): at
            # scale every write's watch event kicks the loop, and deciding again and again that nothing can
            # move is CPU the writes and the API server (on the same cores) do not get. A cycle that
            # decided something is followed at once: room is being freed and filled.
            await asyncio.sleep(debounce_s if self.progressed else max(debounce_s, PACE * self.decide_s))
            self.kicked.clear()
            if not self.leading():
                continue  # the standby keeps its cache warm and decides nothing; taking over kicks it
            try:
                await self.cycle()
            except Exception:  # one bad cycle must not stop the loop; the next one retries
                log.exception("scheduling cycle failed; retrying")
                await asyncio.sleep(1.0)
                self.kick()

    async def cycle(self) -> Decisions:
        started = time.perf_counter()
        now = self.clock()
        if await self.settings.refresh(now):
            self.job_backends.configure(self.settings.current)
        self.failures.observe(self.cache, now)
        await self.checkpoints.reconcile(now)
        await self.checkpoints.catch_up(now)
        await self.jobs.reconcile(now, busy=self.behind)
        deciding = time.perf_counter()
        snap, unqueued = build(self.cache, self.estimate, self.job_backends.admissible, self.memo,
                               (self.job_backends.settings, self.cache.present_kinds()), now)
        snap = replace(snap, node_mtbf_s=self.failures.mtbf_s)
        self.predictions.observe(self.cache)
        snap = self.predictions.apply(snap)
        self.intervals.update(snap.jobs)
        priorities = {j.key: j.priority for j in snap.jobs}
        decisions = decide(snap, now, self.policy)
        self.decide_s = time.perf_counter() - deciding  # no await in between: this is the loop's own CPU
        self.progressed = bool(decisions.actions)
        # Each decision concerns a different job, so they are carried out concurrently (bounded). An
        # admission is written behind the loop: the cache assumes it at once (its quota is taken for the
        # next cycle), and the cycle does not wait for the write and the pods' creation.
        now_work = []
        for a in decisions.actions:
            key = a.victim if isinstance(a, Preempt) else a.job
            if key in self.behind:
                continue  # its admission is still being written; the next cycle sees how it ended
            if isinstance(a, Admit | Resume):
                write = self.actuators.admit(a, now, priorities)
                if write is not None:
                    self._write_behind(key, write)
            else:
                now_work.append(self.actuators.act(a, now, priorities))
        await self.writer.bounded(now_work)
        await self.waiting.publish(decisions, unqueued, now, priorities)
        await self.waiting.publish_queues(snap, decisions, now, priorities, self.policy.fair_sharing.enabled)
        self.next_wakeup = self._wakeup(decisions, now, bool(unqueued.refused),
                                        *(t for t in (unqueued.wake, self.jobs.due) if t is not None))
        self.cycles += 1
        self.last_cycle_at = now
        if self.on_cycle is not None:
            self.on_cycle()
        metrics.CYCLE_SECONDS.observe(time.perf_counter() - started)
        return decisions

    def _wakeup(self, decisions: Decisions, now: float, refused: bool = False, *due: float) -> float | None:
        """When the next cycle is due without any change: the engine's due date, or soon while a
        checkpoint is in flight (backends are polled, but not in a busy loop), or when the cluster's
        settings are read again while a job waits for its checkpoint mode to be served, or a `due` time
        (a pods-ready timeout, the end of a requeue backoff)."""
        wake = decisions.next_wakeup
        for t in due:
            wake = min(wake or t, max(t, now))
        if self.checkpoints.in_flight():
            wake = min(wake or now + POLL_S, now + POLL_S)
        if refused:
            reread = max(self.settings.next_refresh(), now + POLL_S)
            wake = min(wake or reread, reread)
        held = self.waiting.take_due(now)  # a queue status the rate limit held back
        if held is not None:
            wake = min(wake or held, held)
        return wake
