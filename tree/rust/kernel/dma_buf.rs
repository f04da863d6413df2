// SPDX-License-Identifier: GPL-2.0

//! DMA-BUF exporters whose buffers map device memory into userspace.
//!
//! An [`Exporter`] exports a buffer with [`DmaBuf::export`]. The buffer lives as long as its
//! file: a file descriptor, a VMA or an [`ARef<DmaBuf>`] keeps it alive. Every buffer of an
//! exporter is a member of a [`DmaBufSet`] until it is released, so the exporter can find
//! them all again (to revoke them) without owning them.
//!
//! A VMA set up by [`DmaBuf::install`] maps the buffer's [`PhysRange`]s on demand: each fault
//! calls [`Exporter::fault`], which inserts a PTE, PMD or PUD with [`VmFault::insert_pfn`].
//! [`DmaBuf::zap`] removes every mapping of the buffer, so the next access faults again.
//!
//! Importers reach the ranges of an exporter that implements [`Exporter::map`] (the DMA
//! addresses of the ranges for their device, through the kernel's peer-to-peer mapping
//! helpers) or [`Exporter::phys`] (the physical range itself, for iommufd). Only importers
//! that allow peer-to-peer and can be revoked attach; [`DmaBuf::revoke_importers`] takes their
//! access away and waits until they gave it up.
//!
//! C header: [`include/linux/dma-buf.h`](srctree/include/linux/dma-buf.h)

use crate::{
    bindings,
    error::{from_err_ptr, VTABLE_DEFAULT_ERROR},
    ffi::{c_int, c_uint, c_ulong},
    fs::File,
    mm::virt::{VmaNew, VmaRef},
    pci::P2pProvider,
    prelude::*,
    str::CStr,
    sync::{
        aref::{ARef, AlwaysRefCounted},
        new_condvar, new_mutex, Arc, CondVar, Mutex,
    },
    types::Opaque,
    ModuleMetadata,
};
use core::{marker::PhantomData, ptr::NonNull};

/// Open flags for a buffer's file that userspace may read and write (`O_RDWR`).
pub const O_RDWR: u32 = bindings::O_RDWR;

/// A span of physical device memory that a buffer maps (`struct phys_vec`).
///
/// # Invariants
///
/// `start..start + len` is device memory (MMIO) that userspace may map while its owner
/// allows it, `len` is non-zero and both are page aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    start: u64,
    len: u64,
}

impl PhysRange {
    /// Creates a range from its first byte and length.
    ///
    /// # Safety
    ///
    /// `start..start + len` is device memory that the caller's device owns and that userspace
    /// may map; `start` and `len` are page aligned and `len` is not zero.
    pub const unsafe fn new(start: u64, len: u64) -> Self {
        // INVARIANT: The caller guarantees the memory and alignment requirements.
        Self { start, len }
    }

    /// The physical address of the range's first byte.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The range's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the range is empty; never, by the type invariant.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The page frame `offset` bytes into the range, if it is inside.
    pub fn pfn_at(&self, offset: u64) -> Option<Pfn> {
        if offset >= self.len {
            return None;
        }
        // INVARIANT: The page is inside the range, device memory userspace may map.
        usize::try_from((self.start + offset) >> bindings::PAGE_SHIFT)
            .ok()
            .map(Pfn)
    }
}

/// The page frame number of a page of a [`PhysRange`].
///
/// # Invariants
///
/// The frame is device memory that userspace may map: it comes from [`PhysRange::pfn_at`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pfn(usize);

impl Pfn {
    /// The frame number.
    pub fn get(self) -> usize {
        self.0
    }
}

/// The result of a fault handler (`vm_fault_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmFaultReason(bindings::vm_fault_t);

impl VmFaultReason {
    /// The access gets `SIGBUS` (`VM_FAULT_SIGBUS`).
    pub const SIGBUS: Self = Self(bindings::vm_fault_reason_VM_FAULT_SIGBUS);
    /// The core retries with a smaller page (`VM_FAULT_FALLBACK`).
    pub const FALLBACK: Self = Self(bindings::vm_fault_reason_VM_FAULT_FALLBACK);

    /// The raw `vm_fault_t`.
    pub fn as_raw(self) -> u32 {
        self.0
    }
}

/// A page fault in a VMA set up by [`DmaBuf::install`], while its handler runs.
///
/// # Invariants
///
/// Wraps a valid `struct vm_fault` whose VMA is a shared `VM_PFNMAP` mapping of a buffer.
#[repr(transparent)]
pub struct VmFault(Opaque<bindings::vm_fault>);

