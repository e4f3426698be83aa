#!/usr/bin/env bash
# Acknowledged emits per second on a standalone node, where each answer waits for its
# room's journal write to be synced to disk: CONNS clients in ROOMS rooms of the `echo`
# app, WINDOW unacknowledged emits each. The node runs pinned to core 0, loadgen to
# core 1; the data directory is on the disk under target/ (not a tmpfs). Release build.
#   [ROOMS=100] [CONNS=100] [WINDOW=4] [SECS=10] [BIN=dir] bench/acked-writes.sh
# BIN: take edgeroom and loadgen from that directory instead of building them (to
# compare two builds of the node with one command line).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN:-}" ]; then
  rustup toolchain install >/dev/null 2>&1
  cargo build --release -q -p edgeroom -p loadgen
  BIN=target/release
fi
port=${PORT:-18081}
mkdir -p target/bench
data=$(mktemp -d -p target/bench)
taskset -c 0 "$BIN/edgeroom" dev --standalone --listen "127.0.0.1:$port" --data-dir "$data" >"$data/node.log" 2>&1 &
node=$!
trap 'kill $node 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v1/apps/echo" >/dev/null && break; sleep 0.1; done
taskset -c 1 "$BIN/loadgen" echo --addr "127.0.0.1:$port" --server-pid "$node" \
  --rooms "${ROOMS:-100}" --conns "${CONNS:-100}" --window "${WINDOW:-4}" --secs "${SECS:-10}" "$@"
