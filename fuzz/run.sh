#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets (cargo-fuzz, libFuzzer, AddressSanitizer) for FUZZ_SECONDS each
# (default 60): `make fuzz`, or `fuzz/run.sh [TARGET...]`. Installs cargo-fuzz if missing, cached by version
# outside the checkout. Uses the nightly toolchain when rustup has one; otherwise stable with RUSTC_BOOTSTRAP=1,
# which cargo-fuzz accepts for the -Z flags it needs (a fresh machine cannot download a nightly toolchain).
#
# Seeds come from fuzz/corpus/TARGET (kept in git); what the fuzzer finds goes to fuzz/target/corpus/TARGET,
# so runs build on each other without growing the repository. A crash stops the run, exits non-zero and leaves
# the input in fuzz/artifacts/TARGET/ with the command to reproduce it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARGO_FUZZ_VERSION="${CARGO_FUZZ_VERSION:-0.13.2}"
TOOLS="${HOME}/.cache/secure-defaults/tools/cargo-fuzz-${CARGO_FUZZ_VERSION}"
SECONDS_EACH="${FUZZ_SECONDS:-60}"
# The instrumented build (every dependency under AddressSanitizer) is kept outside the checkout, so a fresh clone
# (CI) reuses it instead of rebuilding for many minutes.
BUILD_DIR="${FUZZ_TARGET_DIR:-${HOME}/.cache/secure-defaults/fuzz-target}"
ALL_TARGETS=(admission policy mutate_input)
if (($#)); then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

if [[ ! -x "$TOOLS/bin/cargo-fuzz" ]]; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS"
  cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION" --root "$TOOLS"
fi
export PATH="$TOOLS/bin:$PATH"

toolchain=()
if command -v rustup >/dev/null 2>&1 && rustup toolchain list | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  echo "no nightly toolchain: fuzzing with stable and RUSTC_BOOTSTRAP=1"
  export RUSTC_BOOTSTRAP=1
fi

cd "$ROOT/fuzz"
mkdir -p target/logs
for target in "${TARGETS[@]}"; do
  mkdir -p "target/corpus/$target"
  log="target/logs/$target.log"
  echo "fuzzing $target for ${SECONDS_EACH}s (log: fuzz/$log)"
  # -timeout: one input taking 10 s is a hang worth reporting. -print_final_stats: the executions done.
  status=0
  cargo "${toolchain[@]}" fuzz run -O --target-dir "$BUILD_DIR" "$target" "target/corpus/$target" "corpus/$target" -- \
    -max_total_time="$SECONDS_EACH" -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^stat::(number_of_executed_units|new_units_added):' "$log" | sed "s/^/  $target /" || true
  if ((status != 0)); then
    tail -n 60 "$log" >&2
    echo "fuzz target $target failed (exit $status); the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
