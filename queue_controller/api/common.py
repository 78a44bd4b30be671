"""Building blocks shared by every kind: the model base, quantities, times, conditions, selectors, taints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from queue_controller.api.quantity import (
    ACCEPTED_FORMS,
    NONNEGATIVE_QUANTITY_PATTERN,
    QUANTITY_PATTERN,
    QuantityError,
    parse_quantity,
)

GROUP = "ckq.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# RFC 1123 names, as Kubernetes checks them for object and list-entry names.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A resource name such as "cpu", "memory", "nvidia.com/gpu", "example.com/foo-bar".
RESOURCE_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, snake_case in Python, field docs from docstrings.

    Unknown fields are ignored, as the API server prunes them; `validate_object` reports them instead.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_attribute_docstrings=True,
        validate_default=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict the API server expects: camelCase keys, no unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def rule_error(violations: Sequence[tuple[str, str]]) -> PydanticCustomError:
    """An error carrying `(sub_path, message)` pairs below the validated model.

    Pydantic locates an error at the model that raised it; cross-field rules need to point deeper
    (e.g. `resourceGroups[0].flavors[1].resources[0].lendingLimit`), so the sub-paths travel in ctx
    and `validate_object` joins them onto the location.
    """
    text = "; ".join(f"{p}: {m}" if p else m for p, m in violations)
    ctx = {"text": text, "violations": [list(v) for v in violations]}
    return PydanticCustomError("ckq_rule", "{text}", ctx)


# --- quantities -------------------------------------------------------------------------------------


QUANTITY_MAX_LENGTH = 64


def _quantity_schema(pattern: str, description: str) -> dict[str, Any]:
    # The form Kubernetes itself publishes for resource.Quantity (structural-schema friendly).
    return {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": pattern,
        # Bounds the CEL cost estimate of rules that parse the quantity (quantity(string(x))).
        "maxLength": QUANTITY_MAX_LENGTH,
        "x-kubernetes-int-or-string": True,
        "description": description,
    }


def _check_quantity(value: Any, *, nonnegative: bool, allow_float: bool) -> str | int | float:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, float) and not allow_float:
        # The API server types these fields int-or-string, so 1.5 (a JSON number) would be refused.
        raise PydanticCustomError(
            "quantity", "invalid quantity {value}: write fractional quantities as strings, e.g. \"1.5\"",
            {"value": value},
        )
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise PydanticCustomError("quantity", "invalid quantity {value}: expected {forms}",
                                  {"value": repr(value), "forms": ACCEPTED_FORMS})
    if isinstance(value, str) and len(value) > QUANTITY_MAX_LENGTH:
        raise PydanticCustomError("quantity", "invalid quantity: longer than {limit} characters",
                                  {"limit": QUANTITY_MAX_LENGTH})
    try:
        parsed = parse_quantity(value)
    except QuantityError:
        raise PydanticCustomError("quantity", "invalid quantity {value}: expected {forms}",
                                  {"value": repr(value), "forms": ACCEPTED_FORMS}) from None
    # "-0" is zero, but the CRD pattern refuses any minus sign; refuse it here too.
    if nonnegative and (parsed < 0 or (isinstance(value, str) and value.startswith("-"))):
        raise PydanticCustomError("quantity", "invalid quantity {value}: must not be negative",
                                  {"value": repr(value)})
    return value


Quantity = Annotated[
    str | int,
    PlainValidator(lambda v: _check_quantity(v, nonnegative=False, allow_float=False)),
    PlainSerializer(lambda v: v),
    WithJsonSchema(_quantity_schema(QUANTITY_PATTERN, "A Kubernetes quantity, e.g. 8, \"500m\", \"64Gi\".")),
]
"""A Kubernetes quantity as written ("500m", "64Gi", 8); use `quantity.to_milli` for arithmetic."""

NonNegativeQuantity = Annotated[
    str | int,
    PlainValidator(lambda v: _check_quantity(v, nonnegative=True, allow_float=False)),
    PlainSerializer(lambda v: v),
    WithJsonSchema(
        _quantity_schema(NONNEGATIVE_QUANTITY_PATTERN, 'A non-negative Kubernetes quantity, e.g. 8, "64Gi".')
    ),
]

# Inside a pod template Kubernetes' own decoder accepts JSON numbers such as 0.5, so we do too.
PodQuantity = Annotated[
    str | int | float,
    PlainValidator(lambda v: _check_quantity(v, nonnegative=True, allow_float=True)),
    PlainSerializer(lambda v: v),
]


# --- time -------------------------------------------------------------------------------------------


def _as_utc(value: datetime) -> datetime:
    # metav1.Time is UTC with second precision on the wire; naive times are taken as UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, the way the API server writes metav1.Time."""
    return _as_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


