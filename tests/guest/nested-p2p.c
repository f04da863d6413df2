// SPDX-License-Identifier: GPL-2.0-only
/*
 * The nested guest of make qemu-p2p (tests/guest/qemu-p2p.sh): a multiboot payload that the
 * nested QEMU loads with -kernel, in place of a nested Linux (whose boot takes over ten
 * minutes under TCG in TCG). It drives an edu and an ivshmem that the outer guest passed
 * through, with port I/O for config space and the BARs' physical addresses, no paging.
 *
 * It moves ivshmem's 1 GiB BAR2 to 1 GiB (below 4 GiB, where 32-bit code reaches it),
 * writes 16 words from the seed given on its command line (`seed=0x...`) at the BAR's start
 * and clears 0x1000-0x3fff. edu's DMA engine then reads those 64 bytes from the BAR into its
 * buffer and writes them back at 0x1000; writes them at 0x2000 while ivshmem's memory decode
 * is off, and at 0x3000 once it is on again. edu's DMA goes through the outer guest's IOMMU,
 * so it reaches the BAR only where the nested QEMU mapped the BAR for DMA. It prints
 * `nested-p2p: KEY VALUE...` lines on COM1 and ends with NESTED-P2P-DONE.
 *
 * Built by scripts/nested-p2p.sh: gcc -m32 -ffreestanding -nostdlib, linked at 1 MiB.
 */
#include <stdint.h>

__asm__(".section .multiboot, \"a\"\n"
	".align 4\n"
	"/* multiboot: magic, no flags (the ELF headers say where to load), checksum */\n"
	".long 0x1badb002, 0, -0x1badb002\n"
	".text\n"
	".globl _start\n"
	"_start:\n"
	"	mov $stack_top, %esp\n"
	"	push %ebx\n"		/* the multiboot information */
	"	call p2p_main\n"
	"1:	cli\n"
	"	hlt\n"
	"	jmp 1b\n");

uint8_t p2p_stack[16384] __attribute__((aligned(16)));
__asm__(".set stack_top, p2p_stack + 16384\n");

struct multiboot_info {
	uint32_t flags;
	uint32_t mem_lower, mem_upper, boot_device;
	uint32_t cmdline;
};

#define EDU_ID		0x11e81234u
#define IVSHMEM_ID	0x11101af4u
#define EDU_BUF		0x40000u	/* edu's DMA buffer, in its own address space */
#define BAR2_AT		0x40000000u	/* where BAR2 is moved to */
#define WORDS		16

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static void putc_(char c)
{
	while (!(inb(0x3fd) & 0x20))
		;
	outb(0x3f8, c);
}

static void puts_(const char *s)
{
	while (*s)
		putc_(*s++);
}

static void puthex(uint32_t v, int digits)
{
	while (digits--)
		putc_("0123456789abcdef"[(v >> (digits * 4)) & 0xf]);
}

static uint32_t cfg_addr(uint32_t dev, uint32_t off)
{
	return 0x80000000u | dev << 11 | (off & 0xfc);
}

static uint32_t cfg_read32(uint32_t dev, uint32_t off)
{
	outl(0xcf8, cfg_addr(dev, off));
	return inl(0xcfc);
}

static void cfg_write32(uint32_t dev, uint32_t off, uint32_t v)
{
	outl(0xcf8, cfg_addr(dev, off));
	outl(0xcfc, v);
}

static void cfg_write16(uint32_t dev, uint32_t off, uint16_t v)
{
	outl(0xcf8, cfg_addr(dev, off));
	outw(0xcfc + (off & 2), v);
}

static volatile uint32_t *mmio(uint32_t addr)
{
	return (volatile uint32_t *)(uintptr_t)addr;
}

/* The device number on bus 0 with this vendor/device ID, or -1. */
static int find_dev(uint32_t id)
{
	for (uint32_t dev = 0; dev < 32; dev++)
		if (cfg_read32(dev, 0) == id)
			return dev;
	return -1;
}

static void words(const char *key, uint32_t addr)
{
	puts_("nested-p2p: ");
	puts_(key);
	for (int i = 0; i < WORDS; i++) {
		putc_(' ');
		puthex(mmio(addr)[i], 8);
	}
	putc_('\n');
}

