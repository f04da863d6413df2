// SPDX-License-Identifier: GPL-2.0

//! VFIO device abstractions.
//!
//! A VFIO driver hands a device to userspace through `/dev/vfio/<group>` and
//! `/dev/vfio/devices/vfioX`. The VFIO core (in C) owns the character devices, the group and
//! iommufd plumbing and the device set; a driver provides a [`struct vfio_device_ops`].
//!
//! [`Device<T>`] is a `#[repr(C)]` wrapper of [`struct vfio_device`] allocated by
//! `_vfio_alloc_device()`, with a vtable built from the [`Driver`] trait. [`Registration`] makes
//! it visible to userspace and is owned by devres, so the device is unregistered (waiting for
//! every user to close it) no later than when its parent driver unbinds.
//!
//! C header: [`include/linux/vfio.h`](srctree/include/linux/vfio.h)
//!
//! [`struct vfio_device_ops`]: srctree/include/linux/vfio.h
//! [`struct vfio_device`]: srctree/include/linux/vfio.h

use crate::{
    bindings, device, devres,
    error::{from_err_ptr, from_result, to_result},
    ffi::{c_char, c_int, c_long, c_uint, c_ulong, c_void},
    ioctl::_IO,
    mm::virt::VmaNew,
    pci, pm_runtime,
    prelude::*,
    str::CStr,
    sync::aref::{ARef, AlwaysRefCounted},
    transmute::{AsBytes, FromBytes},
    types::Opaque,
    uaccess::{UserPtr, UserSlice},
    uuid::{self, Uuid},
};
use core::{
    alloc::Layout,
    marker::PhantomData,
    mem::size_of,
    ptr::NonNull,
    sync::atomic::{AtomicPtr, Ordering},
};

/// Size of the `offset` field's region index shift used by vfio-pci (`VFIO_PCI_OFFSET_SHIFT`).
pub const PCI_OFFSET_SHIFT: u32 = 40;

const VFIO_TYPE: u32 = b';' as u32;
const VFIO_BASE: u32 = 100;

/// `VFIO_DEVICE_GET_INFO`: `struct vfio_device_info`.
pub const DEVICE_GET_INFO: u32 = _IO(VFIO_TYPE, VFIO_BASE + 7);
/// `VFIO_DEVICE_GET_REGION_INFO`: `struct vfio_region_info`.
pub const DEVICE_GET_REGION_INFO: u32 = _IO(VFIO_TYPE, VFIO_BASE + 8);
/// `VFIO_DEVICE_GET_IRQ_INFO`: `struct vfio_irq_info`.
pub const DEVICE_GET_IRQ_INFO: u32 = _IO(VFIO_TYPE, VFIO_BASE + 9);
/// `VFIO_DEVICE_SET_IRQS`: `struct vfio_irq_set`.
pub const DEVICE_SET_IRQS: u32 = _IO(VFIO_TYPE, VFIO_BASE + 10);
/// `VFIO_DEVICE_RESET`.
pub const DEVICE_RESET: u32 = _IO(VFIO_TYPE, VFIO_BASE + 11);
/// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`: `struct vfio_pci_hot_reset_info`.
pub const DEVICE_GET_PCI_HOT_RESET_INFO: u32 = _IO(VFIO_TYPE, VFIO_BASE + 12);
/// `VFIO_DEVICE_PCI_HOT_RESET`: `struct vfio_pci_hot_reset`.
pub const DEVICE_PCI_HOT_RESET: u32 = _IO(VFIO_TYPE, VFIO_BASE + 13);
/// `VFIO_DEVICE_IOEVENTFD`: `struct vfio_device_ioeventfd`.
pub const DEVICE_IOEVENTFD: u32 = _IO(VFIO_TYPE, VFIO_BASE + 16);

/// The operations of a VFIO device driver.
///
/// Callbacks are only invoked while the device is registered, that is while the
/// [`Registration`] exists, and so while the parent device is bound to the driver.
pub trait Driver: Sized + Send + Sync + 'static {
    /// The driver's per-device state, owned by the [`Registration`].
    type Data: Send + Sync + 'static;

    /// The name of the device ops (`vfio_device_ops.name`), e.g. for SR-IOV sequestering.
    const NAME: &'static CStr;

    /// The first user opened the device (`open_device`); called under the device set lock.
    fn open_device(device: &Device<Self, device::Bound>, data: Pin<&Self::Data>) -> Result;

    /// The last user closed the device (`close_device`); called under the device set lock,
    /// which `dev_set` stands for.
    fn close_device(
        device: &Device<Self, device::Bound>,
        data: Pin<&Self::Data>,
        dev_set: &DeviceSetGuard<'_, Self>,
    );

    /// An ioctl on the device file that the VFIO core does not handle itself.
    fn ioctl(
        device: &Device<Self, device::Bound>,
        data: Pin<&Self::Data>,
        cmd: u32,
        arg: UserPtr,
    ) -> Result<isize>;

    /// `read(2)` of `count` bytes into `buf` at `*pos`; advances `*pos` by the bytes read.
    fn read(
        _device: &Device<Self, device::Bound>,
        _data: Pin<&Self::Data>,
        _buf: UserPtr,
        _count: usize,
        _pos: &mut i64,
    ) -> Result<usize> {
        Err(EINVAL)
    }

    /// `write(2)` of `count` bytes from `buf` at `*pos`; advances `*pos` by the bytes written.
    fn write(
        _device: &Device<Self, device::Bound>,
        _data: Pin<&Self::Data>,
        _buf: UserPtr,
        _count: usize,
        _pos: &mut i64,
    ) -> Result<usize> {
        Err(EINVAL)
    }

    /// Fills `info` for `VFIO_DEVICE_GET_REGION_INFO`, whose `argsz` and `index` the VFIO core
    /// copied from userspace, and adds the region's capabilities to `caps`. The core copies the
    /// answer back.
    fn get_region_info(
        _device: &Device<Self, device::Bound>,
        _data: Pin<&Self::Data>,
        _info: &mut uapi::vfio_region_info,
        _caps: &mut InfoCaps,
    ) -> Result {
        Err(EINVAL)
    }

    /// `VFIO_DEVICE_FEATURE` for a feature the VFIO core does not handle itself: `flags` as
    /// the user passed them, `arg` and `argsz` the data after the header. The core answers
    /// `ENOTTY` for drivers without features.
    fn device_feature(
        _device: &Device<Self, device::Bound>,
        _data: Pin<&Self::Data>,
        _flags: u32,
        _arg: UserPtr,
        _argsz: usize,
    ) -> Result<i32> {
        Err(ENOTTY)
    }

    /// `mmap()` of the device file: `vma` is being set up, with the page offset the user
    /// passed. The core answers `EINVAL` for drivers without mmap.
    fn mmap(
        _device: &Device<Self, device::Bound>,
        _data: Pin<&Self::Data>,
        _vma: &VmaNew,
    ) -> Result {
        Err(EINVAL)
    }

    /// The device is being unregistered while users hold it open (`request`): the driver may
    /// ask them to release it. Called about every ten seconds, `count` from 0, until the last
    /// user closes it.
    fn request(_device: &Device<Self, device::Bound>, _data: Pin<&Self::Data>, _count: u32) {}

    /// The driver implements [`Driver::match_token_uuid`]: the group path opens the device by
    /// `"<name> vf_token=<uuid>"` as well as by its name, and the cdev path takes
    /// `VFIO_DEVICE_BIND_FLAG_TOKEN`.
    const HAS_MATCH_TOKEN: bool = false;

    /// Checks the VF token a user presents to open the device, `None` when there is none
    /// (`match_token_uuid`); an error refuses the open.
    fn match_token_uuid(
        _device: &Device<Self, device::Bound>,
        _data: Pin<&Self::Data>,
        _uuid: Option<&Uuid>,
    ) -> Result {
        Ok(())
    }
}

