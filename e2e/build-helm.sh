#!/usr/bin/env bash
# Builds the helm CLI the chart tests run, from the Go module proxy, at the
# version pinned in e2e/tools/helm/go.mod, into a cache outside the checkout
# beside the control-plane binaries (e2e/build-pinned.sh does the building):
#
#   ${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-defaults}
#     /tools/helm-<version>/helm
#
# Idempotent: a complete build is reused at once. Progress goes to stderr; the
# last line of stdout is the helm binary, so callers can do
#   HELM=$(e2e/build-helm.sh | tail -1)
set -euo pipefail

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/build-pinned.sh
source "$E2E_DIR/build-pinned.sh"

NAME=helm
MOD_DIR="$E2E_DIR/tools/helm"
MODULE=helm.sh/helm/v3
PACKAGE=helm.sh/helm/v3/cmd/helm
CACHE_ROOT="${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-defaults}/tools"
STAMP_KEY=helm
BUILD_RECIPE=1
VERSION_ARGS=(version)
# Version stamping as upstream's Makefile, so `helm version` reports the release.
ldflags() { echo "-X helm.sh/helm/v3/internal/version.version=$1 -X helm.sh/helm/v3/internal/version.gitTreeState=clean"; }

build_pinned
