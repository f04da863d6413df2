#!/usr/bin/env bash
# Runs in the VM, in a boot of its own (scripts/test.sh): QEMU as a real VFIO client. For
# each device (igb, VGA) and each driver (vfio-pci, then vfio-pci-rs): bind the device to the
# driver, start nested qemu-system-x86_64 (TCG, q35, no disk: SeaBIOS only) with
# `-device vfio-pci,host=BDF`, wait over QMP until SeaBIOS has programmed the BARs, check that
# `info mtree -f` shows every memory BAR mapped through the device's mmap (`BAR N mmaps[0]`)
# and that SeaBIOS finishes POST (running the device's option ROM, if any), quit, and check
# the device is released cleanly: QEMU exits 0, QEMU opens it again through the other backend
# (first the VFIO container /dev/vfio/vfio, then iommufd with the /dev/vfio/devices cdev),
# `vfio-test info` opens it, unbind works, no kernel splat. The drivers must give QEMU the
# same flattened memory tree and the nested SeaBIOS the same view of the device. Then, with
# QEMU_NESTED_LINUX=1, a nested Linux boot (tests/guest/nested-linux.sh). With QEMU11 and
# NESTED_P2P set (scripts/test.sh sets them), QEMU 11.1 and 10.0 as peer-to-peer clients
# first (tests/guest/qemu-p2p.sh). Ends with `N passed, N failed`.
#
#   QEMU_DRIVERS="vfio-pci vfio-pci-rs"   drivers to run, in order
#   QEMU_DEVICES="igb vga"                twins (tests/guest/devices.sh) to pass through
#   QEMU_BACKENDS="container iommufd"     QEMU's VFIO backends, in order
#   QEMU_TIMEOUT=300                      seconds for SeaBIOS to program the BARs and POST
#   QEMU_MACHINE=q35                      nested machine type
#   QEMU_NESTED_LINUX=0                   1: then boot nested Linux (NESTED_* variables)
#
# Both drivers get the same function, the second of each twin: the first VGA (09:00.0) is the
# outer guest's boot VGA, whose ROM is the 128 KiB shadow copy at 0xc0000 that the outer
# SeaBIOS ran, not the device's 64 KiB ROM BAR, so the nested SeaBIOS would see two
# different devices.
set -u
cd "$(dirname "$0")/../.." || exit 1
. tests/guest/devices.sh

CLIENT=tests/client/target/release/vfio-test
QV=tests/guest/qemu-vfio.py
QEMU_DRIVERS=${QEMU_DRIVERS:-vfio-pci vfio-pci-rs}
QEMU_DEVICES=${QEMU_DEVICES:-igb vga}
QEMU_BACKENDS=${QEMU_BACKENDS:-container iommufd}
QEMU_TIMEOUT=${QEMU_TIMEOUT:-300}
QEMU_MACHINE=${QEMU_MACHINE:-q35}
QEMU_NESTED_LINUX=${QEMU_NESTED_LINUX:-0}
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
key() { sed -n "s/^$2 //p" "$1" 2>/dev/null | head -n 1; }

echo "== QEMU as a VFIO client: kernel $(uname -r), $(nproc) cpus, $(qemu-system-x86_64 --version | head -n 1)"
echo "# drivers: $QEMU_DRIVERS; devices: $QEMU_DEVICES; backends: $QEMU_BACKENDS; nested machine $QEMU_MACHINE, TCG"
for m in vfio_pci vfio_pci_rs; do
	if modprobe "$m"; then ok "qemu modprobe $m"; else bad "qemu modprobe $m"; fi
done
rm -rf "$OUT"
mkdir -p "$OUT"

# qemu_run T BDF DIR BACKEND: one nested QEMU with the device, from start to quit.
qemu_run() {
	local t="$1 $4" bdf=$2 dir=$3 backend=$4 r=$3/result bars_s missing=() b
	local args=(--bdf "$bdf" --out "$dir" --machine "$QEMU_MACHINE" --timeout "$QEMU_TIMEOUT"
		--bios-done 'No bootable device')
	[ "$backend" = iommufd ] && args+=(--iommufd)
	mkdir -p "$dir"
	# Streamed: the VM's stall watchdog wants output while TCG-in-TCG is slow.
	/usr/bin/python3 "$QV" "${args[@]}" 2>&1 | tee "$r" | sed -u 's/^/#   /'
	if [ -n "$(key "$r" realize_s)" ]; then
		ok "$t: qemu realized -device vfio-pci,host=$bdf (QMP up after $(key "$r" realize_s) s)"
	else
		bad "$t: qemu did not start: $(key "$r" error)"
		sed 's/^/#   qemu: /' "$dir/qemu.err"
		return
	fi
	bars_s=$(key "$r" bars_s)
	if [ -n "$bars_s" ]; then
		ok "$t: SeaBIOS programmed every BAR after $bars_s s: $(sed -n 's/^bar //p' "$r" |
			awk '{ printf "%sBAR%s %s %s", (NR > 1 ? ", " : ""), $2, $3, $4 }')"
	else
		bad "$t: BARs not programmed: $(key "$r" error)"
	fi
	if [ -n "$(key "$r" mtree_s)" ]; then
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
		grep -aE "bdf=00:01.0|[Oo]ption rom|VGA" "$dir/seabios-post.log" | head -n 12 |
			sed 's/^/#   seabios: /'
		# A VGA function with a ROM: SeaBIOS read the ROM through the VFIO ROM region (QEMU
		# fills the nested ROM BAR from it) and ran it as the VGA BIOS.
		if [ -e "/sys/bus/pci/devices/$bdf/rom" ] &&
			grep -q '^0x03' "/sys/bus/pci/devices/$bdf/class"; then
			if grep -aA1 'Scan for VGA option rom' "$dir/seabios-post.log" |
				grep -aq 'Running option rom at c000' &&
				grep -aq 'Start SeaVGABIOS' "$dir/seabios-post.log"; then
				ok "$t: SeaBIOS ran the device's ROM as the VGA BIOS"
			else
				bad "$t: SeaBIOS did not run the device's ROM as the VGA BIOS"
			fi
		fi
	elif [ -n "$(key "$r" mtree_s)" ]; then
		bad "$t: SeaBIOS did not finish POST: $(key "$r" error)"
	fi
	if [ "$(key "$r" exit)" = 0 ]; then
		ok "$t: qemu quit, exit status 0 ($(key "$r" total_s) s in all)"
	else
		bad "$t: qemu exit status $(key "$r" exit)"
	fi
	[ -s "$dir/qemu.err" ] && sed 's/^/#   qemu stderr: /' "$dir/qemu.err"
}

