"""ResourceFlavor: a class of nodes (e.g. `h100`, `cpu`) that quota is expressed in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from queue_controller.api.common import AGE_COLUMN, ApiModel, KubeObject, PrinterColumn, Taint, Toleration


class ResourceFlavorSpec(ApiModel):
    """Which nodes belong to the flavor and what admitted pods get to land there (Kueue's fields)."""

    node_labels: Annotated[dict[str, str], Field(max_length=8)] = Field(default_factory=dict)
    """Labels that select the flavor's nodes; added as a nodeSelector to admitted pods. At most 8."""
    node_taints: Annotated[list[Taint], Field(max_length=8)] = Field(default_factory=list)
    """Taints of the flavor's nodes; a pod set must tolerate them to be assigned this flavor. At most 8."""
    tolerations: Annotated[list[Toleration], Field(max_length=8)] = Field(default_factory=list)
    """Tolerations added to admitted pods that are assigned this flavor. At most 8."""


    def untolerated_taints(self, tolerations: Sequence[Toleration]) -> list[Taint]:
        """The flavor's NoSchedule/NoExecute taints that none of `tolerations` tolerates.

        A pod set may be assigned this flavor only when this is empty (PreferNoSchedule never blocks).
        """
        return [
            t for t in self.node_taints
            if t.effect != "PreferNoSchedule" and not any(tol.tolerates(t) for tol in tolerations)
        ]


class ResourceFlavor(KubeObject):
    """A class of nodes; ClusterQueues hold quota per flavor. Cluster-scoped."""

    KIND: ClassVar[str] = "ResourceFlavor"
    PLURAL: ClassVar[str] = "resourceflavors"
    SCOPE: ClassVar[Literal["Namespaced", "Cluster"]] = "Cluster"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("rf", "flavor", "flavors")
    HAS_STATUS: ClassVar[bool] = False
    PRINTER_COLUMNS: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn(name="NodeLabels", type="string", json_path=".spec.nodeLabels",
                      description="Labels that select the flavor's nodes"),
        AGE_COLUMN,
    )

    kind: Literal["ResourceFlavor"] = "ResourceFlavor"
    spec: ResourceFlavorSpec = Field(default_factory=ResourceFlavorSpec)
    """The flavor's node selection."""
