"""The users' ClusterRoles (queue_controller/access.py USER_ROLES, the chart's templates/user-roles.yaml)
on a real API server: aggregated into the built-in `view`, `edit` and `admin` by the cluster's own
aggregation controller, a ServiceAccount bound to one of them in namespace A can do exactly what the
table says there — with real requests made with a token the API server issued to it:

- `edit` in A: creates a CheckpointableJob and a Checkpoint in A; cannot in namespace B; cannot create
  or change a ClusterQueue; reads LocalQueues but cannot create one; cannot write any status (a
  Checkpoint's status says which image a job restores from);
- `admin` in A: also creates a LocalQueue in A, still no ClusterQueue;
- `view` in A: reads jobs, creates nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from queue_controller import access
from tests.plugins.controller import Kube, cjob, cluster_queue, local_queue
from tests.plugins.helm import render

pytestmark = pytest.mark.integration


def user_roles(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    suffixes = tuple(f"-{r.suffix}" for r in access.USER_ROLES)
    return [o for o in objs if o["kind"] == "ClusterRole" and o["metadata"]["name"].endswith(suffixes)]


def test_chart_user_roles_are_the_table(helm: Path) -> None:
    rendered = user_roles(render(helm, release="ckq"))
    for role in rendered:  # the chart's own labels aside
        role["metadata"]["labels"] = {k: v for k, v in role["metadata"]["labels"].items()
                                      if k.startswith("rbac.authorization.k8s.io/")}
    assert rendered == access.user_cluster_roles("ckq")
    assert [r["metadata"]["name"] for r in rendered] == ["ckq-batch-viewer", "ckq-batch-user", "ckq-batch-admin"]
    assert user_roles(render(helm, {"userRoles": {"enabled": False}})) == []


def as_service_account(kube: Kube, namespace: str, sa: str, path: Path) -> Kube:
    """A client whose only credential is a token the API server issued to `namespace/sa`."""
    kube.core.create_namespaced_service_account(namespace, {"metadata": {"name": sa}})
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    token = kube.core.create_namespaced_service_account_token(sa, namespace, request).status.token
    admin = yaml.safe_load(Path(kube.kubeconfig).read_text())
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": sa,
        "clusters": [{"name": "dev", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": "dev", "user": sa}}],
    }))
    return Kube(str(path))


def bind(kube: Kube, namespace: str, sa: str, cluster_role: str) -> None:
    client.RbacAuthorizationV1Api(kube.api).create_namespaced_role_binding(namespace, {
        "metadata": {"name": f"{sa}-{cluster_role}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]})


def refused(call: Callable[[], Any]) -> bool:
    try:
        call()
    except ApiException as e:
        assert e.status == 403, f"expected Forbidden, got {e.status}: {e.body}"
        return True
    return False


@pytest.fixture
def other_namespace(kube: Kube) -> Iterator[str]:
    name = f"b-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    kube.core.delete_namespace(name)


def test_built_in_roles_grant_exactly_the_user_roles(helm: Path, kube: Kube, kube_cluster: Any, namespace: str,
                                                     other_namespace: str, tmp_path: Path) -> None:
    release = f"u{uuid.uuid4().hex[:6]}"
    manifest = tmp_path / "user-roles.yaml"
    manifest.write_text(yaml.safe_dump_all(user_roles(render(helm, release=release))))
    cq = f"{namespace}-cq"
    kube_cluster.kubectl("apply", "-f", str(manifest))
    try:
        kube.create("clusterqueues", cluster_queue(cq, gpus=8))
        kube.create("localqueues", local_queue("main", namespace, cq), namespace)
        rbac = client.RbacAuthorizationV1Api(kube.api)

        def aggregated() -> bool:  # the aggregation controller (kube-controller-manager) has merged our rules
            rules = {"edit": rbac.read_cluster_role("edit").rules or [],
                     "admin": rbac.read_cluster_role("admin").rules or []}
            return (any("checkpointablejobs" in (r.resources or ()) and "create" in r.verbs for r in rules["edit"])
                    and any("localqueues" in (r.resources or ()) and "create" in r.verbs for r in rules["admin"]))

        kube.wait("the user roles aggregated into edit and admin", aggregated, timeout=60)

        editor = as_service_account(kube, namespace, "alice", tmp_path / "alice")
        bind(kube, namespace, "alice", "edit")
        admin = as_service_account(kube, namespace, "bob", tmp_path / "bob")
        bind(kube, namespace, "bob", "admin")
        viewer = as_service_account(kube, namespace, "carol", tmp_path / "carol")
        bind(kube, namespace, "carol", "view")
        # A RoleBinding takes effect at once (RBAC reads from the API server's informer): wait for it.
        kube.wait("alice's binding in effect", lambda: not refused(lambda: editor.list("checkpointablejobs",
                                                                                       namespace)))

        # edit in A: jobs and Checkpoints in A, nothing in B, no queues, no status.
        editor.create("checkpointablejobs", cjob("mine", "main", gpus=1), namespace)
        editor.patch("checkpointablejobs", "mine", {"spec": {"suspend": True}}, namespace)
        editor.create("checkpoints", {"apiVersion": "ckq.io/v1alpha1", "kind": "Checkpoint",
                                      "metadata": {"name": "now"}, "spec": {"jobName": "mine", "reason": "User"}},
                      namespace)
        assert [q["metadata"]["name"] for q in editor.list("localqueues", namespace)] == ["main"]
        assert refused(lambda: editor.create("checkpointablejobs", cjob("theirs", "main", gpus=1), other_namespace))
        assert refused(lambda: editor.list("checkpointablejobs", other_namespace))
        assert refused(lambda: editor.create("clusterqueues", cluster_queue(f"{namespace}-mine", gpus=8)))
        assert refused(lambda: editor.patch("clusterqueues", cq, {"spec": {"cohort": "stolen"}}))
        assert refused(lambda: editor.create("localqueues", local_queue("own", namespace, cq), namespace))
        assert refused(lambda: editor.custom.patch_namespaced_custom_object_status(
            "ckq.io", "v1alpha1", namespace, "checkpoints", "now", {"status": {"phase": "Completed"}}))
        assert refused(lambda: editor.custom.patch_namespaced_custom_object_status(
            "ckq.io", "v1alpha1", namespace, "checkpointablejobs", "mine", {"status": {"phase": "Running"}}))

        # admin in A: LocalQueues too, still no ClusterQueue.
        admin.create("localqueues", local_queue("own", namespace, cq), namespace)
        assert refused(lambda: admin.create("clusterqueues", cluster_queue(f"{namespace}-bob", gpus=8)))
        assert refused(lambda: admin.create("localqueues", local_queue("own", other_namespace, cq), other_namespace))

        # view in A: reads, writes nothing.
        assert [j["metadata"]["name"] for j in viewer.list("checkpointablejobs", namespace)] == ["mine"]
        assert viewer.get("checkpoints", "now", namespace)["spec"]["jobName"] == "mine"
        assert refused(lambda: viewer.create("checkpointablejobs", cjob("peek", "main", gpus=1), namespace))
        assert refused(lambda: viewer.delete("checkpointablejobs", "mine", namespace))
    finally:
        kube.delete("clusterqueues", cq)
        kube_cluster.kubectl("delete", "--ignore-not-found", "-f", str(manifest))
