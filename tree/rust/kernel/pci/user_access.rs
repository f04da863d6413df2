// SPDX-License-Identifier: GPL-2.0

//! Config space, VPD and function state as a driver that passes a function through to
//! userspace sees them.
//!
//! The `pci_user_*_config_*()` accessors wait while the PCI core blocks config access (e.g.
//! during a reset) and return errnos, which is what an access on behalf of userspace needs.
//!
//! C header: [`include/linux/pci.h`](srctree/include/linux/pci.h)

use super::{Device, PowerState};
use crate::{
    bindings, device,
    error::to_result,
    ffi::{c_int, c_ulong},
    prelude::*,
};

/// The flags of a PCI resource (`IORESOURCE_*`).
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub struct ResourceFlags(c_ulong);

// CAST: The `IORESOURCE_*` flags are `u32` constants of an `unsigned long` field.
impl ResourceFlags {
    /// An I/O port range.
    pub fn is_io(self) -> bool {
        self.0 & bindings::IORESOURCE_IO as c_ulong != 0
    }

    /// A memory range.
    pub fn is_mem(self) -> bool {
        self.0 & bindings::IORESOURCE_MEM as c_ulong != 0
    }

    /// Memory that may be prefetched.
    pub fn is_prefetch(self) -> bool {
        self.0 & bindings::IORESOURCE_PREFETCH as c_ulong != 0
    }

    /// Memory behind a 64-bit BAR.
    pub fn is_mem_64(self) -> bool {
        self.0 & bindings::IORESOURCE_MEM_64 as c_ulong != 0
    }
}

macro_rules! user_config_readers {
    ($($read:ident, $ty:ty, $c_read:ident;)*) => {
        $(
            #[doc = concat!("Reads a `", stringify!($ty), "` of config space on behalf of ")]
            #[doc = concat!("userspace (`", stringify!($c_read), "()`).")]
            pub fn $read(&self, pos: u16) -> Result<$ty> {
                let mut val: $ty = 0;
                // SAFETY: `self.as_raw()` is a valid `pci_dev`; `val` is a valid output. The
                // call checks `pos` against the config space size and alignment.
                to_result(unsafe { bindings::$c_read(self.as_raw(), pos.into(), &mut val) })?;
                Ok(val)
            }
        )*
    };
}

macro_rules! user_config_writers {
    ($($write:ident, $ty:ty, $c_write:ident;)*) => {
        $(
            #[doc = concat!("Writes a `", stringify!($ty), "` of config space on behalf of ")]
            #[doc = concat!("userspace (`", stringify!($c_write), "()`).")]
            pub fn $write(&self, pos: u16, val: $ty) -> Result {
                // SAFETY: `self.as_raw()` is a valid `pci_dev`. The call checks `pos`.
                to_result(unsafe { bindings::$c_write(self.as_raw(), pos.into(), val) })
            }
        )*
    };
}

/// Converts the `PCIBIOS_*` status of a config access to a result (`pcibios_err_to_errno()`).
fn pcibios_to_result(ret: c_int) -> Result {
    // Zero is success; a negative value is already an errno.
    if ret <= 0 {
        return to_result(ret);
    }
    // CAST: `ret` is positive.
    Err(match ret as u32 {
        bindings::PCIBIOS_FUNC_NOT_SUPPORTED => ENOENT,
        bindings::PCIBIOS_BAD_VENDOR_ID => ENOTTY,
        bindings::PCIBIOS_DEVICE_NOT_FOUND => ENODEV,
        bindings::PCIBIOS_BAD_REGISTER_NUMBER => EFAULT,
        bindings::PCIBIOS_SET_FAILED => EIO,
        bindings::PCIBIOS_BUFFER_TOO_SMALL => ENOSPC,
        _ => ERANGE,
    })
}

macro_rules! config_readers {
    ($($read:ident, $ty:ty, $c_read:ident;)*) => {
        $(
            #[doc = concat!("Reads a `", stringify!($ty), "` of config space (`")]
            #[doc = concat!(stringify!($c_read), "()`), with its status as an errno.")]
            ///
            /// Unlike [`Device::config_space`], a failed access (bad alignment, a disconnected
            /// function) is an error, not a value.
            pub fn $read(&self, pos: u16) -> Result<$ty> {
                let mut val: $ty = 0;
                // SAFETY: `self.as_raw()` is a valid `pci_dev`; `val` is a valid output. The
                // call checks the alignment of `pos` and fails a disconnected function.
                pcibios_to_result(unsafe {
                    bindings::$c_read(self.as_raw(), pos.into(), &mut val)
                })?;
                Ok(val)
            }
        )*
    };
}

impl Device<device::Bound> {
    config_readers! {
        read_config_byte, u8, pci_read_config_byte;
        read_config_word, u16, pci_read_config_word;
        read_config_dword, u32, pci_read_config_dword;
    }

    user_config_writers! {
        user_write_config_byte, u8, pci_user_write_config_byte;
        user_write_config_word, u16, pci_user_write_config_word;
        user_write_config_dword, u32, pci_user_write_config_dword;
    }

