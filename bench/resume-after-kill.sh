#!/usr/bin/env bash
# Failover of clients: READERS native clients on one `edgeroom serve` process, a sender
# on another broadcasting 100 events/s; the readers' process is killed with SIGKILL and
# each reader resumes at once on one of the two other processes with its token and
# cursor. Prints one JSON line: time from the kill until each reader was resumed and
# until it had everything the sender had sent by then (p50/p99/max), and events lost,
# duplicated or reordered. Release build; the scenario is the ignored test
# `bench_resume_after_kill_9` in runtime/edgeroom/tests/it/cli.rs.
#
#   bench/resume-after-kill.sh        READERS=500 bench/resume-after-kill.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rustup toolchain install >/dev/null 2>&1
export READERS=${READERS:-200}
cargo nextest run --release --locked -p edgeroom --test it cli::bench_resume_after_kill_9 \
  --run-ignored only --no-capture 2>&1 | grep '^{"bench"'
