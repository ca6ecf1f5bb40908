#!/usr/bin/env bash
# Called by meson: builds the named module crates with cargo (release) and copies each
# cdylib to OUTDIR/<module>.so, the name PulseAudio loads it by.
#   meson-cargo-build.sh SRCDIR OUTDIR --offline|--online MODULE...
set -euo pipefail
src=$1; out=$2; mode=$3; shift 3
offline=(); [ "$mode" = "--offline" ] && offline=(--offline)
target="$out/cargo-target"
args=()
for m in "$@"; do args+=(-p "$m"); done
cargo build --release "${offline[@]}" --manifest-path "$src/Cargo.toml" --target-dir "$target" "${args[@]}"
for m in "$@"; do
  cp -f "$target/release/lib${m//-/_}.so" "$out/$m.so"
done
