#!/usr/bin/env bash
# Fuzzes the core crate's parsers and decoder with cargo-fuzz (libFuzzer + AddressSanitizer,
# which includes LeakSanitizer).
#
#   scripts/fuzz.sh [RUNS_PER_TARGET]        default 10000000; e.g. 20000 as a CI smoke test
#   FUZZ_TARGETS="rtp deframer" scripts/fuzz.sh 100000     a subset
#   FUZZ_TIMEOUT=60 scripts/fuzz.sh                          per-input time limit, s (default 10;
#                                                             wall-clock: raise it on a busy machine)
#
# Installs what it needs: libopus-dev and pkg-config (Debian, as root) and cargo-fuzz (crates.io).
# No nightly toolchain is needed: the machine's stable toolchain builds with
# RUSTC_BOOTSTRAP=1, which unlocks the -Z flags (-Zsanitizer=address, …) cargo-fuzz passes.
# Set FUZZ_TOOLCHAIN=nightly to use an installed nightly instead.
#
# Each target runs for RUNS executions (-runs=N -rss_limit_mb=2048 -timeout=FUZZ_TIMEOUT). The script
# prints executions, exec/s and peak RSS per target, and exits non-zero if any target
# crashed, hung, ran out of memory or leaked. Inputs that fail are left in
# fuzz/artifacts/TARGET/, the corpus grows in fuzz/corpus/TARGET/ (both ignored by git),
# full logs are in fuzz/target/fuzz-logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${1:-10000000}
TARGETS=(${FUZZ_TARGETS:-handshake deframer rtp decode secure udp rtp_udp})
TIMEOUT=${FUZZ_TIMEOUT:-10}
case "$RUNS" in '' | *[!0-9]*) echo "fuzz.sh: RUNS_PER_TARGET must be a number, got '$RUNS'" >&2; exit 2 ;; esac
case "$TIMEOUT" in '' | *[!0-9]*) echo "fuzz.sh: FUZZ_TIMEOUT must be a number of seconds, got '$TIMEOUT'" >&2; exit 2 ;; esac

# --- what it needs -------------------------------------------------------------------------
if ! pkg-config --exists opus 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "fuzz.sh: installing libopus-dev pkg-config"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends libopus-dev pkg-config >/dev/null
  else
    echo "fuzz.sh: libopus-dev and pkg-config are needed (apt-get install libopus-dev pkg-config)" >&2
    exit 1
  fi
fi
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
CARGO=(cargo)
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
  CARGO=(cargo "+$FUZZ_TOOLCHAIN")
else
  export RUSTC_BOOTSTRAP=1
fi

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# --- build ---------------------------------------------------------------------------------
cd "$ROOT/fuzz"
t0=$(date +%s.%N)
"${CARGO[@]}" fuzz build --debug-assertions >/dev/null 2>target-build.log || {
  cat target-build.log >&2
  echo "fuzz.sh: build failed" >&2
  exit 1
}
rm -f target-build.log
t1=$(date +%s.%N)
printf 'fuzz.sh: built in %.0f s (%s)\n' "$(elapsed "$t0" "$t1")" "$("${CARGO[@]}" --version)"
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN="$ROOT/fuzz/target/$TRIPLE/release"
LOGS="$ROOT/fuzz/target/fuzz-logs"
mkdir -p "$LOGS"

# --- seeds (valid messages, so that short runs get past the first line) ---------------------
seed() { # TARGET NAME PRINTF-FORMAT…
  local dir="$ROOT/fuzz/corpus/$1"
  mkdir -p "$dir"
  shift
  local name=$1
  shift
  [ -e "$dir/seed-$name" ] || printf "$@" >"$dir/seed-$name"
}
seed handshake hello '\001OPUS-TUNNEL/1 PLAY\nName: speakers\nHost: desk17\nDevice: sink0\nCodec: opus\nRate: 48000\nChannels: 2\nChannel-Map: front-left,front-right\nFrame-Usec: 20000\nTarget-Latency-Usec: 40000\nAuth: hmac-sha256\nClient-Nonce: %064d\n\nOPUS-TUNNEL/1 AUTH\nAuth: hmac-sha256\nProof: %064d\n\n' 0 0
seed handshake challenge '\003OPUS-TUNNEL/1 401 Unauthorized\r\nAuth: hmac-sha256\r\nServer-Nonce: %064d\r\n\r\nOPUS-TUNNEL/1 200 OK\nServer-Proof: %064d\nDevice: x\n\n' 0 0
seed handshake refusal '\007OPUS-TUNNEL/1 505 Version Not Supported\nSupported: 1\n\n'
seed secure records '\000\000\020\005\377\000\001\002\003\004\005\006'
seed deframer frames '\010\003\000\002ab\000\003xyz\000\001\000'
seed rtp rtp '\200\140\000\001\000\000\003\300\022\064\126\170\370\377\376'
seed rtp rtcp '\200\314\000\004\022\064\126\170OTUNlatency_usec=40000\n\000\000\000'
seed rtp_udp stream '\000\017\200\140\000\001\000\000\003\300\000\000\000\011\370\377\376\000\017\200\140\000\002\000\000\007\200\000\000\000\011\370\377\376\001\003\200\141\000'
seed decode opus '\010\002\000\003\370\377\376\002\006\002'
seed decode l16 '\003\002\000\010\000\001\000\002\000\003\000\004\002'
seed udp rtp '\007\000\000\000\000\007\000\000\000\000\000\000\000\000\000\200\140\000\001\000\000\003\300\000\000\000\007\001\002\003'

# --- run -----------------------------------------------------------------------------------
status=0
printf '%-10s %12s %10s %10s %9s  %s\n' target executions exec/s peak_RSS seconds result
for t in "${TARGETS[@]}"; do
  max_len=4096
  [ "$t" = handshake ] && max_len=20000
  log="$LOGS/$t.log"
  mkdir -p "$ROOT/fuzz/artifacts/$t"
  s0=$(date +%s.%N)
  set +e
  "$BIN/$t" -runs="$RUNS" -rss_limit_mb=2048 -timeout="$TIMEOUT" -max_len="$max_len" \
    -print_final_stats=1 -artifact_prefix="$ROOT/fuzz/artifacts/$t/" \
    "$ROOT/fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  set -e
  s1=$(date +%s.%N)
  secs=$(elapsed "$s0" "$s1")
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  execs=${execs:-?}
  rate=$(if [ "$execs" != "?" ]; then awk -v n="$execs" -v s="$secs" 'BEGIN { printf "%d", n / (s > 0 ? s : 1) }'; else echo "?"; fi)
  if [ $rc -eq 0 ]; then
    result=ok
  else
    status=1
    result="FAILED (exit $rc): $(grep -m1 -E 'ERROR: |panicked at|SUMMARY' "$log" || echo "see $log")"
  fi
  printf '%-10s %12s %10s %8sMB %9.1f  %s\n' "$t" "$execs" "$rate" "${rss:-?}" "$secs" "$result"
done
if [ $status -ne 0 ]; then
  echo "fuzz.sh: a target failed; logs in $LOGS, failing inputs in fuzz/artifacts/" >&2
  echo "fuzz.sh: reproduce with: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET artifacts/TARGET/FILE" >&2
fi
exit $status
