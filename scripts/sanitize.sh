#!/usr/bin/env bash
# make sanitize: build the sanitizer kernel (config/vfio-pci-rs-sanitize.config: KASAN,
# kmemleak, DEBUG_OBJECTS, UBSAN on top of PROVE_LOCKING and DEBUG_ATOMIC_SLEEP) in a tree and
# build of its own in the cache, boot it once and run tests/guest/sanitize.sh: the integration
# tests, the race stress and the fuzzer on both drivers, then a kmemleak scan and a report of
# each sanitizer's findings per driver.
# make soak: the same kernel, the race stress alone for SOAK_SECS per driver (default 600).
# Not part of make test (a second kernel build, about 28 minutes the first time, and a boot of
# about an hour under TCG).
#
# Knobs: SANITIZE_STRESS_SECS (default 60), SANITIZE_FUZZ_OPS (default 20000 per twin),
# SANITIZE_FUZZ_SEED (default 14), SANITIZE_INTEGRATION=0 (skip run-tests.sh).
set -euo pipefail
export VFIO_PCI_RS_SANITIZE=1
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

mode=${1:-sanitize}
"$here/deps.sh"
"$here/kernel.sh"
"$here/client.sh"
# KASAN's shadow takes an eighth of memory, kmemleak and SLUB_RCU_DEBUG keep more alive.
export VM_MEMORY=${VM_MEMORY:-4G}
export VM_TIMEOUT=${VM_TIMEOUT:-10800}
# Under KASAN and TCG, udev's coldplug alone ran for more than 180 s without a line: the
# stall detector of scripts/vm.sh waits longer here.
export VM_STALL_SECS=${VM_STALL_SECS:-900}
# no5lvl: with 5-level paging (QEMU's TCG CPU has LA57), an interrupt while identify_cpu()
# has cleared the boot CPU's capabilities makes pgtable_l5_enabled() false for a moment, and
# KASAN takes a direct-map address (0xff11...) for a wild access ("wild-memory-access in
# do_raw_spin_lock" from handle_edge_irq): a false report that turns lockdep off for the boot.
export VM_APPEND="no5lvl${VM_APPEND:+ $VM_APPEND}"
start=$SECONDS
case "$mode" in
sanitize)
	cmd="SANITIZE_CONFIG=$(printf %q "$REPO/config/vfio-pci-rs-sanitize.config")"
	for v in SANITIZE_STRESS_SECS SANITIZE_FUZZ_OPS SANITIZE_FUZZ_SEED SANITIZE_INTEGRATION; do
		[ -z "${!v+set}" ] || cmd+=" $v=$(printf %q "${!v}")"
	done
	"$here/vm.sh" "$cmd bash tests/guest/sanitize.sh"
	;;
soak)
	SOAK_SECS=${SOAK_SECS:-600}
	case "$SOAK_SECS" in '' | *[!0-9]*) die "SOAK_SECS must be a number of seconds" ;; esac
	"$here/vm.sh" "SANITIZE_INTEGRATION=0 SANITIZE_FUZZ_OPS=0 SANITIZE_STRESS_SECS=$SOAK_SECS bash tests/guest/sanitize.sh"
	;;
*) die "usage: scripts/sanitize.sh [sanitize|soak]" ;;
esac
log "$mode boot: $((SECONDS - start)) s"
