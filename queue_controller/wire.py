"""The wire contract: the names and formats that other programs see and that must not drift.

Labels on the pods the controller creates (kubectl selectors, dashboards and the tests select by them),
annotations it writes on Checkpoints, the phases of jobs and checkpoints, the deterministic names of
pods and Checkpoints (a restarted controller recomputes them, so creating an object twice is a harmless
409), and the time format of `metav1.Time`. The phases themselves are defined once, by the API models
(`api/job.py`, `api/checkpoint.py`); this module names the groups of them the controller acts on.

Annotations that only matter on kwok nodes belong to the Simulated checkpoint backend
(`checkpoint/simulated.py`), not here: the controller never reads them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from queue_controller.api.checkpoint import CheckpointPhase
from queue_controller.api.common import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN
from queue_controller.api.common import format_time as format_datetime
from queue_controller.api.job import JobPhase

# ---- labels on the pods the controller creates -------------------------------------------------------

JOB_LABEL = "ckq.io/job-name"  # also on the job's Checkpoints
POD_SET_LABEL = "ckq.io/pod-set"
POD_INDEX_LABEL = "ckq.io/pod-index"
ATTEMPT_LABEL = "ckq.io/attempt"  # also on the job's Checkpoints: the run (attempt) whose pods it covers
MANAGED_LABEL = "ckq.io/managed"  # "true": created by this controller for a CheckpointableJob

# ---- annotations -----------------------------------------------------------------------------------

# On a restored pod: the Checkpoint it restores from (every backend sets it).
RESTORE_FROM_ANNOTATION = "ckq.io/restore-from"
# On a pod run under ckq-run: how ckq-run checkpoints it ("CRIU" or "Signal"), fixed when the pod is
# created (the job's spec.checkpoint.mode may change later; its running pods do not).
CKQ_RUN_MODE_ANNOTATION = "ckq.io/ckq-run-mode"
# On a Checkpoint: the job's accumulated run time at the moment it was taken (what a restore keeps).
CHECKPOINT_RUNTIME_ANNOTATION = "ckq.io/run-time-seconds"

# ---- phases ----------------------------------------------------------------------------------------

# Phases in which a job holds quota and has (or is about to have) pods.
ACTIVE_PHASES: tuple[JobPhase, ...] = ("Admitted", "Running", "Checkpointing", "Restoring")
TERMINAL_PHASES: tuple[JobPhase, ...] = ("Succeeded", "Failed")
# Phases of a job that waits in its queue (a Suspended one resumes from its checkpoint).
WAITING_PHASES: tuple[JobPhase, ...] = ("Pending", "Suspended")
# Phases in which a job's pods are expected to exist.
STARTING_PHASES: tuple[JobPhase, ...] = ("Admitted", "Restoring")
# A Checkpoint in these phases is in flight: its backend is polled.
IN_FLIGHT_CHECKPOINT_PHASES: tuple[CheckpointPhase, ...] = ("Pending", "Running")
# Pod phases after which a pod takes no node capacity.
POD_DONE_PHASES = ("Succeeded", "Failed")

# ---- names -----------------------------------------------------------------------------------------


def pod_name(job: str, attempt: int, pod_set: str, index: int) -> str:
    """`<job>-<attempt>-<podset>-<index>`: each run (attempt) of a job has its own pod names."""
    return f"{job}-{attempt}-{pod_set}-{index}"


def checkpoint_name(job: str, attempt: int, reason: str, number: int) -> str:
    """`<job>-<attempt>-<reason>-<n>`, where n counts the job's checkpoints (completed and failed)."""
    return f"{job}-{attempt}-{reason.lower()}-{number}"


# ---- time ------------------------------------------------------------------------------------------


def parse_time(value: Any) -> float | None:
    """Epoch seconds from a `metav1.Time` (RFC 3339) or a number; None when unset."""
    if not value:
        return None
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def to_datetime(epoch: float) -> datetime:
    """An aware UTC datetime, what the API models' `Time` fields hold."""
    return datetime.fromtimestamp(epoch, UTC)


def format_time(epoch: float) -> str:
    """A `metav1.Time` string (whole seconds, UTC, `Z`) for epoch seconds."""
    return format_datetime(to_datetime(epoch))


# ---- the real checkpoint path: controller <-> pods <-> node agent (issue 10) -----------------------
#
# The controller and the node agents talk only through Kubernetes objects, and to the workloads only
# through the checkpoint volume. Cluster settings come from one ConfigMap (written by `ckq dev up
# --real-nodes`, templated by the Helm chart); without it no real backend is available, and a job that
# needs one is refused with the CheckpointModeUnavailable condition, never silently simulated.

