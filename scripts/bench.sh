#!/usr/bin/env bash
# make bench: build what changed, boot the VM once and run the benchmark (tests/guest/bench.sh):
# fault throughput at 4K/2M/1G, revoke+refault, mmap and region-info latency, vfio-pci and
# vfio-pci-rs interleaved, printed as Rust/C ratios. Not part of make test.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

BENCH_RUNS=${BENCH_RUNS:-5}
case "$BENCH_RUNS" in '' | *[!0-9]*) die "BENCH_RUNS must be a number" ;; esac
"$here/deps.sh"
"$here/kernel.sh"
"$here/client.sh"
"$here/vm.sh" "BENCH_RUNS=$BENCH_RUNS bash tests/guest/bench.sh"
