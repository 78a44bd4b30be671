"""The injected runtime (`ckq.local/runtime`) checkpoints and restores a workload in a user's image.

Real containers, as a pod would run them: one containerd + runc from the real-node runtime cache
(`realnode`), driven with `ctr`, no kubelet. For each "user image" (ckq.local/python:3, which holds
nothing from ckq, and a scratch image holding one static Go program: no shell, no libc):

1. an "init container" from the runtime image copies /ckq-runtime into a host directory (the
   emptyDir), with the image's own entrypoint;
2. container 1 runs `/ckq-runtime/bin/ckq-run --dir /ckpt -- <workload>` with the shared directory
   mounted read-only and a checkpoint directory, under the security context the controller will add
   (`runtime_image.CONTAINER_SECURITY_CONTEXT`, translated to ctr flags);
3. the workload draws a random nonce and extends a sha256 chain over a buffer in memory; a
   checkpoint is asked for (through the control socket from the host, as the node agent will, or
   with `ckq-run checkpoint` exec'd in the container) and container 1 exits 75;
4. a NEW container restores it (`--restore latest`) and it finishes with the nonce it drew in
   container 1 and the final digest an uninterrupted run gives, computed here from that nonce.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from queue_controller.devcluster import images, preload, processes, realnode, runtime_image
from queue_controller.devcluster.pki import write_pki
from queue_controller.runtime import control

pytestmark = pytest.mark.criu

CHECKPOINTED = 75
STEPS = 160
SIZE = 4 << 20  # the buffer the chain runs over: 4 MiB of state in memory

# The workload: a random nonce, then a hash chain over an in-memory buffer. Restarting it would draw a
# new nonce; only a process restored with its memory can end with the first nonce's final digest.
WORKLOAD_PY = r"""
import hashlib, os, sys, time
# One write per line: print() writes each part on its own, and a checkpoint taken between two of
# them splits the line across two containers' logs.
def say(*parts):
    os.write(1, (" ".join(map(str, parts)) + "\n").encode())
