#!/usr/bin/env bash
# Checks that a running peer (bench/peers/start.sh) applies the same defaulting
# as secure-defaults' shipped policy, on pods really created (not dry-run) and
# read back as the apiserver stored them:
#
#   bench/peers/verify.sh kyverno|gatekeeper KUBECONFIG
#
#   1. a pod with no securityContext gets runAsUser, runAsGroup, fsGroup = 65532,
#      fsGroupChangePolicy = OnRootMismatch and allowPrivilegeEscalation = false;
#   2. values the pod states (runAsUser: 1000, a container's
#      allowPrivilegeEscalation: true) are kept, the missing ones are added;
#   3. every init container gets allowPrivilegeEscalation = false, whether it has
#      a securityContext or not, keeps the rest of its securityContext, and one
#      that states the field keeps it; nothing is reordered;
#   4. a pod in a namespace without the peer's label is left alone.
#
# Uses namespaces peers-verify-<peer> (labelled) and peers-verify-<peer>-off
# (not), deleted at the end. Prints one line per check; exits 1 if any fails.
set -euo pipefail

PEERS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG=peers-verify
# shellcheck source=common.sh
. "$PEERS_DIR/common.sh"

usage() { echo "usage: $0 kyverno|gatekeeper KUBECONFIG" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
PEER="$1"
case "$PEER" in kyverno | gatekeeper) ;; *) usage ;; esac
[[ -r "$2" ]] || die "cannot read kubeconfig $2"
KUBECONFIG_FILE="$2"
resolve_kubectl

NS="peers-verify-$PEER"
NS_OFF="peers-verify-$PEER-off"
cleanup() { kc delete namespace "$NS" "$NS_OFF" --ignore-not-found --wait=false >/dev/null 2>&1 || true; }
trap cleanup EXIT
ensure_namespace "$NS" "$PEER_LABEL_KEY=$PEER"
ensure_namespace "$NS_OFF"

FAILED=0
# <what> <expected> <actual>
check() {
  if [[ "$2" == "$3" ]]; then
    printf 'ok    %s\n' "$1"
  else
    printf 'FAIL  %s\n        expected: %s\n        stored:   %s\n' "$1" "$2" "$3"
    FAILED=1
  fi
}

# Create <pod json> in <namespace> and print the stored object's fields
# selected by <jsonpath>. `kubectl create -o` shows what the apiserver stored,
# i.e. after every mutating webhook.
create() { # <namespace> <jsonpath> <pod json>
  kc -n "$1" create -o "jsonpath=$2" -f - <<<"$3"
}

POD_FIELDS='{.spec.securityContext.runAsUser},{.spec.securityContext.runAsGroup},{.spec.securityContext.fsGroup},{.spec.securityContext.fsGroupChangePolicy}'
apes() { # jsonpath listing name=allowPrivilegeEscalation for <containers|initContainers>
  echo "{range .spec.$1[*]}{.name}={.securityContext.allowPrivilegeEscalation} {end}"
}

# 1. Nothing stated.
got="$(create "$NS" "$POD_FIELDS|$(apes containers)" '{"apiVersion":"v1","kind":"Pod",
  "metadata":{"name":"plain"},
  "spec":{"containers":[{"name":"app","image":"registry.k8s.io/pause:3.10"}]}}')"
check "1 plain pod: pod-level fields" "65532,65532,65532,OnRootMismatch" "${got%%|*}"
check "1 plain pod: container allowPrivilegeEscalation" "app=false " "${got#*|}"

# 2. Stated values win.
got="$(create "$NS" "$POD_FIELDS|$(apes containers)" '{"apiVersion":"v1","kind":"Pod",
  "metadata":{"name":"stated"},
  "spec":{"securityContext":{"runAsUser":1000},
    "containers":[{"name":"app","image":"registry.k8s.io/pause:3.10","securityContext":{"allowPrivilegeEscalation":true}},
                  {"name":"sidecar","image":"registry.k8s.io/pause:3.10"}]}}')"
check "2 stated runAsUser kept, rest added" "1000,65532,65532,OnRootMismatch" "${got%%|*}"
check "2 stated allowPrivilegeEscalation kept, other container defaulted" "app=true sidecar=false " "${got#*|}"

# 3. Init containers, with and without a securityContext of their own, one stating the field; and containers
#    in the other order from case 2 (the field absent first, stated second). Checked in order: the order of
#    init containers is the order they run in, so a mutation must not reorder them.
got="$(create "$NS" "$(apes initContainers)|{.spec.initContainers[2].securityContext.readOnlyRootFilesystem}|$(apes containers)" \
  '{"apiVersion":"v1","kind":"Pod",
  "metadata":{"name":"init"},
  "spec":{"initContainers":[{"name":"init-a","image":"registry.k8s.io/pause:3.10"},
                            {"name":"init-b","image":"registry.k8s.io/pause:3.10","securityContext":{"allowPrivilegeEscalation":true}},
                            {"name":"init-c","image":"registry.k8s.io/pause:3.10","securityContext":{"readOnlyRootFilesystem":true}}],
    "containers":[{"name":"plain","image":"registry.k8s.io/pause:3.10"},
                  {"name":"stated","image":"registry.k8s.io/pause:3.10","securityContext":{"allowPrivilegeEscalation":true}}]}}')"
IFS='|' read -r init_apes init_rorfs app_apes <<<"$got"
check "3 init containers defaulted, stated one kept, order kept" "init-a=false init-b=true init-c=false " "$init_apes"
check "3 an init container's own securityContext is kept" "true" "$init_rorfs"
check "3 containers (absent first, stated second): defaulted, kept, order kept" "plain=false stated=true " "$app_apes"

# 4. Out of scope.
got="$(create "$NS_OFF" "$POD_FIELDS|$(apes containers)" '{"apiVersion":"v1","kind":"Pod",
  "metadata":{"name":"plain"},
  "spec":{"containers":[{"name":"app","image":"registry.k8s.io/pause:3.10"}]}}')"
check "4 unlabelled namespace: untouched" ",,,|app= " "$got"

if ((FAILED)); then
  log "$PEER: some checks FAILED"
  exit 1
fi
log "$PEER: all checks passed"
