// SPDX-License-Identifier: GPL-2.0

//! SR-IOV: enabling a physical function's VFs, and watching the PCI bus for new devices.
//!
//! C header: [`include/linux/pci.h`](srctree/include/linux/pci.h)

use super::Device;
use crate::{
    bindings, device,
    error::{to_result, Result},
    ffi::{c_int, c_ulong, c_void},
    prelude::*,
    str::CStr,
    types::Opaque,
};

impl<Ctx: device::DeviceContext> Device<Ctx> {
    /// Returns `true` for an SR-IOV physical function (`is_physfn`).
    pub fn is_physfn(&self) -> bool {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        unsafe { (*self.as_raw()).is_physfn() != 0 }
    }

    /// The name of the driver bound to the function, if any.
    pub fn driver_name(&self) -> Option<&CStr> {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`; a bound driver outlives its binding.
        let drv = unsafe { (*self.as_raw()).driver };
        if drv.is_null() {
            return None;
        }
        // SAFETY: `drv` is a registered `pci_driver`, whose name is a C string.
        Some(unsafe { CStr::from_char_ptr((*drv).name) })
    }

    /// Sets the function's `driver_override` to `name` (`device_set_driver_override()`): only
    /// that driver binds it from then on.
    pub fn set_driver_override(&self, name: &CStr) -> Result {
        let dev = self.as_ref().as_raw();
        // SAFETY: `dev` is a valid device and `name` a C string of `len` bytes.
        to_result(unsafe {
            bindings::__device_set_driver_override(dev, name.as_char_ptr(), name.to_bytes().len())
        })
    }
}

impl Device<device::Core<'_>> {
    /// Enables `nr_virtfn` VFs of this physical function (`pci_enable_sriov()`).
    pub fn enable_sriov(&self, nr_virtfn: u16) -> Result {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`, bound and locked.
        to_result(unsafe { bindings::pci_enable_sriov(self.as_raw(), c_int::from(nr_virtfn)) })
    }

    /// Removes the VFs of this physical function (`pci_disable_sriov()`).
    pub fn disable_sriov(&self) {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`, bound and locked.
        unsafe { bindings::pci_disable_sriov(self.as_raw()) };
    }
}

/// What happened to a device of the PCI bus, for a [`BusNotifier`].
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum BusEvent {
    /// The device was added (`BUS_NOTIFY_ADD_DEVICE`), before any driver probes it.
    AddDevice,
    /// A driver was bound to the device (`BUS_NOTIFY_BOUND_DRIVER`).
    BoundDriver,
    /// Another event.
    Other,
}

/// The callback of a [`BusNotifier`].
pub trait BusNotify: Send + Sync {
    /// `event` happened to `dev`. Runs in the notifier chain, which holds its rwsem for
    /// reading, and for [`BusEvent::BoundDriver`] with the device lock held.
    fn notify(&self, event: BusEvent, dev: &Device);
}

/// A notifier of the PCI bus (`bus_register_notifier(&pci_bus_type)`), registered until it is
/// dropped.
///
/// # Invariants
///
/// `nb` is registered on `pci_bus_type` with [`BusNotifier::notifier_call`], from the end of
/// the initializer until the drop.
#[pin_data(PinnedDrop)]
pub struct BusNotifier<T: BusNotify> {
    #[pin]
    nb: Opaque<bindings::notifier_block>,
    data: T,
}

// SAFETY: The notifier block is only used by the bus's notifier chain, which serialises its
// changes; `T` is `Send + Sync`.
unsafe impl<T: BusNotify> Send for BusNotifier<T> {}
// SAFETY: As above; `&BusNotifier` only gives access to `T`, which is `Sync`.
unsafe impl<T: BusNotify> Sync for BusNotifier<T> {}

impl<T: BusNotify> BusNotifier<T> {
    /// Registers a notifier that calls `data.notify()` for every event of the PCI bus.
    pub fn new(data: T) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            nb <- Opaque::ffi_init(|nb: *mut bindings::notifier_block| {
                // SAFETY: `nb` is valid for writes; a zeroed notifier block is valid.
                unsafe {
                    nb.write(pin_init::zeroed());
                    (*nb).notifier_call = Some(Self::notifier_call);
                }
            }),
            data,
        })
        .pin_chain(|this| {
            // SAFETY: `this.nb` is pinned, initialised and not registered; `PinnedDrop`
            // unregisters it before it goes away.
            to_result(unsafe {
                bindings::bus_register_notifier(&raw const bindings::pci_bus_type, this.nb.get())
            })
        })
    }

    /// The data given to [`BusNotifier::new`].
    pub fn data(&self) -> &T {
        &self.data
    }

    /// # Safety
    ///
    /// Called by the notifier chain of `pci_bus_type` with the `nb` of a live `BusNotifier<T>`
    /// and a device of the PCI bus.
    unsafe extern "C" fn notifier_call(
        nb: *mut bindings::notifier_block,
        action: c_ulong,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: By the safety requirements, `nb` is the `nb` field of a live `Self`.
        let this = unsafe { &*crate::container_of!(Opaque::cast_from(nb), Self, nb) };
        // SAFETY: The PCI bus notifies about its devices, each embedded in a `pci_dev`.
        let pdev = unsafe {
            crate::container_of!(data.cast::<bindings::device>(), bindings::pci_dev, dev)
        };
        // SAFETY: `pdev` is a valid `pci_dev` for the duration of the notification.
        let pdev = unsafe { &*pdev.cast::<Device>() };
        let event = match u32::try_from(action) {
            Ok(bindings::bus_notifier_event_BUS_NOTIFY_ADD_DEVICE) => BusEvent::AddDevice,
            Ok(bindings::bus_notifier_event_BUS_NOTIFY_BOUND_DRIVER) => BusEvent::BoundDriver,
            _ => BusEvent::Other,
        };
        this.data.notify(event, pdev);
        // CAST: `NOTIFY_DONE` is 0.
        bindings::NOTIFY_DONE as c_int
    }
}

#[pinned_drop]
impl<T: BusNotify> PinnedDrop for BusNotifier<T> {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: By the type invariant `nb` is registered (or the registration failed, which
        // unregistering tolerates); after this the chain no longer calls it.
        unsafe {
            bindings::bus_unregister_notifier(&raw const bindings::pci_bus_type, self.nb.get())
        };
    }
}
