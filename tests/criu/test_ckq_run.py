"""ckq-run with real CRIU: every pod is `ckq-run` as PID 1 of a fresh PID + mount namespace."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugins.criu import CKQ_RUN, lines, wait_for

pytestmark = pytest.mark.criu

WL = Path(__file__).parent / "workloads"
PY = sys.executable
CHECKPOINTED = 75
SETUP_FAILED = 69


def manifest(ckq_dir: Path, ckpt_id: str) -> dict:
    return json.loads((ckq_dir / "checkpoints" / ckpt_id / "manifest.json").read_text())


def test_random_walk_restored_in_new_namespace_is_bit_identical(pod, tmp_path: Path) -> None:
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    ref_out.mkdir()
    out.mkdir()
    steps = "60"
    ref = pod(tmp_path / "ckq-ref", [PY, str(WL / "random_walk.py"), str(ref_out), steps])

    p1 = pod(tmp_path / "ckq", [PY, str(WL / "random_walk.py"), str(out), steps], "--writable", str(out))
    wait_for(lambda: len(lines(out / "walk.log")) >= 20, what="20 steps of the walk")
    ckpt = p1.checkpoint().stdout.strip()
    assert p1.wait() == CHECKPOINTED, p1.output()
    m = manifest(tmp_path / "ckq", ckpt)
    assert {"id", "created", "sizeBytes", "sha256", "criuVersion", "kernel", "durationSeconds",
            "leaveRunning", "parent"} <= set(m)
    assert m["id"] == ckpt and m["leaveRunning"] is False and m["parent"] is None
    assert m["sizeBytes"] > 16 << 20  # the arrays are in the image
    stopped_at = len(lines(out / "walk.log"))
    assert stopped_at < 60

    p2 = pod(tmp_path / "ckq", [PY, str(WL / "random_walk.py"), str(out), steps], "--restore", ckpt)
    assert p2.wait() == 0, p2.output()
    assert ref.wait() == 0, ref.output()
    assert (out / "walk.log").read_bytes() == (ref_out / "walk.log").read_bytes()
    assert (out / "final.npy").read_bytes() == (ref_out / "final.npy").read_bytes()


def test_process_tree_leave_running_then_kill_and_restore(pod, tmp_path: Path) -> None:
    out = tmp_path / "scratch"
    out.mkdir()
    log = out / "tree.log"
    cmd = [PY, str(WL / "tree.py"), str(log), "80"]
    p1 = pod(tmp_path / "ckq", cmd, "--writable", str(out))
    wait_for(lambda: len(lines(log)) >= 20, what="20 numbers through the pipe")
    ckpt = p1.checkpoint("--leave-running").stdout.strip()
    assert manifest(tmp_path / "ckq", ckpt)["leaveRunning"] is True
    wait_for(lambda: len(lines(log)) >= 35, what="the tree to keep running after the dump")
    p1.kill()  # the node dies: the pod is gone

    p2 = pod(tmp_path / "ckq", cmd, "--restore", ckpt)
    assert p2.wait() == 0, p2.output()
    numbers = [int(line.split()[0]) for line in lines(log)]
    assert numbers == list(range(80))  # rolled back to the dump, then continued: no gap, no repeat
    pids = {tuple(line.split()[1:]) for line in lines(log)}
    assert len(pids) == 1  # parent and child kept their PIDs across namespaces


def test_incremental_chain_smaller_and_restorable(pod, tmp_path: Path) -> None:
    out = tmp_path / "scratch"
    out.mkdir()
    ckq = tmp_path / "ckq"
    log = out / "steps.log"
    cmd = [PY, str(WL / "sparse_update.py"), str(log), "300", "32"]
    p1 = pod(ckq, cmd, "--writable", str(out))
    wait_for(lambda: len(lines(log)) >= 5, what="the updates to start")
    first = p1.checkpoint("--leave-running").stdout.strip()
    pre = p1.checkpoint("--pre-dump").stdout.strip()
    second = p1.checkpoint("--leave-running").stdout.strip()
    third = p1.checkpoint().stdout.strip()
    assert p1.wait() == CHECKPOINTED, p1.output()
    m1, mp, m2, m3 = (manifest(ckq, i) for i in (first, pre, second, third))
    assert m1["parent"] is None
    assert (mp["parent"], mp["kind"], mp["restorable"]) == (first, "pre-dump", False)
    assert m2["parent"] == pre and m3["parent"] == second
    assert m3["parentSha256"] == m2["sha256"] and m3["chainDepth"] == 3
    # Each step rewrites 32 KiB of a 32 MiB array: the increments store a small part of the image.
    assert m3["sizeBytes"] < 0.5 * m1["sizeBytes"], (m1["sizeBytes"], m3["sizeBytes"])
    assert m3["logicalSizeBytes"] > 0.9 * m1["logicalSizeBytes"]
    # Python's heap moves between dumps, so some files were matched by virtual address, not offset.
    assert sum(m["phases"]["realignedFiles"] for m in (mp, m2, m3)) >= 1

    refused = pod(ckq, cmd, "--restore", pre)
    assert refused.wait() == SETUP_FAILED
    assert "cannot be restored" in refused.output()

    p2 = pod(ckq, cmd, "--restore", third)
    assert p2.wait() == 0, p2.output()
    assert lines(log) == [str(i) for i in range(300)] + ["ok"]


def test_corrupted_checkpoint_and_unknown_id_are_refused(pod, tmp_path: Path) -> None:
    out = tmp_path / "count.log"
    ckq = tmp_path / "ckq"
    cmd = [PY, str(WL / "counter.py"), str(out), "200"]
    p1 = pod(ckq, cmd)
    wait_for(lambda: len(lines(out)) >= 5, what="the counter to start")
    ckpt = p1.checkpoint().stdout.strip()
    assert p1.wait() == CHECKPOINTED

    unknown = pod(ckq, cmd, "--restore", "20990101-000000-abcdef")
    assert unknown.wait() == SETUP_FAILED
    assert "unknown checkpoint id" in unknown.output()

    pages = next((ckq / "checkpoints" / ckpt / "images").glob("pages-*.img"))
    with pages.open("r+b") as fh:
        fh.seek(4096 * 3 + 17)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))
    before = len(lines(out))
    bad = pod(ckq, cmd, "--restore", ckpt)
    assert bad.wait() == SETUP_FAILED
    assert "corrupted" in bad.output() and "Traceback" not in bad.output()
    assert len(lines(out)) == before  # nothing ran


def test_workload_exiting_during_checkpoints(pod, tmp_path: Path) -> None:
    out = tmp_path / "count.log"
    ckq = tmp_path / "ckq"
    p1 = pod(ckq, [PY, str(WL / "counter.py"), str(out), "30", "3"])
    wait_for(lambda: len(lines(out)) >= 1, what="the counter to start")
    outcomes = []
    while p1.proc.poll() is None:
        res = p1.checkpoint("--leave-running", check=False)
        outcomes.append(res.returncode)
        if res.returncode != 0:
            assert "Traceback" not in res.stderr
            assert "error" in res.stderr
    assert p1.wait() == 3  # the workload's own exit code
    assert 0 in outcomes
    assert not list((ckq / "checkpoints").glob(".tmp-*"))  # no half-written checkpoint is left
    for ckpt in (p for p in (ckq / "checkpoints").iterdir()):
        verify = subprocess.run([CKQ_RUN, "verify", "--dir", str(ckq), ckpt.name],
                                              capture_output=True, text=True)
        assert verify.returncode == 0, verify.stderr


def test_sigterm_is_forwarded(pod, tmp_path: Path) -> None:
    out = tmp_path / "count.log"
    p1 = pod(tmp_path / "ckq", [PY, str(WL / "counter.py"), str(out), "1000"])
    wait_for(lambda: len(lines(out)) >= 3, what="the counter to start")
    os.kill(p1.supervisor_pid(), signal.SIGTERM)
    assert p1.wait() == 7
    assert lines(out)[-1] == "got SIGTERM"


def test_encryption_round_trip_and_wrong_key(pod, tmp_path: Path) -> None:
    out = tmp_path / "scratch"
    out.mkdir()
    log = out / "count.log"
    ckq = tmp_path / "ckq"
    key, wrong = tmp_path / "key", tmp_path / "wrong"
    key.write_bytes(os.urandom(32))
    wrong.write_text(os.urandom(32).hex())
    cmd = [PY, str(WL / "counter.py"), str(log), "120"]
    p1 = pod(ckq, cmd, "--writable", str(out), "--encrypt-key-file", str(key))
    wait_for(lambda: len(lines(log)) >= 10, what="the counter to start")
    ckpt = p1.checkpoint().stdout.strip()
    assert p1.wait() == CHECKPOINTED
    m = manifest(ckq, ckpt)
    assert m["encryption"]["algorithm"].startswith("AES-256-GCM")
    stored = b"".join(p.read_bytes() for p in (ckq / "checkpoints" / ckpt).rglob("*") if p.is_file())
    assert b"CKQ-SECRET-MARKER-" not in stored

    snapshot = {p: p.read_bytes() for p in (ckq / "checkpoints" / ckpt).rglob("*") if p.is_file()}
    bad = pod(ckq, cmd, "--restore", ckpt, "--encrypt-key-file", str(wrong))
    assert bad.wait() == SETUP_FAILED
    assert "wrong key" in bad.output() and "Traceback" not in bad.output()
    assert {p: p.read_bytes() for p in snapshot} == snapshot  # nothing deleted or changed

    good = pod(ckq, cmd, "--restore", ckpt, "--encrypt-key-file", str(key))
    assert good.wait() == 0, good.output()
    assert [int(x) for x in lines(log)] == list(range(120))
    assert not list(ckq.glob(".restore-*"))  # decrypted images are not left behind


def test_signal_mode_round_trip(pod, tmp_path: Path) -> None:
    ckq = tmp_path / "ckq"
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    p1 = pod(ckq, [PY, str(WL / "signal_app.py"), str(first), "150"], "--mode", "signal", env=env)
    wait_for(lambda: len(lines(first)) >= 10, what="the app to start")
    ckpt = p1.checkpoint().stdout.strip()
    assert p1.wait() == CHECKPOINTED, p1.output()
    m = manifest(ckq, ckpt)
    assert (m["mode"], m["kind"], m["criuVersion"]) == ("Signal", "signal", None)
    saved = int((ckq / "checkpoints" / ckpt / "state" / "counter").read_text())
    assert saved >= 10

    p2 = pod(ckq, [PY, str(WL / "signal_app.py"), str(second), "150"], "--restore", ckpt, env=env)
    assert p2.wait() == 0, p2.output()
    assert [int(x) for x in lines(second)] == list(range(saved, 150))


def test_unusable_criu_is_refused(criu_bin: str, tmp_path: Path) -> None:
    res = subprocess.run(
        [CKQ_RUN, "--dir", str(tmp_path / "ckq"), "--", "true"], capture_output=True, text=True,
        env={**os.environ, "CKQ_CRIU": "/bin/false"},
    )
    assert res.returncode == SETUP_FAILED
    assert "CRIU" in res.stderr and "Traceback" not in res.stderr


def test_supervisor_outside_a_pid_namespace_dumps_and_a_pod_restores(pod, tmp_path: Path) -> None:
    out = tmp_path / "scratch"
    out.mkdir()
    log = out / "count.log"
    ckq = tmp_path / "ckq"
    cmd = [PY, str(WL / "counter.py"), str(log), "100"]
    host = subprocess.Popen([CKQ_RUN, "--dir", str(ckq), "--writable", str(out), "--", *cmd],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_for(lambda: len(lines(log)) >= 10, what="the counter to start")
        ckpt = subprocess.run([CKQ_RUN, "checkpoint", "--dir", str(ckq)], capture_output=True, text=True,
                              timeout=120)
        assert ckpt.returncode == 0, ckpt.stderr
        assert host.wait(timeout=60) == CHECKPOINTED
    finally:
        if host.poll() is None:
            os.killpg(host.pid, signal.SIGKILL)
            host.wait()
    p2 = pod(ckq, cmd, "--restore", ckpt.stdout.strip())
    assert p2.wait() == 0, p2.output()
    assert [int(x) for x in lines(log)] == list(range(100))


def test_ckq_criu_install_is_idempotent_and_check_passes(criu_bin: str) -> None:
    ckq = str(Path(sys.executable).with_name("ckq"))
    first = subprocess.run([ckq, "criu", "install"], capture_output=True, text=True, timeout=600)
    second = subprocess.run([ckq, "criu", "install"], capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    path = second.stdout.strip()
    assert path == first.stdout.strip() and os.access(path, os.X_OK)
    version = subprocess.run([path, "--version"], capture_output=True, text=True)
    assert "Version: 4." in version.stdout
    env = {k: v for k, v in os.environ.items() if k != "CKQ_CRIU"}
    check = subprocess.run([ckq, "criu", "check"], capture_output=True, text=True, env=env, timeout=60)
    assert check.returncode == 0 and "criu check` passed" in check.stdout, check.stderr


def test_second_supervisor_on_the_same_dir_is_refused(pod, tmp_path: Path) -> None:
    out = tmp_path / "count.log"
    ckq = tmp_path / "ckq"
    cmd = [PY, str(WL / "counter.py"), str(out), "400"]
    p1 = pod(ckq, cmd)
    wait_for(lambda: len(lines(out)) >= 3, what="the counter to start")
    p2 = pod(ckq, cmd)
    assert p2.wait() == SETUP_FAILED
    assert "already supervising" in p2.output()
    ckpt = p1.checkpoint("--leave-running").stdout.strip()  # the first one is untouched
    assert manifest(ckq, ckpt)["leaveRunning"] is True
    p1.kill()


MIN_CAPS = ["checkpoint_restore", "sys_ptrace", "sys_admin", "net_admin", "sys_time", "sys_chroot", "setpcap"]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="util-linux setpriv is needed to drop capabilities")
def test_documented_minimum_capabilities_suffice(criu_bin: str, tmp_path: Path) -> None:
    """docs/checkpointing.md lists these capabilities; dump and restore with nothing else."""
    out = tmp_path / "scratch"
    out.mkdir()
    log = out / "count.log"
    ckq = tmp_path / "ckq"
    bounded = ["setpriv", "--bounding-set", ",".join(["-all", *(f"+{c}" for c in MIN_CAPS)]), "--"]
    cmd = [PY, str(WL / "counter.py"), str(log), "60"]
    first = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--mount", *bounded, CKQ_RUN, "--dir", str(ckq),
         "--writable", str(out), "--", *cmd],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: len(lines(log)) >= 10, what="the counter to start")
        ckpt = subprocess.run([CKQ_RUN, "checkpoint", "--dir", str(ckq)], capture_output=True, text=True)
        assert ckpt.returncode == 0, ckpt.stderr
        assert first.wait(timeout=60) == CHECKPOINTED
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    second = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "--mount", *bounded, CKQ_RUN, "--dir", str(ckq),
         "--restore", ckpt.stdout.strip(), "--", *cmd],
        capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert [int(x) for x in lines(log)] == list(range(60))


def test_failed_dump_leaves_the_workload_running_and_reports_criu(pod, tmp_path: Path) -> None:
    out = tmp_path / "count.log"
    ckq = tmp_path / "ckq"
    # An option CRIU rejects makes every dump fail, before it touches the workload.
    p1 = pod(ckq, [PY, str(WL / "counter.py"), str(out), "40"], "--criu-opt=--no-such-option")
    wait_for(lambda: len(lines(out)) >= 3, what="the counter to start")
    res = p1.checkpoint(check=False)
    assert res.returncode == 1
    assert "criu dump failed" in res.stderr and "no-such-option" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not list((ckq / "checkpoints").iterdir())  # no checkpoint, no temp debris
    assert p1.wait() == 0, p1.output()  # the workload ran to its end
    assert [int(x) for x in lines(out)] == list(range(40))


def test_a_full_store_fails_the_dump_and_leaves_nothing_behind(pod, tmp_path: Path) -> None:
    """ENOSPC in the checkpoint directory: the dump fails naming it, no partial checkpoint stays, the
    workload runs on, and once there is room the next dump works and restores."""
    ckq = tmp_path / "ckq"
    ckq.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(ckq)], check=True)
    try:
        out = tmp_path / "scratch"
        out.mkdir()
        log = out / "tree.log"
        cmd = [PY, str(WL / "tree.py"), str(log), "600"]  # ~18 s: still running after the failed dump
        p1 = pod(ckq, cmd, "--writable", str(out), "--staging", "none")
        wait_for(lambda: len(lines(log)) >= 10, what="the workload to start")
        failed = p1.checkpoint("--leave-running", check=False)
        assert failed.returncode != 0 and "No space left on device" in failed.stderr, failed
        assert [p.name for p in (ckq / "checkpoints").iterdir()] == []  # no .tmp-<id> left
        seen = len(lines(log))
        wait_for(lambda: len(lines(log)) > seen + 5, what="the workload to run on after the failed dump")
        subprocess.run(["mount", "-o", "remount,size=512m", str(ckq)], check=True)
        ckpt = p1.checkpoint("--leave-running").stdout.strip()
        p1.kill()
        p2 = pod(ckq, cmd, "--restore", ckpt)
        assert p2.wait() == 0, p2.output()
        assert [int(line.split()[0]) for line in lines(log)] == list(range(600))
    finally:
        subprocess.run(["umount", "-l", str(ckq)], check=False)
