"""The controller's scheduling cycle against a fake API server and a fake clock: a job's whole life —
admit, checkpoint, suspend, resume, finish — plus failures, requeues, kills, user suspend and a restart,
each in milliseconds. The real control plane tiers (tests/integration, tests/e2e) keep what needs one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from queue_controller.checkpoint.simulated import SimulatedBackend
from queue_controller.engine import Admit, Policy, Preempt, PreemptMode, Resume
from queue_controller.operator.cache import Cache
from queue_controller.operator.controller import Controller
from queue_controller.operator.main import prime, sweep
from queue_controller.operator.waiting import QUEUE_STATUS_INTERVAL_S
from queue_controller.policies import load_policy
from tests.unit.fake_kube import T0, wire_time
from tests.unit.operator_world import GIB, World, make_world

pytestmark = pytest.mark.unit


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


async def running(w: World, job: str, after: float = 1.0) -> None:
    """Admit `job`, start its pods, and see it Running."""
    await w.cycle()
    w.server.run_pods(job)
    await w.cycle()  # the controller first sees the pods running
    await w.cycle(after)
    assert w.phase(job) == "Running"


def test_admit_checkpoint_suspend_resume_finish() -> None:
    async def scenario() -> None:
        w = make_world("iass")
        w.submit("train", runtime_s=100)
        d = await w.cycle()
        assert [type(a) for a in d.actions] == [Admit]
        st = w.server.status("train")
        assert st["phase"] == "Admitted" and st["attempt"] == 1
        assert st["admission"]["podSetAssignments"] == [{"name": "worker", "flavor": "h100", "nodes": ["n0"],
                                                         "count": 1}]
        (pod,) = w.server.pods("train")
        assert pod["metadata"]["name"] == "train-1-worker-0"
        assert pod["metadata"]["annotations"]["kwok.ckq.io/run-seconds"] == "100"
        w.server.run_pods("train")
        await w.cycle()  # the controller first sees the pods running
        await w.cycle(1)
        st = w.server.status("train")
        assert st["phase"] == "Running" and st["runStartTime"] == wire_time(T0)
        assert w.server.conditions("train")["Running"]["status"] == "True"

        # A higher-priority job needs the node: the trainer is checkpointed, not killed.
        w.clock.advance(30)
        w.submit("urgent", priority=100, runtime_s=10)
        d = await w.cycle()
        (p,) = d.actions
        assert isinstance(p, Preempt) and p.mode is PreemptMode.CHECKPOINT and p.victim == "team/train"
        st = w.server.status("train")
        assert st["phase"] == "Checkpointing" and st["preemptions"] == 1 and st["preemptedFor"] == "team/urgent"
        (ckpt,) = w.server.checkpoints("train")
        assert ckpt["metadata"]["name"] == "train-1-preemption-1"
        assert ckpt["spec"] == {"jobName": "train", "reason": "Preemption", "leaveRunning": False}
        assert ckpt["metadata"]["annotations"]["ckq.io/run-time-seconds"] == "31.000"
        assert ckpt["status"]["phase"] == "Running" and ckpt["status"]["startTime"] == wire_time(T0 + 31)
        assert w.server.status("urgent")["pendingReason"] == "WaitingForPreemption"

        # 4 GiB at 1 GiB/s plus 1 s: done after 5 s. The pods go, the job is Suspended with its progress.
        await w.cycle(4)
        assert w.phase("train") == "Checkpointing"
        await w.cycle(1)
        ckpt = w.server.get("checkpoints", "train-1-preemption-1")
        assert ckpt["status"]["phase"] == "Completed" and ckpt["status"]["durationSeconds"] == 5.0
        assert ckpt["status"]["message"] == "simulated: no process was dumped"
        assert ckpt["metadata"]["labels"] == {"ckq.io/job-name": "train", "ckq.io/attempt": "1"}
        assert ckpt["status"]["sizeBytes"] == 4 * GIB
        assert [a["container"] for a in ckpt["status"]["artifacts"]] == ["train"]
        assert ckpt["status"]["restoreConstraints"] == {"nodeLabels": {"kubernetes.io/arch": "amd64",
                                                                       "nvidia.com/gpu.product": "NVIDIA-H100"}}
        st = w.server.status("train")
        assert st["phase"] == "Suspended" and "admission" not in st and "runStartTime" not in st
        assert st["runTimeSeconds"] == 31.0 and st["checkpoints"] == 1
        assert st["lastCheckpoint"] == {"name": "train-1-preemption-1", "time": wire_time(T0 + 36),
                                        "sizeBytes": 4 * GIB}
        assert w.server.conditions("train")["Suspended"]["reason"] == "Preempted"
        assert w.server.pods("train") == []

        await running(w, "urgent")
        w.clock.advance(10)
        w.server.finish_pods("urgent")
        d = await w.cycle()
        assert w.phase("urgent") == "Succeeded"
        assert w.server.status("urgent")["runTimeSeconds"] == 11.0  # ended when its pods ended
        # The freed node goes back to the trainer, which resumes from its checkpoint.
        (r,) = d.actions
        assert isinstance(r, Resume) and r.checkpoint == "train-1-preemption-1"
        st = w.server.status("train")
        assert st["phase"] == "Restoring" and st["attempt"] == 2
        (pod,) = w.server.pods("train")
        assert pod["metadata"]["name"] == "train-2-worker-0"
        assert pod["metadata"]["annotations"]["ckq.io/restore-from"] == "train-1-preemption-1"
        assert pod["metadata"]["annotations"]["kwok.ckq.io/run-seconds"] == "69"  # 100 - 31 already done
        env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        assert env["CKQ_RESTORE_ID"] == "train-1-preemption-1"
        w.server.run_pods("train")
        await w.cycle()  # the controller first sees the pods running
        await w.cycle(1)
        assert w.server.status("train")["message"] == ("restored from checkpoint and running; checkpoints are "
                                                       "simulated (checkpoint mode Simulated): no process is dumped")
        mode = w.server.conditions("train")["CheckpointModeUnavailable"]
        assert (mode["status"], mode["reason"]) == ("False", "Simulated")
        w.clock.advance(68)  # 69 s after its pods started
        w.server.finish_pods("train")
        await w.cycle(1)
        st = w.server.status("train")
        assert st["phase"] == "Succeeded" and st["runTimeSeconds"] == 100.0
        assert st.get("lostRunTimeSeconds", 0) == 0
        assert w.server.conditions("train")["Finished"]["status"] == "True"
        assert w.server.event_reasons("train") == ["Admitted", "Preempted", "Suspended", "Resumed", "Succeeded"]
        # One reading of the clock per cycle: every write and Event of a cycle carries the same instant.
        assert w.clock.reads == w.controller.cycles == 13

    run(scenario)


def test_a_failed_pod_requeues_until_restarts_run_out() -> None:
    async def scenario() -> None:
        w = make_world("kueue")
        w.submit("flaky", maxRestarts=1)
        await running(w, "flaky")
        w.clock.advance(10)
        w.server.fail_pod("flaky")
        d = await w.cycle()
        st = w.server.status("flaky")
        assert st["restarts"] == 1 and st["queuedTime"] == wire_time(T0 + 11)
        assert st["lostRunTimeSeconds"] == 11.0 and st["runTimeSeconds"] == 0.0  # no checkpoint: all lost
        restarting = [e for e in w.server.events if e["reason"] == "Restarting"]
        assert restarting[0]["message"] == "pod flaky-1-worker-0 failed; restarts from the beginning"
        # Requeued, and its failed pod holds nothing: admitted again in the same cycle, as attempt 2.
        assert [type(a) for a in d.actions] == [Admit]
        assert st["phase"] == "Admitted" and st["attempt"] == 2
        assert [p["metadata"]["name"] for p in w.server.pods("flaky")] == ["flaky-2-worker-0"]
        w.server.run_pods("flaky")
        await w.cycle()  # the controller first sees the pods running
        await w.cycle(1)
        w.server.fail_pod("flaky")
        await w.cycle(1)
        st = w.server.status("flaky")
        assert st["phase"] == "Failed" and st["restarts"] == 2 and "admission" not in st
        assert "restarts exhausted (1)" in st["message"]
        assert w.server.conditions("flaky")["Finished"]["reason"] == "Failed"
        assert w.server.event_reasons("flaky") == ["Admitted", "Restarting", "Admitted", "Failed"]

    run(scenario)


def test_a_lost_node_restarts_the_job_from_its_periodic_checkpoint() -> None:
    async def scenario() -> None:
        w = make_world("iass", nodes=2)
        w.submit("fragile", checkpoint={"interval": "10s", "retain": 1})
        await running(w, "fragile")
        await w.cycle(10)
        (ckpt,) = w.server.checkpoints("fragile")
        assert ckpt["spec"]["reason"] == "Periodic" and ckpt["spec"]["leaveRunning"] is True
        assert w.server.conditions("fragile").get("Checkpointing") is None
        await w.cycle(5)
        st = w.server.status("fragile")
        assert st["phase"] == "Running" and st["checkpoints"] == 1 and st["lastCheckpoint"]["name"] == ckpt[
            "metadata"]["name"]
        assert w.server.event_reasons("fragile")[-1] == "Checkpointed"
        # A second periodic checkpoint: retain 1 prunes the first.
        await w.cycle(10)
        await w.cycle(5)
        names = [c["metadata"]["name"] for c in w.server.checkpoints("fragile")]
        assert names == ["fragile-1-periodic-2"] and w.server.status("fragile")["checkpoints"] == 2
        node = w.server.status("fragile")["admission"]["podSetAssignments"][0]["nodes"][0]
        w.server.objects[("nodes", "", node)]["status"]["conditions"][0]["status"] = "False"
        w.server._changed("MODIFIED", "nodes", w.server.objects[("nodes", "", node)])
        d = await w.cycle(3)
        st = w.server.status("fragile")
        assert st["restarts"] == 1
        assert st["runTimeSeconds"] == 26.0 and st["lostRunTimeSeconds"] == 8.0  # kept what the checkpoint saved
        restarting = [e for e in w.server.events if e["reason"] == "Restarting"]
        assert restarting[0]["message"] == (f"node {node} is NotReady or gone; restarts from checkpoint "
                                            "fragile-1-periodic-2")
        # Resumed at once on the other node, from the checkpoint.
        (r,) = d.actions
        assert isinstance(r, Resume) and r.checkpoint == "fragile-1-periodic-2" and r.placement[0].nodes != (node,)
        assert st["phase"] == "Restoring" and st["attempt"] == 2

    run(scenario)


def test_kill_preemption_loses_the_progress_since_the_last_checkpoint() -> None:
    async def scenario() -> None:
        w = make_world("kueue")
        w.submit("victim")
        await running(w, "victim")
        w.clock.advance(20)
        w.submit("urgent", priority=100)
        d = await w.cycle()
        (p,) = d.actions
        assert isinstance(p, Preempt) and p.mode is PreemptMode.KILL
        st = w.server.status("victim")
        assert st["phase"] == "Pending" and st["preemptions"] == 1 and st["lostRunTimeSeconds"] == 21.0
        assert st["message"] == "preempted for team/urgent (InClusterQueue): killed; lost 21s of progress"
        assert w.server.conditions("victim")["Preempted"]["reason"] == "InClusterQueue"
        assert w.server.checkpoints("victim") == [] and w.server.pods("victim") == []
        assert w.server.event_reasons("victim") == ["Admitted", "Preempted"]
        assert w.server.events[-1]["type"] == "Warning"

    run(scenario)


@pytest.mark.parametrize("on_failure", ["Kill", "KeepRunning"])
def test_a_failed_preemption_checkpoint_follows_the_policy(on_failure: str) -> None:
    async def scenario() -> None:
        iass = load_policy("iass").model_dump(by_alias=True)
        policy = Policy.model_validate({**iass, "preemption": {**iass["preemption"],
                                                               "onCheckpointFailure": on_failure}})
        broken = SimulatedBackend(bandwidth_bytes_per_s=GIB, fail_jobs=frozenset({"team/victim"}))
        w = make_world(policy, backend=broken)
        w.submit("victim")
        await running(w, "victim")
        w.submit("urgent", priority=100)
        await w.cycle(10)
        assert w.phase("victim") == "Checkpointing"
        d = await w.cycle(5)
        first = w.server.get("checkpoints", "victim-1-preemption-1")
        assert first["status"]["phase"] == "Failed" and first["status"]["message"] == "simulated dump failure"
        st = w.server.status("victim")
        assert st["checkpointFailures"] == 1
        if on_failure == "Kill":  # killed and requeued: the progress since its start is lost
            assert st["phase"] == "Pending" and st["lostRunTimeSeconds"] == 16.0 and "admission" not in st
            assert w.server.pods("victim") == []
        else:  # left running; the engine tries again (a new checkpoint, as its number says)
            assert st["phase"] == "Checkpointing" and len(w.server.pods("victim")) == 1
            assert [type(a) for a in d.actions] == [Preempt]
            assert w.server.get("checkpoints", "victim-1-preemption-2")["status"]["phase"] == "Running"
        assert "CheckpointFailed" in w.server.event_reasons("victim")

    run(scenario)


def test_user_suspend_checkpoints_and_resume_restores() -> None:
    async def scenario() -> None:
        w = make_world("iass")
        w.submit("pausable")
        await running(w, "pausable")
        w.server.update_spec("checkpointablejobs", "team", "pausable", suspend=True)
        await w.cycle(9)
        st = w.server.status("pausable")
        assert st["phase"] == "Checkpointing" and st["message"] == "suspending: checkpoint pausable-1-user-1"
        await w.cycle(5)
        st = w.server.status("pausable")
        assert st["phase"] == "Suspended" and st["runTimeSeconds"] == 10.0
        assert w.server.conditions("pausable")["Suspended"]["reason"] == "SuspendedByUser"
        await w.cycle(60)
        assert w.phase("pausable") == "Suspended" and w.server.pods("pausable") == []  # stays suspended
        w.server.update_spec("checkpointablejobs", "team", "pausable", suspend=False)
        d = await w.cycle()
        assert [type(a) for a in d.actions] == [Resume]
        assert w.phase("pausable") == "Restoring"

    run(scenario)


def test_a_checkpoint_its_user_creates_keeps_the_progress_made() -> None:
    """Issue 12: a Checkpoint a user creates (leaveRunning: false) stopped the job and reset its
    runTimeSeconds to 0, because only Checkpoints the controller creates noted the progress they keep."""
    async def scenario() -> None:
        w = make_world("iass")
        w.submit("trainer")
        await running(w, "trainer")  # its pods started at T0; the clock reads T0 + 1
        w.clock.advance(29)
        w.server.create("checkpoints", {"apiVersion": "ckq.io/v1alpha1", "kind": "Checkpoint",
                                        "metadata": {"name": "mine"},
                                        "spec": {"jobName": "trainer", "reason": "User", "leaveRunning": False}},
                        "team")
        await w.cycle()
        ckpt = w.server.get("checkpoints", "mine")["status"]
        assert ckpt["phase"] == "Running" and ckpt["jobRunTimeSeconds"] == 30.0
        for _ in range(10):
            await w.cycle(1)
            if w.server.get("checkpoints", "mine")["status"]["phase"] == "Completed":
                break
        st = w.server.status("trainer")
        assert st["lastCheckpoint"]["name"] == "mine" and st["runTimeSeconds"] == 30.0
        assert st.get("lostRunTimeSeconds", 0) == 0

    run(scenario)


def test_a_running_gang_that_loses_a_pod_restarts_whole_from_its_checkpoint() -> None:
    """Issues 12 and 14: a running job whose pod is deleted stayed Running forever, holding its quota."""
    async def scenario() -> None:
        w = make_world("iass", nodes=2, quota_gpus=16)
        w.submit("gang", pods=2, checkpoint={"interval": "10s"})
        await running(w, "gang")
        for _ in range(15):  # a periodic checkpoint completes
            await w.cycle(1)
            if w.server.status("gang").get("lastCheckpoint"):
                break
        kept = w.server.status("gang")["lastCheckpoint"]["name"]
        lost = w.server.pods("gang")[1]["metadata"]["name"]
        w.server.delete("pods", "team", lost)
        await w.cycle(1)
        st = w.server.status("gang")
        assert st["restarts"] == 1 and st["phase"] in ("Pending", "Restoring", "Admitted")
        (restarting,) = [e["message"] for e in w.server.events if e["reason"] == "Restarting"]
        assert restarting == f"pod {lost} is gone; restarts from checkpoint {kept}"
        assert all(p["metadata"]["name"].startswith("gang-2-") for p in w.server.pods("gang"))
        for _ in range(5):  # the whole gang comes back, restored from that checkpoint
            await w.cycle(1)
            if w.phase("gang") == "Restoring":
                break
        assert w.phase("gang") == "Restoring" and w.server.status("gang")["runTimeSeconds"] > 0
        assert len(w.server.pods("gang")) == 2

    run(scenario)


def test_suspending_a_job_that_cannot_checkpoint_stops_it() -> None:
    async def scenario() -> None:
        w = make_world("iass")
        w.submit("plain", mode="None")
        await running(w, "plain")
        w.server.update_spec("checkpointablejobs", "team", "plain", suspend=True)
        await w.cycle(5)
        st = w.server.status("plain")
        assert st["phase"] == "Suspended" and st["lostRunTimeSeconds"] == 6.0
        assert st["message"].startswith("suspended by its user (not checkpointable: stopped)")
        assert w.server.checkpoints("plain") == [] and w.server.pods("plain") == []

    run(scenario)


def test_a_pending_job_is_suspended_by_its_user_without_running() -> None:
    async def scenario() -> None:
        w = make_world("iass", quota_gpus=0)
        w.submit("later", suspend=True)
        await w.cycle()
        st = w.server.status("later")
        assert st["phase"] == "Suspended" and st["message"] == "suspended by its user"
        assert w.server.conditions("later")["Suspended"]["reason"] == "SuspendedByUser"

    run(scenario)


def test_waiting_jobs_and_queues_report_why_and_where() -> None:
    async def scenario() -> None:
        w = make_world("kueue")
        w.submit("first", priority=10)
        w.submit("second", priority=1)
        w.submit("third", priority=1)
        w.server.create("checkpointablejobs", {**_body("lost"), "spec": {**_body("lost")["spec"], "queueName": "nope"}},
                        "team")
        await w.cycle()
        assert w.phase("first") == "Admitted"
        for name in ("second", "third"):
            st = w.server.status(name)
            assert st["phase"] == "Pending" and st["pendingReason"] == "InsufficientQuota"
            assert st["queuedTime"] == wire_time(T0) and "queuePosition" not in st  # positions are on demand
            assert w.server.conditions(name)["QuotaReserved"]["status"] == "False"
        assert w.server.status("lost")["pendingReason"] == "LocalQueueNotFound"
        # The queues count the job this very cycle admitted: its quota is in use already.
        cq = w.server.get("clusterqueues", "cq", None)["status"]
        assert cq["pendingWorkloads"] == 2 and cq["admittedWorkloads"] == 1
        assert cq["flavorsUsage"] == [{"name": "h100", "resources": [
            {"name": "cpu", "total": "4"}, {"name": "memory", "total": "4Gi"}, {"name": "nvidia.com/gpu",
                                                                              "total": "8"}]}]
        # The head of the queue, in queue order, with the engine's reason.
        assert [(j["name"], j["position"], j["localQueuePosition"], j["reason"]) for j in cq["pendingJobs"]] == [
            ("second", 1, 1, "InsufficientQuota"), ("third", 2, 2, "InsufficientQuota")]
        lq = w.server.get("localqueues", "main")["status"]
        assert lq["pendingWorkloads"] == 2 and lq["admittedWorkloads"] == 1
        assert [j["name"] for j in lq["pendingJobs"]] == ["second", "third"]
        # Nothing changed: nothing is written again.
        writes = sum(1 for m, _ in w.server.log if m == "PATCH")
        await w.cycle(1)
        assert sum(1 for m, _ in w.server.log if m == "PATCH") == writes

    run(scenario)


def _controller_writes(w: World) -> dict[str, int]:
    """The controller's writes so far by kind: job status, pods, Events, queue status."""
    out = {"jobs": 0, "pods": 0, "events": 0, "queues": 0}
    for method, path in w.server.log:
        if method not in ("POST", "PATCH", "PUT", "DELETE"):
            continue
        kind = ("events" if "/events" in path else "pods" if "/pods" in path
                else "queues" if "queues/" in path else "jobs" if "checkpointablejobs" in path else path)
        out[kind] = out.get(kind, 0) + 1
    return out


