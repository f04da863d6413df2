# SPDX-License-Identifier: GPL-2.0-only
#
# The user's entry point. Kbuild reads Kbuild, not this file, once the driver is in a tree.
#
#   make test          install what is missing, build, run KUnit and the VM tests
#   make run           the demo: a device on vfio-pci-rs passed through to a nested QEMU
#   make vm CMD='...'  boot the test VM and run CMD as root
#   make bench         fault/revoke/ioctl benchmark, vfio-pci vs vfio-pci-rs (not in make test)
#   make fuzz          seeded device-fd fuzzer, vfio-pci vs vfio-pci-rs op by op (not in make test)
#   make selftests     the kernel's VFIO selftests boot alone, vfio_pci_driver_test in all five IOMMU modes
#   make qemu-p2p      QEMU 11.1 and 10.0 as peer-to-peer clients on both drivers (not in make test)
#   make kernel        install the driver into the tree and build it
#   make install KDIR=/path/to/linux-7.3   place the driver into your own tree
#   make check         rustfmt, clippy and checkpatch
#   make standalone    a second kernel without the C vfio-pci, booted once (not in make test)
#   make sanitize      the sanitizer kernel (KASAN, kmemleak, ...): tests, stress, fuzzer (not in make test)
#   make soak          the race stress for 10 minutes per driver on the sanitizer kernel (not in make test)
#
# KDIR=/path uses your own 7.3 tree instead of the cached one.

SHELL := /bin/bash
export KDIR

.PHONY: all deps kernel install client test run vm check kunit clean-cache bench fuzz standalone qemu-p2p sanitize soak selftests

all: kernel

deps:
	@scripts/deps.sh

kernel: deps
	@scripts/kernel.sh

install:
	@scripts/install-tree.sh $(KDIR)

client: deps
	@scripts/client.sh

test:
	@scripts/test.sh

run: kernel client
	@scripts/run.sh

bench:
	@scripts/bench.sh

fuzz:
	@scripts/fuzz.sh

standalone:
	@scripts/standalone.sh

sanitize:
	@scripts/sanitize.sh sanitize

soak:
	@scripts/sanitize.sh soak

selftests: kernel client
	@scripts/selftests.sh && scripts/selftests-boot.sh

qemu-p2p:
	@scripts/qemu-p2p.sh

vm: kernel client
	@scripts/vm.sh '$(CMD)'

check: kernel
	@scripts/check.sh
