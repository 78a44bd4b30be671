"""ClusterQueue (a quota pool with policy) and LocalQueue (a namespace's entry point to one)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from queue_controller.api.common import (
    AGE_COLUMN,
    CONDITIONS_SCHEMA_EXTRA,
    DNS_SUBDOMAIN_PATTERN,
    RESOURCE_NAME_PATTERN,
    ApiModel,
    Condition,
    KubeObject,
    LabelSelector,
    NonNegativeQuantity,
    PrinterColumn,
    rule_error,
)
from queue_controller.api.job import EncryptionKeyRef
from queue_controller.api.quantity import parse_quantity, to_milli

# List bounds: they keep CEL cost estimates finite and match Kueue's (16 groups; we allow 16 flavors and
# 16 resources per group, plenty for GPU/CPU/memory quotas).
MAX_RESOURCE_GROUPS = 16
MAX_FLAVORS = 16
MAX_RESOURCES = 16

ResourceName = Annotated[str, Field(min_length=1, max_length=253, pattern=RESOURCE_NAME_PATTERN)]
FlavorName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]

# Rule messages: shared by the CEL rules in the CRD and the pydantic validators, so both say the same.
MSG_LENDING_LE_NOMINAL = "lendingLimit must be less than or equal to nominalQuota"
MSG_LIMITS_NEED_COHORT = "borrowingLimit and lendingLimit may be set only when spec.cohort is set"
MSG_FLAVOR_RESOURCES = "each flavor must list exactly the resources in coveredResources, each once"
MSG_FLAVOR_NAMES_UNIQUE = "flavor names must be unique within a resource group"
MSG_RESOURCE_NAMES_UNIQUE = "resource names must be unique within a flavor"
MSG_COVERED_UNIQUE = "a resource may be covered by only one resource group"
MSG_FLAVOR_ONE_GROUP = "a flavor may appear in only one resource group"
MSG_CLUSTER_QUEUE_IMMUTABLE = "clusterQueue is immutable"


class ResourceQuota(ApiModel):
    """Quota of one resource in one flavor."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.lendingLimit) || "
                    "quantity(string(self.lendingLimit)).compareTo(quantity(string(self.nominalQuota))) <= 0",
                    "message": MSG_LENDING_LE_NOMINAL,
                    "fieldPath": ".lendingLimit",
                    "reason": "FieldValueInvalid",
                }
            ]
        }
    )

    name: ResourceName
    """Resource name, e.g. `cpu`, `memory`, `nvidia.com/gpu`."""
    nominal_quota: NonNegativeQuantity
    """What this ClusterQueue may use at any time (and lends to its cohort while unused)."""
    borrowing_limit: NonNegativeQuantity | None = None
    """How much unused cohort quota it may borrow beyond nominalQuota; unset means unlimited.
    Only with a cohort."""
    lending_limit: NonNegativeQuantity | None = None
    """How much of its unused nominalQuota the cohort may borrow; it always keeps
    `nominalQuota - lendingLimit`. Unset means all of it. Only with a cohort; at most nominalQuota."""

    def nominal_milli(self) -> int:
        """nominalQuota in milli-units (the engine's unit)."""
        return to_milli(self.nominal_quota)

    def borrowing_milli(self) -> int | None:
        """borrowingLimit in milli-units; None means unlimited."""
        return None if self.borrowing_limit is None else to_milli(self.borrowing_limit)

    def lending_milli(self) -> int | None:
        """lendingLimit in milli-units; None means all of nominalQuota may be lent."""
        return None if self.lending_limit is None else to_milli(self.lending_limit)

    @model_validator(mode="after")
    def _lending_le_nominal(self) -> ResourceQuota:
        if self.lending_limit is not None and parse_quantity(self.lending_limit) > parse_quantity(
            self.nominal_quota
        ):
            raise rule_error([("lendingLimit", MSG_LENDING_LE_NOMINAL)])
        return self


