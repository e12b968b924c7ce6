#!/usr/bin/env bash
# `make bench`: the engine, the server and the end-to-end benchmarks in one run, then ONE table (markdown) with
# each figure, its target and pass/miss; figures as JSON in target/bench/results.json.
#
#   1. engine  criterion (benches/engine.rs): parse + respond per review for 1/5/20-container pods, against
#              serde_json::Value and kube's typed AdmissionReview on the same bytes; callgrind instruction counts
#              when valgrind is installed.
#   2. server  `secure-defaults serve` (release, --no-namespace-lookups) and the "floor" (bench/loadgen: the same
#              TLS + HTTP stack answering a fixed review) pinned to CPU 0, the load generator to CPU 1: closed-loop
#              throughput, latency at fixed rates, CPU per request, peak RSS with 512 connections, time to ready;
#              then the closed loop again over HTTP/2 (32 streams on one connection, as kube-apiserver calls).
#   3. e2e     a local control plane (e2e/cluster.sh): pod creations through kube-apiserver with no mutation, with
#              the webhook, with a MutatingAdmissionPolicy doing the same defaulting, and with the webhook's
#              image-aware defaults (a local registry, e2e/registry: the image's user cached, and a new tag per pod
#              for the cost of a cold miss; BENCH_IMAGE_TAGS tags, default 4000); then time to ready with
#              10,000 namespaces. Torn down at the end. The pod-creation latencies are drawn in
#              target/bench/e2e-latency.svg (loadgen chart).
#
# Benchmarks report; they do not fail on a missed target. They do fail on a broken measurement (a refused or
# non-2xx request, a configuration that does not mutate as it should, a server that does not start).
#
# Environment: BENCH_PHASES (default "engine server e2e"), BENCH_MEASUREMENT_TIME (criterion seconds, default 3),
# BENCH_SECONDS (seconds per round of a server load phase, default 3), BENCH_ROUNDS (rounds per server load phase,
# default 3; the median round is reported), BENCH_NAMESPACES (default 10000), BENCH_MORE_NAMESPACES (added for
# the second memory measurement, default 40000; 0 skips it), BENCH_E2E_ROUNDS and BENCH_E2E_SECONDS (rounds of
# pod creations per configuration and seconds per round, default 3 and 3), BENCH_COMPARE_SERVER (another build of
# secure-defaults, e.g. the one before a change: the e2e phase also times it, as "compare", in the same rounds).
# Everything listens on and connects to 127.0.0.1 only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PHASES="${BENCH_PHASES:-engine server e2e}"
MEASUREMENT_TIME="${BENCH_MEASUREMENT_TIME:-3}"
SECONDS_PER_PHASE="${BENCH_SECONDS:-3}"
ROUNDS="${BENCH_ROUNDS:-3}"
NAMESPACES="${BENCH_NAMESPACES:-10000}"
E2E_ROUNDS="${BENCH_E2E_ROUNDS:-3}"
E2E_SECONDS="${BENCH_E2E_SECONDS:-3}"
CALLGRIND_ITERATIONS=200
OUT="$ROOT/target/bench"
LOADGEN="$ROOT/target/loadgen/release/loadgen"
SERVER="$ROOT/target/release/secure-defaults"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/secure-defaults-bench.XXXXXX")"
CLUSTER="$WORK/cluster"
PIDS=()

log() { printf '\n[bench] %s\n' "$*" >&2; }
has_phase() { [[ " $PHASES " == *" $1 "* ]]; }