/// How a device name given to `VFIO_GROUP_GET_DEVICE_FD` matches the device named `name`
/// (`vfio_pci_core_match()`): `None` if it names another device, otherwise the VF token that
/// follows the name, if any. `EINVAL` for an option other than one `vf_token=<uuid>`.
fn match_name(buf: &[u8], name: &[u8]) -> Result<Option<Option<Uuid>>> {
    const VF_TOKEN: &[u8] = b"vf_token=";
    let Some(mut rest) = buf.strip_prefix(name) else {
        return Ok(None);
    };
    if rest.is_empty() {
        return Ok(Some(None));
    }
    if rest[0] != b' ' {
        // Not a match: something other than white space after the name.
        return Ok(None);
    }
    let mut token = None;
    while let Some((&c, tail)) = rest.split_first() {
        if c == b' ' {
            rest = tail;
            continue;
        }
        match rest.strip_prefix(VF_TOKEN) {
            Some(value) if token.is_none() => {
                token = Some(Uuid::parse(value)?);
                rest = &value[uuid::STRING_LEN..];
            }
            // An unknown or repeated option.
            _ => return Err(EINVAL),
        }
    }
    Ok(Some(token))
}

/// Checks the operations a `VFIO_DEVICE_FEATURE` call asks for (`vfio_check_feature()`):
/// `Ok(false)` when it only probes for `supported` operations (answer 0), `Ok(true)` when it
/// asks for one of them with at least `minsz` bytes of data, `EINVAL` otherwise.
pub fn check_feature(flags: u32, argsz: usize, supported: u32, minsz: usize) -> Result<bool> {
    let ops = flags & (uapi::VFIO_DEVICE_FEATURE_GET | uapi::VFIO_DEVICE_FEATURE_SET);
    if ops & !supported != 0 {
        return Err(EINVAL);
    }
    if flags & uapi::VFIO_DEVICE_FEATURE_PROBE != 0 {
        return Ok(false);
    }
    if ops == 0 || argsz < minsz {
        return Err(EINVAL);
    }
    Ok(true)
}

/// A VFIO device: a [`struct vfio_device`] allocated by the VFIO core.
///
/// `#[repr(C)]` with the `vfio_device` at offset 0, as `vfio_alloc_device()` requires. As for
/// bus devices, `Ctx` says what is known of the parent: callbacks get a
/// `&Device<T, Bound>`, whose [`Device::parent`] is bound to the driver; a reference counted
/// `ARef<Device<T>>` is [`device::Normal`].
///
/// # Invariants
///
/// - `vdev` is embedded at offset 0 and was initialised by `_vfio_alloc_device()` with the ops
///   of [`VTable<T>`].
/// - The reference count of `vdev.device` owns the allocation.
/// - `data` is null, or points to the `T::Data` of the live [`Registration`] of this device; it
///   is only written before `vfio_register_group_dev()` and after
///   `vfio_unregister_group_dev()`.
/// - A `&Device<T, Bound>` only exists while the device is registered, so while its parent is
///   bound to the driver and `data` is valid.
///
/// [`struct vfio_device`]: srctree/include/linux/vfio.h
#[repr(C)]
pub struct Device<T: Driver, Ctx: device::DeviceContext = device::Normal> {
    vdev: Opaque<bindings::vfio_device>,
    data: Opaque<*const T::Data>,
    _ctx: PhantomData<Ctx>,
}

impl<T: Driver> Device<T> {
    /// Allocates a VFIO device whose parent is `parent`.
    pub fn new(parent: &device::Device<device::Bound>) -> Result<ARef<Self>> {
        const_assert!(
            core::mem::offset_of!(Self, vdev) == 0,
            "struct vfio_device must be at offset 0"
        );

        let size = Layout::new::<Self>().pad_to_align().size();
        let ops = core::ptr::from_ref(&VTable::<T>::VTABLE);

        // SAFETY: `parent` is a valid, bound device; `ops` points to a static vtable whose
        // callbacks expect a `Device<T>`, and `size` covers `Device<T>`.
        let raw =
            from_err_ptr(unsafe { bindings::_vfio_alloc_device(size, parent.as_raw(), ops) })?;

        // CAST: `vfio_device` is at offset 0 of the zeroed `Device<T>` allocation, so `data`
        // starts out null.
        let this = NonNull::new(raw.cast::<Self>()).ok_or(ENOMEM)?;

        // SAFETY: `_vfio_alloc_device()` returned the initial reference, which we now own.
        Ok(unsafe { ARef::from_raw(this) })
    }

    /// Returns the parent device.
    fn parent_device(&self) -> &device::Device {
        // SAFETY: `dev` was set by `_vfio_alloc_device()` to the parent device, which the
        // `vfio_device` holds a reference on.
        unsafe { device::Device::from_raw((*self.as_raw()).dev) }
    }
}

impl<T: Driver> Device<T> {
    /// Calls `f` with the device and its registration data if it is registered, from a
    /// callback of the parent's driver that holds the parent's device lock, e.g. AER's
    /// `error_detected`. Returns `None` for another parent or an unregistered device.
    pub fn with_registered<R>(
        &self,
        parent: &device::Device<device::Core<'_>>,
        f: impl FnOnce(&Device<T, device::Bound>, Pin<&T::Data>) -> R,
    ) -> Option<R> {
        if self.parent_device().as_raw() != parent.as_raw() {
            return None;
        }
        // SAFETY: `data` changes only in `Registration`'s constructor and drop, which run in
        // probe and in the devres release of unbind, both under the parent's device lock that
        // the caller holds.
        let data = unsafe { *self.data.get() };
        if data.is_null() {
            return None;
        }
        // SAFETY: `data` is not null, so the device is registered and `data` points to the
        // pinned data of its `Registration`, which the device lock keeps alive; registered
        // means the parent is bound, so `Device<T, Bound>` holds.
        let (dev, data) = unsafe {
            (
                &*core::ptr::from_ref(self).cast::<Device<T, device::Bound>>(),
                Pin::new_unchecked(&*data),
            )
        };
        Some(f(dev, data))
    }
}

impl<T: Driver> Device<T> {
    /// Calls `f` with the device and its registration data if it is registered, from a
    /// runtime PM callback of the parent's driver, which holds no lock. Returns `None` for
    /// another parent or an unregistered device.
    pub fn with_registered_pm<R>(
        &self,
        pm: &pm_runtime::Callback<'_>,
        f: impl FnOnce(&Device<T, device::Bound>, Pin<&T::Data>) -> R,
    ) -> Option<R> {
        if self.parent_device().as_raw() != pm.device().as_raw() {
            return None;
        }
        // SAFETY: `data` is valid for reads and aligned; `set_data` writes it atomically.
        let data = unsafe { AtomicPtr::from_ptr(self.data.get().cast::<*mut T::Data>()) }
            .load(Ordering::Acquire);
        if data.is_null() {
            return None;
        }
        // SAFETY: `data` is not null, so it points to the pinned data of the `Registration`,
        // initialised before the release store that set it. The registration's drop sets it
        // to null, then waits for the parent's runtime PM callbacks in progress, one of which
        // `pm` proves this is, before the data is dropped; until then the parent is bound, so
        // `Device<T, Bound>` holds.
        let (dev, data) = unsafe {
            (
                &*core::ptr::from_ref(self).cast::<Device<T, device::Bound>>(),
                Pin::new_unchecked(&*data),
            )
        };
        Some(f(dev, data))
    }
}

impl<T: Driver, Ctx: device::DeviceContext> Device<T, Ctx> {
    fn as_raw(&self) -> *mut bindings::vfio_device {
        self.vdev.get()
    }

    /// Sets the `data` pointer under the device set lock, so that [`DeviceSetGuard`] walks see
    /// either null or live data.
    fn set_data(&self, data: *const T::Data) {
        // SAFETY: The device set was assigned before any data is set and outlives the device.
        let set = unsafe { (*self.as_raw()).dev_set };
        // SAFETY: `set` is valid.
        unsafe { bindings::mutex_lock(&raw mut (*set).lock) };
        // SAFETY: Only `Registration` calls this, while no callback can read `data`; walks
        // read it under the lock we hold, and runtime PM callbacks with an atomic load.
        unsafe { AtomicPtr::from_ptr(self.data.get().cast::<*mut T::Data>()) }
            .store(data.cast_mut(), Ordering::Release);
        // SAFETY: Locked above.
        unsafe { bindings::mutex_unlock(&raw mut (*set).lock) };
    }
}

