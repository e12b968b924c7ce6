#!/usr/bin/env bash
# Smoke test of the built image (make test-image): runs it as the Deployment does — user 65532, read-only
# root filesystem (no tmpfs either), every capability dropped, no-new-privileges — with the manifests'
# process config, policy and a serving certificate mounted read-only, and checks that it
#   - runs as 65532:65532 and has no shell;
#   - becomes ready (/readyz on the admin port);
#   - answers an AdmissionReview over TLS (verified against the test CA) with the policy's patch;
#   - exits with code 0 on SIGTERM (podman stop -t 30: SIGKILL only after 30s, so 0 means a clean drain).
#
#   e2e/image-smoke.sh [IMAGE]      # default localhost/secure-defaults:<Cargo.toml version> (make image)
# Needs podman, runc, openssl, curl, python3.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="$(awk -F'"' '/^version *=/ { print $2; exit }' "$ROOT/Cargo.toml")"
IMAGE="${1:-localhost/secure-defaults:$VERSION}"
# shellcheck source=e2e/podman.sh
source "$ROOT/e2e/podman.sh"

log() { printf '[image-smoke] %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

DIR="$(mktemp -d "${TMPDIR:-/tmp}/secure-defaults-image.XXXXXX")"
NAME="secure-defaults-smoke-$$"
cleanup() {
  local status=$?
  if [[ $status -ne 0 ]]; then
    log "container log:"
    "${PODMAN[@]}" logs "$NAME" >&2 2>&1 || true
  fi
  "${PODMAN[@]}" rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
  rm -rf "$DIR"
  exit "$status"
}
trap cleanup EXIT

"${PODMAN[@]}" image exists "$IMAGE" || fail "no image $IMAGE: run make image first"
size="$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")"
log "image $IMAGE: $((size / 1024 / 1024)) MiB ($size bytes)"
user="$("${PODMAN[@]}" image inspect --format '{{.Config.User}}' "$IMAGE")"
[[ "$user" == "65532:65532" ]] || fail "the image's user is '$user', not 65532:65532"

# The mounted files, as the kubelet would project them: world-readable files in read-only directories,
# owned by root (the container's user reads them, never owns them).
mkdir -p "$DIR/config" "$DIR/policy" "$DIR/tls"
cp "$ROOT/manifests/base/secure-defaults.yaml" "$DIR/config/secure-defaults.yaml"
cp "$ROOT/manifests/base/policy.yaml" "$DIR/policy/policy.yaml"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$DIR/ca.key" -out "$DIR/ca.crt" -subj "/CN=secure-defaults image smoke CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$DIR/tls/tls.key" -out "$DIR/tls.csr" -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$DIR/ext"
openssl x509 -req -in "$DIR/tls.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" -CAcreateserial -days 2 \
  -extfile "$DIR/ext" -out "$DIR/tls/tls.crt" 2>/dev/null
chmod 755 "$DIR" "$DIR/config" "$DIR/policy" "$DIR/tls"
chmod 644 "$DIR/config/"* "$DIR/policy/"* "$DIR/tls/"*

# No shell, no package manager: nothing to exec into.
if "${PODMAN[@]}" run --rm "${PODMAN_RUN_LIMITS[@]}" --entrypoint /bin/sh "$IMAGE" -c true >/dev/null 2>&1; then
  fail "the image has a shell"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT="$(free_port)"
ADMIN_PORT="$(free_port)"
log "starting $NAME (webhook 127.0.0.1:$PORT, admin 127.0.0.1:$ADMIN_PORT)"
"${PODMAN[@]}" run -d --name "$NAME" "${PODMAN_RUN_LIMITS[@]}" \
  --read-only --read-only-tmpfs=false --user 65532:65532 --cap-drop ALL \
  --security-opt no-new-privileges \
  -p "127.0.0.1:$PORT:8443" -p "127.0.0.1:$ADMIN_PORT:8080" \
  -v "$DIR/config:/etc/secure-defaults/config:ro" \
  -v "$DIR/policy:/etc/secure-defaults/policy:ro" \
  -v "$DIR/tls:/etc/secure-defaults/tls:ro" \
  "$IMAGE" serve --config /etc/secure-defaults/config/secure-defaults.yaml \
  --tls-cert /etc/secure-defaults/tls/tls.crt --tls-key /etc/secure-defaults/tls/tls.key \
  --no-namespace-lookups >/dev/null