cleanup() {
  local status=$?
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -d "$CLUSTER" ]]; then "$ROOT/e2e/cluster.sh" down "$CLUSTER" || true; fi
  if [[ -f "$WORK/registry/pid" ]]; then "$ROOT/e2e/registry/run.sh" stop "$WORK/registry" 2>/dev/null || true; fi
  if [[ $status -ne 0 ]]; then
    for f in "$WORK"/*.log; do
      [[ -f "$f" ]] || continue
      echo "---- last lines of $f ----" >&2
      tail -n 20 "$f" >&2 || true
    done
    [[ -d "$CLUSTER/logs" ]] && tail -n 20 "$CLUSTER"/logs/kube-apiserver.log >&2 || true
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A loopback port nothing listens on, below the ephemeral range (see e2e/cluster.sh).
declare -A TAKEN=()
free_port() { # <var>
  local port tries
  for ((tries = 0; tries < 200; tries++)); do
    port=$((20000 + RANDOM % 12000))
    [[ -z "${TAKEN[$port]:-}" ]] || continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      TAKEN[$port]=1
      printf -v "$1" '%s' "$port"
      return 0
    fi
  done
  echo "no free port" >&2
  return 1
}

# A CA and a serving certificate for 127.0.0.1 (ECDSA P-256, like the e2e cluster's).
make_certs() { # <dir>
  local d="$1"
  mkdir -p "$d"
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$d/ca.key" -subj "/CN=secure-defaults-bench-ca" -days 2 -sha256 -out "$d/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/tls.ec.key" 2>/dev/null
  openssl pkcs8 -topk8 -nocrypt -in "$d/tls.ec.key" -out "$d/tls.key"
  openssl req -new -key "$d/tls.key" -subj "/CN=127.0.0.1" -out "$d/tls.csr" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$d/tls.ext"
  openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
    -days 2 -sha256 -extfile "$d/tls.ext" -out "$d/tls.crt" 2>/dev/null
}

policy() { # <mode>
  printf 'apiVersion: secure-defaults.io/v1alpha1\nkind: Policy\nmode: %s\ndefaults:\n  runAsUser: 65532\n  runAsGroup: 65532\n  fsGroup: 65532\n  fsGroupChangePolicy: OnRootMismatch\n  allowPrivilegeEscalation: false\n' "$1"
}

# ---------------------------------------------------------------------------------------------------------------
log "machine: $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo); load average $(cut -d' ' -f1-3 /proc/loadavg)"
mkdir -p "$OUT"
rm -f "$OUT"/results.json "$OUT"/results.md
has_phase engine && rm -f "$OUT"/callgrind-*.out
has_phase server && rm -f "$OUT"/server-*.json
has_phase e2e && rm -f "$OUT"/e2e-*.json "$OUT"/e2e-latency.svg "$OUT"/ready-*.json "$OUT"/webhook-* "$OUT"/image-*

log "building (release): secure-defaults, the engine benchmark, the load generator"
cargo build --locked --release --bin secure-defaults
if has_phase engine; then
  BENCH_EXE="$(cargo bench --locked --bench engine --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*engine[^"]*\)".*/\1/p' | tail -n 1)"
  [[ -x "$BENCH_EXE" ]] || { echo "cannot find the engine benchmark executable" >&2; exit 1; }
fi
cargo build --locked --release --manifest-path bench/loadgen/Cargo.toml --target-dir "$ROOT/target/loadgen"

# ---------------------------------------------------------------------------------------------------------------
if has_phase engine; then
  log "1/3 engine: criterion, warm-up 1 s, measurement ${MEASUREMENT_TIME} s per benchmark (pinned to CPU 0)"
  taskset -c 0 cargo bench --locked --bench engine -- --warm-up-time 1 --measurement-time "$MEASUREMENT_TIME" 2>&1 |
    grep -E '^(fixture|engine/|baseline/)|time:' || true
  [[ -f target/criterion/engine/review/1/new/estimates.json ]] || { echo "criterion wrote no estimates" >&2; exit 1; }
  if command -v valgrind >/dev/null 2>&1; then
    log "1/3 engine: callgrind, $CALLGRIND_ITERATIONS reviews per size (instructions counted inside review_once only)"
    for n in 1 5 20; do
      ENGINE_PROFILE="$n:$CALLGRIND_ITERATIONS" valgrind --tool=callgrind --toggle-collect='*review_once*' \
        --callgrind-out-file="$OUT/callgrind-review-$n.out" "$BENCH_EXE" 2>"$WORK/callgrind-$n.log" >/dev/null
      grep -E '^(totals|summary):' "$OUT/callgrind-review-$n.out" | tail -n 1 | sed "s/^/  $n container(s): /" >&2
    done
  else
    log "valgrind not installed: no instruction counts (apt-get install valgrind)"
  fi
fi

