// SPDX-License-Identifier: GPL-2.0

//! Interrupts: INTx, MSI and MSI-X through eventfds, ERR and REQ notifiers, as
//! `vfio_pci_intrs.c`.
//!
//! Locking: `igate` (the [`IrqState`] mutex) serializes every change of the interrupt setup.
//! It nests inside `config` (config writes mask INTx) and outside `memory_lock` (MSI-X table
//! access needs memory decode). The INTx mask state and trigger are also reached from the
//! interrupt handler and the unmask eventfd, so they sit under spinlocks of their own; the
//! trigger is signalled without holding the mask lock, as an eventfd wakeup may call the unmask
//! handler, which takes it.

use core::{
    mem::{offset_of, size_of},
    sync::atomic::{AtomicBool, AtomicU8, Ordering},
};
use kernel::{
    device::Bound,
    devres::Devres,
    eventfd::EventFd,
    io::Io,
    irq::{self, IrqReturn},
    irq_bypass, new_spinlock_irq, pci,
    prelude::*,
    str::CString,
    sync::{aref::ARef, Arc, Mutex, SpinLockIrq},
    uaccess::{UserPtr, UserSlice},
    uapi,
    vfio::{self, IrqSetData, Virqfd, VirqfdHandler},
};

use crate::{vfio_pci_priv::IntxMasking, MemoryEnabled, VfioPciCore};

/// The interrupt indexes of `VFIO_DEVICE_GET_IRQ_INFO` and `VFIO_DEVICE_SET_IRQS`.
const INTX: u32 = uapi::VFIO_PCI_INTX_IRQ_INDEX;
const MSI: u32 = uapi::VFIO_PCI_MSI_IRQ_INDEX;
const MSIX: u32 = uapi::VFIO_PCI_MSIX_IRQ_INDEX;
const ERR: u32 = uapi::VFIO_PCI_ERR_IRQ_INDEX;
const REQ: u32 = uapi::VFIO_PCI_REQ_IRQ_INDEX;

/// What the interrupt code shares with the config code, which changes or reads it without
/// `igate`.
pub(crate) struct IrqShared {
    /// The user set INTx disable in the virtual COMMAND register (`virq_disabled`): INTx stays
    /// masked and is not signalled.
    pub(crate) virq_disabled: AtomicBool,
    /// log2 of the MSI vectors enabled (`msi_qmax`), for the virtual MSI flags.
    pub(crate) msi_qmax: AtomicU8,
    /// MSI is the enabled interrupt type (`irq_type == VFIO_PCI_MSI_IRQ_INDEX`).
    pub(crate) msi_enabled: AtomicBool,
}

impl IrqShared {
    pub(crate) fn new() -> Result<Arc<Self>> {
        Ok(Arc::new(
            Self {
                virq_disabled: AtomicBool::new(false),
                msi_qmax: AtomicU8::new(0),
                msi_enabled: AtomicBool::new(false),
            },
            GFP_KERNEL,
        )?)
    }
}

/// How the INTx line of an enabled function is masked.
enum IntxMask {
    /// With `PCI_COMMAND_INTX_DISABLE`; the line may be shared (`pci_2_3`).
    Command,
    /// At the interrupt chip, on an exclusive line.
    Line(pci::ExclusiveIntx),
}

/// INTx of an enabled function, shared by its interrupt handler, its unmask eventfd and the
/// ioctls.
#[pin_data]
struct IntxLine {
    pdev: ARef<pci::Device>,
    shared: Arc<IrqShared>,
    mask: IntxMask,
    /// The line is masked, by the handler, the user or INTx disable (`ctx->masked`).
    #[pin]
    masked: SpinLockIrq<bool>,
    /// The eventfd signalled for each interrupt (`ctx->trigger`).
    #[pin]
    trigger: SpinLockIrq<Option<EventFd>>,
}

impl IntxLine {
    /// Signals the trigger unless INTx is disabled (`vfio_send_intx_eventfd()`).
    fn send(&self) {
        if !self.shared.virq_disabled.load(Ordering::Relaxed) {
            if let Some(trigger) = self.trigger.lock().as_ref() {
                trigger.signal();
            }
        }
    }

