"""Runtime injection: the pod a CRIU-checkpointed job runs, built from the user's template.

The user's image needs nothing from ckq. The runtime image (`ckq.local/runtime:<ckq version>` in dev;
the cluster names it in the ConfigMap, `wire.CONFIG_RUNTIME_IMAGE`) holds one self-contained
directory, `/ckq-runtime` (ckq-run, CRIU with its own loader and libraries, a Python), that runs in any
image. What is done to each pod, as docs/checkpointing.md ("In a pod: the injected runtime" and "Least
privilege in a container") describes it and `devcluster/runtime_image.py` builds it:

* an init container `ckq-runtime` from the runtime image runs `INSTALL_COMMAND`, copying the runtime
  into an `emptyDir` (`wire.RUNTIME_VOLUME`) mounted at `INSTALL_PATH`;
* every container of the pod is checkpointed: it mounts that volume read-only at `RUNTIME_MOUNT`, and
  its own checkpoint directory — a hostPath, `wire.container_store_dir(...)`, in the cluster's store —
  at `wire.CHECKPOINT_MOUNT`; its command becomes `ckq-run --dir <mount> -- <command> <args>`, or, in a
  restored pod, `ckq-run --dir <mount> --restore <id> -- <command> <args>`;
* `CONTAINER_SECURITY_CONTEXT` is added on top of the container's own security context.

With a node-local store (`node_local`, ConfigMap storeMode: node-local) the hostPath is the store root
and each container mounts `subPathExpr: $(CKQ_NODE_NAME)/<namespace>/<job>/<podSet>-<index>/<container>`
(its node's own store, `wire.node_store_root`; the node's name comes from the downward API, since the
pod is created before it is bound); a restored container also gets `--await-staged STAGE_WAIT_S`, so
ckq-run waits for its node's agent to stage images dumped on another node (agent/stage.py).

In Signal mode (`SignalMode`: the application saves its own state when signalled) the pod is the same
but for two things: ckq-run runs `--mode signal` with the job's signal and ack timeout, and nothing is
added to the container's privileges but `runAsUser: 0` (`SIGNAL_SECURITY_CONTEXT`: ckq-run writes the
checkpoint directory, a hostPath the kubelet creates owned by root). No capability, no seccomp change:
ckq-run only sends a signal to its own child and copies files, so the template's own capabilities and
seccomp profile (`drop: [ALL]`, `RuntimeDefault`) are kept and not refused.

The controller adds and never replaces: a template whose own settings contradict what CRIU needs
(`runAsNonRoot: true`, a non-root `runAsUser`, a seccomp profile, dropping a needed capability), that
has a container without an explicit `command` (the image's entrypoint is unknown without a registry),
or whose names collide with the injected ones is refused with a message saying which and why
(`problems`). The same constants are defined by the runtime image's builder; the operator does not
import the dev cluster (layering), so they are repeated here, and a unit test holds the two equal.
"""

from __future__ import annotations

import copy
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from queue_controller.runtime import exits
from queue_controller.wire import (
    CHECKPOINT_MOUNT,
    CHECKPOINT_VOLUME_PREFIX,
    NAMESPACE_KEY_DATA,
    NODE_NAME_ENV,
    POD_UID_ENV,
    RUNTIME_INIT_CONTAINER,
    RUNTIME_VOLUME,
    container_store_dir,
)

# Where the runtime lives in its image, where the init container mounts the shared volume, and where a
# checkpointed container sees it (runtime_image.IMAGE_ROOT, INSTALL_PATH, MOUNT_PATH).
IMAGE_ROOT = "/ckq-runtime"
INSTALL_PATH = "/ckq-install"
RUNTIME_MOUNT = "/ckq-runtime"
INSTALL_COMMAND = (f"{IMAGE_ROOT}/bin/ckq-runtime-install", INSTALL_PATH)
CKQ_RUN = f"{RUNTIME_MOUNT}/bin/ckq-run"
# The job's encryption key (its own, its LocalQueue's or the namespace default, checkpoint.base.
# encryption_key), mounted from its Secret, readable by the container's user only; ckq-run reads it to
# encrypt each dump and to decrypt a restore.
KEY_VOLUME = "ckq-encryption-key"
KEY_MOUNT = "/var/run/ckq/encryption"
# The key's file name: the job's or queue's data key is mapped to it (`items`); the namespace's default
# Secret is mounted whole, so its data key must be this name.
KEY_FILE = NAMESPACE_KEY_DATA