# ---------------------------------------------------------------------------------------------------------------
if has_phase server; then
  log "2/3 server: secure-defaults and the floor on CPU 0, the load generator on CPU 1"
  make_certs "$WORK/certs"
  policy cluster-wide >"$WORK/policy.yaml"
  free_port PORT
  free_port ADMIN
  free_port FLOOR_PORT
  free_port PORT2
  free_port ADMIN2
  free_port PORT3
  free_port ADMIN3
  free_port FLOOR_PORT3
  COMMON=(--ca "$WORK/certs/ca.crt" --containers 1 --connections 32 --closed-seconds "$SECONDS_PER_PHASE"
    --rate-seconds "$SECONDS_PER_PHASE" --rounds "$ROUNDS")
  serve() { # <port> <admin port> <extra args...>
    local port="$1" admin="$2"
    shift 2
    echo taskset -c 0 "$SERVER" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
      --tls-cert "$WORK/certs/tls.crt" --tls-key "$WORK/certs/tls.key" --policy "$WORK/policy.yaml" \
      --no-namespace-lookups --drain-seconds 0 --shutdown-timeout-seconds 1 --log-format json "$@"
  }
  # shellcheck disable=SC2046 # word splitting of the command is intended (paths have no spaces)
  taskset -c 1 "$LOADGEN" server --name secure-defaults --addr "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" \
    "${COMMON[@]}" --rates 1000,5000 --idle-connections 512 --expect-patch true \
    --save-response "$WORK/response.json" --log "$WORK/secure-defaults.log" --out "$OUT/server-secure-defaults.json" \
    -- $(serve "$PORT" "$ADMIN")
  taskset -c 1 "$LOADGEN" server --name floor --addr "127.0.0.1:$FLOOR_PORT" \
    "${COMMON[@]}" --rates 1000,5000 --idle-connections 512 --log "$WORK/floor.log" --out "$OUT/server-floor.json" \
    -- taskset -c 0 "$LOADGEN" floor --listen "127.0.0.1:$FLOOR_PORT" --cert "$WORK/certs/tls.crt" \
    --key "$WORK/certs/tls.key" --response "$WORK/response.json"
  # The same server without its per-request info log line: what the log costs.
  # shellcheck disable=SC2046
  taskset -c 1 "$LOADGEN" server --name secure-defaults-warn --addr "127.0.0.1:$PORT2" --admin "127.0.0.1:$ADMIN2" \
    "${COMMON[@]}" --rates "" --idle-connections 0 --expect-patch true --log "$WORK/secure-defaults-warn.log" \
    --out "$OUT/server-secure-defaults-warn.json" -- $(serve "$PORT2" "$ADMIN2" --log-level warn)
  # Both again over HTTP/2, 32 streams on one connection: how kube-apiserver calls a webhook.
  # shellcheck disable=SC2046
  taskset -c 1 "$LOADGEN" server --name secure-defaults-h2 --protocol http2 --addr "127.0.0.1:$PORT3" \
    --admin "127.0.0.1:$ADMIN3" "${COMMON[@]}" --rates "" --idle-connections 0 --expect-patch true \
    --log "$WORK/secure-defaults-h2.log" --out "$OUT/server-secure-defaults-h2.json" -- $(serve "$PORT3" "$ADMIN3")
  taskset -c 1 "$LOADGEN" server --name floor-h2 --protocol http2 --addr "127.0.0.1:$FLOOR_PORT3" \
    "${COMMON[@]}" --rates "" --idle-connections 0 --log "$WORK/floor-h2.log" --out "$OUT/server-floor-h2.json" \
    -- taskset -c 0 "$LOADGEN" floor --listen "127.0.0.1:$FLOOR_PORT3" --cert "$WORK/certs/tls.crt" \
    --key "$WORK/certs/tls.key" --response "$WORK/response.json"
fi

# ---------------------------------------------------------------------------------------------------------------
if has_phase e2e; then
  log "3/3 e2e: starting a local control plane (e2e/cluster.sh)"
  "$ROOT/e2e/cluster.sh" up "$CLUSTER" >/dev/null
  # shellcheck disable=SC1091
  source "$CLUSTER/env"
  export KUBECONFIG
  kc() { "$BIN/kubectl" --request-timeout=30s "$@"; }
  [[ -f "$WORK/certs/tls.crt" ]] || make_certs "$WORK/certs"
  policy opt-in >"$WORK/policy-e2e.yaml"

  kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: bench-none}
