#!/usr/bin/env bash
# Builds the test images of e2e/registry/images/ with podman and pushes them to
# the registry started from DIR (e2e/registry/run.sh start DIR ...), then reads
# each one back over the registry's HTTP API (inspect.py, with curl) and checks
# its config's User and platform.
#
#   e2e/registry/push-images.sh DIR [IMAGE...]
#
# IMAGE: any of user-1001 user-root user-unset user-name multi-arch
# private/user-1001 (default: all; private/user-1001 only when the registry
# has --auth, as it stands for an image that needs a pull secret).
# Pushed as NAME:latest. Formats: OCI, except user-unset (Docker schema 2) and
# multi-arch (an OCI image index over an amd64 and an arm64 manifest).
#
# Writes DIR/images.json: for each pushed image what inspect.py printed (ref,
# digest, media type, per-platform config digest and user). Prints a summary
# on stderr; the last line of stdout is the path of images.json.
# Builds use `--timestamp 0`, so the same busybox gives the same digests on
# every run and machine.
# Needs podman (with runc), Debian's static busybox at /bin/busybox
# (busybox-static), curl and python3. No image is pulled from anywhere.
set -euo pipefail

REGISTRY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IMAGES_DIR="$REGISTRY_DIR/images"
# shellcheck source=e2e/podman.sh
source "$REGISTRY_DIR/../podman.sh" # PODMAN (runc) and PODMAN_RUN_LIMITS

log() { printf '[push-images] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $# -ge 1 ]] || { echo "usage: $0 DIR [IMAGE...]" >&2; exit 2; }
DIR="$(cd "$1" 2>/dev/null && pwd)" || die "no directory $1"
shift
[[ -f "$DIR/env" ]] || die "no $DIR/env: start the registry first (e2e/registry/run.sh start $DIR)"
# shellcheck source=/dev/null # written by run.sh
source "$DIR/env"
: "${REGISTRY_ADDR:?$DIR/env has no REGISTRY_ADDR}" "${REGISTRY_URL:?}" "${REGISTRY_TLS:?}" "${REGISTRY_AUTH:?}"

for c in podman curl python3; do command -v "$c" >/dev/null 2>&1 || die "$c is required"; done
BUSYBOX=/bin/busybox
[[ -x "$BUSYBOX" ]] || die "$BUSYBOX is required (apt-get install busybox-static)"
# A dynamically linked busybox would not run on scratch (no libc there).
if command -v file >/dev/null 2>&1; then
  file -L "$BUSYBOX" | grep -q 'statically linked' || die "$BUSYBOX is not statically linked (install busybox-static, not busybox)"
fi

ALL=(user-1001 user-root user-unset user-name multi-arch)
((REGISTRY_AUTH)) && ALL+=(private/user-1001)
IMAGES=("$@")
((${#IMAGES[@]})) || IMAGES=("${ALL[@]}")
for img in "${IMAGES[@]}"; do
  case "$img" in
    user-1001 | user-root | user-unset | user-name | multi-arch) ;;
    private/user-1001) ((REGISTRY_AUTH)) || die "private/user-1001 goes only to a registry with --auth" ;;
    *) die "unknown image $img (known: user-1001 user-root user-unset user-name multi-arch private/user-1001)" ;;
  esac
done

# What each image's config must say (config.User); multi-arch per platform.
expected_user() { # <image> [<arch>]
  case "$1" in
    user-1001 | private/user-1001) echo 1001:1001 ;;
    user-root) echo root ;;
    user-unset) echo "" ;;
    user-name) echo app ;;
    multi-arch) case "$2" in amd64) echo 1001 ;; arm64) echo 2002 ;; esac ;;
  esac
}

# Is the registry there? (A stale env file from a stopped registry otherwise
# shows up as a confusing push error.)
CURL=(curl --silent --show-error --max-time 5 --output /dev/null --write-out '%{http_code}')
[[ -n "$REGISTRY_CA" ]] && CURL+=(--cacert "$REGISTRY_CA")
code="$("${CURL[@]}" --config - "$REGISTRY_URL/v2/" <<<"${REGISTRY_USER:+user = \"$REGISTRY_USER:$REGISTRY_PASSWORD\"}")" || code=""
[[ "$code" == 200 ]] || die "$REGISTRY_URL/v2/ answers ${code:-nothing} (is the registry from $DIR running?)"

