#!/usr/bin/env bash
# The install test (root; Debian 12, or another release inside scripts/distro-test.sh's chroot):
# builds the Debian packages from this tree with dpkg-buildpackage, checks them with lintian (no
# errors) and dpkg -I (the daemon's upstream version in Depends), installs them with dpkg -i,
# starts private PulseAudio daemons WITHOUT any module search path of ours, loads every module
# by its bare name, plays a 1000 Hz tone through the tunnel and checks it arrives; the same for
# PipeWire when its package was built; then purges the packages and checks that nothing is left
# behind.
#
#   scripts/package-test.sh
#
# It packages HEAD (the committed tree, like CI): commit what you want tested.
# Work files: target/package-test/ (the packages stay there; the cargo target directory
# (OPUS_TUNNEL_PKG_TARGET, default target/package-test/cargo-target) is kept
# between runs so that a rerun only rebuilds what changed). Every daemon it starts is stopped by
# its pid, also on failure; the packages are purged on failure too.
# OPUS_TUNNEL_KEEP_DIRS=1 keeps the daemons' directories (logs).
# OPUS_TUNNEL_SMOKE=full (scripts/distro-test.sh sets it) adds, with the installed packages:
# the microphone (a tone recorded through module-tunnel-source-opus), a live bitrate change
# (update-sink-proplist on the CLI protocol, checked in the sink's properties, then a tone at the
# new bitrate) and tones PulseAudio->PipeWire and PipeWire->PulseAudio (a second PipeWire daemon
# with a null sink, pipewire-pulse's protocol and WirePlumber).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
start=$(date +%s)
say() { echo "== package-test: $*"; }
die() { echo "package-test: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (dpkg -i, apt-get source)"

PKGS_ALL=(pulseaudio-module-opus-tunnel opus-tunnel-ctl pipewire-module-opus-tunnel)
# OPUS_TUNNEL_PKG_WORK: another work directory (scripts/distro-test.sh: target/distro/RELEASE).
work=${OPUS_TUNNEL_PKG_WORK:-$repo/target/package-test}
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
  "$repo/scripts/fetch-pulse-source.sh" "$pa_src_version" "$work" >/dev/null 2>&1 \
    || die "fetching the source package pulseaudio=$pa_src_version failed (scripts/fetch-pulse-source.sh)"
fi
# The committed tree (HEAD, as CI sees it): others' uncommitted edits do not leak in.
rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo exported)
# OPUS_TUNNEL_PKG_EXPORTED=1: the caller has exported HEAD to $tree (distro-test.sh does, on the
# host: the worktree's git directory is not inside its chroot).
if [ "${OPUS_TUNNEL_PKG_EXPORTED:-0}" = 1 ]; then
  [ -f "$tree/debian/rules" ] || die "OPUS_TUNNEL_PKG_EXPORTED=1 but no exported tree in $tree"
  say "building the tree exported to $tree"
else
  say "exporting HEAD ($rev) to $tree"
  rm -rf "$tree"
  mkdir -p "$tree"
  git -C "$repo" archive --format=tar HEAD | tar -xmf - -C "$tree"   # -m: mtimes of now, or cargo would trust older builds
fi
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
# Pinned to the upstream version the modules were built against, not to one Debian revision:
# a security update or binNMU of the daemon (16.1+dfsg1-2 -> -2+deb12u1) keeps its module
# directory (/usr/lib/pulse-<upstream>/modules), libpulsecore-<upstream>.so and its structs.
pa_up=${pa_version%-*}
dpkg-deb -f "$work"/pulseaudio-module-opus-tunnel_*.deb Depends | grep -qF "pulseaudio (>= $pa_up), pulseaudio (<< $pa_up.~)" \
  || die "pulseaudio-module-opus-tunnel does not depend on pulseaudio (>= $pa_up), pulseaudio (<< $pa_up.~)"