Time = Annotated[
    datetime,
    AfterValidator(_as_utc),
    PlainSerializer(format_time, return_type=str, when_used="json"),
]
"""A metav1.Time: an RFC 3339 timestamp, held as an aware UTC datetime."""


# --- conditions -------------------------------------------------------------------------------------

ConditionStatus = Literal["True", "False", "Unknown"]
# metav1.Condition's own validation patterns.
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Condition(ApiModel):
    """One observation of the object's state, in the metav1.Condition shape."""

    type: Annotated[str, Field(max_length=316, pattern=CONDITION_TYPE_PATTERN)]
    """CamelCase condition type, e.g. `Admitted`."""
    status: ConditionStatus
    """`True`, `False` or `Unknown`."""
    reason: Annotated[str, Field(min_length=1, max_length=1024, pattern=CONDITION_REASON_PATTERN)]
    """Machine-readable CamelCase reason for the last transition."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Human-readable details."""
    last_transition_time: Time
    """When `status` last changed."""
    observed_generation: Annotated[int | None, Field(ge=0)] = None
    """The `.metadata.generation` this condition was computed from."""


def find_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    """The condition of the given type, if present."""
    return next((c for c in conditions if c.type == type_), None)


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    observed_generation: int | None = None,
) -> bool:
    """Upsert a condition in place; `lastTransitionTime` moves only when the status changes.

    Returns True when anything changed (so callers can skip no-op status patches).
    """
    new = Condition(type=type_, status=status, reason=reason, message=message,
                    last_transition_time=now, observed_generation=observed_generation)
    for i, old in enumerate(conditions):
        if old.type != type_:
            continue
        if old.status == status:
            new.last_transition_time = old.last_transition_time
        if new == old:
            return False
        conditions[i] = new
        return True
    conditions.append(new)
    return True


# Conditions are a map keyed by type, as in every built-in API (lets server-side apply merge them).
CONDITIONS_SCHEMA_EXTRA: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


# --- selectors, taints, tolerations -----------------------------------------------------------------


LabelValue = Annotated[str, Field(max_length=63)]
"""A label value (Kubernetes allows at most 63 characters)."""


class LabelSelectorRequirement(ApiModel):
    """One `key operator values` term of a label selector."""

    key: Annotated[str, Field(min_length=1, max_length=317)]
    """The label key."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to the values."""
    values: Annotated[list[LabelValue], Field(max_length=64)] = Field(default_factory=list)
    """Values for `In`/`NotIn`; must be empty for `Exists`/`DoesNotExist`."""


class LabelSelector(ApiModel):
    """A metav1.LabelSelector. The empty selector `{}` matches everything."""

    match_labels: Annotated[dict[str, LabelValue], Field(max_length=64)] = Field(default_factory=dict)
    """Labels that must all be present with exactly these values."""
    match_expressions: Annotated[list[LabelSelectorRequirement], Field(max_length=64)] = Field(
        default_factory=list
    )
    """Requirements that must all hold."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when `labels` satisfy every term."""
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for e in self.match_expressions:
            present = e.key in labels
            ok = {
                "In": present and labels.get(e.key) in e.values,
                "NotIn": not present or labels.get(e.key) not in e.values,
                "Exists": present,
                "DoesNotExist": not present,
            }[e.operator]
            if not ok:
                return False
        return True


TaintEffect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]


