"""Seeded synthetic workload generator: a GPU cluster's mix of batch, training and interactive jobs.

The mix (defaults; every number is a field of `Mix`, and docs/simulator.md explains the choice):

- **batch** (70% of jobs, queue `batch`, priority 0): one pod, 1/2/4 GPUs (50/30/20%), run time
  log-normal with median 15 min (sigma 1.0, clipped to 1 min..6 h); 90% checkpointable.
- **training** (10%, queue `training`, priority 100): 2/4/8 pods (50/30/20%) of 8 GPUs each, run time
  log-normal with median 4 h (sigma 0.8, clipped to 30 min..48 h); all checkpointable, with large
  checkpoints (GPU memory, 24 GiB per GPU, plus half the host memory).
- **interactive** (20%, queue `interactive`, priority 1000): one pod, 1 GPU (70%) or 2, run time log-normal
  with median 20 min (sigma 0.6, clipped to 2 min..2 h), not checkpointable (notebooks, debugging).
  They arrive in bursts (a team starting work): burst starts are a Poisson process; a burst holds a
  geometric number of jobs (mean 8), 60 s apart on average.
- every pod asks for 6 CPUs and 48 GiB per GPU (CPU-only pods: 4 CPUs, 16 GiB), so on default nodes
  (8 GPUs, 64 CPUs, 512 GiB) GPUs are the binding resource.
- runtime estimates: run time x U(1.0, 2.5), rounded up to a usual walltime (15m, 30m, 1h, 2h, 4h, 8h,
  12h, 24h, 48h, 72h) as users do; 10% of batch jobs give none (null).
- arrivals of batch and training jobs are a Poisson process; the span is chosen so the offered load
  (GPU-seconds of work / (cluster GPUs x span)) equals `load`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from queue_controller.sim.trace import TraceJob

_WALLTIMES = (900, 1800, 3600, 7200, 14400, 28800, 43200, 86400, 172800, 259200)


@dataclass(frozen=True, slots=True)
class Mix:
    batch_fraction: float = 0.70
    training_fraction: float = 0.10
    # interactive: the rest
    batch_gpus: tuple[tuple[int, float], ...] = ((1, 0.5), (2, 0.3), (4, 0.2))
    batch_median_s: float = 900.0
    batch_sigma: float = 1.0
    batch_clip_s: tuple[float, float] = (60.0, 6 * 3600.0)
    batch_checkpointable: float = 0.9
    batch_no_estimate: float = 0.1
    training_pods: tuple[tuple[int, float], ...] = ((2, 0.5), (4, 0.3), (8, 0.2))
    training_gpus_per_pod: int = 8
    training_median_s: float = 4 * 3600.0
    training_sigma: float = 0.8
    training_clip_s: tuple[float, float] = (1800.0, 48 * 3600.0)
    interactive_gpus: tuple[tuple[int, float], ...] = ((1, 0.7), (2, 0.3))
    interactive_median_s: float = 1200.0
    interactive_sigma: float = 0.6
    interactive_clip_s: tuple[float, float] = (120.0, 7200.0)
    interactive_checkpointable: float = 0.0
    burst_mean_jobs: float = 8.0
    burst_gap_s: float = 60.0
    cpu_per_gpu: float = 6.0
    memory_gib_per_gpu: float = 48.0
    checkpoint_gib_per_gpu: float = 24.0
    checkpoint_host_fraction: float = 0.5  # of the pod's host memory that goes into its checkpoint
    overestimate: tuple[float, float] = (1.0, 2.5)
    priorities: tuple[int, int, int] = (0, 100, 1000)  # batch, training, interactive
    # Every job checkpointable (for experiments that isolate the effect of checkpointing).
    all_checkpointable: bool = False


def _choice(rng: random.Random, weighted: tuple[tuple[int, float], ...]) -> int:
    values = [v for v, _ in weighted]
    weights = [w for _, w in weighted]
    return rng.choices(values, weights)[0]


def _lognormal(rng: random.Random, median: float, sigma: float, clip: tuple[float, float]) -> float:
    return round(min(max(median * math.exp(rng.gauss(0.0, sigma)), clip[0]), clip[1]), 1)


def _estimate(rng: random.Random, runtime: float, mix: Mix) -> float:
    want = runtime * rng.uniform(*mix.overestimate)
    for w in _WALLTIMES:
        if w >= want:
            return float(w)
    return float(math.ceil(want / 3600.0) * 3600)


def generate(n_jobs: int, seed: int = 0, cluster_gpus: int = 512, load: float = 0.9,
             mix: Mix | None = None) -> list[TraceJob]:
    """`n_jobs` jobs whose offered load on a cluster of `cluster_gpus` GPUs is `load`."""
    if n_jobs < 1:
        raise ValueError("n_jobs must be >= 1")
    if cluster_gpus < 1 or load <= 0:
        raise ValueError("cluster_gpus must be >= 1 and load > 0")
    m = mix or Mix()
    rng = random.Random(seed)
    # Sizes first, arrival times after: the span depends on the total work.
    specs: list[tuple[str, int, int, float, bool, float | None]] = []  # kind, gpus, pods, runtime, ckpt, est
    for _ in range(n_jobs):
        u = rng.random()
        if u < m.batch_fraction:
            gpus, pods = _choice(rng, m.batch_gpus), 1
            rt = _lognormal(rng, m.batch_median_s, m.batch_sigma, m.batch_clip_s)
            ck = rng.random() < m.batch_checkpointable
            est: float | None = None if rng.random() < m.batch_no_estimate else _estimate(rng, rt, m)
            kind = "batch"
        elif u < m.batch_fraction + m.training_fraction:
            pods = _choice(rng, m.training_pods)
            gpus = pods * m.training_gpus_per_pod
            rt = _lognormal(rng, m.training_median_s, m.training_sigma, m.training_clip_s)
            ck, est, kind = True, _estimate(rng, rt, m), "training"
        else:
            gpus, pods = _choice(rng, m.interactive_gpus), 1
            rt = _lognormal(rng, m.interactive_median_s, m.interactive_sigma, m.interactive_clip_s)
            ck = rng.random() < m.interactive_checkpointable
            est, kind = _estimate(rng, rt, m), "interactive"
        specs.append((kind, gpus, pods, rt, ck or m.all_checkpointable, est))

    work = sum(g * rt for _, g, _, rt, _, _ in specs)
    span = work / (cluster_gpus * load)
    steady = [i for i, s in enumerate(specs) if s[0] != "interactive"]
    bursty = [i for i, s in enumerate(specs) if s[0] == "interactive"]
    submit = [0.0] * n_jobs
    t = 0.0
    gap = span / max(len(steady), 1)
    for i in steady:
        submit[i] = t
        t += rng.expovariate(1.0 / gap)
    # Interactive jobs: bursts at Poisson times over the same span.
    k = 0
    n_bursts = max(1, round(len(bursty) / m.burst_mean_jobs))
    burst_gap = span / n_bursts
    start = rng.expovariate(1.0 / burst_gap)
    while k < len(bursty):
        size = 1
        p = 1.0 / m.burst_mean_jobs
        while rng.random() > p:
            size += 1
        bt = min(start, span)
        for i in bursty[k:k + size]:
            submit[i] = round(bt, 1)
            bt += rng.expovariate(1.0 / m.burst_gap_s)
        k += size
        start += rng.expovariate(1.0 / burst_gap)

    prio = dict(zip(("batch", "training", "interactive"), m.priorities, strict=True))
    jobs = []
    for i, (kind, gpus, pods, rt, ck, est) in enumerate(specs):
        mem = m.memory_gib_per_gpu * gpus if gpus else 16.0
        jobs.append(TraceJob(
            id=f"{kind[0]}{i:06d}",
            submit_s=round(submit[i], 1),
            runtime_s=rt,
            estimate_s=est,
            cpu=m.cpu_per_gpu * gpus if gpus else 4.0,
            memory_gib=mem,
            gpus=gpus,
            pods=pods,
            priority=prio[kind],
            queue=kind,
            checkpointable=ck,
            checkpoint_gib=round(m.checkpoint_gib_per_gpu * gpus + mem * m.checkpoint_host_fraction, 1) if ck else None,
        ))
    jobs.sort(key=lambda j: (j.submit_s, j.id))
    return jobs
