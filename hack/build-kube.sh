#!/usr/bin/env bash
# Build the local control plane's binaries from Go modules (no Docker, no release downloads):
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kwok
# into a cache directory outside the repo, and reuse them when present.
#
# Usage: hack/build-kube.sh [--force] [--quiet] [--check] [--print-versions]
#   stdout: exactly one line, the directory that holds the binaries (scripts rely on it).
#   stderr: progress and errors (--quiet: only errors, with the tail of the Go output).
#   --check: build nothing; exit 3 when the binaries are not built yet.
# Environment:
#   CKQ_CACHE_DIR     cache root (default: ${XDG_CACHE_HOME:-~/.cache}/ckq)
#   CKQ_KUBE_BIN_DIR  use these prebuilt binaries instead: checked, never built into.
#   GOPROXY, GOMODCACHE, GOCACHE  as usual for Go.
#
# The pinned versions below are the single source of truth; `ckq dev` calls this script.
set -euo pipefail

KUBE_VERSION="v1.35.4"   # any k8s minor >= 1.33 whose go.mod builds with the local Go
ETCD_VERSION="v3.6.16"   # 3.6 matches the etcd client that k8s 1.35 ships (v3.6.5)
KWOK_VERSION="v0.8.0"    # needs Go >= 1.26; ships no default stages (ckq passes its own)
GO_MIN_MINOR=26          # highest `go` line among the three modules is 1.26.0

BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kwok)
STAMP="kube=${KUBE_VERSION} etcd=${ETCD_VERSION} kwok=${KWOK_VERSION} +kubelet"

FORCE=0
QUIET=0
CHECK=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --quiet) QUIET=1 ;;
    --check) CHECK=1 ;;
    --print-versions) echo "$STAMP"; exit 0 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-kube: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

log() { [ "$QUIET" = 1 ] || echo "build-kube: $*" >&2; }
die() { echo "build-kube: error: $*" >&2; exit 1; }

have_all() {
  local dir="$1" b
  for b in "${BINARIES[@]}"; do [ -x "$dir/$b" ] || return 1; done
}

# Users with their own binaries: check them and stop; we never write into their directory.
if [ -n "${CKQ_KUBE_BIN_DIR:-}" ]; then
  missing=()
  for b in "${BINARIES[@]}"; do [ -x "$CKQ_KUBE_BIN_DIR/$b" ] || missing+=("$b"); done
  [ ${#missing[@]} -eq 0 ] || die "CKQ_KUBE_BIN_DIR=$CKQ_KUBE_BIN_DIR lacks executable(s): ${missing[*]}.
  Put them there, or unset CKQ_KUBE_BIN_DIR to build them from Go modules."
  echo "$CKQ_KUBE_BIN_DIR"
  exit 0
fi

CACHE_ROOT="${CKQ_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ckq}"
OUT="$CACHE_ROOT/bin/$KUBE_VERSION"

if [ "$FORCE" = 0 ] && have_all "$OUT" && [ "$(cat "$OUT/VERSIONS" 2>/dev/null)" = "$STAMP" ]; then
  log "reusing $OUT ($STAMP)"
  echo "$OUT"
  exit 0
fi
if [ "$CHECK" = 1 ]; then
  echo "build-kube: not built yet: $OUT ($STAMP)" >&2
  exit 3
fi

# ---- preflight: say exactly what is missing -------------------------------------------------
command -v go >/dev/null 2>&1 || die "Go is not installed (no 'go' on PATH).
  Install Go >= 1.${GO_MIN_MINOR} from https://go.dev/dl/ (e.g. tar -C /usr/local -xzf go1.${GO_MIN_MINOR}.*.linux-amd64.tar.gz
  and add /usr/local/go/bin to PATH), or set CKQ_KUBE_BIN_DIR to a directory holding: ${BINARIES[*]}."
GOVER="$(GOTOOLCHAIN=local go env GOVERSION 2>/dev/null || true)"
minor="$(echo "$GOVER" | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
{ [ -n "$minor" ] && [ "$minor" -ge "$GO_MIN_MINOR" ]; } || die "Go >= 1.${GO_MIN_MINOR} is required, found '${GOVER:-unknown}' at $(command -v go).
  Install Go >= 1.${GO_MIN_MINOR} from https://go.dev/dl/ (Debian's golang package is too old),
  or set CKQ_KUBE_BIN_DIR to a directory holding: ${BINARIES[*]}."
proxy="$(go env GOPROXY)"
case "$proxy" in
  off|"") die "GOPROXY='$proxy' disables module downloads. Set GOPROXY=https://proxy.golang.org,direct
  (or a reachable mirror), or set CKQ_KUBE_BIN_DIR to prebuilt binaries." ;;
esac

# Pinned for reproducibility: a too-new `go` line must fail here, not fetch another toolchain.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-trimpath -mod=mod"

mkdir -p "$CACHE_ROOT/bin"
WORK="$(mktemp -d "$CACHE_ROOT/build.XXXXXX")"
STAGE="$WORK/bin"
mkdir -p "$STAGE"
# A failed build leaves nothing half-made in the cache (the Go module/build caches are kept).
trap 'rm -rf "$WORK"' EXIT

GOLOG="$WORK/go.log"
# Go's own output: on stderr normally; with --quiet into a log whose tail is shown on failure.
run_go() {
  if [ "$QUIET" = 1 ]; then
    "$@" >>"$GOLOG" 2>&1 || { tail -40 "$GOLOG" >&2; cp "$GOLOG" "$CACHE_ROOT/build-failed.log"; return 1; }
  else
    "$@" >&2
  fi
}

