// SPDX-License-Identifier: GPL-2.0

//! Eventfd contexts: the kernel side of an `eventfd(2)` file.
//!
//! C header: [`include/linux/eventfd.h`](srctree/include/linux/eventfd.h)

use crate::{bindings, error::from_err_ptr, prelude::*};
use core::ptr::NonNull;

/// A reference to an eventfd context (`struct eventfd_ctx`), taken from a file descriptor.
///
/// Signalling needs no lock and may happen in any context, including hard interrupts.
///
/// # Invariants
///
/// `self.0` points to a valid `struct eventfd_ctx` on which this object holds a reference.
pub struct EventFd(NonNull<bindings::eventfd_ctx>);

// SAFETY: An eventfd context is reference counted and its operations may run on any thread.
unsafe impl Send for EventFd {}

// SAFETY: `signal` is the only operation through `&EventFd`; it takes the context's own lock.
unsafe impl Sync for EventFd {}

impl EventFd {
    /// Takes a reference to the eventfd context of file descriptor `fd`
    /// (`eventfd_ctx_fdget()`).
    ///
    /// Fails with `EBADF` if `fd` is not open and `EINVAL` if it is not an eventfd.
    pub fn from_fd(fd: i32) -> Result<Self> {
        // SAFETY: `eventfd_ctx_fdget` accepts any value and returns a context with a reference
        // taken, or an error pointer.
        let ctx = from_err_ptr(unsafe { bindings::eventfd_ctx_fdget(fd) })?;
        // INVARIANT: `eventfd_ctx_fdget` succeeded, so `ctx` is valid and referenced.
        NonNull::new(ctx).map(Self).ok_or(EBADF)
    }

    /// Adds one to the counter and wakes up the waiters (`eventfd_signal()`).
    pub fn signal(&self) {
        // SAFETY: `self.0` is valid by the type invariant.
        unsafe { bindings::eventfd_signal_mask(self.0.as_ptr(), 0) };
    }

    /// Returns the raw context, for C APIs that match on it (e.g. irqbypass).
    pub fn as_raw(&self) -> *mut bindings::eventfd_ctx {
        self.0.as_ptr()
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: `self.0` is valid and this object's reference is given back here.
        unsafe { bindings::eventfd_ctx_put(self.0.as_ptr()) };
    }
}
