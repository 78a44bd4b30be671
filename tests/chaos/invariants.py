"""The invariants a chaos trial checks (issue 14): some continuously, by a watcher, some once at the end.

A fault can break an invariant for a moment and the end state still look right — two attempts of a job
running side by side for a second, a ClusterQueue over its quota while a new leader catches up — so the
"continuous" invariants are checked on every watch event, not by polling: `Watcher` runs two Kubernetes
watches (the trial namespace's managed pods and CheckpointableJobs) in threads and records each
violation with the event that showed it. The watches survive an API server outage: they reconnect and
resume from the last resourceVersion (relisting on 410 Gone), so no event written after the outage is
missed.

Continuous (`Watcher`):
- one attempt at a time: a job never has Running pods of two attempts (a pod being deleted does not
  count: the controller already decided to stop it, and on kwok a pod that is being deleted runs nothing);
- quota: the requests of the Running pods of each ClusterQueue's jobs never exceed what it may use
  (its nominal quota plus its borrowing limit, or the cohort's total without one), per flavor and
  resource; and a cohort's total is never exceeded;
- `status.runTimeSeconds` and `status.attempt` of a job never decrease.

At the end (`final_violations`, polled with a deadline: the cluster may still be tidying up):
- every job reached the phase the trial expects;
- no orphans: every managed pod belongs to an existing job's current attempt (older attempts' pods are
  gone), every Checkpoint to an existing job;

and `traceback_violations` reads the controllers' logs (what counts is said there).
"""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from queue_controller.api.quantity import parse_quantity
from queue_controller.wire import ATTEMPT_LABEL, JOB_LABEL, MANAGED_LABEL

GROUP, VERSION = "ckq.io", "v1alpha1"
FLAVOR_LABEL = "ckq.io/flavor"


@dataclass(frozen=True)
class QueueLimits:
    """What one ClusterQueue may use, per (flavor, resource): nominal plus borrowing limit, capped by its
    cohort's total; and the cohort (if any) with that total."""

    name: str
    usable: dict[tuple[str, str], Fraction]
    cohort: str | None = None
    cohort_total: dict[tuple[str, str], Fraction] = field(default_factory=dict)


def queue_limits(cqs: Iterable[dict[str, Any]]) -> dict[str, QueueLimits]:
    """Limits of ClusterQueue manifests (the trial created them, so it knows them). Only nominal quota and
    borrowing limits are modelled: trials set no lending limits."""
    cqs = list(cqs)
    nominal: dict[str, dict[tuple[str, str], Fraction]] = {}
    borrow: dict[str, dict[tuple[str, str], Fraction | None]] = {}
    cohort_of: dict[str, str | None] = {}
    for cq in cqs:
        name = cq["metadata"]["name"]
        cohort_of[name] = cq["spec"].get("cohort")
        nominal[name], borrow[name] = {}, {}
        for group in cq["spec"]["resourceGroups"]:
            for flavor in group["flavors"]:
                for r in flavor["resources"]:
                    key = (flavor["name"], r["name"])
                    nominal[name][key] = parse_quantity(r["nominalQuota"])
                    limit = r.get("borrowingLimit")
                    borrow[name][key] = None if limit is None else parse_quantity(limit)
    totals: dict[str, dict[tuple[str, str], Fraction]] = defaultdict(lambda: defaultdict(Fraction))
    for name, cohort in cohort_of.items():
        if cohort:
            for key, value in nominal[name].items():
                totals[cohort][key] += value
    out = {}
    for name, cohort in cohort_of.items():
        usable: dict[tuple[str, str], Fraction] = {}
        for key, value in nominal[name].items():
            if not cohort:
                usable[key] = value
                continue
            cap = totals[cohort][key]
            limit = borrow[name][key]
            usable[key] = cap if limit is None else min(value + limit, cap)
        out[name] = QueueLimits(name, usable, cohort, dict(totals[cohort]) if cohort else {})
    return out


def pod_requests(pod: Any) -> dict[str, Fraction]:
    """A pod's requests summed over its containers (init containers are done before it runs)."""
    total: dict[str, Fraction] = defaultdict(Fraction)
    for c in pod.spec.containers or []:
        for name, value in ((c.resources and c.resources.requests) or {}).items():
            total[name] += parse_quantity(value)
    return total


def _running(pod: Any) -> bool:
    return bool(pod.status and pod.status.phase == "Running" and not pod.metadata.deletion_timestamp)


