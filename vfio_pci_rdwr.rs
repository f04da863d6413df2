// SPDX-License-Identifier: GPL-2.0

//! Read and write of BARs, the option ROM and the legacy VGA ranges through the device fd, as
//! `vfio_pci_rdwr.c`: MMIO and I/O ports in 1, 2, 4 and 8 byte accesses, each BAR memory
//! access under a `memory_lock` read guard that checks memory decode first.

use crate::{
    vfio_pci_priv::{offset_to_index, MemoryState, OFFSET_MASK, ROM_INDEX},
    VfioPciCore,
};
use core::{
    mem::{offset_of, size_of},
    ops::Range,
};
use kernel::{
    device::Bound,
    pci::{self, IoMapping, VgaResource},
    prelude::*,
    sync::{aref::ARef, Arc, Mutex, RwSemaphore},
    uaccess::{UserPtr, UserSlice},
    uapi,
    vfio::{self, Virqfd, VirqfdHandler},
};

/// One access of [`do_io_rw`]: `width` bytes at `offset`, a read or a write of `value`.
fn io_access(io: &IoMapping, offset: usize, width: usize, write: Option<u64>) -> Result<u64> {
    // CAST: Each value is truncated to the access width, which is what it was read from.
    match (width, write) {
        (8, None) => io.read64(offset),
        (4, None) => io.read32(offset).map(u64::from),
        (2, None) => io.read16(offset).map(u64::from),
        (_, None) => io.read8(offset).map(u64::from),
        (8, Some(v)) => io.write64(v, offset).map(|()| 0),
        (4, Some(v)) => io.write32(v as u32, offset).map(|()| 0),
        (2, Some(v)) => io.write16(v as u16, offset).map(|()| 0),
        (_, Some(v)) => io.write8(v as u8, offset).map(|()| 0),
    }
}

/// Where an access goes, and whether it must see memory decode enabled.
enum Target<'a> {
    /// A BAR mapped at open; reached through the `memory_lock` read guard.
    Bar(&'a RwSemaphore<MemoryState>, usize, bool),
    /// A mapping of the caller's (ROM, VGA), optionally checked against memory decode.
    Mapping(&'a IoMapping, Option<&'a RwSemaphore<MemoryState>>),
}

impl Target<'_> {
    fn access(
        &self,
        pdev: &pci::Device,
        offset: usize,
        width: usize,
        write: Option<u64>,
    ) -> Result<u64> {
        match self {
            Target::Bar(lock, bar, test_mem) => {
                let memory = lock.read();
                if *test_mem && !memory.memory_enabled(pdev) {
                    return Err(EIO);
                }
                let io = memory.bars[*bar].as_ref().map_err(|e| *e)?;
                io_access(io, offset, width, write)
            }
            Target::Mapping(io, Some(lock)) => {
                let memory = lock.read();
                if !memory.memory_enabled(pdev) {
                    return Err(EIO);
                }
                io_access(io, offset, width, write)
            }
            Target::Mapping(io, None) => io_access(io, offset, width, write),
        }
    }
}

/// The next step of [`do_io_rw`].
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// One access of this many bytes.
    Access(usize),
    /// This many bytes of the excluded range: reads fill with 0xff, writes are dropped.
    Skip(usize),
}

/// The next step at `off` with `count` bytes left: the largest naturally aligned access of at
/// most `max_width` bytes that does not reach into `excluded`, or the part of `excluded` ahead.
fn next_step(off: usize, count: usize, excluded: &Range<usize>, max_width: usize) -> Step {
    let fillable = if off < excluded.start {
        count.min(excluded.start - off)
    } else if off >= excluded.end {
        count
    } else {
        0
    };
    match [8, 4, 2, 1]
        .into_iter()
        .find(|&w| fillable >= w && off % w == 0 && max_width >= w)
    {
        Some(width) => Step::Access(width),
        None => Step::Skip(count.min(excluded.end - off)),
    }
}

