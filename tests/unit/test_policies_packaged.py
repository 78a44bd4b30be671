"""The policy profiles are package data: found through importlib.resources, and by an installed wheel
that carries only what pyproject.toml packages (no source checkout next to it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import queue_controller
from queue_controller.policies import POLICY_DIR, available, load_policy

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(queue_controller.__file__).resolve().parent


def test_profiles_resolve_inside_the_package() -> None:
    assert Path(str(POLICY_DIR)).resolve().is_relative_to(PACKAGE)
    assert available() == ["easy", "fair", "fifo", "iass", "kueue"]
    assert [load_policy(name).name for name in available()] == available()
    # The repository's policies/ is the same directory, for paths on command lines and in docs.
    assert load_policy(str(ROOT / "policies" / "iass.yaml")) == load_policy("iass")


def wheel_files() -> list[Path]:
    """What a wheel built from pyproject.toml carries: the packages' modules and their package data."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["packages"]["find"]["include"] == ["queue_controller*"]
    files = [p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]
    for pattern in config["package-data"]["queue_controller"]:
        files += [p for p in PACKAGE.glob(pattern) if p.is_file() and "__pycache__" not in p.parts]
    return files


def test_an_installed_wheel_finds_the_profiles(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    for f in wheel_files():
        target = site / "queue_controller" / f.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
    code = ("import queue_controller, queue_controller.policies as p; "
            "print(queue_controller.__file__); print(','.join(p.available())); print(p.load_policy('iass').name)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(site)}, check=True).stdout.splitlines()
    assert out[0].startswith(str(site))  # this copy, not the checkout
    assert out[1:] == ["easy,fair,fifo,iass,kueue", "iass"]