---
apiVersion: v1
kind: Namespace
metadata: {name: bench-webhook, labels: {secure-defaults.io/inject: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: bench-map, labels: {bench.secure-defaults.io/map: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: bench-null, labels: {bench.secure-defaults.io/null: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: bench-images, labels: {secure-defaults.io/inject: enabled, bench.secure-defaults.io/images: enabled}}
EOF
  for ns in bench-none bench-webhook bench-map bench-null bench-images; do
    until kc -n "$ns" get serviceaccount default >/dev/null 2>&1; do sleep 0.2; done
  done
  if [[ -n "${BENCH_COMPARE_SERVER:-}" ]]; then
    kc create namespace bench-compare >/dev/null
    kc label namespace bench-compare secure-defaults.io/inject=enabled bench.secure-defaults.io/compare=enabled >/dev/null
    until kc -n bench-compare get serviceaccount default >/dev/null 2>&1; do sleep 0.2; done
    free_port CMP_PORT
    free_port CMP_ADMIN
    "$BENCH_COMPARE_SERVER" serve --listen "127.0.0.1:$CMP_PORT" --admin-listen "127.0.0.1:$CMP_ADMIN" \
      --tls-cert "$WORK/certs/tls.crt" --tls-key "$WORK/certs/tls.key" --policy "$WORK/policy-e2e.yaml" \
      --drain-seconds 0 --shutdown-timeout-seconds 1 --log-format json >"$WORK/compare.log" 2>&1 &
    PIDS+=($!)
  fi

  # Image-aware defaults: a local registry (e2e/registry) holding the user-1001 image (USER 1001:1001) as `latest`
  # and as BENCH_IMAGE_TAGS more tags t0, t1, ... (the same manifest), and a second server whose policy is the same
  # plus an images: section. Pods of `latest` find its user cached; a pod of a new tag is a cold miss.
  IMAGE_TAGS="${BENCH_IMAGE_TAGS:-4000}"
  log "3/3 e2e: a local registry with the user-1001 image, and $IMAGE_TAGS more tags of it"
  # shellcheck disable=SC1090
  source "$("$ROOT/e2e/registry/run.sh" start "$WORK/registry" | tail -n 1)"
  "$ROOT/e2e/registry/push-images.sh" "$WORK/registry" user-1001 >/dev/null
  "$ROOT/e2e/registry/tag.py" "$WORK/registry" user-1001 "$IMAGE_TAGS" >/dev/null
  { cat "$WORK/policy-e2e.yaml"
    printf 'images:\n  registries: ["%s/*"]\n  insecureRegistries: ["%s"]\n' "$REGISTRY_ADDR" "$REGISTRY_ADDR"
  } >"$WORK/policy-images.yaml"
  free_port IMG_PORT
  free_port IMG_ADMIN
  "$SERVER" serve --listen "127.0.0.1:$IMG_PORT" --admin-listen "127.0.0.1:$IMG_ADMIN" \
    --tls-cert "$WORK/certs/tls.crt" --tls-key "$WORK/certs/tls.key" --policy "$WORK/policy-images.yaml" \
    --drain-seconds 0 --shutdown-timeout-seconds 1 --log-format json >"$WORK/images.log" 2>&1 &
  IMG_PID=$!
  PIDS+=("$IMG_PID")

  free_port WH_PORT
  free_port WH_ADMIN
  "$SERVER" serve --listen "127.0.0.1:$WH_PORT" --admin-listen "127.0.0.1:$WH_ADMIN" \
    --tls-cert "$WORK/certs/tls.crt" --tls-key "$WORK/certs/tls.key" --policy "$WORK/policy-e2e.yaml" \
    --drain-seconds 0 --shutdown-timeout-seconds 1 --log-format json >"$WORK/webhook.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 300); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$WH_ADMIN/readyz")" == 200 ]] && break
    kill -0 "${PIDS[-1]}" || { echo "the webhook server exited" >&2; exit 1; }
    sleep 0.1
  done

  CA_BUNDLE="$(base64 -w0 <"$WORK/certs/ca.crt")"
  # A MutatingWebhookConfiguration of one webhook, <name>, on pod creation (and <more rules>), calling the server
  # at <port> for the namespaces that match <matchExpressions> (flow YAML).
  register() { # <name> <port> <matchExpressions> [<more rules>]
    kc apply -f - >/dev/null <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: $1}
webhooks:
- name: $1
  clientConfig: {url: "https://127.0.0.1:$2/mutate", caBundle: "$CA_BUNDLE"}
  rules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods], scope: Namespaced}${4:+, $4}]
  namespaceSelector: {matchExpressions: $3}
  sideEffects: None
  admissionReviewVersions: [v1]
  timeoutSeconds: 5
  failurePolicy: Fail
  reinvocationPolicy: IfNeeded
