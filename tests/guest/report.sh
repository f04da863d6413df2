# Counting and the checks every boot ends with; sourced by the guest scripts.
# shellcheck shell=bash
pass=${pass:-0}
fail=${fail:-0}
ok() { echo "PASS $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }

# add_summary FILE WHAT: add the `N passed, N failed` line of a client's output in FILE.
add_summary() {
	local summary
	summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$1" | tail -n1)
	if [ -z "$summary" ]; then
		bad "$2 printed no summary (it died?)"
	else
		pass=$((pass + $(echo "$summary" | cut -d' ' -f1)))
		fail=$((fail + $(echo "$summary" | cut -d' ' -f3)))
	fi
}

# The KUnit suites of the kernel crate's VFIO abstractions and of vfio_pci_rs.
KUNIT_SUITES=(rust_rwsem rust_vfio rust_dma_buf vfio_pci_rs_ids vfio_pci_rs_rdwr vfio_pci_rs_config vfio_pci_rs_dmabuf vfio_pci_rs_igd)

# check_kunit: every case of each of KUNIT_SUITES passed, from the boot's KTAP in dmesg; a
# suite that did not run fails.
check_kunit() {
	local ktap suite cases line name
	ktap=$(dmesg -t | sed -n '/^KTAP version/,$p')
	for suite in "${KUNIT_SUITES[@]}"; do
		cases=$(printf '%s\n' "$ktap" | awk -v s="$suite" '
			$0 ~ "^    # Subtest: " s "$" { in_suite = 1; next }
			in_suite && /^    (not )?ok [0-9]+ / { print }
			in_suite && $0 ~ "^(not )?ok [0-9]+ " s "$" { exit }')
		if [ -z "$cases" ]; then
			bad "kunit $suite: suite did not run"
			continue
		fi
		while read -r line; do
			name=$(echo "$line" | sed -E 's/^(not )?ok [0-9]+ //; s/ #.*//')
			case "$line" in
			"ok "*) ok "kunit $suite.$name" ;;
			*) bad "kunit $suite.$name" ;;
			esac
		done <<< "$cases"
		printf '%s\n' "$ktap" | grep -E "^(not )?ok [0-9]+ $suite$" | grep -q '^ok' ||
			bad "kunit $suite: suite result"
	done
}

# check_health [PREFIX]: lockdep still on, and no WARN, BUG, oops or lockdep report in dmesg.
# Under tests/guest/sanitize.sh, which lists what the boot reported before any test ran:
# only the log from line VFIO_TEST_DMESG_FROM on counts, and VFIO_TEST_LOCKDEP_OFF_AT_START=1
# (a report at boot turned lockdep off) makes the lockdep check a SKIP.
check_health() {
	local p=${1:+$1 } splats
	if [ "${VFIO_TEST_LOCKDEP_OFF_AT_START:-0}" = 1 ]; then
		echo "SKIP ${p}lockdep: off before the tests began (a report at boot, see sanitize.sh)"
	elif grep -qE '^ *debug_locks: +1$' /proc/lockdep_stats; then
		ok "${p}lockdep still on (debug_locks=1)"
	else
		bad "${p}lockdep turned itself off (debug_locks!=1)"
	fi
	splats=$(dmesg -t | tail -n +"${VFIO_TEST_DMESG_FROM:-1}" | grep -E 'WARNING:|BUG:|Oops|possible circular locking|circular locking dependency|INFO: task .* blocked|UBSAN|KASAN|refcount_t:' || true)
	if [ -z "$splats" ]; then ok "${p}no WARN/BUG/lockdep splat in dmesg"; else bad "${p}kernel splat: $splats"; fi
}
