#!/usr/bin/env bash
# Adds a real node to a control plane started by e2e/cluster.sh: containerd (Debian's, with runc), a
# bridge CNI network, kube-scheduler and a kubelet, all confined to DIR/node and torn down by `down`.
#
#   e2e/node.sh up DIR     after `e2e/cluster.sh up DIR` (with CLUSTER_NODE=1, see below)
#   e2e/node.sh down DIR   stop what `up` started and remove its mounts, interfaces, iptables rules and
#                          cgroups (idempotent; e2e/cluster.sh down runs it first)
#
# What it sets up, and why it leaves the host as it found it:
#   - containerd with root, state, socket and runc root under DIR/node; the pause image is built here from
#     Kubernetes' own pause.c (no registry), imported with the test images (e2e/node-images.sh).
#   - a bridge sd-node0 (10.234.0.1/24) made by this script; CNI's bridge plugin attaches pods to it with
#     host-local addresses, no gateway mode and no masquerading, so it changes no host sysctl.
#   - the `kubernetes` Service (10.0.0.1:443) reaches the loopback apiserver through one DNAT rule in our own
#     nat chain SD-NODE for packets entering sd-node0, and route_localnet on sd-node0 only (the interface,
#     and the setting with it, vanish in `down`). No kube-proxy: the apiserver runs with
#     --enable-aggregator-routing=true and calls webhook Services at their endpoints.
#   - the kubelet runs with protectKernelDefaults: true, so it never writes a kernel sysctl. As the host's
#     values differ from the ones it insists on, it runs in its own mount namespace where those six
#     /proc/sys files are replaced by read-only copies holding the kubelet's values; the real sysctls are
#     untouched. DIR/node is a shared mount, so the volume mounts it makes reach containerd.
#   - cgroups (cgroupfs driver, cgroup v1 with failCgroupV1: false) under /sd-node-e2e only.
# The kubelet and the apiserver authenticate each other with the control plane's CA; the kubelet's client
# certificate is in system:masters (this cluster has RBAC only, no Node authorizer).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
UP_TIMEOUT="${CLUSTER_UP_TIMEOUT:-180}"
BRIDGE=sd-node0
BRIDGE_CIDR=10.234.0.1/24
POD_SUBNET=10.234.0.0/24
NODE_IP=10.234.0.1
CGROUP_ROOT=sd-node-e2e
NAT_CHAIN=SD-NODE
NODE_NAME=sd-node

log() { printf '[node] %s\n' "$*" >&2; }
usage() { echo "usage: $0 up|down DIR" >&2; exit 2; }

is_ours() { # <name> <pid>
  local cmdline
  [[ -r "/proc/$2/cmdline" ]] || return 1
  cmdline="$(tr '\0' ' ' <"/proc/$2/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *"/$1 "* || "$cmdline" == *"/$1" ]]
}

start() { # <name> <cmd...>
  local name="$1"; shift
  log "starting $name"
  setsid "$@" >"$NODE/logs/$name.log" 2>&1 </dev/null &
  echo "$name $!" >>"$NODE/pids"
}

pid_of() { awk -v n="$1" '$1 == n { print $2 }' "$NODE/pids"; }

wait_for() { # <name> <what> <check...>
  local name="$1" what="$2"; shift 2
  local pid deadline=$((SECONDS + UP_TIMEOUT))
  pid="$(pid_of "$name")"
  until ("$@") >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$name exited while waiting for $what; last lines of $NODE/logs/$name.log:"
      tail -n 30 "$NODE/logs/$name.log" >&2
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "timed out after ${UP_TIMEOUT}s waiting for $what; last lines of $NODE/logs/$name.log:"
      tail -n 30 "$NODE/logs/$name.log" >&2
      return 1
    fi
    sleep 0.3
  done
  log "$what: ok"
}

free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
  done
}

kubectl_admin() { "$BIN/kubectl" --kubeconfig "$DIR/kubeconfig" --request-timeout=5s "$@"; }
ctr_node() { ctr --address "$NODE/run/containerd.sock" -n k8s.io "$@"; }

# ---------------------------------------------------------------------------
# down

# Mount points under <dir>, deepest first.
mounts_under() { # <dir>
  awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r | uniq
}

