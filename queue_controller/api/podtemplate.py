"""Just enough of core/v1 PodTemplateSpec to account for a pod's resources and placement.

Every other field is kept as-is (extra="allow"), so a template round-trips unchanged into the pods the
controller creates; the CRD stores it with `x-kubernetes-preserve-unknown-fields`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field

from queue_controller.api.common import ApiModel, PodQuantity, Toleration
from queue_controller.api.quantity import add_milli, max_milli, resources_to_milli

# Pod-level resources (KEP-2837) may set only these; other resources still come from containers.
_POD_LEVEL_RESOURCES = ("cpu", "memory")


class _Passthrough(ApiModel):
    model_config = ConfigDict(extra="allow")


class ResourceRequirements(_Passthrough):
    """Requests and limits of a container (or of the whole pod)."""

    requests: dict[str, PodQuantity] = Field(default_factory=dict)
    limits: dict[str, PodQuantity] = Field(default_factory=dict)

    def effective_requests_milli(self) -> dict[str, int]:
        """Requests, with a limit standing in for a missing request (Kubernetes' defaulting)."""
        out = resources_to_milli(self.limits)
        out.update(resources_to_milli(self.requests))
        return out


class Container(_Passthrough):
    """A container; only its name, resources and sidecar marker matter here."""

    name: Annotated[str, Field(min_length=1)]
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    restart_policy: str | None = None
    """`Always` on an init container makes it a sidecar (it keeps running beside the app containers)."""


class PodSpec(_Passthrough):
    """The parts of core/v1 PodSpec that affect requests and placement."""

    containers: Annotated[list[Container], Field(min_length=1)]
    init_containers: list[Container] = Field(default_factory=list)
    overhead: dict[str, PodQuantity] = Field(default_factory=dict)
    resources: ResourceRequirements | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    affinity: dict[str, Any] | None = None
    """Passed through to the pods untouched."""


class TemplateMeta(_Passthrough):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class PodTemplateSpec(_Passthrough):
    """A core/v1 PodTemplateSpec."""

    metadata: TemplateMeta = Field(default_factory=TemplateMeta)
    spec: PodSpec

    def pod_requests_milli(self) -> dict[str, int]:
        """Per-pod requests in milli-units, computed as Kubernetes' `resourcehelper.PodRequests`.

        max(app containers + sidecars, the peak of the init sequence) per resource, where an init
        container's peak includes the sidecars started before it; pod-level requests override cpu and
        memory; then the RuntimeClass overhead is added.
        """
        spec = self.spec
        app: dict[str, int] = {}
        for c in spec.containers:
            app = add_milli(app, c.resources.effective_requests_milli())
        sidecars: dict[str, int] = {}
        init_peak: dict[str, int] = {}
        for c in spec.init_containers:
            req = c.resources.effective_requests_milli()
            if c.restart_policy == "Always":
                sidecars = add_milli(sidecars, req)
                init_peak = max_milli(init_peak, sidecars)
            else:
                init_peak = max_milli(init_peak, add_milli(sidecars, req))
        total = max_milli(add_milli(app, sidecars), init_peak)
        if spec.resources is not None:
            pod_level = spec.resources.effective_requests_milli()
            for name in _POD_LEVEL_RESOURCES:
                if name in pod_level:
                    total[name] = pod_level[name]
        total = add_milli(total, resources_to_milli(spec.overhead))
        return {k: v for k, v in total.items() if v != 0}