# passthrough NAME DRIVER BDF: bind, one QEMU run per backend, release checks, unbind.
passthrough() {
	local name=$1 drv=$2 bdf=$3 dir=$OUT/$1-$2 t before backend
	t="$drv $name ($bdf)"
	mkdir -p "$dir"
	before=$(dmesg | wc -l)
	if ! "$CLIENT" bind "$bdf" "$drv" > "$dir/bind.out" 2>&1; then
		bad "$t: bind: $(cat "$dir/bind.out")"
		return
	fi
	echo "# $t: $(lspci -nns "${bdf#0000:}")"
	for backend in $QEMU_BACKENDS; do
		qemu_run "$t" "$bdf" "$dir/$backend" "$backend"
	done

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
	sed 's/^/#   dmesg: /' "$dir/dmesg" | sort | uniq -c | sed 's/^ *\([0-9]*\) \(.*\)/\2 (x\1)/'
	if grep -qE "$splat_re" "$dir/dmesg"; then
		bad "$t: kernel splat: $(grep -E "$splat_re" "$dir/dmesg" | head -n 3 | tr '\n' ' ')"
	else
		ok "$t: no WARN/BUG/lockdep splat in dmesg"
	fi
}

# parity NAME FILE WHAT [sorted]: FILE of every backend the same on both drivers; with
# `sorted`, the same lines in any order.
parity() {
	local name=$1 file=$2 what=$3 order=${4:-} backend c rs
	for backend in $QEMU_BACKENDS; do
		c=$OUT/$name-vfio-pci/$backend/$file
		rs=$OUT/$name-vfio-pci-rs/$backend/$file
		if [ ! -s "$c" ] || [ ! -s "$rs" ]; then
			bad "$name $backend parity: no $what from$([ -s "$c" ] || echo " vfio-pci")$([ -s "$rs" ] || echo " vfio-pci-rs")"
		elif if [ "$order" = sorted ]; then diff <(sort "$c") <(sort "$rs"); else diff "$c" "$rs"; fi \
			> "$OUT/$name-$backend-$file.diff"; then
			ok "$name $backend parity: $what the same on vfio-pci and vfio-pci-rs"
		else
			bad "$name $backend parity: $what differs (vfio-pci < > vfio-pci-rs):"
			head -n 30 "$OUT/$name-$backend-$file.diff" | sed 's/^/#   /'
		fi
	done
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
	if [ -e "$OUT/$name-vfio-pci" ] && [ -e "$OUT/$name-vfio-pci-rs" ]; then
		# QEMU lists the flat views (memory, I/O) in an order that varies from run to run: an
		# igb's I/O BAR line came first in one run and fourth in the next, on either driver.
		parity "$name" mtree-dev.txt "the device's info mtree -f lines are" sorted
		# What the nested firmware saw: PCI probing, BAR sizes and addresses, option ROMs.
		parity "$name" seabios-post.log "the nested SeaBIOS's POST log is"
	fi
done

# part NAME: run tests/guest/NAME.sh and add its `N passed, N failed` to this script's.
part() {
	local summary
	bash "tests/guest/$1.sh" 2>&1 | tee "/tmp/$1.out"
	summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "/tmp/$1.out" | tail -n 1)
	if [ -z "$summary" ]; then
		bad "$1.sh printed no summary"
	else
		pass=$((pass + $(echo "$summary" | cut -d' ' -f1)))
		fail=$((fail + $(echo "$summary" | cut -d' ' -f3)))
	fi
}

[ -n "${QEMU11:-}" ] && [ -n "${NESTED_P2P:-}" ] && part qemu-p2p

for m in vfio_pci_rs vfio_pci; do
	if rmmod "$m"; then ok "qemu rmmod $m"; else bad "qemu rmmod $m"; fi
done

[ "$QEMU_NESTED_LINUX" = 1 ] && part nested-linux

echo "# the QEMU client checks took $SECONDS s"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
