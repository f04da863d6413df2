// SPDX-License-Identifier: GPL-2.0

//! Interrupts of a function passed through to userspace: the INTx line and MSI/MSI-X vectors
//! that a driver sets up and tears down on the user's request, across many calls.
//!
//! Unlike [`Device::alloc_irq_vectors`] and [`crate::irq::Registration`], whose lifetimes end
//! with the borrow of the bound device, these objects are kept in the driver's state between
//! calls. They are [`Devres`]-managed, so they are freed when the driver drops them or, at the
//! latest, when the device unbinds.
//!
//! C header: [`include/linux/pci.h`](srctree/include/linux/pci.h)

use super::Device;
use crate::{
    bindings,
    device::Bound,
    devres::Devres,
    error::to_result,
    irq::{Flags, Handler, IrqReturn},
    prelude::*,
    str::CString,
    sync::{aref::ARef, Arc},
};
use core::marker::PhantomPinned;

/// MSI or MSI-X vectors allocated for a function (`pci_alloc_irq_vectors()`).
///
/// Freed (`pci_free_irq_vectors()`) when dropped. Every [`IrqHandler`] on one of them holds a
/// reference to the allocation, so the vectors outlive their handlers.
///
/// # Invariants
///
/// `pdev` is bound and has `count` vectors of the MSI-X kind if `msix`, else MSI, allocated by
/// this object, until it is dropped. The object lives in a [`Devres`], so it is dropped before
/// `pdev` unbinds.
pub struct MsiVectors {
    pdev: ARef<Device>,
    count: u32,
    msix: bool,
}

impl MsiVectors {
    /// The number of vectors allocated, between 1 and the number asked for.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether these are MSI-X vectors.
    pub fn is_msix(&self) -> bool {
        self.msix
    }
}

impl Drop for MsiVectors {
    fn drop(&mut self) {
        // SAFETY: By the type invariant, `pdev` is bound and its vectors were allocated here;
        // the handlers on them were freed before, as each holds a reference to `self`.
        unsafe { bindings::pci_free_irq_vectors(self.pdev.as_raw()) };
    }
}

/// The Linux interrupt of a function: its INTx line or an allocated MSI/MSI-X vector.
///
/// # Invariants
///
/// `irq` is an interrupt of `pdev`; if it is a vector, `vectors` holds its allocation.
pub struct FunctionIrq {
    irq: u32,
    /// Held for the vector's allocation, not read.
    _vectors: Option<Arc<Devres<MsiVectors>>>,
}

impl FunctionIrq {
    /// The Linux interrupt number.
    pub fn number(&self) -> u32 {
        self.irq
    }
}

impl Device<Bound> {
    /// Allocates between 1 and `count` MSI-X (`msix`) or MSI vectors (`pci_alloc_irq_vectors()`).
    ///
    /// The result may hold fewer vectors than asked for; [`MsiVectors::count`] tells.
    pub fn alloc_msi_vectors(&self, count: u32, msix: bool) -> Result<Arc<Devres<MsiVectors>>> {
        let kind = if msix {
            bindings::PCI_IRQ_MSIX
        } else {
            bindings::PCI_IRQ_MSI
        };
        // SAFETY: `self.as_raw()` is a valid, bound `pci_dev`.
        let ret = unsafe { bindings::pci_alloc_irq_vectors(self.as_raw(), 1, count, kind) };
        to_result(ret)?;
        // INVARIANT: `ret` vectors of `kind` were allocated and are freed when this is dropped,
        // which Devres does before unbind at the latest.
        let vectors = MsiVectors {
            pdev: self.into(),
            count: ret.unsigned_abs(),
            msix,
        };
        Ok(Arc::new(Devres::new(self.as_ref(), vectors)?, GFP_KERNEL)?)
    }

    /// Whether MSI-X vectors may be added while MSI-X is enabled
    /// (`pci_msix_can_alloc_dyn()`).
    pub fn msix_can_alloc_dyn(&self) -> bool {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        unsafe { bindings::pci_msix_can_alloc_dyn(self.as_raw()) }
    }

