#!/usr/bin/env bash
# Renders manifests/install.yaml from the chart (`make manifests` writes it; the e2e suite checks it is
# current): opt-in mode, self-managed certificates, the backstop, in namespace secure-defaults, which it
# creates. Prints the YAML on stdout. HELM names the helm binary (default: built by e2e/build-helm.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELM="${HELM:-$("$ROOT/e2e/build-helm.sh" | tail -1)}"
cat <<'HEADER'
# secure-defaults, opt-in mode with self-managed certificates: only namespaces labelled
# secure-defaults.io/inject=enabled are defaulted, and the server issues and rotates its own certificate.
#   kubectl apply -f manifests/install.yaml
#   kubectl label namespace my-app secure-defaults.io/inject=enabled
# Generated from the Helm chart manifests/chart/secure-defaults by `make manifests`: do not edit. Other
# modes and options: `helm install` (see the chart's values.yaml), or the kustomize overlays in manifests/.
HEADER
cd "$ROOT"
HELM_CONFIG_HOME=/nonexistent HELM_CACHE_HOME="${TMPDIR:-/tmp}" HELM_DATA_HOME=/nonexistent \
  "$HELM" template secure-defaults manifests/chart/secure-defaults \
  --namespace secure-defaults --set namespace.create=true
