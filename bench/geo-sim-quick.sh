#!/usr/bin/env bash
# Every geo-sim scenario in its quick form (3 regions x 1 node, ~200 users, a 30 s
# run, under a minute each), then one summary table. Release build.
#
#   bench/geo-sim-quick.sh              SEED=7 bench/geo-sim-quick.sh
#   OUT=/tmp/gs bench/geo-sim-quick.sh region-outage churn
set -uo pipefail
cd "$(dirname "$0")/.."
rustup toolchain install >/dev/null 2>&1
cargo build --release --locked -p geo-sim || exit 1
exec bench/geo-sim-table.sh --quick "$@"
