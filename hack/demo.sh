#!/usr/bin/env bash
# Show the product working on a fresh machine: sets up the Python environment if needed, then runs
# `ckq demo` (arguments are passed on, e.g. `hack/demo.sh --policy kueue`).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install -q --disable-pip-version-check -e .
exec ckq demo "$@"