# ckq-run's own exit codes (runtime/exits.py), each acted on only when the container's termination
# message carries ckq-run's note naming it (a workload may exit with the same number for its own reasons):
# - after a dump that stopped the workload (EX_TEMPFAIL): the expected end of a pod checkpointed out;
# - the encryption key it was given is missing or malformed (EX_CONFIG): it started nothing; the job
#   reports the Secret;
# - it refused or failed a restore (EX_UNAVAILABLE): the checkpoint is corrupt, unknown, or cannot be
#   restored here; it verifies every image before touching anything.
EXIT_CHECKPOINTED = exits.EXIT_CHECKPOINTED
EXIT_KEY_UNAVAILABLE = exits.EXIT_KEY
EXIT_RESTORE_REFUSED = exits.EXIT_SETUP

# What ckq-run (CRIU dumping and restoring its own child tree, `--unprivileged`) needs under
# runc/containerd, each item found necessary with real containers (docs/checkpointing.md, "Least
# privilege in a container"): root in the container (CAP_CHECKPOINT_RESTORE must be effective),
# CHECKPOINT_RESTORE, SYS_PTRACE (Yama, other uids), SETPCAP (a user's `drop: [ALL]` would break the
# restore), and no seccomp filter (RuntimeDefault blocks clone3(set_tid), and CRIU cannot suspend a
# filtered workload). Not privileged, no SYS_ADMIN, no hostPID.
ADDED_CAPABILITIES = ("CHECKPOINT_RESTORE", "SYS_PTRACE", "SETPCAP")
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsUser": 0,
    "capabilities": {"add": list(ADDED_CAPABILITIES)},
    "seccompProfile": {"type": "Unconfined"},
}
# Signal mode: ckq-run signals its own child and copies files into the checkpoint directory (a hostPath
# the kubelet creates owned by root); it needs root in the container and nothing else.
SIGNAL_SECURITY_CONTEXT: dict[str, Any] = {"runAsUser": 0}
DEFAULT_SIGNAL = "SIGUSR1"
# Signals a process cannot catch, or that mean something else to ckq-run (SIGTERM stops the app after
# its state is saved; the kubelet sends it at deletion).
UNUSABLE_SIGNALS = ("SIGKILL", "SIGSTOP", "SIGTERM")
LEAST_PRIVILEGE_DOC = "docs/checkpointing.md, \"Least privilege in a container\""
MAX_NAME = 63  # a volume name is a DNS label
# Node-local stores: how long a restored container waits for its images to be staged on its node
# (a copy over the cluster network; the restore then fails over to the previous checkpoint).
STAGE_WAIT_S = 600


class InjectionError(ValueError):
    """The template cannot run under ckq-run as it is; the message says why, for the user."""


@dataclass(frozen=True, slots=True)
class SignalMode:
    """ckq-run in Signal mode: it sends `signal` (a name, e.g. SIGUSR1) and waits `ack_timeout_s` for
    the application's ack before the checkpoint fails."""

    signal: str = DEFAULT_SIGNAL
    ack_timeout_s: float = 300.0


def signal_name(value: str | None) -> str:
    """The signal spec.checkpoint.signal names, as a name ckq-run takes ("10" -> "SIGUSR1"; unset ->
    DEFAULT_SIGNAL). Raises InjectionError for one that does not exist here or cannot be used."""
    if not value:
        return DEFAULT_SIGNAL
    try:
        name = signal.Signals(int(value)).name if value.isdigit() else signal.Signals[value].name
    except (KeyError, ValueError):
        raise InjectionError(f"spec.checkpoint.signal {value!r} is not a signal of this system") from None
    if name in UNUSABLE_SIGNALS:
        why = "ckq-run sends it to stop the app once its state is saved" if name == "SIGTERM" else \
            "a process cannot catch it"
        raise InjectionError(f"spec.checkpoint.signal {value!r} ({name}) cannot ask for a checkpoint: {why}")
    return name


def _cap(name: str) -> str:
    name = name.upper()
    return name.removeprefix("CAP_")


def _security_problems(where: str, sc: Mapping[str, Any], pod_sc: Mapping[str, Any], signal_mode: bool) -> list[str]:
    """Why the container's own settings (over its pod's) contradict CONTAINER_SECURITY_CONTEXT (in Signal
    mode: SIGNAL_SECURITY_CONTEXT)."""
    out = []
    who, why = ("Signal mode", "ckq-run writes the checkpoint directory, a hostPath owned by root") if signal_mode \
        else ("CRIU", "CAP_CHECKPOINT_RESTORE must be effective; the workload can drop privileges itself")
    non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
    if non_root:
        out.append(f"{where} sets runAsNonRoot: true, but {who} needs root in the container ({why})")
    user = sc.get("runAsUser", pod_sc.get("runAsUser"))
    if user not in (None, 0):
        out.append(f"{where} runs as uid {user}, but {who} needs root in the container (runAsUser: 0)")
    if signal_mode:
        return out
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp not in (None, "Unconfined"):
        out.append(f"{where} asks for seccomp profile {seccomp}, but CRIU needs Unconfined (a filter blocks "
                   "clone3(set_tid) and cannot be suspended during the dump)")
    dropped = {_cap(c) for c in (sc.get("capabilities") or {}).get("drop") or ()}
    needed = sorted(dropped & set(ADDED_CAPABILITIES))
    if needed:
        out.append(f"{where} drops {', '.join(needed)}, which CRIU needs")
    return out


