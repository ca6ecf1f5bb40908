#!/usr/bin/env bash
# The install test (root, Debian 12): builds the Debian packages from this tree with
# dpkg-buildpackage, checks them with lintian (no errors) and dpkg -I (exact daemon version in
# Depends), installs them with dpkg -i, starts private PulseAudio daemons WITHOUT any module
# search path of ours, loads every module by its bare name, plays a 1000 Hz tone through the
# tunnel and checks it arrives; the same for PipeWire when its package was built; then purges
# the packages and checks that nothing is left behind.
#
#   scripts/package-test.sh
#
# It packages HEAD (the committed tree, like CI): commit what you want tested.
# Work files: target/package-test/ (the packages stay there; the cargo target directory
# (OPUS_TUNNEL_PKG_TARGET, default target/package-test/cargo-target) is kept
# between runs so that a rerun only rebuilds what changed). Every daemon it starts is stopped by
# its pid, also on failure; the packages are purged on failure too.
# OPUS_TUNNEL_KEEP_DIRS=1 keeps the daemons' directories (logs).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
start=$(date +%s)
say() { echo "== package-test: $*"; }
die() { echo "package-test: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (dpkg -i, apt-get source)"

PKGS_ALL=(pulseaudio-module-opus-tunnel opus-tunnel-ctl pipewire-module-opus-tunnel)
work=$repo/target/package-test
tree=$work/opus-tunnel
export CARGO_TARGET_DIR=${OPUS_TUNNEL_PKG_TARGET:-$work/cargo-target}

# ---------------------------------------------------------------- cleanup (trap)
pids=()
rundir=""
installed_by_us=0
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  if [ "$installed_by_us" = 1 ]; then
    dpkg --purge "${PKGS_ALL[@]}" >/dev/null 2>&1 || true
  fi
  if [ -n "$rundir" ]; then
    if [ "${OPUS_TUNNEL_KEEP_DIRS:-0}" = 1 ] || [ $rc != 0 ]; then
      echo "package-test: daemon directories kept in $rundir" >&2
    else
      rm -rf "$rundir"
    fi
  fi
  exit $rc
}
trap cleanup EXIT INT TERM

# ---------------------------------------------------------------- tools
# The build and test dependencies, and the packaging tools.
"$repo/scripts/install-deps.sh" debhelper dpkg-dev fakeroot lintian xz-utils python3

for p in "${PKGS_ALL[@]}"; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "installed"; then
    say "$p is installed from an earlier run: purging it first"
    dpkg --purge "$p" >/dev/null
  fi
done

