"""Local images and real-node configuration, without starting anything (issue 9)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tomllib
from pathlib import Path

import pytest

from queue_controller.debian import Apt
from queue_controller.devcluster import images, realnode
from queue_controller.devcluster.errors import DevClusterError

pytestmark = pytest.mark.unit


def _layer(tmp_path: Path) -> Path:
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w") as tar:
        data = b"#!/bin/sh\necho hi\n"
        info = tarfile.TarInfo("usr/bin/hi")
        info.size = len(data)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(data))
    return layer


def test_oci_archive_is_a_valid_layout_naming_the_image(tmp_path: Path) -> None:
    layer = _layer(tmp_path)
    target = tmp_path / "img.tar"
    images.write_oci_archive(target, "ckq.local/demo:1", layer, images._image_config(["/usr/bin/hi"], None))
    with tarfile.open(target) as tar:
        read = lambda name: tar.extractfile(name).read()  # type: ignore[union-attr]  # noqa: E731
        assert json.loads(read("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
        index = json.loads(read("index.json"))
        desc = index["manifests"][0]
        assert desc["annotations"]["io.containerd.image.name"] == "ckq.local/demo:1"
        manifest_bytes = read(f"blobs/sha256/{desc['digest'][7:]}")
        assert hashlib.sha256(manifest_bytes).hexdigest() == desc["digest"][7:]
        manifest = json.loads(manifest_bytes)
        config = json.loads(read(f"blobs/sha256/{manifest['config']['digest'][7:]}"))
        layer_digest = manifest["layers"][0]["digest"]
        assert config["rootfs"]["diff_ids"] == [layer_digest]
        assert hashlib.sha256(read(f"blobs/sha256/{layer_digest[7:]}")).hexdigest() == layer_digest[7:]
        assert config["config"]["Entrypoint"] == ["/usr/bin/hi"]
    assert images.archive_refs(target) == ["ckq.local/demo:1"]


def test_same_inputs_give_the_same_digest(tmp_path: Path) -> None:
    layer = _layer(tmp_path)
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    cfg = images._image_config(None, ["python3"])
    images.write_oci_archive(a, "ckq.local/x:1", layer, cfg)
    images.write_oci_archive(b, "ckq.local/x:1", layer, cfg)
    with tarfile.open(a) as ta, tarfile.open(b) as tb:
        assert ta.extractfile("index.json").read() == tb.extractfile("index.json").read()  # type: ignore[union-attr]


def test_archive_refs_refuses_what_is_not_an_image(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar")
    with pytest.raises(DevClusterError, match="not a readable image archive"):
        images.archive_refs(junk)
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(DevClusterError, match="neither an OCI archive"):
        images.archive_refs(empty)


@pytest.mark.parametrize(
    ("name", "merged"),
    [("./bin/ls", "usr/bin/ls"), ("./lib/x86_64-linux-gnu/libc.so.6", "usr/lib/x86_64-linux-gnu/libc.so.6"),
     ("./usr/bin/python3", "usr/bin/python3"), ("./etc/.pwd.lock", "etc/.pwd.lock"), ("./sbin/", "usr/sbin"),
     ("./", "")],
)
def test_paths_are_merged_usr(name: str, merged: str) -> None:
    assert images._merged(name) == merged


def test_closure_takes_first_alternative_and_providers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    apt = Apt(tmp_path, "bookworm")
    # apt-cache's format: "|" marks an alternative or-ed with the next line; <virt> lists providers.
    outputs = {
        ("a",): "a\n  Depends: b\n |Depends: c\n  Depends: d\n  PreDepends: <virt>\n    e\n    f\n",
        ("b", "c", "e"): "b\nc\n  Depends: a\n |Depends: h\n  Depends: b\ne\n  Recommends: g\n",
    }
    monkeypatch.setattr(apt, "run", lambda *args, **_: outputs[tuple(args[8:])])
    # c|d -> c (first); <virt> -> e (first provider); h|b -> b (already chosen); g is only recommended.
    assert apt.closure(["a"]) == ["a", "b", "c", "e"]


def _node(tmp_path: Path) -> realnode.RealNode:
    return realnode.RealNode(cluster="c1", name="real-1", index=1, net=3, dir=str(tmp_path / "n"),
                             kubelet_port=10250, healthz_port=12345)


def test_node_identity_is_distinct_per_node(tmp_path: Path) -> None:
    node = _node(tmp_path)
    assert (node.ip, node.subnet, node.bridge) == ("10.153.1.1", "10.153.1.0/24", "ckq3n1")
    assert len(node.bridge) <= 15  # IFNAMSIZ
    assert node.cgroup == "ckq/c1/real-1"
    assert realnode.RealNode.from_dict(node.to_dict()) == node


def test_containerd_config_keeps_every_path_per_node(tmp_path: Path) -> None:
    node = _node(tmp_path)
    rt = realnode.NodeRuntime(tmp_path / "rt")
    cfg = tomllib.loads(realnode._containerd_toml(node, rt))
    cri = cfg["plugins"]["io.containerd.grpc.v1.cri"]
    assert cfg["root"].startswith(str(node.path)) and cfg["state"].startswith(str(node.run_dir))
    assert cfg["grpc"]["address"] == str(node.socket)
    assert cri["restrict_oom_score_adj"] is True
    assert cri["sandbox_image"] == images.PAUSE_IMAGE
    runc = cri["containerd"]["runtimes"]["runc"]["options"]
    assert runc["BinaryName"] == str(rt.runc) and runc["Root"].startswith(str(node.run_dir))
    assert cri["cni"]["conf_dir"] == str(node.path / "cni")


def test_kubelet_config_and_cni(tmp_path: Path) -> None:
    node = _node(tmp_path)
    cfg = realnode._kubelet_config(node, tmp_path / "ca.crt")
    assert cfg["failCgroupV1"] is False and cfg["cgroupRoot"] == "/ckq/c1/real-1"
    assert cfg["address"] == node.ip and cfg["containerRuntimeEndpoint"] == f"unix://{node.socket}"
    assert cfg["authentication"]["anonymous"]["enabled"] is False
    cni = realnode._cni_conflist(node)
    bridge = cni["plugins"][0]
    assert bridge["bridge"] == node.bridge and bridge["ipMasq"] is False
    assert bridge["ipam"]["ranges"] == [[{"subnet": node.subnet, "gateway": node.ip}]]
    args = realnode.kubelet_args(node, {"team": "a"})
    assert f"--node-ip={node.ip}" in args and "--hostname-override=real-1" in args
    assert "--node-labels=ckq.io/flavor=real,ckq.io/node-kind=real,team=a" in args
