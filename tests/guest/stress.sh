#!/usr/bin/env bash
# Runs in the VM, in a boot of its own after the main one (scripts/test.sh): the race stress
# of issue 4 on the ivshmem twin's first device, vfio-pci then vfio-pci-rs, STRESS_SECS
# seconds each (default 60). Ends with `N passed, N failed`.
set -u
cd "$(dirname "$0")/../.." || exit 1
. tests/guest/devices.sh

CLIENT=tests/client/target/release/vfio-test
STRESS_SECS=${STRESS_SECS:-60}

. tests/guest/report.sh

ivshmem=
for t in "${TWINS[@]}"; do
	case "$t" in ivshmem=*) ivshmem=${t#ivshmem=} ;; esac
done
bdf=${ivshmem%,*}

echo "== race stress: kernel $(uname -r), $(nproc) cpus, $STRESS_SECS s per driver on $bdf"
echo "# host cache: ${VFIO_PCI_RS_CACHE:-unset}, ivshmem backing files: ${VFIO_TEST_IVSHMEM_DIR:-unset}"
# 1 GiB (PUD) mappings need 1 GiB pages in the guest CPU.
if grep -qw pdpe1gb /proc/cpuinfo; then
	echo "# guest CPU has pdpe1gb (1 GiB pages)"
else
	echo "# guest CPU lacks pdpe1gb: no 1 GiB (PUD) faults"
fi
grep -E '^ *debug_locks:' /proc/lockdep_stats | sed 's/^ */# lockdep /'
for m in vfio_pci vfio_pci_rs; do
	if modprobe "$m"; then ok "stress modprobe $m"; else bad "stress modprobe $m"; fi
done

start=$SECONDS
"$CLIENT" stress "$bdf" --secs "$STRESS_SECS" 2>&1 | tee /tmp/stress.out
add_summary /tmp/stress.out "stress client"
echo "# stress took $((SECONDS - start)) s"
grep '^stress-stats ' /tmp/stress.out | sed 's/^/# /'

for m in vfio_pci_rs vfio_pci; do
	if rmmod "$m"; then ok "stress rmmod $m"; else bad "stress rmmod $m"; fi
done

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
