#!/usr/bin/env bash
# Every geo-sim scenario at full scale (5 regions x 2 nodes, >= 2,000 users, 5 minutes
# each, about an hour in all), then one summary table. Release build.
#
#   bench/geo-sim-full.sh               SEED=7 bench/geo-sim-full.sh partition-heal
set -uo pipefail
cd "$(dirname "$0")/.."
rustup toolchain install >/dev/null 2>&1
cargo build --release --locked -p geo-sim || exit 1
exec bench/geo-sim-table.sh "$@"
