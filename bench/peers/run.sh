#!/usr/bin/env bash
# `make bench-peers`: secure-defaults side by side with the tools platform teams pick for the same job, on one
# local control plane (e2e/cluster.sh) and the same pod-creation load, one system registered at a time:
#
#   none             nothing registered: the baseline
#   secure-defaults  the release binary, the shipped policy (config/policy.yaml), its own webhook configuration
#   map              a MutatingAdmissionPolicy doing the same defaulting (bench/map-policy.yaml), in the API server
#   kyverno          Kyverno (bench/peers/kyverno/policy.yaml, a CEL MutatingPolicy), started by start.sh
#   gatekeeper       Gatekeeper's mutation webhook (bench/peers/gatekeeper/assign.yaml), started by start.sh
#
# For each, with nothing else registered: cold start (its process starting, or its policy applied, to the first
# defaulted dry-run pod), then pod creations with 1 creator (latency) and 8 concurrent creators (throughput), then
# the admission process's CPU seconds over both loads and its peak RSS, and the API server's CPU seconds. Writes
# target/bench/peers/*.json and prints one table (target/bench/peers/peers.md), each system against "none".
#
# Not part of `make bench` or CI: the peers build from the Go module proxy on first use (Gatekeeper about
# 5 minutes, Kyverno about 20; cached by version, see bench/peers/build.sh).
#
# Environment: BENCH_PEERS (default "secure-defaults map kyverno gatekeeper"; "none" always runs first), BENCH_E2E_ROUNDS and
# BENCH_E2E_SECONDS (rounds per load and seconds per round, default 3 and 3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
SYSTEMS="${BENCH_PEERS:-secure-defaults map kyverno gatekeeper}"
SYSTEMS="none ${SYSTEMS//none/}"
ROUNDS="${BENCH_E2E_ROUNDS:-3}"
ROUND_SECONDS="${BENCH_E2E_SECONDS:-3}"
OUT="$ROOT/target/bench/peers"
LOADGEN="$ROOT/target/loadgen/release/loadgen"
SERVER="$ROOT/target/release/secure-defaults"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/secure-defaults-peers.XXXXXX")"
CLUSTER="$WORK/cluster"
RUNNING=() # what to stop: "server PID" or "peer NAME"

log() { printf '\n[bench-peers] %s\n' "$*" >&2; }

# The correctness cases are YAML (tests/cases/engine.yaml); say so before minutes of timing, not after.
if ! python3 -c 'import yaml' 2>/dev/null; then
  echo "bench-peers: python3 cannot import yaml (Debian: apt-get install python3-yaml)" >&2
  exit 1
fi

cleanup() {
  local status=$? item
  for item in "${RUNNING[@]}"; do stop_system "$item" || true; done
  if [[ -d "$CLUSTER" ]]; then "$ROOT/e2e/cluster.sh" down "$CLUSTER" || true; fi
  if [[ $status -ne 0 ]]; then
    for f in "$WORK"/*.log "$WORK"/*/peer.log; do
      [[ -f "$f" ]] && { echo "---- last lines of $f ----" >&2; tail -n 20 "$f" >&2; }
    done
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_system() { # <"server PID" | "peer NAME">
  case "$1" in
    server\ *) kill -TERM "${1#server }" 2>/dev/null && wait "${1#server }" 2>/dev/null || true ;;
    peer\ *) "$ROOT/bench/peers/stop.sh" "${1#peer }" "$WORK/${1#peer }" "$KUBECONFIG" >/dev/null 2>&1 ;;
  esac
}

# Seconds since boot, and a process's CPU seconds (user + system) and start (seconds since boot).
uptime_s() { awk '{print $1}' /proc/uptime; }
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }
started_s() { awk -v hz="$(getconf CLK_TCK)" '{print $22 / hz}' "/proc/$1/stat"; }

# Polls a dry-run pod in <namespace> until it comes back with the defaulted runAsUser.
wait_defaulted() { # <namespace>
  local pod='{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"cold-"},"spec":{"containers":[{"name":"app","image":"registry.k8s.io/pause:3.10"}]}}'
  for _ in $(seq 1200); do
    [[ "$(kc -n "$1" create --dry-run=server -o 'jsonpath={.spec.securityContext.runAsUser}' -f - <<<"$pod" 2>/dev/null)" == 65532 ]] &&
      return 0
    sleep 0.1 # poll interval, bounded by the loop
  done
  echo "no defaulted pod in $1 after 120 s" >&2
  return 1
}

log "building (release): secure-defaults, the load generator; the peers (cached by version)"
cargo build --locked --release --bin secure-defaults
cargo build --locked --release --manifest-path bench/loadgen/Cargo.toml --target-dir "$ROOT/target/loadgen"
for system in $SYSTEMS; do
  case "$system" in
    kyverno | gatekeeper) "$ROOT/bench/peers/build.sh" "$system" >/dev/null ;;
    none | secure-defaults | map) ;;
    *) echo "BENCH_PEERS: unknown system $system" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/peers.md

