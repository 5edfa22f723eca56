#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo fuzz, libFuzzer) for SECONDS each (default 20).
#
#   scripts/fuzz.sh [SECONDS]
#
# Each target starts from the committed seeds (fuzz/seeds/<target>/), the inputs that once
# failed (tests/fuzz-seeds/<target>/) and what earlier runs on this machine found
# (fuzz/corpus/<target>/, not committed). Fails if any target fails; the input is left in
# fuzz/artifacts/<target>/ (reproduce with `RUSTC_BOOTSTRAP=1 cargo fuzz run -s none TARGET FILE`);
# keep it in tests/fuzz-seeds/<target>/ with a test in tests/fuzz_regressions.rs.
# cargo fuzz needs nightly compiler flags (coverage instrumentation): RUSTC_BOOTSTRAP=1 lets the
# stable toolchain take them. The targets are built with overflow checks and debug assertions
# but without AddressSanitizer (`-s none`): the code they reach is safe Rust and libopus (C,
# which cargo's sanitizer flags do not instrument), and the build takes a third less time.
# For a longer hunt by hand, leave out `-s none` to get AddressSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-20}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

start=$(date +%s)
# One build for every target; `cargo fuzz run` below then finds them built.
cargo fuzz build -s none
echo "fuzz: built in $(( $(date +%s) - start )) s"

mkdir -p fuzz/target/logs
# As many targets at a time as there are cores: each still fuzzes on a core of its own.
parallel=$(nproc 2>/dev/null || echo 1)

run_target() {
    local target=$1
    mkdir -p "fuzz/corpus/$target"
    local dirs=("fuzz/corpus/$target" "fuzz/seeds/$target")
    [ -d "tests/fuzz-seeds/$target" ] && dirs+=("tests/fuzz-seeds/$target")
    local flags=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048)
    [ -f "fuzz/dicts/$target.dict" ] && flags+=(-dict="fuzz/dicts/$target.dict")
    local log="fuzz/target/logs/$target.log"
    if cargo fuzz run -s none "$target" "${dirs[@]}" -- "${flags[@]}" >"$log" 2>&1; then
        echo "fuzz: $target: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$log" || echo done)"
    else
        echo "fuzz: $target FAILED (input in fuzz/artifacts/$target/); the end of $log:" >&2
        tail -n 40 "$log" >&2
        touch "fuzz/target/logs/$target.failed"
    fi
}

rm -f fuzz/target/logs/*.failed
for target in $(cargo fuzz list); do
    while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do
        wait -n || true
    done
    run_target "$target" &
done
wait

failed=()
for f in fuzz/target/logs/*.failed; do
    [ -e "$f" ] && failed+=("$(basename "$f" .failed)")
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: every target ran ${seconds} s without a failure ($(( $(date +%s) - start )) s in all)"