impl<T: Driver> Device<T, device::Bound> {
    /// Borrows the device from the `vfio_device` pointer the VFIO core passes to the ops.
    ///
    /// # Safety
    ///
    /// `ptr` must point to the `vfio_device` of a live [`Device<T>`] that is registered, so its
    /// parent is bound (the registration is devres-managed).
    unsafe fn from_raw<'a>(ptr: *mut bindings::vfio_device) -> &'a Self {
        // SAFETY: By the safety requirements, `ptr` is at offset 0 of a live `Device<T>`;
        // `Device<T, Bound>` has the same layout.
        unsafe { &*ptr.cast() }
    }

    /// Calls `f` with the registration data.
    ///
    /// # Safety
    ///
    /// Must only be called from a VFIO callback, while the device is registered.
    unsafe fn with_data<R>(&self, f: impl FnOnce(Pin<&T::Data>) -> R) -> R {
        // SAFETY: Callbacks only run between `vfio_register_group_dev()` and the return of
        // `vfio_unregister_group_dev()`, while `data` points to the pinned data owned by the
        // `Registration`.
        let data = unsafe { Pin::new_unchecked(&**self.data.get()) };
        f(data)
    }

    /// Whether the device was opened through its cdev, not a group (`vfio_device_cdev_opened()`).
    pub fn cdev_opened(&self) -> bool {
        // SAFETY: `self` is a live `vfio_device`; the flag is set before the open completes.
        unsafe { (*self.as_raw()).cdev_opened() != 0 }
    }

    /// The iommufd context the device is bound to through its cdev, if any
    /// (`vfio_iommufd_device_ictx()`).
    pub fn iommufd_ctx(&self) -> Option<IommufdCtx> {
        // SAFETY: `self` is a live, registered `vfio_device`.
        let ctx = unsafe { bindings::vfio_iommufd_device_ictx(self.as_raw()) };
        NonNull::new(ctx).map(IommufdCtx)
    }

    /// Takes the lock of the device's set (`dev_set->lock`), outside `open_device` and
    /// `close_device`, which already run under it.
    pub fn lock_dev_set(&self) -> DeviceSetGuard<'_, T> {
        // SAFETY: `dev_set` of a registered device is valid while the device lives.
        let set = unsafe { (*self.as_raw()).dev_set };
        // SAFETY: `set` is valid; the guard unlocks it on drop.
        unsafe { bindings::mutex_lock(&raw mut (*set).lock) };
        DeviceSetGuard {
            set,
            owned: true,
            _p: PhantomData,
        }
    }

    /// Returns the parent device, bound to the driver.
    pub fn parent(&self) -> &device::Device<device::Bound> {
        // SAFETY: `dev` was set by `_vfio_alloc_device()` to the parent device, which the
        // `vfio_device` holds a reference on.
        let dev = unsafe { (*self.as_raw()).dev };
        // SAFETY: By the type invariant of `Device<T, Bound>` (see `from_raw`), the parent is
        // bound while `self` is borrowed.
        unsafe { device::Device::from_raw(dev) }
    }
}

impl<T: Driver, Ctx: device::DeviceContext> AsRef<device::Device> for Device<T, Ctx> {
    fn as_ref(&self) -> &device::Device {
        // SAFETY: `self` holds a live `vfio_device`, whose `device` is initialised.
        let dev = unsafe { &raw mut (*self.as_raw()).device };
        // SAFETY: The embedded device is valid for the lifetime of `self`.
        unsafe { device::Device::from_raw(dev) }
    }
}

// SAFETY: The reference count is that of the embedded `struct device`; `vfio_put_device()` is
// `put_device(&vdev->device)`, whose release callback frees the allocation.
unsafe impl<T: Driver> AlwaysRefCounted for Device<T> {
    fn inc_ref(&self) {
        // SAFETY: `self` holds a reference, so the count is non-zero.
        unsafe { bindings::get_device(&raw mut (*self.as_raw()).device) };
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: The caller owns a reference.
        unsafe {
            bindings::put_device(&raw mut (*obj.as_ptr().cast::<bindings::vfio_device>()).device)
        };
    }
}

// SAFETY: The VFIO core serialises its own state; `data` is only written while no callback can
// run, and `T::Data` is `Send + Sync`.
unsafe impl<T: Driver> Send for Device<T> {}

// SAFETY: See `Send`.
unsafe impl<T: Driver> Sync for Device<T> {}

/// The key of a device set (`struct vfio_device_set`): the devices that must be reset together.
///
/// The C vfio-pci-core keys its sets by the `pci_slot` or `pci_bus` pointer and assumes that
/// every member of a set is one of its own `vfio_pci_core_device`s. Keys made here are one byte
/// into the slot or bus object instead: unique per slot or bus, never equal to a key the C core
/// uses, so a device of a Rust driver never joins a set of C devices.
pub struct DeviceSetKey(*mut c_void);

impl DeviceSetKey {
    /// The key vfio-pci would choose for `pdev`, moved off the C core's keys.
    ///
    /// A function on the root bus or an SR-IOV VF is a set of its own (`None`, the device is its
    /// own key); a function whose slot can be reset shares its slot's set; any other function
    /// shares its bus's set, since only a bus reset can reset it.
    pub fn for_pci(pdev: &pci::Device<device::Bound>) -> Option<Self> {
        if pdev.is_on_root_bus() || pdev.is_virtfn() {
            return None;
        }
        let scope = match pdev.slot_if_resettable() {
            Some(slot) => slot.as_ptr().cast::<u8>(),
            None => pdev.bus_ptr().cast::<u8>(),
        };
        Some(Self(scope.wrapping_add(1).cast()))
    }
}

/// The registration of a [`Device`] with the VFIO core, owned by devres.
///
/// # Invariants
///
/// `dev` is registered with the VFIO core if and only if its `data` is not null, and then
/// `data` points to `self.data`. (It is null only while a failed registration is dropped.)
#[pin_data(PinnedDrop)]
pub struct Registration<T: Driver> {
    dev: ARef<Device<T>>,
    #[pin]
    data: T::Data,
}

impl<T: Driver> Registration<T> {
    /// Registers `dev` (group and cdev) with `data`, until `parent` is unbound.
    ///
    /// `dev` joins the device set of `dev_set`, or a set of its own when `None`. On unbind the
    /// device is unregistered, which waits for all its users to close it, then `data` is
    /// dropped.
    pub fn new_foreign_owned(
        parent: &device::Device<device::Bound>,
        dev: &Device<T>,
        dev_set: Option<DeviceSetKey>,
        data: impl PinInit<T::Data, Error>,
    ) -> Result {
        if !core::ptr::eq(dev.parent_device(), &**parent) {
            return Err(EINVAL);
        }

        let set_id = dev_set.map_or(dev.as_raw().cast::<c_void>(), |key| key.0);
        // SAFETY: `dev` is a valid, unregistered `vfio_device`; `set_id` is a unique key (see
        // `DeviceSetKey`) that outlives the device.
        to_result(unsafe { bindings::vfio_assign_device_set(dev.as_raw(), set_id) })?;

        let reg = try_pin_init!(Self {
            dev: dev.into(),
            data <- data,
        })
        .pin_chain(|this| {
            this.dev.set_data(&raw const this.data);
            // SAFETY: `dev` is valid and not registered; its `data` points to pinned data
            // that lives until `PinnedDrop::drop` unregisters the device.
            let ret = unsafe { bindings::vfio_register_group_dev(this.dev.as_raw()) };
            if ret != 0 {
                // Registration failed, so no callback can run.
                this.dev.set_data(core::ptr::null());
            }
            to_result(ret)
        });

        devres::register::<Self, Error>(parent, reg, GFP_KERNEL)
    }
}

