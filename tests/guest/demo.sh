#!/usr/bin/env bash
# make run: in the VM, load vfio_pci_rs, bind a device to vfio-pci-rs the way an administrator
# would (driver_override), and pass it through to a nested QEMU (TCG) as a VM would get it:
# the nested SeaBIOS programs its BARs and runs its option ROM, `info mtree -f` shows the BARs
# mapped through vfio-pci-rs's mmap; with DEMO_NESTED_LINUX=1 a nested Linux then drives it.
# Last, map a BAR through vfio-pci-rs (a DMABUF), revoke it by disabling memory (SIGBUS) and
# restore it.
#
#   BDF=0000:0a:00.0   the device to pass through (default: the VGA, which has a ROM)
set -eu
cd "$(dirname "$0")/../.." || exit 1
BDF=${BDF:-0000:0a:00.0}
DEMO_NESTED_LINUX=${DEMO_NESTED_LINUX:-0}
dev=/sys/bus/pci/devices/$BDF
out=/tmp/demo-qemu

run() { echo "# $*"; "$@"; }
section() { printf '\n== %s\n' "$*"; }

section "bind $BDF to vfio-pci-rs"
run modprobe vfio_pci_rs
run modinfo -F alias vfio_pci_rs
run lspci -nnk -s "$BDF"
[ -e "$dev/driver" ] && echo "$BDF" > "$dev/driver/unbind"
run sh -c "echo vfio-pci-rs > $dev/driver_override"
run sh -c "echo $BDF > /sys/bus/pci/drivers_probe"
run lspci -nnk -s "$BDF"
group=$(basename "$(readlink "$dev/iommu_group")")
echo "IOMMU group $group: $(ls "$dev/iommu_group/devices" | tr '\n' ' ')"
run ls -l /dev/vfio/ /dev/vfio/devices/

section "nested QEMU: -device vfio-pci,host=$BDF (TCG, no disk: SeaBIOS only)"
status=0
rm -rf "$out"
/usr/bin/python3 tests/guest/qemu-vfio.py --bdf "$BDF" --out "$out" --timeout 300 \
	--bios-done 'No bootable device' | sed -u 's/^/  /' || status=1
echo "# QEMU command line:"
sed 's/^/  /' "$out/cmdline"
echo "# nested SeaBIOS: the device's BARs and option ROM"
grep -aE "bdf=00:01.0|[Oo]ption rom|SeaVGABIOS|VGA" "$out/seabios.log" | head -n 16 | sed 's/^/  /'
echo "# info mtree -f: the BARs mapped through vfio-pci-rs's mmap"
sed 's/^/  /' "$out/mtree-dev.txt" 2>/dev/null
echo "# info pci:"
grep -B 1 -A 12 "$(printf '%s' "$(cut -c3- "$dev/vendor"):$(cut -c3- "$dev/device")")" "$out/info-pci.txt" 2>/dev/null |
	sed 's/^/  /'
[ -s "$out/qemu.err" ] && sed 's/^/  qemu: /' "$out/qemu.err"
echo "# dmesg:"
dmesg -t | grep -F "$BDF" | tail -n 8 | sed 's/^/  /' || true

if [ "$DEMO_NESTED_LINUX" = 1 ]; then
	section "nested Linux on the passed-through device"
	[ -e "$dev/driver" ] && echo "$BDF" > "$dev/driver/unbind"
	echo > "$dev/driver_override"
	NESTED_DRIVERS=vfio-pci-rs NESTED_DEVICES=vga bash tests/guest/nested-linux.sh || status=1
else
	echo "$BDF" > "$dev/driver/unbind"
	echo > "$dev/driver_override"
fi

# BAR mmap (issue 4): ivshmem's 1 GiB BAR2 through vfio-pci-rs. /proc/self/maps names the
# DMABUF behind the mapping; clearing COMMAND.MEM revokes it (SIGBUS), setting it brings the
# data back.
section "BAR mmap through a DMABUF, revoke and restore"
MMAP_BDF=${MMAP_BDF:-0000:04:00.0}
run tests/client/target/release/vfio-test bind "$MMAP_BDF" vfio-pci-rs
run tests/client/target/release/vfio-test mmap-demo "$MMAP_BDF" 2 || status=$?
run tests/client/target/release/vfio-test unbind "$MMAP_BDF"
run rmmod vfio_pci_rs
exit "$status"
