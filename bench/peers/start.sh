#!/usr/bin/env bash
# Starts a peer admission controller (Kyverno or Gatekeeper's mutation webhook)
# as a host process against an already running local control plane (e.g. one
# from e2e/cluster.sh), with the policy equivalent to secure-defaults' shipped
# one, and waits until it mutates a pod:
#
#   bench/peers/start.sh kyverno|gatekeeper WORKDIR KUBECONFIG
#
# Prints the peer's pid as the last line of stdout (progress goes to stderr):
#   PID=$(bench/peers/start.sh gatekeeper /tmp/gk "$KUBECONFIG" | tail -1)
# Stop it, and remove its webhook configuration, with
#   bench/peers/stop.sh gatekeeper /tmp/gk "$KUBECONFIG"
#
# Pods are mutated in namespaces labelled bench.secure-defaults.io/peer=<peer>
# (kyverno or gatekeeper); start.sh creates peers-probe-<peer> for its own
# check. Binaries and CRDs come from bench/peers/build.sh (built on first use:
# about 5 minutes for Gatekeeper, 20 for Kyverno).
#
# WORKDIR receives: peer.log (the peer's output), pid, env (PEER, PID, PORT,
# BIN, KUBECONFIG, LOG: shell lines to source), certs/ (Gatekeeper's serving
# certificate) and, for Kyverno, sigstore/ (its TUF_ROOT).
#
# Everything listens on 127.0.0.1 only. What it changes in the cluster: the
# peer's CRDs (server-side apply; left in place by stop.sh), its namespace
# (kyverno, gatekeeper-system), its policy, the probe namespace and the
# webhook configuration(s).
#
# Environment:
#   PEER_POLICY         policy file to apply (default bench/peers/kyverno/policy.yaml,
#                       bench/peers/gatekeeper/assign.yaml); e.g.
#                       bench/peers/kyverno/clusterpolicy.yaml for Kyverno's older engine
#   PEER_START_TIMEOUT  seconds to wait for the first mutated pod (default 180)
#   PEER_ARGS           extra flags for the peer binary (appended, so they override)
#   KUBECTL             kubectl to use (default: the control-plane build's)
set -euo pipefail

PEERS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG=peers-start
# shellcheck source=common.sh
. "$PEERS_DIR/common.sh"

usage() { echo "usage: $0 kyverno|gatekeeper WORKDIR KUBECONFIG" >&2; exit 2; }
[[ $# -eq 3 ]] || usage
PEER="$1"
case "$PEER" in kyverno | gatekeeper) ;; *) usage ;; esac
mkdir -p "$2"
WORKDIR="$(cd "$2" && pwd)"
[[ -r "$3" ]] || die "cannot read kubeconfig $3"
KUBECONFIG_FILE="$(cd "$(dirname "$3")" && pwd)/$(basename "$3")"
TIMEOUT="${PEER_START_TIMEOUT:-180}"
read -r -a EXTRA_ARGS <<<"${PEER_ARGS:-}"

case "$PEER" in
  kyverno) POLICY="${PEER_POLICY:-$PEERS_DIR/kyverno/policy.yaml}" ;;
  gatekeeper) POLICY="${PEER_POLICY:-$PEERS_DIR/gatekeeper/assign.yaml}" ;;
esac
[[ -r "$POLICY" ]] || die "cannot read policy $POLICY"

command -v openssl >/dev/null 2>&1 || die "openssl is required"
resolve_kubectl
kc get --raw /readyz >/dev/null 2>&1 || die "the apiserver in $KUBECONFIG_FILE is not ready (is the control plane up?)"

# One peer per WORKDIR: a second start would orphan the first process.
if [[ -f "$WORKDIR/pid" ]]; then
  old_pid="$(cat "$WORKDIR/pid")"
  # shellcheck source=/dev/null # written by an earlier start
  old_bin="$(. "$WORKDIR/env" 2>/dev/null && printf '%s' "${BIN:-}")" || old_bin=""
  if [[ -n "$old_bin" ]] && is_ours "$old_pid" "$old_bin"; then
    die "$PEER is already running from $WORKDIR (pid $old_pid); run: $PEERS_DIR/stop.sh $PEER $WORKDIR $KUBECONFIG_FILE"
  fi
fi
rm -f "$WORKDIR/pid" "$WORKDIR/env" "$WORKDIR/peer.log" "$WORKDIR/probe.log"

