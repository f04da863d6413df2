# Shared settings for the project's scripts; sourced, not run.
# shellcheck shell=bash
CACHE=${VFIO_PCI_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfio-pci-rs}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The tree the user named with KDIR=, recorded by the first script so that the scripts it
# runs (which inherit the KDIR set below) still know whether the tree is the user's.
[ -n "${VFIO_PCI_RS_USER_KDIR+set}" ] || export VFIO_PCI_RS_USER_KDIR=${KDIR:-}
KDIR_USER=$VFIO_PCI_RS_USER_KDIR
# VFIO_PCI_RS_STANDALONE=1 (make standalone): the kernel without the C vfio-pci, in a tree
# and build of its own; config/vfio-pci-rs-standalone.config is merged after the fragment.
# VFIO_PCI_RS_SANITIZE=1 (make sanitize, make soak): the kernel with KASAN, kmemleak,
# DEBUG_OBJECTS and UBSAN (config/vfio-pci-rs-sanitize.config), also in a tree of its own.
VFIO_PCI_RS_STANDALONE=${VFIO_PCI_RS_STANDALONE:-0}
VFIO_PCI_RS_SANITIZE=${VFIO_PCI_RS_SANITIZE:-0}
FRAGMENTS=("$REPO/config/vfio-pci-rs.config")
if [ "$VFIO_PCI_RS_STANDALONE" = 1 ] && [ "$VFIO_PCI_RS_SANITIZE" = 1 ]; then
	echo "VFIO_PCI_RS_STANDALONE and VFIO_PCI_RS_SANITIZE are two different kernels" >&2
	exit 1
elif [ "$VFIO_PCI_RS_STANDALONE" = 1 ]; then
	KDIR=${KDIR_USER:-$CACHE/linux-standalone}
	FRAGMENTS+=("$REPO/config/vfio-pci-rs-standalone.config")
elif [ "$VFIO_PCI_RS_SANITIZE" = 1 ]; then
	KDIR=${KDIR_USER:-$CACHE/linux-sanitize}
	FRAGMENTS+=("$REPO/config/vfio-pci-rs-sanitize.config")
else
	KDIR=${KDIR_USER:-$CACHE/linux}
fi
export PATH="$HOME/.cargo/bin:$CACHE/venv/bin:$PATH"
mkdir -p "$CACHE"

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# One kernel build or VM at a time on this machine: every script takes the cache's lock, and
# the scripts it runs inherit it.
if [ -z "${VFIO_PCI_RS_LOCKED:-}" ]; then
	exec 9>"$CACHE/lock"
	if ! flock -n 9; then
		log "waiting for another build or VM using $CACHE"
		flock 9
	fi
	export VFIO_PCI_RS_LOCKED=1
fi
