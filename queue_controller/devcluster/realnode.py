"""Real worker nodes: a kubelet and a containerd per node, running real containers with runc.

A kwok node runs nothing, so no process state exists to checkpoint there. A real node is what a
machine in a cluster is: a kubelet (built from Go modules with the other Kubernetes binaries), a
containerd 1.6 with runc and the CNI plugins (Debian's packages, unpacked into a cache, never
installed), and a pod network. Several real nodes share this one machine, so each gets its own:

- **state**: containerd root/state/socket, kubelet root-dir, pod-log dir and CNI config, under
  `/var/lib/ckq/<cluster>-<key>/<name>/` (short: the kubelet binds unix sockets below its root-dir)
  and `/run/ckq/<cluster>-<key>/<name>/`;
- **cgroup subtree** `/ckq/<cluster>/<name>` in every hierarchy: containerd and its shims run in
  `…/runtime`, the kubelet in `…/kubelet`, pods under `…/kubepods` (the kubelet's `cgroupRoot`). Two
  kubelets sharing one `/kubepods` would each delete the other's pod cgroups; separate roots keep
  them apart, and `down` finds every process a node ever started by walking its subtree;
- **network**: a Linux bridge `ckq<k>n<i>` holding the node's address `10.<150+k>.<i>.1`. That
  address is the node's InternalIP (the kubelet serves logs/exec/port-forward there) and the pods'
  gateway; the CNI `bridge` plugin attaches each pod's veth to it with an address from
  `10.<150+k>.<i>.0/24`. Pods on different nodes reach each other through this machine's routing
  table (connected routes of the bridges, `net.ipv4.ip_forward=1`). Nothing leaves the machine: no
  masquerade, no default route beyond the host.

`down` (`teardown`) kills every process in the node's cgroup subtree, unmounts whatever was mounted
under its directories and the pods' network namespaces, removes the cgroups, the bridge, the CNI
result cache entries and the directories: the machine is left as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from queue_controller.debian import Apt, DebianError, host_suite
from queue_controller.devcluster.constants import FLAVOR_LABEL, NODE_KIND_LABEL
from queue_controller.devcluster.errors import DevClusterError
from queue_controller.devcluster.images import PAUSE_IMAGE, LocalImage
from queue_controller.devcluster.kubeconfig import write_kubeconfig
from queue_controller.devcluster.pki import issue_client, node_client
from queue_controller.runtime.criu_install import cache_root

MAX_REAL_NODES = 8
REAL_FLAVOR = "real"
RUNTIME_PACKAGES = ["containerd", "runc", "containernetworking-plugins"]
CGROUP_TOP = "ckq"
_CGROUP_V1_NEEDED = ("cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "devices")
_SYS_CGROUP = Path("/sys/fs/cgroup")
_RUN_ROOT = Path("/run/ckq")
# Node data (containerd root, kubelet root-dir) lives on the root disk at a short path: the kubelet
# binds unix sockets below its root-dir (108 bytes at most), and cAdvisor needs a block device there.
NODES_ROOT = Path("/var/lib/ckq")
_CNI_CACHE = Path("/var/lib/cni")
_NETNS_DIR = Path("/run/netns")
_FIRST_NET = 150
_NETS = 40


# ---- the runtime packages -------------------------------------------------------------------


@dataclass(frozen=True)
class NodeRuntime:
    """Where the unpacked containerd, runc and CNI plugins live."""

    root: Path

    @property
    def containerd(self) -> Path:
        return self.root / "usr/bin/containerd"

    @property
    def ctr(self) -> Path:
        return self.root / "usr/bin/ctr"

    @property
    def runc(self) -> Path:
        return self.root / "usr/sbin/runc"

    @property
    def cni_bin(self) -> Path:
        return self.root / "usr/lib/cni"

    @property
    def path_env(self) -> str:
        # containerd finds its shim, and the shim finds runc, through PATH.
        return f"{self.root / 'usr/bin'}:{self.root / 'usr/sbin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"

    def complete(self) -> bool:
        needed = (self.containerd, self.ctr, self.runc, self.root / "usr/bin/containerd-shim-runc-v2",
                  self.cni_bin / "bridge", self.cni_bin / "host-local", self.cni_bin / "loopback")
        return all(os.access(p, os.X_OK) for p in needed)


def runtime_dir() -> Path:
    return cache_root() / "node-runtime"


def cached_runtime() -> NodeRuntime | None:
    current = runtime_dir() / "current"
    rt = NodeRuntime(current / "root")
    return rt if rt.complete() else None


def ensure_runtime(*, log: Callable[[str], None] = lambda _: None) -> NodeRuntime:
    """containerd, runc and the CNI plugins of this machine's Debian release, unpacked into the cache."""
    cached = cached_runtime()
    if cached is not None:
        return cached
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise DevClusterError("real nodes need apt-get and dpkg (a Debian-based machine) to fetch containerd and runc")
    base = runtime_dir()
    apt = Apt(base / "apt", host_suite())
    try:
        log(f"fetching the {apt.suite} package index into {apt.state}")
        apt.update()
        versions = apt.versions(RUNTIME_PACKAGES)
        key = hashlib.sha256(json.dumps(sorted(versions.items())).encode()).hexdigest()[:12]
        log("downloading " + ", ".join(f"{p} {v}" for p, v in sorted(versions.items())))
        debs = apt.download(RUNTIME_PACKAGES, base / "debs")
    except DebianError as exc:
        raise DevClusterError(f"fetching the real-node runtime failed: {exc}") from None
    staging = base / f".{key}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "root").mkdir(parents=True)
    for deb in debs:
        subprocess.run(["dpkg", "-x", str(deb), str(staging / "root")], check=True)
    final = base / key
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    shutil.rmtree(base / "debs", ignore_errors=True)
    link = base / ".current.tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(key)
    link.replace(base / "current")
    rt = cached_runtime()
    if rt is None:
        raise DevClusterError(f"the unpacked runtime in {final} lacks containerd, runc or the CNI plugins")
    return rt


