#!/usr/bin/env bash
# The node suite (make test-node): a control plane plus one real node (e2e/cluster.sh, e2e/node.sh), on
# which pods actually run. Needs root, containerd, runc, CNI plugins, podman and the image from `make image`.
#   1. the node registers Ready and a plain pod from the test image runs to completion;
#   2. with secure-defaults run as a host process (as the e2e suite does) and registered for an opted-in
#      namespace, a pod runs as uid/gid 65532 with fsGroup 65532 among its groups and NoNewPrivs 1, and a
#      container that sets runAsUser 1000 runs as 1000;
#   3. the Helm chart, installed with only the image reference changed: two replicas Ready through their
#      probes, self-managed certificate issued and injected, pods defaulted through the Service;
#   4. an edit of the secure-defaults-policy ConfigMap changes the defaults of later pods;
#   5. under continuous pod creation with failurePolicy Fail (real creations of pods no node can take): a
#      rollout restart and the graceful deletion of one replica's pod fail no creation; a SIGKILL of one
#      replica's container is reported (how many creations failed, how long until it was back);
#   6. image-aware defaults through the chart: a pod of an image built to run as uid 1001 (pulled by
#      containerd from a local registry with basic auth) crash-loops as the pod-level default, and runs Ready
#      as 1001 once the chart is upgraded with policy.images and registry.secretName (the webhook's pods read
#      the image's user over the pod network with the credentials the chart mounts); needs step 3;
#   7. `down` leaves no mounts, interfaces, network namespaces, iptables rules, cgroups, host directories or
#      processes behind, and the host's kernel settings as they were.
# Every wait polls up to NODE_TEST_TIMEOUT seconds (default 180). NODE_STEPS (e.g. "1 2") limits the steps.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TIMEOUT="${NODE_TEST_TIMEOUT:-180}"
STEPS=" ${NODE_STEPS:-1 2 3 4 5 6 7} "
IMAGE="${IMAGE:-localhost/secure-defaults:$(awk -F'"' '/^version *=/ { print $2; exit }' "$ROOT/Cargo.toml")}"
DIR="$(mktemp -d "${TMPDIR:-/tmp}/sd-node.XXXXXX")"
WEBHOOK_PID=""
CLIENT_PID=""

# Messages go to fd 3, a copy of stderr, so a failure inside a silenced poll is still reported.
exec 3>&2
log() { printf '[node-test] %s\n' "$*" >&3; }
fail() { log "FAIL: $*"; exit 1; }
pass() { log "PASS: $*"; }
step() { [[ "$STEPS" == *" $1 "* ]]; }

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  # shellcheck disable=SC2086
  [[ -z "$CLIENT_PID" ]] || kill $CLIENT_PID 2>/dev/null || true
  [[ -z "$WEBHOOK_PID" ]] || { kill "$WEBHOOK_PID" 2>/dev/null; wait "$WEBHOOK_PID" 2>/dev/null; } || true
  [[ ! -f "$DIR/registry/pid" ]] || "$ROOT/e2e/registry/run.sh" stop "$DIR/registry" 2>/dev/null || true
  if ((status != 0)); then
    for f in "$DIR"/node/logs/kubelet.log "$DIR"/node/logs/containerd.log "$DIR"/webhook.log; do
      [[ -f "$f" ]] || continue
      echo "---- last lines of $f ----" >&2
      tail -n 25 "$f" >&2
    done
    [[ -z "${K:-}" ]] || "$K" get pods -A -o wide >&2 2>/dev/null || true
  fi
  "$ROOT/e2e/cluster.sh" down "$DIR" || true
  rm -rf "$DIR"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Poll <cmd...> until it succeeds or the deadline passes.
eventually() { # <what> <cmd...>
  local what="$1"; shift
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.3
  done
}

# Runs a pod from the test image in <ns> until it has completed; prints its log.
run_pod() { # <ns> <name> [<container securityContext json>]
  local ns="$1" name="$2" sc="${3:-}"
  local extra=""
  [[ -z "$sc" ]] || extra=", \"securityContext\": $sc"
  "$K" -n "$ns" create -f - >/dev/null <<JSON
{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "$name"},
 "spec": {"restartPolicy": "Never",
          "containers": [{"name": "t", "image": "localhost/sd-test:e2e", "imagePullPolicy": "Never"$extra}]}}