#[pinned_drop]
impl<T: Driver> PinnedDrop for Registration<T> {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: `data` is only written while no callback can run, which is the case here.
        if unsafe { *self.dev.data.get() }.is_null() {
            // `vfio_register_group_dev()` failed: there is nothing to unregister.
            return;
        }
        // SAFETY: By the type invariant `dev` is registered. Unregistering waits until every
        // user has closed the device; afterwards no callback runs.
        unsafe { bindings::vfio_unregister_group_dev(self.dev.as_raw()) };
        // No callback runs any more; after this, walks of the device set and runtime PM
        // callbacks of the parent skip the device. Once the callbacks in progress are done,
        // `data` can be dropped.
        self.dev.set_data(core::ptr::null());
        self.dev.parent_device().pm_runtime_barrier();
    }
}

/// A reference to the registration of a [`Device`] (`vfio_device_try_get_registration()`).
///
/// Unregistration waits until every such reference is put, asking the holders to let go
/// through [`Driver::request`]; until then the parent stays bound, so the reference gives a
/// [`Device<T, Bound>`] to code that holds no lock of the parent, such as a DMA-BUF callback.
///
/// # Invariants
///
/// Holds one registration reference of `dev`, which is therefore registered.
pub struct RegistrationRef<T: Driver> {
    dev: ARef<Device<T>>,
}

impl<T: Driver> Device<T, device::Bound> {
    /// Takes a reference to the device's registration, or `None` once unregistration began.
    pub fn try_get_registration(&self) -> Option<RegistrationRef<T>> {
        // SAFETY: `self` is a live `vfio_device`.
        if !unsafe { bindings::vfio_device_try_get_registration(self.as_raw()) } {
            return None;
        }
        // SAFETY: `Device<T, Bound>` and `Device<T>` have the same layout; the context only
        // restricts what may be called.
        let dev: &Device<T> = unsafe { &*core::ptr::from_ref(self).cast() };
        // INVARIANT: The reference taken above.
        Some(RegistrationRef { dev: dev.into() })
    }
}

impl<T: Driver> RegistrationRef<T> {
    /// The registered device.
    pub fn device(&self) -> &Device<T, device::Bound> {
        // SAFETY: By the type invariant the device is registered until `self` is dropped, and
        // unregistration runs before the parent's driver unbinds, so the parent is bound.
        unsafe { &*core::ptr::from_ref(&*self.dev).cast() }
    }
}

impl<T: Driver> Drop for RegistrationRef<T> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant we own one registration reference, given back here.
        unsafe { bindings::vfio_device_put_registration(self.dev.as_raw()) };
    }
}

/// An iommufd context (`struct iommufd_ctx`), compared by identity.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub struct IommufdCtx(NonNull<bindings::iommufd_ctx>);

/// How a device's ownership by an iommufd context stands (`vfio_iommufd_get_dev_id()`).
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum IommufdOwner {
    /// Bound to the context with this device ID.
    DevId(u32),
    /// Not bound, but its IOMMU group is owned by the context (`-ENOENT`).
    GroupOwned,
    /// Neither.
    NotOwned,
}

/// The locked device set (`struct vfio_device_set`) of a device: the devices that a slot or
/// bus reset reaches together.
///
/// # Invariants
///
/// `set` is valid and its `lock` is held for `'a`: by this guard if `owned` (and released on
/// drop), else by the VFIO core around the callback that received the guard.
pub struct DeviceSetGuard<'a, T: Driver> {
    set: *mut bindings::vfio_device_set,
    owned: bool,
    _p: PhantomData<(&'a (), T)>,
}

/// A registered device of the set, with its driver data.
pub struct DeviceSetMember<'a, T: Driver> {
    dev: &'a Device<T, device::Bound>,
    data: Pin<&'a T::Data>,
}

impl<'a, T: Driver> DeviceSetMember<'a, T> {
    /// The device.
    pub fn device(&self) -> &'a Device<T, device::Bound> {
        self.dev
    }

    /// The device's driver data.
    pub fn data(&self) -> Pin<&'a T::Data> {
        self.data
    }

    /// How many files have the device open (`open_count`).
    pub fn open_count(&self) -> u32 {
        // SAFETY: `open_count` is written under the device set lock, which we hold.
        unsafe { (*self.dev.as_raw()).open_count }
    }

    /// Whether and how `ctx` owns the device (`vfio_iommufd_get_dev_id()`).
    pub fn iommufd_owner(&self, ctx: IommufdCtx) -> IommufdOwner {
        // SAFETY: The device is registered and `ctx` a live context of the caller's device.
        let id = unsafe { bindings::vfio_iommufd_get_dev_id(self.dev.as_raw(), ctx.0.as_ptr()) };
        match u32::try_from(id) {
            Ok(id) if id > 0 => IommufdOwner::DevId(id),
            _ if id == ENOENT.to_errno() => IommufdOwner::GroupOwned,
            _ => IommufdOwner::NotOwned,
        }
    }

    /// Whether one of `groups` holds the device (`vfio_file_has_dev()`).
    pub fn in_groups(&self, groups: &[GroupFile]) -> bool {
        groups.iter().any(|group| {
            // SAFETY: `group.0` is a live VFIO group file and the device is registered.
            unsafe { bindings::vfio_file_has_dev(group.0.as_ptr(), self.dev.as_raw()) }
        })
    }
}

impl<'a, T: Driver> DeviceSetGuard<'a, T> {
    /// Stands for the lock the VFIO core holds around a callback.
    ///
    /// # Safety
    ///
    /// `set` must be valid and locked by the caller's caller for `'a`.
    unsafe fn held(set: *mut bindings::vfio_device_set) -> Self {
        Self {
            set,
            owned: false,
            _p: PhantomData,
        }
    }

    /// The number of open devices in the set (`vfio_device_set_open_count()`).
    pub fn open_count(&self) -> u32 {
        // SAFETY: By the type invariant `set` is valid and locked.
        unsafe { bindings::vfio_device_set_open_count(self.set) }
    }

    /// Whether the bus device `dev` is represented in the set (`vfio_find_device_in_devset()`).
    pub fn contains(&self, dev: &device::Device) -> bool {
        // SAFETY: By the type invariant `set` is valid and locked; `dev` is valid.
        !unsafe { bindings::vfio_find_device_in_devset(self.set, dev.as_raw()) }.is_null()
    }

    /// The number of devices in the set, of any driver and registered or not.
    pub fn len(&self) -> u32 {
        // SAFETY: By the type invariant `set` is valid and locked.
        unsafe { (*self.set).device_count }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The registered devices of this driver in the set, in the set's order.
    ///
    /// Devices of other drivers and unregistered ones are skipped: their data is not ours or
    /// not alive. With the C core's keys unreachable (see [`DeviceSetKey`]), there are none
    /// of the former.
    pub fn members(&self) -> Result<KVec<DeviceSetMember<'_, T>>> {
        let mut all = KVec::new();
        // SAFETY: By the type invariant `set` is valid and locked, so the list is stable.
        let head = unsafe { &raw mut (*self.set).device_list };
        // SAFETY: `head` is a valid list head.
        let mut pos = unsafe { (*head).next };
        while pos != head {
            // SAFETY: Entries of `device_list` are the `dev_set_list` of `vfio_device`s.
            let vdev = unsafe { crate::container_of!(pos, bindings::vfio_device, dev_set_list) };
            // SAFETY: `vdev` is in the set, so valid while the lock is held.
            let ours = unsafe { core::ptr::eq((*vdev).ops, &VTable::<T>::VTABLE) };
            if ours {
                // SAFETY: Our ops, so `vdev` is at offset 0 of a `Device<T>`. Its `data` is
                // written under the lock we hold: non-null means registered, so the parent is
                // bound and the data lives while we hold the lock.
                let member = unsafe {
                    let dev = &*vdev.cast::<Device<T, device::Bound>>();
                    let data = *dev.data.get();
                    (!data.is_null()).then(|| DeviceSetMember {
                        dev,
                        data: Pin::new_unchecked(&*data),
                    })
                };
                if let Some(member) = member {
                    all.push(member, GFP_KERNEL)?;
                }
            }
            // SAFETY: `pos` is a valid entry of the locked list.
            pos = unsafe { (*pos).next };
        }
        Ok(all)
    }
}

