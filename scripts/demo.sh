#!/usr/bin/env bash
# Sets up what is missing (as root on Debian 12: packages, PulseAudio source tree), builds the
# modules, and runs the demo: two private pulseaudio daemons on loopback, a stereo tone through
# an Opus tunnel, and the figures measured on the way (frequencies, levels, bitrate on the wire,
# idle traffic, end-to-end latency).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  scripts/install-deps.sh
fi
if [ -z "${PULSE_DIR:-}" ]; then
  scripts/prepare-pulse-tree.sh >/dev/null
fi
scripts/build-modules.sh >/dev/null
exec cargo run --release -q -p opus-tunnel-tests --bin demo
