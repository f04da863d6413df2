// SPDX-License-Identifier: GPL-2.0

//! Runtime power management: idle functions suspend, and the user can put an open one in a
//! low power state with `VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY*` (the runtime PM parts of
//! `vfio_pci_core.c`).
//!
//! A function holds a runtime PM usage count while it is open (unless `disable_idle_d3`), and
//! every ioctl, read and write holds one for its duration. Low power entry gives back the one
//! of the open function, so the function suspends when the ioctl returns; exit, a wakeup or
//! close takes it again. The state lives in [`MemoryState`] under `memory_lock`, which the
//! runtime PM callbacks take: no holder of `memory_lock` or `igate` waits for runtime PM
//! (`pm_runtime_resume()` and friends run before them).

use core::{mem::size_of, sync::atomic::Ordering};
use kernel::{device::Bound, eventfd::EventFd, pci, prelude::*, uaccess::UserPtr, uapi, vfio};

use crate::{vfio_pci_priv::MemoryState, VfioPciCore};

impl VfioPciCore {
    /// `vfio_pci_core_runtime_suspend()`.
    pub(crate) fn runtime_suspend(&self, pdev: &pci::Device<Bound>) {
        // The user may have put the function in D3hot through its PMCSR: go back to D0, which
        // restores what a NoSoftRst- function lost, and let the PCI core suspend it from there.
        let _ = Self::set_power_state(pdev, &mut self.memory_lock.write(), pci::PowerState::D0);

        // Mask INTx while suspended, unless the user masked it already.
        let masked = self.intx_mask_for_suspend();
        self.pm_intx_masked.store(masked, Ordering::Relaxed);
    }

    /// `vfio_pci_core_runtime_resume()`: a resume in low power with a wakeup eventfd signals
    /// it and leaves low power.
    pub(crate) fn runtime_resume(&self, pdev: &pci::Device<Bound>) {
        {
            let mut memory = self.memory_lock.write();
            if let Some(wake) = &memory.pm_wake {
                wake.signal();
                Self::pm_exit(pdev, &mut memory);
                // The BAR mappings work again, as C's, whose faults only test for low power.
                // C leaves exported DMABUFs revoked here until the next restore point; they
                // are restored with the mappings that share their revocation.
                self.dma_buf_restore(pdev, &mut memory);
            }
        }
        if self.pm_intx_masked.swap(false, Ordering::Relaxed) {
            self.intx_unmask(pdev);
        }
    }

    /// Leaves low power if the user entered it (`__vfio_pci_runtime_pm_exit()`): the open
    /// function holds its usage count again.
    fn pm_exit(pdev: &pci::Device<Bound>, memory: &mut MemoryState) {
        if memory.pm_runtime_engaged {
            memory.pm_runtime_engaged = false;
            pdev.as_ref().pm_runtime_get_noresume();
            memory.pm_wake = None;
        }
    }

    /// Leaves low power and restores the DMABUFs (`vfio_pci_runtime_pm_exit()`).
    pub(crate) fn pm_exit_and_restore(&self, pdev: &pci::Device<Bound>) {
        let mut memory = self.memory_lock.write();
        Self::pm_exit(pdev, &mut memory);
        self.dma_buf_restore(pdev, &mut memory);
    }

    /// Enters low power (`vfio_pci_runtime_pm_entry()`): revokes the DMABUFs and gives back
    /// the open function's usage count, so the function suspends when the ioctl's is put.
    fn pm_entry(&self, pdev: &pci::Device<Bound>, wake: Option<EventFd>) -> Result<i32> {
        let mut memory = self.memory_lock.write();
        self.dma_buf_move(&mut memory, true);
        if memory.pm_runtime_engaged {
            return Err(EINVAL);
        }
        memory.pm_runtime_engaged = true;
        memory.pm_wake = wake;
        pdev.as_ref().pm_runtime_put_noidle();
        Ok(0)
    }

    /// `VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY` (`vfio_pci_core_pm_entry()`).
    pub(crate) fn feature_pm_entry(
        &self,
        pdev: &pci::Device<Bound>,
        flags: u32,
        argsz: usize,
    ) -> Result<i32> {
        if !vfio::check_feature(flags, argsz, uapi::VFIO_DEVICE_FEATURE_SET, 0)? {
            return Ok(0);
        }
        self.pm_entry(pdev, None)
    }

    /// `VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP`
    /// (`vfio_pci_core_pm_entry_with_wakeup()`).
    pub(crate) fn feature_pm_entry_with_wakeup(
        &self,
        pdev: &pci::Device<Bound>,
        flags: u32,
        arg: UserPtr,
        argsz: usize,
    ) -> Result<i32> {
        type Entry = uapi::vfio_device_low_power_entry_with_wakeup;
        let minsz = size_of::<Entry>();
        if !vfio::check_feature(flags, argsz, uapi::VFIO_DEVICE_FEATURE_SET, minsz)? {
            return Ok(0);
        }
        let entry: Entry = vfio::read_arg(arg, minsz)?;
        if entry.wakeup_eventfd < 0 {
            return Err(EINVAL);
        }
        let wake = EventFd::from_fd(entry.wakeup_eventfd)?;
        self.pm_entry(pdev, Some(wake))
    }

    /// `VFIO_DEVICE_FEATURE_LOW_POWER_EXIT` (`vfio_pci_core_pm_exit()`). The ioctl resumed
    /// the function; with a wakeup eventfd the resume already left low power.
    pub(crate) fn feature_pm_exit(
        &self,
        pdev: &pci::Device<Bound>,
        flags: u32,
        argsz: usize,
    ) -> Result<i32> {
        if !vfio::check_feature(flags, argsz, uapi::VFIO_DEVICE_FEATURE_SET, 0)? {
            return Ok(0);
        }
        self.pm_exit_and_restore(pdev);
        Ok(0)
    }
}