@pytest.mark.parametrize("backlog", [5, 40])
def test_api_writes_per_job_do_not_grow_with_the_backlog(backlog: int) -> None:
    """A backlog of jobs that run one at a time, each to completion: every job costs the same few writes
    (waiting, admitted, its pod, running, succeeded, one Event) however many wait behind it — positions
    that move with every admission are not written (issue 13: O(1) writes per job, not O(pending))."""
    async def scenario() -> None:
        w = make_world("kueue")
        for i in range(backlog):
            w.submit(f"j{i:02}", priority=i % 3, runtime_s=10)
            w.clock.advance(0.01)
        await w.cycle()
        done = 0
        for _ in range(4 * backlog):
            running = [j["metadata"]["name"] for j in w.server.list("checkpointablejobs")
                       if (j.get("status") or {}).get("phase") in ("Admitted", "Running")]
            for name in running:
                if w.phase(name) == "Admitted":
                    w.server.run_pods(name)
                else:
                    w.server.finish_pods(name)
            await w.cycle(3)
            done = sum(1 for j in w.server.list("checkpointablejobs") if j["status"].get("phase") == "Succeeded")
            if done == backlog:
                break
        assert done == backlog
        writes = _controller_writes(w)
        per_job = (writes["jobs"] + writes["pods"] + writes["events"]) / backlog
        # Pending, Admitted, Running, Succeeded; the pod; the Admitted Event. The first job never waits.
        assert writes["jobs"] == 4 * backlog - 1 and writes["pods"] == backlog and writes["events"] == backlog
        assert per_job <= 6
        # Queue status: at most one write per queue per QUEUE_STATUS_INTERVAL_S of (fake) time, O(queues).
        assert writes["queues"] <= 2 * (w.clock.now - T0) / QUEUE_STATUS_INTERVAL_S + 2

    run(scenario)