impl VmFault {
    /// # Safety
    ///
    /// `ptr` is the `vm_fault` of a fault handler of a VMA set up by [`DmaBuf::install`],
    /// valid for `'a`.
    unsafe fn from_raw<'a>(ptr: *mut bindings::vm_fault) -> &'a Self {
        // SAFETY: `VmFault` is a transparent wrapper of `vm_fault`; the caller guarantees the
        // pointer is valid for `'a`.
        unsafe { &*ptr.cast() }
    }

    fn as_raw(&self) -> *mut bindings::vm_fault {
        self.0.get()
    }

    /// The faulting address, rounded down to a page.
    pub fn address(&self) -> usize {
        // SAFETY: By the type invariant the fault is valid; `address` is set before the
        // handler runs and not changed during it.
        unsafe { (*self.as_raw()).__bindgen_anon_1.address }
    }

    /// The VMA of the fault.
    pub fn vma(&self) -> &VmaRef {
        // SAFETY: By the type invariant `vma` is valid; the core holds the mmap or VMA read
        // lock while the handler runs.
        unsafe { VmaRef::from_raw((*self.as_raw()).__bindgen_anon_1.vma) }
    }

    /// Maps `pfn` at the fault's address, as one page of `PAGE_SIZE << order` bytes aligned
    /// to its size: a PTE for order 0, a PMD or a PUD for their orders. Other orders, and
    /// huge orders the architecture cannot map, give [`VmFaultReason::FALLBACK`].
    pub fn insert_pfn(&self, pfn: Pfn, order: u32) -> VmFaultReason {
        let raw = self.as_raw();
        let pfn = pfn.get() as c_ulong;
        let ret = match order {
            // SAFETY: By the type invariants the VMA is a shared `VM_PFNMAP` mapping and the
            // frame is device memory that userspace may map.
            0 => unsafe { bindings::vmf_insert_pfn(self.vma().as_ptr(), self.address(), pfn) },
            #[cfg(CONFIG_ARCH_SUPPORTS_PMD_PFNMAP)]
            // SAFETY: As above; the core asked for a PMD-sized page at this address.
            bindings::PMD_ORDER => unsafe { bindings::vmf_insert_pfn_pmd(raw, pfn, false) },
            #[cfg(CONFIG_ARCH_SUPPORTS_PUD_PFNMAP)]
            // SAFETY: As above; the core asked for a PUD-sized page at this address.
            bindings::PUD_ORDER => unsafe { bindings::vmf_insert_pfn_pud(raw, pfn, false) },
            _ => return VmFaultReason::FALLBACK,
        };
        let _ = raw;
        VmFaultReason(ret)
    }
}

/// The memory type of a buffer's mappings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemAttr {
    /// Uncached (`pgprot_noncached()`), as `io_remap_pfn_range()` maps MMIO.
    NonCached,
    /// Write-combining (`pgprot_writecombine()`).
    WriteCombine,
}

/// What an exporter does with its buffers; the buffer's exporter data is a `Self`.
///
/// Importers attach only to an exporter that implements [`Exporter::map`] or
/// [`Exporter::phys`], and only if they allow peer-to-peer and revocation.
#[vtable]
pub trait Exporter: Sized + Send + Sync + 'static {
    /// Sets up `vma` to map the buffer (`dma_buf_ops.mmap`, `mmap()` of the buffer's fd);
    /// the core has checked that the VMA's page offset and length lie within the buffer.
    /// Ends with [`DmaBuf::install`] when the mapping is allowed.
    fn mmap(buf: &DmaBuf<Self>, vma: &VmaNew) -> Result;

    /// Resolves a fault in a VMA set up by [`DmaBuf::install`] for a page of
    /// `PAGE_SIZE << order` bytes (`vm_operations_struct.huge_fault`, and `fault` with order
    /// 0), with [`VmFault::insert_pfn`] or an error reason.
    fn fault(buf: &DmaBuf<Self>, fault: &VmFault, order: u32) -> VmFaultReason;

    /// Whether an importer may attach now (`dma_buf_ops.attach`), after the core checked that
    /// it allows peer-to-peer: `ENODEV` for a revoked buffer.
    fn attach(_buf: &DmaBuf<Self>) -> Result {
        Ok(())
    }

    /// Maps the buffer for an importer's device with [`Mapper::map`] (`map_dma_buf`), under the
    /// buffer's reservation lock.
    fn map<'a>(_buf: &'a DmaBuf<Self>, _mapper: Mapper<'a>) -> Result<Mapped<'a>> {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// The buffer's one physical range, for an importer that maps it itself
    /// (`dma_buf_ops.get_phys`), under the buffer's reservation lock: `ENODEV` for a revoked
    /// buffer, `EOPNOTSUPP` if it is not one range.
    fn phys(_buf: &DmaBuf<Self>) -> Result<PhysRange> {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// The offset in the buffer of the byte `vma`, a mapping of the buffer, maps at its start
    /// (`dma_buf_ops.vma_offset`), under the mmap lock: lets an importer handed a user address
    /// (iommufd's VFIO type1 compatibility) import the buffer range behind it.
    fn vma_offset(_buf: &DmaBuf<Self>, _vma: &VmaRef) -> Result<u64> {
        build_error!(VTABLE_DEFAULT_ERROR)
    }
}

/// An importer's request to map a buffer, given to [`Exporter::map`] for the duration of the
/// callback (`'a`).
///
/// # Invariants
///
/// `attach` is an attachment of the buffer being mapped, whose reservation lock is held for
/// `'a`; `size` is the buffer's size.
pub struct Mapper<'a> {
    attach: NonNull<bindings::dma_buf_attachment>,
    dir: bindings::dma_data_direction,
    size: usize,
    _p: PhantomData<&'a ()>,
}

