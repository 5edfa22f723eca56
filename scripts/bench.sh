#!/usr/bin/env bash
# Fan-out benchmark on loopback: the relay pinned to one core with one worker thread, the load
# generator pinned to the other.
#   scripts/bench.sh load LISTENERS SECONDS [CHANNELS]   listeners receiving 20 ms frames
#   scripts/bench.sh relaxed LISTENERS SECONDS [CHANNELS] the same, listeners of the relaxed class
#   scripts/bench.sh idle 2000,18000                      relay memory per idle listener
# BIN=path runs that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-load}
if [ -n "${BIN:-}" ]; then
    bin=$BIN
else
    cargo build --release --locked -q
    bin=target/release/boothcast
fi
port=${BENCH_PORT:-18100}
# One socket per listener on each side, plus a few.
ulimit -n 20000
taskset -c "${RELAY_CPU:-0}" "$bin" serve --config config/bench.toml --listen "127.0.0.1:$port" --threads 1 \
    >/dev/null 2>"${TMPDIR:-/tmp}/boothcast-bench-relay.log" &
relay=$!
trap 'kill $relay 2>/dev/null; wait $relay 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
done
case "$mode" in
    load)
        taskset -c "${LOAD_CPU:-1}" "$bin" bench --addr "127.0.0.1:$port" --relay-pid "$relay" \
            --listeners "${2:-1000}" --seconds "${3:-30}" --channels "${4:-10}" --probe-every "${PROBE_EVERY:-50}"
        ;;
    relaxed)
        taskset -c "${LOAD_CPU:-1}" "$bin" bench --addr "127.0.0.1:$port" --relay-pid "$relay" --relaxed \
            --listeners "${2:-10000}" --seconds "${3:-30}" --channels "${4:-10}" --probe-every "${PROBE_EVERY:-50}"
        ;;
    idle)
        taskset -c "${LOAD_CPU:-1}" "$bin" bench --addr "127.0.0.1:$port" --relay-pid "$relay" \
            --idle-steps "${2:-2000,18000}"
        ;;
    *)
        echo "usage: $0 load|relaxed LISTENERS SECONDS [CHANNELS] | idle STEPS" >&2
        exit 2
        ;;
esac