def test_queue_status_written_at_most_every_interval_and_caught_up() -> None:
    """Counts change every cycle; the status is written at most every QUEUE_STATUS_INTERVAL_S, and the
    change held back is written by a cycle the controller plans for it."""
    async def scenario() -> None:
        w = make_world("kueue", quota_gpus=0)
        w.submit("a")
        await w.cycle()
        assert w.server.get("clusterqueues", "cq", None)["status"]["pendingWorkloads"] == 1
        w.submit("b")
        await w.cycle(QUEUE_STATUS_INTERVAL_S / 4)
        assert w.server.get("clusterqueues", "cq", None)["status"]["pendingWorkloads"] == 1  # held back
        wake = w.controller.next_wakeup
        assert wake is not None and wake <= T0 + QUEUE_STATUS_INTERVAL_S
        await w.cycle(wake - w.clock.now)
        assert w.server.get("clusterqueues", "cq", None)["status"]["pendingWorkloads"] == 2

    run(scenario)


def test_usage_metric_goes_to_zero_when_the_queue_empties_and_goes_away_with_the_queue() -> None:
    async def scenario() -> None:
        from queue_controller.operator.metrics import REGISTRY

        def usage() -> float | None:
            return REGISTRY.get_sample_value("ckq_cluster_queue_usage", {
                "cluster_queue": "cq", "flavor": "h100", "resource": "nvidia.com/gpu"})

        w = make_world("kueue")
        w.submit("a", runtime_s=10)
        await w.cycle()
        assert usage() == 8
        w.server.run_pods("a")
        await w.cycle()  # the controller first sees the pods running
        await w.cycle(1)
        w.server.finish_pods("a")
        await w.cycle(10)
        assert w.phase("a") == "Succeeded" and usage() == 0
        w.server.delete("clusterqueues", None, "cq")
        await w.cycle(QUEUE_STATUS_INTERVAL_S)
        assert usage() is None

    run(scenario)


