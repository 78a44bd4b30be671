"""Store garbage collection by the node agent: images that no Checkpoint object accounts for.

Images normally go with their Checkpoint: when a Checkpoint is deleted (retention beyond `retain`, the
job deleted and its Checkpoints collected with it, a user's `kubectl delete`) each agent deletes the
images its node dumped, on the DELETED watch event. An agent that is down at that moment — killed,
restarting, its node rebooting — never sees the event, and a dump that finished after its Checkpoint
was deleted is never recorded anywhere. Both would stay in the store for good, holding process memory
and disk.

So after every full list of the Checkpoints (at start, and each time the watch ends and is listed
again), the agent compares the store with that list. An image is garbage when all of these hold:

- no listed Checkpoint records it as an artifact (by uri);
- it is not a dump still in flight: no listed Checkpoint that is still Pending or Running claims it in
  the agent's journal (a dump finished but not yet recorded);
- it was created before the list was taken (with a margin for the manifest's whole-second clock), so
  a Checkpoint created after the list cannot own it;
- this agent owns it: in a shared store, the journal says this node dumped it (each agent collects
  its own node's images, as it deletes them on events, so agents never race over one image); in a
  node-local store, everything under the node's own root is this node's.

Incremental chains are kept whole: the store only marks an image another kept one builds on, and
deletes it with the last one that needs it (`FilesystemStore.delete`). Images already marked pruned
are left to that mechanism.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from queue_controller.store.base import StoredCheckpoint

ACTIVE_PHASES = frozenset({None, "", "Pending", "Running"})
CLOCK_MARGIN_S = 5.0  # manifests record whole seconds; a list and a dump may start within one


@dataclass(frozen=True)
class Claim:
    """A journal entry's claim on a dumped image: which Checkpoint (uid) asked for it, from which node."""

    uid: str
    node: str


@dataclass(frozen=True)
class Listed:
    """What the collector needs of one listed Checkpoint."""

    uid: str
    phase: str | None
    uris: frozenset[str]


def _created_epoch(created: str) -> float | None:
    try:
        return datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def garbage(stored: Iterable[StoredCheckpoint], claims: Mapping[str, Claim], listed: Iterable[Listed], *,
            node: str, node_local: bool, listed_at: float) -> list[StoredCheckpoint]:
    """The stored images to delete. `claims` maps an image's uri to its journal entry's claim (images
    with none are absent); `listed_at` is the epoch time the Checkpoint list was requested."""
    listed = list(listed)
    recorded = {uri for c in listed for uri in c.uris}
    in_flight = {c.uid for c in listed if c.phase in ACTIVE_PHASES}
    out = []
    for sc in stored:
        if sc.pruned or sc.uri in recorded:
            continue
        created = _created_epoch(sc.created)
        if created is None or created >= listed_at - CLOCK_MARGIN_S:
            continue  # possibly the dump of a Checkpoint newer than the list (or unreadable: left alone)
        claim = claims.get(sc.uri)
        if claim is not None and claim.uid in in_flight:
            continue  # dumped for a Checkpoint still in progress: recorded soon
        if not node_local and (claim is None or claim.node != node):
            continue  # another node's image (it collects its own), or one no agent dumped
        out.append(sc)
    return out
