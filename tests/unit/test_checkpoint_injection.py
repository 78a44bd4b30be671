"""Runtime injection: the pod spec a CRIU-checkpointed pod runs, field by field, and the templates it
refuses (with what it says)."""

from __future__ import annotations

import copy
import importlib
import re
from typing import Any

import pytest

from queue_controller.checkpoint import injection
from queue_controller.checkpoint.injection import (
    CONTAINER_SECURITY_CONTEXT,
    EXIT_CHECKPOINTED,
    SIGNAL_SECURITY_CONTEXT,
    InjectionError,
    SignalMode,
    inject,
    problems,
    secured,
    signal_name,
    wrapped_command,
)
from queue_controller.runtime.supervisor import EXIT_CHECKPOINTED as RUNTIME_EXIT_CHECKPOINTED

pytestmark = pytest.mark.unit
CKQ_RUN = ["/ckq-runtime/bin/ckq-run", "--dir", "/ckq/checkpoints"]  # how a wrapped command starts
EXIT_NOTE = ["--exit-note", "/dev/termination-log"]  # ckq-run's last options (runtime/exits.py)

STORE = "/var/lib/ckq/store"


def template(**container: Any) -> dict[str, Any]:
    return {"containers": [{"name": "train", "image": "python:3", "command": ["python", "train.py"],
                            "args": ["--epochs", "3"], "resources": {"requests": {"cpu": "1"}}, **container}]}


def injected(spec: dict[str, Any], restore: dict[str, str] | None = None) -> dict[str, Any]:
    return inject(spec, image="ckq.local/runtime:0.1.0", store_root=STORE, namespace="team", job="train",
                  pod_set="worker", index=1, restore=restore)


def test_a_fresh_pod_gets_the_runtime_its_checkpoint_directory_the_wrapped_command_and_the_privileges() -> None:
    spec = template(volumeMounts=[{"name": "data", "mountPath": "/data"}], env=[{"name": "A", "value": "1"}])
    spec["volumes"] = [{"name": "data", "emptyDir": {}}]
    spec["restartPolicy"] = "Never"
    before = copy.deepcopy(spec)
    out = injected(spec)
    assert spec == before  # the template is not modified
    assert out == {
        "restartPolicy": "Never",
        "initContainers": [{
            "name": "ckq-runtime", "image": "ckq.local/runtime:0.1.0", "imagePullPolicy": "IfNotPresent",
            "command": ["/ckq-runtime/bin/ckq-runtime-install", "/ckq-install"],
            "volumeMounts": [{"name": "ckq-runtime", "mountPath": "/ckq-install"}]}],
        "volumes": [
            {"name": "data", "emptyDir": {}},
            {"name": "ckq-runtime", "emptyDir": {}},
            {"name": "ckq-ckpt-train", "hostPath": {"path": f"{STORE}/team/train/worker-1/train",
                                                    "type": "DirectoryOrCreate"}}],
        "containers": [{
            "name": "train", "image": "python:3", "resources": {"requests": {"cpu": "1"}},
            "env": [{"name": "A", "value": "1"}],
            "command": [*CKQ_RUN, *EXIT_NOTE, "--",
                        "python", "train.py", "--epochs", "3"],
            "volumeMounts": [{"name": "data", "mountPath": "/data"},
                             {"name": "ckq-runtime", "mountPath": "/ckq-runtime", "readOnly": True},
                             {"name": "ckq-ckpt-train", "mountPath": "/ckq/checkpoints"}],
            "securityContext": {"runAsUser": 0,
                                "capabilities": {"add": ["CHECKPOINT_RESTORE", "SYS_PTRACE", "SETPCAP"]},
                                "seccompProfile": {"type": "Unconfined"}}}],
    }
    assert out["containers"][0]["securityContext"] == CONTAINER_SECURITY_CONTEXT


