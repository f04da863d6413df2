#!/usr/bin/env bash
# Runs in the VM, in a boot of its own (scripts/test.sh): the kernel's VFIO selftests
# (tools/testing/selftests/vfio, built by scripts/selftests.sh) on the igb and edu twins, the
# twin's first function bound to vfio-pci, its second to vfio-pci-rs. Each program gets the
# BDF as argument; its kselftest output is parsed per case (ok / SKIP / not ok). Prints a
# table test x device x driver, the per-case parity of vfio-pci-rs with vfio-pci, and ends
# with `N passed, N failed`.
#
# Knobs (space-separated lists):
#   SELFTEST_DRIVERS  drivers to run          (default: vfio-pci vfio-pci-rs)
#   SELFTEST_DEVICES  twins of devices.sh     (default: igb edu)
#   SELFTEST_TESTS    programs to run         (default: the six below)
#   SELFTEST_ARGS     extra harness arguments, e.g. '-v iommufd' or '-t reset'
#   SELFTEST_DRIVER_TEST_ARGS  more of them for vfio_pci_driver_test alone (make test: '-v
#                     iommufd', one IOMMU mode of five; unset: all five)
#   SELFTEST_HUGEPAGES=0  do not reserve hugetlb pages (their cases then SKIP)
#   SELFTESTS_DIR     where the programs are  (scripts/vm.sh sets it: the cache's selftests/vfio)
set -u
cd "$(dirname "$0")/../.." || exit 1
. tests/guest/devices.sh

CLIENT=tests/client/target/release/vfio-test
ST=${SELFTESTS_DIR:?SELFTESTS_DIR is not set (scripts/vm.sh sets it)}
read -ra drivers <<< "${SELFTEST_DRIVERS:-vfio-pci vfio-pci-rs}"
read -ra devices <<< "${SELFTEST_DEVICES:-igb edu}"
read -ra tests <<< "${SELFTEST_TESTS:-vfio_pci_device_test vfio_dma_mapping_test vfio_dma_mapping_mmio_test vfio_iommufd_setup_test vfio_pci_driver_test vfio_pci_sriov_uapi_test}"
read -ra harness_args <<< "${SELFTEST_ARGS:-}"
read -ra driver_test_args <<< "${SELFTEST_DRIVER_TEST_ARGS:-}"
REF=vfio-pci

. tests/guest/report.sh

# Bound for one program run. The harness bounds each case itself (30 s, memcpy_storm 60 s,
# both times the scale scripts/selftests.sh built with); this only catches a program stuck
# outside a case. vfio_pci_driver_test on igb under TCG takes 600 to 1300 s in all five modes.
prog_timeout() {
	case "$1" in
	vfio_pci_driver_test) echo 3600 ;;
	*) echo 900 ;;
	esac
}

# BDF of DEVICE for DRIVER: the twin's first function for vfio-pci, its second for vfio-pci-rs.
bdf_of() {
	local t pair
	for t in "${TWINS[@]}"; do
		[ "${t%%=*}" = "$1" ] || continue
		pair=${t#*=}
		case "$2" in
		vfio-pci) echo "${pair%,*}" ;;
		vfio-pci-rs) echo "${pair#*,}" ;;
		esac
		return 0
	done
	return 1
}
module_of() { echo "${1//-/_}"; }

declare -A res=()      # test|dev|drv|case -> ok | skip | fail
declare -A reason=()   # test|dev|drv|case -> the SKIP reason or the failure's last words
declare -A cases=()    # test|dev -> the cases seen on any driver, in order
declare -A secs=()     # test|dev|drv -> seconds the program ran
declare -A slow_ms=() slow_case=()  # test|dev|drv -> its slowest case and how long it took

# add_case KEY CASE: remember CASE for KEY's case list once.
add_case() {
	case " ${cases[$1]:-} " in *" $2 "*) ;; *) cases[$1]="${cases[$1]:-} $2" ;; esac
}

# stamp LOG: print each line as it comes, and log it behind the time in microseconds, so
# that each case's duration can be told from its "#  RUN" and "ok" lines.
stamp() {
	local l
	: > "$1"
	while IFS= read -r l; do
		printf '%s\n' "$l"
		printf '%s %s\n' "${EPOCHREALTIME/./}" "$l" >> "$1"
	done
}

