#!/usr/bin/env bash
# make run: in the VM, load vfio_pci_rs, bind a device to vfio-pci-rs the way an administrator
# would, open it through /dev/vfio as QEMU would, and show what it offers; then map a BAR
# through vfio-pci-rs (a DMABUF), revoke it by disabling memory (SIGBUS) and restore it.
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

# BAR mmap (issue 4): ivshmem's 1 GiB BAR2 through vfio-pci-rs. /proc/self/maps names the
# DMABUF behind the mapping; clearing COMMAND.MEM revokes it (SIGBUS), setting it brings the
# data back.
MMAP_BDF=${MMAP_BDF:-0000:04:00.0}
status=0
run tests/client/target/release/vfio-test bind "$MMAP_BDF" vfio-pci-rs
run tests/client/target/release/vfio-test mmap-demo "$MMAP_BDF" 2 || status=$?
run tests/client/target/release/vfio-test unbind "$MMAP_BDF"
run rmmod vfio_pci_rs
exit "$status"