class FlavorQuotas(ApiModel):
    """The quotas of one flavor within a resource group."""

    name: FlavorName
    """Name of a ResourceFlavor. Flavors are tried in the listed order."""
    resources: Annotated[list[ResourceQuota], Field(min_length=1, max_length=MAX_RESOURCES)] = Field(
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
    )
    """One quota per covered resource."""

    @model_validator(mode="after")
    def _unique_resources(self) -> FlavorQuotas:
        seen: set[str] = set()
        for i, r in enumerate(self.resources):
            if r.name in seen:
                msg = f"{MSG_RESOURCE_NAMES_UNIQUE}: {r.name!r} repeats"
                raise rule_error([(f"resources[{i}].name", msg)])
            seen.add(r.name)
        return self


class ResourceGroup(ApiModel):
    """A set of resources that are always assigned the same flavor (e.g. GPUs with their CPU and memory)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.flavors.all(f, size(f.resources) == size(self.coveredResources) && "
                    "f.resources.all(r, r.name in self.coveredResources))",
                    "message": MSG_FLAVOR_RESOURCES,
                    "fieldPath": ".flavors",
                }
            ]
        }
    )

    covered_resources: Annotated[list[ResourceName], Field(min_length=1, max_length=MAX_RESOURCES)] = Field(
        json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Resources whose quota this group defines; each flavor lists exactly these."""
    flavors: Annotated[list[FlavorQuotas], Field(min_length=1, max_length=MAX_FLAVORS)] = Field(
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
    )
    """Flavors in order of preference, each with its quotas. Names are unique."""

    @model_validator(mode="after")
    def _check(self) -> ResourceGroup:
        errors: list[tuple[str, str]] = []
        if len(set(self.covered_resources)) != len(self.covered_resources):
            errors.append(("coveredResources", "coveredResources must not repeat a resource"))
        covered = set(self.covered_resources)
        seen: set[str] = set()
        for i, f in enumerate(self.flavors):
            if f.name in seen:
                errors.append((f"flavors[{i}].name", f"{MSG_FLAVOR_NAMES_UNIQUE}: {f.name!r} repeats"))
            seen.add(f.name)
            names = [r.name for r in f.resources]
            if len(names) != len(covered) or set(names) != covered:
                errors.append(
                    (f"flavors[{i}].resources", f"{MSG_FLAVOR_RESOURCES} ({sorted(covered)}), got {names}")
                )
        if errors:
            raise rule_error(errors)
        return self


class ClusterQueuePreemption(ApiModel):
    """When a pending job may preempt (checkpoint or, for non-checkpointable jobs, kill) admitted ones."""

    within_cluster_queue: Literal["Never", "LowerPriority", "LowerOrNewerEqualPriority"] = "Never"
    """Preempt jobs of this ClusterQueue: never, those of lower priority, or also newer ones of equal
    priority."""
    reclaim_within_cohort: Literal["Never", "LowerPriority", "Any"] = "Never"
    """Take back nominal quota lent to other ClusterQueues of the cohort by preempting their borrowing
    jobs: never, only lower-priority ones, or any."""


class Backfill(ApiModel):
    """EASY-style backfill: later jobs may start early when they do not delay reserved ones."""

    enabled: bool = True
    """Allow backfilling idle quota and nodes."""
    reservation_depth: Annotated[int, Field(ge=0, le=100)] = 1
    """How many blocked jobs at the head of the queue get a start-time reservation that backfill
    must not delay (1 = EASY; 0 = backfill freely, relying on checkpoint preemption)."""


class FairSharing(ApiModel):
    """Fair-sharing parameters (Kueue's)."""

    weight: NonNegativeQuantity = "1"
    """Relative weight of this ClusterQueue's share of what the cohort lends, under a policy with fair
    sharing: its share (usage above nominal quota over the cohort's lendable quota) is divided by it, so a
    queue of weight 3 gets three times what one of weight 1 gets. 0: an infinite share while it borrows,
    so it borrows only what no other queue wants."""