# run_one TEST DEV DRV BDF: run the program, record each case's result from its TAP lines.
run_one() {
	local test=$1 dev=$2 drv=$3 bdf=$4 log=/tmp/selftest.out start rc us run_us=0 ms line name
	local planned=0 seen=0
	local k="$test|$dev|$drv"
	echo "== $test $dev $drv ($bdf)"
	start=$SECONDS
	# A case may legitimately run for minutes without a word (memcpy_storm); say so every
	# minute, or scripts/vm.sh would take the silence for a stalled guest.
	(
		trap 'kill "$nap" 2>/dev/null; exit 0' TERM
		while :; do
			sleep 60 & nap=$!
			wait "$nap"
			echo "# $test $dev $drv: running for $((SECONDS - start)) s"
		done
	) &
	local beat=$!
	local prog=$test
	local -a args=("${harness_args[@]}")
	[ "$test" != vfio_pci_driver_test ] || args+=("${driver_test_args[@]}")
	# The copies scripts/selftests.sh built for vfio-pci-rs, with one assertion changed.
	if [ "$drv" = vfio-pci-rs ]; then
		case $test in
		vfio_pci_sriov_uapi_test)
			prog=${test}_rs
			echo "# running ${prog}: $test with the VF's expected driver changed to vfio-pci-rs"
			;;
		vfio_dma_mapping_mmio_test)
			prog=${test}_rs
			echo "# running ${prog}: $test expecting iommufd's type1 compatibility to map the BAR's mmap() (a vfio-pci-rs DMABUF), native iommufd still to refuse"
			;;
		esac
	fi
	timeout -k 10 "$(prog_timeout "$test")" "$ST/$prog" "${args[@]}" "$bdf" 2>&1 | stamp "$log"
	rc=${PIPESTATUS[0]}
	kill "$beat"
	wait "$beat" 2>/dev/null
	secs[$k]=$((SECONDS - start))
	echo "# $test $dev $drv: exit $rc after ${secs[$k]} s"
	while read -r us line; do
		case "$line" in
		1..*) planned=${line#1..} ;;
		"#  RUN "*) run_us=$us ;;
		"ok "* | "not ok "*)
			name=${line#not }
			name=${name#ok }
			name=${name#* }   # drop the number
			name=${name%% # *}
			seen=$((seen + 1))
			add_case "$test|$dev" "$name"
			ms=$(((us - run_us) / 1000))
			[ "$ms" -le "${slow_ms[$k]:-0}" ] || { slow_ms[$k]=$ms; slow_case[$k]=$name; }
			case "$line" in
			"not ok "*) res[$k|$name]=fail ;;
			*" # SKIP"*) res[$k|$name]=skip; reason[$k|$name]=${line#* # SKIP } ;;
			*) res[$k|$name]=ok ;;
			esac
			;;
		esac
	done < "$log"
	# A program that exits before the harness runs: exit 4 (KSFT_SKIP) is a skip of the whole
	# program (vfio_pci_driver_test on a device it has no driver for), anything else a failure.
	if [ "$seen" = 0 ]; then
		add_case "$test|$dev" "(program)"
		if [ "$rc" = 4 ]; then
			res[$k|(program)]=skip
			reason[$k|(program)]=$(tail -n 1 "$log" | cut -d' ' -f2-)
		else
			res[$k|(program)]=fail
			reason[$k|(program)]="exit $rc: $(tail -n 1 "$log" | cut -d' ' -f2-)"
		fi
	elif [ "$rc" = 124 ] || [ "$rc" = 137 ] || [ "$seen" -lt "$planned" ]; then
		add_case "$test|$dev" "(program)"
		res[$k|(program)]=fail
		reason[$k|(program)]="exit $rc, $seen of $planned cases reported"
	fi
}

echo "== VFIO selftests: kernel $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo) MiB"
echo "# drivers: ${drivers[*]}; devices: ${devices[*]}; tests: ${tests[*]}"
# The 1 GiB hugetlb variants need 1 GiB pages in the guest CPU.
grep -qw pdpe1gb /proc/cpuinfo || echo "# guest CPU lacks pdpe1gb: the 1 GiB hugetlb variants will SKIP"
echo "# harness per-case timeouts x$(cat "$ST/timeout-scale" 2>/dev/null || echo "1 (no $ST/timeout-scale)") (scripts/selftests.sh)"
[ ${#harness_args[@]} = 0 ] || echo "# harness arguments: ${harness_args[*]}"
[ ${#driver_test_args[@]} = 0 ] || echo "# vfio_pci_driver_test's harness arguments: ${driver_test_args[*]}"
for t in "${tests[@]}"; do
	[ -x "$ST/$t" ] || { bad "selftest $t: $ST/$t not built (scripts/selftests.sh)"; }
done
for drv in "${drivers[@]}"; do
	m=$(module_of "$drv")
	if modprobe "$m"; then ok "selftest modprobe $m"; else bad "selftest modprobe $m"; fi
	# vfio_pci_sriov_uapi_test creates a VF of the PF through sriov_numvfs.
	echo Y > "/sys/module/$m/parameters/enable_sriov" || bad "selftest $m enable_sriov"
	# Which build of the module ran: the results hold for that build only.
	f=$(modinfo -F filename "$m")
	echo "# $m: $f, built $(date -r "$f" '+%F %T'), sha256 $(sha256sum < "$f" | cut -c1-12)"
done

# The hugetlb variants of vfio_dma_mapping_test map one 2 MiB or 1 GiB page and SKIP when
# mmap() finds none. Reserve one of each, and give them back after that program: the 1 GiB
# page would otherwise take the memory vfio_pci_driver_test pins (a 1 GiB buffer). A 1 GiB
# page is rarely found at runtime; scripts/test.sh reserves it at boot (hugepagesz=1G
# hugepages=1, 3 GiB guest).
hugepages() {
	local n=$1 d
	for d in /sys/kernel/mm/hugepages/hugepages-2048kB /sys/kernel/mm/hugepages/hugepages-1048576kB; do
		[ -d "$d" ] && echo "$n" > "$d/nr_hugepages" 2>/dev/null
	done
	[ "$n" = 0 ] && return
	echo "# hugetlb pages reserved: 2 MiB x $(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages 2>/dev/null || echo 0)," \
		"1 GiB x $(cat /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages 2>/dev/null || echo "0 (no pdpe1gb)")"
}

want_huge=
if [[ " ${tests[*]} " == *" vfio_dma_mapping_test "* ]] && [ "${SELFTEST_HUGEPAGES:-1}" != 0 ]; then
	want_huge=1
	hugepages 1
fi

# Bind every device under test to its driver for the whole run.
declare -a bound=()
for dev in "${devices[@]}"; do
	for drv in "${drivers[@]}"; do
		if ! bdf=$(bdf_of "$dev" "$drv"); then
			bad "selftest $dev: not a twin in devices.sh"
			continue
		fi
		if "$CLIENT" bind "$bdf" "$drv"; then
			ok "selftest bind $dev $bdf to $drv"
			bound+=("$bdf")
		else
			bad "selftest bind $dev $bdf to $drv"
		fi
	done
done

# Test by test, each on every device, each device on the reference driver first.
for test in "${tests[@]}"; do
	for dev in "${devices[@]}"; do
		for drv in "${drivers[@]}"; do
			bdf=$(bdf_of "$dev" "$drv") || continue
			[ "$(basename "$(readlink "/sys/bus/pci/devices/$bdf/driver" 2>/dev/null)")" = "$drv" ] || {
				bad "selftest $test $dev $drv: $bdf is not bound to $drv"
				continue
			}
			run_one "$test" "$dev" "$drv" "$bdf"
		done
	done
	[ "$test" = vfio_dma_mapping_test ] && [ -n "$want_huge" ] && hugepages 0
done

echo "== results per case"
for test in "${tests[@]}"; do
	for dev in "${devices[@]}"; do
		for drv in "${drivers[@]}"; do
			k="$test|$dev|$drv"
			[ -n "${secs[$k]:-}" ] || continue
			for c in ${cases[$test|$dev]:-}; do
				r=${res[$k|$c]:-missing}
				case "$r" in
				ok) ok "selftest $drv $dev $test $c" ;;
				skip) echo "SKIP selftest $drv $dev $test $c: ${reason[$k|$c]}" ;;
				*)
					note=${reason[$k|$c]:-}
					[ "$r" = missing ] && note="not reported"
					[ "$drv" = "$REF" ] && note="${note:+$note; }fails on the reference driver: a setup problem"
					bad "selftest $drv $dev $test $c${note:+: $note}"
					;;
				esac
			done
		done
	done
done

echo "== summary (pass/skip/fail per program, device and driver)"
printf '%-28s %-5s %-12s %5s %5s %5s %7s  %s\n' test device driver pass skip fail seconds "slowest case (s)"
declare -A tot_p=() tot_s=() tot_f=()
for test in "${tests[@]}"; do
	for dev in "${devices[@]}"; do
		for drv in "${drivers[@]}"; do
			k="$test|$dev|$drv"
			[ -n "${secs[$k]:-}" ] || continue
			p=0 s=0 f=0
			for c in ${cases[$test|$dev]:-}; do
				case "${res[$k|$c]:-missing}" in
				ok) p=$((p + 1)) ;;
				skip) s=$((s + 1)) ;;
				*) f=$((f + 1)) ;;
				esac
			done
			printf '%-28s %-5s %-12s %5d %5d %5d %7d  %s\n' "$test" "$dev" "$drv" "$p" "$s" "$f" "${secs[$k]}" \
				"${slow_case[$k]:+${slow_case[$k]} ($((slow_ms[$k] / 1000)).$((slow_ms[$k] % 1000 / 100)))}"
			tot_p[$dev|$drv]=$((${tot_p[$dev|$drv]:-0} + p))
			tot_s[$dev|$drv]=$((${tot_s[$dev|$drv]:-0} + s))
			tot_f[$dev|$drv]=$((${tot_f[$dev|$drv]:-0} + f))
		done
	done