EOF
  }
  register pods.secure-defaults.io "$WH_PORT" '[{key: secure-defaults.io/inject, operator: In, values: [enabled]},
    {key: bench.secure-defaults.io/compare, operator: DoesNotExist}, {key: bench.secure-defaults.io/images, operator: DoesNotExist}]' \
    '{apiGroups: [""], apiVersions: [v1], operations: [UPDATE], resources: [pods/ephemeralcontainers], scope: Namespaced}'
  # The server with image-aware defaults.
  register images.secure-defaults.io "$IMG_PORT" '[{key: bench.secure-defaults.io/images, operator: In, values: [enabled]}]'
  # The same server as pods.secure-defaults.io, called for a namespace that is not opted in: it answers allowed
  # without a patch, so this is what a webhook call costs the API server when there is nothing to apply.
  register null.secure-defaults.io "$WH_PORT" '[{key: bench.secure-defaults.io/null, operator: In, values: [enabled]}]'
  # The same defaulting as a MutatingAdmissionPolicy (bench/map-policy.yaml, also used by make bench-peers).
  kc apply -f "$ROOT/bench/map-policy.yaml" >/dev/null

  # Latency with one creator (no queueing in the API server, so the difference is the admission step's own
  # time), then throughput with 8 concurrent creators; rounds interleave the three configurations.
  TARGETS=(--target none=bench-none:none --target webhook=bench-webhook:webhook --target map=bench-map:map
    --target null=bench-null:null)
  if [[ -n "${BENCH_COMPARE_SERVER:-}" ]]; then
    TARGETS+=(--target compare=bench-compare:webhook)
    register compare.secure-defaults.io "$CMP_PORT" '[{key: bench.secure-defaults.io/compare, operator: In, values: [enabled]}]'
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: compare.secure-defaults.io}
webhooks:
- name: compare.secure-defaults.io
  clientConfig: {url: "https://127.0.0.1:$CMP_PORT/mutate", caBundle: "$CA_BUNDLE"}
  rules:
  - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods], scope: Namespaced}
  namespaceSelector:
    matchExpressions:
    - {key: bench.secure-defaults.io/compare, operator: In, values: [enabled]}
  sideEffects: None
  admissionReviewVersions: [v1]
  timeoutSeconds: 5
  failurePolicy: Fail
  reinvocationPolicy: IfNeeded
EOF
  fi
  # The API server's own account of the webhook calls (request encoding, the HTTPS round trip, response
  # decoding and applying the patch), read before and after the timed creations.
  webhook_call_metrics() {
    kc get --raw /metrics | grep -E '^apiserver_admission_webhook_admission_duration_seconds_(sum|count)\{' |
      grep -E 'name="(pods|null|compare).secure-defaults.io"' | grep 'type="admit"' || true
  }
  webhook_call_metrics >"$OUT/webhook-calls-before.txt"
  log "3/3 e2e: pod creations, 1 creator (checks each configuration mutates as it should first)"
  WARM=(--target "images=bench-images:image:$REGISTRY_ADDR/user-1001:latest")
  COLD=(--target "images-cold=bench-images:image:$REGISTRY_ADDR/user-1001:t{n}" --tags "$IMAGE_TAGS")
  "$LOADGEN" create-pods --env "$CLUSTER" --connections 1 --rounds "$E2E_ROUNDS" --round-seconds "$E2E_SECONDS" --containers 1 \
    "${TARGETS[@]}" "${WARM[@]}" "${COLD[@]}" --out "$OUT/e2e-latency.json"
  # How many pods of new tags were made (probe and warm-up included) against how often the registry was asked
  # for one of those tags' manifests: each should be a miss, once.
  python3 - "$OUT/e2e-latency.json" "$REGISTRY_ACCESS_LOG" >"$OUT/image-lookups.json" <<'EOF'