/// Reads or writes `count` bytes at `off` in the largest naturally aligned accesses up to
/// `max_width` (`vfio_pci_core_do_io_rw()`). Reads of `excluded` fill with 0xff and writes to
/// it are dropped: the MSI-X table, or the part of a ROM BAR past the ROM.
#[expect(clippy::too_many_arguments)]
fn do_io_rw(
    pdev: &pci::Device,
    target: &Target<'_>,
    buf: UserPtr,
    mut off: usize,
    mut count: usize,
    excluded: Range<usize>,
    write: bool,
    max_width: usize,
) -> Result<usize> {
    let mut done = 0;
    while count != 0 {
        let ptr = buf.wrapping_byte_add(done);
        let filled = match next_step(off, count, &excluded, max_width) {
            Step::Access(width) => {
                let mut bytes = [0u8; 8];
                if write {
                    UserSlice::new(ptr, width)
                        .reader()
                        .read_slice(&mut bytes[..width])?;
                    target.access(pdev, off, width, Some(u64::from_le_bytes(bytes)))?;
                } else {
                    let val = target.access(pdev, off, width, None)?;
                    bytes = val.to_le_bytes();
                    UserSlice::new(ptr, width)
                        .writer()
                        .write_slice(&bytes[..width])?;
                }
                width
            }
            Step::Skip(filled) => {
                if !write {
                    let mut writer = UserSlice::new(ptr, filled).writer();
                    for _ in 0..filled {
                        writer.write(&0xffu8)?;
                    }
                }
                filled
            }
        };

        count -= filled;
        done += filled;
        off += filled;
    }
    Ok(done)
}

/// Rounds `n` up to a power of two, as `roundup_pow_of_two()`.
fn roundup_pow_of_two(n: u64) -> u64 {
    n.checked_next_power_of_two().unwrap_or(0)
}

impl VfioPciCore {
    /// Reads or writes a BAR or the ROM (`vfio_pci_bar_rw()`).
    pub(crate) fn bar_rw(
        &self,
        pdev: &pci::Device<Bound>,
        buf: UserPtr,
        count: usize,
        pos: &mut i64,
        write: bool,
    ) -> Result<usize> {
        // CAST: The VFIO core only passes file positions it accepted, which are not negative.
        let pos_u = *pos as u64;
        let off = pos_u & OFFSET_MASK;
        // CAST: The caller dispatched on the index, which is at most the ROM's.
        let bar = offset_to_index(pos_u) as u32;

        let platform_rom = (bar == ROM_INDEX).then(|| pdev.platform_rom()).flatten();
        let end = if pdev.resource_start(bar)? != 0 {
            pdev.resource_len(bar)?
        } else if let Some((_, len)) = platform_rom {
            roundup_pow_of_two(len as u64)
        } else {
            return Err(EINVAL);
        };
        if off >= end {
            return Err(EINVAL);
        }
        let count = count.min(usize::try_from(end - off)?);
        let off = usize::try_from(off)?;
        let test_mem = pdev.resource_flags(bar)?.is_mem();

        let done = if bar == ROM_INDEX {
            // The ROM can fill less of the BAR than its size: the rest reads as 0xff.
            let rom = if pdev.resource_start(bar)? != 0 {
                pdev.map_rom().ok_or(ENOMEM)?
            } else {
                let (phys, len) = platform_rom.ok_or(EINVAL)?;
                IoMapping::ioremap(phys, len)?
            };
            let memory = test_mem.then_some(&self.memory_lock);
            // Some devices (e.g. Intel X710) fail qword access to the ROM: use dwords at most.
            do_io_rw(
                pdev,
                &Target::Mapping(&rom, memory.map(|lock| &**lock)),
                buf,
                off,
                count,
                rom.len()..usize::try_from(end)?,
                false,
                4,
            )?
        } else {
            if let Err(e) = &self.memory_lock.read().bars[bar as usize] {
                return Err(*e);
            }
            let excluded = match self.open.lock().msix {
                Some(msix) if msix.bar == bar => {
                    usize::try_from(msix.offset)?..usize::try_from(msix.offset + msix.size)?
                }
                _ => 0..0,
            };
            do_io_rw(
                pdev,
                &Target::Bar(&self.memory_lock, bar as usize, test_mem),
                buf,
                off,
                count,
                excluded,
                write,
                8,
            )?
        };

        *pos += i64::try_from(done)?;
        Ok(done)
    }

