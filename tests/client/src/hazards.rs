//! Known failure scenarios of the DMABUF series and of dma-buf (issue 14), on ivshmem in the
//! swap phase, beside the mmap checks: every check is compared between the two drivers.
//!
//! - A DMABUF whose file was closed while an O_PATH open of `/proc/self/fd/N` still pins
//!   its dentry: the buffer outlives its `struct file`, and every revoke walk (MEM off,
//!   reset, close) visits it. Mainline dma-buf leaves `dmabuf->file` pointing at the freed
//!   file, so the walk's `get_file_active()` reads freed memory, and an exporter that zaps
//!   through that file zaps whatever file reuses the slot. The detector maps a memfd
//!   privately right after the close, so its `struct file` likely takes the freed slot, and
//!   checks that a revoke leaves its dirty copy-on-write page alone.
//! - Reads and writes whose user buffer is the same BAR's mapping with memory decode off:
//!   the access or the copy fails with C's errno, no lock is held across the failing copy.
//! - A fork with all of BAR2 mapped at 1 GiB alignment and populated: a revoke in the parent
//!   zaps the child's inherited entries too.
//! - A BAR read, a BAR write and a config write whose user buffer is a userfaultfd page
//!   that stalls the copy, while another thread toggles memory decode and then maps, touches
//!   and unmaps the BAR: the other thread finishes while the copy waits (one version of the
//!   series held `memory_lock` across the copy; with `mmap_lock` in the fault, a deadlock).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::Duration;

use crate::access::{rd, wr, Ck, Layout};
use crate::cfgspace::PCI_COMMAND;
use crate::checks::{open_via_group, Quiet};
use crate::mmap::verdict_str;
use crate::stress::{command, dmabuf_export, set_mem};
use crate::sys::{self, err_name, errno_name};
use crate::uapi::{self, region_offset};
use crate::uffd::StallPage;

const BAR: u32 = 2;
const M2: u64 = 2 << 20;
const PAGE: usize = 4096;
/// Detector rounds: enough that a slot reuse, if the walk can hit it, happens in some round.
const ROUNDS: usize = 16;

