#!/usr/bin/env bash
# Events/s through one room with 100 members, `echo` handler, native protocol.
# The node runs pinned to core 0, loadgen to core 1. Release build.
#   [SUBS=100] [PUBS=1] [SECS=10] bench/room-fanout.sh [other loadgen args, e.g. --window 32]
set -euo pipefail
cd "$(dirname "$0")/.."
rustup toolchain install >/dev/null 2>&1
cargo build --release -p edgeroom -p loadgen
port=${PORT:-18080}
data=$(mktemp -d)
taskset -c 0 target/release/edgeroom dev --standalone --listen "127.0.0.1:$port" --data-dir "$data" >"$data/node.log" 2>&1 &
node=$!
trap 'kill $node 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v1/apps/echo" >/dev/null && break; sleep 0.1; done
cpu_before=$(awk '{print $14+$15}' /proc/$node/stat)
taskset -c 1 target/release/loadgen fanout --addr "127.0.0.1:$port" --rooms 1 --subs "${SUBS:-100}" --pubs "${PUBS:-1}" --secs "${SECS:-10}" "$@"
cpu_after=$(awk '{print $14+$15}' /proc/$node/stat)
echo "{\"server_cpu_seconds\": $(echo "($cpu_after - $cpu_before) / $(getconf CLK_TCK)" | bc -l | xargs printf '%.2f')}"
