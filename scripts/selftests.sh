#!/usr/bin/env bash
# Build the kernel's own VFIO selftests (tools/testing/selftests/vfio of $KDIR) against the
# tree's uAPI headers, into $CACHE/selftests/vfio, for tests/guest/selftests.sh to run in the
# VM. Incremental: make rebuilds only what changed (the objects carry -MD dependencies).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

SRC=$KDIR/tools/testing/selftests/vfio
OUT=$CACHE/selftests/vfio
[ -f "$SRC/Makefile" ] || die "no VFIO selftests in $KDIR (tools/testing/selftests/vfio)"
mkdir -p "$OUT"

# The sanitised uAPI headers of this tree ($KDIR/usr/include), so the tests see the tree's
# vfio.h/iommufd.h and not the build machine's. `headers` needs no .config; LLVM= as
# kernel.sh passes it, so the tree's tool choice stays the same.
make -C "$KDIR" LLVM=-19 -s headers

# The harness gives each case 30 s (TEST_F_TIMEOUT: its own figure) and kills it then. Under
# TCG on a loaded two-core host, vfio_pci_driver_test's init_remove on igb overran that, and
# the killed case, still unpinning its 1 GiB as it exited, kept the group busy for the next
# ones. The tests include "kselftest_harness.h" by that name, so a header of the same name
# in an -iquote directory comes first: it includes the real one and scales its timeouts.
# (vfio_dma_mapping_mmio_test includes "../kselftest_harness.h" and keeps 30 s; its cases
# take under a second.)
SCALE=${SELFTEST_TIMEOUT_SCALE:-10}
case "$SCALE" in '' | *[!0-9]* | 0) die "SELFTEST_TIMEOUT_SCALE must be a positive integer" ;; esac
OVR=$CACHE/selftests/include
mkdir -p "$OVR"
hdr=$(cat <<EOF
/* Written by scripts/selftests.sh: the kselftest harness, per-case timeouts x$SCALE for TCG. */
#include "$KDIR/tools/testing/selftests/kselftest_harness.h"
enum { vfio_pci_rs_timeout_default = TEST_TIMEOUT_DEFAULT };
#undef TEST_TIMEOUT_DEFAULT
#define TEST_TIMEOUT_DEFAULT (vfio_pci_rs_timeout_default * $SCALE)
#undef TEST_F_TIMEOUT
#define TEST_F_TIMEOUT(fixture_name, test_name, timeout) \
	__TEST_F_IMPL(fixture_name, test_name, -1, (timeout) * $SCALE)
EOF
)
# Rewritten only when it changes, so make's -MD dependencies rebuild only then.
[ "$(cat "$OVR/kselftest_harness.h" 2>/dev/null)" = "$hdr" ] ||
	printf '%s\n' "$hdr" > "$OVR/kselftest_harness.h"

# Objects built with other flags (the dependency files do not record flags) are rebuilt.
flags="KHDR_INCLUDES=-isystem $KDIR/usr/include EXTRA_CFLAGS=-iquote $OVR"
if [ "$(cat "$OUT/.flags" 2>/dev/null)" != "$flags" ]; then
	rm -rf "${OUT:?}"/*
	printf '%s\n' "$flags" > "$OUT/.flags"
fi

# gcc, as the selftests build by default; KHDR_INCLUDES as the selftests' top Makefile sets it.
make -C "$SRC" -s -j"$(nproc)" OUTPUT="$OUT" \
	KHDR_INCLUDES="-isystem $KDIR/usr/include" EXTRA_CFLAGS="-iquote $OVR" all
echo "$SCALE" > "$OUT/timeout-scale"

# vfio_pci_sriov_uapi_test asserts that the VF it creates is bound to "vfio-pci", the driver
# it expects of the PF. The run on a PF bound to vfio-pci-rs uses a copy that expects
# "vfio-pci-rs", built from the same source with that string changed and nothing else; the
# guest script says so in its output.
sriov=vfio_pci_sriov_uapi_test
mkdir -p "$OUT/rs"
sed 's/strcmp(vf_driver, "vfio-pci")/strcmp(vf_driver, "vfio-pci-rs")/' "$SRC/$sriov.c" > "$OUT/rs/$sriov.c.new"
grep -q 'strcmp(vf_driver, "vfio-pci-rs")' "$OUT/rs/$sriov.c.new" ||
	die "selftests: $sriov.c no longer checks the VF's driver by name; update scripts/selftests.sh"
cmp -s "$OUT/rs/$sriov.c.new" "$OUT/rs/$sriov.c" && rm "$OUT/rs/$sriov.c.new" ||
	mv "$OUT/rs/$sriov.c.new" "$OUT/rs/$sriov.c"
if [ ! "$OUT/${sriov}_rs" -nt "$OUT/rs/$sriov.c" ] || [ ! "$OUT/${sriov}_rs" -nt "$OUT/$sriov" ]; then
	gcc -D_GNU_SOURCE= -isystem "$KDIR/usr/include" -I"$KDIR/tools/include" -I"$SRC/lib/include" \
		-iquote "$SRC" -Wall -Werror -pthread "$OUT/rs/$sriov.c" \
		$(find "$OUT/libvfio" -name '*.o' | sort) -luuid -o "$OUT/${sriov}_rs"
fi

progs=(vfio_pci_device_test vfio_dma_mapping_test vfio_dma_mapping_mmio_test
	vfio_iommufd_setup_test vfio_pci_driver_test "$sriov" "${sriov}_rs")
for p in "${progs[@]}"; do
	[ -x "$OUT/$p" ] || die "selftests: $OUT/$p was not built"
done
log "selftests: ${#progs[@]} programs in $OUT"
