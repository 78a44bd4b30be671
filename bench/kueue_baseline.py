"""Kueue's scheduler-performance "baseline" scenario, replayed against ckq on the real local control plane.

Kueue's harness (test/performance/scheduler, configs/baseline/generator.yaml) creates 5 cohorts x 6
ClusterQueues (nominal 20 CPU, borrowingLimit 100, reclaimWithinCohort Any, withinClusterQueue
LowerPriority), one namespace and LocalQueue per ClusterQueue, and per ClusterQueue three concurrent
sets of workloads, each set sleeping its interval before every creation (so creation latency adds up,
as in Kueue's generator):

    small   350 x  1 CPU, runs 200 ms, priority  50, one every  100 ms
    medium  100 x  5 CPU, runs 500 ms, priority 100, one every  500 ms
    large    50 x 20 CPU, runs   1 s,  priority 200, one every 1200 ms      = 15,000 workloads

Here each workload is a CheckpointableJob (one pod, checkpoint mode Simulated, its run time in
`ckq.io/simulated-runtime-seconds`), run by `ckq controller` on kwok nodes sized so that quota, not
nodes, is the constraint (Kueue's harness has no nodes at all: its runner marks a workload Finished
once its run time has passed since admission; ckq also creates, binds and completes a pod per job).

Figures, with Kueue's definitions (runner/recorder/recorder.go, checker/checker_test.go):
- wall: first creation -> last job finished (Kueue's checker uses minimalkueue's process wall time,
  which also holds its start-up and up to 5 s of end detection);
- usage per ClusterQueue class: the integral of each ClusterQueue's `status.flavorsUsage` CPU over its
  watch events, summed over the class, over (summed nominal quota x the class's first-to-last event
  time) — Kueue's recorder exactly; and, beside it, the same from the jobs themselves (CPU x time each
  job held quota, admission -> finished or evicted, as seen on a watch), which does not depend on what
  the controller writes to ClusterQueue status;
- time to admission per workload class: creation (the create request sent) -> admitted (the watch
  event that first shows `status.admission`; after an eviction, the last admission, as Kueue's
  recorder overwrites it), mean over admitted jobs;
- API requests: the API server's `apiserver_request_total` (verb, resource, subresource) over the
  run, per job; with the audit log (on by default, `--no-audit` turns it off) also per client:
  controller, kube-scheduler, kwok, kube-controller-manager, this bench;
- CPU seconds per process (`/proc/<pid>/stat`) and the controller's peak RSS (VmHWM).

`--scale F` shrinks every workload set proportionally (at least one job each): 0.02 -> 300 jobs,
0.2 -> 3,000. `--timeout S` stops waiting S seconds after the first creation and reports what finished
(`timed_out` in the table and the JSON). `--with-kueue` first runs Kueue's own harness (minimalkueue +
runner, built by hack/build-kueue-perf.sh) at the same scale on the same Go-built kube-apiserver and
etcd, then ckq's replica, and prints both side by side; `--kueue-figures` prints the figures measured
for issue 13 on this machine beside ours.

    python bench/kueue_baseline.py [--scale 0.02] [--timeout 1800] [--policy iass] [--with-kueue]

Prints a table and, as its last line, one JSON object. The machine is small and shared: read the
timings as indicative.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from kubernetes import client, config, watch  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402

from queue_controller import devcluster as dc  # noqa: E402
from queue_controller.api.quantity import to_milli  # noqa: E402
from queue_controller.devcluster.components import AUDIT_LOG_MAX_MB, AUDIT_POLICY, admin_tls  # noqa: E402
from queue_controller.devcluster.state import paths_for  # noqa: E402
from queue_controller.wire import parse_time  # noqa: E402

G, V = "ckq.io", "v1alpha1"
CLUSTER = "ckq-kueue-baseline"
FLAVOR = "rf"  # Kueue's generator's default ResourceFlavor name
CLASS_LABEL = "kueue.x-k8s.io/performance-scheduler-class"  # Kueue's label, so the objects read alike
# Finished pods the bench's cluster keeps before PodGC deletes the oldest (kube-controller-manager
# --terminated-pod-gc-threshold); 0 keeps Kubernetes' default, 12,500. kwok v0.8 restarts its pod watch
# from resourceVersion 0, replaying every pod it manages, and with ~10,000 finished pods kept, under this
# load the API server drops its watch before it has taken a replay in (every 12-15 s from the 16th
# minute of a 15,000-job run): kwok's CPU triples and pods go Running 15-20 s after their binding. A low
# threshold (2,000) ends that, but costs ~1.65 requests per job more (PodGC's deletes and kwok's own)
# and did not shorten the times to admission (docs/performance.md), so the default stays Kubernetes'.
POD_GC_THRESHOLD = 0
BENCH_USER_AGENT = "ckq-bench/kueue-baseline"  # tells this bench's requests apart in the audit log
RUNTIME_ANNOTATION = "ckq.io/simulated-runtime-seconds"
FINISHED = ("Succeeded", "Failed")
# Phases in which a job holds its quota (status.admittedWorkloads counts them).
HOLDING = ("Admitted", "Running", "Checkpointing", "Restoring")


# ---- the scenario (configs/baseline/generator.yaml) ----------------------------------------------


@dataclass(frozen=True)
class WorkloadSet:
    cls: str
    count: int
    interval_ms: int
    runtime_ms: int
    priority: int
    cpu: int


@dataclass(frozen=True)
class Scenario:
    cohorts: int = 5
    queues_per_cohort: int = 6
    nominal_cpu: int = 20
    borrowing_limit_cpu: int = 100
    reclaim_within_cohort: str = "Any"
    within_cluster_queue: str = "LowerPriority"
    cq_class: str = "cq"
    sets: tuple[WorkloadSet, ...] = (
        WorkloadSet("small", 350, 100, 200, 50, 1),
        WorkloadSet("medium", 100, 500, 500, 100, 5),
        WorkloadSet("large", 50, 1200, 1000, 200, 20),
    )

    def scaled(self, scale: float) -> Scenario:
        sets = tuple(WorkloadSet(s.cls, max(1, round(s.count * scale)), s.interval_ms, s.runtime_ms, s.priority,
                                 s.cpu) for s in self.sets)
        return Scenario(self.cohorts, self.queues_per_cohort, self.nominal_cpu, self.borrowing_limit_cpu,
                        self.reclaim_within_cohort, self.within_cluster_queue, self.cq_class, sets)

    @property
    def queues(self) -> list[tuple[str, str]]:
        """(ClusterQueue name, cohort), named as Kueue's generator names them."""
        return [(f"{self.cq_class}-0-{q}-cohort-{c}", f"cohort-{c}")
                for c in range(self.cohorts) for q in range(self.queues_per_cohort)]

    @property
    def jobs(self) -> int:
        return len(self.queues) * sum(s.count for s in self.sets)

    def jobs_per_class(self) -> dict[str, int]:
        return {s.cls: len(self.queues) * s.count for s in self.sets}

    def kueue_generator(self) -> dict[str, Any]:
        """The same scenario in Kueue's generator.yaml schema (runner/generator/generator.go)."""
        return {"cohorts": [{"className": "cohort", "count": self.cohorts, "queuesSets": [{
            "className": self.cq_class, "count": self.queues_per_cohort,
            "nominalQuota": self.nominal_cpu, "borrowingLimit": self.borrowing_limit_cpu,
            "reclaimWithinCohort": self.reclaim_within_cohort, "withinClusterQueue": self.within_cluster_queue,
            "workloadsSets": [{"count": s.count, "creationIntervalMs": s.interval_ms, "workloads": [{
                "className": s.cls, "runtimeMs": s.runtime_ms, "priority": s.priority, "request": s.cpu}]}
                for s in self.sets]}]}]}


