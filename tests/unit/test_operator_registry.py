"""The backend registry through whole cycles: no silent fallback (a mode the cluster cannot serve is refused
with the CheckpointModeUnavailable condition and a Warning Event, and admitted once it can), simulated
checkpoints on kwok nodes saying so, CRIU on real nodes with the runtime injected, the node agents'
writes to Checkpoints, grace periods, exit code 75, restores, and finished jobs keeping their pods."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from queue_controller.engine import Admit, Resume
from queue_controller.operator.cache import Cache
from queue_controller.operator.controller import Controller
from queue_controller.operator.main import prime
from queue_controller.operator.settings import ClusterSettings
from queue_controller.operator.waiting import QUEUE_STATUS_INTERVAL_S
from queue_controller.wire import artifact_uri, container_store_dir, node_kind
from tests.unit.operator_world import CONFIG, TRAIN_COMMAND, World, make_world

pytestmark = pytest.mark.unit
CKQ_RUN = ["/ckq-runtime/bin/ckq-run", "--dir", "/ckq/checkpoints"]  # how a wrapped command starts
EXIT_NOTE = ["--exit-note", "/dev/termination-log"]  # ckq-run's last options (runtime/exits.py)

CRIU = {"mode": "CRIU", "container": {"command": TRAIN_COMMAND}}
SIGNAL = {"mode": "Signal", "container": {"command": TRAIN_COMMAND}}
POD_PATH = "/api/v1/namespaces/team/pods/"


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


async def running(w: World, job: str) -> None:
    await w.cycle()
    w.server.run_pods(job)
    await w.cycle()  # the controller first sees the pods running
    await w.cycle(1)
    assert w.phase(job) == "Running", w.server.status(job)


def mode_condition(w: World, job: str) -> tuple[str, str, str]:
    c = w.server.conditions(job)["CheckpointModeUnavailable"]
    return c["status"], c["reason"], c["message"]


def warnings(w: World, job: str, reason: str = "CheckpointModeUnavailable") -> list[str]:
    return [e["message"] for e in w.server.events
            if e["involvedObject"]["name"] == job and e["reason"] == reason and e["type"] == "Warning"]


def agent_dumps(w: World, checkpoint: str, job: str, size: int = 1000, **status: Any) -> None:
    """What the node agents write: one artifact per container of every pod of the run, in the store."""
    arts = []
    for pod in w.server.pods(job):
        labels = pod["metadata"]["labels"]
        for c in pod["spec"]["containers"]:
            d = container_store_dir(CONFIG["storeHostPath"], "team", job, labels["ckq.io/pod-set"],
                                    int(labels["ckq.io/pod-index"]), c["name"])
            arts.append({"podSet": labels["ckq.io/pod-set"], "index": int(labels["ckq.io/pod-index"]),
                         "container": c["name"], "node": pod["spec"]["nodeName"],
                         "uri": artifact_uri(d, f"{checkpoint}-{c['name']}"), "sha256": "0" * 64, "sizeBytes": size})
    w.server.patch_checkpoint(checkpoint, {"artifacts": arts, **status})


def grace_of(w: World, pod: str) -> Any:
    (body,) = [b for p, b in w.server.deletes if p == POD_PATH + pod]
    return None if body is None else body["gracePeriodSeconds"]


# ---- kwok nodes: simulated, and saying so ----------------------------------------------------------


def test_on_kwok_nodes_every_mode_is_simulated_and_the_status_says_so() -> None:
    async def scenario() -> None:
        w = make_world("iass", nodes=0, kwok_nodes=1)
        w.submit("train", mode="CRIU")  # the default mode; no ConfigMap needed on kwok nodes
        await running(w, "train")
        (pod,) = w.server.pods("train")
        assert "initContainers" not in pod["spec"] and pod["spec"]["containers"][0].get("command") is None
        assert pod["metadata"]["annotations"]["kwok.ckq.io/run-seconds"] == "100"
        assert mode_condition(w, "train") == ("False", "Simulated", "checkpoints are simulated: the job runs on "
                                              "kwok nodes, where no process exists")
        assert w.server.status("train")["message"] == ("all pods running; checkpoints are simulated: the job runs "
                                                       "on kwok nodes, where no process exists")
        w.submit("urgent", priority=100, mode="Signal")
        await w.cycle(4)
        await w.cycle(5)
        (ckpt,) = w.server.checkpoints("train")
        assert (ckpt["status"]["phase"], ckpt["status"]["message"]) == ("Completed", "simulated: no process was dumped")
        await w.cycle()
        assert w.phase("train") == "Suspended" and w.phase("urgent") == "Admitted"
        assert not w.server.events or all(e["reason"] != "CheckpointModeUnavailable" for e in w.server.events)

    run(scenario)


# ---- refused: no silent fallback --------------------------------------------------------------------


def test_criu_without_the_configmap_is_refused_then_admitted_once_it_appears() -> None:
    async def scenario() -> None:
        w = make_world("iass", kind="real")
        w.submit("train", **CRIU)
        d = await w.cycle()
        assert d.actions == [] and w.server.pods("train") == []
        st = w.server.status("train")
        assert st["phase"] == "Pending" and st["pendingReason"] == "CheckpointModeUnavailable"
        why = ("checkpoint mode CRIU is unavailable on real nodes: ConfigMap ckq-system/ckq-config does not give "
               "storeHostPath and runtimeImage (ConfigMap ckq-system/ckq-config does not exist): CRIU checkpoints "
               "need the checkpoint store and the runtime image it names")
        assert st["message"] == why
        assert mode_condition(w, "train") == ("True", "StoreNotConfigured", why)
        assert w.server.conditions("train")["QuotaReserved"]["reason"] == "CheckpointModeUnavailable"
        assert warnings(w, "train") == [why]
        await w.cycle(5)
        assert len(warnings(w, "train")) == 1  # said once, not every cycle
        # The controller wakes up to read the ConfigMap again, and admits the job once it is there.
        assert w.controller.next_wakeup == w.controller.settings.next_refresh()
        w.configure(CONFIG)
        await w.cycle(10)
        assert w.phase("train") == "Pending"  # not read again yet (every 30 s)
        d = await w.cycle(15)
        assert [type(a) for a in d.actions] == [Admit]
        assert mode_condition(w, "train") == ("False", "CRIU", "checkpoints by CRIU: ckq-run in every container, "
                                              "driven by the node agents")
        (pod,) = w.server.pods("train")
        assert pod["spec"]["initContainers"][0]["image"] == "ckq.local/runtime:0.1.0"

    run(scenario)


@pytest.mark.parametrize(("mode", "reason", "why"), [
    ("Kubelet", "KubeletCheckpointUnsupported", "checkpoint mode Kubelet is unavailable on real nodes: the nodes' "
     "container runtime (containerd://1.6.20) has no CRI checkpoint; Kubelet mode needs containerd >= 2.0"),
])
def test_modes_not_wired_are_refused_on_real_nodes_with_the_reason(mode: str, reason: str, why: str) -> None:
    async def scenario() -> None:
        w = make_world("iass", kind="real", config=CONFIG)
        w.submit("app", mode=mode, container={"command": TRAIN_COMMAND})
        await w.cycle()
        assert w.server.status("app")["pendingReason"] == "CheckpointModeUnavailable"
        assert mode_condition(w, "app") == ("True", reason, why)
        assert warnings(w, "app") == [why]
        # Modes that need no backend are served anywhere.
        w.submit("plain", mode="None")
        w.submit("sim", mode="Simulated")
        await w.cycle()
        assert w.phase("plain") == "Admitted" and w.phase("sim") == "Pending"  # quota: waits, not refused
        assert w.server.status("sim")["pendingReason"] != "CheckpointModeUnavailable"

    run(scenario)


def test_a_template_ckq_run_cannot_run_is_refused_on_real_nodes_and_placed_on_kwok_ones() -> None:
    async def scenario() -> None:
        w = make_world("iass", kind="real", config=CONFIG)
        w.submit("noentry", mode="CRIU")  # no command
        await w.cycle()
        status, reason, why = mode_condition(w, "noentry")
        assert (status, reason) == ("True", "PodTemplateNotCheckpointable")
        assert why == ("checkpoint mode CRIU cannot run this job's pods under ckq-run: pod set 'worker': container "
                       "'train' has no explicit command: ckq-run must start it, and the image's entrypoint is not "
                       "known without asking its registry (set command, and args if any)")
        # Fixed by its user: queued again, the condition turned False.
        w.server.update_spec("checkpointablejobs", "team", "noentry", podSets=[
            {**w.server.get("checkpointablejobs", "noentry")["spec"]["podSets"][0], "template": {"spec": {
                "containers": [{"name": "train", "image": "x", "command": TRAIN_COMMAND,
                                "resources": {"requests": {"cpu": "1", "nvidia.com/gpu": "8"}}}]}}}])
        await w.cycle(1)
        assert w.phase("noentry") == "Admitted" and mode_condition(w, "noentry")[:2] == ("False", "CRIU")

        # With kwok nodes beside the real ones, the same job runs there, simulated.
        m = make_world("iass", kind="real", kwok_nodes=1, config=CONFIG, quota_gpus=16)
        m.submit("noentry", mode="CRIU")
        await m.cycle()
        st = m.server.status("noentry")
        assert st["admission"]["podSetAssignments"][0]["nodes"] == ["k0"]
        assert mode_condition(m, "noentry")[:2] == ("False", "Simulated")

    run(scenario)


def test_without_the_configmap_criu_jobs_go_to_kwok_nodes_only() -> None:
    async def scenario() -> None:
        w = make_world("iass", kind="real", kwok_nodes=1, quota_gpus=16)
        w.submit("a", **CRIU)
        w.submit("b", **CRIU)
        await w.cycle()
        assert w.server.status("a")["admission"]["podSetAssignments"][0]["nodes"] == ["k0"]
        st = w.server.status("b")  # the real node is free, but nothing there could checkpoint it
        assert st["phase"] == "Pending" and st["pendingReason"] != "CheckpointModeUnavailable"

    run(scenario)


def test_a_gang_placed_across_node_kinds_is_refused_before_it_takes_quota() -> None:
    async def scenario() -> None:
        w = make_world("iass", kind="real", kwok_nodes=1, config=CONFIG, quota_gpus=16)
        w.submit("gang", pods=2, **CRIU)  # one pod fits per node: one real, one kwok
        d = await w.cycle()
        assert [type(a) for a in d.actions] == [Admit]
        st = w.server.status("gang")
        assert st["phase"] == "Pending" and "admission" not in st and w.server.pods("gang") == []
        assert mode_condition(w, "gang")[:2] == ("True", "MixedNodeKinds")
        assert len(warnings(w, "gang")) == 1
        requests = len(w.server.log)
        await w.cycle(1)  # the same placement again: nothing written, nothing said twice
        assert len(warnings(w, "gang")) == 1 and w.server.log[requests:] == []

    run(scenario)


@pytest.mark.parametrize(("job", "config", "reason", "why"), [
    (SIGNAL, None, "StoreNotConfigured", "checkpoint mode Signal is unavailable on real nodes: ConfigMap "
     "ckq-system/ckq-config does not give storeHostPath and runtimeImage (ConfigMap ckq-system/ckq-config does not "
     "exist): Signal checkpoints need the checkpoint store and the runtime image it names"),
    ({**SIGNAL, "container": {"command": TRAIN_COMMAND, "securityContext": {"runAsNonRoot": True}}}, CONFIG,
     "PodTemplateNotCheckpointable", "checkpoint mode Signal cannot run this job's pods under ckq-run: pod set "
     "'worker': container 'train' sets runAsNonRoot: true, but Signal mode needs root in the container (ckq-run "
     "writes the checkpoint directory, a hostPath owned by root)"),
    ({**SIGNAL, "checkpoint": {"signal": "SIGKILL"}}, CONFIG, "SignalUnusable", "checkpoint mode Signal is "
     "unavailable: spec.checkpoint.signal 'SIGKILL' (SIGKILL) cannot ask for a checkpoint: a process cannot catch it"),
    ({**SIGNAL, "checkpoint": {"signal": "SIGNOPE"}}, CONFIG, "SignalUnusable", "checkpoint mode Signal is "
     "unavailable: spec.checkpoint.signal 'SIGNOPE' is not a signal of this system"),
])
def test_signal_mode_is_refused_on_real_nodes_only_where_it_cannot_run(
        job: dict[str, Any], config: dict[str, str] | None, reason: str, why: str) -> None:
    async def scenario() -> None:
        w = make_world("iass", kind="real", config=config)
        w.submit("app", **job)
        await w.cycle()
        assert w.server.status("app")["pendingReason"] == "CheckpointModeUnavailable"
        assert mode_condition(w, "app") == ("True", reason, why)
        assert warnings(w, "app") == [why] and w.server.pods("app") == []

    run(scenario)


# ---- CRIU and Signal on real nodes, through the node agents --------------------------------------------


def test_signal_preemption_checkpoint_through_the_agents_without_privileges_and_restore() -> None:
    """Signal mode runs the same machinery as CRIU (runtime injected, agents dump over ckq-run's socket,
    artifacts in the status), with ckq-run in signal mode, no capability added and the template's seccomp
    profile kept."""
    async def scenario() -> None:
        w = make_world("iass", kind="real", config={**CONFIG, "deleteGraceSeconds": "45"})
        locked = {"capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
                  "allowPrivilegeEscalation": False}
        w.submit("train", pods=1, gpus=4, checkpoint={"signal": "12", "timeoutSeconds": 60},
                 **{**SIGNAL, "container": {"command": TRAIN_COMMAND, "securityContext": locked}})
        await running(w, "train")
        (pod,) = w.server.pods("train")
        c = pod["spec"]["containers"][0]
        signal_args = ["--mode", "signal", "--signal", "SIGUSR2", "--signal-timeout", "30", "--pid-base", "0"]
        key = ["--default-key-file", "/var/run/ckq/encryption/key"]  # the namespace's default key, optional
        assert c["command"] == [*CKQ_RUN, *signal_args, *key, *EXIT_NOTE, "--",
                                "python", "train.py"]
        assert c["securityContext"] == {**locked, "runAsUser": 0}  # nothing added but root
        assert pod["spec"]["initContainers"][0]["name"] == "ckq-runtime"
        assert pod["metadata"]["annotations"]["ckq.io/ckq-run-mode"] == "Signal"
        assert mode_condition(w, "train") == ("False", "Signal", "checkpoints by signal: the application saves its "
                                              "own state when ckq-run sends it SIGUSR2, driven by the node agents")
        w.submit("urgent", priority=100, gpus=8, mode="None")
        await w.cycle(10)
        (ckpt,) = w.server.checkpoints("train")
        name = ckpt["metadata"]["name"]
        assert ckpt["status"]["phase"] == "Running" and w.phase("train") == "Checkpointing"
        # The app saved, got SIGTERM and exited: ckq-run's 75 is no failure.
        w.server.exit_pods("train", 75, ckq_run=True)
        await w.cycle(1)
        assert w.phase("train") == "Checkpointing" and "Restarting" not in w.server.event_reasons("train")
        agent_dumps(w, name, "train", size=300)
        await w.cycle(1)
        st = w.server.get("checkpoints", name)["status"]
        assert st["phase"] == "Completed" and st["sizeBytes"] == 300
        assert st["message"] == "Signal: 1 container(s) saved by the application, through ckq-run"
        assert w.phase("train") == "Suspended"
        assert grace_of(w, "train-1-worker-0") == 0  # its state is saved: nothing the app still does is needed
        await running(w, "urgent")
        w.server.finish_pods("urgent")
        d = await w.cycle(1)
        assert [type(a) for a in d.actions] == [Resume]
        (pod,) = w.server.pods("train")
        assert pod["metadata"]["name"] == "train-2-worker-0"
        assert pod["spec"]["containers"][0]["command"] == [
            *CKQ_RUN, *signal_args, *key, "--restore",
            f"{name}-train", *EXIT_NOTE, "--", "python", "train.py"]
        assert pod["metadata"]["annotations"]["ckq.io/restore-from"] == name

    run(scenario)


def test_an_app_that_does_not_ack_fails_its_periodic_checkpoint_saying_so_and_runs_on() -> None:
    async def scenario() -> None:
        w = make_world("iass", kind="real", config=CONFIG)
        w.submit("train", checkpoint={"interval": "10s", "timeoutSeconds": 20}, **SIGNAL)
        await running(w, "train")
        command = w.server.pods("train")[0]["spec"]["containers"][0]["command"]
        assert command[command.index("--signal-timeout") + 1] == "10"  # timeoutSeconds less a margin
        await w.cycle(10)
        (ckpt,) = w.server.checkpoints("train")
        why = ("pod team/train-1-worker-0 container train on node n0: ckq-run: the workload did not acknowledge "
               "SIGUSR1 within 10s (it must write its state to stateDir and create ackFile, see "
               "/ckq/checkpoints/ckq-request.json)")  # what the agent records
        w.server.patch_checkpoint(ckpt["metadata"]["name"], {"phase": "Failed", "message": why})
        await w.cycle(1)
        st = w.server.status("train")
        assert st["phase"] == "Running" and st["checkpointFailures"] == 1
        assert warnings(w, "train", "CheckpointFailed") == [f"checkpoint {ckpt['metadata']['name']} failed: {why}"]

    run(scenario)


# ---- CRIU on real nodes, through the node agents ------------------------------------------------------


def test_criu_preemption_checkpoint_through_the_agents_grace_zero_and_restore() -> None:
    async def scenario() -> None:
        w = make_world("iass", kind="real", config={**CONFIG, "deleteGraceSeconds": "45"})
        w.submit("train", pods=1, gpus=4, **CRIU)
        await running(w, "train")
        (pod,) = w.server.pods("train")
        c = pod["spec"]["containers"][0]
        # No key set: the namespace's default key Secret, mounted optional (encrypted when it exists).
        key = ["--default-key-file", "/var/run/ckq/encryption/key"]
        assert c["command"] == [*CKQ_RUN, *key, *EXIT_NOTE, "--", "python",
                                "train.py"]
        assert {"name": "ckq-encryption-key", "secret": {"secretName": "ckq-checkpoint-key", "defaultMode": 0o400,
                                                         "optional": True}} in pod["spec"]["volumes"]
        assert pod["spec"]["volumes"][-1] == {"name": "ckq-ckpt-train", "hostPath": {
            "path": "/var/lib/ckq/store/team/train/worker-0/train", "type": "DirectoryOrCreate"}}
        assert pod["spec"]["affinity"]["nodeAffinity"]  # still pinned by the controller
        assert "kwok.ckq.io/run-seconds" not in pod["metadata"]["annotations"]
        assert w.server.status("train")["message"].endswith("checkpoints by CRIU: ckq-run in every container, "
                                                            "driven by the node agents")
        w.submit("urgent", priority=100, gpus=8, mode="None")
        await w.cycle(10)
        (ckpt,) = w.server.checkpoints("train")
        name = ckpt["metadata"]["name"]
        assert ckpt["metadata"]["labels"] == {"ckq.io/job-name": "train", "ckq.io/attempt": "1"}
        assert ckpt["status"]["phase"] == "Running" and w.phase("train") == "Checkpointing"
        await w.cycle(3)
        assert w.phase("train") == "Checkpointing"  # the agents have written nothing yet
        # ckq-run stops the workload after the dump: the pod exits 75, which is no failure.
        w.server.exit_pods("train", 75, ckq_run=True)
        await w.cycle(1)
        assert w.phase("train") == "Checkpointing" and "Restarting" not in w.server.event_reasons("train")
        agent_dumps(w, name, "train", size=3000, restoreConstraints={"nodeLabels": {"kubernetes.io/arch": "amd64"}})
        await w.cycle(1)
        ckpt = w.server.get("checkpoints", name)["status"]
        assert ckpt["phase"] == "Completed" and ckpt["sizeBytes"] == 3000 and ckpt["durationSeconds"] == 5.0
        assert ckpt["message"] == "CRIU: 1 container(s) dumped by ckq-run" and ckpt["completionTime"]
        assert ckpt["restoreConstraints"]["nodeLabels"] == {"kubernetes.io/arch": "amd64",  # the agent's, kept
                                                            "nvidia.com/gpu.product": "NVIDIA-H100"}
        assert w.phase("train") == "Suspended"
        assert grace_of(w, "train-1-worker-0") == 0  # stopped by the dump: no grace needed
        await running(w, "urgent")
        w.server.finish_pods("urgent")
        d = await w.cycle(1)
        assert [type(a) for a in d.actions] == [Resume]
        (pod,) = w.server.pods("train")
        assert pod["metadata"]["name"] == "train-2-worker-0"
        assert pod["spec"]["containers"][0]["command"] == [
            *CKQ_RUN, *key, "--restore", f"{name}-train", *EXIT_NOTE, "--",
            "python", "train.py"]
        assert w.server.pods("urgent")  # a finished job keeps its pods

    run(scenario)


def test_a_failure_reported_by_an_agent_follows_the_policy_and_is_acknowledged() -> None:
    async def scenario() -> None:
        w, name = await checkpointing_criu()
        w.server.patch_checkpoint(name, {"phase": "Failed", "message": "n0: CRIU dump failed: see dump.log"})
        await w.cycle(1)
        st = w.server.get("checkpoints", name)["status"]
        assert st["phase"] == "Failed" and st["completionTime"]
        assert st["message"] == "n0: CRIU dump failed: see dump.log"
        job = w.server.status("train")  # iass: onCheckpointFailure Kill
        assert job["phase"] == "Pending" and job["checkpointFailures"] == 1 and job["lostRunTimeSeconds"] == 12.0
        assert warnings(w, "train", "CheckpointFailed") == [f"checkpoint {name} failed: n0: CRIU dump failed: "
                                                            "see dump.log"]
        assert grace_of(w, "train-1-worker-0") == 30  # killed: its processes get their SIGTERM and grace
        await w.cycle(1)
        assert len(warnings(w, "train", "CheckpointFailed")) == 1  # applied once

    run(scenario)


def test_a_pod_that_dies_before_the_agents_freeze_it_fails_the_checkpoint_at_once() -> None:
    """ckq-run SIGKILLed before any agent froze its container: no agent acts on a dead container, so the
    controller fails the checkpoint itself rather than leave the job Checkpointing until the timeout
    (the chaos trial ckq-run-kill, seed 1, waited 300 s so)."""
    async def scenario() -> None:
        w, name = await checkpointing_criu()
        w.server.exit_pods("train", 137)  # killed: no exit note of ckq-run's
        await w.cycle(1)
        st = w.server.get("checkpoints", name)["status"]
        why = ("pod train-1-worker-0 failed (exit code 137) before container(s) train could be frozen or dumped: "
               "their processes are gone, so no node agent can checkpoint them")
        assert st["phase"] == "Failed" and st["message"] == why and st["completionTime"]
        job = w.server.status("train")  # iass: onCheckpointFailure Kill
        assert job["phase"] == "Pending" and job["checkpointFailures"] == 1
        assert warnings(w, "train", "CheckpointFailed") == [f"checkpoint {name} failed: {why}"]

    run(scenario)


def test_beginning_a_checkpoint_never_writes_over_what_an_agent_already_wrote() -> None:
    """Agents act on Pending Checkpoints too: one froze, dumped and failed a checkpoint before the
    controller's begin landed, whose unconditional merge patch put it back to Running — a checkpoint no
    agent works on, holding the job's next periodic one back until the timeout (e2e store read-only, CI).
    The begin is written only onto the version the controller saw."""
    async def scenario() -> None:
        w = make_world("iass", kind="real", config=CONFIG)
        w.submit("train", **CRIU)
        await running(w, "train")
        w.server.create("checkpoints", {"apiVersion": "ckq.io/v1alpha1", "kind": "Checkpoint",
                                        "metadata": {"name": "mine"},
                                        "spec": {"jobName": "train", "reason": "User", "leaveRunning": True}}, "team")
        w.server.deliver(w.cache)  # the controller sees it Pending ...
        why = "pod team/train-1-worker-0 container train on node n0: ckq-run: internal error: Read-only file system"
        w.server.patch_checkpoint("mine", {"phase": "Failed", "message": why, "startTime": "2026-01-01T00:00:00Z"})
        await w.controller.cycle()  # ... and begins it before it sees the agent's write
        st = w.server.get("checkpoints", "mine")["status"]
        assert st["phase"] == "Failed" and st["message"] == why, st
        await w.cycle(1)
        st = w.server.get("checkpoints", "mine")["status"]
        assert st["phase"] == "Failed" and st["completionTime"]
        assert w.server.status("train")["checkpointFailures"] == 1 and w.phase("train") == "Running"

    run(scenario)


def test_a_pod_that_dies_once_frozen_is_left_to_the_agents_to_report() -> None:
    """A container already frozen for the checkpoint is its agent's: the dump's own failure says more."""
    async def scenario() -> None:
        w, name = await checkpointing_criu()
        w.server.patch_checkpoint(name, {"frozen": [{"podSet": "worker", "index": 0, "container": "train",
                                                      "node": "n0", "frozenAt": "2026-01-01T00:00:00Z"}]})
        w.server.exit_pods("train", 137)
        await w.cycle(1)
        assert w.server.get("checkpoints", name)["status"]["phase"] == "Running"
        assert w.phase("train") == "Checkpointing"

    run(scenario)


def test_a_periodic_checkpoint_an_agent_failed_is_counted_and_the_job_runs_on() -> None:
    async def scenario() -> None:
        w = make_world("iass", kind="real", config=CONFIG)
        w.submit("train", checkpoint={"interval": "10s"}, **CRIU)
        await running(w, "train")
        await w.cycle(10)
        (ckpt,) = w.server.checkpoints("train")
        assert ckpt["spec"]["leaveRunning"]
        w.server.patch_checkpoint(ckpt["metadata"]["name"], {"phase": "Failed", "message": "socket gone"})
        await w.cycle(1)
        st = w.server.status("train")
        assert st["phase"] == "Running" and st["checkpointFailures"] == 1
        assert w.server.get("checkpoints", ckpt["metadata"]["name"])["status"]["completionTime"]

    run(scenario)


def test_a_checkpoint_past_its_timeout_is_cancelled_for_the_agents_and_says_why() -> None:
    async def scenario() -> None:
        w = make_world("iass", kind="real", config=CONFIG)
        w.submit("train", checkpoint={"timeoutSeconds": 20}, **CRIU)
        await running(w, "train")
        w.submit("urgent", priority=100, mode="None")
        await w.cycle(1)
        await w.cycle(20)
        (ckpt,) = w.server.checkpoints("train")
        assert ckpt["status"]["phase"] == "Failed" and ckpt["status"]["message"] == "timed out after 20s"
        cancels = [p for m, p in w.server.log if m == "PATCH" and p.endswith(f"/checkpoints/{ckpt['metadata']['name']}"
                                                                                "/status")]
        assert len(cancels) == 3  # Running, the backend's cancel (Failed), the controller's result

    run(scenario)


def test_a_checkpoint_missing_an_image_fails_its_restore_and_the_job_falls_back() -> None:
    async def scenario() -> None:
        w = make_world("iass", kind="real", config=CONFIG)
        w.submit("train", checkpoint={"interval": "10s", "retain": 3}, **CRIU)
        await running(w, "train")
        await w.cycle(10)
        (periodic,) = w.server.checkpoints("train")
        agent_dumps(w, periodic["metadata"]["name"], "train")
        await w.cycle(1)
        assert w.server.status("train")["checkpoints"] == 1
        w.server.update_spec("checkpointablejobs", "team", "train", suspend=True)
        await w.cycle(1)
        user = next(c for c in w.server.checkpoints("train") if c["spec"]["reason"] == "User")["metadata"]["name"]
        agent_dumps(w, user, "train")
        await w.cycle(1)
        assert w.phase("train") == "Suspended" and w.server.status("train")["lastCheckpoint"]["name"] == user
        w.server.patch_checkpoint(user, {"artifacts": []})  # its image is lost
        w.server.update_spec("checkpointablejobs", "team", "train", suspend=False)
        await w.cycle(1)
        st = w.server.status("train")
        assert st["phase"] == "Pending" and st["lastCheckpoint"]["name"] == periodic["metadata"]["name"]
        assert st["runTimeSeconds"] == 11.0 and st["lostRunTimeSeconds"] == 2.0  # 13 s kept by the lost one
        failed = w.server.get("checkpoints", user)["status"]
        assert failed["phase"] == "Failed" and failed["message"] == (
            f"cannot be restored: checkpoint {user} has no image of container(s) train of pod worker-0")
        assert warnings(w, "train", "RestoreFailed") == [
            f"checkpoint {user} has no image of container(s) train of pod worker-0; falls back to checkpoint "
            f"{periodic['metadata']['name']}"]
        await w.cycle(1)  # resumed from the one before
        (pod,) = [p for p in w.server.pods("train") if p["metadata"]["labels"]["ckq.io/attempt"] == "3"]
        assert f"{periodic['metadata']['name']}-train" in pod["spec"]["containers"][0]["command"]

    run(scenario)


def test_pods_an_admitted_job_still_needs_are_refused_when_its_backend_went_away() -> None:
    async def scenario() -> None:
        w = make_world("iass", kind="real", config=CONFIG)
        w.submit("train", **CRIU)
        await w.cycle()
        assert w.phase("train") == "Admitted"
        # Its pod is gone before it ran, and so is the ConfigMap.
        w.server.delete("pods", "team", "train-1-worker-0")
        w.configure(None)
        await w.cycle(30)
        st = w.server.status("train")
        assert st["phase"] == "Pending" and "admission" not in st and w.server.pods("train") == []
        assert st["pendingReason"] == "CheckpointModeUnavailable"
        assert mode_condition(w, "train")[:2] == ("True", "StoreNotConfigured")
        assert len(warnings(w, "train")) == 1
        await w.cycle(1)
        assert len(warnings(w, "train")) == 1 and w.phase("train") == "Pending"

    run(scenario)


def test_a_restarted_controller_applies_a_result_written_before_it_died() -> None:
    async def scenario() -> None:
        w, name = await checkpointing_criu()
        # The old controller wrote Completed and died before suspending the job.
        agent_dumps(w, name, "train")
        w.server.patch_checkpoint(name, {"phase": "Completed", "completionTime": "2026-09-21T00:00:30Z",
                                         "durationSeconds": 2.0, "sizeBytes": 1000})
        cache = Cache()
        w.cache, w.controller = cache, Controller(cache, w.kube, w.controller.policy, w.controller.backends,
                                                  clock=w.clock)
        await prime(cache, w.kube)
        w.server.pending.clear()
        await w.cycle(1)
        st = w.server.status("train")
        assert st["phase"] == "Suspended" and st["lastCheckpoint"]["name"] == name and st["checkpoints"] == 1
        assert grace_of(w, "train-1-worker-0") == 0

    run(scenario)


# ---- grace, exit codes, finished pods -----------------------------------------------------------------


def test_pods_are_deleted_with_a_grace_period_unless_a_dump_stopped_them() -> None:
    async def scenario() -> None:
        w = make_world("kueue", kind="real", config={**CONFIG, "deleteGraceSeconds": "45"})
        w.submit("victim", mode="Simulated")
        w.submit("own", mode="None", container={"command": TRAIN_COMMAND}, gpus=0)
        w.server.update_spec("checkpointablejobs", "team", "own", podSets=[{
            **w.server.get("checkpointablejobs", "own")["spec"]["podSets"][0], "template": {"spec": {
                "terminationGracePeriodSeconds": 120, "containers": [{"name": "c", "image": "x", "resources": {
                    "requests": {"cpu": "1"}}}]}}}])
        await running(w, "victim")
        w.server.run_pods("own")
        await w.cycle()  # the controller first sees the pods running
        await w.cycle(1)
        w.submit("urgent", priority=100)
        await w.cycle(1)  # kueue: killed
        assert grace_of(w, "victim-1-worker-0") == 45
        w.server.update_spec("checkpointablejobs", "team", "own", suspend=True)
        await w.cycle(1)
        assert grace_of(w, "own-1-worker-0") is None  # its own terminationGracePeriodSeconds applies

    run(scenario)


def test_a_simulated_dump_on_a_real_node_leaves_the_processes_their_grace() -> None:
    async def scenario() -> None:
        w = make_world("iass", kind="real")
        w.submit("sim", mode="Simulated")
        await running(w, "sim")
        w.submit("urgent", priority=100, mode="None")
        await w.cycle(4)
        await w.cycle(5)
        assert w.phase("sim") == "Suspended" and grace_of(w, "sim-1-worker-0") == 30

    run(scenario)


def test_exit_75_outside_a_checkpoint_is_a_failure_that_says_so() -> None:
    async def scenario() -> None:
        w = make_world("kueue", kind="real", config=CONFIG)
        w.submit("train", **CRIU)
        await running(w, "train")
        w.server.exit_pods("train", 75, ckq_run=True)
        await w.cycle(1)
        (msg,) = warnings(w, "train", "Restarting")
        assert msg == ("pod train-1-worker-0 failed (exit code 75: ckq-run stopped it after a dump the controller did "
                       "not ask for); restarts from the beginning")

    run(scenario)


def test_a_failed_job_keeps_its_finished_pods_for_their_logs() -> None:
    async def scenario() -> None:
        w = make_world("kueue", kind="real", config=CONFIG)
        w.submit("flaky", maxRestarts=0, pods=2, gpus=4, **CRIU)
        await running(w, "flaky")
        pod = w.server.pods("flaky")[0]
        w.server._set_pod_status(pod, {**pod["status"], "phase": "Failed", "containerStatuses": [
            {"name": "train", "state": {"terminated": {"exitCode": 3, "finishedAt": "2026-09-21T00:00:05Z"}}}]})
        await w.cycle(1)
        st = w.server.status("flaky")
        assert st["phase"] == "Failed" and "(exit code 3)" in st["message"]
        assert [p["metadata"]["name"] for p in w.server.pods("flaky")] == ["flaky-1-worker-0"]  # the failed one
        assert grace_of(w, "flaky-1-worker-1") == 30

    run(scenario)


# ---- pure parts ---------------------------------------------------------------------------------------


def test_the_configmap_is_read_with_its_problems_named() -> None:
    ok = ClusterSettings.from_config_map({**CONFIG, "deleteGraceSeconds": "10"})
    assert ok == ClusterSettings("ckq.local/runtime:0.1.0", "/var/lib/ckq/store", 10) and not ok.criu_unavailable()
    ready = ClusterSettings.from_config_map({"podsReadyTimeout": "2m", "requeueBackoffBase": "10s",
                                             "requeueBackoffMax": "35s", "requeueBackoffLimit": "3"})
    assert (ready.pods_ready_timeout_s, ready.backoff_limit, ready.problem) == (120.0, 3, "")
    assert [ready.requeue_delay(n) for n in (1, 2, 3, 4)] == [10.0, 20.0, 35.0, 35.0]
    wrong = ClusterSettings.from_config_map({"podsReadyTimeout": "ten minutes", "requeueBackoffLimit": "-2"})
    assert wrong.pods_ready_timeout_s == 600.0 and wrong.backoff_limit is None
    assert wrong.problem == ("podsReadyTimeout: 'ten minutes' is not a duration: use a number and a unit (h, m, s, "
                             "ms), such as '30m', '1h30m', '90s' or '500ms'; requeueBackoffLimit '-2' is not a whole "
                             "number >= 0")
    bad = ClusterSettings.from_config_map({"runtimeImage": "img", "storeHostPath": "relative/x",
                                           "deleteGraceSeconds": "-1"})
    assert bad.delete_grace_seconds == 30 and bad.store_host_path == ""
    assert bad.criu_unavailable() == (
        "ConfigMap ckq-system/ckq-config does not give storeHostPath (storeHostPath 'relative/x' is not an absolute "
        "path; deleteGraceSeconds '-1' is not a whole number of seconds >= 0): CRIU checkpoints need the checkpoint "
        "store and the runtime image it names")


def test_node_kinds() -> None:
    assert node_kind({}, {"kwok.x-k8s.io/node": "fake"}) == "kwok"
    assert node_kind({"ckq.io/node-kind": "kwok"}, {}) == "kwok"
    assert node_kind({"ckq.io/node-kind": "real"}, {}) == "real" == node_kind({}, {})


def test_pods_on_kwok_nodes_are_deleted_at_once() -> None:
    """No process runs on a kwok node: a pod left terminating for a grace period would only hold the
    node's room (a reservation that is due would then find it still busy)."""
    async def scenario() -> None:
        w = make_world("iass", kind="kwok")
        w.submit("sim", mode="Simulated")
        await running(w, "sim")
        w.submit("urgent", priority=100, mode="None")
        await w.cycle(4)
        await w.cycle(5)
        assert w.phase("sim") == "Suspended" and grace_of(w, "sim-1-worker-0") == 0

    run(scenario)


