"""Prometheus metrics of the controller (prometheus-client), all prefixed `ckq_`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS = Gauge("ckq_jobs", "Jobs by ClusterQueue and state (pending, admitted, suspended).",
             ["cluster_queue", "state"], registry=REGISTRY)
TIME_TO_ADMISSION = Histogram(
    "ckq_time_to_admission_seconds", "From job creation (or requeue) to admission.", ["cluster_queue"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600), registry=REGISTRY)
PREEMPTIONS = Counter("ckq_preemptions_total", "Preemptions by mode (checkpoint, kill) and reason.",
                      ["mode", "reason"], registry=REGISTRY)
CHECKPOINT_DURATION = Histogram(
    "ckq_checkpoint_duration_seconds", "Duration of completed checkpoints.", ["reason"],
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800), registry=REGISTRY)
CHECKPOINT_SIZE = Histogram(
    "ckq_checkpoint_size_bytes", "Size of completed checkpoints.", ["reason"],
    buckets=tuple(float(2**k) for k in range(20, 41, 2)), registry=REGISTRY)
CHECKPOINT_FAILURES = Counter("ckq_checkpoint_failures_total", "Checkpoints that failed or timed out.",
                              ["reason"], registry=REGISTRY)
CHECKPOINT_BYTES = Gauge("ckq_cluster_queue_checkpoint_bytes",
                         "Bytes of checkpoint images the ClusterQueue's jobs keep (retained, completed).",
                         ["cluster_queue"], registry=REGISTRY)
QUOTA_USAGE = Gauge("ckq_cluster_queue_usage", "Quota in use per ClusterQueue, flavor and resource (units).",
                    ["cluster_queue", "flavor", "resource"], registry=REGISTRY)
LOST_RUNTIME = Counter("ckq_lost_run_time_seconds_total",
                       "Job run time lost to kills and failures (progress since the last checkpoint).",
                       ["cause"], registry=REGISTRY)
CYCLE_SECONDS = Histogram("ckq_scheduling_cycle_seconds", "Duration of one scheduling cycle.",
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=REGISTRY)
API_REQUESTS = Counter("ckq_api_requests_total", "Requests the controller's scheduling loop sent to the API server.",
                       ["verb"], registry=REGISTRY)
ADMISSIONS = Counter("ckq_admissions_total", "Jobs admitted or resumed.", ["cluster_queue"], registry=REGISTRY)