BIN_DIR="$("$PEERS_DIR/build.sh" "$PEER" | tail -n 1)"
PEER_HOME="$(dirname "$BIN_DIR")"
[[ -d "$PEER_HOME/crds" ]] || die "no CRDs in $PEER_HOME/crds; rerun $PEERS_DIR/build.sh $PEER"

# ---------------------------------------------------------------------------
# Ports: free ones below the ephemeral range, as e2e/cluster.sh picks them.
declare -A TAKEN_PORTS=()
PORT="" # the peer's webhook port, set by start_<peer>
free_port() { # <var>
  local port tries
  for ((tries = 0; tries < 200; tries++)); do
    port=$((20000 + RANDOM % 12000))
    [[ -z "${TAKEN_PORTS[$port]:-}" ]] || continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      TAKEN_PORTS[$port]=1
      printf -v "$1" '%s' "$port"
      return 0
    fi
  done
  die "no free loopback port found"
}

# ---------------------------------------------------------------------------
# CRDs. Server-side apply: several (Kyverno's ClusterPolicy, Policy,
# MutatingPolicy, ...) exceed the 256 KiB last-applied annotation that a
# client-side apply would add. --force-conflicts: a rerun after a version bump
# takes the fields over from the earlier apply.
apply_crds() {
  local started=$SECONDS
  log "applying $PEER CRDs from $PEER_HOME/crds"
  kc apply --server-side --force-conflicts --field-manager=bench-peers -R -f "$PEER_HOME/crds" >/dev/null
  # Established before anything uses them (the peer's informers and our policy).
  kc wait --for=condition=Established --timeout="${TIMEOUT}s" -R -f "$PEER_HOME/crds" >/dev/null
  log "  CRDs established ($((SECONDS - started))s)"
}

# Start the peer in its own session, so stop.sh can signal its process group.
start_peer() { # <binary> <args...>
  local bin="$1"; shift
  log "starting $bin $*"
  setsid "$bin" "$@" >"$WORKDIR/peer.log" 2>&1 </dev/null &
  PID=$!
  PEER_STARTED=$SECONDS
  echo "$PID" >"$WORKDIR/pid"
  {
    printf 'PEER=%q\n' "$PEER"
    printf 'PID=%q\n' "$PID"
    printf 'PORT=%q\n' "$PORT"
    printf 'BIN=%q\n' "$bin"
    printf 'KUBECONFIG=%q\n' "$KUBECONFIG_FILE"
    printf 'LOG=%q\n' "$WORKDIR/peer.log"
  } >"$WORKDIR/env"
}

on_failure() {
  local rc=$?
  trap - EXIT
  ((rc == 0)) && return 0
  log "start failed (exit $rc)"
  if [[ -f "$WORKDIR/peer.log" ]]; then
    log "---- last lines of $WORKDIR/peer.log ----"
    tail -n 30 "$WORKDIR/peer.log" >&2
  fi
  # Leave nothing half-started behind: the process and the webhooks that
  # would point at it.
  "$PEERS_DIR/stop.sh" "$PEER" "$WORKDIR" "$KUBECONFIG_FILE" >/dev/null 2>&1 || true
  exit "$rc"
}

# A pod with no securityContext at all, created with --dry-run=server: the
# apiserver runs the whole admission chain (both peers' webhooks declare no
# side effects) and returns what it would store, and nothing is stored.
probe_pod='{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"probe-"},
  "spec":{"containers":[{"name":"c","image":"registry.k8s.io/pause:3.10"}]}}'
mutates() {
  local got
  got="$(kc -n "$(probe_namespace "$PEER")" create --dry-run=server -o \
    jsonpath='{.spec.securityContext.runAsUser}/{.spec.containers[0].securityContext.allowPrivilegeEscalation}' \
    -f - <<<"$probe_pod" 2>>"$WORKDIR/probe.log")" || return 1
  [[ "$got" == "65532/false" ]]
}

wait_until_mutating() {
  local deadline=$((SECONDS + TIMEOUT))
  : >"$WORKDIR/probe.log"
  until mutates; do
    kill -0 "$PID" 2>/dev/null || die "$PEER exited while starting"
    ((SECONDS < deadline)) || die "$PEER does not mutate a probe pod after ${TIMEOUT}s (last error: $(tail -n 1 "$WORKDIR/probe.log"))"
    sleep 0.5
  done
  log "$PEER mutates pods ($((SECONDS - PEER_STARTED))s after the process started)"
}

