#!/usr/bin/env bash
# make test: install what is missing, build what changed, run KUnit and the integration tests
# in one VM boot, then the race stress in a second boot (STRESS_SECS per driver, default 60),
# then the kernel's VFIO selftests in a third (SELFTEST_* knobs, see tests/guest/selftests.sh)
# and QEMU as a VFIO client in a fourth (tests/guest/qemu-client.sh, with QEMU as a
# peer-to-peer client: tests/guest/qemu-p2p.sh), and fail on any failure. Prints how long
# each stage took and the total of all boots.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

declare -a stages=()
stage() {
	local name=$1 start=$SECONDS
	shift
	log "== $name"
	"$@"
	stages+=("$name: $((SECONDS - start)) s")
}

total_start=$SECONDS
stage deps "$here/deps.sh"
stage kernel "$here/kernel.sh"
stage client "$here/client.sh"
# QEMU_NESTED_LINUX=1: the QEMU boot also boots Linux in the nested QEMU (its initramfs is
# built here, on the host).
QEMU_NESTED_LINUX=${QEMU_NESTED_LINUX:-0}
case "$QEMU_NESTED_LINUX" in 0 | 1) ;; *) die "QEMU_NESTED_LINUX must be 0 or 1" ;; esac
[ "$QEMU_NESTED_LINUX" = 0 ] || stage initramfs "$here/nested-initramfs.sh"
# QEMU_P2P=1: the QEMU boot also runs QEMU 11.1 and 10.0 as peer-to-peer clients
# (tests/guest/qemu-p2p.sh, about 2 minutes), with QEMU 11.1 unpacked into the cache.
QEMU_P2P=${QEMU_P2P:-1}
case "$QEMU_P2P" in 0 | 1) ;; *) die "QEMU_P2P must be 0 or 1" ;; esac
p2p_cmd=
if [ "$QEMU_P2P" = 1 ]; then
	qemu11=$("$here/qemu11.sh")
	payload=$("$here/nested-p2p.sh")
	p2p_cmd="QEMU11=$(printf %q "$qemu11") NESTED_P2P=$(printf %q "$payload")"
fi
stage selftests-build "$here/selftests.sh"
stage client-unit bash -c "set -o pipefail; cd '$REPO/tests/client' && cargo test --release --locked --quiet 2>&1 | tail -n 3"
# Each boot's output is kept (a retried boot's replaces the stalled one's) to add up the
# boots' final `N passed, N failed` lines at the end.
results=$(mktemp -d)
alt_cache=$(mktemp -d /tmp/vfio-pci-rs-xdg.XXXXXX)
trap 'rm -rf "$results" "$alt_cache"' EXIT
# boot NAME PROGRAM ARGS...: PROGRAM boots the VM (vm.sh CMD, or a script that ends in it).
boot() {
	local name=$1 status
	shift
	"$@" | tee "$results/$name"
	status=${PIPESTATUS[0]}
	if [ "$status" = 75 ]; then
		log "the VM stalled before the tests finished; booting it once more"
		"$@" | tee "$results/$name"
		status=${PIPESTATUS[0]}
	fi
	return "$status"
}
STRESS_SECS=${STRESS_SECS:-60}
case "$STRESS_SECS" in '' | *[!0-9]*) die "STRESS_SECS must be a number of seconds" ;; esac
set +e
vm_start=$SECONDS
# The kernel is built with CONFIG_VFIO_PCI_RUST_IGD_TEST (config/vfio-pci-rs.config).
boot main "$here/vm.sh" 'VFIO_TEST_IGD_REGIONS=1 bash tests/guest/run-tests.sh'
status=$?
stages+=("vm (KUnit + integration): $((SECONDS - vm_start)) s")
# The race stress (issue 4) in a boot of its own: STRESS_SECS per driver. It runs with the
# cache somewhere else (XDG_CACHE_HOME at a new directory, VFIO_PCI_RS_CACHE unset, the same
# kernel), so its ivshmem backing files are new ones there: the stress finds the data it
# wrote through BAR2 only if the guest looks where scripts/vm.sh told it.
vm_start=$SECONDS
(
	unset VFIO_PCI_RS_CACHE
	export XDG_CACHE_HOME=$alt_cache VFIO_PCI_RS_USER_KDIR=$KDIR
	boot stress "$here/vm.sh" "STRESS_SECS=$STRESS_SECS bash tests/guest/stress.sh"
)
stress_status=$?
[ "$status" != 0 ] || status=$stress_status
stages+=("vm (race stress): $((SECONDS - vm_start)) s")
# The kernel's VFIO selftests in a boot of their own (scripts/selftests-boot.sh), with
# vfio_pci_driver_test in one IOMMU mode of its five: all five take 40 minutes on a slow host,
# `make selftests` runs them.
export SELFTEST_DRIVER_TEST_ARGS=${SELFTEST_DRIVER_TEST_ARGS--v iommufd}
vm_start=$SECONDS
boot selftests "$here/selftests-boot.sh"
st_status=$?
[ "$status" != 0 ] || status=$st_status
stages+=("vm (VFIO selftests): $((SECONDS - vm_start)) s")
# QEMU as a VFIO client (nested QEMU, TCG) in a boot of its own.
vm_start=$SECONDS
boot qemu "$here/vm.sh" "$p2p_cmd QEMU_NESTED_LINUX=$QEMU_NESTED_LINUX bash tests/guest/qemu-client.sh"
qemu_status=$?
[ "$status" != 0 ] || status=$qemu_status
stages+=("vm (QEMU client): $((SECONDS - vm_start)) s")
set -e

log "== timings"
for s in "${stages[@]}"; do log "  $s"; done
log "  total: $((SECONDS - total_start)) s"
# A boot that printed no summary (it died) counts as one failure.
for b in main stress selftests qemu; do
	grep -E '^[0-9]+ passed, [0-9]+ failed$' "$results/$b" 2>/dev/null | tail -n 1 ||
		echo "0 passed, 1 failed"
done | awk '{ p += $1; f += $3 } END { printf "all boots: %d passed, %d failed\n", p, f }'
exit $status
