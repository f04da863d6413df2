#!/usr/bin/env bash
# Build the initramfs of the nested Linux guest (tests/guest/nested-linux.sh): busybox-static
# (scripts/deps.sh installs it) and an init that lists the guest's PCI devices and their
# drivers, prints the kernel's lines about them and powers off. Runs on the host, before the
# VM boots; the VM sees the result through the shared filesystem. Prints the image's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

BUSYBOX=${BUSYBOX:-/bin/busybox}
out=$CACHE/nested
img=$out/initramfs.cpio.gz
[ -x "$BUSYBOX" ] || die "no $BUSYBOX (apt-get install busybox-static; scripts/deps.sh does)"
file -L "$BUSYBOX" | grep -q 'statically linked' || die "$BUSYBOX is not static"

mkdir -p "$out"
root=$(mktemp -d "$out/root.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys}
cp "$BUSYBOX" "$root/bin/busybox"
cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "nested: Linux $(uname -r) userspace up at $(cut -d' ' -f1 /proc/uptime) s"
for d in /sys/bus/pci/devices/*; do
	drv=none
	[ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
	echo "nested-pci: ${d##*/} $(cat "$d/vendor"):$(cat "$d/device") class $(cat "$d/class") driver $drv"
done
dmesg | grep -E 'bochs-drm|\[drm\]|fb0|igb|8086:10c9|1234:1111|vfio' | sed 's/^/nested-dmesg: /'
ls /dev/fb* /dev/dri/* 2>/dev/null | sed 's/^/nested-dev: /'
echo "nested: done at $(cut -d' ' -f1 /proc/uptime) s"
echo NESTED-LINUX-DONE
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | sort | cpio -o -H newc --quiet | gzip -9) > "$img.tmp"
mv "$img.tmp" "$img"
echo "$img"
