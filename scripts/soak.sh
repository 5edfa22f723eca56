#!/usr/bin/env bash
# Soak benchmark of the relay's hardening on loopback (docs/BENCHMARKS.md, section 9).
#
# The relay (`serve --threads 1`, config/bench.toml) pinned to one core; the healthy load
# (`bench-soak --part healthy`: the floor, ten booths handing over every 10 s, 1,000 listeners
# keeping a channel, 200 coming and going, a console per booth reconnecting every 3 s) pinned
# to the other. The same run twice, back to back, each with a fresh relay: `quiet` (the healthy
# load alone) and `hostile` (the same with `bench-soak --part hostile` beside it on the second
# core at the lowest priority, so that it takes whatever the healthy load leaves of that core:
# 5,000 idle connections kept up, 200 slow requests, a ping flood, refused messages, guessed
# booth secrets). Prints each report and a table side by side.
#
#   scripts/soak.sh [SECONDS] [both|quiet|hostile]     default: 600 s, both
#
# SOAK_ARGS="--listeners 500 --idle 2000" passes options to both load generators
# (`boothcast bench-soak --help`); reports and logs go to $SOAK_OUT (default /tmp/boothcast-soak).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
modes=${2:-both}
[ "$modes" = both ] && modes="quiet hostile"
for m in $modes; do
    case "$m" in
        quiet | hostile) ;;
        *)
            echo "usage: $0 [SECONDS] [both|quiet|hostile]" >&2
            exit 2
            ;;
    esac
done
cargo build --release --locked -q
bin=${CARGO_TARGET_DIR:-target}/release/boothcast
port=${SOAK_PORT:-18200}
out=${SOAK_OUT:-${TMPDIR:-/tmp}/boothcast-soak}
mkdir -p "$out"
# Thousands of sockets on each side: take the hard open-file limit.
ulimit -n "$(ulimit -Hn)"
# Loopback only: never use this secret for a real event.
export BOOTHCAST_FLOOR_SECRET=soak-floor-secret-loopback-only
read -r -a extra <<<"${SOAK_ARGS:-}"

relay=""
hostile=""
cleanup() {
    for pid in $hostile $relay; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT

for mode in $modes; do
    echo "== $mode: ${seconds} s; $(uptime | sed 's/.*load/load/')"
    # Another relay on the port would take this run's clients (and another run's too).
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port is already in use: another soak or relay is running (SOAK_PORT=N picks another)" >&2
        exit 1
    fi
    taskset -c "${RELAY_CPU:-0}" "$bin" serve --config config/bench.toml --listen "127.0.0.1:$port" \
        --threads 1 >/dev/null 2>"$out/relay-$mode.log" &
    relay=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.05
    done
    if ! kill -0 "$relay" 2>/dev/null; then
        echo "the relay did not start:" >&2
        cat "$out/relay-$mode.log" >&2
        exit 1
    fi
    if [ "$mode" = hostile ]; then
        # It stops by itself well after the healthy run, or when told to below.
        taskset -c "${LOAD_CPU:-1}" nice -n 19 "$bin" bench-soak --part hostile --addr "127.0.0.1:$port" \
            --seconds "$((seconds + 300))" --json "$out/hostile.json" "${extra[@]}" >"$out/hostile.txt" &
        hostile=$!
        # The idle connections open over 5 s; let the first of them meet their deadline.
        sleep 8
    fi
    taskset -c "${LOAD_CPU:-1}" "$bin" bench-soak --part healthy --addr "127.0.0.1:$port" \
        --seconds "$seconds" --relay-pid "$relay" --json "$out/healthy-$mode.json" "${extra[@]}" \
        | tee "$out/healthy-$mode.txt"
    if [ -n "$hostile" ]; then
        kill -TERM "$hostile"
        wait "$hostile" || true
        hostile=""
        cat "$out/hostile.txt"
    fi
    kill "$relay"
    wait "$relay" 2>/dev/null || true
    relay=""
    echo "   relay log: $out/relay-$mode.log ($(wc -l <"$out/relay-$mode.log") lines); $(uptime | sed 's/.*load/load/')"
done

# Side by side.
row() {
    local line="| $1 |"
    for mode in $modes; do
        line+=" $(jq -r "$2" "$out/healthy-$mode.json") |"
    done
    echo "$line"
}
echo
header="| ${seconds} s |"
rule="|---|"
for mode in $modes; do
    case "$mode" in
        quiet) header+=" healthy load alone |" ;;
        hostile) header+=" with the hostile load |" ;;
    esac
    rule+="---|"
done
echo "$header"
echo "$rule"
row "Frames lost (sequence gaps) / received" '"\(.lost) / \(.frames)"'
row "Listener connections ended by the relay" '.dropped | to_entries | map("\(.key) \(.value)") | join(", ") | if . == "" then "0" else . end'
row "Delay relay → listener p50 / p99" '"\(.delay.p50_ms) / \(.delay.p99_ms) ms"'
row "Delay p99.9 / max" '"\(.delay.p999_ms) / \(.delay.max_ms) ms"'
row "Booth connect (TCP → welcome) p50 / max, connects" '"\(.booth_connect.p50_ms) / \(.booth_connect.max_ms) ms, \(.booth_connect.count)"'
row "Booth connects failed" '.booth_failures | to_entries | map("\(.key) \(.value)") | join(", ") | if . == "" then "0" else . end'
row "Listener coming and going: connect p50 / max, visits" '"\(.churn_connect.p50_ms) / \(.churn_connect.max_ms) ms, \(.churn_cycles)"'
row "Handovers done / asked" '"\(.handovers_done) / \(.handovers_asked)"'
row "Relay RSS start → end (max)" '"\(.rss_mib[0][1]) → \(.rss_mib[-1][1]) MiB (\([.rss_mib[][1]] | max))"'
row "Relay CPU (waiting for a CPU held by others)" '"\((.relay_cpu * 100) | round) % of a core (\((.relay_wait * 1000) | round / 10) %)"'
row "Healthy load generator CPU" '"\((.own_cpu * 100) | round) % of a core"'
row "Refusals (/metrics at the end)" '.metrics | to_entries | map(select(.key | startswith("boothcast_refused_connections_total")) | select(.value > 0) | "\(.key | capture("reason=\"(?<r>[^\"]+)\"").r) \(.value)") | join(", ") | if . == "" then "none" else . end'
row "Wrong secrets refused unheard / compared" '"\(.metrics["boothcast_refused_attempts_total"]) / \(.metrics["boothcast_refused_auth_total"])"'
row "Frames skipped for lagging receivers" '.metrics["boothcast_frames_skipped_total"]'
