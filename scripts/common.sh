# Shared settings for the project's scripts; sourced, not run.
# shellcheck shell=bash
CACHE=${VFIO_PCI_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfio-pci-rs}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The tree the user named with KDIR=, recorded by the first script so that the scripts it
# runs (which inherit the KDIR set below) still know whether the tree is the user's.
[ -n "${VFIO_PCI_RS_USER_KDIR+set}" ] || export VFIO_PCI_RS_USER_KDIR=${KDIR:-}
KDIR_USER=$VFIO_PCI_RS_USER_KDIR
KDIR=${KDIR_USER:-$CACHE/linux}
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
