// SPDX-License-Identifier: GPL-2.0

//! DMABUF export of BARs, BAR mmap() through a DMABUF, and revocation, as `vfio_pci_dmabuf.c`
//! with the series "vfio/pci: Convert BAR mmap() to use a DMABUF".
//!
//! Every user mapping of a BAR belongs to a DMABUF: mmap() of the device fd exports one that
//! covers exactly the mapped span and makes it the VMA's file; `VFIO_DEVICE_FEATURE_DMA_BUF`
//! exports one for userspace, which may mmap() it. Pages are inserted on fault under the
//! `memory_lock` read guard, found through the buffer's ranges. Whatever disables memory
//! revokes the buffers under the write guard and zaps their mappings, so accesses get SIGBUS
//! until memory is enabled again; a buffer revoked for good (device closed, or
//! `VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE`) stays revoked.
//!
//! Importers (iommufd, or a driver that maps the buffer for its device) attach to a buffer of
//! a BAR that has a peer-to-peer provider. Every revocation and restoration reaches them
//! under the buffer's reservation lock, and a revocation waits until they unmapped.
//!
//! Lock order: `memory_lock`, then a buffer's reservation lock, then its `registration`.

use crate::{
    vfio_pci_priv::{offset_to_index, MemoryState, OFFSET_SHIFT, ROM_INDEX},
    VfioPciCore,
};
use core::{
    mem::size_of,
    sync::atomic::{AtomicBool, Ordering},
};
use kernel::{
    device::Bound,
    dma_buf::VmFaultReason,
    dma_buf::{
        self, DmaBuf, DmaBufSet, Exporter, Mapped, Mapper, MemAttr, Pfn, PhysRange, VmFault,
    },
    fs::File,
    mm::virt::{VmaNew, VmaRef},
    page::{PAGE_SHIFT, PAGE_SIZE},
    pci,
    prelude::*,
    str::CString,
    sync::{aref::ARef, new_mutex, Arc, Mutex, RwSemaphore},
    uaccess::{UserPtr, UserSlice},
    uapi, vfio,
};

/// `memory_lock`: shared with the function's buffers, whose faults take it.
pub(crate) type MemoryLock = RwSemaphore<MemoryState>;

/// The buffers of a function.
pub(crate) type DmaBufs = DmaBufSet<BarDmaBuf>;

/// The VMA geometry a fault is resolved against.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VmaSpan {
    /// First address of the VMA.
    pub(crate) start: usize,
    /// End of the VMA (exclusive).
    pub(crate) end: usize,
    /// The VMA's page offset (`vm_pgoff`).
    pub(crate) pgoff: usize,
}

/// The outcome of [`find_pfn`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PfnLookup {
    /// Map this frame.
    Found(Pfn),
    /// Retry with a smaller page (`VM_FAULT_FALLBACK`).
    Fallback,
    /// The address is outside the buffer (`VM_FAULT_SIGBUS`).
    SigBus,
}

/// Finds the frame to map for a fault at `address` of a page of `PAGE_SIZE << order` bytes
/// (`vfio_pci_dma_buf_find_pfn()`).
///
/// The buffer is the concatenation of `ranges`; page `pgoff_base` of the VMA's file is its
/// first page. A huge page falls back when it would cross the VMA's edge or a range boundary,
/// or its frame is not aligned to its size; an order-0 page outside every range is a SIGBUS.
pub(crate) fn find_pfn(
    ranges: &[PhysRange],
    vma: VmaSpan,
    pgoff_base: usize,
    address: usize,
    order: u32,
) -> PfnLookup {
    let outside = if order == 0 {
        PfnLookup::SigBus
    } else {
        PfnLookup::Fallback
    };
    let Some(page_size) = PAGE_SIZE.checked_shl(order) else {
        return outside;
    };
    let page_start = address & !(page_size - 1);
    match page_start.checked_add(page_size) {
        Some(page_end) if page_start >= vma.start && page_end <= vma.end => {}
        _ => return outside,
    }
    // The page's offset in the buffer.
    let Some(offset) = vma
        .pgoff
        .checked_sub(pgoff_base)
        .and_then(|pages| (pages as u64).checked_mul(PAGE_SIZE as u64))
        .and_then(|off| off.checked_add((page_start - vma.start) as u64))
    else {
        return outside;
    };
    let page_size = page_size as u64;
    let mut range_offset = 0u64;
    for range in ranges {
        let range_end = range_offset.saturating_add(range.len());
        if offset >= range_offset && offset.saturating_add(page_size) <= range_end {
            return match range.pfn_at(offset - range_offset) {
                Some(pfn) if pfn.get() % (1 << order) == 0 => PfnLookup::Found(pfn),
                Some(_) => PfnLookup::Fallback,
                None => outside,
            };
        }
        range_offset = range_end;
    }
    outside
}