import json, re, sys
made = next(t["made"] for t in json.load(open(sys.argv[1]))["targets"] if t["name"] == "images-cold")
asked = sum(1 for l in open(sys.argv[2]) if re.search(r'"GET /v2/user-1001/manifests/t[0-9]+ ', l))
print(json.dumps({"cold_creates": made, "cold_manifest_requests": asked}))
EOF
  webhook_call_metrics >"$OUT/webhook-calls-latency.txt"
  log "3/3 e2e: pod creations, 8 concurrent creators"
  "$LOADGEN" create-pods --env "$CLUSTER" --connections 8 --rounds "$E2E_ROUNDS" --round-seconds "$E2E_SECONDS" --containers 1 \
    "${TARGETS[@]}" "${WARM[@]}" --out "$OUT/e2e-throughput.json"
  curl -fsS "http://127.0.0.1:$IMG_ADMIN/metrics" | grep '^secure_defaults_image_lookups_total' >"$OUT/image-lookup-metrics.txt" || true
  kill -TERM "$IMG_PID" && wait "$IMG_PID" 2>/dev/null || true
  "$ROOT/e2e/registry/run.sh" stop "$WORK/registry" 2>/dev/null
  webhook_call_metrics >"$OUT/webhook-calls-after.txt"
  if [[ -n "${BENCH_COMPARE_SERVER:-}" ]]; then
    # This build against the other one, from the same rounds: pod-create latency and the API server's mean time
    # per call (1 creator).
    python3 - "$OUT" <<'EOF' | tee "$OUT/compare.md" >&2
import json, os, re, sys
out = sys.argv[1]
def calls(name):
    totals = {}
    for phase in ("before", "latency"):
        for line in open(os.path.join(out, f"webhook-calls-{phase}.txt")):
            m = re.match(r'apiserver_admission_webhook_admission_duration_seconds_(sum|count)\{.*name="([a-z]+)\.secure-defaults\.io".*\} (\S+)', line)
            if m and m.group(2) == name:
                totals[(phase, m.group(1))] = totals.get((phase, m.group(1)), 0) + float(m.group(3))
    n = totals.get(("latency", "count"), 0) - totals.get(("before", "count"), 0)
    return (totals.get(("latency", "sum"), 0) - totals.get(("before", "sum"), 0)) / n * 1000 if n else float("nan")
for what in ("latency", "throughput"):
    doc = json.load(open(os.path.join(out, f"e2e-{what}.json")))
    for t in doc["targets"]:
        if t["name"] in ("webhook", "compare"):
            lat = t["latency_us"]
            print(f'{what} ({doc["connections"]} creators): {t["name"]}: p50 {lat["p50"] / 1000:.2f} ms, p99 {lat["p99"] / 1000:.2f} ms, {t["rate"]:.0f} creates/s')
