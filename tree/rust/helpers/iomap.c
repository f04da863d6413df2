// SPDX-License-Identifier: GPL-2.0

#include <linux/io.h>
#include <linux/io-64-nonatomic-lo-hi.h>

/* ioread64() may be a macro for a split access; this is the one C drivers get. */
__rust_helper u64 rust_helper_ioread64_nonatomic(const void __iomem *addr)
{
	return ioread64(addr);
}

__rust_helper void rust_helper_iowrite64_nonatomic(u64 val, void __iomem *addr)
{
	iowrite64(val, addr);
}
