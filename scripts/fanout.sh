#!/usr/bin/env bash
# Fan-out at the limit: the floor, Icecast2 and boothcast in turn, with the same listeners and
# the same load client, then their CPU per delivered frame side by side.
#
#   scripts/fanout.sh [SECONDS] [LISTENER COUNTS...]      (default: 20 s at 1000 and 2000)
#
# Each server runs alone on core 0, the load client (`boothcast bench-fanout`, every listener
# reading every frame) and the sources on core 1:
#   floor      `boothcast bench-floor`: one thread writing each 20 ms Ogg page to every
#              socket with one non-blocking send
#   icecast    scripts/icecast.sh with one mount fed by ffmpeg, speech at 32 kbit/s constant
#              bitrate (80-byte packets), one page per packet
#   boothcast  `boothcast serve --threads 1` with config/bench.toml, one booth sending an
#              80-byte packet every 20 ms (from the load client), listeners on bench/l0
# Every frame is an 80-byte Opus packet: 108 bytes on the wire as an Ogg page, 110 as the
# relay's WebSocket message. The table gives each server's CPU seconds per million frames
# delivered over the measured window (after every listener is in and a warm-up), its ratio to
# the floor's in the same run, the growth of its resident memory per listener and the frames
# the listeners missed. docs/BENCHMARKS.md section 11.
#
# Environment: FLOOR_PORT (18200), RELAY_PORT (18201), ICECAST_PORT (18202), RELAY_CPU (0),
# LOAD_CPU (1), WARM_UP seconds (3), SERVERS (default "floor icecast boothcast"), BIN (a
# boothcast binary to run instead of building one: a relay before and after a change).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(1000 2000)
floor_port=${FLOOR_PORT:-18200}
relay_port=${RELAY_PORT:-18201}
icecast_port=${ICECAST_PORT:-18202}
relay_cpu=${RELAY_CPU:-0}
load_cpu=${LOAD_CPU:-1}
warm_up=${WARM_UP:-3}
read -r -a servers <<<"${SERVERS:-floor icecast boothcast}"

if [ -n "${BIN:-}" ]; then
    bin=$BIN
else
    cargo build --release --locked -q
    bin=target/release/boothcast
fi
# One socket per listener on each side, plus a few.
ulimit -n 20000

log() { printf '[fanout.sh] %s\n' "$*" >&2; }

open_port() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$floor_port" "$relay_port" "$icecast_port"; do
    if open_port "$port"; then
        log "port $port is taken (another run?): set FLOOR_PORT, RELAY_PORT or ICECAST_PORT"
        exit 1
    fi
done

out=$(mktemp -d "${TMPDIR:-/tmp}/boothcast-fanout.XXXXXX")
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

wait_port() { # port pid
    for _ in $(seq 200); do
        open_port "$1" && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

client() { # server url listeners pid
    taskset -c "$load_cpu" "$bin" bench-fanout --server "$1" --url "$2" --listeners "$3" \
        --seconds "$seconds" --warm-up "$warm_up" --server-pid "$4"
}

# Each run_* runs in a subshell (its output goes through tee): its own trap stops its server.
run_floor() { # listeners
    trap cleanup EXIT
    taskset -c "$relay_cpu" "$bin" bench-floor --listen "127.0.0.1:$floor_port" \
        >"$out/floor-$1.counters" 2>&1 &
    server_pid=$!
    wait_port "$floor_port" "$server_pid" || { cat "$out/floor-$1.counters" >&2; exit 1; }
    client floor "http://127.0.0.1:$floor_port" "$1" "$server_pid"
    kill -TERM "$server_pid"
    wait "$server_pid" || true
    server_pid=
    cat "$out/floor-$1.counters"
}

run_icecast() { # listeners
    OPUS_VBR=off CHANNELS=1 ICECAST_PORT=$icecast_port RELAY_CPU=$relay_cpu LOAD_CPU=$load_cpu \
        BENCH_BIN="$bin bench-fanout --server icecast --warm-up $warm_up" \
        scripts/icecast.sh "$1" "$seconds"
}

run_boothcast() { # listeners
    trap cleanup EXIT
    taskset -c "$relay_cpu" "$bin" serve --config config/bench.toml \
        --listen "127.0.0.1:$relay_port" --threads 1 >/dev/null 2>"$out/relay-$1.log" &
    server_pid=$!
    wait_port "$relay_port" "$server_pid" || { cat "$out/relay-$1.log" >&2; exit 1; }
    client boothcast "http://127.0.0.1:$relay_port" "$1" "$server_pid"
    kill "$server_pid"
    wait "$server_pid" || true
    server_pid=
}

load() { cut -d' ' -f1-3 /proc/loadavg; }

load_before=$(load)
for n in "${counts[@]}"; do
    for s in "${servers[@]}"; do
        echo "=== $s, $n listeners, ${seconds} s (load average $(load))"
        "run_$s" "$n" | tee "$out/$s-$n.txt"
    done
done
load_after=$(load)

# The table: one row per server and listener count, from the clients' `result` lines.
echo
echo "| Listeners | Server | CPU s per million frames delivered | Ratio to the floor | Resident memory per listener | Frames lost | Delivered of expected | Bytes per frame | Frames per read | Server CPU | Server waiting for a CPU | Client CPU |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for n in "${counts[@]}"; do
    for s in "${servers[@]}"; do
        grep -h '^result ' "$out/$s-$n.txt" | tail -n 1
    done | awk -v n="$n" '
        {
            for (i = 2; i <= NF; i++) { split($i, kv, "="); f[NR, kv[1]] = kv[2] }
            if (f[NR, "server"] == "floor") floor = f[NR, "cpu_s_per_million"]
        }
        END {
            for (r = 1; r <= NR; r++) {
                per = f[r, "cpu_s_per_million"]
                ratio = (floor != "" && floor != "na" && per != "na") ? sprintf("%.2f", per / floor) : "n/a"
                listeners = (f[r, "connected"] == n) ? n : sprintf("%s (%s in)", n, f[r, "connected"])
                expected = f[r, "expected"] > 0 ? f[r, "expected"] : 1
                printf "| %s | %s | %s | %s | %s KiB | %s | %.2f %% | %s | %s | %.0f %% | %.1f %% | %.0f %% |\n",
                    listeners, f[r, "server"], per, ratio, f[r, "rss_kib_per_listener"], f[r, "lost"],
                    100 * f[r, "frames"] / expected, f[r, "bytes_per_frame"], f[r, "frames_per_read"],
                    100 * f[r, "cpu_s"] / f[r, "seconds"], 100 * f[r, "server_wait_share"],
                    100 * f[r, "client_cpu_share"]
            }
        }'
done
echo
echo "Load average (1, 5, 15 min): $load_before before, $load_after after. Logs: $out"
