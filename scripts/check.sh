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
if grep -qE "^(warning|error)" "$CACHE/clippy.log"; then
	grep -E -A12 "^(warning|error)" "$CACHE/clippy.log" >&2
	die "clippy found something"
fi
log "check: checkpatch"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$REPO/tree/linux.patch" "$tmp/linux.patch"
# Outside the repository, so checkpatch reads the file as a patch, not a tracked file.
(cd "$tmp" && "$KDIR/scripts/checkpatch.pl" --no-tree --terse \
	--ignore MISSING_SIGN_OFF,COMMIT_MESSAGE linux.patch)
(cd "$REPO" && "$KDIR/scripts/checkpatch.pl" --no-tree --terse -f Kconfig Kbuild ./*.rs \
	tree/rust/kernel/vfio.rs tree/rust/kernel/pci/state.rs tree/rust/helpers/pci_state.c)
log "check: clean"