    /// Masks the line if it is not (`__vfio_pci_intx_mask()`); returns whether it changed.
    fn mask(&self) -> bool {
        let mut masked = self.masked.lock();
        if *masked {
            return false;
        }
        match &self.mask {
            IntxMask::Command => self.pdev.set_intx_enabled(false),
            IntxMask::Line(line) => line.disable_nosync(),
        }
        *masked = true;
        true
    }

    /// Unmasks the line unless INTx is disabled (`vfio_pci_intx_unmask_handler()`). Returns
    /// whether an interrupt was pending, which the caller then signals: the line stays masked
    /// and the user sees the interrupt at once.
    fn unmask(&self) -> bool {
        let mut masked = self.masked.lock();
        if !*masked || self.shared.virq_disabled.load(Ordering::Relaxed) {
            return false;
        }
        let pending = match &self.mask {
            IntxMask::Command => !self.pdev.check_and_unmask_intx(),
            IntxMask::Line(line) => {
                line.enable();
                false
            }
        };
        *masked = pending;
        pending
    }
}

/// The INTx interrupt handler (`vfio_intx_handler()`).
struct IntxHandler(Arc<IntxLine>);

impl irq::Handler for IntxHandler {
    fn handle(&self) -> IrqReturn {
        let line = &*self.0;
        let handled = {
            let mut masked = line.masked.lock();
            match &line.mask {
                IntxMask::Line(exclusive) => {
                    exclusive.disable_nosync();
                    *masked = true;
                    true
                }
                // The line may be shared: only an interrupt of this function is handled.
                IntxMask::Command if !*masked && line.pdev.check_and_mask_intx() => {
                    *masked = true;
                    true
                }
                IntxMask::Command => false,
            }
        };
        if !handled {
            return IrqReturn::None;
        }
        line.send();
        IrqReturn::Handled
    }
}

/// The unmask eventfd of INTx: unmasks in the wakeup, signals a pending interrupt from a
/// workqueue, as an eventfd cannot be signalled from another's wakeup.
struct IntxUnmask(Arc<IntxLine>);

impl VirqfdHandler for IntxUnmask {
    fn handle(&self) -> bool {
        self.0.unmask()
    }

    fn thread(&self) {
        self.0.send();
    }
}

/// Enabled INTx. Dropping it tears INTx down in C's order: the unmask eventfd, then the
/// handler, then the line and the trigger (`vfio_intx_disable()`).
struct Intx {
    unmask: Pin<KBox<Virqfd<IntxUnmask>>>,
    _handler: Devres<pci::IrqHandler<IntxHandler>>,
    line: Arc<IntxLine>,
}

/// The MSI and MSI-X interrupt handler (`vfio_msihandler()`).
struct MsiHandler(Arc<EventFd>);

impl irq::Handler for MsiHandler {
    fn handle(&self) -> IrqReturn {
        self.0.signal();
        IrqReturn::Handled
    }
}

/// An MSI or MSI-X vector with a trigger eventfd (`struct vfio_pci_irq_ctx`). Fields drop in
/// order: the bypass producer before the handler, as C unregisters them.
struct MsiVector {
    _producer: Option<Pin<KBox<irq_bypass::Producer>>>,
    _handler: Devres<pci::IrqHandler<MsiHandler>>,
    trigger: Arc<EventFd>,
}

/// Enabled MSI or MSI-X.
struct Msi {
    msix: bool,
    /// The vectors' triggers by vector number (the `ctx` xarray).
    vectors: KVec<Option<MsiVector>>,
    /// The allocation, freed after every vector's handler.
    alloc: Arc<Devres<pci::MsiVectors>>,
}

/// The interrupt type the user enabled (`irq_type`).
#[derive(Default)]
enum IrqMode {
    #[default]
    None,
    Intx(Intx),
    Msi(Msi),
}

impl IrqMode {
    fn index(&self) -> Option<u32> {
        match self {
            Self::None => None,
            Self::Intx(_) => Some(INTX),
            Self::Msi(msi) if msi.msix => Some(MSIX),
            Self::Msi(_) => Some(MSI),
        }
    }
}

/// What `igate` guards.
#[derive(Default)]
pub(crate) struct IrqState {
    mode: IrqMode,
    /// How INTx of the open function is masked; set at open.
    intx_masking: Option<IntxMasking>,
}

/// The ERR and REQ notifiers (`err_trigger`, `req_trigger`). Read by AER and the unregister
/// path without `igate`.
#[derive(Default)]
pub(crate) struct Notifiers {
    err: Option<EventFd>,
    req: Option<EventFd>,
}