class Taint(ApiModel):
    """A core/v1 node taint."""

    key: Annotated[str, Field(min_length=1, max_length=317)]
    """The taint key."""
    value: Annotated[str, Field(max_length=63)] = ""
    """The taint value."""
    effect: TaintEffect
    """What happens to pods that do not tolerate the taint."""


class Toleration(ApiModel):
    """A core/v1 toleration."""

    key: Annotated[str, Field(max_length=317)] = ""
    """Taint key it tolerates; empty with `Exists` tolerates every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """`Equal` compares the value; `Exists` matches any value."""
    value: Annotated[str, Field(max_length=63)] = ""
    """Taint value to match when the operator is `Equal`."""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""
    """Taint effect to match; empty matches every effect."""
    toleration_seconds: int | None = None
    """For `NoExecute`: how long the pod stays bound after the taint appears."""

    def tolerates(self, taint: Taint) -> bool:
        """Kubernetes' ToleratesTaint."""
        if self.effect and self.effect != taint.effect:
            return False
        if self.key and self.key != taint.key:
            return False
        if self.operator == "Exists":
            return True
        return self.value == taint.value


# --- object metadata --------------------------------------------------------------------------------


class OwnerReference(ApiModel):
    """A metav1.OwnerReference (used to garbage-collect checkpoints with their job)."""

    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None


class ObjectMeta(ApiModel):
    """The part of metav1.ObjectMeta the controller reads; other fields are ignored."""

    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: Time | None = None
    deletion_timestamp: Time | None = None
    owner_references: list[OwnerReference] = Field(default_factory=list)
    finalizers: list[str] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _drop_empty(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # An empty list in a merge patch would wipe ownerReferences/finalizers set by others.
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v not in ({}, [])}


class PrinterColumn(ApiModel):
    """One `additionalPrinterColumns` entry of a CRD."""

    name: str
    type: Literal["integer", "number", "string", "boolean", "date"]
    json_path: str
    description: str = ""
    priority: int = 0


class KubeObject(ApiModel):
    """Base of the five kinds: apiVersion, kind, metadata, plus class-level CRD facts."""

    # CRD facts, read by crdgen (ClassVars so they are not fields).
    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SCOPE: ClassVar[Literal["Namespaced", "Cluster"]]
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ()
    CATEGORIES: ClassVar[tuple[str, ...]] = ("ckq",)
    PRINTER_COLUMNS: ClassVar[tuple[PrinterColumn, ...]] = ()
    HAS_STATUS: ClassVar[bool] = True
    # A bound on metadata.name tighter than the API server's (253), with why: checked by a CEL rule at the
    # root of the CRD (only metadata.name is visible there) and by the model.
    MAX_NAME_LENGTH: ClassVar[tuple[int, str] | None] = None

    @model_validator(mode="after")
    def _name_length(self) -> KubeObject:
        bound = type(self).MAX_NAME_LENGTH
        if bound is not None and self.metadata.name is not None and len(self.metadata.name) > bound[0]:
            raise ValueError(name_length_message(type(self).KIND, *bound))
        return self

    api_version: str = API_VERSION
    """`ckq.io/v1alpha1`."""
    kind: str
    """The kind."""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""

    @classmethod
    def singular(cls) -> str:
        return cls.KIND.lower()

    @classmethod
    def crd_name(cls) -> str:
        return f"{cls.PLURAL}.{GROUP}"

    def owner_reference(self) -> OwnerReference:
        """A controller owner reference to this object (e.g. set on a job's Checkpoints and pods, so
        they are garbage-collected with it)."""
        if not self.metadata.name or not self.metadata.uid:
            raise ValueError(f"{self.kind} needs metadata.name and metadata.uid to be an owner")
        return OwnerReference(api_version=self.api_version, kind=self.kind, name=self.metadata.name,
                              uid=self.metadata.uid, controller=True, block_owner_deletion=True)


def name_length_message(kind: str, bound: int, why: str) -> str:
    """The message of a kind's name-length rule (the CRD's CEL rule and the model say the same)."""
    return f"metadata.name of a {kind} must be at most {bound} characters: {why}"


AGE_COLUMN = PrinterColumn(name="Age", type="date", json_path=".metadata.creationTimestamp")
