"""GPU state through a CRIU checkpoint and restore; needs an NVIDIA GPU, so CI (which has none) skips it.

The workload keeps its state on the GPU where it cannot be recomputed: a random nonce drawn at start
is the head of a sha256 chain stored in device memory, next to 64 MiB of random ballast. Every step
reads the head back from the device, logs it, and writes sha256(head) back. A restore that lost device
memory, or a restart from zero, cannot continue the chain from the logged head: the test checks that
the whole log is one chain from the first nonce, and at the end the device's ballast still hashes to
what the host drew.

Both ways of driving the driver are tried: its checkpoint API through ctypes (the default, needs
driver r570+) and NVIDIA's `cuda-checkpoint` tool; each skips, saying why, where it is not available.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from queue_controller.runtime import control, gpu
from tests.plugins.criu import lines, wait_for

pytestmark = [pytest.mark.criu, pytest.mark.gpu]

CUDA_WORKLOAD = r'''
import ctypes, hashlib, os, sys, time
cuda = ctypes.CDLL("libcuda.so.1")
assert cuda.cuInit(0) == 0
dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
assert cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0
assert cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev) == 0
n = 64 << 20
assert cuda.cuMemAlloc_v2(ctypes.byref(ptr), n) == 0
ballast = os.urandom(n - 32)
head = os.urandom(32)                      # the nonce: no restart can draw it again
assert cuda.cuMemcpyHtoD_v2(ptr, head + ballast, n) == 0
want = hashlib.sha256(ballast).hexdigest()
del ballast
out = open(sys.argv[1], "a")
for i in range(int(sys.argv[2])):
    back = (ctypes.c_ubyte * 32)()
    assert cuda.cuMemcpyDtoH_v2(back, ptr, 32) == 0
    out.write(f"{i} {bytes(back).hex()}\n"); out.flush()
    nxt = hashlib.sha256(bytes(back)).digest()
    assert cuda.cuMemcpyHtoD_v2(ptr, nxt, 32) == 0
    time.sleep(0.05)
whole = (ctypes.c_ubyte * n)()
assert cuda.cuMemcpyDtoH_v2(whole, ptr, n) == 0
got = hashlib.sha256(bytes(whole)[32:]).hexdigest()
out.write(f"ballast {'ok' if got == want else 'LOST'} {got}\n"); out.flush()
'''

STEPS = 100


def _no_gpu() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None or subprocess.run([smi, "-L"], capture_output=True).returncode:
        return "no NVIDIA GPU on this machine (nvidia-smi absent or lists no GPU)"
    return None


def _unavailable(way: str) -> str | None:
    if (reason := _no_gpu()) is not None:
        return reason
    if way == "driver-api" and gpu.driver_api() is None:
        return "the NVIDIA driver here has no checkpoint API (cuCheckpointProcess*, driver r570+)"
    if way == "tool" and gpu.tool() is None:
        return "cuda-checkpoint is not installed (put it on PATH or set CKQ_CUDA_CHECKPOINT)"
    return None


def assert_one_chain(rows: list[str]) -> None:
    """Steps 0..STEPS-1, each head the sha256 of the one before, then the ballast intact."""
    steps = [r.split() for r in rows if not r.startswith("ballast")]
    assert [int(s[0]) for s in steps] == list(range(STEPS)), f"steps missing or repeated: {rows}"
    for (_, prev), (i, head) in itertools.pairwise(steps):
        assert hashlib.sha256(bytes.fromhex(prev)).hexdigest() == head, f"the chain breaks at step {i}"
    assert rows[-1].startswith("ballast ok"), f"device memory lost: {rows[-1]}"


@pytest.mark.parametrize("leave", [False, True], ids=["stop", "leave-running"])
@pytest.mark.parametrize("way", ["driver-api", "tool"])
def test_gpu_state_survives_checkpoint_and_restore(way: str, leave: bool, pod, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if (reason := _unavailable(way)) is not None:
        pytest.skip(reason)
    env: dict[str, str] = {}
    if way == "tool":
        env["CKQ_CUDA_CHECKPOINT"] = gpu.tool() or ""
        monkeypatch.setenv("CKQ_CUDA_CHECKPOINT", env["CKQ_CUDA_CHECKPOINT"])  # the `checkpoint` client too
    else:
        monkeypatch.delenv("CKQ_CUDA_CHECKPOINT", raising=False)
    script = tmp_path / "cuda_wl.py"
    script.write_text(CUDA_WORKLOAD)
    out = tmp_path / "scratch"
    out.mkdir()
    log = out / "gpu.log"
    cmd = [sys.executable, str(script), str(log), str(STEPS)]
    ckq = tmp_path / "ckq"
    p1 = pod(ckq, cmd, "--writable", str(out), env=env)
    wait_for(lambda: len(lines(log)) >= 10, what="the CUDA workload to start")
    ckpt = p1.checkpoint(*(["--leave-running"] if leave else [])).stdout.strip()
    if leave:  # the GPU was given back to the run, which ends as if never checkpointed
        assert p1.wait() == 0, p1.output()
        assert_one_chain(lines(log))
    else:
        assert p1.wait() == 75, p1.output()
        assert len(lines(log)) < STEPS, "the workload finished before the checkpoint stopped it"
    m = json.loads((ckq / "checkpoints" / ckpt / "manifest.json").read_text())
    assert m["gpu"]["tool"] == (env.get("CKQ_CUDA_CHECKPOINT") or "driver-api"), m["gpu"]
    # The restore puts the --writable log back as it was at the dump, so either way the finished log
    # is one chain: from the nonce of the first run, through the checkpoint, to the end.
    p2 = pod(ckq, cmd, "--restore", ckpt, env=env)
    assert p2.wait() == 0, p2.output()
    assert_one_chain(lines(log))


@pytest.mark.parametrize("commit", ["stop", "thaw"])
def test_gpu_state_through_the_gang_barrier(commit: str, pod, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The node agent's path for a gang: the workload frozen first (SIGSTOP of its tree), dumped while
    frozen (the driver locks and checkpoints a stopped CUDA process), then stopped (the commit of a
    preemption) or thawed (leave-running), and restored: the chain on the GPU goes on unbroken."""
    if (reason := _unavailable("driver-api")) is not None:
        pytest.skip(reason)
    monkeypatch.delenv("CKQ_CUDA_CHECKPOINT", raising=False)
    script = tmp_path / "cuda_wl.py"
    script.write_text(CUDA_WORKLOAD)
    out = tmp_path / "scratch"
    out.mkdir()
    log = out / "gpu.log"
    cmd = [sys.executable, str(script), str(log), str(STEPS)]
    ckq = tmp_path / "ckq"
    p1 = pod(ckq, cmd, "--writable", str(out))
    wait_for(lambda: len(lines(log)) >= 10, what="the CUDA workload to start")

    def ask(**payload: object) -> dict:
        return control.request(ckq / control.SOCKET_NAME, dict(payload), timeout=180)

    assert ask(op="freeze", token="uid-g", holdSeconds=300)["ok"]
    dumped = ask(op="checkpoint", token="uid-g", leaveRunning=False)
    assert dumped["ok"], dumped
    assert json.loads((ckq / "checkpoints" / dumped["id"] / "manifest.json").read_text())["gpu"]["tool"] == "driver-api"
    if commit == "stop":
        assert ask(op="stop", token="uid-g") == {"ok": True, "stopped": True}
        assert p1.wait() == 75, p1.output()
    else:
        assert ask(op="thaw", token="uid-g")["ok"]
        assert p1.wait() == 0, p1.output()  # the GPU was given back: the run ends as if never frozen
        assert_one_chain(lines(log))
    p2 = pod(ckq, cmd, "--restore", dumped["id"])
    assert p2.wait() == 0, p2.output()
    assert_one_chain(lines(log))


