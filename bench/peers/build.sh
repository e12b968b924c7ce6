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
# Idempotent: a complete build is reused at once. Progress goes to stderr; the
# last line of stdout is the bin directory, so callers can do
#   BIN=$(bench/peers/build.sh kyverno | tail -1)
# Cold builds on 2 cores: Gatekeeper about 5 minutes, Kyverno about 20. On a
# shared machine run it as `nice -n 19 bench/peers/build.sh ...`.
# Needs only Go (at least the `go` line of the pinned module; built static, no
# C compiler).
set -euo pipefail

PEERS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '[peers-build] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
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
[[ -f "$PIN_DIR/go.mod" && -f "$PIN_DIR/go.sum" ]] || die "no $PIN_DIR/go.mod and go.sum"
command -v go >/dev/null 2>&1 || die "go is not on PATH"

# The pinned version: the single source of truth is the require line.
VERSION="$(awk -v m="$MODULE" '($1 == m || ($1 == "require" && $2 == m)) { v = ($1 == m) ? $2 : $3; if (v ~ /^v/) { print v; exit } }' "$PIN_DIR/go.mod")"
[[ -n "$VERSION" ]] || die "cannot read the pinned $MODULE version from $PIN_DIR/go.mod"

CACHE_ROOT="${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-defaults}/peers"
OUT_DIR="$CACHE_ROOT/$NAME-$VERSION"
STAMP="$OUT_DIR/.complete"

# The stamp records what decides the output: an edit to the pin (go.mod or its
# checksums) rebuilds even when the directory name stays the same. Bump
# BUILD_RECIPE when changing the build flags, targets or CRD extraction below.
BUILD_RECIPE=1
expected_stamp() {
  echo "recipe=$BUILD_RECIPE $NAME=$VERSION targets=${TARGETS[*]}"
  cat "$PIN_DIR/go.mod" "$PIN_DIR/go.sum" | cksum
}

