#!/usr/bin/env bash
# Run every test tier (unit, integration, chaos, criu, e2e) the way CI does.
# It first provisions, idempotently and from caches outside the repo, what the tiers need:
# the Python environment, CRIU >= 4 (ckq criu install), the Kubernetes binaries and helm (ckq dev build --helm).
# Extra arguments go to pytest, e.g. `hack/test.sh -m unit` or `hack/test.sh tests/unit -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install -q --disable-pip-version-check -e '.[dev]'

echo "== lint and types"
ruff check .
mypy

echo "== provisioning CRIU and the Kubernetes binaries (cached)"
ckq criu install
ckq dev build --helm

echo "== tests"
exec python -m pytest "$@"
