#!/usr/bin/env bash
# Runs in the VM (make qemu-p2p): QEMU as a peer-to-peer client. An edu and an ivshmem are
# passed through by one driver to a nested QEMU (TCG in TCG) whose guest is the multiboot
# payload tests/guest/nested-p2p.c: it makes edu's DMA engine read 64 bytes from ivshmem's BAR2
# and write them back at 0x1000, write again at 0x2000 with ivshmem's memory decode off and
# at 0x3000 after it is on again. The DMA goes through the outer guest's IOMMU, so it reaches
# the BAR only where the nested QEMU mapped the BAR for DMA:
#   - QEMU 11.1 on iommufd exports the BAR as a DMABUF (VFIO_DEVICE_FEATURE_DMA_BUF) and maps
#     it with IOMMU_IOAS_MAP_FILE;
#   - QEMU 11.1 and QEMU 10.0 on the VFIO container map the BAR's mmap() with
#     VFIO_IOMMU_MAP_DMA (Type1 follows the PFNMAP VMA; QEMU 11.1 mmap()s its DMABUF);
#   - QEMU 10.0 on iommufd tries IOMMU_IOAS_MAP of the mmap(), which iommufd refuses: the
#     DMA faults and nothing lands.
# Each outcome is checked against that, on the nested guest's view and on ivshmem's backing
# file, and the nested guest's results and QEMU's warnings must be the same on vfio-pci and
# vfio-pci-rs. Ends with `N passed, N failed` (tests/guest/qemu-client.sh adds it up).
# About 20 s per nested QEMU run.
#
#   QEMU11=.../qemu-system-x86_64   QEMU 11.1 (scripts/qemu11.sh; scripts/qemu-p2p.sh sets it)
#   P2P_DRIVERS="vfio-pci vfio-pci-rs"
#   P2P_RUNS="qemu11:iommufd qemu11:container qemu10:iommufd qemu10:container"   QEMU:BACKEND
#   NESTED_P2P=.../p2p.elf   the payload (scripts/nested-p2p.sh; scripts/qemu-p2p.sh sets it)
set -u
cd "$(dirname "$0")/../.." || exit 1
. tests/guest/devices.sh

CLIENT=tests/client/target/release/vfio-test
QV=tests/guest/qemu-vfio.py
QEMU11=${QEMU11:?QEMU11 is not set (scripts/qemu-p2p.sh sets it)}
P2P_DRIVERS=${P2P_DRIVERS:-vfio-pci vfio-pci-rs}
P2P_RUNS=${P2P_RUNS:-qemu11:iommufd qemu11:container qemu10:iommufd qemu10:container}
NESTED_P2P=${NESTED_P2P:?NESTED_P2P is not set (scripts/qemu-p2p.sh sets it)}
OUT=${P2P_OUT:-/tmp/qemu-p2p}
TRACE="-trace vfio_region_dmabuf -trace iommufd_backend_map_file_dma -trace iommufd_backend_map_dma"

