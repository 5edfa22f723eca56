#!/usr/bin/env bash
# Runs every boothcast test on a Debian machine with Rust, installing what the tests need first:
# cmake (the bundled libopus), espeak-ng (speech), sox, ffmpeg and opus-tools (checking audio).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake pkg-config espeak-ng sox ffmpeg opus-tools)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
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

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo nextest run --locked --no-fail-fast "$@"