JSON
  eventually "pod $ns/$name to succeed" pod_succeeded "$ns" "$name"
  "$K" -n "$ns" logs "$name"
}
pod_succeeded() {
  local phase
  phase="$("$K" -n "$1" get pod "$2" -o jsonpath='{.status.phase}')"
  [[ "$phase" == Failed ]] && fail "pod $1/$2 failed: $("$K" -n "$1" get pod "$2" -o jsonpath='{.status}')"
  [[ "$phase" == Succeeded ]]
}
status_field() { awk -v f="$1:" '$1 == f { $1 = ""; sub(/^ /, ""); print; exit }'; }
# The log of a pod shows <uid> and <gid> as its real ids, <group> among its groups, NoNewPrivs 1.
check_ids() { # <log> <uid> <gid> <group> <label>
  local out="$1" uid gid groups nnp
  uid="$(status_field Uid <<<"$out" | awk '{print $1}')"
  gid="$(status_field Gid <<<"$out" | awk '{print $1}')"
  groups="$(status_field Groups <<<"$out")"
  nnp="$(status_field NoNewPrivs <<<"$out")"
  log "$5: $(head -n 1 <<<"$out") | Uid $uid Gid $gid Groups [$groups] NoNewPrivs $nnp"
  [[ "$uid" == "$2" && "$gid" == "$3" && " $groups " == *" $4 "* && "$nnp" == 1 ]] \
    || fail "$5: expected uid $2, gid $3, group $4, NoNewPrivs 1; log:"$'\n'"$out"
}
# A server-side dry run of a plain pod in <ns>: prints the runAsUser the admission chain gave it.
dry_run_uid() { # <ns>
  "$K" -n "$1" create --dry-run=server -o jsonpath='{.spec.securityContext.runAsUser}' -f - <<'JSON'
{"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "probe-"},
 "spec": {"containers": [{"name": "t", "image": "localhost/sd-test:e2e"}]}}
JSON
}
uid_is() { [[ "$(dry_run_uid "$1")" == "$2" ]]; }
# A real creation of a pod that no node can take (its nodeSelector matches none, so it stays Pending): the whole
# admission chain and a write to etcd, without loading the node. Prints the runAsUser it was given.
create_uid() { # <ns>
  "$K" -n "$1" create -o jsonpath='{.spec.securityContext.runAsUser}' -f - <<'JSON'
{"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "load-", "labels": {"node-e2e": "load"}},
 "spec": {"nodeSelector": {"node-e2e/never": "true"}, "containers": [{"name": "t", "image": "localhost/sd-test:e2e"}]}}
JSON
}
# Three clients creating pods in the namespace chart one after another until stopped, each counting the
# creations defaulted to $expected_uid and the failed ones (with failurePolicy Fail, a failed call is a failed
# creation).
client() { # <n>
  local ok=0 bad=0 out
  trap 'echo "$ok $bad" >"$DIR/client.$1.result"; exit 0' TERM
  while :; do
    if out="$(create_uid chart 2>&1)" && [[ "$out" == "$expected_uid" ]]; then ok=$((ok + 1))
    else bad=$((bad + 1)); echo "$(date -u +%T.%N) $out" >>"$DIR/client.failures"; fi
  done
}
start_clients() {
  rm -f "$DIR"/client.*
  CLIENT_PID=""
  for n in 1 2 3; do client "$n" & CLIENT_PID+=" $!"; done
}
stop_clients() { # <label>; sets ok and bad
  # shellcheck disable=SC2086
  kill -TERM $CLIENT_PID; wait $CLIENT_PID || true; CLIENT_PID=""
  ok=0 bad=0
  local n o b
  for n in 1 2 3; do read -r o b <"$DIR/client.$n.result"; ok=$((ok + o)); bad=$((bad + b)); done
  log "$1: $ok admitted and defaulted, $bad failed"
  [[ ! -f "$DIR/client.failures" ]] || head -n 5 "$DIR/client.failures" >&2
}
opted_in_namespace() { # <name>
  "$K" create namespace "$1" >/dev/null
  "$K" label namespace "$1" secure-defaults.io/inject=enabled >/dev/null
  eventually "serviceaccount $1/default" "$K" -n "$1" get serviceaccount default
}

