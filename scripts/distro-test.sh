#!/usr/bin/env bash
# Builds, packages and smoke-tests opus-tunnel for one Debian release (issue 22), as root:
#
#   scripts/distro-test.sh trixie      # Debian 13 in a chroot
#   scripts/distro-test.sh bookworm    # Debian 12: natively when the host is bookworm
#
# For a release other than the host's it creates (debootstrap --variant=minbase, about a minute)
# or reuses a chroot cached in /var/cache/opus-tunnel/chroot-RELEASE (OPUS_TUNNEL_CHROOT_DIR
# overrides; OPUS_TUNNEL_CHROOT_FRESH=1 deletes it first; nothing of it is in the git tree),
# bind-mounts this tree at the same path inside it, installs that release's build and runtime
# packages (scripts/install-deps.sh plus the packaging tools) and runs scripts/package-test.sh
# there with OPUS_TUNNEL_SMOKE=full: the modules are built against that release's PulseAudio
# source package (apt-get source of the installed daemon's version) and PipeWire headers, the
# Debian packages are built with dpkg-buildpackage, checked with lintian, installed with dpkg -i
# and smoke-tested with private daemons started from the installed packages:
# PulseAudio->PulseAudio Opus tone, PulseAudio->PipeWire and PipeWire->PulseAudio tones, the
# microphone (module-tunnel-source-opus) and a live bitrate change (update-sink-proplist,
# checked in the sink's properties); then purged.
#
# Rust: the HOST's rustup toolchain (`rustc --print sysroot`), bind-mounted read-only into the
# chroot and put first on PATH; cargo's registry cache lives inside the chroot (CARGO_HOME=
# /var/cache/opus-tunnel-cargo there). The crates' rust-version (1.80) would also allow trixie's
# own rustc 1.85, but bookworm's 1.63 is too old, and one toolchain for every release keeps the
# builds comparable (and saves installing rustc/cargo in the chroot).
#
# Time (2 cores, measured for trixie): cold 431 s (debootstrap 67 s, the release's packages
# 135 s, package build from an empty cargo cache 97 s, the smoke ~75 s); with the chroot and
# target/distro/trixie/cargo-target cached 116 s.
#
# The packages land in target/distro/RELEASE/ (with build.log and lintian.txt; the cargo target
# directory target/distro/RELEASE/cargo-target is kept between runs). It packages HEAD (the
# committed tree). Every mount is undone on exit, also on failure (trap); every daemon is
# stopped by its own pid inside package-test.sh, and a last check fails if any process is
# still running inside the chroot. Prints the versions tested; exits non-zero on any failure.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
start=$(date +%s)
say() { echo "== distro-test: $*"; }
die() { echo "distro-test: FAIL: $*" >&2; exit 1; }
[ $# = 1 ] || { echo "usage: $0 RELEASE   (trixie, bookworm)" >&2; exit 2; }
release=$1
case "$release" in *[!a-z]*|"") die "bad release name '$release'";; esac
[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot, mount, dpkg -i)"

host_release=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
out=$repo/target/distro/$release
mkdir -p "$out"

# ---------------------------------------------------------------- native (the host's release)
if [ "$release" = "$host_release" ]; then
  say "$release is the host's release: running natively"
  OPUS_TUNNEL_SMOKE=full OPUS_TUNNEL_PKG_WORK=$out "$repo/scripts/package-test.sh" \
    || die "package-test.sh failed ($release, native)"
  say "tested on Debian $(cat /etc/debian_version) ($release, native): PulseAudio $(dpkg-query -W -f='${Version}' pulseaudio), PipeWire $(dpkg-query -W -f='${Version}' pipewire-bin), libopus $(dpkg-query -W -f='${Version}' libopus0), $(rustc --version)"
  say "passed ($release, native) in $(( $(date +%s) - start )) s"
  exit 0
fi

