#!/usr/bin/env bash
# make fuzz: build what changed, boot the VM once and run the device-fd fuzzer
# (tests/guest/fuzz.sh) on the edu, ivshmem, pci-testdev and igb twins, vfio-pci beside
# vfio-pci-rs, FUZZ_OPS ops per device type (default 1000000) with seed FUZZ_SEED (default:
# the time). A divergence prints a FUZZ-DIVERGENCE line; replay it alone with
#   scripts/vm.sh 'cd tests/guest && ... vfio-test fuzz --seed S --replay K NAME=BDF_C,BDF_RS'
# (see tests/client/README.md). FUZZ_BUILD=0 skips the kernel and client builds.
# Not part of make test.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

FUZZ_OPS=${FUZZ_OPS:-1000000}
FUZZ_SEED=${FUZZ_SEED:-$(date +%s)}
FUZZ_TWINS=${FUZZ_TWINS:-edu ivshmem pci-testdev igb}
case "$FUZZ_OPS" in '' | *[!0-9]*) die "FUZZ_OPS must be a number" ;; esac
case "$FUZZ_SEED" in '' | *[!0-9]*) die "FUZZ_SEED must be a decimal number" ;; esac
if [ "${FUZZ_BUILD:-1}" != 0 ]; then
	"$here/deps.sh"
	"$here/kernel.sh"
	"$here/client.sh"
fi
log "fuzz: seed $FUZZ_SEED, $FUZZ_OPS ops per twin ($FUZZ_TWINS)"
# Long runs: the VM's timeout must cover every twin (see the README for the measured rate).
export VM_TIMEOUT=${VM_TIMEOUT:-172800}
"$here/vm.sh" "FUZZ_SEED=$FUZZ_SEED FUZZ_OPS=$FUZZ_OPS FUZZ_TWINS='$FUZZ_TWINS' bash tests/guest/fuzz.sh"
