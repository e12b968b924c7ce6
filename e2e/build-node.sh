#!/usr/bin/env bash
# Builds the node binaries the node suite runs (kubelet, kube-scheduler) from
# e2e/tools/node/go.mod (the control plane's Kubernetes release, see e2e/tools/kubernetes),
# into a cache outside the checkout:
#
#   ${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-defaults}
#     /node/k8s-<version>/bin/{kubelet,kube-scheduler}
#
# Idempotent: a complete build is reused at once. The last line of stdout is the
# bin directory. Static, stripped binaries with the upstream release tags.
set -euo pipefail

TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/tools"
K8S_MOD="$TOOLS_DIR/node"

log() { printf '[build-node] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v go >/dev/null 2>&1 || die "go is not on PATH"
K8S_VERSION="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2; exit }' "$K8S_MOD/go.mod")"
[[ -n "$K8S_VERSION" ]] || die "cannot read the pinned Kubernetes version from $K8S_MOD/go.mod"

CACHE_ROOT="${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-defaults}/node"
OUT_DIR="$CACHE_ROOT/k8s-$K8S_VERSION"
STAMP="$OUT_DIR/.complete"
BINARIES=(kubelet kube-scheduler)
BUILD_RECIPE=1
expected_stamp() {
  echo "recipe=$BUILD_RECIPE k8s=$K8S_VERSION"
  cksum <"$K8S_MOD/go.mod"
}
is_complete() {
  [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$(expected_stamp)" ]] || return 1
  local b
  for b in "${BINARIES[@]}"; do [[ -x "$OUT_DIR/bin/$b" ]] || return 1; done
}

if is_complete; then echo "$OUT_DIR/bin"; exit 0; fi

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.build.lock"
flock 9
if is_complete; then echo "$OUT_DIR/bin"; exit 0; fi

started=$(date +%s)
log "building kubelet and kube-scheduler $K8S_VERSION with $(go env GOVERSION) into $OUT_DIR"
TMP_DIR="$(mktemp -d "$CACHE_ROOT/.tmp-build.XXXXXX")"
trap 'rm -rf "$TMP_DIR"' EXIT
mkdir -p "$TMP_DIR/bin"
chmod 755 "$TMP_DIR"

export CGO_ENABLED=0 GOWORK=off
k8s_minor="${K8S_VERSION#v*.}"; k8s_minor="${k8s_minor%%.*}"
k8s_major="${K8S_VERSION#v}"; k8s_major="${k8s_major%%.*}"
(cd "$K8S_MOD" && go mod download)
build_date="$(cd "$K8S_MOD" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)"
LDFLAGS="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$k8s_major -X $pkg.gitMinor=$k8s_minor"
  LDFLAGS+=" -X $pkg.gitCommit= -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done
(cd "$K8S_MOD" && go build -trimpath -mod=readonly -tags=selinux,notest,grpcnotrace \
  -ldflags="$LDFLAGS" -o "$TMP_DIR/bin/" \
  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler) >&2
for b in "${BINARIES[@]}"; do [[ -x "$TMP_DIR/bin/$b" ]] || die "build produced no $b"; done
"$TMP_DIR/bin/kubelet" --version >&2

expected_stamp >"$TMP_DIR/.complete"
rm -rf "$OUT_DIR"
mv -T "$TMP_DIR" "$OUT_DIR"
trap - EXIT
log "built in $(( $(date +%s) - started ))s"
echo "$OUT_DIR/bin"