# ---------------------------------------------------------------------------
# Host paths the node may create (see e2e/node.sh): those absent now must be absent after `down`.
absent_before=""
for p in /var/lib/kubelet /var/log/containers /run/containerd /var/lib/cni; do [[ -e "$p" ]] || absent_before+=" $p"; done
# The network namespaces (none at all on a host where nothing has made one yet).
network_namespaces() { ls /var/run/netns 2>/dev/null | sort || true; }
netns_before="$(network_namespaces)"
# The kernel settings the kubelet would otherwise rewrite (protectKernelDefaults keeps it from doing so).
kernel_settings() { sysctl -n vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops \
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes | tr '\n' ' '; }
sysctls_before="$(kernel_settings)"
CLUSTER_NODE=1 "$ROOT/e2e/cluster.sh" up "$DIR" >/dev/null
# shellcheck disable=SC1091
source "$DIR/env"
export KUBECONFIG
K="$BIN/kubectl"
"$ROOT/e2e/node.sh" up "$DIR"
# shellcheck disable=SC1091
source "$DIR/node/env"

if step 1; then
  eventually "node Ready" "$K" wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
  out="$(run_pod default plain)"
  log "plain pod: $(head -n 1 <<<"$out")"
  grep -q '^Uid:' <<<"$out" || fail "plain pod printed no status: $out"
  pass "1: node $NODE_NAME Ready ($("$K" get node "$NODE_NAME" -o jsonpath='{.status.nodeInfo.containerRuntimeVersion}')), a pod ran on it"
fi

# secure-defaults as a host process (release build, a serving certificate from the cluster's CA) with <policy>,
# registered for the namespaces labelled node-e2e=host and opted in; stopped by stop_host_webhook.
start_host_webhook() { # <policy file>
  cargo build --locked --release --manifest-path "$ROOT/Cargo.toml" -q
  if [[ ! -f "$DIR/webhook.crt" ]]; then
    openssl ecparam -name prime256v1 -genkey -noout -out "$DIR/webhook.key" 2>/dev/null
    openssl req -new -key "$DIR/webhook.key" -subj "/CN=secure-defaults-host" -out "$DIR/webhook.csr" 2>/dev/null
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n' >"$DIR/webhook.ext"
    openssl x509 -req -in "$DIR/webhook.csr" -CA "$CA_CERT" -CAkey "$CA_KEY" -set_serial "0x$(openssl rand -hex 16)" \
      -days 1 -sha256 -extfile "$DIR/webhook.ext" -out "$DIR/webhook.crt" 2>/dev/null
  fi
  local port=$((20000 + RANDOM % 6000)) admin=$((26000 + RANDOM % 6000))
  "$ROOT/target/release/secure-defaults" serve --log-format json --listen "127.0.0.1:$port" \
    --admin-listen "127.0.0.1:$admin" --tls-cert "$DIR/webhook.crt" --tls-key "$DIR/webhook.key" \
    --policy "$1" >/dev/null 2>>"$DIR/webhook.log" &
  WEBHOOK_PID=$!
  eventually "host webhook /readyz" curl -fsS "http://127.0.0.1:$admin/readyz"
  "$K" apply -f - >/dev/null <<YAML
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: host.node-e2e.secure-defaults.io}
webhooks:
- name: pods.secure-defaults.io
  clientConfig: {url: "https://127.0.0.1:$port/mutate", caBundle: "$(base64 -w0 <"$CA_CERT")"}
  rules:
  - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods], scope: Namespaced}
  namespaceSelector: {matchExpressions: [{key: node-e2e, operator: In, values: [host]}, {key: secure-defaults.io/inject, operator: In, values: [enabled]}]}
  sideEffects: None
  admissionReviewVersions: [v1]
  timeoutSeconds: 5
  failurePolicy: Fail
  reinvocationPolicy: IfNeeded
YAML
}
stop_host_webhook() {
  "$K" delete mutatingwebhookconfiguration host.node-e2e.secure-defaults.io >/dev/null
  kill "$WEBHOOK_PID"; wait "$WEBHOOK_PID" || true; WEBHOOK_PID=""
}