async def checkpointing_criu(**job: Any) -> tuple[World, str]:
    """A CRIU job "train" on a real node being checkpointed for "urgent": the Checkpoint's name."""
    w = make_world("iass", kind="real", config=CONFIG)
    w.submit("train", **{**CRIU, **job})
    await running(w, "train")
    w.submit("urgent", priority=100, **({"gpus": 8} if job else {}), mode="None")
    await w.cycle(10)
    (ckpt,) = w.server.checkpoints("train")
    return w, str(ckpt["metadata"]["name"])


async def suspended_by_criu(size: int) -> tuple[World, str]:
    """A CRIU job "train" preempted by "urgent", dumped by the agents (`size` bytes): Suspended."""
    w, name = await checkpointing_criu(pods=1, gpus=4)
    w.server.exit_pods("train", 75, ckq_run=True)
    agent_dumps(w, name, "train", size=size)
    await w.cycle(1)
    return w, name


def test_a_restore_ckq_run_refuses_fails_that_checkpoint_and_falls_back() -> None:
    """ckq-run verifies a checkpoint's images before it restores anything and exits 69 when they are
    corrupt: the job must not restart from the same checkpoint again, but from the one before it."""
    async def scenario() -> None:
        w, name = await suspended_by_criu(size=3000)
        assert w.phase("train") == "Suspended"
        await running(w, "urgent")
        w.server.finish_pods("urgent")
        await w.cycle(1)
        (pod,) = [p for p in w.server.pods("train") if p["metadata"]["name"] == "train-2-worker-0"]
        assert pod["metadata"]["annotations"]["ckq.io/restore-from"] == name
        w.server.run_pods("train")
        await w.cycle()  # the controller first sees the pods running
        await w.cycle(1)
        w.server.exit_pods("train", 69, ckq_run=True)  # ckq-run: "checkpoint ... is corrupted"
        await w.cycle(1)
        assert w.server.get("checkpoints", name)["status"]["phase"] == "Failed"
        st = w.server.status("train")
        assert st["phase"] in ("Pending", "Admitted")  # back in its queue (and here at once admitted again)
        assert "RestoreFailed" in w.server.event_reasons("train")
        assert st.get("restarts", 0) == 0  # not counted as a failure of the workload
        await w.cycle(1)
        third = [p for p in w.server.pods("train") if p["metadata"]["name"] == "train-3-worker-0"]
        assert third and "ckq.io/restore-from" not in (third[0]["metadata"].get("annotations") or {})
        assert "--restore" not in third[0]["spec"]["containers"][0]["command"]  # the only checkpoint is gone

    run(scenario)


