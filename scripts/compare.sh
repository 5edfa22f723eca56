#!/usr/bin/env bash
# Side by side on this machine: boothcast and Icecast2 serving the same load, at several
# listener counts, one after the other. Each server is pinned to core 0 (one worker thread for
# boothcast), the load client to core 1. Every listener of both reads each frame or page as it
# arrives (PROBE_EVERY=1), so the two load clients cost the servers the same.
#   scripts/compare.sh [SECONDS] [LISTENER COUNTS...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(250 500 1000 2000)
cargo build --release --locked -q
for n in "${counts[@]}"; do
    echo "=== $n listeners over 10 channels, ${seconds} s ==="
    echo "--- boothcast"
    PROBE_EVERY=1 scripts/bench.sh load "$n" "$seconds" 10
    echo "--- icecast2"
    scripts/icecast.sh "$n" "$seconds"
done
