"""What the controller and the node agent may do in the API: the one table the Helm chart's RBAC must equal.

Each row is one (API group, resource, verbs) a program needs, with where in the code the call is made
and why. `tests/unit/test_rbac.py` renders the chart and checks that its rules for each ServiceAccount
grant exactly these (nothing missing, nothing more), and records every request the controller sends
through a whole preemption-by-checkpoint scenario to check that each one is covered here;
`tests/integration/test_helm_chart.py` runs the controller on a real API server with nothing but the
chart's ServiceAccount token and requires zero Forbidden answers. A new API call therefore needs a row
here and a rule in `helm/ckq/templates/rbac.yaml`, or those tests fail.

The ConfigMap rows name one object in one namespace (`wire.CONFIG_NAMESPACE` / `wire.CONFIG_MAP`): a
Role there, limited by `resourceNames`, not a ClusterRole over every ConfigMap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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
