#!/usr/bin/env bash
# Builds the native PipeWire modules (release) and lays them out under target/pipewire-modules/
# with the file names PipeWire loads by (libpipewire-module-opus-tunnel.so, ...): PipeWire
# 0.3.65 loads `context.modules` entries by name from PIPEWIRE_MODULE_DIR (or its module
# directory, `pkg-config --variable=moduledir libpipewire-0.3`), not by path.
#   scripts/build-pipewire-modules.sh [--debug]
# Needs libpipewire-0.3-dev, libspa-0.2-dev, libclang-dev, pkg-config (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release; flag=--release
[ "${1:-}" = "--debug" ] && { profile=debug; flag=; }
MODULES=(libpipewire-module-opus-protocol-tcp libpipewire-module-opus-tunnel)
args=()
for m in "${MODULES[@]}"; do args+=(-p "$m"); done
cargo build $flag "${args[@]}"
mkdir -p target/pipewire-modules
for m in "${MODULES[@]}"; do
  lib=${m#lib}
  # Copy then rename: overwriting a loaded .so in place crashes the daemons that use it.
  cp -f "target/$profile/lib${lib//-/_}.so" "target/pipewire-modules/.$m.so.new"
  mv -f "target/pipewire-modules/.$m.so.new" "target/pipewire-modules/$m.so"
done
echo "PipeWire modules in $(pwd)/target/pipewire-modules: ${MODULES[*]}"