/// Where a buffer came from.
enum Origin {
    /// mmap() of the device fd. Its VMAs keep the page offsets the user passed, so page
    /// `pgoff` of the device fd is the buffer's first page; the buffer holds the device file
    /// open, as a mapping did before DMABUFs.
    DeviceMmap {
        pgoff: usize,
        _device_file: ARef<File>,
    },
    /// `VFIO_DEVICE_FEATURE_DMA_BUF`.
    Export,
}

/// A DMABUF of BAR ranges of a function (`struct vfio_pci_dma_buf`).
///
/// `revoked` and `retired` are written with the function's `memory_lock` held for writing
/// and read with it held, which the accessors take as proof; after export they are written
/// under the buffer's reservation lock too, so importer callbacks, which hold that lock, read
/// them as well.
#[pin_data]
pub(crate) struct BarDmaBuf {
    memory: Arc<MemoryLock>,
    pdev: ARef<pci::Device>,
    /// The BAR of `ranges`.
    bar: u32,
    ranges: KVec<PhysRange>,
    origin: Origin,
    /// Keeps the function bound, and with it the BAR's peer-to-peer provider, until the
    /// buffer is revoked for good (`vfio_device_try_get_registration()`).
    #[pin]
    registration: Mutex<Option<vfio::RegistrationRef<VfioPciCore>>>,
    /// Memory access is off: faults get SIGBUS until memory is enabled again.
    revoked: AtomicBool,
    /// Revoked for good: closed device or `VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE`.
    retired: AtomicBool,
    /// Later mappings are write-combining (`VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR`).
    write_combine: AtomicBool,
}

impl BarDmaBuf {
    fn new(
        core: &VfioPciCore,
        vdev: &vfio::Device<VfioPciCore, Bound>,
        bar: u32,
        ranges: KVec<PhysRange>,
        origin: Origin,
    ) -> Result<impl PinInit<Self, Error>> {
        let pdev: &pci::Device = VfioPciCore::pdev(vdev)?;
        let pdev: ARef<pci::Device> = pdev.into();
        let memory = core.memory_lock.clone();
        let registration = vdev.try_get_registration().ok_or(ENODEV)?;
        Ok(try_pin_init!(Self {
            memory,
            pdev,
            bar,
            ranges,
            origin,
            registration <- new_mutex!(Some(registration), "BarDmaBuf::registration"),
            revoked: AtomicBool::new(true),
            retired: AtomicBool::new(false),
            write_combine: AtomicBool::new(false),
        }))
    }

    fn revoked(&self, _memory: &MemoryState) -> bool {
        self.revoked.load(Ordering::Relaxed)
    }

    fn set_revoked(&self, _memory: &mut MemoryState, revoked: bool) {
        self.revoked.store(revoked, Ordering::Relaxed);
    }

    fn retired(&self, _memory: &MemoryState) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    fn retire(&self, memory: &mut MemoryState) {
        self.set_revoked(memory, true);
        self.retired.store(true, Ordering::Relaxed);
        // The function may unbind now; importers no longer reach its provider.
        self.registration.lock().take();
    }

    /// Whether importers are refused, from their callbacks under the reservation lock.
    fn revoked_for_importers(&self) -> bool {
        self.revoked.load(Ordering::Relaxed)
    }

    /// Marks the buffer revoked (for good if `retire`) for importers and mappings, and zaps
    /// the mappings.
    fn revoke(buf: &DmaBuf<Self>, memory: &mut MemoryState, retire: bool) {
        let this = buf.data();
        buf.revoke_importers(|| {
            if retire {
                this.retire(memory);
            } else {
                this.set_revoked(memory, true);
            }
        });
        buf.zap();
    }

    /// Page offset of the buffer's first page in the files of its VMAs.
    fn pgoff_base(&self) -> usize {
        match self.origin {
            Origin::DeviceMmap { pgoff, .. } => pgoff,
            Origin::Export => 0,
        }
    }

