// SPDX-License-Identifier: GPL-2.0

//! Kernel mappings of memory that is not I/O memory, such as firmware tables (`memremap()`).
//!
//! C header: [`include/linux/io.h`](srctree/include/linux/io.h)

use crate::{bindings, ffi::c_ulong, io::ResourceSize, prelude::*};
use core::ptr::NonNull;

/// A write-back cacheable mapping of physical memory outside the kernel's direct map, made by
/// `memremap(MEMREMAP_WB)` and unmapped when dropped.
///
/// The memory is not the kernel's: firmware (ACPI methods, for a firmware table) may change
/// it at any time, so it is read by copying, a byte at a time, and never lent out as a slice.
///
/// # Invariants
///
/// `ptr` is the start of a live `memremap()` mapping of `len` bytes, owned by `self`.
///
/// # Examples
///
/// ```no_run
/// use kernel::io::memremap::MemRemap;
/// # fn test() -> Result {
/// // A firmware table of 8 KiB at 0x7fe0_0000.
/// let table = MemRemap::new_wb(0x7fe0_0000, 8192)?;
/// let mut signature = [0u8; 16];
/// table.read(0, &mut signature)?;
/// # Ok(()) }
/// ```
pub struct MemRemap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: The mapping is not tied to the thread that made it; `memunmap()` may run anywhere.
unsafe impl Send for MemRemap {}

// SAFETY: A shared `MemRemap` only reads the mapping.
unsafe impl Sync for MemRemap {}

impl MemRemap {
    /// Maps `len` bytes of physical memory at `phys` write-back (`memremap(MEMREMAP_WB)`).
    ///
    /// Fails with `ENOMEM` where `memremap()` fails, e.g. for a range that cannot be mapped
    /// write-back.
    pub fn new_wb(phys: ResourceSize, len: usize) -> Result<Self> {
        // CAST: `MEMREMAP_WB` is a flag bit of `memremap()`'s `unsigned long` flags.
        let flags = bindings::MEMREMAP_WB as c_ulong;
        // SAFETY: `memremap()` takes any range; it returns NULL if it cannot map it.
        let ptr = unsafe { bindings::memremap(phys, len, flags) };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(ENOMEM)?;
        // INVARIANT: `ptr` is a new mapping of `len` bytes, owned by the result.
        Ok(Self { ptr, len })
    }

    /// The length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies the bytes at `offset` into `buf`; fails with `EINVAL` unless they are all within
    /// the mapping.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result {
        let end = offset.checked_add(buf.len()).ok_or(EINVAL)?;
        if end > self.len {
            return Err(EINVAL);
        }
        for (i, byte) in buf.iter_mut().enumerate() {
            // SAFETY: `offset + i` < `end` <= `len`, so the byte is within the mapping, which
            // is live by the type invariant. The read is volatile since firmware may write the
            // memory concurrently.
            *byte = unsafe { self.ptr.as_ptr().add(offset + i).read_volatile() };
        }
        Ok(())
    }
}

impl Drop for MemRemap {
    fn drop(&mut self) {
        // SAFETY: By the type invariant, `ptr` is a `memremap()` mapping owned by `self`, not
        // used after this.
        unsafe { bindings::memunmap(self.ptr.as_ptr().cast()) };
    }
}
