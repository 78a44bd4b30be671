"""Fit (fit.py): flavor assignment and gang placement on concrete nodes, within quota.

Small scenarios whose right answer can be worked out by hand."""

from __future__ import annotations

from copy import deepcopy

import pytest

from queue_controller.engine import GPU, Admit, PendingReason, Resume, Taint, Toleration, decide
from queue_controller.engine.fit import Fit, find_fit, release
from queue_controller.engine.workspace import Workspace
from tests.unit.engine_factory import FIFO, IASS, M, admitted, flavor, job, node, queue, running, snapshot

pytestmark = pytest.mark.unit


def test_gang_is_all_or_nothing() -> None:
    nodes = [node("n0"), node("n1"), node("n2")]
    snap = snapshot(nodes, [queue(gpus=64)],
                    [running(job("r", gpus=8), ["n2"]), job("gang", gpus=8, pods=3, t=1)])
    d = decide(snap, 100, FIFO)
    assert admitted(d) == []
    assert d.waiting["ns/gang"].reason is PendingReason.CAPACITY


def test_gang_places_every_pod_on_a_node_with_room() -> None:
    nodes = [node("n0"), node("n1")]
    snap = snapshot(nodes, [queue(gpus=64)], [job("gang", gpus=4, pods=4)])
    (a,) = decide(snap, 0, FIFO).of_type(Admit)
    assert sorted(a.placement[0].nodes) == ["n0", "n0", "n1", "n1"]


def test_best_fit_keeps_whole_nodes_free() -> None:
    nodes = [node("n0"), node("n1")]
    snap = snapshot(nodes, [queue(gpus=64)], [running(job("r", gpus=6), ["n1"]), job("small", gpus=2, t=1)])
    (a,) = decide(snap, 0, FIFO).of_type(Admit)
    assert a.placement[0].nodes == ("n1",)  # the fuller node, so n0 stays whole for an 8-GPU job


def test_pods_of_other_controllers_take_capacity() -> None:
    n = node("n0", other={GPU: 4000})
    snap = snapshot([n], [queue(gpus=64)], [job("j", gpus=8)])
    d = decide(snap, 0, FIFO)
    assert admitted(d) == []
    assert d.waiting["ns/j"].reason is PendingReason.CAPACITY


def test_flavor_taints_need_tolerations_and_flavor_tolerations_count() -> None:
    taint = Taint("nvidia.com/gpu", "present", "NoSchedule")
    n = node("n0", taints=(taint,))
    plain = snapshot([n], [queue()], [job("j")], flavors=[flavor("h100")])
    assert admitted(decide(plain, 0, FIFO)) == []
    tolerating = snapshot([n], [queue()], [job("j")],
                          flavors=[flavor("h100", tolerations=(Toleration("nvidia.com/gpu", "Exists"),))])
    assert admitted(decide(tolerating, 0, FIFO)) == ["ns/j"]


def test_flavors_are_tried_in_order() -> None:
    nodes = [node("a0", flavor="a100"), node("h0", flavor="h100")]
    snap = snapshot(nodes, [queue(gpus=8, flavors=("h100", "a100"))],
                    [running(job("r"), ["h0"]), job("j", t=1)])
    (a,) = decide(snap, 0, FIFO).of_type(Admit)
    assert a.placement[0].flavor == "a100"  # h100 quota is used up, a100 is next


def test_not_ready_nodes_take_no_pods() -> None:
    snap = snapshot([node("n0", ready=False)], [queue()], [job("j")])
    d = decide(snap, 0, FIFO)
    assert d.waiting["ns/j"].reason is PendingReason.NO_MATCHING_NODES


def test_a_pod_bigger_than_any_node_never_fits() -> None:
    snap = snapshot([node("n0")], [queue(gpus=64)], [job("j", gpus=16)])
    assert decide(snap, 0, FIFO).waiting["ns/j"].reason is PendingReason.UNSATISFIABLE


def test_resume_honours_restore_constraints() -> None:
    nodes = [node("n0", labels={"nvidia.com/gpu.product": "A100"}),
             node("n1", labels={"nvidia.com/gpu.product": "H100"})]
    j = job("j", checkpoint="j-1", restore_node_labels={"nvidia.com/gpu.product": "H100"})
    (r,) = decide(snapshot(nodes, [queue()], [j]), 0, IASS).of_type(Resume)
    assert r.placement[0].nodes == ("n1",)


# ---- the module alone -------------------------------------------------------------------------------

def test_find_fit_consumes_only_when_committed_and_release_undoes_it() -> None:
    ws = Workspace(snapshot([node("n0"), node("n1")], [queue(gpus=64)], []), 0.0, FIFO)
    cq, gang = ws.queues["cq"], job("g", gpus=8, pods=2)
    free = deepcopy(ws.cap.free)
    trial = find_fit(ws, gang, cq, commit=False)
    assert isinstance(trial, Fit) and sorted(trial.placement[0].nodes) == ["n0", "n1"]
    assert ws.cap.free == free and not any(ws.ledger.usage["cq"].values())
    fit = find_fit(ws, gang, cq, commit=True)
    assert isinstance(fit, Fit) and ws.ledger.usage["cq"][("h100", GPU)] == 16 * M
    assert all(ws.cap.free[n][GPU] == 0 for n in ("n0", "n1"))
    release(ws, gang, fit)
    assert ws.cap.free == free and not any(ws.ledger.usage["cq"].values())


@pytest.mark.parametrize("order", [("h100", "a100"), ("a100", "h100")])
def test_no_room_on_nodes_outranks_no_quota_as_the_reason(order: tuple[str, str]) -> None:
    # h100: the quota is used up. a100: quota left, but its node is full of other pods.
    nodes = [node("h0", flavor="h100"), node("a0", flavor="a100", other={GPU: 8 * M})]
    cq = queue(gpus=8, flavors=order)
    ws = Workspace(snapshot(nodes, [cq], [running(job("r"), ["h0"])]), 0.0, FIFO)
    assert find_fit(ws, job("j", t=1), ws.queues["cq"], commit=True) is PendingReason.CAPACITY