class Watcher:
    """Watches the trial namespace's managed pods and jobs, checking the continuous invariants on each
    event. `start()`, then `stop()`; `violations` lists what it saw, each with the wall time (seconds
    since the trial began)."""

    def __init__(self, kubeconfig: str, namespace: str, queue_of_lq: dict[str, str],
                 limits: dict[str, QueueLimits], flavor_of: Callable[[Any], str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        # The flavor a Running pod's requests count against: by default the test node groups' label
        # (the real-node trials, whose one flavor selects nodes by another label, say so themselves).
        self.flavor_of = flavor_of or (lambda pod: (pod.spec.node_selector or {}).get(FLAVOR_LABEL, ""))
        self.namespace = namespace
        self.queue_of_lq = queue_of_lq
        self.limits = limits
        self.violations: list[str] = []
        self.events = 0
        self.reconnects = 0
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pods: dict[str, Any] = {}
        self._jobs: dict[str, dict[str, Any]] = {}
        self._run_time: dict[str, float] = {}
        self._attempt: dict[str, int] = {}
        self._seen: set[str] = set()  # violation keys already recorded: one line per distinct breach
        self._threads = [threading.Thread(target=self._loop, args=(kind,), name=f"chaos-watch-{kind}", daemon=True)
                         for kind in ("pods", "jobs")]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)

    # ---- the watch loops --------------------------------------------------------------------------

    def _loop(self, kind: str) -> None:
        api = config.new_client_from_config(config_file=self.kubeconfig)
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._relist(kind, core, custom)
                w = watch.Watch()
                if kind == "pods":
                    stream = w.stream(core.list_namespaced_pod, self.namespace, label_selector=f"{MANAGED_LABEL}=true",
                                      resource_version=rv, timeout_seconds=5, _request_timeout=15)
                else:
                    stream = w.stream(custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace,
                                      "checkpointablejobs", resource_version=rv, timeout_seconds=5,
                                      _request_timeout=15)
                for event in stream:
                    if event["type"] == "ERROR":
                        rv = None  # 410 Gone: too old to resume, list again
                        break
                    obj = event["raw_object"] if kind == "jobs" else event["object"]
                    rv = obj["metadata"]["resourceVersion"] if kind == "jobs" else obj.metadata.resource_version
                    self._on(kind, event["type"], obj)
                    if self._stop.is_set():
                        w.stop()
                        break
            except ApiException as e:
                if e.status == 410:
                    rv = None
                self.reconnects += 1
                self._stop.wait(0.5)
            except Exception:  # the API server is down (connection refused, reset, timeout): retry
                self.reconnects += 1
                self._stop.wait(0.5)
        api.close()

    def _relist(self, kind: str, core: Any, custom: Any) -> str:
        if kind == "pods":
            lst = core.list_namespaced_pod(self.namespace, label_selector=f"{MANAGED_LABEL}=true")
            with self._lock:
                self._pods = {}
            for pod in lst.items:
                self._on("pods", "ADDED", pod)
            return str(lst.metadata.resource_version)
        raw = custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, "checkpointablejobs")
        for job in raw["items"]:
            self._on("jobs", "ADDED", job)
        return str(raw["metadata"]["resourceVersion"])

    # ---- the checks -------------------------------------------------------------------------------

    def _violate(self, key: str, message: str) -> None:
        if key in self._seen:
            return
        self._seen.add(key)
        self.violations.append(f"t={time.monotonic() - self._t0:.1f}s {message}")

    def _on(self, kind: str, type_: str, obj: Any) -> None:
        with self._lock:
            self.events += 1
            if kind == "pods":
                name = obj.metadata.name
                if type_ == "DELETED":
                    self._pods.pop(name, None)
                else:
                    self._pods[name] = obj
                self._check_pods()
            else:
                self._on_job(type_, obj)

    def _on_job(self, type_: str, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        if type_ == "DELETED":
            self._jobs.pop(name, None)
            return
        self._jobs[name] = job
        status = job.get("status") or {}
        run_time = float(status.get("runTimeSeconds") or 0.0)
        if run_time < self._run_time.get(name, 0.0):
            self._violate(f"runtime:{name}:{run_time}",
                          f"job {name}: runTimeSeconds went down from {self._run_time[name]} to {run_time}")
        self._run_time[name] = max(run_time, self._run_time.get(name, 0.0))
        attempt = int(status.get("attempt") or 0)
        if attempt < self._attempt.get(name, 0):
            self._violate(f"attempt:{name}:{attempt}",
                          f"job {name}: attempt went down from {self._attempt[name]} to {attempt}")
        self._attempt[name] = max(attempt, self._attempt.get(name, 0))

    def _check_pods(self) -> None:
        attempts: dict[str, set[str]] = defaultdict(set)
        used: dict[str, dict[tuple[str, str], Fraction]] = defaultdict(lambda: defaultdict(Fraction))
        for pod in self._pods.values():
            if not _running(pod):
                continue
            labels = pod.metadata.labels or {}
            job = labels.get(JOB_LABEL, "")
            attempts[job].add(labels.get(ATTEMPT_LABEL, "?"))
            spec = self._jobs.get(job, {}).get("spec") or {}
            cq = self.queue_of_lq.get(spec.get("queueName", ""))
            if cq is None:
                continue
            flavor = self.flavor_of(pod)
            for resource, value in pod_requests(pod).items():
                used[cq][(flavor, resource)] += value
        for job, seen in attempts.items():
            if len(seen) > 1:
                self._violate(f"attempts:{job}:{sorted(seen)}",
                              f"job {job}: pods of attempts {sorted(seen)} Running at once")
        cohorts: dict[str, dict[tuple[str, str], Fraction]] = defaultdict(lambda: defaultdict(Fraction))
        for cq, usage in used.items():
            limits = self.limits[cq]
            for key, value in usage.items():
                if key in limits.usable and value > limits.usable[key]:
                    self._violate(f"quota:{cq}:{key}:{value}",
                                  f"ClusterQueue {cq}: Running pods request {float(value):g} of {key[1]} "
                                  f"(flavor {key[0]}), more than the {float(limits.usable[key]):g} it may use")
                if limits.cohort:
                    cohorts[limits.cohort][key] += value
        for cohort, usage in cohorts.items():
            totals = next(q.cohort_total for q in self.limits.values() if q.cohort == cohort)
            for key, value in usage.items():
                if key in totals and value > totals[key]:
                    self._violate(f"cohort:{cohort}:{key}:{value}",
                                  f"cohort {cohort}: Running pods request {float(value):g} of {key[1]}, more "
                                  f"than its total {float(totals[key]):g}")


# ---- at the end -----------------------------------------------------------------------------------

def final_violations(core: Any, custom: Any, namespace: str, expected: dict[str, str]) -> list[str]:
    """The end-state invariants, once (the caller polls until this is empty or its deadline passes)."""
    out: list[str] = []
    jobs = {j["metadata"]["name"]: j for j in
            custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "checkpointablejobs")["items"]}
    for name, phase in expected.items():
        status = (jobs.get(name) or {}).get("status") or {}
        if status.get("phase") != phase:
            out.append(f"job {name}: phase {status.get('phase')!r}, expected {phase} "
                       f"(message {status.get('message')!r})")
    for pod in core.list_namespaced_pod(namespace, label_selector=f"{MANAGED_LABEL}=true").items:
        labels = pod.metadata.labels or {}
        job = jobs.get(labels.get(JOB_LABEL, ""))
        if job is None:
            out.append(f"pod {pod.metadata.name}: orphaned (job {labels.get(JOB_LABEL)!r} does not exist)")
            continue
        current = int((job.get("status") or {}).get("attempt") or 0)
        if labels.get(ATTEMPT_LABEL) != str(current):
            out.append(f"pod {pod.metadata.name}: of attempt {labels.get(ATTEMPT_LABEL)}, but job "
                       f"{job['metadata']['name']} is at attempt {current} (phase {pod.status.phase})")
    for ckpt in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "checkpoints")["items"]:
        owner = ((ckpt.get("spec") or {}).get("jobName")
                 or (ckpt["metadata"].get("labels") or {}).get(JOB_LABEL, ""))
        if owner not in jobs:
            out.append(f"checkpoint {ckpt['metadata']['name']}: orphaned (job {owner!r} does not exist)")
    return out


