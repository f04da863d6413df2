// SPDX-License-Identifier: GPL-2.0

//! Mappings of BARs, option ROMs and legacy ranges for the `ioread*()`/`iowrite*()` accessors.
//!
//! Unlike [`super::Bar`], an [`IoMapping`] may be an I/O port range: the `ioread*()` family
//! decodes the cookie `pci_iomap()` and `ioport_map()` return for ports. Accesses are checked
//! against the mapping's length at run time, since their offsets come from userspace.
//!
//! C header: [`include/asm-generic/iomap.h`](srctree/include/asm-generic/iomap.h)

use super::Device;
use crate::{
    bindings, device,
    dma_buf::PhysRange,
    ffi::{c_ulong, c_void},
    prelude::*,
    sync::aref::ARef,
};
use core::ptr::NonNull;

/// What has to be undone when an [`IoMapping`] is dropped.
enum Kind {
    /// `pci_request_selected_regions()` and `pci_iomap()` of a BAR.
    Bar(ARef<Device>, i32),
    /// `pci_map_rom()`.
    Rom(ARef<Device>),
    /// `ioremap()`.
    Ioremap,
    /// `ioport_map()`.
    IoPort,
}

/// A mapped range of device memory or I/O ports.
///
/// # Invariants
///
/// `addr` is a live `__iomem` cookie of `len` bytes obtained as `kind` says, and released on
/// drop.
pub struct IoMapping {
    addr: NonNull<c_void>,
    len: usize,
    kind: Kind,
}

// SAFETY: The cookie is a plain address, usable from any thread.
unsafe impl Send for IoMapping {}
// SAFETY: The accessors take `&self` and are single bus transactions.
unsafe impl Sync for IoMapping {}

macro_rules! io_accessors {
    ($($read:ident, $write:ident, $ty:ty, $c_read:ident, $c_write:ident;)*) => {
        $(
            #[doc = concat!("Reads a `", stringify!($ty), "` at `offset` (`", stringify!($c_read), "()`).")]
            pub fn $read(&self, offset: usize) -> Result<$ty> {
                let ptr = self.at::<$ty>(offset)?;
                // SAFETY: `at()` checked that the access lies within the live mapping.
                Ok(unsafe { bindings::$c_read(ptr) } as $ty)
            }

            #[doc = concat!("Writes a `", stringify!($ty), "` at `offset` (`", stringify!($c_write), "()`).")]
            pub fn $write(&self, value: $ty, offset: usize) -> Result {
                let ptr = self.at::<$ty>(offset)?;
                // SAFETY: `at()` checked that the access lies within the live mapping.
                unsafe { bindings::$c_write(value, ptr) };
                Ok(())
            }
        )*
    };
}

impl IoMapping {
    /// Maps `len` bytes of physical memory at `phys`, e.g. the legacy VGA range (`ioremap()`).
    pub fn ioremap(phys: u64, len: usize) -> Result<Self> {
        // SAFETY: `ioremap()` validates the range and returns null on failure.
        let addr = unsafe { bindings::ioremap(phys, len) };
        let addr = NonNull::new(addr).ok_or(ENOMEM)?;
        // INVARIANT: `addr` maps `len` bytes and is unmapped with `iounmap()` on drop.
        Ok(Self {
            addr,
            len,
            kind: Kind::Ioremap,
        })
    }