def test_a_workload_exiting_with_ckq_runs_numbers_is_an_ordinary_failure() -> None:
    """ckq-run passes its workload's exit code through: a restored workload that exits 69 (sysexits
    EX_UNAVAILABLE) on its own, with no ckq-run note in its termination message, is a failure of the
    workload — restarted from the same checkpoint — not a checkpoint ckq-run refused (which would be
    failed, and the job sent back to an older one). Likewise 78 is not a missing key."""
    async def scenario() -> None:
        w, name = await suspended_by_criu(size=3000)
        await running(w, "urgent")
        w.server.finish_pods("urgent")
        await w.cycle(1)
        w.server.run_pods("train")
        await w.cycle()  # the controller first sees the pods running
        await w.cycle(1)
        w.server.exit_pods("train", 69)  # the workload's own exit: no note
        await w.cycle(1)
        assert w.server.get("checkpoints", name)["status"]["phase"] == "Completed"  # not failed
        st = w.server.status("train")
        assert st.get("restarts") == 1 and "RestoreFailed" not in w.server.event_reasons("train")
        await w.cycle(1)
        third = [p for p in w.server.pods("train") if p["metadata"]["name"] == "train-3-worker-0"]
        assert third and third[0]["metadata"]["annotations"]["ckq.io/restore-from"] == name
        w.server.run_pods("train")
        await w.cycle()  # the controller first sees the pods running
        await w.cycle(1)
        w.server.exit_pods("train", 78)
        await w.cycle(1)
        assert "EncryptionKeyUnavailable" not in w.server.event_reasons("train")
        assert w.server.status("train").get("restarts") == 2

    run(scenario)


def test_queues_report_the_checkpoint_bytes_their_jobs_keep() -> None:
    async def scenario() -> None:
        w, _ = await suspended_by_criu(size=3000)
        await w.cycle(QUEUE_STATUS_INTERVAL_S)  # the queues' next tally
        assert w.server.get("clusterqueues", "cq", namespace=None)["status"]["checkpointBytes"] == 3000
        assert w.server.get("localqueues", "main")["status"]["checkpointBytes"] == 3000

    run(scenario)


def test_the_store_mode_is_read_and_an_unknown_one_makes_criu_unavailable() -> None:
    assert not ClusterSettings.from_config_map(CONFIG).node_local_store  # shared unless said otherwise
    local = ClusterSettings.from_config_map({**CONFIG, "storeMode": "node-local"})
    assert local.node_local_store and local.criu_unavailable() == ""
    wrong = ClusterSettings.from_config_map({**CONFIG, "storeMode": "nfs"})
    assert "storeMode 'nfs' is not one of shared, node-local" in wrong.criu_unavailable()
