//! `vfio-test p2p-dma EDU_BDF IVSHMEM_BDF`: peer-to-peer DMA between two devices of one VFIO
//! Type1 container, as a VMM's container backend sets it up.
//!
//! edu's DMA engine copies between its 4 KiB buffer and IOVAs: a page of this process's
//! memory, and 2 MiB of ivshmem's BAR2 mapped by `VFIO_IOMMU_MAP_DMA` of its mmap(), which
//! Type1 follows to the BAR's PFNs (through the driver's fault handler). Checked:
//!
//! - `dma-ram-to-bar`: a page goes from memory through edu into the BAR, and reads back
//!   through ivshmem's device fd;
//! - `dma-bar-to-ram`: a page written into the BAR goes through edu back into memory;
//! - `dma-memory-off`: with ivshmem's memory decode off, edu's write into the BAR does not
//!   land (the BAR no longer decodes it), and after memory is on again the BAR holds what it
//!   held before.
//!
//! Each check is a `PASS|FAIL p2p-dma <edu> <check>` line; the run ends with
//! `N passed, N failed` (exit 1 if any failed).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::access::{cfg_get, cfg_set, rd, wr};
use crate::cfgspace::{PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY};
use crate::checks::open_node;
use crate::report::{Phase, Reporter, Stop};
use crate::sys::{self, err_name, ValueIoctl};
use crate::sysfs;
use crate::uapi::{self, size_u32};

/// The checks, in report order.
const CHECKS: &[&str] = &[
    "open",
    "enable",
    "map-ram",
    "map-bar",
    "dma-ram-to-bar",
    "dma-bar-to-ram",
    "dma-memory-off",
    "unmap",
];

/// edu's BAR0 registers (QEMU docs/specs/edu.rst) and its DMA buffer.
const EDU_DMA_SRC: u64 = 0x80;
const EDU_DMA_DST: u64 = 0x88;
const EDU_DMA_COUNT: u64 = 0x90;
const EDU_DMA_CMD: u64 = 0x98;
const EDU_CMD_START: u64 = 1 << 0;
/// Direction: from edu's buffer to the bus address, else the other way.
const EDU_CMD_TO_BUS: u64 = 1 << 1;
/// edu's buffer in its own DMA address space.
const EDU_BUFFER: u64 = 0x40000;

/// IOVAs below edu's 28-bit DMA mask: the page of memory, and the BAR.
const IOVA_RAM: u64 = 0x10_0000;
const IOVA_BAR: u64 = 0x20_0000;
/// How much of BAR2 is mapped, and where in it the page goes.
const BAR_MAP_LEN: u64 = 0x20_0000;
const BAR_PAGE: u64 = 0x1000;
const BAR2: u32 = 2;
const PAGE: usize = 4096;

