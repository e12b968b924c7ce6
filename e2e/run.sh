#!/usr/bin/env bash
# Runs the end-to-end suite: starts a local control plane (building it on first use), runs the e2e tests
# against it with the real secure-defaults binary, and always tears the control plane down.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$(mktemp -d "${TMPDIR:-/tmp}/secure-defaults-e2e.XXXXXX")"

cleanup() {
  local status=$?
  "$ROOT/e2e/cluster.sh" down "$DIR" || true
  if [[ $status -ne 0 && -d "$DIR/logs" ]]; then
    for log in "$DIR"/logs/*.log; do
      echo "---- last lines of $log ----" >&2
      tail -n 30 "$log" >&2 || true
    done
  fi
  rm -rf "$DIR"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$ROOT/e2e/cluster.sh" up "$DIR"
export E2E_CLUSTER_DIR="$DIR"
cd "$ROOT"
cargo test --locked --test e2e -- --test-threads="${E2E_THREADS:-3}" "$@"
# Tests that disturb the control plane itself (an API server outage) are #[ignore]d, so that they never run
# beside the others, and run here alone, one at a time, once the others are done. E2E_IGNORED=0 leaves them out
# (make test-compat, where they prove nothing release-specific and take five minutes).
if [[ "${E2E_IGNORED:-1}" != 0 ]]; then
  cargo test --locked --test e2e -- --ignored --test-threads=1 "$@"
fi
