#!/usr/bin/env bash
# Runs in the VM of `make standalone`: a kernel without the C vfio-pci and vfio-pci-core.
# vfio-pci-rs must be the module and the PCI driver `vfio-pci` there, with INTx, the VGA
# region, virqfd and IRQ bypass, and pass the integration checks on the Rust side of every twin
# (`--only-driver vfio-pci-rs`; VFIO_TEST_RS_PCI_DRIVER tells the client the driver's name).
# Ends with `N passed, N failed`.
set -u
cd "$(dirname "$0")/../.." || exit 1
. tests/guest/devices.sh

CLIENT=tests/client/target/release/vfio-test
DRIVER=${VFIO_TEST_RS_PCI_DRIVER:?set by scripts/standalone.sh}

. tests/guest/report.sh

echo "== standalone kernel $(uname -r), $(nproc) cpus"
config=/proc/config.gz
if [ -r "$config" ]; then
	zgrep -E '^(# )?CONFIG_(VFIO_PCI|VFIO_PCI_CORE|VFIO_PCI_RUST[A-Z_]*|VFIO_VIRQFD|IRQ_BYPASS_MANAGER)[= ]' "$config" |
		sed 's/^/# /'
fi
# The module vfio-pci is the Rust one; there is no vfio_pci_core and no vfio_pci_rs.
file=$(modinfo -F filename vfio-pci 2>/dev/null)
case "$file" in
*/drivers/vfio/pci/rust/vfio-pci.ko*) ok "the module vfio-pci is vfio-pci-rs ($file)" ;;
*) bad "the module vfio-pci is '${file:-missing}'" ;;
esac
for m in vfio_pci_core vfio_pci_rs; do
	if modinfo "$m" > /dev/null 2>&1; then bad "a module $m exists"; else ok "no module $m"; fi
done
[ -d /sys/module/vfio_pci_core ] && bad "vfio_pci_core built in" || ok "vfio_pci_core not built in"

if modprobe vfio-pci; then ok "modprobe vfio-pci"; else bad "modprobe vfio-pci"; fi
drv_mod=$(basename "$(readlink "/sys/bus/pci/drivers/$DRIVER/module" 2>/dev/null)")
if [ "$drv_mod" = vfio_pci ]; then
	ok "the PCI driver $DRIVER is the module vfio_pci's"
else
	bad "the PCI driver $DRIVER belongs to '${drv_mod:-nothing}'"
fi
[ -e /sys/bus/pci/drivers/vfio-pci-rs ] && bad "a driver vfio-pci-rs exists too"

echo "== KUnit"
check_kunit

echo "== integration (vfio-pci-rs alone, as $DRIVER)"
"$CLIENT" --only-driver vfio-pci-rs "${TWINS[@]}" 2>&1 | tee /tmp/client.out
add_summary /tmp/client.out "integration client"
# The parts that leaned on the C driver's Kconfig symbols.
for what in "vga vfio-pci-rs vga-(mem|io)-" "edu vfio-pci-rs irq-intx-"; do
	n=$(grep -cE "^PASS $what" /tmp/client.out)
	if [ "$n" -gt 0 ]; then ok "$what: $n checks passed"; else bad "$what: no check passed"; fi
done

echo "== DPDK testpmd on igb, bound to $DRIVER"
# DPDK's EAL takes a device bound to the driver named vfio-pci as a VFIO device; testpmd
# starts the port and sends one burst (--tx-first) of 32 packets. One vCPU: the forwarding
# lcore shares it with the main one.
igb=${TWINS[3]#*=}
igb=${igb#*,}
if ! command -v dpdk-testpmd > /dev/null; then
	bad "dpdk-testpmd is not installed (scripts/standalone.sh installs dpdk-dev)"
elif ! "$CLIENT" bind "$igb" "$DRIVER" > /dev/null; then
	bad "dpdk: bind $igb to $DRIVER"
else
	echo 64 > /proc/sys/vm/nr_hugepages
	mkdir -p /dev/hugepages
	mountpoint -q /dev/hugepages || mount -t hugetlbfs nodev /dev/hugepages
	(sleep 20; echo) | timeout 300 dpdk-testpmd --lcores '(0,1)@0' -n 1 -a "$igb" \
		--file-prefix standalone -- --tx-first --nb-cores 1 --total-num-mbufs 8192 \
		> /tmp/testpmd.out 2>&1
	echo "# dpdk-testpmd exited with $?"
	sed 's/^/# testpmd: /' /tmp/testpmd.out | grep -vE '^# testpmd: *$' | tail -n 40
	if grep -qE 'Port 0: ([0-9A-F]{2}:){5}[0-9A-F]{2}' /tmp/testpmd.out; then
		ok "dpdk: testpmd probed $igb through $DRIVER and started port 0"
	else
		bad "dpdk: testpmd did not start a port on $igb"
	fi
	tx=$(sed -n 's/.*TX-packets: *\([0-9]*\).*/\1/p' /tmp/testpmd.out | head -n1)
	if [ "${tx:-0}" -ge 32 ]; then
		ok "dpdk: testpmd sent $tx packets"
	else
		bad "dpdk: testpmd sent ${tx:-no} packets, expected 32 or more"
	fi
	"$CLIENT" unbind "$igb" > /dev/null
	echo 0 > /proc/sys/vm/nr_hugepages
fi

echo "== module unload"
if rmmod vfio_pci; then ok "rmmod vfio_pci"; else bad "rmmod vfio_pci"; fi

echo "== kernel health"
check_health

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
