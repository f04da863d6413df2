#!/usr/bin/env bash
# Runs in the VM (scripts/test.sh): the KUnit suites of vfio_pci_rs, then the integration
# client on every twin pair, C vfio-pci beside vfio-pci-rs. Ends with `N passed, N failed`.
set -u
cd "$(dirname "$0")/../.." || exit 1
. tests/guest/devices.sh

CLIENT=tests/client/target/release/vfio-test

. tests/guest/report.sh

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
check_kunit

echo "== integration (vfio-pci vs vfio-pci-rs)"
"$CLIENT" "${TWINS[@]}" 2>&1 | tee /tmp/client.out
add_summary /tmp/client.out "integration client"

echo "== open device vs unbind and rmmod"
# now_ms: milliseconds since boot.
now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }

# hold_device BDF SECONDS [--cdev]: open the device in the background until "held".
hold_device() {
	"$CLIENT" hold "$@" > /tmp/hold.out 2>&1 &
	hold_pid=$!
	for _ in $(seq 100); do
		grep -q '^held ' /tmp/hold.out && return 0
		kill -0 "$hold_pid" 2>/dev/null || break
		sleep 0.1
	done
	cat /tmp/hold.out
	return 1
}

# Each driver in turn on the edu twin: with the device open, rmmod is refused (the open
# holds the module), and unbinding waits until the device is closed; with only the cdev
# open (not bound to iommufd), rmmod waits for the close.
lifecycle() {
	local drv=$1 mod=$2 bdf=$3 t0 t1
	"$CLIENT" bind "$bdf" "$drv" > /dev/null || { bad "$drv lifecycle: bind"; return; }

	if hold_device "$bdf" 4; then
		if rmmod "$mod" 2> /tmp/rmmod.err; then
			bad "$drv rmmod refused while device open"
			modprobe "$mod"
		else
			ok "$drv rmmod refused while device open ($(tr -d '\n' < /tmp/rmmod.err))"
		fi
		t0=$(now_ms)
		echo "$bdf" > "/sys/bus/pci/devices/$bdf/driver/unbind"
		t1=$(now_ms)
		wait "$hold_pid"
		if grep -q '^released ' /tmp/hold.out && [ $((t1 - t0)) -ge 1000 ]; then
			ok "$drv unbind waited $((t1 - t0)) ms for the device to be closed"
		else
			bad "$drv unbind returned after $((t1 - t0)) ms: $(cat /tmp/hold.out)"
		fi
	else
		bad "$drv hold (group open)"
	fi

	"$CLIENT" bind "$bdf" "$drv" > /dev/null || { bad "$drv lifecycle: rebind"; return; }
	if hold_device "$bdf" 3 --cdev; then
		t0=$(now_ms)
		if rmmod "$mod"; then
			t1=$(now_ms)
			wait "$hold_pid"
			if [ $((t1 - t0)) -ge 1000 ]; then
				ok "$drv rmmod waited $((t1 - t0)) ms for the open cdev"
			else
				bad "$drv rmmod returned after $((t1 - t0)) ms with the cdev open"
			fi
		else
			wait "$hold_pid"
			bad "$drv rmmod with the cdev open failed"
		fi
		modprobe "$mod" || bad "$drv modprobe again"
	else
		bad "$drv hold (cdev open)"
	fi
	"$CLIENT" unbind "$bdf" > /dev/null
}
edu=${TWINS[0]#*=}
lifecycle vfio-pci vfio_pci "${edu%,*}"
lifecycle vfio-pci-rs vfio_pci_rs "${edu#*,}"

echo "== teardown with live state"
# Each driver on its edu (MSI) and igb (MSI-X): unbind, removal from the bus, rmmod, and a
# PCIe hot-unplug by QEMU's device_del (the QEMU id is slotN for the function on bus N,
# scripts/vm.sh) of a function that a process uses (BAR mapping, exported DMABUF, MSI or
# MSI-X, ioeventfd, REQ); then rescan, modprobe or device_add, and bind again.
igb=${TWINS[3]#*=}
for twin in "$edu" "$igb"; do
	for drv in vfio-pci vfio-pci-rs; do
		if [ "$drv" = vfio-pci ]; then b=${twin%,*}; else b=${twin#*,}; fi
		for mode in unbind remove rmmod unplug; do
			slot=
			[ "$mode" != unplug ] || slot=slot$((16#${b:5:2}))
			"$CLIENT" bind "$b" "$drv" > /dev/null || { bad "teardown $drv $mode: bind $b"; continue; }
			"$CLIENT" teardown "$mode" "$b" $slot 2>&1 | tee "/tmp/teardown-$b-$mode.out"
			add_summary "/tmp/teardown-$b-$mode.out" "teardown $drv $mode $b"
			"$CLIENT" unbind "$b" > /dev/null
		done
	done
done

echo "== reset racing faults on a function with ATS"
# Each driver in turn on the virtio-rng with ATS: VFIO_DEVICE_RESET (which takes the IOMMU
# group's mutex under memory_lock) against BAR faults (memory_lock under mmap_lock).
for drv in vfio-pci vfio-pci-rs; do
	"$CLIENT" bind "$ATS_FUNCTION" "$drv" > /dev/null || { bad "reset-race $drv: bind $ATS_FUNCTION"; continue; }
	"$CLIENT" reset-race "$ATS_FUNCTION" 15 2>&1 | tee "/tmp/reset-race-$drv.out"
	add_summary "/tmp/reset-race-$drv.out" "reset-race $drv"
	"$CLIENT" unbind "$ATS_FUNCTION" > /dev/null
done

echo "== driver_managed_dma"
# With the shared IOMMU group of the mixed bus owned by userspace through one driver's
# device, the other function can still be bound to the other driver: only a driver that
# sets driver_managed_dma may bind to a device whose group is claimed for user DMA.
mixed=${TWINS[5]#*=}
rebind_while_held() {
	local held=$1 other=$2 drv=$3
	"$CLIENT" bind "$held" "$4" > /dev/null && "$CLIENT" bind "$other" "$drv" > /dev/null ||
		{ bad "$drv driver_managed_dma: bind"; return; }
	if hold_device "$held" 3; then
		echo "$other" > "/sys/bus/pci/devices/$other/driver/unbind"
		if echo "$other" > /sys/bus/pci/drivers_probe &&
			[ "$(basename "$(readlink "/sys/bus/pci/devices/$other/driver")")" = "$drv" ]; then
			ok "$drv binds while its IOMMU group is owned by userspace (driver_managed_dma)"
		else
			bad "$drv did not bind while its IOMMU group is owned by userspace"
		fi
		wait "$hold_pid"
	else
		bad "$drv driver_managed_dma: hold"
	fi
	"$CLIENT" unbind "$held" > /dev/null
	"$CLIENT" unbind "$other" > /dev/null
}
rebind_while_held "${mixed%,*}" "${mixed#*,}" vfio-pci-rs vfio-pci
rebind_while_held "${mixed#*,}" "${mixed%,*}" vfio-pci vfio-pci-rs

echo "== ids= parameter"
# Each module in turn, loaded with the same ids=: the same messages (past the module name)
# and both edu functions bound to it through the dynamic ID.
ids_run() {
	local mod=$1 drv=$2 before msgs
	before=$(dmesg | wc -l)
	modprobe "$mod" ids=1234:11e8,zz,8086,1af4:1110:ffff:ffff:0:0
	msgs=$(dmesg -t | tail -n +$((before + 1)) | sed -n "s/^$mod: //p")
	for bdf in ${edu/,/ }; do
		[ "$(basename "$(readlink "/sys/bus/pci/devices/$bdf/driver")")" = "$drv" ] ||
			msgs+=$'\n'"not bound: $bdf"
	done
	rmmod "$mod"
	echo "$msgs"
}
rmmod vfio_pci_rs vfio_pci 2>/dev/null
ids_c=$(ids_run vfio_pci vfio-pci)
ids_rs=$(ids_run vfio_pci_rs vfio-pci-rs)
echo "# vfio_pci: ${ids_c//$'\n'/ | }"
if [ "$ids_c" = "$ids_rs" ] && ! grep -q "not bound" <<< "$ids_c"; then
	ok "ids= parity: same messages, edu bound to each driver"
else
	bad "ids= vfio_pci_rs: ${ids_rs//$'\n'/ | }"
fi
modprobe vfio_pci && modprobe vfio_pci_rs

echo "== module parameters in sysfs"
# C's permissions and values, for every parameter of vfio_pci that vfio_pci_rs has; `ids` is
# not in sysfs on either. A write to a writable one takes effect for the functions bound after
# it, as C latches them per function at probe: disable_idle_d3 decides whether an idle bound
# function sleeps in D3hot. A bad value is refused alike.
param_state() {
	local mod=$1 p f out=
	for p in ids nointxmask disable_vga disable_idle_d3 disable_denylist enable_sriov; do
		f=/sys/module/$mod/parameters/$p
		if [ -e "$f" ]; then out+="$p=$(stat -c %a "$f"):$(cat "$f") "; else out+="$p=absent "; fi
	done
	echo "$out"
}
param_c=$(param_state vfio_pci)
param_rs=$(param_state vfio_pci_rs)
echo "# vfio_pci: $param_c"
if [ "$param_c" = "$param_rs" ]; then
	ok "module parameters: same sysfs permissions and values"
else
	bad "module parameters: vfio_pci_rs: $param_rs"
fi
# igb: pci-testdev and edu have no PM capability, so they stay in D0 either way.
# idle_state DRV MOD BDF VALUE: the power state of BDF bound to DRV after MOD's
# disable_idle_d3 was set to VALUE.
idle_state() {
	local drv=$1 mod=$2 bdf=$3 state
	echo "$4" > "/sys/module/$mod/parameters/disable_idle_d3" || { echo "write refused"; return; }
	"$CLIENT" bind "$bdf" "$drv" > /dev/null || { echo "bind failed"; return; }
	# C suspends an idle function through runtime PM, asynchronously: give it 5 s.
	for _ in $(seq 50); do
		state=$(cat "/sys/bus/pci/devices/$bdf/power_state")
		[ "$state" = D3hot ] && break
		sleep 0.1
	done
	"$CLIENT" unbind "$bdf" > /dev/null
	# Unbound, the function is back in D0 (pci_device_remove() resumes it).
	echo "$state,unbound:$(cat "/sys/bus/pci/devices/$bdf/power_state")"
}
for v in Y N; do
	st_c=$(idle_state vfio-pci vfio_pci "${igb%,*}" "$v")
	st_rs=$(idle_state vfio-pci-rs vfio_pci_rs "${igb#*,}" "$v")
	if [ "$st_c" = "$st_rs" ] && case "$v:$st_c" in Y:D0,unbound:D0 | N:D3hot,unbound:D0) true ;; *) false ;; esac; then
		ok "disable_idle_d3=$v written at runtime: an idle bound function, then unbound, is in $st_c on both"
	else
		bad "disable_idle_d3=$v written at runtime: vfio-pci $st_c, vfio-pci-rs $st_rs"
	fi
done
bad_write() {
	local err
	if err=$(echo maybe 2>&1 > "/sys/module/$1/parameters/nointxmask"); then
		echo accepted
	else
		echo "${err##*: }"
	fi
}
bw_c=$(bad_write vfio_pci)
bw_rs=$(bad_write vfio_pci_rs)
if [ "$bw_c" = "$bw_rs" ] && [ "$bw_c" != accepted ]; then
	ok "nointxmask=maybe refused on both ($bw_c)"
else
	bad "nointxmask=maybe: vfio-pci '$bw_c', vfio-pci-rs '$bw_rs'"
fi
[ "$(cat /sys/module/vfio_pci_rs/parameters/nointxmask)" = N ] ||
	bad "nointxmask changed by a refused write"

echo "== SR-IOV (igb PFs, one per driver)"
# With enable_sriov, sriov_numvfs on a PF bound to either driver creates a VF that the PF's
# bus notifier gives to the same driver. Opening the PF with a VF token sets it; the VF's
# users must present it. The integration client then runs on the two VFs, compared as any
# twin (VFIO_TEST_VF_TOKEN: the client presents the token where it is needed).
vf_token=$(cat /proc/sys/kernel/random/uuid)
open_error() { # BDF [TOKEN]: how opening BDF through its group ends
	local out
	if out=$(VFIO_TEST_VF_TOKEN=${2:-} "$CLIENT" info "$1" 2>&1 > /dev/null); then
		echo ok
	else
		echo "${out##*: }"
	fi
}
declare -A sriov_vf=() sriov_refused=()
for drv in vfio-pci vfio-pci-rs; do
	mod=${drv//-/_}
	if [ "$drv" = vfio-pci ]; then pf=${igb%,*}; else pf=${igb#*,}; fi
	"$CLIENT" bind "$pf" "$drv" > /dev/null || { bad "sriov $drv: bind PF $pf"; continue; }
	# Refused without enable_sriov, as C refuses it.
	echo N > "/sys/module/$mod/parameters/enable_sriov"
	if err=$(echo 1 2>&1 > "/sys/bus/pci/devices/$pf/sriov_numvfs"); then
		sriov_refused[$drv]=accepted
	else
		sriov_refused[$drv]=${err##*: }
	fi
	echo Y > "/sys/module/$mod/parameters/enable_sriov"
	[ "$(open_error "$pf" "$vf_token")" = ok ] || bad "sriov $drv: open PF $pf with a VF token"
	if ! echo 1 > "/sys/bus/pci/devices/$pf/sriov_numvfs"; then
		bad "sriov $drv: sriov_numvfs=1 on $pf"
		continue
	fi
	vf=$(basename "$(readlink "/sys/bus/pci/devices/$pf/virtfn0")")
	for _ in $(seq 50); do
		[ -e "/sys/bus/pci/devices/$vf/driver" ] && break
		sleep 0.1
	done
	vf_drv=$(basename "$(readlink "/sys/bus/pci/devices/$vf/driver")")
	if [ "$vf_drv" = "$drv" ]; then
		ok "sriov $drv: VF $vf of $pf bound to $drv (driver_override $(cat "/sys/bus/pci/devices/$vf/driver_override"))"
	else
		bad "sriov $drv: VF $vf of $pf bound to '$vf_drv'"
	fi
	sriov_vf[$drv]=$vf
	no_token=$(open_error "$vf")
	wrong=$(open_error "$vf" "$(cat /proc/sys/kernel/random/uuid)")
	right=$(open_error "$vf" "$vf_token")
	echo "# $drv VF $vf: no token: $no_token; another token: $wrong; the PF's token: $right"
	sriov_refused[$drv]+=" / $no_token / $wrong / $right"
done
# C's answers: ENOENT without enable_sriov; a VF of a PF of the driver needs the PF's token.
if [ "${sriov_refused[vfio-pci]:-}" = "${sriov_refused[vfio-pci-rs]:-}" ] &&
	[ "${sriov_refused[vfio-pci]:-}" = "No such file or directory / EACCES / EACCES / ok" ]; then
	ok "sriov: same answers (numvfs without enable_sriov / VF without token / other token / token): ${sriov_refused[vfio-pci]:-}"
else
	bad "sriov: vfio-pci '${sriov_refused[vfio-pci]:-}', vfio-pci-rs '${sriov_refused[vfio-pci-rs]:-}'"
fi
if [ -n "${sriov_vf[vfio-pci]:-}" ] && [ -n "${sriov_vf[vfio-pci-rs]:-}" ]; then
	VFIO_TEST_VF_TOKEN=$vf_token "$CLIENT" "igbvf=${sriov_vf[vfio-pci]},${sriov_vf[vfio-pci-rs]}" 2>&1 |
		tee /tmp/client-vf.out | grep -E "^(FAIL|# checks)"
	add_summary /tmp/client-vf.out "integration client on the VFs"
fi
for drv in vfio-pci vfio-pci-rs; do
	if [ "$drv" = vfio-pci ]; then pf=${igb%,*}; else pf=${igb#*,}; fi
	[ -e "/sys/bus/pci/devices/$pf/driver" ] || continue
	echo 0 > "/sys/bus/pci/devices/$pf/sriov_numvfs" || bad "sriov $drv: sriov_numvfs=0 on $pf"
	[ "$(cat "/sys/bus/pci/devices/$pf/sriov_numvfs")" = 0 ] || bad "sriov $drv: VFs left on $pf"
	"$CLIENT" unbind "$pf" > /dev/null || bad "sriov $drv: unbind PF $pf"
	echo N > "/sys/module/${drv//-/_}/parameters/enable_sriov"
done

echo "== VGA arbiter"
# A VGA function bound to either driver is a client of the VGA arbiter (vga_client_register()
# with C's set_decode). With disable_vga=1 and no other VGA function below its bridge (each
# twin sits behind a root port of its own) it gives up the legacy VGA ranges; unbound, it
# decodes them again. Read through /dev/vga_arbiter: "target PCI:<BDF>", then its status.
vga=${TWINS[4]#*=}
vga_decodes() { # BDF: the arbiter's decodes= for BDF
	local line
	exec 3<> /dev/vga_arbiter || { echo "no arbiter"; return; }
	echo "target PCI:$1" >&3
	read -r line <&3
	exec 3>&-
	line=${line#*decodes=}
	echo "${line%%,*}"
}
declare -A vga_seen=()
for disable_vga in 0 1; do
	rmmod vfio_pci_rs vfio_pci 2> /dev/null
	modprobe vfio_pci disable_vga=$disable_vga && modprobe vfio_pci_rs disable_vga=$disable_vga ||
		bad "vga: modprobe with disable_vga=$disable_vga"
	for drv in vfio-pci vfio-pci-rs; do
		if [ "$drv" = vfio-pci ]; then bdf=${vga%,*}; else bdf=${vga#*,}; fi
		before=$(vga_decodes "$bdf")
		"$CLIENT" bind "$bdf" "$drv" > /dev/null || { bad "vga $drv: bind $bdf"; continue; }
		bound=$(vga_decodes "$bdf")
		"$CLIENT" unbind "$bdf" > /dev/null || bad "vga $drv: unbind $bdf"
		vga_seen[$drv]+="disable_vga=$disable_vga: $before, bound $bound, unbound $(vga_decodes "$bdf"); "
	done
done
rmmod vfio_pci_rs vfio_pci 2> /dev/null
modprobe vfio_pci && modprobe vfio_pci_rs || bad "vga: modprobe"
echo "# vfio-pci: ${vga_seen[vfio-pci]:-}"
want="disable_vga=0: io+mem, bound io+mem, unbound io+mem; disable_vga=1: io+mem, bound none, unbound io+mem; "
if [ "${vga_seen[vfio-pci]:-}" = "${vga_seen[vfio-pci-rs]:-}" ] && [ "${vga_seen[vfio-pci]:-}" = "$want" ]; then
	ok "vga: the arbiter's legacy decodes, before, bound and unbound, are the same on both drivers"
else
	bad "vga: vfio-pci-rs: ${vga_seen[vfio-pci-rs]:-}"
fi

echo "== device-specific regions (bochs-display, IGD bridge regions of the test build)"
# Regions past index 8 (C's vfio_pci_core_register_dev_region()): on real hardware only an
# Intel IGD has them, the read-only config spaces of the host bridge 00:00.0 and the LPC
# bridge 00:1f.0 (vfio_pci_igd.c) at indexes 9 and 10. No QEMU device is an IGD, so the test
# build of vfio-pci-rs (CONFIG_VFIO_PCI_RUST_IGD_TEST) offers C's IGD bridge regions on every
# non-VGA display function (class 0x0380), as an IGD that is not the boot VGA device is:
# QEMU's bochs-display. vfio-pci offers none there (not Intel), nor does vfio-pci-rs without
# the option; VFIO_TEST_IGD_REGIONS=1 says the kernel is the test build. The client compares
# what the regions read with the bridges' sysfs config files.
display=
for d in /sys/bus/pci/devices/*; do
	if [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x1111 ] &&
		[ "$(cat "$d/class")" = 0x038000 ]; then
		display=${d##*/}
		break
	fi
done
if [ -z "$display" ]; then
	bad "dev-regions: no bochs-display function (1234:1111, class 0x038000) in the VM"
else
	display_drv=$(readlink "/sys/bus/pci/devices/$display/driver") || display_drv=none
	echo "# bochs-display $display, driver ${display_drv##*/}"
	for drv in vfio-pci vfio-pci-rs; do
		expect=none
		[ "$drv" = vfio-pci-rs ] && [ "${VFIO_TEST_IGD_REGIONS:-0}" = 1 ] && expect=igd-bridges
		if "$CLIENT" bind "$display" "$drv" > /dev/null; then
			"$CLIENT" dev-regions "$display" "$expect" 2>&1 | tee "/tmp/dev-regions-$drv.out"
			add_summary "/tmp/dev-regions-$drv.out" "dev-regions $drv"
		else
			bad "dev-regions $drv: bind $display"
		fi
	done
	# Left unbound, as the VGA twins are.
	"$CLIENT" unbind "$display" > /dev/null || bad "dev-regions: unbind $display"
fi

echo "== peer-to-peer DMA through a Type1 container (edu into ivshmem's BAR2)"
# edu's DMA engine and ivshmem in one VFIO container, ivshmem's BAR2 mapped for DMA by
# VFIO_IOMMU_MAP_DMA of its mmap() (QEMU's container backend does the same for P2P): Type1
# follows the mapping's PFNs, so edu's copies reach the BAR. Each driver drives both devices.
ivshmem=${TWINS[1]#*=}
for drv in vfio-pci vfio-pci-rs; do
	if [ "$drv" = vfio-pci ]; then e=${edu%,*} i=${ivshmem%,*}; else e=${edu#*,} i=${ivshmem#*,}; fi
	if "$CLIENT" bind "$e" "$drv" > /dev/null && "$CLIENT" bind "$i" "$drv" > /dev/null; then
		"$CLIENT" p2p-dma "$e" "$i" 2>&1 | tee "/tmp/p2p-dma-$drv.out"
		add_summary "/tmp/p2p-dma-$drv.out" "p2p-dma $drv"
	else
		bad "p2p-dma $drv: bind $e and $i"
	fi
	"$CLIENT" unbind "$e" > /dev/null
	"$CLIENT" unbind "$i" > /dev/null
done

echo "== peer-to-peer DMA through iommufd's Type1 compatibility (vfio-pci-rs)"
# The same transfers with /dev/iommu as the container: VFIO_IOMMU_MAP_DMA of the BAR's mmap()
# imports the DMABUF behind it. vfio-pci's BAR mappings are no DMABUFs, and the compat map
# of them fails as upstream's vfio_dma_mapping_mmio_test expects (run in the selftests).
e=${edu#*,} i=${ivshmem#*,}
if "$CLIENT" bind "$e" vfio-pci-rs > /dev/null && "$CLIENT" bind "$i" vfio-pci-rs > /dev/null; then
	"$CLIENT" p2p-dma "$e" "$i" compat 2>&1 | tee /tmp/p2p-dma-compat.out
	add_summary /tmp/p2p-dma-compat.out "p2p-dma-compat vfio-pci-rs"
else
	bad "p2p-dma-compat: bind $e and $i"
fi
"$CLIENT" unbind "$e" > /dev/null
"$CLIENT" unbind "$i" > /dev/null

echo "== peer-to-peer DMA through an iommufd IOAS (ivshmem's BAR2 DMABUF by IOMMU_IOAS_MAP_FILE)"
# The same transfers with both devices on one iommufd, the BAR exported as a DMABUF that
# iommufd imports (as VMMs map BARs for GPU peer-to-peer); a revocation unmaps it. Each
# driver drives both devices; the page is also read from ivshmem's backing file on the host.
n=1
for drv in vfio-pci vfio-pci-rs; do
	if [ "$drv" = vfio-pci ]; then e=${edu%,*} i=${ivshmem%,*}; else e=${edu#*,} i=${ivshmem#*,}; fi
	backing=${VFIO_TEST_IVSHMEM_DIR:+$VFIO_TEST_IVSHMEM_DIR/ivshmem$n}
	n=$((n + 1))
	if "$CLIENT" bind "$e" "$drv" > /dev/null && "$CLIENT" bind "$i" "$drv" > /dev/null; then
		"$CLIENT" p2p-iommufd "$e" "$i" $backing 2>&1 | tee "/tmp/p2p-iommufd-$drv.out"
		add_summary "/tmp/p2p-iommufd-$drv.out" "p2p-iommufd $drv"
	else
		bad "p2p-iommufd $drv: bind $e and $i"
	fi
	"$CLIENT" unbind "$e" > /dev/null
	"$CLIENT" unbind "$i" > /dev/null
done

echo "== a kernel importer of an exported BAR DMABUF (dma-buf-importer-test)"
# The exporter's attach, map_dma_buf, unmap and invalidation paths, through the test module
# of tree/linux.patch: ivshmem maps its own buffer (bus addresses), the edu beside it has no
# peer-to-peer path (EINVAL). The module is unloaded after, with nothing attached.
if modprobe dma-buf-importer-test; then
	for drv in vfio-pci vfio-pci-rs; do
		if [ "$drv" = vfio-pci ]; then e=${edu%,*} i=${ivshmem%,*}; else e=${edu#*,} i=${ivshmem#*,}; fi
		if "$CLIENT" bind "$i" "$drv" > /dev/null; then
			"$CLIENT" importer "$i" "$e" 2>&1 | tee "/tmp/importer-$drv.out"
			add_summary "/tmp/importer-$drv.out" "importer $drv"
		else
			bad "importer $drv: bind $i"
		fi
		"$CLIENT" unbind "$i" > /dev/null
	done
	if rmmod dma-buf-importer-test; then ok "rmmod dma-buf-importer-test"; else bad "rmmod dma-buf-importer-test"; fi
else
	bad "modprobe dma-buf-importer-test"
fi

echo "== device-fd fuzzer, short (make fuzz runs 1000000 ops per twin)"
# A fixed seed, so a divergence here replays with make fuzz FUZZ_SEED=14 FUZZ_REPLAY=I. Not
# edu: with this seed both edus write to IOVA 0 (DMAR faults on both drivers), not yet
# explained.
FUZZ_SEED=14 FUZZ_OPS=${FUZZ_OPS:-20000} FUZZ_TWINS="ivshmem pci-testdev" bash tests/guest/fuzz.sh 2>&1 |
	tee /tmp/fuzz-short.out | grep -vE '^# fuzz .*/[0-9]+ ops, '
add_summary /tmp/fuzz-short.out "fuzzer"

echo "== module unload"
for m in vfio_pci_rs vfio_pci; do
	if rmmod "$m"; then ok "rmmod $m"; else bad "rmmod $m"; fi
done

echo "== kernel health"
check_health

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
