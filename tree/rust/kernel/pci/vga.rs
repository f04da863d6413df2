// SPDX-License-Identifier: GPL-2.0

//! A VGA function: its client of the VGA arbiter, and the firmware framebuffers that may hold
//! its BARs.
//!
//! C headers: [`include/linux/vgaarb.h`](srctree/include/linux/vgaarb.h),
//! [`include/linux/aperture.h`](srctree/include/linux/aperture.h)

use super::{Class, Device};
use crate::{bindings, device, error::to_result, prelude::*, str::CStr};
use core::ops::BitOr;

/// The resources a VGA function decodes, as the VGA arbiter knows them (`VGA_RSRC_*`).
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub struct VgaDecodes(u32);

impl VgaDecodes {
    /// The legacy VGA I/O ports (`VGA_RSRC_LEGACY_IO`).
    pub const LEGACY_IO: Self = Self(bindings::VGA_RSRC_LEGACY_IO);
    /// The legacy VGA memory range (`VGA_RSRC_LEGACY_MEM`).
    pub const LEGACY_MEM: Self = Self(bindings::VGA_RSRC_LEGACY_MEM);
    /// Its I/O BARs (`VGA_RSRC_NORMAL_IO`).
    pub const NORMAL_IO: Self = Self(bindings::VGA_RSRC_NORMAL_IO);
    /// Its memory BARs (`VGA_RSRC_NORMAL_MEM`).
    pub const NORMAL_MEM: Self = Self(bindings::VGA_RSRC_NORMAL_MEM);
    /// Everything, the arbiter's default.
    pub const ALL: Self = Self(
        bindings::VGA_RSRC_LEGACY_IO
            | bindings::VGA_RSRC_LEGACY_MEM
            | bindings::VGA_RSRC_NORMAL_IO
            | bindings::VGA_RSRC_NORMAL_MEM,
    );

    /// The `VGA_RSRC_*` bits.
    pub const fn bits(self) -> u32 {
        self.0
    }
}

impl BitOr for VgaDecodes {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl Device {
    /// Whether the function is a VGA device (class `PCI_CLASS_DISPLAY_VGA`).
    pub fn is_vga(&self) -> bool {
        self.pci_class() == Class::DISPLAY_VGA
    }

    /// Whether the function is a display controller of any kind (`pci_is_display()`).
    pub fn is_display(&self) -> bool {
        self.pci_class().as_raw() >> 16 == bindings::PCI_BASE_CLASS_DISPLAY
    }
}

impl Device<device::Bound> {
    /// Removes the firmware framebuffers (and, for the primary VGA device, the VGA console)
    /// that use the function's memory, before its driver takes it over
    /// (`aperture_remove_conflicting_pci_devices()`); `name` is the driver's.
    pub fn remove_conflicting_framebuffers(&self, name: &CStr) -> Result {
        // SAFETY: `self.as_raw()` is a valid, bound `pci_dev`; `name` is a C string.
        to_result(unsafe {
            bindings::aperture_remove_conflicting_pci_devices(self.as_raw(), name.as_char_ptr())
        })
    }

    /// Whether another VGA function of the same domain, not on a root bus, sits on this
    /// function's bus or a bus below it: the walk of `vfio_pci_set_decode()`. Sleeps.
    pub fn vga_on_same_or_lower_bus(&self) -> bool {
        // SAFETY: `self.as_raw()` is a valid `pci_dev` with a valid `bus`.
        let bus = unsafe { (*self.as_raw()).bus };
        // SAFETY: `bus` is a valid `pci_bus`.
        let (domain, first, last) = unsafe {
            (
                bindings::pci_domain_nr(bus),
                (*bus).number,
                bindings::pci_bus_max_busnr(bus),
            )
        };
        let class = bindings::PCI_CLASS_DISPLAY_VGA << 8;
        let mut tmp: *mut bindings::pci_dev = core::ptr::null_mut();
        loop {
            // SAFETY: `tmp` is null or a device `pci_get_class()` returned with a reference,
            // which this call drops.
            tmp = unsafe { bindings::pci_get_class(class, tmp) };
            if tmp.is_null() {
                return false;
            }
            if tmp == self.as_raw() {
                continue;
            }
            // SAFETY: `tmp` is a valid `pci_dev` we hold a reference on, with a valid `bus`.
            let other = unsafe { (*tmp).bus };
            // SAFETY: `other` is a valid `pci_bus`.
            let (other_domain, number, root) = unsafe {
                (
                    bindings::pci_domain_nr(other),
                    (*other).number,
                    bindings::pci_is_root_bus(other),
                )
            };
            if other_domain != domain || root {
                continue;
            }
            if number >= first && number <= last {
                // SAFETY: Drops the reference `pci_get_class()` gave us.
                unsafe { bindings::pci_dev_put(tmp) };
                return true;
            }
        }
    }

    /// Tells the VGA arbiter which resources the function decodes
    /// (`vga_set_legacy_decoding()`).
    pub fn vga_set_legacy_decoding(&self, decodes: VgaDecodes) {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        unsafe { bindings::vga_set_legacy_decoding(self.as_raw(), decodes.bits()) };
    }
}
