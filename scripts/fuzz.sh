#!/usr/bin/env bash
# make fuzz: build what changed, boot the VM once and run the device-fd fuzzer
# (tests/guest/fuzz.sh) on the edu, ivshmem, pci-testdev and igb twins, vfio-pci beside
# vfio-pci-rs, FUZZ_OPS ops per device type (default 1000000) with seed FUZZ_SEED (default:
# the time; FUZZ_TWINS to choose twins). A divergence prints a line
#   FUZZ-DIVERGENCE twin=NAME seed=S op=I ...
# and `make fuzz FUZZ_SEED=S FUZZ_REPLAY=I FUZZ_TWINS=NAME` replays ops 0..=I of that seed on
# that twin alone, printing every op and both outcomes (FUZZ_FROM=F: only ops F..=I; see
# tests/client/README.md).
# FUZZ_BUILD=0 skips the kernel and client builds. Not part of make test.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

FUZZ_OPS=${FUZZ_OPS:-1000000}
FUZZ_SEED=${FUZZ_SEED:-$(date +%s)}
FUZZ_TWINS=${FUZZ_TWINS:-edu ivshmem pci-testdev igb}
FUZZ_REPLAY=${FUZZ_REPLAY:-}
FUZZ_FROM=${FUZZ_FROM:-0}
case "$FUZZ_OPS" in '' | *[!0-9]*) die "FUZZ_OPS must be a number" ;; esac
case "$FUZZ_SEED" in '' | *[!0-9]*) die "FUZZ_SEED must be a decimal number" ;; esac
case "$FUZZ_REPLAY" in *[!0-9]*) die "FUZZ_REPLAY must be a number" ;; esac
case "$FUZZ_FROM" in '' | *[!0-9]*) die "FUZZ_FROM must be a number" ;; esac
if [ "${FUZZ_BUILD:-1}" != 0 ]; then
	"$here/deps.sh"
	"$here/kernel.sh"
	"$here/client.sh"
fi
log "fuzz: seed $FUZZ_SEED, ${FUZZ_REPLAY:+replay 0..=$FUZZ_REPLAY, not }$FUZZ_OPS ops per twin ($FUZZ_TWINS)"
# Long runs: the VM's timeout must cover every twin (see the README for the measured rate).
export VM_TIMEOUT=${VM_TIMEOUT:-172800}
"$here/vm.sh" "FUZZ_SEED=$FUZZ_SEED FUZZ_OPS=$FUZZ_OPS FUZZ_REPLAY=$FUZZ_REPLAY FUZZ_FROM=$FUZZ_FROM FUZZ_TWINS='$FUZZ_TWINS' bash tests/guest/fuzz.sh"
