#!/usr/bin/env bash
# Run the official Engine.IO v4 and Socket.IO v5 protocol test suites against an
# Edgeroom node configured as they expect (port 3000, ping 300/200 ms, connect timeout
# 1 s, a raw Engine.IO echo at /engine.io/, Socket.IO at /socket.io/ with recovery off
# and namespaces `/` and `/custom`).
#
#   bench/protocol-suites.sh SOCKET_IO_CHECKOUT
#
# SOCKET_IO_CHECKOUT is a checkout of the socket.io repository (the suites live in its
# docs/engine.io-protocol/v4-test-suite and docs/socket.io-protocol/v5-test-suite).
# Prints each suite's mocha summary.
set -euo pipefail
src=${1:?usage: bench/protocol-suites.sh SOCKET_IO_CHECKOUT}
src=$(cd "$src" && pwd)
cd "$(dirname "$0")/.."
cargo build --release --locked -p edgeroom
bin=target/release/edgeroom
fixture=target/wasm-guests/wasm32-wasip2/release/sio_suite_fixture.wasm

data=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$data"' EXIT
cat >"$data/node.toml" <<TOML
node_id = "suite"
listen = "127.0.0.1:3000"
data_dir = "$data/data"
dev = true
default_app = "suite"
[socketio]
ping_interval_ms = 300
ping_timeout_ms = 200
connect_timeout_ms = 1000
engineio_echo_path = "/engine.io/"
TOML
"$bin" serve --config "$data/node.toml" >"$data/node.log" 2>&1 &
pid=$!
for _ in $(seq 50); do
  curl -sf http://127.0.0.1:3000/healthz >/dev/null && break
  sleep 0.2
done
"$bin" deploy --app suite --url http://127.0.0.1:3000 "$fixture"
curl -sf -X PUT http://127.0.0.1:3000/v1/apps/suite/config \
  -d '{"namespaces": "/custom", "recovery": false}' >/dev/null

status=0
for suite in docs/engine.io-protocol/v4-test-suite docs/socket.io-protocol/v5-test-suite; do
  echo "== $suite"
  (cd "$src/$suite" && { [ -d node_modules ] || npm ci --silent; } && npx mocha test-suite.js 2>&1) \
    | grep -E "passing|failing|pending|^\s+[0-9]+\) |Error" || status=1
done
exit $status
