"""What the user commands show, computed from plain API objects (dicts) with no I/O and no clock of its own.

Each view is a JSON-ready dict: `-o json|yaml` prints it as it is, and `cli/render.py` draws the same
dict as tables, so the machine output and the table never disagree.

Queue positions are computed here, on demand, from the jobs the API server holds — the way Kueue's
visibility API serves them. The controller does not store them per job (a position moves with every
admission ahead of it, and rewriting every waiting job each cycle made its API writes grow with the
backlog); it keeps only a bounded head of each queue in the queue's `status.pendingJobs`. A ClusterQueue's queue is the
set of waiting jobs of its LocalQueues that the controller actually queues (the same rules as
`operator/snapshot.build`: a LocalQueue that exists, a namespace the ClusterQueue admits, a known
PriorityClass, a checkpoint mode that can be served, not suspended by its user), ranked by
`engine.ordering.positions`: priority, then queue-order time (the job's creation: a preempted job
keeps its place), then `namespace/name`. Why each job waits (`pendingReason`, `message`) is the
controller's word, read from the job's status.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from queue_controller.api.common import LabelSelector
from queue_controller.api.quantity import QuantityError, format_milli, to_milli
from queue_controller.engine.ordering import positions
from queue_controller.operator.snapshot import BACKOFF_REASON, MODE_CONDITION
from queue_controller.wire import ACTIVE_PHASES, TERMINAL_PHASES, parse_time

# Phases in which a job runs (its progress grows).
RUNNING_PHASES = ("Running", "Checkpointing")
# A job the controller does not queue says why (the same reasons the controller writes).
SUSPENDED_BY_USER = "SuspendedByUser"
LQ_NOT_FOUND = "LocalQueueNotFound"
NS_NOT_ALLOWED = "NamespaceNotAllowed"
PC_NOT_FOUND = "PriorityClassNotFound"


def key_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("spec") or {}


# ---- queue order, on demand ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class QueueEntry:
    """Where one waiting job stands. `position` is None when the controller does not queue it."""

    key: str
    local_queue: str
    cluster_queue: str | None
    priority: int | None
    queued_at: float
    position: int | None
    lq_position: int | None
    reason: str | None
    message: str | None


def is_waiting(job: Mapping[str, Any]) -> bool:
    """Not holding quota and not finished (a job the controller has not seen yet has no phase)."""
    phase = _status(job).get("phase")
    return phase not in ACTIVE_PHASES and phase not in TERMINAL_PHASES


def job_priority(job: Mapping[str, Any], priority_classes: Mapping[str, int] | None) -> int | None:
    """`spec.priority`, else its PriorityClass's value, else 0; None when the class does not exist.
    Without access to PriorityClasses (`None`), the value the controller resolved into status."""
    spec = _spec(job)
    if spec.get("priority") is not None:
        return int(spec["priority"])
    pc = spec.get("priorityClassName")
    if not pc:
        return 0
    if priority_classes is None:
        resolved = _status(job).get("priority")
        return int(resolved) if resolved is not None else None
    return priority_classes.get(pc)


def _mode_refusal(job: Mapping[str, Any]) -> tuple[str, str] | None:
    for c in _status(job).get("conditions") or ():
        if c.get("type") == MODE_CONDITION and c.get("status") == "True":
            return MODE_CONDITION, str(c.get("message") or c.get("reason") or "")
    return None


def _admits(cq: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kueue's rule: an unset namespaceSelector admits no namespace, `{}` admits all."""
    raw = _spec(cq).get("namespaceSelector")
    if raw is None:
        return False
    try:
        return LabelSelector.model_validate(raw).matches(labels)
    except ValidationError:
        return False


