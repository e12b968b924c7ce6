#!/usr/bin/env bash
# Starts and stops a throw-away Kubernetes control plane on loopback for the
# e2e tests: etcd, kube-apiserver and kube-controller-manager (no kubelet, no
# scheduler, so pods stay Pending, which is all an admission webhook needs).
#
#   e2e/cluster.sh up DIR               start; prints `export KUBECONFIG=DIR/kubeconfig`
#   e2e/cluster.sh down DIR             stop everything `up` started (idempotent)
#   e2e/cluster.sh stop-apiserver DIR   stop only kube-apiserver (an outage; etcd and the
#                                       controller-manager keep running)
#   e2e/cluster.sh start-apiserver DIR  start it again with the same flags and port, and
#                                       wait until it is ready
#
# DIR ends up with:
#   kubeconfig  admin credentials (O=system:masters)
#   env         shell lines to source: KUBECONFIG, APISERVER_URL, BIN, CA_CERT,
#               CA_KEY (the CA the apiserver trusts for clients; tests may sign
#               a webhook serving cert with it too), ETCD_URL, WEBHOOK_CLIENT_CA
#               (the CA of the client certificate the apiserver presents to
#               every webhook that asks for one; see admission-config.yaml)
#   pki/        certificates and keys      logs/<component>.log
#   kube-apiserver.args  its flags, NUL-separated, for start-apiserver
#   admission-config.yaml, webhook.kubeconfig  the apiserver's admission
#               configuration: a client certificate for calls to webhooks
#   etcd/       etcd data                  pids  "<name> <pid>" per process
#   flexvolume/ (empty; keeps the controller-manager out of system paths)
#
# Environment: CLUSTER_UP_TIMEOUT (seconds, default 180) bounds each wait in up.
# CLUSTER_NODE=1 prepares the apiserver for a kubelet (e2e/node.sh): webhook and
# aggregated Services are called at their endpoints (no kube-proxy), and it
# authenticates to kubelets with the admin certificate. `down` stops such a node
# first.
# Needs bash, openssl and the binaries from e2e/build-control-plane.sh (which it
# runs, so the first `up` on a fresh machine includes the build).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
UP_TIMEOUT="${CLUSTER_UP_TIMEOUT:-180}"
COMPONENTS=(etcd kube-apiserver kube-controller-manager)

log() { printf '[cluster] %s\n' "$*" >&2; }
usage() { echo "usage: $0 up|down|stop-apiserver|start-apiserver DIR" >&2; exit 2; }

# ---------------------------------------------------------------------------
# Process bookkeeping

# Is the recorded pid still one of our binaries? Checking the command line
# guards against killing an unrelated process that reused the pid (e.g. after a
# reboot left a stale pids file behind).
is_ours() { # <name> <pid>
  local cmdline
  [[ -r "/proc/$2/cmdline" ]] || return 1
  cmdline="$(tr '\0' ' ' <"/proc/$2/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *"/$1 "* || "$cmdline" == *"/$1" ]]
}

# Send a signal to the process group the pid leads (each process was started
# with setsid, so the group holds it and anything it spawned), and to the pid
# itself in case it is not a group leader.
signal() { # <signal> <pid>
  kill -s "$1" -- "-$2" 2>/dev/null || true
  kill -s "$1" "$2" 2>/dev/null || true
}

stop_all() { # <dir>
  local pidfile="$1/pids" name pid
  [[ -f "$pidfile" ]] || return 0
  local -a names=() pids=()
  while read -r name pid; do
    [[ -n "${pid:-}" ]] || continue
    if is_ours "$name" "$pid"; then names+=("$name"); pids+=("$pid"); fi
  done <"$pidfile"

  # Stop one at a time in reverse start order (controller-manager, apiserver,
  # then etcd): each shuts down quickly while what it depends on is still
  # there, instead of retrying against a dependency that vanished.
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    stop_one "${names[i]}" "${pids[i]}"
  done
  rm -f "$pidfile"
}

stop_one() { # <name> <pid>
  local deadline
  log "stopping $1 (pid $2)"
  signal TERM "$2"
  # Bounded wait for a clean exit, then KILL.
  deadline=$((SECONDS + 10))
  while is_ours "$1" "$2"; do
    if ((SECONDS >= deadline)); then
      log "killing $1 (still running 10s after TERM)"
      signal KILL "$2"
      sleep 0.5
      break
    fi
    sleep 0.1
  done
}