have_pw=0
if [ -n "$(ls "$work"/pipewire-module-opus-tunnel_*.deb 2>/dev/null)" ]; then
  have_pw=1
  pw_version=$(dpkg-query -W -f='${Version}' pipewire-bin)
  pw_up=${pw_version%-*}
  dpkg-deb -f "$work"/pipewire-module-opus-tunnel_*.deb Depends | grep -qF "pipewire-bin (>= $pw_up), pipewire-bin (<< $pw_up.~)" \
    || die "pipewire-module-opus-tunnel does not depend on pipewire-bin (>= $pw_up), pipewire-bin (<< $pw_up.~)"
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
  # The CLI protocol (what pacmd talks to): update-sink-proplist exists only there.
  if [ "${OPUS_TUNNEL_SMOKE:-}" = full ]; then
    echo "load-module module-cli-protocol-unix socket=$d/cli" >> "$d/init.pa"
  fi
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
# The steady part: the last 3 s of the tone before the last 10 ms block at its full level
# (within 3.5 dB of the loud blocks' median). The loud part ends with the block where the tone fades out,
# and after the fade the decoder can ring on for a few ms at -55 to -95 dBFS with 4-5 times
# the tone's zero crossings: counted in, those moved a 3 s count by up to +9 Hz, depending on
# where the fade fell in its block.
level_of_tone = sorted(rms[i] for i in loud)[len(loud) // 2]
end = [i for i, r in enumerate(rms) if r > level_of_tone / 1.5][-1] * blk
seg = left[max(a, end - 3 * 48000):end]
def zc_freq(x):
    cross = sum(1 for i in range(1, len(x)) if (x[i - 1] < 0) != (x[i] < 0))
    return cross / 2 / (len(x) / 48000)
# The tone's frequency: the median of its 200 ms blocks' own (zero crossings). A pitch error
# moves most blocks; a glitch (a concealed packet on a busy machine) moves one or two, and
# its few extra crossings would move a count over the whole 3 s by several Hz. The blocks
# more than 5 Hz off are listed ("START_S:HZ"); the whole count is printed too.
blocks = [(i, zc_freq(seg[i:i + 9600])) for i in range(0, len(seg) - 9600 + 1, 9600)]
freq = sorted(f for _, f in blocks)[len(blocks) // 2] if blocks else zc_freq(seg)
level = 20 * math.log10(math.sqrt(sum(x * x for x in seg) / len(seg)) / 32768)
off = ["%.1f:%.0f" % (i / 48000, f) for i, f in blocks if abs(f - 1000) > 5]
print("%.1f %.1f %.2f %.1f %d/%d%s" % (freq, level, len(seg) / 48000, zc_freq(seg), len(off),
      len(blocks), (" (" + " ".join(off) + ")") if off else ""))
EOF
}

# engine_figures CLIENT-ENV: the receive engine's figures of each opus-tunnel stream that
# plays (a receiver's sink input, a tunnel source) on the server of CLIENT-ENV, one line.
engine_figures() {
  { env -u DISPLAY $1 pactl list sink-inputs; env -u DISPLAY $1 pactl list sources; } 2>/dev/null | awk '
    function flush() {
      if (f["drift_ppm"] != "" && f["state"] != "idle") {
        printf "%s%s: state %s, drift %s ppm, latency %s us, target %s us, underruns %s, concealed frames %s", sep, name, f["state"], f["drift_ppm"], f["latency_usec"], f["target_latency_usec"], f["underruns"], f["plc_frames"]
        sep = "; "
      }
      delete f
    }
    BEGIN { n = split("state drift_ppm latency_usec target_latency_usec underruns plc_frames", w, " "); for (i = 1; i <= n; i++) want["opus.tunnel." w[i]] = w[i] }
    /^(Sink Input|Source) #/ { flush(); name = $0 }
    ($1 in want) { v = $3; gsub(/"/, "", v); f[want[$1]] = v }
    END { flush() }'
}

# tone_through SENDER RECEIVER-DAEMON: plays 8 s of 1000 Hz into sink "tun" of SENDER, records
# the null sink's monitor of RECEIVER, checks frequency and level.
tone_through() { tone_env "$(pa_env "$1")" tun "$(pa_env "$2")" null.monitor "$rundir/$2.raw"; }
# tone_env PLAY-ENV SINK RECORD-ENV SOURCE FILE: the same between any two servers (PulseAudio or
# pipewire-pulse), given the environments of their clients.
tone_env() {
  local s_env=$1 sink=$2 r_env=$3 source=$4 rec=$5
  rm -f "$rec"
  env -u DISPLAY $r_env timeout 13 parec --raw --format=s16le --rate=48000 --channels=2 \
    --latency-msec=50 -d "$source" "$rec" &
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
    | env -u DISPLAY $s_env timeout 15 pacat --playback --raw --format=s16le --rate=48000 --channels=2 -d "$sink" &
  local play_pid=$!; pids+=($play_pid)
  # What the receiving end's engine says while the tone plays (6.5 s in): printed with the
  # figures, so that a tone that arrives wrong says why (drift, underruns, concealment).
  sleep 6.5
  local engine
  engine=$(engine_figures "$r_env")
  wait "$play_pid" || true
  wait "$rec_pid" || true
  read -r freq level secs whole blocks < <(measure "$rec")
  echo "    received: ${secs} s of tone at ${freq} Hz, ${level} dBFS (sent: 1000 Hz, peak -12 dBFS = RMS -15 dBFS)"
  echo "      its 200 ms blocks more than 5 Hz off: ${blocks}; zero crossings over all of it: ${whole} Hz"
  echo "      receiving engine at 6.5 s: ${engine:-no opus-tunnel stream found}"
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
# What every private PipeWire daemon here starts its configuration with: the SPA plugins and
# the first modules (each config's context.modules list goes on after these).
pw_common='context.spa-libs = {
    audio.convert.* = audioconvert/libspa-audioconvert
    support.*       = support/libspa-support
}
context.modules = [
    { name = libpipewire-module-protocol-native }
    { name = libpipewire-module-metadata }
    { name = libpipewire-module-access args = { } }'
if [ "$have_pw" = 1 ]; then
  say "PipeWire: a private daemon with libpipewire-module-opus-protocol-tcp from context.modules"
  pwd_dir=$rundir/pw; mkdir -p "$pwd_dir"; chmod 700 "$pwd_dir"
  pwport=$(( port + 1 ))
  cat > "$pwd_dir/pipewire.conf" <<EOF
context.properties = { support.dbus = false  core.daemon = true  core.name = pipewire-0 }
$pw_common
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

# ---------------------------------------------------------------- the full smoke (distro-test)
if [ "${OPUS_TUNNEL_SMOKE:-}" = full ]; then
  [ "$have_pw" = 1 ] || die "OPUS_TUNNEL_SMOKE=full: the PipeWire package was not built"
  # The microphone: a tone played into the receiving daemon's null sink comes back through the
  # tunnel source mic (which records the far end's default source, null.monitor).
  say "the microphone: a tone through module-tunnel-source-opus (mic)"
  tone_env "$(pa_env recv)" null "$(pa_env send)" mic "$rundir/mic.raw"

  # A live bitrate change on the PulseAudio tunnel sink, through the CLI protocol.
  say "a live bitrate change: update-sink-proplist tun compression.bitrate=32000"
  sink_prop() { pa send pactl list sinks | awk -v k="$1" '/Name: tun$/{f=1} f && $1 == k {print $3; exit}' | tr -d '"'; }
  before=$(sink_prop opus.tunnel.reconnects)
  python3 - "$rundir/send/cli" <<'PY' || die "update-sink-proplist on the CLI protocol failed"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(b"update-sink-proplist tun compression.bitrate=32000\n")
s.shutdown(socket.SHUT_WR)
out = b""
while True:
    b = s.recv(4096)
    if not b:
        break
    out += b
text = out.decode(errors="replace")
if "refused" in text.lower() or "fail" in text.lower():
    print(text, file=sys.stderr)
    sys.exit(1)
PY
  br=""
  for _ in $(seq 50); do
    br=$(sink_prop compression.bitrate)
    [ "$br" = 32000 ] && break
    sleep 0.1
  done
  [ "$br" = 32000 ] || { tail -20 "$rundir/send/daemon.log" >&2; die "compression.bitrate of tun is '$br', not 32000"; }
  after=$(sink_prop opus.tunnel.reconnects)
  [ "${before:-0}" = "${after:-0}" ] || die "the bitrate change made the tunnel reconnect ($before -> $after)"
  echo "    tun: compression.bitrate = 32000 in its properties, no reconnect; a tone at 32 kbit/s:"
  tone_through send recv

  # PipeWire with pipewire-pulse's protocol, a null sink and WirePlumber; the two modules
  # loaded by name from the installed package.
  say "PipeWire tones: a second private daemon with a null sink and WirePlumber"
  pw2=$rundir/pw2; mkdir -p "$pw2/home"; chmod 700 "$pw2"
  pw2port=$(( port + 2 ))
  pw_moddir=$(pkg-config --variable=moduledir libpipewire-0.3)
  sm=""
  # The session-manager module (WirePlumber 0.4 uses it): loaded when the release ships it
  # (PipeWire 0.3.65 and 1.4.2 both do).
  [ -f "$pw_moddir/libpipewire-module-session-manager.so" ] && sm="{ name = libpipewire-module-session-manager }"
  cat > "$pw2/pipewire.conf" <<EOF
context.properties = { support.dbus = false core.daemon = true core.name = pipewire-0
  default.clock.rate = 48000 mem.allow-mlock = false mem.warn-mlock = false log.level = 2 }
$pw_common
    { name = libpipewire-module-spa-device-factory }
    { name = libpipewire-module-spa-node-factory }
    { name = libpipewire-module-client-node }
    { name = libpipewire-module-client-device }
    { name = libpipewire-module-adapter }
    { name = libpipewire-module-link-factory }
    $sm
    { name = libpipewire-module-protocol-pulse args = { server.address = [ "unix:native" ] } }
    { name = libpipewire-module-opus-protocol-tcp
      args = { server.address = [ "tcp:127.0.0.1:$pw2port" ] auth.anonymous = true target.object = "null" } }
    { name = libpipewire-module-opus-tunnel
      args = { tunnel.mode = sink server.address = "tcp:127.0.0.1:$port" remote.sink = "null"
               stream.props = { node.name = "pwtun2" } } }
]
context.objects = [
    { factory = spa-node-factory args = { factory.name = support.node.driver node.name = Dummy-Driver node.group = pipewire.dummy priority.driver = 20000 } }
    { factory = adapter args = { factory.name = support.null-audio-sink node.name = "null" node.description = "Null sink" media.class = Audio/Sink audio.position = [ FL FR ] audio.rate = 48000 monitor.channel-volumes = true object.linger = true priority.session = 2000 priority.driver = 2000 } }
]
EOF
  echo "autospawn = no" > "$pw2/client.conf"
  pw2_env="HOME=$pw2/home XDG_RUNTIME_DIR=$pw2 XDG_CONFIG_HOME=$pw2/home/.config XDG_STATE_HOME=$pw2/home/.state PULSE_SERVER=unix:$pw2/pulse/native PULSE_CLIENTCONFIG=$pw2/client.conf PULSE_RUNTIME_PATH=$pw2/pulse"
  # Each started through env (which execs it): $! is the process itself, stopped by its pid.
  env -u PIPEWIRE_MODULE_DIR -u DISPLAY $pw2_env DBUS_SESSION_BUS_ADDRESS=disabled: \
    pipewire -c "$pw2/pipewire.conf" > "$pw2/pipewire.log" 2>&1 &
  pids+=($!); pw2_pid=$!
  for _ in $(seq 100); do [ -S "$pw2/pulse/native" ] && break; sleep 0.1; done
  kill -0 "$pw2_pid" 2>/dev/null || { cat "$pw2/pipewire.log" >&2; die "the second pipewire exited at start"; }
  # WirePlumber links the streams; it wants a session bus: one of its own.
  env -u DISPLAY $pw2_env dbus-daemon --session --nofork --nopidfile --address="unix:path=$pw2/bus" \
    > "$pw2/dbus.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do [ -S "$pw2/bus" ] && break; sleep 0.1; done
  env -u DISPLAY $pw2_env DBUS_SESSION_BUS_ADDRESS="unix:path=$pw2/bus" wireplumber > "$pw2/wireplumber.log" 2>&1 &
  pids+=($!)
  ok=0
  for _ in $(seq 150); do
    env $pw2_env pactl info 2>/dev/null | grep -q "Default Sink: null" && { ok=1; break; }
    sleep 0.1
  done
  [ "$ok" = 1 ] || { tail -30 "$pw2/pipewire.log" "$pw2/wireplumber.log" >&2; die "the second PipeWire has no default sink null"; }
  echo "    $(env $pw2_env pactl info | sed -n 's/^Server Name: //p'): null sink, WirePlumber $(wireplumber --version 2>/dev/null | sed -n 's/.*libwireplumber \([0-9.]*\).*/\1/p' | head -1)"
  say "PulseAudio -> PipeWire: a tone"
  pa send pactl load-module module-tunnel-sink-opus server="tcp:127.0.0.1:$pw2port" sink_name=topw2 >/dev/null \
    || die "module-tunnel-sink-opus towards the second PipeWire failed to load"
  tone_env "$(pa_env send)" topw2 "$pw2_env" null.monitor "$rundir/pa-to-pw.raw"
  say "PipeWire -> PulseAudio: a tone"
  ok=0
  for _ in $(seq 50); do
    env $pw2_env pactl list short sinks 2>/dev/null | grep -q $'\tpwtun2\t' && { ok=1; break; }
    sleep 0.2
  done
  [ "$ok" = 1 ] || { tail -30 "$pw2/pipewire.log" >&2; die "no sink pwtun2 on the second PipeWire"; }
  tone_env "$pw2_env" pwtun2 "$(pa_env recv)" null.monitor "$rundir/pw-to-pa.raw"
fi

# ---------------------------------------------------------------- stop, purge, check
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
for p in "${pids[@]}"; do
  if kill -0 "$p" 2>/dev/null; then
    ps -o pid,args -p "$p" >&2; die "process $p started by the test is still running"
  fi
done
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
