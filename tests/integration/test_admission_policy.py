"""The ValidatingAdmissionPolicy over pod templates (queue_controller/api/admission.py), on the real API
server (v1.35, the Go-built one of `ckq dev`: the policy API is GA and on by default there).

Each malformed template is refused at `create` with a 422 whose message names the field; each valid
form (integer and JSON-number quantities, sidecars, pod-level resources) is accepted. And the policy
agrees with the controller's own model (`validate_object`): whatever the policy lets through, the
controller can parse, so a job is no longer stored only to be reported `InvalidSpec` later.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from queue_controller.api import admission
from queue_controller.api.validation import InvalidObject, validate_object
from tests.plugins.controller import Kube, cjob

pytestmark = pytest.mark.integration

Mutation = Callable[[dict[str, Any]], None]
PATH = "spec.podSets[0].template.spec"


def container(body: dict[str, Any], i: int = 0) -> dict[str, Any]:
    return body["spec"]["podSets"][0]["template"]["spec"]["containers"][i]  # type: ignore[no-any-return]


def pod_spec(body: dict[str, Any]) -> dict[str, Any]:
    return body["spec"]["podSets"][0]["template"]["spec"]  # type: ignore[no-any-return]


REFUSED: list[tuple[str, Mutation, str]] = [
    ("memory-lots", lambda b: container(b)["resources"]["requests"].update(memory="lots"),
     f'{PATH}.containers[0].resources.requests.memory: "lots" is not a non-negative Kubernetes quantity'),
    ("negative-cpu", lambda b: container(b)["resources"]["requests"].update(cpu="-1"),
     f'{PATH}.containers[0].resources.requests.cpu: "-1" is not'),
    ("huge-exponent", lambda b: container(b)["resources"]["limits"].update(cpu="1e999"),
     f'{PATH}.containers[0].resources.limits.cpu: "1e999" is not'),
    ("too-long", lambda b: container(b)["resources"]["limits"].update(cpu="1" * 65),
     f"{PATH}.containers[0].resources.limits.cpu: "),
    ("bool-quantity", lambda b: container(b)["resources"]["requests"].update(cpu=True),
     f"{PATH}.containers[0].resources.requests.cpu: must be a non-negative Kubernetes quantity"),
    ("resource-name", lambda b: container(b)["resources"]["limits"].update({"bad name!": "1"}),
     f'{PATH}.containers[0].resources.limits: "bad name!" is not a resource name'),
    ("no-containers", lambda b: pod_spec(b).pop("containers"), f"{PATH}.containers: required"),
    ("empty-containers", lambda b: pod_spec(b).update(containers=[]), f"{PATH}.containers: required"),
    ("containers-string", lambda b: pod_spec(b).update(containers="x"), f"{PATH}.containers: must be a list"),
    ("nameless", lambda b: container(b).pop("name"), f"{PATH}.containers[0].name: required"),
    ("resources-string", lambda b: container(b).update(resources="x"),
     f"{PATH}.containers[0].resources: must be an object"),
    ("requests-list", lambda b: container(b).update(resources={"requests": ["1"]}),
     f"{PATH}.containers[0].resources.requests: must be a map"),
    ("no-pod-spec", lambda b: b["spec"]["podSets"][0]["template"].pop("spec"), f"{PATH}: required"),
    ("overhead", lambda b: pod_spec(b).update(overhead={"cpu": "lots"}), f'{PATH}.overhead.cpu: "lots" is not'),
    ("pod-level", lambda b: pod_spec(b).update(resources={"requests": {"memory": "1.5x"}}),
     f'{PATH}.resources.requests.memory: "1.5x" is not'),
    ("init-container", lambda b: pod_spec(b).update(initContainers=[
        {"name": "init", "resources": {"limits": {"memory": "lots"}}}]),
     f'{PATH}.initContainers[0].resources.limits.memory: "lots" is not'),
    ("second-pod-set", lambda b: b["spec"]["podSets"].append({"name": "b", "template": {"spec": {"containers": [
        {"name": "c", "resources": {"requests": {"cpu": "x"}}}]}}}),
     'spec.podSets[1].template.spec.containers[0].resources.requests.cpu: "x" is not'),
]

ACCEPTED: list[tuple[str, Mutation]] = [
    ("as-written", lambda b: None),
    ("integer", lambda b: container(b)["resources"]["requests"].update(cpu=4)),
    ("json-number", lambda b: container(b)["resources"]["requests"].update(cpu=0.5)),
    ("odd-units", lambda b: container(b)["resources"]["requests"].update(cpu="1e3", memory="1.5Gi")),
    ("exponent-64", lambda b: container(b)["resources"]["limits"].update(cpu="1e64")),
    ("no-resources", lambda b: container(b).pop("resources")),
    ("sidecar", lambda b: pod_spec(b).update(initContainers=[
        {"name": "proxy", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}}])),
    ("pod-level", lambda b: pod_spec(b).update(resources={"requests": {"cpu": "2", "memory": "8Gi"}})),
]


def job(name: str, mutate: Mutation) -> dict[str, Any]:
    body = cjob(name, "main", gpus=1)
    mutate(body)
    return body


def model_accepts(body: dict[str, Any]) -> bool:
    try:
        validate_object(copy.deepcopy(body), allow_unknown_fields=True)
    except InvalidObject:
        return False
    return True


@pytest.mark.parametrize("name,mutate,message", REFUSED, ids=[r[0] for r in REFUSED])
def test_malformed_pod_templates_are_refused_naming_the_field(kube: Kube, namespace: str, name: str,
                                                              mutate: Mutation, message: str) -> None:
    with pytest.raises(ApiException) as refused:
        kube.create("checkpointablejobs", job(name, mutate), namespace)
    assert refused.value.status == 422, refused.value.body
    text = json.loads(refused.value.body)["message"]
    assert f"ValidatingAdmissionPolicy '{admission.POLICY_NAME}'" in text and message in text, text


@pytest.mark.parametrize("name,mutate", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_valid_pod_templates_are_accepted(kube: Kube, namespace: str, name: str, mutate: Mutation) -> None:
    body = job(name, mutate)
    assert model_accepts(body), "the controller's model should accept this too"
    kube.create("checkpointablejobs", body, namespace)


def test_what_the_policy_refuses_the_model_refuses_too() -> None:
    """The two sources agree (bar resource names, which only the pods' own validation would catch later):
    everything the policy refuses, the controller's model could not have run either."""
    for name, mutate, _ in REFUSED:
        if name != "resource-name":
            assert not model_accepts(job(name, mutate)), name


def test_the_policy_is_installed_and_type_checks(kube: Kube) -> None:
    from kubernetes import client

    reg = client.AdmissionregistrationV1Api(kube.api)
    policy = kube.wait("the policy's type check", lambda: (
        p if (p := reg.read_validating_admission_policy(admission.POLICY_NAME)).status
        and p.status.observed_generation == p.metadata.generation else None))
    assert not (policy.status.type_checking and policy.status.type_checking.expression_warnings), policy.status
    binding = reg.read_validating_admission_policy_binding(admission.POLICY_NAME)
    assert binding.spec.validation_actions == ["Deny"]
