# Shared settings for the project's scripts; sourced, not run.
# shellcheck shell=bash
CACHE=${VFIO_PCI_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfio-pci-rs}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KDIR_USER=${KDIR:-}
KDIR=${KDIR:-$CACHE/linux}
export PATH="$HOME/.cargo/bin:$CACHE/venv/bin:$PATH"
mkdir -p "$CACHE"

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
