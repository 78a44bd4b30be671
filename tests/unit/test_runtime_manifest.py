"""Manifest content hashing and the checkpoint store (pure Python)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from queue_controller.runtime import manifest as mf
from queue_controller.runtime.errors import RuntimeFailure
from queue_controller.runtime.store import Store

pytestmark = pytest.mark.unit


def _manifest(ckpt_id: str) -> mf.Manifest:
    return mf.Manifest(id=ckpt_id, created="2026-11-23T00:00:00Z", sizeBytes=0, sha256="",
                       criuVersion="4.1.1", kernel="6.18", durationSeconds=0.1, leaveRunning=False,
                       parent=None)


def test_content_hash_is_the_documented_listing(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "pages-1.img").write_bytes(b"a" * 5000)
    (tmp_path / "runtime.json").write_text("{}")
    (tmp_path / "manifest.json").write_text("ignored")
    digest, size = mf.content_hash(tmp_path)
    listing = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {rel}\n"
        for rel, data in sorted([("images/pages-1.img", b"a" * 5000), ("runtime.json", b"{}")])
    )
    assert digest == hashlib.sha256(listing.encode()).hexdigest()
    assert size == 5002


def test_hash_changes_with_content_name_and_symlink_target(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    base, _ = mf.content_hash(tmp_path)
    (tmp_path / "f").write_bytes(b"y")
    assert mf.content_hash(tmp_path)[0] != base
    (tmp_path / "f").rename(tmp_path / "g")
    assert mf.content_hash(tmp_path)[0] not in (base,)
    (tmp_path / "link").symlink_to("g")
    with_link, _ = mf.content_hash(tmp_path)
    (tmp_path / "link").unlink()
    (tmp_path / "link").symlink_to("other")
    assert mf.content_hash(tmp_path)[0] != with_link


def test_publish_is_atomic_and_verify_detects_corruption(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure()
    tmp = store.tmp("c1")
    tmp.mkdir()
    (tmp / "data").write_bytes(b"payload")
    final = store.publish(tmp, _manifest("c1"))
    assert not tmp.exists() and final == store.path("c1")
    assert mf.verify(final).sha256 == mf.read_manifest(final).sha256
    (final / "data").write_bytes(b"pAyload")
    with pytest.raises(RuntimeFailure, match="corrupted"):
        mf.verify(final)


def test_store_lookup_errors_name_the_problem(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure()
    with pytest.raises(RuntimeFailure, match="unknown checkpoint id"):
        store.get("nope")
    with pytest.raises(RuntimeFailure, match="invalid checkpoint id"):
        store.get("../etc")
    with pytest.raises(RuntimeFailure, match="no restorable checkpoint"):
        store.get("latest")
    store.tmp("x").mkdir()
    store.clean_debris()
    assert not store.tmp("x").exists()


def test_manifest_round_trip_ignores_unknown_fields() -> None:
    m = _manifest("c2")
    data = __import__("json").loads(m.to_json())
    data["future"] = 1
    assert mf.Manifest.from_dict(data) == m
