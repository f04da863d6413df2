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
//!   held before;
//! - `dma-after-restore`: with memory on again, edu's write lands: Type1 keeps the BAR's PFNs
//!   mapped whatever the decode.
//!
//! With `compat`, the container is `/dev/iommu`, iommufd's Type1 compatibility, which maps
//! the BAR's mmap() by importing the DMABUF behind it (vfio-pci-rs only: a vfio-pci BAR
//! mapping is no DMABUF, and pinning its PFNs fails). Turning memory decode off revokes the
//! buffer, iommufd unmaps it for good: the write with memory off faults in the IOMMU, and so
//! does the one after memory is on again, as with `IOMMU_IOAS_MAP_FILE` below.
//!
//! `vfio-test p2p-iommufd EDU_BDF IVSHMEM_BDF [BACKING]` does the same through an iommufd
//! IOAS, as VMMs map BARs for GPU peer-to-peer: both devices opened through their cdevs and
//! attached to one IOAS, the page of memory mapped by `IOMMU_IOAS_MAP`, and the BAR by
//! `IOMMU_IOAS_MAP_FILE` of a DMABUF exported with `VFIO_DEVICE_FEATURE_DMA_BUF`. On top of
//! the checks above:
//!
//! - `map-file-*`: the errnos of importing a buffer past its end (EINVAL), of two ranges
//!   (EOPNOTSUPP) and while memory decode is off (ENODEV, the buffer is revoked);
//! - `dma-ram-to-bar` also reads the page back from ivshmem's backing file on the host, when
//!   given;
//! - `dma-memory-off`: turning memory decode off revokes the buffer, iommufd unmaps its IOVA
//!   range, and edu's write does not land but faults in the IOMMU (a DMAR fault in the kernel
//!   log);
//! - `dma-after-restore`: with memory on again the range stays unmapped, as on vfio-pci:
//!   iommufd takes a revocation as permanent.
//!
//! Each check is a `PASS|FAIL p2p-dma <edu> <check>` line (`p2p-iommufd` for the second
//! command); the run ends with `N passed, N failed` (exit 1 if any failed).

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::access::{cfg_get, cfg_set, rd, wr};
use crate::cfgspace::{PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY};
use crate::checks::open_node;
use crate::report::{Phase, Reporter, Stop};
use crate::stress::{dmabuf_export, dmabuf_export_ranges};
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
    "dma-after-restore",
    "unmap",
];

/// The container `p2p-dma` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    /// `/dev/vfio/vfio`, the VFIO Type1 IOMMU driver.
    Type1,
    /// `/dev/iommu`, iommufd's Type1 compatibility.
    Compat,
}

impl Container {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "type1" => Ok(Self::Type1),
            "compat" => Ok(Self::Compat),
            _ => Err(format!("container {s:?}: expected type1 or compat")),
        }
    }

    fn node(self) -> &'static str {
        match self {
            Self::Type1 => "/dev/vfio/vfio",
            Self::Compat => "/dev/iommu",
        }
    }
}

/// The checks of `p2p-iommufd`, in report order.
const CHECKS_IOMMUFD: &[&str] = &[
    "open",
    "enable",
    "map-ram",
    "export",
    "map-file-past-end",
    "map-file-two-ranges",
    "map-file-revoked",
    "map-file",
    "dma-ram-to-bar",
    "dma-bar-to-ram",
    "dma-memory-off",
    "dma-after-restore",
    "unmap",
];

/// edu's BAR0 registers (QEMU docs/specs/edu.rst) and its DMA buffer.
pub(crate) const EDU_DMA_SRC: u64 = 0x80;
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
pub(crate) fn add_group(container: &File, bdf: &str) -> Result<File, String> {
    let id = sysfs::iommu_group(bdf).map_err(|e| format!("{bdf} iommu_group: {}", err_name(&e)))?;
    let group = open_node(Path::new(&format!("/dev/vfio/{id}")))?;
    sys::group_set_container(&group, container)
        .map_err(|e| format!("{bdf} VFIO_GROUP_SET_CONTAINER: {}", err_name(&e)))?;
    Ok(group)
}