_LIMITS_RULE = (
    "has(self.cohort) || !has(self.resourceGroups) || self.resourceGroups.all(g, g.flavors.all(f, "
    "f.resources.all(r, !has(r.borrowingLimit) && !has(r.lendingLimit))))"
)
_COVERED_RULE = (
    "!has(self.resourceGroups) || self.resourceGroups.all(g, g.coveredResources.all(r, "
    "self.resourceGroups.exists_one(h, r in h.coveredResources)))"
)
_FLAVOR_GROUP_RULE = (
    "!has(self.resourceGroups) || self.resourceGroups.all(g, g.flavors.all(f, "
    "self.resourceGroups.exists_one(h, h.flavors.exists(x, x.name == f.name))))"
)


class ClusterQueueSpec(ApiModel):
    """Quota and policy of a ClusterQueue."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": _LIMITS_RULE, "message": MSG_LIMITS_NEED_COHORT, "fieldPath": ".resourceGroups"},
                {"rule": _COVERED_RULE, "message": MSG_COVERED_UNIQUE, "fieldPath": ".resourceGroups"},
                {"rule": _FLAVOR_GROUP_RULE, "message": MSG_FLAVOR_ONE_GROUP, "fieldPath": ".resourceGroups"},
            ]
        }
    )

    cohort: Annotated[str | None, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)] = None
    """Name of the cohort; ClusterQueues of one cohort lend each other unused quota."""
    queueing_strategy: Literal["BestEffortFIFO", "StrictFIFO"] = "BestEffortFIFO"
    """Order is priority, then creation time. `StrictFIFO`: a head job that does not fit blocks the
    ones behind it. `BestEffortFIFO`: jobs behind it that fit may be admitted."""
    namespace_selector: LabelSelector | None = None
    """Namespaces whose LocalQueues may submit here. Unset selects no namespace; `{}` selects all
    (Kueue's semantics)."""
    resource_groups: Annotated[list[ResourceGroup], Field(max_length=MAX_RESOURCE_GROUPS)] = Field(
        default_factory=list, json_schema_extra={"x-kubernetes-list-type": "atomic"}
    )
    """Quota, per group of resources, per flavor. A resource is covered by at most one group and a
    flavor appears in at most one group."""
    preemption: ClusterQueuePreemption = Field(default_factory=ClusterQueuePreemption)
    """Preemption policy."""
    backfill: Backfill = Field(default_factory=Backfill)
    """Backfill policy."""
    fair_sharing: FairSharing | None = None
    """Fair-sharing weight within the cohort."""

    @model_validator(mode="after")
    def _check(self) -> ClusterQueueSpec:
        errors: list[tuple[str, str]] = []
        if self.cohort is None:
            for gi, g in enumerate(self.resource_groups):
                for fi, f in enumerate(g.flavors):
                    for ri, r in enumerate(f.resources):
                        for field, value in (("borrowingLimit", r.borrowing_limit),
                                             ("lendingLimit", r.lending_limit)):
                            if value is not None:
                                path = f"resourceGroups[{gi}].flavors[{fi}].resources[{ri}].{field}"
                                errors.append((path, MSG_LIMITS_NEED_COHORT))
        covered: dict[str, int] = {}
        flavors: dict[str, int] = {}
        for gi, g in enumerate(self.resource_groups):
            for ci, res in enumerate(g.covered_resources):
                if covered.setdefault(res, gi) != gi:
                    msg = f"{MSG_COVERED_UNIQUE}: {res!r} is also in resourceGroups[{covered[res]}]"
                    errors.append((f"resourceGroups[{gi}].coveredResources[{ci}]", msg))
            for fi, f in enumerate(g.flavors):
                if flavors.setdefault(f.name, gi) != gi:
                    msg = f"{MSG_FLAVOR_ONE_GROUP}: {f.name!r} is also in resourceGroups[{flavors[f.name]}]"
                    errors.append((f"resourceGroups[{gi}].flavors[{fi}].name", msg))
        if errors:
            raise rule_error(errors)
        return self

    def quotas(self) -> dict[str, dict[str, ResourceQuota]]:
        """flavor -> resource -> its quota, across all resource groups (flavors in preference order)."""
        return {f.name: {r.name: r for r in f.resources} for g in self.resource_groups for f in g.flavors}

    def admits_namespace(self, namespace_labels: Mapping[str, str]) -> bool:
        """Kueue's rule: no selector admits no namespace; `{}` admits every namespace."""
        return self.namespace_selector is not None and self.namespace_selector.matches(namespace_labels)


class ResourceUsage(ApiModel):
    """Usage of one resource."""

    name: ResourceName
    """Resource name."""
    total: NonNegativeQuantity = 0
    """Quota in use by admitted jobs, borrowed part included."""
    borrowed: NonNegativeQuantity | None = None
    """The part of `total` above nominalQuota, borrowed from the cohort (ClusterQueue only)."""


class FlavorUsage(ApiModel):
    """Usage of one flavor."""

    name: FlavorName
    """ResourceFlavor name."""
    resources: Annotated[list[ResourceUsage], Field(max_length=MAX_RESOURCES)] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Per-resource usage."""


MAX_PENDING_HEAD = 10


class PendingJob(ApiModel):
    """One of the first waiting jobs of a queue, in queue order, with why it waits."""

    namespace: Annotated[str, Field(max_length=63)]
    name: Annotated[str, Field(max_length=253)]
    priority: int = 0
    position: Annotated[int, Field(ge=1)]
    """1 = the head of the ClusterQueue."""
    local_queue_position: Annotated[int | None, Field(ge=1)] = None
    """1 = the head of its LocalQueue."""
    reason: Annotated[str, Field(max_length=64)]
    """The engine's reason, e.g. `InsufficientQuota`, `WaitingForPreemption`, `ReservedStart`."""
    message: Annotated[str, Field(max_length=1024)] = ""


class QueueStatus(ApiModel):
    """Counts, usage and conditions; written by the controller."""

    pending_workloads: Annotated[int, Field(ge=0)] = 0
    """Jobs waiting for admission."""
    admitted_workloads: Annotated[int, Field(ge=0)] = 0
    """Jobs holding quota (admitted, running, checkpointing or restoring)."""
    suspended_workloads: Annotated[int, Field(ge=0)] = 0
    """Jobs checkpointed and waiting to resume (preempted or suspended by the user)."""
    checkpoint_bytes: Annotated[int, Field(ge=0)] = 0
    """Bytes of checkpoint images this queue's jobs keep in the store (their retained, completed
    Checkpoints; simulated ones count their modelled size)."""
    flavors_usage: Annotated[list[FlavorUsage], Field(max_length=MAX_RESOURCE_GROUPS * MAX_FLAVORS)] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Quota in use per flavor and resource."""
    pending_jobs: Annotated[list[PendingJob], Field(max_length=MAX_PENDING_HEAD)] = Field(default_factory=list)
    """The first waiting jobs in queue order (at most 10), each with its position and reason. A sample,
    refreshed at most every few seconds; the whole ordered list is served on demand (`ckq pending`)."""
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(
        default_factory=list, json_schema_extra=CONDITIONS_SCHEMA_EXTRA
    )
    """Conditions, e.g. `Active`."""


class FairSharingStatus(ApiModel):
    """Where the ClusterQueue stands in its cohort's fair sharing (Kueue's `status.fairSharing`)."""

    weighted_share: Annotated[int, Field(ge=0)] = 0
    """Its dominant resource share, per mille: over resources, the largest ratio of its usage above nominal
    quota to the cohort's lendable quota, divided by `spec.fairSharing.weight`, rounded up. 0 while it uses
    no more than its nominal quota; 9223372036854775807 for a weight of 0 while it borrows. Written under a
    policy with fair sharing, for queues in a cohort."""


class ClusterQueueStatus(QueueStatus):
    """ClusterQueue status: counts, usage per flavor/resource (total and borrowed), conditions."""

    fair_sharing: FairSharingStatus | None = None
    """Its weighted share of the cohort, under fair sharing."""


class LocalQueueStatus(QueueStatus):
    """LocalQueue status: counts and usage of this namespace's jobs, conditions."""


