#!/usr/bin/env bash
# Install what the loop needs, idempotently, from the package registries only.
# Debian suites other than the system's go through a private apt sources list and
# state directory under $CACHE/apt; the system's sources are never changed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

VIRTME_NG_VERSION=1.42
BINDGEN_VERSION=0.73.2
QEMU_SUITE=bookworm-backports

need_debs=(clang-19 lld-19 llvm-19 libclang-19-dev flex bison bc libelf-dev libssl-dev
	   cpio kmod rsync busybox-static zstd xz-utils python3-pip python3-venv
	   udev iproute2 pciutils socat file dwarves libdw-dev
	   gcc make libc6-dev uuid-dev)   # the last line: the VFIO selftests (scripts/selftests.sh)

missing=()
for p in "${need_debs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "apt: installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Private apt for trixie-backports (kernel source) and bookworm-backports (QEMU 10).
APT_DIR=$CACHE/apt
mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/archives/partial"
cat > "$APT_DIR/sources.list" <<SRC
deb http://deb.debian.org/debian trixie-backports main
deb http://deb.debian.org/debian bookworm-backports main
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SRC
APT_OPTS=(-o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null
	  -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache::Archives=$APT_DIR/archives"
	  -o APT::Sandbox::User=root -o APT::Default-Release=bookworm)
private_apt_update() {
	if [ ! -f "$APT_DIR/.updated" ] || [ -n "$(find "$APT_DIR/.updated" -mmin +1440)" ]; then
		log "apt (private): update"
		apt-get "${APT_OPTS[@]}" update -qq
		touch "$APT_DIR/.updated"
	fi
}

qemu_ok() {
	command -v qemu-system-x86_64 >/dev/null &&
		qemu-system-x86_64 -device help 2>/dev/null | grep -q '"igb"'
}
if ! qemu_ok; then
	private_apt_update
	log "apt (private): qemu-system-x86 from $QEMU_SUITE"
	DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" install -y -qq \
		-t "$QEMU_SUITE" qemu-system-x86 qemu-utils >/dev/null
	qemu_ok || die "qemu-system-x86_64 has no igb device"
fi

# The kernel source tarball, only when no KDIR was given.
if [ -z "${KDIR_USER:-}" ] && [ ! -f "$CACHE/src/linux-source-7.3.tar.xz" ]; then
	private_apt_update
	log "apt (private): download linux-source-7.3"
	mkdir -p "$CACHE/src"
	(cd "$CACHE/src" && apt-get "${APT_OPTS[@]}" download linux-source-7.3 >/dev/null)
	deb=$(ls "$CACHE"/src/linux-source-7.3_*.deb | head -n1)
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$CACHE/src" --strip-components=3 \
		./usr/src/linux-source-7.3.tar.xz
	rm -f "$deb"
fi

# Rust: rust-src for the machine's rustc, bindgen-cli pinned.
if command -v rustup >/dev/null; then
	rustup component list --installed 2>/dev/null | grep -q '^rust-src' ||
		{ log "rustup: adding rust-src"; rustup component add rust-src >/dev/null; }
fi
if ! command -v bindgen >/dev/null || ! bindgen --version | grep -q "$BINDGEN_VERSION"; then
	log "cargo: installing bindgen-cli $BINDGEN_VERSION"
	cargo install --locked bindgen-cli --version "$BINDGEN_VERSION" >/dev/null 2>&1
fi

# virtme-ng from PyPI, pinned, in its own venv.
if ! "$CACHE/venv/bin/vng" --version 2>/dev/null | grep -q "$VIRTME_NG_VERSION"; then
	log "pip: installing virtme-ng $VIRTME_NG_VERSION"
	python3 -m venv "$CACHE/venv"
	"$CACHE/venv/bin/pip" install -q "virtme-ng==$VIRTME_NG_VERSION"
fi
