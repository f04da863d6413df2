// SPDX-License-Identifier: GPL-2.0

//! Definitions shared between the driver's files, as C's `vfio_pci_priv.h`.

use kernel::{eventfd::EventFd, pci, prelude::*, uapi};

/// The region index sits above this bit of a device fd offset (`VFIO_PCI_OFFSET_SHIFT`).
pub(crate) const OFFSET_SHIFT: u32 = 40;

/// The offset within a region (`VFIO_PCI_OFFSET_MASK`).
pub(crate) const OFFSET_MASK: u64 = (1 << OFFSET_SHIFT) - 1;

/// The region index of a device fd offset (`VFIO_PCI_OFFSET_TO_INDEX`).
pub(crate) fn offset_to_index(pos: u64) -> u64 {
    pos >> OFFSET_SHIFT
}

/// The device fd offset of region `index` (`VFIO_PCI_INDEX_TO_OFFSET`).
pub(crate) fn index_to_offset(index: u32) -> u64 {
    u64::from(index) << OFFSET_SHIFT
}

/// The ROM BAR's resource and region index.
pub(crate) const ROM_INDEX: u32 = uapi::VFIO_PCI_ROM_REGION_INDEX;

/// What `memory_lock` guards: whether the function decodes its BARs, and its power state.
///
/// The write side is held for every change of either (COMMAND memory enable writes, D-state
/// changes, FLR, resets); the read side for each BAR access, which must not reach a function
/// that does not decode it.
pub(crate) struct MemoryState {
    /// The memory enable bit of the virtualized COMMAND register.
    pub(crate) command_memory: bool,
    /// The function loses its state in D3hot (PMCSR No_Soft_Reset clear), so the driver saves
    /// and restores it around D3hot (`needs_pm_restore`).
    pub(crate) needs_pm_restore: bool,
    /// The state saved on the way into D3hot (`pm_save`).
    pub(crate) pm_save: Option<pci::SavedState>,
    /// BAR0-5 mapped for read and write while the function is open (`barmap`), or why not.
    pub(crate) bars: [Result<pci::IoMapping>; 6],
    /// The rest of the page of sub-page BARs, held while the function is open. Here rather
    /// than with the open state because mmap() runs under `mmap_lock`, which the config
    /// state's holders may take by touching user memory.
    pub(crate) page_tail_reservations: [Option<pci::PageTailReservation>; 6],
    /// The user put the function in low power (`pm_runtime_engaged`): BAR faults get SIGBUS
    /// and the open function's runtime PM usage count is given back.
    pub(crate) pm_runtime_engaged: bool,
    /// Signalled when the function wakes from the user's low power (`pm_wake_eventfd_ctx`).
    pub(crate) pm_wake: Option<EventFd>,
    /// The driver enabled VFs of the function (`sriov_active`): it stays in D0.
    pub(crate) sriov_active: bool,
}

impl MemoryState {
    /// A closed function's state.
    pub(crate) const fn new() -> Self {
        Self {
            command_memory: false,
            needs_pm_restore: false,
            pm_save: None,
            bars: [const { Err(ENODEV) }; 6],
            page_tail_reservations: [const { None }; 6],
            pm_runtime_engaged: false,
            pm_wake: None,
            sriov_active: false,
        }
    }

    /// Whether BAR memory of `pdev` may be touched (`__vfio_pci_memory_enabled()`). Only a
    /// holder of `memory_lock` has a `&MemoryState`.
    pub(crate) fn memory_enabled(&self, pdev: &pci::Device) -> bool {
        let d0_to_d2 = matches!(
            pdev.power_state(),
            pci::PowerState::D0 | pci::PowerState::D1 | pci::PowerState::D2
        );
        d0_to_d2 && (pdev.no_command_memory() || self.command_memory)
    }
}

/// Where the MSI-X table and PBA sit, which BAR access must not reach (`msix_bar` etc.).
#[derive(Copy, Clone, Default)]
pub(crate) struct MsixLocation {
    /// The BAR holding the table.
    pub(crate) bar: u32,
    /// Offset of the table in the BAR.
    pub(crate) offset: u64,
    /// Size of the table in bytes.
    pub(crate) size: u64,
}

/// How INTx of an open function is masked.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub(crate) enum IntxMasking {
    /// With `PCI_COMMAND_INTX_DISABLE` (PCI 2.3, `pci_2_3`).
    Supported,
    /// Known broken: INTx is disabled and not offered (`nointx`).
    Broken,
    /// Not supported by the function, or `nointxmask` is set: the IRQ line is masked instead.
    Unused,
}
