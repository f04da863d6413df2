// SPDX-License-Identifier: GPL-2.0

//! Runtime power management of a device.
//!
//! The PM core keeps a device active while its usage count is above zero and suspends it
//! (the bus puts it in a low power state) once the count drops to zero and userspace or the
//! driver allowed it. The counts taken and given back through these methods must balance, as
//! in C; a driver that lets its device suspend also implements the bus's runtime PM callbacks.
//!
//! C header: [`include/linux/pm_runtime.h`](srctree/include/linux/pm_runtime.h)

use crate::{
    bindings,
    device::{Bound, Device},
    error::{to_result, Result},
};

impl Device<Bound> {
    /// Lets the device suspend when it is idle (`pm_runtime_allow()`), as writing `auto` to
    /// its `power/control` does; gives back the usage count [`Device::pm_runtime_forbid`] took.
    pub fn pm_runtime_allow(&self) {
        // SAFETY: `self.as_raw()` is a valid device.
        #[cfg(CONFIG_PM)]
        unsafe {
            bindings::pm_runtime_allow(self.as_raw())
        };
    }

    /// Keeps the device active (`pm_runtime_forbid()`), as writing `on` to its `power/control`
    /// does: takes a usage count and resumes the device.
    pub fn pm_runtime_forbid(&self) {
        // SAFETY: `self.as_raw()` is a valid device.
        #[cfg(CONFIG_PM)]
        unsafe {
            bindings::pm_runtime_forbid(self.as_raw())
        };
    }

    /// Resumes the device and takes a usage count (`pm_runtime_resume_and_get()`); the count
    /// is only kept on success.
    pub fn pm_runtime_resume_and_get(&self) -> Result {
        // SAFETY: `self.as_raw()` is a valid device.
        to_result(unsafe { bindings::pm_runtime_resume_and_get(self.as_raw()) })
    }

    /// Gives back a usage count and lets the device suspend asynchronously if it was the last
    /// (`pm_runtime_put()`).
    pub fn pm_runtime_put(&self) {
        // SAFETY: `self.as_raw()` is a valid device.
        unsafe { bindings::pm_runtime_put(self.as_raw()) };
    }

    /// Takes a usage count without resuming the device (`pm_runtime_get_noresume()`).
    pub fn pm_runtime_get_noresume(&self) {
        // SAFETY: `self.as_raw()` is a valid device.
        unsafe { bindings::pm_runtime_get_noresume(self.as_raw()) };
    }

    /// Gives back a usage count without an idle check (`pm_runtime_put_noidle()`): the device
    /// suspends at the next [`Device::pm_runtime_put`] that finds the count at zero.
    pub fn pm_runtime_put_noidle(&self) {
        // SAFETY: `self.as_raw()` is a valid device.
        unsafe { bindings::pm_runtime_put_noidle(self.as_raw()) };
    }

    /// Resumes the device without taking a usage count (`pm_runtime_resume()`).
    pub fn pm_runtime_resume(&self) -> Result {
        // SAFETY: `self.as_raw()` is a valid device.
        let ret = unsafe { bindings::pm_runtime_resume(self.as_raw()) };
        // A positive value says the device was already active.
        to_result(ret.min(0))
    }

    /// Resumes the device and keeps it active until the returned guard is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// # use kernel::{device::{Bound, Device}, prelude::*};
    /// fn touch(dev: &Device<Bound>) -> Result {
    ///     let _active = dev.pm_runtime_active()?;
    ///     // The device is in its working state here.
    ///     Ok(())
    /// }
    /// ```
    pub fn pm_runtime_active(&self) -> Result<ActiveGuard<'_>> {
        self.pm_runtime_resume_and_get()?;
        // INVARIANT: `pm_runtime_resume_and_get()` succeeded, so it took a usage count.
        Ok(ActiveGuard(self))
    }
}

impl Device {
    /// Waits for the runtime PM callbacks of the device in progress (`pm_runtime_barrier()`).
    pub fn pm_runtime_barrier(&self) {
        // SAFETY: `self.as_raw()` is a valid device.
        #[cfg(CONFIG_PM)]
        unsafe {
            bindings::pm_runtime_barrier(self.as_raw())
        };
    }
}

/// A usage count of a device, given back with [`Device::pm_runtime_put`] on drop.
///
/// # Invariants
///
/// The guard holds one usage count of `self.0`.
pub struct ActiveGuard<'a>(&'a Device<Bound>);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        // The count the type invariant says is held.
        self.0.pm_runtime_put();
    }
}

/// A runtime PM callback (`runtime_suspend` or `runtime_resume`) of a device in progress.
///
/// The PM core runs these one at a time per device, and [`Device::pm_runtime_barrier`] waits
/// for the one in progress, which lets state shared with a callback be torn down safely.
///
/// # Invariants
///
/// The object only exists during a runtime PM callback of `self.0`, called by the PM core.
pub struct Callback<'a>(&'a Device);

impl<'a> Callback<'a> {
    /// Creates the proof of a callback of `dev` in progress.
    ///
    /// # Safety
    ///
    /// The caller is a runtime PM callback of `dev` that the PM core called, and the object
    /// does not outlive it.
    pub(crate) unsafe fn new(dev: &'a Device) -> Self {
        // INVARIANT: By the safety requirements.
        Self(dev)
    }

    /// The device whose callback runs.
    pub fn device(&self) -> &Device {
        self.0
    }
}
