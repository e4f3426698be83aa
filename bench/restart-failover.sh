#!/usr/bin/env bash
# Nodes restarting under traffic, as an operator sees it: three `edgeroom serve`
# processes (release build) in three regions, MEMBERS unmodified socket.io-client
# members in one room behind regional front doors that fail over to the next region
# when a node's /healthz stops answering, three publishers broadcasting RATE numbered
# events/s each with acks. Scenarios: kill -9 of a node restarted DOWN_MS later, and a
# rolling SIGTERM restart of every node. Prints one JSON line per scenario: acknowledged
# events lost / duplicated / reordered, members never back, recovered vs fresh
# reconnects, time to be back (p50/p99/max), and the time from a restart until traffic
# flows both ways with the restarted node. The scenario is
# runtime/edgeroom/tests/socketio-js/bench-restart.mjs, run by the ignored test
# `bench_restart_failover` in runtime/edgeroom/tests/it/cli.rs.
#
#   bench/restart-failover.sh        MEMBERS=300 RATE=50 DOWN_MS=8000 bench/restart-failover.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rustup toolchain install >/dev/null 2>&1
js=runtime/edgeroom/tests/socketio-js
[ "$js/node_modules/.package-lock.json" -nt "$js/package-lock.json" ] ||
  npm ci --prefix "$js" --silent --no-audit --no-fund
export MEMBERS=${MEMBERS:-150} RATE=${RATE:-20} DOWN_MS=${DOWN_MS:-5000}
cargo nextest run --release --locked -p edgeroom --test it cli::bench_restart_failover \
  --run-ignored only --no-capture 2>&1 | grep '^{"bench"'
