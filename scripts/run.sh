#!/usr/bin/env bash
# make run: the demo (tests/guest/demo.sh) in one VM boot: a device bound to vfio-pci-rs with
# driver_override and passed through to a nested QEMU. DEMO_NESTED_LINUX=1 also boots the
# project's kernel in the nested QEMU (its initramfs is built here, on the host, first).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

DEMO_NESTED_LINUX=${DEMO_NESTED_LINUX:-0}
case "$DEMO_NESTED_LINUX" in 0 | 1) ;; *) die "DEMO_NESTED_LINUX must be 0 or 1" ;; esac
[ "$DEMO_NESTED_LINUX" = 0 ] || "$here/nested-initramfs.sh" > /dev/null
"$here/vm.sh" "DEMO_NESTED_LINUX=$DEMO_NESTED_LINUX ${BDF:+BDF=$BDF} bash tests/guest/demo.sh"
