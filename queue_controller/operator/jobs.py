"""The job lifecycle: what a job's pods, its nodes and its user say about an admitted job.

Every cycle looks at each admitted job's pods of the current attempt: all running makes it `Running`
(its run starts when the last pod started); all succeeded makes it `Succeeded` (its run ended when the
last pod finished, not when the cycle noticed); a failed pod, or a node that is NotReady or gone,
requeues it from its newest checkpoint until `maxRestarts` is spent, then fails it. Pods an admitted
job should have but does not (a restart between writing the admission and creating them) are created.
`spec.suspend` checkpoints a running job out (reason User), stops one that cannot be checkpointed, and
marks a waiting one `Suspended`.
"""

from __future__ import annotations

from collections.abc import Container, Coroutine, Iterable
from typing import Any

from queue_controller.api.common import ConditionStatus
from queue_controller.api.job import RequeueState
from queue_controller.checkpoint.injection import EXIT_CHECKPOINTED, EXIT_KEY_UNAVAILABLE, EXIT_RESTORE_REFUSED
from queue_controller.operator.backends import artifacts
from queue_controller.operator.cache import Cache
from queue_controller.operator.checkpoints import Checkpoints
from queue_controller.operator.failures import Intervals
from queue_controller.operator.records import JobRecord, PodRecord
from queue_controller.operator.runs import Runs
from queue_controller.operator.snapshot import latest_completed_checkpoint
from queue_controller.operator.status import JobStatusPatch, StatusWriter, job_conditions
from queue_controller.operator.waiting import Waiting
from queue_controller.wire import (
    ACTIVE_PHASES,
    STARTING_PHASES,
    TERMINAL_PHASES,
    parse_time,
    pod_name,
    to_datetime,
)

# A starting job whose pods all run is written Running once the controller has seen them all running for
# this long (seconds). Measured from the controller's own first sight, not the pods' start time: that has
# whole seconds only, and under load the watch brings a pod's start and its end late by about the same
# time, so the gap the controller sees is close to the run's length.
RUNNING_GRACE_S = 1.0
USER_SUSPEND: tuple[ConditionStatus, str, str] = ("True", "SuspendedByUser", "spec.suspend is true")


def suspended_by_user(job: JobRecord, now: float) -> JobStatusPatch:
    """A waiting job its user suspended: out of the queue until `spec.suspend` is false again."""
    return JobStatusPatch(phase="Suspended", message="suspended by its user",
                          pending_reason=None,
                          conditions=job_conditions(job.status, {"Suspended": USER_SUSPEND}, now))


def suspending(job: JobRecord, checkpoint: str, now: float) -> JobStatusPatch:
    return JobStatusPatch(phase="Checkpointing", message=f"suspending: checkpoint {checkpoint}",
                          conditions=job_conditions(job.status, {"Checkpointing": (
                              "True", "User", f"checkpoint {checkpoint}")}, now))


def succeeded(job: JobRecord, pods: Iterable[PodRecord], now: float) -> tuple[JobStatusPatch, float]:
    """The status of a job whose pods all succeeded, and its total run time."""
    pods = list(pods)
    # A run that ended within the Running grace was never written Running: its start is its pods' own.
    starts = [p.start_time for p in pods if p.start_time is not None]
    start = parse_time(job.status.get("runStartTime")) or (max(starts) if starts else now)
    # The run ended when the last pod finished, not when this cycle noticed it.
    finished = [p.finish_time for p in pods]
    end = max(f for f in finished if f is not None) if any(finished) else now
    total = float(job.status.get("runTimeSeconds") or 0.0) + max(min(end, now) - start, 0.0)
    msg = "all pods succeeded"
    return JobStatusPatch(
        phase="Succeeded", run_time_seconds=round(total, 3), run_start_time=None, message=msg,
        completion_time=to_datetime(now), conditions=job_conditions(job.status, {
            "Finished": ("True", "Succeeded", msg), "Running": ("False", "Succeeded", msg),
            "QuotaReserved": ("False", "Finished", msg)}, now)), total


def running(job: JobRecord, pods: Iterable[PodRecord], now: float, checkpoints: str = "") -> JobStatusPatch:
    """The status of a starting job whose pods all run: its run started when the last pod did.
    `checkpoints`: what checkpoints it (e.g. that they are simulated), said in the message."""
    starts = [p.start_time for p in pods if p.start_time is not None]
    msg = "restored from checkpoint and running" if job.phase == "Restoring" else "all pods running"
    if checkpoints:
        msg += f"; {checkpoints}"
    return JobStatusPatch(phase="Running", run_start_time=to_datetime(max(starts) if starts else now), message=msg,
                          conditions=job_conditions(job.status, {"Running": ("True", "PodsRunning", msg),
                                                                 "PodsReady": ("True", "PodsRunning", msg)}, now))


