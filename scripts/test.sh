#!/usr/bin/env bash
# Runs every boothcast test on a Debian machine with Rust, installing what the tests need first:
# cmake (the bundled libopus), libasound2-dev (cpal), openssl (test certificates), espeak-ng (speech), sox, ffmpeg and opus-tools (checking audio),
# chromium (the web pages' tests, driven by playwright-core from web-client/package.json), tmux (the
# terminal console's test), pulseaudio, pulseaudio-utils and libasound2-plugins (the audio device
# tests: a PulseAudio daemon with null sinks, which cpal reaches through ALSA's `pulse` device),
# firefox-esr, webkit2gtk-driver, xvfb and xauth (the pages' sound in Firefox and WebKit),
# zbar-tools (reading the halls' QR codes), iproute2 (the halls test's network namespace),
# nats-server (the cluster tests), python3 (the idle-connection flood); then cargo-fuzz for
# scripts/fuzz.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake pkg-config libasound2-dev openssl espeak-ng sox ffmpeg opus-tools chromium tmux
          pulseaudio pulseaudio-utils libasound2-plugins firefox-esr webkit2gtk-driver xvfb xauth
          zbar-tools iproute2 nats-server python3)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "installing: ${missing[*]}"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi

npm ci --prefix web-client --no-audit --no-fund
bash scripts/pulse.sh

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo nextest run --locked --no-fail-fast "$@"
bash scripts/fuzz.sh 20