# ---------------------------------------------------------------- build
pa_version=$(dpkg-query -W -f='${Version}' pulseaudio)
pa_src_version=$(dpkg-query -W -f='${source:Version}' pulseaudio)
pa_src_noepoch=${pa_src_version#*:}
mkdir -p "$work"
# PulseAudio's source package of exactly the installed daemon, beside the tree, where
# debian/rules looks for it (../pulseaudio_<version>.dsc). prepare-pulse-tree.sh makes sure
# there is a deb-src entry (and prepares .pulse-src/ for the development build).
if [ ! -f "$work/pulseaudio_$pa_src_noepoch.dsc" ]; then
  say "fetching the source package pulseaudio $pa_src_version"
  "$repo/scripts/prepare-pulse-tree.sh" >/dev/null
  ( cd "$work" && apt-get source -qq --download-only "pulseaudio=$pa_src_version" >/dev/null 2>&1 ) \
    || die "apt-get source pulseaudio=$pa_src_version failed"
fi
# The committed tree (HEAD, as CI sees it): others' uncommitted edits do not leak in.
rev=$(git -C "$repo" rev-parse --short HEAD)
say "exporting HEAD ($rev) to $tree"
rm -rf "$tree"
mkdir -p "$tree"
git -C "$repo" archive --format=tar HEAD | tar -xmf - -C "$tree"   # -m: mtimes of now, or cargo would trust older builds
rm -f "$work"/*.deb "$work"/*.changes "$work"/*.buildinfo
say "dpkg-buildpackage -us -uc -b (nice -n 19)"
t0=$(date +%s)
( cd "$tree" && nice -n 19 dpkg-buildpackage -us -uc -b ) > "$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; die "dpkg-buildpackage failed (log: $work/build.log)"; }
say "built in $(( $(date +%s) - t0 )) s: $(cd "$work" && ls *.deb | tr '\n' ' ')"
changes=$(ls "$work"/opus-tunnel_*_*.changes)

# ---------------------------------------------------------------- lintian
say "lintian"
lintian --fail-on error "$changes" > "$work/lintian.txt" 2>&1 || { cat "$work/lintian.txt" >&2; die "lintian reports errors"; }
grep -E '^[EW]:' "$work/lintian.txt" || echo "(no errors, no warnings)"

# ---------------------------------------------------------------- the packages
debs=()
built=()
for p in "${PKGS_ALL[@]}"; do
  f=$(ls "$work/${p}_"*.deb 2>/dev/null | head -1 || true)
  [ -n "$f" ] || continue
  debs+=("$f"); built+=("$p")
  echo "--- $p: $(dpkg-deb -f "$f" Version) Depends: $(dpkg-deb -f "$f" Depends)"
done
[ -n "$(ls "$work"/pulseaudio-module-opus-tunnel_*.deb 2>/dev/null)" ] || die "pulseaudio-module-opus-tunnel was not built"
dpkg-deb -f "$work"/pulseaudio-module-opus-tunnel_*.deb Depends | grep -qF "pulseaudio (= $pa_version)" \
  || die "pulseaudio-module-opus-tunnel does not depend on pulseaudio (= $pa_version)"
have_pw=0
if [ -n "$(ls "$work"/pipewire-module-opus-tunnel_*.deb 2>/dev/null)" ]; then
  have_pw=1
  pw_version=$(dpkg-query -W -f='${Version}' pipewire-bin)
  dpkg-deb -f "$work"/pipewire-module-opus-tunnel_*.deb Depends | grep -qF "pipewire-bin (= $pw_version)" \
    || die "pipewire-module-opus-tunnel does not depend on pipewire-bin (= $pw_version)"
else
  say "pipewire-module-opus-tunnel not built (its crates are absent or do not declare pipewire__module_init yet): PipeWire part skipped"
fi

# ---------------------------------------------------------------- install
say "dpkg -i ${built[*]}"
installed_by_us=1
dpkg -i "${debs[@]}" >/dev/null || die "dpkg -i failed"
filelist=$work/files.txt
: > "$filelist"
for p in "${built[@]}"; do dpkg -L "$p" >> "$filelist"; done
echo "    dpkg -L:"; grep -vxE '/\.|/usr|/usr/(lib|share|share/doc|bin)' "$filelist" | sed 's/^/      /'
modlibexecdir=$(pkg-config --variable=modlibexecdir libpulse)
for m in module-tunnel-sink-opus module-tunnel-source-opus module-opus-protocol-tcp; do
  grep -qx "$modlibexecdir/$m.so" "$filelist" || die "$m.so is not installed in $modlibexecdir"
done

# ---------------------------------------------------------------- private PulseAudio daemons
rundir=$(mktemp -d /tmp/opus-tunnel-pkgtest.XXXXXX)
port=$(( 20000 + RANDOM % 20000 ))

# pa_env NAME: the environment of daemon NAME (and of the clients talking to it).
pa_env() {
  local d=$rundir/$1
  echo "HOME=$d PULSE_RUNTIME_PATH=$d PULSE_STATE_PATH=$d XDG_RUNTIME_DIR=$d XDG_CONFIG_HOME=$d/.config PULSE_SERVER=unix:$d/native PULSE_CLIENTCONFIG=$d/client.conf DBUS_SESSION_BUS_ADDRESS=disabled:"
}
pa() { local n=$1; shift; env -u DISPLAY $(pa_env "$n") "$@"; }
start_pa() {
  local n=$1 d=$rundir/$1
  mkdir -p "$d"; chmod 700 "$d"
  cat > "$d/init.pa" <<EOF
load-module module-native-protocol-unix socket=$d/native auth-anonymous=1
load-module module-null-sink sink_name=null rate=48000 channels=2
set-default-sink null
EOF
  # No --dl-search-path: the daemon finds modules only in its own directory.
  # Started through env (which execs the daemon), not the shell function pa: $! is then the
  # daemon's own pid, which the cleanup stops (a function's $! is its subshell's).
  env -u DISPLAY $(pa_env "$n") pulseaudio -n -F "$d/init.pa" --daemonize=no --exit-idle-time=-1 \
    --use-pid-file=no --disable-shm=yes --log-target="file:$d/daemon.log" --log-level=info &
  pids+=($!)
  for _ in $(seq 100); do
    pa "$n" pactl info >/dev/null 2>&1 && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$d/daemon.log" >&2; die "pulseaudio $n exited at start"; }
    sleep 0.1
  done
  cat "$d/daemon.log" >&2; die "pulseaudio $n does not answer"
}

# measure FILE: frequency (zero crossings) and RMS level (dBFS) of the left channel of a raw
# s16le stereo 48 kHz recording, over its loud part.
measure() {
  python3 - "$1" <<'EOF'
import math, struct, sys
data = open(sys.argv[1], "rb").read()
n = len(data) // 4
left = struct.unpack("<%dh" % (2 * n), data[: 4 * n])[0::2]
# the loud part: 10 ms blocks whose RMS is within 10 dB of the loudest
blk = 480
rms = [math.sqrt(sum(x * x for x in left[i:i + blk]) / blk) for i in range(0, n - blk, blk)]
if not rms or max(rms) < 30:
    print("0 -inf 0"); sys.exit(0)
top = max(rms)
loud = [i for i, r in enumerate(rms) if r > top / 3.2]
a, b = loud[0] * blk, (loud[-1] + 1) * blk
# The steady part: the last 3 s of the tone. (A stream's first seconds can be up to 1 %
# off pitch while the receiver's drift correction settles: a known limit, see the README.)
seg = left[max(a, b - 3 * 48000):b]
cross = sum(1 for i in range(1, len(seg)) if (seg[i - 1] < 0) != (seg[i] < 0))
freq = cross / 2 / (len(seg) / 48000)
level = 20 * math.log10(math.sqrt(sum(x * x for x in seg) / len(seg)) / 32768)
print("%.1f %.1f %.2f" % (freq, level, len(seg) / 48000))
EOF
}

# tone_through SENDER RECEIVER-DAEMON: plays 8 s of 1000 Hz into sink "tun" of SENDER, records
# the null sink's monitor of RECEIVER, checks frequency and level.
tone_through() {
  local s=$1 r=$2 rec=$rundir/$2.raw
  rm -f "$rec"
  env -u DISPLAY $(pa_env "$r") timeout 13 parec --raw --format=s16le --rate=48000 --channels=2 \
    --latency-msec=50 -d null.monitor "$rec" &
  local rec_pid=$!; pids+=($rec_pid)
  sleep 1
  python3 -c '
import math, struct, sys
amp = int(32767 * 10 ** (-12 / 20))
out = bytearray()
for i in range(48000 * 8):
    v = int(amp * math.sin(2 * math.pi * 1000 * i / 48000))
    out += struct.pack("<hh", v, v)
sys.stdout.buffer.write(out)' \
    | pa "$s" timeout 15 pacat --playback --raw --format=s16le --rate=48000 --channels=2 -d tun
  wait "$rec_pid" || true
  read -r freq level secs < <(measure "$rec")
  echo "    received: ${secs} s of tone at ${freq} Hz, ${level} dBFS (sent: 1000 Hz, peak -12 dBFS = RMS -15 dBFS)"
  python3 -c "import sys; f,l,s=map(float,sys.argv[1:]); sys.exit(0 if abs(f-1000)<=5 and abs(l+15)<=1.5 and s>=2.0 else 1)" \
    "$freq" "$level" "$secs" || die "the tone did not arrive intact through the tunnel"
}

say "PulseAudio: two private daemons, modules loaded by name from $modlibexecdir"
start_pa recv
start_pa send
pa recv pactl load-module module-opus-protocol-tcp port="$port" listen=127.0.0.1 auth-anonymous=1 >/dev/null \
  || { tail -20 "$rundir/recv/daemon.log" >&2; die "pactl load-module module-opus-protocol-tcp failed"; }
pa send pactl load-module module-tunnel-sink-opus server="tcp:127.0.0.1:$port" sink_name=tun >/dev/null \
  || { tail -20 "$rundir/send/daemon.log" >&2; die "pactl load-module module-tunnel-sink-opus failed"; }
tone_through send recv
pa recv pactl list sink-inputs | grep -q 'application.name = "opus-tunnel"' \
  || die "no opus-tunnel stream on the receiving daemon"
pa send pactl load-module module-tunnel-source-opus server="tcp:127.0.0.1:$port" source_name=mic >/dev/null \
  || { tail -20 "$rundir/send/daemon.log" >&2; die "pactl load-module module-tunnel-source-opus failed"; }
pa send pactl list short sources | grep -q $'\tmic\t' || die "the tunnel source mic does not exist"
echo "    module-tunnel-source-opus loaded by name: source mic"
if [ "${#built[@]}" -gt 0 ] && printf '%s\n' "${built[@]}" | grep -qx opus-tunnel-ctl; then
  pa send opus-tunnel-ctl --help >/dev/null || die "opus-tunnel-ctl --help failed"
  echo "    opus-tunnel-ctl runs from /usr/bin"
fi

# ---------------------------------------------------------------- PipeWire
if [ "$have_pw" = 1 ]; then
  say "PipeWire: a private daemon with libpipewire-module-opus-protocol-tcp from context.modules"
  pwd_dir=$rundir/pw; mkdir -p "$pwd_dir"; chmod 700 "$pwd_dir"
  pwport=$(( port + 1 ))
  cat > "$pwd_dir/pipewire.conf" <<EOF
context.properties = { support.dbus = false  core.daemon = true  core.name = pipewire-0 }
context.spa-libs = {
    audio.convert.* = audioconvert/libspa-audioconvert
    support.*       = support/libspa-support
}
context.modules = [
    { name = libpipewire-module-protocol-native }
    { name = libpipewire-module-metadata }
    { name = libpipewire-module-access args = { } }
    { name = libpipewire-module-spa-node-factory }
    { name = libpipewire-module-client-node }
    { name = libpipewire-module-adapter }
    { name = libpipewire-module-link-factory }
    { name = libpipewire-module-opus-protocol-tcp
      args = { server.address = [ "tcp:127.0.0.1:$pwport" ] auth.anonymous = true } }
    { name = libpipewire-module-opus-tunnel
      args = { tunnel.mode = sink server.address = "tcp:127.0.0.1:$port" stream.props = { node.name = pwtun } } }
]
context.objects = [
    { factory = spa-node-factory args = { factory.name = support.node.driver node.name = Dummy-Driver
        node.group = pipewire.dummy priority.driver = 20000 } }
]
EOF
  # No PIPEWIRE_MODULE_DIR: the daemon finds modules only in its own directory.
  env -u PIPEWIRE_MODULE_DIR XDG_RUNTIME_DIR="$pwd_dir" HOME="$pwd_dir" DBUS_SESSION_BUS_ADDRESS=disabled: \
    pipewire -c "$pwd_dir/pipewire.conf" > "$pwd_dir/daemon.log" 2>&1 &
  pids+=($!); pw_pid=$!
  sleep 3
  kill -0 "$pw_pid" 2>/dev/null || { cat "$pwd_dir/daemon.log" >&2; die "pipewire exited: a module failed to load by name"; }
  # The PipeWire receiver accepts a tunnel from the PulseAudio sender (same wire) ...
  pa send pactl load-module module-tunnel-sink-opus server="tcp:127.0.0.1:$pwport" sink_name=topw >/dev/null \
    || die "module-tunnel-sink-opus towards the PipeWire receiver failed to load"
  ok=0
  for _ in $(seq 50); do
    st=$(pa send pactl list sinks | awk '/Name: topw/{f=1} f && /opus.tunnel.state/{print $3; exit}' | tr -d '"')
    case "$st" in idle|streaming) ok=1; break;; esac
    sleep 0.2
  done
  [ "$ok" = 1 ] || { cat "$pwd_dir/daemon.log" >&2; die "the PipeWire receiver did not accept the tunnel (state: ${st:-none})"; }
  echo "    PulseAudio sender -> PipeWire receiver: connected ($st)"
  # ... and the PipeWire sender's tunnel reaches the PulseAudio receiver.
  ok=0
  for _ in $(seq 50); do
    pa recv pactl list sink-inputs | grep -q 'media.name = "pwtun on ' && { ok=1; break; }
    sleep 0.2
  done
  [ "$ok" = 1 ] || { cat "$pwd_dir/daemon.log" >&2; die "the PipeWire sender did not connect to the PulseAudio receiver"; }
  echo "    PipeWire sender -> PulseAudio receiver: connected"
fi

# ---------------------------------------------------------------- stop, purge, check
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
pids=()
# None of the daemons (nor their clients) outlives the test: every one was started with a path
# under $rundir on its command line.
if pgrep -f "$rundir/" >/dev/null; then
  pgrep -af "$rundir/" >&2
  die "processes started by the test are still running"
fi
echo "    every daemon started here is stopped (none left under $rundir)"
say "dpkg --purge ${built[*]}"
dpkg --purge "${built[@]}" >/dev/null || die "dpkg --purge failed"
installed_by_us=0
for p in "${built[@]}"; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "installed"; then
    die "$p is still installed after purge"
  fi
  dpkg -s "$p" >/dev/null 2>&1 && die "dpkg -s $p still knows the package"
done
left=0
while IFS= read -r f; do
  [ -e "$f" ] && [ ! -d "$f" ] && { echo "left behind: $f" >&2; left=1; }
done < "$filelist"
# directories created for our files only (not the daemon's own) must be gone too
for d in /usr/share/doc/pulseaudio-module-opus-tunnel /usr/share/doc/opus-tunnel-ctl /usr/share/doc/pipewire-module-opus-tunnel; do
  [ -e "$d" ] && { echo "left behind: $d" >&2; left=1; }
done
[ "$left" = 0 ] || die "files left behind after purge"
echo "    purged: $(wc -l < "$filelist") paths gone, dpkg -s says not installed"

say "passed in $(( $(date +%s) - start )) s"
echo "1 passed, 0 failed"