/// Reads the `i32` or `u8` of interrupt `i` from the data of a `VFIO_DEVICE_SET_IRQS` call.
fn data_fd(data: &[u8], i: usize) -> i32 {
    let at = i * size_of::<i32>();
    i32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

/// `true` if the `DATA_BOOL` byte of interrupt `i` is set.
fn data_bool(data: &[u8], i: usize) -> bool {
    data[i] != 0
}

impl VfioPciCore {
    /// Prepares the interrupt state at open (`pci_2_3`, `nointx`).
    pub(crate) fn irq_open(&self, intx: IntxMasking) {
        let mut irqs = self.igate.lock();
        irqs.intx_masking = Some(intx);
        self.irq_shared
            .virq_disabled
            .store(false, Ordering::Relaxed);
    }

    /// Tears down every interrupt and notifier at close (`vfio_pci_core_disable()`,
    /// `vfio_pci_core_close_device()`).
    pub(crate) fn irq_close(&self, pdev: &pci::Device<Bound>) {
        let mut irqs = self.igate.lock();
        match core::mem::take(&mut irqs.mode) {
            IrqMode::None | IrqMode::Intx(_) => {}
            IrqMode::Msi(msi) => self.msi_disable(pdev, &irqs, msi),
        }
        irqs.intx_masking = None;
        self.irq_shared
            .virq_disabled
            .store(false, Ordering::Relaxed);
        *self.notifiers.lock() = Notifiers::default();
    }

    /// The number of interrupts at `index` (`vfio_pci_get_irq_count()`).
    fn irq_count(&self, pdev: &pci::Device<Bound>, index: u32) -> u32 {
        let config = pdev.config_space();
        match index {
            INTX => u32::from(self.config.lock().interrupt_pin() != 0),
            MSI if pdev.msi_cap() != 0 => {
                let pos = usize::from(pdev.msi_cap()) + uapi::PCI_MSI_FLAGS as usize;
                let flags = u32::from(config.try_read16(pos).unwrap_or(0));
                1 << ((flags & uapi::PCI_MSI_FLAGS_QMASK) >> 1)
            }
            MSIX if pdev.msix_cap() != 0 => {
                let pos = usize::from(pdev.msix_cap()) + uapi::PCI_MSIX_FLAGS as usize;
                let flags = u32::from(config.try_read16(pos).unwrap_or(0));
                (flags & uapi::PCI_MSIX_FLAGS_QSIZE) + 1
            }
            ERR | REQ => 1,
            _ => 0,
        }
    }

    /// `VFIO_DEVICE_GET_IRQ_INFO` (`vfio_pci_ioctl_get_irq_info()`).
    pub(crate) fn ioctl_get_irq_info(
        &self,
        pdev: &pci::Device<Bound>,
        arg: UserPtr,
    ) -> Result<isize> {
        type Info = uapi::vfio_irq_info;
        let minsz = offset_of!(Info, count) + size_of::<u32>();
        let mut info: Info = vfio::read_arg(arg, minsz)?;
        if (info.argsz as usize) < minsz || info.index >= uapi::VFIO_PCI_NUM_IRQS {
            return Err(EINVAL);
        }

        info.flags = uapi::VFIO_IRQ_INFO_EVENTFD;
        info.count = self.irq_count(pdev, info.index);
        if info.index == INTX {
            info.flags |= uapi::VFIO_IRQ_INFO_MASKABLE | uapi::VFIO_IRQ_INFO_AUTOMASKED;
        } else if info.index != MSIX || !pdev.msix_can_alloc_dyn() {
            info.flags |= uapi::VFIO_IRQ_INFO_NORESIZE;
        }
        vfio::write_arg(arg, &info, minsz)?;
        Ok(0)
    }

    /// `VFIO_DEVICE_SET_IRQS` (`vfio_pci_ioctl_set_irqs()`).
    pub(crate) fn ioctl_set_irqs(&self, pdev: &pci::Device<Bound>, arg: UserPtr) -> Result<isize> {
        type Set = uapi::vfio_irq_set;
        let minsz = offset_of!(Set, count) + size_of::<u32>();
        let hdr: Set = vfio::read_arg(arg, minsz)?;

        let max = self.irq_count(pdev, hdr.index);
        let (kind, size) = vfio::irq_set_prepare(&hdr, max, uapi::VFIO_PCI_NUM_IRQS)?;
        let mut data = KVec::new();
        if size != 0 {
            UserSlice::new(arg.wrapping_byte_add(minsz), size).read_all(&mut data, GFP_KERNEL)?;
        }

        let mut irqs = self.igate.lock();
        let action = hdr.flags & uapi::VFIO_IRQ_SET_ACTION_TYPE_MASK;
        let (start, count) = (hdr.start, hdr.count);
        match (hdr.index, action) {
            (INTX, uapi::VFIO_IRQ_SET_ACTION_MASK) => {
                self.set_intx_mask(&irqs, start, count, kind, &data)
            }
            (INTX, uapi::VFIO_IRQ_SET_ACTION_UNMASK) => {
                self.set_intx_unmask(&irqs, start, count, kind, &data)
            }
            (INTX, uapi::VFIO_IRQ_SET_ACTION_TRIGGER) => {
                self.set_intx_trigger(pdev, &mut irqs, start, count, kind, &data)
            }
            (MSI | MSIX, uapi::VFIO_IRQ_SET_ACTION_TRIGGER) => {
                self.set_msi_trigger(pdev, &mut irqs, hdr.index, start, count, kind, &data)
            }
            (ERR | REQ, uapi::VFIO_IRQ_SET_ACTION_TRIGGER) => {
                if start != 0 || count > 1 {
                    return Err(EINVAL);
                }
                let mut notifiers = self.notifiers.lock();
                let slot = if hdr.index == ERR {
                    &mut notifiers.err
                } else {
                    &mut notifiers.req
                };
                set_notifier(slot, count, kind, &data).map(|()| 0)
            }
            // MSI masking is not exported by the MSI core (C's "XXX").
            _ => Err(ENOTTY),
        }
    }

    /// `vfio_pci_set_intx_mask()`.
    fn set_intx_mask(
        &self,
        irqs: &IrqState,
        start: u32,
        count: u32,
        kind: IrqSetData,
        data: &[u8],
    ) -> Result<isize> {
        let intx = enabled_intx(irqs, start, count)?;
        match kind {
            // A mask eventfd is not implemented in C either.
            IrqSetData::EventFd => return Err(ENOTTY),
            IrqSetData::Bool if !data_bool(data, 0) => {}
            IrqSetData::None | IrqSetData::Bool => {
                intx.line.mask();
            }
        }
        Ok(0)
    }

    /// `vfio_pci_set_intx_unmask()`.
    fn set_intx_unmask(
        &self,
        irqs: &IrqState,
        start: u32,
        count: u32,
        kind: IrqSetData,
        data: &[u8],
    ) -> Result<isize> {
        let intx = enabled_intx(irqs, start, count)?;
        match kind {
            IrqSetData::EventFd => match data_fd(data, 0) {
                fd if fd >= 0 => intx.unmask.as_ref().enable(fd)?,
                _ => intx.unmask.disable(),
            },
            IrqSetData::Bool if !data_bool(data, 0) => {}
            IrqSetData::None | IrqSetData::Bool => unmask_and_send(&intx.line),
        }
        Ok(0)
    }

    /// `vfio_pci_set_intx_trigger()`.
    fn set_intx_trigger(
        &self,
        pdev: &pci::Device<Bound>,
        irqs: &mut IrqState,
        start: u32,
        count: u32,
        kind: IrqSetData,
        data: &[u8],
    ) -> Result<isize> {
        let is_intx = matches!(irqs.mode, IrqMode::Intx(_));
        if is_intx && count == 0 && kind == IrqSetData::None {
            // Dropping INTx tears it down.
            irqs.mode = IrqMode::None;
            return Ok(0);
        }
        if !(is_intx || matches!(irqs.mode, IrqMode::None)) || start != 0 || count != 1 {
            return Err(EINVAL);
        }

        if kind == IrqSetData::EventFd {
            let fd = data_fd(data, 0);
            let trigger = if fd >= 0 {
                Some(EventFd::from_fd(fd)?)
            } else {
                None
            };
            if let IrqMode::Intx(intx) = &irqs.mode {
                // `vfio_intx_set_signal()`: the old trigger is released after the swap.
                let _old = core::mem::replace(&mut *intx.line.trigger.lock(), trigger);
            } else {
                irqs.mode = IrqMode::Intx(self.intx_enable(pdev, irqs, trigger)?);
            }
            return Ok(0);
        }

        let IrqMode::Intx(intx) = &irqs.mode else {
            return Err(EINVAL);
        };
        if kind == IrqSetData::None || data_bool(data, 0) {
            intx.line.send();
        }
        Ok(0)
    }

    /// `vfio_intx_enable()`.
    fn intx_enable(
        &self,
        pdev: &pci::Device<Bound>,
        irqs: &IrqState,
        trigger: Option<EventFd>,
    ) -> Result<Intx> {
        let line_irq = pdev.intx_line().ok_or(ENODEV)?;
        let dev: &kernel::device::Device = pdev.as_ref();
        let name = CString::try_from_fmt(fmt!("vfio-intx({})", dev.name()))?;

        // The initial mask state follows INTx disable; once running, INTx disable changes it
        // through `intx_mask`/`intx_unmask`.
        let masked = self.irq_shared.virq_disabled.load(Ordering::Relaxed);
        let pci_2_3 = irqs.intx_masking == Some(IntxMasking::Supported);
        let (mask, flags) = if pci_2_3 {
            pdev.set_intx_enabled(!masked);
            (IntxMask::Command, irq::Flags::SHARED)
        } else {
            let flags = if masked {
                irq::Flags::NO_AUTOEN
            } else {
                irq::Flags::TRIGGER_NONE
            };
            (IntxMask::Line(pci::ExclusiveIntx::new(&line_irq)), flags)
        };

        let line = Arc::pin_init(
            pin_init!(IntxLine {
                pdev: pdev.into(),
                shared: self.irq_shared.clone(),
                mask,
                masked <- new_spinlock_irq!(masked, "vfio_pci_rs::intx_masked"),
                trigger <- new_spinlock_irq!(trigger, "vfio_pci_rs::intx_trigger"),
            }),
            GFP_KERNEL,
        )?;
        let unmask = KBox::pin_init(Virqfd::new(IntxUnmask(line.clone())), GFP_KERNEL)?;
        let handler =
            pci::IrqHandler::register(pdev, line_irq, flags, name, IntxHandler(line.clone()))?;
        Ok(Intx {
            unmask,
            _handler: handler,
            line,
        })
    }

    /// INTx disable was set in the virtual COMMAND register (`vfio_pci_intx_mask()`).
    pub(crate) fn intx_mask(&self, pdev: &pci::Device<Bound>) {
        let irqs = self.igate.lock();
        match &irqs.mode {
            IrqMode::Intx(intx) => {
                intx.line.mask();
            }
            // The physical bit follows the virtual one when INTx is not in use.
            _ if irqs.intx_masking == Some(IntxMasking::Supported) => {
                pdev.set_intx_enabled(false);
            }
            _ => {}
        }
    }

    /// Masks INTx for a runtime suspend if it is the enabled interrupt (the `irq_type` test
    /// and `vfio_pci_intx_mask()` of `vfio_pci_core_runtime_suspend()`); returns whether it was
    /// unmasked before.
    pub(crate) fn intx_mask_for_suspend(&self) -> bool {
        match &self.igate.lock().mode {
            IrqMode::Intx(intx) => intx.line.mask(),
            _ => false,
        }
    }

    /// INTx disable was cleared in the virtual COMMAND register (`vfio_pci_intx_unmask()`).
    pub(crate) fn intx_unmask(&self, pdev: &pci::Device<Bound>) {
        let irqs = self.igate.lock();
        match &irqs.mode {
            IrqMode::Intx(intx) => unmask_and_send(&intx.line),
            _ if irqs.intx_masking == Some(IntxMasking::Supported) => {
                pdev.set_intx_enabled(true);
            }
            _ => {}
        }
    }

    /// `vfio_pci_set_msi_trigger()`.
    #[expect(clippy::too_many_arguments)]
    fn set_msi_trigger(
        &self,
        pdev: &pci::Device<Bound>,
        irqs: &mut IrqState,
        index: u32,
        start: u32,
        count: u32,
        kind: IrqSetData,
        data: &[u8],
    ) -> Result<isize> {
        let msix = index == MSIX;
        let current = irqs.mode.index();
        if current == Some(index) && count == 0 && kind == IrqSetData::None {
            if let IrqMode::Msi(msi) = core::mem::take(&mut irqs.mode) {
                self.msi_disable(pdev, irqs, msi);
            }
            return Ok(0);
        }
        if !(current == Some(index) || current.is_none()) {
            return Err(EINVAL);
        }

        if kind == IrqSetData::EventFd {
            let fds = |i: u32| data_fd(data, i as usize);
            if let IrqMode::Msi(msi) = &mut irqs.mode {
                self.msi_set_block(pdev, msi, start, count, fds)?;
                return Ok(0);
            }
            let mut msi = match self.msi_enable(pdev, start + count, msix)? {
                Ok(msi) => msi,
                // Fewer vectors than asked for: the user learns how many there are.
                Err(available) => return Ok(available.try_into()?),
            };
            if let Err(e) = self.msi_set_block(pdev, &mut msi, start, count, fds) {
                self.msi_disable(pdev, irqs, msi);
                return Err(e);
            }
            irqs.mode = IrqMode::Msi(msi);
            return Ok(0);
        }

        let IrqMode::Msi(msi) = &irqs.mode else {
            return Err(EINVAL);
        };
        for i in start..start + count {
            let Some(Some(vector)) = msi.vectors.get(i as usize) else {
                continue;
            };
            if kind == IrqSetData::None || data_bool(data, (i - start) as usize) {
                vector.trigger.signal();
            }
        }
        Ok(0)
    }

    /// `vfio_msi_enable()`: allocates `nvec` vectors. `Ok(Err(n))` when only `n` could be.
    fn msi_enable(
        &self,
        pdev: &pci::Device<Bound>,
        nvec: u32,
        msix: bool,
    ) -> Result<Result<Msi, u32>> {
        let alloc = {
            let _memory = MemoryEnabled::new(self, pdev);
            let alloc = pdev.alloc_msi_vectors(nvec, msix)?;
            let available = alloc.access(pdev.as_ref())?.count();
            if available < nvec {
                // Freed under memory enable, as C frees it.
                drop(alloc);
                return Ok(Err(available));
            }
            alloc
        };
        if !msix {
            // log2 of the vectors, rounded up (`fls(nvec * 2 - 1) - 1`).
            let qmax = (nvec * 2 - 1).ilog2();
            self.irq_shared
                .msi_qmax
                .store(qmax as u8, Ordering::Relaxed);
            self.irq_shared.msi_enabled.store(true, Ordering::Relaxed);
        }
        Ok(Ok(Msi {
            msix,
            vectors: KVec::new(),
            alloc,
        }))
    }

    /// `vfio_msi_set_block()`: sets the triggers of `count` vectors from `start`, undoing them
    /// all on failure.
    fn msi_set_block(
        &self,
        pdev: &pci::Device<Bound>,
        msi: &mut Msi,
        start: u32,
        count: u32,
        fds: impl Fn(u32) -> i32,
    ) -> Result {
        for i in 0..count {
            if let Err(e) = self.msi_set_vector(pdev, msi, start + i, fds(i)) {
                for j in start..start + i {
                    let _ = self.msi_set_vector(pdev, msi, j, -1);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// `vfio_msi_set_vector_signal()`: replaces the trigger of vector `vector` with eventfd
    /// `fd`, or unsets it for a negative `fd`.
    fn msi_set_vector(
        &self,
        pdev: &pci::Device<Bound>,
        msi: &mut Msi,
        vector: u32,
        fd: i32,
    ) -> Result {
        let index = vector as usize;
        if let Some(old) = msi.vectors.get_mut(index).and_then(Option::take) {
            let MsiVector {
                _producer: producer,
                _handler: handler,
                trigger,
            } = old;
            drop(producer);
            // The vector stays allocated until MSI is disabled.
            let memory = MemoryEnabled::new(self, pdev);
            drop(handler);
            drop(memory);
            drop(trigger);
        }
        if fd < 0 {
            return Ok(());
        }

        let irq = {
            let _memory = msi.msix.then(|| MemoryEnabled::new(self, pdev));
            pdev.msi_vector(&msi.alloc, vector, pdev.msix_can_alloc_dyn())?
        };
        let number = irq.number();
        let dev: &kernel::device::Device = pdev.as_ref();
        let name = CString::try_from_fmt(fmt!(
            "vfio-msi{}[{}]({})",
            if msi.msix { "x" } else { "" },
            vector,
            dev.name()
        ))?;
        let trigger = Arc::new(EventFd::from_fd(fd)?, GFP_KERNEL)?;

        let handler = {
            let _memory = MemoryEnabled::new(self, pdev);
            // The message may have been cleared by a reset since it was written.
            if msi.msix {
                pdev.msix_refresh_message(&irq);
            }
            pci::IrqHandler::register(
                pdev,
                irq,
                irq::Flags::TRIGGER_NONE,
                name,
                MsiHandler(trigger.clone()),
            )?
        };
        let producer = handler
            .access(pdev.as_ref())
            .and_then(|h| irq_bypass::Producer::register(trigger.clone(), h.irq()));
        let producer = match producer {
            Ok(producer) => Some(producer),
            Err(e) => {
                dev_info!(
                    pdev,
                    "irq bypass producer (irq {}) registration fails: {}\n",
                    number,
                    e.to_errno()
                );
                None
            }
        };

        while msi.vectors.len() <= index {
            msi.vectors.push(None, GFP_KERNEL)?;
        }
        msi.vectors[index] = Some(MsiVector {
            _producer: producer,
            _handler: handler,
            trigger,
        });
        Ok(())
    }

    /// `vfio_msi_disable()`.
    fn msi_disable(&self, pdev: &pci::Device<Bound>, irqs: &IrqState, mut msi: Msi) {
        for i in 0..msi.vectors.len() {
            // Unsetting cannot fail.
            let _ = self.msi_set_vector(pdev, &mut msi, i as u32, -1);
        }
        {
            let _memory = MemoryEnabled::new(self, pdev);
            drop(msi);
        }
        // Disabling MSI re-enables INTx through its shutdown path; keep it off where it is
        // broken.
        if irqs.intx_masking == Some(IntxMasking::Broken) {
            pdev.set_intx_enabled(false);
        }
        self.irq_shared.msi_enabled.store(false, Ordering::Relaxed);
    }

    /// Signals the ERR eventfd, for AER (`vfio_pci_core_aer_err_detected()`).
    pub(crate) fn signal_err(&self) {
        if let Some(err) = &self.notifiers.lock().err {
            err.signal();
        }
    }

    /// Asks the user to release the device through the REQ eventfd (`vfio_pci_core_request()`).
    pub(crate) fn request(&self, pdev: &pci::Device<Bound>, count: u32) {
        let notifiers = self.notifiers.lock();
        if let Some(req) = &notifiers.req {
            if count % 10 == 0 {
                dev_notice!(pdev, "Relaying device request to user (#{})\n", count);
            }
            req.signal();
        } else if count == 0 {
            dev_warn!(
                pdev,
                "No device request channel registered, blocked until released by user\n"
            );
        }
    }
}

/// The enabled INTx that a mask or unmask of `count` interrupts from `start` applies to.
fn enabled_intx(irqs: &IrqState, start: u32, count: u32) -> Result<&Intx> {
    match &irqs.mode {
        IrqMode::Intx(intx) if start == 0 && count == 1 => Ok(intx),
        _ => Err(EINVAL),
    }
}

/// Unmasks INTx and signals an interrupt that was pending (`__vfio_pci_intx_unmask()`).
fn unmask_and_send(line: &IntxLine) {
    if line.unmask() {
        line.send();
    }
}

/// `vfio_pci_set_ctx_trigger_single()` for the ERR and REQ notifiers.
fn set_notifier(slot: &mut Option<EventFd>, count: u32, kind: IrqSetData, data: &[u8]) -> Result {
    match kind {
        // DATA_NONE and DATA_BOOL allow loopback testing.
        IrqSetData::None => {
            let Some(eventfd) = slot else {
                return Err(EINVAL);
            };
            if count != 0 {
                eventfd.signal();
            } else {
                *slot = None;
            }
            Ok(())
        }
        IrqSetData::Bool => {
            if count == 0 {
                return Err(EINVAL);
            }
            if data_bool(data, 0) {
                if let Some(eventfd) = slot {
                    eventfd.signal();
                }
            }
            Ok(())
        }
        IrqSetData::EventFd => {
            if count == 0 {
                return Err(EINVAL);
            }
            match data_fd(data, 0) {
                -1 => {
                    *slot = None;
                    Ok(())
                }
                fd if fd >= 0 => {
                    *slot = Some(EventFd::from_fd(fd)?);
                    Ok(())
                }
                _ => Err(EINVAL),
            }
        }
    }
}

/// The mutex type of `igate`.
pub(crate) type IrqGate = Mutex<IrqState>;