class ClusterQueue(KubeObject):
    """A pool of quota, per flavor and resource, with queueing, preemption and backfill policy.
    Cluster-scoped."""

    KIND: ClassVar[str] = "ClusterQueue"
    PLURAL: ClassVar[str] = "clusterqueues"
    SCOPE: ClassVar[Literal["Namespaced", "Cluster"]] = "Cluster"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("cq",)
    PRINTER_COLUMNS: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn(name="Cohort", type="string", json_path=".spec.cohort", description="Cohort"),
        PrinterColumn(name="Strategy", type="string", json_path=".spec.queueingStrategy",
                      description="Queueing strategy", priority=1),
        PrinterColumn(name="Pending", type="integer", json_path=".status.pendingWorkloads",
                      description="Jobs waiting for admission"),
        PrinterColumn(name="Admitted", type="integer", json_path=".status.admittedWorkloads",
                      description="Jobs holding quota"),
        PrinterColumn(name="Suspended", type="integer", json_path=".status.suspendedWorkloads",
                      description="Checkpointed jobs waiting to resume"),
        AGE_COLUMN,
        PrinterColumn(name="CheckpointBytes", type="integer", json_path=".status.checkpointBytes",
                      description="Checkpoint images its jobs keep in the store", priority=1),
    )

    kind: Literal["ClusterQueue"] = "ClusterQueue"
    spec: ClusterQueueSpec = Field(default_factory=ClusterQueueSpec)
    """Quota and policy."""
    status: ClusterQueueStatus | None = None
    """Observed state."""


