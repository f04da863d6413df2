#!/usr/bin/env bash
# Runs in the VM, in a boot of its own (scripts/test.sh): QEMU as a real VFIO client. For
# each device (igb, VGA) and each driver (vfio-pci, then vfio-pci-rs): bind the device to the
# driver, start nested qemu-system-x86_64 (TCG, q35, no disk: SeaBIOS only) with
# `-device vfio-pci,host=BDF`, wait over QMP until SeaBIOS has programmed the BARs, check that
# `info mtree -f` shows every memory BAR mapped through the device's mmap (`BAR N mmaps[0]`),
# quit, and check the device is released cleanly (QEMU exits 0, the device opens again,
# unbind works, no kernel splat). The drivers must give QEMU the same flattened memory tree
# and the nested SeaBIOS the same view of the device.
#
# Both drivers get the same function, the second of each twin (tests/guest/devices.sh): the
# first VGA (09:00.0) is the outer guest's boot VGA, whose ROM is the 128 KiB shadow copy at
# 0xc0000 that the outer SeaBIOS ran, not the device's 64 KiB ROM BAR, so the nested SeaBIOS
# would see two different devices.
# Ends with `N passed, N failed`.
#
#   QEMU_DRIVERS="vfio-pci vfio-pci-rs"   drivers to run, in order
#   QEMU_DEVICES="igb vga"                twins (tests/guest/devices.sh) to pass through
#   QEMU_TIMEOUT=300                      seconds for QEMU to start and SeaBIOS to program BARs
#   QEMU_MACHINE=q35                      nested machine type
set -u
cd "$(dirname "$0")/../.." || exit 1
. tests/guest/devices.sh

CLIENT=tests/client/target/release/vfio-test
QV=tests/guest/qemu-vfio.py
QEMU_DRIVERS=${QEMU_DRIVERS:-vfio-pci vfio-pci-rs}
QEMU_DEVICES=${QEMU_DEVICES:-igb vga}
QEMU_TIMEOUT=${QEMU_TIMEOUT:-300}
QEMU_MACHINE=${QEMU_MACHINE:-q35}
OUT=${QEMU_OUT:-/tmp/qemu-client}