impl<T: Driver> Drop for DeviceSetGuard<'_, T> {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: By the type invariant we hold the lock.
            unsafe { bindings::mutex_unlock(&raw mut (*self.set).lock) };
        }
    }
}

/// A VFIO group file (`/dev/vfio/N`), held while a hot reset checks ownership against it.
pub struct GroupFile(ARef<crate::fs::file::LocalFile>);

impl GroupFile {
    /// Gets the file of `fd`: `EBADF` if there is none, `EINVAL` if it is not a VFIO group.
    pub fn from_fd(fd: i32) -> Result<Self> {
        let fd = u32::try_from(fd).map_err(|_| EBADF)?;
        let file = crate::fs::file::LocalFile::fget(fd)?;
        // SAFETY: `file` is a live file we hold a reference on.
        if !unsafe { bindings::vfio_file_is_group(file.as_ptr()) } {
            return Err(EINVAL);
        }
        Ok(Self(file))
    }
}

/// The capability chain of an info ioctl (`struct vfio_info_cap`), as the VFIO core builds it.
///
/// # Invariants
///
/// `caps.buf` is null or a `krealloc()` buffer of `caps.size` bytes owned by `self`.
pub struct InfoCaps {
    caps: bindings::vfio_info_cap,
}

/// A capability structure of an info ioctl.
///
/// # Safety
///
/// The type must start with a `struct vfio_info_cap_header`.
pub unsafe trait InfoCap: AsBytes {}

// SAFETY: The struct starts with `struct vfio_info_cap_header header`.
unsafe impl InfoCap for uapi::vfio_device_info_cap_pci_atomic_comp {}
// SAFETY: The struct starts with `struct vfio_info_cap_header header`.
unsafe impl InfoCap for uapi::vfio_region_info_cap_type {}
// SAFETY: A capability with no payload is its header alone.
unsafe impl InfoCap for uapi::vfio_info_cap_header {}

impl InfoCaps {
    /// An empty chain.
    pub fn new() -> Self {
        Self {
            caps: bindings::vfio_info_cap {
                buf: core::ptr::null_mut(),
                size: 0,
            },
        }
    }

    /// Appends `cap` to the chain (`vfio_info_add_capability()`).
    pub fn add<C: InfoCap>(&mut self, cap: &C) -> Result {
        let header = core::ptr::from_ref(cap)
            .cast::<bindings::vfio_info_cap_header>()
            .cast_mut();
        // SAFETY: `self.caps` is a valid chain; by `InfoCap`, `header` points to a capability
        // header followed by `size_of::<C>()` bytes in total, which are only read.
        to_result(unsafe {
            bindings::vfio_info_add_capability(&mut self.caps, header, size_of::<C>())
        })
    }

    /// Size of the chain in bytes.
    pub fn size(&self) -> usize {
        self.caps.size
    }

    /// Makes the `next` offsets of the chain relative to a buffer in which `offset` bytes
    /// precede it (`vfio_info_cap_shift()`).
    fn shift(&mut self, offset: usize) {
        if self.caps.size != 0 {
            // SAFETY: `self.caps` is a valid, non-empty chain.
            unsafe { bindings::vfio_info_cap_shift(&mut self.caps, offset) };
        }
    }

    /// The chain's bytes.
    fn as_bytes(&self) -> &[u8] {
        if self.caps.size == 0 {
            return &[];
        }
        // SAFETY: By the type invariant, `buf` holds `size` initialised bytes owned by `self`.
        unsafe { core::slice::from_raw_parts(self.caps.buf.cast::<u8>(), self.caps.size) }
    }

    /// Copies the chain to userspace at `dst`, with offsets relative to `dst - offset`, as the
    /// info struct of `offset` bytes precedes it.
    pub fn copy_to_user(&mut self, dst: UserPtr, offset: usize) -> Result {
        self.shift(offset);
        let bytes = self.as_bytes();
        UserSlice::new(dst, bytes.len()).writer().write_slice(bytes)
    }
}

impl Default for InfoCaps {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for InfoCaps {
    fn drop(&mut self) {
        // SAFETY: By the type invariant, `buf` is null or owned by `self`.
        unsafe { bindings::kfree(self.caps.buf.cast()) };
    }
}

/// Reads the first `minsz` bytes of an ioctl argument into a zeroed `A`, the way VFIO ioctls
/// do `copy_from_user(&info, arg, minsz)`.
pub fn read_arg<A: FromBytes + AsBytes>(arg: UserPtr, minsz: usize) -> Result<A> {
    // SAFETY: `A: FromBytes`, so all zeroes is a valid `A`.
    let mut val: A = unsafe { core::mem::zeroed() };
    let bytes = val.as_bytes_mut();
    let len = minsz.min(bytes.len());
    UserSlice::new(arg, len)
        .reader()
        .read_slice(&mut bytes[..len])?;
    Ok(val)
}

/// Writes the first `len` bytes of `val` back to the ioctl argument.
pub fn write_arg<A: AsBytes>(arg: UserPtr, val: &A, len: usize) -> Result {
    let bytes = val.as_bytes();
    let len = len.min(bytes.len());
    UserSlice::new(arg, len).writer().write_slice(&bytes[..len])
}

macro_rules! impl_ioctl_arg {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: A uAPI struct of `__u32`/`__s32`/`__u64` fields (and flexible arrays) laid out without padding: every
            // bit pattern is valid and no byte is uninitialised.
            unsafe impl FromBytes for $t {}
            // SAFETY: See `FromBytes` above.
            unsafe impl AsBytes for $t {}
        )*
    };
}

impl_ioctl_arg!(
    uapi::vfio_device_info,
    uapi::vfio_device_info_cap_pci_atomic_comp,
    uapi::vfio_irq_info,
    uapi::vfio_irq_set,
    uapi::vfio_device_ioeventfd,
    uapi::vfio_region_info,
    uapi::vfio_region_info_cap_type,
    uapi::vfio_info_cap_header,
    uapi::vfio_pci_hot_reset_info,
    uapi::vfio_pci_dependent_device,
    uapi::vfio_pci_hot_reset,
    uapi::vfio_device_feature_dma_buf,
    uapi::vfio_region_dma_range,
    uapi::vfio_device_feature_dma_buf_revoke,
    uapi::vfio_device_feature_dma_buf_memattr,
    uapi::vfio_device_low_power_entry_with_wakeup,
);

/// What a `VFIO_DEVICE_SET_IRQS` call carries after its header.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum IrqSetData {
    /// `VFIO_IRQ_SET_DATA_NONE`.
    None,
    /// `VFIO_IRQ_SET_DATA_BOOL`: one byte per interrupt.
    Bool,
    /// `VFIO_IRQ_SET_DATA_EVENTFD`: one `i32` per interrupt.
    EventFd,
}

impl IrqSetData {
    /// The bytes of data per interrupt.
    pub fn size(self) -> usize {
        match self {
            Self::None => 0,
            Self::Bool => 1,
            Self::EventFd => 4,
        }
    }
}

