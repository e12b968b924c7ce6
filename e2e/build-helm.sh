#!/usr/bin/env bash
# Builds the helm CLI the chart tests run, from the Go module proxy, at the
# version pinned in e2e/tools/helm/go.mod, into a cache outside the checkout
# beside the control-plane binaries:
#
#   ${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-defaults}
#     /tools/helm-<version>/helm
#
# Idempotent: a complete build is reused at once. Progress goes to stderr; the
# last line of stdout is the helm binary, so callers can do
#   HELM=$(e2e/build-helm.sh | tail -1)
# Needs only Go >= 1.26 (built static, no C compiler).
set -euo pipefail

MOD_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/tools/helm"

log() { printf '[build-helm] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v go >/dev/null 2>&1 || die "go is not on PATH (need Go >= 1.26)"

HELM_VERSION="$(awk '$1 == "helm.sh/helm/v3" && $2 ~ /^v/ { print $2; exit }' "$MOD_DIR/go.mod")"
[[ -n "$HELM_VERSION" ]] || die "cannot read the pinned helm version from $MOD_DIR/go.mod"

CACHE_ROOT="${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-defaults}/tools"
OUT_DIR="$CACHE_ROOT/helm-$HELM_VERSION"
STAMP="$OUT_DIR/.complete"

# The stamp records what decides the binary: an edit to go.mod (a dependency
# bump) rebuilds even when the helm version, and so the directory, stays.
BUILD_RECIPE=1
expected_stamp() {
  echo "recipe=$BUILD_RECIPE helm=$HELM_VERSION"
  cksum <"$MOD_DIR/go.mod"
}
is_complete() {
  [[ -f "$STAMP" && -x "$OUT_DIR/helm" ]] && [[ "$(cat "$STAMP")" == "$(expected_stamp)" ]]
}

if is_complete; then
  echo "$OUT_DIR/helm"
  exit 0
fi

mkdir -p "$CACHE_ROOT"
# Serialise concurrent builds so a second caller waits and reuses the result.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE_ROOT/.helm-build.lock"
  if ! flock -n 9; then
    log "another build is running; waiting for it"
    flock 9
  fi
  if is_complete; then
    echo "$OUT_DIR/helm"
    exit 0
  fi
fi

start=$(date +%s)
log "building helm $HELM_VERSION with $(go env GOVERSION) into $OUT_DIR"
TMP_DIR="$(mktemp -d "$CACHE_ROOT/.tmp-helm.XXXXXX")"
trap 'rm -rf "$TMP_DIR"' EXIT
chmod 755 "$TMP_DIR"

export CGO_ENABLED=0 GOWORK=off
# Version stamping as upstream's Makefile, so `helm version` reports the release.
LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
(cd "$MOD_DIR" && go mod download && go build -trimpath -mod=readonly -ldflags="$LDFLAGS" \
  -o "$TMP_DIR/helm" helm.sh/helm/v3/cmd/helm) >&2
"$TMP_DIR/helm" version >&2 || die "helm does not run"

expected_stamp >"$TMP_DIR/.complete"
rm -rf "$OUT_DIR"
mv -T "$TMP_DIR" "$OUT_DIR"
trap - EXIT
log "built in $(( $(date +%s) - start ))s"
echo "$OUT_DIR/helm"