    /// Reads or writes the legacy VGA ranges (`vfio_pci_vga_rw()`): memory at 0xa0000 and the
    /// I/O ports at 0x3b0 and 0x3c0, each routed to the device by the VGA arbiter.
    pub(crate) fn vga_rw(
        &self,
        pdev: &pci::Device<Bound>,
        buf: UserPtr,
        count: usize,
        pos: &mut i64,
        write: bool,
    ) -> Result<usize> {
        if !self.has_vga {
            return Err(EINVAL);
        }
        // CAST: File positions the VFIO core accepted are not negative.
        let off = (*pos as u64) & OFFSET_MASK;
        if off > 0xbffff {
            return Err(EINVAL);
        }
        // CAST: Checked to be below 0xc0000 above.
        let off = off as usize;
        let (io, start, end, rsrc) = match off {
            0xa0000..=0xbffff => (
                IoMapping::ioremap(0xa0000, 0x20000)?,
                0xa0000,
                0xc0000,
                VgaResource::LegacyMem,
            ),
            0x3b0..=0x3bb => (
                IoMapping::ioport(0x3b0, 12)?,
                0x3b0,
                0x3bc,
                VgaResource::LegacyIo,
            ),
            0x3c0..=0x3df => (
                IoMapping::ioport(0x3c0, 32)?,
                0x3c0,
                0x3e0,
                VgaResource::LegacyIo,
            ),
            _ => return Err(EINVAL),
        };
        let count = count.min(end - off);
        let _vga = pdev.vga_get_interruptible(rsrc)?;

        // VGA memory is a legacy, non-BAR range that hopefully allows probing: it is not
        // checked against the memory enable bit.
        let done = do_io_rw(
            pdev,
            &Target::Mapping(&io, None),
            buf,
            off - start,
            count,
            0..0,
            write,
            4,
        )?;
        *pos += i64::try_from(done)?;
        Ok(done)
    }
}

/// The most ioeventfds a function may have (`VFIO_PCI_IOEVENTFD_MAX`).
const IOEVENTFD_MAX: usize = 1000;

/// A write of `data` to a BAR whenever an eventfd fires (`struct vfio_pci_ioeventfd`).
pub(crate) struct IoEventFdWrite {
    memory: Arc<RwSemaphore<MemoryState>>,
    pdev: ARef<pci::Device>,
    bar: usize,
    pos: usize,
    data: u64,
    count: usize,
    /// The BAR is memory, so the write needs memory decode (`test_mem`).
    test_mem: bool,
}

impl IoEventFdWrite {
    /// `vfio_pci_ioeventfd_do_write()` under the caller's guard.
    fn write(&self, memory: &MemoryState) {
        if self.test_mem && !memory.memory_enabled(&self.pdev) {
            return;
        }
        if let Ok(io) = &memory.bars[self.bar] {
            let _ = io_access(io, self.pos, self.count, Some(self.data));
        }
    }
}

impl VirqfdHandler for IoEventFdWrite {
    /// `vfio_pci_ioeventfd_handler()`: writes from the eventfd wakeup unless `memory_lock` is
    /// contended, then from the thread.
    fn handle(&self) -> bool {
        let Some(memory) = self.memory.try_read() else {
            return true;
        };
        self.write(&memory);
        false
    }

    /// `vfio_pci_ioeventfd_thread()`.
    fn thread(&self) {
        self.write(&self.memory.read());
    }
}

/// The ioeventfds of an open function (`ioeventfds_list`, under `ioeventfds_lock`).
pub(crate) type IoEventFds = Mutex<KVec<Pin<KBox<Virqfd<IoEventFdWrite>>>>>;

