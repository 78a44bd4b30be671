"""Policy profiles: the knobs that make the engine behave like FIFO, Kueue, EASY backfill or IASS.

A profile is plain data (validated YAML under `policies/`); a ClusterQueue's own fields refine it.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from queue_controller.duration import parse_duration
from queue_controller.engine.snapshot import ReclaimWithinCohort, WithinClusterQueue


def young_interval(checkpoint_cost_s: float, mtbf_s: float) -> float:
    """Young's first-order optimum checkpoint interval, sqrt(2*C*MTBF)."""
    return math.sqrt(2.0 * max(checkpoint_cost_s, 0.0) * mtbf_s)


def daly_interval(checkpoint_cost_s: float, mtbf_s: float) -> float:
    """Daly's higher-order optimum checkpoint interval (J. T. Daly, "A higher order estimate of the
    optimum checkpoint interval for restart dumps", FGCS 22(3), 2006, eq. 37): for a checkpoint cost
    C < 2M, sqrt(2CM) * (1 + sqrt(C/2M)/3 + (C/2M)/9) - C; else M. Young's sqrt(2CM) is its first term;
    Daly's stays right where C is not small against M (big images, failure-prone gangs)."""
    c, m = max(checkpoint_cost_s, 0.0), mtbf_s
    if c >= 2.0 * m:
        return m
    x = c / (2.0 * m)
    return math.sqrt(2.0 * c * m) * (1.0 + math.sqrt(x) / 3.0 + x / 9.0) - c


class PreemptionMode(StrEnum):
    NEVER = "Never"  # nothing is ever preempted
    KILL = "Kill"  # victims are killed and requeued; progress since their last checkpoint is lost
    CHECKPOINT = "Checkpoint"  # checkpointable victims are checkpointed; the others are killed


class KillFor(StrEnum):
    """Under mode Checkpoint, which preemptors may kill a victim that cannot be checkpointed."""

    ANY = "Any"  # every preemptor the other rules allow, when its gain beats the victim's loss
    # Only a preemptor that cannot be checkpointed itself (interactive or serving work: its wait is what
    # its priority buys). A checkpointable preemptor reserves instead and waits for the victim to end, while
    # checkpoint-aware backfill keeps the room busy: a delay, not lost work (docs/concepts.md).
    NON_CHECKPOINTABLE = "NonCheckpointable"


class OnCheckpointFailure(StrEnum):
    KILL = "Kill"  # kill the victim and requeue it from its previous checkpoint
    KEEP_RUNNING = "KeepRunning"  # leave it running; the engine picks another victim next cycle


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)


class PreemptionSettings(_Model):
    mode: PreemptionMode = PreemptionMode.NEVER
    within_cluster_queue: WithinClusterQueue = WithinClusterQueue.NEVER
    reclaim_within_cohort: ReclaimWithinCohort = ReclaimWithinCohort.NEVER
    # A job that has run less than this is not a victim (Slurm's PreemptExemptTime).
    min_runtime_seconds: Annotated[float, Field(ge=0)] = 0.0
    on_checkpoint_failure: OnCheckpointFailure = OnCheckpointFailure.KILL
    # Mode Checkpoint only: which preemptors may kill a victim that cannot be checkpointed (`KillFor`).
    kill_for: KillFor = KillFor.ANY


class RuntimePredictionSettings(_Model):
    """Learned run-time predictions (queue_controller/predictions.py). The engine reads only `enabled`:
    the adapter learns the predictions and puts them into the snapshot; the rest tells it how."""

    # Use `Job.runtime_prediction_s` instead of the user's estimate for reservations and backfill, while
    # the job has not run past it (past it, the estimate holds).
    enabled: bool = False
    # The quantile of a group's actual/estimated run-time ratios taken as its correction factor: the
    # median predicts the typical job; a higher quantile underpredicts fewer jobs and corrects less.
    quantile: Annotated[float, Field(gt=0, le=1)] = 0.5
    # The last `window` finished jobs of a group count; none until it has `min_samples` of them.
    window: Annotated[int, Field(ge=1, le=100000)] = 200
    min_samples: Annotated[int, Field(ge=1)] = 20


class BackfillSettings(_Model):
    enabled: bool = False
    # How many blocked jobs get a reserved start (1 = EASY; larger approaches conservative backfill).
    reservation_depth: Annotated[int, Field(ge=1, le=1000)] = 1
    # IASS: a checkpointable job may backfill past a reservation, because it is vacated by checkpoint when
    # the reservation comes due.
    checkpoint_aware: bool = False
    # Used for jobs without spec.runtimeEstimateSeconds; None means "unknown" (such a job can only
    # backfill where it cannot delay a reservation, or checkpoint-aware).
    default_runtime_estimate_seconds: Annotated[float | None, Field(gt=0)] = None
    # Learned corrections of users' estimates, used in their place (`RuntimePredictionSettings`).
    runtime_predictions: RuntimePredictionSettings = RuntimePredictionSettings()


class CheckpointSettings(_Model):
    periodic: bool = False
    # Default for jobs that set no interval: "auto" (Young's interval) or a duration such as "30m"
    # (queue_controller/duration.py: the same grammar as a job's spec.checkpoint.interval).
    default_interval: str = "auto"
    node_mtbf_seconds: Annotated[float, Field(gt=0)] = 7 * 24 * 3600.0
    # Bounds on the auto interval, so a tiny measured cost does not checkpoint every few seconds.
    min_interval_seconds: Annotated[float, Field(gt=0)] = 300.0
    max_interval_seconds: Annotated[float, Field(gt=0)] = 24 * 3600.0

    @field_validator("default_interval")
    @classmethod
    def _interval(cls, v: str) -> str:
        if v != "auto":
            parse_duration(v)
        return v