# The process's credentials, seen from the host (rootful podman, no user namespace).
pid="$("${PODMAN[@]}" inspect --format '{{.State.Pid}}' "$NAME")"
uids="$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$pid/status")"
gids="$(awk '/^Gid:/ { print $2, $3, $4, $5 }' "/proc/$pid/status")"
caps="$(awk '/^CapEff:/ { print $2 }' "/proc/$pid/status")"
nonewprivs="$(awk '/^NoNewPrivs:/ { print $2 }' "/proc/$pid/status")"
[[ "$uids" == "65532 65532 65532 65532" && "$gids" == "65532 65532 65532 65532" ]] ||
  fail "the server runs as uid '$uids' gid '$gids'"
[[ "$caps" == "0000000000000000" ]] || fail "effective capabilities $caps"
[[ "$nonewprivs" == "1" ]] || fail "no_new_privs is not set"
log "running as 65532:65532, no capabilities, no_new_privs"

# Ready: polled to a deadline (the server may take a moment to bind).
deadline=$((SECONDS + 60))
until curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1; do
  [[ "$("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$NAME")" == "true" ]] || fail "the container exited"
  ((SECONDS < deadline)) || fail "not ready within 60s"
  sleep 0.2 # poll interval, bounded by the deadline above
done
log "/readyz answers 200"

cat >"$DIR/review.json" <<'JSON'
{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
  "uid": "7f0b2a6c-0000-4000-8000-000000000001",
  "kind": {"group": "", "version": "v1", "kind": "Pod"},
  "resource": {"group": "", "version": "v1", "resource": "pods"},
  "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
  "requestResource": {"group": "", "version": "v1", "resource": "pods"},
  "name": "web", "namespace": "app", "operation": "CREATE",
  "userInfo": {"username": "system:serviceaccount:app:deployer"},
  "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "app"},
             "spec": {"containers": [{"name": "app", "image": "nginx"}]}},
  "oldObject": null, "dryRun": false,
  "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}}}
JSON
curl -fsS --cacert "$DIR/ca.crt" -H 'Content-Type: application/json' --data-binary @"$DIR/review.json" \
  "https://127.0.0.1:$PORT/mutate" >"$DIR/response.json" || fail "the review over TLS failed"
python3 - "$DIR/response.json" <<'PY' || fail "unexpected review response: $(cat "$DIR/response.json")"
import base64, json, sys
review = json.load(open(sys.argv[1]))
response = review["response"]
assert review["kind"] == "AdmissionReview", review
assert response["uid"] == "7f0b2a6c-0000-4000-8000-000000000001", response
assert response["allowed"] is True, response
assert response["patchType"] == "JSONPatch", response
patch = response["patch"]
# The patch's bytes in base64, as the admission API documents.
raw = base64.b64decode(patch)
ops = json.loads(raw)
def value(path):
    for op in ops:
        if op["path"] == path:
            return op["value"]
    # A whole securityContext added at once.
    parent, _, key = path.rpartition("/")
    for op in ops:
        if op["path"] == parent and isinstance(op["value"], dict) and key in op["value"]:
            return op["value"][key]
    raise AssertionError(f"no {path} in {ops}")
assert value("/spec/securityContext/runAsUser") == 65532, ops
assert value("/spec/securityContext/runAsGroup") == 65532, ops
assert value("/spec/securityContext/fsGroup") == 65532, ops
assert value("/spec/containers/0/securityContext/allowPrivilegeEscalation") is False, ops
print(f"[image-smoke] patch: {len(ops)} operations, runAsUser/runAsGroup/fsGroup 65532, allowPrivilegeEscalation false", file=sys.stderr)
PY

log "stopping with SIGTERM (podman stop -t 30: SIGKILL only after 30s)"
"${PODMAN[@]}" stop -t 30 "$NAME" >/dev/null
code="$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$NAME")"
[[ "$code" == "0" ]] || fail "exit code $code after SIGTERM (137 would be SIGKILL: no drain within 30s)"
"${PODMAN[@]}" logs "$NAME" 2>&1 | grep -Eq '"level":"ERROR"|^error:' && {
  log "the log mentions an error:"; "${PODMAN[@]}" logs "$NAME" >&2 2>&1; exit 1; }
"${PODMAN[@]}" logs "$NAME" 2>&1 | grep -q '"message":"stopped"' || fail "no orderly shutdown in the log"
log "clean exit (0) after SIGTERM"
"${PODMAN[@]}" logs "$NAME" 2>&1 | tail -3 >&2
log "PASS"
