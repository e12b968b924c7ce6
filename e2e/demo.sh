#!/usr/bin/env bash
# `make run`: a local control plane, the webhook serving config/policy.yaml, a demo namespace opted in by
# label and a sample pod shown before and after defaulting. Keeps running for your own kubectl trials until
# Ctrl-C, then removes everything it started.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$(mktemp -d "${TMPDIR:-/tmp}/secure-defaults-run.XXXXXX")"
SERVER_PID=""

cleanup() {
  echo
  echo "cleaning up..."
  [[ -n "$SERVER_PID" ]] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  "$ROOT/e2e/cluster.sh" down "$DIR" || true
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "building secure-defaults"
(cd "$ROOT" && cargo build --locked --quiet)

step "starting a local control plane (etcd, kube-apiserver, kube-controller-manager)"
"$ROOT/e2e/cluster.sh" up "$DIR" >/dev/null
# shellcheck disable=SC1091
source "$DIR/env"
export KUBECONFIG
kubectl() { "$BIN/kubectl" "$@"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT="$(free_port)"
ADMIN_PORT="$(free_port)"

step "issuing a serving certificate for 127.0.0.1"
mkdir -p "$DIR/webhook"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$DIR/webhook/ca.key" -out "$DIR/webhook/ca.crt" -subj "/CN=secure-defaults demo CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$DIR/webhook/tls.key" -out "$DIR/webhook/tls.csr" -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$DIR/webhook/ext"
openssl x509 -req -in "$DIR/webhook/tls.csr" -CA "$DIR/webhook/ca.crt" -CAkey "$DIR/webhook/ca.key" \
  -CAcreateserial -days 2 -extfile "$DIR/webhook/ext" -out "$DIR/webhook/tls.crt" 2>/dev/null

step "starting secure-defaults serve with config/policy.yaml (log: $DIR/secure-defaults.log)"
"$ROOT/target/debug/secure-defaults" serve \
  --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --tls-cert "$DIR/webhook/tls.crt" --tls-key "$DIR/webhook/tls.key" \
  --policy "$ROOT/config/policy.yaml" --drain-seconds 0 --log-format text \
  >"$DIR/secure-defaults.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat "$DIR/secure-defaults.log" >&2; exit 1; fi
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null

step "registering the webhook (opt-in: namespaces labelled secure-defaults.io/inject=enabled)"
CA_BUNDLE="$(base64 -w0 <"$DIR/webhook/ca.crt")"
kubectl apply -f - >/dev/null <<YAML
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: secure-defaults
webhooks:
  - name: pods.secure-defaults.io
    clientConfig:
      url: https://127.0.0.1:$PORT/mutate
      caBundle: $CA_BUNDLE
    rules:
      - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods], scope: Namespaced}
      - {apiGroups: [""], apiVersions: [v1], operations: [UPDATE], resources: [pods/ephemeralcontainers], scope: Namespaced}
    namespaceSelector:
      matchExpressions:
        - {key: secure-defaults.io/inject, operator: In, values: [enabled]}
        - {key: kubernetes.io/metadata.name, operator: NotIn, values: [kube-system, kube-public, kube-node-lease, secure-defaults]}
    sideEffects: None
    admissionReviewVersions: [v1]
    timeoutSeconds: 5
    failurePolicy: Fail
    reinvocationPolicy: IfNeeded
YAML

step "creating namespace demo, opted in by label"
kubectl create namespace demo >/dev/null
kubectl label namespace demo secure-defaults.io/inject=enabled >/dev/null
for _ in $(seq 1 100); do kubectl get serviceaccount default -n demo >/dev/null 2>&1 && break; sleep 0.1; done

show() {
  kubectl get pod "$1" -o jsonpath='  pod securityContext: {.spec.securityContext}{"\n"}{range .spec.initContainers[*]}  initContainer {.name}: {.securityContext}{"\n"}{end}{range .spec.containers[*]}  container {.name}: {.securityContext}{"\n"}{end}  annotation: {.metadata.annotations.secure-defaults\.io/defaulted}{"\n"}' "${@:2}"
}

step "the sample pod as written (e2e/demo/pod.yaml)"
kubectl create --dry-run=client -f "$ROOT/e2e/demo/pod.yaml" -n demo -o jsonpath='  pod securityContext: {.spec.securityContext}{"\n"}{range .spec.initContainers[*]}  initContainer {.name}: {.securityContext}{"\n"}{end}{range .spec.containers[*]}  container {.name}: {.securityContext}{"\n"}{end}'

step "the sample pod as the API server stored it, after secure-defaults"
kubectl create -f "$ROOT/e2e/demo/pod.yaml" -n demo >/dev/null
show sample -n demo

step "namespace demo-restricted enforces Pod Security \"restricted\": the same pod, admitted once defaulted"
kubectl create namespace demo-restricted >/dev/null
kubectl label namespace demo-restricted secure-defaults.io/inject=enabled \
  pod-security.kubernetes.io/enforce=restricted >/dev/null
for _ in $(seq 1 100); do kubectl get serviceaccount default -n demo-restricted >/dev/null 2>&1 && break; sleep 0.1; done
# The webhook learns the new namespace's labels from its watch within moments; retry until it is admitted.
for _ in $(seq 1 50); do
  kubectl create -f "$ROOT/e2e/demo/pod.yaml" -n demo-restricted >/dev/null 2>&1 && break
  sleep 0.2
done
show sample -n demo-restricted

cat <<MSG

secure-defaults is running against a local control plane (no kubelet: pods stay Pending, admission is what matters).
Try your own pods in another shell:

  export KUBECONFIG=$KUBECONFIG
  export PATH=$BIN:\$PATH
  kubectl run test -n demo --image=nginx && kubectl get pod test -n demo -o yaml
  curl -s http://127.0.0.1:$ADMIN_PORT/metrics | grep secure_defaults_admission
  # edit $ROOT/config/policy.yaml: the server reloads it within a second

Press Ctrl-C to stop and clean up.
MSG
while kill -0 "$SERVER_PID" 2>/dev/null; do sleep 1; done
echo "secure-defaults exited:" >&2
tail -n 20 "$DIR/secure-defaults.log" >&2
exit 1
