#!/usr/bin/env bash
# Runs in the VM (make fuzz, scripts/fuzz.sh): the device-fd fuzzer of the client on the
# twins, each twin's first device on vfio-pci, its second on vfio-pci-rs, FUZZ_OPS ops per
# device type with seed FUZZ_SEED; then the kernel log is checked for splats. Ends with
# `N passed, N failed`.
#
# FUZZ_REPLAY=K: instead of FUZZ_OPS ops, replay ops 0..=K of FUZZ_SEED, printing every op
# and both outcomes (`vfio-test fuzz --replay K`); FUZZ_FROM=F prints only ops F..=K.
# FUZZ_TRACE_PHYS=1 with FUZZ_REPLAY also prints each device's physical INTx disable, INTx
# pin (STATUS.INTERRUPT) and MSI enable from sysfs, and its INTx line's interrupt counts,
# whenever they change.
# FUZZ_TWINS: the twin names to fuzz (default: edu ivshmem pci-testdev igb). Not fuzzed: vga
# (the boot VGA device; its legacy VGA ranges reach the real console) and mixed-bus (its two
# functions share one bus and IOMMU group: a hot reset or bus reset of one is a reset of the
# other's device set, so the twins would not be independent).
set -u
cd "$(dirname "$0")/../.." || exit 1
. tests/guest/devices.sh
. tests/guest/report.sh

CLIENT=tests/client/target/release/vfio-test
FUZZ_SEED=${FUZZ_SEED:-$(date +%s)}
FUZZ_OPS=${FUZZ_OPS:-1000000}
FUZZ_TWINS=${FUZZ_TWINS:-edu ivshmem pci-testdev igb}
FUZZ_REPLAY=${FUZZ_REPLAY:-}
if [ -n "$FUZZ_REPLAY" ]; then
	count=(--replay "$FUZZ_REPLAY" --from "${FUZZ_FROM:-0}")
else
	count=(--ops "$FUZZ_OPS")
fi

echo "== fuzz: kernel $(uname -r), $(nproc) cpus, seed $FUZZ_SEED, ${count[*]} per twin: $FUZZ_TWINS"
for m in vfio_pci vfio_pci_rs; do
	if modprobe "$m"; then ok "fuzz modprobe $m"; else bad "fuzz modprobe $m"; fi
done
dmesg_before=$(dmesg | wc -l)

for name in $FUZZ_TWINS; do
	spec=
	for t in "${TWINS[@]}"; do
		case "$t" in "$name"=*) spec=$t ;; esac
	done
	if [ -z "$spec" ]; then
		bad "fuzz $name: no such twin in devices.sh"
		continue
	fi
	bdfs=${spec#*=}
	c=${bdfs%,*}
	rs=${bdfs#*,}
	if ! "$CLIENT" bind "$c" vfio-pci > /dev/null || ! "$CLIENT" bind "$rs" vfio-pci-rs > /dev/null; then
		bad "fuzz $name bind"
		"$CLIENT" unbind "$c" > /dev/null 2>&1
		"$CLIENT" unbind "$rs" > /dev/null 2>&1
		continue
	fi
	start=$SECONDS
	"$CLIENT" fuzz --seed "$FUZZ_SEED" "${count[@]}" "$spec" 2>&1 | tee "/tmp/fuzz-$name.out"
	add_summary "/tmp/fuzz-$name.out" "fuzz $name client"
	echo "# fuzz $name took $((SECONDS - start)) s"
	for b in "$c" "$rs"; do
		if "$CLIENT" unbind "$b" > /dev/null; then ok "fuzz $name unbind $b"; else bad "fuzz $name unbind $b"; fi
	done
done

# IOMMU faults would mean a write reached a DMA engine (the fuzzer keeps away from them).
faults=$(dmesg | tail -n +"$((dmesg_before + 1))" | grep -cE 'DMAR: \[DMA|DMAR: DRHD: handling fault')
if [ "$faults" = 0 ]; then
	ok "fuzz no IOMMU fault in dmesg"
else
	bad "fuzz $faults IOMMU fault lines in dmesg: $(dmesg | tail -n +"$((dmesg_before + 1))" | grep -E 'DMAR' | head -5 | tr '\n' ' ')"
fi
check_health fuzz

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
