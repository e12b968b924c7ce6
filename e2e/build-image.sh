#!/usr/bin/env bash
# Builds the secure-defaults image with podman on a machine that cannot pull a base image: a
# distroless-equivalent root filesystem made from Debian 12 packages (libc6, libgcc-s1, ca-certificates;
# apt-get download + dpkg-deb -x, plus /etc/passwd and /etc/group entries for root and nonroot 65532), and
# the release binary built here (`cargo build --release --locked`; the host is Debian 12 like the base, so
# the binary's glibc is the one in the image). Containerfile.local copies both into an image FROM scratch.
#
#   e2e/build-image.sh [IMAGE]      # default localhost/secure-defaults:<Cargo.toml version>
#
# The last line of stdout is the image name. Needs podman, runc, apt-get, dpkg-deb, cargo.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="$(awk -F'"' '/^version *=/ { print $2; exit }' "$ROOT/Cargo.toml")"
IMAGE="${1:-localhost/secure-defaults:$VERSION}"
WORK="$ROOT/target/image"
CONTEXT="$WORK/context"
# The base's packages: what distroless cc-debian12 holds, from the host's own Debian release.
PACKAGES=(libc6 libgcc-s1 ca-certificates)

log() { printf '[build-image] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
for tool in podman apt-get dpkg-deb cargo; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
# shellcheck source=e2e/podman.sh
source "$ROOT/e2e/podman.sh"
grep -q '^VERSION_CODENAME=bookworm' /etc/os-release ||
  log "warning: the host is not Debian 12: the binary may need a newer glibc than the image's"

start=$(date +%s)
log "building the release binary"
(cd "$ROOT" && cargo build --release --locked --bin secure-defaults) >&2

rm -rf "$CONTEXT"
mkdir -p "$WORK/debs" "$CONTEXT/rootfs"
log "downloading ${PACKAGES[*]}"
# apt-get download drops privileges to _apt, which must be able to write the directory.
chmod 777 "$WORK/debs"
if ! (cd "$WORK/debs" && apt-get download "${PACKAGES[@]}" >&2); then
  log "apt-get download failed; updating the package lists and retrying"
  apt-get update -qq >&2
  (cd "$WORK/debs" && apt-get download "${PACKAGES[@]}" >&2)
fi
R="$CONTEXT/rootfs"
for pkg in "${PACKAGES[@]}"; do
  deb="$(ls -t "$WORK/debs/${pkg}_"*.deb | head -1)"
  log "  $(basename "$deb")"
  dpkg-deb -x "$deb" "$R"
done
# Documentation, manuals and translations serve nobody in the image.
rm -rf "$R/usr/share/doc" "$R/usr/share/man" "$R/usr/share/lintian" "$R/usr/share/locale" "$R/usr/share/info"
# ca-certificates ships the certificates; its postinst would build the bundle: do it here.
mkdir -p "$R/etc/ssl/certs"
cat "$R"/usr/share/ca-certificates/mozilla/*.crt >"$R/etc/ssl/certs/ca-certificates.crt"
# Users and groups as distroless: root and nonroot (65532), no login shell.
cat >"$R/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat >"$R/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
GROUP
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$R/etc/nsswitch.conf"
mkdir -p "$R/tmp" "$R/root" "$R/home/nonroot"
chmod 1777 "$R/tmp"
chmod 700 "$R/root"
chown 65532:65532 "$R/home/nonroot"
cp "$ROOT/target/release/secure-defaults" "$CONTEXT/secure-defaults"
strip "$CONTEXT/secure-defaults" 2>/dev/null || true
cp "$ROOT/Containerfile.local" "$CONTEXT/Containerfile"

log "podman build -t $IMAGE"
"${PODMAN[@]}" build --quiet -t "$IMAGE" -f "$CONTEXT/Containerfile" "$CONTEXT" >&2
size="$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")"
log "built $IMAGE: $((size / 1024 / 1024)) MiB ($size bytes) in $(( $(date +%s) - start ))s"
echo "$IMAGE"