print(f'API server mean per call, 1 creator: this build {calls("pods"):.2f} ms, the other build {calls("compare"):.2f} ms')
EOF
  fi
  # Did the API server keep its connections to the webhook (or pay a TLS handshake per call)?
  printf '{"open": %s, "time_wait": %s}\n' \
    "$(ss -Htan state established "( sport = :$WH_PORT )" | wc -l)" \
    "$(ss -Htan state time-wait "( sport = :$WH_PORT or dport = :$WH_PORT )" | wc -l)" >"$OUT/webhook-connections.json"
  kill -TERM "${PIDS[-1]}" && wait "${PIDS[-1]}" 2>/dev/null || true
  # The webhook's own time per review of the timed creations, as it logged it.
  grep -E '"pod":"webhook-[0-9]+-r[0-9]-' "$WORK/webhook.log" | sed -n 's/.*"duration_us":\([0-9]*\).*/\1/p' \
    >"$OUT/webhook-durations.txt" || true
  kc delete mutatingwebhookconfiguration pods.secure-defaults.io images.secure-defaults.io null.secure-defaults.io >/dev/null

  log "3/3 e2e: $NAMESPACES namespaces, then secure-defaults (namespace lookups on) from start to /readyz 200"
  "$LOADGEN" create-namespaces --env "$CLUSTER" --count "$NAMESPACES" --prefix bulk --connections 32
  total="$(kc get namespaces --no-headers 2>/dev/null | wc -l)"
  echo "  the API server lists $total namespaces" >&2
  free_port R_PORT
  free_port R_ADMIN
  "$LOADGEN" ready --admin "127.0.0.1:$R_ADMIN" --timeout 60 --namespaces "$total" --log "$WORK/ready.log" \
    --out "$OUT/ready-namespaces.json" -- "$SERVER" serve --listen "127.0.0.1:$R_PORT" \
    --admin-listen "127.0.0.1:$R_ADMIN" --tls-cert "$WORK/certs/tls.crt" --tls-key "$WORK/certs/tls.key" \
    --policy "$WORK/policy-e2e.yaml" --drain-seconds 0 --shutdown-timeout-seconds 1 --log-format json
  grep -o '"namespaces":[0-9]*' "$WORK/ready.log" | head -n 1 | sed 's/^/  cache synced: /' >&2 || true

  # The namespace cache's memory: secure-defaults' RSS once synced, and after a re-list (kube-apiserver stopped
  # and started again, so the watch starts over with a fresh list), with NAMESPACES and then
  # BENCH_MORE_NAMESPACES namespaces.
  namespace_rss() { # <label>
    free_port M_PORT
    free_port M_ADMIN
    "$SERVER" serve --listen "127.0.0.1:$M_PORT" --admin-listen "127.0.0.1:$M_ADMIN" \
      --tls-cert "$WORK/certs/tls.crt" --tls-key "$WORK/certs/tls.key" --policy "$WORK/policy-e2e.yaml" \
      --drain-seconds 0 --shutdown-timeout-seconds 1 --log-format json >"$WORK/rss-$1.log" 2>&1 &
    local pid=$! n synced after peak
    for _ in $(seq 1 600); do
      curl -fsS "http://127.0.0.1:$M_ADMIN/readyz" >/dev/null 2>&1 && break
      sleep 0.1 # poll interval
    done
    n="$(kc get namespaces --no-headers 2>/dev/null | wc -l)"
    synced="$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")"
    "$ROOT/e2e/cluster.sh" stop-apiserver "$CLUSTER" >/dev/null 2>&1
    "$ROOT/e2e/cluster.sh" start-apiserver "$CLUSTER" >/dev/null 2>&1
    for _ in $(seq 1 1200); do
      grep -q 'cache re-listed' "$WORK/rss-$1.log" && break
      sleep 0.1 # poll interval
    done
    grep -q 'cache re-listed' "$WORK/rss-$1.log" || echo "  warning: no re-list seen within 120 s" >&2
    after="$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")"
    peak="$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")"
    kill -TERM "$pid" && wait "$pid" 2>/dev/null || true
    printf '{"namespaces": %s, "synced_kib": %s, "after_relist_kib": %s, "peak_kib": %s}\n' \
      "$n" "$synced" "$after" "$peak" >"$OUT/namespace-rss-$1.json"
    echo "  $n namespaces: RSS $((synced / 1024)) MiB synced, $((after / 1024)) MiB after a re-list, peak $((peak / 1024)) MiB" >&2
  }
  log "3/3 e2e: the namespace cache's memory with $total namespaces, before and after a re-list"
  namespace_rss small
  MORE="${BENCH_MORE_NAMESPACES:-40000}"
  if ((MORE > 0)); then
    "$LOADGEN" create-namespaces --env "$CLUSTER" --count "$MORE" --prefix more --connections 32
    log "3/3 e2e: the same with $((total + MORE)) namespaces"
    namespace_rss large
  fi

  log "3/3 e2e: chart of the pod-creation latencies: $OUT/e2e-latency.svg"
  "$LOADGEN" chart --dir "$OUT" --out "$OUT/e2e-latency.svg"

  log "3/3 e2e: tearing the control plane down"
  "$ROOT/e2e/cluster.sh" down "$CLUSTER"
fi

# ---------------------------------------------------------------------------------------------------------------
log "report"
"$LOADGEN" report --dir "$OUT" --criterion "$ROOT/target/criterion" --callgrind-iterations "$CALLGRIND_ITERATIONS"
