#!/usr/bin/env bash
# Developer tool: regenerate tree/linux.patch from a tree in which the patched files were
# edited, after scripts/install-tree.sh placed it. Pristine copies come from the tree's
# .vfio-pci-rs.orig (kept by install-tree.sh), else from the cached linux-source tarball.
#
#   scripts/refresh-patch.sh [-a FILE]... [KDIR]
#
# -a FILE adds an existing file of the tree (a path relative to its top) to the patch.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"
added=
while [ $# -gt 0 ]; do
	case $1 in
	-a) added="$added $2"; shift 2 ;;
	*) KDIR=$1; shift ;;
	esac
done

orig=$KDIR/.vfio-pci-rs.orig
files=$( (grep '^+++ b/' "$REPO/tree/linux.patch" | cut -c7-; for f in $added; do echo "$f"; done) |
	sort -u)
missing=
for f in $files; do
	[ -e "$orig/$f" ] || [ -e "$orig/$f.absent" ] || missing="$missing linux-source-7.3/$f"
done
if [ -n "$missing" ]; then
	mkdir -p "$orig"
	tar -xJf "$CACHE/src/linux-source-7.3.tar.xz" -C "$orig" --strip-components=1 $missing
fi
out=$(mktemp)
for f in $files; do
	src=$orig/$f
	[ -e "$src" ] || src=/dev/null
	diff -uN --label "a/$f" --label "b/$f" "$src" "$KDIR/$f" || true
done > "$out"
mv "$out" "$REPO/tree/linux.patch"
cp "$REPO/tree/linux.patch" "$KDIR/.vfio-pci-rs.patch"
