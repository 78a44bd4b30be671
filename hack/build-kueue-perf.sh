#!/usr/bin/env bash
# Build Kueue's own scheduler-performance harness (test/performance/scheduler: `runner` and
# `minimalkueue`) so bench/kueue_baseline.py --with-kueue can run it beside ckq's replica, against
# the same Go-built kube-apiserver and etcd (`ckq dev build`).
#
# Usage: hack/build-kueue-perf.sh [--force] [--check]
#   stdout: exactly one line, the directory holding runner, minimalkueue, crds/ and configs/.
#   stderr: progress and errors.
#   --check: build nothing; exit 3 when not built yet.
# Environment:
#   CKQ_CACHE_DIR   cache root (default: ${XDG_CACHE_HOME:-~/.cache}/ckq); output in kueue-perf/<version>/
#   KUEUE_VERSION   the Kueue tag (default v0.19.2, the version issue 13 measured)
#   KUEUE_GIT_DIR   a Kueue git repository (bare or not) holding that tag: its tree is used as is, with
#                   its vendor/ directory, so the build needs no network. Without it, the module is
#                   fetched from the Go module proxy (module zips carry no vendor/, so the
#                   dependencies come from the proxy too).
#   GOPROXY, GOMODCACHE, GOCACHE  as usual for Go.
set -euo pipefail

KUEUE_VERSION="${KUEUE_VERSION:-v0.19.2}"
FORCE=0
CHECK=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --check) CHECK=1 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-kueue-perf: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

log() { echo "build-kueue-perf: $*" >&2; }
die() { echo "build-kueue-perf: error: $*" >&2; exit 1; }

CACHE_ROOT="${CKQ_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ckq}"
OUT="$CACHE_ROOT/kueue-perf/$KUEUE_VERSION"

built() { [ -x "$OUT/runner" ] && [ -x "$OUT/minimalkueue" ] && [ -d "$OUT/crds" ] && [ -f "$OUT/.complete" ]; }

if [ "$FORCE" = 0 ] && built; then
  echo "$OUT"
  exit 0
fi
[ "$CHECK" = 1 ] && exit 3

command -v go >/dev/null || die "Go is not installed (Kueue $KUEUE_VERSION needs Go >= 1.26)"
GO_MINOR=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
[ "$GO_MINOR" -ge 26 ] || die "Go $(go env GOVERSION) is too old: Kueue $KUEUE_VERSION's go.mod says go 1.26.0"

# A default GIT dir: the mirror this project's sessions keep, when present.
if [ -z "${KUEUE_GIT_DIR:-}" ] && [ -d /work/.mirror/kubernetes-sigs+kueue/repo ]; then
  KUEUE_GIT_DIR=/work/.mirror/kubernetes-sigs+kueue/repo
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/kueue-perf.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
SRC="$WORK/src"
mkdir -p "$SRC"

MODFLAG=-mod=vendor
if [ -n "${KUEUE_GIT_DIR:-}" ] && git -C "$KUEUE_GIT_DIR" rev-parse -q --verify "$KUEUE_VERSION^{commit}" >/dev/null; then
  log "source: $KUEUE_VERSION from $KUEUE_GIT_DIR (vendored modules, offline)"
  git -C "$KUEUE_GIT_DIR" archive "$KUEUE_VERSION" | tar -x -C "$SRC"
  [ -d "$SRC/vendor" ] || MODFLAG=-mod=mod
else
  log "source: sigs.k8s.io/kueue@$KUEUE_VERSION from the Go module proxy"
  dir=$(cd "$WORK" && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$dir" ] && [ -d "$dir" ] || die "could not download sigs.k8s.io/kueue@$KUEUE_VERSION (GOPROXY=$(go env GOPROXY))"
  cp -r "$dir/." "$SRC/"
  chmod -R u+w "$SRC"
  MODFLAG=-mod=mod
fi

mkdir -p "$WORK/out"
export GOTOOLCHAIN=local CGO_ENABLED=0
PKG=./test/performance/scheduler
t0=$(date +%s)
log "building runner and minimalkueue ($MODFLAG; minutes on a small machine)"
(cd "$SRC" && go build $MODFLAG -trimpath -ldflags "-s -w" -o "$WORK/out/runner" "$PKG/runner") \
  || die "building $PKG/runner failed"
(cd "$SRC" && go build $MODFLAG -trimpath -ldflags "-s -w" -o "$WORK/out/minimalkueue" "$PKG/minimalkueue") \
  || die "building $PKG/minimalkueue failed"
cp -r "$SRC/config/components/crd/bases" "$WORK/out/crds"
cp -r "$SRC/test/performance/scheduler/configs" "$WORK/out/configs"
echo "$KUEUE_VERSION $(date -u +%FT%TZ) $(go env GOVERSION) $MODFLAG" > "$WORK/out/.complete"
log "built in $(( $(date +%s) - t0 ))s"

rm -rf "$OUT"
mkdir -p "$(dirname "$OUT")"
mv "$WORK/out" "$OUT"
echo "$OUT"