if step 2; then
  cp "$ROOT/config/policy.yaml" "$DIR/policy.yaml"
  start_host_webhook "$DIR/policy.yaml"
  opted_in_namespace host-webhook
  "$K" label namespace host-webhook node-e2e=host >/dev/null
  eventually "the host webhook to default pods" uid_is host-webhook 65532
  out="$(run_pod host-webhook defaulted)"
  check_ids "$out" 65532 65532 65532 "defaulted pod"
  out="$(run_pod host-webhook explicit '{"runAsUser": 1000}')"
  check_ids "$out" 1000 65532 65532 "pod with runAsUser 1000"
  stop_host_webhook
  pass "2: pods in an opted-in namespace run as the defaults (host-process webhook); runAsUser 1000 is kept"
fi

if step 3; then
  [[ -s "$NODE_IMAGES/secure-defaults.tar" ]] || fail "no $IMAGE in podman: run make image"
  HELM="$("$ROOT/e2e/build-helm.sh" | tail -n 1)"
  "$HELM" install secure-defaults "$ROOT/manifests/chart/secure-defaults" --namespace secure-defaults \
    --create-namespace --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" >/dev/null
  "$K" -n secure-defaults rollout status deployment/secure-defaults --timeout="${TIMEOUT}s" >&2 \
    || fail "the chart's deployment did not become ready"
  ready="$("$K" -n secure-defaults get deployment secure-defaults -o jsonpath='{.status.readyReplicas}')"
  [[ "$ready" == 2 ]] || fail "expected 2 ready replicas, got $ready"
  ca_injected() {
    local b
    b="$("$K" get mutatingwebhookconfiguration -o jsonpath='{range .items[*].webhooks[*]}{.clientConfig.service.name}={.clientConfig.caBundle}{"\n"}{end}')"
    grep -q '^secure-defaults=..' <<<"$b"
  }
  eventually "the CA bundle injected into the webhook configuration" ca_injected
  opted_in_namespace chart
  eventually "pods defaulted through the Service" uid_is chart 65532
  out="$(run_pod chart defaulted)"
  check_ids "$out" 65532 65532 65532 "pod defaulted by the chart's webhook"
  pass "3: chart installed, 2 replicas Ready, CA injected, pods defaulted through the Service"
fi

if step 4; then
  # kubectl edit itself, with an "editor" that changes the default runAsUser.
  printf '#!/bin/sh\nsed -i "s/runAsUser: 65532/runAsUser: 4242/" "$1"\n' >"$DIR/editor"
  chmod +x "$DIR/editor"
  KUBE_EDITOR="$DIR/editor" "$K" -n secure-defaults edit configmap secure-defaults-policy >/dev/null
  # The kubelet syncs the ConfigMap volume of each replica on its own schedule: wait until every replica
  # (read at its pod IP, reachable from the node) has reloaded, so whichever serves the next pod has it.
  all_reloaded() {
    local ip n=0
    for ip in $("$K" -n secure-defaults get pods -l app.kubernetes.io/name=secure-defaults \
      -o jsonpath='{range .items[*]}{.status.podIP}{" "}{end}'); do
      curl -fsS "http://$ip:8080/metrics" | grep -Eq '^secure_defaults_policy_generation ([2-9]|[1-9][0-9])' || return 1
      n=$((n + 1))
    done
    ((n == 2))
  }
  eventually "both replicas to reload the edited policy" all_reloaded
  uid_is chart 4242 || fail "4: a dry run after the reload was defaulted to $(dry_run_uid chart), not 4242"
  out="$(run_pod chart after-edit)"
  check_ids "$out" 4242 65532 65532 "pod after the policy edit"
  pass "4: the ConfigMap edit changed the defaults of the next pods"
fi