    /// Fault resolution under the `memory_lock` read guard (`vfio_pci_mmap_huge_fault()`).
    fn resolve(&self, memory: &MemoryState, fault: &VmFault, order: u32) -> (VmFaultReason, usize) {
        if self.revoked(memory) || memory.pm_runtime_engaged || !memory.memory_enabled(&self.pdev) {
            return (VmFaultReason::SIGBUS, 0);
        }
        let vma = fault.vma();
        let span = VmaSpan {
            start: vma.start(),
            end: vma.end(),
            pgoff: vma.pgoff(),
        };
        match find_pfn(
            &self.ranges,
            span,
            self.pgoff_base(),
            fault.address(),
            order,
        ) {
            PfnLookup::Found(pfn) => (fault.insert_pfn(pfn, order), pfn.get()),
            PfnLookup::Fallback => (VmFaultReason::FALLBACK, 0),
            PfnLookup::SigBus => (VmFaultReason::SIGBUS, 0),
        }
    }
}

/// The offset in a buffer of the first byte of a VMA with page offset `pgoff`, when page
/// `pgoff_base` of the VMA's file is the buffer's first page.
pub(crate) fn buffer_offset(pgoff: usize, pgoff_base: usize) -> Result<u64> {
    let pages = pgoff.checked_sub(pgoff_base).ok_or(EINVAL)?;
    u64::try_from(pages)?
        .checked_mul(PAGE_SIZE as u64)
        .ok_or(EINVAL)
}

/// What importers may reach of a buffer (`vfio_pci_dma_buf_iommufd_map()`): its one range,
/// `ENODEV` while it is revoked, `EOPNOTSUPP` for several ranges or a BAR without a
/// peer-to-peer provider.
pub(crate) fn importer_range(
    revoked: bool,
    has_provider: bool,
    ranges: &[PhysRange],
) -> Result<PhysRange> {
    if revoked {
        return Err(ENODEV);
    }
    match ranges {
        [range] if has_provider => Ok(*range),
        _ => Err(EOPNOTSUPP),
    }
}

#[vtable]
impl Exporter for BarDmaBuf {
    fn mmap(buf: &DmaBuf<Self>, vma: &VmaNew) -> Result {
        let this = buf.data();
        // The VMAs of a device fd mapping carry the device fd's page offsets.
        if matches!(this.origin, Origin::DeviceMmap { .. }) {
            return Err(EINVAL);
        }
        if this.retired(&this.memory.read()) {
            return Err(ENODEV);
        }
        let attr = if this.write_combine.load(Ordering::Relaxed) {
            MemAttr::WriteCombine
        } else {
            MemAttr::NonCached
        };
        buf.install(vma, attr)
    }

    fn fault(buf: &DmaBuf<Self>, fault: &VmFault, order: u32) -> VmFaultReason {
        let this = buf.data();
        let (ret, pfn) = this.resolve(&this.memory.read(), fault, order);
        dev_dbg!(
            this.pdev,
            "fault order {} PFN {:#x} VA {:#x} pgoff {:#x}: {:#x}\n",
            order,
            pfn,
            fault.address(),
            fault.vma().pgoff(),
            ret.as_raw()
        );
        ret
    }

    fn attach(buf: &DmaBuf<Self>) -> Result {
        if buf.data().revoked_for_importers() {
            return Err(ENODEV);
        }
        Ok(())
    }

    fn map<'a>(buf: &'a DmaBuf<Self>, mapper: Mapper<'a>) -> Result<Mapped<'a>> {
        let this = buf.data();
        if this.revoked_for_importers() {
            return Err(ENODEV);
        }
        let registration = this.registration.lock();
        let vdev = registration.as_ref().ok_or(ENODEV)?.device();
        let provider = VfioPciCore::pdev(vdev)?
            .p2pdma_provider(this.bar)
            .ok_or(EINVAL)?;
        mapper.map(provider, &this.ranges)
    }

    fn phys(buf: &DmaBuf<Self>) -> Result<PhysRange> {
        let this = buf.data();
        let registration = this.registration.lock();
        let has_provider = match registration.as_ref() {
            Some(reg) => VfioPciCore::pdev(reg.device())?
                .p2pdma_provider(this.bar)
                .is_some(),
            None => false,
        };
        importer_range(this.revoked_for_importers(), has_provider, &this.ranges)
    }

