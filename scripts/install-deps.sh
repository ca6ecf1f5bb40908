#!/usr/bin/env bash
# Installs the Debian packages opus-tunnel needs to build and test (run as root on Debian 12).
# Idempotent: packages already present are left alone. Extra package names given as arguments
# are installed too (scripts/package-test.sh passes its packaging tools).
set -euo pipefail
PKGS=(pulseaudio pulseaudio-utils libpulse-dev libclang-dev clang libopus-dev pkg-config
      libltdl-dev sox meson ninja-build dpkg-dev ca-certificates procps iproute2
      pipewire pipewire-bin pipewire-pulse wireplumber dbus-daemon libpipewire-0.3-dev libspa-0.2-dev
      espeak-ng opus-tools python3-venv
      gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good "$@")
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