def test_a_restored_pod_starts_each_container_from_its_own_checkpoint() -> None:
    spec = template()
    spec["containers"].append({"name": "logger", "image": "busybox", "command": ["tail", "-f", "/dev/null"]})
    spec["initContainers"] = [{"name": "fetch", "image": "busybox", "command": ["true"]}]
    out = injected(spec, restore={"train": "20260921T000000-0001", "logger": "20260921T000000-0002"})
    assert [c["name"] for c in out["initContainers"]] == ["ckq-runtime", "fetch"]  # the user's still run
    assert out["initContainers"][1] == spec["initContainers"][0]
    train, logger = out["containers"]
    assert train["command"] == [*CKQ_RUN, "--restore",
                                "20260921T000000-0001", *EXIT_NOTE, "--", "python", "train.py", "--epochs", "3"]
    assert "args" not in train
    assert logger["command"] == [*CKQ_RUN, "--restore",
                                 "20260921T000000-0002", *EXIT_NOTE, "--", "tail", "-f", "/dev/null"]
    assert [v["name"] for v in out["volumes"]] == ["ckq-runtime", "ckq-ckpt-train", "ckq-ckpt-logger"]
    assert out["volumes"][2]["hostPath"]["path"] == f"{STORE}/team/train/worker-1/logger"
    with pytest.raises(InjectionError, match="no checkpoint image for container"):
        injected(spec, restore={"train": "x"})


def test_an_encrypted_job_mounts_its_key_from_its_secret_and_ckq_run_uses_it_to_dump_and_restore() -> None:
    for restore in (None, {"train": "20260921T000000-0001"}):
        out = inject(template(), image="ckq.local/runtime:0.1.0", store_root=STORE, namespace="team", job="train",
                     pod_set="worker", index=1, restore=restore, encryption_key=("train-key", "aes"))
        # optional: a missing Secret never leaves the pod in ContainerCreating; ckq-run reports it (exit 78).
        secret = {"secretName": "train-key", "defaultMode": 0o400, "optional": True,
                  "items": [{"key": "aes", "path": "key"}]}
        assert {"name": "ckq-encryption-key", "secret": secret} in out["volumes"]
        (c,) = out["containers"]
        assert {"name": "ckq-encryption-key", "mountPath": "/var/run/ckq/encryption", "readOnly": True} in c[
            "volumeMounts"]
        resumed = ["--restore", "20260921T000000-0001"] if restore else []
        assert c["command"] == [*CKQ_RUN, "--encrypt-key-file", "/var/run/ckq/encryption/key", *resumed,
                                *EXIT_NOTE, "--", "python", "train.py", "--epochs", "3"]
    plain = injected(template())
    assert all(v["name"] != "ckq-encryption-key" for v in plain["volumes"])
    # ckq-run takes the flag by that name (its own parser), so the pod's command is one it accepts.
    from queue_controller.runtime.cli import _run_parser

    command = out["containers"][0]["command"]
    args = _run_parser().parse_args(command[1:command.index("--")])
    assert args.encrypt_key_file == "/var/run/ckq/encryption/key" and args.restore == "20260921T000000-0001"


def test_the_users_security_settings_are_kept_and_added_to() -> None:
    sc = {"capabilities": {"add": ["NET_ADMIN", "cap_sys_ptrace"], "drop": ["ALL"]},
          "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsUser": 0}
    assert secured(sc) == {
        "capabilities": {"add": ["NET_ADMIN", "cap_sys_ptrace", "CHECKPOINT_RESTORE", "SETPCAP"], "drop": ["ALL"]},
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsUser": 0,
        "seccompProfile": {"type": "Unconfined"}}
    assert problems(template(securityContext=sc)) == []
    # A container-level setting overrides its pod's, as Kubernetes applies them.
    spec = template(securityContext={"runAsNonRoot": False, "seccompProfile": {"type": "Unconfined"}})
    spec["securityContext"] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}, "fsGroup": 1000}
    assert problems(spec) == []
    assert injected(spec)["securityContext"] == spec["securityContext"]  # the pod's own stays as written