def _body(name: str) -> dict[str, Any]:
    from tests.unit.operator_world import job_body

    return job_body(name)


def test_a_pod_template_the_api_server_rejects_fails_the_job() -> None:
    async def scenario() -> None:
        w = make_world("iass")
        w.server.reject_pods = 'Pod "bad-1-worker-0" is invalid: spec.containers[0].image: Required value'
        w.submit("bad")
        await w.cycle()
        st = w.server.status("bad")
        assert st["phase"] == "Failed" and "admission" not in st
        assert st["message"].startswith("the API server rejects this job's pods: Pod")
        assert w.server.conditions("bad")["Finished"]["reason"] == "PodTemplateRejected"
        assert sorted(w.server.event_reasons("bad")) == ["Admitted", "Failed", "PodCreationFailed"]

    run(scenario)


def test_a_restarted_controller_continues_a_checkpoint_in_flight_without_duplicates() -> None:
    async def scenario() -> None:
        w = make_world("iass")
        w.submit("big", memory="64Gi")  # 65 s to checkpoint
        await running(w, "big")
        w.submit("urgent", priority=100)
        await w.cycle(10)
        assert w.phase("big") == "Checkpointing"
        # The controller dies; a new one primes a fresh cache from the API and carries on.
        cache = Cache()
        controller = Controller(cache, w.kube, w.controller.policy, w.controller.backends, clock=w.clock)
        await prime(cache, w.kube)
        w.server.pending.clear()
        w.cache, w.controller = cache, controller
        await w.cycle(30)
        assert w.phase("big") == "Checkpointing"
        await w.cycle(35)
        assert w.phase("big") == "Suspended"
        await running(w, "urgent")
        assert len(w.server.checkpoints("big")) == 1
        assert w.server.status("big")["preemptions"] == 1

    run(scenario)


