#!/usr/bin/env bash
# Build helm from its Go module (no release download), into a cache directory outside the repo, and
# reuse it when present: the same approach as hack/build-kube.sh.
#
# Usage: hack/build-helm.sh [--force] [--quiet] [--check] [--print-versions]
#   stdout: exactly one line, the path of the helm executable (scripts rely on it).
#   stderr: progress and errors (--quiet: only errors, with the tail of the Go output).
#   --check: build nothing; exit 3 when helm is not built yet.
# Environment:
#   CKQ_CACHE_DIR  cache root (default: ${XDG_CACHE_HOME:-~/.cache}/ckq); helm goes to bin/helm-<version>/
#   CKQ_HELM       use this helm executable instead: checked, never built.
#   GOPROXY, GOMODCACHE, GOCACHE  as usual for Go.
set -euo pipefail

HELM_VERSION="v3.22.0"   # helm.sh/helm/v3, the newest v3 on the module proxy; its go.mod says go 1.26.0
GO_MIN_MINOR=26
STAMP="helm=${HELM_VERSION} +kube-version"

FORCE=0
QUIET=0
CHECK=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --quiet) QUIET=1 ;;
    --check) CHECK=1 ;;
    --print-versions) echo "$STAMP"; exit 0 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-helm: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

log() { [ "$QUIET" = 1 ] || echo "build-helm: $*" >&2; }
die() { echo "build-helm: error: $*" >&2; exit 1; }

if [ -n "${CKQ_HELM:-}" ]; then
  [ -x "$CKQ_HELM" ] || die "CKQ_HELM=$CKQ_HELM is not an executable; unset it to build helm from Go modules."
  echo "$CKQ_HELM"
  exit 0
fi

CACHE_ROOT="${CKQ_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ckq}"
OUT="$CACHE_ROOT/bin/helm-$HELM_VERSION"

if [ "$FORCE" = 0 ] && [ -x "$OUT/helm" ] && [ "$(cat "$OUT/VERSIONS" 2>/dev/null)" = "$STAMP" ]; then
  log "reusing $OUT/helm ($STAMP)"
  echo "$OUT/helm"
  exit 0
fi
if [ "$CHECK" = 1 ]; then
  echo "build-helm: not built yet: $OUT ($STAMP)" >&2
  exit 3
fi

command -v go >/dev/null 2>&1 || die "Go is not installed (no 'go' on PATH).
  Install Go >= 1.${GO_MIN_MINOR} from https://go.dev/dl/, or set CKQ_HELM to a helm v3 executable."
GOVER="$(GOTOOLCHAIN=local go env GOVERSION 2>/dev/null || true)"
minor="$(echo "$GOVER" | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
{ [ -n "$minor" ] && [ "$minor" -ge "$GO_MIN_MINOR" ]; } || die "Go >= 1.${GO_MIN_MINOR} is required, found '${GOVER:-unknown}'.
  Install a newer Go, or set CKQ_HELM to a helm v3 executable."
proxy="$(go env GOPROXY)"
case "$proxy" in
  off|"") die "GOPROXY='$proxy' disables module downloads. Set GOPROXY=https://proxy.golang.org,direct
  (or a reachable mirror), or set CKQ_HELM to a helm v3 executable." ;;
esac

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-trimpath"
mkdir -p "$CACHE_ROOT/bin"
WORK="$(mktemp -d "$CACHE_ROOT/build-helm.XXXXXX")"
STAGE="$WORK/out"
mkdir -p "$STAGE"
# A failed build leaves nothing half-made in the cache (the Go module/build caches are kept).
trap 'rm -rf "$WORK"' EXIT
GOLOG="$WORK/go.log"
run_go() {
  if [ "$QUIET" = 1 ]; then
    "$@" >>"$GOLOG" 2>&1 || { tail -40 "$GOLOG" >&2; cp "$GOLOG" "$CACHE_ROOT/build-helm-failed.log"; return 1; }
  else
    "$@" >&2
  fi
}

START=$(date +%s)
log "building $STAMP with $GOVER (GOPROXY=$proxy) into $OUT (cold: ~5-10 min on 2 cores)"
# The Kubernetes version helm assumes without a cluster (`helm template`, `helm lint`, a chart's
# kubeVersion check) is set at link time from its k8s.io/client-go, as upstream's Makefile does; a
# plain `go install` would leave it at v1.20.0 and refuse charts that need a newer Kubernetes.
gomod="$(cd "$WORK" && go mod download -json "helm.sh/helm/v3@$HELM_VERSION" 2>/dev/null \
  | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')" || true
[ -f "$gomod" ] || die "cannot download helm.sh/helm/v3@$HELM_VERSION from the Go module proxy (GOPROXY=$proxy).
  Make the proxy reachable, or set CKQ_HELM to a helm v3 executable."
clientgo="$(sed -n 's|^[[:space:]]*k8s.io/client-go v0\.\([0-9]*\)\..*|\1|p' "$gomod" | head -1)"
[ -n "$clientgo" ] || die "no k8s.io/client-go v0.N requirement in $gomod (layout changed?)"
ldf="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldf+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$clientgo"
done
(cd "$WORK" && run_go env GOBIN="$STAGE" go install -ldflags "$ldf" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION") \
  || die "go install of helm $HELM_VERSION failed (see above)"
[ -x "$STAGE/helm" ] || die "build finished but helm is missing"
echo "$STAMP" > "$STAGE/VERSIONS"
echo "seconds=$(( $(date +%s) - START ))" > "$STAGE/BUILD_INFO"
rm -rf "$OUT.old"
[ -d "$OUT" ] && mv "$OUT" "$OUT.old"
mv "$STAGE" "$OUT"
rm -rf "$OUT.old"
log "built in $(( $(date +%s) - START ))s: $OUT/helm"
echo "$OUT/helm"
