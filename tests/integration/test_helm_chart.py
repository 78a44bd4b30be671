"""The Helm chart (helm/ckq), rendered by a helm built from Go modules and tried on the real control plane.

- it lints, and its CRDs are the generated ones (crds/);
- its RBAC grants each ServiceAccount exactly the rows of `queue_controller/access.py` (the table the
  unit tier checks against every request the code makes), no wildcard, nothing more;
- the ConfigMap it templates is the one `operator/settings.py` reads, under wire.py's names;
- the controller's pod passes Pod Security `restricted` admission (a server-side dry-run in a namespace
  that enforces it), and the agent's DaemonSet runs on the nodes a value selects;
- the whole rendered chart passes a server-side dry-run apply;
- the controller, run with nothing but a token the API server issued to the chart's ServiceAccount,
  goes through a preemption by checkpoint with zero Forbidden answers; and with one needed rule
  taken out of the chart, the same check does see a refusal;
- the controller image the project builds runs as the chart runs it: read-only root, the chart's
  non-root uid, env and args (root needed: a mount namespace and chroot stand in for the container).
"""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import tarfile
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

import queue_controller
from queue_controller import access, wire
from queue_controller.devcluster.images import CONTROLLER_IMAGE_NAME, archive_refs, controller_image
from queue_controller.operator.settings import ClusterSettings
from tests.plugins.controller import ROOT, ControllerProcess, Kube, cjob, free_port, job_status
from tests.plugins.helm import CHART, helm_run, render

pytestmark = pytest.mark.integration

NS = wire.CONFIG_NAMESPACE  # the chart is installed in ckq-system, next to its ConfigMap
STORE = "/var/lib/ckq/store"
AGENT_VALUES: dict[str, Any] = {"checkpoint": {"storeHostPath": STORE, "runtimeImage": "ckq.local/runtime:0.1.0"}}
# What a controller log line says when the API server refused it (our client's errors, kopf's warnings).
# An HTTP 403 as a status, not the milliseconds of a log line's timestamp ("01:22:06,403").
REFUSALS = re.compile(r"(?<![\d,.:])403(?!\d)|Forbidden|forbidden|Not enough permissions")
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap"}


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = of_kind(objs, kind)
    return obj