/// An O_PATH open of the file behind `fd`, through /proc/self/fd.
fn open_path_of(fd: &OwnedFd) -> io::Result<OwnedFd> {
    let p = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    // SAFETY: a NUL-terminated path; the returned fd is new and ours.
    let r = unsafe { libc::open(p.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `r` is a new fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Exports 2 MiB of BAR2, opens the buffer's file O_PATH and closes the buffer's fd: the
/// buffer lives on without its file. Returns the O_PATH fd, which pins it.
fn dangling_buffer(dev: &File) -> Result<OwnedFd, String> {
    let buf = dmabuf_export(dev, BAR, 0, M2).map_err(|e| format!("export: {}", err_name(&e)))?;
    let path = open_path_of(&buf).map_err(|e| format!("O_PATH open: {}", err_name(&e)))?;
    drop(buf);
    Ok(path)
}

/// A BAR2 dword written and read back through the device fd.
fn bar_works(dev: &File, off: u64, v: u32) -> Result<(), String> {
    wr(dev, BAR, off, &v.to_le_bytes()).map_err(|e| format!("pwrite: {}", err_name(&e)))?;
    match rd(dev, BAR, off, 4) {
        Ok(b) if b == v.to_le_bytes() => Ok(()),
        Ok(b) => Err(format!("read back {b:02x?}, wrote {v:#x}")),
        Err(e) => Err(format!("pread: {}", err_name(&e))),
    }
}

/// One revoke walk over a buffer without a file: `trigger` runs while it is pinned, then
/// the pin goes and BAR2 must still work.
fn walk_dangling(dev: &File, trigger: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    let path = dangling_buffer(dev)?;
    // Past an RCU grace period, so a debug allocator has really freed the file.
    std::thread::sleep(Duration::from_millis(150));
    let r = trigger();
    drop(path);
    r?;
    bar_works(dev, 0x20_0000, 0x5a5a_0001)
}

pub fn sec_hazards(ck: &mut Ck, dev: &File, has_reset: Option<bool>) {
    let cmd0 = match command(dev) {
        Ok(c) => c,
        Err(e) => {
            ck.check("hazards-command", Err(e));
            return;
        }
    };
    let r = walk_dangling(dev, || {
        set_mem(dev, cmd0, false)?;
        set_mem(dev, cmd0, true)
    });
    ck.both("dangling-dmabuf-mem-toggle", verdict_str(&r), r);
    if has_reset == Some(true) {
        let r = walk_dangling(dev, || {
            sys::ioctl_noarg(dev, uapi::VFIO_DEVICE_RESET)
                .map(|_| ())
                .map_err(|e| format!("reset: {}", err_name(&e)))
        });
        ck.both("dangling-dmabuf-reset", verdict_str(&r), r);
    }
    let r = other_file_survives(dev, cmd0);
    ck.both("dangling-dmabuf-other-file-intact", verdict_str(&r), r);
    let got = own_mapping_errnos(dev, cmd0);
    let want = "pread EIO, pwrite EFAULT, config pwrite EFAULT";
    let r = if got == want {
        Ok(())
    } else {
        Err(format!("expected {want} (C) got {got}"))
    };
    ck.both("own-mapping-mem-off-errnos", got, r);
    let r = fork_with_1g_mapping(dev);
    ck.both("fork-1g-mapping-revoke-zaps-child", verdict_str(&r), r);
    for access in [
        StalledAccess::BarRead,
        StalledAccess::BarWrite,
        StalledAccess::ConfigWrite,
    ] {
        let got = stalled_copy(dev, cmd0, access);
        let want = format!("stalled, others finished, {} bytes", access.len());
        let r = if got == want {
            Ok(())
        } else {
            Err(format!("expected {want} got {got}"))
        };
        ck.both(access.check_name(), got, r);
    }
}

/// Fork with all of BAR2 (1 GiB) mapped at a 1 GiB-aligned address and read by the parent, so
/// its page table holds the BAR at the largest size the CPU maps (PUD with `pdpe1gb`): the
/// child inherits the mapping, reads the parent's data, and a revoke zaps the child's entries
/// as well; the parent reads its data again afterwards.
fn fork_with_1g_mapping(dev: &File) -> Result<(), String> {
    const G1: u64 = 1 << 30;
    const SPOT: u64 = G1 - M2 + 0x40;
    let want = 0x5a5a_0005_a5a5_0006u64;
    wr(dev, BAR, SPOT, &want.to_le_bytes()).map_err(|e| format!("pwrite: {}", err_name(&e)))?;
    let (_reserve, at) = crate::faultsafe::Reserve::placed(G1, G1, 0)
        .map_err(|e| format!("reserve: {}", err_name(&e)))?;
    let map = crate::faultsafe::Map::new(dev.as_raw_fd(), Some(at), G1, region_offset(BAR, 0))
        .map_err(|e| format!("mmap 1 GiB: {}", err_name(&e)))?;
    let read = |what: &str| match crate::faultsafe::read64(map.addr + SPOT) {
        Some(v) if v == want => Ok(()),
        Some(v) => Err(format!("{what}: the mapping reads {v:#x}, not {want:#x}")),
        None => Err(format!("{what}: the mapping SIGBUSes")),
    };
    read("before the fork")?;
    crate::mmap::fork_revoke_zaps_child(dev, map.addr + SPOT, false)?;
    read("after the revoke")
}

/// How long a userfaultfd stall, and the other thread's work during it, may take.
const STALL_WAIT: Duration = Duration::from_secs(5);
/// Where in BAR2 the stalled BAR accesses go.
const STALL_OFF: u64 = 0x3000;

/// The access whose copy stalls on a userfaultfd page.
#[derive(Clone, Copy)]
enum StalledAccess {
    BarRead,
    BarWrite,
    ConfigWrite,
}

impl StalledAccess {
    fn check_name(self) -> &'static str {
        match self {
            Self::BarRead => "uffd-stalled-bar-read",
            Self::BarWrite => "uffd-stalled-bar-write",
            Self::ConfigWrite => "uffd-stalled-config-write",
        }
    }

    fn len(self) -> usize {
        match self {
            Self::BarRead | Self::BarWrite => 8,
            Self::ConfigWrite => 2,
        }
    }
}

/// Memory decode off and on three times, then a BAR2 mapping made, read and unmapped.
fn toggle_and_map(dev: &File, cmd0: u32) -> Result<(), String> {
    for _ in 0..3 {
        set_mem(dev, cmd0, false)?;
        set_mem(dev, cmd0, true)?;
    }
    let map = crate::mmap::map_shared(dev, M2, region_offset(BAR, 0))
        .map_err(|e| format!("mmap: {}", err_name(&e)))?;
    match crate::faultsafe::read64(map.addr + STALL_OFF) {
        Some(_) => Ok(()),
        None => Err("the new mapping SIGBUSes".into()),
    }
}

/// Scenario 1 of the series' failure list, for one access: it stalls in its copy to or
/// from a userfaultfd page, [`toggle_and_map`] runs meanwhile in a thread of its own, then
/// the page is filled and the access completes. Returns `stalled, others finished, N bytes`
/// when everything went as on C, or what went otherwise.
fn stalled_copy(dev: &File, cmd0: u32, access: StalledAccess) -> String {
    let page = match StallPage::new() {
        Ok(p) => p,
        Err(e) => return e,
    };
    let fd = dev.as_raw_fd();
    let buf = page.addr();
    let len = access.len();
    let (write, off) = match access {
        StalledAccess::BarRead => (false, region_offset(BAR, STALL_OFF)),
        StalledAccess::BarWrite => (true, region_offset(BAR, STALL_OFF)),
        StalledAccess::ConfigWrite => (
            true,
            region_offset(uapi::VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND as u64),
        ),
    };
    // What the page holds once resolved: a BAR write's value, or COMMAND as it was.
    let head: Vec<u8> = match access {
        StalledAccess::BarRead => Vec::new(),
        StalledAccess::BarWrite => 0x5a5a_0003_a5a5_0004u64.to_le_bytes().to_vec(),
        StalledAccess::ConfigWrite => (cmd0 as u16).to_le_bytes().to_vec(),
    };
    std::thread::scope(|s| {
        let stalled_access = s.spawn(move || {
            // SAFETY: `len` bytes of the registered page, which lives until the scope ends;
            // the kernel's copy to or from it waits for the page to be resolved.
            let n = unsafe {
                if write {
                    libc::pwrite(fd, buf as *const libc::c_void, len, off as libc::off_t)
                } else {
                    libc::pread(fd, buf as *mut libc::c_void, len, off as libc::off_t)
                }
            };
            if n < 0 {
                errno_name(io::Error::last_os_error().raw_os_error().unwrap_or(0))
            } else {
                format!("{n} bytes")
            }
        });
        // No early return before the page is resolved: the scope joins the access.
        let stalled = match page.wait_fault(STALL_WAIT) {
            Ok(true) => "stalled".to_string(),
            Ok(false) => "no stall".to_string(),
            Err(e) => e,
        };
        let (tx, rx) = mpsc::channel();
        let others = s.spawn(move || {
            let _ = tx.send(toggle_and_map(dev, cmd0));
        });
        let others_done = match rx.recv_timeout(STALL_WAIT) {
            Ok(Ok(())) => "others finished".to_string(),
            Ok(Err(e)) => format!("others failed ({e})"),
            Err(_) => "others blocked behind the stalled copy".to_string(),
        };
        // The access completes once its page is there, and lets a blocked thread go on.
        let resolved = page.resolve(&head);
        let result = stalled_access.join().unwrap_or_else(|_| "panicked".into());
        let _ = others.join();
        if let Err(e) = resolved {
            return e;
        }
        // The data moved: the read's copy landed, the write reached the BAR.
        let moved = match access {
            StalledAccess::BarRead => rd(dev, BAR, STALL_OFF, 8).map(|b| {
                // SAFETY: the page is resolved and mapped; 8 bytes of it.
                let copied = unsafe { std::slice::from_raw_parts(buf as *const u8, 8) };
                b == copied
            }),
            StalledAccess::BarWrite => rd(dev, BAR, STALL_OFF, 8).map(|b| b == head),
            StalledAccess::ConfigWrite => Ok(true),
        };
        match moved {
            Ok(true) => format!("{stalled}, {others_done}, {result}"),
            Ok(false) => format!("{stalled}, {others_done}, {result}, data not moved"),
            Err(e) => format!(
                "{stalled}, {others_done}, {result}, read back: {}",
                err_name(&e)
            ),
        }
    })
}

/// The slot-reuse detector: a memfd opened right after the buffer's file was freed, mapped
/// privately and dirtied, must keep its private page across a revoke walk.
fn other_file_survives(dev: &File, cmd0: u32) -> Result<(), String> {
    let mut lost = 0;
    for round in 0..ROUNDS {
        let path = dangling_buffer(dev)?;
        let name = CString::new(format!("hazard-{round}")).unwrap();
        // SAFETY: a NUL-terminated name; the returned fd is new and ours.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(format!(
                "memfd_create: {}",
                err_name(&io::Error::last_os_error())
            ));
        }
        // SAFETY: `raw` is a new fd nothing else owns.
        let memfd = unsafe { File::from_raw_fd(raw) };
        memfd
            .set_len(PAGE as u64)
            .and_then(|()| std::os::unix::fs::FileExt::write_all_at(&memfd, &[b'A'; PAGE], 0))
            .map_err(|e| format!("memfd: {}", err_name(&e)))?;
        // SAFETY: a new private mapping of one page of our memfd; unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                memfd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", err_name(&io::Error::last_os_error())));
        }
        // SAFETY: `p` is a live, writable mapping of PAGE bytes.
        let page = unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), PAGE) };
        page.fill(b'B');
        let walk = set_mem(dev, cmd0, false).and_then(|()| set_mem(dev, cmd0, true));
        if page.iter().any(|&b| b != b'B') {
            lost += 1;
        }
        // SAFETY: the mapping made above, no reference to it is left.
        unsafe { libc::munmap(p, PAGE) };
        drop(path);
        walk?;
    }
    match lost {
        0 => Ok(()),
        n => Err(format!(
            "{n} of {ROUNDS} rounds lost a private page of an unrelated memfd to a revoke"
        )),
    }
}