def cluster_queue(name: str, cohort: str, sc: Scenario) -> dict[str, Any]:
    return {"apiVersion": f"{G}/{V}", "kind": "ClusterQueue",
            "metadata": {"name": name, "labels": {CLASS_LABEL: sc.cq_class}},
            "spec": {"cohort": cohort, "namespaceSelector": {},
                     "resourceGroups": [{"coveredResources": ["cpu"], "flavors": [{"name": FLAVOR, "resources": [
                         {"name": "cpu", "nominalQuota": str(sc.nominal_cpu),
                          "borrowingLimit": str(sc.borrowing_limit_cpu)}]}]}],
                     "preemption": {"reclaimWithinCohort": sc.reclaim_within_cohort,
                                    "withinClusterQueue": sc.within_cluster_queue}}}


def job(name: str, namespace: str, ws: WorkloadSet) -> dict[str, Any]:
    # Kueue's Workload has spec.priority; so does a CheckpointableJob (no PriorityClass lookups).
    return {"apiVersion": f"{G}/{V}", "kind": "CheckpointableJob",
            "metadata": {"name": name, "namespace": namespace, "labels": {CLASS_LABEL: ws.cls},
                         "annotations": {RUNTIME_ANNOTATION: f"{ws.runtime_ms / 1000:g}"}},
            "spec": {"queueName": namespace, "priority": ws.priority, "checkpoint": {"mode": "Simulated"},
                     "podSets": [{"name": "main", "count": 1, "template": {"spec": {
                         "restartPolicy": "Never",
                         "containers": [{"name": "c", "image": "x",
                                         "resources": {"requests": {"cpu": str(ws.cpu)}}}]}}}]}}


# ---- what the watches record ------------------------------------------------------------------------


@dataclass
class JobRecord:
    cls: str
    cq: str
    cpu_milli: int
    created: float | None = None  # create request sent
    admitted: float | None = None  # last transition to admitted (Kueue's recorder overwrites it too)
    finished: float | None = None
    held_since: float | None = None
    held_cpu_ms: float = 0.0  # milli-CPU x milliseconds of quota held, summed over admissions
    evictions: int = 0


@dataclass
class CQState:
    """Kueue's recorder.CQState: CPU used (mCPU x ms) integrated over the ClusterQueue's events."""

    first: float
    last: float
    usage_milli: int
    quota_milli: int
    used: float = 0.0