# How podman reaches this registry: plain HTTP needs --tls-verify=false; TLS
# gets a directory holding only its CA; auth gets the auth file run.sh wrote
# (the password stays off podman's command line).
PUSH_OPTS=()
if ((REGISTRY_TLS)); then
  PUSH_OPTS+=(--cert-dir "$REGISTRY_CERT_DIR")
else
  PUSH_OPTS+=(--tls-verify=false)
fi
((REGISTRY_AUTH)) && PUSH_OPTS+=(--authfile "$REGISTRY_AUTH_FILE")

WORK="$(mktemp -d)"
# A throwaway image store under $WORK, not the machine's shared one
# (/var/lib/containers): with podman 4.3.1, while a local manifest list exists
# in a store, `podman images` fails there for everyone ("fetching target
# platform image selected from image index: ... locating item named
# \"manifest-sha256:...\" ... file does not exist"), and each build leaves
# intermediate images behind. The store goes with $WORK; nothing is pulled
# into it (FROM scratch), so it costs nothing.
PODMAN+=(--root "$WORK/storage" --runroot "$WORK/runroot")
cleanup() {
  # Unmount anything podman left mounted in the store (a build interrupted
  # half-way) before removing it, so rm never descends into a live mount.
  local m
  while read -r _ m _; do
    if [[ "$m" == "$WORK"/* ]]; then umount -l "$m" 2>/dev/null || true; fi
  done < <(tac /proc/mounts)
  rm -rf "$WORK"
}
trap cleanup EXIT

LOCAL=localhost/secure-defaults-e2e # names in the throwaway store only

# Build context: the image's directory plus the static busybox.
context() { # <image dir name>
  local ctx="$WORK/ctx-$1"
  rm -rf "$ctx"
  mkdir -p "$ctx"
  cp -R "$IMAGES_DIR/$1/." "$ctx/"
  cp "$BUSYBOX" "$ctx/busybox"
  echo "$ctx"
}

# --network none: RUN steps need no network (and skip network setup);
# --timestamp 0: reproducible digests; --no-cache: podman 4.3 reused the
# amd64 build of multi-arch for `--arch arm64 --build-arg IMAGE_USER=2002`
# (same FROM scratch and COPYs), giving an index of two amd64 configs;
# limits as e2e/podman.sh says for CI.
build() { # <tag> <image dir name> [podman build options...]
  local tag="$1" dir="$2" ctx
  shift 2
  ctx="$(context "$dir")"
  "${PODMAN[@]}" build --quiet --no-cache --network none --timestamp 0 "${PODMAN_RUN_LIMITS[@]}" \
    "$@" -t "$tag" -f "$ctx/Containerfile" "$ctx" >/dev/null ||
    die "podman build of $dir failed"
}

push() { # <local image> <repository> [podman push options...]
  local src="$1" repo="$2"
  shift 2
  "${PODMAN[@]}" push --quiet "${PUSH_OPTS[@]}" "$@" "$src" "docker://$REGISTRY_ADDR/$repo:latest" >&2 ||
    die "podman push $src to $REGISTRY_ADDR/$repo:latest failed"
}

START=$(date +%s)
for img in "${IMAGES[@]}"; do
  log "building and pushing $img"
  case "$img" in
    user-1001 | user-root | user-name)
      build "$LOCAL/$img:latest" "$img"
      push "$LOCAL/$img:latest" "$img" --format oci
      ;;
    user-unset)
      build "$LOCAL/$img:latest" "$img"
      push "$LOCAL/$img:latest" "$img" --format v2s2
      ;;
    private/user-1001)
      # The same image as user-1001, in a repository of the auth registry.
      build "$LOCAL/user-1001:latest" user-1001
      push "$LOCAL/user-1001:latest" "$img" --format oci
      ;;
    multi-arch)
      build "$LOCAL/multi-arch:amd64" multi-arch --arch amd64 --build-arg IMAGE_USER=1001
      build "$LOCAL/multi-arch:arm64" multi-arch --arch arm64 --build-arg IMAGE_USER=2002
      "${PODMAN[@]}" manifest create "$LOCAL/multi-arch:latest" >/dev/null
      for arch in amd64 arm64; do
        # --arch/--os set the index entry's platform explicitly (it must match
        # what the config says, which inspect.py checks).
        "${PODMAN[@]}" manifest add --os linux --arch "$arch" "$LOCAL/multi-arch:latest" \
          "containers-storage:$LOCAL/multi-arch:$arch" >/dev/null
      done
      "${PODMAN[@]}" manifest push --quiet --all --format oci "${PUSH_OPTS[@]}" \
        "$LOCAL/multi-arch:latest" "docker://$REGISTRY_ADDR/multi-arch:latest" >&2 ||
        die "podman manifest push of multi-arch to $REGISTRY_ADDR failed"
      ;;
  esac
done
log "built and pushed ${#IMAGES[@]} image(s) in $(( $(date +%s) - START ))s"

# --- Verify over the registry's HTTP API ---------------------------------------
RESULTS=()
for img in "${IMAGES[@]}"; do
  out="$WORK/inspect-${img//\//_}.json"
  python3 "$REGISTRY_DIR/inspect.py" "$DIR" "$img:latest" >"$out" || die "cannot read $img back from $REGISTRY_URL"
  # Check users and platforms against expected_user.
  while IFS=$'\t' read -r arch user; do
    want="$(expected_user "$img" "$arch")"
    [[ "$user" == "$want" ]] || die "$img ($arch): config.User is '$user', expected '$want'"
  done < <(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
for m in d["manifests"]:
    print(m["config"]["architecture"] + "\t" + m["config"]["user"])
' "$out")
  archs="$(python3 -c 'import json, sys; print(" ".join(sorted(m["config"]["architecture"] for m in json.load(open(sys.argv[1]))["manifests"])))' "$out")"
  if [[ "$img" == multi-arch ]]; then
    [[ "$archs" == "amd64 arm64" ]] || die "multi-arch: platforms are '$archs', expected 'amd64 arm64'"
  else
    [[ "$archs" == amd64 ]] || die "$img: platform is '$archs', expected amd64"
  fi
  RESULTS+=("$img" "$out")
done

# images.json: merged with what an earlier run pushed to the same registry, so
# pushing one image does not forget the others.
python3 - "$DIR/images.json" "${RESULTS[@]}" <<'PY'
import json, os, sys
path, pairs = sys.argv[1], sys.argv[2:]
images = {}
if os.path.exists(path):
    try:
        images = json.load(open(path))
    except ValueError:
        images = {}
for name, file in zip(pairs[::2], pairs[1::2]):
    images[name] = json.load(open(file))
tmp = path + ".tmp"
with open(tmp, "w") as f:
    json.dump(images, f, indent=2, sort_keys=True)
    f.write("\n")
os.replace(tmp, path)
# Summary: one line per manifest.
print(f"{'image':<20} {'platform':<12} {'user':<10} {'manifest digest':<73} config digest", file=sys.stderr)
for name, file in zip(pairs[::2], pairs[1::2]):
    d = images[name]
    if d["index"]:
        kind = "OCI index" if "oci" in d["mediaType"] else "manifest list"
        print(f"{name:<20} {kind:<12} {'':<10} {d['digest']}", file=sys.stderr)
    for m in d["manifests"]:
        c = m["config"]
        plat = c["os"] + "/" + c["architecture"]
        user = repr(c["user"]) if c["user"] == "" else c["user"]
        kind = "" if d["index"] else (" (docker)" if "docker" in m["mediaType"] else " (oci)")
        print(f"{(name if not d['index'] else '  ' + c['architecture']):<20} {plat:<12} {user:<10} {m['digest']:<73} {c['digest']}{kind}", file=sys.stderr)
PY
log "all ${#IMAGES[@]} image(s) verified at $REGISTRY_URL"
echo "$DIR/images.json"
