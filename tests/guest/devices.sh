# The VM's device set (scripts/vm.sh), as twin pairs NAME=BDF_FOR_VFIO_PCI,BDF_FOR_VFIO_PCI_RS.
# Sourced by the guest scripts.
# shellcheck shell=bash
TWINS=(
	"edu=0000:01:00.0,0000:02:00.0"
	"ivshmem=0000:03:00.0,0000:04:00.0"
	"pci-testdev=0000:05:00.0,0000:06:00.0"
	"igb=0000:07:00.0,0000:08:00.0"
	"vga=0000:09:00.0,0000:0a:00.0"
	# Two functions on one conventional PCI bus: a bus-reset device set shared by both drivers.
	"mixed-bus=0000:0c:01.0,0000:0c:02.0"
)
# A function with an ATS capability (virtio-rng-pci,ats=on), for the reset-race test.
ATS_FUNCTION=0000:0e:00.0