    /// Maps `len` I/O ports from `port`, e.g. the legacy VGA registers (`ioport_map()`).
    pub fn ioport(port: u16, len: u16) -> Result<Self> {
        // SAFETY: `ioport_map()` only computes a cookie for the range.
        let addr = unsafe { bindings::ioport_map(port.into(), len.into()) };
        let addr = NonNull::new(addr).ok_or(ENOMEM)?;
        // INVARIANT: `addr` maps `len` ports and is released with `ioport_unmap()` on drop.
        Ok(Self {
            addr,
            len: len.into(),
            kind: Kind::IoPort,
        })
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of a `T` at `offset`, which must lie within the mapping.
    fn at<T>(&self, offset: usize) -> Result<*mut c_void> {
        let end = offset.checked_add(size_of::<T>()).ok_or(EINVAL)?;
        if end > self.len {
            return Err(EINVAL);
        }
        Ok(self.addr.as_ptr().wrapping_byte_add(offset))
    }

    io_accessors! {
        read8, write8, u8, ioread8, iowrite8;
        read16, write16, u16, ioread16, iowrite16;
        read32, write32, u32, ioread32, iowrite32;
        read64, write64, u64, ioread64_nonatomic, iowrite64_nonatomic;
    }
}

impl Drop for IoMapping {
    fn drop(&mut self) {
        let addr = self.addr.as_ptr();
        // SAFETY: By the type invariant `addr` was obtained as `kind` says and is released once.
        unsafe {
            match &self.kind {
                Kind::Bar(pdev, bar) => {
                    bindings::pci_iounmap(pdev.as_raw(), addr);
                    bindings::pci_release_selected_regions(pdev.as_raw(), 1 << *bar);
                }
                Kind::Rom(pdev) => bindings::pci_unmap_rom(pdev.as_raw(), addr),
                Kind::Ioremap => bindings::iounmap(addr),
                Kind::IoPort => bindings::ioport_unmap(addr),
            }
        }
    }
}

impl Device<device::Bound> {
    /// Claims BAR `bar` for `name` and maps all of it, memory or I/O ports
    /// (`pci_request_selected_regions()` and `pci_iomap()`).
    ///
    /// Fails with `EBUSY` if another driver claimed the BAR and `ENOMEM` if it cannot be mapped.
    pub fn iomap_bar(&self, bar: u32, name: &'static CStr) -> Result<IoMapping> {
        let len = usize::try_from(self.resource_len(bar)?)?;
        if bar > 5 {
            return Err(EINVAL);
        }
        let bar = bar as i32;
        // SAFETY: `self.as_raw()` is a valid bound `pci_dev`; `name` is a static string.
        let ret = unsafe {
            bindings::pci_request_selected_regions(self.as_raw(), 1 << bar, name.as_char_ptr())
        };
        if ret != 0 {
            return Err(EBUSY);
        }
        // SAFETY: `self.as_raw()` is a valid `pci_dev` and `bar` a standard BAR.
        let Some(addr) = NonNull::new(unsafe { bindings::pci_iomap(self.as_raw(), bar, 0) }) else {
            // SAFETY: The region was requested above.
            unsafe { bindings::pci_release_selected_regions(self.as_raw(), 1 << bar) };
            return Err(ENOMEM);
        };
        let pdev: &Device = self;
        // INVARIANT: `addr` maps the `len` bytes of the BAR, claimed above; both are undone on
        // drop.
        Ok(IoMapping {
            addr,
            len,
            kind: Kind::Bar(pdev.into(), bar),
        })
    }