def queue_entries(jobs: Iterable[Mapping[str, Any]], local_queues: Iterable[Mapping[str, Any]],
                  cluster_queues: Iterable[Mapping[str, Any]],
                  namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
                  priority_classes: Mapping[str, int] | None = None) -> dict[str, QueueEntry]:
    """Every waiting job's place: its position in its ClusterQueue and LocalQueue, or why it is not queued.

    `jobs` must be every job of the ClusterQueues of interest (all namespaces), or positions come out
    too small. `namespace_labels` default to the name label the API server sets on every namespace.
    """
    lq_target = {key_of(lq): str(_spec(lq).get("clusterQueue") or "") for lq in local_queues}
    cqs = {str(_meta(cq).get("name")): cq for cq in cluster_queues}
    labels = namespace_labels or {}
    drafts: list[tuple[str, str, str | None, int | None, float, tuple[str, str] | None, Mapping[str, Any]]] = []
    for job in jobs:
        if not is_waiting(job):
            continue
        meta, spec = _meta(job), _spec(job)
        ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        lq = str(spec.get("queueName") or "")
        at = parse_time(meta.get("creationTimestamp")) or 0.0
        cq_name = lq_target.get(f"{ns}/{lq}")
        priority = job_priority(job, priority_classes)
        refusal: tuple[str, str] | None = None
        if spec.get("suspend"):
            refusal = (SUSPENDED_BY_USER, "suspended by its user; `ckq resume` queues it again")
        elif cq_name is None:
            refusal = (LQ_NOT_FOUND, f"LocalQueue {lq!r} does not exist in namespace {ns!r}")
        elif cq_name in cqs and not _admits(cqs[cq_name], labels.get(ns) or {"kubernetes.io/metadata.name": ns}):
            refusal = (NS_NOT_ALLOWED, f"ClusterQueue {cq_name!r} does not admit namespace {ns!r} "
                                       "(spec.namespaceSelector)")
        elif priority is None:
            refusal = (PC_NOT_FOUND, f"PriorityClass {spec.get('priorityClassName')!r} does not exist")
        elif (status := job.get("status") or {}).get("pendingReason") == BACKOFF_REASON:
            # Backing off after a pods-ready timeout: out of the queue until status.requeueState.requeueAt
            # (the controller re-queues it then; its message says when).
            refusal = (BACKOFF_REASON, str(status.get("message") or ""))
        else:
            refusal = _mode_refusal(job)
        drafts.append((f"{ns}/{name}", lq, cq_name, priority, at, refusal, job))

    by_cq: dict[str, list[tuple[int, float, str]]] = {}
    by_lq: dict[str, list[tuple[int, float, str]]] = {}
    for key, lq, cq_name, priority, at, refusal, _ in drafts:
        if refusal is None and cq_name is not None and priority is not None:
            by_cq.setdefault(cq_name, []).append((priority, at, key))
            by_lq.setdefault(f"{key.split('/', 1)[0]}/{lq}", []).append((priority, at, key))
    in_cq: dict[str, int] = {}
    for members in by_cq.values():
        in_cq.update(positions(members))
    in_lq: dict[str, int] = {}
    for members in by_lq.values():
        in_lq.update(positions(members))

    out: dict[str, QueueEntry] = {}
    for key, lq, cq_name, priority, at, refusal, job in drafts:
        status = _status(job)
        reason, message = refusal if refusal is not None else (status.get("pendingReason"), status.get("message"))
        out[key] = QueueEntry(key, lq, cq_name, priority, at, in_cq.get(key), in_lq.get(key),
                              None if reason is None else str(reason), None if message is None else str(message))
    return out


# ---- formatting helpers (shared with render.py) ----------------------------------------------------