def problems(spec: Mapping[str, Any], *, signal_mode: bool = False) -> list[str]:
    """Why a pod spec (the user's template) cannot be injected, one sentence each; empty when it can."""
    out: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    containers = spec.get("containers") or []
    names = {str(c.get("name", "")) for c in [*containers, *(spec.get("initContainers") or [])]}
    if RUNTIME_INIT_CONTAINER in names:
        out.append(f"a container is named {RUNTIME_INIT_CONTAINER!r}, the name of the injected init container")
    for v in spec.get("volumes") or ():
        name = str(v.get("name", ""))
        if name == RUNTIME_VOLUME or name.startswith(CHECKPOINT_VOLUME_PREFIX):
            out.append(f"volume {name!r} collides with the injected volumes ({RUNTIME_VOLUME}, "
                       f"{CHECKPOINT_VOLUME_PREFIX}<container>)")
    for c in containers:
        name = str(c.get("name", ""))
        where = f"container {name!r}"
        if not c.get("command"):
            out.append(f"{where} has no explicit command: ckq-run must start it, and the image's entrypoint "
                       "is not known without asking its registry (set command, and args if any)")
        if len(CHECKPOINT_VOLUME_PREFIX + name) > MAX_NAME:
            out.append(f"{where}: the name is longer than {MAX_NAME - len(CHECKPOINT_VOLUME_PREFIX)} characters, "
                       f"too long for its checkpoint volume ({CHECKPOINT_VOLUME_PREFIX}<container>)")
        for m in c.get("volumeMounts") or ():
            if m.get("mountPath", "").rstrip("/") in (RUNTIME_MOUNT, CHECKPOINT_MOUNT):
                out.append(f"{where} mounts something at {m['mountPath']}, where the runtime is injected")
        out += _security_problems(where, c.get("securityContext") or {}, pod_sc, signal_mode)
    return out


def secured(sc: Mapping[str, Any] | None, *, signal_mode: bool = False) -> dict[str, Any]:
    """The container's security context with CONTAINER_SECURITY_CONTEXT (in Signal mode:
    SIGNAL_SECURITY_CONTEXT) added (nothing of its own removed; `problems` has already refused what would
    have to be)."""
    out = copy.deepcopy(dict(sc or {}))
    out["runAsUser"] = 0
    if signal_mode:
        return out
    caps = dict(out.get("capabilities") or {})
    add = list(caps.get("add") or [])
    have = {_cap(c) for c in add}
    caps["add"] = [*add, *(c for c in ADDED_CAPABILITIES if c not in have)]
    out["capabilities"] = caps
    out["seccompProfile"] = {"type": "Unconfined"}
    return out


def wrapped_command(command: Sequence[str], args: Sequence[str], restore_id: str | None = None,
                    encrypted: bool = False, default_key: bool = False, await_staged: float | None = None,
                    signal_mode: SignalMode | None = None,
                    exit_note: str = exits.DEFAULT_NOTE_PATH) -> list[str]:
    """`ckq-run --dir <mount> [<signal mode>] [--encrypt-key-file|--default-key-file <key>] [--restore <id>
    [--await-staged <s>]] --exit-note <path> -- <command> <args>`: an argv list, never shell text — the
    user's command and args follow `--` verbatim (ckq-run execs them without a shell), so nothing in them is
    ever interpreted by ckq. `exit_note` is the container's terminationMessagePath (runtime/exits.py).

    Signal mode adds `--mode signal --signal <name> --signal-timeout <s> --pid-base 0`: the app is started
    afresh on restore, so its PIDs need not be kept clear of the supervisor's."""
    mode = ["--mode", "signal", "--signal", signal_mode.signal, "--signal-timeout", f"{signal_mode.ack_timeout_s:g}",
            "--pid-base", "0"] if signal_mode is not None else []
    restore = ["--restore", restore_id] if restore_id else []
    if restore_id and await_staged is not None:
        restore += ["--await-staged", f"{await_staged:g}"]
    key = (["--encrypt-key-file", f"{KEY_MOUNT}/{KEY_FILE}"] if encrypted
           else ["--default-key-file", f"{KEY_MOUNT}/{KEY_FILE}"] if default_key else [])
    return [CKQ_RUN, "--dir", CHECKPOINT_MOUNT, *mode, *key, *restore, "--exit-note", exit_note, "--", *command,
            *args]