def test_a_job_deleted_behind_the_caches_back_is_forgotten_on_the_404() -> None:
    async def scenario() -> None:
        w = make_world("iass")
        w.submit("gone")
        await w.cycle()
        w.server.delete("checkpointablejobs", "team", "gone")
        w.server.pending = [e for e in w.server.pending if e[0] != "DELETED"]  # the watch lags behind
        w.server.run_pods("gone")
        await w.cycle()  # the controller first sees the pods running
        await w.cycle(1)  # writing Running answers 404: the job is dropped, the cycle carries on
        assert "team/gone" not in w.cache.jobs
        assert ("PATCH", "/apis/ckq.io/v1alpha1/namespaces/team/checkpointablejobs/gone/status") in w.server.log

    run(scenario)


def _restart(w: World) -> None:
    """The controller dies; a new one will prime a fresh cache from the API server."""
    w.cache = Cache()
    w.controller = Controller(w.cache, w.kube, w.controller.policy, w.controller.backends, clock=w.clock)


def test_periodic_checkpoints_go_on_after_a_restart_between_result_and_count() -> None:
    """Issue 14: killed right after a periodic checkpoint completed (before the job's status counted it),
    the restarted controller tried the same name again forever: no more periodic checkpoints."""
    async def scenario() -> None:
        w = make_world("iass")
        w.submit("steady", checkpoint={"interval": "10s", "retain": 3})
        await running(w, "steady")
        await w.cycle(10)
        await w.cycle(5)
        st = w.server.status("steady")
        assert st["checkpoints"] == 1 and st["lastCheckpoint"]["name"] == "steady-1-periodic-1"
        # As if the controller had died between writing the Checkpoint's result and the job's status.
        w.server.patch_status("checkpointablejobs", "team", "steady", {"checkpoints": 0, "lastCheckpoint": None})
        _restart(w)
        await prime(w.cache, w.kube)
        w.server.pending.clear()
        await w.cycle(1)
        st = w.server.status("steady")
        assert st["checkpoints"] == 1 and st["lastCheckpoint"]["name"] == "steady-1-periodic-1"  # caught up
        for _ in range(30):
            await w.cycle(1)
        names = sorted(c["metadata"]["name"] for c in w.server.checkpoints("steady"))
        assert names[:2] == ["steady-1-periodic-1", "steady-1-periodic-2"]
        assert w.server.status("steady")["checkpoints"] >= 2
        assert "CheckpointRefused" not in w.server.event_reasons("steady")

    run(scenario)


