# shellcheck shell=bash
# Sourced, not run: builds one Go command from the Go module proxy, at the version pinned in a go.mod under
# e2e/tools/, into a cache outside the checkout, for e2e/build-helm.sh and e2e/build-promtool.sh:
#
#   $CACHE_ROOT/<NAME>-<version>/<NAME>, with a .complete stamp written last
#
# The caller sets NAME, MOD_DIR (the pin's go.mod), MODULE (whose require line there gives the version),
# PACKAGE (the command), CACHE_ROOT, STAMP_KEY, BUILD_RECIPE (bumped when the build flags change),
# VERSION_ARGS (what makes the binary print its version) and optionally BUILD_TAGS, and defines
# `ldflags <version>` (the -X flags that stamp the release). Then `build_pinned` prints the binary's path as
# the last line of stdout; progress goes to stderr. Idempotent: a complete build is reused at once, and a
# second build waits for the first and reuses it. Needs only Go >= 1.26 (built static, no C compiler).

log() { printf '[build-%s] %s\n' "$NAME" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The stamp records what decides the binary: an edit to go.mod (a dependency bump) rebuilds even when the
# version, and so the directory name, stays the same.
pinned_stamp() {
  echo "recipe=$BUILD_RECIPE $STAMP_KEY=$VERSION"
  cksum <"$MOD_DIR/go.mod"
}

pinned_complete() {
  [[ -f "$OUT_DIR/.complete" && -x "$OUT_DIR/$NAME" ]] && [[ "$(cat "$OUT_DIR/.complete")" == "$(pinned_stamp)" ]]
}

build_pinned() {
  command -v go >/dev/null 2>&1 || die "go is not on PATH (need Go >= 1.26)"
  VERSION="$(awk -v m="$MODULE" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$MOD_DIR/go.mod")"
  [[ -n "$VERSION" ]] || die "cannot read the pinned $MODULE version from $MOD_DIR/go.mod"
  OUT_DIR="$CACHE_ROOT/$NAME-$VERSION"
  if pinned_complete; then
    echo "$OUT_DIR/$NAME"
    return 0
  fi
  mkdir -p "$CACHE_ROOT"
  # Serialise concurrent builds so a second caller waits and reuses the result.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE_ROOT/.$NAME-build.lock"
    if ! flock -n 9; then
      log "another build is running; waiting for it"
      flock 9
    fi
    if pinned_complete; then
      echo "$OUT_DIR/$NAME"
      return 0
    fi
  fi

  local start s
  start=$(date +%s)
  log "building $NAME from $MODULE $VERSION with $(go env GOVERSION) into $OUT_DIR"
  log "(a cold build takes several minutes on 2 cores; later runs reuse it)"
  PINNED_TMP="$(mktemp -d "$CACHE_ROOT/.tmp-$NAME.XXXXXX")"
  trap 'rm -rf "$PINNED_TMP"' EXIT
  chmod 755 "$PINNED_TMP" # mktemp makes it private
  export CGO_ENABLED=0 GOWORK=off
  (cd "$MOD_DIR" && go mod download && go build -trimpath -mod=readonly -tags="${BUILD_TAGS:-}" \
    -ldflags="-s -w $(ldflags "$VERSION")" -o "$PINNED_TMP/$NAME" "$PACKAGE") >&2
  "$PINNED_TMP/$NAME" "${VERSION_ARGS[@]}" >&2 || die "$NAME does not run"

  pinned_stamp >"$PINNED_TMP/.complete"
  rm -rf "$OUT_DIR"
  mv -T "$PINNED_TMP" "$OUT_DIR"
  trap - EXIT
  s=$(($(date +%s) - start))
  log "built in $((s / 60))m$(printf '%02d' $((s % 60)))s"
  echo "$OUT_DIR/$NAME"
}