log "starting a local control plane (e2e/cluster.sh)"
"$ROOT/e2e/cluster.sh" up "$CLUSTER" >/dev/null
# shellcheck disable=SC1091
source "$CLUSTER/env"
export KUBECONFIG
export KUBECTL="$BIN/kubectl"
kc() { "$BIN/kubectl" --request-timeout=30s "$@"; }
APISERVER_PID="$(awk '$1 == "kube-apiserver" {print $2}' "$CLUSTER/pids")"

declare -A LABEL=(
  [none]=""
  [secure-defaults]="secure-defaults.io/inject=enabled"
  [map]="bench.secure-defaults.io/map=enabled"
  [kyverno]="bench.secure-defaults.io/peer=kyverno"
  [gatekeeper]="bench.secure-defaults.io/peer=gatekeeper"
)
declare -A EXPECT=([none]=none [secure-defaults]=webhook [map]=map [kyverno]=peer [gatekeeper]=peer)
for system in $SYSTEMS; do
  kc create namespace "bench-$system" >/dev/null
  [[ -z "${LABEL[$system]}" ]] || kc label namespace "bench-$system" "${LABEL[$system]}" >/dev/null
done
for ns in $(printf 'bench-%s ' $SYSTEMS); do
  until kc -n "$ns" get serviceaccount default >/dev/null 2>&1; do sleep 0.2; done
done

# Starts <system>; sets PID (empty for the MutatingAdmissionPolicy, which runs in the API server) and T0 (when
# its process started, or its policy was applied).
start_system() {
  PID=""
  T0=""
  case "$1" in
    none) ;;
    secure-defaults)
      mkdir -p "$WORK/certs"
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=127.0.0.1" \
        -addext "subjectAltName=IP:127.0.0.1" -keyout "$WORK/certs/tls.key" -out "$WORK/certs/tls.crt" 2>/dev/null
      local port admin
      port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
      admin="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
      kc apply -f - >/dev/null <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: bench-peers.secure-defaults.io}
webhooks:
- name: pods.secure-defaults.io
  clientConfig: {url: "https://127.0.0.1:$port/mutate", caBundle: "$(base64 -w0 <"$WORK/certs/tls.crt")"}
  rules:
  - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods], scope: Namespaced}
  namespaceSelector:
    matchExpressions:
    - {key: secure-defaults.io/inject, operator: In, values: [enabled]}
  sideEffects: None
  admissionReviewVersions: [v1]
  timeoutSeconds: 5
  failurePolicy: Fail
EOF
      T0="$(uptime_s)"
      "$SERVER" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
        --tls-cert "$WORK/certs/tls.crt" --tls-key "$WORK/certs/tls.key" --policy "$ROOT/config/policy.yaml" \
        --drain-seconds 0 --shutdown-timeout-seconds 1 --log-format json >"$WORK/secure-defaults.log" 2>&1 &
      PID=$!
      RUNNING+=("server $PID")
      ;;
    map)
      T0="$(uptime_s)"
      kc apply -f "$ROOT/bench/map-policy.yaml" >/dev/null
      ;;
    kyverno | gatekeeper)
      RUNNING+=("peer $1")
      PID="$("$ROOT/bench/peers/start.sh" "$1" "$WORK/$1" "$KUBECONFIG" 2>"$WORK/$1-start.log" | tail -n 1)"
      T0="$(started_s "$PID")"
      ;;
  esac
}

stop_current() { # <system>
  case "$1" in
    secure-defaults)
      kc delete mutatingwebhookconfiguration bench-peers.secure-defaults.io >/dev/null
      stop_system "server $PID"
      ;;
    none) ;;
    map) kc delete -f "$ROOT/bench/map-policy.yaml" >/dev/null ;;
    *) stop_system "peer $1" ;;
  esac
  RUNNING=()
}

