#!/usr/bin/env bash
# Developer tool: regenerate tree/linux.patch from a tree in which the patched files were
# edited. Pristine copies come from the cached linux-source tarball.
#
#   scripts/refresh-patch.sh [KDIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"
[ $# -ge 1 ] && KDIR=$1

files=$(grep '^+++ b/' "$REPO/tree/linux.patch" | cut -c7- | sort -u)
orig=$(mktemp -d)
trap 'rm -rf "$orig"' EXIT
tar -xJf "$CACHE/src/linux-source-7.3.tar.xz" -C "$orig" --strip-components=1 \
	$(for f in $files; do echo "linux-source-7.3/$f"; done)
out=$(mktemp)
for f in $files; do
	diff -uN --label "a/$f" --label "b/$f" "$orig/$f" "$KDIR/$f" || true
done > "$out"
mv "$out" "$REPO/tree/linux.patch"
cp "$REPO/tree/linux.patch" "$KDIR/.vfio-pci-rs.patch"
