#!/usr/bin/env bash
# Runs in the VM on the sanitizer kernel (make sanitize, make soak; scripts/sanitize.sh):
# the integration tests (run-tests.sh), the race stress (stress.sh) and the fuzzer (fuzz.sh)
# on both drivers, then a kmemleak scan with both modules unloaded, and a count of each
# sanitizer's reports in the kernel log, split by the driver whose code a report names.
# Ends with `N passed, N failed`.
#
# SANITIZE_INTEGRATION=0 skips run-tests.sh; SANITIZE_STRESS_SECS (default 60) is the stress
# time per driver; SANITIZE_FUZZ_OPS (default 20000, 0: none) ops per twin with seed
# SANITIZE_FUZZ_SEED (default 14) on the ivshmem, pci-testdev and edu twins.
set -u
cd "$(dirname "$0")/../.." || exit 1
. tests/guest/report.sh

SANITIZE_INTEGRATION=${SANITIZE_INTEGRATION:-1}
SANITIZE_STRESS_SECS=${SANITIZE_STRESS_SECS:-60}
SANITIZE_FUZZ_OPS=${SANITIZE_FUZZ_OPS:-20000}
SANITIZE_FUZZ_SEED=${SANITIZE_FUZZ_SEED:-14}
KMEMLEAK=/sys/kernel/debug/kmemleak

echo "== sanitize: kernel $(uname -r), $(nproc) cpus, $(($(grep MemTotal /proc/meminfo | awk '{print $2}') / 1024)) MiB"
if [ -n "${SANITIZE_CONFIG:-}" ] && [ -e /proc/config.gz ]; then
	# The fragment's symbols, as the running kernel has them.
	grep -E '^CONFIG_' "$SANITIZE_CONFIG" | cut -d= -f1 | while read -r sym; do
		if zcat /proc/config.gz 2>/dev/null | grep -qx "$sym=y"; then echo "# $sym=y"; else echo "# $sym not set"; fi
	done
fi
mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug
[ -e "$KMEMLEAK" ] && ok "kmemleak is on" || bad "no $KMEMLEAK"
# What the boot reported before any test ran: those reports are nobody's test's. They are
# listed here; the tests' health checks count only the log after them, and skip the lockdep
# check if such a report already turned lockdep off.
grep -E '^ *debug_locks:' /proc/lockdep_stats | sed 's/^ */# at start: lockdep /'
boot_lines=$(dmesg | wc -l)
export VFIO_TEST_DMESG_FROM=$((boot_lines + 1))
grep -qE '^ *debug_locks: +1$' /proc/lockdep_stats || export VFIO_TEST_LOCKDEP_OFF_AT_START=1
dmesg -t | grep -nE '^(BUG: KASAN|UBSAN:|ODEBUG:|WARNING:)' | sed 's/^/# at boot: /'
dmesg -t | awk '/^BUG: KASAN/ { n = 40 } n > 0 { print "# at boot:   " $0; n-- }' | head -n 80
[ -e "$KMEMLEAK" ] && echo clear > "$KMEMLEAK"

# run PART CMD...: a part of the boot, counted from its `N passed, N failed` line.
run() {
	local part=$1 start=$SECONDS
	shift
	echo "== sanitize: $part"
	"$@" 2>&1 | tee "/tmp/sanitize-$part.out"
	add_summary "/tmp/sanitize-$part.out" "sanitize $part"
	echo "# sanitize $part took $((SECONDS - start)) s"
}
[ "$SANITIZE_INTEGRATION" = 0 ] || run integration bash tests/guest/run-tests.sh
# Under KASAN the stress is slower: its watchdog's limits are stretched 4 times here. Its
# final read of the 1 GiB host file over 9p did not reach 256 MiB in 900 s (vm.sh's stall
# limit ended the boot), so only data-fill checks the whole BAR (through a mapping).
[ "$SANITIZE_STRESS_SECS" = 0 ] || run stress env STRESS_SECS="$SANITIZE_STRESS_SECS" \
	STRESS_WATCHDOG_SCALE=4 STRESS_HOST_FILE_CHECK=0 bash tests/guest/stress.sh