for system in $SYSTEMS; do
  log "$system: starting, then to the first defaulted pod"
  start_system "$system"
  cold=null
  if [[ -n "$T0" ]]; then
    wait_defaulted "bench-$system"
    cold="$(awk -v a="$T0" -v b="$(uptime_s)" 'BEGIN {printf "%.2f", b - a}')"
    echo "  cold start: $cold s" >&2
  fi
  cpu0="${PID:+$(cpu_s "$PID")}"
  api0="$(cpu_s "$APISERVER_PID")"
  targets=(--target "$system=bench-$system:${EXPECT[$system]}")
  log "$system: pod creations, 1 creator"
  "$LOADGEN" create-pods --env "$CLUSTER" --connections 1 --rounds "$ROUNDS" --round-seconds "$ROUND_SECONDS" \
    --containers 1 "${targets[@]}" --out "$OUT/$system-latency.json"
  log "$system: pod creations, 8 concurrent creators"
  "$LOADGEN" create-pods --env "$CLUSTER" --connections 8 --rounds "$ROUNDS" --round-seconds "$ROUND_SECONDS" \
    --containers 1 "${targets[@]}" --out "$OUT/$system-throughput.json"
  api1="$(cpu_s "$APISERVER_PID")"
  if [[ -n "$PID" ]]; then
    printf '{"cold_start_s": %s, "cpu_s": %s, "peak_rss_kib": %s, "apiserver_cpu_s": %s}\n' "$cold" \
      "$(awk -v a="$cpu0" -v b="$(cpu_s "$PID")" 'BEGIN {print b - a}')" \
      "$(awk '/^VmHWM/ {print $2}' "/proc/$PID/status")" \
      "$(awk -v a="$api0" -v b="$api1" 'BEGIN {print b - a}')" >"$OUT/$system-process.json"
  else
    printf '{"cold_start_s": %s, "cpu_s": null, "peak_rss_kib": null, "apiserver_cpu_s": %s}\n' "$cold" \
      "$(awk -v a="$api0" -v b="$api1" 'BEGIN {print b - a}')" >"$OUT/$system-process.json"
  fi
  stop_current "$system"
done

# Correctness: every system registered at once, each in its namespace, the same cases through each.
log "correctness: the engine's cases marked peers (tests/cases/engine.yaml) through each system, compared with secure-defaults"
others=()
for system in $SYSTEMS; do
  [[ "$system" == none ]] && continue
  start_system "$system"
  wait_defaulted "bench-$system"
  [[ "$system" == secure-defaults ]] || others+=("$system")
done
if [[ " $SYSTEMS " == *" secure-defaults "* && ${#others[@]} -gt 0 ]]; then
  python3 "$ROOT/bench/peers/compare.py" "$ROOT/tests/cases/engine.yaml" secure-defaults "${others[@]}" \
    >"$OUT/correctness.md"
fi

log "chart of the pod-creation latencies: $OUT/peers-latency.svg"
python3 - "$OUT" $SYSTEMS <<'EOF'
import json, os, sys
out, systems = sys.argv[1], sys.argv[2:]
for what in ("latency", "throughput"):
    runs = [json.load(open(os.path.join(out, f"{system}-{what}.json"))) for system in systems]
    merged = dict(runs[0], targets=[t for run in runs for t in run["targets"]])
    json.dump(merged, open(os.path.join(out, f"e2e-{what}.json"), "w"))
EOF
"$LOADGEN" chart --dir "$OUT" --out "$OUT/peers-latency.svg"

log "report"
python3 - "$OUT" $SYSTEMS <<'EOF' | tee "$OUT/peers.md"
import json, os, sys
out, systems = sys.argv[1], sys.argv[2:]
def load(system, what):
    with open(os.path.join(out, f"{system}-{what}.json")) as f:
        doc = json.load(f)
    return doc["targets"][0] if "targets" in doc else doc
base, base_rate = load("none", "latency")["latency_us"], load("none", "throughput")["rate"]
print("| system | p50 ms | p99 ms | p50 / p99 over none, ms | creates/s, 8 creators | of none | "
      "admission CPU µs per create | admission peak RSS MiB | API server CPU µs per create | cold start s |")
print("|---|---|---|---|---|---|---|---|---|---|")
ms = lambda us: us / 1000
for system in systems:
    lat, rate, proc = load(system, "latency")["latency_us"], load(system, "throughput")["rate"], load(system, "process")
    # Over both loads' timed creates (their warm-up second and first check are not counted, alike for all).
    creates = load(system, "latency")["creates"] + load(system, "throughput")["creates"]
    per = lambda s: f"{s * 1e6 / creates:.0f}"
    inside = "in the API server" if system == "map" else "none"
    cpu = inside if proc["cpu_s"] is None else per(proc["cpu_s"])
    rss = inside if proc["peak_rss_kib"] is None else f'{proc["peak_rss_kib"] / 1024:.0f}'
    cold = "" if proc["cold_start_s"] is None else proc["cold_start_s"]
    print(f'| {system} | {ms(lat["p50"]):.2f} | {ms(lat["p99"]):.2f} | '
          f'{ms(lat["p50"] - base["p50"]):+.2f} / {ms(lat["p99"] - base["p99"]):+.2f} | {rate:.0f} | '
          f'{rate / base_rate:.2f} | {cpu} | {rss} | {per(proc["apiserver_cpu_s"])} | {cold} |')
EOF
[[ ! -f "$OUT/correctness.md" ]] || { echo; cat "$OUT/correctness.md"; } | tee -a "$OUT/peers.md"
