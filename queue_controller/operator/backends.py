"""The backend registry: which checkpoint backend serves each job — or why none can — and how the
controller describes a job to its backend.

No silent fallback. A job's `spec.checkpoint.mode` and the kind of node its pods run on decide:

| mode | kwok node (no process exists) | real node |
|---|---|---|
| `Simulated` | Simulated | Simulated (the job asked for it) |
| `CRIU` | Simulated | CRIU, if the ConfigMap names store and runtime image and the template suits ckq-run |
| `Signal` | Simulated | Signal, as CRIU (ConfigMap, template), if the signal can be caught |
| `Kubelet` | Simulated | unavailable: the nodes' containerd has no CRI checkpoint (needs >= 2.0) |
| `None` | not checkpointable | not checkpointable |

Before admission (`admissible`), a job whose mode no node kind of the cluster can serve is not queued:
it waits with `pendingReason: CheckpointModeUnavailable`, the condition of that name (True, with a
reason and a message naming the mode and why) and a Warning Event, and it is checked again every
cycle, so it is admitted once the cluster can serve it (the ConfigMap appears). A job that some kinds
can serve and others cannot is only placed on the kinds that can; one that resumes from a checkpoint
is only placed where that checkpoint can be restored (a simulated one on kwok nodes, a CRIU or Signal
one on real nodes). A placement the backends still cannot serve is refused at admission or at pod creation
with the same condition (`resolve`). Which backend checkpoints a running job follows from where its
pods run and how they were started (`for_job`).

Backends get plain descriptions (`checkpoint.base`), never the controller's records: the pods with
their real names and nodes, the job's checkpoint policy, the Checkpoint's observed status, the
artifacts a restored pod restores from, and the controller's API client to act with.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from queue_controller.api.checkpoint import Artifact, CheckpointStatus
from queue_controller.api.common import ConditionStatus
from queue_controller.api.job import CheckpointPolicy
from queue_controller.checkpoint.base import (
    ApiClient,
    ArtifactInfo,
    CheckpointBackend,
    CheckpointRequest,
    CheckpointResult,
    EncryptionKey,
    LaunchRefused,
    LaunchRequest,
    PodInfo,
    PodRef,
    RestoreSource,
    encryption_key,
)
from queue_controller.checkpoint.criu import CriuBackend
from queue_controller.checkpoint.injection import InjectionError, problems
from queue_controller.checkpoint.signal_backend import SignalBackend, signal_mode
from queue_controller.checkpoint.simulated import SIM_URI_PREFIX
from queue_controller.engine import GPU
from queue_controller.operator.cache import Cache
from queue_controller.operator.records import CheckpointRecord, JobRecord
from queue_controller.operator.settings import ClusterSettings
from queue_controller.operator.snapshot import Fit, latest_completed_checkpoint
from queue_controller.wire import KWOK_NODE, REAL_NODE, parse_time, pod_name

SIMULATED_BY_MODE = "checkpoints are simulated (checkpoint mode Simulated): no process is dumped"
SIMULATED_ON_KWOK = "checkpoints are simulated: the job runs on kwok nodes, where no process exists"
CRIU_MESSAGE = "checkpoints by CRIU: ckq-run in every container, driven by the node agents"
SIGNAL_MESSAGE = ("checkpoints by signal: the application saves its own state when ckq-run sends it {signal}, "
                  "driven by the node agents")


@dataclass(frozen=True, slots=True)
class Resolution:
    """What serves a job's checkpoints on some nodes, or why nothing can."""

    backend: CheckpointBackend | None  # None: not checkpointable (mode None), or unavailable
    reason: str = ""  # the condition's reason: Simulated, CRIU; or why it is unavailable
    message: str = ""
    available: bool = True

    def condition(self) -> tuple[ConditionStatus, str, str] | None:
        """The CheckpointModeUnavailable condition it gives the job (None: not checkpointable)."""
        if not self.reason:
            return None
        return ("False" if self.available else "True", self.reason, self.message)


NOT_CHECKPOINTABLE = Resolution(None)


def unavailable(reason: str, message: str) -> Resolution:
    return Resolution(None, reason, message, available=False)


