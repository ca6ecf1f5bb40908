#!/usr/bin/env bash
# Pictures of the playout engine (issue 16): runs the simulation's jitter traces
# (crates/core/tests/playout_sim.rs), which write their traces as CSV, and draws latency, target
# and correction over time for a start (LAN), a WAN with TCP retransmissions, a sender posting
# 500 ms blocks, and a link that calms down, into docs/playout/*.png with matplotlib (PyPI, in
# target/bench-venv). Takes about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${QUALITY_PYTHON:-target/bench-venv/bin/python}
if [ ! -x "$py" ]; then
  python3 -m venv target/bench-venv
  py=target/bench-venv/bin/python
fi
"$py" -c "import matplotlib" 2>/dev/null || "$py" -m pip install -q matplotlib
mkdir -p target/playout-traces docs/playout
PLAYOUT_SIM_CSV="$PWD/target/playout-traces" \
  cargo test --release -p opus-tunnel-core --test playout_sim jitter_traces -- --nocapture
"$py" scripts/playout_plots.py target/playout-traces docs/playout
