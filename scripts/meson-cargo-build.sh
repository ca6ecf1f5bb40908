#!/usr/bin/env bash
# Called by meson: builds the named crates with cargo (release, one run) and copies each crate's
# artifact to OUTDIR/<file>, the name the sound server loads it by.
#   meson-cargo-build.sh SRCDIR OUTDIR --offline|--online CRATE-DIR=FILE...
# The artifact is the crate's cdylib (lib<lib name>.so) or, for a crate without a [lib]
# section but with a binary, the binary named like the package (or its [[bin]] name).
# CARGO_TARGET_DIR overrides the target directory (default OUTDIR/cargo-target).
set -euo pipefail
src=$1; out=$2; mode=$3; shift 3
offline=(); [ "$mode" = "--offline" ] && offline=(--offline)
target=${CARGO_TARGET_DIR:-$out/cargo-target}
# `name = "…"` of section [SECTION] in MANIFEST, if any.
section_name() {
  awk -v want="$2" '
    /^\[/ { insec = ($0 == want) ; next }
    insec && /^[[:space:]]*name[[:space:]]*=/ { sub(/^[^=]*=[[:space:]]*"/, ""); sub(/".*/, ""); print; exit }
  ' "$1"
}
# PACKAGE is the crate's directory; cargo wants the [package] name written in its manifest.
package_name() {
  local n=""
  [ -f "$src/$1/Cargo.toml" ] && n=$(section_name "$src/$1/Cargo.toml" "[package]")
  echo "${n:-$1}"
}
args=()
for a in "$@"; do args+=(-p "$(package_name "${a%%=*}")"); done
cargo build --release "${offline[@]}" --manifest-path "$src/Cargo.toml" --target-dir "$target" "${args[@]}"

for a in "$@"; do
  dir=${a%%=*}; file=${a#*=}; pkg=$(package_name "$dir")
  manifest="$src/$dir/Cargo.toml"
  lib=""; [ -f "$manifest" ] && lib=$(section_name "$manifest" "[lib]")
  bin=""; [ -f "$manifest" ] && bin=$(section_name "$manifest" "[[bin]]")
  candidates=()
  [ -n "$lib" ] && candidates+=("$target/release/lib${lib//-/_}.so")
  candidates+=("$target/release/lib${pkg//-/_}.so")
  [ -n "$bin" ] && candidates+=("$target/release/$bin")
  candidates+=("$target/release/$pkg")
  found=""
  for c in "${candidates[@]}"; do
    if [ -f "$c" ]; then found=$c; break; fi
  done
  if [ -z "$found" ]; then
    echo "meson-cargo-build: no artifact of $pkg (looked for: ${candidates[*]})" >&2
    exit 1
  fi
  cp -f "$found" "$out/$file"
done