@dataclass
class Recorder:
    scenario: Scenario
    jobs: dict[tuple[str, str], JobRecord] = field(default_factory=dict)
    cqs: dict[str, CQState] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    all_finished: threading.Event = field(default_factory=threading.Event)
    finished_count: int = 0

    def on_cq(self, obj: dict[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        if name not in {q for q, _ in self.scenario.queues}:
            return
        usage = sum(_milli(r.get("total", 0)) for f in (obj.get("status") or {}).get("flavorsUsage") or []
                    for r in f.get("resources") or [] if r.get("name") == "cpu")
        quota = sum(_milli(r.get("nominalQuota", 0)) for g in obj["spec"].get("resourceGroups") or []
                    for f in g.get("flavors") or [] for r in f.get("resources") or [] if r.get("name") == "cpu")
        with self.lock:
            st = self.cqs.get(name)
            if st is None:
                self.cqs[name] = CQState(now, now, usage, quota)
                return
            if st.usage_milli > 0:
                # recordCQEvent: the previous event's usage held until this one.
                st.used += st.usage_milli * (now - st.last) * 1000
            st.last, st.usage_milli, st.quota_milli = now, usage, quota

    def on_job(self, obj: dict[str, Any], now: float) -> None:
        md = obj["metadata"]
        key = (md["namespace"], md["name"])
        status = obj.get("status") or {}
        phase = status.get("phase") or "Pending"
        finished = phase in FINISHED
        holding = not finished and (bool(status.get("admission")) or phase in HOLDING)
        with self.lock:
            rec = self.jobs.get(key)
            if rec is None or rec.finished is not None:
                return  # not one of ours, or done with
            if holding and rec.held_since is None:
                # Admitted (again): like Kueue's recorder, time to admission counts to the last admission.
                rec.admitted = rec.held_since = now
            elif not holding and rec.held_since is not None:
                rec.held_cpu_ms += rec.cpu_milli * (now - rec.held_since) * 1000
                rec.held_since = None
                if not finished:
                    rec.evictions += 1
            if finished:
                rec.finished = now
                if rec.admitted is None:
                    rec.admitted = now  # admitted and finished between two events (only after a relist)
                self.finished_count += 1
                if self.finished_count >= len(self.jobs):
                    self.all_finished.set()


def _milli(q: Any) -> int:
    return int(to_milli(q))


# ---- talking to the API server --------------------------------------------------------------------


def api_client(kubeconfig: str, pool: int = 32) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.connection_pool_maxsize = pool  # one connection per generator thread, no "pool is full" churn
    api = client.ApiClient(cfg)
    api.user_agent = BENCH_USER_AGENT
    return api


def watch_forever(list_fn: Callable[..., Any], args: tuple[Any, ...], on_obj: Callable[[dict[str, Any], float], None],
                  stop: threading.Event) -> None:
    """List, then watch from that resourceVersion; relist when the watch expires (410) or breaks."""
    rv: str | None = None
    while not stop.is_set():
        try:
            if rv is None:
                listed = list_fn(*args)
                rv = listed["metadata"]["resourceVersion"]
                now = time.time()
                for obj in listed["items"]:
                    on_obj(obj, now)
            w = watch.Watch()  # type: ignore[no-untyped-call]
            events = w.stream(list_fn, *args, resource_version=rv, timeout_seconds=300,  # type: ignore[no-untyped-call]
                              allow_watch_bookmarks=True)
            for ev in events:
                obj = ev["object"]
                if ev["type"] == "ERROR":
                    rv = None
                    break
                rv = obj["metadata"]["resourceVersion"]
                if ev["type"] in ("ADDED", "MODIFIED"):
                    on_obj(obj, time.time())
                if stop.is_set():
                    w.stop()  # type: ignore[no-untyped-call]
                    return
        except ApiException as e:
            if e.status == 410:
                rv = None
            time.sleep(0.2)
        except Exception:  # a dropped connection: watch again from where we were
            time.sleep(0.2)


def metric_totals(text: str, name: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for m in re.finditer(rf"^{name}{{([^}}]*)}} ([0-9.e+]+)$", text, re.M):
        lab = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        out[tuple(lab.get(k, "") for k in labels)] += float(m.group(2))
    return out


REQ_LABELS = ("verb", "group", "resource", "subresource")


def scrape(url: str, ctx: Any) -> str:
    req = urllib.request.Request(url, headers={"User-Agent": BENCH_USER_AGENT})
    with urllib.request.urlopen(req, timeout=30, context=ctx) as r:
        return str(r.read().decode())


def request_key(verb: str, resource: str, subresource: str) -> str:
    return f"{verb} {resource}{'/' + subresource if subresource else ''}"


def classify(user: str, agent: str) -> str:
    if agent.startswith(BENCH_USER_AGENT):
        return "bench"
    if user == "ckq-admin":
        return "controller"  # the only other client with the admin kubeconfig in this bench
    if user == "system:kube-scheduler":
        return "scheduler"
    if user == "kwok-controller":
        return "kwok"
    if user == "system:kube-controller-manager" or user.startswith("system:serviceaccount:kube-system:"):
        return "controller-manager"
    if user.startswith("system:apiserver"):
        return "apiserver"
    return "other"


def audit_events(path: Path, offset: int = 0, end: int | None = None) -> Iterator[dict[str, Any]]:
    """The audit log's finished requests within its bytes [offset, end)."""
    if not path.exists():
        return
    with path.open("rb") as f:
        f.seek(offset)
        left = (end - offset) if end is not None else None
        for line in f:
            if left is not None:
                left -= len(line)
                if left < 0:
                    break
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("stage") in ("ResponseComplete", "Panic"):
                yield ev


def audit_key(ev: dict[str, Any]) -> str:
    ref = ev.get("objectRef") or {}
    return request_key(ev.get("verb", "?"), ref.get("resource", ev.get("requestURI", "?").split("?")[0]),
                       ref.get("subresource", ""))


def read_audit(path: Path, offset: int, end: int | None = None, classify_fn: Callable[[str, str], str] = classify
               ) -> dict[str, Counter[str]]:
    """Requests per client and per 'verb resource[/subresource]', from the audit log's bytes [offset, end)."""
    by_client: dict[str, Counter[str]] = defaultdict(Counter)
    for ev in audit_events(path, offset, end):
        who = classify_fn((ev.get("user") or {}).get("username", ""), ev.get("userAgent", ""))
        by_client[who][audit_key(ev)] += 1
    return by_client


def find_in_log(path: Path, offset: int, needles: tuple[bytes, ...]) -> tuple[int, int | None]:
    """Scan whole lines from `offset`: (where the scan stopped, offset of the first line holding every needle)."""
    if not path.exists():
        return offset, None
    with path.open("rb") as f:
        f.seek(offset)
        for line in f:
            if not line.endswith(b"\n"):
                break  # being written: look again next time
            if all(n in line for n in needles):
                return offset, offset
            offset += len(line)
    return offset, None


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return float("nan")


# ---- ckq's run ------------------------------------------------------------------------------------


def run_ckq(sc: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    nodes_cpu = sc.cohorts * sc.queues_per_cohort * sc.nominal_cpu  # all quota at once: 600 CPU at full size
    # Twice the quota across the nodes: some node always has room for a 20-CPU job, so placement
    # never blocks what quota admits (Kueue's harness has no nodes at all).
    per_node = max(64, math.ceil(2 * nodes_cpu / args.nodes))
    groups = [dc.NodeGroup(name="cpu", count=args.nodes, gpus=0, cpu=str(per_node), memory="4Ti", pods=2000)]
    t0 = time.time()
    state, started = dc.up(args.cluster, groups, audit_log=args.audit, timeout=180,
                           pod_gc_threshold=args.pod_gc_threshold or None)
    if not started:  # a cluster left by --keep: its jobs and queues would be counted with ours
        raise SystemExit(f"cluster '{args.cluster}' is already running: `ckq dev down --name {args.cluster}` first")
    up_s = time.time() - t0
    paths = paths_for(args.cluster)
    ctl: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    try:
        api = api_client(state.kubeconfig, pool=3 * len(sc.queues) + 8)
        custom = client.CustomObjectsApi(api)
        core = client.CoreV1Api(api)
        ext = client.ApiextensionsV1Api(api)
        for path in sorted((ROOT / "crds").glob("ckq.io_*.yaml")):
            ext.create_custom_resource_definition(yaml.safe_load(path.read_text()))
        _wait_crds(ext)
        custom.create_cluster_custom_object(G, V, "resourceflavors", {
            "apiVersion": f"{G}/{V}", "kind": "ResourceFlavor", "metadata": {"name": FLAVOR},
            "spec": {"nodeLabels": {dc.FLAVOR_LABEL: "cpu"}}})

        rec = Recorder(sc)
        for cq, _ in sc.queues:
            for ws in sc.sets:
                for i in range(ws.count):
                    rec.jobs[(cq, f"{ws.cls}-{sc.sets.index(ws)}-{i}-0")] = JobRecord(ws.cls, cq, ws.cpu * 1000)

        # The watches start before the ClusterQueues exist: their creation is each one's first event,
        # as in Kueue's recorder.
        for plural, on in (("clusterqueues", rec.on_cq), ("checkpointablejobs", rec.on_job)):
            wapi = client.CustomObjectsApi(api_client(state.kubeconfig, pool=2))  # its own connection
            threading.Thread(target=watch_forever, args=(wapi.list_cluster_custom_object, (G, V, plural), on, stop),
                             daemon=True).start()

        log = Path(tempfile.gettempdir()) / f"{args.cluster}-controller.log"
        port = _free_port()
        ctl = subprocess.Popen(
            [sys.executable, "-m", "queue_controller.cli", "controller", "--policy", args.policy,
             "--metrics-port", str(port), "--liveness-port", "0"],
            stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "KUBECONFIG": state.kubeconfig, "PYTHONPATH": str(ROOT)})
        while "ckq controller started" not in log.read_text(errors="replace"):
            if ctl.poll() is not None:
                raise SystemExit(f"controller exited:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

        # Requests, CPU and the audit log are counted from here on: the queues' creation included, as
        # on Kueue's side (its generator's first request, the ResourceFlavor, opens the window there).
        ctx = admin_tls(paths)
        metrics_url = f"{state.server}/metrics"
        req0 = metric_totals(scrape(metrics_url, ctx), "apiserver_request_total", REQ_LABELS)
        audit_path = paths.logs / "audit.log"
        audit0 = audit_path.stat().st_size if audit_path.exists() else 0
        pids = {"controller": ctl.pid, **{p.name: p.pid for p in state.processes}}
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        bench0 = time.process_time()

        # Queues, namespaces and LocalQueues first (Kueue's generator creates them just before each
        # queue's workloads).
        for cq, cohort in sc.queues:
            custom.create_cluster_custom_object(G, V, "clusterqueues", cluster_queue(cq, cohort, sc))
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=cq)))
            custom.create_namespaced_custom_object(G, V, cq, "localqueues", {
                "apiVersion": f"{G}/{V}", "kind": "LocalQueue", "metadata": {"name": cq, "namespace": cq},
                "spec": {"clusterQueue": cq}})
        _wait_namespaces_served(custom, sc)

        start = time.time()
        errors: list[str] = []

        def generate(cq: str, set_idx: int, ws: WorkloadSet) -> None:
            # generateWlSet: sleep the interval, then create; the next sleep starts after the create returns.
            for i in range(ws.count):
                if stop.wait(ws.interval_ms / 1000):
                    return
                name = f"{ws.cls}-{set_idx}-{i}-0"
                body = job(name, cq, ws)
                with rec.lock:
                    rec.jobs[(cq, name)].created = time.time()
                try:
                    custom.create_namespaced_custom_object(G, V, cq, "checkpointablejobs", body)
                except ApiException as e:
                    errors.append(f"{cq}/{name}: {e.status} {e.reason}")

        gens = [threading.Thread(target=generate, args=(cq, i, ws), daemon=True)
                for cq, _ in sc.queues for i, ws in enumerate(sc.sets)]
        for t in gens:
            t.start()
        progress_at = start
        while not rec.all_finished.wait(1.0):
            now = time.time()
            if now - start > args.timeout:
                break
            if now - progress_at >= args.progress:
                progress_at = now
                with rec.lock:
                    adm = sum(1 for r in rec.jobs.values() if r.admitted)
                    created = sum(1 for r in rec.jobs.values() if r.created)
                print(f"  {now - start:6.0f}s  created {created}/{sc.jobs}  admitted {adm}  "
                      f"finished {rec.finished_count}", file=sys.stderr, flush=True)
        timed_out = not rec.all_finished.is_set()
        stop.set()
        end = time.time()
        bench_cpu = time.process_time() - bench0
        req1 = metric_totals(scrape(metrics_url, ctx), "apiserver_request_total", REQ_LABELS)
        audit1 = audit_path.stat().st_size if audit_path.exists() else 0  # the same window as the metrics
        cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
        cpu["bench"] = bench_cpu
        rss = peak_rss_mib(ctl.pid)
        ctl.terminate()
        ctl.wait(timeout=30)
        ctl = None
        by_client = read_audit(audit_path, audit0, audit1) if args.audit else {}
        return summarize_ckq(sc, rec, start, end, timed_out, req0, req1, by_client, cpu, rss, up_s, errors,
                             args)
    finally:
        stop.set()
        if ctl is not None:
            ctl.terminate()
            try:
                ctl.wait(timeout=30)
            except subprocess.TimeoutExpired:
                ctl.kill()
        if not args.keep:
            dc.down(args.cluster)


def _wait_crds(ext: client.ApiextensionsV1Api) -> None:
    deadline = time.time() + 60
    for path in sorted((ROOT / "crds").glob("ckq.io_*.yaml")):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        while True:
            st = ext.read_custom_resource_definition(name).status
            conds = {c.type: c.status for c in ((st.conditions if st else None) or [])}
            if conds.get("Established") == "True":
                break
            if time.time() > deadline:
                raise SystemExit(f"CRD {name} not established")
            time.sleep(0.2)


def _wait_namespaces_served(custom: client.CustomObjectsApi, sc: Scenario) -> None:
    # A job created into a namespace the API server has not yet seen is refused; wait for the last one.
    cq = sc.queues[-1][0]
    for _ in range(100):
        try:
            custom.list_namespaced_custom_object(G, V, cq, "checkpointablejobs", limit=1)
            return
        except ApiException:
            time.sleep(0.1)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def summarize_ckq(sc: Scenario, rec: Recorder, start: float, end: float, timed_out: bool,
                  req0: dict[tuple[str, ...], float], req1: dict[tuple[str, ...], float],
                  by_client: dict[str, Counter[str]], cpu: dict[str, float], rss: float, up_s: float,
                  errors: list[str], args: argparse.Namespace) -> dict[str, Any]:
    with rec.lock:
        jobs = list(rec.jobs.values())
        cqs = dict(rec.cqs)
    created = [j for j in jobs if j.created is not None]
    finished = [j for j in created if j.finished is not None]
    last_finish = max((j.finished for j in finished if j.finished), default=end)
    first_created = min((j.created for j in created if j.created), default=start)
    wall = (last_finish if not timed_out else end) - first_created
    classes = [s.cls for s in sc.sets]

    tta: dict[str, float | None] = {}
    admitted_by_class: dict[str, int] = {}
    for c in classes:
        waits = [j.admitted - j.created for j in created if j.cls == c and j.admitted and j.created]
        admitted_by_class[c] = len(waits)
        tta[c] = round(sum(waits) / len(waits), 3) if waits else None

    # Kueue's usage: per class, sum(CPU used) / (sum(nominal) x (last event - first event)).
    usage_status: dict[str, float | None] = {}
    if cqs:
        first = min(s.first for s in cqs.values())
        last = max(s.last for s in cqs.values())
        quota = sum(s.quota_milli for s in cqs.values())
        used = sum(s.used for s in cqs.values())
        span_ms = (last - first) * 1000
        usage_status[sc.cq_class] = round(100 * used / (quota * span_ms), 2) if quota and span_ms > 0 else None
    # The same from the jobs: quota held (admission -> finished or evicted) over the run window.
    held = sum(j.held_cpu_ms + (j.cpu_milli * (end - j.held_since) * 1000 if j.held_since else 0) for j in jobs)
    quota_all = len(sc.queues) * sc.nominal_cpu * 1000
    window_ms = (end if timed_out else last_finish) * 1000 - start * 1000
    usage_jobs = {sc.cq_class: round(100 * held / (quota_all * window_ms), 2) if window_ms > 0 else None}

    delta = {k: v - req0.get(k, 0) for k, v in req1.items() if v - req0.get(k, 0) > 0}
    by_verb_resource: Counter[str] = Counter()
    for (verb, _group, resource, sub), n in delta.items():
        by_verb_resource[request_key(verb, resource, sub)] += int(n)
    total = sum(by_verb_resource.values())
    n_jobs = max(len(created), 1)
    out: dict[str, Any] = {
        "system": "ckq", "policy": args.policy, "scale": args.scale, "jobs": sc.jobs, "created": len(created),
        "finished": len(finished), "timed_out": timed_out, "timeout_s": args.timeout,
        "wall_s": round(wall, 2), "cluster_up_s": round(up_s, 1), "pod_gc_threshold": args.pod_gc_threshold or 12500,
        "jobs_by_class": {c: sum(1 for j in created if j.cls == c) for c in classes},
        "admitted_by_class": admitted_by_class,
        "finished_by_class": {c: sum(1 for j in finished if j.cls == c) for c in classes},
        "evictions_by_class": {c: sum(j.evictions for j in jobs if j.cls == c) for c in classes},
        "tta_mean_s": tta,
        "usage_pct": usage_status,
        "usage_from_jobs_pct": usage_jobs,
        "api_requests": total,
        "api_requests_per_job": round(total / n_jobs, 2),
        "api_requests_per_finished_job": round(total / len(finished), 2) if finished else None,
        "api_requests_by_verb_resource": dict(by_verb_resource.most_common()),
        "cpu_seconds": {k: round(v, 1) for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])},
        "controller_peak_rss_mib": round(rss, 1),
        "create_errors": len(errors),
    }
    if by_client:
        out["api_requests_by_client"] = {k: sum(v.values()) for k, v in sorted(by_client.items())}
        out["api_requests_per_job_by_client"] = {k: round(sum(v.values()) / n_jobs, 2)
                                                 for k, v in sorted(by_client.items())}
        out["api_requests_by_client_verb_resource"] = {k: dict(v.most_common()) for k, v in sorted(by_client.items())}
    if errors:
        out["create_error_samples"] = errors[:5]
    return out