# ---- what the machine must offer ------------------------------------------------------------


def cgroup_v2() -> bool:
    return (_SYS_CGROUP / "cgroup.controllers").is_file()


def _v1_hierarchies() -> list[Path]:
    """Every mounted cgroup v1 hierarchy (and the unified one of a hybrid layout), by mount point."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        fstype, point = fields[sep + 1], Path(fields[4])
        if fstype in ("cgroup", "cgroup2") and point.is_relative_to(_SYS_CGROUP):
            found.append(point)
    return sorted(set(found))


def preflight() -> list[str]:
    """One line per missing piece; empty when this machine can host real nodes."""
    problems = []
    if os.geteuid() != 0:
        problems.append("real nodes need root (kubelet and containerd manage cgroups, mounts and network)")
    if cgroup_v2():
        problems.append("cgroup v2 hosts are not supported yet by `ckq dev` real nodes (this machine runs the "
                        "unified hierarchy only); use a cgroup v1 or hybrid host")
    else:
        mounted = {p.name for p in _v1_hierarchies()}
        missing = [c for c in _CGROUP_V1_NEEDED if c not in mounted]
        if missing:
            problems.append(f"cgroup v1 controller(s) not mounted under {_SYS_CGROUP}: {', '.join(missing)}")
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if "overlay" not in filesystems:
        problems.append("the kernel lacks overlayfs (containerd's snapshotter): `modprobe overlay`")
    if shutil.which("ip") is None:
        problems.append("the `ip` command is missing (Debian package iproute2)")
    if not os.access("/proc/sys/net/ipv4/ip_forward", os.W_OK):
        problems.append("/proc/sys/net/ipv4/ip_forward is not writable (pods on two nodes could not talk)")
    return problems


# ---- one node's layout ----------------------------------------------------------------------


@dataclass(frozen=True)
class RealNode:
    """Everything that identifies one real node on this machine (saved in the cluster's state)."""

    cluster: str
    name: str
    index: int
    net: int  # this cluster's network index k: addresses 10.<150+k>.<index>.0/24
    dir: str
    kubelet_port: int
    healthz_port: int

    @property
    def subnet(self) -> str:
        return f"10.{_FIRST_NET + self.net}.{self.index}.0/24"

    @property
    def ip(self) -> str:
        return f"10.{_FIRST_NET + self.net}.{self.index}.1"

    @property
    def bridge(self) -> str:
        return f"ckq{self.net}n{self.index}"

    @property
    def cni_network(self) -> str:
        return f"ckq-{self.cluster}-{self.name}"

    @property
    def cgroup(self) -> str:
        return f"{CGROUP_TOP}/{self.cluster}/{self.name}"

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def run_dir(self) -> Path:
        return _RUN_ROOT / self.cluster / self.name

    @property
    def socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RealNode:
        return cls(**data)


def node_names(count: int) -> list[str]:
    return [f"real-{i}" for i in range(count)]


def pick_net(cluster: str) -> int:
    """A network index whose 10.<150+k>.0.0/16 no interface or route on this machine uses yet."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=False).stdout
    used += subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=False).stdout
    start = int(hashlib.sha256(cluster.encode()).hexdigest(), 16) % _NETS
    for step in range(_NETS):
        k = (start + step) % _NETS
        if f"10.{_FIRST_NET + k}." not in used:
            return k
    raise DevClusterError(f"no free 10.{_FIRST_NET}-{_FIRST_NET + _NETS - 1}.x.x network left for real nodes")


# ---- cgroups ----------------------------------------------------------------------------------


def _cgroup_dirs(rel: str) -> list[Path]:
    return [h / rel for h in _v1_hierarchies()]


def _make_cgroup(rel: str) -> None:
    """Create `rel` in every hierarchy; cpuset needs cpus/mems copied down before it takes tasks."""
    parts = rel.split("/")
    for hierarchy in _v1_hierarchies():
        path = hierarchy
        for part in parts:
            parent, path = path, path / part
            if not path.is_dir():
                path.mkdir()
            if hierarchy.name == "cpuset":
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    if not (path / knob).read_text().strip():
                        (path / knob).write_text((parent / knob).read_text())


def cgroup_procs_files(rel: str) -> tuple[str, ...]:
    """The cgroup.procs files a process writes "0" into to join `rel` in every hierarchy."""
    return tuple(str(d / "cgroup.procs") for d in _cgroup_dirs(rel) if (d / "cgroup.procs").exists())


def _walk_pids(rel: str) -> set[int]:
    pids: set[int] = set()
    for top in _cgroup_dirs(rel):
        if not top.is_dir():
            continue
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def _remove_cgroup_tree(rel: str) -> list[str]:
    left = []
    for top in _cgroup_dirs(rel):
        if not top.is_dir():
            continue
        for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                path.rmdir()
        try:
            top.rmdir()
        except OSError as exc:
            left.append(f"{top}: {exc.strerror}")
    # Remove the cluster's and the top level's directories once no node uses them any more.
    for parent in (rel.rsplit("/", 1)[0], CGROUP_TOP):
        for d in _cgroup_dirs(parent):
            with contextlib.suppress(OSError):
                d.rmdir()
    return left


# ---- network ----------------------------------------------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise DevClusterError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc


def _make_bridge(node: RealNode) -> None:
    _ip("link", "del", node.bridge, check=False)  # a leftover of a crash
    _ip("link", "add", "name", node.bridge, "type", "bridge")
    _ip("addr", "add", f"{node.ip}/24", "dev", node.bridge)
    _ip("link", "set", node.bridge, "up")


def enable_forwarding() -> str:
    """Turn on IPv4 forwarding (pod to pod across nodes); returns the previous value to restore."""
    knob = Path("/proc/sys/net/ipv4/ip_forward")
    before = knob.read_text().strip()
    if before != "1":
        knob.write_text("1")
    # kubelet, containerd and every pod's log follower each hold inotify instances; 128 runs out.
    inotify = Path("/proc/sys/fs/inotify/max_user_instances")
    with contextlib.suppress(OSError, ValueError):
        if int(inotify.read_text()) < 1024:
            inotify.write_text("1024")
    return before


def restore_forwarding(before: str) -> None:
    """Put ip_forward back once no ckq bridge is left on this machine."""
    links = _ip("-o", "link", "show", "type", "bridge", check=False).stdout
    if before != "1" and not any(f": {CGROUP_TOP}" in line for line in links.splitlines()):
        with contextlib.suppress(OSError):
            Path("/proc/sys/net/ipv4/ip_forward").write_text(before)


# ---- configuration files ----------------------------------------------------------------------


def _containerd_toml(node: RealNode, rt: NodeRuntime) -> str:
    state = node.run_dir / "containerd"
    return f"""\
# Written by `ckq dev up --real-nodes`: containerd for real node {node.name} of cluster {node.cluster}.
version = 2
root = "{node.path / 'containerd'}"
state = "{state}"
[grpc]
  address = "{node.socket}"
[ttrpc]
  address = "{node.socket}.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Sandboxes default to oom_score_adj -998, which needs CAP_SYS_RESOURCE; clamp to ours instead.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{rt.runc}"
        Root = "{state / 'runc'}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{rt.cni_bin}"
    conf_dir = "{node.path / 'cni'}"
    max_conf_num = 1
[plugins."io.containerd.internal.v1.opt"]
  path = "{node.path / 'containerd' / 'opt'}"
"""


def _cni_conflist(node: RealNode) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": node.cni_network,
        "plugins": [{
            "type": "bridge",
            "bridge": node.bridge,
            "isGateway": True,
            "ipMasq": False,  # pods talk to pods and to this machine only: no NAT to the outside
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": node.subnet, "gateway": node.ip}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(node.path / "cni-ipam"),
            },
        }],
    }


def _kubelet_config(node: RealNode, ca: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.ip,
        "port": node.kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": node.healthz_port,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": "/" + node.cgroup,
        "cgroupsPerQOS": True,
        "failCgroupV1": False,  # 1.35+ refuses cgroup v1 hosts unless told otherwise
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{node.socket}",
        "podLogsDir": str(node.path / "pod-logs"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "registerNode": True,
        "maxPods": 110,
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,
        # The disk is shared with everything else on this machine: never evict pods for it.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "0%", "nodefs.inodesFree": "0%",
                         "imagefs.available": "0%"},
        "resolvConf": "/etc/resolv.conf",
        "nodeStatusUpdateFrequency": "5s",
        "nodeStatusReportFrequency": "1m",
        "shutdownGracePeriod": "0s",
    }


# ---- start and stop ---------------------------------------------------------------------------


def prepare(node: RealNode, pki: Path, server: str) -> None:
    """Directories, cgroups, bridge, certificates and config files of one node."""
    for sub in ("containerd", "kubelet", "cni", "cni-ipam", "pod-logs", "pki"):
        (node.path / sub).mkdir(parents=True, exist_ok=True)
    node.run_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("runtime", "kubelet"):
        _make_cgroup(f"{node.cgroup}/{sub}")
    _make_bridge(node)
    (node.path / "cni" / "10-ckq.conflist").write_text(json.dumps(_cni_conflist(node), indent=2))
    crt, key = issue_client(pki, node_client(node.name))
    write_kubeconfig(node.path / "kubelet.kubeconfig", cluster=node.cluster, server=server, ca=pki / "ca.crt",
                     cert=crt, key=key, user=f"system:node:{node.name}")
    (node.path / "kubelet.yaml").write_text(json.dumps(_kubelet_config(node, pki / "ca.crt"), indent=2))


def kubelet_args(node: RealNode, labels: dict[str, str]) -> list[str]:
    """The kubelet's flags (those with no config-file field) after `prepare`."""
    all_labels = {NODE_KIND_LABEL: "real", FLAVOR_LABEL: REAL_FLAVOR, **labels}
    return [
        f"--config={node.path / 'kubelet.yaml'}",
        f"--kubeconfig={node.path / 'kubelet.kubeconfig'}",
        f"--root-dir={node.path / 'kubelet'}",
        f"--cert-dir={node.path / 'pki'}",
        f"--hostname-override={node.name}",
        f"--node-ip={node.ip}",
        "--node-labels=" + ",".join(f"{k}={v}" for k, v in sorted(all_labels.items())),
        "--v=1",
    ]


def containerd_argv(node: RealNode, rt: NodeRuntime) -> list[str]:
    (node.path / "containerd.toml").write_text(_containerd_toml(node, rt))
    return [str(rt.containerd), f"--config={node.path / 'containerd.toml'}"]


def containerd_ready(node: RealNode, rt: NodeRuntime) -> bool:
    proc = subprocess.run([str(rt.ctr), "--address", str(node.socket), "version"], capture_output=True,
                          text=True, timeout=10, check=False)
    return proc.returncode == 0


def import_image(node: RealNode, rt: NodeRuntime, archive: Path) -> None:
    """Load an OCI or docker archive into the node's containerd (CRI's namespace, unpacked)."""
    proc = subprocess.run(
        [str(rt.ctr), "--address", str(node.socket), "--namespace", "k8s.io", "images", "import",
         "--snapshotter", "overlayfs", str(archive)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise DevClusterError(f"importing {archive} into {node.name} failed: {proc.stderr.strip()[-600:]}")


def kubelet_healthy(node: RealNode) -> bool:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{node.healthz_port}/healthz", timeout=2) as resp:
        return bool(resp.status == 200)


# ---- the image seed -----------------------------------------------------------------------------
#
# Importing the local images into a node's containerd (content store + unpacked overlay snapshots,
# ~90 MB written and fsynced per node) took 10-30 s per node here. So it is done once, into a
# "seed" containerd root kept in the cache, and each new node starts from a copy of it: hard links
# for the immutable parts (content blobs, committed snapshot directories — overlay only ever reads
# its lower layers) and real copies of the two bolt databases containerd writes to.

_BOLT_DBS = ("io.containerd.metadata.v1.bolt/meta.db", "io.containerd.snapshotter.v1.overlayfs/metadata.db")


def seed_root(rt: NodeRuntime, images: list[LocalImage]) -> Path:
    """A containerd root holding `images`, built once per runtime and image set (cached)."""
    key = hashlib.sha256(
        json.dumps([str(rt.root.resolve()), *(str(i.archive) for i in images)]).encode()
    ).hexdigest()[:16]
    base = cache_root() / "node-seed"
    done = base / key
    if (done / "complete").is_file():
        return done / "root"
    _prune_seeds(base)
    work = base / f".{key}.{os.getpid()}.partial"
    shutil.rmtree(work, ignore_errors=True)
    run = _RUN_ROOT / f"seed-{os.getpid()}"
    seed = RealNode(cluster="seed", name=key, index=0, net=0, dir=str(work), kubelet_port=0, healthz_port=0)
    (work / "cni").mkdir(parents=True)
    run.mkdir(parents=True, exist_ok=True)
    toml = _containerd_toml(seed, rt).replace(str(seed.run_dir), str(run))
    (work / "containerd.toml").write_text(toml)
    log = (work / "containerd.log").open("wb")
    proc = subprocess.Popen([str(rt.containerd), f"--config={work / 'containerd.toml'}"], stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "PATH": rt.path_env})
    address = ["--address", str(run / "containerd.sock")]
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([str(rt.ctr), *address, "version"], capture_output=True, check=False).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise DevClusterError(f"a containerd to seed the images did not start; see {work / 'containerd.log'}")
            time.sleep(0.1)
        for image in images:
            imp = subprocess.run([str(rt.ctr), *address, "--namespace", "k8s.io", "images", "import",
                                  "--snapshotter", "overlayfs", str(image.archive)],
                                 capture_output=True, text=True, check=False)
            if imp.returncode != 0:
                raise DevClusterError(f"importing {image.ref} failed: {imp.stderr.strip()[-600:]}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        for point, _ in reversed(_mounts()):
            if point.is_relative_to(run) or point.is_relative_to(work):
                _umount(point)
        shutil.rmtree(run, ignore_errors=True)
    done.mkdir(parents=True)
    (work / "containerd").rename(done / "root")
    shutil.rmtree(work, ignore_errors=True)
    (done / "complete").write_text("\n".join(i.ref for i in images) + "\n")
    return done / "root"


# Seeds kept beside the one being built: checkouts with other images (other sources) may plant theirs at
# the same time, so another seed is never removed while it may be in use — only the oldest beyond these,
# and partial ones left by a build that died.
_KEEP_SEEDS = 4
_STALE_PARTIAL_S = 3600.0


def _prune_seeds(base: Path) -> None:
    if not base.is_dir():
        return
    done = sorted((d for d in base.iterdir() if (d / "complete").is_file()), key=lambda d: d.stat().st_mtime,
                  reverse=True)
    stale = [d for d in base.iterdir() if d.name.endswith(".partial")
             and time.time() - d.stat().st_mtime > _STALE_PARTIAL_S]
    for old in [*done[_KEEP_SEEDS:], *stale]:
        shutil.rmtree(old, ignore_errors=True)


def plant_seed(node: RealNode, seed: Path) -> None:
    """Start the node's containerd root from the seed (before its containerd starts)."""
    target = node.path / "containerd"
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(["cp", "-al", str(seed), str(target)], check=True)
    for db in _BOLT_DBS:
        path = target / db
        if path.exists():
            path.unlink()
            shutil.copy2(seed / db, path)


# ---- teardown ---------------------------------------------------------------------------------


def _mounts() -> list[tuple[Path, str]]:
    """(mount point, fs type) of every mount, deepest last (mountinfo order)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        point = fields[4].replace("\\040", " ")
        out.append((Path(point), fields[sep + 1]))
    return out


def _netns_inodes(pids: set[int]) -> set[int]:
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            inodes.add(os.stat(f"/proc/{pid}/ns/net").st_ino)
    return inodes


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _kill_tree(rel: str, timeout: float = 15.0) -> set[int]:
    """SIGKILL every process in the subtree until it is empty; the net namespaces they held."""
    held: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        pids = _walk_pids(rel) - {os.getpid()}
        if not pids:
            return held
        held |= _netns_inodes(pids)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise DevClusterError(f"processes {sorted(pids)} in cgroup {rel} did not die")
        time.sleep(0.1)


def teardown(node: RealNode) -> list[str]:
    """Remove everything of one node from this machine; a list of what could not be removed."""
    problems: list[str] = []
    try:
        netns = _kill_tree(node.cgroup)
    except DevClusterError as exc:
        problems.append(str(exc))
        netns = set()
    host_ns = os.stat("/proc/self/ns/net").st_ino
    netns.discard(host_ns)
    roots = (node.path, node.run_dir)
    for point, fstype in reversed(_mounts()):
        if any(point.is_relative_to(r) for r in roots):
            _umount(point)
        elif fstype == "nsfs" and point.parent == _NETNS_DIR:
            with contextlib.suppress(OSError):
                if os.stat(point).st_ino in netns:
                    _umount(point)
                    point.unlink()
    problems += _remove_cgroup_tree(node.cgroup)
    _ip("link", "del", node.bridge, check=False)
    for cached in (_CNI_CACHE / "results").glob(f"{node.cni_network}-*"):
        cached.unlink(missing_ok=True)
    for d in roots:
        shutil.rmtree(d, ignore_errors=True)
        if d.exists():
            problems.append(f"{d} could not be removed")
    for parent in (node.run_dir.parent, node.path.parent, _RUN_ROOT, NODES_ROOT):  # empty ones only
        with contextlib.suppress(OSError):
            parent.rmdir()
    return problems


def leftovers(node: RealNode) -> list[str]:
    """What of this node is still on the machine (tests assert it is nothing after `down`)."""
    found = []
    if _walk_pids(node.cgroup):
        found.append(f"processes in cgroup {node.cgroup}")
    found += [f"cgroup {d}" for d in _cgroup_dirs(node.cgroup) if d.exists()]
    roots = (node.path, node.run_dir)
    found += [f"mount {p}" for p, _ in _mounts() if any(p.is_relative_to(r) for r in roots)]
    if _ip("link", "show", node.bridge, check=False).returncode == 0:
        found.append(f"bridge {node.bridge}")
    found += [f"directory {d}" for d in roots if d.exists()]
    return found


def iter_processes_of(node: RealNode) -> Iterator[int]:
    yield from sorted(_walk_pids(node.cgroup))
