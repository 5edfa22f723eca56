#!/usr/bin/env bash
# Starts boothcast on its built-in default event with something to hear on every channel:
# the floor speaks Azerbaijani (so the Azerbaijani channel carries the floor), the English,
# Russian and French booths are live, and the Arabic booth works from English as its relay.
# Stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake pkg-config libasound2-dev espeak-ng curl)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
cargo build --release --locked
# The page's WASM Opus decoder, for browsers without WebCodecs or on plain HTTP.
npm ci --prefix web-client --omit=dev --no-audit --no-fund
bin=target/release/boothcast
port=${BOOTHCAST_PORT:-8080}
dir=target/demo
mkdir -p "$dir"

espeak-ng -v az -w "$dir/floor.wav" "Hörmətli nümayəndələr, xoş gəlmisiniz. Təhlükəsizlik forumunun iclası açıq elan olunur. Bu gün sərhəd təhlükəsizliyi məsələsini müzakirə edəcəyik."
espeak-ng -v en -w "$dir/en.wav" "Distinguished delegates, welcome. The session of the security forum is now open. Today we shall discuss border security."
espeak-ng -v ru -w "$dir/ru.wav" "Уважаемые делегаты, добро пожаловать. Заседание форума по безопасности объявляется открытым."
espeak-ng -v ar -w "$dir/ar.wav" "السادة المندوبون، مرحبا بكم. نعلن افتتاح جلسة منتدى الأمن."
espeak-ng -v fr -w "$dir/fr.wav" "Mesdames et messieurs les délégués, bienvenue. La séance du forum sur la sécurité est ouverte."

# Secrets for this run only; the relay would otherwise generate them and print them once.
secret() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
export BOOTHCAST_FLOOR_SECRET=$(secret) BOOTHCAST_ENGINEER_SECRET=$(secret)
for b in az en ru ar fr; do export "BOOTHCAST_BOOTH_SECRET_${b^^}=$(secret)"; done

pids=()
trap 'trap - EXIT INT TERM; kill 0 2>/dev/null' EXIT INT TERM
"$bin" serve --listen "0.0.0.0:$port" &
pids+=($!)
for _ in $(seq 50); do
    curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
server="ws://127.0.0.1:$port"
BOOTHCAST_SECRET=$BOOTHCAST_FLOOR_SECRET "$bin" floor --server "$server" --input-file "$dir/floor.wav" --loop >/dev/null &
pids+=($!)
for b in en ru fr; do
    var="BOOTHCAST_BOOTH_SECRET_${b^^}"
    sleep infinity | BOOTHCAST_SECRET=${!var} "$bin" booth --server "$server" --booth "$b" --input-file "$dir/$b.wav" --loop --live >/dev/null &
    pids+=($!)
done
# The Arabic booth hears English (relay) rather than the floor.
{ echo "input en"; sleep infinity; } | BOOTHCAST_SECRET=$BOOTHCAST_BOOTH_SECRET_AR "$bin" booth --server "$server" --booth ar --input-file "$dir/ar.wav" --loop --live >/dev/null &
pids+=($!)

cat <<INFO

boothcast is running on http://127.0.0.1:$port with the default event.
  delegates:            open http://127.0.0.1:$port/ in a browser (or the address above, from a phone)
  sound engineer:       http://127.0.0.1:$port/console with the engineer secret below
  listen to a channel:  $bin listen --server $server --lang en --output-file en.wav --seconds 10
  channels:             az (the floor), en, ru, fr (interpreters), ar (relay via English), floor
  engineer secret:      $BOOTHCAST_ENGINEER_SECRET
  metrics:              curl http://127.0.0.1:$port/metrics
Press Ctrl-C to stop.
INFO
wait
