"""The failure rate the controller observes, and the checkpoint interval it puts in force for each job.

`auto` checkpoint intervals need the mean time between failures (MTBF) of a node. A constant would be
wrong on every cluster but one, so the controller measures it: it counts the failures it observes —
a Ready node turning NotReady, a pod of a running job failing on a node that stays Ready — against the
node-time it watched (Ready nodes x seconds). The policy's `nodeMtbfSeconds` is the prior, worth one
failure: MTBF = (prior + observed node-seconds) / (1 + failures). With nothing observed that is the
prior; as node-time and failures accumulate, the measurement takes over. It starts afresh when the
controller restarts (the prior carries it meanwhile).

The interval a job's periodic checkpoints follow is written into its status (`checkpointInterval`:
seconds and why) when its run starts and whenever a periodic checkpoint completes — moments the status
is written anyway, so it costs no write of its own.
"""

from __future__ import annotations

from collections.abc import Iterable

from queue_controller.api.job import CheckpointInterval
from queue_controller.engine import Job, Policy
from queue_controller.engine.periodic_checkpoints import job_nodes
from queue_controller.operator.cache import Cache


class FailureRate:
    """Failures per node-second observed, with the policy's MTBF as the prior."""

    def __init__(self, prior_mtbf_s: float) -> None:
        self.prior_mtbf_s = prior_mtbf_s
        self.node_seconds = 0.0
        self.failures = 0
        self._seen_at: float | None = None
        self._counted_from_cache = 0

    def observe(self, cache: Cache, now: float) -> None:
        """Add the node-time since the last look, and the node failures the cache saw meanwhile."""
        if self._seen_at is not None and now > self._seen_at:
            self.node_seconds += (now - self._seen_at) * sum(1 for n in cache.nodes.values() if n.ready)
        self._seen_at = now
        self.failures += cache.node_failures - self._counted_from_cache
        self._counted_from_cache = cache.node_failures

    def pod_failed(self) -> None:
        self.failures += 1

    @property
    def mtbf_s(self) -> float:
        return (self.prior_mtbf_s + self.node_seconds) / (1 + self.failures)

    def describe(self) -> str:
        return (f"{self.failures} failure(s) in {self.node_seconds / 3600:.1f} node-hours observed, "
                f"prior {self.prior_mtbf_s / 3600:.0f}h")


class Intervals:
    """Each job's checkpoint interval and why, from the cycle's engine records and the failure rate."""

    def __init__(self, policy: Policy, rate: FailureRate) -> None:
        self.policy = policy
        self.rate = rate
        self._jobs: dict[str, Job] = {}

    def update(self, jobs: Iterable[Job]) -> None:
        self._jobs = {j.key: j for j in jobs}

    def of(self, key: str, nodes: int | None = None) -> CheckpointInterval | None:
        """The interval the job's periodic checkpoints follow (None: unknown yet). `nodes`: those its
        run spans, when its engine record does not say yet."""
        job = self._jobs.get(key)
        if job is None or not job.checkpointable:
            return None
        seconds, why = self.policy.interval_choice(
            job.checkpoint_interval_s, job.checkpoint_interval_auto, job.checkpoint_cost_s, self.rate.mtbf_s,
            nodes if nodes is not None else job_nodes(job))
        if seconds is not None and why.startswith("auto"):
            why += f"; node MTBF from {self.rate.describe()}"
        return CheckpointInterval(seconds=None if seconds is None else round(seconds, 3), reason=why[:1024])
