#!/usr/bin/env bash
# Icecast2 half of the side-by-side relay benchmark.
#
#   scripts/icecast.sh LISTENERS SECONDS
#
# Starts icecast2 on 127.0.0.1:$ICECAST_PORT with one mount per language channel, feeds every
# mount from its own real-time ffmpeg source, then runs the load client against it and prints
# its report. Everything started here is stopped on exit.
#
# Environment:
#   ICECAST_PORT  listen port (default 18000)
#   CHANNELS      number of mounts / sources (default 10)
#   RELAY_CPU     core icecast2 is pinned to (default 0)
#   LOAD_CPU      core the load client is pinned to (default 1)
#   SOURCE_CPU    core the ffmpeg sources are pinned to (default: LOAD_CPU, keeping the relay
#                 core for the relay alone)
#   BENCH_BIN     load client command (default "target/release/boothcast bench-icecast")
#   OPUS_VBR      libopus rate control of the speech sample: on (default) or off (constant
#                 80-byte packets, the size of the relay's bench frames)
#   KEEP_TMP=1    keep the temp dir (config, logs) for inspection
#   ICECAST_TLS_PEM  a certificate and its key in one PEM file: listeners come over TLS on
#                 ICECAST_TLS_PORT (default listen port + 1); the sources stay on the plain port
set -euo pipefail

LISTENERS=${1:?usage: $0 LISTENERS SECONDS}
SECONDS_MEASURED=${2:?usage: $0 LISTENERS SECONDS}
PORT=${ICECAST_PORT:-18000}
CHANNELS=${CHANNELS:-10}
RELAY_CPU=${RELAY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SOURCE_CPU=${SOURCE_CPU:-$LOAD_CPU}
BENCH_BIN=${BENCH_BIN:-target/release/boothcast bench-icecast}
SOURCE_PASSWORD=bench-source
TLS_PEM=${ICECAST_TLS_PEM:-}
TLS_PORT=${ICECAST_TLS_PORT:-$((PORT + 1))}
TLS_SOCKET=""
TLS_CERT=""
LISTEN_URL="http://127.0.0.1:$PORT"
if [ -n "$TLS_PEM" ]; then
    TLS_SOCKET="<listen-socket><port>$TLS_PORT</port><bind-address>127.0.0.1</bind-address><ssl>1</ssl></listen-socket>"
    TLS_CERT="<ssl-certificate>$TLS_PEM</ssl-certificate>"
    LISTEN_URL="https://127.0.0.1:$TLS_PORT"
fi
ADMIN_PASSWORD=bench-admin

log() { printf '[icecast.sh] %s\n' "$*" >&2; }

install_missing() {
    local missing=()
    command -v icecast2 >/dev/null 2>&1 || missing+=(icecast2)
    command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
    command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
    command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    # The package would otherwise ask whether to configure its system-wide instance; we bring
    # our own config and never use that one.
    echo "icecast2 icecast2/icecast-setup boolean false" | "${sudo[@]}" debconf-set-selections
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        --no-install-recommends "${missing[@]}" >/dev/null
}

install_missing


# Raise the descriptor limit for icecast2 and the load client (one socket per listener each).
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/boothcast-icecast.XXXXXX")
PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "${KEEP_TMP:-0}" = 1 ]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# icecast2 refuses to keep running as root: as root it binds, then drops to an unprivileged
# user, which must be able to write its logs into the temp dir.
CHANGEOWNER=""
if [ "$(id -u)" -eq 0 ]; then
    RUN_USER=nobody
    RUN_GROUP=nogroup
    getent group "$RUN_GROUP" >/dev/null || groupadd --system "$RUN_GROUP"
    getent passwd "$RUN_USER" >/dev/null ||
        useradd --system --no-create-home --shell /usr/sbin/nologin -g "$RUN_GROUP" "$RUN_USER"
    CHANGEOWNER="<changeowner><user>$RUN_USER</user><group>$RUN_GROUP</group></changeowner>"
    chmod 755 "$TMP"
    mkdir -p "$TMP/log"
    chown "$RUN_USER:$RUN_GROUP" "$TMP/log"
else
    mkdir -p "$TMP/log"
fi

