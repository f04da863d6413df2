// SPDX-License-Identifier: GPL-2.0

//! Enable state, power state, saved config state and resets of a bound PCI function.
//!
//! These are the operations a driver that hands a function to userspace (VFIO) performs when
//! the function is opened and closed.
//!
//! C header: [`include/linux/pci.h`](srctree/include/linux/pci.h)

use super::Device;
use crate::{
    bindings, device,
    error::to_result,
    ffi::{c_int, c_void},
    prelude::*,
};
use core::ptr::NonNull;

/// A PCI power state (`pci_power_t`).
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
#[repr(i32)]
pub enum PowerState {
    // The `PCI_D*` macros are `__force` casts that bindgen does not evaluate.
    /// Fully on.
    D0 = 0,
    /// Light sleep.
    D1 = 1,
    /// Deeper sleep.
    D2 = 2,
    /// Software-visible off state.
    D3Hot = 3,
    /// Power removed.
    D3Cold = 4,
    /// Not known to the PCI core, e.g. before a driver first sets it.
    Unknown = 5,
}

impl PowerState {
    /// Converts a `pci_power_t`; values out of range are [`PowerState::Unknown`].
    pub(crate) fn from_raw(state: i32) -> Self {
        match state {
            0 => Self::D0,
            1 => Self::D1,
            2 => Self::D2,
            3 => Self::D3Hot,
            4 => Self::D3Cold,
            _ => Self::Unknown,
        }
    }
}

/// A function's config state stored by `pci_store_saved_state()`.
///
/// # Invariants
///
/// `ptr` was returned by `pci_store_saved_state()` and is owned by `self`.
pub struct SavedState {
    ptr: NonNull<bindings::pci_saved_state>,
}

// SAFETY: A saved state is a plain heap buffer, not tied to a thread.
unsafe impl Send for SavedState {}
// SAFETY: `&SavedState` gives no access to the buffer.
unsafe impl Sync for SavedState {}

impl Drop for SavedState {
    fn drop(&mut self) {
        // SAFETY: By the type invariant, `ptr` is an owned `kmalloc()` buffer.
        unsafe { bindings::kfree(self.ptr.as_ptr().cast()) };
    }
}

/// The device lock of a PCI function, taken with `pci_dev_trylock()`.
///
/// # Invariants
///
/// The lock of `pdev` is held and released on drop.
pub struct DeviceLockGuard<'a> {
    pdev: &'a Device,
}

impl DeviceLockGuard<'_> {
    /// Resets the function with its lock held (`__pci_reset_function_locked()`).
    pub fn reset_function(&self) -> Result {
        // SAFETY: By the type invariant the device lock is held.
        to_result(unsafe { bindings::__pci_reset_function_locked(self.pdev.as_raw()) })
    }
}

impl Drop for DeviceLockGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant the lock is held by us.
        unsafe { bindings::pci_dev_unlock(self.pdev.as_raw()) };
    }
}