class Unavailable:
    """Stands in for the backend of a run that nothing can checkpoint: every checkpoint fails with the
    reason, and no pod is launched."""

    name = "Unavailable"
    stops_workload = False
    dumps_pods = False

    def __init__(self, resolution: Resolution) -> None:
        self.resolution = resolution

    def estimate(self, pods: Sequence[PodRef], *, policy: CheckpointPolicy | None = None) -> tuple[float, float]:
        return 0.0, 0.0

    async def begin(self, request: CheckpointRequest, *, api: ApiClient | None = None) -> None:
        return None

    async def progress(self, request: CheckpointRequest, now: float, *,
                       api: ApiClient | None = None) -> CheckpointResult | None:
        return CheckpointResult(False, 0.0, message=self.resolution.message)

    async def cancel(self, request: CheckpointRequest, *, api: ApiClient | None = None) -> None:
        return None

    def pod_info(self, request: LaunchRequest) -> PodInfo:
        raise LaunchRefused(self.resolution.reason, self.resolution.message)


def artifacts(ckpt: CheckpointRecord) -> tuple[ArtifactInfo, ...]:
    """The artifacts a Checkpoint's status lists."""
    out = []
    for raw in ckpt.status.get("artifacts") or ():
        a = Artifact.model_validate(raw)
        out.append(ArtifactInfo(a.pod_set, a.index, a.container, a.node or "", a.uri, a.sha256 or "",
                                a.size_bytes or 0, a.encryption_key_id))
    return tuple(out)


def observed(ckpt: CheckpointRecord) -> CheckpointStatus:
    """The Checkpoint's status as the API server has it (agents write parts of it)."""
    try:
        return CheckpointStatus.model_validate(ckpt.status)
    except ValidationError:
        return CheckpointStatus(phase=ckpt.status.get("phase") if ckpt.status.get("phase") in (
            "Pending", "Running", "Completed", "Failed") else None)


@dataclass
class _Memo:
    generation: int = -1
    problems: str = ""