static uint32_t edu0;

/* dir 0: from bus address src into edu's buffer at dst; 1: edu's buffer at src to dst. */
static int edu_dma(uint32_t dir, uint32_t src, uint32_t dst)
{
	mmio(edu0 + 0x80)[0] = src;
	mmio(edu0 + 0x88)[0] = dst;
	mmio(edu0 + 0x90)[0] = WORDS * 4;
	mmio(edu0 + 0x98)[0] = 1 | dir << 1;
	/* QEMU runs the engine from a 100 ms timer; each read is a trip through two QEMUs. */
	for (uint32_t n = 0; n < 10000000u; n++)
		if (!(mmio(edu0 + 0x98)[0] & 1))
			return 0;
	puts_("nested-p2p: error DMA did not finish\n");
	return -1;
}

static uint32_t parse_seed(const char *s)
{
	uint32_t v = 0;

	for (; *s; s++)
		if (s[0] == 's' && s[1] == 'e' && s[2] == 'e' && s[3] == 'd' && s[4] == '=')
			break;
	if (!*s)
		return 0;
	for (s += 5; *s == 'x' || *s == '0'; s++)
		;
	for (; *s; s++) {
		uint32_t d;

		if (*s >= '0' && *s <= '9')
			d = *s - '0';
		else if (*s >= 'a' && *s <= 'f')
			d = *s - 'a' + 10;
		else
			break;
		v = v << 4 | d;
	}
	return v;
}

void p2p_main(const struct multiboot_info *mbi);
void p2p_main(const struct multiboot_info *mbi)
{
	uint32_t seed = (mbi->flags & 4) ? parse_seed((const char *)(uintptr_t)mbi->cmdline) : 0;
	int edu = find_dev(EDU_ID), ivs = find_dev(IVSHMEM_ID);

	puts_("nested-p2p: up\n");
	if (edu < 0 || ivs < 0) {
		puts_("nested-p2p: error no edu or ivshmem on bus 0\n");
		goto out;
	}
	edu0 = cfg_read32(edu, 0x10) & ~0xfu;
	cfg_write16(edu, 4, 0x6);		/* memory, bus master */
	/* BAR2 to 1 GiB, with its decode off while it moves. */
	cfg_write16(ivs, 4, 0);
	cfg_write32(ivs, 0x18, BAR2_AT);
	cfg_write32(ivs, 0x1c, 0);
	cfg_write16(ivs, 4, 0x2);
	puts_("nested-p2p: devices edu 00:");
	puthex(edu, 2);
	puts_(".0 BAR0 0x");
	puthex(edu0, 8);
	puts_(" ivshmem 00:");
	puthex(ivs, 2);
	puts_(".0 BAR2 0x");
	puthex(cfg_read32(ivs, 0x18) & ~0xfu, 8);
	putc_('\n');

	for (int i = 0; i < WORDS; i++) {
		mmio(BAR2_AT)[i] = seed ^ (i * 0x11111111u);
		for (int page = 1; page <= 3; page++)
			mmio(BAR2_AT + page * 0x1000)[i] = 0;
	}
	mmio(edu0 + 4)[0] = 0x12345678;
	puts_("nested-p2p: edu-liveness ");
	puthex(mmio(edu0 + 4)[0], 8);
	putc_('\n');
	words("source", BAR2_AT);

	if (edu_dma(0, BAR2_AT, EDU_BUF) || edu_dma(1, EDU_BUF, BAR2_AT + 0x1000))
		goto out;
	words("copy", BAR2_AT + 0x1000);
	cfg_write16(ivs, 4, 0);
	if (edu_dma(1, EDU_BUF, BAR2_AT + 0x2000))
		goto out;
	cfg_write16(ivs, 4, 0x2);
	words("decode-off", BAR2_AT + 0x2000);
	if (edu_dma(1, EDU_BUF, BAR2_AT + 0x3000))
		goto out;
	words("after-restore", BAR2_AT + 0x3000);
	puts_("nested-p2p: done\n");
out:
	puts_("NESTED-P2P-DONE\n");
}