    /// Maps the option ROM behind the ROM BAR, enabling its decode (`pci_map_rom()`). The
    /// mapping's length is that of the images the ROM holds, which may be less than the BAR's.
    pub fn map_rom(&self) -> Option<IoMapping> {
        let mut len = 0;
        // SAFETY: `self.as_raw()` is a valid bound `pci_dev`; `len` is a valid output.
        let addr = NonNull::new(unsafe { bindings::pci_map_rom(self.as_raw(), &mut len) })?;
        let pdev: &Device = self;
        // INVARIANT: `addr` maps `len` bytes of ROM and is unmapped with `pci_unmap_rom()`.
        Some(IoMapping {
            addr,
            len,
            kind: Kind::Rom(pdev.into()),
        })
    }
}

/// The rest of the page a sub-page memory BAR starts, reserved so that no BAR hot-added later
/// is placed there while userspace may map the whole page.
///
/// # Invariants
///
/// `res` is registered as a child of the BAR's resource parent and released on drop.
pub struct PageTailReservation {
    res: KBox<crate::types::Opaque<bindings::resource>>,
    bar: u32,
}

// SAFETY: The reservation is only touched at creation and drop, under the resource lock.
unsafe impl Send for PageTailReservation {}
// SAFETY: `&PageTailReservation` gives no access.
unsafe impl Sync for PageTailReservation {}

impl Drop for PageTailReservation {
    fn drop(&mut self) {
        // SAFETY: By the type invariant the resource is registered; it stays allocated until
        // after this call.
        unsafe { bindings::release_resource(self.res.get()) };
    }
}

impl Device<device::Bound> {
    /// Reserves the rest of the page that memory BAR `bar` starts, for a BAR smaller than a
    /// page that starts at a page boundary. Fails with `EINVAL` for any other BAR and `EBUSY`
    /// if another resource is in the way.
    pub fn reserve_bar_page_tail(&self, bar: u32) -> Result<PageTailReservation> {
        if bar > 5 {
            return Err(EINVAL);
        }
        // SAFETY: `self.as_raw()` is a valid `pci_dev` and `bar` indexes its resources.
        let res = unsafe { &raw mut (*self.as_raw()).resource[bar as usize] };
        // SAFETY: `res` is valid; resources of a bound device are stable.
        let (start, end, flags, parent) =
            unsafe { ((*res).start, (*res).end, (*res).flags, (*res).parent) };
        let page = crate::page::PAGE_SIZE as u64;
        let size = end.wrapping_sub(start).wrapping_add(1);
        if flags & bindings::IORESOURCE_MEM as c_ulong == 0
            || end < start
            || size >= page
            || start % page != 0
            || parent.is_null()
        {
            return Err(EINVAL);
        }
        let tail = KBox::new(
            crate::types::Opaque::new(bindings::resource {
                name: c"vfio sub-page reserved".as_char_ptr(),
                start: end + 1,
                end: start + page - 1,
                flags,
                ..Default::default()
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: `parent` is the live parent of the BAR's resource; `tail` is a fresh,
        // boxed resource that stays put until `release_resource()` on drop.
        if unsafe { bindings::request_resource(parent, tail.get()) } != 0 {
            return Err(EBUSY);
        }
        // INVARIANT: `tail` was just registered.
        Ok(PageTailReservation { res: tail, bar })
    }

    /// The physical span `offset..offset + len` of memory BAR `bar`, for a buffer that maps it
    /// to userspace (`vfio_pci_core_fill_phys_vec()`). The span may reach the end of the
    /// BAR's last page when `tail` reserves the rest of that page. Fails with `EOVERFLOW` when
    /// the addresses overflow, and `EINVAL` for an empty span, one past the end, one not page
    /// aligned, or a BAR that is not memory.
    pub fn bar_phys_range(
        &self,
        bar: u32,
        offset: u64,
        len: u64,
        tail: Option<&PageTailReservation>,
    ) -> Result<PhysRange> {
        if !self.resource_flags(bar)?.is_mem() || len == 0 {
            return Err(EINVAL);
        }
        let bar_start = self.resource_start(bar)?;
        let bar_len = self.resource_len(bar)?;
        let start = bar_start.checked_add(offset).ok_or(EOVERFLOW)?;
        let end = start.checked_add(len).ok_or(EOVERFLOW)?;
        let page = crate::page::PAGE_SIZE as u64;
        let limit = match tail {
            Some(tail) if tail.bar == bar => bar_len.next_multiple_of(page),
            _ => bar_len,
        };
        if end > bar_start + limit || start % page != 0 || len % page != 0 {
            return Err(EINVAL);
        }
        // SAFETY: The span is page aligned, not empty, and inside memory BAR `bar` of this
        // bound device (or the rest of its page, which `tail` keeps from other resources).
        Ok(unsafe { PhysRange::new(start, len) })
    }
}

/// A legacy VGA resource that the VGA arbiter routes to one device at a time.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
#[repr(u32)]
pub enum VgaResource {
    /// The I/O ports 0x3b0-0x3bb and 0x3c0-0x3df (`VGA_RSRC_LEGACY_IO`).
    LegacyIo = bindings::VGA_RSRC_LEGACY_IO,
    /// The memory at 0xa0000-0xbffff (`VGA_RSRC_LEGACY_MEM`).
    LegacyMem = bindings::VGA_RSRC_LEGACY_MEM,
}

/// A legacy VGA resource routed to a device by the VGA arbiter, given back on drop.
///
/// # Invariants
///
/// `vga_get()` succeeded for `pdev` and `rsrc`; the guard calls `vga_put()` once.
pub struct VgaGuard<'a> {
    pdev: &'a Device<device::Bound>,
    rsrc: VgaResource,
}

impl Drop for VgaGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant we hold `rsrc` for `pdev`.
        unsafe { bindings::vga_put(self.pdev.as_raw(), self.rsrc as u32) };
    }
}

impl Device<device::Bound> {
    /// Routes the legacy VGA resource `rsrc` to this device, waiting interruptibly for its
    /// current user (`vga_get_interruptible()`).
    pub fn vga_get_interruptible(&self, rsrc: VgaResource) -> Result<VgaGuard<'_>> {
        // SAFETY: `self.as_raw()` is a valid bound `pci_dev`.
        crate::error::to_result(unsafe {
            bindings::vga_get_interruptible(self.as_raw(), rsrc as u32)
        })?;
        // INVARIANT: `vga_get()` succeeded.
        Ok(VgaGuard { pdev: self, rsrc })
    }
}