def _exit(pod: PodRecord) -> str:
    if pod.exit_code is None:
        return ""
    if pod.ckq_run_exit == EXIT_CHECKPOINTED:
        return f" (exit code {EXIT_CHECKPOINTED}: ckq-run stopped it after a dump the controller did not ask for)"
    return f" (exit code {pod.exit_code})"


def failed(job: JobRecord, restarts: int, message: str, now: float) -> JobStatusPatch:
    return JobStatusPatch(phase="Failed", restarts=restarts, admission=None, run_start_time=None, message=message,
                          conditions=job_conditions(job.status, {
                              "Finished": ("True", "Failed", message), "Running": ("False", "Failed", message),
                              "QuotaReserved": ("False", "Failed", message)}, now))


class JobLifecycle:
    def __init__(self, cache: Cache, writer: StatusWriter, runs: Runs, checkpoints: Checkpoints,
                 waiting: Waiting, intervals: Intervals | None = None) -> None:
        self.intervals = intervals
        self.cache = cache
        self.writer = writer
        self.runs = runs
        self.checkpoints = checkpoints
        self.waiting = waiting
        self.due: float | None = None  # the next pods-ready timeout of a starting job
        # key -> (attempt, when this controller first saw all its pods running): the Running grace's start
        self.seen_ready: dict[str, tuple[int, float]] = {}

    async def reconcile(self, now: float, busy: Container[str] = ()) -> None:
        """Move every job on by what its pods, nodes and user say. Each job's step concerns that job
        alone, so the steps run concurrently (bounded): at scale a cycle finds hundreds of jobs finished,
        and writing their ends one after another made the cycle, and the next admission, wait for each
        round trip in turn. `busy`: jobs whose admission is still being written (the loop's write-behind);
        their pods are created by that write, not here."""
        self.due = None
        steps: list[Coroutine[Any, Any, None]] = []
        starting: set[str] = set()
        for job in list(self.cache.jobs.values()):
            phase = job.status.get("phase") or "Pending"
            if phase in STARTING_PHASES:
                starting.add(job.key)
            if job.spec is None or phase in TERMINAL_PHASES or job.key in busy:
                continue
            if phase not in ACTIVE_PHASES:
                if job.spec.suspend and job.phase != "Suspended":
                    steps.append(self._suspend_waiting(job, now))
                continue
            if job.status.get("admission"):
                steps.append(self._active(job, now))
        for key in [k for k in self.seen_ready if k not in starting]:  # written Running, ended, or gone
            del self.seen_ready[key]
        await self.writer.bounded(steps)

    async def _suspend_waiting(self, job: JobRecord, now: float) -> None:
        await self.writer.job(job, suspended_by_user(job, now))
        self.waiting.forget(job.key)

    async def _active(self, job: JobRecord, now: float) -> None:
        assert job.spec is not None
        attempt = int(job.status.get("attempt") or 0)
        expected, pods = self.runs.current_pods(job)
        phase = job.phase
        if pods and self.runs.all_succeeded(job):
            # Every pod finished its work: that wins over a checkpoint in flight (the API server may have
            # been away while they finished), which is then failed as having nothing left to checkpoint.
            patch, total = succeeded(job, pods.values(), now)
            await self.writer.job(job, patch)
            if attempt > 1:
                # The common path (admitted once, ran, succeeded) is told by its conditions and the
                # Admitted Event; one Event more per job is an API write per job at scale. A job that
                # was preempted, suspended or restarted has a story its Events tell, and its end is part.
                self.writer.event(job, "Succeeded", f"all pods succeeded after {total:.0f}s of run time", now)
            return
        # Node failure: a node the job runs on is gone or NotReady.
        lost_nodes = sorted({n for n in expected.values()
                             if n not in self.cache.nodes or not self.cache.nodes[n].ready})
        failed_pods = [p for p in pods.values() if p.phase == "Failed"]
        if phase == "Checkpointing" or self.checkpoints.vacating(job):
            # The checkpoint in flight decides what happens next. A pod that exits EXIT_CHECKPOINTED now
            # is the expected end of a dump without leaveRunning (ckq-run stopped the workload), not a
            # failure; a pod that dies otherwise fails the dump, which the node agents report (or, died
            # before they froze it, the checkpoints' reconcile: Checkpoints._died_uncovered).
            await self.checkpoints.resume_interrupted(job, now)
            return
        keyless = next((p for p in failed_pods if p.ckq_run_exit == EXIT_KEY_UNAVAILABLE), None)
        if keyless is not None and not lost_nodes:
            # ckq-run started nothing: the Secret the pod mounts (optional, so that the pod is not stuck in
            # ContainerCreating) lacks the key. Restarting cannot help until someone creates it.
            await self._key_unavailable(job, keyless, now)
            return
        refused = next((p for p in failed_pods if p.restore_from and p.ckq_run_exit == EXIT_RESTORE_REFUSED),
                       None)
        last = (job.status.get("lastCheckpoint") or {}).get("name")
        if refused is not None and refused.restore_from and refused.restore_from == last and not lost_nodes:
            # ckq-run verified the images and refused them (corrupt, missing, unknown, another key):
            # restarting from the same checkpoint would fail again, so it is failed and the job falls
            # back. Only the checkpoint the controller restores from is ever failed: a pod's annotation
            # naming another one (written by hand) is not trusted.
            await self.runs.restore_failed(job, refused.restore_from, f"pod {refused.name} could not restore "
                                           f"checkpoint {refused.restore_from} (ckq-run exit {EXIT_RESTORE_REFUSED}: "
                                           "its images are corrupt, missing or unusable here"
                                           f"{self._key_hint(job, refused.restore_from)})", now)
            return
        if lost_nodes or failed_pods:
            why = (f"node {', '.join(lost_nodes)} is NotReady or gone" if lost_nodes
                   else f"pod {failed_pods[0].name} failed" + _exit(failed_pods[0]))
            if not lost_nodes and self.intervals is not None:
                self.intervals.rate.pod_failed()  # a node's failure is counted once, as the node's
            await self._fail_run(job, now, why)
            return
        if job.spec.suspend:
            await self._suspend(job, now)
            return
        ready = bool(pods) and len(pods) == len(expected) and all(p.phase in ("Running", "Succeeded")
                                                                   for p in pods.values())
        if phase in STARTING_PHASES and not ready and await self._pods_ready_timeout(job, pods.values(), now):
            return
        missing = [k for k in expected if k not in pods]
        if missing and phase == "Running":
            # A pod of a running gang is gone (deleted, evicted and removed, its node's pods cleaned up)
            # while the rest run on: the gang cannot go on without it. It restarts whole, from its
            # newest checkpoint, counted as a restart — never left holding its quota forever.
            pod_set, index = missing[0]
            await self._fail_run(job, now, f"pod {pod_name(job.name, attempt, pod_set, index)} is gone")
            return
        if missing and phase in STARTING_PHASES:
            # Pods not created yet (or a restart between the status write and the pods): create them.
            ckpt = (job.status.get("lastCheckpoint") or {}).get("name") if phase == "Restoring" else None
            await self.runs.start(job, ckpt, now)
            return
        if not pods or len(pods) != len(expected):
            return
        if phase in STARTING_PHASES and ready:
            seen = self.seen_ready.get(job.key)
            if seen is None or seen[0] != attempt:
                seen = self.seen_ready[job.key] = (attempt, now)
            if now - seen[1] < RUNNING_GRACE_S:
                # Written once the run has lasted a moment: a job that ends within it goes from Admitted
                # straight to Succeeded, one write instead of two (its run start is the pods' own, so
                # nothing is lost by writing it later).
                due = seen[1] + RUNNING_GRACE_S
                self.due = due if self.due is None else min(self.due, due)
                return
            placed = self.runs.backends.resolve(job, expected.values())
            patch = running(job, pods.values(), now, placed.message if placed.available else "")
            interval = self.intervals.of(job.key, len(set(expected.values()))) if self.intervals is not None else None
            if interval is not None:
                patch.checkpoint_interval = interval
            await self.writer.job(job, patch)

    async def _pods_ready_timeout(self, job: JobRecord, pods: Iterable[PodRecord], now: float) -> bool:
        """Kueue's waitForPodsReady: an admitted job whose pods are not all running `podsReadyTimeout`
        after its admission (an image that does not exist, an affinity no node meets) gives its quota
        back and is requeued with exponential backoff; after `requeueBackoffLimit` requeues it fails.
        True when it timed out."""
        settings = self.runs.backends.settings
        admitted = parse_time((job.status.get("admission") or {}).get("time"))
        if admitted is None:
            return False
        deadline = admitted + settings.pods_ready_timeout_s
        if now < deadline:
            self.due = deadline if self.due is None else min(self.due, deadline)
            return False
        waiting_for = sorted(p.name for p in pods if p.phase != "Running")
        why = (f"its pods were not all running {settings.pods_ready_timeout_s:.0f}s after admission"
               + (f" (not running: {', '.join(waiting_for[:3])}{' …' if len(waiting_for) > 3 else ''})"
                  if waiting_for else ""))
        await self._requeue_with_backoff(job, now, why, "PodsReadyTimeout", "pods-ready-timeout")
        return True

    async def _requeue_with_backoff(self, job: JobRecord, now: float, why: str, reason: str, cause: str) -> None:
        """Give the quota back and requeue with exponential backoff (PodsReady False, `reason`; an Event
        `reason`); after `requeueBackoffLimit` such requeues the job fails."""
        settings = self.runs.backends.settings
        count = int((job.status.get("requeueState") or {}).get("count") or 0) + 1
        if settings.backoff_limit is not None and count > settings.backoff_limit:
            await self.runs.stop(job, keep_finished=True)
            msg = f"{why}; requeued {count - 1} time(s), the limit (requeueBackoffLimit {settings.backoff_limit})"
            await self.writer.job(job, failed(job, int(job.status.get("restarts") or 0), msg, now))
            self.writer.event(job, reason, msg, now, warning=True)
            return
        at = now + settings.requeue_delay(count)
        msg = f"{why}; requeued, back in the queue in {at - now:.0f}s"
        await self.runs.requeue(job, now, msg, cause=cause, counters=JobStatusPatch(
            requeue_state=RequeueState(count=count, requeue_at=to_datetime(at))),
            conditions={"PodsReady": ("False", reason, msg)})
        self.writer.event(job, reason, msg, now, warning=True)

    async def _key_unavailable(self, job: JobRecord, pod: PodRecord, now: float) -> None:
        """A pod's ckq-run found the encryption key missing or malformed (EXIT_KEY_UNAVAILABLE): the job
        says which Secret and waits, with backoff, for someone to create or fix it."""
        key = self.runs.backends.encryption_key(job)
        what = ("is missing, or does not hold a 256-bit key" if key.required
                else "exists but has no valid key in it")
        why = (f"pod {pod.name} cannot start: its checkpoint encryption key, {key.describe(job.namespace)}, "
               f"{what} (ckq-run exit {EXIT_KEY_UNAVAILABLE}; the controller never reads Secrets: create or fix it)")
        await self._requeue_with_backoff(job, now, why, "EncryptionKeyUnavailable", "encryption-key")

    def _key_hint(self, job: JobRecord, checkpoint: str) -> str:
        """What a failed restore's message adds about keys: the key id the images were encrypted with and
        the Secret this run's pods had, so a restore with another key (or none) is named plainly."""
        rec = self.runs.cache.checkpoints.get(f"{job.namespace}/{checkpoint}")
        ids = sorted({a.encryption_key_id for a in artifacts(rec) if a.encryption_key_id}) if rec else []
        if not ids:
            return ""
        key = self.runs.backends.encryption_key(job)
        return (f"; its images were encrypted with key id {', '.join(ids)}, and this run's pods had "
                f"{key.describe(job.namespace)}: a different or missing key cannot decrypt them")

    async def _suspend(self, job: JobRecord, now: float) -> None:
        """The user suspends a running job: checkpoint it out, or stop it when it cannot be checkpointed."""
        assert job.spec is not None
        if job.spec.checkpoint.mode != "None":
            name = await self.checkpoints.take(job, "User", False, now)
            if name is not None:
                await self.writer.job(job, suspending(job, name, now))
            return
        await self.runs.requeue(job, now, "suspended by its user (not checkpointable: stopped)", cause="suspend",
                                phase="Suspended", conditions={"Suspended": USER_SUSPEND})

    async def _fail_run(self, job: JobRecord, now: float, why: str) -> None:
        assert job.spec is not None
        restarts = int(job.status.get("restarts") or 0) + 1
        if restarts > job.spec.max_restarts:
            await self.runs.stop(job, keep_finished=True)  # its failed pods stay, for their logs
            msg = f"{why}; restarts exhausted ({job.spec.max_restarts})"
            await self.writer.job(job, failed(job, restarts, msg, now))
            self.writer.event(job, "Failed", msg, now, warning=True)
            return
        latest = latest_completed_checkpoint(self.cache, job.key)
        where = f"restarts from checkpoint {latest[0]}" if latest else "restarts from the beginning"
        await self.runs.requeue(job, now, f"{why}; {where}", cause="failure",
                                counters=JobStatusPatch(restarts=restarts))
        self.writer.event(job, "Restarting", f"{why}; {where}", now, warning=True)