impl<'a> Mapper<'a> {
    /// Maps `ranges` of the memory BAR of `provider`, the buffer's contents in order, for the
    /// importer's device (`dma_buf_phys_vec_to_sgt()`): through the bus or the host bridge as
    /// the topology allows, `EINVAL` if the device cannot reach the provider.
    pub fn map(self, provider: &P2pProvider, ranges: &[PhysRange]) -> Result<Mapped<'a>> {
        let mut vec = KVec::with_capacity(ranges.len(), GFP_KERNEL)?;
        for range in ranges {
            vec.push(
                bindings::phys_vec {
                    paddr: range.start,
                    len: usize::try_from(range.len).map_err(|_| EOVERFLOW)?,
                },
                GFP_KERNEL,
            )?;
        }
        // SAFETY: By the type invariant `attach` is valid and its buffer's reservation lock is
        // held; `provider` is valid while borrowed, and the helper only uses it during the call;
        // `vec` holds `ranges.len()` ranges of device memory the exporter may offer.
        let sgt = from_err_ptr(unsafe {
            bindings::dma_buf_phys_vec_to_sgt(
                self.attach.as_ptr(),
                provider.as_raw(),
                vec.as_mut_ptr(),
                vec.len(),
                self.size,
                self.dir,
            )
        })?;
        // INVARIANT: The helper mapped `sgt` for `attach` in direction `dir`.
        Ok(Mapped {
            // SAFETY: `from_err_ptr()` returned no error, so `sgt` is a valid table.
            sgt: unsafe { NonNull::new_unchecked(sgt) },
            attach: self.attach,
            dir: self.dir,
            _p: PhantomData,
        })
    }
}

/// A mapping made by [`Mapper::map`], which [`Exporter::map`] hands back to the core; dropped
/// instead, it is unmapped.
///
/// # Invariants
///
/// `sgt` was mapped for `attach` in direction `dir` by `dma_buf_phys_vec_to_sgt()` and is not
/// freed yet; `attach` lives for `'a`.
pub struct Mapped<'a> {
    sgt: NonNull<bindings::sg_table>,
    attach: NonNull<bindings::dma_buf_attachment>,
    dir: bindings::dma_data_direction,
    _p: PhantomData<&'a ()>,
}

impl Drop for Mapped<'_> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant the table is a live mapping for `attach`, which is
        // freed only after its mappings are.
        unsafe { bindings::dma_buf_free_sgt(self.attach.as_ptr(), self.sgt.as_ptr(), self.dir) };
    }
}

/// Whether an importer may attach (C's `vfio_pci_dma_buf_attach()` order): the exporter offers
/// importers something (`EOPNOTSUPP`), the importer allows peer-to-peer (`EOPNOTSUPP`), the
/// exporter agrees (its error, `ENODEV` for a revoked buffer), and the importer can be revoked
/// (`EOPNOTSUPP`: it must drop its mappings when told to, or a revocation could wait forever).
fn attach_verdict(
    offers: bool,
    peer2peer: bool,
    exporter: impl FnOnce() -> Result,
    revocable: bool,
) -> Result {
    if !offers || !peer2peer {
        return Err(EOPNOTSUPP);
    }
    exporter()?;
    if !revocable {
        return Err(EOPNOTSUPP);
    }
    Ok(())
}

/// The `priv` of an exported `struct dma_buf`.
#[pin_data]
struct Exported<T: Exporter> {
    set: Arc<DmaBufSet<T>>,
    #[pin]
    data: T,
    /// How many importer mappings ([`Mapped`]) are not unmapped yet.
    #[pin]
    mappings: Mutex<usize>,
    /// Signalled when `mappings` drops to zero.
    #[pin]
    unmapped: CondVar,
}

/// A pointer to a member of a [`DmaBufSet`].
struct Member(NonNull<bindings::dma_buf>);

// SAFETY: A `dma_buf` may be referenced from any thread; the pointer is only dereferenced
// under the set's lock, while the buffer is not yet released.
unsafe impl Send for Member {}