    /// The interrupt of vector `index` of `vectors` (`pci_irq_vector()`), allocating it if
    /// it does not exist and MSI-X allows it (`pci_msix_alloc_irq_at()`). A dynamically
    /// allocated vector stays allocated until `vectors` is freed.
    pub fn msi_vector(
        &self,
        vectors: &Arc<Devres<MsiVectors>>,
        index: u32,
        alloc_dyn: bool,
    ) -> Result<FunctionIrq> {
        let alloc = vectors.access(self.as_ref())?;
        // The vectors are of this function.
        if alloc.pdev.as_raw() != self.as_raw() {
            return Err(EINVAL);
        }
        // SAFETY: `self.as_raw()` is a valid `pci_dev` with vectors allocated.
        let irq = unsafe { bindings::pci_irq_vector(self.as_raw(), index) };
        let irq = if irq > 0 {
            irq
        } else if irq == 0 {
            return Err(EINVAL);
        } else if !alloc.msix || !alloc_dyn {
            return Err(Error::from_errno(irq));
        } else {
            // SAFETY: MSI-X is enabled on `self` by `alloc`; a null affinity is allowed.
            let map =
                unsafe { bindings::pci_msix_alloc_irq_at(self.as_raw(), index, core::ptr::null()) };
            if map.index < 0 {
                return Err(Error::from_errno(map.index));
            }
            map.virq
        };
        // INVARIANT: `irq` is a vector of `self`, whose allocation the result holds.
        Ok(FunctionIrq {
            irq: irq.unsigned_abs(),
            _vectors: Some(vectors.clone()),
        })
    }

    /// Rewrites the MSI-X message of `irq` into the table from the cached copy, in case a
    /// reset cleared it (`get_cached_msi_msg()`, `pci_write_msi_msg()`).
    pub fn msix_refresh_message(&self, irq: &FunctionIrq) {
        let mut msg = bindings::msi_msg::default();
        // SAFETY: `irq.irq` is an MSI interrupt of a bound function, by the invariant of
        // `FunctionIrq`; `msg` is a valid `msi_msg` to fill.
        unsafe {
            bindings::get_cached_msi_msg(irq.irq, &mut msg);
            bindings::pci_write_msi_msg(irq.irq, &mut msg);
        }
    }

    /// The INTx interrupt line of the function, if it has one connected.
    pub fn intx_line(&self) -> Option<FunctionIrq> {
        // INVARIANT: `intx_irq` is the function's own line.
        self.intx_irq().map(|irq| FunctionIrq {
            irq,
            _vectors: None,
        })
    }
}