if step 5; then
  # failurePolicy Fail (the chart's default is Ignore, which would hide failed calls). Patched rather than
  # `helm upgrade`d, which would also put back the ConfigMap edited in step 4.
  "$K" patch mutatingwebhookconfiguration secure-defaults --type=json \
    -p '[{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Fail"}]' >/dev/null
  [[ "$("$K" get mutatingwebhookconfiguration secure-defaults -o jsonpath='{.webhooks[*].failurePolicy}')" == Fail ]] \
    || fail "5: failurePolicy is not Fail"
  expected_uid="$(create_uid chart)"
  [[ "$expected_uid" =~ ^[0-9]+$ ]] || fail "5: pods in the opted-in namespace are not defaulted ($expected_uid)"
  replicas() { "$K" -n secure-defaults get pods -l app.kubernetes.io/name=secure-defaults -o name; }
  # Both replicas Ready and no other (old, terminating) one left.
  settled() {
    [[ "$(replicas | wc -l)" == 2 ]] || return 1
    [[ "$("$K" -n secure-defaults get deployment secure-defaults -o jsonpath='{.status.readyReplicas}')" == 2 ]]
  }

  # 5a. A rolling restart.
  start_clients
  "$K" -n secure-defaults rollout restart deployment/secure-defaults >/dev/null
  "$K" -n secure-defaults rollout status deployment/secure-defaults --timeout="${TIMEOUT}s" >/dev/null
  eventually "the old replicas to be gone" settled
  stop_clients "5a: pod creations during the rollout restart"
  ((bad == 0 && ok > 0)) || fail "5a: $bad failed creations during the rollout restart"
  pass "5a: rollout restart under continuous creation with failurePolicy Fail: $ok creations, none failed"

  # 5b. One replica's pod deleted (gracefully, as a drain or an eviction does).
  start_clients
  victim="$(replicas | awk 'NR == 1')"
  "$K" -n secure-defaults delete "$victim" --wait=true >/dev/null
  eventually "a replacement replica Ready" settled
  stop_clients "5b: pod creations while $victim was deleted"
  ((bad == 0 && ok > 0)) || fail "5b: $bad failed creations while one replica's pod was deleted"
  pass "5b: one replica's pod deleted under continuous creation: $ok creations, none failed"

  # 5c. One replica's container SIGKILLed: no draining is possible, so this reports what it costs (the API
  # server keeps calling the dead endpoint until the kubelet reports the pod unready), and checks recovery.
  victim="$(replicas | awk 'NR == 1')"
  restarts_before="$("$K" -n secure-defaults get "$victim" -o jsonpath='{.status.containerStatuses[0].restartCount}')"
  container="$("$K" -n secure-defaults get "$victim" -o jsonpath='{.status.containerStatuses[0].containerID}')"
  start_clients
  killed_at=$SECONDS
  ctr --address "$NODE_DIR/run/containerd.sock" -n k8s.io tasks kill -s KILL "${container#containerd://}" >/dev/null
  restarted() {
    [[ "$("$K" -n secure-defaults get "$victim" -o jsonpath='{.status.containerStatuses[0].restartCount}')" \
      -gt "$restarts_before" ]] && settled
  }
  eventually "the killed container restarted and Ready" restarted
  recovered_in=$((SECONDS - killed_at))
  stop_clients "5c: pod creations around a SIGKILL of one replica's container"
  ((ok > 0)) || fail "5c: no creation succeeded around the SIGKILL"
  uid_is chart "$expected_uid" || fail "5c: pods are not defaulted after the killed replica came back"
  pass "5c: SIGKILL of one replica's container: $bad of $((ok + bad)) creations failed (failurePolicy Fail), replica back in ${recovered_in}s"
  "$K" -n chart delete pods -l node-e2e=load --wait=false >/dev/null
fi

if step 6; then
  # Image-aware defaults through the chart installed in step 3: the user-1001 image (its files 1001:1001, mode
  # 0700; it exits 1 as any other user), in a private repository of a registry with basic auth, listening on the
  # node bridge's address so that both containerd on the host and the webhook's pods reach it. containerd pulls
  # over plain HTTP (certs.d/<addr>/hosts.toml, see e2e/node.sh) with the pod's own pull secret; the webhook
  # reads with the credentials the chart mounts from registry.secretName.
  "$K" -n secure-defaults get deployment secure-defaults >/dev/null 2>&1 || fail "6: needs the chart that step 3 installs"
  HELM="$("$ROOT/e2e/build-helm.sh" | tail -n 1)"
  REG="$DIR/registry"
  e2e_registry_env="$("$ROOT/e2e/registry/run.sh" start "$REG" --auth --host "$NODE_IP" | tail -n 1)"
  # shellcheck disable=SC1090
  source "$e2e_registry_env"
  "$ROOT/e2e/registry/push-images.sh" "$REG" private/user-1001 >/dev/null
  mkdir -p "$NODE_DIR/containerd/certs.d/$REGISTRY_ADDR"
  printf 'server = "http://%s"\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' \
    "$REGISTRY_ADDR" "$REGISTRY_ADDR" >"$NODE_DIR/containerd/certs.d/$REGISTRY_ADDR/hosts.toml"
  image="$REGISTRY_ADDR/private/user-1001:latest"
  opted_in_namespace images
  "$K" -n images create secret generic pull --type=kubernetes.io/dockerconfigjson \
    --from-file=.dockerconfigjson="$REGISTRY_AUTH_FILE" >/dev/null
  image_pod() { # <name>: the image's pod, restarted on exit (a Deployment's pods are)
    "$K" -n images create -f - >/dev/null <<JSON
{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "$1"},
 "spec": {"imagePullSecrets": [{"name": "pull"}], "containers": [{"name": "app", "image": "$image"}]}}
