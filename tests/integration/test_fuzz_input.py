"""Bad input, fuzzed against the real API server with the controller running (issue 14).

Hypothesis builds CheckpointableJobs, ClusterQueues, LocalQueues, ResourceFlavors and Checkpoints: a
valid object of each kind with zero to three mutations drawn from a pool of boundary and malformed
values (names at the length limits, huge counts, quantities with odd units, interval strings, priority
classes and queues that do not exist, borrowing limits without a cohort, Checkpoints for missing jobs
or jobs of another namespace). Each one is created on the real API server (CRDs and the admission
policy installed, as `kubectl apply -f crds/` does) while a real `ckq controller` runs. Then:

- every refusal is a 4xx whose message names the field (`spec.…` / `metadata.name`), never a 5xx;
- every accepted job is reported in its status: a phase, and a pending job carries a reason and a
  message; a job our own model refuses (`api.validation.validate_object`) is reported `InvalidSpec`
  naming the field; a Checkpoint for a job that does not exist is `Failed` naming the job;
- the controller is alive and its log has no traceback, and its loop is not stalled: a valid job
  created after all of that is admitted and runs (one bad object never blocks the others); restarted
  with all of it stored, it starts and admits another.

CI runs a fixed, derandomized sample (CKQ_FUZZ_EXAMPLES, default 60, about a minute of API calls);
raise the variable for a soak: `CKQ_FUZZ_EXAMPLES=2000 pytest tests/integration/test_fuzz_input.py`, and
set CKQ_FUZZ_SEED for another sample than CI's (a failure prints the example and how to replay it).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.rest import ApiException

from queue_controller.api.validation import InvalidObject, validate_object
from tests.plugins.controller import GROUP, VERSION, Kube, cjob, cluster_queue, local_queue

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("CKQ_FUZZ_EXAMPLES", "60"))
SEED = os.environ.get("CKQ_FUZZ_SEED")  # unset: derandomized (the same sample every run)
API = f"{GROUP}/{VERSION}"
DELETE = object()  # a mutation that removes the field

# ---- the pool of values ---------------------------------------------------------------------------

QUANTITIES = ["lots", "1.5Gi", "1e3", "1E3", "64gi", "-1Gi", "0", "1e999", "+1", ".5", "5.", 0.5, "", " 1Gi",
              "1Ki", "1ki", "99999999999999999999Ei", "16Gi", 2**63, "1m", "100n", "0x10", "1_000", True, None,
              {"a": 1}, ["1"]]
INTERVALS = ["30m", "1h30m", "0s", "-5m", "5 minutes", "auto", "1d", "999999h", "1.5h", "", "ms", "90", 60, "1h0m0s"]
COUNTS = [0, -1, 1, 2, 63, 64, 1000, 10**6, 2**31, 2**63 - 1, 2**64, "8", 1.5, None]
PRIORITIES = [2**31, -2**31 - 1, 10**9, 10**9 + 1, "high", 1.5, -1, 0]
DNS_NAMES = ["no-such-thing", "", "UPPER", "a_b", "-a", "a" * 253, "a" * 254, "a.b", "x" * 63, "é"]


def name_variants() -> list[str]:
    """How a name is shaped; `make_name` turns each into a unique name of that shape."""
    return ["short", "len63", "len64", "len253", "len254", "upper", "underscore", "dash-end", "dot"]


def make_name(shape: str, unique: str) -> str:
    base = f"z{unique}"
    fill = {"len63": 63, "len64": 64, "len253": 253, "len254": 254}.get(shape)
    if fill is not None:
        return (base + "-" + "n" * fill)[:fill]
    return {"short": base, "upper": base.upper(), "underscore": f"{base}_x", "dash-end": f"{base}-",
            "dot": f"{base}.x"}[shape]


# Per kind: (path, values). A path is a tuple of keys/indexes from the object's root.
CONTAINER = ("spec", "podSets", 0, "template", "spec", "containers", 0)
JOB_MUTATIONS: list[tuple[tuple[Any, ...], list[Any]]] = [
    (("spec", "queueName"), ["missing-queue", "@fuzzed-lq", "@fuzzed-lq", *DNS_NAMES]),
    (("spec", "priorityClassName"), ["no-such-class", "Bad_Name", "a" * 254]),
    (("spec", "priority"), PRIORITIES),
    (("spec", "podSets", 0, "count"), COUNTS),
    (("spec", "podSets", 0, "name"), ["Bad", "a" * 64, "", "w-2", "p" * 63]),
    (("spec", "podSets"), [[], DELETE, "x"]),
    ((*CONTAINER, "resources", "requests", "memory"), QUANTITIES),
    ((*CONTAINER, "resources", "requests", "cpu"), QUANTITIES),
    ((*CONTAINER, "resources", "limits", "nvidia.com/gpu"), QUANTITIES),
    ((*CONTAINER, "resources", "requests", "nvidia.com/gpu"), ["0", 10**6, "0.5", "1k"]),
    ((*CONTAINER, "resources", "requests", "bad resource!"), ["1"]),
    ((*CONTAINER, "resources"), ["x", [], DELETE]),
    ((*CONTAINER, "name"), ["", DELETE, 7]),
    (("spec", "podSets", 0, "template", "spec", "containers"), [[], DELETE, "x", [{}]]),
    (("spec", "podSets", 0, "template", "spec", "initContainers"),
     [[{"name": "init", "resources": {"requests": {"memory": "lots"}}}], "x"]),
    (("spec", "podSets", 0, "template", "spec", "overhead"), [{"cpu": "lots"}, {"cpu": "1"}]),
    (("spec", "podSets", 0, "template", "spec"), [DELETE, {}, "x"]),
    (("spec", "podSets", 0, "template"), [{}, "x", DELETE]),
    (("spec", "checkpoint", "interval"), INTERVALS),
    (("spec", "checkpoint", "mode"), ["Simulated", "CRIU", "Signal", "None", "Bogus", ""]),
    (("spec", "checkpoint", "retain"), [0, 1, 100, 101, -1]),
    (("spec", "checkpoint", "timeoutSeconds"), [0, 1, 86400, 86401]),
    (("spec", "checkpoint", "signal"), ["SIGUSR1", "SIGFOO", "99", ""]),
    (("spec", "checkpoint", "encryptionKey"), [{"secretName": "no-such-secret"}, {"secretName": "Bad_Name"}, {}]),
    (("spec", "maxRestarts"), [-1, 0, 1000, 1001]),
    (("spec", "runtimeEstimateSeconds"), [0, 1, 2**62, -5]),
    (("spec", "suspend"), ["yes", True]),
    (("spec", "unknownField"), [1]),
    (("metadata", "annotations", "ckq.io/simulated-runtime-seconds"), ["-1", "forever", "1e309", "0"]),
]
CQ_MUTATIONS: list[tuple[tuple[Any, ...], list[Any]]] = [
    (("spec", "cohort"), [DELETE, "c-fuzz", "Bad_Cohort", ""]),
    (("spec", "resourceGroups", 0, "flavors", 0, "resources", 2, "borrowingLimit"), ["8", "-1", "lots", 0]),
    (("spec", "resourceGroups", 0, "flavors", 0, "resources", 2, "lendingLimit"), ["8", "99", "lots"]),
    (("spec", "resourceGroups", 0, "flavors", 0, "resources", 2, "nominalQuota"),
     ["1e3", "-8", "lots", 2**63, "99999999999999999999Ei", "0.5", "8", "1e999", "1e64", "1e65"]),
    (("spec", "resourceGroups", 0, "flavors", 0, "name"), ["no-such-flavor", "Bad_Flavor", ""]),
    (("spec", "resourceGroups", 0, "coveredResources"), [["cpu"], [], ["cpu", "cpu", "memory"]]),
    (("spec", "resourceGroups"), [[], DELETE, "x"]),
    (("spec", "namespaceSelector"), [{"matchLabels": {"no": "such"}}, {"matchExpressions": [{"key": "a"}]}, "x"]),
    (("spec", "preemption", "withinClusterQueue"), ["LowerPriority", "Sometimes"]),
    (("spec", "preemption", "reclaimWithinCohort"), ["Any", "Always"]),
    (("spec", "queueingStrategy"), ["StrictFIFO", "Random"]),
    (("spec", "fairSharing", "weight"), ["0", "lots", "-1", "1e3"]),
    (("spec", "backfill", "reservationDepth"), [-1, 0, 101]),
]
LQ_MUTATIONS: list[tuple[tuple[Any, ...], list[Any]]] = [
    (("spec", "clusterQueue"), ["no-such-cq", "@fuzzed-cq", "@fuzzed-cq", *DNS_NAMES]),
    (("spec",), [DELETE, {}]),
    (("spec", "checkpoint", "encryptionKey"), [{"secretName": "no-such-secret"}, {"secretName": "Bad_Name"}, {},
                                               "x"]),
]
RF_MUTATIONS: list[tuple[tuple[Any, ...], list[Any]]] = [
    (("spec", "nodeLabels"), [{"a": "b"}, {f"k{i}": "v" for i in range(9)}, {"bad key!": "v"}, "x"]),
    (("spec", "nodeTaints"), [[{"key": "k", "effect": "NoSchedule"}], [{"key": "k", "effect": "Sometimes"}], [{}]]),
    (("spec", "tolerations"), [[{"key": "k", "operator": "Exists"}], [{"operator": "Maybe"}]]),
]
CKPT_MUTATIONS: list[tuple[tuple[Any, ...], list[Any]]] = [
    (("spec", "jobName"), ["@missing", "@other-namespace", "Bad_Name", "", "a" * 254]),
    (("spec", "reason"), ["User", "Preemption", "Because", ""]),
    (("spec", "leaveRunning"), [True, "maybe"]),
]
KINDS = {"CheckpointableJob": JOB_MUTATIONS, "ClusterQueue": CQ_MUTATIONS, "LocalQueue": LQ_MUTATIONS,
         "ResourceFlavor": RF_MUTATIONS, "Checkpoint": CKPT_MUTATIONS}
PLURALS = {"CheckpointableJob": "checkpointablejobs", "ClusterQueue": "clusterqueues", "LocalQueue": "localqueues",
           "ResourceFlavor": "resourceflavors", "Checkpoint": "checkpoints"}
CLUSTER_SCOPED = {"ClusterQueue", "ResourceFlavor"}


Mutations = list[tuple[tuple[Any, ...], Any]]
Specimen = tuple[str, str, Mutations, Mutations]


@st.composite
def specimens(draw: st.DrawFn) -> Specimen:
    """(kind, name shape, mutations, then): `then`, when not empty, is applied to the stored object as
    an update (the immutability rules). Shrinks towards a valid short-named object."""
    # Jobs carry most of the surface: drawn three times as often; half the names are plain, so that the
    # rest of the object is what gets refused or reported.
    kind = draw(st.sampled_from(["CheckpointableJob"] * 2 + sorted(KINDS)))
    shape = draw(st.one_of(st.just("short"), st.sampled_from(name_variants())))
    pool = KINDS[kind]

    def mutations(most: int) -> Mutations:
        picks = draw(st.lists(st.sampled_from(range(len(pool))), max_size=most, unique=True))
        return [(pool[i][0], draw(st.sampled_from(pool[i][1]))) for i in picks]

    first = mutations(3)
    then = mutations(2) if draw(st.integers(0, 3)) == 0 else []
    return kind, shape, first, then


# ---- building and applying ------------------------------------------------------------------------


def put(obj: Any, path: tuple[Any, ...], value: Any) -> None:
    """Set (or, with DELETE, remove) `path`, making the dicts on the way; a path through a value of
    another type (a list made a string by an earlier mutation) is left alone."""
    for i, key in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(obj, dict):
            if key not in obj or not isinstance(obj[key], (dict, list)):
                if value is DELETE:
                    return
                obj[key] = [] if isinstance(nxt, int) else {}
            obj = obj[key]
        elif isinstance(obj, list) and isinstance(key, int):
            if key >= len(obj):
                if value is DELETE:
                    return
                obj.append({})
                key = len(obj) - 1
            obj = obj[key]
        else:
            return
    last = path[-1]
    if isinstance(obj, dict):
        if value is DELETE:
            obj.pop(last, None)
        else:
            obj[last] = copy.deepcopy(value)
    elif isinstance(obj, list) and isinstance(last, int) and last < len(obj):
        if value is DELETE:
            del obj[last]
        else:
            obj[last] = copy.deepcopy(value)


@dataclass
class Ledger:
    """What happened to each object, for the checks after the run."""

    accepted: list[tuple[str, str | None, str, dict[str, Any]]] = field(default_factory=list)
    refused: list[tuple[str, int, str]] = field(default_factory=list)
    cluster_scoped: list[tuple[str, str]] = field(default_factory=list)


# A field path: `spec.x`, `spec[0]`, `spec:` or `metadata.name` (a CRD rule at the root cannot set a
# fieldPath under metadata, so the name-length rule names it in its message).
FIELD_NAMED = re.compile(r"\bmetadata\.name\b|\bspec[.\[:]")


@dataclass
class World:
    kube: Kube
    namespace: str
    other: str  # a second namespace, where a job of the same name as `ns`'s lives
    unique: str
    ledger: Ledger = field(default_factory=Ledger)
    counter: Iterator[int] = field(default_factory=itertools.count)

    def base(self, kind: str, name: str) -> dict[str, Any]:
        ns = self.namespace
        if kind == "CheckpointableJob":
            body = cjob(name, "fz", gpus=1, runtime_s=3600)
            body["spec"].pop("priority")
            return body
        if kind == "ClusterQueue":
            # a100 only, like the fuzzed jobs' queue: the h100 nodes stay free for the job made at the end.
            return cluster_queue(name, gpus=4, flavors=("a100",), namespaceSelector={})
        if kind == "LocalQueue":
            return local_queue(name, ns, f"{ns}-fz")
        if kind == "ResourceFlavor":
            return {"apiVersion": API, "kind": kind, "metadata": {"name": name},
                    "spec": {"nodeLabels": {"ckq.io/flavor": "fuzz"}}}
        return {"apiVersion": API, "kind": kind, "metadata": {"name": name},
                "spec": {"jobName": "target", "reason": "User"}}

    def build(self, kind: str, shape: str, mutations: Mutations) -> dict[str, Any]:
        name = make_name(shape, f"{self.unique}{next(self.counter)}")
        body = self.base(kind, name)
        self.mutate(body, mutations)
        return body

    def mutate(self, body: dict[str, Any], mutations: Mutations) -> None:
        name = str(body["metadata"]["name"])
        for path, value in mutations:
            if value == "@missing":
                value = f"gone-{name[:40]}"
            elif value == "@other-namespace":
                value = "elsewhere"  # a job that exists only in the other namespace
            elif value == "@fuzzed-cq":  # a fuzzed ClusterQueue the API server stored, if any yet
                value = next((n for k, _, n, _ in reversed(self.ledger.accepted) if k == "ClusterQueue"), "none")
            elif value == "@fuzzed-lq":
                value = next((n for k, _, n, _ in reversed(self.ledger.accepted) if k == "LocalQueue"), "none")
            put(body, path, value)

    def apply(self, kind: str, body: dict[str, Any], then: Mutations) -> None:
        scoped = kind not in CLUSTER_SCOPED
        ns = self.namespace if scoped else None
        name = str(body["metadata"]["name"])
        if not scoped:
            self.ledger.cluster_scoped.append((PLURALS[kind], name))
        if not self.answered(kind, body, lambda: self.kube.create(PLURALS[kind], body, ns)):
            return
        if then:  # an update of the stored object: refused naming the field, or the new version stands
            changed = self.update(kind, name, ns, then)
            if changed is not None:
                body = changed
        self.ledger.accepted.append((kind, ns, name, body))

    def update(self, kind: str, name: str, ns: str | None, then: Mutations) -> dict[str, Any] | None:
        """Replace the stored object with `then` applied: the new body, or None when refused. Again on a
        conflict (the controller wrote the status in between)."""
        for _ in range(10):
            changed = copy.deepcopy(self.kube.get(PLURALS[kind], name, ns))
            self.mutate(changed, then)
            try:
                return changed if self.answered(kind, changed, lambda c=changed: self.replace(kind, c, ns)) else None
            except ApiException as e:
                if e.status != 409:
                    raise
        raise AssertionError(f"{kind} {name}: 10 conflicts in a row")

    def replace(self, kind: str, body: dict[str, Any], ns: str | None) -> None:
        name = body["metadata"]["name"]
        if ns is None:
            self.kube.custom.replace_cluster_custom_object(GROUP, VERSION, PLURALS[kind], name, body)
        else:
            self.kube.custom.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[kind], name, body)

    def answered(self, kind: str, body: dict[str, Any], call: Callable[[], Any]) -> bool:
        """Whether the API server took the write; a refusal must be a 4xx naming the field."""
        name = body["metadata"].get("name")
        try:
            call()
        except ApiException as e:
            if e.status == 409:
                raise
            assert e.status is not None and 400 <= e.status < 500, \
                f"{kind} {name!r}: the API server answered {e.status}: {e.body}\n{json.dumps(body)[:2000]}"
            message = refusal_message(e)
            assert FIELD_NAMED.search(message), f"{kind} {name!r} refused without naming a field: {message}"
            self.ledger.refused.append((kind, e.status, message))
            return False
        return True


def refusal_message(e: ApiException) -> str:
    try:
        body = json.loads(e.body)
    except (TypeError, ValueError):
        return str(e.body)
    causes = (body.get("details") or {}).get("causes") or []
    return " | ".join([str(body.get("message", ""))] + [f"{c.get('field', '')}: {c.get('message', '')}"
                                                         for c in causes])


def our_errors(body: dict[str, Any]) -> list[tuple[str, str]]:
    """What our own model says of an object the API server accepted ([] = valid)."""
    try:
        validate_object(body, allow_unknown_fields=True)
    except InvalidObject as e:
        return e.errors
    return []


# ---- the test -------------------------------------------------------------------------------------


@pytest.fixture
def other_namespace(kube: Kube) -> Iterator[str]:
    name = f"o-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    for job in kube.list("checkpointablejobs", name):
        kube.delete("checkpointablejobs", job["metadata"]["name"], name)
    kube.core.delete_namespace(name)


def test_fuzzed_objects_are_refused_naming_the_field_or_reported(
        kube: Kube, namespace: str, other_namespace: str, queues: Callable[..., str],
        run_controller: Callable[..., Any]) -> None:
    # The fuzzed jobs' queue (a small quota, so valid ones run and the rest wait) and the queue of the
    # valid job made at the end; a job `elsewhere` in the other namespace for cross-namespace Checkpoints.
    queues(gpus=4, lq="fz", flavors=("a100",))
    final_queue = queues(gpus=8, lq="main")
    kube.create("checkpointablejobs", cjob("elsewhere", "main", gpus=1, runtime_s=3600), other_namespace)
    kube.create("checkpointablejobs", cjob("target", "fz", gpus=1, runtime_s=3600), namespace)
    ctl = run_controller("iass")
    world = World(kube, namespace, other_namespace, uuid.uuid4().hex[:6])
    stored_before_the_policy(kube, world)

    try:
        def one(specimen: Specimen) -> None:
            kind, shape, mutations, then = specimen
            world.apply(kind, world.build(kind, shape, mutations), then)

        fuzz = given(specimens())(one)
        if SEED is not None:
            fuzz = seed(int(SEED))(fuzz)
        settings(max_examples=EXAMPLES, derandomize=SEED is None, deadline=None, database=None, print_blob=True,
                 suppress_health_check=list(HealthCheck))(fuzz)()
        ledger = world.ledger
        assert ledger.refused and ledger.accepted, "the sample should hold both refused and accepted objects"

        # The loop is not stalled, and nothing fuzzed blocks a valid job.
        kube.create("checkpointablejobs", cjob("after", final_queue, gpus=1, runtime_s=3600), namespace)
        kube.wait_phase(namespace, "after", "Running", timeout=90)

        # Every accepted job and Checkpoint is reported in its status, with a reason.
        for kind, ns, name, body in ledger.accepted:
            if kind == "CheckpointableJob":
                assert ns is not None
                check_job_reported(kube, ns, name, our_errors(body))
            elif kind == "Checkpoint":
                assert ns is not None
                check_checkpoint_reported(kube, ns, name, body)
            elif kind == "ClusterQueue":
                check_queue_reported(kube, name, our_errors(body))

        assert ctl.proc.poll() is None, f"the controller exited:\n{ctl.log_tail()}"
        # A controller that starts with all of it already stored (its first list, not watch events) gets
        # through its start and admits a valid job too.
        ctl.stop()
        ctl = run_controller("iass")
        kube.create("checkpointablejobs", cjob("restarted", final_queue, gpus=1, runtime_s=3600), namespace)
        kube.wait_phase(namespace, "restarted", "Running", timeout=90)
        assert ctl.proc.poll() is None, f"the controller exited:\n{ctl.log_tail()}"
        log = ctl.log_path.read_text(errors="replace")
        assert "Traceback" not in log, log[max(0, log.index("Traceback") - 2000):][:6000]
        invalid = sum(1 for _, _, _, body in ledger.accepted if our_errors(body))
        print(f"fuzzed {EXAMPLES} examples: {len(ledger.accepted)} accepted ({invalid} reported invalid by the "
              f"controller), {len(ledger.refused)} refused")
        if os.environ.get("CKQ_FUZZ_REPORT"):
            with open(os.environ["CKQ_FUZZ_REPORT"], "w") as out:
                json.dump({"refused": ledger.refused, "accepted": [(k, n, our_errors(b)) for k, _, n, b in
                                                                   ledger.accepted]}, out, indent=1)
    finally:
        for plural, name in world.ledger.cluster_scoped:
            kube.delete(plural, name)


LEGACY: list[Mutations] = [
    [((*CONTAINER, "resources", "requests", "memory"), "lots")],
    [(("spec", "podSets", 0, "template", "spec", "containers"), DELETE)],
    [((*CONTAINER, "resources"), "x")],
]


def stored_before_the_policy(kube: Kube, world: World) -> None:
    """Jobs stored while the admission policy was not enforced (a cluster upgraded to it, or without it):
    the controller reports them InvalidSpec naming the field (checked with the fuzzed ones)."""
    from queue_controller.api import admission

    reg = client.AdmissionregistrationV1Api(kube.api)
    reg.delete_validating_admission_policy_binding(admission.POLICY_NAME)
    try:
        for mutations in LEGACY:
            body = world.build("CheckpointableJob", "short", mutations)
            kube.wait("the policy no longer enforced", lambda b=body: world.answered(  # type: ignore[misc]
                "CheckpointableJob", b, lambda: kube.create("checkpointablejobs", b, world.namespace)), timeout=30)
            world.ledger.accepted.append(("CheckpointableJob", world.namespace, body["metadata"]["name"], body))
    finally:
        kube.apply_admission_policy()
    assert all(our_errors(b) for _, _, _, b in world.ledger.accepted)


def check_job_reported(kube: Kube, ns: str, name: str, errors: list[tuple[str, str]]) -> None:
    def reported() -> dict[str, Any] | None:
        status = kube.job(ns, name).get("status") or {}
        phase = status.get("phase")
        if not phase:
            return None
        if phase == "Pending" and not (status.get("pendingReason") and status.get("message")):
            return None
        return status

    status = kube.wait(f"job {ns}/{name} reported in its status", reported, timeout=60)
    if errors:
        assert status.get("pendingReason") == "InvalidSpec", (name, errors, status)
        assert errors[0][0] in status["message"], (errors, status["message"])


def check_checkpoint_reported(kube: Kube, ns: str, name: str, body: dict[str, Any]) -> None:
    job = body["spec"].get("jobName")
    try:
        kube.job(ns, job)
        exists = True
    except ApiException as e:
        assert e.status == 404
        exists = False
    if exists:
        return  # a User checkpoint of a live job: what happens to it is the checkpoint tier's business
    status = kube.wait(f"Checkpoint {ns}/{name} reported", lambda: (
        (kube.get("checkpoints", name, ns).get("status") or {}).get("phase") == "Failed"
        and kube.get("checkpoints", name, ns)["status"]), timeout=60)
    assert job in status.get("message", ""), status


def check_queue_reported(kube: Kube, name: str, errors: list[tuple[str, str]]) -> None:
    def active() -> dict[str, Any] | None:
        conditions = (kube.get("clusterqueues", name).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Active"), None)

    condition = kube.wait(f"ClusterQueue {name} reports whether it is active", active, timeout=60)
    if errors:
        assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec"), (errors, condition)
        assert errors[0][0] in condition["message"], (errors, condition)
    else:
        assert condition["status"] == "True", condition