stop_pid() { # <name> <pid>
  local deadline=$((SECONDS + 15))
  log "stopping $1 (pid $2)"
  kill -TERM "$2" 2>/dev/null || true
  while is_ours "$1" "$2"; do
    if ((SECONDS >= deadline)); then
      log "killing $1 (still running 15s after TERM)"
      kill -KILL -- "-$2" 2>/dev/null || kill -KILL "$2" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
}

cmd_down() {
  local name pid id
  if [[ -f "$NODE/pids" ]]; then
    pid="$(pid_of kubelet)"
    if [[ -n "$pid" ]] && is_ours kubelet "$pid" && kubectl_admin get --raw /readyz >/dev/null 2>&1; then
      # Let the kubelet stop every pod the way it does in production (CNI teardown included): remove
      # the controllers that would replace them, static pods' manifests, then the pods.
      rm -f "$NODE"/manifests/*
      kubectl_admin delete deployments,replicasets,daemonsets,statefulsets,jobs --all --all-namespaces \
        --wait=false >/dev/null 2>&1 || true
      kubectl_admin delete pods --all --all-namespaces --grace-period=1 --wait=false >/dev/null 2>&1 || true
      local deadline=$((SECONDS + 60))
      while [[ -n "$(ctr_node tasks ls -q 2>/dev/null)" ]] && ((SECONDS < deadline)); do sleep 0.3; done
      [[ -z "$(ctr_node tasks ls -q 2>/dev/null)" ]] || log "pods still running after 60s; stopping them with ctr"
    fi
    # The kubelet first, while containerd can still stop what it started.
    for name in kubelet kube-scheduler; do
      pid="$(pid_of "$name")"
      [[ -n "$pid" ]] && is_ours "$name" "$pid" && stop_pid "$name" "$pid"
    done
    pid="$(pid_of containerd)"
    if [[ -n "$pid" ]] && is_ours containerd "$pid"; then
      # The network namespaces of what is left, to remove once their tasks are gone.
      for id in $(ctr_node containers ls -q 2>/dev/null || true); do
        ctr_node containers info "$id" 2>/dev/null | grep -o '/var/run/netns/cni-[0-9a-f-]*' || true
      done | sed 's#.*/##' | sort -u >>"$NODE/netns"
      # Every pod sandbox and container this containerd runs: stop the tasks (their shims then exit),
      # then let the CRI plugin tear the sandboxes' networks down by removing them.
      local ids id
      ids="$(ctr_node tasks ls -q 2>/dev/null || true)"
      for id in $ids; do ctr_node tasks kill -s KILL "$id" >/dev/null 2>&1 || true; done
      for id in $ids; do
        local deadline=$((SECONDS + 15))
        until ctr_node tasks delete "$id" >/dev/null 2>&1 || ! ctr_node tasks ls -q | grep -qx "$id"; do
          ((SECONDS < deadline)) || break
          sleep 0.2
        done
      done
      if [[ -x "$NODE/bin/crictl" ]]; then
        "$NODE/bin/crictl" --runtime-endpoint "unix://$NODE/run/containerd.sock" rmp -af >/dev/null 2>&1 || true
      fi
      stop_pid containerd "$pid"
    fi
    rm -f "$NODE/pids"
  fi
  # Shims left by an interrupted run (their command line names our containerd's address).
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $NODE/run/containerd.sock" || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  local m ns p
  for m in $(mounts_under "$NODE"); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  if [[ -f "$NODE/netns" ]]; then
    while read -r ns; do
      [[ -e "/var/run/netns/$ns" ]] || continue
      umount "/var/run/netns/$ns" 2>/dev/null || true
      rm -f "/var/run/netns/$ns"
    done <"$NODE/netns"
  fi
  # Network: our nat chain, then the bridge (veths of removed pods are gone with their namespaces).
  if iptables -t nat -S "$NAT_CHAIN" >/dev/null 2>&1; then
    while iptables -t nat -D PREROUTING -i "$BRIDGE" -j "$NAT_CHAIN" 2>/dev/null; do :; done
    iptables -t nat -F "$NAT_CHAIN"
    iptables -t nat -X "$NAT_CHAIN"
  fi
  ip link del "$BRIDGE" 2>/dev/null || true
  # Host paths: the kubelet's symlinks to our pods' logs, CNI's cached results for our network, and
  # whichever of HOST_PATHS did not exist before `up`.
  find /var/log/containers -maxdepth 1 -type l -lname "$NODE/*" -delete 2>/dev/null || true
  rm -f /var/lib/cni/results/sd-node-* 2>/dev/null || true
  if [[ -f "$NODE/host-paths" ]]; then
    while read -r p; do rm -rf "$p"; done <"$NODE/host-paths"
    rm -f "$NODE/host-paths"
  fi
  # cgroups the kubelet made under our root, deepest first, in every hierarchy.
  local h
  for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [[ -d "$h$CGROUP_ROOT" ]] || continue
    find "$h$CGROUP_ROOT" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

# ---------------------------------------------------------------------------
# up

HOST_PATHS=(/var/lib/kubelet /var/log/containers /run/containerd /var/lib/cni)
KUBELET_SYSCTLS=(vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1
  kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000)

cmd_up() {
  local started=$SECONDS
  [[ -f "$DIR/env" ]] || { log "no control plane in $DIR: run e2e/cluster.sh up $DIR first"; exit 1; }
  # shellcheck disable=SC1091
  source "$DIR/env"
  local b
  for b in containerd runc ctr iptables ip unshare; do
    command -v "$b" >/dev/null || { log "$b is required (apt-get install containerd runc containernetworking-plugins iptables)"; exit 1; }
  done
  [[ -x /usr/lib/cni/bridge ]] || { log "CNI plugins missing (apt-get install containernetworking-plugins)"; exit 1; }
  if ip link show "$BRIDGE" >/dev/null 2>&1; then log "$BRIDGE exists: another node is running (or run: $0 down DIR)"; exit 1; fi

  NODE_BIN="$("$SCRIPT_DIR/build-node.sh" | tail -n 1)"
  local images
  images="$("$SCRIPT_DIR/node-images.sh" | tail -n 1)"

  rm -rf "$NODE"
  mkdir -p "$NODE"/{logs,run,pki,cni/net.d,cni/ipam,manifests,sysctl,containerd,kubelet,pod-logs}
  # Host paths the kubelet, containerd and CNI use whatever they are configured with: those that do not
  # exist yet are ours to remove in `down`.
  local p
  for p in "${HOST_PATHS[@]}"; do [[ -e "$p" ]] || echo "$p" >>"$NODE/host-paths"; done
  : >"$NODE/pids"
  trap 'rc=$?; trap - EXIT; if ((rc != 0)); then log "up failed (exit $rc)"; cmd_down; fi; exit $rc' EXIT
  trap 'exit 130' INT TERM

  # Our cgroup root, in every hierarchy (the kubelet creates its cgroups below it, not in it).
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ -e "${h}cgroup.procs" ]] || continue
    mkdir -p "$h$CGROUP_ROOT"
    if [[ -e "${h}cpuset.cpus" ]]; then
      cat "${h}cpuset.cpus" >"$h$CGROUP_ROOT/cpuset.cpus"
      cat "${h}cpuset.mems" >"$h$CGROUP_ROOT/cpuset.mems"
    fi
  done
  # DIR/node as a shared mount: mounts the kubelet makes in its namespace propagate to the host's.
  mount --bind "$NODE" "$NODE"
  mount --make-shared "$NODE"

  # Network.
  ip link add "$BRIDGE" type bridge
  ip addr add "$BRIDGE_CIDR" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  echo 1 >"/proc/sys/net/ipv4/conf/$BRIDGE/route_localnet"
  local api_port="${APISERVER_URL##*:}"
  iptables -t nat -N "$NAT_CHAIN"
  iptables -t nat -A "$NAT_CHAIN" -d 10.0.0.1/32 -p tcp --dport 443 -j DNAT --to-destination "127.0.0.1:$api_port"
  iptables -t nat -A PREROUTING -i "$BRIDGE" -j "$NAT_CHAIN"
  cat >"$NODE/cni/net.d/10-sd-node.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "sd-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE/cni/ipam",
        "ranges": [[{ "subnet": "$POD_SUBNET", "rangeStart": "10.234.0.10", "gateway": "$NODE_IP" }]],
        "routes": [{ "dst": "0.0.0.0/0", "gw": "$NODE_IP" }]
      }
    },
    { "type": "loopback" }
  ]
}
JSON

  # containerd.
  cat >"$NODE/containerd/config.toml" <<TOML
