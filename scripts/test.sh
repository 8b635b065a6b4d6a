#!/usr/bin/env bash
# The full test suite, as CI runs it (.ci/run calls exactly this).
#   1. scripts/setup.sh installs missing Debian packages (apt-get update first when installing);
#   2. build every crate and every test target, so integration tests find the daemon binaries
#      (kelson-kv, kelsonctl) in target/debug;
#   3. cargo nextest if installed, else cargo test.
# Extra arguments are passed to the test runner (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

# A Rust toolchain is a prerequisite (rustup); make a default install's cargo visible.
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi

# A one-off build gains nothing from incremental artefacts, which are large on disk.
export CARGO_INCREMENTAL=0
cargo build --workspace --all-targets

# 2 cores: two test threads keep multi-process cluster tests from starving each other.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}"
if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests; run them first so nextest's summary closes the output.
  cargo test --workspace --doc
  cargo nextest run --workspace --no-fail-fast --test-threads "$RUST_TEST_THREADS" "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