# ---------------------------------------------------------------------------
# Ports

# A port that nothing is listening on. Drawn below the kernel's ephemeral
# range (32768+), which outgoing connections such as apiserver->etcd use, so
# a port we pick cannot be taken by one of those in the meantime.
# Sets variable <var> (not echoed: a $(...) subshell would lose TAKEN_PORTS,
# which keeps two picks in one run apart).
declare -A TAKEN_PORTS=()
free_port() { # <var>
  local port tries
  for ((tries = 0; tries < 200; tries++)); do
    port=$((20000 + RANDOM % 12000))
    [[ -z "${TAKEN_PORTS[$port]:-}" ]] || continue
    # A refused connection means no listener.
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      TAKEN_PORTS[$port]=1
      printf -v "$1" '%s' "$port"
      return 0
    fi
  done
  log "no free loopback port found"
  return 1
}

# ---------------------------------------------------------------------------
# Certificates

# Sign a leaf certificate for <name> with the CA (default "ca"). <ext> holds the x509v3
# extensions (SANs, key usages).
issue_cert() { # <pki> <name> <subject> <ext> [<ca name>]
  local pki="$1" name="$2" subj="$3" ext="$4" ca="${5:-ca}"
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/$name.key" 2>/dev/null
  openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  printf '%s\n' "$ext" >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/$ca.crt" -CAkey "$pki/$ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 365 -sha256 \
    -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

# A self-signed CA <name>.crt and <name>.key.
make_ca() { # <pki> <name> <common name>
  openssl ecparam -name prime256v1 -genkey -noout -out "$1/$2.key" 2>/dev/null
  openssl req -x509 -new -key "$1/$2.key" -subj "/CN=$3" -days 3650 -sha256 -out "$1/$2.crt" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
}

make_pki() { # <pki>
  local pki="$1"
  mkdir -p "$pki"
  chmod 700 "$pki"
  # CA for both serving and client certificates.
  make_ca "$pki" ca secure-defaults-e2e-ca

  # The apiserver is reached at 127.0.0.1/localhost; the in-cluster names and
  # the service IP (first address of --service-cluster-ip-range) are included
  # so the certificate is also valid for the `kubernetes` Service.
  issue_cert "$pki" apiserver "/CN=kube-apiserver" \
"basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"

  local client="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  # system:masters bypasses RBAC: the tests' admin.
  issue_cert "$pki" admin "/O=system:masters/CN=secure-defaults-e2e-admin" "$client"
  # The controller-manager gets its own identity, bound by the default RBAC
  # policy, like in a real cluster.
  issue_cert "$pki" controller-manager "/CN=system:kube-controller-manager" "$client"

  # Front proxy (request-header authentication, used by the aggregation
  # layer): its own CA, so that ordinary client certificates cannot assert
  # identities through request headers. Configuring it also keeps the
  # controller-manager from erroring on a missing requestheader CA.
  make_ca "$pki" front-proxy-ca secure-defaults-e2e-front-proxy-ca
  issue_cert "$pki" front-proxy-client "/CN=front-proxy-client" "$client" front-proxy-ca

  # The client certificate the apiserver presents when it calls a webhook, from a CA of its own: a webhook
  # that trusts it trusts the apiserver alone, not every client of the cluster CA.
  make_ca "$pki" webhook-client-ca secure-defaults-e2e-webhook-client-ca
  issue_cert "$pki" webhook-client "/CN=kube-apiserver-webhook-client" "$client" webhook-client-ca

  # Service-account token signing key pair (the apiserver signs, both verify).
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key" 2>/dev/null
  openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  chmod 600 "$pki"/*.key
}

write_kubeconfig() { # <file> <server> <pki> <user>
  local file="$1" server="$2" pki="$3" user="$4"
  # Credentials are embedded so the file stays usable on its own.
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$pki/$user.crt")
    client-key-data: $(base64 -w0 <"$pki/$user.key")
contexts:
- name: e2e
  context:
    cluster: e2e
    user: $user
current-context: e2e
EOF
  chmod 600 "$file"
}

# The apiserver's admission configuration: the MutatingAdmissionWebhook plugin presents the webhook client
# certificate to every webhook host (user `*`). A webhook that does not ask for a client certificate never
# sees it, so this changes nothing for servers started without a client CA.
write_admission_config() { # <dir> <pki>
  local dir="$1" pki="$2"
  cat >"$dir/webhook.kubeconfig" <<EOF
apiVersion: v1
kind: Config
users:
- name: "*"
  user:
    client-certificate: $pki/webhook-client.crt
    client-key: $pki/webhook-client.key
EOF
  cat >"$dir/admission-config.yaml" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: MutatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: $dir/webhook.kubeconfig
EOF
}

# ---------------------------------------------------------------------------
# up

DIR=""
CURRENT=""     # component being started/waited for, for the failure report

# Start <name> in its own session (setsid) so `down` can signal its whole
# process group, with output in logs/<name>.log; record the pid.
start() { # <name> <args...>
  local name="$1"; shift
  CURRENT="$name"
  log "starting $name"
  setsid "$BIN/$name" "$@" >"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo "$name $!" >>"$DIR/pids"
}

pid_of() { awk -v n="$1" '$1 == n { print $2 }' "$DIR/pids"; }

# Poll <check...> until it succeeds; fail early if <name>'s process died and
# give up at the deadline. Short poll interval: no fixed sleeps.
wait_for() { # <name> <what> <check...>
  local name="$1" what="$2"; shift 2
  local pid deadline=$((SECONDS + UP_TIMEOUT))
  CURRENT="$name"
  pid="$(pid_of "$name")"
  # The check runs in a subshell: redirecting a function call in this shell
  # would leave our stderr pointing at /dev/null if a signal's exit trap ran
  # during it, hiding the failure report.
  until ("$@") >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$name exited while waiting for $what"
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "timed out after ${UP_TIMEOUT}s waiting for $what"
      return 1
    fi
    sleep 0.3
  done
  log "$what: ok"
}

# etcd has no TLS here, so its /health can be read with bash alone.
etcd_healthy() { # <port>
  local reply
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
  reply="$(timeout 2 cat <&3)" || true
  exec 3<&-
  [[ "$reply" == *'"health":"true"'* ]]
}

kubectl_admin() { "$BIN/kubectl" --kubeconfig "$DIR/kubeconfig" --request-timeout=5s "$@"; }
apiserver_ready() { [[ "$(kubectl_admin get --raw /readyz)" == ok ]]; }

on_up_failure() {
  local rc=$?
  trap - EXIT INT TERM
  ((rc == 0)) && return 0
  log "up failed (exit $rc)"
  local name
  for name in "${COMPONENTS[@]}"; do
    # The component that failed in detail; the others briefly, for context.
    [[ -f "$DIR/logs/$name.log" ]] || continue
    if [[ "$name" == "$CURRENT" ]]; then
      log "---- last lines of $DIR/logs/$name.log ----"
      tail -n 40 "$DIR/logs/$name.log" >&2
    fi
  done
  stop_all "$DIR"
  exit "$rc"
}

cmd_up() {
  local started=$SECONDS
  command -v openssl >/dev/null 2>&1 || { log "openssl is required (e.g. apt-get install openssl)"; exit 1; }

  if [[ -f "$DIR/pids" ]]; then
    local name pid
    while read -r name pid; do
      if [[ -n "${pid:-}" ]] && is_ours "$name" "$pid"; then
        log "a cluster is already running from $DIR ($name, pid $pid); run: $0 down $DIR"
        exit 1
      fi
    done <"$DIR/pids"
  fi

  BIN="$("$SCRIPT_DIR/build-control-plane.sh" | tail -n 1)"
  [[ -x "$BIN/kube-apiserver" ]] || { log "no control-plane binaries in '$BIN'"; exit 1; }

  # Always start from a clean state: leftovers of an earlier run (old certs,
  # etcd data) would not match the new ports.
  rm -rf "$DIR/pki" "$DIR/etcd" "$DIR/logs" "$DIR/pids" "$DIR/kubeconfig" \
    "$DIR/controller-manager.kubeconfig" "$DIR/env" "$DIR/flexvolume" \
    "$DIR/admission-config.yaml" "$DIR/webhook.kubeconfig"
  mkdir -p "$DIR/logs"
  : >"$DIR/pids"
  trap on_up_failure EXIT
  trap 'exit 130' INT TERM

  CURRENT=pki
  make_pki "$DIR/pki"
  local pki="$DIR/pki"

  local etcd_port etcd_peer_port api_port kcm_port
  free_port etcd_port
  free_port etcd_peer_port
  free_port api_port
  free_port kcm_port
  local api_url="https://127.0.0.1:$api_port"
  local etcd_url="http://127.0.0.1:$etcd_port"

  write_kubeconfig "$DIR/kubeconfig" "$api_url" "$pki" admin
  write_kubeconfig "$DIR/controller-manager.kubeconfig" "$api_url" "$pki" controller-manager
  write_admission_config "$DIR" "$pki"

  # etcd: single member, plain http on loopback. No fsync: the data is thrown
  # away after the run and fsync dominates write latency on CI disks.
  start etcd \
    --name=e2e \
    --data-dir="$DIR/etcd" \
    --listen-client-urls="$etcd_url" \
    --advertise-client-urls="$etcd_url" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster="e2e=http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster-state=new \
    --unsafe-no-fsync \
    --log-level=warn
  wait_for etcd "etcd /health" etcd_healthy "$etcd_port"

  local -a node_args=()
  if [[ "${CLUSTER_NODE:-}" == 1 ]]; then
    node_args=(--enable-aggregator-routing=true --kubelet-preferred-address-types=InternalIP
      --kubelet-client-certificate="$pki/admin.crt" --kubelet-client-key="$pki/admin.key")
  fi
  # kube-apiserver. Admission: the default plugin set is kept; it already
  # includes MutatingAdmissionWebhook, ValidatingAdmissionWebhook,
  # ValidatingAdmissionPolicy and MutatingAdmissionPolicy (GA and on by
  # default since 1.36, served as admissionregistration.k8s.io/v1), so no
  # --runtime-config or --feature-gates is needed.
  # --endpoint-reconciler-type=none: the reconciler that publishes the
  # apiserver as the `kubernetes` Service's endpoint rejects a loopback
  # address, and nothing in this cluster reaches the apiserver through it.
  # An audit log of pod creations at Metadata level, which carries the audit annotations webhooks return
  # (secure-defaults' defaulted and would-default), for the tests that check them: $DIR/logs/audit.log.
  cat >"$DIR/audit-policy.yaml" <<'AUDIT'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    resources: [{group: "", resources: [pods]}]
    verbs: [create]
  - level: None
AUDIT
  local -a apiserver_args=(
    --audit-policy-file="$DIR/audit-policy.yaml"
    --audit-log-path="$DIR/logs/audit.log"
    --audit-log-maxsize=100
    --bind-address=127.0.0.1
    --advertise-address=127.0.0.1
    --secure-port="$api_port"
    --etcd-servers="$etcd_url"
    --tls-cert-file="$pki/apiserver.crt"
    --tls-private-key-file="$pki/apiserver.key"
    --client-ca-file="$pki/ca.crt"
    --authorization-mode=RBAC
    --service-account-issuer="$api_url"
    --service-account-key-file="$pki/sa.pub"
    --service-account-signing-key-file="$pki/sa.key"
    --service-cluster-ip-range=10.0.0.0/24
    --requestheader-client-ca-file="$pki/front-proxy-ca.crt"
    --requestheader-allowed-names=front-proxy-client
    --requestheader-username-headers=X-Remote-User
    --requestheader-group-headers=X-Remote-Group
    --requestheader-extra-headers-prefix=X-Remote-Extra-
    --proxy-client-cert-file="$pki/front-proxy-client.crt"
    --proxy-client-key-file="$pki/front-proxy-client.key"
    --allow-privileged=true
    --admission-control-config-file="$DIR/admission-config.yaml"
    --endpoint-reconciler-type=none
    --profiling=false
    "${node_args[@]}"
  )
  # Kept for start-apiserver, which restarts it after an outage with the same flags (and so the same port).
  printf '%s\0' "${apiserver_args[@]}" >"$DIR/kube-apiserver.args"
  start kube-apiserver "${apiserver_args[@]}"
  wait_for kube-apiserver "kube-apiserver /readyz" apiserver_ready

  # kube-controller-manager: runs the controllers that turn a Deployment into
  # a ReplicaSet and Pods and create namespaces' default ServiceAccounts.
  # Controllers that need nodes or a cloud simply have nothing to do.
  # --flex-volume-plugin-dir: the default is a system directory, which the
  # controller-manager would create on the host.
  start kube-controller-manager \
    --kubeconfig="$DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$DIR/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 \
    --secure-port="$kcm_port" \
    --controllers='*' \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$pki/sa.key" \
    --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" \
    --cluster-signing-key-file="$pki/ca.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --flex-volume-plugin-dir="$DIR/flexvolume" \
    --profiling=false
  wait_for kube-apiserver "namespace default" kubectl_admin get namespace default
  # The default ServiceAccount is created by the controller-manager: proof it
  # is up and talking to the apiserver.
  wait_for kube-controller-manager "serviceaccount default/default" \
    kubectl_admin -n default get serviceaccount default

  {
    printf 'KUBECONFIG=%q\n' "$DIR/kubeconfig"
    printf 'APISERVER_URL=%q\n' "$api_url"
    printf 'BIN=%q\n' "$BIN"
    printf 'CA_CERT=%q\n' "$pki/ca.crt"
    printf 'CA_KEY=%q\n' "$pki/ca.key"
    printf 'ETCD_URL=%q\n' "$etcd_url"
    printf 'WEBHOOK_CLIENT_CA=%q\n' "$pki/webhook-client-ca.crt"
  } >"$DIR/env"

  trap - EXIT INT TERM
  log "control plane up at $api_url in $((SECONDS - started))s (logs: $DIR/logs)"
  echo "export KUBECONFIG=$DIR/kubeconfig"
}

# ---------------------------------------------------------------------------
# An API server outage: stop and start kube-apiserver alone.

cmd_stop_apiserver() {
  local pid
  pid="$(pid_of kube-apiserver)"
  [[ -n "$pid" ]] && is_ours kube-apiserver "$pid" || { log "no kube-apiserver running from $DIR"; exit 1; }
  # Its line stays (a pid that is no longer ours is skipped by `down`); start-apiserver puts the new pid in
  # it, so `down` still stops the components in reverse start order.
  stop_one kube-apiserver "$pid"
}

cmd_start_apiserver() {
  local pid
  pid="$(pid_of kube-apiserver)"
  if [[ -n "$pid" ]] && is_ours kube-apiserver "$pid"; then
    log "kube-apiserver is already running from $DIR (pid $pid)"
    exit 1
  fi
  [[ -f "$DIR/kube-apiserver.args" ]] || { log "no $DIR/kube-apiserver.args: was the cluster started by this script?"; exit 1; }
  BIN="$(. "$DIR/env" && printf '%s' "$BIN")"
  local -a args=()
  mapfile -d '' args <"$DIR/kube-apiserver.args"
  # The stopped process may still hold its port for a moment (a large cache takes a while to let go): wait
  # for the port to be free, bounded, rather than fail to bind.
  local port="" arg deadline=$((SECONDS + 30))
  for arg in "${args[@]}"; do [[ "$arg" == --secure-port=* ]] && port="${arg#--secure-port=}"; done
  while [[ -n "$port" ]] && ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; do
    ((SECONDS < deadline)) || { log "port $port is still taken 30s after kube-apiserver stopped"; exit 1; }
    sleep 0.1
  done
  # Appended to its own log: the outage stays readable in one file.
  CURRENT=kube-apiserver
  log "starting kube-apiserver"
  setsid "$BIN/kube-apiserver" "${args[@]}" >>"$DIR/logs/kube-apiserver.log" 2>&1 </dev/null &
  awk -v pid="$!" '$1 == "kube-apiserver" { $2 = pid } { print }' "$DIR/pids" >"$DIR/pids.tmp"
  mv "$DIR/pids.tmp" "$DIR/pids"
  wait_for kube-apiserver "kube-apiserver /readyz" apiserver_ready
}

# ---------------------------------------------------------------------------

[[ $# -eq 2 ]] || usage
case "$1" in
  up)
    mkdir -p "$2"
    DIR="$(cd "$2" && pwd)"
    cmd_up
    ;;
  stop-apiserver)
    DIR="$(cd "$2" && pwd)"
    cmd_stop_apiserver
    ;;
  start-apiserver)
    DIR="$(cd "$2" && pwd)"
    cmd_start_apiserver
    ;;
  down)
    # Nothing to do for a directory that was never created.
    [[ -d "$2" ]] || exit 0
    DIR="$(cd "$2" && pwd)"
    if [[ -d "$DIR/node" ]]; then "$SCRIPT_DIR/node.sh" down "$DIR" || true; fi
    stop_all "$DIR"
    ;;
  *) usage ;;
esac
