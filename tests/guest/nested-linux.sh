#!/usr/bin/env bash
# Runs in the VM: boot a nested Linux guest (nested QEMU, TCG in TCG) with devices passed
# through by each driver, and show the nested kernel finding them: bochs-drm drives the VGA
# twin through its BARs (the DISPI registers in BAR2, the framebuffer in BAR0), and the igb
# twin is listed (with its driver when the kernel has CONFIG_IGB). The nested kernel is the
# project's own bzImage; the initramfs comes from scripts/nested-initramfs.sh (run on the host
# first). Ends with `N passed, N failed`.
#
#   NESTED_KERNEL=.../bzImage  NESTED_INITRD=.../initramfs.cpio.gz   (scripts/vm.sh sets both)
#   NESTED_DRIVERS="vfio-pci vfio-pci-rs"   NESTED_DEVICES="vga igb"
#   NESTED_TIMEOUT=1500   seconds for the nested boot to finish
set -u
cd "$(dirname "$0")/../.." || exit 1
. tests/guest/devices.sh

CLIENT=tests/client/target/release/vfio-test
QV=tests/guest/qemu-vfio.py
NESTED_KERNEL=${NESTED_KERNEL:?NESTED_KERNEL is not set (scripts/vm.sh sets it)}
NESTED_INITRD=${NESTED_INITRD:?NESTED_INITRD is not set (scripts/vm.sh sets it)}
NESTED_DRIVERS=${NESTED_DRIVERS:-vfio-pci vfio-pci-rs}
NESTED_DEVICES=${NESTED_DEVICES:-vga igb}
NESTED_TIMEOUT=${NESTED_TIMEOUT:-1500}
NESTED_MEMORY=${NESTED_MEMORY:-128M}
NESTED_QEMU_ARGS=${NESTED_QEMU_ARGS:-}
# No KUnit (the suites ran in the outer guest), no IOMMU (the nested machine has none).
NESTED_APPEND=${NESTED_APPEND:-console=ttyS0 kunit.enable=0 panic=-1 mitigations=off}
OUT=${NESTED_OUT:-/tmp/nested-linux}

