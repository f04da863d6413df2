#!/usr/bin/env bash
# Style and lint: rustfmt, clippy (make CLIPPY=1) on the driver and the abstractions, and
# checkpatch on the driver's files.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"
MAKE=(make -C "$KDIR" LLVM=-19 -j"$(nproc)")

"$here/install-tree.sh" "$KDIR"
log "check: rustfmt"
tree_rs=$(cd "$REPO" && find tree -name '*.rs' | sort)
tree_c=$(cd "$REPO" && find tree -name '*.c' | sort)
(cd "$REPO" && rustfmt --check --edition 2021 --config-path "$KDIR/.rustfmt.toml" ./*.rs $tree_rs)
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
	$tree_rs $tree_c)
log "check: clean"