    fn vma_offset(buf: &DmaBuf<Self>, vma: &VmaRef) -> Result<u64> {
        buffer_offset(vma.pgoff(), buf.data().pgoff_base())
    }
}

/// `VFIO_DEVICE_FEATURE_DMA_BUF` data after its header (`struct vfio_region_dma_range`).
const DMA_RANGE_SIZE: usize = size_of::<uapi::vfio_region_dma_range>();

/// Lengths whose top bit is set are refused (`DMA_IOVA_USE_SWIOTLB`).
const DMA_IOVA_USE_SWIOTLB: u64 = 1 << 63;

/// Checks the user's ranges (`validate_dmabuf_input()`) and returns the buffer's length.
fn validate_ranges(ranges: &[uapi::vfio_region_dma_range]) -> Result<u64> {
    let page = PAGE_SIZE as u64;
    let mut length = 0u64;
    for range in ranges {
        if range.length == 0 || range.offset % page != 0 || range.length % page != 0 {
            return Err(EINVAL);
        }
        length = length.checked_add(range.length).ok_or(EINVAL)?;
    }
    if length & DMA_IOVA_USE_SWIOTLB != 0 {
        return Err(EINVAL);
    }
    Ok(length)
}

impl VfioPciCore {
    /// The buffer's name: `vfio<X>:<BDF>/<index>`, shown by `/proc/<pid>/maps`.
    fn dma_buf_name(vdev: &vfio::Device<Self, Bound>, index: u32) -> Result<CString> {
        let pdev: &kernel::device::Device = vdev.parent();
        let vfio_dev: &kernel::device::Device = vdev.as_ref();
        CString::try_from_fmt(fmt!("{}:{}/{}", vfio_dev.name(), pdev.name(), index))
    }

    /// Exports `data` as a buffer of `size` bytes with revocation state matching memory
    /// decode.
    fn export_dma_buf(
        &self,
        pdev: &pci::Device<Bound>,
        data: impl PinInit<BarDmaBuf, Error>,
        size: u64,
        flags: u32,
        name: &CString,
    ) -> Result<ARef<DmaBuf<BarDmaBuf>>> {
        let size = usize::try_from(size).map_err(|_| EINVAL)?;
        let buf = DmaBuf::export::<crate::LocalModule>(&self.dmabufs, data, size, flags, name)?;
        let mut memory = self.memory_lock.write();
        let enabled = memory.memory_enabled(pdev);
        buf.data().set_revoked(&mut memory, !enabled);
        Ok(buf)
    }

    /// mmap() of a BAR through the device fd (`vfio_pci_core_mmap()` with
    /// `vfio_pci_core_mmap_prep_dmabuf()`): the checks of C, then a buffer covering exactly the
    /// mapped span becomes the VMA's file. Memory may be disabled: faults sort it out.
    pub(crate) fn mmap(&self, vdev: &vfio::Device<Self, Bound>, vma: &VmaNew) -> Result {
        let pdev = Self::pdev(vdev)?;
        let pgoff = vma.pgoff();
        let index_shift = OFFSET_SHIFT - PAGE_SHIFT as u32;
        let index = offset_to_index((pgoff as u64) << PAGE_SHIFT);
        if index >= u64::from(self.num_regions()) || vma.end() < vma.start() {
            return Err(EINVAL);
        }
        if vma.flags() & kernel::mm::virt::flags::SHARED == 0 {
            return Err(EINVAL);
        }
        let index = u32::try_from(index)?;
        if index >= uapi::VFIO_PCI_NUM_REGIONS {
            return self.dev_region_mmap(index, vma);
        }
        if index >= ROM_INDEX {
            return Err(EINVAL);
        }
        let page = PAGE_SIZE as u64;
        let phys_len = pdev.resource_len(index)?.next_multiple_of(page);
        let req_len = (vma.end() - vma.start()) as u64;
        let req_start = ((pgoff & ((1 << index_shift) - 1)) as u64) << PAGE_SHIFT;
        let range = {
            if !self.bar_mmap_supported[index as usize].load(Ordering::Relaxed) {
                return Err(EINVAL);
            }
            let memory = self.memory_lock.read();
            if req_start
                .checked_add(req_len)
                .is_none_or(|end| end > phys_len)
            {
                return Err(EINVAL);
            }
            // The BAR's region must be requested, as for read() and write().
            if let Err(e) = &memory.bars[index as usize] {
                return Err(*e);
            }
            let tail = memory.page_tail_reservations[index as usize].as_ref();
            pdev.bar_phys_range(index, req_start, req_len, tail)?
        };

        let device_file = vma.file().ok_or(EINVAL)?.into();
        let mut ranges = KVec::new();
        ranges.push(range, GFP_KERNEL)?;
        let origin = Origin::DeviceMmap {
            pgoff,
            _device_file: device_file,
        };
        let data = BarDmaBuf::new(self, vdev, index, ranges, origin)?;
        let name = Self::dma_buf_name(vdev, index)?;
        let buf = self.export_dma_buf(pdev, data, req_len, dma_buf::O_RDWR, &name)?;
        // The VMA takes a reference to the buffer's file and puts the device file, which the
        // buffer holds instead.
        buf.install(vma, MemAttr::NonCached)
    }

