#!/usr/bin/env bash
# Builds the PulseAudio modules (release) and lays them out under target/modules/ with the
# file names the daemon loads by (module-tunnel-sink-opus.so, ...).
#   scripts/build-modules.sh [--debug]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release; flag=--release
[ "${1:-}" = "--debug" ] && { profile=debug; flag=; }
MODULES=(module-tunnel-sink-opus module-tunnel-source-opus module-opus-protocol-tcp)
args=()
for m in "${MODULES[@]}"; do args+=(-p "$m"); done
cargo build $flag "${args[@]}"
mkdir -p target/modules
for m in "${MODULES[@]}"; do
  # Copy then rename: overwriting a loaded .so in place crashes the daemons that use it.
  cp -f "target/$profile/lib${m//-/_}.so" "target/modules/.$m.so.tmp"
  mv -f "target/modules/.$m.so.tmp" "target/modules/$m.so"
done
echo "modules in $(pwd)/target/modules: ${MODULES[*]}"