/// The buffers of one exporter that have not been released yet.
///
/// # Invariants
///
/// Every pointer in `members` is a `dma_buf` exported with this set whose release callback has
/// not returned: the callback removes it under `members`' lock first.
#[pin_data]
pub struct DmaBufSet<T: Exporter> {
    #[pin]
    members: Mutex<KVec<Member>>,
    _p: PhantomData<T>,
}

impl<T: Exporter> DmaBufSet<T> {
    /// Creates an empty set.
    pub fn new() -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Self {
                members <- new_mutex!(KVec::new(), "DmaBufSet::members"),
                _p: PhantomData,
            }),
            GFP_KERNEL,
        )
    }

    /// Calls `f` on every buffer of the set that is not being released, holding a reference
    /// to it for the call. Nothing is allocated, so a revoke cannot fail.
    pub fn for_each(&self, mut f: impl FnMut(&DmaBuf<T>)) {
        let members = self.members.lock();
        for member in members.iter() {
            // SAFETY: By the type invariant the `dma_buf` is not freed while it is a member and
            // the lock is held. The buffer can outlive its file (an O_PATH open pins the
            // dentry, whose release frees the buffer), but the file's release sets `file` to
            // NULL before the file is freed, and `get_file_active()` fails on NULL and on a
            // file whose count reached zero.
            let file = unsafe { bindings::get_file_active(&raw mut (*member.0.as_ptr()).file) };
            if file.is_null() {
                continue;
            }
            // SAFETY: We hold a reference to the buffer's file, so the buffer is alive; it was
            // exported with `T`'s ops, being a member of a `DmaBufSet<T>`.
            f(unsafe { DmaBuf::from_raw(member.0.as_ptr()) });
            // SAFETY: The reference taken above. `fput()` defers the final release to task
            // work or a workqueue, so the release callback never runs under the lock here.
            unsafe { bindings::fput(file) };
        }
    }

    fn remove(&self, buf: *mut bindings::dma_buf) {
        self.members.lock().retain(|m| m.0.as_ptr() != buf);
    }
}

/// An exported buffer (`struct dma_buf`) of exporter `T`.
///
/// # Invariants
///
/// The `dma_buf` was exported by [`DmaBuf::export`] with `T`'s ops: its `priv` is an
/// `Exported<T>` owned by the buffer until its release callback. A `&DmaBuf<T>` is only
/// handed out while a reference to the buffer's file is held.
#[repr(transparent)]
pub struct DmaBuf<T: Exporter> {
    inner: Opaque<bindings::dma_buf>,
    _p: PhantomData<T>,
}

/// The reservation lock of a buffer (`dma_resv_lock()`), unlocked on drop.
struct ResvGuard<'a> {
    resv: *mut bindings::dma_resv,
    _p: PhantomData<&'a ()>,
}

impl Drop for ResvGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: The guard holds the lock of a reservation object that outlives it.
        unsafe { bindings::dma_resv_unlock(self.resv) };
    }
}

// SAFETY: The buffer is reference counted through its file and used from any thread; the
// exporter data is `Send + Sync`.
unsafe impl<T: Exporter> Send for DmaBuf<T> {}
// SAFETY: As above; shared references only read the buffer or call thread-safe C functions.
unsafe impl<T: Exporter> Sync for DmaBuf<T> {}

// SAFETY: A buffer's references are references to its file (`get_dma_buf()`/`dma_buf_put()`).
unsafe impl<T: Exporter> AlwaysRefCounted for DmaBuf<T> {
    fn inc_ref(&self) {
        // SAFETY: By the type invariant the file is alive while we hold a reference.
        unsafe { bindings::get_file((*self.as_raw()).file) };
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: The caller owns a reference, which is given back.
        unsafe { bindings::dma_buf_put(obj.as_ptr().cast()) };
    }
}

impl<T: Exporter> DmaBuf<T> {
    const OPS: bindings::dma_buf_ops = bindings::dma_buf_ops {
        attach: Some(Self::attach_callback),
        map_dma_buf: Some(Self::map_callback),
        unmap_dma_buf: Some(Self::unmap_callback),
        release: Some(Self::release_callback),
        mmap: Some(Self::mmap_callback),
        get_phys: if T::HAS_PHYS {
            Some(Self::get_phys_callback)
        } else {
            None
        },
        vma_offset: if T::HAS_VMA_OFFSET {
            Some(Self::vma_offset_callback)
        } else {
            None
        },
        ..pin_init::zeroed()
    };

    const VM_OPS: bindings::vm_operations_struct = bindings::vm_operations_struct {
        fault: Some(Self::fault_callback),
        huge_fault: Some(Self::huge_fault_callback),
        ..pin_init::zeroed()
    };

