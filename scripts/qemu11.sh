#!/usr/bin/env bash
# QEMU 11.1 from Debian's trixie-backports, for `make qemu-p2p` (tests/guest/qemu-p2p.sh):
# the first QEMU that maps a passed-through BAR on iommufd with VFIO_DEVICE_FEATURE_DMA_BUF
# and IOMMU_IOAS_MAP_FILE. Its binaries need trixie's libraries and its source package is
# not on the mirror, so the packages and every library they need are unpacked into
# $CACHE/qemu11/root (an apt state of its own, with an empty dpkg status: nothing is
# installed on the system) and run through that root's dynamic loader. Idempotent; prints
# the path of the wrapper that runs it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

QEMU11_VERSION=${QEMU11_VERSION:-1:11.1.3+ds-2~bpo13+1}
dir=$CACHE/qemu11
root=$dir/root
wrapper=$dir/qemu-system-x86_64
stamp=$dir/.installed

if [ "$(cat "$stamp" 2>/dev/null)" != "$QEMU11_VERSION" ]; then
	log "qemu11: unpacking qemu-system-x86 $QEMU11_VERSION and its trixie libraries"
	mkdir -p "$dir/lists/partial" "$dir/archives/partial"
	cat > "$dir/sources.list" <<-SRC
	deb http://deb.debian.org/debian trixie main
	deb http://deb.debian.org/debian trixie-backports main
	SRC
	: > "$dir/status"
	opts=(-o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
	      -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache::Archives=$dir/archives"
	      -o "Dir::State::status=$dir/status" -o Dir::Etc::Preferences=/dev/null
	      -o Dir::Etc::PreferencesParts=/dev/null -o APT::Sandbox::User=root
	      -o Debug::NoLocking=1 -o APT::Install-Recommends=0)
	apt-get "${opts[@]}" update -qq
	apt-get "${opts[@]}" install -y -qq --download-only -t trixie-backports \
		"qemu-system-x86=$QEMU11_VERSION" >/dev/null
	rm -rf "$root"
	mkdir -p "$root"
	for deb in "$dir"/archives/*.deb; do
		dpkg-deb -x "$deb" "$root"
	done
	rm -f "$dir"/archives/*.deb
	echo "$QEMU11_VERSION" > "$stamp"
fi

# QEMU finds its firmware through -L, and its modules through QEMU_MODULE_DIR first.
cat > "$wrapper" <<WRAP
#!/bin/sh
# QEMU $QEMU11_VERSION with trixie's libraries (scripts/qemu11.sh).
export QEMU_MODULE_DIR=$root/usr/lib/x86_64-linux-gnu/qemu
exec $root/usr/lib64/ld-linux-x86-64.so.2 --library-path $root/usr/lib/x86_64-linux-gnu \\
	$root/usr/bin/qemu-system-x86_64 -L $root/usr/share/qemu -L $root/usr/share/seabios "\$@"
WRAP
chmod +x "$wrapper"
"$wrapper" --version | grep -qF "(Debian $QEMU11_VERSION)" ||
	die "qemu11: $wrapper does not run: $("$wrapper" --version 2>&1 | head -n 3)"
echo "$wrapper"