impl Device {
    /// Masks INTx if the function has it pending (`pci_check_and_mask_intx()`); returns
    /// whether it did. For a handler on a shared line.
    pub fn check_and_mask_intx(&self) -> bool {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`; the call takes `pci_lock`.
        unsafe { bindings::pci_check_and_mask_intx(self.as_raw()) }
    }

    /// Unmasks INTx unless the function has it pending (`pci_check_and_unmask_intx()`);
    /// returns whether it did.
    pub fn check_and_unmask_intx(&self) -> bool {
        // SAFETY: As above.
        unsafe { bindings::pci_check_and_unmask_intx(self.as_raw()) }
    }

    /// Sets or clears `PCI_COMMAND_INTX_DISABLE` (`pci_intx()`), in any context.
    pub fn set_intx_enabled(&self, enable: bool) {
        // SAFETY: `self.as_raw()` is a valid `pci_dev`.
        unsafe { bindings::pci_intx(self.as_raw(), enable.into()) };
    }
}

/// A handler registered on a [`FunctionIrq`] (`request_irq()`), freed on drop (`free_irq()`).
///
/// # Invariants
///
/// While the object exists, `handler` is registered on `irq` with the object's address as
/// cookie and `name` as name. It lives in a [`Devres`], so it is freed before the function
/// unbinds.
#[pin_data(PinnedDrop)]
pub struct IrqHandler<T: Handler + Send + 'static> {
    irq: FunctionIrq,
    name: CString,
    #[pin]
    handler: T,
    #[pin]
    _pin: PhantomPinned,
}

impl<T: Handler + Send + 'static> IrqHandler<T> {
    /// Registers `handler` on `irq` of `pdev`, named `name` in /proc/interrupts.
    pub fn register(
        pdev: &Device<Bound>,
        irq: FunctionIrq,
        flags: Flags,
        name: CString,
        handler: T,
    ) -> Result<Devres<Self>> {
        Devres::new(
            pdev.as_ref(),
            try_pin_init!(&this in Self {
                handler,
                irq,
                name,
                _pin: PhantomPinned,
                _: {
                    // SAFETY: `this` stays pinned and valid until `drop` frees the handler;
                    // every field is initialized, so the callback may run at once. `irq` is
                    // an interrupt of the bound `pdev`.
                    to_result(unsafe {
                        bindings::request_irq(
                            (*this.as_ptr()).irq.irq,
                            Some(handle_irq::<T>),
                            flags.into_inner(),
                            (*this.as_ptr()).name.as_char_ptr(),
                            this.as_ptr().cast(),
                        )
                    })?;
                },
            }),
        )
    }

    /// The handler.
    pub fn handler(&self) -> &T {
        &self.handler
    }

    /// The interrupt the handler is registered on.
    pub fn irq(&self) -> &FunctionIrq {
        &self.irq
    }
}

#[pinned_drop]
impl<T: Handler + Send + 'static> PinnedDrop for IrqHandler<T> {
    fn drop(self: Pin<&mut Self>) {
        let irq = self.irq.irq;
        // SAFETY: By the type invariant the handler is registered with this cookie; `free_irq`
        // waits for running handlers, so none refers to `self` afterwards.
        unsafe { bindings::free_irq(irq, core::ptr::from_ref(&*self).cast_mut().cast()) };
    }
}

/// # Safety
///
/// `ptr` must be the cookie of a registered [`IrqHandler<T>`].
unsafe extern "C" fn handle_irq<T: Handler + Send + 'static>(
    _irq: i32,
    ptr: *mut c_void,
) -> bindings::irqreturn_t {
    // SAFETY: The cookie points to a pinned, registered `IrqHandler<T>`, valid until
    // `free_irq` returns.
    let registration = unsafe { &*ptr.cast::<IrqHandler<T>>() };
    match registration.handler.handle() {
        IrqReturn::None => bindings::irqreturn::IRQ_NONE,
        IrqReturn::Handled => bindings::irqreturn::IRQ_HANDLED,
    }
}

/// Masking of an exclusive INTx line at the interrupt chip, for functions without PCI 2.3
/// INTx masking.
///
/// # Invariants
///
/// `irq` is the INTx line of a function, on which the holder registers an exclusive handler.
pub struct ExclusiveIntx {
    irq: u32,
}

impl ExclusiveIntx {
    /// Prepares `line` for masking at the chip: disabling takes effect at once
    /// (`IRQ_DISABLE_UNLAZY`). Undone on drop.
    pub fn new(line: &FunctionIrq) -> Self {
        // SAFETY: `line.irq` is a valid interrupt; only its status flags change.
        unsafe { bindings::irq_modify_status(line.irq, 0, bindings::IRQ_DISABLE_UNLAZY as usize) };
        Self { irq: line.irq }
    }

    /// Masks the line without waiting for handlers (`disable_irq_nosync()`), e.g. from its
    /// own handler.
    pub fn disable_nosync(&self) {
        // SAFETY: `self.irq` is a valid interrupt by the type invariant.
        unsafe { bindings::disable_irq_nosync(self.irq) };
    }

    /// Unmasks the line (`enable_irq()`); pairs with one [`Self::disable_nosync`].
    pub fn enable(&self) {
        // SAFETY: `self.irq` is a valid interrupt by the type invariant.
        unsafe { bindings::enable_irq(self.irq) };
    }
}

impl Drop for ExclusiveIntx {
    fn drop(&mut self) {
        // SAFETY: `self.irq` is a valid interrupt; this undoes `new`.
        unsafe { bindings::irq_modify_status(self.irq, bindings::IRQ_DISABLE_UNLAZY as usize, 0) };
    }
}
