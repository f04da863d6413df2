#!/usr/bin/env bash
# Build the nested guest of make qemu-p2p (tests/guest/nested-p2p.c): a 32-bit multiboot ELF
# that the nested QEMU loads with -kernel. Runs on the host, before the VM boots; the VM sees
# the result through the shared filesystem. Prints the image's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

out=$CACHE/nested
elf=$out/p2p.elf
mkdir -p "$out"
ld=$(mktemp "$out/p2p.ld.XXXXXX")
trap 'rm -f "$ld"' EXIT
# The multiboot header first: QEMU looks for it in the file's first 8 KiB.
cat > "$ld" <<'LD'
ENTRY(_start)
SECTIONS {
	. = 0x100000;
	.text : { *(.multiboot) *(.text*) }
	.rodata : { *(.rodata*) }
	.data : { *(.data*) }
	.bss : { *(.bss*) *(COMMON) }
	/DISCARD/ : { *(.note*) *(.comment) *(.eh_frame*) }
}
LD
gcc -m32 -march=i686 -O2 -Wall -Wextra -Werror -ffreestanding -fno-pic -fno-stack-protector \
	-fno-asynchronous-unwind-tables -nostdlib -static -no-pie -Wl,-T,"$ld" \
	-Wl,--build-id=none -Wl,-z,max-page-size=0x1000 -Wl,--no-warn-rwx-segments \
	-o "$elf.tmp" "$REPO/tests/guest/nested-p2p.c"
mv "$elf.tmp" "$elf"
echo "$elf"
