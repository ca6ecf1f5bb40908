#!/usr/bin/env bash
# Downloads PulseAudio's Debian source package of one version into a directory:
#
#   scripts/fetch-pulse-source.sh VERSION DIR      # e.g. 17.0+dfsg1-2 target/distro/trixie
#
# apt-get source --download-only, which checks every file against the hashes of the release's
# (signed) Sources index. When the mirror serves the tarballs but not the .dsc itself (seen for
# trixie's pulseaudio_17.0+dfsg1-2.dsc on this machine's mirror: 404), the .dsc is written from
# that same Sources stanza (apt-cache showsrc: Format, Version, Files, Checksums-*), unsigned,
# so that dpkg-source -x (with --no-check) and debian/rules find it as usual. Needs a deb-src
# entry and `apt-get update`.
set -euo pipefail
[ $# = 2 ] || { echo "usage: $0 VERSION DIR" >&2; exit 2; }
ver=$1 dir=$2
noepoch=${ver#*:}
dsc=pulseaudio_$noepoch.dsc
mkdir -p "$dir"
cd "$dir"
if ( apt-get source -qq --download-only "pulseaudio=$ver" >&2 ) && [ -f "$dsc" ]; then
  exit 0
fi
[ -f "$dsc" ] && exit 0
# The stanza of exactly this version from the Sources index.
stanza=$(apt-cache showsrc pulseaudio | awk -v v="$ver" 'BEGIN { RS = "" }
  index("\n" $0 "\n", "\nVersion: " v "\n") { print; exit }')
[ -n "$stanza" ] || { echo "fetch-pulse-source: no pulseaudio $ver in the Sources index" >&2; exit 1; }
# Every file the stanza lists (but the .dsc) must have been downloaded (and so hash-checked).
files=$(printf '%s' "$stanza" | awk '/^Files:/{f=1; next} /^[^ ]/{f=0} f && $3 !~ /\.dsc$/ {print $3}')
[ -n "$files" ] || { echo "fetch-pulse-source: the stanza of pulseaudio $ver lists no files" >&2; exit 1; }
for f in $files; do
  [ -f "$f" ] || { echo "fetch-pulse-source: $f was not downloaded" >&2; exit 1; }
done
echo "fetch-pulse-source: the mirror has no $dsc: writing it from the Sources index (files hash-checked by apt)" >&2
printf '%s' "$stanza" | awk '
  /^[^ ]/ { split($0, kv, ":"); key = kv[1] }
  key == "Directory" || key == "Priority" || key == "Section" { next }
  /^ / && $NF ~ /\.dsc$/ { next }
  /^Package: / { sub(/^Package:/, "Source:") }
  { print }' > "$dsc.tmp"
mv "$dsc.tmp" "$dsc"
