#!/usr/bin/env bash
# Style and lint: rustfmt, clippy (make CLIPPY=1) on the driver and the abstractions, and
# checkpatch on the driver's files.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"
MAKE=(make -C "$KDIR" LLVM=-19 -j"$(nproc)")

"$here/install-tree.sh" "$KDIR"
log "check: rustfmt"
rustfmt --check --edition 2021 --config-path "$KDIR/.rustfmt.toml" \
	"$REPO"/*.rs "$REPO"/tree/rust/kernel/vfio.rs "$REPO"/tree/rust/kernel/pci/state.rs
log "check: clippy"
touch "$KDIR"/drivers/vfio/pci/rust/vfio_pci_core.rs "$KDIR/rust/kernel/lib.rs"
"${MAKE[@]}" CLIPPY=1 > "$CACHE/clippy.log" 2>&1 || { tail -n 40 "$CACHE/clippy.log"; die "clippy build failed"; }
if grep -E -A6 "^(warning|error)" "$CACHE/clippy.log" | grep -qE "drivers/vfio/pci/rust/|rust/kernel/(vfio|pci)"; then
	grep -E -A12 "^(warning|error)" "$CACHE/clippy.log" >&2
	die "clippy found something"
fi
log "check: checkpatch"
(cd "$REPO" && "$KDIR/scripts/checkpatch.pl" --no-tree --terse --show-types \
	--ignore FILE_PATH_CHANGES,SPDX_LICENSE_TAG -f Kconfig Kbuild ./*.rs \
	tree/rust/kernel/vfio.rs tree/rust/kernel/pci/state.rs tree/rust/helpers/pci_state.c) || true
