#!/usr/bin/env bash
# Boot the test VM with the built kernel and run a command in it as root.
#
#   scripts/vm.sh 'command ...'
#
# The guest sees the host's filesystem (virtme-ng), has the project's device set (see
# README.md), nothing bound to either vfio driver, and both modules loadable. The command's
# output is printed as it runs; the script exits with the command's status.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

[ $# -ge 1 ] || die "usage: scripts/vm.sh 'command'"
[ -f "$KDIR/arch/x86/boot/bzImage" ] || die "no kernel built in $KDIR (run make kernel)"

VM_TIMEOUT=${VM_TIMEOUT:-3600}
VM_MEMORY=${VM_MEMORY:-2G}
VM_CPUS=${VM_CPUS:-1}
# Extra kernel command line for one boot, e.g. a boot-time hugetlb reservation.
VM_APPEND=${VM_APPEND:-}

out=$(mktemp -d "$CACHE/vm-run.XXXXXX")
trap 'rm -rf "$out"' EXIT
printf '%s\n' "$*" > "$out/cmd"
: > "$out/output"
: > "$out/slots"
# What the guest finds on the host, handed to it explicitly: the guest has none of the user's
# XDG_CACHE_HOME, VFIO_PCI_RS_CACHE, HOME or KDIR. guest-exec.sh sources this before the
# command, so a command can still set its own.
{
	printf 'export VFIO_PCI_RS_CACHE=%q\n' "$CACHE"
	printf 'export VFIO_TEST_IVSHMEM_DIR=%q\n' "$CACHE/vm"
	printf 'export SELFTESTS_DIR=%q\n' "$CACHE/selftests/vfio"
	printf 'export NESTED_KERNEL=%q\n' "$KDIR/arch/x86/boot/bzImage"
	printf 'export NESTED_INITRD=%q\n' "$CACHE/nested/initramfs.cpio.gz"
	printf 'export VFIO_TEST_QMP_DIR=%q\n' "$out"
} > "$out/env"

# ivshmem backing files: 1 GiB each, sparse, shared with the host.
mkdir -p "$CACHE/vm"
for i in 1 2; do
	f=$CACHE/vm/ivshmem$i
	[ "$(stat -c %s "$f" 2>/dev/null || echo 0)" = 1073741824 ] || truncate -s 1G "$f"
done

# The device set: twins of each type, each alone behind its own PCIe root port (so it has a
# slot or bus reset of its own), plus two pci-testdevs sharing a conventional PCI bus behind
# a pcie-pci-bridge (the mixed-driver bus). Root ports sit at 00:10.0-00:1a.0, so the guest
# numbers their buses 01-0b and the bridge's bus 0c; a bochs-display follows at 00:1b.0 (bus
# 0d), a virtio-rng with ATS at 00:1c.0 (bus 0e).
# edu's DMA takes 64-bit addresses (its default mask is 28 bits): a nested guest's BARs
# (make qemu-p2p) sit above 4 GiB.
dev=(-device "intel-iommu,intremap=on")
port() { dev+=(-device "pcie-root-port,id=rp$1,bus=pcie.0,chassis=$1,addr=$2"); }
n=1
edu=edu,dma_mask=0xffffffffffffffff
for spec in "$edu" "$edu" \
	"ivshmem-plain,memdev=ivshmem1" "ivshmem-plain,memdev=ivshmem2" \
	"pci-testdev" "pci-testdev" \
	"igb" "igb" \
	"VGA" "VGA"; do
	port $n "$(printf '0x%x' $((0x0f + n)))"
	dev+=(-device "$spec,bus=rp$n,addr=0.0,id=slot$n")
	# What QMP's device_add needs to plug the same device back (below).
	printf 'slot%s %s,bus=rp%s,addr=0.0,id=slot%s\n' "$n" "$spec" "$n" "$n" >> "$out/slots"
	n=$((n + 1))
done
port $n "$(printf '0x%x' $((0x0f + n)))"
dev+=(-device "pcie-pci-bridge,id=br0,bus=rp$n,addr=0.0")
dev+=(-device "pci-testdev,bus=br0,addr=1.0" -device "pci-testdev,bus=br0,addr=2.0")
# A non-VGA display function (class 0x0380) for the device-specific region tests, on a root
# port of its own (bus 0d).
n=$((n + 1))
port $n "$(printf '0x%x' $((0x0f + n)))"
dev+=(-device "bochs-display,bus=rp$n,addr=0.0")
# A function with an ATS capability (a virtio-rng, bus 0e): each of its resets takes the IOMMU
# group's mutex in pci_dev_reset_iommu_prepare(), for the reset-race test.
n=$((n + 1))
port $n "$(printf '0x%x' $((0x0f + n)))"
dev+=(-device "virtio-rng-pci,bus=rp$n,addr=0.0,disable-legacy=on,ats=on,iommu_platform=on")
for i in 1 2; do
	dev+=(-object "memory-backend-file,id=ivshmem$i,share=on,mem-path=$CACHE/vm/ivshmem$i,size=1G")
done

# QEMU's monitor, for the guest's hot-unplug test: the guest writes `device_del slotN` or
# `device_add slotN` to $VFIO_TEST_QMP_DIR/qmp-request; the loop below sends it and writes
# QEMU's answer to qmp-reply.
dev+=(-qmp "unix:$out/qmp.sock,server=on,wait=off")
qemu_opts="-machine q35 ${dev[*]}"

# qmp_request: send the guest's request, if any, to QEMU as an HMP command line.
qmp_request() {
	local req verb id line spec
	[ -f "$out/qmp-request" ] || return 0
	req=$(cat "$out/qmp-request")
	rm -f "$out/qmp-request"
	read -r verb id <<< "$req"
	case "$verb" in
	device_del) line="device_del $id" ;;
	device_add)
		spec=$(awk -v id="$id" '$1 == id { print $2 }' "$out/slots")
		line="device_add $spec"
		;;
	*) line= ;;
	esac
	if [ -z "$id" ] || [ -z "$line" ] || [ "$line" = "device_add " ]; then
		echo "error: bad request: $req" > "$out/qmp-reply.tmp"
	else
		printf '{"execute":"qmp_capabilities"}\n{"execute":"human-monitor-command","arguments":{"command-line":"%s"}}\n' "$line" |
			timeout 10 socat -t 2 - "UNIX-CONNECT:$out/qmp.sock" > "$out/qmp-reply.tmp" 2>&1
	fi
	mv "$out/qmp-reply.tmp" "$out/qmp-reply"
}

