"""Periodic checkpoints: when a running job takes a checkpoint for fault tolerance.

Under a policy with periodic checkpoints, a running checkpointable job is checkpointed every interval
after it started or last checkpointed. The interval is the job's own (`spec.checkpoint.interval`, honoured
under every policy), the policy's default, or `auto`: Daly's interval from the job's measured checkpoint
cost and the mean time between failures of the nodes it spans (the node MTBF measured on the cluster when
the snapshot carries it, else the policy's, divided by the number of nodes), clamped to the policy's
bounds (`Policy.interval_choice`). A job already checkpointing, being vacated, or chosen as a
victim this cycle is skipped. A checkpoint not yet due asks the loop to be woken when it is.
"""

from __future__ import annotations

from queue_controller.engine.decisions import Checkpoint, CheckpointReason
from queue_controller.engine.snapshot import Job
from queue_controller.engine.workspace import Workspace


def job_nodes(job: Job) -> int:
    """The nodes a running job spans (its gang stops when any of them fails)."""
    return len({n for p in job.placement for n in p.nodes}) or 1


def periodic_checkpoints(ws: Workspace) -> None:
    """Emit a `Checkpoint` for every running job whose checkpoint is due; wake up for the next one."""
    for key, run in ws.running.items():
        job = run.job
        if (not job.checkpointable or job.started_at is None or job.vacating or job.checkpointing
                or key in ws.victims):
            continue
        interval = ws.policy.interval_for(job.checkpoint_interval_s, job.checkpoint_interval_auto,
                                          job.checkpoint_cost_s, ws.node_mtbf_s, job_nodes(job))
        if interval is None:
            continue
        base = job.started_at
        if job.last_checkpoint_at is not None and job.last_checkpoint_at > base:
            base = job.last_checkpoint_at
        due = base + interval
        if due <= ws.now:
            ws.out.actions.append(Checkpoint(key, CheckpointReason.PERIODIC))
        else:
            ws.wake(due)
