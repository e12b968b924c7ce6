#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets (cargo-fuzz, libFuzzer, AddressSanitizer) for FUZZ_SECONDS each
# (default 60), or for FUZZ_RUNS executions from FUZZ_SEED: `make fuzz`, or `fuzz/run.sh [TARGET...]`. Installs
# cargo-fuzz if missing, cached by version outside the checkout. Uses the nightly toolchain when rustup has one;
# otherwise stable with RUSTC_BOOTSTRAP=1, which cargo-fuzz accepts for the -Z flags it needs (a fresh machine
# cannot download a nightly toolchain).
#
# Seeds come from fuzz/corpus/TARGET (kept in git); what the fuzzer finds goes to fuzz/target/corpus/TARGET,
# so runs build on each other without growing the repository. A crash stops the run, exits non-zero and leaves
# the input in fuzz/artifacts/TARGET/ with the command to reproduce it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARGO_FUZZ_VERSION="${CARGO_FUZZ_VERSION:-0.13.2}"
TOOLS="${HOME}/.cache/secure-defaults/tools/cargo-fuzz-${CARGO_FUZZ_VERSION}"
SECONDS_EACH="${FUZZ_SECONDS:-60}"
# FUZZ_RUNS=N (with FUZZ_SEED, default 1): a fixed number of executions from a fixed seed instead of a time limit,
# so a run on a fresh checkout (CI) does the same work every time and its result is reproducible.
RUNS="${FUZZ_RUNS:-}"
SEED="${FUZZ_SEED:-1}"
if [[ -n "$RUNS" ]]; then
  limit=(-runs="$RUNS" -seed="$SEED")
  what="$RUNS runs from seed $SEED"
else
  limit=(-max_total_time="$SECONDS_EACH")
  what="${SECONDS_EACH}s"
fi
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
mkdir -p target/logs "$BUILD_DIR"
# One run at a time per build directory: a second checkout building into it would replace a binary while it runs.
exec 9>"$BUILD_DIR/.run.lock"
if ! flock -n 9; then
  echo "another fuzz run uses $BUILD_DIR; waiting for it"
  flock 9
fi
for target in "${TARGETS[@]}"; do
  mkdir -p "target/corpus/$target"
  log="target/logs/$target.log"
  echo "fuzzing $target for $what (log: fuzz/$log)"
  # -timeout: one input taking 10 s is a hang worth reporting. -print_final_stats: the executions done.
  touch "target/logs/$target.start"
  status=0
  cargo "${toolchain[@]}" fuzz run -O --target-dir "$BUILD_DIR" "$target" "target/corpus/$target" "corpus/$target" -- \
    "${limit[@]}" -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^stat::(number_of_executed_units|new_units_added):' "$log" | sed "s/^/  $target /" || true
  if ((status != 0)); then
    # What went wrong (the panic or sanitizer report, which the statistics after it can push out of a short tail),
    # then the input itself, so that a failure in a throwaway checkout (CI) can be reproduced from its log alone.
    grep -n -m1 -E "panicked at|^==[0-9]+==ERROR|^ERROR: libFuzzer" "$log" | cut -d: -f1 | while read -r first; do
      sed -n "$((first > 5 ? first - 5 : 1)),$((first + 40))p" "$log" >&2
    done
    tail -n 20 "$log" >&2
    find "artifacts/$target" -type f -newer "target/logs/$target.start" | while read -r input; do
      echo "input $input ($(wc -c <"$input") bytes), base64 (decode with base64 -d):" >&2
      head -c 65536 "$input" | base64 -w 120 >&2
    done
    echo "fuzz target $target failed (exit $status); the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