CONFIG_NAMESPACE = "ckq-system"
CONFIG_MAP = "ckq-config"
# ConfigMap keys.
CONFIG_RUNTIME_IMAGE = "runtimeImage"  # e.g. ckq.local/runtime:0.1.0: the init container's image
CONFIG_STORE_HOST_PATH = "storeHostPath"  # a directory on every node (shared: NFS/PVC; dev: one host)
CONFIG_DELETE_GRACE = "deleteGraceSeconds"  # pods' deletion grace when no dump just stopped them
# waitForPodsReady (Kueue's semantics): an admitted job whose pods are not all running within this long
# gives its quota back and is requeued with exponential backoff (base * 2^(n-1), at most max); after
# `requeueBackoffLimit` such requeues (unset: no limit) it fails.
CONFIG_PODS_READY_TIMEOUT = "podsReadyTimeout"  # a duration, e.g. "10m"
CONFIG_REQUEUE_BACKOFF_BASE = "requeueBackoffBase"  # a duration, e.g. "60s"
CONFIG_REQUEUE_BACKOFF_MAX = "requeueBackoffMax"  # a duration, e.g. "1h"
CONFIG_REQUEUE_BACKOFF_LIMIT = "requeueBackoffLimit"  # a whole number of requeues
# Where a node's checkpoint images live (docs/checkpointing.md, "The checkpoint store"): "shared" (the
# default: storeHostPath is one directory every node mounts) or "node-local" (each node keeps its own
# images under storeHostPath/<node name>/, and a restore on another node first has that node's agent
# stage them from the agent of the node that dumped them, over HTTP on storeTransferPort).
CONFIG_STORE_MODE = "storeMode"
CONFIG_STORE_TRANSFER_PORT = "storeTransferPort"  # the agents' image transfer port (node-local only)
STORE_SHARED, STORE_NODE_LOCAL = "shared", "node-local"
STORE_MODES = (STORE_SHARED, STORE_NODE_LOCAL)
DEFAULT_STORE_TRANSFER_PORT = 9478
# In node-local mode, the pod's env vars a checkpoint mount's subPathExpr and ckq-run read (downward API).
NODE_NAME_ENV = "CKQ_NODE_NAME"
POD_UID_ENV = "CKQ_POD_UID"

# In a checkpointed pod (what the controller injects).
RUNTIME_VOLUME = "ckq-runtime"  # emptyDir the init container fills with /ckq-runtime
RUNTIME_INIT_CONTAINER = "ckq-runtime"
CHECKPOINT_VOLUME_PREFIX = "ckq-ckpt-"  # + container name: one hostPath volume per checkpointed container
CHECKPOINT_MOUNT = "/ckq/checkpoints"  # ckq-run --dir, inside the container
# The namespace's default checkpoint encryption key (docs/security.md): a Secret of this name in the
# job's namespace, data key NAMESPACE_KEY_DATA. Pods mount it optional: the controller never reads
# Secrets, ckq-run decides (encrypts when it is there) and the manifest and artifacts record the key id.
NAMESPACE_KEY_SECRET = "ckq-checkpoint-key"
NAMESPACE_KEY_DATA = "key"

# On a Node: "kwok" nodes run no process (Simulated only); "real" ones run ckq-run and a node agent.
NODE_KIND_LABEL = "ckq.io/node-kind"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_ANNOTATION_VALUE = "fake"  # kwok manages the nodes annotated so (its documented convention)
KWOK_NODE, REAL_NODE = "kwok", "real"


def node_kind(labels: Mapping[str, str], annotations: Mapping[str, str]) -> str:
    """"kwok" for a node kwok fakes (its annotation, or our label says so), else "real"."""
    if annotations.get(KWOK_NODE_ANNOTATION) == KWOK_NODE_ANNOTATION_VALUE or labels.get(NODE_KIND_LABEL) == KWOK_NODE:
        return KWOK_NODE
    return REAL_NODE


_DNS_LABEL = re.compile(DNS_LABEL_PATTERN)
_DNS_SUBDOMAIN = re.compile(DNS_SUBDOMAIN_PATTERN)


def container_store_dir(store_root: str, namespace: str, job: str, pod_set: str, index: int, container: str) -> str:
    """The host directory of one container's checkpoints (ckq-run's --dir, seen from the node).

    Stable across attempts, so the pod of a later run restores what an earlier run's pod dumped; its
    control socket is `<dir>/ckq-run.sock` and each checkpoint `<dir>/checkpoints/<id>/` (manifest.json
    with id, sizeBytes, sha256). Every part must be a DNS label (the job: a DNS subdomain, whose dots
    never make a `.`/`..` part) and is checked here again, whatever checked it before: a path built from
    object names can never leave the namespace's directory. Raises ValueError naming the bad part.
    """
    bad = [f"{what} {value!r}" for what, value, rx, limit in (
        ("namespace", namespace, _DNS_LABEL, 63), ("job", job, _DNS_SUBDOMAIN, 253),
        ("pod set", pod_set, _DNS_LABEL, 63), ("container", container, _DNS_LABEL, 63))
        if not (isinstance(value, str) and rx.fullmatch(value) and len(value) <= limit)]
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        bad.append(f"pod index {index!r}")
    if bad:
        raise ValueError("not a valid name for a store path: " + ", ".join(bad))
    return f"{store_root.rstrip('/')}/{namespace}/{job}/{pod_set}-{index}/{container}"


def node_store_root(store_root: str, node: str) -> str:
    """A node's own store in node-local mode: `<storeHostPath>/<node>` (artifact uris keep naming
    storeHostPath, so a uri means the same checkpoint on whichever node holds a copy)."""
    return f"{store_root.rstrip('/')}/{node}"


def artifact_uri(store_dir: str, checkpoint_id: str) -> str:
    """An artifact's uri: `file://<container dir>/checkpoints/<ckq-run id>`; the id is its last part."""
    return f"file://{store_dir}/checkpoints/{checkpoint_id}"


def checkpoint_id_of(uri: str) -> str:
    """The ckq-run checkpoint id of an artifact uri (what `ckq-run --restore` takes)."""
    return uri.rstrip("/").rsplit("/", 1)[-1]