pass=${pass:-0}
fail=${fail:-0}
ok() { echo "PASS $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }
key() { sed -n "s/^$2 //p" "$1" | head -n 1; }
twin() {
	local t
	for t in "${TWINS[@]}"; do
		[ "${t%%=*}" = "$1" ] && { echo "${t#*=}"; return 0; }
	done
	return 1
}

echo "== nested Linux: $(basename "$NESTED_KERNEL") ($(file -bL "$NESTED_KERNEL" | grep -o 'version [^ ]*')), $NESTED_MEMORY, TCG in TCG"
for f in "$NESTED_KERNEL" "$NESTED_INITRD"; do
	[ -r "$f" ] || { bad "nested: no $f (scripts/nested-initramfs.sh builds the initramfs)"; echo "$pass passed, $fail failed"; exit 1; }
done
# The outer guest runs the same kernel: its drivers are the nested kernel's.
have_igb=
modprobe -q igb 2>/dev/null
[ -d /sys/bus/pci/drivers/igb ] && have_igb=1
[ -n "$have_igb" ] || echo "# the kernel has no igb driver (CONFIG_IGB is not set): the nested guest only lists the igb"
for m in vfio_pci vfio_pci_rs; do modprobe "$m" || bad "nested: modprobe $m"; done
rm -rf "$OUT"

for drv in $NESTED_DRIVERS; do
	bdfs=()
	ok_bind=1
	for name in $NESTED_DEVICES; do
		pair=$(twin "$name") || { bad "nested: no twin $name"; ok_bind=; continue; }
		# The second of each twin, for both drivers (see tests/guest/qemu-client.sh).
		bdf=${pair#*,}
		if "$CLIENT" bind "$bdf" "$drv" > /dev/null 2>&1; then
			bdfs+=("$bdf")
		else
			bad "$drv nested: bind $bdf"
			ok_bind=
		fi
	done
	[ -n "$ok_bind" ] || continue
	dir=$OUT/$drv
	t="$drv nested Linux (${bdfs[*]})"
	echo "== $t"
	mkdir -p "$dir"
	before=$(dmesg | wc -l)
	args=()
	for b in "${bdfs[@]}"; do args+=(--bdf "$b"); done
	/usr/bin/python3 "$QV" "${args[@]}" --out "$dir" --memory "$NESTED_MEMORY" \
		--timeout 600 --console-timeout "$NESTED_TIMEOUT" \
		--kernel "$NESTED_KERNEL" --initrd "$NESTED_INITRD" --append "$NESTED_APPEND" \
		--qemu-args "$NESTED_QEMU_ARGS" --console-done NESTED-LINUX-DONE 2>&1 | tee "$dir.result" | sed -u 's/^/#   /'
	r=$dir.result
	con=$dir/console.txt
	tr -d '\r' < "$dir/serial.log" > "$con" 2>/dev/null
	if [ -n "$(key "$r" console_s)" ]; then
		ok "$t: booted to its init and finished in $(key "$r" console_s) s (BARs programmed at $(key "$r" bars_s) s)"
	else
		bad "$t: did not finish booting: $(key "$r" error)"
		sed 's/^/#   qemu: /' "$dir/qemu.err" 2>/dev/null
		tail -n 15 "$con" 2>/dev/null | sed 's/^/#   console: /'
	fi
	grep -a '^nested' "$con" 2>/dev/null | sort -u | sed 's/^/#   /'
	for b in "${bdfs[@]}"; do
		ids=$(printf '%s:%s' "$(cut -c3- "/sys/bus/pci/devices/$b/vendor")" "$(cut -c3- "/sys/bus/pci/devices/$b/device")")
		line=$(grep -a "^nested-pci: .* 0x${ids%:*}:0x${ids#*:} " "$con" | head -n 1)
		if [ -z "$line" ]; then
			[ -n "$(key "$r" console_s)" ] && bad "$t: the nested guest does not list $ids ($b)"
			continue
		fi
		ndrv=${line##* driver }
		case "$ids" in
		1234:1111)
			if [ "$ndrv" = bochs-drm ] && grep -aq 'Found bochs VGA' "$con" &&
				grep -aq 'Initialized bochs-drm' "$con"; then
				ok "$t: the nested kernel's bochs-drm drives $b ($(grep -ao 'Framebuffer size.*' "$con" | head -n 1 | tr -d '\r'))"
			else
				bad "$t: bochs-drm did not take $b in the nested guest: $line"
			fi
			;;
		8086:10c9)
			if [ -n "$have_igb" ]; then
				if [ "$ndrv" = igb ]; then ok "$t: the nested kernel's igb drives $b"; else bad "$t: igb did not take $b: $line"; fi
			else
				ok "$t: the nested guest lists $b as ${line#nested-pci: } (no igb driver in this kernel)"
			fi
			;;
		*) ok "$t: the nested guest lists $b: ${line#nested-pci: }" ;;
		esac
	done
	if [ "$(key "$r" exit)" = 0 ]; then ok "$t: qemu exit status 0"; else bad "$t: qemu exit status $(key "$r" exit)"; fi
	for b in "${bdfs[@]}"; do
		if "$CLIENT" unbind "$b" > /dev/null 2>&1; then ok "$t: unbind $b"; else bad "$t: unbind $b"; fi
	done
	splats=$(dmesg -t | tail -n +$((before + 1)) | grep -E 'WARNING:|BUG:|Oops|circular locking|INFO: task .* blocked|UBSAN|KASAN|refcount_t:')
	if [ -z "$splats" ]; then ok "$t: no WARN/BUG/lockdep splat in dmesg"; else bad "$t: kernel splat: $splats"; fi
done

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