cat >"$TMP/icecast.xml" <<XML
<icecast>
    <location>boothcast-bench</location>
    <admin>bench@localhost</admin>
    <limits>
        <clients>20000</clients>
        <sources>20</sources>
        <queue-size>524288</queue-size>
        <client-timeout>30</client-timeout>
        <header-timeout>15</header-timeout>
        <source-timeout>10</source-timeout>
        <burst-on-connect>0</burst-on-connect>
        <burst-size>0</burst-size>
    </limits>
    <authentication>
        <source-password>$SOURCE_PASSWORD</source-password>
        <relay-password>$SOURCE_PASSWORD</relay-password>
        <admin-user>admin</admin-user>
        <admin-password>$ADMIN_PASSWORD</admin-password>
    </authentication>
    <hostname>127.0.0.1</hostname>
    <listen-socket>
        <port>$PORT</port>
        <bind-address>127.0.0.1</bind-address>
    </listen-socket>
    $TLS_SOCKET
    <fileserve>1</fileserve>
    <paths>
        <basedir>$TMP</basedir>
        <logdir>$TMP/log</logdir>
        <webroot>/usr/share/icecast2/web</webroot>
        <adminroot>/usr/share/icecast2/admin</adminroot>
        <pidfile>$TMP/log/icecast.pid</pidfile>
        $TLS_CERT
    </paths>
    <logging>
        <accesslog>access.log</accesslog>
        <errorlog>error.log</errorlog>
        <loglevel>2</loglevel>
        <logsize>100000</logsize>
    </logging>
    <security>
        <chroot>0</chroot>
        $CHANGEOWNER
    </security>
</icecast>
XML

# Speech sample: 48 kHz mono Ogg Opus, 32 kb/s, 20 ms frames, looped by the sources.
TEXT="Good morning, delegates. The session is now open. We will first hear the report of the \
committee on budget and finance, followed by the statements of the regional groups. \
Interpretation is available in all official languages on the channels indicated. \
Please keep your microphones switched off unless you have the floor. \
The chair thanks the interpreters and the technical staff for their support."
espeak-ng -s 150 -w "$TMP/speech.wav" "$TEXT"
ffmpeg -hide_banner -loglevel error -nostdin -y -i "$TMP/speech.wav" -ar 48000 -ac 1 \
    -c:a libopus -b:a 32k -vbr "${OPUS_VBR:-on}" -frame_duration 20 -application voip "$TMP/speech.opus"

ice_request() { # path -> response on stdout
    local auth
    auth=$(printf 'admin:%s' "$ADMIN_PASSWORD" | base64)
    timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" &&
        printf "GET %s HTTP/1.0\r\nAuthorization: Basic %s\r\n\r\n" "$2" "$3" >&3 && cat <&3' \
        _ "$PORT" "$1" "$auth" 2>/dev/null
}

log "starting icecast2 on 127.0.0.1:$PORT (cpu $RELAY_CPU)"
taskset -c "$RELAY_CPU" icecast2 -c "$TMP/icecast.xml" >"$TMP/icecast.out" 2>&1 &
ICECAST_PID=$!
PIDS+=("$ICECAST_PID")
for _ in $(seq 100); do
    kill -0 "$ICECAST_PID" 2>/dev/null || { cat "$TMP/icecast.out" "$TMP/log/error.log" >&2 2>/dev/null; exit 1; }
    ice_request /admin/stats >/dev/null && break
    sleep 0.1
done

log "starting $CHANNELS sources (cpu $SOURCE_CPU)"
for ((i = 0; i < CHANNELS; i++)); do
    taskset -c "$SOURCE_CPU" ffmpeg -hide_banner -loglevel error -nostdin -re -stream_loop -1 \
        -i "$TMP/speech.opus" -c:a copy -f ogg -page_duration 20000 -content_type audio/ogg \
        "icecast://source:$SOURCE_PASSWORD@127.0.0.1:$PORT/l$i.opus" >"$TMP/ffmpeg-$i.log" 2>&1 &
    PIDS+=("$!")
done
live=0
for _ in $(seq 100); do
    live=$(ice_request /admin/listmounts | grep -o '<source mount="/l[0-9]*\.opus"' | wc -l || true)
    [ "$live" -ge "$CHANNELS" ] && break
    sleep 0.2
done
if [ "$live" -lt "$CHANNELS" ]; then
    log "only $live of $CHANNELS mounts came up"
    tail -n 5 "$TMP"/ffmpeg-*.log "$TMP/log/error.log" >&2 || true
    exit 1
fi

read -r -a BENCH <<<"$BENCH_BIN"
log "running ${BENCH[*]} with $LISTENERS listeners for $SECONDS_MEASURED s (cpu $LOAD_CPU)"
taskset -c "$LOAD_CPU" "${BENCH[@]}" --url "$LISTEN_URL" --mounts "$CHANNELS" \
    --listeners "$LISTENERS" --seconds "$SECONDS_MEASURED" --server-pid "$ICECAST_PID" &
CLIENT_PID=$!
PIDS+=("$CLIENT_PID")
wait "$CLIENT_PID"