JSON
  }
  restarts() { "$K" -n images get pod "$1" -o jsonpath='{.status.containerStatuses[0].restartCount}'; }
  crash_looping() { [[ "$(restarts "$1")" -ge 1 ]]; }
  # What a server-side dry run of the image's pod gets as the container's runAsUser.
  container_uid_is() {
    [[ "$("$K" -n images create --dry-run=server -o jsonpath='{.spec.containers[0].securityContext.runAsUser}' -f - <<JSON
{"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "probe-"},
 "spec": {"containers": [{"name": "app", "image": "$image"}]}}
JSON
)" == "$1" ]]
  }

  # The control: without an images: section the chart's pod-level default breaks the image.
  control_uid="$(dry_run_uid images)"
  [[ "$control_uid" =~ ^[0-9]+$ && "$control_uid" != 1001 ]] || fail "6: pods in namespace images get runAsUser '$control_uid'"
  image_pod without-images
  eventually "the pod without image-aware defaults to crash-loop" crash_looping without-images
  out="$("$K" -n images logs without-images --previous 2>/dev/null || "$K" -n images logs without-images)"
  grep -q "running as uid=$control_uid" <<<"$out" && grep -q 'user-1001: FAIL' <<<"$out" \
    || fail "6: the control pod did not fail as uid $control_uid; its log:"$'\n'"$out"
  log "6: without images: $(restarts without-images) restart(s): $(grep -m1 'FAIL' <<<"$out")"
  "$K" -n images delete pod without-images --wait=false >/dev/null

  # The chart upgraded with an images: section and the registry's read credentials in a Secret of its own
  # namespace (failurePolicy Fail, so a pod the webhook did not answer for is refused, not let through).
  "$K" -n secure-defaults create secret generic registry-read --type=kubernetes.io/dockerconfigjson \
    --from-file=.dockerconfigjson="$REGISTRY_AUTH_FILE" >/dev/null
  "$HELM" upgrade secure-defaults "$ROOT/manifests/chart/secure-defaults" --namespace secure-defaults --reuse-values \
    --set webhook.failurePolicy=Fail --set registry.secretName=registry-read \
    --set-json "policy.images={\"registries\": [\"$REGISTRY_ADDR/*\"], \"insecureRegistries\": [\"$REGISTRY_ADDR\"]}" >/dev/null
  "$K" -n secure-defaults rollout status deployment/secure-defaults --timeout="${TIMEOUT}s" >&2 \
    || fail "6: the upgraded chart's deployment did not become ready"
  eventually "the upgraded chart to give the container its image's user" container_uid_is 1001
  image_pod with-images
  eventually "the pod with image-aware defaults Ready" "$K" -n images wait --for=condition=Ready pod/with-images --timeout=2s
  out="$("$K" -n images logs with-images)"
  grep -q 'running as uid=1001 gid=1001' <<<"$out" && grep -q 'user-1001: OK' <<<"$out" \
    || fail "6: the pod with image-aware defaults does not run as 1001:1001; its log:"$'\n'"$out"
  [[ "$(restarts with-images)" == 0 ]] || fail "6: the pod with image-aware defaults restarted $(restarts with-images) time(s)"
  # The webhook set it (the pod states no user), and says where it came from.
  set_uid="$("$K" -n images get pod with-images -o jsonpath='{.spec.containers[0].securityContext.runAsUser}')"
  record="$("$K" -n images get pod with-images -o jsonpath='{.metadata.annotations.secure-defaults\.io/defaulted}')"
  [[ "$set_uid" == 1001 && "$record" == *imageUser=1001:1001* ]] \
    || fail "6: the stored pod has runAsUser '$set_uid' and annotation '$record'"
  # The process itself, as the node sees it.
  pid="$(ctr --address "$NODE_DIR/run/containerd.sock" -n k8s.io tasks ls | awk -v id="$("$K" -n images get pod with-images \
    -o jsonpath='{.status.containerStatuses[0].containerID}' | sed 's|containerd://||')" '$1 == id { print $2 }')"
  [[ "$pid" =~ ^[0-9]+$ ]] || fail "6: no task for the pod's container in containerd"
  uid="$(status_field Uid </proc/"$pid"/status | awk '{print $1}')"
  [[ "$uid" == 1001 ]] || fail "6: the container's process $pid runs as uid $uid, not 1001"
  # The replicas asked the registry themselves, over the pod network, with the mounted credentials. (A replica
  # of the old ReplicaSet may still be terminating, with its port closed: it counts nothing.)
  known=0
  for ip in $("$K" -n secure-defaults get pods -l app.kubernetes.io/name=secure-defaults \
    -o jsonpath='{range .items[*]}{.status.podIP}{" "}{end}'); do
    n="$({ curl -fsS "http://$ip:8080/metrics" 2>/dev/null || true; } |
      awk '$1 == "secure_defaults_image_lookups_total{result=\"known\"}" { n += $2 } END { printf "%d", n }')"
    known=$((known + n))
  done
  ((known > 0)) || fail "6: no replica counted a known image user"
  # The registry's own log: requests authorized as its user, from the replicas' pod addresses (containerd on the
  # host comes from the bridge's own address, $NODE_IP).
  from_pods="$(grep 'msg="authorized request"' "$REG/registry.log" | grep "auth.user.name=$(cat "$REG/auth/user") " |
    grep -o 'http.request.remoteaddr="[0-9.]*' | cut -d'"' -f2 | grep -vc "^$NODE_IP\$" || true)"
  ((from_pods > 0)) || fail "6: the registry logged no authorized request from a pod address"
  log "6: with images: $(grep -m1 'running as' <<<"$out"); process $pid on the node has uid $uid; $known lookup(s) known in the replicas; $from_pods authorized request(s) from pod addresses in the registry's log"
  "$K" -n images delete pod with-images --wait=false >/dev/null
  "$ROOT/e2e/registry/run.sh" stop "$REG" 2>/dev/null
  pass "6: the chart with policy.images and registry.secretName: the user-1001 image crash-loops as the pod-level default and runs Ready as uid 1001, set by the webhook's pods from the registry"