# ---------------------------------------------------------------------------
start_gatekeeper() {
  apply_crds
  # Gatekeeper's own namespace (POD_NAMESPACE; its Config object lives there).
  ensure_namespace gatekeeper-system
  ensure_namespace "$(probe_namespace gatekeeper)" "$PEER_LABEL_KEY=gatekeeper"
  # Mutators first: Gatekeeper's readiness tracker then waits for them at start.
  log "applying $POLICY"
  kc apply -f "$POLICY" >/dev/null

  # Our own serving certificate (--disable-cert-rotation: Gatekeeper would
  # otherwise generate one for its in-cluster Service name and write it to a
  # Secret), for the address the apiserver calls.
  local certs="$WORKDIR/certs"
  rm -rf "$certs"
  mkdir -p "$certs"
  chmod 700 "$certs"
  openssl ecparam -name prime256v1 -genkey -noout -out "$certs/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$certs/ca.key" -subj "/CN=bench-peers-gatekeeper-ca" -days 365 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$certs/ca.crt" 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out "$certs/tls.key" 2>/dev/null
  openssl req -new -key "$certs/tls.key" -subj "/CN=127.0.0.1" -out "$certs/tls.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1" >"$certs/tls.ext"
  openssl x509 -req -in "$certs/tls.csr" -CA "$certs/ca.crt" -CAkey "$certs/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 365 -sha256 -extfile "$certs/tls.ext" \
    -out "$certs/tls.crt" 2>/dev/null
  rm -f "$certs/tls.csr" "$certs/tls.ext"
  chmod 600 "$certs"/*.key

  local health_port
  free_port PORT
  free_port health_port
  # --debug-use-fake-pod: no pod of its own to look up (it runs outside the
  # cluster). --operation=mutation-webhook: only /v1/mutate, as the
  # controller-manager Deployment's mutation half (no validation webhook,
  # audit or status writers). Metrics off (the default, "0"). --shutdown-delay=0:
  # its 10 s default lets a Pod's endpoints drain, which has no use here.
  start_peer "$BIN_DIR/gatekeeper" \
    --kubeconfig="$KUBECONFIG_FILE" \
    --debug-use-fake-pod \
    --operation=mutation-webhook \
    --disable-cert-rotation \
    --cert-dir="$certs" \
    --host=127.0.0.1 \
    --port="$PORT" \
    --health-addr="127.0.0.1:$health_port" \
    --metrics-addr=0 \
    --shutdown-delay=0 \
    --disable-opa-builtin='{http.send}' \
    "${EXTRA_ARGS[@]}"

  # /readyz turns ok once the webhook serves and the mutators are ingested.
  local deadline=$((SECONDS + TIMEOUT))
  until [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$health_port/readyz")" == 200 ]]; do
    kill -0 "$PID" 2>/dev/null || die "gatekeeper exited while starting"
    ((SECONDS < deadline)) || die "gatekeeper /readyz not ok after ${TIMEOUT}s"
    sleep 0.3
  done
  log "gatekeeper ready"

  # The webhook configuration upstream's deploy/gatekeeper.yaml would install,
  # narrowed to what the policy covers: pods, CREATE, in labelled namespaces
  # (so the apiserver does not call it for anything else), failurePolicy Fail
  # (a broken peer shows up as errors, not as unmutated pods) and the timeout
  # bench/run.sh gives secure-defaults.
  local ca_bundle
  ca_bundle="$(base64 -w0 <"$certs/ca.crt")"
  kc apply -f - >/dev/null <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: bench-peers-gatekeeper
  labels: {gatekeeper.sh/system: "yes"}
webhooks:
- name: mutation.gatekeeper.sh
  clientConfig:
    url: "https://127.0.0.1:$PORT/v1/mutate"
    caBundle: "$ca_bundle"
  rules:
  - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods], scope: Namespaced}
  namespaceSelector:
    matchLabels: {$PEER_LABEL_KEY: gatekeeper}
  admissionReviewVersions: [v1]
  sideEffects: None
  matchPolicy: Exact
  failurePolicy: Fail
  timeoutSeconds: 5
EOF
  wait_until_mutating
}

# ---------------------------------------------------------------------------
start_kyverno() {
  apply_crds
  # Namespace kyverno and the ConfigMaps kyverno, kyverno-metrics, as the Helm
  # chart installs them (extracted by build.sh).
  log "applying Kyverno's namespace and ConfigMaps ($PEER_HOME/config.yaml)"
  kc apply -f "$PEER_HOME/config.yaml" >/dev/null
  ensure_namespace "$(probe_namespace kyverno)" "$PEER_LABEL_KEY=kyverno"

  # Exactly one bench policy: both kinds use the name bench-secure-defaults,
  # so switching PEER_POLICY between them leaves no second policy mutating too.
  # (stderr to the probe log: any kyverno.io/v1 request draws a deprecation warning.)
  kc delete mutatingpolicies.policies.kyverno.io,clusterpolicies.kyverno.io bench-secure-defaults \
    --ignore-not-found >/dev/null 2>>"$WORKDIR/probe.log"

  local metrics_port
  free_port PORT
  free_port metrics_port
  mkdir -p "$WORKDIR/sigstore"
  # The environment and flags of the chart's admission-controller Deployment
  # (config/install-latest-testing.yaml), adapted to a host process:
  #   --serverIP: Kyverno registers its webhooks at https://<serverIP>/... and
  #     puts the IP in the serving certificate it generates (kept in Secrets
  #     in the kyverno namespace, named by --caSecretName/--tlsSecretName);
  #   webhook server and metrics on 127.0.0.1; controller-runtime metrics off;
  #   --admissionReports=false: no EphemeralReport per admitted pod (without
  #     the reports controller to aggregate them they pile up until the
  #     1,000 cap, so the cost would change during a benchmark);
  #   no registry credential helpers (no image verification here).
  # Everything else (events, logging, deferred loading, config map caching)
  # is the chart's default.
  local env_vars=(
    KYVERNO_NAMESPACE=kyverno
    KYVERNO_POD_NAME=kyverno-bench-peer
    KYVERNO_DEPLOYMENT=kyverno-admission-controller
    KYVERNO_SERVICEACCOUNT_NAME=kyverno-admission-controller
    KYVERNO_ROLE_NAME=kyverno:admission-controller
    KYVERNO_SVC=kyverno-svc
    INIT_CONFIG=kyverno
    METRICS_CONFIG=kyverno-metrics
    TUF_ROOT="$WORKDIR/sigstore"
  )
  export "${env_vars[@]}"
  start_peer "$BIN_DIR/kyverno" \
    --kubeconfig="$KUBECONFIG_FILE" \
    --serverIP="127.0.0.1:$PORT" \
    --webhookServerHost=127.0.0.1 \
    --webhookServerPort="$PORT" \
    --caSecretName=kyverno-svc.kyverno.svc.kyverno-tls-ca \
    --tlsSecretName=kyverno-svc.kyverno.svc.kyverno-tls-pair \
    --tlsKeyAlgorithm=RSA \
    --backgroundServiceAccountName=system:serviceaccount:kyverno:kyverno-background-controller \
    --reportsServiceAccountName=system:serviceaccount:kyverno:kyverno-reports-controller \
    --metricsHost=127.0.0.1 \
    --metricsPort="$metrics_port" \
    --otelConfig=prometheus \
    --controllerRuntimeMetricsAddress=0 \
    --admissionReports=false \
    --autoUpdateWebhooks=true \
    --enableConfigMapCaching=true \
    --enableDeferredLoading=true \
    --generateValidatingAdmissionPolicy=true \
    --generateMutatingAdmissionPolicy=false \
    --omitEvents=PolicyApplied,PolicySkipped \
    --enablePolicyException=false \
    --loggingFormat=text \
    --disableLogColor \
    --v=2 \
    "${EXTRA_ARGS[@]}"

  # The policy goes in once Kyverno's own policy-validation webhook is there,
  # so Kyverno checks it (a broken expression is reported now, not as pods
  # that are never mutated). Until then an apply may be rejected or not
  # validated; retry until the webhook exists and the apply succeeds.
  local deadline=$((SECONDS + TIMEOUT))
  until kc get validatingwebhookconfiguration kyverno-policy-validating-webhook-cfg >/dev/null 2>&1; do
    kill -0 "$PID" 2>/dev/null || die "kyverno exited while starting"
    ((SECONDS < deadline)) || die "kyverno registered no policy webhook after ${TIMEOUT}s"
    sleep 0.5
  done
  log "applying $POLICY"
  until kc apply -f "$POLICY" >/dev/null 2>>"$WORKDIR/probe.log"; do
    kill -0 "$PID" 2>/dev/null || die "kyverno exited while starting"
    ((SECONDS < deadline)) || die "cannot apply $POLICY: $(tail -n 3 "$WORKDIR/probe.log")"
    sleep 1
  done
  wait_until_mutating
}

trap on_failure EXIT
"start_$PEER"
trap - EXIT
log "$PEER running: pid $PID, https://127.0.0.1:$PORT, log $WORKDIR/peer.log"
echo "$PID"