class LocalQueueCheckpoint(ApiModel):
    """What the jobs of one LocalQueue get unless they say otherwise."""

    encryption_key: EncryptionKeyRef | None = None
    """Encrypt the checkpoint images of this queue's jobs with this key (a Secret in the queue's
    namespace, which is the jobs' namespace). A job's own `spec.checkpoint.encryptionKey` wins; without
    either, the namespace's default Secret `ckq-checkpoint-key` is used when it exists
    (docs/security.md)."""


class LocalQueueSpec(ApiModel):
    """Which ClusterQueue a namespace's jobs go to."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.clusterQueue == oldSelf.clusterQueue", "message": MSG_CLUSTER_QUEUE_IMMUTABLE,
                 "fieldPath": ".clusterQueue"}
            ]
        }
    )

    cluster_queue: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
    """Name of the ClusterQueue. Immutable."""
    checkpoint: LocalQueueCheckpoint | None = None
    """Checkpoint settings for every job of this queue (a job's own `spec.checkpoint` wins)."""


class LocalQueue(KubeObject):
    """A namespace's entry point to one ClusterQueue; jobs name it in `spec.queueName`. Namespaced."""

    KIND: ClassVar[str] = "LocalQueue"
    PLURAL: ClassVar[str] = "localqueues"
    SCOPE: ClassVar[Literal["Namespaced", "Cluster"]] = "Namespaced"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("lq", "queue", "queues")
    PRINTER_COLUMNS: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn(name="ClusterQueue", type="string", json_path=".spec.clusterQueue",
                      description="Backing ClusterQueue"),
        PrinterColumn(name="Pending", type="integer", json_path=".status.pendingWorkloads",
                      description="Jobs waiting for admission"),
        PrinterColumn(name="Admitted", type="integer", json_path=".status.admittedWorkloads",
                      description="Jobs holding quota"),
        PrinterColumn(name="Suspended", type="integer", json_path=".status.suspendedWorkloads",
                      description="Checkpointed jobs waiting to resume", priority=1),
        AGE_COLUMN,
    )

    kind: Literal["LocalQueue"] = "LocalQueue"
    spec: LocalQueueSpec
    """The backing ClusterQueue."""
    status: LocalQueueStatus | None = None
    """Observed state."""
