"""Preemption, checkpoint-first: making room for a pending job by vacating running ones.

When a job does not fit for lack of quota or capacity, the engine may make room by preempting running
jobs. Three questions, one module each (as Kueue's `pkg/scheduler/preemption`):

- `eligibility.py`: may this running job be preempted for that pending one, and under which reason
  (`InClusterQueue`, `InCohortReclamation`, `ReservationDue`)? The policy's `withinClusterQueue` and
  `reclaimWithinCohort`, a queue's own overrides, the minimum runtime, backfilled jobs.
- `victim_order.py`: in which order are candidates tried? Jobs already being vacated first (their room
  comes at no extra cost), then the least work lost: a checkpoint plus restore for a checkpointable job
  under a checkpoint-first policy, the progress since the last checkpoint for any other. `VictimOrder`
  names each criterion.
- `victim_set.py`: the minimal victim set. Victims are added in that order until the job fits, then
  the set is walked backwards dropping any victim that turns out unnecessary; the room is held for the
  preemptor until the victims are gone, and the `Preempt` decisions are made.

Victims keep their resources until they have actually left, and the preemptor is admitted by a later
cycle, so a cycle never over-commits. This package imports the workspace and the fit and backfill rules;
nothing below it imports it, and this file imports nothing, so there is no cycle through the package.
"""
