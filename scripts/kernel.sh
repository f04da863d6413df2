#!/usr/bin/env bash
# Get a Linux 7.3 tree into the cache (or use KDIR=), install the driver into it,
# configure it for the project and build it. Incremental: a driver-only change
# rebuilds the module and little else.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

MAKE=(make -C "$KDIR" LLVM=-19 -j"$(nproc)")

if [ -z "$KDIR_USER" ] && [ ! -f "$KDIR/Makefile" ]; then
	tarball=$CACHE/src/linux-source-7.3.tar.xz
	[ -f "$tarball" ] || die "missing $tarball (run scripts/deps.sh)"
	log "kernel: unpacking $(basename "$tarball") into $KDIR"
	rm -rf "$KDIR.tmp"
	mkdir -p "$KDIR.tmp"
	tar -xJf "$tarball" -C "$KDIR.tmp" --strip-components=1
	mv "$KDIR.tmp" "$KDIR"
fi

"$here/install-tree.sh" "$KDIR"

# Configure: virtme-ng's config plus the fragments (common.sh), once per fragment version.
names=$(for f in "${FRAGMENTS[@]}"; do printf 'config/%s ' "$(basename "$f")"; done)
stamp=$KDIR/.vfio-pci-rs.config-stamp
want=$(cat "${FRAGMENTS[@]}" | sha256sum | cut -d' ' -f1)
if [ ! -f "$KDIR/.config" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
	if [ -n "$KDIR_USER" ] && [ -f "$KDIR/.config" ]; then
		# The user's own tree keeps its config; the fragments are merged onto it.
		log "kernel: merging ${names% } onto $KDIR/.config"
	else
		log "kernel: configuring (vng --kconfig + ${names% })"
		(cd "$KDIR" && vng --kconfig >/dev/null 2>&1)
	fi
	(cd "$KDIR" && scripts/kconfig/merge_config.sh -m .config "${FRAGMENTS[@]}" >/dev/null)
	"${MAKE[@]}" -s olddefconfig
	echo "$want" > "$stamp"
else
	"${MAKE[@]}" -s olddefconfig
fi

# Every symbol of the fragments must have taken, as the last fragment that names it says.
declare -A wanted=()
for f in "${FRAGMENTS[@]}"; do
	while read -r line; do
		case "$line" in
		CONFIG_*=*) sym=${line%%=*}; val=${line#*=} ;;
		"# CONFIG_"*" is not set") sym=${line#\# }; sym=${sym%% *}; val=n ;;
		*) continue ;;
		esac
		wanted[$sym]=$val
	done < "$f"
done
bad=0
for sym in "${!wanted[@]}"; do
	got=$(grep -E "^$sym=" "$KDIR/.config" | cut -d= -f2- || true)
	[ -n "$got" ] || got=n
	if [ "$got" != "${wanted[$sym]}" ]; then
		log "kernel: config $sym=$got, the fragments want ${wanted[$sym]}"
		bad=1
	fi
done
[ "$bad" = 0 ] || die "config fragments did not take"

"${MAKE[@]}" rustavailable >/dev/null || die "Rust is not available for this tree"

log "kernel: building"
start=$SECONDS
"${MAKE[@]}" > "$CACHE/build.log" 2>&1 || { tail -n 60 "$CACHE/build.log"; die "kernel build failed (log: $CACHE/build.log)"; }
if grep -E -A4 "^warning" "$CACHE/build.log" | grep -qE "drivers/vfio/pci/rust/|rust/kernel/(vfio|pci)|rust/helpers/pci_state"; then
	grep -E -A8 "^warning" "$CACHE/build.log" >&2
	die "the build warns in vfio-pci-rs code"
fi
log "kernel: built in $((SECONDS - start)) s"