    /// Revokes (`revoked`) or restores every buffer of the function that is not revoked for
    /// good (`vfio_pci_dma_buf_move()`). Revoking zaps the buffer's mappings; the write guard
    /// makes a racing fault see the new state.
    pub(crate) fn dma_buf_move(&self, memory: &mut MemoryState, revoked: bool) {
        self.dmabufs.for_each(|buf| {
            let data = buf.data();
            if data.retired(memory) || data.revoked(memory) == revoked {
                return;
            }
            if revoked {
                BarDmaBuf::revoke(buf, memory, false);
            } else {
                buf.restore_importers(|| data.set_revoked(memory, false));
            }
        });
    }

    /// Restores the buffers if memory decode is on again after a change under the write
    /// guard.
    pub(crate) fn dma_buf_restore(&self, pdev: &pci::Device, memory: &mut MemoryState) {
        if memory.memory_enabled(pdev) {
            self.dma_buf_move(memory, false);
        }
    }

    /// Revokes every buffer for good at close (`vfio_pci_dma_buf_cleanup()`).
    pub(crate) fn dma_buf_cleanup(&self) {
        let mut memory = self.memory_lock.write();
        self.dmabufs
            .for_each(|buf| BarDmaBuf::revoke(buf, &mut memory, true));
    }

    /// `VFIO_DEVICE_FEATURE_DMA_BUF` (`vfio_pci_core_feature_dma_buf()`): a buffer of ranges of
    /// one BAR, returned as a new fd.
    pub(crate) fn feature_dma_buf(
        &self,
        vdev: &vfio::Device<Self, Bound>,
        flags: u32,
        arg: UserPtr,
        argsz: usize,
    ) -> Result<i32> {
        let pdev = Self::pdev(vdev)?;
        let minsz = size_of::<uapi::vfio_device_feature_dma_buf>();
        if !vfio::check_feature(flags, argsz, uapi::VFIO_DEVICE_FEATURE_GET, minsz)? {
            return Ok(0);
        }
        let req: uapi::vfio_device_feature_dma_buf = vfio::read_arg(arg, minsz)?;
        if req.nr_ranges == 0 || req.flags != 0 {
            return Err(EINVAL);
        }
        let index = req.region_index;
        if index >= ROM_INDEX || self.memory_lock.read().bars[index as usize].is_err() {
            return Err(ENODEV);
        }

        let count = req.nr_ranges as usize;
        let mut user_ranges = KVec::with_capacity(count, GFP_KERNEL | __GFP_NOWARN)?;
        let mut reader =
            UserSlice::new(arg.wrapping_byte_add(minsz), count * DMA_RANGE_SIZE).reader();
        for _ in 0..count {
            user_ranges.push(reader.read::<uapi::vfio_region_dma_range>()?, GFP_KERNEL)?;
        }
        let length = validate_ranges(&user_ranges)?;
        // Importers map the BAR through its provider (`vfio_pci_core_get_dmabuf_phys()`).
        if pdev.p2pdma_provider(index).is_none() {
            return Err(EINVAL);
        }

        let mut ranges = KVec::with_capacity(count, GFP_KERNEL | __GFP_NOWARN)?;
        for range in &user_ranges {
            ranges.push(
                pdev.bar_phys_range(index, range.offset, range.length, None)?,
                GFP_KERNEL,
            )?;
        }
        drop(user_ranges);

        let data = BarDmaBuf::new(self, vdev, index, ranges, Origin::Export)?;
        let name = Self::dma_buf_name(vdev, index)?;
        let buf = self.export_dma_buf(pdev, data, length, req.open_flags, &name)?;
        DmaBuf::into_fd(buf, req.open_flags)
    }