def poll_final(core: Any, custom: Any, namespace: str, expected: dict[str, str], timeout: float,
               on_poll: Callable[[], None] | None = None) -> list[str]:
    """`final_violations` until it is empty; what is left at the deadline. Errors of a poll (the API
    server may be coming back) count as 'not yet'."""
    deadline = time.monotonic() + timeout
    last: list[str] = ["not checked"]
    while True:
        try:
            last = final_violations(core, custom, namespace, expected)
        except Exception as e:
            last = [f"end state not readable: {type(e).__name__}: {e}"]
        if not last or time.monotonic() > deadline:
            return last
        if on_poll is not None:
            on_poll()
        time.sleep(1.0)


# ---- the controller's log -------------------------------------------------------------------------

# Exceptions that only say the API server could not be reached or answered 5xx: expected while the
# API server is down, and what the loop's "scheduling cycle failed; retrying" is for.
_OUTAGE_ERRORS = re.compile(
    r"(ClientConnector|ServerDisconnected|ClientOS|ClientConnection|ServerTimeout|ClientPayload)Error"
    r"|ConnectionRefusedError|ConnectionResetError|TimeoutError|CancelledError"
    r"|ApiError: (5\d\d|429)\b|Connection refused|Cannot connect to host")


def traceback_violations(logs: Iterable[Path], *, outage: bool) -> list[str]:
    """Tracebacks in the controllers' logs that count as bugs.

    What counts: every traceback, except — only in a trial that stopped the API server (`outage`) — one
    whose exception says the API server was unreachable or answered 5xx/429 (`_OUTAGE_ERRORS`). Such a
    traceback is the loop's "scheduling cycle failed; retrying" (or kopf's watch retry) doing its job: the
    cycle is retried and nothing is lost. The same exception without an outage, or any other exception
    during one, is a bug. A traceback is attributed to its last line (the exception)."""
    out: list[str] = []
    for path in logs:
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        i = 0
        while i < len(lines):
            if not lines[i].startswith("Traceback (most recent call last)"):
                i += 1
                continue
            j = i + 1
            while j < len(lines) and (lines[j].startswith((" ", "\t")) or not lines[j].strip()
                                      or lines[j].startswith(("During handling", "The above exception",
                                                              "Traceback (most recent"))):
                j += 1
            last = lines[j] if j < len(lines) else lines[j - 1]
            context = lines[i - 1] if i else ""
            if not (outage and _OUTAGE_ERRORS.search(last)):
                out.append(f"{path.name}: traceback after {context.strip()[:160]!r}: {last.strip()[:200]}")
            i = j + 1
    return out
