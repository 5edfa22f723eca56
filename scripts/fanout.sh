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
# TLS=1 runs the same over TLS (a self-signed P-256 certificate made here with openssl, which
# the client trusts): the floor with `--tls-cert` (each page encrypted for each socket with
# rustls, the relay's configuration), Icecast with a TLS listen socket (OpenSSL; its sources
# stay on the plain port), boothcast `serve --tls-cert` (listeners and booth over wss://).
# TLS=both runs every server plain then over TLS at each listener count, and adds a table of
# what TLS costs each server per delivered frame.
#
# Environment: FLOOR_PORT (18200), RELAY_PORT (18201), ICECAST_PORT (18202; with TLS also
# ICECAST_TLS_PORT, 18203), RELAY_CPU (0), LOAD_CPU (1), WARM_UP seconds (3), SERVERS (default
# "floor icecast boothcast"), TLS (0, 1 or both), BIN (a boothcast binary to run instead of
# building one: a relay before and after a change), ROUNDS (1: with more, the servers take
# turns ROUNDS times and the table gives each figure's median over the rounds, and the range of
# the per-round ratios to the floor).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(1000 2000)
floor_port=${FLOOR_PORT:-18200}
relay_port=${RELAY_PORT:-18201}
icecast_port=${ICECAST_PORT:-18202}
icecast_tls_port=${ICECAST_TLS_PORT:-18203}
relay_cpu=${RELAY_CPU:-0}
load_cpu=${LOAD_CPU:-1}
warm_up=${WARM_UP:-3}
read -r -a servers <<<"${SERVERS:-floor icecast boothcast}"
case "${TLS:-0}" in
    0) modes=(plain) ;;
    1) modes=(tls) ;;
    both) modes=(plain tls) ;;
    *) echo "TLS is 0, 1 or both" >&2; exit 1 ;;
esac

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
for port in "$floor_port" "$relay_port" "$icecast_port" "$icecast_tls_port"; do
    if open_port "$port"; then
        log "port $port is taken (another run?): set FLOOR_PORT, RELAY_PORT or ICECAST_PORT"
        exit 1
    fi
done