/// With memory decode off: a pread into the BAR's own mapping fails in the access (EIO), a
/// pwrite from it in the copy (EFAULT), a config write from it in the copy (EFAULT). Runs
/// in a child, which may die of the SIGBUS nothing should raise.
fn own_mapping_errnos(dev: &File, cmd0: u32) -> String {
    let map = match crate::mmap::map_shared(dev, M2, region_offset(BAR, 0)) {
        Ok(m) => m,
        Err(e) => return format!("mmap: {}", err_name(&e)),
    };
    if let Err(e) = set_mem(dev, cmd0, false) {
        return format!("MEM off: {e}");
    }
    let fd = dev.as_raw_fd();
    let a = map.addr;
    let out = crate::mmap::in_child(30, move || {
        // One pread or pwrite of `len` bytes at device fd offset `off`, the buffer at `buf` in
        // our own mapping; the result or the errno's name.
        let io = |write: bool, buf: u64, len: usize, off: u64| {
            let off = off as libc::off_t;
            // SAFETY: `len` bytes of our own live mapping; a fault on them is an error of the
            // syscall, not a signal, inside the kernel's copy.
            let n = unsafe {
                if write {
                    libc::pwrite(fd, buf as *const libc::c_void, len, off)
                } else {
                    libc::pread(fd, buf as *mut libc::c_void, len, off)
                }
            };
            if n < 0 {
                errno_name(io::Error::last_os_error().raw_os_error().unwrap_or(0))
            } else {
                format!("{n}")
            }
        };
        let r1 = io(false, a + 0x1000, 8, region_offset(BAR, 0x3000));
        let r2 = io(true, a + 0x1000, 8, region_offset(BAR, 0x3000));
        let config = region_offset(uapi::VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND as u64);
        let r3 = io(true, a + 0x2000, 2, config);
        format!("pread {r1}, pwrite {r2}, config pwrite {r3}").into_bytes()
    });
    let on = set_mem(dev, cmd0, true);
    drop(map);
    match (out, on) {
        (Ok(b), Ok(())) => String::from_utf8_lossy(&b).into_owned(),
        (Err(e), _) => format!("child: {e}"),
        (_, Err(e)) => format!("MEM on: {e}"),
    }
}

/// The close of the device fd walks a buffer without a file; the device opens and works
/// again once the pin is gone.
pub fn sec_hazards_close(ck: &mut Ck, lay: &Layout) {
    let r = (|| {
        let mut quiet = Quiet::default();
        let gd = open_via_group(&lay.bdf, &mut quiet)
            .map_err(|_| quiet.failure.take().unwrap_or_default())?;
        let path = dangling_buffer(&gd.device)?;
        std::thread::sleep(Duration::from_millis(150));
        drop(gd);
        drop(path);
        let gd = open_via_group(&lay.bdf, &mut quiet)
            .map_err(|_| format!("reopen: {}", quiet.failure.take().unwrap_or_default()))?;
        bar_works(&gd.device, 0x20_0000, 0x5a5a_0002)
    })();
    ck.both("dangling-dmabuf-close-reopen", verdict_str(&r), r);
}
