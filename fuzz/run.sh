#!/usr/bin/env bash
# Fuzz every decoder a client or a peer reaches, each for at least 10^7 executions
# (RUNS to change it), growing the committed corpora under fuzz/corpus/.
# Needs the nightly toolchain and cargo-fuzz: rustup toolchain install nightly;
# cargo +nightly install cargo-fuzz --locked.
#   fuzz/run.sh                 # every target
#   fuzz/run.sh jwt engineio    # some
set -euo pipefail
cd "$(dirname "$0")"
RUNS="${RUNS:-10000000}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(native_json native_msgpack engineio socketio peer_frame resume_token jwt)
fi
for t in "${targets[@]}"; do
  echo "== $t: $RUNS runs"
  cargo +nightly fuzz run -O "$t" "corpus/$t" -- -runs="$RUNS" -max_len=65536 -print_final_stats=1
done
