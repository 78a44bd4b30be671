#!/usr/bin/env bash
# The GPU tier (tests/criu/test_gpu.py) on a machine with an NVIDIA GPU but no network.
#
# Prepare .gpu/ here (ignored by git: add `/.gpu/` to .git/info/exclude), where the network is:
#   mkdir -p .gpu && tar -C / -czf .gpu/criu.tgz "${HOME#/}/.cache/ckq/criu/$(readlink ~/.cache/ckq/criu/current)"
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .gpu cryptography cffi pycparser
# then copy the checkout with .gpu/ to the GPU machine and run `bash hack/gpu-offline.sh` there as root.
# CRIU's wrapper names absolute paths, so it is unpacked where it was installed. GPU_K=<expr> selects tests.
set -uo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
tar -C / -xzf .gpu/criu.tgz
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/ckq-site .gpu/*.whl || exit 1
export PYTHONPATH=/tmp/ckq-site:$PWD PYTHONUNBUFFERED=1
PY=$(python3 -c 'import sys; print(sys.executable)')
# tests/plugins/criu.py runs the ckq-run beside the interpreter
printf '#!%s\nimport sys\nfrom queue_controller.runtime.cli import main\nsys.exit(main())\n' "$PY" > "$(dirname "$PY")/ckq-run"
chmod +x "$(dirname "$PY")/ckq-run"
CKQ_CRIU=$(ls -d /root/.cache/ckq/criu/*/bin/criu 2>/dev/null | head -1)
export CKQ_CRIU
"$CKQ_CRIU" check
python3 -c 'from queue_controller.runtime import gpu; print("GPU checkpoint through:", gpu.backend() or "nothing")'
python3 -m pytest --noconftest -p tests.plugins.criu tests/criu/test_gpu.py -v -rs -p no:cacheprovider \
  ${GPU_K:+-k "$GPU_K"} 2>&1 | tee "${OUT:-/tmp}/gpu-tests.log"
