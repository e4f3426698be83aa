#!/usr/bin/env bash
# Run every test: unit tests, and integration tests against real nodes with the real
# example handlers. Installs the toolchain and wasm target first if missing.
set -euo pipefail
cd "$(dirname "$0")"
rustup toolchain install
cargo nextest run --workspace --locked --no-fail-fast "$@"
# Doc examples (the SDK's complete handler example among them) must compile.
cargo test --workspace --doc --locked