done
for dev in "${devices[@]}"; do
	for drv in "${drivers[@]}"; do
		[ -n "${tot_p[$dev|$drv]:-}" ] || continue
		printf '%-28s %-5s %-12s %5d %5d %5d\n' total "$dev" "$drv" \
			"${tot_p[$dev|$drv]}" "${tot_s[$dev|$drv]}" "${tot_f[$dev|$drv]}"
	done
done

# Parity: every case has the same result on vfio-pci-rs as on vfio-pci.
if [[ " ${drivers[*]} " == *" vfio-pci "* && " ${drivers[*]} " == *" vfio-pci-rs "* ]]; then
	echo "== parity (vfio-pci-rs against vfio-pci)"
	for test in "${tests[@]}"; do
		for dev in "${devices[@]}"; do
			kc="$test|$dev|vfio-pci" kr="$test|$dev|vfio-pci-rs"
			if [ -z "${secs[$kc]:-}" ] || [ -z "${secs[$kr]:-}" ]; then continue; fi
			n=0 diff=0
			for c in ${cases[$test|$dev]:-}; do
				n=$((n + 1))
				a=${res[$kc|$c]:-missing} b=${res[$kr|$c]:-missing}
				if [ "$a" != "$b" ]; then
					diff=$((diff + 1))
					bad "selftest parity $dev $test $c: vfio-pci $a, vfio-pci-rs $b"
				fi
			done
			[ "$diff" = 0 ] && ok "selftest parity $dev $test: $n cases, same results"
		done
	done
fi

echo "== unbind and unload"
for bdf in "${bound[@]}"; do
	if "$CLIENT" unbind "$bdf" > /dev/null; then ok "selftest unbind $bdf"; else bad "selftest unbind $bdf"; fi
done
for drv in vfio-pci-rs vfio-pci; do
	[[ " ${drivers[*]} " == *" $drv "* ]] || continue
	m=$(module_of "$drv")
	if rmmod "$m"; then ok "selftest rmmod $m"; else bad "selftest rmmod $m"; fi
done

echo "== kernel health"
check_health selftest

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
