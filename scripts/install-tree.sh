#!/usr/bin/env bash
# Place the driver and its kernel-crate abstractions into a Linux 7.3 tree, idempotently.
#
#   scripts/install-tree.sh [KDIR]
#
# - tree/ mirrors the kernel tree: new files are copied to the same path, and
#   tree/linux.patch makes the few edits to existing files (Kconfig source, Makefile obj-,
#   rust/kernel/lib.rs, bindings and uapi helpers, rust/helpers/helpers.c, pci.rs, ...).
# - The driver (Kconfig, Kbuild, *.rs at the repository root) goes to
#   drivers/vfio/pci/rust/.
# Files are only written when their content changes, so an unchanged tree rebuilds nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"
[ $# -ge 1 ] && KDIR=$1

[ -f "$KDIR/Makefile" ] || die "$KDIR is not a kernel tree"
version=$(make -s -C "$KDIR" kernelversion)
case "$version" in
7.3|7.3.*) ;;
*) die "$KDIR is Linux $version; vfio-pci-rs needs a 7.3.x tree" ;;
esac

# Copy $1 to $2 unless identical (keeps mtimes, so make rebuilds only what changed).
place() {
	mkdir -p "$(dirname "$2")"
	cmp -s "$1" "$2" || cp "$1" "$2"
}

# The edits to existing files. Each patched file is its pristine copy (saved in the tree
# before the first patch touched it) with tree/linux.patch applied, placed only when its
# content changes: an edit of the patch rebuilds only what it touched. Files an earlier
# patch edited and this one does not go back to their pristine copies.
patch_file=$REPO/tree/linux.patch
applied=$KDIR/.vfio-pci-rs.patch
orig=$KDIR/.vfio-pci-rs.orig
patched_files() { grep '^+++ b/' "$1" | cut -c7- | sort -u; }
if [ -f "$applied" ] && [ ! -d "$orig" ]; then
	# Applied by an older install-tree.sh, which kept no pristine copies.
	log "install: reverting the previously applied tree patch"
	patch -d "$KDIR" -p1 -R -s -f --no-backup-if-mismatch < "$applied" ||
		die "cannot revert $applied"
	rm -f "$applied"
fi
if ! cmp -s "$patch_file" "$applied" 2>/dev/null; then
	log "install: applying tree/linux.patch"
	new_files=$(patched_files "$patch_file")
	old_files=$([ -f "$applied" ] && patched_files "$applied" || true)
	work=$(mktemp -d)
	for f in $new_files; do
		if [ ! -e "$orig/$f" ] && [ ! -e "$orig/$f.absent" ]; then
			mkdir -p "$(dirname "$orig/$f")"
			if [ -e "$KDIR/$f" ]; then
				cp -p "$KDIR/$f" "$orig/$f"
			else
				touch "$orig/$f.absent"
			fi
		fi
		if [ -e "$orig/$f" ]; then
			mkdir -p "$(dirname "$work/$f")"
			cp "$orig/$f" "$work/$f"
		fi
	done
	patch -d "$work" -p1 -s -f --no-backup-if-mismatch < "$patch_file" ||
		{ rm -rf "$work"; die "tree/linux.patch does not apply to $KDIR"; }
	for f in $new_files; do
		place "$work/$f" "$KDIR/$f"
	done
	rm -rf "$work"
	for f in $old_files; do
		case " $(echo $new_files) " in *" $f "*) continue ;; esac
		if [ -e "$orig/$f" ]; then
			place "$orig/$f" "$KDIR/$f"
		else
			rm -f "$KDIR/$f"
		fi
	done
	cp "$patch_file" "$applied"
fi

# New files of the kernel crate and helpers.
(cd "$REPO/tree" && find rust -type f) | while read -r f; do
	place "$REPO/tree/$f" "$KDIR/$f"
done

# The driver.
dst=$KDIR/drivers/vfio/pci/rust
mkdir -p "$dst"
for f in "$REPO"/Kconfig "$REPO"/Kbuild "$REPO"/*.rs; do
	place "$f" "$dst/$(basename "$f")"
done
# Driver files removed from the repository leave the tree too.
for f in "$dst"/*.rs; do
	[ -e "$REPO/$(basename "$f")" ] || rm -f "$f"
done
