#!/usr/bin/env bash
# Stops a peer started by bench/peers/start.sh and removes the webhook
# configuration(s) that point at it, so the apiserver stops calling a dead
# address. Idempotent: safe to run when nothing is running.
#
#   bench/peers/stop.sh kyverno|gatekeeper WORKDIR KUBECONFIG
#
# Left in place on purpose (cheap to keep, slow to re-create): the CRDs, the
# peer's namespace with its Secrets/ConfigMaps, and its policy (which has no
# effect without the webhook). The probe namespace is deleted. Set
# PEER_STOP_KEEP_WEBHOOKS=1 to only stop the process (e.g. to time an outage).
set -euo pipefail

PEERS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG=peers-stop
# shellcheck source=common.sh
. "$PEERS_DIR/common.sh"

usage() { echo "usage: $0 kyverno|gatekeeper WORKDIR KUBECONFIG" >&2; exit 2; }
[[ $# -eq 3 ]] || usage
PEER="$1"
case "$PEER" in kyverno | gatekeeper) ;; *) usage ;; esac
WORKDIR="$2"
[[ -r "$3" ]] || die "cannot read kubeconfig $3"
KUBECONFIG_FILE="$3"

# --- The process ------------------------------------------------------------
if [[ -f "$WORKDIR/pid" && -f "$WORKDIR/env" ]]; then
  pid="$(cat "$WORKDIR/pid")"
  # shellcheck source=/dev/null # written by start.sh
  bin="$(. "$WORKDIR/env" && printf '%s' "$BIN")"
  if is_ours "$pid" "$bin"; then
    log "stopping $PEER (pid $pid)"
    # start.sh ran it under setsid: signal its whole process group.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 15))
    while is_ours "$pid" "$bin"; do
      if ((SECONDS >= deadline)); then
        log "killing $PEER (still running 15s after TERM)"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
        break
      fi
      sleep 0.1
    done
  else
    log "$PEER (pid $pid) is not running"
  fi
  rm -f "$WORKDIR/pid"
else
  log "no $PEER started from $WORKDIR"
fi

# --- The cluster side ---------------------------------------------------------
# After the process is gone: Kyverno re-creates its webhook configurations
# while it runs.
if [[ "${PEER_STOP_KEEP_WEBHOOKS:-}" != 1 ]]; then
  resolve_kubectl
  if kc get --raw /readyz >/dev/null 2>&1; then
    log "deleting $PEER webhook configuration(s)"
    delete_webhooks "$PEER"
    kc delete namespace "$(probe_namespace "$PEER")" --ignore-not-found --wait=false >/dev/null
  else
    log "the apiserver is not reachable: webhook configurations left as they are"
  fi
fi
