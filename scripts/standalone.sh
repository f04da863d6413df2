#!/usr/bin/env bash
# make standalone: build the kernel without the C vfio-pci and vfio-pci-core
# (config/vfio-pci-rs-standalone.config) in a tree and build of its own in the cache, boot
# it once and run tests/guest/standalone.sh: vfio-pci-rs alone, registered as `vfio-pci`.
# Not part of make test (a second kernel build, about 20 minutes the first time).
set -euo pipefail
export VFIO_PCI_RS_STANDALONE=1
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

"$here/deps.sh"
# DPDK's testpmd, which the boot runs on an igb bound to the driver under the name vfio-pci.
dpkg-query -W -f='${Status}' dpdk-dev 2>/dev/null | grep -q 'ok installed' || {
	log "apt: installing dpdk-dev"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpdk-dev > /dev/null
}
"$here/kernel.sh"
"$here/client.sh"
start=$SECONDS
"$here/vm.sh" "VFIO_TEST_RS_PCI_DRIVER=vfio-pci bash tests/guest/standalone.sh"
log "standalone boot: $((SECONDS - start)) s"
