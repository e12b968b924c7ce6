# shellcheck shell=bash
# Shared by bench/peers/start.sh, stop.sh and verify.sh (sourced, not run).
# Expects PEERS_DIR (this directory) and LOG_TAG to be set by the caller.

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The namespace label each peer's policy selects (see the comment at the top of
# kyverno/policy.yaml and gatekeeper/assign.yaml): one value per peer, so both
# can run against one control plane, each timed in its own namespaces.
# shellcheck disable=SC2034 # used by the scripts that source this file
PEER_LABEL_KEY=bench.secure-defaults.io/peer

# A dry-run pod create in this namespace is how start.sh proves the peer mutates.
probe_namespace() { echo "peers-probe-$1"; }

# kubectl matching the local control plane (the one e2e/cluster.sh runs, from
# e2e/build-control-plane.sh's cache; a cached build returns at once), unless
# KUBECTL names another. A distribution's kubectl may be several minor
# versions older than the apiserver.
resolve_kubectl() {
  if [[ -n "${KUBECTL:-}" ]]; then
    command -v "$KUBECTL" >/dev/null 2>&1 || die "KUBECTL=$KUBECTL is not executable"
    return
  fi
  local bin
  bin="$("$PEERS_DIR/../../e2e/build-control-plane.sh" | tail -n 1)" ||
    die "cannot get kubectl from e2e/build-control-plane.sh (or set KUBECTL)"
  KUBECTL="$bin/kubectl"
  [[ -x "$KUBECTL" ]] || die "no kubectl at $KUBECTL"
}

kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" --request-timeout=30s "$@"; }

# Create namespace <name> unless it exists, and set <label>. stop.sh and
# verify.sh delete their namespaces without waiting, so a quick rerun can find
# one still Terminating (pods cannot be created in it): wait for it to go first.
ensure_namespace() { # <name> [<label>=<value>]
  local phase
  phase="$(kc get namespace "$1" -o 'jsonpath={.status.phase}' 2>/dev/null)" || phase=""
  if [[ "$phase" == Terminating ]]; then
    log "namespace $1 is still being deleted; waiting"
    kc wait --for=delete "namespace/$1" --timeout=120s >/dev/null 2>&1 || true
    phase=""
  fi
  if [[ -z "$phase" ]]; then
    kc create namespace "$1" >/dev/null
  fi
  if [[ -n "${2:-}" ]]; then kc label namespace "$1" "$2" --overwrite >/dev/null; fi
}

# Is <pid> still the peer binary <bin> (a full path)? Guards against signalling
# an unrelated process that reused a stale pid.
is_ours() { # <pid> <bin>
  local exe
  exe="$(readlink "/proc/$1/exe" 2>/dev/null)" || return 1
  # A rebuild (build.sh swaps the directory) leaves the running binary deleted.
  [[ "${exe% (deleted)}" == "$2" ]]
}

# The peer's MutatingWebhookConfigurations (and Kyverno's validating ones):
# what must go when the peer stops, or the apiserver keeps calling a dead
# address (with failurePolicy Fail, pod creates in labelled namespaces fail).
delete_webhooks() { # <peer>
  case "$1" in
    gatekeeper)
      kc delete mutatingwebhookconfiguration bench-peers-gatekeeper --ignore-not-found >&2
      ;;
    kyverno)
      # Kyverno creates and owns its webhook configurations (it labels them);
      # outside a cluster there is no ClusterRole to garbage-collect them by.
      kc delete mutatingwebhookconfigurations,validatingwebhookconfigurations \
        -l webhook.kyverno.io/managed-by=kyverno --ignore-not-found >&2
      ;;
  esac
}
