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
//! C header: [`include/linux/dma-buf.h`](srctree/include/linux/dma-buf.h)

use crate::{
    bindings,
    error::from_err_ptr,
    ffi::{c_int, c_uint, c_ulong},
    fs::File,
    mm::virt::{VmaNew, VmaRef},
    prelude::*,
    str::CStr,
    sync::{
        aref::{ARef, AlwaysRefCounted},
        new_mutex, Arc, Mutex,
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
pub trait Exporter: Sized + Send + Sync + 'static {
    /// Sets up `vma` to map the buffer (`dma_buf_ops.mmap`, `mmap()` of the buffer's fd);
    /// the core has checked that the VMA's page offset and length lie within the buffer.
    /// Ends with [`DmaBuf::install`] when the mapping is allowed.
    fn mmap(buf: &DmaBuf<Self>, vma: &VmaNew) -> Result;

    /// Resolves a fault in a VMA set up by [`DmaBuf::install`] for a page of
    /// `PAGE_SIZE << order` bytes (`vm_operations_struct.huge_fault`, and `fault` with order
    /// 0), with [`VmFault::insert_pfn`] or an error reason.
    fn fault(buf: &DmaBuf<Self>, fault: &VmFault, order: u32) -> VmFaultReason;
}

/// The `priv` of an exported `struct dma_buf`.
struct Exported<T: Exporter> {
    set: Arc<DmaBufSet<T>>,
    data: T,
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
            // the lock is held; `get_file_active()` fails once its file count reached zero.
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

    /// Exports a buffer of `size` bytes holding `data`, a member of `set`, by module `M`,
    /// named `name` (`/proc/<pid>/maps` shows `/dmabuf:<name>`). `flags` are the file's open
    /// flags (`O_CLOEXEC`, `O_RDWR`, ...).
    pub fn export<M: ModuleMetadata>(
        set: &Arc<DmaBufSet<T>>,
        data: T,
        size: usize,
        flags: u32,
        name: &CStr,
    ) -> Result<ARef<Self>> {
        let exported = KBox::new(
            Exported {
                set: set.clone(),
                data,
            },
            GFP_KERNEL,
        )?;
        // SAFETY: `name` is a valid NUL-terminated string; the copy is freed by the core when
        // the buffer is released (`dma_buf_release()` frees `dmabuf->name`).
        let name = unsafe { bindings::kstrdup(name.as_char_ptr(), bindings::GFP_KERNEL) };
        if name.is_null() {
            return Err(ENOMEM);
        }
        let exported = KBox::into_raw(exported);
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
        _buf: *mut bindings::dma_buf,
        _attachment: *mut bindings::dma_buf_attachment,
    ) -> c_int {
        // Importers would map the ranges for DMA; nothing is offered to them yet.
        EOPNOTSUPP.to_errno()
    }

    /// # Safety
    ///
    /// Called by the core as a `dma_buf_ops` or `vm_operations_struct` callback of a buffer
    /// exported with `T`'s ops, with the arguments its contract gives.
    unsafe extern "C" fn map_callback(
        _attachment: *mut bindings::dma_buf_attachment,
        _dir: bindings::dma_data_direction,
    ) -> *mut bindings::sg_table {
        // Unreachable: every attach fails.
        EOPNOTSUPP.to_ptr()
    }

    /// # Safety
    ///
    /// Called by the core as a `dma_buf_ops` or `vm_operations_struct` callback of a buffer
    /// exported with `T`'s ops, with the arguments its contract gives.
    unsafe extern "C" fn unmap_callback(
        _attachment: *mut bindings::dma_buf_attachment,
        _sgt: *mut bindings::sg_table,
        _dir: bindings::dma_data_direction,
    ) {
    }

    /// # Safety
    ///
    /// Called by the core as a `dma_buf_ops` or `vm_operations_struct` callback of a buffer
    /// exported with `T`'s ops, with the arguments its contract gives.
    unsafe extern "C" fn release_callback(raw: *mut bindings::dma_buf) {
        // SAFETY: The core calls this once, when the last file reference is gone; `priv` is the
        // `Exported<T>` given to `dma_buf_export()`, owned by the buffer until now.
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
