"""The Signal-mode helper for workloads, without a supervisor: the request/ack file protocol."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from queue_controller.runtime import workload

pytestmark = pytest.mark.unit


def _request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    state, ack = tmp_path / "state", tmp_path / "ack"
    state.mkdir()
    (tmp_path / workload.REQUEST_FILE).write_text(
        json.dumps({"id": "x", "stateDir": str(state), "ackFile": str(ack)})
    )
    monkeypatch.setenv("CKQ_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setenv("CKQ_CHECKPOINT_SIGNAL", "SIGUSR2")
    return state, ack


def test_immediate_save_on_signal_writes_state_then_ack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state, ack = _request(tmp_path, monkeypatch)
    old = signal.getsignal(signal.SIGUSR2)
    try:
        workload.on_checkpoint(lambda d: (d / "s").write_text("42"))
        os.kill(os.getpid(), signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, old)
    assert (state / "s").read_text() == "42" and ack.exists()


def test_safe_point_save_waits_for_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state, ack = _request(tmp_path, monkeypatch)
    old = signal.getsignal(signal.SIGUSR2)
    try:
        workload.on_checkpoint(lambda d: (d / "s").write_text("7"), at_safe_points=True)
        assert workload.checkpoint_if_requested() is False  # nothing pending yet
        os.kill(os.getpid(), signal.SIGUSR2)
        assert not ack.exists()
        assert workload.checkpoint_if_requested() is True
    finally:
        signal.signal(signal.SIGUSR2, old)
    assert (state / "s").read_text() == "7" and ack.exists()


def test_restore_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CKQ_RESTORE_DIR", raising=False)
    assert workload.restore_dir() is None
    monkeypatch.setenv("CKQ_RESTORE_DIR", "/ckpt/checkpoints/a/state")
    assert workload.restore_dir() == Path("/ckpt/checkpoints/a/state")