is_complete() {
  [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$(expected_stamp)" ]] || return 1
  [[ -d "$OUT_DIR/crds" ]] || return 1
  [[ "$NAME" != kyverno || -f "$OUT_DIR/config.yaml" ]] || return 1
  local t
  for t in "${TARGETS[@]}"; do [[ -x "$OUT_DIR/bin/${t#* }" ]] || return 1; done
}

if is_complete; then
  echo "$OUT_DIR/bin"
  exit 0
fi

mkdir -p "$CACHE_ROOT"
# Serialise concurrent builds of the same peer so the second one waits and
# then reuses the result instead of compiling everything again.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE_ROOT/.build-$NAME.lock"
  if ! flock -n 9; then
    log "another $NAME build is running; waiting for it"
    flock 9
  fi
  if is_complete; then
    echo "$OUT_DIR/bin"
    exit 0
  fi
fi

# Static, path-independent binaries: no C compiler needed. The pin module and
# the peer's module each stand alone: ignore any go.work a developer may have.
export CGO_ENABLED=0 GOWORK=off

elapsed() { local s=$(( $(date +%s) - $1 )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
BUILD_START=$(date +%s)
log "building $NAME $VERSION with $(go env GOVERSION) into $OUT_DIR"

# --- Source -------------------------------------------------------------------
# Downloaded through the pin module, so go.sum there verifies the zip (and a
# tampered or re-tagged release fails with a checksum mismatch).
step_start=$(date +%s)
log "downloading $MODULE@$VERSION (module cache: $(go env GOMODCACHE))"
(cd "$PIN_DIR" && go mod download "$MODULE") >&2 || die "cannot download $MODULE@$VERSION"
SRC="$(cd "$PIN_DIR" && go list -m -f '{{.Dir}}' "$MODULE")"
[[ -n "$SRC" && -f "$SRC/go.mod" ]] || die "no module directory for $MODULE@$VERSION (got '$SRC')"
log "  source: $SRC"

# The module cache is read-only, which is fine: with -mod=readonly (the
# module's go.sum is complete) `go build -o elsewhere` writes nothing into it,
# so no copy of the source is needed.
# Fetch only the modules the targets import (`go mod download` in there would
# also fetch test-only dependencies), so the timing below is compilation alone.
pkgs=()
for t in "${TARGETS[@]}"; do pkgs+=("${t%% *}"); done
(cd "$SRC" && go list -mod=readonly -deps "${pkgs[@]}" >/dev/null) ||
  die "cannot resolve the dependencies of ${pkgs[*]} in $SRC"
log "  done ($(elapsed "$step_start"))"

# Build into a temporary directory next to the target and move it into place
# only when everything (stamp included) is there, so an interrupted build never
# leaves a half-filled directory that looks usable.
TMP_DIR="$(mktemp -d "$CACHE_ROOT/.tmp-$NAME.XXXXXX")"
trap 'rm -rf "$TMP_DIR"' EXIT
chmod 755 "$TMP_DIR" # mktemp makes it private
mkdir -p "$TMP_DIR/bin" "$TMP_DIR/crds"

# `go build -v` prints one package path per compiled package: turn that into a
# periodic count (the full list is thousands of lines) but let anything else,
# i.e. compiler errors, through untouched.
progress() { # <label>
  awk -v label="$1" '
    # srand() returns the previous seed: a portable "now" for mawk and gawk.
    function now() { srand(); return srand() }
    BEGIN { start = now() }
    /^[^ \t:#]+$/ {
      n++
      if (n % 200 == 0) {
        printf("[peers-build]   %s: %d packages compiled (%ds)\n", label, n, now() - start)
        fflush()
      }
      next
    }
    { print; fflush() }
    END { printf("[peers-build]   %s: done, %d packages compiled (%ds)\n", label, n, now() - start) }
  ' >&2
}

# --- Binaries -----------------------------------------------------------------
LDFLAGS="-s -w $(version_ldflags "$VERSION")"
for t in "${TARGETS[@]}"; do
  pkg="${t%% *}" bin="${t#* }"
  step_start=$(date +%s)
  log "compiling $bin ($pkg)"
  # pipefail makes a compile error fail this line even though progress() succeeds.
  (cd "$SRC" && go build -v -trimpath -mod=readonly -ldflags="$LDFLAGS" \
    -o "$TMP_DIR/bin/$bin" "$pkg") 2>&1 | progress "$bin"
  [[ -x "$TMP_DIR/bin/$bin" ]] || die "build produced no $bin"
  log "  done ($(elapsed "$step_start"), $(du -h "$TMP_DIR/bin/$bin" | cut -f1))"
done

# --- CRDs ---------------------------------------------------------------------
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
    ' "$SRC/deploy/gatekeeper.yaml" >"$TMP_DIR/crds/gatekeeper-crds.yaml" ||
      die "found no CustomResourceDefinition in $SRC/deploy/gatekeeper.yaml"
    ;;
  kyverno)
    [[ -d "$SRC/config/crds" ]] || die "no $SRC/config/crds"
    cp -R "$SRC/config/crds/." "$TMP_DIR/crds/"
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
    ' "$SRC/config/install-latest-testing.yaml" >"$TMP_DIR/config.yaml" ||
      die "expected the kyverno Namespace and ConfigMaps kyverno, kyverno-metrics in $SRC/config/install-latest-testing.yaml"
    ;;
esac
# Copies from the module cache keep its read-only mode; make them ordinary
# files so the directory can be replaced or removed without chmod.
chmod -R u+w "$TMP_DIR/crds"
log "$(grep -rhc '^kind: CustomResourceDefinition' "$TMP_DIR/crds" | awk '{ s += $1 } END { print s }') CRDs copied to crds/"
ln -s "$SRC" "$TMP_DIR/src"

# Smoke test: the binary starts and knows its flags (--help exits 0 or 2
# depending on the flag library, so look at what it prints).
{ "$TMP_DIR/bin/${TARGETS[0]#* }" --help 2>&1 || true; } | grep -q -- kubeconfig ||
  die "${TARGETS[0]#* } --help does not list its flags"

# Stamp last, then swap the directory into place.
expected_stamp >"$TMP_DIR/.complete"
rm -rf "$OUT_DIR"
mv -T "$TMP_DIR" "$OUT_DIR"
trap - EXIT

log "built $NAME $VERSION in $(elapsed "$BUILD_START"): $(du -sh "$OUT_DIR/bin" | cut -f1) in $OUT_DIR/bin"
echo "$OUT_DIR/bin"