@pytest.mark.parametrize(("spec", "says"), [
    (template(command=None), "container 'train' has no explicit command: ckq-run must start it, and the image's "
     "entrypoint is not known without asking its registry (set command, and args if any)"),
    ({**template(), "securityContext": {"runAsNonRoot": True}}, "container 'train' sets runAsNonRoot: true, but "
     "CRIU needs root in the container"),
    (template(securityContext={"runAsUser": 1000}), "container 'train' runs as uid 1000, but CRIU needs root"),
    ({**template(), "securityContext": {"runAsUser": 1000}}, "runs as uid 1000"),
    ({**template(), "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}},
     "asks for seccomp profile RuntimeDefault, but CRIU needs Unconfined"),
    (template(securityContext={"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}),
     "seccomp profile Localhost"),
    (template(securityContext={"capabilities": {"drop": ["CAP_SYS_PTRACE", "NET_RAW"]}}),
     "container 'train' drops SYS_PTRACE, which CRIU needs"),
    ({**template(), "volumes": [{"name": "ckq-runtime", "emptyDir": {}}]}, "volume 'ckq-runtime' collides"),
    ({**template(), "volumes": [{"name": "ckq-ckpt-x", "emptyDir": {}}]}, "volume 'ckq-ckpt-x' collides"),
    ({**template(), "initContainers": [{"name": "ckq-runtime", "image": "x"}]}, "a container is named 'ckq-runtime'"),
    (template(name="c" * 55), "the name is longer than 54 characters"),
    (template(volumeMounts=[{"name": "v", "mountPath": "/ckq/checkpoints/"}]), "mounts something at /ckq/checkpoints"),
])
def test_templates_that_cannot_run_under_ckq_run_are_refused_saying_why(spec: dict[str, Any], says: str) -> None:
    (problem,) = problems(spec)
    assert says in problem
    with pytest.raises(InjectionError, match="^" + re.escape(problem) + "$"):
        injected(spec)


def test_every_problem_is_named_at_once() -> None:
    spec = template(command=None, securityContext={"runAsUser": 7})
    assert len(problems(spec)) == 2
    with pytest.raises(InjectionError, match=r"no explicit command.*; container 'train' runs as uid 7"):
        injected(spec)


# ---- Signal mode ------------------------------------------------------------------------------------------

LOCKED_DOWN = {"capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
               "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}


def test_a_signal_mode_pod_runs_ckq_run_in_signal_mode_and_gets_no_privilege_but_root() -> None:
    """The same runtime, volumes and wrapping as CRIU; ckq-run takes the signal and the ack timeout; the
    container's own capabilities and seccomp profile are kept as written (nothing added, nothing
    refused), and it only gets runAsUser 0, to write its hostPath checkpoint directory."""
    how = SignalMode("SIGUSR2", 48.0)
    for restore in (None, {"train": "20260921T000000-0001"}):
        criu = injected(template(), restore)
        out = inject(template(securityContext=LOCKED_DOWN), image="ckq.local/runtime:0.1.0", store_root=STORE,
                     namespace="team", job="train", pod_set="worker", index=1, restore=restore, signal_mode=how)
        assert out["initContainers"] == criu["initContainers"] and out["volumes"] == criu["volumes"]
        (c,) = out["containers"]
        assert c["volumeMounts"] == criu["containers"][0]["volumeMounts"]
        assert c["securityContext"] == {**LOCKED_DOWN, **SIGNAL_SECURITY_CONTEXT} == {**LOCKED_DOWN, "runAsUser": 0}
        resumed = ["--restore", "20260921T000000-0001"] if restore else []
        assert c["command"] == [*CKQ_RUN, "--mode", "signal", "--signal", "SIGUSR2", "--signal-timeout", "48",
                                "--pid-base", "0", *resumed, *EXIT_NOTE, "--", "python", "train.py", "--epochs", "3"]
        # ckq-run's own parser takes it as meant.
        from queue_controller.runtime.cli import _parse_signal, _run_parser

        args = _run_parser().parse_args(c["command"][1:c["command"].index("--")])
        assert (args.mode, _parse_signal(args.signal), args.signal_timeout, args.pid_base) == (
            "signal", 12, 48.0, 0)
        assert args.restore == (restore or {}).get("train")
    assert secured(None, signal_mode=True) == SIGNAL_SECURITY_CONTEXT


def test_signal_mode_refuses_only_what_it_cannot_run() -> None:
    assert problems(template(securityContext=LOCKED_DOWN), signal_mode=True) == []
    assert problems(template(securityContext={"capabilities": {"drop": ["SYS_PTRACE"]}}), signal_mode=True) == []
    (non_root,) = problems({**template(), "securityContext": {"runAsNonRoot": True}}, signal_mode=True)
    assert non_root == ("container 'train' sets runAsNonRoot: true, but Signal mode needs root in the container "
                        "(ckq-run writes the checkpoint directory, a hostPath owned by root)")
    (uid,) = problems(template(securityContext={"runAsUser": 1000}), signal_mode=True)
    assert uid == "container 'train' runs as uid 1000, but Signal mode needs root in the container (runAsUser: 0)"
    (entry,) = problems(template(command=None), signal_mode=True)
    assert "has no explicit command" in entry


@pytest.mark.parametrize(("value", "name"), [(None, "SIGUSR1"), ("SIGUSR2", "SIGUSR2"), ("10", "SIGUSR1"),
                                             ("SIGHUP", "SIGHUP"), ("SIGRTMIN", "SIGRTMIN")])
def test_the_signal_is_named_as_ckq_run_takes_it(value: str | None, name: str) -> None:
    assert signal_name(value) == name


@pytest.mark.parametrize(("value", "says"), [
    ("SIGKILL", "spec.checkpoint.signal 'SIGKILL' (SIGKILL) cannot ask for a checkpoint: a process cannot catch it"),
    ("19", "spec.checkpoint.signal '19' (SIGSTOP) cannot ask for a checkpoint: a process cannot catch it"),
    ("SIGTERM", "spec.checkpoint.signal 'SIGTERM' (SIGTERM) cannot ask for a checkpoint: ckq-run sends it to stop "
     "the app once its state is saved"),
    ("SIGNOPE", "spec.checkpoint.signal 'SIGNOPE' is not a signal of this system"),
    ("99", "spec.checkpoint.signal '99' is not a signal of this system"),
])
def test_a_signal_that_cannot_ask_for_a_checkpoint_is_refused_saying_why(value: str, says: str) -> None:
    with pytest.raises(InjectionError, match="^" + re.escape(says) + "$"):
        signal_name(value)


def test_the_wrapped_command_and_the_exit_code_match_the_runtime() -> None:
    assert wrapped_command(["a"], ["b"]) == [*CKQ_RUN, *EXIT_NOTE, "--", "a", "b"]
    assert EXIT_CHECKPOINTED == RUNTIME_EXIT_CHECKPOINTED == 75


def test_the_constants_match_the_runtime_image_builder() -> None:
    """The controller owns copies (it must not import devcluster); they must not drift from the builder."""
    from queue_controller.runtime.supervisor import EXIT_SETUP

    image = importlib.import_module("queue_controller.devcluster.runtime_image")
    assert injection.EXIT_RESTORE_REFUSED == EXIT_SETUP
    assert list(injection.INSTALL_COMMAND) == image.INSTALL_COMMAND
    assert (injection.IMAGE_ROOT, injection.INSTALL_PATH, injection.RUNTIME_MOUNT, injection.CKQ_RUN) == (
        image.IMAGE_ROOT, image.INSTALL_PATH, image.MOUNT_PATH, image.CKQ_RUN)
    assert injection.CONTAINER_SECURITY_CONTEXT == image.CONTAINER_SECURITY_CONTEXT


def test_a_node_local_store_mounts_the_nodes_own_directory_and_a_restore_awaits_staging() -> None:
    """storeMode node-local: the pod is created before it is bound, so its node's directory is chosen by
    the kubelet (subPathExpr over the downward API's node name); a restore waits for the node agent."""
    out = inject(template(env=[{"name": "A", "value": "1"}]), image="ckq.local/runtime:0.1.0", store_root=STORE,
                 namespace="team", job="train", pod_set="worker", index=1, restore={"train": "20260921T000000-0001"},
                 node_local=True)
    assert out["volumes"][-1] == {"name": "ckq-ckpt-train", "hostPath": {"path": STORE, "type": "DirectoryOrCreate"}}
    (c,) = out["containers"]
    assert c["volumeMounts"][-1] == {"name": "ckq-ckpt-train", "mountPath": "/ckq/checkpoints",
                                     "subPathExpr": "$(CKQ_NODE_NAME)/team/train/worker-1/train"}
    assert c["env"] == [{"name": "A", "value": "1"},
                        {"name": "CKQ_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "CKQ_POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}]
    assert c["command"][:7] == [*CKQ_RUN, "--restore",
                                "20260921T000000-0001", "--await-staged", str(injection.STAGE_WAIT_S)]
    fresh = inject(template(), image="ckq.local/runtime:0.1.0", store_root=STORE, namespace="team", job="train",
                   pod_set="worker", index=1, node_local=True)
    assert "--await-staged" not in fresh["containers"][0]["command"]  # nothing to stage for a fresh start
