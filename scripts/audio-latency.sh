#!/usr/bin/env bash
# End-to-end delay through real devices: sound into the booth's microphone (a PulseAudio null
# sink, captured by `boothcast booth --input-device pulse`) to sound out of the listener's
# headphones (another null sink, played by `boothcast listen --output-device pulse`), measured
# on a click train, at 20 ms and 10 ms Opus frames; the same through PulseAudio alone (arecord
# piped to aplay with the buffers cpal uses, no boothcast); and the time back to live after
# the listener's connection stalls for 2 s (a small TCP proxy between the listener and the
# relay holds everything up, both ways).
#
# How: the microphone and the headphones are the left and right channels of one stereo null
# sink (two remap sinks on it), whose monitor is recorded: the left channel has each click as
# it went into the microphone, the right one the same click as it came out of the headphones,
# on one clock. The delay is the time between the two onsets. The listener's own report gives
# the jitter buffer's delay.
#
# Usage: scripts/audio-latency.sh [SECONDS_PER_RUN]   (default 30)
#        PARTS="frames10 alsa" scripts/audio-latency.sh   (some of: frames20 frames10 alsa stall)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
missing=()
for p in pulseaudio pulseaudio-utils libasound2-plugins alsa-utils sox; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
bash scripts/pulse.sh
cargo build --release --quiet
bin=$PWD/target/release/boothcast
work=$(mktemp -d)
modules=()
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ((i = ${#modules[@]} - 1; i >= 0; i--)); do pactl unload-module "${modules[i]}" || true; done
    [ -n "${KEEP:-}" ] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT

modules+=("$(pactl load-module module-null-sink sink_name=lat_all rate=48000 channels=2 norewinds=1)")
half() {
    modules+=("$(pactl load-module module-remap-sink sink_name="$1" master=lat_all channels=1 \
        master_channel_map="$2" channel_map=mono remix=no)")
}
half lat_mic front-left
half lat_ear front-right

# A 3 ms 2 kHz burst every 250 ms: far enough apart that a click and its copy never overlap.
sox -n -r 48000 -c 1 -b 16 "$work/clicks.wav" synth 0.003 sine 2000 gain -3 pad 0 0.247 \
    repeat $((secs * 4))

cat >"$work/event.toml" <<'EOF'
[event]
name = "Latency"
[secrets]
floor = "floor-secret"
[[rooms]]
id = "plenary"
[[rooms.channels]]
lang = "en"
name = "English"
native = "English"
[[rooms.booths]]
id = "en"
languages = ["en"]
secret = "secret-en"
EOF

port=$((20000 + RANDOM % 20000))
"$bin" serve --listen 127.0.0.1:$port --config "$work/event.toml" >"$work/relay.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$work/relay.out" && break; sleep 0.1; done

# Records both halves from before the run starts. A null sink renders in blocks as long as the
# smallest latency any of its streams asks for (up to 2 s when nobody asks): the recorder asks
# 5 ms, so the sink takes and gives sound in 5 ms blocks, as a sound card with 5 ms periods
# would. (With 10 ms blocks, REC_LAT=10, both boothcast and arecord | aplay wait for them.)
record() {
    parec --latency-msec=${REC_LAT:-5} --raw --format=s16le --rate=48000 --channels=2 \
        --device=lat_all.monitor >"$1" &
    pids+=($!)
    for _ in $(seq 100); do [ "$(stat -c %s "$1")" -gt 38400 ] && break; sleep 0.05; done
}

stop_recording() {
    kill "${pids[-1]}"
    unset 'pids[-1]'
}

# The relay (or the proxy in front of it) must be answering before the clients start.
wait_for_playing() {
    for _ in $(seq 200); do
        grep -q '"delay_ms":[1-9]' "$1" && return 0
        sleep 0.05
    done
    echo "the listener never played a frame: $1" >&2
    exit 1
}

run() { # name frame_ms listener_port
    local name=$1 frame=$2 lport=$3
    record "$work/$name.raw"
    PULSE_SOURCE=lat_mic.monitor "$bin" booth --server ws://127.0.0.1:$port --booth en --live \
        --secret secret-en --input-device pulse --frame-ms "$frame" --headless </dev/null \
        >"$work/$name.booth" 2>&1 &
    local booth=$!
    PULSE_SINK=lat_ear "$bin" listen --server ws://127.0.0.1:$lport --lang en \
        --output-device pulse >"$work/$name.listen" 2>&1 &
    local listener=$!
    pids+=($booth $listener)
    wait_for_playing "$work/$name.listen"
    paplay --latency-msec=200 --device=lat_mic "$work/clicks.wav"
    kill $listener $booth
    wait $listener $booth 2>/dev/null || true
    unset 'pids[-1]'
    unset 'pids[-1]'
    stop_recording
}

want() { [[ " ${PARTS:-frames20 frames10 alsa stall} " == *" $1 "* ]]; }

want frames20 && run frames20 20 $port
want frames10 && run frames10 10 $port

# PulseAudio alone: the capture and playback streams with cpal's buffers (two 5 ms periods).
if want alsa; then
record "$work/alsa.raw"
PULSE_SOURCE=lat_mic.monitor arecord -q -D pulse -f FLOAT_LE -r 48000 -c 2 \
    --buffer-size=480 --period-size=240 -t raw 2>/dev/null |
    PULSE_SINK=lat_ear aplay -q -D pulse -f FLOAT_LE -r 48000 -c 2 \
        --buffer-size=480 --period-size=240 -t raw 2>/dev/null &
pids+=($!)
sleep 1
paplay --latency-msec=200 --device=lat_mic "$work/clicks.wav"
# arecord ends on its next write once aplay is gone.
kill "${pids[-1]}"
unset 'pids[-1]'
stop_recording
fi

# A listener whose connection stalls for 2 s, 10 s into the run.
if want stall; then
proxy_port=$((port + 1))
python3 - "$port" "$proxy_port" "$work/stall.at" <<'EOF' &
import asyncio, sys, time
relay, listen, mark = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
stalled = asyncio.Event(); stalled.set()
async def pipe(r, w):
    while data := await r.read(65536):
        await stalled.wait()
        w.write(data)
        await w.drain()
    w.close()
async def client(r, w):
    rr, rw = await asyncio.open_connection("127.0.0.1", relay)
    await asyncio.gather(pipe(r, rw), pipe(rr, w), return_exceptions=True)
async def stall():
    await asyncio.sleep(10)
    stalled.clear()
    t0 = time.time()
    await asyncio.sleep(2)
    stalled.set()
    open(mark, "w").write(f"{t0} {time.time()}\n")
async def main():
    server = await asyncio.start_server(client, "127.0.0.1", listen)
    asyncio.get_running_loop().create_task(stall())
    await server.serve_forever()
asyncio.run(main())
EOF
pids+=($!)
for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$proxy_port) 2>/dev/null && break
    sleep 0.1
done
run stall 20 $proxy_port
fi

python3 - "$work" <<'EOF'
import array, json, os, statistics, sys
work = sys.argv[1]

def onsets(samples):
    out, last = [], -10**9
    for i, v in enumerate(samples):
        if abs(v) > 4000 and i - last > 48 * 10:
            out.append(i / 48.0)
        if abs(v) > 4000:
            last = i
    return out

def delays(path):
    # (time, delay) of every click that came out within 240 ms of going in (clicks come every
    # 250 ms).
    a = array.array("h"); a.frombytes(open(path, "rb").read())
    into, out = onsets(a[0::2]), onsets(a[1::2])
    pairs = []
    for t in into:
        later = [u - t for u in out if 0 <= u - t < 240]
        if later:
            pairs.append((t, later[0]))
    return pairs

def pct(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(len(v) * p / 100))]

def report(name, label):
    p = delays(f"{work}/{name}.raw")
    d = [x for _, x in p]
    print(f"{label}: {len(d)} clicks, median {statistics.median(d):.1f} ms, p95 {pct(d, 95):.1f} ms, max {max(d):.1f} ms")
    return p

for name, label in [("frames20", "20 ms frames"), ("frames10", "10 ms frames")]:
    if not os.path.exists(f"{work}/{name}.raw"):
        continue
    report(name, label)
    lines = [json.loads(l) for l in open(f"{work}/{name}.listen") if l.startswith('{"playout"')]
    settled = [l["playout"]["delay_ms"] for l in lines[5:]]
    if settled:
        print(f"  jitter buffer delay after 5 s: median {statistics.median(settled):.1f} ms"
              f" (target {lines[-1]['playout']['target_ms']:.1f} ms; {lines[-1]['playout']})")
if os.path.exists(f"{work}/alsa.raw"):
    report("alsa", "PulseAudio alone (arecord | aplay, 10 ms buffers)")

if os.path.exists(f"{work}/stall.raw"):
    p = report("stall", "20 ms frames, listener stalled 2 s")
    base = statistics.median([d for _, d in p[:30]])
    gap = [b[0] - a[0] for a, b in zip(p, p[1:])]
    longest = max(range(len(gap)), key=lambda i: gap[i])
    after = [round(d, 1) for _, d in p[longest + 1:longest + 9]]
    print(f"  before the stall: median delay {base:.1f} ms; no click came through for "
          f"{gap[longest] / 1000:.2f} s; the delays of the 8 clicks after it (250 ms apart): {after}")
EOF
