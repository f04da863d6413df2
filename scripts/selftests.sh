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

# Copies for the runs on vfio-pci-rs, built from the same sources with one assertion changed
# and nothing else; the guest script says so in its output.
# - vfio_pci_sriov_uapi_test asserts that the VF it creates is bound to "vfio-pci", the
#   driver it expects of the PF: the copy expects "vfio-pci-rs".
# - vfio_dma_mapping_mmio_test asserts that iommufd's type1 compatibility cannot map a BAR's
#   mmap() ("Check for iommufd compat success once it lands"): with vfio-pci-rs it lands
#   (a BAR mmap() is a DMABUF that iommufd imports), so the copy expects the map to succeed
#   in every mode but native iommufd, which upstream means to keep refusing.
mkdir -p "$OUT/rs"
rs_copy() { # NAME SED-PROGRAM CHECK-REGEX
	local name=$1
	sed -E "$2" "$SRC/$name.c" > "$OUT/rs/$name.c.new"
	grep -qE "$3" "$OUT/rs/$name.c.new" ||
		die "selftests: $name.c changed; update its vfio-pci-rs copy in scripts/selftests.sh"
	cmp -s "$OUT/rs/$name.c.new" "$OUT/rs/$name.c" && rm "$OUT/rs/$name.c.new" ||
		mv "$OUT/rs/$name.c.new" "$OUT/rs/$name.c"
	if [ ! "$OUT/${name}_rs" -nt "$OUT/rs/$name.c" ] || [ ! "$OUT/${name}_rs" -nt "$OUT/$name" ]; then
		gcc -D_GNU_SOURCE= -isystem "$KDIR/usr/include" -I"$KDIR/tools/include" \
			-I"$SRC/lib/include" -iquote "$SRC" -Wall -Werror -pthread "$OUT/rs/$name.c" \
			$(find "$OUT/libvfio" -name '*.o' | sort) -luuid -o "$OUT/${name}_rs"
	fi
}
sriov=vfio_pci_sriov_uapi_test
rs_copy $sriov 's/strcmp\(vf_driver, "vfio-pci"\)/strcmp(vf_driver, "vfio-pci-rs")/' \
	'strcmp\(vf_driver, "vfio-pci-rs"\)'
mmio=vfio_dma_mapping_mmio_test
rs_copy $mmio '/!strcmp\(iommu->mode->name, MODE_VFIO_TYPE1V2_IOMMU\) \|\|$/{N;s/.*\n.*/\tif (strcmp(iommu->mode->name, MODE_IOMMUFD)) {/}' \
	'	if \(strcmp\(iommu->mode->name, MODE_IOMMUFD\)\) \{$'

progs=(vfio_pci_device_test vfio_dma_mapping_test "$mmio" vfio_iommufd_setup_test
	vfio_pci_driver_test "$sriov" "${sriov}_rs" "${mmio}_rs")
for p in "${progs[@]}"; do
	[ -x "$OUT/$p" ] || die "selftests: $OUT/$p was not built"
done
log "selftests: ${#progs[@]} programs in $OUT"
