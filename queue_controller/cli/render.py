"""Draw the user commands' views (`cli/views.py`) as rich tables, or print them as JSON or YAML.

Tables are for people: ages and durations in kubectl's style, sizes in binary units, `-` for unset.
`-o json|yaml` print the view dict itself (numbers in seconds and bytes, times in RFC 3339), so a
script reads exactly what the table was drawn from.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from queue_controller.cli.views import human_bytes, human_duration, progress
from queue_controller.wire import parse_time


class Format(StrEnum):
    """`-o`: a table for people, or the view as JSON or YAML for scripts."""

    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


def dump(view: Mapping[str, Any], output: str) -> str:
    """The view as JSON or YAML text."""
    if output == "json":
        return json.dumps(view, indent=2, sort_keys=False) + "\n"
    return str(yaml.safe_dump(dict(view), sort_keys=False, default_flow_style=False, allow_unicode=True))


def emit(console: Console, view: Mapping[str, Any], output: str,
         table: Callable[[Console, Mapping[str, Any], float], None], now: float) -> None:
    """Print `view` in the chosen output; `table` draws it for `-o table`."""
    if output in ("json", "yaml"):
        # Plain write: rich would wrap long lines and highlight, which breaks parsing.
        console.file.write(dump(view, output))
        return
    table(console, view, now)


def _s(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _age(ts: Any, now: float) -> str:
    t = parse_time(ts)
    return "-" if t is None else human_duration(now - t)


def _table(*columns: str, title: str | None = None) -> Table:
    t = Table(title=title, title_justify="left", box=None, header_style="bold", pad_edge=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    return t


def jobs_table(console: Console, view: Mapping[str, Any], now: float) -> None:
    items = view["items"]
    if not items:
        console.print("No jobs found.")
        return
    many_ns = view.get("allNamespaces") or len({i["namespace"] for i in items}) > 1
    cols = (["NAMESPACE"] if many_ns else []) + ["NAME", "QUEUE", "PHASE", "PRIORITY", "POSITION", "REASON",
                                                 "PROGRESS", "CHECKPOINTS", "AGE"]
    t = _table(*cols)
    for i in items:
        position = _s(i["position"]) if view.get("positionsKnown", True) else "?"
        row = ([i["namespace"]] if many_ns else []) + [
            i["name"], _s(i["queue"]), _s(i["phase"]), _s(i["priority"]), position, _s(i["pendingReason"]),
            progress(i["runTimeSeconds"], i["runtimeEstimateSeconds"]), str(i["checkpoints"]),
            _age(i["creationTimestamp"], now)]
        t.add_row(*row)
    console.print(t)


def _usage_cell(usage: list[Mapping[str, Any]]) -> str:
    """`h100: nvidia.com/gpu 8/16, cpu 4/512` — one line per flavor, resources in quota order."""
    by_flavor: dict[str, list[str]] = {}
    for u in usage:
        quota = f"/{u['nominalQuota']}" if u.get("nominalQuota") is not None else ""
        by_flavor.setdefault(u["flavor"], []).append(f"{u['resource']} {u['used']}{quota}")
    return "\n".join(f"{f}: {', '.join(rs)}" for f, rs in by_flavor.items()) or "-"


def queues_table(console: Console, view: Mapping[str, Any], now: float) -> None:
    cqs, lqs = view["clusterQueues"], view["localQueues"]
    if cqs:
        t = _table("CLUSTERQUEUE", "COHORT", "STRATEGY", "PENDING", "ADMITTED", "SUSPENDED", "USAGE / QUOTA",
                   title="ClusterQueues")
        for q in cqs:
            t.add_row(q["name"], _s(q["cohort"]), q["queueingStrategy"], str(q["pending"]), str(q["admitted"]),
                      str(q["suspended"]), _usage_cell(q["usage"]))
        console.print(t)
    if lqs:
        if cqs:
            console.print()
        t = _table("NAMESPACE", "LOCALQUEUE", "CLUSTERQUEUE", "PENDING", "ADMITTED", "SUSPENDED",
                   "USAGE / CLUSTERQUEUE QUOTA", title="LocalQueues")
        for q in lqs:
            t.add_row(q["namespace"], q["name"], _s(q["clusterQueue"]), str(q["pending"]), str(q["admitted"]),
                      str(q["suspended"]), _usage_cell(q["usage"]))
        console.print(t)
    if not cqs and not lqs:
        console.print("No queues found.")


def pending_table(console: Console, view: Mapping[str, Any], now: float) -> None:
    items = view["items"]
    head = f"ClusterQueue {view['clusterQueue']} ({view['queueingStrategy']})"
    if not items:
        console.print(f"{head}: no pending jobs.")
        return
    t = _table("POSITION", "NAMESPACE", "NAME", "LOCALQUEUE", "PRIORITY", "PHASE", "REASON", "WAITING", "MESSAGE",
               title=head)
    for i in items:
        position = "-" if i["position"] is None else f"{i['position']} ({i['positionInLocalQueue']} in LQ)"
        t.add_row(position, i["namespace"], i["name"], i["localQueue"], _s(i["priority"]), _s(i["phase"]),
                  _s(i["pendingReason"]), _age(i["queuedTime"], now), _s(i["message"]))
    console.print(t)


def top_table(console: Console, view: Mapping[str, Any], now: float) -> None:
    items = view["items"]
    if not items:
        console.print("No ClusterQueues found.")
        return
    t = _table("CLUSTERQUEUE", "COHORT", "FLAVOR", "RESOURCE", "USED", "NOMINAL", "USED%", "BORROWED", "LENT",
               "BORROW LIMIT", "LEND LIMIT")
    for r in items:
        pct = "-" if r["usedPercent"] is None else f"{r['usedPercent']}%"
        t.add_row(r["clusterQueue"], _s(r["cohort"]), r["flavor"], r["resource"], r["used"], r["nominalQuota"], pct,
                  r["borrowed"], r["lent"], _s(r["borrowingLimit"]), _s(r["lendingLimit"]))
    console.print(t)


def describe_text(console: Console, view: Mapping[str, Any], now: float) -> None:
    """kubectl-describe style: fields, then sections."""
    def field(label: str, value: Any) -> None:
        console.print(f"[bold]{label + ':':<18}[/bold] {_s(value)}", highlight=False)

    field("Name", view["name"])
    field("Namespace", view["namespace"])
    field("Queue", view["queue"])
    field("ClusterQueue", view["clusterQueue"])
    prio = view["priority"]
    field("Priority", f"{prio} ({view['priorityClassName']})" if view["priorityClassName"] else prio)
    field("Phase", view["phase"] + (" (suspend requested)" if view["suspend"] and view["phase"] != "Suspended"
                                    else "") if view["phase"] else None)
    if view["position"] is not None:
        field("Position", f"{view['position']} in ClusterQueue, {view['positionInLocalQueue']} in LocalQueue")
    if view["whyWaiting"]:
        field("Why waiting", view["whyWaiting"])
    elif view["message"]:
        field("Message", view["message"])
    field("Progress", progress(view["runTimeSeconds"], view["runtimeEstimateSeconds"]))
    field("Lost work", human_duration(view["lostRunTimeSeconds"]) if view["lostRunTimeSeconds"] else "none")
    interval = f", every {view['checkpointInterval']}" if view["checkpointInterval"] else ""
    field("Checkpointing", f"{view['checkpointMode']}{interval}")
    field("Counters", f"{view['checkpoints']} checkpoints, {view['checkpointFailures']} failed, "
                      f"{view['preemptions']} preemptions, {view['restarts']} restarts")
    field("Age", _age(view["creationTimestamp"], now))

    adm = view["admission"]
    console.print()
    if adm:
        backfill = " (backfill)" if adm["backfill"] else ""
        console.print(f"[bold]Admission[/bold]: ClusterQueue {adm['clusterQueue']}{backfill}, "
                      f"{_age(adm['time'], now)} ago", highlight=False)
        t = _table("POD SET", "FLAVOR", "COUNT", "NODES")
        for p in adm["podSets"]:
            t.add_row(p["name"], _s(p["flavor"]), _s(p["count"]), ", ".join(p["nodes"]) or "-")
        console.print(t)
    else:
        console.print("[bold]Admission[/bold]: none (holds no quota)", highlight=False)

    console.print()
    if view["conditions"]:
        t = _table("CONDITION", "STATUS", "REASON", "AGE", "MESSAGE", title="Conditions")
        for c in view["conditions"]:
            t.add_row(_s(c["type"]), _s(c["status"]), _s(c["reason"]), _age(c["lastTransitionTime"], now),
                      _s(c["message"]))
        console.print(t)
    else:
        console.print("[bold]Conditions[/bold]: none")

    console.print()
    if view["checkpointHistory"]:
        t = _table("CHECKPOINT", "REASON", "PHASE", "LEAVE RUNNING", "SIZE", "DURATION", "AGE", "MESSAGE",
                   title="Checkpoints")
        for c in view["checkpointHistory"]:
            dur = "-" if c["durationSeconds"] is None else f"{c['durationSeconds']:.1f}s"
            t.add_row(c["name"], _s(c["reason"]), _s(c["phase"]), "yes" if c["leaveRunning"] else "no",
                      human_bytes(c["sizeBytes"]), dur, _age(c["completionTime"] or c["startTime"], now),
                      _s(c["message"]))
        console.print(t)
    else:
        console.print("[bold]Checkpoints[/bold]: none")

    if view["events"]:
        console.print()
        t = _table("TYPE", "REASON", "AGE", "MESSAGE", title="Events")
        for e in view["events"][-10:]:
            t.add_row(_s(e["type"]), _s(e["reason"]), _age(e["time"], now), _s(e["message"]))
        console.print(t)
