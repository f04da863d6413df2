#!/usr/bin/env bash
# Runs in the VM (scripts/test.sh): the KUnit suites of vfio_pci_rs, then the integration
# client on every twin pair, C vfio-pci beside vfio-pci-rs. Ends with `N passed, N failed`.
set -u
cd "$(dirname "$0")/../.." || exit 1
. tests/guest/devices.sh

CLIENT=tests/client/target/release/vfio-test
# Every KUnit suite the module must run; a missing one fails.
KUNIT_SUITES=(rust_vfio vfio_pci_rs_ids)

pass=0
fail=0
ok() { echo "PASS $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }

echo "== kernel $(uname -r), $(nproc) cpus"
for m in vfio_pci vfio_pci_rs; do
	if modprobe "$m"; then ok "modprobe $m"; else bad "modprobe $m"; fi
done

# libvirt finds the driver of a device through the vfio_pci: alias of the module.
for m in vfio_pci vfio_pci_rs; do
	if modinfo -F alias "$m" | grep -q '^vfio_pci:v\*d\*sv\*sd\*bc\*sc\*i\*$'; then
		ok "modinfo $m vfio_pci: alias"
	else
		bad "modinfo $m vfio_pci: alias: $(modinfo -F alias "$m" | tr '\n' ' ')"
	fi
done

echo "== KUnit"
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

echo "== integration (vfio-pci vs vfio-pci-rs)"
"$CLIENT" "${TWINS[@]}" > /tmp/client.out 2>&1
cat /tmp/client.out
summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' /tmp/client.out | tail -n1)
if [ -z "$summary" ]; then
	bad "integration client printed no summary"
else
	pass=$((pass + $(echo "$summary" | cut -d' ' -f1)))
	fail=$((fail + $(echo "$summary" | cut -d' ' -f3)))
fi

echo "== module unload"
for m in vfio_pci_rs vfio_pci; do
	if rmmod "$m"; then ok "rmmod $m"; else bad "rmmod $m"; fi
done

echo "== kernel health"
if grep -qE '^ *debug_locks: +1$' /proc/lockdep_stats; then
	ok "lockdep still on (debug_locks=1)"
else
	bad "lockdep turned itself off (debug_locks!=1)"
fi
splats=$(dmesg -t | grep -E 'WARNING:|BUG:|Oops|possible circular locking|circular locking dependency|INFO: task .* blocked|UBSAN|KASAN|refcount_t:' || true)
if [ -z "$splats" ]; then ok "no WARN/BUG/lockdep splat in dmesg"; else bad "kernel splat: $splats"; fi

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