impl VfioPciCore {
    /// `VFIO_DEVICE_IOEVENTFD` (`vfio_pci_ioctl_ioeventfd()`, `vfio_pci_ioeventfd()`).
    pub(crate) fn ioctl_ioeventfd(&self, pdev: &pci::Device<Bound>, arg: UserPtr) -> Result<isize> {
        type IoEventFd = uapi::vfio_device_ioeventfd;
        let minsz = offset_of!(IoEventFd, fd) + size_of::<i32>();
        let args: IoEventFd = vfio::read_arg(arg, minsz)?;
        if (args.argsz as usize) < minsz || args.flags & !uapi::VFIO_DEVICE_IOEVENTFD_SIZE_MASK != 0
        {
            return Err(EINVAL);
        }
        let count = args.flags & uapi::VFIO_DEVICE_IOEVENTFD_SIZE_MASK;
        if count.count_ones() != 1 || args.fd < -1 {
            return Err(EINVAL);
        }
        // CAST: One of 1, 2, 4 or 8.
        let count = count as usize;
        let fd = args.fd;

        // Only BARs.
        let bar = offset_to_index(args.offset);
        if bar > u64::from(uapi::VFIO_PCI_BAR5_REGION_INDEX) {
            return Err(EINVAL);
        }
        // CAST: Checked to be at most 5 above.
        let bar = bar as u32;
        let pos = args.offset & OFFSET_MASK;
        if pos + count as u64 > pdev.resource_len(bar)? {
            return Err(EINVAL);
        }
        // No writes around the MSI-X table.
        if let Some(msix) = self.open.lock().msix {
            if msix.bar == bar
                && !(pos + count as u64 <= msix.offset || pos >= msix.offset + msix.size)
            {
                return Err(EINVAL);
            }
        }
        if let Err(e) = &self.memory_lock.read().bars[bar as usize] {
            return Err(*e);
        }
        let pos = usize::try_from(pos)?;

        let mut ioeventfds = self.ioeventfds.lock();
        let existing = ioeventfds.iter().position(|e| {
            let w = e.handler();
            w.pos == pos && w.bar == bar as usize && w.data == args.data && w.count == count
        });
        if let Some(i) = existing {
            if fd != -1 {
                return Err(EEXIST);
            }
            // Dropping it disables it.
            drop(ioeventfds.remove(i)?);
            return Ok(0);
        }
        if fd < 0 {
            return Err(ENODEV);
        }
        if ioeventfds.len() >= IOEVENTFD_MAX {
            return Err(ENOSPC);
        }

        let write = IoEventFdWrite {
            memory: self.memory_lock.clone(),
            pdev: pdev.into(),
            bar: bar as usize,
            pos,
            data: args.data,
            count,
            test_mem: pdev.resource_flags(bar)?.is_mem(),
        };
        let ioeventfd = KBox::pin_init(Virqfd::new(write), GFP_KERNEL)?;
        ioeventfd.as_ref().enable(fd)?;
        ioeventfds.push(ioeventfd, GFP_KERNEL)?;
        Ok(0)
    }

    /// Disables every ioeventfd at close.
    pub(crate) fn ioeventfd_close(&self) {
        let ioeventfds = core::mem::take(&mut *self.ioeventfds.lock());
        drop(ioeventfds);
    }
}

#[kunit_tests(vfio_pci_rs_rdwr)]
mod tests {
    use super::*;

    /// The steps `do_io_rw` takes for `count` bytes at `off`.
    fn steps(mut off: usize, mut count: usize, excluded: Range<usize>, max: usize) -> KVec<Step> {
        let mut all = KVec::new();
        while count != 0 {
            let step = next_step(off, count, &excluded, max);
            let len = match step {
                Step::Access(n) | Step::Skip(n) => n,
            };
            all.push(step, GFP_KERNEL).unwrap();
            off += len;
            count -= len;
        }
        all
    }

    #[test]
    fn largest_aligned_accesses() {
        use Step::Access as A;
        assert_eq!(steps(0, 16, 0..0, 8)[..], [A(8), A(8)]);
        // Unaligned start and end: ramp up to qwords, then down.
        assert_eq!(
            steps(1, 14, 0..0, 8)[..],
            [A(1), A(2), A(4), A(4), A(2), A(1)]
        );
        assert_eq!(steps(6, 1, 0..0, 8)[..], [A(1)]);
    }

    #[test]
    fn width_limit() {
        use Step::Access as A;
        // ROM and VGA accesses stop at dwords.
        assert_eq!(steps(0, 16, 0..0, 4)[..], [A(4), A(4), A(4), A(4)]);
    }

    #[test]
    fn excluded_range_is_skipped_whole() {
        use Step::{Access as A, Skip as S};
        // An MSI-X table at 0x10..0x30: accesses stop before it and resume after.
        assert_eq!(steps(0x8, 0x30, 0x10..0x30, 8)[..], [A(8), S(0x20), A(8)]);
        // Starting inside it skips to its end only as far as asked.
        assert_eq!(steps(0x18, 4, 0x10..0x30, 8)[..], [S(4)]);
        // A ROM shorter than its BAR: the tail reads as 0xff.
        assert_eq!(
            steps(0, 0x20, 0x10..0x40, 4)[..],
            [A(4), A(4), A(4), A(4), S(0x10)]
        );
    }
}
