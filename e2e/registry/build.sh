#!/usr/bin/env bash
# Builds the OCI registry `distribution` (the CNCF registry, `registry:3`) for
# the image-aware tests, from the Go module proxy, at the version pinned in
# e2e/registry/tools/go.mod, into a cache outside the checkout (beside
# e2e/build-control-plane.sh's):
#
#   ${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-defaults}
#     /registry/distribution-<version>/
#       .complete  stamp, written last: recipe, version, pin checksum
#       bin/registry
#
# Idempotent: a complete build is reused at once. Progress goes to stderr; the
# last line of stdout is the bin directory, so callers can do
#   BIN=$(e2e/registry/build.sh | tail -1)
# A cold build on 2 cores takes a few minutes (see README.md); on a shared
# machine run it as `nice -n 19 e2e/registry/build.sh`.
# Needs only Go (at least the `go` line of the pinned module; built static, no
# C compiler).
set -euo pipefail

REGISTRY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PIN_DIR="$REGISTRY_DIR/tools"
MODULE=github.com/distribution/distribution/v3
PKG=./cmd/registry

log() { printf '[registry-build] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $# -eq 0 ]] || { echo "usage: $0   (no arguments; the version is pinned in $PIN_DIR/go.mod)" >&2; exit 2; }
[[ -f "$PIN_DIR/go.mod" && -f "$PIN_DIR/go.sum" ]] || die "no $PIN_DIR/go.mod and go.sum"
command -v go >/dev/null 2>&1 || die "go is not on PATH"

# The pinned version: the single source of truth is the require line.
VERSION="$(awk -v m="$MODULE" '($1 == m || ($1 == "require" && $2 == m)) { v = ($1 == m) ? $2 : $3; if (v ~ /^v/) { print v; exit } }' "$PIN_DIR/go.mod")"
[[ -n "$VERSION" ]] || die "cannot read the pinned $MODULE version from $PIN_DIR/go.mod"

CACHE_ROOT="${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-defaults}/registry"
OUT_DIR="$CACHE_ROOT/distribution-$VERSION"
STAMP="$OUT_DIR/.complete"

# The stamp records what decides the output: an edit to the pin (go.mod or its
# checksums) rebuilds even when the directory name stays the same. Bump
# BUILD_RECIPE when changing the build flags below.
BUILD_RECIPE=1
expected_stamp() {
  echo "recipe=$BUILD_RECIPE distribution=$VERSION"
  cat "$PIN_DIR/go.mod" "$PIN_DIR/go.sum" | cksum
}

is_complete() {
  [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$(expected_stamp)" ]] && [[ -x "$OUT_DIR/bin/registry" ]]
}

if is_complete; then
  echo "$OUT_DIR/bin"
  exit 0
fi

mkdir -p "$CACHE_ROOT"
# Serialise concurrent builds (e.g. two test runs at once) so the second one
# waits and then reuses the result instead of compiling everything again.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE_ROOT/.build.lock"
  if ! flock -n 9; then
    log "another registry build is running; waiting for it"
    flock 9
  fi
  if is_complete; then
    echo "$OUT_DIR/bin"
    exit 0
  fi
fi

# Static, path-independent binary: no C compiler needed (upstream's release
# image builds with CGO_ENABLED=0 too). The pin module and the registry's
# module each stand alone: ignore any go.work a developer may have.
export CGO_ENABLED=0 GOWORK=off

elapsed() { local s=$(( $(date +%s) - $1 )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
BUILD_START=$(date +%s)
log "building distribution $VERSION with $(go env GOVERSION) into $OUT_DIR"

# --- Source -------------------------------------------------------------------
# Downloaded through the pin module, so go.sum there verifies the zip (and a
# tampered or re-tagged release fails with a checksum mismatch).
step_start=$(date +%s)
log "downloading $MODULE@$VERSION (module cache: $(go env GOMODCACHE))"
(cd "$PIN_DIR" && go mod download "$MODULE") >&2 || die "cannot download $MODULE@$VERSION"
SRC="$(cd "$PIN_DIR" && go list -m -f '{{.Dir}}' "$MODULE")"
[[ -n "$SRC" && -f "$SRC/go.mod" ]] || die "no module directory for $MODULE@$VERSION (got '$SRC')"
log "  source: $SRC"

# Built inside the module's own directory so its go.mod and go.sum decide
# every dependency, as in upstream's release. The module cache is read-only,
# which is fine: with -mod=readonly `go build -o elsewhere` writes nothing
# there. Fetch only the modules the registry imports (`go mod download` in
# there would also fetch test-only dependencies), so the timing below is
# compilation alone.
(cd "$SRC" && go list -mod=readonly -deps "$PKG" >/dev/null) ||
  die "cannot resolve the dependencies of $PKG in $SRC"
log "  done ($(elapsed "$step_start"))"

# Build into a temporary directory next to the target and move it into place
# only when everything (stamp included) is there, so an interrupted build never
# leaves a half-filled directory that looks usable.
TMP_DIR="$(mktemp -d "$CACHE_ROOT/.tmp-build.XXXXXX")"
trap 'rm -rf "$TMP_DIR"' EXIT
chmod 755 "$TMP_DIR" # mktemp makes it private
mkdir -p "$TMP_DIR/bin"

# `go build -v` prints one package path per compiled package: turn that into a
# periodic count but let anything else, i.e. compiler errors, through untouched.
progress() {
  awk '
    # srand() returns the previous seed: a portable "now" for mawk and gawk.
    function now() { srand(); return srand() }
    BEGIN { start = now() }
    /^[^ \t:#]+$/ {
      n++
      if (n % 100 == 0) {
        printf("[registry-build]   %d packages compiled (%ds)\n", n, now() - start)
        fflush()
      }
      next
    }
    { print; fflush() }
    END { printf("[registry-build]   done, %d packages compiled (%ds)\n", n, now() - start) }
  ' >&2
}

# --- Binary -------------------------------------------------------------------
# Version stamping as upstream's Dockerfile (the release build): the version
# without its leading "v", and mainpkg. The commit is not known from a module,
# so revision stays empty. -s -w strips like the release.
LDFLAGS="-s -w -X $MODULE/version.version=${VERSION#v} -X $MODULE/version.mainpkg=$MODULE"
step_start=$(date +%s)
log "compiling registry ($PKG)"
# pipefail makes a compile error fail this line even though progress() succeeds.
(cd "$SRC" && go build -v -trimpath -mod=readonly -ldflags="$LDFLAGS" \
  -o "$TMP_DIR/bin/registry" "$PKG") 2>&1 | progress
[[ -x "$TMP_DIR/bin/registry" ]] || die "build produced no registry binary"
log "  done ($(elapsed "$step_start"), $(du -h "$TMP_DIR/bin/registry" | cut -f1))"

# Smoke test: the binary starts and reports the pinned version
# (`registry --version` prints "<argv0> <mainpkg> <version>").
got="$("$TMP_DIR/bin/registry" --version 2>&1)" || die "registry --version failed: $got"
[[ "$got" == *" ${VERSION#v}"* ]] || die "registry --version says '$got', expected ${VERSION#v}"
log "  $got"

# Stamp last, then swap the directory into place.
expected_stamp >"$TMP_DIR/.complete"
rm -rf "$OUT_DIR"
mv -T "$TMP_DIR" "$OUT_DIR"
trap - EXIT

log "built distribution $VERSION in $(elapsed "$BUILD_START")"
echo "$OUT_DIR/bin"
