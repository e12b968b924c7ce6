#!/usr/bin/env bash
# Builds the control-plane binaries the e2e tests run (etcd, kube-apiserver,
# kube-controller-manager, kubectl) from the Go module proxy, at the versions
# pinned in e2e/tools/{kubernetes,etcd}/go.mod, into a cache outside the
# checkout:
#
#   ${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-defaults}
#     /control-plane/k8s-<version>-etcd-<version>/bin/<binary>
#
# K8S_TOOLS picks the Kubernetes pin: a directory under e2e/tools, default
# `kubernetes` (e.g. K8S_TOOLS=kubernetes-1.33 for an older release).
#
# Idempotent: a complete build is reused at once. Progress goes to stderr;
# the last line of stdout is the bin directory, so callers can do
#   BIN=$(e2e/build-control-plane.sh | tail -1)
# Needs only Go >= 1.26 (no C compiler: the binaries are built static).
set -euo pipefail

TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/tools"
K8S_MOD="$TOOLS_DIR/${K8S_TOOLS:-kubernetes}"
ETCD_MOD="$TOOLS_DIR/etcd"

log() { printf '[build-control-plane] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ -f "$K8S_MOD/go.mod" ]] || die "no $K8S_MOD/go.mod (K8S_TOOLS=${K8S_TOOLS:-})"

command -v go >/dev/null 2>&1 || die "go is not on PATH (need Go >= 1.26)"

# Read a pinned version from a tools go.mod (the single source of truth).
pinned() { # <go.mod> <module path>
  awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$1"
}
K8S_VERSION="$(pinned "$K8S_MOD/go.mod" k8s.io/kubernetes)"
ETCD_VERSION="$(pinned "$ETCD_MOD/go.mod" go.etcd.io/etcd/server/v3)"
[[ -n "$K8S_VERSION" && -n "$ETCD_VERSION" ]] || die "cannot read pinned versions from $TOOLS_DIR/*/go.mod"

CACHE_ROOT="${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-defaults}/control-plane"
OUT_DIR="$CACHE_ROOT/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
STAMP="$OUT_DIR/.complete"
BINARIES=(etcd kube-apiserver kube-controller-manager kubectl)

# The stamp records what decides the binaries' contents: an edit to a tools
# go.mod (e.g. a dependency bump) rebuilds even when the versions, and so the
# directory name, stay the same (go.sum only verifies, so it is left out).
# Bump BUILD_RECIPE when changing the build flags below.
BUILD_RECIPE=2
expected_stamp() {
  echo "recipe=$BUILD_RECIPE k8s=$K8S_VERSION etcd=$ETCD_VERSION"
  cat "$K8S_MOD/go.mod" "$ETCD_MOD/go.mod" | cksum
}

is_complete() {
  [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$(expected_stamp)" ]] || return 1
  local b
  for b in "${BINARIES[@]}"; do [[ -x "$OUT_DIR/bin/$b" ]] || return 1; done
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
    log "another build is running; waiting for it"
    flock 9
  fi
  if is_complete; then
    echo "$OUT_DIR/bin"
    exit 0
  fi
fi

GO_VERSION="$(go env GOVERSION)"
log "building Kubernetes $K8S_VERSION + etcd $ETCD_VERSION with $GO_VERSION into $OUT_DIR"
log "(a cold build takes about 20 minutes on 2 cores; later runs reuse it)"

# Build into a temporary directory next to the target and move it into place
# only when everything (stamp included) is there, so an interrupted build never
# leaves a half-filled directory that looks usable.
TMP_DIR="$(mktemp -d "$CACHE_ROOT/.tmp-build.XXXXXX")"
trap 'rm -rf "$TMP_DIR"' EXIT
mkdir -p "$TMP_DIR/bin"
chmod 755 "$TMP_DIR" # mktemp makes it private

# Static, stripped, path-independent binaries: no C compiler needed and a
# shorter link. These match the upstream release builds.
export CGO_ENABLED=0
# The tools modules stand alone: ignore any go.work a developer may have.
export GOWORK=off
GO_BUILD_FLAGS=(-trimpath -mod=readonly)

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
      if (n % 100 == 0) {
        printf("[build-control-plane]   %s: %d packages compiled (%ds)\n", label, n, now() - start)
        fflush()
      }
      next
    }
    { print; fflush() }
    END { printf("[build-control-plane]   %s: done, %d packages compiled (%ds)\n", label, n, now() - start) }
  ' >&2
}

elapsed() { local s=$(( $(date +%s) - $1 )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
BUILD_START=$(date +%s)

# --- Kubernetes ---------------------------------------------------------------
# Same version stamping as upstream's hack/lib/version.sh, so `kubectl version`
# and the apiserver's /version report the real release.
k8s_minor="${K8S_VERSION#v*.}"; k8s_minor="${k8s_minor%%.*}"
k8s_major="${K8S_VERSION#v}"; k8s_major="${k8s_major%%.*}"
step_start=$(date +%s)
log "downloading Kubernetes modules (module cache: $(go env GOMODCACHE))"
(cd "$K8S_MOD" && go mod download)
log "  done ($(elapsed "$step_start"))"

# buildDate is the release's own timestamp (as the module proxy records it),
# not the time of this build, so rebuilding gives identical binaries. The
# commit is not known from a module, so gitCommit is left empty rather than
# showing the unexpanded placeholder.
build_date="$(cd "$K8S_MOD" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)"
K8S_LDFLAGS="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  K8S_LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION"
  K8S_LDFLAGS+=" -X $pkg.gitMajor=$k8s_major -X $pkg.gitMinor=$k8s_minor"
  K8S_LDFLAGS+=" -X $pkg.gitCommit= -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

step_start=$(date +%s)
log "compiling kube-apiserver, kube-controller-manager, kubectl"
# One `go build` for all three so shared packages compile once and in parallel.
# Tags as upstream's release build: selinux, notest, grpcnotrace.
(cd "$K8S_MOD" && go build -v "${GO_BUILD_FLAGS[@]}" \
  -tags=selinux,notest,grpcnotrace \
  -ldflags="$K8S_LDFLAGS" \
  -o "$TMP_DIR/bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl) 2>&1 | progress kubernetes
log "  done ($(elapsed "$step_start"))"

# --- etcd ---------------------------------------------------------------------
step_start=$(date +%s)
log "downloading etcd modules"
(cd "$ETCD_MOD" && go mod download)
log "compiling etcd"
# go.etcd.io/etcd/server/v3 is itself the etcd main package.
(cd "$ETCD_MOD" && go build -v "${GO_BUILD_FLAGS[@]}" \
  -ldflags="-s -w" \
  -o "$TMP_DIR/bin/etcd" \
  go.etcd.io/etcd/server/v3) 2>&1 | progress etcd
log "  done ($(elapsed "$step_start"))"

for b in "${BINARIES[@]}"; do
  [[ -x "$TMP_DIR/bin/$b" ]] || die "build produced no $b"
done
"$TMP_DIR/bin/kubectl" version --client >&2 || die "kubectl does not run"

# Stamp last, then swap the directory into place.
expected_stamp >"$TMP_DIR/.complete"
rm -rf "$OUT_DIR"
mv -T "$TMP_DIR" "$OUT_DIR"
trap - EXIT

log "built in $(elapsed "$BUILD_START")"
echo "$OUT_DIR/bin"