out=$(mktemp -d "${TMPDIR:-/tmp}/boothcast-fanout.XXXXXX")
if [ "${modes[*]}" != plain ]; then
    # CA:FALSE: webpki refuses a certificate marked as an authority as a server's own. Icecast
    # wants the certificate and the key in one file, and reads it as its unprivileged user:
    # the directory and the throwaway key are readable.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
        -addext basicConstraints=critical,CA:FALSE \
        -keyout "$out/key.pem" -out "$out/cert.pem" 2>/dev/null
    cat "$out/cert.pem" "$out/key.pem" >"$out/both.pem"
    chmod 755 "$out"
    chmod 644 "$out"/*.pem
fi
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

# The mode of the run under way (plain or tls): the scheme, and the server's TLS options.
mode=plain
scheme() { [ "$mode" = tls ] && echo https || echo http; }
tls_server_args=()
tls_client_args=()

client() { # server url listeners pid
    taskset -c "$load_cpu" "$bin" bench-fanout --server "$1" --url "$2" --listeners "$3" \
        --seconds "$seconds" --warm-up "$warm_up" --server-pid "$4" "${tls_client_args[@]}"
}

# Each run_* runs in a subshell (its output goes through tee): its own trap stops its server.
run_floor() { # listeners
    trap cleanup EXIT
    taskset -c "$relay_cpu" "$bin" bench-floor --listen "127.0.0.1:$floor_port" \
        "${tls_server_args[@]}" >"$out/floor-$mode-$1.counters" 2>&1 &
    server_pid=$!
    wait_port "$floor_port" "$server_pid" || { cat "$out/floor-$mode-$1.counters" >&2; exit 1; }
    client floor "$(scheme)://127.0.0.1:$floor_port" "$1" "$server_pid"
    kill -TERM "$server_pid"
    wait "$server_pid" || true
    server_pid=
    cat "$out/floor-$mode-$1.counters"
}

run_icecast() { # listeners
    local tls_env=()
    [ "$mode" = tls ] && tls_env=(ICECAST_TLS_PEM="$out/both.pem" ICECAST_TLS_PORT="$icecast_tls_port")
    env "${tls_env[@]}" OPUS_VBR=off CHANNELS=1 ICECAST_PORT=$icecast_port RELAY_CPU=$relay_cpu \
        LOAD_CPU=$load_cpu \
        BENCH_BIN="$bin bench-fanout --server icecast --warm-up $warm_up ${tls_client_args[*]}" \
        scripts/icecast.sh "$1" "$seconds"
}

run_boothcast() { # listeners
    trap cleanup EXIT
    taskset -c "$relay_cpu" "$bin" serve --config config/bench.toml \
        --listen "127.0.0.1:$relay_port" --threads 1 "${tls_server_args[@]}" \
        >/dev/null 2>"$out/relay-$mode-$1.log" &
    server_pid=$!
    wait_port "$relay_port" "$server_pid" || { cat "$out/relay-$mode-$1.log" >&2; exit 1; }
    client boothcast "$(scheme)://127.0.0.1:$relay_port" "$1" "$server_pid"
    kill "$server_pid"
    wait "$server_pid" || true
    server_pid=
}

load() { cut -d' ' -f1-3 /proc/loadavg; }

rounds=${ROUNDS:-1}
load_before=$(load)
for round in $(seq "$rounds"); do
for n in "${counts[@]}"; do
    for s in "${servers[@]}"; do
        for mode in "${modes[@]}"; do
            if [ "$mode" = tls ]; then
                tls_server_args=(--tls-cert "$out/cert.pem" --tls-key "$out/key.pem")
                tls_client_args=(--tls-ca "$out/cert.pem")
            else
                tls_server_args=()
                tls_client_args=()
            fi
            echo "=== round $round of $rounds: $s ($mode), $n listeners, ${seconds} s (load average $(load))"
            "run_$s" "$n" | tee "$out/$s-$mode-$n-r$round.txt"
        done
    done
done
done
load_after=$(load)

# The tables, from the clients' `result` lines: one row per listener count, transport and
# server, the ratio to the floor over the same transport; with both transports, what TLS adds.
for f in "$out"/*-r*.txt; do
    r=${f##*-r}
    grep -h '^result ' "$f" | tail -n 1 | sed "s/\$/ round=${r%.txt}/"
done | python3 -c '
import sys, statistics, types
counts, servers, modes = sys.argv[1].split(), sys.argv[2].split(), sys.argv[3].split()
rows = {}
for line in sys.stdin:
    f = dict(kv.split("=", 1) for kv in line.split()[1:])
    rows.setdefault((f["listeners"], f["server"], f["tls"]), {})[f["round"]] = f
def med(runs, name):
    v = [float(r[name]) for r in runs.values() if r.get(name, "na") != "na"]
    return statistics.median(v) if v else None
multi = len({r for runs in rows.values() for r in runs}) > 1
print()
print("| Listeners | Server | CPU s per million frames delivered | Ratio to the floor |"
      + (" Ratio per round (min-max) |" if multi else "")
      + " Resident memory per listener | Frames lost | Delivered of expected | Bytes per frame (read) | Frames per read | Server CPU | Server waiting for a CPU | Client CPU |")
print("|---" * (13 if multi else 12) + "|")
for n in counts:
    for m in modes:
        t = "1" if m == "tls" else "0"
        floor = rows.get((n, "floor", t), {})
        for s in servers:
            runs = rows.get((n, s, t))
            if not runs:
                continue
            per, fper = med(runs, "cpu_s_per_million"), med(floor, "cpu_s_per_million")
            ratio = f"{per / fper:.2f}" if per and fper else "n/a"
            each = [float(runs[k]["cpu_s_per_million"]) / float(floor[k]["cpu_s_per_million"])
                    for k in runs if k in floor and "na" not in (runs[k]["cpu_s_per_million"], floor[k]["cpu_s_per_million"])]
            spread = f" {min(each):.2f}-{max(each):.2f} |" if multi and each else (" n/a |" if multi else "")
            conn = [r["connected"] for r in runs.values()]
            label = n if all(c == n for c in conn) else f"{n} ({min(conn)} in)"
            lost = sum(int(r["lost"]) for r in runs.values())
            delivered = statistics.median(100 * float(r["frames"]) / max(float(r["expected"]), 1) for r in runs.values())
            name = s + (" over TLS" if t == "1" else "")
            keys = "rss_kib_per_listener bytes_per_frame wire_bytes_per_frame frames_per_read cpu_s seconds server_wait_share client_cpu_share"
            d = types.SimpleNamespace(**{k: med(runs, k) for k in keys.split()})
            print(f"| {label} | {name} | {per:.3f} | {ratio} |{spread} {d.rss_kib_per_listener:.3f} KiB | {lost} | {delivered:.2f} % | "
                  f"{d.bytes_per_frame:.1f} ({d.wire_bytes_per_frame:.1f}) | {d.frames_per_read:.3f} | "
                  f"{100 * d.cpu_s / d.seconds:.0f} % | {100 * d.server_wait_share:.1f} % | {100 * d.client_cpu_share:.0f} % |")
if len(modes) < 2:
    sys.exit()
print()
print("What TLS adds (CPU s per million frames = CPU µs per frame):")
print()
print("| Listeners | Server | Plain | Over TLS | TLS adds, µs per frame | Over TLS / plain |")
print("|---|---|---|---|---|---|")
for n in counts:
    for s in servers:
        p, q = rows.get((n, s, "0")), rows.get((n, s, "1"))
        if not p or not q:
            continue
        p, q = med(p, "cpu_s_per_million"), med(q, "cpu_s_per_million")
        if p and q:
            print(f"| {n} | {s} | {p:.3f} | {q:.3f} | {q - p:.2f} | {q / p:.2f} |")
' "${counts[*]}" "${servers[*]}" "${modes[*]}"
echo
echo "Load average (1, 5, 15 min): $load_before before, $load_after after. Logs: $out"