    /// `VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE`: revokes a buffer of this function for good.
    pub(crate) fn feature_dma_buf_revoke(
        &self,
        flags: u32,
        arg: UserPtr,
        argsz: usize,
    ) -> Result<i32> {
        let minsz = size_of::<uapi::vfio_device_feature_dma_buf_revoke>();
        if !vfio::check_feature(flags, argsz, uapi::VFIO_DEVICE_FEATURE_SET, minsz)? {
            return Ok(0);
        }
        let req: uapi::vfio_device_feature_dma_buf_revoke = vfio::read_arg(arg, minsz)?;
        let buf = DmaBuf::from_fd(req.dmabuf_fd, &self.dmabufs)?;
        let mut memory = self.memory_lock.write();
        if buf.data().retired(&memory) {
            return Err(EBADFD);
        }
        BarDmaBuf::revoke(&buf, &mut memory, true);
        Ok(0)
    }

    /// `VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR`: the memory type of a buffer's later mappings.
    pub(crate) fn feature_dma_buf_memattr(
        &self,
        flags: u32,
        arg: UserPtr,
        argsz: usize,
    ) -> Result<i32> {
        let minsz = size_of::<uapi::vfio_device_feature_dma_buf_memattr>();
        if !vfio::check_feature(flags, argsz, uapi::VFIO_DEVICE_FEATURE_SET, minsz)? {
            return Ok(0);
        }
        let req: uapi::vfio_device_feature_dma_buf_memattr = vfio::read_arg(arg, minsz)?;
        let write_combine = match req.memattr {
            uapi::VFIO_DEVICE_DMA_BUF_MEMATTR_NC => false,
            uapi::VFIO_DEVICE_DMA_BUF_MEMATTR_WC => true,
            _ => return Err(EINVAL),
        };
        let buf = DmaBuf::from_fd(req.dmabuf_fd, &self.dmabufs)?;
        if buf.data().retired(&self.memory_lock.read()) {
            return Err(EBADFD);
        }
        buf.data()
            .write_combine
            .store(write_combine, Ordering::Relaxed);
        Ok(0)
    }
}

#[kunit_tests(vfio_pci_rs_dmabuf)]
mod tests {
    use super::*;

    const PAGE: usize = PAGE_SIZE;
    const PMD: usize = PAGE << 9;
    const PUD: usize = PAGE << 18;

    fn range(start: usize, len: usize) -> PhysRange {
        // SAFETY: The ranges are only looked up, never mapped.
        unsafe { PhysRange::new(start as u64, len as u64) }
    }

    fn vma(start: usize, len: usize, pgoff: usize) -> VmaSpan {
        VmaSpan {
            start,
            end: start + len,
            pgoff,
        }
    }

    fn pfn_of(ranges: &[PhysRange], index: usize, offset: usize) -> PfnLookup {
        PfnLookup::Found(ranges[index].pfn_at(offset as u64).unwrap())
    }

    /// One row: ranges, VMA, pgoff base, address, order, expected.
    struct Case {
        ranges: &'static [(usize, usize)],
        vma: (usize, usize, usize),
        pgoff_base: usize,
        address: usize,
        order: u32,
        /// `Some((range, offset))` for a frame; otherwise a fall back or a SIGBUS.
        frame: Option<(usize, usize)>,
        fallback: bool,
    }

    const BAR: usize = 0x8000_0000; // 1 GiB aligned
    const VA: usize = 0x7f00_0000_0000; // 1 GiB aligned

    fn check(case: &Case) -> Result {
        let mut ranges = KVec::new();
        for &(start, len) in case.ranges {
            ranges.push(range(start, len), GFP_KERNEL)?;
        }
        let (start, len, pgoff) = case.vma;
        let got = find_pfn(
            &ranges,
            vma(start, len, pgoff),
            case.pgoff_base,
            case.address,
            case.order,
        );
        let want = match case.frame {
            Some((i, off)) => pfn_of(&ranges, i, off),
            None if case.fallback => PfnLookup::Fallback,
            None => PfnLookup::SigBus,
        };
        assert_eq!(got, want);
        Ok(())
    }

