"""GPU checkpoint/restore through cuda-checkpoint; needs an NVIDIA GPU, so CI (which has none) skips it."""

from __future__ import annotations

import ctypes.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from queue_controller.runtime import gpu
from tests.plugins.criu import lines, wait_for

pytestmark = [pytest.mark.criu, pytest.mark.gpu]

CUDA_WORKLOAD = r'''
import ctypes, sys, time
cuda = ctypes.CDLL("libcuda.so.1")
assert cuda.cuInit(0) == 0
dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
cuda.cuDeviceGet(ctypes.byref(dev), 0)
cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev)
n = 64 << 20
assert cuda.cuMemAlloc_v2(ctypes.byref(ptr), n) == 0
host = (ctypes.c_ubyte * n)(*([7] * 16))
cuda.cuMemcpyHtoD_v2(ptr, host, n)
out = open(sys.argv[1], "a")
for i in range(int(sys.argv[2])):
    back = (ctypes.c_ubyte * 16)()
    cuda.cuMemcpyDtoH_v2(back, ptr, 16)
    out.write(f"{i} {bytes(back).hex()}\n"); out.flush(); time.sleep(0.05)
'''


def _gpu_missing() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None or subprocess.run([smi, "-L"], capture_output=True).returncode:
        return "no NVIDIA GPU on this machine (nvidia-smi absent or lists no GPU)"
    if gpu.tool() is None:
        return ("an NVIDIA GPU is present but cuda-checkpoint is not installed "
                "(put it on PATH or set CKQ_CUDA_CHECKPOINT)")
    if ctypes.util.find_library("cuda") is None:
        return "libcuda (the NVIDIA driver's user-space library) is not loadable"
    return None


@pytest.mark.skipif(_gpu_missing() is not None, reason=_gpu_missing() or "")
def test_gpu_state_survives_checkpoint_and_restore(pod, tmp_path: Path) -> None:
    script = tmp_path / "cuda_wl.py"
    script.write_text(CUDA_WORKLOAD)
    out = tmp_path / "scratch"
    out.mkdir()
    log = out / "gpu.log"
    cmd = [sys.executable, str(script), str(log), "100"]
    p1 = pod(tmp_path / "ckq", cmd, "--writable", str(out))
    wait_for(lambda: len(lines(log)) >= 10, what="the CUDA workload to start")
    ckpt = p1.checkpoint().stdout.strip()
    assert p1.wait() == 75, p1.output()
    p2 = pod(tmp_path / "ckq", cmd, "--restore", ckpt)
    assert p2.wait() == 0, p2.output()
    rows = [line.split() for line in lines(log)]
    assert [int(r[0]) for r in rows] == list(range(100))
    assert {r[1] for r in rows} == {"07" * 16}