pass=0
fail=0
ok() { echo "PASS $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }
splat_re='WARNING:|BUG:|Oops|possible circular locking|circular locking dependency|INFO: task .* blocked|UBSAN|KASAN|refcount_t:'

# twin NAME: the twin's "BDF_C,BDF_RS".
twin() {
	local t
	for t in "${TWINS[@]}"; do
		[ "${t%%=*}" = "$1" ] && { echo "${t#*=}"; return 0; }
	done
	return 1
}

# key FILE KEY: the value of the first `KEY value` line.
key() { sed -n "s/^$2 //p" "$1" | head -n 1; }

echo "== QEMU as a VFIO client: kernel $(uname -r), $(nproc) cpus, $(qemu-system-x86_64 --version | head -n 1)"
echo "# drivers: $QEMU_DRIVERS; devices: $QEMU_DEVICES; nested machine $QEMU_MACHINE, TCG"
for m in vfio_pci vfio_pci_rs; do
	if modprobe "$m"; then ok "qemu modprobe $m"; else bad "qemu modprobe $m"; fi
done
rm -rf "$OUT"
mkdir -p "$OUT"

# passthrough NAME DRIVER BDF: one nested QEMU run and the release checks.
passthrough() {
	local name=$1 drv=$2 bdf=$3 dir=$OUT/$1-$2 t before r bars_s
	t="$drv $name ($bdf)"
	mkdir -p "$dir"
	before=$(dmesg | wc -l)
	if ! "$CLIENT" bind "$bdf" "$drv" > "$dir/bind.out" 2>&1; then
		bad "$t: bind: $(cat "$dir/bind.out")"
		return
	fi
	echo "# $t: $(lspci -nns "${bdf#0000:}")"

	# Streamed: the VM's stall watchdog wants output while TCG-in-TCG is slow.
	/usr/bin/python3 "$QV" --bdf "$bdf" --out "$dir" --machine "$QEMU_MACHINE" \
		--timeout "$QEMU_TIMEOUT" --bios-done 'No bootable device' 2>&1 | tee "$dir/result" | sed -u 's/^/#   /'
	r=$dir/result
	if [ -n "$(key "$r" realize_s)" ]; then
		ok "$t: qemu realized -device vfio-pci,host=$bdf (QMP up after $(key "$r" realize_s) s)"
	else
		bad "$t: qemu did not start: $(key "$r" error)"
		sed 's/^/#   qemu: /' "$dir/qemu.err"
	fi
	bars_s=$(key "$r" bars_s)
	if [ -n "$bars_s" ]; then
		ok "$t: SeaBIOS programmed every BAR after $bars_s s: $(sed -n 's/^bar //p' "$r" | awk '{ printf "%sBAR%s %s %s", (NR > 1 ? ", " : ""), $2, $3, $4 }')"
		grep -aiE "bdf=00:0[1-9]|option rom|vga" "$dir/seabios.log" 2>/dev/null |
			head -n 20 | sed 's/^/#   seabios: /'
	elif [ -n "$(key "$r" realize_s)" ]; then
		bad "$t: BARs not programmed: $(key "$r" error)"
	fi
	if [ -n "$(key "$r" mtree_s)" ]; then
		local missing=() b
		for b in $(sed -n 's/^bar [^ ]* \([0-9]\) mem.*/\1/p' "$r"); do
			grep -q "$bdf BAR $b mmaps\[0\]" "$dir/mtree-dev.txt" || missing+=("BAR$b")
		done
		if [ ${#missing[@]} = 0 ]; then
			ok "$t: info mtree -f maps every memory BAR through mmaps[0]"
		else
			bad "$t: info mtree -f has no mmaps[0] for ${missing[*]}"
		fi
		sed 's/^/#   mtree: /' "$dir/mtree-dev.txt"
	elif [ -n "$bars_s" ]; then
		bad "$t: info mtree -f: $(key "$r" error)"
	fi
	# SeaBIOS's log up to its first boot attempt, for the parity check.
	sed '/No bootable device/q' "$dir/seabios.log" > "$dir/seabios-post.log" 2>/dev/null
	if [ -n "$(key "$r" bios_s)" ]; then
		ok "$t: SeaBIOS finished POST (option ROMs run, boot attempted) after $(key "$r" bios_s) s"
	elif [ -n "$(key "$r" mtree_s)" ]; then
		bad "$t: SeaBIOS did not finish POST: $(key "$r" error)"
	fi
	if [ "$(key "$r" exit)" = 0 ] && [ -n "$(key "$r" realize_s)" ]; then
		ok "$t: qemu quit, exit status 0 ($(key "$r" total_s) s in all)"
	else
		bad "$t: qemu exit status $(key "$r" exit)"
	fi
	[ -s "$dir/qemu.err" ] && sed 's/^/#   qemu stderr: /' "$dir/qemu.err"

	# Released: the device opens again through its group, then unbinds.
	if "$CLIENT" info "$bdf" > "$dir/info.out" 2>&1; then
		ok "$t: device opens again after qemu exited"
	else
		bad "$t: device does not open again: $(tail -n 3 "$dir/info.out" | tr '\n' ' ')"
	fi
	if "$CLIENT" unbind "$bdf" > "$dir/unbind.out" 2>&1 &&
		[ ! -e "/sys/bus/pci/devices/$bdf/driver" ]; then
		ok "$t: unbind"
	else
		bad "$t: unbind: $(cat "$dir/unbind.out")"
	fi
	dmesg -t | tail -n +$((before + 1)) > "$dir/dmesg"
	sed 's/^/#   dmesg: /' "$dir/dmesg" | head -n 20
	if grep -qE "$splat_re" "$dir/dmesg"; then
		bad "$t: kernel splat: $(grep -E "$splat_re" "$dir/dmesg" | head -n 3 | tr '\n' ' ')"
	else
		ok "$t: no WARN/BUG/lockdep splat in dmesg"
	fi
}

for name in $QEMU_DEVICES; do
	pair=$(twin "$name") || { bad "no twin $name in tests/guest/devices.sh"; continue; }
	for drv in $QEMU_DRIVERS; do
		case "$drv" in
		vfio-pci | vfio-pci-rs) bdf=${pair#*,} ;;
		*) bad "unknown driver $drv"; continue ;;
		esac
		echo "== $name on $drv ($bdf)"
		passthrough "$name" "$drv" "$bdf"
	done
	# Parity: the same flattened tree for the device on both drivers.
	c=$OUT/$name-vfio-pci/mtree-dev.txt
	rs=$OUT/$name-vfio-pci-rs/mtree-dev.txt
	if [ -e "$OUT/$name-vfio-pci" ] && [ -e "$OUT/$name-vfio-pci-rs" ]; then
		if [ ! -s "$c" ] || [ ! -s "$rs" ]; then
			bad "$name parity: no info mtree -f lines from$([ -s "$c" ] || echo " vfio-pci")$([ -s "$rs" ] || echo " vfio-pci-rs")"
		elif diff "$c" "$rs" > "$OUT/$name-parity.diff"; then
			ok "$name parity: info mtree -f lines for the device are the same on vfio-pci and vfio-pci-rs"
		else
			bad "$name parity: info mtree -f differs (vfio-pci < > vfio-pci-rs):"
			sed 's/^/#   /' "$OUT/$name-parity.diff"
		fi
		# What the nested firmware saw: the same PCI probing, BARs and option ROMs.
		if diff "$OUT/$name-vfio-pci/seabios-post.log" "$OUT/$name-vfio-pci-rs/seabios-post.log" \
			> "$OUT/$name-seabios.diff" && [ -s "$OUT/$name-vfio-pci/seabios-post.log" ]; then
			ok "$name parity: the nested SeaBIOS logs the same POST on vfio-pci and vfio-pci-rs"
		else
			bad "$name parity: the nested SeaBIOS POST differs (vfio-pci < > vfio-pci-rs):"
			sed 's/^/#   /' "$OUT/$name-seabios.diff" | head -n 30
		fi
	fi
done

for m in vfio_pci_rs vfio_pci; do
	if rmmod "$m"; then ok "qemu rmmod $m"; else bad "qemu rmmod $m"; fi
done

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