steps, size, logdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.makedirs(logdir, exist_ok=True)
log = open(os.path.join(logdir, "steps.log"), "a")
nonce = os.urandom(16).hex()
say("nonce", nonce)
h = hashlib.sha256(nonce.encode()).digest()
buf = bytearray(h * (size // 32))
for step in range(steps):
    off = int.from_bytes(h[:4], "big") % (size // 32) * 32
    buf[off:off + 32] = h
    h = hashlib.sha256(h + buf).digest()
    log.write(f"{step}\n")
    log.flush()
    say("step", step, h.hex())
    time.sleep(0.03)
log.close()
with open(os.path.join(logdir, "steps.log")) as fh:
    say("logged", fh.read().split() == [str(i) for i in range(steps)])
say("final", nonce, h.hex())
"""

WORKLOAD_GO = """\
package main

import (
\t"crypto/rand"
\t"crypto/sha256"
\t"encoding/binary"
\t"encoding/hex"
\t"fmt"
\t"os"
\t"strconv"
\t"time"
)

func main() {
\tsteps, _ := strconv.Atoi(os.Args[1])
\tsize, _ := strconv.Atoi(os.Args[2])
\tos.MkdirAll(os.Args[3], 0o755)
\tpath := os.Args[3] + "/steps.log"
\tlog, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
\tif err != nil {
\t\tpanic(err)
\t}
\traw := make([]byte, 16)
\trand.Read(raw)
\tnonce := hex.EncodeToString(raw)
\tfmt.Println("nonce", nonce)
\th := sha256.Sum256([]byte(nonce))
\tbuf := make([]byte, 0, size)
\tfor i := 0; i < size/32; i++ {
\t\tbuf = append(buf, h[:]...)
\t}
\tfor step := 0; step < steps; step++ {
\t\toff := int(binary.BigEndian.Uint32(h[:4])%uint32(size/32)) * 32
\t\tcopy(buf[off:off+32], h[:])
\t\td := sha256.New()
\t\td.Write(h[:])
\t\td.Write(buf)
\t\tcopy(h[:], d.Sum(nil))
\t\tfmt.Fprintf(log, "%d\\n", step)
\t\tfmt.Println("step", step, hex.EncodeToString(h[:]))
\t\ttime.Sleep(30 * time.Millisecond)
\t}
\tlog.Close()
\tdata, _ := os.ReadFile(path)
\twant := ""
\tfor i := 0; i < steps; i++ {
\t\twant += strconv.Itoa(i) + "\\n"
\t}
\tif string(data) == want {
\t\tfmt.Println("logged True")
\t} else {
\t\tfmt.Println("logged False")
\t}
\tfmt.Println("final", nonce, hex.EncodeToString(h[:]))
}
"""


def expected_digest(nonce: str, steps: int = STEPS, size: int = SIZE) -> str:
    """The final digest of an uninterrupted run with this nonce (written again here, not shared)."""
    chain = hashlib.sha256(nonce.encode()).digest()
    buf = bytearray(chain * (size // 32))
    for _ in range(steps):
        off = int.from_bytes(chain[:4], "big") % (size // 32) * 32
        buf[off:off + 32] = chain
        chain = hashlib.sha256(chain + buf).digest()
    return chain.hex()


# ---- a containerd node driven with ctr ------------------------------------------------------------


# containerd's default capability set for a container that is not privileged (oci.populateDefaultUnixSpec),
# the same for ctr and for pods through the CRI plugin.
DEFAULT_CAPS = ["CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP",
                "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"]


def ctr_flags(ctx: dict[str, Any]) -> list[str]:
    """A Kubernetes container securityContext as `ctr run` flags (the parts that matter here).

    ctr and the CRI plugin build the spec from the same containerd defaults (default capability set,
    masked and read-only /proc paths, no seccomp unless asked); ctr differs in setting no_new_privs
    unless --allow-new-privs, which is what allowPrivilegeEscalation: false does in Kubernetes."""
    flags: list[str] = []
    if ctx.get("privileged"):
        flags.append("--privileged")
    caps = ctx.get("capabilities") or {}
    add = list(caps.get("add", []))
    # Kubernetes drops first, then adds; ctr applies --cap-drop after --cap-add, so never drop what is
    # added. ctr 1.6 knows no "ALL": name containerd's default set instead.
    for cap in caps.get("drop", []):
        flags += [f"--cap-drop=CAP_{c}" for c in (DEFAULT_CAPS if cap == "ALL" else [cap]) if c not in add]
    flags += [f"--cap-add=CAP_{c}" for c in add]
    seccomp = (ctx.get("seccompProfile") or {}).get("type", "Unconfined")
    if seccomp == "RuntimeDefault":
        flags.append("--seccomp")
    elif seccomp != "Unconfined":
        raise ValueError(f"seccompProfile {seccomp} is not translated")
    if ctx.get("allowPrivilegeEscalation", True):
        flags.append("--allow-new-privs")
    if ctx.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    return flags


class Node:
    """One containerd (the real-node configuration, images from the seed) for containers run by ctr."""

    def __init__(self, root: Path, cluster: str = "rtimg") -> None:
        self.root = root
        rt = realnode.cached_runtime() or realnode.ensure_runtime()
        self.rt = rt
        self.node = realnode.RealNode(cluster=cluster, name="real-0", index=0, net=realnode.pick_net(cluster),
                                      dir=str(root / "node"), kubelet_port=0, healthz_port=0)
        self.env = {**os.environ, "PATH": rt.path_env}
        self.rec: processes.ProcessRecord | None = None
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def start(self, extra_images: list[Path]) -> None:
        pki = self.root / "pki"
        write_pki(pki, service_ip="10.96.0.1", advertise_ip="127.0.0.1")
        realnode.prepare(self.node, pki, "https://127.0.0.1:6443")
        realnode.plant_seed(self.node, realnode.seed_root(self.rt, preload.local_images()))
        self.rec = processes.start("containerd", realnode.containerd_argv(self.node, self.rt),
                                   self.root / "containerd.log",
                                   cgroup_procs=realnode.cgroup_procs_files(self.node.cgroup + "/runtime"),
                                   env=self.env)
        deadline = time.monotonic() + 60
        while not self._ready():
            if time.monotonic() > deadline:
                raise AssertionError(f"containerd did not start; see {self.root / 'containerd.log'}")
            time.sleep(0.1)
        for archive in extra_images:
            realnode.import_image(self.node, self.rt, archive)

    def _ready(self) -> bool:
        try:
            return realnode.containerd_ready(self.node, self.rt)
        except (OSError, subprocess.SubprocessError):
            return False

    def stop(self) -> list[str]:
        if self.rec is not None:
            processes.stop(self.rec)
        return realnode.teardown(self.node)

    def ctr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.rt.ctr), "--address", str(self.node.socket), "-n", "k8s.io", *args],
                              capture_output=True, text=True, env=self.env, timeout=timeout, check=False)

    def run(self, name: str, image: str, argv: list[str], *, mounts: dict[str, str], ro: tuple[str, ...] = (),
            flags: list[str] | None = None) -> Container:
        """`ctr run --rm` in the background; its stdout/stderr (the container's) go to a log file."""
        cmd = [str(self.rt.ctr), "--address", str(self.node.socket), "-n", "k8s.io", "run", "--rm",
               f"--cgroup=/{self.node.cgroup}/ctr/{name}", f"--runc-binary={self.rt.runc}",
               # runc's state under the node's run directory (the default, /run/containerd/runc, is
               # shared with every other containerd on the machine and outlives the teardown)
               f"--runc-root={self.node.run_dir / 'containerd' / 'runc'}", *(flags or [])]
        for src, dst in mounts.items():
            mode = "ro" if dst in ro else "rw"
            cmd.append(f"--mount=type=bind,src={src},dst={dst},options=rbind:{mode}")
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([*cmd, image, name, *argv], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        return Container(self, name, proc, log)


class Container:
    def __init__(self, node: Node, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.node, self.name, self.proc, self.log = node, name, proc, log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 180) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not exit in {timeout}s:\n{self.output()[-3000:]}") from None

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output(), re.M)
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: no {pattern!r} (exit {self.proc.poll()}):\n{self.output()[-3000:]}")

    def exec(self, argv: list[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return self.node.ctr("task", "exec", "--exec-id", f"x{time.monotonic_ns()}", self.name, *argv,
                             timeout=timeout)

    def kill(self) -> None:
        self.node.ctr("task", "kill", "--signal", "SIGKILL", self.name)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)


def scratch_go_image(target: Path, ref: str, source: str, binary: str) -> Path:
    """An image holding one static Go program and nothing else (no shell, no libc, no /etc)."""
    with tempfile.TemporaryDirectory(prefix="ckq-goimg-") as tmp:
        work = Path(tmp)
        (work / "go.mod").write_text("module ckq.local/workload\n\ngo 1.21\n")
        (work / "main.go").write_text(source)
        env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-trimpath"}
        subprocess.run(["go", "build", "-ldflags=-s -w", "-o", "prog", "."], cwd=work, env=env, check=True,
                       capture_output=True)
        layer = work / "layer.tar"
        with tarfile.open(layer, "w") as tar:
            data = (work / "prog").read_bytes()
            info = tarfile.TarInfo(binary.lstrip("/"))
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        images.write_oci_archive(target, ref, layer, {"architecture": images._goarch(), "os": "linux",
                                                      "config": {"Env": []}})
    return target


# ---- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    if os.geteuid() != 0:
        pytest.fail("the runtime-image test needs root (containerd, runc, CRIU)")
    if shutil.which("go") is None:
        pytest.fail("the runtime-image test needs Go on PATH to build the launcher and the scratch workload")
    root = Path(tempfile.mkdtemp(prefix="ckq-rtimg-"))
    t0 = time.monotonic()
    runtime = runtime_image.runtime_image(log=print)
    print(f"runtime image {runtime.archive.name}: {runtime.archive.stat().st_size / 1e6:.1f} MB "
          f"({time.monotonic() - t0:.1f}s)")
    go_image = scratch_go_image(root / "go-workload.tar", "ckq.local/test-go-chain:1", WORKLOAD_GO, "/chain")
    n = Node(root)
    try:
        preloaded = {i.archive for i in preload.local_images()}  # the seed every real node starts from
        n.start([a for a in (runtime.archive, go_image) if a not in preloaded])
        yield n
    finally:
        problems = n.stop()
        shutil.rmtree(root, ignore_errors=True)
        assert not problems, problems


def install_runtime(node: Node, shared: Path) -> None:
    """The init container: the runtime image's own entrypoint copies /ckq-runtime into the volume."""
    init = node.run(f"init-{shared.parent.name}", runtime_image.RUNTIME_IMAGE, [],
                    mounts={str(shared): runtime_image.INSTALL_PATH})
    assert init.wait(120) == 0, init.output()
    assert "ckq runtime installed" in init.output(), init.output()
    assert (shared / "bin/ckq-run").is_symlink() and (shared / "bin/ckq-launch").is_file()


def checkpoint_restore_cycle(node: Node, tmp: Path, image: str, workload: list[str], *,
                             ctx: dict[str, Any], writable: str, cycles: int = 1, via_exec: bool = False) -> list[str]:
    """Install the runtime, run the workload, then `cycles` times: checkpoint it (the container exits
    75) and restore it in a NEW container; the last one finishes. Returns each container's output."""
    shared, ckpt = tmp / "shared", tmp / "ckpt"
    shared.mkdir(parents=True)
    ckpt.mkdir()
    install_runtime(node, shared)
    mounts = {str(shared): runtime_image.MOUNT_PATH, str(ckpt): "/ckpt"}
    ro = (runtime_image.MOUNT_PATH,)
    flags = ctr_flags(ctx)
    # `writable`: a directory in the container's own rootfs the workload appends to; ckq-run saves it
    # with each checkpoint (CRIU's post-dump hook, which must run without a shell) and puts it back in
    # the new container before CRIU restores the process that holds the file open.
    run = [runtime_image.CKQ_RUN, "--dir", "/ckpt", "--writable", writable]
    c = node.run(f"{tmp.name}-0", image, [*run, "--", *workload], mounts=mounts, ro=ro, flags=flags)
    nonce = c.wait_for(r"^nonce ([0-9a-f]{32})$").group(1)
    outputs: list[str] = []
    for k in range(cycles):
        c.wait_for(rf"^step {25 * (k + 1)} ")
        if via_exec:  # ckq-run's own CLI inside the container (no shell needed: the launcher is static)
            asked = c.exec([runtime_image.CKQ_RUN, "checkpoint", "--dir", "/ckpt"])
            assert asked.returncode == 0, f"{asked.stdout}{asked.stderr}\n{c.output()[-3000:]}"
            ckpt_id = asked.stdout.strip()
        else:  # the node agent's way: the control socket in the checkpoint directory, from the host
            reply = control.request(ckpt / control.SOCKET_NAME, {"op": "checkpoint"}, timeout=180)
            assert reply.get("ok"), f"{reply}\n{c.output()[-3000:]}"
            ckpt_id = reply["id"]
        assert c.wait() == CHECKPOINTED, c.output()[-3000:]
        assert (ckpt / "checkpoints" / ckpt_id / "manifest.json").is_file()
        outputs.append(c.output())
        last_before = max(int(s) for s in re.findall(r"^step (\d+) ", c.output(), re.M))
        assert last_before < STEPS - 1, "the workload finished before the checkpoint: nothing was proven"
        # A NEW container (fresh PID and mount namespaces, fresh rootfs) restores it.
        c = node.run(f"{tmp.name}-{k + 1}", image, [*run, "--restore", "latest", "--", *workload], mounts=mounts,
                     ro=ro, flags=flags)
        first_after = int(c.wait_for(r"^step (\d+) ").group(1))
        assert first_after == last_before + 1, (last_before, first_after)  # no step lost, none repeated
        c.wait_for(r"^ckq-run: workload running as pid \d+ \(restored from latest\)")
    assert c.wait() == 0, c.output()[-3000:]
    outputs.append(c.output())
    for out in outputs[1:]:
        assert "nonce " not in out, "a restored container started the workload afresh"
    final = re.search(r"^final ([0-9a-f]{32}) ([0-9a-f]{64})$", outputs[-1], re.M)
    assert final, outputs[-1][-3000:]
    assert re.search(r"^logged True$", outputs[-1], re.M), "the appended file lost or repeated steps"
    assert final.group(1) == nonce  # the random draw of the first container survived every restore
    assert final.group(2) == expected_digest(nonce)  # and so did the 4 MiB buffer the chain runs over
    return outputs


# ---- tests ---------------------------------------------------------------------------------------


def test_python_workload_in_a_user_image_without_ckq(node: Node, tmp_path: Path) -> None:
    """Two preemptions: checkpoint, restore in a new container, checkpoint again, restore again."""
    outputs = checkpoint_restore_cycle(node, tmp_path / "py", images.PYTHON_IMAGE,
                                       ["python3", "-u", "-c", WORKLOAD_PY, str(STEPS), str(SIZE), "/var/tmp/chain"],
                                       ctx=runtime_image.CONTAINER_SECURITY_CONTEXT, writable="/var/tmp/chain",
                                       cycles=2)
    assert "workload running as pid 1001" in outputs[0]  # above --pid-base without writing ns_last_pid
    assert all("workload running as pid 1001 (restored" in out for out in outputs[1:])


def test_static_workload_in_an_image_without_shell_or_libc(node: Node, tmp_path: Path) -> None:
    checkpoint_restore_cycle(node, tmp_path / "go", "ckq.local/test-go-chain:1",
                             ["/chain", str(STEPS), str(SIZE), "/data"], ctx=runtime_image.CONTAINER_SECURITY_CONTEXT,
                             writable="/data", via_exec=True)
