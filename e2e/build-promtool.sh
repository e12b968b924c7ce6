#!/usr/bin/env bash
# Builds promtool (which checks and unit-tests the alert rules in
# manifests/monitoring/) from the Go module proxy, at the version pinned in
# e2e/tools/promtool/go.mod, into a cache outside the checkout:
#
#   ${PROMTOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-defaults}
#     /tools/promtool-<version>/promtool
#
# Idempotent: a complete build is reused at once. Progress goes to stderr; the
# last line of stdout is the binary's path, so callers can do
#   PROMTOOL=$(e2e/build-promtool.sh | tail -1)
# Needs only Go >= 1.26 (no C compiler: the binary is built static).
set -euo pipefail

MOD_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/tools/promtool"

log() { printf '[build-promtool] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v go >/dev/null 2>&1 || die "go is not on PATH (need Go >= 1.26)"

VERSION="$(awk '$1 == "github.com/prometheus/prometheus" && $2 ~ /^v/ { print $2; exit }' "$MOD_DIR/go.mod")"
[[ -n "$VERSION" ]] || die "cannot read the pinned version from $MOD_DIR/go.mod"

CACHE_ROOT="${PROMTOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-defaults}/tools"
OUT_DIR="$CACHE_ROOT/promtool-$VERSION"
STAMP="$OUT_DIR/.complete"

# The stamp records what decides the binary: an edit to go.mod rebuilds even
# when the version, and so the directory name, stays the same. Bump
# BUILD_RECIPE when changing the build flags below.
BUILD_RECIPE=2
expected_stamp() {
  echo "recipe=$BUILD_RECIPE prometheus=$VERSION"
  cksum <"$MOD_DIR/go.mod"
}
is_complete() {
  [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$(expected_stamp)" ]] && [[ -x "$OUT_DIR/promtool" ]]
}

if is_complete; then
  echo "$OUT_DIR/promtool"
  exit 0
fi

mkdir -p "$CACHE_ROOT"
# Serialise concurrent builds so the second waits and reuses the result.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE_ROOT/.promtool-build.lock"
  if ! flock -n 9; then
    log "another build is running; waiting for it"
    flock 9
  fi
  if is_complete; then
    echo "$OUT_DIR/promtool"
    exit 0
  fi
fi

log "building promtool from github.com/prometheus/prometheus $VERSION with $(go env GOVERSION) into $OUT_DIR"
log "(a cold build takes several minutes on 2 cores; later runs reuse it)"
start=$(date +%s)

TMP_DIR="$(mktemp -d "$CACHE_ROOT/.tmp-promtool.XXXXXX")"
trap 'rm -rf "$TMP_DIR"' EXIT
chmod 755 "$TMP_DIR"

# The Go module v0.MMM.P is Prometheus release v(MMM/100).(MMM%100).P: stamp that into `promtool --version`.
release="${VERSION#v0.}"
minor_major="${release%%.*}"
release="$((10#$minor_major / 100)).$((10#$minor_major % 100)).${release#*.}"

export CGO_ENABLED=0
export GOWORK=off
(cd "$MOD_DIR" && go mod download)
# remove_all_sd leaves out the cloud service-discovery plugins (AWS, Azure, GCE,
# ...), which promtool's rule checks and tests never use: a much smaller build.
(cd "$MOD_DIR" && go build -trimpath -mod=readonly -tags=remove_all_sd \
  -ldflags="-s -w -X github.com/prometheus/common/version.Version=$release" \
  -o "$TMP_DIR/promtool" github.com/prometheus/prometheus/cmd/promtool)

"$TMP_DIR/promtool" --version >&2 || die "promtool does not run"

expected_stamp >"$TMP_DIR/.complete"
rm -rf "$OUT_DIR"
mv -T "$TMP_DIR" "$OUT_DIR"
trap - EXIT

s=$(( $(date +%s) - start ))
log "built in $((s / 60))m$(printf '%02d' $((s % 60)))s"
echo "$OUT_DIR/promtool"
