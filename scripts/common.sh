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