    /// Reads VPD at `pos` into `buf` (`pci_read_vpd()`); returns the bytes read.
    pub fn read_vpd(&self, pos: u32, buf: &mut [u8]) -> Result<usize> {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`; `buf` is valid for `buf.len()` bytes.
        let ret = unsafe {
            bindings::pci_read_vpd(
                self.as_raw(),
                pos.into(),
                buf.len(),
                buf.as_mut_ptr().cast(),
            )
        };
        usize::try_from(ret).map_err(|_| Error::from_errno(ret as i32))
    }

    /// Writes `buf` to VPD at `pos` (`pci_write_vpd()`); returns the bytes written.
    pub fn write_vpd(&self, pos: u32, buf: &[u8]) -> Result<usize> {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`; `buf` is valid for `buf.len()` bytes.
        let ret = unsafe {
            bindings::pci_write_vpd(self.as_raw(), pos.into(), buf.len(), buf.as_ptr().cast())
        };
        usize::try_from(ret).map_err(|_| Error::from_errno(ret as i32))
    }

    /// Sets the maximum read request size of a PCIe function (`pcie_set_readrq()`).
    pub fn pcie_set_readrq(&self, rq: i32) -> Result {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`; the value is checked by the call.
        to_result(unsafe { bindings::pcie_set_readrq(self.as_raw(), rq) })
    }

    /// Returns the maximum payload size in bytes (`pcie_get_mps()`).
    pub fn pcie_get_mps(&self) -> i32 {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        unsafe { bindings::pcie_get_mps(self.as_raw()) }
    }

    /// Enables or disables INTx with `PCI_COMMAND_INTX_DISABLE` (`pci_intx()`).
    pub fn intx(&self, enable: bool) {
        // SAFETY: `self.as_raw()` is a valid `pci_dev` bound to the caller's driver.
        unsafe { bindings::pci_intx(self.as_raw(), enable.into()) };
    }

    /// Whether INTx can be masked with `PCI_COMMAND_INTX_DISABLE` (`pci_intx_mask_supported()`).
    pub fn intx_mask_supported(&self) -> bool {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`; the check only touches config space.
        unsafe { bindings::pci_intx_mask_supported(self.as_raw()) }
    }
}

impl Device {
    // Reads need no bound driver: the config space of any function may be read for a user.
    user_config_readers! {
        user_read_config_byte, u8, pci_user_read_config_byte;
        user_read_config_word, u16, pci_user_read_config_word;
        user_read_config_dword, u32, pci_user_read_config_dword;
    }

    /// Returns the power state the PCI core last set or read (`current_state`).
    pub fn power_state(&self) -> PowerState {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        PowerState::from_raw(unsafe { (*self.as_raw()).current_state })
    }

    /// Returns the flags of resource `bar` (`pci_resource_flags()`).
    pub fn resource_flags(&self, bar: u32) -> Result<ResourceFlags> {
        if bar >= bindings::PCI_NUM_RESOURCES {
            return Err(EINVAL);
        }
        // SAFETY: `self.as_raw()` is a valid `pci_dev` and `bar` indexes its resources.
        Ok(ResourceFlags(unsafe {
            (*self.as_raw()).resource[bar as usize].flags
        }))
    }

    /// Returns the platform ROM image address and length (`rom`, `romlen`), for a function
    /// whose ROM is not behind its ROM BAR; `None` if there is none.
    pub fn platform_rom(&self) -> Option<(u64, usize)> {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        let (rom, len) = unsafe { ((*self.as_raw()).rom, (*self.as_raw()).romlen) };
        (rom != 0 && len != 0).then_some((rom, len))
    }

    /// Returns the legacy INTx interrupt line, or `None` if the function has none connected.
    pub fn intx_irq(&self) -> Option<u32> {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        let irq = unsafe { (*self.as_raw()).irq };
        (irq != 0 && irq != bindings::IRQ_NOTCONNECTED).then_some(irq)
    }

    /// Whether the function has no memory enable bit in COMMAND (`no_command_memory`).
    pub fn no_command_memory(&self) -> bool {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        unsafe { (*self.as_raw()).no_command_memory() != 0 }
    }

    /// Returns the config space size in bytes (`cfg_size`).
    pub fn cfg_size_bytes(&self) -> usize {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        unsafe { (*self.as_raw()).cfg_size }.try_into().unwrap_or(0)
    }

    /// Returns the offset of the power management capability, or 0 (`pm_cap`).
    pub fn pm_cap(&self) -> u8 {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        unsafe { (*self.as_raw()).pm_cap }
    }

    /// Returns the offset of the MSI capability, or 0 (`msi_cap`).
    pub fn msi_cap(&self) -> u8 {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        unsafe { (*self.as_raw()).msi_cap }
    }

    /// Returns the offset of the MSI-X capability, or 0 (`msix_cap`).
    pub fn msix_cap(&self) -> u8 {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        unsafe { (*self.as_raw()).msix_cap }
    }

    /// Returns the offset of the PCI Express capability, or 0 (`pcie_cap`).
    pub fn pcie_cap(&self) -> u8 {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        unsafe { (*self.as_raw()).pcie_cap }
    }

    /// Returns the cached PCI Express Capabilities register (`pcie_caps_reg()`).
    pub fn pcie_flags(&self) -> u16 {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        unsafe { (*self.as_raw()).pcie_flags_reg }
    }

    /// Returns the PCI Express device/port type (`pci_pcie_type()`).
    pub fn pcie_type(&self) -> u8 {
        ((self.pcie_flags() & bindings::PCI_EXP_FLAGS_TYPE as u16) >> 4) as u8
    }
}
