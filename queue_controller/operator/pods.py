"""Pod manifests for an admitted job: the template, pinned to the engine's node, with the flavor's
labels and tolerations, ownership, our labels, and what the job's checkpoint backend adds (on real
nodes under CRIU, the injected runtime and the wrapped commands, restoring when resuming; on kwok
nodes, how long to run)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from queue_controller.api.common import API_VERSION
from queue_controller.checkpoint.base import PodInfo
from queue_controller.operator.records import FlavorRecord, JobRecord
from queue_controller.wire import ATTEMPT_LABEL, JOB_LABEL, MANAGED_LABEL, POD_INDEX_LABEL, POD_SET_LABEL, pod_name


def _pin(affinity: Mapping[str, Any] | None, node: str) -> dict[str, Any]:
    """Require `node` through matchFields on metadata.name, ANDed into every existing required term, so
    the real kube-scheduler still binds the pod (and checks what it checks)."""
    aff = copy.deepcopy(dict(affinity or {}))
    na = aff.setdefault("nodeAffinity", {})
    req = na.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = req.get("nodeSelectorTerms") or [{}]
    pin = {"key": "metadata.name", "operator": "In", "values": [node]}
    for term in terms:
        term["matchFields"] = [*(term.get("matchFields") or []), pin]
    req["nodeSelectorTerms"] = terms
    return aff


def _limit_extended_resources(container: dict[str, Any]) -> None:
    """Extended resources (nvidia.com/gpu, ...) cannot be overcommitted: Kubernetes requires a limit
    equal to the request. Users often write only the request; supply the limit rather than have the
    API server reject the pod after the job was admitted."""
    res = container.get("resources") or {}
    requests = res.get("requests") or {}
    limits = dict(res.get("limits") or {})
    for name, q in requests.items():
        if "/" in name and not name.startswith("kubernetes.io/") and name not in limits:
            limits[name] = q
    if limits:
        container["resources"] = {**res, "limits": limits}


def build_pod(job: JobRecord, pod_set: str, index: int, attempt: int, node: str, flavor: FlavorRecord | None,
              info: PodInfo | None = None) -> dict[str, Any]:
    template = job.templates.get(pod_set) or {}
    meta = dict(template.get("metadata") or {})
    spec = copy.deepcopy(dict(template.get("spec") or {}))
    labels = {**(meta.get("labels") or {}), JOB_LABEL: job.name, POD_SET_LABEL: pod_set,
              POD_INDEX_LABEL: str(index), ATTEMPT_LABEL: str(attempt), MANAGED_LABEL: "true"}
    annotations = dict(meta.get("annotations") or {})
    if info is not None:
        annotations.update(info.annotations)
    spec["affinity"] = _pin(spec.get("affinity"), node)
    if flavor is not None:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **flavor.node_labels}
        if flavor.tolerations:
            spec["tolerations"] = [*(spec.get("tolerations") or []), *flavor.tolerations]
    spec.setdefault("restartPolicy", "Never")
    for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        _limit_extended_resources(c)
    if info is not None and info.env:
        for c in spec.get("containers") or []:
            env = [e for e in c.get("env") or [] if e.get("name") not in info.env]
            c["env"] = [*env, *({"name": k, "value": v} for k, v in info.env.items())]
    if info is not None and info.rewrite is not None:
        spec = info.rewrite(spec)  # e.g. run under ckq-run (checkpoint.injection); may raise LaunchRefused
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(job.name, attempt, pod_set, index),
            "namespace": job.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": API_VERSION, "kind": "CheckpointableJob", "name": job.name, "uid": job.uid,
                "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": spec,
    }
