"""The controller's side of learned run-time predictions (queue_controller/predictions.py).

Each cycle the controller feeds the jobs that succeeded since its last look to an `EstimateLearner`:
their accumulated run time (`status.runTimeSeconds`) against their user's `spec.runtimeEstimateSeconds`,
grouped by namespace (the team or user a job belongs to), in completion order. It then gives each job of
the snapshot that has an estimate its namespace's prediction (`Job.runtime_prediction_s`); the engine
uses it under a policy with `backfill.runtimePredictions.enabled`. Nothing is learned under a policy
without it.

What is learned lives in this process: a restarted controller learns again from the succeeded jobs
still in the cluster (the cache lists them), and a job deleted before the controller saw it succeed is
not counted.
"""

from __future__ import annotations

from dataclasses import replace

from queue_controller.engine import Job, Snapshot
from queue_controller.engine.policy import RuntimePredictionSettings
from queue_controller.operator.cache import Cache
from queue_controller.predictions import EstimateLearner
from queue_controller.wire import parse_time


class RuntimePredictions:
    """Learns from succeeded jobs, and puts predictions into snapshots (module docstring)."""

    def __init__(self, settings: RuntimePredictionSettings) -> None:
        self.learner = EstimateLearner(settings) if settings.enabled else None
        self._seen: set[str] = set()  # uids of the succeeded jobs already learned from
        # job key -> (the snapshot's Job, the prediction given, the Job with it): a job whose record and
        # prediction did not change keeps its object, as the snapshot's memo keeps it (identity matters
        # to the engine's carried accounting).
        self._given: dict[str, tuple[Job, float, Job]] = {}

    def observe(self, cache: Cache) -> None:
        """Learn from the jobs that succeeded since the last call, in completion order."""
        if self.learner is None:
            return
        new: list[tuple[float, str, str, float, float]] = []
        for rec in cache.jobs.values():
            if rec.uid in self._seen or rec.phase != "Succeeded" or rec.spec is None:
                continue
            self._seen.add(rec.uid)
            est = rec.spec.runtime_estimate_seconds
            ran = rec.status.get("runTimeSeconds")
            if est is None or ran is None:
                continue
            done = parse_time(rec.status.get("completionTime")) or 0.0
            new.append((done, rec.key, rec.namespace, float(ran), float(est)))
        for _, _, namespace, actual, estimate in sorted(new):
            self.learner.observe(namespace, actual, estimate)
        if len(self._seen) > 2 * len(cache.jobs) + 64:  # succeeded jobs since deleted
            self._seen &= {rec.uid for rec in cache.jobs.values()}

    def apply(self, snap: Snapshot) -> Snapshot:
        """The snapshot with each job's prediction (jobs without an estimate, or of a namespace with too
        little history, get none)."""
        learner = self.learner
        if learner is None:
            return snap
        given: dict[str, tuple[Job, float, Job]] = {}
        jobs: list[Job] = []
        changed = False
        for job in snap.jobs:
            pred = learner.predict(job.key.split("/", 1)[0], job.runtime_estimate_s)
            if pred is None:
                jobs.append(job)
                continue
            old = self._given.get(job.key)
            out = old[2] if old is not None and old[0] is job and old[1] == pred else replace(
                job, runtime_prediction_s=pred)
            given[job.key] = (job, pred, out)
            jobs.append(out)
            changed = True
        self._given = given
        return replace(snap, jobs=tuple(jobs)) if changed else snap
