# shellcheck shell=bash
# Sourced, not run: builds a Go tool from the Go module proxy, at the version pinned in a go.mod of this
# repository, into a cache outside the checkout, as the builders of the benchmark peers (bench/peers/build.sh)
# and of the OCI registry (e2e/registry/build.sh) need:
#
#   ${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-defaults}/<CACHE_KIND>/<NAME>-<version>/
#     .complete  stamp, written last: recipe, version, targets, checksum of the pin's go.mod and go.sum
#     bin/       the TARGETS
#     src        link to the module directory they were built from
#     ...        whatever the caller's `extras` hook adds
#
# The caller sets LOG_TAG, NAME, MODULE, PIN_DIR (holding go.mod and go.sum), CACHE_KIND, TARGETS (an array of
# "<package relative to the module root> <binary name>"), BUILD_RECIPE (bumped when the build changes), and
# defines version_ldflags <version> (the -X flags upstream's release sets); it may define
# extras <tmp dir> <module dir> (files beside bin/), extras_complete <out dir> (whether they are there) and
# smoke <tmp dir> (a check that the first binary runs). Then `build_go_tool` prints the bin directory as its
# last line of stdout; progress goes to stderr. Idempotent: a complete build is reused at once, and a second
# build of the same tool waits for the first and reuses it.
#
# Binaries are built inside the module's own directory, so its go.mod (its `replace` directives included) and
# go.sum decide every dependency, as in upstream's release; static (CGO_ENABLED=0), -trimpath, stripped.

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

build_go_tool() {
  [[ -f "$PIN_DIR/go.mod" && -f "$PIN_DIR/go.sum" ]] || die "no $PIN_DIR/go.mod and go.sum"
  command -v go >/dev/null 2>&1 || die "go is not on PATH"
  # The pinned version: the single source of truth is the require line.
  VERSION="$(awk -v m="$MODULE" '($1 == m || ($1 == "require" && $2 == m)) { v = ($1 == m) ? $2 : $3; if (v ~ /^v/) { print v; exit } }' "$PIN_DIR/go.mod")"
  [[ -n "$VERSION" ]] || die "cannot read the pinned $MODULE version from $PIN_DIR/go.mod"
  local cache_root="${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-defaults}/$CACHE_KIND"
  OUT_DIR="$cache_root/$NAME-$VERSION"

  if go_tool_complete; then
    echo "$OUT_DIR/bin"
    return 0
  fi
  mkdir -p "$cache_root"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$cache_root/.build-$NAME.lock"
    if ! flock -n 9; then
      log "another $NAME build is running; waiting for it"
      flock 9
    fi
    if go_tool_complete; then
      echo "$OUT_DIR/bin"
      return 0
    fi
  fi

  # The pin module and the tool's module each stand alone: ignore any go.work a developer may have.
  export CGO_ENABLED=0 GOWORK=off
  local build_start step_start src pkgs=() t
  build_start=$(date +%s)
  log "building $NAME $VERSION with $(go env GOVERSION) into $OUT_DIR"
  # Downloaded through the pin module, so go.sum there verifies the zip (a re-tagged release fails).
  step_start=$(date +%s)
  log "downloading $MODULE@$VERSION (module cache: $(go env GOMODCACHE))"
  (cd "$PIN_DIR" && go mod download "$MODULE") >&2 || die "cannot download $MODULE@$VERSION"
  src="$(cd "$PIN_DIR" && go list -m -f '{{.Dir}}' "$MODULE")"
  [[ -n "$src" && -f "$src/go.mod" ]] || die "no module directory for $MODULE@$VERSION (got '$src')"
  # The module cache is read-only, which is fine: with -mod=readonly `go build -o elsewhere` writes nothing
  # there. Only the modules the targets import are fetched, so the timing below is compilation alone.
  for t in "${TARGETS[@]}"; do pkgs+=("${t%% *}"); done
  (cd "$src" && go list -mod=readonly -deps "${pkgs[@]}" >/dev/null) ||
    die "cannot resolve the dependencies of ${pkgs[*]} in $src"
  log "  $src ($(go_tool_elapsed "$step_start"))"

  # Built into a temporary directory moved into place only once complete (stamp included), so an interrupted
  # build never leaves a half-filled directory that looks usable.
  GO_TOOL_TMP="$(mktemp -d "$cache_root/.tmp-$NAME.XXXXXX")"
  trap 'rm -rf "$GO_TOOL_TMP"' EXIT
  chmod 755 "$GO_TOOL_TMP" # mktemp makes it private
  mkdir -p "$GO_TOOL_TMP/bin"
  local ldflags pkg bin
  ldflags="-s -w $(version_ldflags "$VERSION")"
  for t in "${TARGETS[@]}"; do
    pkg="${t%% *}" bin="${t#* }"
    step_start=$(date +%s)
    log "compiling $bin ($pkg)"
    # pipefail makes a compile error fail this line even though the progress filter succeeds.
    (cd "$src" && go build -v -trimpath -mod=readonly -ldflags="$ldflags" -o "$GO_TOOL_TMP/bin/$bin" "$pkg") 2>&1 |
      go_tool_progress "$bin"
    [[ -x "$GO_TOOL_TMP/bin/$bin" ]] || die "build produced no $bin"
    log "  done ($(go_tool_elapsed "$step_start"), $(du -h "$GO_TOOL_TMP/bin/$bin" | cut -f1))"
  done
  if declare -F extras >/dev/null; then extras "$GO_TOOL_TMP" "$src"; fi
  ln -s "$src" "$GO_TOOL_TMP/src"
  if declare -F smoke >/dev/null; then smoke "$GO_TOOL_TMP"; fi

  go_tool_stamp >"$GO_TOOL_TMP/.complete"
  rm -rf "$OUT_DIR"
  mv -T "$GO_TOOL_TMP" "$OUT_DIR"
  trap - EXIT
  log "built $NAME $VERSION in $(go_tool_elapsed "$build_start"): $(du -sh "$OUT_DIR/bin" | cut -f1) in $OUT_DIR/bin"
  echo "$OUT_DIR/bin"
}