    fn check_all(cases: &[Case]) -> Result {
        cases.iter().try_for_each(check)
    }

    const fn row(
        ranges: &'static [(usize, usize)],
        vma: (usize, usize, usize),
        pgoff_base: usize,
        address: usize,
        order: u32,
        frame: Option<(usize, usize)>,
        fallback: bool,
    ) -> Case {
        Case {
            ranges,
            vma,
            pgoff_base,
            address,
            order,
            frame,
            fallback,
        }
    }

    const ONE_GIB: &[(usize, usize)] = &[(BAR, PUD)];
    const TWO_RANGES: &[(usize, usize)] = &[(BAR + PMD, PMD), (BAR, 4 * PMD)];
    const ALIASED: &[(usize, usize)] = &[(BAR, PAGE), (BAR, PAGE), (BAR + 2 * PAGE, PAGE)];

    #[test]
    fn single_range_orders() -> Result {
        let cases = [
            // Whole BAR at a 1 GiB-aligned VA: PUD, PMD and PTE all map.
            row(
                ONE_GIB,
                (VA, PUD, 0),
                0,
                VA + 5 * PAGE,
                18,
                Some((0, 0)),
                false,
            ),
            row(
                ONE_GIB,
                (VA, PUD, 0),
                0,
                VA + PMD + 3,
                9,
                Some((0, PMD)),
                false,
            ),
            row(
                ONE_GIB,
                (VA, PUD, 0),
                0,
                VA + PUD - 1,
                0,
                Some((0, PUD - PAGE)),
                false,
            ),
            // A 2 MiB-aligned VA: the PUD crosses the VMA's edges, the PMD maps.
            row(
                ONE_GIB,
                (VA + PMD, PUD - PMD, 1 << 9),
                0,
                VA + PMD,
                18,
                None,
                true,
            ),
            row(
                ONE_GIB,
                (VA + PMD, PUD - PMD, 1 << 9),
                0,
                VA + 2 * PMD,
                9,
                Some((0, 2 * PMD)),
                false,
            ),
            // A VA that is 4 KiB aligned only: the PMD's frame is misaligned, PTEs map.
            row(
                ONE_GIB,
                (VA + PAGE, PUD - PAGE, 0),
                0,
                VA + PMD + PAGE,
                9,
                None,
                true,
            ),
            row(
                ONE_GIB,
                (VA + PAGE, PUD - PAGE, 0),
                0,
                VA + PMD + PAGE,
                0,
                Some((0, PMD)),
                false,
            ),
            // Order 0 always maps inside the buffer.
            row(ONE_GIB, (VA, PAGE, 0), 0, VA, 0, Some((0, 0)), false),
        ];
        check_all(&cases)
    }

    #[test]
    fn pgoff_and_base() -> Result {
        let cases = [
            // A device fd mapping: page offsets with the region index; the base takes them off.
            row(
                ONE_GIB,
                (VA, PMD, (2 << 28) + 512),
                (2 << 28) + 512,
                VA + PAGE,
                0,
                Some((0, PAGE)),
                false,
            ),
            // Split VMA: the second half has a larger pgoff, same buffer.
            row(
                ONE_GIB,
                (VA + PMD, PMD, (2 << 28) + 1024),
                (2 << 28) + 512,
                VA + PMD,
                9,
                Some((0, PMD)),
                false,
            ),
            // An exported buffer mapped from page 3.
            row(
                ONE_GIB,
                (VA, 4 * PAGE, 3),
                0,
                VA + PAGE,
                0,
                Some((0, 4 * PAGE)),
                false,
            ),
            // pgoff below the base (cannot happen through mmap) is outside the buffer.
            row(ONE_GIB, (VA, PAGE, 1), 2, VA, 0, None, false),
            // Past the buffer's end.
            row(
                ONE_GIB,
                (VA, 2 * PAGE, (PUD / PAGE) - 1),
                0,
                VA + PAGE,
                0,
                None,
                false,
            ),
            row(
                ONE_GIB,
                (VA, 2 * PMD, (PUD / PAGE) - 512),
                0,
                VA + PMD,
                9,
                None,
                true,
            ),
        ];
        check_all(&cases)
    }