def test_a_preemption_checkpoint_found_after_a_restart_is_counted() -> None:
    """Issue 14: killed between creating a preemption's Checkpoint and marking its job Checkpointing, the
    restarted controller finished the preemption without counting it in `preemptions`."""
    async def scenario() -> None:
        from queue_controller.operator.checkpoints import checkpoint_object

        w = make_world("iass")
        w.submit("victim")
        await running(w, "victim")
        job = w.cache.jobs["team/victim"]
        w.server.create("checkpoints", checkpoint_object(job, "victim-1-preemption-1", "Preemption", False, 1.0),
                        "team")
        _restart(w)
        await prime(w.cache, w.kube)
        w.server.pending.clear()
        for _ in range(10):
            await w.cycle(1)
            if w.phase("victim") == "Suspended":
                break
        st = w.server.status("victim")
        assert st["phase"] == "Suspended" and st["preemptions"] == 1 and st.get("restarts", 0) == 0

    run(scenario)


def test_pods_that_finish_during_a_preemption_checkpoint_finish_the_job() -> None:
    """Issue 14: the job's pods completed while its preemption checkpoint ran (the API server was away),
    yet it was suspended and its finished work run again. Completion wins."""
    async def scenario() -> None:
        w = make_world("iass")
        w.submit("big", memory="64Gi")  # 65 s to checkpoint
        await running(w, "big")
        w.submit("urgent", priority=100)
        await w.cycle(10)
        assert w.phase("big") == "Checkpointing"
        w.server.finish_pods("big")
        await w.cycle(1)
        assert w.phase("big") == "Succeeded"
        await w.cycle(70)  # the checkpoint's time passes: it has nothing left to checkpoint
        (ckpt,) = w.server.checkpoints("big")
        assert ckpt["status"]["phase"] == "Failed" and "nothing to checkpoint" in ckpt["status"]["message"]
        assert w.phase("big") == "Succeeded" and w.server.status("big").get("lostRunTimeSeconds", 0) == 0
        assert w.phase("urgent") in ("Admitted", "Running")

    run(scenario)


