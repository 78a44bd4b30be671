"""The operator's wiring: API paths come from the models, and every kind is watched and listed once."""

from __future__ import annotations

import pytest

from queue_controller.api import Checkpoint, CheckpointableJob, ClusterQueue, LocalQueue, ResourceFlavor
from queue_controller.api.common import GROUP, KubeObject
from queue_controller.operator.cache import Cache
from queue_controller.operator.handlers import WATCHED, feed
from queue_controller.operator.kube import Kube

pytestmark = pytest.mark.unit

KINDS: tuple[type[KubeObject], ...] = (CheckpointableJob, Checkpoint, ClusterQueue, LocalQueue, ResourceFlavor)


def test_paths_come_from_the_models_plural_and_scope() -> None:
    assert Kube.path(CheckpointableJob, "ns", "j", "status") == \
        "/apis/ckq.io/v1alpha1/namespaces/ns/checkpointablejobs/j/status"
    assert Kube.path(Checkpoint, "ns") == "/apis/ckq.io/v1alpha1/namespaces/ns/checkpoints"
    assert Kube.path(ClusterQueue, None, "cq") == "/apis/ckq.io/v1alpha1/clusterqueues/cq"
    assert Kube.core_path("pods", "ns", "p") == "/api/v1/namespaces/ns/pods/p"
    assert Kube.core_path("nodes") == "/api/v1/nodes"


def test_every_ckq_kind_is_watched_once_with_its_models_plural_and_scope() -> None:
    ckq = {w.plural: w for w in WATCHED if w.group == GROUP}
    assert set(ckq) == {k.PLURAL for k in KINDS}
    for kind in KINDS:
        assert ckq[kind.PLURAL].namespaced == (kind.SCOPE == "Namespaced")
        assert ckq[kind.PLURAL].list_path == Kube.path(kind)
    assert len({w.plural for w in WATCHED}) == len(WATCHED)
    # Jobs are listed last at start-up: what they refer to is in the cache first.
    assert WATCHED[-1].plural == CheckpointableJob.PLURAL


def test_watch_events_feed_the_cache_and_stale_ones_do_not() -> None:
    cache = Cache()
    nodes = next(w for w in WATCHED if w.plural == "nodes")
    body = {"metadata": {"name": "n0", "resourceVersion": "5"}, "status": {"allocatable": {"cpu": "4"}}}
    assert feed(cache, nodes, {"type": "ADDED", "object": body})
    assert not feed(cache, nodes, {"type": "MODIFIED", "object": body})  # the same version again
    assert not feed(cache, nodes, {"type": "MODIFIED", "object": {}})
    assert feed(cache, nodes, {"type": "DELETED", "object": body}) and "n0" not in cache.nodes