def test_the_chain_check_fails_on_a_restart_from_zero() -> None:
    """The check above cannot pass on a run that started again: its second nonce breaks the chain."""
    def run(nonce: bytes, start: int, stop: int) -> list[str]:
        rows, head = [], nonce
        for i in range(stop):
            if i >= start:
                rows.append(f"{i} {head.hex()}")
            head = hashlib.sha256(head).digest()
        return rows
    good = [*run(b"a" * 32, 0, STEPS), "ballast ok x"]
    assert_one_chain(good)
    restarted = run(b"a" * 32, 0, 40) + run(b"b" * 32, 40, STEPS) + ["ballast ok x"]
    with pytest.raises(AssertionError, match="chain breaks at step 40"):
        assert_one_chain(restarted)
    with pytest.raises(AssertionError, match="device memory lost"):
        assert_one_chain([*good[:-1], "ballast LOST x"])


TORCH_WORKLOAD = r'''
import hashlib, os, sys, time
import torch
torch.use_deterministic_algorithms(True)
nonce = sys.argv[3] if len(sys.argv) > 3 else os.urandom(8).hex()   # drawn once; a restart draws another
gen = torch.Generator(device="cuda").manual_seed(int(nonce, 16))
model = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 512)).cuda()
with torch.no_grad():
    for p in model.parameters():
        p.copy_(torch.randn(p.shape, generator=gen, device="cuda") * 0.02)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
out = open(sys.argv[1], "a")
out.write(f"nonce {nonce}\n"); out.flush()
for step in range(int(sys.argv[2])):
    x = torch.randn(256, 512, generator=gen, device="cuda")
    loss = ((model(x) - x) ** 2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    out.write(f"{step} {loss.item():.10f}\n"); out.flush()
    time.sleep(0.02)
digest = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in model.parameters())).hexdigest()
out.write(f"weights {digest}\n"); out.flush()
'''


def test_pytorch_training_resumes_bit_identical(pod, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A training loop stopped by a checkpoint and restored ends with the weights of an uninterrupted run.

    The model's initial weights and data come from a nonce drawn at start; the reference run is given
    the same nonce. A restart would draw another nonce (or, given one, lose the optimizer's state).
    """
    if (reason := _unavailable("driver-api")) is not None:
        pytest.skip(reason)
    try:
        import torch  # noqa: F401
    except ImportError:
        pytest.skip("PyTorch is not installed here")
    monkeypatch.delenv("CKQ_CUDA_CHECKPOINT", raising=False)
    env = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    script = tmp_path / "train.py"
    script.write_text(TORCH_WORKLOAD)
    out = tmp_path / "scratch"
    out.mkdir()
    log = out / "train.log"
    steps = 300
    ckq = tmp_path / "ckq"
    p1 = pod(ckq, [sys.executable, str(script), str(log), str(steps)], "--writable", str(out), env=env)
    wait_for(lambda: len(lines(log)) >= 50, timeout=180, what="the training loop to start")
    ckpt = p1.checkpoint().stdout.strip()
    assert p1.wait() == 75, p1.output()
    stopped_at = len(lines(log))
    assert stopped_at < steps, "the training finished before the checkpoint stopped it"
    p2 = pod(ckq, [sys.executable, str(script), str(log), str(steps)], "--restore", ckpt, env=env)
    assert p2.wait(timeout=300) == 0, p2.output()
    resumed = lines(log)
    nonce = resumed[0].split()[1]
    ref_log = tmp_path / "reference.log"
    ref = subprocess.run([sys.executable, str(script), str(ref_log), str(steps), nonce],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    assert resumed == lines(ref_log), "the resumed run differs from an uninterrupted one"
