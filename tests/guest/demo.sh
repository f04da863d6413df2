#!/usr/bin/env bash
# make run: in the VM, load vfio_pci_rs, bind a device to vfio-pci-rs the way an administrator
# would, open it through /dev/vfio as QEMU would, and show what it offers.
set -eu
cd "$(dirname "$0")/../.." || exit 1
BDF=${BDF:-0000:08:00.0}
dev=/sys/bus/pci/devices/$BDF

run() { echo "# $*"; "$@"; }

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
run tests/client/target/release/vfio-test info "$BDF"
echo "$BDF" > "$dev/driver/unbind"
echo > "$dev/driver_override"
run rmmod vfio_pci_rs