class OrderingSettings(_Model):
    """The order of the jobs of one priority (engine/ordering.py): by arrival, less a credit for the work
    they ask for, as HPC schedulers' multifactor priorities add a resource factor to the age factor."""

    # Seconds a job is ordered ahead of its arrival per GPU-hour it asks for (its GPUs x its run-time
    # estimate). 0: by arrival alone (Kueue's order).
    work_credit_seconds_per_gpu_hour: Annotated[float, Field(ge=0)] = 0.0
    # The most credit one job gets: a job is overtaken only by jobs that arrive less than this after it,
    # so none waits for ever behind larger ones.
    max_work_credit_seconds: Annotated[float, Field(gt=0)] = 24 * 3600.0


class FairSharingStrategy(StrEnum):
    """Kueue's fair-sharing preemption strategies (KEP 1714, rules S2-a and S2-b)."""

    # S2-a: the preemptor's queue's share with the preemptor admitted is at most the target queue's share
    # with the victim gone.
    LESS_THAN_OR_EQUAL_TO_FINAL_SHARE = "LessThanOrEqualToFinalShare"
    # S2-b: the preemptor's queue's share with the preemptor admitted is below the target queue's share
    # as it is now.
    LESS_THAN_INITIAL_SHARE = "LessThanInitialShare"


_S2A = FairSharingStrategy.LESS_THAN_OR_EQUAL_TO_FINAL_SHARE
_S2B = FairSharingStrategy.LESS_THAN_INITIAL_SHARE


class FairSharingSettings(_Model):
    """Fair sharing within a cohort (Kueue's `fairSharing`; engine/fair_sharing.py has the rules)."""

    enabled: bool = False
    # Tried in order; Kueue accepts only these three lists, and so do we.
    preemption_strategies: tuple[FairSharingStrategy, ...] = (_S2A, _S2B)

    @field_validator("preemption_strategies")
    @classmethod
    def _strategies(cls, v: tuple[FairSharingStrategy, ...]) -> tuple[FairSharingStrategy, ...]:
        if v not in ((_S2A,), (_S2B,), (_S2A, _S2B)):
            raise ValueError(f"preemptionStrategies must be [{_S2A}], [{_S2B}] or [{_S2A}, {_S2B}]")
        return v


class Policy(_Model):
    name: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
    description: str = ""
    preemption: PreemptionSettings = PreemptionSettings()
    backfill: BackfillSettings = BackfillSettings()
    checkpoints: CheckpointSettings = CheckpointSettings()
    # Treat every ClusterQueue as StrictFIFO (the head blocks the queue): plain FCFS.
    strict_fifo: bool = False
    # Within a priority: by arrival, or ahead by a credit for requested work (`OrderingSettings`).
    ordering: OrderingSettings = OrderingSettings()
    # Kueue's fair sharing: admit from the cohort's queue with the lowest dominant resource share, and
    # preempt within the cohort to restore fair shares. `fairSharing: true` is short for `enabled: true`.
    fair_sharing: FairSharingSettings = FairSharingSettings()
    # Blocked jobs per ClusterQueue per cycle that may search for preemption victims; the rest wait for
    # the next cycle. Bounds a cycle's cost the way Kueue only considers queue heads.
    preemption_attempts_per_queue: Annotated[int, Field(ge=1, le=1000)] = 4

    @field_validator("fair_sharing", mode="before")
    @classmethod
    def _fair_sharing_flag(cls, v: object) -> object:
        return {"enabled": v} if isinstance(v, bool) else v

    def interval_for(self, explicit_s: float | None, auto: bool, checkpoint_cost_s: float,
                     mtbf_s: float | None = None, nodes: int = 1) -> float | None:
        """The periodic checkpoint interval for one job, or None when it takes none (see `interval_choice`)."""
        return self.interval_choice(explicit_s, auto, checkpoint_cost_s, mtbf_s, nodes)[0]

    def interval_choice(self, explicit_s: float | None, auto: bool, checkpoint_cost_s: float,
                        mtbf_s: float | None = None, nodes: int = 1) -> tuple[float | None, str]:
        """The periodic checkpoint interval for one job, and why it is that one.

        A job's own interval (`explicit_s`, or `auto`) is honoured under every policy. Otherwise the
        policy decides: none unless its checkpoints are periodic, else its default interval. `auto` is
        Daly's interval from the job's checkpoint cost and the mean time between failures of the nodes it
        runs on (`mtbf_s`, measured on the cluster; else the policy's; divided by its `nodes`: a gang
        stops when any of its nodes fails), clamped to the policy's bounds."""
        if explicit_s is not None and not auto:
            return explicit_s, "spec.checkpoint.interval"
        c = self.checkpoints
        if not auto:
            if not c.periodic:
                return None, f"policy {self.name} takes no periodic checkpoints and the job sets no interval"
            if c.default_interval != "auto":
                return parse_duration(c.default_interval), f"policy {self.name}'s default interval"
        measured = mtbf_s is not None
        node_mtbf = mtbf_s if mtbf_s is not None else c.node_mtbf_seconds
        job_mtbf = node_mtbf / max(nodes, 1)
        raw = daly_interval(checkpoint_cost_s, job_mtbf)
        interval = min(max(raw, c.min_interval_seconds), c.max_interval_seconds)
        why = (f"auto: Daly's interval for a {checkpoint_cost_s:.1f}s checkpoint and a {job_mtbf / 3600:.1f}h "
               f"mean time between failures ({'measured' if measured else 'assumed'} node MTBF "
               f"{node_mtbf / 3600:.1f}h over {max(nodes, 1)} node(s))")
        if interval != raw:
            why += f", clamped to [{c.min_interval_seconds:.0f}s, {c.max_interval_seconds:.0f}s]"
        return interval, why
