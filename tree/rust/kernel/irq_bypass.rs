// SPDX-License-Identifier: GPL-2.0

//! IRQ bypass producers: an interrupt that a consumer matched by the same eventfd (e.g. a KVM
//! irqfd) may take over, to deliver it to a guest without a trip through the host.
//!
//! C header: [`include/linux/irqbypass.h`](srctree/include/linux/irqbypass.h)

use crate::{bindings, eventfd::EventFd, pci::FunctionIrq, prelude::*, sync::Arc, types::Opaque};
use core::marker::PhantomPinned;

/// A registered IRQ bypass producer (`struct irq_bypass_producer`); unregistered on drop.
///
/// # Invariants
///
/// `producer` is registered for `eventfd` and the interrupt given to [`Producer::register`]
/// while the object exists. The eventfd is the producer's key in the bypass manager, so it is
/// kept referenced until then.
#[pin_data(PinnedDrop)]
pub struct Producer {
    #[pin]
    producer: Opaque<bindings::irq_bypass_producer>,
    eventfd: Arc<EventFd>,
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: The bypass manager serializes every use of the producer under its own mutex.
unsafe impl Send for Producer {}

// SAFETY: `&Producer` gives access to nothing.
unsafe impl Sync for Producer {}

impl Producer {
    /// Registers a producer for `irq`, signalled through `eventfd`
    /// (`irq_bypass_register_producer()`), and connects it to a waiting consumer.
    pub fn register(eventfd: Arc<EventFd>, irq: &FunctionIrq) -> Result<Pin<KBox<Self>>> {
        let irq = i32::try_from(irq.number())?;
        KBox::try_pin_init(
            try_pin_init!(&this in Self {
                producer: Opaque::zeroed(),
                eventfd,
                _pin: PhantomPinned,
                _: {
                    // SAFETY: `this` is pinned, its producer zeroed as the C API requires, and it
                    // stays valid until drop unregisters it. The eventfd is referenced by `this`.
                    crate::error::to_result(unsafe {
                        bindings::irq_bypass_register_producer(
                            (*this.as_ptr()).producer.get(),
                            (*this.as_ptr()).eventfd.as_raw(),
                            irq,
                        )
                    })?;
                },
            }),
            GFP_KERNEL,
        )
    }
}

#[pinned_drop]
impl PinnedDrop for Producer {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: The producer is registered by the type invariant.
        unsafe { bindings::irq_bypass_unregister_producer(self.producer.get()) };
    }
}
