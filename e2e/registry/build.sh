#!/usr/bin/env bash
# Builds the OCI registry `distribution` (the CNCF registry, `registry:3`) for
# the image-aware tests, from the Go module proxy, at the version pinned in
# e2e/registry/tools/go.mod, into a cache outside the checkout (the cache, the
# stamp and the build itself are e2e/go-tool.sh's):
#
#   ${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-defaults}
#     /registry/distribution-<version>/bin/registry
#
# Idempotent: a complete build is reused at once. Progress goes to stderr; the
# last line of stdout is the bin directory, so callers can do
#   BIN=$(e2e/registry/build.sh | tail -1)
# A cold build on 2 cores takes about two minutes; on a shared machine run it
# as `nice -n 19 e2e/registry/build.sh`. Needs only Go.
# The settings below are read by e2e/go-tool.sh.
# shellcheck disable=SC2034
set -euo pipefail

REGISTRY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG=registry-build
# shellcheck source=e2e/go-tool.sh
. "$REGISTRY_DIR/../go-tool.sh"

[[ $# -eq 0 ]] || { echo "usage: $0   (no arguments; the version is pinned in $REGISTRY_DIR/tools/go.mod)" >&2; exit 2; }

NAME=distribution
MODULE=github.com/distribution/distribution/v3
PIN_DIR="$REGISTRY_DIR/tools"
CACHE_KIND=registry
TARGETS=("./cmd/registry registry")
# Bump when changing the targets or flags.
BUILD_RECIPE=1

# Version stamping as upstream's Dockerfile (the release build): the version without its leading "v", and
# mainpkg. The commit is not known from a module, so revision stays empty.
version_ldflags() { echo "-X $MODULE/version.version=${1#v} -X $MODULE/version.mainpkg=$MODULE"; }

# The binary starts and reports the pinned version (`registry --version` prints "<argv0> <mainpkg> <version>").
smoke() { # <tmp dir>
  local got
  got="$("$1/bin/registry" --version 2>&1)" || die "registry --version failed: $got"
  [[ "$got" == *" ${VERSION#v}"* ]] || die "registry --version says '$got', expected ${VERSION#v}"
  log "  $got"
}

build_go_tool