if [ "$SANITIZE_FUZZ_OPS" != 0 ]; then
	run fuzz env FUZZ_SEED="$SANITIZE_FUZZ_SEED" FUZZ_OPS="$SANITIZE_FUZZ_OPS" \
		FUZZ_TWINS="ivshmem pci-testdev edu" bash tests/guest/fuzz.sh
fi
for m in vfio_pci_rs vfio_pci dma_buf_importer_test; do
	! grep -q "^$m " /proc/modules || rmmod "$m" || bad "sanitize rmmod $m"
done

# kmemleak: objects allocated since the clear above and unreferenced now, with both modules
# gone. Two scans: an object is reported once it has stayed unreferenced over one.
leaks=/tmp/sanitize-kmemleak.out
: > "$leaks"
if [ -e "$KMEMLEAK" ]; then
	echo scan > "$KMEMLEAK"
	sleep 5
	echo scan > "$KMEMLEAK"
	cat "$KMEMLEAK" > "$leaks"
fi

# Split the log since the tests began into reports (a line that starts one, up to the next)
# and attribute each to the driver it names: vfio_pci_rs, else the C vfio-pci (vfio_pci_core
# or the vfio_pci module), else neither. kmemleak's objects are split the same way.
dmesg -t | tail -n +"$((boot_lines + 1))" > /tmp/sanitize-dmesg.out
attribute() {
	awk -v kind="$1" -v start="$2" '
		function flush() {
			if (n) {
				who = "other"
				if (text ~ /vfio_pci_rs|vfio_pci_core_rs/) who = "vfio-pci-rs"
				else if (text ~ /vfio_pci_core|\[vfio_pci\]|vfio_pci_(probe|remove|open|release)/) who = "vfio-pci"
				count[who]++
				if (!(who in first)) first[who] = head
			}
			n = 0; text = ""
		}
		$0 ~ start { flush(); n = 1; head = $0; text = $0; next }
		n && n < 80 { text = text "\n" $0; n++ }
		END {
			flush()
			printf "%s vfio-pci %d vfio-pci-rs %d other %d\n", kind, count["vfio-pci"], count["vfio-pci-rs"], count["other"]
			for (w in first) printf "#   %s %s first: %s\n", kind, w, first[w]
		}'
}
report=/tmp/sanitize-report.out
{
	attribute KASAN '^BUG: KASAN' < /tmp/sanitize-dmesg.out
	attribute UBSAN '^UBSAN:' < /tmp/sanitize-dmesg.out
	attribute ODEBUG '^ODEBUG:' < /tmp/sanitize-dmesg.out
	attribute lockdep 'possible circular locking|possible recursive locking|inconsistent lock state|Invalid wait context|BUG: sleeping function|suspicious RCU usage|BUG: scheduling while atomic' < /tmp/sanitize-dmesg.out
	attribute WARN '^WARNING:' < /tmp/sanitize-dmesg.out
	attribute kmemleak '^unreferenced object' < "$leaks"
} > "$report"
echo "== sanitize: reports since the tests began, by driver"
cat "$report"
while read -r kind _ c _ rs _ other; do
	case "$kind" in '#'*) continue ;; esac
	[ "$c" = 0 ] && ok "sanitize $kind: none on vfio-pci" || bad "sanitize $kind: $c on vfio-pci"
	[ "$rs" = 0 ] && ok "sanitize $kind: none on vfio-pci-rs" || bad "sanitize $kind: $rs on vfio-pci-rs"
	[ "$other" = 0 ] || echo "# sanitize $kind: $other naming neither driver"
done < <(grep -v '^#' "$report")
if [ -s "$leaks" ]; then
	echo "# kmemleak, first objects:"
	head -n 60 "$leaks" | sed 's/^/#   /'
fi
grep -E '^ *debug_locks:' /proc/lockdep_stats | sed 's/^ */# at end: lockdep /'

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
