#!/usr/bin/env bash
# make qemu-p2p: QEMU as a peer-to-peer client on both drivers (tests/guest/qemu-p2p.sh), with
# QEMU 11.1 from trixie-backports (scripts/qemu11.sh) and the system's QEMU 10.0. Builds what
# changed, the nested guest (scripts/nested-p2p.sh), and boots the VM once for these checks
# alone; make test runs them too, in its QEMU boot (QEMU_P2P=0 leaves them out there).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

"$here/deps.sh"
"$here/kernel.sh"
"$here/client.sh"
qemu11=$("$here/qemu11.sh")
payload=$("$here/nested-p2p.sh")
cmd="QEMU11=$(printf %q "$qemu11") NESTED_P2P=$(printf %q "$payload")"
for v in P2P_DRIVERS P2P_RUNS; do
	[ -z "${!v+set}" ] || cmd+=" $v=$(printf %q "${!v}")"
done
"$here/vm.sh" "$cmd bash tests/guest/qemu-p2p.sh"