tail -n +1 -f "$out/output" &
tail_pid=$!

(cd "$KDIR" && exec timeout "$VM_TIMEOUT" vng --disable-kvm --disable-microvm --verbose \
	--memory "$VM_MEMORY" --cpus "$VM_CPUS" \
	--append "intel_iommu=on iommu=pt${VM_APPEND:+ $VM_APPEND}" \
	--qemu-opts="$qemu_opts" \
	--rwdir="$out" \
	--exec "bash $here/guest-exec.sh $out") > "$out/console.log" 2>&1 &
vng_pid=$!

# A TCG guest with two vCPUs on these machines now and then freezes (QEMU idle, no output)
# or stops taking timer interrupts (the kernel reports an RCU stall). Stop such a VM instead
# of waiting for the timeout, and say so with status 75 (EX_TEMPFAIL).
VM_STALL_SECS=${VM_STALL_SECS:-180}
stalled=
last_size=-1
quiet=0
while kill -0 "$vng_pid" 2>/dev/null; do
	if grep -q "rcu: INFO: rcu_preempt detected stalls" "$out/console.log"; then
		stalled="an RCU stall (timer interrupts lost)"
	fi
	size=$(($(stat -c %s "$out/console.log") + $(stat -c %s "$out/output")))
	if [ "$size" = "$last_size" ]; then
		quiet=$((quiet + 1))
		[ "$quiet" -ge "$VM_STALL_SECS" ] && stalled="no output for $VM_STALL_SECS s"
	else
		quiet=0
		last_size=$size
	fi
	qmp_request
	if [ -n "$stalled" ]; then
		pkill -f "qemu-system.*$out" 2>/dev/null
		kill "$vng_pid" 2>/dev/null
		break
	fi
	sleep 1
done
set +e
wait "$vng_pid"
vng_status=$?
set -e
sleep 1
kill "$tail_pid" 2>/dev/null || true
wait "$tail_pid" 2>/dev/null || true

if [ -n "$stalled" ]; then
	log "vm: the guest stalled: $stalled; console tail:"
	tail -n 30 "$out/console.log" >&2
	exit 75
fi
if [ ! -f "$out/status" ]; then
	log "vm: the command did not finish (vng exit $vng_status); console tail:"
	tail -n 80 "$out/console.log" >&2
	exit 1
fi
exit "$(cat "$out/status")"
