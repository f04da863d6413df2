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

# gcc, as the selftests build by default; KHDR_INCLUDES as the selftests' top Makefile sets it.
make -C "$SRC" -s -j"$(nproc)" OUTPUT="$OUT" \
	KHDR_INCLUDES="-isystem $KDIR/usr/include" all

progs=(vfio_pci_device_test vfio_dma_mapping_test vfio_dma_mapping_mmio_test
	vfio_iommufd_setup_test vfio_pci_driver_test)
for p in "${progs[@]}"; do
	[ -x "$OUT/$p" ] || die "selftests: $OUT/$p was not built"
done
log "selftests: ${#progs[@]} programs in $OUT"