/// Checks the header of a `VFIO_DEVICE_SET_IRQS` call (`vfio_set_irqs_validate_and_prepare()`):
/// `num_irqs` interrupts at `hdr.index`, which must be below `max_irq_type`. Returns the kind of
/// data and its size in bytes after the header.
pub fn irq_set_prepare(
    hdr: &uapi::vfio_irq_set,
    num_irqs: u32,
    max_irq_type: u32,
) -> Result<(IrqSetData, usize)> {
    let minsz = core::mem::offset_of!(uapi::vfio_irq_set, count) + size_of::<u32>();
    let known = uapi::VFIO_IRQ_SET_DATA_TYPE_MASK | uapi::VFIO_IRQ_SET_ACTION_TYPE_MASK;
    if (hdr.argsz as usize) < minsz
        || hdr.index >= max_irq_type
        || hdr.count >= u32::MAX - hdr.start
        || hdr.flags & !known != 0
    {
        return Err(EINVAL);
    }
    // No overflow: `count < u32::MAX - start` above.
    if hdr.start >= num_irqs || hdr.start + hdr.count > num_irqs {
        return Err(EINVAL);
    }
    let data = match hdr.flags & uapi::VFIO_IRQ_SET_DATA_TYPE_MASK {
        uapi::VFIO_IRQ_SET_DATA_NONE => IrqSetData::None,
        uapi::VFIO_IRQ_SET_DATA_BOOL => IrqSetData::Bool,
        uapi::VFIO_IRQ_SET_DATA_EVENTFD => IrqSetData::EventFd,
        _ => return Err(EINVAL),
    };
    // C computes `count * size` in `int`; `count` is below `num_irqs` here, so no overflow.
    let size = hdr.count as usize * data.size();
    if (hdr.argsz as usize - minsz) < size {
        return Err(EINVAL);
    }
    Ok((data, size))
}

/// The callbacks of a [`Virqfd`].
pub trait VirqfdHandler: Send + Sync {
    /// The eventfd was signalled; runs in its wakeup, in atomic context. Returns whether
    /// [`Self::thread`] should run.
    fn handle(&self) -> bool;

    /// Runs from a workqueue after [`Self::handle`] asked for it.
    fn thread(&self);
}

/// An eventfd that calls back into the driver when signalled (`struct virqfd`), e.g. to unmask
/// an interrupt when userspace, or KVM on its behalf, signals it.
///
/// # Invariants
///
/// `virqfd` is the `struct virqfd *` the VFIO core sets and clears under its `virqfd_lock`; while
/// non-null, its callbacks get a pointer to `self` as `opaque`. `self` is pinned and drop
/// disables it, so the callbacks never see a dangling `self`.
#[pin_data(PinnedDrop)]
pub struct Virqfd<H: VirqfdHandler> {
    #[pin]
    virqfd: Opaque<*mut bindings::virqfd>,
    handler: H,
    #[pin]
    _pin: core::marker::PhantomPinned,
}

// SAFETY: The `virqfd` pointer is only touched by the VFIO core under its lock; the handler is `Send`.
unsafe impl<H: VirqfdHandler> Send for Virqfd<H> {}

// SAFETY: As above; the handler is `Sync`.
unsafe impl<H: VirqfdHandler> Sync for Virqfd<H> {}

impl<H: VirqfdHandler> Virqfd<H> {
    /// A disabled virqfd calling `handler`.
    pub fn new(handler: H) -> impl PinInit<Self> {
        pin_init!(Virqfd::<H> {
            virqfd: Opaque::new(core::ptr::null_mut()),
            handler,
            _pin: core::marker::PhantomPinned,
        })
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Starts calling the handler when eventfd `fd` is signalled (`vfio_virqfd_enable()`).
    /// Fails with `EBUSY` if it is already enabled, `EBADF` or `EINVAL` for a bad `fd`.
    pub fn enable(self: Pin<&Self>, fd: i32) -> Result {
        let opaque = core::ptr::from_ref(&*self).cast_mut().cast();
        // SAFETY: `virqfd` is valid and pinned; `opaque` is `self`, which stays valid until drop
        // disables the virqfd.
        to_result(unsafe {
            bindings::vfio_virqfd_enable(
                opaque,
                Some(Self::handle_callback),
                Some(Self::thread_callback),
                core::ptr::null_mut(),
                self.virqfd.get(),
                fd,
            )
        })
    }

    /// Stops calling the handler and waits for running calls (`vfio_virqfd_disable()`).
    pub fn disable(&self) {
        // SAFETY: `virqfd` is valid; the core tolerates a disabled virqfd.
        unsafe { bindings::vfio_virqfd_disable(self.virqfd.get()) };
    }

    /// Waits for a queued [`VirqfdHandler::thread`] to finish (`vfio_virqfd_flush_thread()`).
    pub fn flush_thread(&self) {
        // SAFETY: `virqfd` is valid; the core tolerates a disabled virqfd.
        unsafe { bindings::vfio_virqfd_flush_thread(self.virqfd.get()) };
    }

    /// # Safety
    ///
    /// `opaque` is the `self` passed by `enable`, still enabled.
    unsafe extern "C" fn handle_callback(opaque: *mut c_void, _data: *mut c_void) -> c_int {
        // SAFETY: By the type invariant `opaque` is a live, pinned `Self`.
        let this = unsafe { &*opaque.cast::<Self>() };
        this.handler.handle().into()
    }

    /// # Safety
    ///
    /// As [`Self::handle_callback`].
    unsafe extern "C" fn thread_callback(opaque: *mut c_void, _data: *mut c_void) {
        // SAFETY: By the type invariant `opaque` is a live, pinned `Self`.
        let this = unsafe { &*opaque.cast::<Self>() };
        this.handler.thread();
    }
}

#[pinned_drop]
impl<H: VirqfdHandler> PinnedDrop for Virqfd<H> {
    fn drop(self: Pin<&mut Self>) {
        self.disable();
    }
}

/// The VFIO device operations built from a [`Driver`].
struct VTable<T: Driver>(PhantomData<T>);

impl<T: Driver> VTable<T> {
    const VTABLE: bindings::vfio_device_ops = bindings::vfio_device_ops {
        name: crate::str::as_char_ptr_in_const_context(T::NAME).cast_mut(),
        open_device: Some(Self::open_device),
        close_device: Some(Self::close_device),
        ioctl: Some(Self::ioctl),
        read: Some(Self::read),
        write: Some(Self::write),
        get_region_info_caps: Some(Self::get_region_info_caps),
        device_feature: Some(Self::device_feature),
        mmap: Some(Self::mmap),
        request: Some(Self::request),
        match_: if T::HAS_MATCH_TOKEN {
            Some(Self::match_)
        } else {
            None
        },
        match_token_uuid: if T::HAS_MATCH_TOKEN {
            Some(Self::match_token_uuid)
        } else {
            None
        },
        bind_iommufd: Some(bindings::vfio_iommufd_physical_bind),
        unbind_iommufd: Some(bindings::vfio_iommufd_physical_unbind),
        attach_ioas: Some(bindings::vfio_iommufd_physical_attach_ioas),
        detach_ioas: Some(bindings::vfio_iommufd_physical_detach_ioas),
        pasid_attach_ioas: Some(bindings::vfio_iommufd_physical_pasid_attach_ioas),
        pasid_detach_ioas: Some(bindings::vfio_iommufd_physical_pasid_detach_ioas),
        ..pin_init::zeroed()
    };

    /// # Safety
    ///
    /// Called by the VFIO core with a registered `vfio_device` of a [`Device<T>`].
    unsafe extern "C" fn open_device(vdev: *mut bindings::vfio_device) -> c_int {
        // SAFETY: By the safety requirements, `vdev` belongs to a live, registered `Device<T>`.
        let dev = unsafe { Device::<T, device::Bound>::from_raw(vdev) };
        from_result(|| {
            // SAFETY: We are in a callback of a registered device.
            unsafe { dev.with_data(|data| T::open_device(dev, data)) }?;
            Ok(0)
        })
    }

    /// # Safety
    ///
    /// Called by the VFIO core with a registered `vfio_device` of a [`Device<T>`].
    unsafe extern "C" fn close_device(vdev: *mut bindings::vfio_device) {
        // SAFETY: By the safety requirements, `vdev` belongs to a live, registered `Device<T>`.
        let dev = unsafe { Device::<T, device::Bound>::from_raw(vdev) };
        // SAFETY: The VFIO core calls `close_device` with the device set lock held.
        let dev_set = unsafe { DeviceSetGuard::<T>::held((*vdev).dev_set) };
        // SAFETY: We are in a callback of a registered device.
        unsafe { dev.with_data(|data| T::close_device(dev, data, &dev_set)) }
    }

