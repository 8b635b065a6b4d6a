#!/usr/bin/env bash
# One command to an all-in-one Kelson cluster on this machine (Debian 12, Rust installed):
# installs missing system packages, builds release binaries, runs `kelsonctl up` in the
# foreground (Ctrl-C stops it; running this again resumes the same cluster).
# Arguments go to `kelsonctl up`, e.g. --data-dir /tmp/kelson --kv-port 12379.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
# Every daemon `kelsonctl up` starts is found next to kelsonctl in target/release.
cargo build --release -p kelsonctl -p kelson-kv -p kelson-apiserver -p kelson-scheduler \
  -p kelson-controller-manager -p kelson-kubelet
exec target/release/kelsonctl up "$@"
