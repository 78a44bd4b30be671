"""Learned run-time predictions: users' runtime estimates corrected by what their earlier jobs really took.

Users overestimate: asked for a run time, they give a round walltime well above what the job needs
(on HPC logs typically 1.5-3x; Mu'alem & Feitelson, IEEE TPDS 12(6), 2001; Tsafrir, Etsion & Feitelson,
"Backfilling using system-generated predictions rather than user runtime estimates", IEEE TPDS 18(6),
2007). Reservations computed from such estimates come too late, and backfill refuses jobs that would
have ended in time. HPC schedulers therefore predict run times from history and keep the user's
estimate only as the bound it is.

`EstimateLearner` does that for each adapter (the simulator per trace queue; the controller per namespace,
`operator/predictions.py`). Each finished
job with an estimate reports actual / estimated run time for its *group* (the adapter's choice: a user,
a namespace, a local queue). A group's correction factor is a quantile of its last `window` ratios,
once it has `min_samples` of them, and never above 1 (a prediction never exceeds the estimate). A job's
prediction is its estimate times its group's factor, or None while the group has too little history.

The engine does no learning: the adapter puts the prediction into the snapshot
(`Job.runtime_prediction_s`), and a policy with `backfill.runtimePredictions.enabled` uses it instead
of the estimate for as long as the job has not run past it; past it, the user's estimate holds
(`Workspace.remaining`). The learner is deterministic: the same finished jobs in the same order give
the same factors.
"""

from __future__ import annotations

import math
from collections import deque

from queue_controller.engine.policy import RuntimePredictionSettings


class EstimateLearner:
    """Per-group correction factors for runtime estimates, from finished jobs (module docstring)."""

    def __init__(self, settings: RuntimePredictionSettings) -> None:
        self.settings = settings
        self._ratios: dict[str, deque[float]] = {}
        self._factors: dict[str, float] = {}

    def observe(self, group: str, actual_s: float, estimate_s: float | None) -> None:
        """Record a finished job: its actual run time (work done, seconds) and its user's estimate."""
        if estimate_s is None or estimate_s <= 0 or actual_s < 0:
            return
        s = self.settings
        window = self._ratios.get(group)
        if window is None:
            window = self._ratios[group] = deque(maxlen=s.window)
        window.append(min(actual_s / estimate_s, 1.0))
        if len(window) >= s.min_samples:
            ordered = sorted(window)
            # The nearest-rank quantile: a ratio some finished job really had, not an interpolation.
            rank = max(math.ceil(s.quantile * len(ordered)) - 1, 0)
            self._factors[group] = ordered[rank]

    def factor(self, group: str) -> float | None:
        """The group's correction factor, or None while it has fewer than `min_samples` finished jobs."""
        return self._factors.get(group)

    def predict(self, group: str, estimate_s: float | None) -> float | None:
        """The job's predicted run time (seconds), or None (no estimate, or too little history)."""
        f = self._factors.get(group)
        if f is None or estimate_s is None:
            return None
        return max(estimate_s * f, 1.0)