impl Device {
    /// Tries to take the function's device lock (`pci_dev_trylock()`).
    pub fn try_lock(&self) -> Option<DeviceLockGuard<'_>> {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        if unsafe { bindings::pci_dev_trylock(self.as_raw()) } != 0 {
            // INVARIANT: The lock was just taken.
            Some(DeviceLockGuard { pdev: self })
        } else {
            None
        }
    }

    /// Returns the bridge upstream of this function, if any (`pci_upstream_bridge()`).
    pub fn upstream_bridge(&self) -> Option<&Device> {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        let bridge = unsafe { bindings::pci_upstream_bridge(self.as_raw()) };
        // SAFETY: The upstream bridge of a function outlives the function.
        NonNull::new(bridge).map(|p| unsafe { &*p.as_ptr().cast::<Device>() })
    }

    /// Returns the physical function of an SR-IOV VF, or the function itself (`pci_physfn()`).
    pub fn physfn(&self) -> &Device {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`; a VF's PF outlives the VF.
        unsafe { &*bindings::pci_physfn(self.as_raw()).cast::<Device>() }
    }

    /// Returns `true` for a function on a root bus.
    pub fn is_on_root_bus(&self) -> bool {
        // SAFETY: `self.as_raw()` is a valid `pci_dev` with a valid `bus`.
        unsafe { bindings::pci_is_root_bus((*self.as_raw()).bus) }
    }

    /// Returns `true` for an SR-IOV virtual function.
    pub fn is_virtfn(&self) -> bool {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        unsafe { (*self.as_raw()).is_virtfn() != 0 }
    }

    /// Returns the function's slot if the slot can be reset (`pci_probe_reset_slot()`).
    ///
    /// The pointer identifies the slot; the slot lives as long as the function.
    pub(crate) fn slot_if_resettable(&self) -> Option<NonNull<bindings::pci_slot>> {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`; `slot` is null or its valid slot.
        let slot = unsafe { (*self.as_raw()).slot };
        // SAFETY: `pci_probe_reset_slot()` accepts a null or valid slot and only probes.
        if unsafe { bindings::pci_probe_reset_slot(slot) } == 0 {
            NonNull::new(slot)
        } else {
            None
        }
    }

    /// Returns the function's bus. The pointer identifies the bus, which outlives the function.
    pub(crate) fn bus_ptr(&self) -> *mut bindings::pci_bus {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        unsafe { (*self.as_raw()).bus }
    }

    /// Returns the header type (`PCI_HEADER_TYPE_*`) of the function.
    pub fn header_type(&self) -> u8 {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        unsafe { (*self.as_raw()).hdr_type }
    }

    /// Returns the number of enabled SR-IOV VFs (`pci_num_vf()`).
    pub fn num_vf(&self) -> u32 {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        let n = unsafe { bindings::pci_num_vf(self.as_raw()) };
        n.try_into().unwrap_or(0)
    }

    /// Reads a dword of the PCI Express capability (`pcie_capability_read_dword()`).
    ///
    /// Registers the function does not implement read as zero, as in C.
    pub fn pcie_capability_read_dword(&self, pos: u16) -> u32 {
        let mut val = 0u32;
        // SAFETY: `self.as_raw()` is a valid `pci_dev` and `val` is a valid output.
        unsafe { bindings::pcie_capability_read_dword(self.as_raw(), pos.into(), &mut val) };
        val
    }
    /// Tries to let the function issue AtomicOps of `cap_mask` (`PCI_EXP_DEVCAP2_ATOMIC_*`)
    /// towards the root port (`pci_enable_atomic_ops_to_root()`).
    ///
    /// vfio-pci calls this on the PF of a VF it drives, which is not bound to it.
    pub fn enable_atomic_ops_to_root(&self, cap_mask: u32) -> Result {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`; the call only reads the upstream path
        // and sets the AtomicOp Requester Enable bit under the PCI core's locking.
        to_result(unsafe { bindings::pci_enable_atomic_ops_to_root(self.as_raw(), cap_mask) })
    }
}

impl Device<device::Bound> {
    /// Enables I/O and memory decoding and wakes the function (`pci_enable_device()`).
    ///
    /// Every successful call must be balanced by [`Device::disable_device`].
    pub fn enable_device(&self) -> Result {
        // SAFETY: `self.as_raw()` is a valid `pci_dev` bound to the caller's driver.
        to_result(unsafe { bindings::pci_enable_device(self.as_raw()) })
    }

    /// Drops one enable of [`Device::enable_device`] (`pci_disable_device()`).
    pub fn disable_device(&self) {
        // SAFETY: `self.as_raw()` is a valid `pci_dev` bound to the caller's driver.
        unsafe { bindings::pci_disable_device(self.as_raw()) };
    }

    /// Disables bus mastering (`pci_clear_master()`).
    pub fn clear_master(&self) {
        // SAFETY: `self.as_raw()` is a valid `pci_dev` bound to the caller's driver.
        unsafe { bindings::pci_clear_master(self.as_raw()) };
    }

    /// Sets the power state (`pci_set_power_state()`).
    pub fn set_power_state(&self, state: PowerState) -> Result {
        // SAFETY: `self.as_raw()` is a valid `pci_dev` bound to the caller's driver.
        to_result(unsafe { bindings::pci_set_power_state(self.as_raw(), state as i32) })
    }

    /// Resets the function if its lock can be taken (`pci_try_reset_function()`).
    ///
    /// Fails with `EAGAIN` if the device lock is contended.
    pub fn try_reset_function(&self) -> Result {
        // SAFETY: `self.as_raw()` is a valid `pci_dev` bound to the caller's driver.
        to_result(unsafe { bindings::pci_try_reset_function(self.as_raw()) })
    }

    /// Saves the config state into the device (`pci_save_state()`).
    pub fn save_state(&self) {
        // SAFETY: `self.as_raw()` is a valid `pci_dev` bound to the caller's driver.
        unsafe { bindings::pci_save_state(self.as_raw()) };
    }

    /// Restores the config state saved in the device (`pci_restore_state()`).
    pub fn restore_state(&self) {
        // SAFETY: `self.as_raw()` is a valid `pci_dev` bound to the caller's driver.
        unsafe { bindings::pci_restore_state(self.as_raw()) };
    }

    /// Copies the state saved in the device out (`pci_store_saved_state()`).
    pub fn store_saved_state(&self) -> Option<SavedState> {
        // SAFETY: `self.as_raw()` is a valid `pci_dev` bound to the caller's driver.
        let ptr = unsafe { bindings::pci_store_saved_state(self.as_raw()) };
        // INVARIANT: A non-null result is a buffer now owned by the `SavedState`.
        NonNull::new(ptr).map(|ptr| SavedState { ptr })
    }

    /// Loads `state` back into the device, to be applied by [`Device::restore_state`]
    /// (`pci_load_and_free_saved_state()`); with `None` the device forgets its saved state.
    pub fn load_saved_state(&self, state: Option<SavedState>) -> Result {
        let mut ptr = state.map_or(core::ptr::null_mut(), |state| {
            let ptr = state.ptr.as_ptr();
            core::mem::forget(state);
            ptr
        });
        // SAFETY: `self.as_raw()` is a valid `pci_dev` bound to the caller's driver; `ptr` is
        // null or an owned saved state, which the call frees.
        to_result(unsafe { bindings::pci_load_and_free_saved_state(self.as_raw(), &mut ptr) })
    }
}

/// What a slot or bus reset of a function resets (`pci_probe_reset_slot()`,
/// `pci_probe_reset_bus()`).
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum ResetScope {
    /// The function's slot can be reset: the functions below the slot.
    Slot,
    /// The function's bus can be reset: every function below the bus.
    Bus,
}

impl Device {
    /// The reset that reaches beyond the function, if any: its slot's, else its bus's.
    pub fn reset_scope(&self) -> Option<ResetScope> {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`; `slot` is null or valid, and
        // `pci_probe_reset_slot()` accepts both; it only probes.
        if unsafe { bindings::pci_probe_reset_slot((*self.as_raw()).slot) } == 0 {
            return Some(ResetScope::Slot);
        }
        // SAFETY: `bus` of a valid `pci_dev` is valid; the call only probes.
        if unsafe { bindings::pci_probe_reset_bus((*self.as_raw()).bus) } == 0 {
            return Some(ResetScope::Bus);
        }
        None
    }

    /// Calls `f` for every function that a reset of `scope` of this function reaches,
    /// stopping at the first error (`pci_walk_bus()`, filtered to the slot for a slot reset).
    ///
    /// `f` runs with the PCI bus semaphore held for reading: it must not add or remove devices.
    pub fn for_each_in_reset_scope(
        &self,
        scope: ResetScope,
        mut f: impl FnMut(&Device) -> Result,
    ) -> Result {
        struct Walk<'a> {
            f: &'a mut dyn FnMut(&Device) -> Result,
            slot: Option<*mut bindings::pci_slot>,
            ret: Result,
        }

        /// # Safety
        ///
        /// `pdev` is a valid `pci_dev` and `data` the `Walk` passed to `pci_walk_bus()`.
        unsafe extern "C" fn visit(pdev: *mut bindings::pci_dev, data: *mut c_void) -> c_int {
            // SAFETY: By the safety requirements `data` is the `Walk` on the caller's stack.
            let walk = unsafe { &mut *data.cast::<Walk<'_>>() };
            // SAFETY: `pdev` is valid during the walk, which holds the bus semaphore.
            let below = walk
                .slot
                .is_none_or(|slot| unsafe { dev_below_slot(pdev, slot) });
            if below {
                // SAFETY: `pdev` is a valid `pci_dev` for the duration of the callback, and
                // `Device` is a transparent wrapper of it.
                walk.ret = (walk.f)(unsafe { &*pdev.cast::<Device>() });
            }
            c_int::from(walk.ret.is_err())
        }

        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        let slot = (scope == ResetScope::Slot).then(|| unsafe { (*self.as_raw()).slot });
        let mut walk = Walk {
            f: &mut f,
            slot,
            ret: Ok(()),
        };
        // SAFETY: `bus` of a valid `pci_dev` is valid; `visit` matches the callback type and
        // `walk` outlives the call.
        unsafe {
            bindings::pci_walk_bus(
                (*self.as_raw()).bus,
                Some(visit),
                (&raw mut walk).cast(),
            )
        };
        walk.ret
    }

    /// The PCI domain (segment) of the function's bus (`pci_domain_nr()`).
    pub fn domain_nr(&self) -> u16 {
        // SAFETY: `bus` of a valid `pci_dev` is valid.
        let nr = unsafe { bindings::pci_domain_nr((*self.as_raw()).bus) };
        // CAST: PCI segments are 16 bits, as `struct vfio_pci_dependent_device` stores them.
        nr as u16
    }

    /// The number of the function's bus.
    pub fn bus_number(&self) -> u8 {
        // SAFETY: `bus` of a valid `pci_dev` is valid.
        unsafe { (*(*self.as_raw()).bus).number }
    }

    /// The device and function number (`devfn`).
    pub fn devfn(&self) -> u8 {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        unsafe { (*self.as_raw()).devfn as u8 }
    }

    /// The ID of the function's IOMMU group, or `None` if it has none (is not isolated).
    pub fn iommu_group_id(&self) -> Option<i32> {
        // SAFETY: `self.as_raw()` is a valid `pci_dev` with an embedded `struct device`.
        let group = unsafe { bindings::iommu_group_get(&raw mut (*self.as_raw()).dev) };
        if group.is_null() {
            return None;
        }
        // SAFETY: `group` is a reference we own until `iommu_group_put()`.
        let id = unsafe { bindings::iommu_group_id(group) };
        // SAFETY: Drops the reference `iommu_group_get()` took.
        unsafe { bindings::iommu_group_put(group) };
        Some(id)
    }
}

/// Whether `pdev` sits below `slot` (`vfio_pci_dev_below_slot()`).
///
/// # Safety
///
/// `pdev` and `slot` must be valid, and the bus topology stable (bus semaphore held).
unsafe fn dev_below_slot(mut pdev: *mut bindings::pci_dev, slot: *mut bindings::pci_slot) -> bool {
    while !pdev.is_null() {
        // SAFETY: By the safety requirements `pdev`, its bus and `slot` are valid.
        unsafe {
            if (*pdev).bus == (*slot).bus {
                return (*pdev).slot == slot;
            }
            pdev = (*(*pdev).bus).self_;
        }
    }
    false
}

impl Device<device::Bound> {
    /// Resets the slot or bus of the function, and so every function it reaches
    /// (`pci_reset_bus()`).
    pub fn reset_bus(&self) -> Result {
        // SAFETY: `self.as_raw()` is a valid `pci_dev` bound to the caller's driver.
        to_result(unsafe { bindings::pci_reset_bus(self.as_raw()) })
    }
}