# ---- Kueue's own harness ----------------------------------------------------------------------------

# Measured for issue 13 on this machine (Kueue v0.19.2, same kube-apiserver v1.35.4 and etcd 3.6.16).
KUEUE_MEASURED_HERE: dict[float, dict[str, Any]] = {
    1.0: {"wall_s": 396.0, "tta_mean_s": {"large": 31.0, "medium": 107.0, "small": 236.0},
          "api_requests_per_finished_job": 6.1},
    0.2: {"wall_s": 74.5, "tta_mean_s": {"large": 6.2, "medium": 14.8, "small": 40.5}},
}
# Upstream's calibration (configs/baseline/rangespec.yaml: means of 5 CI runs, full scale).
KUEUE_UPSTREAM_CI = {"wall_s": 351.1, "usage_pct": {"cq": 55.9},
                     "tta_mean_s": {"large": 16.5, "medium": 76.8, "small": 215.5}}


def kueue_classify(user: str, agent: str) -> str:
    a = agent.lower()
    if a.startswith("minimalkueue"):
        return "kueue"
    if a.startswith("runner"):
        return "runner"  # Kueue's generator, recorder and fake execution
    if a.startswith("kube-apiserver"):
        return "apiserver"
    return "other"


def run_kueue(sc: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    """Kueue's runner + minimalkueue on envtest, with the dev cluster's kube-apiserver and etcd.

    Kueue's recorder stops once generation is done and no ClusterQueue's status shows pending or
    reserving workloads; at small scales the last status can lag the last creations, and it stops
    before every workload has finished. Such a run is repeated once, and reported as incomplete if
    it happens again.
    """
    built = subprocess.run([str(ROOT / "hack" / "build-kueue-perf.sh")], capture_output=True, text=True)
    if built.returncode != 0:
        return {"system": "kueue", "error": f"hack/build-kueue-perf.sh failed:\n{built.stderr[-2000:]}"}
    harness = Path(built.stdout.strip().splitlines()[-1])
    bins = dc.ensure_binaries(quiet=True)
    res: dict[str, Any] = {}
    for attempt in (1, 2):
        res = run_kueue_once(sc, args, harness, bins)
        res["attempt"] = attempt
        if "error" in res or res.get("finished") == sc.jobs:
            break
        print(f"  Kueue's recorder stopped with {res.get('finished')} of {sc.jobs} finished; once more",
              file=sys.stderr, flush=True)
    if "error" not in res and res.get("finished") != sc.jobs:
        res["incomplete"] = "Kueue's recorder stopped before every workload finished"
    return res


def run_kueue_once(sc: Scenario, args: argparse.Namespace, harness: Path, bins: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="kueue-baseline-"))
    assets = work / "assets"
    assets.mkdir()
    audit = work / "audit.log"
    for b in ("etcd", "kubectl"):
        (assets / b).symlink_to(Path(bins) / b)
    # envtest starts whatever kube-apiserver KUBEBUILDER_ASSETS holds: a wrapper adds the audit log
    # (the same policy as ckq's side), so Kueue's requests are split by client too.
    policy = work / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    extra = (f' --audit-policy-file="{policy}" --audit-log-path="{audit}" --audit-log-format=json'
             f' --audit-log-mode=blocking --audit-log-maxsize={AUDIT_LOG_MAX_MB}') if args.audit else ""
    wrapper = assets / "kube-apiserver"
    wrapper.write_text(f'#!/bin/sh\nexec "{Path(bins) / "kube-apiserver"}" "$@"{extra}\n')
    wrapper.chmod(0o755)
    gen = work / "generator.yaml"
    gen.write_text(yaml.safe_dump(sc.kueue_generator(), sort_keys=False))
    out = work / "out"
    out.mkdir()
    log = work / "runner.log"
    cmd = [str(harness / "runner"), "--o", str(out), "--crds", str(harness / "crds"), "--generatorConfig", str(gen),
           "--minimalKueue", str(harness / "minimalkueue"), f"--timeout={int(args.timeout)}s",
           "--zap-log-level=info"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            # PROJECT_DIR: Kueue's test/util looks for its source tree (a Makefile) when
                            # imported, and panics without one; nothing of it is read by the runner.
                            env={**os.environ, "KUBEBUILDER_ASSETS": str(assets), "PROJECT_DIR": f"{harness}/"},
                            start_new_session=True)
    cpu_last: dict[str, float] = {}
    cpu_at_gen: dict[str, float] | None = None
    scanned, gen_offset = 0, None
    deadline = t0 + args.timeout + 120
    while proc.poll() is None:
        for pid, name in _descendants(proc.pid):
            c = cpu_seconds(pid)
            if not math.isnan(c):
                cpu_last[f"{name}:{pid}"] = c
        if args.audit and gen_offset is None:
            # The generator's first request (the ResourceFlavor) opens the window, as on ckq's side,
            # leaving out envtest's start-up (CRDs, RBAC bootstrap) and minimalkueue's.
            scanned, gen_offset = find_in_log(audit, scanned, (b'"verb":"create"', b'"resource":"resourceflavors"'))
            if gen_offset is not None:
                cpu_at_gen = dict(cpu_last)
        if time.time() > deadline:
            os.killpg(proc.pid, 15)
            break
        time.sleep(0.5)
    proc.wait()
    elapsed = time.time() - t0
    res: dict[str, Any] = {"system": "kueue", "version": (harness / ".complete").read_text().split()[0],
                           "scale": args.scale, "jobs": sc.jobs, "runner_exit": proc.returncode,
                           "runner_elapsed_s": round(elapsed, 1), "workdir": str(work)}
    summary_file, stats_file = out / "summary.yaml", out / "minimalkueue.stats.yaml"
    if not summary_file.exists() or not stats_file.exists():
        res["error"] = f"no summary (runner exit {proc.returncode}); log tail:\n{_tail(log)}"
        return res
    summary = yaml.safe_load(summary_file.read_text())
    stats = yaml.safe_load(stats_file.read_text())
    wl = summary.get("workloadClasses") or {}
    with (out / "wlStates.csv").open() as f:
        rows = list(csv.DictReader(f))
    res["created"] = len(rows)
    res["finished"] = sum(1 for r in rows if int(r["ms to finish"]) > 0)
    # Its times have 1 s resolution: an admission within the creation's second reads 0 ms.
    res["admitted"] = sum(1 for r in rows if int(r["ms to finish"]) > 0 or int(r["ms to admitted"]) > 0)
    res["wall_minimalkueue_s"] = round(stats["wallMs"] / 1000, 2)  # what Kueue's checker asserts on
    res["wall_s"] = res["wall_minimalkueue_s"]
    res["tta_mean_s"] = {c: round(v["averageTimeToAdmissionMs"] / 1000, 3) for c, v in wl.items()}
    res["jobs_by_class"] = {c: v["count"] for c, v in wl.items()}
    res["evictions_by_class"] = {c: v.get("totalEvictions", 0) for c, v in wl.items()}
    res["usage_pct"] = {}
    for c, v in (summary.get("clusterQueueClasses") or {}).items():
        span = _ts(v["lastEventTime"]) - _ts(v["firstEventTime"])
        res["usage_pct"][c] = round(100 * v["cpuUsed"] / (v["nominalQuota"] * span * 1000), 2) if span > 0 else None
    res["minimalkueue_cpu_s"] = round((stats["userMs"] + stats["sysMs"]) / 1000, 1)
    res["minimalkueue_maxrss_mib"] = round(stats["maxrss"] / 1024, 1)
    by_proc: dict[str, float] = defaultdict(float)
    for key, c in cpu_last.items():
        by_proc[key.split(":")[0]] += c - (cpu_at_gen or {}).get(key, 0.0)
    res["cpu_seconds"] = {k: round(v, 1) for k, v in sorted(by_proc.items(), key=lambda kv: -kv[1])}
    res["cpu_window"] = ("from the generator's first request" if cpu_at_gen is not None
                         else "whole run (envtest start-up included)")
    if args.audit:
        # Wall as ckq's side measures it: the first workload created -> the runner's last status write
        # (marking a workload Finished), from the audit log's microsecond timestamps.
        first_create = last_finish = None
        for ev in audit_events(audit, gen_offset or 0):
            ref = ev.get("objectRef") or {}
            if ref.get("resource") != "workloads":
                continue
            if ev.get("verb") == "create" and first_create is None:
                first_create = _ts(ev.get("requestReceivedTimestamp"))
            elif (ref.get("subresource") == "status" and ev.get("verb") in ("update", "patch")
                  and kueue_classify("", ev.get("userAgent", "")) == "runner"):
                last_finish = _ts(ev.get("stageTimestamp"))
        if first_create and last_finish:
            res["wall_s"] = round(last_finish - first_create, 2)
        by_client = read_audit(audit, gen_offset or 0, None, kueue_classify)
        keys: Counter[str] = Counter()
        for v in by_client.values():
            keys.update(v)
        total = sum(keys.values())
        res["api_requests"] = total
        res["api_requests_per_job"] = round(total / sc.jobs, 2)
        res["api_requests_by_verb_resource"] = dict(keys.most_common())
        res["api_requests_by_client"] = {k: sum(v.values()) for k, v in sorted(by_client.items())}
        res["api_requests_per_job_by_client"] = {k: round(sum(v.values()) / sc.jobs, 2)
                                                 for k, v in sorted(by_client.items())}
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
        res.pop("workdir")
    return res


