#!/usr/bin/env bash
# Builds promtool (which checks and unit-tests the alert rules in
# manifests/monitoring/) from the Go module proxy, at the version pinned in
# e2e/tools/promtool/go.mod, into a cache outside the checkout
# (e2e/build-pinned.sh does the building):
#
#   ${PROMTOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-defaults}
#     /tools/promtool-<version>/promtool
#
# Idempotent: a complete build is reused at once. Progress goes to stderr; the
# last line of stdout is the binary's path, so callers can do
#   PROMTOOL=$(e2e/build-promtool.sh | tail -1)
set -euo pipefail

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/build-pinned.sh
source "$E2E_DIR/build-pinned.sh"

NAME=promtool
MOD_DIR="$E2E_DIR/tools/promtool"
MODULE=github.com/prometheus/prometheus
PACKAGE=github.com/prometheus/prometheus/cmd/promtool
CACHE_ROOT="${PROMTOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-defaults}/tools"
STAMP_KEY=prometheus
BUILD_RECIPE=2
VERSION_ARGS=(--version)
# remove_all_sd leaves out the cloud service-discovery plugins (AWS, Azure, GCE,
# ...), which promtool's rule checks and tests never use: a much smaller build.
BUILD_TAGS=remove_all_sd
# The Go module v0.MMM.P is Prometheus release v(MMM/100).(MMM%100).P: stamp that into `promtool --version`.
ldflags() {
  local release="${1#v0.}" minor_major
  minor_major="${release%%.*}"
  echo "-X github.com/prometheus/common/version.Version=$((10#$minor_major / 100)).$((10#$minor_major % 100)).${release#*.}"
}

build_pinned