    /// # Safety
    ///
    /// Called by the VFIO core with a registered `vfio_device` of a [`Device<T>`].
    unsafe extern "C" fn ioctl(
        vdev: *mut bindings::vfio_device,
        cmd: c_uint,
        arg: c_ulong,
    ) -> c_long {
        // SAFETY: By the safety requirements, `vdev` belongs to a live, registered `Device<T>`.
        let dev = unsafe { Device::<T, device::Bound>::from_raw(vdev) };
        let arg = UserPtr::from_addr(arg);
        from_result(|| {
            // SAFETY: We are in a callback of a registered device.
            unsafe { dev.with_data(|data| T::ioctl(dev, data, cmd, arg)) }
        })
    }

    /// # Safety
    ///
    /// Called by the VFIO core with a registered `vfio_device` of a [`Device<T>`] and a valid
    /// file position.
    unsafe extern "C" fn read(
        vdev: *mut bindings::vfio_device,
        buf: *mut c_char,
        count: usize,
        ppos: *mut bindings::loff_t,
    ) -> isize {
        // SAFETY: By the safety requirements, `vdev` belongs to a live, registered `Device<T>`
        // and `ppos` is valid for the duration of the call.
        let (dev, pos) = unsafe { (Device::<T, device::Bound>::from_raw(vdev), &mut *ppos) };
        let buf = UserPtr::from_ptr(buf.cast());
        from_result(|| {
            // SAFETY: We are in a callback of a registered device.
            let done = unsafe { dev.with_data(|data| T::read(dev, data, buf, count, pos)) }?;
            Ok(done.try_into()?)
        })
    }

    /// # Safety
    ///
    /// Called by the VFIO core with a registered `vfio_device` of a [`Device<T>`] and a valid
    /// file position.
    unsafe extern "C" fn write(
        vdev: *mut bindings::vfio_device,
        buf: *const c_char,
        count: usize,
        ppos: *mut bindings::loff_t,
    ) -> isize {
        // SAFETY: By the safety requirements, `vdev` belongs to a live, registered `Device<T>`
        // and `ppos` is valid for the duration of the call.
        let (dev, pos) = unsafe { (Device::<T, device::Bound>::from_raw(vdev), &mut *ppos) };
        let buf = UserPtr::from_ptr(buf.cast_mut().cast());
        from_result(|| {
            // SAFETY: We are in a callback of a registered device.
            let done = unsafe { dev.with_data(|data| T::write(dev, data, buf, count, pos)) }?;
            Ok(done.try_into()?)
        })
    }

    /// # Safety
    ///
    /// Called by the VFIO core with a registered `vfio_device` of a [`Device<T>`], and with
    /// `info` and an empty `caps` that it owns for the duration of the call.
    unsafe extern "C" fn get_region_info_caps(
        vdev: *mut bindings::vfio_device,
        info: *mut bindings::vfio_region_info,
        caps: *mut bindings::vfio_info_cap,
    ) -> c_int {
        // SAFETY: By the safety requirements, `vdev` belongs to a live, registered `Device<T>`;
        // `info` is valid and exclusively ours for the call. The kernel's and the uAPI's
        // `struct vfio_region_info` are the same C type.
        let (dev, info) = unsafe {
            (
                Device::<T, device::Bound>::from_raw(vdev),
                &mut *info.cast::<uapi::vfio_region_info>(),
            )
        };
        // The capabilities are built in a chain of our own and handed over to the core's on
        // success, which frees it.
        let mut chain = InfoCaps::new();
        from_result(|| {
            // SAFETY: We are in a callback of a registered device.
            unsafe { dev.with_data(|data| T::get_region_info(dev, data, info, &mut chain)) }?;
            // SAFETY: The VFIO core passes an empty chain that it frees after the call.
            unsafe { core::ptr::swap(caps, &raw mut chain.caps) };
            Ok(0)
        })
    }

    /// # Safety
    ///
    /// Called by the VFIO core with a registered `vfio_device` of a [`Device<T>`].
    unsafe extern "C" fn device_feature(
        vdev: *mut bindings::vfio_device,
        flags: u32,
        arg: *mut c_void,
        argsz: usize,
    ) -> c_int {
        // SAFETY: By the safety requirements, `vdev` belongs to a live, registered `Device<T>`.
        let dev = unsafe { Device::<T, device::Bound>::from_raw(vdev) };
        let arg = UserPtr::from_ptr(arg);
        from_result(|| {
            // SAFETY: We are in a callback of a registered device.
            unsafe { dev.with_data(|data| T::device_feature(dev, data, flags, arg, argsz)) }
        })
    }

    /// # Safety
    ///
    /// Called by the VFIO core from `mmap()` of the file of a registered `vfio_device` of a
    /// [`Device<T>`], with a VMA being set up.
    unsafe extern "C" fn mmap(
        vdev: *mut bindings::vfio_device,
        vma: *mut bindings::vm_area_struct,
    ) -> c_int {
        // SAFETY: By the safety requirements, `vdev` belongs to a live, registered `Device<T>`
        // and `vma` is being set up by `mmap()`.
        let (dev, vma) = unsafe {
            (
                Device::<T, device::Bound>::from_raw(vdev),
                VmaNew::from_raw(vma),
            )
        };
        from_result(|| {
            // SAFETY: We are in a callback of a registered device.
            unsafe { dev.with_data(|data| T::mmap(dev, data, vma)) }?;
            Ok(0)
        })
    }

    /// # Safety
    ///
    /// Called by the VFIO core while unregistering a `vfio_device` of a [`Device<T>`] that is
    /// still open; the parent is bound until unregistration completes.
    unsafe extern "C" fn request(vdev: *mut bindings::vfio_device, count: c_uint) {
        // SAFETY: By the safety requirements, `vdev` belongs to a live `Device<T>` whose data
        // is dropped only after unregistration completes.
        let dev = unsafe { Device::<T, device::Bound>::from_raw(vdev) };
        // SAFETY: As above, the data is alive for the whole callback.
        unsafe { dev.with_data(|data| T::request(dev, data, count)) }
    }
}

impl<T: Driver> VTable<T> {
    /// # Safety
    ///
    /// Called by the VFIO core with a registered `vfio_device` of a [`Device<T>`], under its
    /// group's device lock, and a C string.
    unsafe extern "C" fn match_(vdev: *mut bindings::vfio_device, buf: *mut c_char) -> c_int {
        // SAFETY: By the safety requirements, `vdev` belongs to a live, registered `Device<T>`:
        // unregistering takes it off the group's list under the lock the caller holds.
        let dev = unsafe { Device::<T, device::Bound>::from_raw(vdev) };
        // SAFETY: By the safety requirements, `buf` is a C string.
        let buf = unsafe { CStr::from_char_ptr(buf) };
        match match_name(buf.to_bytes(), dev.parent().name().to_bytes()) {
            Ok(None) => 0,
            Ok(Some(token)) => from_result(|| {
                // SAFETY: We are in a callback of a registered device.
                unsafe { dev.with_data(|data| T::match_token_uuid(dev, data, token.as_ref())) }?;
                Ok(1)
            }),
            Err(e) => e.to_errno(),
        }
    }

    /// # Safety
    ///
    /// Called by the VFIO core with a registered `vfio_device` of a [`Device<T>`], and a null
    /// or valid `uuid`.
    unsafe extern "C" fn match_token_uuid(
        vdev: *mut bindings::vfio_device,
        uuid: *const bindings::uuid_t,
    ) -> c_int {
        // SAFETY: By the safety requirements, `vdev` belongs to a live, registered `Device<T>`.
        let dev = unsafe { Device::<T, device::Bound>::from_raw(vdev) };
        // SAFETY: By the safety requirements, `uuid` is null or valid for reads.
        let token = unsafe { uuid.as_ref() }.map(|u| Uuid(u.b));
        from_result(|| {
            // SAFETY: We are in a callback of a registered device.
            unsafe { dev.with_data(|data| T::match_token_uuid(dev, data, token.as_ref())) }?;
            Ok(0)
        })
    }
}

#[macros::kunit_tests(rust_vfio)]
mod tests {
    use super::*;

