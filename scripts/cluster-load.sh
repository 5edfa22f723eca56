#!/usr/bin/env bash
# Fan-out through a cluster on loopback, beside the same load on one relay alone:
#   scripts/cluster-load.sh [LISTENERS] [SECONDS] [CHANNELS]    (default 2000 20 10)
# 1. alone: `scripts/bench.sh load` (the relay on core 0 with one thread, the load generator on
#    core 1);
# 2. cluster: a nats-server (JetStream) and node `a` on core 1, where the ten bench booths
#    connect (`bench --booth-addr`); node `b` on core 0 with one thread, where every listener
#    connects, so that every frame crosses NATS once into b. The load generator on core 1.
# Prints both reports, then the CPU that node a and nats-server spent over the whole cluster
# run per channel frame that crossed (booths send CHANNELS frames every 20 ms).
# Needs nats-server. BIN=path runs that binary instead of building one; SKIP_ALONE=1 skips the
# relay alone.
set -euo pipefail
cd "$(dirname "$0")/.."
listeners=${1:-2000}
seconds=${2:-20}
channels=${3:-10}
if [ -z "${BIN:-}" ]; then
    cargo build --release --locked -q
    BIN=target/release/boothcast
fi
ulimit -n 20000
tmp=$(mktemp -d)
pids=()
cleanup() {
    status=$?
    if [ "$status" -ne 0 ]; then
        for f in "$tmp"/a.log "$tmp"/b.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 20 "$f"; }; done >&2
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# CPU seconds (user + system) a process has used so far.
cpu() { awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
wait_line() { # FILE TEXT: until the file holds the text (30 s at most)
    for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}

[ -n "${SKIP_ALONE:-}" ] || {
echo "## One relay alone: $listeners listeners, $channels channels, $seconds s"
BIN="$BIN" BENCH_PORT=$(free_port) scripts/bench.sh load "$listeners" "$seconds" "$channels"
}

echo
echo "## A cluster: booths on node a, listeners on node b, one NATS hop"
# Every node of a cluster has the same secrets (config/bench.toml names only the booths').
BOOTHCAST_FLOOR_SECRET=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
BOOTHCAST_ENGINEER_SECRET=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
export BOOTHCAST_FLOOR_SECRET BOOTHCAST_ENGINEER_SECRET
nats_port=$(free_port)
taskset -c 1 nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$tmp/nats" >"$tmp/nats.log" 2>&1 &
nats=$!
pids+=("$nats")
for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.05; done
port_a=$(free_port)
port_b=$(free_port)
taskset -c 1 "$BIN" serve --config config/bench.toml --listen "127.0.0.1:$port_a" \
    --cluster "nats://127.0.0.1:$nats_port" --node a >"$tmp/a.log" 2>&1 &
a=$!
pids+=("$a")
wait_line "$tmp/a.log" "deciding for the event"
taskset -c 0 "$BIN" serve --config config/bench.toml --listen "127.0.0.1:$port_b" --threads 1 \
    --cluster "nats://127.0.0.1:$nats_port" --node b >"$tmp/b.log" 2>&1 &
b=$!
pids+=("$b")
wait_line "$tmp/b.log" "joined the cluster"
a0=$(cpu "$a"); n0=$(cpu "$nats"); t0=$(date +%s.%N)
taskset -c 1 "$BIN" bench --addr "127.0.0.1:$port_b" --booth-addr "127.0.0.1:$port_a" --relay-pid "$b" \
    --listeners "$listeners" --seconds "$seconds" --channels "$channels"
a1=$(cpu "$a"); n1=$(cpu "$nats"); t1=$(date +%s.%N)
# Where frames went: handed to NATS and dropped on a, received and skipped on b.
for n in a b; do
    port=port_$n
    curl -s "http://127.0.0.1:${!port}/metrics" | awk -v n="$n" '
        /^boothcast_cluster_(published|dropped|received_frames)_total/ { print "  node " n ": " $0 }
        /^boothcast_frames_skipped_total/ { skipped += $2 }
        END { print "  node " n ": frames skipped by its listeners (behind, moved on to live): " skipped + 0 }'
done
python3 - "$a0" "$a1" "$n0" "$n1" "$t0" "$t1" "$channels" <<'EOF'
import sys
a0, a1, n0, n1, t0, t1, ch = map(float, sys.argv[1:])
# The booths send from their connection to the end of the run (within a second of t0).
frames = ch * 50 * (t1 - t0)
print(f"  crossing NATS over {t1 - t0:.1f} s: about {frames:,.0f} channel frames")
print(f"  node a (booths, publishing): {a1 - a0:.2f} CPU s, {1e6 * (a1 - a0) / frames:.1f} µs per frame")
print(f"  nats-server: {n1 - n0:.2f} CPU s, {1e6 * (n1 - n0) / frames:.1f} µs per frame")
EOF
