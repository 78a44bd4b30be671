"""Where the control plane's binaries come from: CKQ_KUBE_BIN_DIR, or hack/build-kube.sh's cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from queue_controller.devcluster.errors import DevClusterError

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kwok")
BIN_DIR_ENV = "CKQ_KUBE_BIN_DIR"
# Exit status of `build-kube.sh --check` when nothing is built yet.
_NOT_BUILT = 3


def build_script() -> Path:
    """The build script of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / "hack" / "build-kube.sh"


def missing_binaries(bin_dir: Path) -> list[str]:
    return [b for b in BINARIES if not os.access(bin_dir / b, os.X_OK)]


def _user_bin_dir() -> Path | None:
    value = os.environ.get(BIN_DIR_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    missing = missing_binaries(path)
    if missing:
        raise DevClusterError(
            f"{BIN_DIR_ENV}={value} lacks executable(s): {', '.join(missing)}.\n"
            f"Put them there, or unset {BIN_DIR_ENV} so `ckq dev build` builds them from Go modules."
        )
    return path


def _script_or_error() -> Path:
    script = build_script()
    if not script.is_file():
        raise DevClusterError(
            f"no build script at {script} (ckq is not running from a source checkout).\n"
            f"Set {BIN_DIR_ENV} to a directory holding: {' '.join(BINARIES)}."
        )
    return script


def cached_bin_dir() -> Path | None:
    """The directory with ready binaries, or None when they still need building. Never builds."""
    user = _user_bin_dir()
    if user is not None:
        return user
    script = _script_or_error()
    proc = subprocess.run(["bash", str(script), "--check"], capture_output=True, text=True, check=False)
    if proc.returncode == _NOT_BUILT:
        return None
    if proc.returncode != 0:
        raise DevClusterError(proc.stderr.strip() or f"{script} --check failed ({proc.returncode})")
    return Path(proc.stdout.strip().splitlines()[-1])


def go_available() -> bool:
    return shutil.which("go") is not None


def ensure_binaries(*, force: bool = False, quiet: bool = False) -> Path:
    """Return the binaries' directory, building them first when needed (tens of minutes, once).

    Progress goes to our stderr so a long cold build is visibly alive.
    """
    user = _user_bin_dir()
    if user is not None:
        return user
    script = _script_or_error()
    args = ["bash", str(script)]
    if force:
        args.append("--force")
    if quiet:
        args.append("--quiet")
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=sys.stderr, text=True, check=False)
    if proc.returncode != 0:
        raise DevClusterError(
            f"building the control plane binaries failed (exit {proc.returncode}); see the messages above."
        )
    bin_dir = Path(proc.stdout.strip().splitlines()[-1])
    missing = missing_binaries(bin_dir)
    if missing:
        raise DevClusterError(f"{script} reported {bin_dir}, which lacks: {', '.join(missing)}")
    return bin_dir


# ---- helm: built like the cluster binaries, by hack/build-helm.sh, only when asked for --------------
# (`ckq dev build --helm`, or the chart tests): nothing in `ckq dev up` needs it.

HELM_ENV = "CKQ_HELM"


def helm_build_script() -> Path:
    return Path(__file__).resolve().parents[2] / "hack" / "build-helm.sh"


def _helm_script() -> Path:
    script = helm_build_script()
    if not script.is_file():
        raise DevClusterError(f"no build script at {script} (ckq is not running from a source checkout).\n"
                              f"Set {HELM_ENV} to a helm v3 executable.")
    return script


def cached_helm() -> Path | None:
    """The helm executable when built (or given by $CKQ_HELM), else None. Never builds."""
    script = _helm_script()
    proc = subprocess.run(["bash", str(script), "--check", "--quiet"], capture_output=True, text=True, check=False)
    if proc.returncode == _NOT_BUILT:
        return None
    if proc.returncode != 0:
        raise DevClusterError(proc.stderr.strip() or f"{script} --check failed ({proc.returncode})")
    return Path(proc.stdout.strip().splitlines()[-1])


def ensure_helm(*, force: bool = False, quiet: bool = False) -> Path:
    """The helm executable, built from Go modules first when needed (minutes, once)."""
    script = _helm_script()
    args = ["bash", str(script), *(["--force"] if force else []), *(["--quiet"] if quiet else [])]
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=sys.stderr, text=True, check=False)
    if proc.returncode != 0:
        raise DevClusterError(f"building helm failed (exit {proc.returncode}); see the messages above.")
    return Path(proc.stdout.strip().splitlines()[-1])