    const NAME: &[u8] = b"0000:04:10.0";
    const TOKEN: &[u8] = b"bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3";

    fn with(suffix: &[u8]) -> KVec<u8> {
        let mut v = KVec::new();
        v.extend_from_slice(NAME, GFP_KERNEL).unwrap();
        v.extend_from_slice(suffix, GFP_KERNEL).unwrap();
        v
    }

    #[test]
    fn match_name_plain() {
        assert_eq!(match_name(NAME, NAME), Ok(Some(None)));
        assert_eq!(match_name(b"0000:04:10.1", NAME), Ok(None));
        // Another device whose name starts with this one's.
        assert_eq!(match_name(&with(b"0"), NAME), Ok(None));
        assert_eq!(match_name(&with(b"   "), NAME), Ok(Some(None)));
    }

    #[test]
    fn match_name_token() {
        let token = Uuid::parse(TOKEN).unwrap();
        let mut arg = KVec::new();
        arg.extend_from_slice(b"  vf_token=", GFP_KERNEL).unwrap();
        arg.extend_from_slice(TOKEN, GFP_KERNEL).unwrap();
        assert_eq!(match_name(&with(&arg), NAME), Ok(Some(Some(token))));
        arg.push(b' ', GFP_KERNEL).unwrap();
        assert_eq!(match_name(&with(&arg), NAME), Ok(Some(Some(token))));
        // Twice, or something after the UUID.
        let mut twice = KVec::new();
        twice.extend_from_slice(&arg, GFP_KERNEL).unwrap();
        twice.extend_from_slice(&arg, GFP_KERNEL).unwrap();
        assert_eq!(match_name(&with(&twice), NAME), Err(EINVAL));
        arg.push(b'x', GFP_KERNEL).unwrap();
        assert_eq!(match_name(&with(&arg), NAME), Err(EINVAL));
    }

    #[test]
    fn match_name_bad_token() {
        assert_eq!(match_name(&with(b" vf_token=bd8d9d2b"), NAME), Err(EINVAL));
        assert_eq!(match_name(&with(b" vf_token="), NAME), Err(EINVAL));
        assert_eq!(match_name(&with(b" token=x"), NAME), Err(EINVAL));
        assert_eq!(
            match_name(
                &with(b" vf_token=bd8d9d2b-5a5f-4f5a-a211-f591514ba1fz"),
                NAME
            ),
            Err(EINVAL)
        );
    }

    fn atomic_cap(flags: u32) -> uapi::vfio_device_info_cap_pci_atomic_comp {
        uapi::vfio_device_info_cap_pci_atomic_comp {
            header: uapi::vfio_info_cap_header {
                id: uapi::VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP as u16,
                version: 1,
                next: 0,
            },
            flags,
            reserved: 0,
        }
    }

    fn header_at(bytes: &[u8], offset: usize) -> (u16, u16, u32) {
        let field = |at: usize, len: usize| {
            bytes[offset + at..offset + at + len]
                .iter()
                .rev()
                .fold(0u32, |acc, &b| (acc << 8) | u32::from(b))
        };
        (field(0, 2) as u16, field(2, 2) as u16, field(4, 4))
    }

    fn irq_set(argsz: u32, flags: u32, index: u32, start: u32, count: u32) -> uapi::vfio_irq_set {
        uapi::vfio_irq_set {
            argsz,
            flags,
            index,
            start,
            count,
            ..Default::default()
        }
    }

    /// `irq_set_prepare` answers as `vfio_set_irqs_validate_and_prepare()`.
    #[test]
    fn irq_set_validation() {
        let trigger = uapi::VFIO_IRQ_SET_ACTION_TRIGGER;
        let none = uapi::VFIO_IRQ_SET_DATA_NONE | trigger;
        let bools = uapi::VFIO_IRQ_SET_DATA_BOOL | trigger;
        let fds = uapi::VFIO_IRQ_SET_DATA_EVENTFD | trigger;
        let check = |hdr: uapi::vfio_irq_set, num: u32| irq_set_prepare(&hdr, num, 5);

        assert_eq!(
            check(irq_set(20, none, 0, 0, 1), 1),
            Ok((IrqSetData::None, 0))
        );
        assert_eq!(
            check(irq_set(21, bools, 2, 1, 1), 8),
            Ok((IrqSetData::Bool, 1))
        );
        assert_eq!(
            check(irq_set(36, fds, 2, 4, 4), 8),
            Ok((IrqSetData::EventFd, 16))
        );
        // Disabling: count 0 anywhere below the number of interrupts.
        assert_eq!(
            check(irq_set(20, none, 1, 0, 0), 1),
            Ok((IrqSetData::None, 0))
        );
        // Short argsz, for the header or for the data.
        assert_eq!(check(irq_set(19, none, 0, 0, 1), 1), Err(EINVAL));
        assert_eq!(check(irq_set(35, fds, 2, 4, 4), 8), Err(EINVAL));
        // Index past the last type.
        assert_eq!(check(irq_set(20, none, 5, 0, 1), 1), Err(EINVAL));
        // Start or start + count beyond the interrupts; no interrupts at all.
        assert_eq!(check(irq_set(20, none, 2, 8, 0), 8), Err(EINVAL));
        assert_eq!(check(irq_set(20, none, 2, 7, 2), 8), Err(EINVAL));
        assert_eq!(check(irq_set(20, none, 0, 0, 1), 0), Err(EINVAL));
        // Overflow of start + count.
        assert_eq!(check(irq_set(20, none, 2, 1, u32::MAX - 1), 8), Err(EINVAL));
        // Unknown flags, no or several data types.
        assert_eq!(check(irq_set(20, none | 1 << 6, 0, 0, 1), 1), Err(EINVAL));
        assert_eq!(check(irq_set(20, trigger, 0, 0, 1), 1), Err(EINVAL));
        assert_eq!(check(irq_set(24, none | bools, 0, 0, 1), 1), Err(EINVAL));
    }

    #[test]
    fn empty_chain() {
        let mut caps = InfoCaps::new();
        caps.shift(24);
        assert_eq!(caps.size(), 0);
        assert!(caps.as_bytes().is_empty());
    }

    #[test]
    fn one_capability() -> Result {
        let mut caps = InfoCaps::new();
        caps.add(&atomic_cap(uapi::VFIO_PCI_ATOMIC_COMP64))?;
        assert_eq!(
            caps.size(),
            size_of::<uapi::vfio_device_info_cap_pci_atomic_comp>()
        );
        caps.shift(size_of::<uapi::vfio_device_info>());
        let id = uapi::VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP as u16;
        // The last capability's `next` stays 0 after the shift.
        assert_eq!(header_at(caps.as_bytes(), 0), (id, 1, 0));
        assert_eq!(caps.as_bytes()[8], uapi::VFIO_PCI_ATOMIC_COMP64 as u8);
        Ok(())
    }

    #[test]
    fn chain_offsets_are_shifted() -> Result {
        let mut caps = InfoCaps::new();
        caps.add(&atomic_cap(1))?;
        caps.add(&atomic_cap(2))?;
        let cap_size = size_of::<uapi::vfio_device_info_cap_pci_atomic_comp>();
        assert_eq!(caps.size(), 2 * cap_size);
        // Before the shift, `next` is relative to the chain; after, to the info struct.
        assert_eq!(header_at(caps.as_bytes(), 0).2 as usize, cap_size);
        let info_size = size_of::<uapi::vfio_device_info>();
        caps.shift(info_size);
        assert_eq!(
            header_at(caps.as_bytes(), 0).2 as usize,
            info_size + cap_size
        );
        assert_eq!(header_at(caps.as_bytes(), cap_size).2, 0);
        assert_eq!(caps.as_bytes()[cap_size + 8], 2);
        Ok(())
    }
}
