#!/usr/bin/env bash
# Image archives for the node suite, built without a registry and imported into the node's containerd by
# e2e/node.sh:
#   pause.tar           localhost/pause:e2e, Kubernetes' own pause.c (from the pinned release in the Go
#                       module cache) compiled statically; the pod sandbox image
#   test.tar            localhost/sd-test:e2e, Debian's static busybox on scratch; by default prints `id`
#                       and /proc/self/status
#   secure-defaults.tar ${IMAGE} (default localhost/secure-defaults:<Cargo version>, from `make image`),
#                       exported from podman when podman has it
# into ${CONTROL_PLANE_CACHE:-~/.cache/secure-defaults}/node/images-k8s-<version>/; the last line of stdout
# is that directory. pause and test are built once; secure-defaults is exported on every call.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=e2e/podman.sh
source "$ROOT/e2e/podman.sh"
log() { printf '[node-images] %s\n' "$*" >&2; }

K8S_VERSION="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2; exit }' "$ROOT/e2e/tools/node/go.mod")"
OUT="${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-defaults}/node/images-k8s-$K8S_VERSION"
IMAGE="${IMAGE:-localhost/secure-defaults:$(awk -F'"' '/^version *=/ { print $2; exit }' "$ROOT/Cargo.toml")}"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

if [[ ! -s "$OUT/pause.tar" ]]; then
  src="$(cd "$ROOT/e2e/tools/node" && GOWORK=off go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
  [[ -f "$src" ]] || { log "no $src (run e2e/build-node.sh first)"; exit 1; }
  command -v gcc >/dev/null || { log "gcc is required to build the pause image"; exit 1; }
  mkdir -p "$WORK/pause"
  gcc -Os -static -Wall -Werror -DVERSION="$K8S_VERSION" -o "$WORK/pause/pause" "$src"
  strip "$WORK/pause/pause"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$WORK/pause/Containerfile"
  "${PODMAN[@]}" build -q -t localhost/pause:e2e -f "$WORK/pause/Containerfile" "$WORK/pause" >/dev/null
  "${PODMAN[@]}" save -q --format docker-archive -o "$OUT/pause.tar.tmp" localhost/pause:e2e
  mv "$OUT/pause.tar.tmp" "$OUT/pause.tar"
  log "built localhost/pause:e2e from $src"
fi

if [[ ! -s "$OUT/test.tar" ]]; then
  bb=/bin/busybox
  [[ -x "$bb" ]] || { log "busybox is required (apt-get install busybox-static)"; exit 1; }
  mkdir -p "$WORK/test/rootfs/bin"
  cp "$bb" "$WORK/test/rootfs/bin/busybox"
  for a in sh id cat grep sleep ls echo; do ln -s busybox "$WORK/test/rootfs/bin/$a"; done
  printf 'FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\nCMD ["/bin/sh", "-c", "id; cat /proc/self/status"]\n' \
    >"$WORK/test/Containerfile"
  "${PODMAN[@]}" build -q -t localhost/sd-test:e2e -f "$WORK/test/Containerfile" "$WORK/test" >/dev/null
  "${PODMAN[@]}" save -q --format docker-archive -o "$OUT/test.tar.tmp" localhost/sd-test:e2e
  mv "$OUT/test.tar.tmp" "$OUT/test.tar"
  log "built localhost/sd-test:e2e from $bb"
fi

rm -f "$OUT/secure-defaults.tar"
if "${PODMAN[@]}" image exists "$IMAGE"; then
  "${PODMAN[@]}" save -q --format docker-archive -o "$OUT/secure-defaults.tar" "$IMAGE"
  log "exported $IMAGE"
else
  log "no $IMAGE in podman (make image): the in-cluster steps will be skipped"
fi
echo "$OUT"
