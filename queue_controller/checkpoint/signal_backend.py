"""The Signal backend: the application saves its own state when signalled, through the same machinery
as CRIU (`checkpoint.criu`): ckq-run in each container, driven by the node agents, artifacts in the
Checkpoint's status, a restored pod started with `ckq-run --restore <id>`.

What differs is inside ckq-run (`runtime/signal_mode.py`): asked for a checkpoint on its control socket,
it writes `<dir>/ckq-request.json` = {"id", "stateDir", "ackFile"}, sends the job's signal
(`spec.checkpoint.signal`, default SIGUSR1) and waits for the app to write its state under stateDir and
create ackFile; then it publishes stateDir as a checkpoint like a dump (manifest, sha256), and without
leaveRunning sends the app SIGTERM. An app that does not ack within the ack timeout fails the
checkpoint with ckq-run's message naming the signal and the timeout, which the agent records and the
controller turns into a `CheckpointFailed` Event (and whatever the policy does on a failed checkpoint).
A restored container starts the app afresh with `CKQ_RESTORE_DIR` pointing at the saved state.

The ack timeout is the job's `spec.checkpoint.timeoutSeconds` less a margin (half of it, at most
ACK_MARGIN_S), so that ckq-run gives up first, and the agent has time to record its message, which is
then what the user reads rather than the controller's generic "timed out".

The pods need no capability and keep their seccomp profile (`injection.SIGNAL_SECURITY_CONTEXT`).
"""

from __future__ import annotations

import dataclasses

from queue_controller.api.job import CheckpointPolicy
from queue_controller.checkpoint.base import LaunchRequest, PodInfo
from queue_controller.checkpoint.criu import CriuBackend
from queue_controller.checkpoint.injection import SignalMode, signal_name
from queue_controller.wire import CKQ_RUN_MODE_ANNOTATION

# What the agent may need, after ckq-run gave up on the ack, to notice the Checkpoint late and record the
# failure before the controller's own timeout (2 s was too little on a loaded 2-core machine).
ACK_MARGIN_S = 30.0


def ack_timeout_s(timeout_seconds: float) -> float:
    """ckq-run's wait for the app's ack, within the checkpoint's timeoutSeconds."""
    return timeout_seconds - min(timeout_seconds / 2, ACK_MARGIN_S)


def signal_mode(policy: CheckpointPolicy) -> SignalMode:
    """How ckq-run asks the job's app for its state (raises InjectionError for an unusable signal)."""
    return SignalMode(signal_name(policy.signal), ack_timeout_s(policy.timeout_seconds))


class SignalBackend(CriuBackend):
    name = "Signal"
    # Once the app has acked, its state is published and ckq-run has sent it SIGTERM: nothing it still
    # does is needed, so its pods go at once, as after a CRIU dump (with a grace period, the terminating
    # pods would hold their room while the preemptor waits for it).
    stops_workload = True
    done_message = "Signal: {n} container(s) saved by the application, through ckq-run"

    def pod_info(self, request: LaunchRequest) -> PodInfo:
        info = super().pod_info(request)
        return dataclasses.replace(info, annotations={**info.annotations, CKQ_RUN_MODE_ANNOTATION: self.name})

    def _signal_mode(self, request: LaunchRequest) -> SignalMode:
        return signal_mode(request.policy)
