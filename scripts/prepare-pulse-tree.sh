#!/usr/bin/env bash
# Fetches and prepares PulseAudio's source tree of exactly the installed daemon version, for the
# pulsecore headers the binding crate is built against (Debian ships none).
#
#   scripts/prepare-pulse-tree.sh [DEST]      # default DEST: <repo>/.pulse-src
#
# Prints the prepared tree's path on the last line. Set PULSE_DIR to that path (the build does
# this by itself for the default DEST). Needs root for the deb-src entry and apt-get update.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$here/.pulse-src}
want=$(pkg-config --modversion libpulse 2>/dev/null) || {
  echo "prepare-pulse-tree: libpulse-dev is not installed (run scripts/install-deps.sh)" >&2; exit 1; }
debver=$(dpkg-query -W -f='${Version}' pulseaudio 2>/dev/null) || {
  echo "prepare-pulse-tree: the pulseaudio package is not installed" >&2; exit 1; }
tree="$dest/pulseaudio-$want"
if [ -f "$tree/src/pulsecore/sink.h" ] && [ -f "$tree/.opus-tunnel-prepared" ] \
   && [ "$(cat "$tree/.opus-tunnel-prepared")" = "$debver" ]; then
  echo "$tree"; exit 0
fi
mkdir -p "$dest"
# (ls fails when one of the two is absent: under pipefail that must not read as "no deb-src".)
if ! { ls /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; } | xargs grep -qs 'deb-src'; then
  echo "prepare-pulse-tree: adding a deb-src entry for Debian's source packages" >&2
  base=/etc/apt/sources.list.d/debian.sources
  uris="http://deb.debian.org/debian"; signed="/usr/share/keyrings/debian-archive-keyring.gpg"
  if [ -f "$base" ]; then
    u=$(awk '/^URIs:/{print $2; exit}' "$base"); [ -n "$u" ] && uris=$u
    s=$(awk '/^Signed-By:/{print $2; exit}' "$base"); [ -n "$s" ] && signed=$s
  fi
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  cat > /etc/apt/sources.list.d/opus-tunnel-src.sources <<SRC
Types: deb-src
URIs: $uris
Suites: $codename $codename-updates
Components: main
Signed-By: $signed
SRC
  apt-get update -qq
fi
work=$(mktemp -d "$dest/fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
srcver=$(dpkg-query -W -f='${source:Version}' pulseaudio)
"$here/scripts/fetch-pulse-source.sh" "$srcver" "$work" >&2 || {
  echo "prepare-pulse-tree: could not download the source of pulseaudio $debver" >&2; exit 1; }
rm -rf "$tree"
( cd "$work" && dpkg-source -x --no-check pulseaudio_*.dsc src >&2 )
got=$(sed -n "s/^project('pulseaudio', 'c', *version *: *'\?\([^',]*\).*/\1/p" "$work/src/meson.build" | head -1)
[ -f "$work/src/.tarball-version" ] && got=$(cat "$work/src/.tarball-version")
case "$got" in "$want"*) ;; *)
  echo "prepare-pulse-tree: fetched source is version '$got', installed daemon is $want" >&2; exit 1;;
esac
mv "$work/src" "$tree"
echo "$debver" > "$tree/.opus-tunnel-prepared"
echo "$tree"
