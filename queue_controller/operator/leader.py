"""Leader election: two controller replicas, one active, over a `coordination.k8s.io` Lease.

Only one controller may decide at a time: two active loops would admit the same job twice and preempt
for each other. kopf's peering pauses kopf's own handlers but not a loop of ours, and two peers of the
same priority pause each other; so, as controller-runtime does for Kueue, the replicas elect a leader
through a Lease (`ckq-system/ckq-controller`), the algorithm of client-go's `leaderelection`:

- every RETRY_S each replica reads the Lease. The holder renews `renewTime`; a replica that sees no
  renewal for LEASE_S (measured on its own clock from when it last saw the record change, so clocks
  need not agree) takes the Lease over, `leaseTransitions` + 1. Writes carry the resourceVersion they
  read, so of two replicas that try at once exactly one wins (the other gets 409);
- a leader that cannot renew for RENEW_DEADLINE_S (< LEASE_S) stops leading before anyone else may
  start: there is never a moment with two leaders, only a short one with none (the failover time);
- a leader that stops cleanly gives the Lease up (renewTime in the past), so its standby takes over
  at its next retry instead of a whole LEASE_S later.

Both replicas keep their caches warm (kopf watches in both); only the leader runs scheduling cycles.
The leader's first cycle after taking over starts from its own cache, the same state a restarted
controller primes: every step is idempotent, so whatever the old leader left half-done is carried on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from queue_controller.operator.kube import ApiError, Kube
from queue_controller.wire import CONFIG_NAMESPACE

log = logging.getLogger("ckq.controller")

LEASE_NAME = "ckq-controller"
# Shorter than client-go's 15/10/2 s: a failover (lease + retry + a cycle) within ~12 s, for one GET
# and one PUT per replica per second.
LEASE_S = 10.0
RENEW_DEADLINE_S = 7.0
RETRY_S = 1.0


def micro_time(epoch: float) -> str:
    """A `metav1.MicroTime`, as Lease times are (RFC 3339 with exactly six fractional digits)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    """The pod's name (POD_ID, as the chart sets it), else host and process id: two replicas on one host
    (HOSTNAME alike) must not share an identity, or both would think they hold the Lease."""
    return os.environ.get("POD_ID") or f"{socket.gethostname()}_{os.getpid()}"


class LeaderElection:
    """Holds, renews or waits for the Lease; `leading` says whether this replica may decide now."""

    def __init__(self, kube: Kube, identity: str, *, namespace: str = CONFIG_NAMESPACE, name: str = LEASE_NAME,
                 lease_s: float = LEASE_S, renew_deadline_s: float = RENEW_DEADLINE_S, retry_s: float = RETRY_S,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.identity = identity
        self.namespace = namespace
        self.name = name
        self.lease_s = lease_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_s = retry_s
        self.clock = clock
        self.monotonic = monotonic
        self.leading = False
        self.transitions = 0  # times this replica became the leader
        self.on_change: Callable[[bool], None] | None = None
        self._observed: tuple[Any, ...] | None = None  # the record last seen (holder, renewTime, transitions)
        self._observed_at = 0.0  # when it last changed, on our monotonic clock
        self._renewed_at = 0.0  # when we last renewed, on our monotonic clock

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"

    async def run(self) -> None:
        """Try to acquire or renew every `retry_s`, until cancelled (then give the Lease up)."""
        try:
            while True:
                await self.step()
                await asyncio.sleep(self.retry_s)
        finally:
            if self.leading:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.release())

    async def step(self) -> bool:
        """One try: acquire or renew. Whether this replica leads afterwards."""
        try:
            ok = await self._try()
        except (TimeoutError, ApiError, OSError) as e:
            log.warning("leader election: lease %s/%s not read or written: %s", self.namespace, self.name, e)
            ok = False
        now = self.monotonic()
        if ok:
            self._renewed_at = now
            self._set(True)
        elif self.leading and now - self._renewed_at >= self.renew_deadline_s:
            log.warning("leader election: could not renew the lease for %.0fs; stepping down", now - self._renewed_at)
            self._set(False)
        elif not self.leading:
            self._set(False)
        return self.leading

    async def release(self) -> None:
        """Give the Lease up: the standby takes it at its next retry."""
        try:
            lease = await self.kube.request("GET", f"{self.path}/{self.name}")
        except ApiError:
            return
        spec = lease.get("spec") or {}
        if spec.get("holderIdentity") != self.identity:
            return
        past = micro_time(self.clock() - 2 * self.lease_s)
        lease["spec"] = {**spec, "renewTime": past, "holderIdentity": ""}
        await self.kube.request("PUT", f"{self.path}/{self.name}", lease)
        self._set(False)

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            if leading:
                self.transitions += 1
            log.info("leader election: %s %s lease %s/%s", self.identity, "acquired" if leading else "lost",
                     self.namespace, self.name)
            if self.on_change is not None:
                self.on_change(leading)

    def _spec(self, acquire: float, transitions: int) -> dict[str, Any]:
        now = micro_time(self.clock())
        return {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_s),
                "acquireTime": micro_time(acquire), "renewTime": now, "leaseTransitions": transitions}

    async def _try(self) -> bool:
        try:
            lease = await self.kube.request("GET", f"{self.path}/{self.name}")
        except ApiError as e:
            if e.status != 404:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(self.clock(), 0)}
            try:
                await self.kube.request("POST", self.path, body)
            except ApiError as e2:
                if e2.status == 409:  # another replica created it first
                    return False
                raise
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        now = self.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        if holder == self.identity:
            lease["spec"] = {**spec, "renewTime": micro_time(self.clock())}
        else:
            expired = now - self._observed_at >= float(spec.get("leaseDurationSeconds") or self.lease_s)
            if holder and not expired:  # held, and renewed within the lease (as we saw it): wait
                return False
            lease["spec"] = self._spec(self.clock(), int(spec.get("leaseTransitions") or 0) + 1)
        try:
            await self.kube.request("PUT", f"{self.path}/{self.name}", lease)
        except ApiError as e:
            if e.status == 409:  # someone else wrote it since we read it
                return False
            raise
        return True