    #[test]
    fn several_ranges() -> Result {
        let cases = [
            // The buffer is range 0 then range 1, whatever their physical order.
            row(TWO_RANGES, (VA, 5 * PMD, 0), 0, VA, 9, Some((0, 0)), false),
            row(
                TWO_RANGES,
                (VA, 5 * PMD, 0),
                0,
                VA + PMD,
                9,
                Some((1, 0)),
                false,
            ),
            row(
                TWO_RANGES,
                (VA, 5 * PMD, 0),
                0,
                VA + 4 * PMD + PAGE,
                0,
                Some((1, 3 * PMD + PAGE)),
                false,
            ),
            // With the VMA 1 MiB into the buffer, a PMD crosses the ranges' boundary, the next
            // one's frame is misaligned, and PTEs map.
            row(TWO_RANGES, (VA, 4 * PMD, 256), 0, VA, 9, None, true),
            row(TWO_RANGES, (VA, 4 * PMD, 256), 0, VA + PMD, 9, None, true),
            row(
                TWO_RANGES,
                (VA, 4 * PMD, 256),
                0,
                VA + PMD - PAGE,
                0,
                Some((1, 255 * PAGE)),
                false,
            ),
            // Past the last range.
            row(
                TWO_RANGES,
                (VA, 6 * PMD, 0),
                0,
                VA + 5 * PMD,
                0,
                None,
                false,
            ),
            row(TWO_RANGES, (VA, 6 * PMD, 0), 0, VA + 5 * PMD, 9, None, true),
            // A PUD never fits in 2 MiB + 8 MiB.
            row(TWO_RANGES, (VA, PUD, 0), 0, VA, 18, None, true),
        ];
        check_all(&cases)
    }

    #[test]
    fn importer_ranges() -> Result {
        let one = [range(BAR, PMD)];
        let two = [range(BAR, PAGE), range(BAR + PMD, PAGE)];
        // One range of a BAR with a provider is what importers get.
        assert_eq!(importer_range(false, true, &one), Ok(one[0]));
        // Revoked wins over everything else, as in C.
        assert_eq!(importer_range(true, true, &one), Err(ENODEV));
        assert_eq!(importer_range(true, false, &two), Err(ENODEV));
        // Several ranges, or no provider, cannot be imported as one physical range.
        assert_eq!(importer_range(false, true, &two), Err(EOPNOTSUPP));
        assert_eq!(importer_range(false, false, &one), Err(EOPNOTSUPP));
        assert_eq!(importer_range(false, true, &[]), Err(EOPNOTSUPP));
        Ok(())
    }

    #[test]
    fn vma_buffer_offsets() -> Result {
        // An exported buffer: the VMA's page offset is the buffer's.
        assert_eq!(buffer_offset(0, 0), Ok(0));
        assert_eq!(buffer_offset(3, 0), Ok(3 * PAGE as u64));
        // A device fd mapping of BAR 2 from 2 MiB, and a split VMA 2 MiB further on.
        let base = (2 << 28) + 512;
        assert_eq!(buffer_offset(base, base), Ok(0));
        assert_eq!(buffer_offset(base + 512, base), Ok(PMD as u64));
        // A page offset below the buffer's first page is not the buffer's.
        assert_eq!(buffer_offset(base - 1, base), Err(EINVAL));
        Ok(())
    }

    #[test]
    fn aliasing() -> Result {
        // Pages 0 and 1 of the buffer are the same BAR page; page 2 is BAR page 2.
        let cases = [
            row(ALIASED, (VA, 3 * PAGE, 0), 0, VA, 0, Some((0, 0)), false),
            row(
                ALIASED,
                (VA, 3 * PAGE, 0),
                0,
                VA + PAGE,
                0,
                Some((1, 0)),
                false,
            ),
            row(
                ALIASED,
                (VA, 3 * PAGE, 0),
                0,
                VA + 2 * PAGE,
                0,
                Some((2, 0)),
                false,
            ),
            row(ALIASED, (VA, 3 * PAGE, 0), 0, VA + 3 * PAGE, 0, None, false),
        ];
        for case in &cases {
            check(case)?;
        }
        // Both aliases are the same frame.
        assert_eq!(range(BAR, PAGE).pfn_at(0), range(BAR, PAGE).pfn_at(0));
        Ok(())
    }
}
