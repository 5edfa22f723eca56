#!/usr/bin/env bash
# Starts a PulseAudio daemon with two null sinks for the device tests and benchmarks, unless one
# is already answering: `booth_mic` (what is played into it is the booth's microphone, captured
# from its monitor `booth_mic.monitor`) and `delegate_ear` (the listener's headphones, recorded
# from `delegate_ear.monitor`). There is no sound card: null sinks are real PulseAudio devices
# that cpal opens like any other. ALSA reaches the daemon through the pulse plugin: the `pulse`
# device comes with libasound2-plugins, and while the daemon runs the pulseaudio package's
# /usr/share/alsa/alsa.conf.d/pulse.conf makes it ALSA's `default` too; nothing to write.
#
# The sinks do not rewind: a null sink that is rewound (when a stream starts or recovers from an
# underrun) has already passed the sound to its monitor, which then holds part of it twice or
# not at all.
#
# Source it or run it; it prints nothing when the daemon was already up.
set -euo pipefail

if ! pactl info >/dev/null 2>&1; then
    # As root, PulseAudio refuses the per-user mode unless told that this is meant (it would
    # otherwise want --system, which needs a `pulse` user and refuses most clients). The daemon
    # never exits by itself: test runs come and go.
    args=(--daemonize=yes --exit-idle-time=-1 --system=false --disallow-exit=yes
          --log-target=stderr --log-level=error)
    # Hardware and session modules are of no use without a sound card or a desktop session.
    args+=(-n --load=module-native-protocol-unix --load=module-always-sink)
    pulseaudio "${args[@]}"
    for _ in $(seq 50); do
        pactl info >/dev/null 2>&1 && break
        sleep 0.1
    done
    pactl info >/dev/null
fi

sinks=$(pactl list short sinks)
for sink in booth_mic delegate_ear; do
    if ! grep -qw "$sink" <<<"$sinks"; then
        pactl load-module module-null-sink sink_name="$sink" rate=48000 channels=1 norewinds=1 \
            sink_properties=device.description="$sink" >/dev/null
    fi
done