START=$(date +%s)
BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

probe_proxy() {
  # First network use: turn an opaque Go error into an actionable one.
  local mod="$1" err
  # `go mod download -json` reports the failure in the JSON's "Error" field on stdout.
  if ! err="$(cd "$WORK" && go mod download -json "$mod" 2>&1)"; then
    die "cannot download $mod from the Go module proxy (GOPROXY=$proxy):
$(echo "$err" | sed -n 's/^[[:space:]]*"Error": "\(.*\)",*$/\1/p' | tail -3 | sed 's/^/    /')
  Make the proxy reachable, set GOPROXY to a reachable mirror, or set CKQ_KUBE_BIN_DIR to prebuilt binaries."
  fi
}

# ---- kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet (static: CGO_ENABLED=0, as upstream 1.36 does) --------------------------
# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with ./staging paths,
# which consumers ignore; a wrapper module replaces each with the published v0.<minor>.<patch>.
build_kube() {
  local t0 kw="$WORK/kube" gomod staging v0="v0.${KUBE_VERSION#v1.}"
  t0=$(date +%s)
  mkdir -p "$kw"
  probe_proxy "k8s.io/kubernetes@$KUBE_VERSION"
  gomod="$(cd "$WORK" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')"
  [ -f "$gomod" ] || die "could not locate go.mod of k8s.io/kubernetes@$KUBE_VERSION"
  staging="$(sed -n 's|^[[:space:]]*k8s.io/\([^ ]*\) => ./staging/src/k8s.io/.*|\1|p' "$gomod")"
  [ -n "$staging" ] || die "no staging replaces found in $gomod (layout changed?)"
  {
    echo "module local/ckq-kube-build"
    grep -E '^(go|godebug) ' "$gomod"   # godebug only counts in the main module: mirror upstream
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    for m in $staging; do echo "replace k8s.io/$m => k8s.io/$m $v0"; done
  } > "$kw/go.mod"
  log "k8s $KUBE_VERSION: resolving modules ($(echo "$staging" | wc -w) staging replaces)"
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet) pkgs=() c
  for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  (cd "$kw" && run_go go get "${pkgs[@]/%/@$KUBE_VERSION}") || die "go get of k8s.io/kubernetes $KUBE_VERSION failed (see above)"
  local minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
  local ldf="-s -w" p
  # Same -X keys as upstream hack/lib/version.sh, so `--version` and semver checks see a real version.
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldf+=" -X $p.gitTreeState=clean -X $p.gitCommit=0000000000000000000000000000000000000000"
    ldf+=" -X $p.buildDate=$BUILD_DATE"
  done
  log "k8s $KUBE_VERSION: compiling ${cmds[*]} (the long part: ~10-25 min cold on 2 cores)"
  (cd "$kw" && run_go go build -ldflags "$ldf" -o "$STAGE/" "${pkgs[@]}") || die "go build of kubernetes $KUBE_VERSION failed (see above)"
  log "k8s $KUBE_VERSION: done in $(( $(date +%s) - t0 ))s"
}

# ---- etcd: server/go.mod has replace directives, so `go install` refuses it; use a wrapper -----
build_etcd() {
  local t0 ew="$WORK/etcd"
  t0=$(date +%s)
  mkdir -p "$ew"
  probe_proxy "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  printf 'module local/ckq-etcd-build\n\ngo 1.%s.0\n' "$GO_MIN_MINOR" > "$ew/go.mod"
  (cd "$ew" && run_go go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION") || die "go get of etcd $ETCD_VERSION failed (see above)"
  log "etcd $ETCD_VERSION: compiling"
  (cd "$ew" && run_go go build -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}" \
      -o "$STAGE/etcd" go.etcd.io/etcd/server/v3) || die "go build of etcd $ETCD_VERSION failed (see above)"
  log "etcd $ETCD_VERSION: done in $(( $(date +%s) - t0 ))s"
}

# ---- kwok: no replaces in its go.mod, so plain `go install` works --------------------------------
build_kwok() {
  local t0
  t0=$(date +%s)
  probe_proxy "sigs.k8s.io/kwok@$KWOK_VERSION"
  log "kwok $KWOK_VERSION: compiling"
  (cd "$WORK" && run_go env GOFLAGS=-trimpath GOBIN="$STAGE" go install \
      -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBE_VERSION}" \
      "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION") || die "go install of kwok $KWOK_VERSION failed (see above)"
  log "kwok $KWOK_VERSION: done in $(( $(date +%s) - t0 ))s"
}

log "building $STAMP with $GOVER (GOPROXY=$proxy) into $OUT"
build_etcd
build_kwok
build_kube

for b in "${BINARIES[@]}"; do [ -x "$STAGE/$b" ] || die "build finished but $b is missing"; done
echo "$STAMP" > "$STAGE/VERSIONS"
{
  echo "built=$BUILD_DATE"
  echo "go=$GOVER"
  echo "seconds=$(( $(date +%s) - START ))"
  echo "bytes=$(du -sb "$STAGE" | cut -f1)"
} > "$STAGE/BUILD_INFO"
# Swap in atomically so concurrent readers never see a half-filled directory.
rm -rf "$OUT.old"
[ -d "$OUT" ] && mv "$OUT" "$OUT.old"
mv "$STAGE" "$OUT"
rm -rf "$OUT.old"
log "built in $(( $(date +%s) - START ))s: $(du -sh "$OUT" | cut -f1) in $OUT"
echo "$OUT"