def _ts(v: Any) -> float:
    t = parse_time(v)
    return float(t) if t is not None else 0.0


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _descendants(root: int) -> Iterator[tuple[int, str]]:
    """(pid, command name) of every process below `root` (envtest's etcd and kube-apiserver, minimalkueue)."""
    children: dict[int, list[int]] = defaultdict(list)
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children[ppid].append(int(entry))
        names[int(entry)] = name
    todo = [root]
    while todo:
        pid = todo.pop()
        yield pid, names.get(pid, "?")
        todo.extend(children.get(pid, []))


# ---- output ---------------------------------------------------------------------------------------


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.1f}{unit}" if abs(v) >= 10 else f"{v:.2f}{unit}"
    return f"{v}{unit}"


def print_table(sc: Scenario, results: list[dict[str, Any]], reference: dict[str, Any] | None) -> None:
    cols = [r["system"] + (f" ({r.get('policy')})" if r.get("policy") else "") for r in results]
    rows: list[tuple[str, list[str]]] = []
    if reference:
        cols.append("Kueue measured here (issue 13)")
    def add(label: str, values: list[Any], ref: Any = None, unit: str = "") -> None:
        cells = [_fmt(v, unit) for v in values]
        if reference:
            cells.append(_fmt(ref, unit))
        rows.append((label, cells))

    ref = reference or {}
    def counts(r: dict[str, Any]) -> str:
        if "error" in r:
            return str(r["error"].splitlines()[0])
        admitted = sum(r["admitted_by_class"].values()) if "admitted_by_class" in r else r.get("admitted", "—")
        return f"{r.get('created', r.get('jobs'))} / {admitted} / {r.get('finished', r.get('jobs'))}"

    add("jobs created / admitted / finished", [counts(r) for r in results])
    add("timed out / incomplete", [f"yes, after {r['timeout_s']:g} s" if r.get("timed_out")
                                   else "recorder stopped early" if r.get("incomplete") else "no" for r in results])
    add("wall, first creation -> all finished", [r.get("wall_s") for r in results], ref.get("wall_s"), " s")
    if any("wall_minimalkueue_s" in r for r in results):
        add("wall, minimalkueue's process (Kueue's checker)", [r.get("wall_minimalkueue_s") for r in results])
    for c in [s.cls for s in sorted(sc.sets, key=lambda s: -s.priority)]:
        add(f"mean time to admission, {c} (admitted jobs)", [(r.get("tta_mean_s") or {}).get(c) for r in results],
            (ref.get("tta_mean_s") or {}).get(c), " s")
    add(f"usage, class {sc.cq_class} (Kueue's recorder: CQ status)",
        [(r.get("usage_pct") or {}).get(sc.cq_class) for r in results], None, " %")
    add(f"usage, class {sc.cq_class} (from jobs' quota holding)",
        [(r.get("usage_from_jobs_pct") or {}).get(sc.cq_class) for r in results], None, " %")
    add("evictions (preemptions)", [sum((r.get("evictions_by_class") or {}).values()) if r.get("evictions_by_class")
                                    is not None else None for r in results])
    add("API requests per job", [r.get("api_requests_per_job") for r in results],
        ref.get("api_requests_per_finished_job"))
    clients = sorted({k for r in results for k in (r.get("api_requests_per_job_by_client") or {})})
    for k in clients:
        add(f"  of which {k}", [(r.get("api_requests_per_job_by_client") or {}).get(k) for r in results])
    add("controller peak RSS", [r.get("controller_peak_rss_mib", r.get("minimalkueue_maxrss_mib")) for r in results],
        None, " MiB")
    width = max(len(label) for label, _ in rows) + 2
    colw = [max([len(c), 12] + [len(cells[i]) for _, cells in rows]) + 2 for i, c in enumerate(cols)]
    print("".ljust(width) + "".join(c.rjust(w) for c, w in zip(cols, colw, strict=True)))
    for label, cells in rows:
        print(label.ljust(width) + "".join(v.rjust(w) for v, w in zip(cells, colw, strict=True)))
    for r in results:
        if r.get("cpu_seconds"):
            print(f"{r['system']}: CPU seconds by process: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_seconds"].items()))
        top = list((r.get("api_requests_by_verb_resource") or {}).items())[:12]
        if top:
            print(f"{r['system']}: API requests by verb and resource (top {len(top)} of "
                  f"{r.get('api_requests')}): " + ", ".join(f"{k} {v}" for k, v in top))
        for who, keys in (r.get("api_requests_by_client_verb_resource") or {}).items():
            print(f"{r['system']}:   {who}: " + ", ".join(f"{k} {v}" for k, v in list(keys.items())[:8]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="shrink every workload set (0.02 -> 300 jobs)")
    ap.add_argument("--timeout", type=float, default=1800.0,
                    help="seconds after the first creation to stop waiting and report what finished")
    ap.add_argument("--policy", default="iass", help="the controller's policy profile")
    ap.add_argument("--nodes", type=int, default=10, help="kwok nodes; sized so that quota is the constraint")
    ap.add_argument("--audit", action=argparse.BooleanOptionalAction, default=True,
                    help="API server audit log, for requests per client (costs the API server some CPU)")
    ap.add_argument("--with-kueue", action="store_true",
                    help="first run Kueue's own harness at the same scale (hack/build-kueue-perf.sh)")
    ap.add_argument("--kueue-figures", action="store_true", help="print issue 13's Kueue figures beside ours")
    ap.add_argument("--cluster", default=CLUSTER, help="dev cluster name (its state under $CKQ_STATE_DIR)")
    ap.add_argument("--progress", type=float, default=15.0, help="seconds between progress lines on stderr")
    ap.add_argument("--keep", action="store_true", help="leave the cluster (and Kueue's work dir) behind")
    ap.add_argument("--pod-gc-threshold", type=int, default=POD_GC_THRESHOLD,
                    help="finished pods the cluster keeps before PodGC deletes the oldest (0, the default: "
                         "Kubernetes' own, 12,500; see POD_GC_THRESHOLD)")
    args = ap.parse_args()
    if not 0 < args.scale <= 1:
        ap.error("--scale must be in (0, 1]")
    if args.pod_gc_threshold < 0:
        ap.error("--pod-gc-threshold must be 0 (Kubernetes' default) or a number of pods")

    sc = Scenario().scaled(args.scale)
    print(f"scenario: Kueue baseline at scale {args.scale:g}: {sc.cohorts} cohorts x {sc.queues_per_cohort} "
          f"ClusterQueues, per queue " + ", ".join(f"{s.count} {s.cls}" for s in sc.sets)
          + f" = {sc.jobs} jobs", file=sys.stderr, flush=True)
    results = []
    if args.with_kueue:
        print("running Kueue's harness (runner + minimalkueue on envtest) ...", file=sys.stderr, flush=True)
        results.append(run_kueue(sc, args))
    print(f"running ckq's replica (policy {args.policy}) ...", file=sys.stderr, flush=True)
    results.append(run_ckq(sc, args))
    reference = None
    if args.kueue_figures:
        reference = KUEUE_MEASURED_HERE.get(round(args.scale, 3))
        if reference is None:
            print(f"(no Kueue figures were measured here at scale {args.scale:g}: only at 1 and 0.2)",
                  file=sys.stderr)
    print_table(sc, results, reference)
    ckq = results[-1]
    doc: dict[str, Any] = {"bench": "kueue_baseline", **ckq}
    if args.with_kueue:
        doc["kueue"] = results[0]
    if args.kueue_figures:
        doc["kueue_measured_here"] = {str(k): v for k, v in KUEUE_MEASURED_HERE.items()}
        doc["kueue_upstream_ci_full_scale"] = KUEUE_UPSTREAM_CI
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