    fn as_raw(&self) -> *mut bindings::dma_buf {
        self.inner.get()
    }

    /// Exports a buffer of `size` bytes holding the exporter data `data` initialises, a member
    /// of `set`, by module `M`,
    /// named `name` (`/proc/<pid>/maps` shows `/dmabuf:<name>`). `flags` are the file's open
    /// flags (`O_CLOEXEC`, `O_RDWR`, ...).
    pub fn export<M: ModuleMetadata>(
        set: &Arc<DmaBufSet<T>>,
        data: impl PinInit<T, Error>,
        size: usize,
        flags: u32,
        name: &CStr,
    ) -> Result<ARef<Self>> {
        let exported = KBox::pin_init(
            try_pin_init!(Exported {
                set: set.clone(),
                data <- data,
                mappings <- new_mutex!(0, "DmaBuf::mappings"),
                unmapped <- new_condvar!("DmaBuf::unmapped"),
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: `name` is a valid NUL-terminated string; the copy is freed by the core when
        // the buffer is released (`dma_buf_release()` frees `dmabuf->name`).
        let name = unsafe { bindings::kstrdup(name.as_char_ptr(), bindings::GFP_KERNEL) };
        if name.is_null() {
            return Err(ENOMEM);
        }
        // SAFETY: The buffer owns the pinned data until its release callback, which drops it
        // in place; it never moves.
        let exported = KBox::into_raw(unsafe { Pin::into_inner_unchecked(exported) });
        let info = bindings::dma_buf_export_info {
            exp_name: M::NAME.as_char_ptr(),
            owner: M::THIS_MODULE.as_ptr(),
            ops: &Self::OPS,
            size,
            flags: flags as c_int,
            resv: core::ptr::null_mut(),
            priv_: exported.cast(),
        };
        // SAFETY: `info` is fully initialised; the ops stay valid while `M` is loaded, and the
        // core holds a reference to `M` while the buffer lives.
        let raw = match from_err_ptr(unsafe { bindings::dma_buf_export(&info) }) {
            Ok(raw) => raw,
            Err(e) => {
                // SAFETY: The export failed, so nothing else references `exported` or `name`.
                drop(unsafe { KBox::from_raw(exported) });
                // SAFETY: As above; `name` came from `kstrdup()`.
                unsafe { bindings::kfree(name.cast()) };
                return Err(e);
            }
        };
        // SAFETY: The buffer is not visible to anyone else yet, so its name can be set
        // without `name_lock`.
        unsafe { (*raw).name = name };
        // INVARIANT: The buffer was exported with `T`'s ops and `priv` is an `Exported<T>`.
        // SAFETY: `dma_buf_export()` returned a buffer whose one file reference we own.
        let buf: ARef<Self> = unsafe { ARef::from_raw(NonNull::new_unchecked(raw.cast())) };
        // INVARIANT: The release callback removes the buffer from the set before it is freed.
        set.members
            .lock()
            .push(Member(NonNull::from(&buf.inner).cast()), GFP_KERNEL)?;
        Ok(buf)
    }

    /// Installs a file descriptor for the buffer (`dma_buf_fd()`), which takes over the
    /// reference.
    pub fn into_fd(this: ARef<Self>, flags: u32) -> Result<i32> {
        // SAFETY: We own a reference to the buffer.
        let fd = unsafe { bindings::dma_buf_fd(this.as_raw(), flags as c_int) };
        if fd < 0 {
            return Err(Error::from_errno(fd));
        }
        // The descriptor owns the reference now.
        core::mem::forget(this);
        Ok(fd)
    }

    /// The buffer behind file descriptor `fd` if it is one of `set`'s (`dma_buf_get()`):
    /// `EBADF` if `fd` is not open, `EINVAL` if it is not a buffer of `set`.
    pub fn from_fd(fd: i32, set: &DmaBufSet<T>) -> Result<ARef<Self>> {
        // SAFETY: Any descriptor may be looked up; a buffer comes back with a file reference.
        let raw = from_err_ptr(unsafe { bindings::dma_buf_get(fd) })?;
        // SAFETY: We own a reference to the buffer; the `ARef` type is checked just below,
        // before the buffer is used as a `DmaBuf<T>`.
        let buf: ARef<Self> = unsafe { ARef::from_raw(NonNull::new_unchecked(raw.cast())) };
        // SAFETY: `ops` and `priv` of a live buffer are valid; a buffer with `T`'s ops has an
        // `Exported<T>` as `priv`.
        let ours = unsafe {
            core::ptr::eq((*raw).ops, &Self::OPS)
                && core::ptr::eq(&*(*(*raw).priv_.cast::<Exported<T>>()).set, set)
        };
        if !ours {
            return Err(EINVAL);
        }
        Ok(buf)
    }

    fn exported(&self) -> &Exported<T> {
        // SAFETY: By the type invariant `priv` is an `Exported<T>` that lives as long as the
        // buffer, and we hold a reference to it.
        unsafe { &*(*self.as_raw()).priv_.cast::<Exported<T>>() }
    }

    /// The exporter's data.
    pub fn data(&self) -> &T {
        &self.exported().data
    }

    /// The buffer's size in bytes.
    pub fn size(&self) -> usize {
        // SAFETY: `size` does not change after export.
        unsafe { (*self.as_raw()).size }
    }

    /// The buffer's file.
    pub fn file(&self) -> &File {
        // SAFETY: The file lives as long as the buffer, and we hold a reference to it.
        unsafe { File::from_raw_file((*self.as_raw()).file) }
    }

    /// Removes every user mapping of the buffer (`unmap_mapping_range()` over its file), so
    /// each access faults again.
    pub fn zap(&self) {
        // SAFETY: The file and its mapping live as long as the buffer; zapping may sleep,
        // which callers of a `&self` method in process context allow.
        unsafe {
            bindings::unmap_mapping_range((*(*self.as_raw()).file).f_mapping, 0, 0, 1);
        }
    }

    /// Takes the importers' access away: under the buffer's reservation lock, `revoke` marks
    /// the buffer revoked (so that [`Exporter::map`] and [`Exporter::phys`] fail from now on)
    /// and the importers are told to drop their mappings (`dma_buf_invalidate_mappings()`);
    /// then waits for their fences and until every mapping is unmapped. Sleeps.
    pub fn revoke_importers(&self, revoke: impl FnOnce()) {
        {
            let _resv = self.lock_resv();
            revoke();
            self.invalidate_and_wait();
        }
        let data = self.exported();
        let mut mappings = data.mappings.lock();
        while *mappings != 0 {
            data.unmapped.wait(&mut mappings);
        }
    }

    /// Tells the importers that the buffer may be mapped again (`dma_buf_invalidate_mappings()`
    /// and a wait for their fences), then calls `restore` under the reservation lock to mark
    /// it usable. Importers that took the revocation as permanent stay away.
    pub fn restore_importers(&self, restore: impl FnOnce()) {
        {
            let _resv = self.lock_resv();
            self.invalidate_and_wait();
        }
        let _resv = self.lock_resv();
        restore();
    }

    fn invalidate_and_wait(&self) {
        // SAFETY: The caller holds the reservation lock, as both functions require; the buffer
        // is alive while we hold a reference.
        unsafe {
            bindings::dma_buf_invalidate_mappings(self.as_raw());
            bindings::dma_resv_wait_timeout(
                (*self.as_raw()).resv,
                bindings::dma_resv_usage_DMA_RESV_USAGE_BOOKKEEP,
                false,
                crate::task::MAX_SCHEDULE_TIMEOUT.unsigned_abs(),
            );
        }
    }

    fn lock_resv(&self) -> ResvGuard<'_> {
        // SAFETY: The buffer's reservation object lives as long as the buffer. Without an
        // acquire context the lock cannot fail.
        let resv = unsafe { (*self.as_raw()).resv };
        // SAFETY: `resv` is valid; without a context `dma_resv_lock()` returns 0.
        unsafe { bindings::dma_resv_lock(resv, core::ptr::null_mut()) };
        ResvGuard {
            resv,
            _p: PhantomData,
        }
    }

    /// Makes `vma` map this buffer through [`Exporter::fault`]: shared, `VM_IO | VM_PFNMAP`,
    /// not expandable nor dumped, with memory type `attr`, and the buffer's file as its file
    /// (the VMA then keeps the buffer alive; the file it had is put). Fails with `EINVAL` for
    /// a private writable (copy-on-write) mapping, which PFN maps cannot be.
    pub fn install(&self, vma: &VmaNew, attr: MemAttr) -> Result {
        use crate::mm::virt::flags;
        let raw = vma.as_ptr();
        let vm_flags = vma.flags();
        if vm_flags & (flags::SHARED | flags::MAYWRITE) == flags::MAYWRITE {
            return Err(EINVAL);
        }
        // SAFETY: The VMA is being set up (`VmaNew`): nothing else uses it yet. The buffer's
        // file outlives the VMA, which holds a reference to it from `vma_set_file()` on, so
        // `vm_private_data` stays valid for the VMA's callbacks.
        unsafe {
            let prot = (*raw).vm_page_prot;
            let prot = match attr {
                MemAttr::NonCached => bindings::pgprot_noncached(prot),
                MemAttr::WriteCombine => bindings::pgprot_writecombine(prot),
            };
            (*raw).vm_page_prot = bindings::pgprot_decrypted(prot);
            (*raw).__bindgen_anon_2.vm_flags = vm_flags
                | flags::IO
                | flags::PFNMAP
                | flags::DONTEXPAND
                | flags::DONTDUMP
                | bindings::VM_ALLOW_ANY_UNCACHED as bindings::vm_flags_t;
            (*raw).vm_private_data = self.as_raw().cast();
            (*raw).vm_ops = &Self::VM_OPS;
            if (*raw).vm_file != (*self.as_raw()).file {
                bindings::vma_set_file(raw, (*self.as_raw()).file);
            }
        }
        Ok(())
    }

    /// # Safety
    ///
    /// `raw` is a buffer exported with `T`'s ops that stays alive for `'a`.
    unsafe fn from_raw<'a>(raw: *mut bindings::dma_buf) -> &'a Self {
        // SAFETY: `DmaBuf<T>` is a transparent wrapper of `dma_buf`; the caller guarantees
        // the rest.
        unsafe { &*raw.cast() }
    }

    /// # Safety
    ///
    /// Called by the core as a `dma_buf_ops` or `vm_operations_struct` callback of a buffer
    /// exported with `T`'s ops, with the arguments its contract gives.
    unsafe extern "C" fn attach_callback(
        raw: *mut bindings::dma_buf,
        attachment: *mut bindings::dma_buf_attachment,
    ) -> c_int {
        // SAFETY: The core passes an initialised attachment of this buffer, which is alive
        // during the call.
        let (peer2peer, revocable, buf) = unsafe {
            (
                (*attachment).peer2peer,
                bindings::dma_buf_attach_revocable(attachment),
                Self::from_raw(raw),
            )
        };
        let verdict = attach_verdict(
            T::HAS_MAP || T::HAS_PHYS,
            peer2peer,
            || T::attach(buf),
            revocable,
        );
        match verdict {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }

    /// # Safety
    ///
    /// Called by the core as a `dma_buf_ops` or `vm_operations_struct` callback of a buffer
    /// exported with `T`'s ops, with the arguments its contract gives.
    unsafe extern "C" fn map_callback(
        attachment: *mut bindings::dma_buf_attachment,
        dir: bindings::dma_data_direction,
    ) -> *mut bindings::sg_table {
        if !T::HAS_MAP {
            return EOPNOTSUPP.to_ptr();
        }
        // SAFETY: The core maps an attachment of a live buffer, holding its reservation lock.
        let buf = unsafe { Self::from_raw((*attachment).dmabuf) };
        // INVARIANT: The attachment is the buffer's and its reservation lock is held for the
        // call, which the mapper does not outlive.
        let mapper = Mapper {
            // SAFETY: The core passes a valid attachment.
            attach: unsafe { NonNull::new_unchecked(attachment) },
            dir,
            size: buf.size(),
            _p: PhantomData,
        };
        match T::map(buf, mapper) {
            Ok(mapped) => {
                *buf.exported().mappings.lock() += 1;
                let sgt = mapped.sgt.as_ptr();
                // The core owns the table now, until `unmap_callback`.
                core::mem::forget(mapped);
                sgt
            }
            Err(e) => e.to_ptr(),
        }
    }

    /// # Safety
    ///
    /// Called by the core as a `dma_buf_ops` or `vm_operations_struct` callback of a buffer
    /// exported with `T`'s ops, with the arguments its contract gives.
    unsafe extern "C" fn unmap_callback(
        attachment: *mut bindings::dma_buf_attachment,
        sgt: *mut bindings::sg_table,
        dir: bindings::dma_data_direction,
    ) {
        // SAFETY: `sgt` is a table `map_callback` returned for this attachment and direction,
        // given back once.
        unsafe { bindings::dma_buf_free_sgt(attachment, sgt, dir) };
        // SAFETY: The attachment's buffer is alive while it is attached.
        let buf = unsafe { Self::from_raw((*attachment).dmabuf) };
        let exported = buf.exported();
        let mut mappings = exported.mappings.lock();
        *mappings -= 1;
        if *mappings == 0 {
            exported.unmapped.notify_all();
        }
    }

    /// # Safety
    ///
    /// Called by the core as a `dma_buf_ops` callback of a buffer exported with `T`'s ops,
    /// with the arguments its contract gives.
    unsafe extern "C" fn vma_offset_callback(
        raw: *mut bindings::dma_buf,
        vma: *mut bindings::vm_area_struct,
        offset: *mut u64,
    ) -> c_int {
        // SAFETY: `vma` maps the buffer's file, which keeps the buffer alive; the caller holds
        // the mmap lock, so the VMA stays valid during the call.
        let (buf, vma) = unsafe { (Self::from_raw(raw), VmaRef::from_raw(vma)) };
        match T::vma_offset(buf, vma) {
            Ok(off) => {
                // SAFETY: The caller passes a writable `u64`.
                unsafe { *offset = off };
                0
            }
            Err(e) => e.to_errno(),
        }
    }

    /// # Safety
    ///
    /// Called by the core as a `dma_buf_ops` callback of a buffer exported with `T`'s ops,
    /// with the arguments its contract gives.
    unsafe extern "C" fn get_phys_callback(
        attachment: *mut bindings::dma_buf_attachment,
        phys: *mut bindings::phys_vec,
    ) -> c_int {
        // SAFETY: The importer holds the attachment of a live buffer and its reservation lock.
        let buf = unsafe { Self::from_raw((*attachment).dmabuf) };
        match T::phys(buf) {
            Ok(range) => {
                let Ok(len) = usize::try_from(range.len) else {
                    return EOPNOTSUPP.to_errno();
                };
                // SAFETY: The importer passes a writable `phys_vec`.
                unsafe {
                    *phys = bindings::phys_vec {
                        paddr: range.start,
                        len,
                    }
                };
                0
            }
            Err(e) => e.to_errno(),
        }
    }

    /// # Safety
    ///
    /// Called by the core as a `dma_buf_ops` or `vm_operations_struct` callback of a buffer
    /// exported with `T`'s ops, with the arguments its contract gives.
    unsafe extern "C" fn release_callback(raw: *mut bindings::dma_buf) {
        // SAFETY: The core calls this once, from the release of the buffer's dentry: after
        // its file's (an O_PATH open of the file delays it) and once every attachment is
        // detached; `priv` is the `Exported<T>` given to `dma_buf_export()`, owned
        // (pinned) by the buffer until now.
        let exported = unsafe { KBox::from_raw((*raw).priv_.cast::<Exported<T>>()) };
        // INVARIANT: The buffer leaves the set before it is freed.
        exported.set.remove(raw);
    }

    /// # Safety
    ///
    /// Called by the core as a `dma_buf_ops` or `vm_operations_struct` callback of a buffer
    /// exported with `T`'s ops, with the arguments its contract gives.
    unsafe extern "C" fn mmap_callback(
        raw: *mut bindings::dma_buf,
        vma: *mut bindings::vm_area_struct,
    ) -> c_int {
        // SAFETY: The buffer's file is being mapped, so it is alive during the call.
        let buf = unsafe { Self::from_raw(raw) };
        // SAFETY: `dma_buf_mmap_internal()` is called from `mmap()` with a VMA being set up.
        let vma = unsafe { VmaNew::from_raw(vma) };
        match T::mmap(buf, vma) {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }

    /// # Safety
    ///
    /// Called by the core as a `dma_buf_ops` or `vm_operations_struct` callback of a buffer
    /// exported with `T`'s ops, with the arguments its contract gives.
    unsafe extern "C" fn huge_fault_callback(
        vmf: *mut bindings::vm_fault,
        order: c_uint,
    ) -> bindings::vm_fault_t {
        // SAFETY: The core calls the handler with a valid fault of a VMA set up by `install()`.
        let fault = unsafe { VmFault::from_raw(vmf) };
        // SAFETY: `install()` made `vm_private_data` this VMA's buffer, which the VMA's file
        // reference keeps alive while the VMA exists.
        let buf = unsafe { Self::from_raw((*fault.vma().as_ptr()).vm_private_data.cast()) };
        T::fault(buf, fault, order).as_raw()
    }

    /// # Safety
    ///
    /// Called by the core as a `dma_buf_ops` or `vm_operations_struct` callback of a buffer
    /// exported with `T`'s ops, with the arguments its contract gives.
    unsafe extern "C" fn fault_callback(vmf: *mut bindings::vm_fault) -> bindings::vm_fault_t {
        // SAFETY: Forwarded from the core's arguments.
        unsafe { Self::huge_fault_callback(vmf, 0) }
    }
}

#[kunit_tests(rust_dma_buf)]
mod tests {
    use super::*;

    #[test]
    fn attach_order() -> Result {
        let agree = || Ok(());
        let revoked = || Err(ENODEV);
        assert_eq!(attach_verdict(true, true, agree, true), Ok(()));
        // An exporter that offers nothing, or an importer without peer-to-peer, is refused
        // before the exporter is asked.
        assert_eq!(attach_verdict(false, true, revoked, true), Err(EOPNOTSUPP));
        assert_eq!(attach_verdict(true, false, revoked, true), Err(EOPNOTSUPP));
        // The exporter's refusal comes before the revocability check, as in C.
        assert_eq!(attach_verdict(true, true, revoked, false), Err(ENODEV));
        assert_eq!(attach_verdict(true, true, agree, false), Err(EOPNOTSUPP));
        Ok(())
    }
}