def bound_grants(objs: list[dict[str, Any]], sa: str, sa_namespace: str = NS) -> set[access.Grant]:
    """Every permission the rendered (Cluster)Role(Binding)s give one ServiceAccount."""
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o.get("rules") or []
             for o in objs if o.get("kind") in ("ClusterRole", "Role")}
    out: set[access.Grant] = set()
    for b in objs:
        if b.get("kind") not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if not any(s.get("kind") == "ServiceAccount" and s["name"] == sa and s.get("namespace") == sa_namespace
                   for s in b.get("subjects") or ()):
            continue
        ref = b["roleRef"]
        scope = b["metadata"].get("namespace") if b["kind"] == "RoleBinding" else None
        rules = roles[(ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"])]
        for rule in rules:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, ()), f"wildcard {field} in {ref['name']}: {rule}"
            out |= {(scope or "*", g, r, n, v) for g in rule["apiGroups"] for r in rule["resources"]
                    for v in rule["verbs"] for n in rule.get("resourceNames") or ["*"]}
    return out


# ---- rendering ------------------------------------------------------------------------------------


def test_chart_lints(helm: Path) -> None:
    helm_run(helm, "lint", "--strict", str(CHART))
    helm_run(helm, "lint", "--strict", str(CHART), "--set-string", f"checkpoint.storeHostPath={STORE}")


def test_rbac_is_exactly_the_access_table(helm: Path) -> None:
    objs = render(helm, AGENT_VALUES)
    assert bound_grants(objs, "ckq-controller") == access.grants(access.CONTROLLER)
    assert bound_grants(objs, "ckq-agent") == access.grants(access.AGENT)
    # The table's rows, the other way round: the controller cannot create queues, flavors or jobs.
    controller = bound_grants(objs, "ckq-controller")
    for resource in ("clusterqueues", "resourceflavors", "localqueues", "checkpointablejobs"):
        assert not {v for _, g, r, _, v in controller if r == resource} & {"create", "delete", "update", "patch"}


def test_without_a_store_there_is_no_agent(helm: Path) -> None:
    objs = render(helm)
    assert not of_kind(objs, "DaemonSet")
    assert bound_grants(objs, "ckq-agent") == set()
    assert {o["metadata"]["name"] for o in of_kind(objs, "ServiceAccount")} == {"ckq-controller"}


def test_the_config_map_is_the_one_the_controller_reads(helm: Path) -> None:
    cm = one(render(helm, {**AGENT_VALUES, "checkpoint": {**AGENT_VALUES["checkpoint"], "deleteGraceSeconds": 7}}),
             "ConfigMap")
    assert (cm["metadata"]["namespace"], cm["metadata"]["name"]) == (wire.CONFIG_NAMESPACE, wire.CONFIG_MAP)
    assert set(cm["data"]) == {wire.CONFIG_RUNTIME_IMAGE, wire.CONFIG_STORE_HOST_PATH, wire.CONFIG_DELETE_GRACE,
                               wire.CONFIG_STORE_MODE}
    settings = ClusterSettings.from_config_map(cm["data"])
    assert settings == ClusterSettings("ckq.local/runtime:0.1.0", STORE, 7)
    assert settings.criu_unavailable() == ""
    # Without a store nor an image, only the grace is written: CRIU is then refused, never guessed.
    bare = one(render(helm), "ConfigMap")
    assert bare["data"] == {wire.CONFIG_DELETE_GRACE: "30", wire.CONFIG_STORE_MODE: wire.STORE_SHARED}


def test_node_local_stores_give_the_agents_the_host_network_a_port_and_a_shared_token(helm: Path) -> None:
    values = {**AGENT_VALUES, "checkpoint": {**AGENT_VALUES["checkpoint"], "storeMode": "node-local",
                                             "storeTransferPort": 9500}}
    objs = render(helm, values)
    cm = one(objs, "ConfigMap")
    assert ClusterSettings.from_config_map(cm["data"]).node_local_store
    assert cm["data"][wire.CONFIG_STORE_TRANSFER_PORT] == "9500"
    secret = one(objs, "Secret")
    assert secret["metadata"]["name"] == "ckq-agent-transfer-token" and len(secret["data"]["token"]) >= 48
    pod = one(objs, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True  # the other agents reach it at the node's InternalIP
    (c,) = pod["containers"]
    assert "--transfer-token-file=/var/run/ckq/transfer/token" in c["args"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["transfer-token"]["secret"]["secretName"] == secret["metadata"]["name"]
    shared = render(helm, AGENT_VALUES)
    assert not of_kind(shared, "Secret") and "hostNetwork" not in one(shared, "DaemonSet")["spec"]["template"]["spec"]


def test_chart_crds_are_the_generated_ones(helm: Path) -> None:
    rendered = {o["metadata"]["name"]: o for o in of_kind(render(helm, crds=True), "CustomResourceDefinition")}
    generated = {d["metadata"]["name"]: d for d in (yaml.safe_load(p.read_text())
                                                    for p in sorted((ROOT / "crds").glob("ckq.io_*.yaml")))}
    assert rendered == generated and len(generated) == 5


def test_chart_ships_the_admission_policy(helm: Path) -> None:
    """The policy over pod templates (api/admission.py) is a template of the chart (so an upgrade updates
    it), once: the copy in crds/ (for `kubectl apply -f crds/`) is left out by .helmignore."""
    from queue_controller.api import admission

    objs = render(helm, crds=True)
    assert of_kind(objs, "ValidatingAdmissionPolicy") == [admission.policy()]
    assert of_kind(objs, "ValidatingAdmissionPolicyBinding") == [admission.binding()]


def test_controller_deployment(helm: Path) -> None:
    objs = render(helm, {"controller": {"policy": "kueue", "stuckAfterSeconds": 45, "namespaces": ["a", "b"]}})
    dep = one(objs, "Deployment")
    # Two replicas, one active through the Lease; without leader election one replica, Recreate.
    assert dep["spec"]["replicas"] == 2 and "strategy" not in dep["spec"]
    single = one(render(helm, {"controller": {"leaderElection": False}}), "Deployment")
    assert single["spec"]["replicas"] == 1 and single["spec"]["strategy"] == {"type": "Recreate"}
    assert "--leader-election" not in single["spec"]["template"]["spec"]["containers"][0]["args"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == f"{CONTROLLER_IMAGE_NAME}:{queue_controller.__version__}"  # appVersion follows ckq's
    assert c["args"] == ["controller", "--policy=kueue", "--metrics-port=9090", "--liveness-port=8080",
                         "--stuck-after-seconds=45", "--leader-election", "--namespace=a", "--namespace=b"]
    assert {e["name"]: e for e in c["env"]}["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["serviceAccountName"] == "ckq-controller"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    svc = one(objs, "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert not of_kind(objs, "ServiceMonitor")
    monitored = render(helm, {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}})
    assert one(monitored, "ServiceMonitor")["metadata"]["labels"]["release"] == "prom"


def test_agent_daemonset_runs_on_the_selected_nodes_with_the_store(helm: Path) -> None:
    ds = one(render(helm, AGENT_VALUES), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {wire.NODE_KIND_LABEL: wire.REAL_NODE}
    assert pod["serviceAccountName"] == "ckq-agent"
    (c,) = pod["containers"]
    assert c["args"][:2] == ["agent", f"--store={STORE}"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    store = {v["name"]: v for v in pod["volumes"]}["store"]
    assert store["hostPath"] == {"path": STORE, "type": "Directory"}
    assert {m["name"]: m["mountPath"] for m in c["volumeMounts"]}["store"] == STORE  # uris are the cluster's
    assert c["securityContext"]["privileged"] is False and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    other = one(render(helm, {**AGENT_VALUES, "agent": {"nodeSelector": {"pool": "gpu"}}}), "DaemonSet")
    assert other["spec"]["template"]["spec"]["nodeSelector"] == {wire.NODE_KIND_LABEL: wire.REAL_NODE, "pool": "gpu"}


# ---- on the cluster -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def system_namespace(kube: Kube) -> str:
    """ckq-system, created when missing and kept (a namespace being deleted refuses new objects)."""
    try:
        kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    except ApiException as e:
        if e.status != 409:
            raise
    return NS


def test_controller_pod_passes_pod_security_restricted(helm: Path, kube: Kube) -> None:
    ns = f"psa-{uuid.uuid4().hex[:6]}"
    labels = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns, labels=labels)))
    try:
        template = one(render(helm), "Deployment")["spec"]["template"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ckq-controller", "namespace": ns},
               "spec": {**template["spec"], "serviceAccountName": "default"}}
        kube.core.create_namespaced_pod(ns, pod, dry_run="All")  # admitted: restricted is met
        # The same check refuses a pod that drops one of the settings (so the dry-run above proves something).
        loose = copy.deepcopy(pod)
        del loose["spec"]["securityContext"]["seccompProfile"]
        loose["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
        with pytest.raises(ApiException) as refused:
            kube.core.create_namespaced_pod(ns, loose, dry_run="All")
        assert refused.value.status == 403 and "violates PodSecurity" in str(refused.value.body)
    finally:
        kube.core.delete_namespace(ns)


def test_rendered_chart_passes_a_server_side_dry_run(helm: Path, kube: Kube, kube_cluster: Any,
                                                     system_namespace: str, tmp_path: Path) -> None:
    objs = [o for o in render(helm, AGENT_VALUES, crds=True) if o["kind"] != "ServiceMonitor"]
    manifest = tmp_path / "ckq.yaml"
    manifest.write_text(yaml.safe_dump_all(objs))
    out = kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f",
                               str(manifest)).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == len(objs) and all("(server dry run)" in line for line in lines), out
    # Nothing was created.
    assert kube_cluster.kubectl("get", "deployment", "-n", NS, "ckq-controller", check=False).returncode != 0


# ---- the controller under the chart's ServiceAccount ------------------------------------------------


def install_rbac(helm: Path, kube_cluster: Any, tmp_path: Path, release: str,
                 drop: tuple[str, str] | None = None) -> Path:
    """Apply (for real) the chart's ServiceAccount, roles, bindings and ConfigMap under `release`, with
    the rule for (apiGroup, resource) `drop` taken out of the controller's ClusterRole; the manifest."""
    objs = [o for o in render(helm, release=release) if o["kind"] in RBAC_KINDS]
    if drop is not None:
        role = next(o for o in objs if o["kind"] == "ClusterRole" and o["metadata"]["name"] == f"{release}-controller")
        before = len(role["rules"])
        role["rules"] = [r for r in role["rules"] if not (drop[0] in r["apiGroups"] and drop[1] in r["resources"])]
        assert len(role["rules"]) == before - 1, f"no rule for {drop} in the chart"
    manifest = tmp_path / f"{release}-rbac.yaml"
    manifest.write_text(yaml.safe_dump_all(objs))
    kube_cluster.kubectl("apply", "-f", str(manifest))
    return manifest


def service_account_kubeconfig(kube: Kube, admin_kubeconfig: str, sa: str, path: Path) -> Path:
    """A kubeconfig whose only credential is a token the API server issued to `sa` (TokenRequest API)."""
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    token = kube.core.create_namespaced_service_account_token(sa, NS, request).status.token
    admin = yaml.safe_load(Path(admin_kubeconfig).read_text())
    cluster = admin["clusters"][0]["cluster"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": sa,
        "clusters": [{"name": "dev", "cluster": cluster}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": "dev", "user": sa}}],
    }))
    return path


def refusals(log: str) -> list[str]:
    return [line for line in log.splitlines() if REFUSALS.search(line)]


def start_as(sa_kubeconfig: Path, log: Path, monkeypatch: pytest.MonkeyPatch, policy: str = "iass"
             ) -> ControllerProcess:
    # KUBECONFIG too, so nothing in the process could fall back to the admin's file.
    monkeypatch.setenv("KUBECONFIG", str(sa_kubeconfig))
    # As the chart runs it: one of its replicas, electing a leader over the Lease (RBAC included).
    ctl = ControllerProcess(str(sa_kubeconfig), policy, log, extra=["--leader-election"])
    ctl.start()
    return ctl


def test_controller_under_the_chart_service_account_preempts_with_no_forbidden(
        helm: Path, kube: Kube, kube_cluster: Any, namespace: str, queues: Any, system_namespace: str,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = f"h{uuid.uuid4().hex[:6]}"
    manifest = install_rbac(helm, kube_cluster, tmp_path, release)
    ctl = None
    try:
        sa_config = service_account_kubeconfig(kube, kube_cluster.kubeconfig, f"{release}-controller",
                                               tmp_path / "sa.kubeconfig")
        as_sa = Kube(str(sa_config))
        # It is the ServiceAccount, not the admin: it reads queues but may not make one.
        as_sa.custom.list_cluster_custom_object("ckq.io", "v1alpha1", "clusterqueues")
        with pytest.raises(ApiException) as denied:
            as_sa.create("clusterqueues", {"apiVersion": "ckq.io/v1alpha1", "kind": "ClusterQueue",
                                           "metadata": {"name": f"{release}-nope"}, "spec": {}})
        assert denied.value.status == 403

        q = queues(gpus=8, preemption={"withinClusterQueue": "LowerPriority"})
        kube.create("checkpointablejobs", cjob("train", q, gpus=8, runtime_s=20), namespace)
        ctl = start_as(sa_config, tmp_path / "controller.log", monkeypatch)
        kube.wait_phase(namespace, "train", "Running")
        kube.create("checkpointablejobs", cjob("urgent", q, gpus=8, priority=100, runtime_s=3), namespace)
        st = kube.wait_phase(namespace, "train", "Suspended", timeout=60)["status"]
        assert st["preemptions"] == 1 and st["lastCheckpoint"]["name"]
        kube.wait_phase(namespace, "urgent", "Succeeded", timeout=60)
        done = kube.wait_phase(namespace, "train", "Succeeded", timeout=90)["status"]
        assert done["attempt"] == 2 and done.get("lostRunTimeSeconds", 0) == 0  # restored, not restarted
        # Writes that fail quietly (Events are best effort) did land: Events, queue status.
        reasons = kube.wait("the job's Events", lambda: {e.reason for e in kube.core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=train").items} >= {"Preempted", "Suspended", "Succeeded"})
        assert reasons
        assert (kube.get("clusterqueues", f"{namespace}-main").get("status") or {}).get("admittedWorkloads") is not None
        ckpt = kube.get("checkpoints", st["lastCheckpoint"]["name"], namespace)
        assert ckpt["status"]["phase"] == "Completed"
        assert refusals(ctl.log_path.read_text(errors="replace")) == []
    finally:
        if ctl is not None:
            ctl.stop()
        kube_cluster.kubectl("delete", "--ignore-not-found", "-f", str(manifest))


def test_a_rule_taken_out_of_the_chart_is_refused(helm: Path, kube: Kube, kube_cluster: Any, system_namespace: str,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: without the CRD rule (the hole the old chart had), kopf is refused."""
    release = f"h{uuid.uuid4().hex[:6]}"
    manifest = install_rbac(helm, kube_cluster, tmp_path, release, drop=("apiextensions.k8s.io",
                                                                        "customresourcedefinitions"))
    ctl = None
    try:
        sa_config = service_account_kubeconfig(kube, kube_cluster.kubeconfig, f"{release}-controller",
                                               tmp_path / "sa.kubeconfig")
        ctl = start_as(sa_config, tmp_path / "controller.log", monkeypatch)
        seen = kube.wait("a refusal in the controller's log",
                         lambda: refusals(ctl.log_path.read_text(errors="replace")), timeout=30)
        assert any("resources" in line or "customresourcedefinitions" in line for line in seen), seen
    finally:
        if ctl is not None:
            ctl.stop()
        kube_cluster.kubectl("delete", "--ignore-not-found", "-f", str(manifest))


def test_agent_identity_can_do_what_the_agent_does(helm: Path, kube: Kube, kube_cluster: Any, system_namespace: str,
                                                   namespace: str, tmp_path: Path) -> None:
    """The agent's ServiceAccount, through the agent's own client (`agent.kube.KubeApi`), can make every
    call the agent makes (its preflight and each AgentKube method), and no write beyond them."""
    from queue_controller.agent.kube import KubeApi
    from queue_controller.operator.kube import load_configuration

    release = f"h{uuid.uuid4().hex[:6]}"
    objs = [o for o in render(helm, AGENT_VALUES, release=release) if o["kind"] in RBAC_KINDS]
    manifest = tmp_path / "agent-rbac.yaml"
    manifest.write_text(yaml.safe_dump_all(objs))
    kube_cluster.kubectl("apply", "-f", str(manifest))
    try:
        sa_config = service_account_kubeconfig(kube, kube_cluster.kubeconfig, f"{release}-agent",
                                               tmp_path / "agent.kubeconfig")
        agent = KubeApi(load_configuration(str(sa_config)))
        node = kube.core.list_node().items[0].metadata.name
        kube.create("checkpoints", {"apiVersion": "ckq.io/v1alpha1", "kind": "Checkpoint",
                                    "metadata": {"name": "c1"}, "spec": {"jobName": "j", "reason": "User"}}, namespace)
        try:
            ckpt = agent.get_checkpoint(namespace, "c1")
            ckpt["status"] = {"phase": "Running"}
            agent.replace_checkpoint_status(namespace, "c1", ckpt)
            assert kube.get("checkpoints", "c1", namespace)["status"]["phase"] == "Running"
            _, rv = agent.list_checkpoints()
            list(agent.watch_checkpoints(rv, 1))
            _, rv = agent.list_node_pods(node)
            list(agent.watch_node_pods(node, rv, 1))
            agent.list_job_pods("default", "none")
            agent.get_node(node)
            agent.get_config_map(wire.CONFIG_NAMESPACE, wire.CONFIG_MAP)
            agent.create_event(namespace, {"metadata": {"generateName": "p."}, "reason": "Staged", "message": "m",
                                           "involvedObject": {"kind": "Pod", "name": "p", "namespace": namespace}})
            with pytest.raises(RuntimeError, match="403"):  # a write it never makes
                agent._json(agent.core.patch_node, node, {"metadata": {"labels": {"x": "y"}}})
        finally:
            agent.close()
    finally:
        kube_cluster.kubectl("delete", "--ignore-not-found", "-f", str(manifest))


# ---- the image under the chart's pod settings ------------------------------------------------------

RUN_AS = """\
#!/bin/bash
# The image's root read-only, a tmpfs at /tmp (the chart's emptyDir), the chart's uid, env and args:
# the controller's container as the chart's Deployment has the kubelet start it.
set -euo pipefail
R="$1"; shift
mount --bind "$R" "$R"
mount -o remount,bind,ro "$R"
mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o size=64m,mode=1777 tmpfs "$R/tmp"
mkdir "$R/tmp/cfg"
cp "$KUBECONFIG_FILE" "$R/tmp/cfg/kubeconfig"
chmod 0444 "$R/tmp/cfg/kubeconfig"
exec chroot --userspec="$RUN_UID:$RUN_GID" "$R" env -i "$@"
"""


def test_controller_image_runs_as_the_chart_runs_it(helm: Path, kube: Kube, kube_cluster: Any, namespace: str,
                                                    queues: Any, system_namespace: str, tmp_path: Path) -> None:
    """The image the project builds (ckq.local/controller) starts under the chart's securityContext —
    read-only root, the non-root uid, no /etc/passwd entry for it — with the chart's env and args and
    the chart's ServiceAccount token, reports ready, and admits a job without a refusal."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (mount namespaces and chroot), as the real-node tier does")
    image = controller_image()
    # `ckq dev image import` loads the archive under the name its index carries: the chart's default image.
    chart_image = one(render(helm), "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert archive_refs(image.archive) == [image.ref] == [chart_image]
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    with tarfile.open(image.archive) as oci:
        def blob(digest: str) -> Any:
            return oci.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
        index = yaml.safe_load(oci.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = yaml.safe_load(blob(index["manifests"][0]["digest"]))
        for layer in manifest["layers"]:
            with tarfile.open(fileobj=blob(layer["digest"])) as t:
                t.extractall(rootfs, filter="tar")

    release = f"h{uuid.uuid4().hex[:6]}"
    manifest_path = install_rbac(helm, kube_cluster, tmp_path, release)
    proc = None
    log = tmp_path / "image-controller.log"
    try:
        sa_config = service_account_kubeconfig(kube, kube_cluster.kubeconfig, f"{release}-controller",
                                               tmp_path / "sa.kubeconfig")
        pod = one(render(helm, release=release), "Deployment")["spec"]["template"]
        spec, (container,) = pod["spec"], pod["spec"]["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        env |= {e["name"]: f"{release}-controller-0" for e in container["env"] if "valueFrom" in e}  # the pod's name
        probes, metrics = free_port(), free_port()
        args = [a for a in container["args"] if not a.startswith(("--liveness-port", "--metrics-port"))]
        argv = [*(f"{k}={v}" for k, v in env.items()), "PATH=/usr/sbin:/usr/bin", "python3", "-m",
                "queue_controller.cli", *args, "--kubeconfig=/tmp/cfg/kubeconfig", f"--liveness-port={probes}",
                f"--metrics-port={metrics}"]
        script = tmp_path / "run-as.sh"
        script.write_text(RUN_AS)
        uid = str(spec["securityContext"]["runAsUser"])
        gid = str(spec["securityContext"]["runAsGroup"])
        assert uid != "0" and spec["securityContext"]["runAsNonRoot"] is True
        with log.open("wb") as out:
            proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "bash", str(script), str(rootfs),
                                     *argv], stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={"KUBECONFIG_FILE": str(sa_config), "RUN_UID": uid, "RUN_GID": gid,
                                         "PATH": os.environ["PATH"]})

        def probe(path: str) -> int:
            assert proc is not None and proc.poll() is None, f"the controller exited:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{probes}{path}", timeout=2) as r:
                    return int(r.status)
            except OSError:
                return 0

        kube.wait("the image's controller ready", lambda: probe("/readyz") == 200, timeout=60)
        assert probe("/healthz") == 200
        q = queues(gpus=8)
        kube.create("checkpointablejobs", cjob("imaged", q, gpus=8, runtime_s=600), namespace)
        kube.wait_phase(namespace, "imaged", "Running")
        text = log.read_text(errors="replace")
        assert refusals(text) == [] and "Traceback" not in text, text
        assert job_status(kube, namespace, "imaged")["admission"]["clusterQueue"] == f"{namespace}-main"
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        kube_cluster.kubectl("delete", "--ignore-not-found", "-f", str(manifest_path))
