#!/usr/bin/env bash
# The kernel's VFIO selftests (tests/guest/selftests.sh) in a boot of their own, on the built
# kernel and selftests: make test's third boot, and `make selftests` alone. The SELFTEST_*
# knobs go into the guest's command.
#
# vfio_pci_driver_test on igb runs its seven cases once per IOMMU mode, five modes, and takes
# 600 to 1300 s per driver under TCG (1217 s and 1284 s on a slow two-core host): make test
# passes SELFTEST_DRIVER_TEST_ARGS='-v iommufd' (one mode), `make selftests` leaves it unset
# (all five).
#
# vfio_dma_mapping_test's 1 GiB hugetlb variants need a 1 GiB page, which only a boot-time
# reservation finds (at runtime no aligned GiB is free); 3 GiB so that the rest of the boot
# has room besides it (the guest script frees it after that program).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

st_cmd=
for v in SELFTEST_DRIVERS SELFTEST_DEVICES SELFTEST_TESTS SELFTEST_ARGS SELFTEST_DRIVER_TEST_ARGS \
	SELFTEST_HUGEPAGES; do
	[ -z "${!v+set}" ] || st_cmd+=" $v=$(printf %q "${!v}")"
done
VM_TIMEOUT=${SELFTEST_VM_TIMEOUT:-5400} VM_MEMORY=${SELFTEST_VM_MEMORY:-3G} \
	VM_APPEND="hugepagesz=1G hugepages=1" \
	exec "$here/vm.sh" "$st_cmd bash tests/guest/selftests.sh"
