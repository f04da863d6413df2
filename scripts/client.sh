#!/usr/bin/env bash
# Build the userspace integration client that the VM tests run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"
cd "$REPO/tests/client"
cargo build --release --locked --quiet