def human_duration(seconds: float | None) -> str:
    """`45s`, `12m`, `3h05m`, `2d4h`: kubectl's age style."""
    if seconds is None:
        return "-"
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h}h{m:02d}m" if h < 10 and m else f"{h}h"
    d, h = divmod(s // 3600, 24)
    return f"{d}d{h}h" if d < 10 and h else f"{d}d"


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def run_time(job: Mapping[str, Any], now: float) -> float:
    """Accumulated run time, the current run included (what `operator/runs.run_time_now` computes)."""
    status = _status(job)
    start = parse_time(status.get("runStartTime"))
    ran = max(now - start, 0.0) if start is not None and status.get("phase") in RUNNING_PHASES else 0.0
    return float(status.get("runTimeSeconds") or 0.0) + ran


def progress(run_s: float, estimate_s: float | None) -> str:
    """`12m / 1h (20%)`, or just the run time without an estimate."""
    if not estimate_s:
        return human_duration(run_s)
    return f"{human_duration(run_s)} / {human_duration(estimate_s)} ({min(run_s / estimate_s, 9.99):.0%})"


# ---- ckq get jobs ----------------------------------------------------------------------------------

def job_rows(jobs: Iterable[Mapping[str, Any]], entries: Mapping[str, QueueEntry] | None,
             now: float, all_namespaces: bool = False) -> dict[str, Any]:
    """One row per job: queue, phase, priority, position, progress, checkpoints, creation time.
    `entries` None: positions unknown (the user may not list every namespace)."""
    items = []
    for job in sorted(jobs, key=key_of):
        meta, spec, status = _meta(job), _spec(job), _status(job)
        entry = (entries or {}).get(key_of(job))
        estimate = spec.get("runtimeEstimateSeconds")
        items.append({
            "namespace": meta.get("namespace"),
            "name": meta.get("name"),
            "queue": spec.get("queueName"),
            "clusterQueue": (status.get("admission") or {}).get("clusterQueue")
            or (entry.cluster_queue if entry else None),
            "phase": status.get("phase") or ("Pending" if not status else None),
            "priority": status.get("priority") if entry is None or entry.priority is None else entry.priority,
            "position": entry.position if entry else None,
            "pendingReason": entry.reason if entry else None,
            "runTimeSeconds": round(run_time(job, now), 1),
            "runtimeEstimateSeconds": estimate,
            "checkpoints": int(status.get("checkpoints") or 0),
            "creationTimestamp": meta.get("creationTimestamp"),
        })
    return {"kind": "JobList", "allNamespaces": all_namespaces, "positionsKnown": entries is not None,
            "items": items}


# ---- ckq pending CQ --------------------------------------------------------------------------------

def pending_view(cq: Mapping[str, Any], jobs: Iterable[Mapping[str, Any]],
                 entries: Mapping[str, QueueEntry]) -> dict[str, Any]:
    """The ClusterQueue's waiting jobs in queue order, each with its reason; then the jobs of its
    LocalQueues that it does not queue (no position), with why."""
    name = _meta(cq).get("name")
    by_key = {key_of(j): j for j in jobs}
    mine = [e for e in entries.values() if e.cluster_queue == name]
    queued = sorted((e for e in mine if e.position is not None), key=lambda e: e.position or 0)
    other = sorted((e for e in mine if e.position is None), key=lambda e: e.key)
    items = []
    for e in [*queued, *other]:
        job = by_key.get(e.key, {})
        ns, job_name = e.key.split("/", 1)
        items.append({
            "position": e.position, "positionInLocalQueue": e.lq_position, "namespace": ns, "name": job_name,
            "localQueue": e.local_queue, "priority": e.priority, "phase": _status(job).get("phase") or "Pending",
            "pendingReason": e.reason, "message": e.message,
            "queuedTime": _status(job).get("queuedTime") or _meta(job).get("creationTimestamp"),
        })
    return {"kind": "PendingJobs", "clusterQueue": name,
            "queueingStrategy": _spec(cq).get("queueingStrategy", "BestEffortFIFO"), "items": items}


# ---- quota arithmetic (get queues, top queues) -----------------------------------------------------

def _milli(value: Any) -> int:
    try:
        return to_milli(value) if value is not None else 0
    except (QuantityError, ValueError, TypeError):
        return 0


def _fmt(resource: str, milli: int) -> str:
    return format_milli(milli, "BinarySI" if resource == "memory" or resource.endswith("memory") else "DecimalSI")


def _quotas(cq: Mapping[str, Any]) -> dict[tuple[str, str], Mapping[str, Any]]:
    """(flavor, resource) -> its quota entry, in spec order."""
    out: dict[tuple[str, str], Mapping[str, Any]] = {}
    for group in _spec(cq).get("resourceGroups") or ():
        for flavor in group.get("flavors") or ():
            for res in flavor.get("resources") or ():
                out[(str(flavor.get("name")), str(res.get("name")))] = res
    return out


def _usage(queue: Mapping[str, Any]) -> dict[tuple[str, str], Mapping[str, Any]]:
    out: dict[tuple[str, str], Mapping[str, Any]] = {}
    for flavor in _status(queue).get("flavorsUsage") or ():
        for res in flavor.get("resources") or ():
            out[(str(flavor.get("name")), str(res.get("name")))] = res
    return out


def _usage_list(queue: Mapping[str, Any], quotas: Mapping[tuple[str, str], Mapping[str, Any]]) -> list[dict[str, Any]]:
    used = _usage(queue)
    out = []
    for fr in [*quotas, *(k for k in used if k not in quotas)]:
        q = quotas.get(fr)
        out.append({"flavor": fr[0], "resource": fr[1],
                    "used": _fmt(fr[1], _milli((used.get(fr) or {}).get("total"))),
                    "nominalQuota": None if q is None else _fmt(fr[1], _milli(q.get("nominalQuota")))})
    return out


def _counts(queue: Mapping[str, Any]) -> dict[str, int]:
    st = _status(queue)
    return {"pending": int(st.get("pendingWorkloads") or 0), "admitted": int(st.get("admittedWorkloads") or 0),
            "suspended": int(st.get("suspendedWorkloads") or 0)}


def queues_view(cluster_queues: Iterable[Mapping[str, Any]],
                local_queues: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """ClusterQueues and LocalQueues: counts, and usage against the ClusterQueue's nominal quota."""
    cqs = sorted(cluster_queues, key=lambda q: str(_meta(q).get("name")))
    quotas = {str(_meta(q).get("name")): _quotas(q) for q in cqs}
    return {
        "kind": "Queues",
        "clusterQueues": [{"name": _meta(q).get("name"), "cohort": _spec(q).get("cohort"),
                           "queueingStrategy": _spec(q).get("queueingStrategy", "BestEffortFIFO"),
                           **_counts(q), "usage": _usage_list(q, quotas[str(_meta(q).get("name"))])}
                          for q in cqs],
        "localQueues": [{"namespace": _meta(q).get("namespace"), "name": _meta(q).get("name"),
                         "clusterQueue": _spec(q).get("clusterQueue"), **_counts(q),
                         "usage": _usage_list(q, quotas.get(str(_spec(q).get("clusterQueue")), {}))}
                        for q in sorted(local_queues, key=key_of)],
    }


def top_view(cluster_queues: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Per ClusterQueue, flavor and resource: nominal quota, limits, usage, borrowed and lent.

    `borrowed` is usage above nominal quota. `lent` is the part of the cohort's borrowing this queue's
    unused quota pays for: the cohort's total borrowing of that flavor/resource, shared among its
    members in proportion to what each leaves unused of its lendable quota (min(lendingLimit,
    nominal) - usage). The controller does not record who lent to whom, so this is the fair split,
    and the members' `lent` add up to the cohort's `borrowed`.
    """
    cqs = sorted(cluster_queues, key=lambda q: str(_meta(q).get("name")))
    rows: list[dict[str, Any]] = []
    # (cohort, flavor, resource) -> [borrowed total, {queue: unused lendable}]
    pools: dict[tuple[str, str, str], tuple[list[int], dict[str, int]]] = {}
    for q in cqs:
        name, cohort = str(_meta(q).get("name")), _spec(q).get("cohort")
        used = _usage(q)
        for (flavor, res), quota in _quotas(q).items():
            nominal = _milli(quota.get("nominalQuota"))
            total = _milli((used.get((flavor, res)) or {}).get("total"))
            recorded = (used.get((flavor, res)) or {}).get("borrowed")
            borrowed = _milli(recorded) if recorded is not None else max(0, total - nominal)
            lendable = nominal if quota.get("lendingLimit") is None else min(_milli(quota["lendingLimit"]), nominal)
            rows.append({"clusterQueue": name, "cohort": cohort, "flavor": flavor, "resource": res,
                         "nominalQuota": nominal, "borrowingLimit": quota.get("borrowingLimit"),
                         "lendingLimit": quota.get("lendingLimit"), "used": total, "borrowed": borrowed, "lent": 0})
            if cohort:
                pool = pools.setdefault((cohort, flavor, res), ([0], {}))
                pool[0][0] += borrowed
                pool[1][name] = max(0, min(lendable, nominal - total))
    for row in rows:
        if not row["cohort"]:
            continue
        borrowed_total, unused = pools[(row["cohort"], row["flavor"], row["resource"])]
        room = sum(unused.values())
        if room and borrowed_total[0]:
            row["lent"] = min(unused[row["clusterQueue"]], borrowed_total[0] * unused[row["clusterQueue"]] // room)
    for row in rows:
        res = row["resource"]
        row["usedPercent"] = round(100 * row["used"] / row["nominalQuota"]) if row["nominalQuota"] else None
        for field in ("nominalQuota", "used", "borrowed", "lent"):
            row[field] = _fmt(res, row[field])
    return {"kind": "QueueUsage", "items": rows}


# ---- ckq describe job ------------------------------------------------------------------------------

def _why(job: Mapping[str, Any], entry: QueueEntry | None, queue_length: int | None) -> str | None:
    status, spec = _status(job), _spec(job)
    phase = status.get("phase")
    if phase in TERMINAL_PHASES:
        return None
    if phase in ACTIVE_PHASES:
        if status.get("preemptedFor"):
            return f"being vacated (checkpointed or stopped) to make room for {status['preemptedFor']}"
        if spec.get("suspend"):
            return "suspend requested: being checkpointed out"
        return None
    if entry is None:
        return "not seen by the controller yet"
    text = f"{entry.reason or 'waiting'}: {entry.message}" if entry.message else (entry.reason or "waiting")
    if entry.position is not None:
        of = f" of {queue_length}" if queue_length else ""
        text += f" (position {entry.position}{of} in ClusterQueue {entry.cluster_queue})"
    return text


def describe_view(job: Mapping[str, Any], checkpoints: Iterable[Mapping[str, Any]],
                  entries: Mapping[str, QueueEntry] | None, events: Iterable[Mapping[str, Any]],
                  now: float) -> dict[str, Any]:
    """Everything about one job: state, conditions, admission, checkpoint history, why it waits."""
    meta, spec, status = _meta(job), _spec(job), _status(job)
    entry = (entries or {}).get(key_of(job))
    length = None
    if entry is not None and entry.position is not None and entries is not None:
        length = sum(1 for e in entries.values() if e.cluster_queue == entry.cluster_queue and e.position)
    mine = [c for c in checkpoints if _spec(c).get("jobName") == meta.get("name")]
    history = []
    for c in sorted(mine, key=lambda c: (str(_meta(c).get("creationTimestamp") or ""), str(_meta(c).get("name")))):
        cs = _status(c)
        history.append({"name": _meta(c).get("name"), "reason": _spec(c).get("reason"),
                        "leaveRunning": bool(_spec(c).get("leaveRunning")), "phase": cs.get("phase"),
                        "sizeBytes": cs.get("sizeBytes"), "durationSeconds": cs.get("durationSeconds"),
                        "startTime": cs.get("startTime"), "completionTime": cs.get("completionTime"),
                        "message": cs.get("message")})
    adm = status.get("admission")
    admission = None
    if adm:
        admission = {"clusterQueue": adm.get("clusterQueue"), "time": adm.get("time"),
                     "backfill": bool(adm.get("backfill")),
                     "podSets": [{"name": a.get("name"), "flavor": a.get("flavor") or ", ".join(
                         f"{r}={f}" for r, f in sorted((a.get("flavors") or {}).items())) or None,
                                  "count": a.get("count"), "nodes": list(a.get("nodes") or [])}
                                 for a in adm.get("podSetAssignments") or ()]}
    ckpt = spec.get("checkpoint") or {}
    return {
        "kind": "JobDescription",
        "namespace": meta.get("namespace"), "name": meta.get("name"),
        "creationTimestamp": meta.get("creationTimestamp"),
        "queue": spec.get("queueName"),
        "clusterQueue": (adm or {}).get("clusterQueue") or (entry.cluster_queue if entry else None),
        "phase": status.get("phase"),
        "priority": entry.priority if entry is not None and entry.priority is not None else status.get("priority"),
        "priorityClassName": spec.get("priorityClassName"),
        "suspend": bool(spec.get("suspend")),
        "position": entry.position if entry else None,
        "positionInLocalQueue": entry.lq_position if entry else None,
        "pendingReason": entry.reason if entry else status.get("pendingReason"),
        "message": status.get("message"),
        "whyWaiting": _why(job, entry, length),
        "checkpointMode": ckpt.get("mode", "CRIU"), "checkpointInterval": ckpt.get("interval"),
        "runTimeSeconds": round(run_time(job, now), 1),
        "runtimeEstimateSeconds": spec.get("runtimeEstimateSeconds"),
        "lostRunTimeSeconds": status.get("lostRunTimeSeconds", 0.0),
        "preemptions": int(status.get("preemptions") or 0), "restarts": int(status.get("restarts") or 0),
        "checkpoints": int(status.get("checkpoints") or 0),
        "checkpointFailures": int(status.get("checkpointFailures") or 0),
        "lastCheckpoint": status.get("lastCheckpoint"),
        "conditions": [{"type": c.get("type"), "status": c.get("status"), "reason": c.get("reason"),
                        "message": c.get("message"), "lastTransitionTime": c.get("lastTransitionTime")}
                       for c in status.get("conditions") or ()],
        "admission": admission,
        "checkpointHistory": history,
        "events": [{"type": e.get("type"), "reason": e.get("reason"), "message": e.get("message"),
                    "count": e.get("count"),
                    "time": e.get("lastTimestamp") or e.get("eventTime") or (e.get("metadata") or {}).get(
                        "creationTimestamp")}
                   for e in sorted(events, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))],
    }


# ---- ckq checkpoint JOB ----------------------------------------------------------------------------

def can_checkpoint(job: Mapping[str, Any]) -> str | None:
    """Why a user checkpoint of `job` would be refused now (None: it can be taken)."""
    status, spec = _status(job), _spec(job)
    if (spec.get("checkpoint") or {}).get("mode") == "None":
        return f"job {key_of(job)} is not checkpointable (spec.checkpoint.mode is None)"
    if status.get("phase") != "Running":
        return f"job {key_of(job)} is {status.get('phase') or 'Pending'}: only a Running job can be checkpointed"
    return None