def test_a_checkpoint_of_a_job_that_does_not_exist_fails_saying_so() -> None:
    """Issue 14: a Checkpoint naming a job that does not exist was silently ignored."""
    async def scenario() -> None:
        w = make_world("iass")
        w.server.create("checkpoints", {"apiVersion": "ckq.io/v1alpha1", "kind": "Checkpoint",
                                        "metadata": {"name": "typo"},
                                        "spec": {"jobName": "trainr", "reason": "User", "leaveRunning": True}},
                        "team")
        await w.cycle()
        st = w.server.get("checkpoints", "typo")["status"]
        assert st["phase"] == "Failed"
        assert st["message"] == "job 'trainr' does not exist in namespace 'team': nothing to checkpoint"
        (event,) = [e for e in w.server.events if e["involvedObject"]["name"] == "typo"]
        assert event["reason"] == "JobNotFound" and event["involvedObject"]["kind"] == "Checkpoint"

    run(scenario)


def test_pods_that_never_run_give_the_quota_back_with_backoff_then_fail() -> None:
    """Issue 14, Kueue's waitForPodsReady: a job whose pods never run (an affinity no node meets, an image
    that does not exist) was Admitted and held its quota forever."""
    async def scenario() -> None:
        w = make_world("kueue", config={"podsReadyTimeout": "5m", "requeueBackoffBase": "30s",
                                        "requeueBackoffLimit": "1"})
        w.submit("stuck")
        w.submit("other", priority=-1)
        await w.cycle()
        assert w.phase("stuck") == "Admitted" and w.phase("other") == "Pending"
        await w.cycle(100)
        assert w.phase("stuck") == "Admitted"
        assert w.controller.next_wakeup == T0 + 300  # the deadline is planned, not polled
        await w.cycle(200)
        st = w.server.status("stuck")
        assert st["requeueState"]["count"] == 1 and st["requeueState"]["requeueAt"] == wire_time(T0 + 330)
        assert w.server.conditions("stuck")["PodsReady"]["reason"] == "PodsReadyTimeout"
        assert "PodsReadyTimeout" in w.server.event_reasons("stuck")
        assert w.server.pods("stuck") == []
        await w.cycle(1)  # its pods are gone: the quota goes to the next job
        assert w.phase("other") == "Admitted" and w.server.status("stuck")["pendingReason"] == "PodsReadyBackoff"
        w.server.run_pods("other")
        w.server.finish_pods("other")
        await w.cycle(1)
        assert w.phase("stuck") == "Pending"  # backing off, though the quota is free
        while (wake := w.controller.next_wakeup) is not None and wake < T0 + 330:  # queue status catching up
            await w.cycle(wake - w.clock.now)
            assert w.phase("stuck") == "Pending"
        assert w.controller.next_wakeup == T0 + 330  # the end of the backoff is planned, not polled
        await w.cycle(T0 + 330 - w.clock.now)
        assert w.phase("stuck") == "Admitted" and w.server.status("stuck")["attempt"] == 2
        await w.cycle(300)  # not running again: the limit (1 requeue) is spent
        st = w.server.status("stuck")
        assert st["phase"] == "Failed" and "requeueBackoffLimit 1" in st["message"]
        assert "admission" not in st

    run(scenario)


def test_a_job_whose_pods_run_in_time_is_marked_pods_ready() -> None:
    async def scenario() -> None:
        w = make_world("kueue", config={"podsReadyTimeout": "5m"})
        w.submit("quick")
        await running(w, "quick")
        await w.cycle(400)
        assert w.phase("quick") == "Running" and w.server.conditions("quick")["PodsReady"]["status"] == "True"
        assert "requeueState" not in w.server.status("quick")

    run(scenario)


def test_a_controller_limited_to_namespaces_primes_only_their_jobs() -> None:
    """Issue 14: `--namespace A` still admitted the jobs of other namespaces it found at start (kopf then
    watched only A, so they stayed Admitted forever)."""
    async def scenario() -> None:
        w = make_world("kueue", quota_gpus=16)
        w.server.create("namespaces", {"metadata": {"name": "other"}})
        w.server.create("localqueues", {"metadata": {"name": "main"}, "spec": {"clusterQueue": "cq"}}, "other")
        w.submit("mine")
        w.server.create("checkpointablejobs", _body("theirs"), "other")
        _restart(w)
        await prime(w.cache, w.kube, ["team"])
        w.server.pending.clear()
        await w.controller.cycle()
        await w.controller.settled()  # the admission is written behind the loop
        assert set(w.cache.jobs) == {"team/mine"} and "team/main" in w.cache.local_queues
        assert "other/main" not in w.cache.local_queues and "cq" in w.cache.cluster_queues
        assert w.phase("mine") == "Admitted"
        assert "phase" not in (w.server.get("checkpointablejobs", "theirs", "other").get("status") or {})

    run(scenario)


