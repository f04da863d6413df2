#!/usr/bin/env bash
# Runs in the VM of `make standalone`: a kernel without the C vfio-pci and vfio-pci-core.
# vfio-pci-rs must be the PCI driver `vfio-pci` there, with INTx, the VGA region, virqfd and
# IRQ bypass, and pass the integration checks on the Rust side of every twin
# (`--only-driver vfio-pci-rs`; VFIO_TEST_RS_PCI_DRIVER tells the client the driver's name).
# Ends with `N passed, N failed`.
set -u
cd "$(dirname "$0")/../.." || exit 1
. tests/guest/devices.sh

CLIENT=tests/client/target/release/vfio-test
DRIVER=${VFIO_TEST_RS_PCI_DRIVER:?set by scripts/standalone.sh}
KUNIT_SUITES=(rust_rwsem rust_vfio vfio_pci_rs_ids vfio_pci_rs_rdwr vfio_pci_rs_config vfio_pci_rs_dmabuf)

pass=0
fail=0
ok() { echo "PASS $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }

echo "== standalone kernel $(uname -r), $(nproc) cpus"
config=/proc/config.gz
if [ -r "$config" ]; then
	zgrep -E '^(# )?CONFIG_(VFIO_PCI|VFIO_PCI_CORE|VFIO_PCI_RUST[A-Z_]*|VFIO_VIRQFD|IRQ_BYPASS_MANAGER)[= ]' "$config" |
		sed 's/^/# /'
fi
for m in vfio_pci vfio_pci_core; do
	if modinfo "$m" > /dev/null 2>&1; then bad "$m exists"; else ok "no module $m"; fi
done
[ -d /sys/module/vfio_pci_core ] && bad "vfio_pci_core built in" || ok "vfio_pci_core not built in"

if modprobe vfio_pci_rs; then ok "modprobe vfio_pci_rs"; else bad "modprobe vfio_pci_rs"; fi
drv_mod=$(basename "$(readlink "/sys/bus/pci/drivers/$DRIVER/module" 2>/dev/null)")
if [ "$drv_mod" = vfio_pci_rs ]; then
	ok "the PCI driver $DRIVER is vfio_pci_rs's"
else
	bad "the PCI driver $DRIVER belongs to '${drv_mod:-nothing}'"
fi
[ -e /sys/bus/pci/drivers/vfio-pci-rs ] && bad "a driver vfio-pci-rs exists too"

echo "== KUnit"
ktap=$(dmesg -t | sed -n '/^KTAP version/,$p')
for suite in "${KUNIT_SUITES[@]}"; do
	if printf '%s\n' "$ktap" | grep -qE "^ok [0-9]+ $suite$"; then
		ok "kunit $suite"
	else
		bad "kunit $suite: $(printf '%s\n' "$ktap" | grep -E "^(not )?ok [0-9]+ $suite$" || echo "did not run")"
	fi
done

echo "== integration (vfio-pci-rs alone, as $DRIVER)"
"$CLIENT" --only-driver vfio-pci-rs "${TWINS[@]}" 2>&1 | tee /tmp/client.out
summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' /tmp/client.out | tail -n1)
if [ -z "$summary" ]; then
	bad "integration client printed no summary"
else
	pass=$((pass + $(echo "$summary" | cut -d' ' -f1)))
	fail=$((fail + $(echo "$summary" | cut -d' ' -f3)))
fi
# The parts that leaned on the C driver's Kconfig symbols.
for what in "vga.*region-info.*VGA" "edu.*intx"; do
	n=$(grep -ciE "^PASS .*$what" /tmp/client.out)
	if [ "$n" -gt 0 ]; then ok "$what: $n checks passed"; else bad "$what: no check passed"; fi
done

echo "== module unload"
if rmmod vfio_pci_rs; then ok "rmmod vfio_pci_rs"; else bad "rmmod vfio_pci_rs"; fi

echo "== kernel health"
if grep -qE '^ *debug_locks: +1$' /proc/lockdep_stats; then
	ok "lockdep still on (debug_locks=1)"
else
	bad "lockdep turned itself off (debug_locks!=1)"
fi
splats=$(dmesg -t | grep -E 'WARNING:|BUG:|Oops|possible circular locking|circular locking dependency|INFO: task .* blocked|UBSAN|KASAN|refcount_t:' || true)
if [ -z "$splats" ]; then ok "no WARN/BUG/lockdep splat in dmesg"; else bad "kernel splat: $splats"; fi

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
