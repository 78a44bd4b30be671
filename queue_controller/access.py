"""What the controller and the node agent may do in the API: the one table the Helm chart's RBAC must equal.

Each row is one (API group, resource, verbs) a program needs, with where in the code the call is made
and why. `tests/unit/test_rbac.py` renders the chart and checks that its rules for each ServiceAccount
grant exactly these (nothing missing, nothing more), and records every request the controller sends
through a whole preemption-by-checkpoint scenario to check that each one is covered here;
`tests/integration/test_helm_chart.py` runs the controller on a real API server with nothing but the
chart's ServiceAccount token and requires zero Forbidden answers. A new API call therefore needs a row
here and a rule in `helm/ckq/templates/rbac.yaml`, or those tests fail.

`USER_ROLES` is the same kind of table for people: the ClusterRoles a cluster's users get through the
built-in `view`, `edit` and `admin` roles (aggregation labels), as Kueue ships batch-user and
batch-admin. `render_user_roles()` writes them as the chart's `templates/user-roles.yaml` (`ckq crds`
regenerates it; tests/unit/test_rbac.py checks it is current) and `tests/integration/test_user_roles.py`
proves on a real API server what a ServiceAccount bound to each built-in role may and may not do.

The ConfigMap rows name one object in one namespace (`wire.CONFIG_NAMESPACE` / `wire.CONFIG_MAP`): a
Role there, limited by `resourceNames`, not a ClusterRole over every ConfigMap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from queue_controller.api import Checkpoint, CheckpointableJob, ClusterQueue, LocalQueue, ResourceFlavor
from queue_controller.api.common import GROUP
from queue_controller.operator.leader import LEASE_NAME
from queue_controller.wire import CONFIG_MAP, CONFIG_NAMESPACE

CORE = ""


@dataclass(frozen=True, slots=True)
class Access:
    group: str  # "" for core/v1
    resource: str  # plural, or plural/subresource
    verbs: tuple[str, ...]
    where: str  # the code that makes the call
    why: str
    namespace: str | None = None  # None: cluster-wide (ClusterRole); else a Role in that namespace
    resource_name: str | None = None  # only this object

    def grants(self) -> set[Grant]:
        return {(self.namespace or "*", self.group, self.resource, self.resource_name or "*", v) for v in self.verbs}


# (namespace or "*", group, resource, resourceName or "*", verb): one permission, as the tests compare them.
Grant = tuple[str, str, str, str, str]

_WATCH = ("list", "watch")  # kopf lists then watches each kind; main.prime lists once before the first cycle

CONTROLLER: tuple[Access, ...] = (
    Access(GROUP, CheckpointableJob.PLURAL, _WATCH, "operator/handlers.py WATCHED, operator/main.py prime",
           "the jobs to queue, admit and checkpoint"),
    Access(GROUP, f"{CheckpointableJob.PLURAL}/status", ("patch",), "operator/status.py StatusWriter.job",
           "phase, admission, counters, conditions (merge patch of the status subresource)"),
    Access(GROUP, Checkpoint.PLURAL, (*_WATCH, "create", "delete"),
           "operator/checkpoints.py (create; prune beyond retain)", "one Checkpoint per checkpoint taken"),
    Access(GROUP, f"{Checkpoint.PLURAL}/status", ("patch",),
           "operator/status.py StatusWriter.checkpoint, checkpoint/criu.py cancel",
           "Completed/Failed with artifacts; cancelling one the agents work on"),
    Access(GROUP, ClusterQueue.PLURAL, _WATCH, "operator/handlers.py WATCHED, operator/main.py preflight",
           "quotas, cohorts, preemption settings (read only: admins own queues)"),
    Access(GROUP, f"{ClusterQueue.PLURAL}/status", ("patch",), "operator/status.py StatusWriter.queue",
           "usage, pending and admitted counts"),
    Access(GROUP, LocalQueue.PLURAL, _WATCH, "operator/handlers.py WATCHED", "which ClusterQueue a job's queue feeds"),
    Access(GROUP, f"{LocalQueue.PLURAL}/status", ("patch",), "operator/status.py StatusWriter.queue", "counts"),
    Access(GROUP, ResourceFlavor.PLURAL, _WATCH, "operator/handlers.py WATCHED",
           "node labels and tolerations of each flavor (read only)"),
    Access("scheduling.k8s.io", "priorityclasses", _WATCH, "operator/handlers.py WATCHED",
           "spec.priorityClassName gives a job its priority"),
    Access(CORE, "namespaces", _WATCH, "operator/handlers.py WATCHED",
           "ClusterQueue namespaceSelector matches namespace labels"),
    Access(CORE, "nodes", _WATCH, "operator/handlers.py WATCHED", "capacity, labels, readiness for placement"),
    Access(CORE, "pods", (*_WATCH, "create", "delete"), "operator/handlers.py WATCHED, operator/runs.py",
           "every pod takes node capacity; the controller creates and deletes its jobs' pods"),
    Access(CORE, "events", ("create",), "operator/status.py StatusWriter._post_event",
           "one Event per job transition (kopf's own event posting is off)"),
    Access("apiextensions.k8s.io", "customresourcedefinitions", _WATCH, "kopf (reactor/observation.py)",
           "kopf watches CRDs to notice the watched kinds appear, change or go"),
    Access(CORE, "configmaps", ("get",), "operator/settings.py SettingsSource.refresh",
           "the cluster's checkpoint settings, read every 30 s", CONFIG_NAMESPACE, CONFIG_MAP),
    # Leader election between replicas (`--leader-election`): read and renew one Lease; create it the
    # first time (create cannot be limited to a name, so it is a row of its own).
    Access("coordination.k8s.io", "leases", ("get", "update"), "operator/leader.py LeaderElection",
           "which replica decides: renew or take over the Lease", CONFIG_NAMESPACE, LEASE_NAME),
    Access("coordination.k8s.io", "leases", ("create",), "operator/leader.py LeaderElection",
           "the Lease, the first time a replica runs", CONFIG_NAMESPACE),
)

AGENT: tuple[Access, ...] = (
    Access(GROUP, Checkpoint.PLURAL, ("get", "list", "watch"),
           "agent/kube.py list_checkpoints, watch_checkpoints, get_checkpoint",
           "the Checkpoints to dump for; a fresh read before each status write"),
    Access(GROUP, f"{Checkpoint.PLURAL}/status", ("update",), "agent/kube.py replace_checkpoint_status",
           "Running, artifacts, Failed: a read-modify-write at the resourceVersion read (409: again)"),
    Access(CORE, "pods", _WATCH, "agent/kube.py list_node_pods, watch_node_pods, list_job_pods",
           "this node's managed pods (field selector spec.nodeName), and a job's current attempt"),
    Access(CORE, "nodes", ("get",), "agent/kube.py get_node",
           "restore constraints from the node's labels; a source node's InternalIP (node-local stores)"),
    Access(CORE, "configmaps", ("get",), "agent/kube.py get_config_map", "storeHostPath", CONFIG_NAMESPACE,
           CONFIG_MAP),
    Access(CORE, "events", ("create",), "agent/kube.py create_event (agent/stage.py)",
           "Staged / StagingFailed on a restored pod whose images another node's agent sent"),
)

# The agent's API calls (`agent.kube.KubeApi` methods) and the rows that cover each.
AGENT_CALLS: dict[str, tuple[str, ...]] = {
    "list_checkpoints": ("list",), "watch_checkpoints": ("watch",), "get_checkpoint": ("get",),
    "replace_checkpoint_status": ("update",), "list_node_pods": ("list",), "watch_node_pods": ("watch",),
    "list_job_pods": ("list",), "get_node": ("get",), "get_config_map": ("get",),
    "create_event": ("create",),
}


def grants(rows: Iterable[Access]) -> set[Grant]:
    out: set[Grant] = set()
    for row in rows:
        out |= row.grants()
    return out


def allowed(rows: Iterable[Access], namespace: str | None, group: str, resource: str, name: str | None,
            verb: str) -> bool:
    """Whether one request (namespace None: cluster-scoped or all namespaces) is granted by `rows`."""
    for row in rows:
        if (row.group, row.resource) != (group, resource) or verb not in row.verbs:
            continue
        if row.namespace is not None and row.namespace != namespace:
            continue
        if row.resource_name is not None and row.resource_name != name:
            continue
        return True
    return False


# ---- the users' roles -------------------------------------------------------------------------------

_READ = ("get", "list", "watch")
_EDIT = ("create", "update", "patch", "delete", "deletecollection")
AGGREGATE_LABEL = "rbac.authorization.k8s.io/aggregate-to-{}"


@dataclass(frozen=True, slots=True)
class UserRole:
    """A ClusterRole for people, aggregated into a built-in role (`view`, `edit` or `admin`): bound in a
    namespace (a RoleBinding to the built-in role), it grants these rules in that namespace only."""

    suffix: str  # the ClusterRole is `<release>-<suffix>`
    aggregate_to: str
    rows: tuple[Access, ...]
    why: str


_VIEW_ROWS = (
    Access(GROUP, CheckpointableJob.PLURAL, _READ, "ckq status / describe / logs", "see the namespace's jobs"),
    Access(GROUP, f"{CheckpointableJob.PLURAL}/status", ("get",), "kubectl get --subresource=status",
           "phase, admission and counters; written only by the controller"),
    Access(GROUP, Checkpoint.PLURAL, _READ, "ckq describe, kubectl get ckpt", "the namespace's checkpoints"),
    Access(GROUP, f"{Checkpoint.PLURAL}/status", ("get",), "kubectl get --subresource=status",
           "artifacts and phase; written only by the controller and the agents"),
    Access(GROUP, LocalQueue.PLURAL, _READ, "ckq queues, kubectl get lq", "which queues a job may name"),
    Access(GROUP, f"{LocalQueue.PLURAL}/status", ("get",), "kubectl get --subresource=status",
           "pending and admitted counts"),
)

# Each role holds all it grants (so it can be bound on its own too), though `edit` also gets `view`'s.
_USER_ROWS = (
    *_VIEW_ROWS,
    Access(GROUP, CheckpointableJob.PLURAL, _EDIT, "kubectl apply, ckq suspend / resume (patch)",
           "submit, change, suspend and delete the namespace's jobs"),
    Access(GROUP, Checkpoint.PLURAL, ("create", "delete", "deletecollection"), "ckq checkpoint",
           "ask for a checkpoint now; delete old ones (spec is immutable: no update)"),
)

USER_ROLES: tuple[UserRole, ...] = (
    UserRole("batch-viewer", "view", _VIEW_ROWS, "read the namespace's jobs, Checkpoints and LocalQueues"),
    UserRole("batch-user", "edit", _USER_ROWS, "submit and manage jobs and checkpoints, read LocalQueues; never "
             "write any status (the controller's and the agents' word) nor any queue"),
    UserRole("batch-admin", "admin", (
        *_USER_ROWS,
        Access(GROUP, LocalQueue.PLURAL, _EDIT, "kubectl apply", "point the namespace at a ClusterQueue"),
    ), "all of batch-user, and the namespace's LocalQueues (ClusterQueues and flavors stay the cluster "
       "admins')"),
)


def user_role_grants(role: str) -> set[tuple[str, str, str]]:
    """(group, resource, verb) a built-in role (`view`, `edit`, `admin`) gets from `USER_ROLES`, with the
    built-in roles' own nesting: edit includes view, admin includes edit."""
    nested = {"view": ("view",), "edit": ("view", "edit"), "admin": ("view", "edit", "admin")}[role]
    return {(row.group, row.resource, verb) for r in USER_ROLES if r.aggregate_to in nested
            for row in r.rows for verb in row.verbs}


