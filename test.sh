#!/usr/bin/env bash
# Run every test: unit tests, and integration tests against real nodes with the real
# example handlers. Installs the toolchain and wasm target first if missing.
set -euo pipefail
cd "$(dirname "$0")"
rustup toolchain install
# Third-party clients the Socket.IO tests drive: socket.io-client (npm) and
# python-socketio (PyPI, in a virtualenv under target/). The report test of geo-sim
# needs Debian's chromium (.ci/run installs it).
js=runtime/edgeroom/tests/socketio-js
[ "$js/node_modules/.package-lock.json" -nt "$js/package-lock.json" ] ||
  npm ci --prefix "$js" --silent --no-audit --no-fund
# playwright-core drives Debian's chromium for geo-sim's report test (no browser download).
browser=geo-sim/tests/browser
[ "$browser/node_modules/.package-lock.json" -nt "$browser/package-lock.json" ] ||
  npm ci --prefix "$browser" --silent --no-audit --no-fund
[ -x target/pyenv/bin/python ] || python3 -m venv target/pyenv
target/pyenv/bin/pip install --quiet --disable-pip-version-check -r runtime/edgeroom/tests/socketio-py/requirements.txt
export EDGEROOM_PYTHON="$PWD/target/pyenv/bin/python"
cargo nextest run --workspace --locked --no-fail-fast "$@"
# Doc examples (the SDK's complete handler example among them) must compile.
cargo test --workspace --doc --locked