/// A shared mapping, unmapped on drop.
struct Mapping {
    addr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(fd: Option<&File>, len: usize, off: u64) -> Result<Self, String> {
        let (flags, raw) = match fd {
            Some(f) => (libc::MAP_SHARED, f.as_raw_fd()),
            None => (libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1),
        };
        let off = libc::off_t::try_from(off).map_err(|_| format!("offset 0x{off:x}"))?;
        // SAFETY: a new mapping where the kernel chooses; no Rust object lives there.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                raw,
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap: {}",
                err_name(&std::io::Error::last_os_error())
            ));
        }
        Ok(Self {
            addr: p.cast(),
            len,
        })
    }

    /// Copies `data` to offset `at` of the mapping.
    fn write(&self, at: usize, data: &[u8]) {
        assert!(at + data.len() <= self.len);
        // SAFETY: in bounds (checked above); the mapping lives as long as `self`, and only
        // raw pointers reach it.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.addr.add(at), data.len()) };
    }

    /// Reads `len` bytes at offset `at`.
    fn read(&self, at: usize, len: usize) -> Vec<u8> {
        assert!(at + len <= self.len);
        let mut out = vec![0u8; len];
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: as in `write`; volatile since a device writes the memory behind our
            // back.
            *b = unsafe { self.addr.add(at + i).read_volatile() };
        }
        out
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is this object's own.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// A page of `seed`-derived bytes.
fn pattern(seed: u8) -> Vec<u8> {
    (0..PAGE)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Opens `bdf`'s group into `container` and returns the group.
fn add_group(container: &File, bdf: &str) -> Result<File, String> {
    let id = sysfs::iommu_group(bdf).map_err(|e| format!("{bdf} iommu_group: {}", err_name(&e)))?;
    let group = open_node(Path::new(&format!("/dev/vfio/{id}")))?;
    sys::group_set_container(&group, container)
        .map_err(|e| format!("{bdf} VFIO_GROUP_SET_CONTAINER: {}", err_name(&e)))?;
    Ok(group)
}

fn device_fd(group: &File, bdf: &str) -> Result<File, String> {
    let name = CString::new(bdf).map_err(|_| format!("bad BDF {bdf:?}"))?;
    sys::group_get_device_fd(group, &name)
        .map_err(|e| format!("{bdf} VFIO_GROUP_GET_DEVICE_FD: {}", err_name(&e)))
}

/// Sets `bits` of the COMMAND register through the config region, or clears them.
fn command(dev: &File, bits: u16, on: bool) -> Result<(), String> {
    let cur = cfg_get(dev, PCI_COMMAND, 2)?;
    let bits = u32::from(bits);
    cfg_set(
        dev,
        PCI_COMMAND,
        2,
        if on { cur | bits } else { cur & !bits },
    )
}

fn edu_write(edu: &File, reg: u64, val: u64) -> Result<(), String> {
    wr(edu, 0, reg, &val.to_le_bytes())
        .map(|_| ())
        .map_err(|e| format!("edu write 0x{reg:x}: {}", err_name(&e)))
}

/// One edu DMA of a page, to or from its buffer; waits until the engine is idle.
fn edu_dma(edu: &File, src: u64, dst: u64, to_bus: bool) -> Result<(), String> {
    edu_write(edu, EDU_DMA_SRC, src)?;
    edu_write(edu, EDU_DMA_DST, dst)?;
    edu_write(edu, EDU_DMA_COUNT, PAGE as u64)?;
    let dir = if to_bus { EDU_CMD_TO_BUS } else { 0 };
    edu_write(edu, EDU_DMA_CMD, EDU_CMD_START | dir)?;
    // edu runs the transfer from a QEMU timer, 100 ms later.
    let start = Instant::now();
    loop {
        let cmd = rd(edu, 0, EDU_DMA_CMD, 8).map_err(|e| format!("edu read: {}", err_name(&e)))?;
        let cmd = u64::from_le_bytes(cmd.try_into().map_err(|_| "short edu read")?);
        if cmd & EDU_CMD_START == 0 {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "edu DMA 0x{src:x} -> 0x{dst:x} still running after 10 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn map_dma(container: &File, vaddr: u64, iova: u64, size: u64) -> Result<(), String> {
    let mut map = uapi::VfioIommuType1DmaMap {
        argsz: size_u32::<uapi::VfioIommuType1DmaMap>(),
        flags: uapi::VFIO_DMA_MAP_FLAG_READ | uapi::VFIO_DMA_MAP_FLAG_WRITE,
        vaddr,
        iova,
        size,
    };
    sys::ioctl_struct::<uapi::IommuMapDma>(container, &mut map)
        .map(|_| ())
        .map_err(|e| {
            format!(
                "VFIO_IOMMU_MAP_DMA iova 0x{iova:x} size 0x{size:x}: {}",
                err_name(&e)
            )
        })
}

fn unmap_dma(container: &File, iova: u64, size: u64) -> Result<(), String> {
    let mut unmap = uapi::VfioIommuType1DmaUnmap {
        argsz: size_u32::<uapi::VfioIommuType1DmaUnmap>(),
        flags: 0,
        iova,
        size,
    };
    sys::ioctl_struct::<uapi::IommuUnmapDma>(container, &mut unmap)
        .map_err(|e| format!("VFIO_IOMMU_UNMAP_DMA iova 0x{iova:x}: {}", err_name(&e)))?;
    if unmap.size != size {
        return Err(format!(
            "unmapped 0x{:x} bytes, expected 0x{size:x}",
            unmap.size
        ));
    }
    Ok(())
}

/// Compares `got` with `want`, naming the first differing byte.
fn same(what: &str, got: &[u8], want: &[u8]) -> Result<(), String> {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None if got.len() == want.len() => Ok(()),
        None => Err(format!(
            "{what}: {} bytes, expected {}",
            got.len(),
            want.len()
        )),
        Some(i) => Err(format!(
            "{what}: byte {i} is 0x{:02x}, expected 0x{:02x}",
            got[i], want[i]
        )),
    }
}

fn checks(p: &mut Phase, edu_bdf: &str, ivshmem_bdf: &str) -> Result<(), Stop> {
    let (container, _groups, edu, ivshmem) = p.step(
        "open",
        (|| {
            let container = open_node(Path::new("/dev/vfio/vfio"))?;
            let groups = [
                add_group(&container, edu_bdf)?,
                add_group(&container, ivshmem_bdf)?,
            ];
            sys::ioctl_value(&container, ValueIoctl::SetIommu, uapi::VFIO_TYPE1V2_IOMMU)
                .map_err(|e| format!("VFIO_SET_IOMMU(type1v2): {}", err_name(&e)))?;
            let edu = device_fd(&groups[0], edu_bdf)?;
            let ivshmem = device_fd(&groups[1], ivshmem_bdf)?;
            Ok((container, groups, edu, ivshmem))
        })(),
    )?;
    p.step(
        "enable",
        command(&edu, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER, true)
            .and_then(|()| command(&ivshmem, PCI_COMMAND_MEMORY, true)),
    )?;

    let ram = p.step(
        "map-ram",
        (|| {
            let ram = Mapping::new(None, PAGE, 0)?;
            map_dma(&container, ram.addr as u64, IOVA_RAM, PAGE as u64)?;
            Ok(ram)
        })(),
    )?;
    let bar = p.step(
        "map-bar",
        (|| {
            let bar_off = uapi::region_offset(BAR2, 0);
            let bar = Mapping::new(Some(&ivshmem), BAR_MAP_LEN as usize, bar_off)?;
            map_dma(&container, bar.addr as u64, IOVA_BAR, BAR_MAP_LEN)?;
            Ok(bar)
        })(),
    )?;
    let read_bar = |len| -> Result<Vec<u8>, String> {
        rd(&ivshmem, BAR2, BAR_PAGE, len).map_err(|e| format!("ivshmem pread: {}", err_name(&e)))
    };

    // Memory -> edu -> BAR.
    let a = pattern(0x11);
    p.result(
        "dma-ram-to-bar",
        (|| {
            bar.write(BAR_PAGE as usize, &[0; PAGE]);
            ram.write(0, &a);
            edu_dma(&edu, IOVA_RAM, EDU_BUFFER, false)?;
            edu_dma(&edu, EDU_BUFFER, IOVA_BAR + BAR_PAGE, true)?;
            same("BAR2 through the device fd", &read_bar(PAGE)?, &a)?;
            same(
                "BAR2 through the mapping",
                &bar.read(BAR_PAGE as usize, PAGE),
                &a,
            )
        })(),
    );

    // BAR -> edu -> memory.
    let b = pattern(0x5a);
    p.result(
        "dma-bar-to-ram",
        (|| {
            wr(&ivshmem, BAR2, BAR_PAGE, &b)
                .map_err(|e| format!("ivshmem pwrite: {}", err_name(&e)))?;
            ram.write(0, &[0; PAGE]);
            edu_dma(&edu, IOVA_BAR + BAR_PAGE, EDU_BUFFER, false)?;
            edu_dma(&edu, EDU_BUFFER, IOVA_RAM, true)?;
            same("memory", &ram.read(0, PAGE), &b)
        })(),
    );

    // With ivshmem's memory decode off the BAR takes no write; once on, it holds `b`.
    let c = pattern(0xc3);
    p.result(
        "dma-memory-off",
        (|| {
            ram.write(0, &c);
            edu_dma(&edu, IOVA_RAM, EDU_BUFFER, false)?;
            command(&ivshmem, PCI_COMMAND_MEMORY, false)?;
            let dma = edu_dma(&edu, EDU_BUFFER, IOVA_BAR + BAR_PAGE, true);
            command(&ivshmem, PCI_COMMAND_MEMORY, true)?;
            dma?;
            same(
                "BAR2 after a DMA while memory was off",
                &read_bar(PAGE)?,
                &b,
            )
        })(),
    );

    p.result(
        "unmap",
        unmap_dma(&container, IOVA_BAR, BAR_MAP_LEN)
            .and_then(|()| unmap_dma(&container, IOVA_RAM, PAGE as u64)),
    );
    drop((bar, ram));
    Ok(())
}

/// Runs the checks on edu `edu_bdf` and ivshmem `ivshmem_bdf`, both bound to a VFIO driver.
pub fn run(edu_bdf: &str, ivshmem_bdf: &str) -> ExitCode {
    let mut rep = Reporter::stdout();
    let driver = match sysfs::current_driver(edu_bdf) {
        Ok(Some(d)) => d,
        Ok(None) => "unbound".to_string(),
        Err(e) => format!("driver-{}", err_name(&e)),
    };
    let mut p = Phase::new(&mut rep, format!("p2p-dma {driver} {edu_bdf}"), CHECKS);
    let r = checks(&mut p, edu_bdf, ivshmem_bdf);
    p.finish(r);
    rep.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ() {
        assert_eq!(pattern(1).len(), PAGE);
        assert_ne!(pattern(0x11), pattern(0x5a));
        assert_ne!(pattern(0x5a), pattern(0xc3));
    }

    #[test]
    fn same_names_the_first_difference() {
        assert_eq!(same("x", &[1, 2], &[1, 2]), Ok(()));
        assert_eq!(
            same("x", &[1, 3], &[1, 2]),
            Err("x: byte 1 is 0x03, expected 0x02".to_string())
        );
        assert!(same("x", &[1], &[1, 2]).is_err());
    }

    #[test]
    fn iovas_fit_edus_dma_mask() {
        assert!(IOVA_BAR + BAR_MAP_LEN <= 1 << 28);
        assert!(IOVA_RAM + PAGE as u64 <= IOVA_BAR);
    }
}