def test_a_burst_of_new_jobs_does_not_hold_admissions_behind_their_status_writes() -> None:
    """15,000 jobs created within a minute made one cycle write 11,000 Pending statuses before the next
    admission (issue 13's bench): waiting writes are bounded per cycle, the rest follow at once."""
    async def scenario() -> None:
        from queue_controller.operator.waiting import WRITES_PER_CYCLE

        w = make_world("kueue")
        burst = WRITES_PER_CYCLE + 40
        for i in range(burst):
            w.submit(f"j{i:04}", runtime_s=10)
        await w.cycle()
        pending = [j for j in w.server.list("checkpointablejobs") if (j.get("status") or {}).get("phase") == "Pending"]
        assert w.phase("j0000") == "Admitted" and len(pending) == WRITES_PER_CYCLE
        wake = w.controller.next_wakeup
        assert wake is not None and wake - w.clock.now <= 0.2 + 1e-6  # the rest soon, without any event
        await w.cycle(wake - w.clock.now)
        assert sum(1 for j in w.server.list("checkpointablejobs")
                   if (j.get("status") or {}).get("phase") == "Pending") == burst - 1

    run(scenario)


def test_objects_deleted_while_no_watch_ran_are_swept_from_the_cache() -> None:
    """Issue 14 (seen in the e2e tier's controller logs: a LocalQueue's status written to a 404 every 2 s
    for a whole test): kopf gives no event for an object deleted between the controller's first LIST
    (prime) and kopf's own, or during a watch gap it listed over. The sweep LISTs again and drops such
    ghosts — a LocalQueue, a running job's pod still counted on its node — and nothing newer than the
    listing."""
    async def scenario() -> None:
        w = make_world("kueue", quota_gpus=16)
        w.server.create("localqueues", {"metadata": {"name": "old"}, "spec": {"clusterQueue": "cq"}}, "team")
        w.submit("mine")
        await running(w, "mine")
        _restart(w)
        await prime(w.cache, w.kube)
        (pod,) = w.server.pods("mine")
        w.server.delete("localqueues", "team", "old")
        w.server.delete("pods", "team", pod["metadata"]["name"])
        w.server.pending.clear()  # no watch delivered these deletions
        assert "team/old" in w.cache.local_queues and f"team/{pod['metadata']['name']}" in w.cache.pods
        assert await sweep(w.cache, w.kube) == 2
        assert "team/old" not in w.cache.local_queues and f"team/{pod['metadata']['name']}" not in w.cache.pods
        assert "team/main" in w.cache.local_queues and "team/mine" in w.cache.jobs  # what exists stays
        assert await sweep(w.cache, w.kube) == 0

    run(scenario)


def test_prime_and_sweep_list_in_pages_and_miss_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13 at 15,000 jobs: the sweep's unpaged LIST of every job (~120 MB of JSON, decoded at once)
    tripled the controller's memory every ten minutes. Lists come in pages; what is on any page is in the
    cache, and a ghost is still found only when no page has it."""
    from queue_controller.operator import kube as kube_module

    monkeypatch.setattr(kube_module, "LIST_PAGE", 4)

    async def scenario() -> None:
        w = make_world("kueue", quota_gpus=16)
        for i in range(10):
            w.submit(f"j{i}", gpus=0)
        _restart(w)
        w.server.params.clear()
        await prime(w.cache, w.kube)
        assert {f"team/j{i}" for i in range(10)} <= set(w.cache.jobs)
        job_lists = [p for (m, path), p in zip(w.server.log, w.server.params, strict=True)
                     if m == "GET" and path.endswith("/checkpointablejobs")]
        assert [p.get("continue") for p in job_lists] == [None, "4", "8"] and {p["limit"] for p in job_lists} == {"4"}
        w.server.delete("checkpointablejobs", "team", "j9")
        w.server.pending.clear()  # no watch delivered the deletion
        assert await sweep(w.cache, w.kube) == 1
        assert "team/j9" not in w.cache.jobs and {f"team/j{i}" for i in range(9)} <= set(w.cache.jobs)

    run(scenario)


def test_a_change_between_contention_reasons_is_refreshed_only_at_the_head_of_its_queue() -> None:
    """Issue 13 at 15,000 jobs: refreshing every waiting job's contention reason every REASON_REFRESH_S made
    the writes per job grow with its wait. Deep in a queue the reason first written stays; at the head
    (the jobs shown in status.pendingJobs) a change is refreshed at most every REASON_REFRESH_S; a new wait
    or a reason to act on is written at once wherever the job stands."""
    from queue_controller.api.queues import MAX_PENDING_HEAD
    from queue_controller.engine import PendingReason
    from queue_controller.operator.waiting import REASON_REFRESH_S, _Published, needs_write

    quota, capacity = str(PendingReason.QUOTA), str(PendingReason.CAPACITY)
    last = _Published(quota, "", 0.0)
    later = REASON_REFRESH_S + 1.0
    assert needs_write(quota, "", last, capacity, "no node", later, position=1)
    assert needs_write(quota, "", last, capacity, "no node", later, position=MAX_PENDING_HEAD)
    assert not needs_write(quota, "", last, capacity, "no node", later, position=MAX_PENDING_HEAD + 1)
    assert not needs_write(quota, "", last, capacity, "no node", 1.0, position=1)  # too soon
    assert not needs_write(quota, "", None, capacity, "no node", 1.0, position=500)  # an earlier controller's
    assert needs_write(quota, "", None, capacity, "no node", 1.0, position=2)
    assert needs_write(None, None, None, quota, "", 0.0, position=5000)  # a new wait
    assert needs_write(quota, "", last, "LocalQueueNotFound", "no queue", 1.0, position=5000)  # to act on
    assert not needs_write(quota, "a", last, quota, "b", later, position=1)  # a contention message alone
