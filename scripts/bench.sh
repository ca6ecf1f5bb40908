#!/usr/bin/env bash
# Benchmarks side by side (issue 8): builds the modules, the bench and the raw-libopus floor,
# then runs tests/src/bin/bench, which prints the table and writes docs/benchmarks.md.
# Takes about 10-13 minutes on 2 cores. Installs espeak-ng (apt) and a Python venv with numpy,
# scipy and pesq (PyPI) in target/bench-venv when missing.
#   scripts/bench.sh            (root on Debian 12, after scripts/install-deps.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-modules.sh
cargo build --release -p opus-tunnel-core --example bench_floor
# Surround at the defaults (issue 20): the codec's wire rate and CPU for stereo, 5.1 and 7.1,
# in-process; the daemons' figures come from tests/tests/surround.rs (docs/benchmarks.md).
cargo run --release -p opus-tunnel-core --example bench_surround
command -v espeak-ng >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q espeak-ng
exec cargo run --release -p opus-tunnel-tests --bin bench "$@"
