#!/usr/bin/env bash
# The codec quality matrix (issue 17): bitrate 16/24/32/48/64/96 k x frame 5/10/20 ms x
# complexity 0/5/10 x VBR/CVBR, the project's codec in-process (crates/core/examples/
# quality_matrix.rs) beside opusenc/opusdec at the same settings; speech (espeak-ng) scored
# with PESQ-WB, a music-like signal with ViSQOL v3 audio mode; wire rate per cell. Then mono
# speech in a stereo vs a mono codec. Takes about 10-15 minutes on 2 cores.
#   scripts/quality.sh            tables in target/quality/ (matrix.md, mono.md)
#   scripts/quality.sh --write    and replaces the generated part of docs/benchmarks.md
#   scripts/quality.sh --setup    only installs what is needed (tests/tests/quality.rs uses it)
# Installs espeak-ng and opus-tools (apt) and a venv (QUALITY_PYTHON's, or target/bench-venv)
# with numpy, scipy, pesq and visqol-python[accel] (PyPI) when missing. Root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
if ! command -v espeak-ng >/dev/null || ! command -v opusenc >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q espeak-ng opus-tools
fi
py=${QUALITY_PYTHON:-target/bench-venv/bin/python}
if [ ! -x "$py" ]; then
  python3 -m venv target/bench-venv
  py=target/bench-venv/bin/python
fi
if ! "$py" -c "import numpy, scipy, pesq, visqol, numba" 2>/dev/null; then
  "$py" -m pip install -q numpy scipy pesq "visqol-python[accel]"
fi
[ "$mode" = --setup ] && exit 0
cargo build --release -p opus-tunnel-core --example quality_matrix
mkdir -p target/quality
"$py" scripts/quality_matrix.py mono target/quality/mono.md
"$py" scripts/quality_matrix.py matrix target/quality/matrix.md
if [ "$mode" = --write ]; then
  # The generated part sits between two markers in the "Codec quality matrix" section.
  "$py" - <<'PY'
import re
doc = open("docs/benchmarks.md").read()
gen = ("<!-- scripts/quality.sh: begin -->\n\nMono speech (L = R), 20 ms, complexity 10, "
       "unconstrained (vbr) and constrained (cvbr) VBR:\n\n" + open("target/quality/mono.md").read()
       + "\nThe matrix:\n\n" + open("target/quality/matrix.md").read()
       + "\n<!-- scripts/quality.sh: end -->")
new, n = re.subn(r"<!-- scripts/quality.sh: begin -->.*<!-- scripts/quality.sh: end -->",
                 lambda m: gen, doc, flags=re.S)
if n != 1:
    raise SystemExit("docs/benchmarks.md has no generated quality section to replace")
open("docs/benchmarks.md", "w").write(new)
print("wrote docs/benchmarks.md")
PY
fi