pass=${pass:-0}
fail=${fail:-0}
ok() { echo "PASS $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }
splat_re='WARNING:|BUG:|Oops|possible circular locking|circular locking dependency|INFO: task .* blocked|UBSAN|KASAN|refcount_t:'

# The second edu and ivshmem, on both drivers (as tests/guest/qemu-client.sh); the second
# ivshmem's BAR2 is the file ivshmem2 (scripts/vm.sh).
edu=${TWINS[0]#*=}
edu=${edu#*,}
ivs=${TWINS[1]#*=}
ivs=${ivs#*,}
backing=${VFIO_TEST_IVSHMEM_DIR:?VFIO_TEST_IVSHMEM_DIR is not set}/ivshmem2

# words SEED: the 16 words nested-p2p.c writes at BAR2's start, as it prints them.
words() {
	local i out=
	for i in $(seq 0 15); do out+=" $(printf %08x $((($1 ^ (i * 0x11111111)) & 0xffffffff)))"; done
	echo "${out# }"
}
zeros=$(words 0 | sed 's/[0-9a-f]\{8\}/00000000/g')
# file_words OFFSET: the 16 words of the backing file at OFFSET.
file_words() { od -An -v -t x4 -j $(($1)) -N 64 "$backing" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//'; }
nested() { sed -n "s/^nested-p2p: $2 //p" "$1" | head -n 1; }

echo "== QEMU as a peer-to-peer client: edu $edu DMAs into ivshmem $ivs's BAR2"
echo "# $("$QEMU11" --version | head -n 1); $(qemu-system-x86_64 --version | head -n 1)"
for m in vfio_pci vfio_pci_rs; do modprobe "$m" || bad "p2p: modprobe $m"; done
rm -rf "$OUT"
seed=$((0x5a000001))

for run in $P2P_RUNS; do
	qemu=${run%:*}
	backend=${run#*:}
	case "$qemu" in
	qemu11) qbin=$QEMU11 ;;
	qemu10) qbin=qemu-system-x86_64 ;;
	*) bad "unknown QEMU $qemu"; continue ;;
	esac
	# Where the BAR is mapped for DMA, the copies land.
	lands=1
	[ "$run" = qemu10:iommufd ] && lands=
	for drv in $P2P_DRIVERS; do
		t="$drv $qemu $backend"
		dir=$OUT/$qemu-$backend-$drv
		mkdir -p "$dir"
		seed=$((seed + 0x100))
		if ! "$CLIENT" bind "$edu" "$drv" > "$dir/bind.out" 2>&1 ||
			! "$CLIENT" bind "$ivs" "$drv" >> "$dir/bind.out" 2>&1; then
			bad "$t: bind: $(cat "$dir/bind.out")"
			continue
		fi
		echo "== $t"
		before=$(dmesg | wc -l)
		args=(--qemu "$qbin" --bdf "$edu" --bdf "$ivs" --out "$dir" --memory 128M
			--timeout 600 --console-timeout 600 --kernel "$NESTED_P2P"
			--append "seed=$(printf 0x%x $seed)" --console-done NESTED-P2P-DONE)
		[ "$backend" = iommufd ] && args+=(--iommufd)
		[ "$qemu" = qemu11 ] && args+=(--qemu-args "$TRACE")
		# Streamed: the VM's stall watchdog wants output while TCG-in-TCG is slow.
		/usr/bin/python3 "$QV" "${args[@]}" 2>&1 | tee "$dir/result" | sed -u 's/^/#   /'
		tr -d '\r' < "$dir/serial.log" > "$dir/console" 2>/dev/null
		grep -a '^nested-p2p:' "$dir/console" | sed 's/^/#   /'
		grep -av '^$' "$dir/qemu.err" | sed 's/^/#   qemu: /'
		if grep -aq '^nested-p2p: done$' "$dir/console"; then
			ok "$t: the nested guest ran its DMAs ($(sed -n 's/^console_s //p' "$dir/result") s)"
		else
			bad "$t: the nested guest did not finish: $(sed -n 's/^error //p' "$dir/result")$(nested "$dir/console" error)"
		fi
		src=$(words "$seed")
		want=$zeros
		[ -n "$lands" ] && want=$src
		[ "$(nested "$dir/console" source)" = "$src" ] &&
			ok "$t: the nested guest wrote BAR2 through its mapping" ||
			bad "$t: BAR2's first words read back as $(nested "$dir/console" source), not $src"
		for step in copy:0x1000 decode-off:0x2000 after-restore:0x3000; do
			what=${step%:*}
			off=${step#*:}
			w=$want
			[ "$what" = decode-off ] && w=$zeros
			got=$(nested "$dir/console" "$what")
			file=$(file_words "$off")
			if [ "$got" = "$w" ] && [ "$file" = "$w" ]; then
				ok "$t: $what: the DMA to BAR2+$off $([ "$w" = "$zeros" ] && echo "did not land" || echo "landed") (nested guest and backing file)"
			else
				bad "$t: $what: BAR2+$off holds$got in the nested guest and $file in the backing file, expected$w"
			fi
		done
		# How QEMU mapped the BAR: on QEMU 11.1 with iommufd a DMABUF for every BAR region
		# (ivshmem's 256-byte BAR0 cannot be exported: EINVAL, mmap() instead), mapped with
		# IOMMU_IOAS_MAP_FILE at both of BAR2's addresses; a failed IOMMU_IOAS_MAP on QEMU 10.0.
		case "$run" in
		qemu11:iommufd)
			if grep -aq "vfio_region_dmabuf Device $ivs, dmabuf fd [0-9]* region 2 " "$dir/qemu.err" &&
				grep -aq "iommufd_backend_map_file_dma .* iova=0x40000000 size=0x40000000 .* (0)$" "$dir/qemu.err" &&
				! grep -aq "$ivs BAR 2: dma-buf unavailable" "$dir/qemu.err"; then
				ok "$t: QEMU exported BAR2 as a DMABUF and mapped it with IOMMU_IOAS_MAP_FILE"
			else
				bad "$t: QEMU did not map BAR2 with IOMMU_IOAS_MAP_FILE of its DMABUF"
			fi
			;;
		qemu10:iommufd)
			if grep -aq 'IOMMU_IOAS_MAP failed: Bad address, PCI BAR?' "$dir/qemu.err"; then
				ok "$t: QEMU's IOMMU_IOAS_MAP of the BAR's mmap() failed with EFAULT, as upstream iommufd intends"
			else
				bad "$t: QEMU 10 did not report the failed IOMMU_IOAS_MAP of the BAR"
			fi
			;;
		esac
		dmesg -t | tail -n +$((before + 1)) > "$dir/dmesg"
		faults=$(grep -c 'DMAR: \[DMA Write' "$dir/dmesg")
		# The write with decode off faults in the IOMMU wherever the BAR was mapped.
		if [ "$faults" -ge 1 ]; then
			ok "$t: the IOMMU reported $faults DMA write fault(s)"
		else
			bad "$t: no DMAR write fault in dmesg"
		fi
		grep -a 'DMAR: \[DMA' "$dir/dmesg" | sed 's/^/#   dmesg: /'
		if [ "$(sed -n 's/^exit //p' "$dir/result")" = 0 ]; then ok "$t: qemu exit status 0"; else bad "$t: qemu exit status $(sed -n 's/^exit //p' "$dir/result")"; fi
		for b in "$edu" "$ivs"; do
			if "$CLIENT" unbind "$b" > /dev/null 2>&1; then ok "$t: unbind $b"; else bad "$t: unbind $b"; fi
		done
		if grep -qE "$splat_re" "$dir/dmesg"; then
			bad "$t: kernel splat: $(grep -E "$splat_re" "$dir/dmesg" | head -n 3 | tr '\n' ' ')"
		else
			ok "$t: no WARN/BUG/lockdep splat in dmesg"
		fi
		# The results without the seed's words, for the parity check.
		for what in copy decode-off after-restore; do
			got=$(nested "$dir/console" "$what")
			case "$got" in
			"$src") echo "$what source" ;;
			"$zeros") echo "$what zeros" ;;
			*) echo "$what other" ;;
			esac
		done > "$dir/outcome"
		# QEMU's warnings, without addresses and fds.
		grep -a 'warning\|peer-to-peer' "$dir/qemu.err" | sed 's/0x[0-9a-f]*/X/g; s/fd [0-9]*/fd N/g' |
			sort -u >> "$dir/outcome"
	done
	set -- $P2P_DRIVERS
	if [ $# = 2 ] && [ -s "$OUT/$qemu-$backend-$1/outcome" ]; then
		if diff "$OUT/$qemu-$backend-$1/outcome" "$OUT/$qemu-$backend-$2/outcome" > /dev/null; then
			ok "$qemu $backend parity: the nested DMAs' outcome and QEMU's warnings are the same on $1 and $2"
		else
			bad "$qemu $backend parity: outcome or QEMU's warnings differ ($1 < > $2):"
			diff "$OUT/$qemu-$backend-$1/outcome" "$OUT/$qemu-$backend-$2/outcome" | sed 's/^/#   /'
		fi
	fi
done

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