version = 2
root = "$NODE/containerd/root"
state = "$NODE/containerd/state"
plugin_dir = ""
disabled_plugins = ["io.containerd.grpc.v1.introspection-service-unused", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$NODE/run/containerd.sock"
[ttrpc]
  address = "$NODE/run/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:e2e"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$NODE/run/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE/cni/net.d"
  # Per-registry hosts.toml files (the node suite's local plain-HTTP registry writes one), read on each pull.
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$NODE/containerd/certs.d"
TOML
  start containerd "$(command -v containerd)" --config "$NODE/containerd/config.toml" --log-level warn
  wait_for containerd "containerd socket" ctr_node version
  local tar
  for tar in "$images"/*.tar; do
    ctr_node images import "$tar" >>"$NODE/logs/import.log" 2>&1
  done
  log "images: $(ctr_node images ls -q | grep -v '^sha256:' | tr '\n' ' ')"

  # The kubelet: a client certificate for the apiserver, and the kernel values it expects, shown to it only.
  local pki="$DIR/pki"
  openssl ecparam -name prime256v1 -genkey -noout -out "$NODE/pki/kubelet-client.key" 2>/dev/null
  openssl req -new -key "$NODE/pki/kubelet-client.key" -subj "/O=system:masters/CN=system:node:$NODE_NAME" \
    -out "$NODE/pki/kubelet-client.csr" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >"$NODE/pki/client.ext"
  openssl x509 -req -in "$NODE/pki/kubelet-client.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 2 -sha256 -extfile "$NODE/pki/client.ext" \
    -out "$NODE/pki/kubelet-client.crt" 2>/dev/null
  cat >"$NODE/kubelet.kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "$APISERVER_URL", certificate-authority: "$pki/ca.crt"}
users:
- name: kubelet
  user: {client-certificate: "$NODE/pki/kubelet-client.crt", client-key: "$NODE/pki/kubelet-client.key"}
contexts:
- name: e2e
  context: {cluster: e2e, user: kubelet}
current-context: e2e
YAML
  local kubelet_port healthz_port
  kubelet_port="$(free_port)"
  healthz_port="$(free_port)"
  cat >"$NODE/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
cgroupsPerQOS: true
protectKernelDefaults: true
makeIPTablesUtilChains: false
failSwapOn: false
address: $NODE_IP
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://$NODE/run/containerd.sock
staticPodPath: $NODE/manifests
podLogsDir: $NODE/pod-logs
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
syncFrequency: 5s
fileCheckFrequency: 5s
nodeStatusUpdateFrequency: 5s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
localStorageCapacityIsolation: false
YAML
  local s binds=""
  for s in "${KUBELET_SYSCTLS[@]}"; do
    local f="$NODE/sysctl/${s%%=*}"
    mkdir -p "$(dirname "$f")"
    echo "${s#*=}" >"$f"
    binds+="mount --bind -o ro '$f' '/proc/sys/${s%%=*}' && "
  done
  start kubelet unshare --mount --propagation unchanged -- /bin/sh -c \
    "${binds}exec \"\$0\" \"\$@\"" "$NODE_BIN/kubelet" \
    --config="$NODE/kubelet.yaml" \
    --kubeconfig="$NODE/kubelet.kubeconfig" \
    --root-dir="$NODE/kubelet" \
    --cert-dir="$NODE/pki" \
    --hostname-override="$NODE_NAME" \
    --node-ip="$NODE_IP" \
    --v=1
  start kube-scheduler "$NODE_BIN/kube-scheduler" \
    --kubeconfig="$DIR/kubeconfig" \
    --authentication-kubeconfig="$DIR/kubeconfig" \
    --authorization-kubeconfig="$DIR/kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$(free_port)" --leader-elect=false
  wait_for kubelet "node $NODE_NAME Ready" \
    kubectl_admin wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
  cat >"$NODE/env" <<ENV
NODE_NAME=$NODE_NAME
NODE_BIN=$NODE_BIN
NODE_DIR=$NODE
NODE_IMAGES=$images
NODE_IP=$NODE_IP
ENV
  trap - EXIT INT TERM
  log "node $NODE_NAME Ready in $((SECONDS - started))s (logs: $NODE/logs)"
}

[[ $# -eq 2 ]] || usage
[[ $(id -u) == 0 ]] || { log "needs root (mounts, a bridge, iptables, cgroups)"; exit 1; }
case "$1" in
  up) mkdir -p "$2"; DIR="$(cd "$2" && pwd)"; NODE="$DIR/node"; cmd_up ;;
  down) [[ -d "$2" ]] || exit 0; DIR="$(cd "$2" && pwd)"; NODE="$DIR/node"; source "$DIR/env" 2>/dev/null || true; cmd_down ;;
  *) usage ;;
esac