def user_cluster_roles(release: str) -> list[dict[str, Any]]:
    """The ClusterRoles of `USER_ROLES` for a release, as the chart renders them (chart labels aside)."""
    out = []
    for role in USER_ROLES:
        rules: list[dict[str, Any]] = []
        for row in role.rows:
            rule = {"apiGroups": [row.group], "resources": [row.resource], "verbs": list(row.verbs)}
            same = next((r for r in rules if r["apiGroups"] == rule["apiGroups"] and r["verbs"] == rule["verbs"]),
                        None)
            if same is not None:
                if row.resource not in same["resources"]:
                    same["resources"].append(row.resource)
            else:
                rules.append(rule)
        out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                    "metadata": {"name": f"{release}-{role.suffix}",
                                 "labels": {AGGREGATE_LABEL.format(role.aggregate_to): "true"}},
                    "rules": rules})
    return out


USER_ROLES_TEMPLATE = "user-roles.yaml"


def render_user_roles() -> str:
    """The chart's templates/user-roles.yaml: `user_cluster_roles`, named after the release, with the
    chart's labels."""
    parts = ["{{- /* Generated by `ckq crds` from queue_controller/access.py USER_ROLES. Do not edit. */}}\n"
             "{{- if .Values.userRoles.enabled }}\n"]
    for role, body in zip(USER_ROLES, user_cluster_roles("RELEASE"), strict=True):
        rules = yaml.safe_dump({"rules": body["rules"]}, sort_keys=False, default_flow_style=None, width=120)
        parts.append(
            f"---\n# {role.why[0].upper()}{role.why[1:]}; aggregated into `{role.aggregate_to}`.\n"
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n"
            f"  name: {{{{ .Release.Name }}}}-{role.suffix}\n  labels:\n"
            f"    {AGGREGATE_LABEL.format(role.aggregate_to)}: \"true\"\n"
            "    {{- include \"ckq.labels\" . | nindent 4 }}\n" + rules)
    parts.append("{{- end }}\n")
    return "".join(parts)