def checkpoint_volume(container: str) -> str:
    return CHECKPOINT_VOLUME_PREFIX + container


def inject(spec: Mapping[str, Any], *, image: str, store_root: str, namespace: str, job: str, pod_set: str,
           index: int, restore: Mapping[str, str] | None = None,
           encryption_key: tuple[str, str] | None = None, key_required: bool = True,
           node_local: bool = False, signal_mode: SignalMode | None = None) -> dict[str, Any]:
    """The pod spec `spec` runs as under ckq-run; `restore` maps each container to the ckq-run checkpoint id
    it resumes from (None: a fresh start); `encryption_key`: (Secret, data key) of the key its images are
    encrypted with. The Secret is mounted `optional`, so a missing one never leaves the pod in
    ContainerCreating: ckq-run reports it (exit EXIT_KEY) when `key_required`, and otherwise (the
    namespace's default key) encrypts only when it exists. `signal_mode`: ckq-run asks the app to save
    itself (None: CRIU). Raises InjectionError with every problem."""
    found = problems(spec, signal_mode=signal_mode is not None)
    for c in spec.get("containers") or ():
        try:  # every part of the hostPath is a checked name (wire.container_store_dir)
            container_store_dir(store_root, namespace, job, pod_set, index, str(c.get("name", "")))
        except ValueError as e:
            found.append(str(e))
    if restore is not None:
        missing = [str(c.get("name")) for c in spec.get("containers") or () if c.get("name") not in restore]
        if missing:
            found.append(f"no checkpoint image for container(s) {', '.join(missing)}")
    if found:
        raise InjectionError("; ".join(found))
    out = copy.deepcopy(dict(spec))
    out["initContainers"] = [{
        "name": RUNTIME_INIT_CONTAINER, "image": image, "imagePullPolicy": "IfNotPresent",
        "command": list(INSTALL_COMMAND),
        "volumeMounts": [{"name": RUNTIME_VOLUME, "mountPath": INSTALL_PATH}],
    }, *(out.get("initContainers") or [])]
    volumes = [*(out.get("volumes") or []), {"name": RUNTIME_VOLUME, "emptyDir": {}}]
    if encryption_key is not None:
        secret, key = encryption_key
        source: dict[str, Any] = {"secretName": secret, "defaultMode": 0o400, "optional": True}
        if key_required:
            source["items"] = [{"key": key, "path": KEY_FILE}]
        # The default Secret is mounted whole: ckq-run then tells "no such Secret" (an empty directory:
        # unencrypted) from "a Secret without the data key" (refused), which `items` would hide.
        volumes.append({"name": KEY_VOLUME, "secret": source})
    for c in out.get("containers") or []:
        name = str(c["name"])
        mount: dict[str, Any] = {"name": checkpoint_volume(name), "mountPath": CHECKPOINT_MOUNT}
        if node_local:
            volumes.append({"name": checkpoint_volume(name), "hostPath": {"path": store_root,
                                                                          "type": "DirectoryOrCreate"}})
            mount["subPathExpr"] = container_store_dir(f"$({NODE_NAME_ENV})", namespace, job, pod_set, index, name)
            c["env"] = [*(c.get("env") or []),
                        {"name": NODE_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": POD_UID_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}]
        else:
            volumes.append({"name": checkpoint_volume(name), "hostPath": {
                "path": container_store_dir(store_root, namespace, job, pod_set, index, name),
                "type": "DirectoryOrCreate"}})
        c["volumeMounts"] = [*(c.get("volumeMounts") or []),
                             {"name": RUNTIME_VOLUME, "mountPath": RUNTIME_MOUNT, "readOnly": True}, mount]
        if encryption_key is not None:
            c["volumeMounts"].append({"name": KEY_VOLUME, "mountPath": KEY_MOUNT, "readOnly": True})
        c["command"] = wrapped_command(c.get("command") or [], c.pop("args", None) or [],
                                       restore.get(name) if restore is not None else None,
                                       encrypted=encryption_key is not None and key_required,
                                       default_key=encryption_key is not None and not key_required,
                                       await_staged=STAGE_WAIT_S if node_local else None,
                                       signal_mode=signal_mode,
                                       exit_note=str(c.get("terminationMessagePath") or exits.DEFAULT_NOTE_PATH))
        c["securityContext"] = secured(c.get("securityContext"), signal_mode=signal_mode is not None)
    out["volumes"] = volumes
    return out