# ---------------------------------------------------------------- the chroot
chroot_dir=${OPUS_TUNNEL_CHROOT_DIR:-/var/cache/opus-tunnel/chroot-$release}
mirror=${OPUS_TUNNEL_MIRROR:-http://deb.debian.org/debian}
mounts=()
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM   # once: an INT or TERM would otherwise run it again on exit
  # Undo the mounts in reverse order; a lazy unmount when something still holds one.
  for (( i=${#mounts[@]}-1; i>=0; i-- )); do
    umount "${mounts[$i]}" 2>/dev/null || umount -l "${mounts[$i]}" 2>/dev/null
    if mountpoint -q "${mounts[$i]}"; then
      echo "distro-test: could not unmount ${mounts[$i]}" >&2; rc=1
    fi
  done
  mounts=()
  exit $rc
}
trap cleanup EXIT INT TERM
bind() { # bind SRC DEST [ro]
  mkdir -p "$2"
  mount --bind "$1" "$2"; mounts+=("$2")
  [ "${3:-}" = ro ] && mount -o remount,bind,ro "$2"
  return 0
}

if [ "${OPUS_TUNNEL_CHROOT_FRESH:-0}" = 1 ] && [ -d "$chroot_dir" ]; then
  grep -q " $chroot_dir/" /proc/mounts && die "something is still mounted under $chroot_dir"
  say "OPUS_TUNNEL_CHROOT_FRESH=1: deleting $chroot_dir"
  rm -rf --one-file-system "$chroot_dir"
fi
if [ ! -x "$chroot_dir/bin/sh" ]; then
  command -v debootstrap >/dev/null || {
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
  }
  say "debootstrap --variant=minbase $release $chroot_dir"
  t0=$(date +%s)
  rm -rf "$chroot_dir.new"
  mkdir -p "$(dirname "$chroot_dir")"
  debootstrap --variant=minbase "$release" "$chroot_dir.new" "$mirror" > "$out/debootstrap.log" 2>&1 \
    || { tail -20 "$out/debootstrap.log" >&2; die "debootstrap failed (log: $out/debootstrap.log)"; }
  mv "$chroot_dir.new" "$chroot_dir"
  say "chroot made in $(( $(date +%s) - t0 )) s"
else
  say "reusing the chroot $chroot_dir"
fi

# apt sources: binaries and sources (apt-get source pulseaudio) of the release and its updates.
cat > "$chroot_dir/etc/apt/sources.list" <<EOF
deb $mirror $release main
deb-src $mirror $release main
deb $mirror $release-updates main
deb-src $mirror $release-updates main
deb http://deb.debian.org/debian-security $release-security main
deb-src http://deb.debian.org/debian-security $release-security main
EOF
# No services start in the chroot when packages are installed.
printf '#!/bin/sh\nexit 101\n' > "$chroot_dir/usr/sbin/policy-rc.d"
chmod 755 "$chroot_dir/usr/sbin/policy-rc.d"
cp -L /etc/resolv.conf "$chroot_dir/etc/resolv.conf"

mount -t proc proc "$chroot_dir/proc"; mounts+=("$chroot_dir/proc")
mount -t sysfs sysfs "$chroot_dir/sys"; mounts+=("$chroot_dir/sys")
bind /dev "$chroot_dir/dev"
bind /dev/pts "$chroot_dir/dev/pts"
mount -t tmpfs tmpfs "$chroot_dir/dev/shm"; mounts+=("$chroot_dir/dev/shm")
mount -t tmpfs tmpfs "$chroot_dir/run"; mounts+=("$chroot_dir/run")
bind "$repo" "$chroot_dir$repo"
toolchain=$(rustc --print sysroot 2>/dev/null) || die "no rustc on the host's PATH (rustup)"
bind "$toolchain" "$chroot_dir/opt/opus-tunnel-rust" ro

in_chroot() {
  chroot "$chroot_dir" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH=/opt/opus-tunnel-rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CARGO_HOME=/var/cache/opus-tunnel-cargo "$@"
}

# ---------------------------------------------------------------- packages of the release
say "packages of $release (build and runtime)"
t0=$(date +%s)
tools=(build-essential debhelper dpkg-dev fakeroot lintian xz-utils python3 dbus-daemon)
in_chroot sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${tools[*]} >/dev/null" \
  > "$out/apt.log" 2>&1 || { tail -20 "$out/apt.log" >&2; die "apt-get in the chroot failed"; }
in_chroot "$repo/scripts/install-deps.sh" >> "$out/apt.log" 2>&1 \
  || { tail -20 "$out/apt.log" >&2; die "install-deps.sh in the chroot failed"; }
say "packages ready in $(( $(date +%s) - t0 )) s"
# The host's local certificate authorities (a TLS-intercepting proxy's CA, when the machine's
# network goes through one): cargo in the chroot reaches crates.io the way the host does.
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  mkdir -p "$chroot_dir/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$chroot_dir/usr/local/share/ca-certificates/"
  in_chroot update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates in the chroot failed"
fi

pa_v=$(in_chroot dpkg-query -W -f='${Version}' pulseaudio)
pw_v=$(in_chroot dpkg-query -W -f='${Version}' pipewire-bin)
opus_v=$(in_chroot dpkg-query -W -f='${Version}' libopus0)
rust_v=$(in_chroot rustc --version)
debian_v=$(cat "$chroot_dir/etc/debian_version")
say "testing on Debian $debian_v ($release): PulseAudio $pa_v, PipeWire $pw_v, libopus $opus_v, $rust_v (host toolchain)"

# ---------------------------------------------------------------- export, build, install, smoke
# HEAD, exported on the host (the worktree's git directory is not inside the chroot).
tree=$out/opus-tunnel
rev=$(git -C "$repo" rev-parse --short HEAD)
say "exporting HEAD ($rev) to $tree"
rm -rf "$tree"; mkdir -p "$tree"
git -C "$repo" archive --format=tar HEAD | tar -xmf - -C "$tree"
say "scripts/package-test.sh in the $release chroot (OPUS_TUNNEL_SMOKE=full)"
in_chroot env OPUS_TUNNEL_SMOKE=full OPUS_TUNNEL_PKG_WORK="$out" OPUS_TUNNEL_PKG_EXPORTED=1 \
  "$repo/scripts/package-test.sh" || die "package-test.sh failed in the $release chroot"

# ---------------------------------------------------------------- nothing left running
left=()
for p in /proc/[0-9]*; do
  [ "$(readlink "$p/root" 2>/dev/null)" = "$chroot_dir" ] && left+=("${p#/proc/}")
done
if [ ${#left[@]} -gt 0 ]; then
  ps -o pid,args -p "$(IFS=,; echo "${left[*]}")" >&2 || true
  die "processes are still running in the chroot: ${left[*]}"
fi
echo "    no process left running in the chroot"

echo "--- packages in $out:"
for f in "$out"/*.deb; do
  echo "    $(basename "$f"): Depends: $(dpkg-deb -f "$f" Depends)"
done
say "tested on Debian $debian_v ($release): PulseAudio $pa_v, PipeWire $pw_v, libopus $opus_v, $rust_v"
say "passed ($release) in $(( $(date +%s) - start )) s"