class JobBackends:
    def __init__(self, simulated: CheckpointBackend, cache: Cache, api: ApiClient,
                 settings: ClusterSettings | None = None) -> None:
        self.simulated = simulated
        self.cache = cache
        self.api = api
        self.settings = settings or ClusterSettings()
        self._criu = CriuBackend(self.settings.runtime_image, self.settings.store_host_path,
                                 node_local=self.settings.node_local_store)
        self._signal = SignalBackend(self.settings.runtime_image, self.settings.store_host_path,
                                     node_local=self.settings.node_local_store)
        self._templates: dict[str, _Memo] = {}  # job key -> its templates' problems, per generation

    def configure(self, settings: ClusterSettings) -> None:
        """The cluster's settings changed (the ConfigMap)."""
        self.settings = settings
        self._criu = CriuBackend(settings.runtime_image, settings.store_host_path,
                                 node_local=settings.node_local_store)
        self._signal = SignalBackend(settings.runtime_image, settings.store_host_path,
                                     node_local=settings.node_local_store)

    # ---- the registry -----------------------------------------------------------------------------

    def _template_problems(self, job: JobRecord) -> str:
        """Why the job's pod templates cannot run under ckq-run ("" when they can); per spec generation."""
        if len(self._templates) > 2 * len(self.cache.jobs) + 64:  # forget deleted jobs, now and then
            self._templates = {k: m for k, m in self._templates.items() if k in self.cache.jobs}
        memo = self._templates.setdefault(job.key, _Memo())
        if memo.generation != job.generation or not job.generation:
            signal = job.spec is not None and job.spec.checkpoint.mode == "Signal"
            found = [f"pod set {name!r}: {p}" for name, t in job.templates.items()
                     for p in problems(t.get("spec") or {}, signal_mode=signal)]
            memo.generation, memo.problems = job.generation, "; ".join(found)
        return memo.problems

    def _kubelet_why(self) -> str:
        runtimes = sorted({n.runtime for n in self.cache.nodes.values() if n.kind == REAL_NODE and n.runtime})
        old = [r for r in runtimes if r.startswith("containerd://1.")]
        if runtimes and len(old) == len(runtimes):
            return (f"the nodes' container runtime ({', '.join(runtimes)}) has no CRI checkpoint; "
                    "Kubelet mode needs containerd >= 2.0")
        return "ckq does not drive the kubelet checkpoint API yet (it needs containerd >= 2.0 on the nodes)"

    def on_kind(self, job: JobRecord, kind: str) -> Resolution:
        """What would checkpoint the job's pods on nodes of `kind`."""
        mode = job.spec.checkpoint.mode if job.spec is not None else "None"
        if mode == "None":
            return NOT_CHECKPOINTABLE
        if mode == "Simulated":
            return Resolution(self.simulated, "Simulated", SIMULATED_BY_MODE)
        if kind == KWOK_NODE:
            return Resolution(self.simulated, "Simulated", SIMULATED_ON_KWOK)
        if mode in ("CRIU", "Signal"):  # both run ckq-run in every container, driven by the agents
            why = self.settings.criu_unavailable(mode)
            if why:
                return unavailable("StoreNotConfigured", f"checkpoint mode {mode} is unavailable on real nodes: {why}")
            found = self._template_problems(job)
            if found:
                return unavailable("PodTemplateNotCheckpointable",
                                   f"checkpoint mode {mode} cannot run this job's pods under ckq-run: {found}")
            if mode == "CRIU":
                return Resolution(self._criu, "CRIU", CRIU_MESSAGE)
            assert job.spec is not None
            try:
                how = signal_mode(job.spec.checkpoint)
            except InjectionError as e:
                return unavailable("SignalUnusable", f"checkpoint mode Signal is unavailable: {e}")
            return Resolution(self._signal, "Signal", SIGNAL_MESSAGE.format(signal=how.signal))
        return unavailable("KubeletCheckpointUnsupported",
                           f"checkpoint mode Kubelet is unavailable on real nodes: {self._kubelet_why()}")

    def _restore_kind(self, job: JobRecord) -> tuple[str, str] | None:
        """(node kind, checkpoint) where the job's newest completed checkpoint restores, for modes whose
        checkpoints are real somewhere; None when it has none, or anything restores anywhere."""
        assert job.spec is not None
        if job.spec.checkpoint.mode in ("None", "Simulated"):
            return None
        latest = latest_completed_checkpoint(self.cache, job.key)
        rec = self.cache.checkpoints.get(f"{job.namespace}/{latest[0]}") if latest else None
        uris = [a.get("uri", "") for a in (rec.status.get("artifacts") or ())] if rec is not None else []
        if not uris:
            return None
        return (KWOK_NODE if any(u.startswith(SIM_URI_PREFIX) for u in uris) else REAL_NODE), rec.name if rec else ""

    def admissible(self, job: JobRecord) -> Fit:
        """Whether a waiting job may be queued, and on which kind of node (pure over the cache)."""
        if job.spec is None or job.spec.checkpoint.mode in ("None", "Simulated"):
            return Fit()
        kinds = [k for k in (REAL_NODE, KWOK_NODE) if k in self.cache.present_kinds()]
        if not kinds:
            return Fit()  # no nodes: nothing to decide yet
        res = {k: self.on_kind(job, k) for k in kinds}
        restore = self._restore_kind(job)
        if restore is not None:
            where, ckpt = restore
            for k in kinds:
                if k != where and res[k].available:
                    res[k] = unavailable("CheckpointOnOtherNodeKind",
                                         f"it resumes from checkpoint {ckpt}, taken on {where} nodes: it restores only "
                                         f"there, and the cluster has none")
        usable = [k for k in kinds if res[k].available]
        if not usable:
            return Fit(refused=(res[kinds[0]].reason, res[kinds[0]].message))
        if len(usable) == len(kinds):
            return Fit()
        return Fit(only_kind=usable[0])

    def resolve(self, job: JobRecord, nodes: Iterable[str]) -> Resolution:
        """What checkpoints the job's pods placed on `nodes`, or why nothing can."""
        if job.spec is None or job.spec.checkpoint.mode == "None":
            return NOT_CHECKPOINTABLE
        if job.spec.checkpoint.mode == "Simulated":
            return self.on_kind(job, REAL_NODE)
        names = set(nodes)
        kinds = {self.cache.nodes[n].kind for n in names if n in self.cache.nodes}
        if len(kinds) > 1:
            return unavailable("MixedNodeKinds", "the job's pods were placed on both kwok and real nodes: one "
                               "checkpoint must cover all of them, and no backend serves both")
        if not kinds:
            return unavailable("NodesGone", f"the job's nodes ({', '.join(sorted(names))}) are gone")
        return self.on_kind(job, kinds.pop())

    def _placed_nodes(self, job: JobRecord) -> list[str]:
        return [node for _, _, node in self._placed(job)]

    def for_job(self, job: JobRecord) -> CheckpointBackend:
        """The backend that checkpoints the job's current run: from where its pods run and how they were
        started (a run started under ckq-run stays checkpointed by it whatever the settings say since)."""
        res = self.resolve(job, self._placed_nodes(job))
        if res.reason == "Simulated":
            return self.simulated
        attempt = int(job.status.get("attempt") or 0)
        pods = [p for p in self.cache.job_pods(job.key) if p.attempt == attempt]
        if pods and all(p.injected for p in pods):
            # How ckq-run was started in them (a pod annotation), not the job's mode now: it may have changed.
            return self._signal if all(p.ckq_run_mode == "Signal" for p in pods) else self._criu
        if res.backend in (self._criu, self._signal) and pods:
            plain = next(p.name for p in pods if not p.injected)
            return Unavailable(unavailable("NotUnderCkqRun", f"pod {plain} was not started under ckq-run: "
                                           "nothing on its node can dump it"))
        if res.backend is not None:
            return res.backend
        return Unavailable(res if not res.available else unavailable("NotCheckpointable", "not checkpointable"))

    def launch_backend(self, job: JobRecord) -> CheckpointBackend:
        """The backend that starts the pods of the job's current admission."""
        res = self.resolve(job, self._placed_nodes(job))
        if res.backend is not None:
            return res.backend
        if not res.available:
            return Unavailable(res)
        return self.simulated  # not checkpointable: pods start as written (kwok run time only)

    # ---- describing the job -----------------------------------------------------------------------

    def _pod(self, job: JobRecord, pod_set: str, index: int, node: str) -> PodRef:
        assert job.spec is not None
        ps = next((p for p in job.spec.pod_sets if p.name == pod_set), None)
        containers = tuple(c.name for c in ps.template.spec.containers) if ps is not None else ()
        req = job.requests.get(pod_set) or {}
        return PodRef(pod_name(job.name, int(job.status.get("attempt") or 0), pod_set, index), pod_set, index,
                      node, containers, req.get("memory", 0) // 1000, req.get(GPU, 0) // 1000)

    def _placed(self, job: JobRecord) -> list[tuple[dict[str, Any], int, str]]:
        """(assignment, index, node) of every pod of the job's admission whose pod set exists."""
        assert job.spec is not None
        sets = {ps.name for ps in job.spec.pod_sets}
        return [(a, i, node) for a in (job.status.get("admission") or {}).get("podSetAssignments") or ()
                if a["name"] in sets for i, node in enumerate(a.get("nodes") or ())]

    def pod_refs(self, job: JobRecord) -> list[PodRef]:
        """The pods of the job's current run, as its admission placed them."""
        return [self._pod(job, a["name"], i, node) for a, i, node in self._placed(job)]

    def estimate(self, job: JobRecord) -> tuple[float, float]:
        """(checkpoint, restore) seconds the job's backend expects, until one is measured."""
        if job.spec is None:
            return 0.0, 0.0
        refs = self.pod_refs(job)
        if refs:
            backend = self.for_job(job)
        else:  # not placed yet: one pod per pod set stands for its size, on the kind it would run on
            refs = [PodRef("", ps.name, 0, "", (), (job.requests.get(ps.name) or {}).get("memory", 0) // 1000)
                    for ps in job.spec.pod_sets]
            real = self.on_kind(job, REAL_NODE) if REAL_NODE in self.cache.present_kinds() else None
            backend = real.backend if real is not None and real.backend is not None else self.simulated
        return backend.estimate(refs, policy=job.spec.checkpoint)

    def request(self, ckpt: CheckpointRecord, job: JobRecord, now: float) -> CheckpointRequest:
        """What the backend is asked to do for `ckpt` (the same request after a controller restart)."""
        assert job.spec is not None
        start = parse_time(ckpt.status.get("startTime")) or now
        policy = job.spec.checkpoint
        return CheckpointRequest(job.namespace, job.name, ckpt.name, ckpt.reason, ckpt.leave_running,
                                 tuple(self.pod_refs(job)), start, float(policy.timeout_seconds), policy,
                                 observed(ckpt))

    def pod_info(self, job: JobRecord, pod_set: str, index: int, node: str, restore: RestoreSource | None
                 ) -> PodInfo:
        """What the job's backend adds to a new pod of its current run (raises LaunchRefused or
        RestoreImpossible, see `checkpoint.base`)."""
        assert job.spec is not None
        if restore is not None:  # this pod's own images
            restore = RestoreSource(restore.checkpoint, tuple(a for a in restore.artifacts
                                                              if (a.pod_set, a.index) == (pod_set, index)))
        return self.launch_backend(job).pod_info(LaunchRequest(
            job.namespace, job.name, self._pod(job, pod_set, index, node), job.spec.checkpoint,
            float(job.status.get("runTimeSeconds") or 0.0), job.annotations, restore, self.encryption_key(job)))

    def encryption_key(self, job: JobRecord) -> EncryptionKey:
        """The key the job's images are encrypted with: its own, its LocalQueue's, or its namespace's
        default (checkpoint.base.encryption_key)."""
        assert job.spec is not None
        queue = self.cache.local_queues.get(f"{job.namespace}/{job.spec.queue_name}")
        return encryption_key(job.spec.checkpoint.encryption_key, job.spec.queue_name,
                              queue.encryption_key if queue is not None else None)