fi

if step 7; then
  "$ROOT/e2e/cluster.sh" down "$DIR"
  leftovers=""
  grep -q " $DIR" /proc/self/mountinfo && leftovers+=" mounts:$(awk -v d="$DIR" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | tr '\n' ' ')"
  ip link show sd-node0 >/dev/null 2>&1 && leftovers+=" interface sd-node0"
  ip -o link show type veth 2>/dev/null | grep -q 'master sd-node0' && leftovers+=" veths"
  iptables -t nat -S SD-NODE >/dev/null 2>&1 && leftovers+=" iptables chain SD-NODE"
  compgen -G "/sys/fs/cgroup/*/sd-node-e2e" >/dev/null && leftovers+=" cgroups"
  pgrep -f "$DIR" >/dev/null && leftovers+=" processes: $(pgrep -af "$DIR" | tr '\n' ';')"
  for p in $absent_before; do [[ -e "$p" ]] && leftovers+=" $p"; done
  [[ "$(network_namespaces)" == "$netns_before" ]] || leftovers+=" network namespaces"
  [[ "$(kernel_settings)" == "$sysctls_before" ]] || leftovers+=" kernel settings changed: $sysctls_before -> $(kernel_settings)"
  [[ -z "$leftovers" ]] || fail "7: left behind:$leftovers"
  pass "7: down left no mounts, interfaces, network namespaces, iptables rules, cgroups, host directories or processes, and the host's kernel settings unchanged"
fi