# What decides the output: an edit to the pin (go.mod or its checksums) rebuilds even when the directory name
# stays the same.
go_tool_stamp() {
  echo "recipe=$BUILD_RECIPE $NAME=$VERSION targets=${TARGETS[*]}"
  cat "$PIN_DIR/go.mod" "$PIN_DIR/go.sum" | cksum
}

go_tool_complete() {
  [[ -f "$OUT_DIR/.complete" && "$(cat "$OUT_DIR/.complete")" == "$(go_tool_stamp)" ]] || return 1
  local t
  for t in "${TARGETS[@]}"; do [[ -x "$OUT_DIR/bin/${t#* }" ]] || return 1; done
  if declare -F extras_complete >/dev/null; then extras_complete "$OUT_DIR"; fi
}

go_tool_elapsed() { local s=$(($(date +%s) - $1)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

# `go build -v` prints one package path per compiled package: a periodic count instead (the full list is
# thousands of lines), and anything else, i.e. compiler errors, untouched.
go_tool_progress() { # <label>
  awk -v tag="$LOG_TAG" -v label="$1" '
    # srand() returns the previous seed: a portable "now" for mawk and gawk.
    function now() { srand(); return srand() }
    BEGIN { start = now() }
    /^[^ \t:#]+$/ {
      n++
      if (n % 200 == 0) { printf("[%s]   %s: %d packages compiled (%ds)\n", tag, label, n, now() - start); fflush() }
      next
    }
    { print; fflush() }
    END { printf("[%s]   %s: done, %d packages compiled (%ds)\n", tag, label, n, now() - start) }
  ' >&2
}
