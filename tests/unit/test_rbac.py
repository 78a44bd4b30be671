"""The access table (`queue_controller/access.py`) against the code: every API request the controller and
the node agent make is granted by a row, and every row is used by some request (or by kopf).

The chart's rules are checked against the same table in tests/integration/test_helm_chart.py (it
needs helm), and the table is proven sufficient on a real API server there too (zero Forbidden).
"""

from __future__ import annotations

import asyncio
import inspect
import urllib.parse
from typing import Any

import pytest

from queue_controller import access
from queue_controller.agent.kube import AgentKube, KubeApi
from queue_controller.operator.handlers import WATCHED
from queue_controller.operator.main import prime
from tests.unit.operator_world import World, make_world

pytestmark = pytest.mark.unit

VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def request_of(method: str, path: str) -> tuple[str | None, str, str, str | None, str]:
    """(namespace, group, resource[/subresource], name, verb) of one REST request."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource, name = rest[0], rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource += "/" + rest[2]
    verb = VERBS.get(method) or ("get" if name else "list")
    return namespace, group, resource, name, verb


async def _running(w: World, job: str) -> None:
    await w.cycle()
    w.server.run_pods(job)
    await w.cycle()  # the controller first sees the pods running
    await w.cycle(1)
    assert w.phase(job) == "Running"


def controller_requests() -> set[tuple[str | None, str, str, str | None, str]]:
    """Every request of a controller through start-up, preemption by checkpoint, resume, periodic
    checkpoints pruned by retain, kill preemption, and the end of each job."""

    async def scenario() -> World:
        w = make_world("iass", nodes=1, config={"deleteGraceSeconds": "5"})
        await prime(w.cache, w.kube)
        w.submit("train", runtime_s=100, checkpoint={"interval": "10s", "retain": 1})
        await _running(w, "train")
        for _ in range(2):  # two periodic checkpoints: retain 1 deletes the first
            await w.cycle(10)
            await w.cycle(5)
        w.submit("urgent", priority=100, runtime_s=10)
        await w.cycle()
        assert w.phase("train") == "Checkpointing"
        for _ in range(20):
            await w.cycle(1)
            if w.phase("train") == "Suspended":
                break
        assert w.phase("train") == "Suspended"
        await _running(w, "urgent")
        w.clock.advance(10)
        w.server.finish_pods("urgent")
        await w.cycle()
        assert w.phase("urgent") == "Succeeded" and w.phase("train") == "Restoring"
        return w

    async def kill() -> World:
        w = make_world("kueue")
        w.submit("victim")
        await _running(w, "victim")
        w.submit("urgent", priority=100)
        await w.cycle(20)
        assert w.phase("victim") == "Pending"
        return w

    async def elect() -> list[tuple[str, str]]:
        """Two replicas electing a leader: create the Lease, renew it, take it over, give it up."""
        from tests.unit.test_operator_leader import Clock, LeaseStore, replica

        store, clock, log = LeaseStore(), Clock(), []
        request = store.request

        async def logged(method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
            log.append((method, path))
            return await request(method, path, body, **kw)

        store.request = logged  # type: ignore[method-assign]
        a, b = replica(store, "a", clock), replica(store, "b", clock)
        await a.step()
        await b.step()
        await a.release()
        await b.step()
        return log

    seen = set()
    for world in (asyncio.run(scenario()), asyncio.run(kill())):
        seen |= {request_of(m, p) for m, p in world.server.log}
    seen |= {request_of(m, p) for m, p in asyncio.run(elect())}
    return seen


def test_every_controller_request_is_in_the_table() -> None:
    refused = [r for r in sorted(controller_requests(), key=str) if not access.allowed(access.CONTROLLER, *r)]
    assert refused == [], f"requests the access table (and so the chart) does not grant: {refused}"


def test_every_controller_row_is_used() -> None:
    """Nothing granted that no code asks for: each (group, resource, verb) of the table is requested by
    the scenarios, watched by kopf (the WATCHED kinds' watch), or named as kopf's own."""
    used = {(g, r, v) for _, g, r, _, v in controller_requests()}
    used |= {(w.group, w.plural, "watch") for w in WATCHED}
    unused = [(row.group, row.resource, verb) for row in access.CONTROLLER for verb in row.verbs
              if (row.group, row.resource, verb) not in used and not row.where.startswith("kopf")]
    assert unused == [], f"table rows no request used: {unused}"


def test_the_watched_kinds_are_listed_and_watched() -> None:
    for w in WATCHED:
        for verb in ("list", "watch"):
            assert access.allowed(access.CONTROLLER, None, w.group, w.plural, None, verb), (w.plural, verb)


class _Raw:
    """What urllib3 would hand back: an empty list, and an empty watch stream."""

    data = b'{"items": [], "metadata": {"resourceVersion": "1"}}'

    def stream(self, *_: Any, **__: Any) -> Any:
        return iter(())

    def release_conn(self) -> None: ...

    def close(self) -> None: ...


class _Response:
    status = 200
    response = _Raw()


def agent_requests(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[str | None, str, str, str | None, str]]:
    """The request each of the agent's API methods sends, captured at the `kubernetes` client's transport."""
    from kubernetes import client as k8s

    kube = KubeApi(k8s.Configuration(host="https://fake.invalid"))
    sent: list[tuple[str, str, bool]] = []

    def call_api(method: str, url: str, *_: Any, **__: Any) -> _Response:
        parsed = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parsed.query)
        sent.append((method, parsed.path, query.get("watch", [""])[0].lower() == "true"))
        return _Response()

    monkeypatch.setattr(kube.api, "call_api", call_api)
    calls = {
        "list_checkpoints": lambda: kube.list_checkpoints(),
        "watch_checkpoints": lambda: list(kube.watch_checkpoints("1", 1)),
        "get_checkpoint": lambda: kube.get_checkpoint("team", "c"),
        "replace_checkpoint_status": lambda: kube.replace_checkpoint_status("team", "c", {}),
        "list_node_pods": lambda: kube.list_node_pods("n0"),
        "watch_node_pods": lambda: list(kube.watch_node_pods("n0", "1", 1)),
        "list_job_pods": lambda: kube.list_job_pods("team", "j"),
        "get_node": lambda: kube.get_node("n0"),
        "get_config_map": lambda: kube.get_config_map("ckq-system", "ckq-config"),
        "create_event": lambda: kube.create_event("ns", {"metadata": {"generateName": "p."}, "involvedObject": {}}),
    }
    assert set(calls) == set(access.AGENT_CALLS), "a KubeApi method without a row in access.AGENT_CALLS"
    out = {}
    for name, call in calls.items():
        sent.clear()
        call()
        (method, path, watch) = sent[-1]
        ns, group, resource, obj, verb = request_of(method, path)
        out[name] = (ns, group, resource, obj, "watch" if watch else verb)
    kube.close()
    return out


def test_every_agent_request_is_in_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    requests = agent_requests(monkeypatch)
    for name, req in requests.items():
        assert access.allowed(access.AGENT, *req), f"{name} sends {req}, which access.AGENT does not grant"
        assert (req[-1],) == access.AGENT_CALLS[name], f"{name}: access.AGENT_CALLS says otherwise: {req}"
    used = {(g, r, v) for _, g, r, _, v in requests.values()}
    unused = [(row.group, row.resource, v) for row in access.AGENT for v in row.verbs if (row.group, row.resource, v)
              not in used]
    assert unused == [], f"agent rows no request used: {unused}"


def test_the_agent_protocol_has_no_call_outside_the_table() -> None:
    methods = {n for n, _ in inspect.getmembers(AgentKube, inspect.isfunction) if not n.startswith("_")}
    assert methods <= set(access.AGENT_CALLS), methods - set(access.AGENT_CALLS)


# ---- the users' roles ----------------------------------------------------------------------------------


def test_chart_user_roles_are_generated_from_the_table() -> None:
    from pathlib import Path

    chart = Path(__file__).resolve().parents[2] / "helm" / "ckq" / "templates" / access.USER_ROLES_TEMPLATE
    assert chart.read_text() == access.render_user_roles(), f"{chart} is stale: run `ckq crds`"


def test_user_roles_never_write_status_nor_cluster_objects() -> None:
    """Statuses are the controller's and the agents' word (a Checkpoint's artifacts say what a job restores
    from), and queues, flavors are the cluster admins': no user role writes any of them."""
    writes = {"create", "update", "patch", "delete", "deletecollection"}
    for role in ("view", "edit", "admin"):
        for group, resource, verb in access.user_role_grants(role):
            assert group == "ckq.io"
            if verb in writes:
                assert "/" not in resource and resource not in ("clusterqueues", "resourceflavors"), (role, resource)
    assert not {v for _, r, v in access.user_role_grants("view")} & writes
    assert ("ckq.io", "checkpointablejobs", "create") in access.user_role_grants("edit")
    assert ("ckq.io", "localqueues", "create") not in access.user_role_grants("edit")
    assert ("ckq.io", "localqueues", "create") in access.user_role_grants("admin")
