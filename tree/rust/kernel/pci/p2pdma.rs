// SPDX-License-Identifier: GPL-2.0

//! Peer-to-peer DMA providers: what another device needs to reach a function's memory BAR.
//!
//! C header: [`include/linux/pci-p2pdma.h`](srctree/include/linux/pci-p2pdma.h)

use super::Device;
use crate::{bindings, device, error::to_result, ffi::c_int, prelude::*, types::Opaque};

/// The peer-to-peer DMA provider of a memory BAR (`struct p2pdma_provider`): its owner and
/// the offset between the BAR's bus and CPU addresses, which the DMA mapping helpers use to
/// map the BAR for another device.
///
/// # Invariants
///
/// A `&P2pProvider` is borrowed from the bound [`Device`] whose BAR it describes; the provider
/// is device-managed, valid until that device's driver unbinds.
#[repr(transparent)]
pub struct P2pProvider(Opaque<bindings::p2pdma_provider>);

impl P2pProvider {
    /// The C provider, valid while `self` is borrowed.
    pub fn as_raw(&self) -> *mut bindings::p2pdma_provider {
        self.0.get()
    }
}

impl Device<device::Bound> {
    /// Sets up the providers of the function's memory BARs (`pcim_p2pdma_init()`); they are
    /// released when the driver unbinds. Fails with `EOPNOTSUPP` for a function whose BARs
    /// cannot be mapped by other devices, or a kernel without `CONFIG_PCI_P2PDMA`.
    pub fn p2pdma_init(&self) -> Result {
        #[cfg(CONFIG_PCI_P2PDMA)]
        {
            // SAFETY: `self` is a bound PCI device, as device-managed allocations need.
            to_result(unsafe { bindings::pcim_p2pdma_init(self.as_raw()) })
        }
        #[cfg(not(CONFIG_PCI_P2PDMA))]
        Err(EOPNOTSUPP)
    }

    /// The provider of standard BAR `bar` (`pcim_p2pdma_provider()`): `None` unless `bar` is a
    /// memory BAR and [`Device::p2pdma_init`] succeeded.
    pub fn p2pdma_provider(&self, bar: u32) -> Option<&P2pProvider> {
        #[cfg(CONFIG_PCI_P2PDMA)]
        {
            if bar >= bindings::PCI_STD_NUM_BARS {
                return None;
            }
            let bar = c_int::try_from(bar).ok()?;
            // SAFETY: `p2pdma` of a bound device changes only in `pcim_p2pdma_init()` and in
            // the devres release of unbind; reading whether it is set needs no RCU section.
            if unsafe { (*self.as_raw()).p2pdma }.is_null() {
                return None;
            }
            // SAFETY: `bar` is a standard BAR and the providers are set up, so the call neither
            // indexes out of bounds nor warns; the device is bound.
            let raw = unsafe { bindings::pcim_p2pdma_provider(self.as_raw(), bar) };
            // INVARIANT: The provider is `self`'s, device-managed, and borrowed from `self`.
            // SAFETY: A non-null provider lives until the driver unbinds, which it cannot while
            // `self` is borrowed; `P2pProvider` is a transparent wrapper.
            (!raw.is_null()).then(|| unsafe { &*raw.cast::<P2pProvider>() })
        }
        #[cfg(not(CONFIG_PCI_P2PDMA))]
        {
            let _ = bar;
            None
        }
    }
}