/// Opens `bdf` through its group in a new Type1 container: (container, group, device).
pub(crate) fn open_type1(bdf: &str) -> Result<(File, File, File), String> {
    let container = open_node(Path::new("/dev/vfio/vfio"))?;
    let group = add_group(&container, bdf)?;
    sys::ioctl_value(&container, ValueIoctl::SetIommu, uapi::VFIO_TYPE1V2_IOMMU)
        .map_err(|e| format!("VFIO_SET_IOMMU(type1v2): {}", err_name(&e)))?;
    let dev = device_fd(&group, bdf)?;
    Ok((container, group, dev))
}

pub(crate) fn device_fd(group: &File, bdf: &str) -> Result<File, String> {
    let name = CString::new(bdf).map_err(|_| format!("bad BDF {bdf:?}"))?;
    sys::group_get_device_fd(group, &name)
        .map_err(|e| format!("{bdf} VFIO_GROUP_GET_DEVICE_FD: {}", err_name(&e)))
}

/// Sets `bits` of the COMMAND register through the config region, or clears them.
pub(crate) fn command(dev: &File, bits: u16, on: bool) -> Result<(), String> {
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

/// The page of BAR2 the DMAs go to, read through ivshmem's device fd.
fn bar_page(ivshmem: &File) -> Result<Vec<u8>, String> {
    rd(ivshmem, BAR2, BAR_PAGE, PAGE).map_err(|e| format!("ivshmem pread: {}", err_name(&e)))
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

fn checks(p: &mut Phase, edu_bdf: &str, ivshmem_bdf: &str, kind: Container) -> Result<(), Stop> {
    let (container, _groups, edu, ivshmem) = p.step(
        "open",
        (|| {
            let container = open_node(Path::new(kind.node()))?;
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

    // Memory -> edu -> BAR.
    let a = pattern(0x11);
    p.result(
        "dma-ram-to-bar",
        (|| {
            bar.write(BAR_PAGE as usize, &[0; PAGE]);
            ram.write(0, &a);
            edu_dma(&edu, IOVA_RAM, EDU_BUFFER, false)?;
            edu_dma(&edu, EDU_BUFFER, IOVA_BAR + BAR_PAGE, true)?;
            same("BAR2 through the device fd", &bar_page(&ivshmem)?, &a)?;
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

    memory_off_checks(p, &edu, &ivshmem, &ram, &b, kind == Container::Compat);

    p.result(
        "unmap",
        unmap_dma(&container, IOVA_BAR, BAR_MAP_LEN)
            .and_then(|()| unmap_dma(&container, IOVA_RAM, PAGE as u64)),
    );
    drop((bar, ram));
    Ok(())
}

/// `dma-memory-off` and `dma-after-restore`: edu copies a page into the BAR, which holds `b`,
/// with ivshmem's memory decode off, then with it on again. Off, the write never lands. With
/// `imported`, the BAR is mapped by importing its DMABUF, which turning memory off revokes:
/// iommufd unmaps the range for good, so the write faults in the IOMMU, and the one with
/// memory on again does not land either; otherwise (Type1) the PFNs stay mapped and it lands.
fn memory_off_checks(
    p: &mut Phase,
    edu: &File,
    ivshmem: &File,
    ram: &Mapping,
    b: &[u8],
    imported: bool,
) {
    let c = pattern(0xc3);
    p.result(
        "dma-memory-off",
        (|| {
            let mut kmsg = if imported { Some(Kmsg::open()?) } else { None };
            ram.write(0, &c);
            edu_dma(edu, IOVA_RAM, EDU_BUFFER, false)?;
            if let Some(k) = kmsg.as_mut() {
                k.new_messages();
            }
            command(ivshmem, PCI_COMMAND_MEMORY, false)?;
            let dma = edu_dma(edu, EDU_BUFFER, IOVA_BAR + BAR_PAGE, true);
            command(ivshmem, PCI_COMMAND_MEMORY, true)?;
            dma?;
            same(
                "BAR2 after a DMA while memory was off",
                &bar_page(ivshmem)?,
                b,
            )?;
            if let Some(k) = kmsg.as_mut() {
                if !dmar_fault(&k.new_messages(), IOVA_BAR, BAR_MAP_LEN) {
                    return Err("the IOMMU reported no fault in BAR2's IOVA range".to_string());
                }
            }
            Ok(())
        })(),
    );
    // (The fault log is not checked again: a second fault soon after the first may find the
    // IOMMU's fault recording register still full and go unlogged.)
    p.result(
        "dma-after-restore",
        (|| {
            edu_dma(edu, EDU_BUFFER, IOVA_BAR + BAR_PAGE, true)?;
            let want = if imported { b } else { &c[..] };
            same(
                "BAR2 after a DMA with memory on again",
                &bar_page(ivshmem)?,
                want,
            )
        })(),
    );
}

/// `IOMMU_IOAS_MAP` of `len` bytes of this process's memory at `vaddr` to `iova`.
fn ioas_map(iommufd: &File, ioas: u32, vaddr: u64, iova: u64, len: u64) -> Result<(), String> {
    let mut map = uapi::IommuIoasMap {
        size: size_u32::<uapi::IommuIoasMap>(),
        flags: uapi::IOMMU_IOAS_MAP_FIXED_IOVA
            | uapi::IOMMU_IOAS_MAP_READABLE
            | uapi::IOMMU_IOAS_MAP_WRITEABLE,
        ioas_id: ioas,
        user_va: vaddr,
        length: len,
        iova,
        ..Default::default()
    };
    sys::ioctl_struct::<uapi::IommuIoasMapReq>(iommufd, &mut map)
        .map(|_| ())
        .map_err(|e| format!("IOMMU_IOAS_MAP iova 0x{iova:x}: {}", err_name(&e)))
}

/// `IOMMU_IOAS_MAP_FILE` of `len` bytes of DMABUF `buf` from its start to `iova`.
fn ioas_map_file(
    iommufd: &File,
    ioas: u32,
    buf: &OwnedFd,
    iova: u64,
    len: u64,
) -> std::io::Result<()> {
    let mut map = uapi::IommuIoasMapFile {
        size: size_u32::<uapi::IommuIoasMapFile>(),
        flags: uapi::IOMMU_IOAS_MAP_FIXED_IOVA
            | uapi::IOMMU_IOAS_MAP_READABLE
            | uapi::IOMMU_IOAS_MAP_WRITEABLE,
        ioas_id: ioas,
        fd: buf.as_raw_fd(),
        start: 0,
        length: len,
        iova,
    };
    sys::ioctl_struct::<uapi::IommuIoasMapFileReq>(iommufd, &mut map).map(|_| ())
}

fn ioas_unmap(iommufd: &File, ioas: u32, iova: u64, len: u64) -> Result<(), String> {
    let mut unmap = uapi::IommuIoasUnmap {
        size: size_u32::<uapi::IommuIoasUnmap>(),
        ioas_id: ioas,
        iova,
        length: len,
    };
    sys::ioctl_struct::<uapi::IommuIoasUnmapReq>(iommufd, &mut unmap)
        .map_err(|e| format!("IOMMU_IOAS_UNMAP iova 0x{iova:x}: {}", err_name(&e)))?;
    if unmap.length != len {
        return Err(format!(
            "unmapped 0x{:x} bytes, expected 0x{len:x}",
            unmap.length
        ));
    }
    Ok(())
}

/// Expects `r` to fail with `errno`.
pub(crate) fn expect_errno(what: &str, r: std::io::Result<()>, errno: i32) -> Result<(), String> {
    let want = err_name(&std::io::Error::from_raw_os_error(errno));
    match r {
        Err(e) if e.raw_os_error() == Some(errno) => Ok(()),
        Err(e) => Err(format!("{what}: {}, expected {want}", err_name(&e))),
        Ok(()) => Err(format!("{what}: succeeded, expected {want}")),
    }
}

/// The kernel log from the moment it was opened: to find what the IOMMU reported.
struct Kmsg(File);

impl Kmsg {
    fn open() -> Result<Self, String> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .map_err(|e| format!("/dev/kmsg: {}", err_name(&e)))?;
        // SAFETY: lseek on a descriptor we own; /dev/kmsg takes SEEK_END as "from now on".
        if unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_END) } < 0 {
            return Err(format!(
                "/dev/kmsg: seek: {}",
                err_name(&std::io::Error::last_os_error())
            ));
        }
        Ok(Self(f))
    }

    /// The messages logged since the last call (or the opening).
    fn new_messages(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut rec = vec![0u8; 8192];
        loop {
            match self.0.read(&mut rec) {
                Ok(0) => break,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&rec[..n]);
                    // "<prio>,<seq>,<time>,<flags>;<message>\n"
                    let msg = text.split_once(';').map_or(&*text, |(_, m)| m);
                    out.push(msg.trim_end().to_string());
                }
                // EPIPE: records were overwritten since the last read; go on with the next.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        out
    }
}

/// Whether `messages` hold a DMAR fault of the IOMMU at an address in `iova..iova + len`.
fn dmar_fault(messages: &[String], iova: u64, len: u64) -> bool {
    messages.iter().any(|m| {
        m.contains("DMAR")
            && m.split_once("fault addr 0x").is_some_and(|(_, rest)| {
                let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
                u64::from_str_radix(&hex, 16).is_ok_and(|a| (iova..iova + len).contains(&a))
            })
    })
}

/// Opens `bdf`'s cdev, binds it to `iommufd` and attaches it to `ioas`.
fn cdev_attach(bdf: &str, iommufd: &File, ioas: u32) -> Result<File, String> {
    let name =
        sysfs::vfio_cdev_name(bdf).map_err(|e| format!("{bdf} vfio-dev: {}", err_name(&e)))?;
    let dev = open_node(Path::new(&format!("/dev/vfio/devices/{name}")))?;
    let mut bind = uapi::VfioDeviceBindIommufd {
        argsz: size_u32::<uapi::VfioDeviceBindIommufd>(),
        iommufd: iommufd.as_raw_fd(),
        ..Default::default()
    };
    sys::ioctl_struct::<uapi::DeviceBindIommufd>(&dev, &mut bind)
        .map_err(|e| format!("{bdf} BIND_IOMMUFD: {}", err_name(&e)))?;
    let mut attach = uapi::VfioDeviceAttachIommufdPt {
        argsz: size_u32::<uapi::VfioDeviceAttachIommufdPt>(),
        pt_id: ioas,
        ..Default::default()
    };
    sys::ioctl_struct::<uapi::DeviceAttachIommufdPt>(&dev, &mut attach)
        .map_err(|e| format!("{bdf} ATTACH_IOMMUFD_PT: {}", err_name(&e)))?;
    Ok(dev)
}

fn checks_iommufd(
    p: &mut Phase,
    edu_bdf: &str,
    ivshmem_bdf: &str,
    backing: Option<&Path>,
) -> Result<(), Stop> {
    let (iommufd, ioas, edu, ivshmem) = p.step(
        "open",
        (|| {
            let iommufd = open_node(Path::new("/dev/iommu"))?;
            let mut alloc = uapi::IommuIoasAlloc {
                size: size_u32::<uapi::IommuIoasAlloc>(),
                ..Default::default()
            };
            sys::ioctl_struct::<uapi::IommuIoasAllocReq>(&iommufd, &mut alloc)
                .map_err(|e| format!("IOMMU_IOAS_ALLOC: {}", err_name(&e)))?;
            let ioas = alloc.out_ioas_id;
            let edu = cdev_attach(edu_bdf, &iommufd, ioas)?;
            let ivshmem = cdev_attach(ivshmem_bdf, &iommufd, ioas)?;
            Ok((iommufd, ioas, edu, ivshmem))
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
            ioas_map(&iommufd, ioas, ram.addr as u64, IOVA_RAM, PAGE as u64)?;
            Ok(ram)
        })(),
    )?;
    let buf = p.step(
        "export",
        dmabuf_export(&ivshmem, BAR2, 0, BAR_MAP_LEN)
            .map_err(|e| format!("VFIO_DEVICE_FEATURE_DMA_BUF of BAR2: {}", err_name(&e))),
    )?;
    let map_file = |buf: &OwnedFd, len| ioas_map_file(&iommufd, ioas, buf, IOVA_BAR, len);

    p.result(
        "map-file-past-end",
        expect_errno(
            "2 pages past the end",
            map_file(&buf, BAR_MAP_LEN + 2 * PAGE as u64),
            libc::EINVAL,
        ),
    );
    p.result(
        "map-file-two-ranges",
        (|| {
            let page = PAGE as u64;
            let two = dmabuf_export_ranges(&ivshmem, BAR2, &[(0, page), (2 * page, page)])
                .map_err(|e| format!("export of two ranges: {}", err_name(&e)))?;
            expect_errno("two ranges", map_file(&two, 2 * page), libc::EOPNOTSUPP)
        })(),
    );
    p.result(
        "map-file-revoked",
        (|| {
            command(&ivshmem, PCI_COMMAND_MEMORY, false)?;
            let r = map_file(&buf, BAR_MAP_LEN);
            command(&ivshmem, PCI_COMMAND_MEMORY, true)?;
            expect_errno("memory decode off", r, libc::ENODEV)
        })(),
    );
    p.step(
        "map-file",
        map_file(&buf, BAR_MAP_LEN)
            .map_err(|e| format!("IOMMU_IOAS_MAP_FILE of BAR2's DMABUF: {}", err_name(&e))),
    )?;

    // Memory -> edu -> BAR, read back through the device fd and the host's backing file.
    let a = pattern(0x21);
    p.result(
        "dma-ram-to-bar",
        (|| {
            wr(&ivshmem, BAR2, BAR_PAGE, &[0; PAGE])
                .map_err(|e| format!("ivshmem pwrite: {}", err_name(&e)))?;
            ram.write(0, &a);
            edu_dma(&edu, IOVA_RAM, EDU_BUFFER, false)?;
            edu_dma(&edu, EDU_BUFFER, IOVA_BAR + BAR_PAGE, true)?;
            same("BAR2 through the device fd", &bar_page(&ivshmem)?, &a)?;
            if let Some(path) = backing {
                let f = File::open(path)
                    .map_err(|e| format!("{}: {}", path.display(), err_name(&e)))?;
                let mut got = vec![0u8; PAGE];
                f.read_exact_at(&mut got, BAR_PAGE)
                    .map_err(|e| format!("{}: {}", path.display(), err_name(&e)))?;
                same("the host's backing file", &got, &a)?;
            }
            Ok(())
        })(),
    );

    // BAR -> edu -> memory.
    let b = pattern(0x6b);
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

    memory_off_checks(p, &edu, &ivshmem, &ram, &b, true);

    p.result(
        "unmap",
        ioas_unmap(&iommufd, ioas, IOVA_BAR, BAR_MAP_LEN)
            .and_then(|()| ioas_unmap(&iommufd, ioas, IOVA_RAM, PAGE as u64)),
    );
    drop((buf, ram, edu, ivshmem));
    Ok(())
}

/// Runs the iommufd checks on edu `edu_bdf` and ivshmem `ivshmem_bdf`, both bound to a VFIO
/// driver; `backing` is ivshmem's memory backend file, if the host's file system is visible.
pub fn run_iommufd(edu_bdf: &str, ivshmem_bdf: &str, backing: Option<&Path>) -> ExitCode {
    let mut rep = Reporter::stdout();
    let driver = driver_name(edu_bdf);
    let mut p = Phase::new(
        &mut rep,
        format!("p2p-iommufd {driver} {edu_bdf}"),
        CHECKS_IOMMUFD,
    );
    let r = checks_iommufd(&mut p, edu_bdf, ivshmem_bdf, backing);
    p.finish(r);
    rep.finish()
}

pub(crate) fn driver_name(bdf: &str) -> String {
    match sysfs::current_driver(bdf) {
        Ok(Some(d)) => d,
        Ok(None) => "unbound".to_string(),
        Err(e) => format!("driver-{}", err_name(&e)),
    }
}

/// Runs the checks on edu `edu_bdf` and ivshmem `ivshmem_bdf`, both bound to a VFIO driver.
pub fn run(edu_bdf: &str, ivshmem_bdf: &str, kind: Container) -> ExitCode {
    let mut rep = Reporter::stdout();
    let driver = driver_name(edu_bdf);
    let name = match kind {
        Container::Type1 => format!("p2p-dma {driver} {edu_bdf}"),
        Container::Compat => format!("p2p-dma-compat {driver} {edu_bdf}"),
    };
    let mut p = Phase::new(&mut rep, name, CHECKS);
    let r = checks(&mut p, edu_bdf, ivshmem_bdf, kind);
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
    fn dmar_faults_are_found_by_address() {
        let log = [
            "DMAR: DRHD: handling fault status reg 2".to_string(),
            "DMAR: [DMA Write NO_PASID] Request device [01:00.0] fault addr 0x201000 [fault reason 0x05] PTE Write access is not set".to_string(),
        ];
        assert!(dmar_fault(&log, IOVA_BAR, BAR_MAP_LEN));
        assert!(!dmar_fault(&log, IOVA_RAM, PAGE as u64));
        assert!(!dmar_fault(&log[..1], IOVA_BAR, BAR_MAP_LEN));
    }

    #[test]
    fn iovas_fit_edus_dma_mask() {
        assert!(IOVA_BAR + BAR_MAP_LEN <= 1 << 28);
        assert!(IOVA_RAM + PAGE as u64 <= IOVA_BAR);
    }
}
