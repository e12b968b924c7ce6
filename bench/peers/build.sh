#!/usr/bin/env bash
# Builds a peer admission controller for the side-by-side benchmarks, from the
# Go module proxy, at the version pinned in bench/peers/tools/<name>/go.mod,
# into a cache outside the checkout (beside e2e/build-control-plane.sh's):
#
#   ${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-defaults}
#     /peers/<name>-<version>/
#       .complete  stamp, written last: recipe, version, pin checksum
#       bin/       gatekeeper                     (Gatekeeper's controller manager)
#                  kyverno, kubectl-kyverno       (admission controller, CLI)
#       crds/      the project's CustomResourceDefinitions, for `kubectl apply
#                  --server-side -R -f crds/` (Gatekeeper: the CRDs of
#                  deploy/gatekeeper.yaml; Kyverno: config/crds/)
#       config.yaml  (Kyverno) its Namespace and default ConfigMaps, as the
#                  Helm chart installs them
#       src        link to the module directory the binaries were built from
#
#   bench/peers/build.sh gatekeeper|kyverno
#
# The cache, the stamp and the build itself are e2e/go-tool.sh's; this file says
# what each peer builds and what it keeps beside its binaries.
# Idempotent: a complete build is reused at once. Progress goes to stderr; the
# last line of stdout is the bin directory, so callers can do
#   BIN=$(bench/peers/build.sh kyverno | tail -1)
# Cold builds on 2 cores: Gatekeeper about 5 minutes, Kyverno about 20. On a
# shared machine run it as `nice -n 19 bench/peers/build.sh ...`.
# Needs only Go (at least the `go` line of the pinned module; built static, no
# C compiler).
# The settings below are read by e2e/go-tool.sh.
# shellcheck disable=SC2034
set -euo pipefail

PEERS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG=peers-build
# shellcheck source=e2e/go-tool.sh
. "$PEERS_DIR/../../e2e/go-tool.sh"
usage() { echo "usage: $0 gatekeeper|kyverno" >&2; exit 2; }

[[ $# -eq 1 ]] || usage
NAME="$1"

# What each peer builds. Packages are relative to the module root: they are
# built inside the module's own directory so its go.mod (with its `replace`
# directives) and go.sum decide every dependency, as in upstream's release.
# The version stamping follows each project's Makefile; -s -w strips the
# binaries like Kyverno's release build and e2e/build-control-plane.sh (Gatekeeper's
# Makefile does not strip: its binary is larger than this one, not slower).
case "$NAME" in
  gatekeeper)
    MODULE=github.com/open-policy-agent/gatekeeper/v3
    # <package> <binary name>: the module root is Gatekeeper's `manager`; it is
    # named `gatekeeper` here so it is recognisable in ps/top during a benchmark.
    TARGETS=(". gatekeeper")
    version_ldflags() { echo "-X $MODULE/pkg/version.Version=$1"; }
    ;;
  kyverno)
    MODULE=github.com/kyverno/kyverno
    # The CLI shares nearly all packages with the controller (about 400 more
    # of about 3,400), so it costs only a few minutes more; built last so a
    # failure there is reported after the controller compiled.
    TARGETS=("./cmd/kyverno kyverno" "./cmd/cli/kubectl-kyverno kubectl-kyverno")
    version_ldflags() { echo "-X $MODULE/pkg/version.BuildVersion=$1"; }
    ;;
  *) usage ;;
esac

PIN_DIR="$PEERS_DIR/tools/$NAME"
CACHE_KIND=peers
# Bump when changing the targets, flags or what extras() keeps.
BUILD_RECIPE=1

# Beside bin/: crds/, the project's CustomResourceDefinitions, and for Kyverno config.yaml.
extras() { # <tmp dir> <module dir>
  local tmp="$1" src="$2"
  mkdir -p "$tmp/crds"
  case "$NAME" in
    gatekeeper)
      # deploy/gatekeeper.yaml is the whole install (namespace, RBAC, Deployments,
      # webhook configurations pointing at an in-cluster Service, CRDs): keep only
      # the CustomResourceDefinitions, each as its own document.
      awk '
        function flush() { if (doc != "" && iscrd) { printf("---\n%s", doc); n++ } doc = ""; iscrd = 0 }
        /^---[ \t]*$/ { flush(); next }
        { doc = doc $0 "\n"; if ($0 ~ /^kind:[ \t]*CustomResourceDefinition[ \t]*$/) iscrd = 1 }
        END { flush(); if (n == 0) exit 1 }
      ' "$src/deploy/gatekeeper.yaml" >"$tmp/crds/gatekeeper-crds.yaml" ||
        die "found no CustomResourceDefinition in $src/deploy/gatekeeper.yaml"
      ;;
    kyverno)
      [[ -d "$src/config/crds" ]] || die "no $src/config/crds"
      cp -R "$src/config/crds/." "$tmp/crds/"
      # What the admission controller reads besides CRDs: its Namespace and the
      # two ConfigMaps named by INIT_CONFIG and METRICS_CONFIG (resource filters,
      # webhook namespace selector, metrics settings). Without them it runs on
      # built-in defaults, which differ from an installed Kyverno's, so they are
      # taken from config/install-latest-testing.yaml: the Helm chart rendered
      # with its default values, kept in the same release.
      awk '
        function flush() {
          if (doc != "" && (kind == "Namespace" || (kind == "ConfigMap" && (name == "kyverno" || name == "kyverno-metrics")))) {
            printf("---\n%s", doc); n++
          }
          doc = ""; kind = ""; name = ""; inmeta = 0
        }
        /^---[ \t]*$/ { flush(); next }
        {
          doc = doc $0 "\n"
          if ($0 ~ /^kind:/) { kind = $2 }
          if ($0 ~ /^metadata:/) { inmeta = 1; next }
          if (inmeta && $0 ~ /^  name:/ && name == "") { name = $2 }
          if ($0 ~ /^[^ ]/) { inmeta = 0 }
        }
        END { flush(); if (n != 3) exit 1 }
      ' "$src/config/install-latest-testing.yaml" >"$tmp/config.yaml" ||
        die "expected the kyverno Namespace and ConfigMaps kyverno, kyverno-metrics in $src/config/install-latest-testing.yaml"
      ;;
  esac
  # Copies from the module cache keep its read-only mode; make them ordinary
  # files so the directory can be replaced or removed without chmod.
  chmod -R u+w "$tmp/crds"
  log "$(grep -rhc '^kind: CustomResourceDefinition' "$tmp/crds" | awk '{ s += $1 } END { print s }') CRDs copied to crds/"
}

extras_complete() { # <out dir>
  [[ -d "$1/crds" ]] && [[ "$NAME" != kyverno || -f "$1/config.yaml" ]]
}

# The binary starts and knows its flags (--help exits 0 or 2 depending on the flag library, so look at what it
# prints).
smoke() { # <tmp dir>
  { "$1/bin/${TARGETS[0]#* }" --help 2>&1 || true; } | grep -q -- kubeconfig ||
    die "${TARGETS[0]#* } --help does not list its flags"
}

build_go_tool
