//! A userfaultfd over one anonymous page, for the stalled-copy scenario of hazards.rs: a
//! kernel copy to or from the page blocks until the test resolves the fault.
//!
//! The structures and numbers are those of `include/uapi/linux/userfaultfd.h` (Linux 7.3);
//! the unit tests pin them against values computed from the C header.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::mmap::{map_fd, Map};
use crate::uapi::ioc;

const UFFD_API: u64 = 0xaa;
const UFFDIO: u8 = 0xaa;
/// `_IOC_READ | _IOC_WRITE`.
const IOC_RW: u32 = 3;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_register` (`struct uffdio_range` inlined).
#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

const UFFDIO_API: u32 = ioc(
    IOC_RW,
    UFFDIO,
    0x3f,
    std::mem::size_of::<UffdioApi>() as u32,
);
const UFFDIO_REGISTER: u32 = ioc(
    IOC_RW,
    UFFDIO,
    0x00,
    std::mem::size_of::<UffdioRegister>() as u32,
);
const UFFDIO_COPY: u32 = ioc(
    IOC_RW,
    UFFDIO,
    0x03,
    std::mem::size_of::<UffdioCopy>() as u32,
);
/// `sizeof(struct uffd_msg)`; the event is its first byte, a page fault's address at 16.
const UFFD_MSG_SIZE: usize = 32;

pub const PAGE: u64 = 4096;

/// One missing anonymous page registered with a new userfaultfd.
pub struct StallPage {
    uffd: OwnedFd,
    page: Map,
}

fn last_err(what: &str) -> String {
    format!(
        "{what}: {}",
        crate::sys::err_name(&io::Error::last_os_error())
    )
}

fn uffd_ioctl<T>(fd: &OwnedFd, request: u32, arg: &mut T) -> Result<(), String> {
    // SAFETY: `arg` is the live structure `request` takes, of the size encoded in `request`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg as *mut T) };
    if r < 0 {
        return Err(last_err(&format!("userfaultfd ioctl {request:#x}")));
    }
    Ok(())
}

impl StallPage {
    /// The page's address.
    pub fn addr(&self) -> u64 {
        self.page.addr
    }

    /// A fresh page whose first access, by the user or a kernel copy, waits for
    /// [`StallPage::resolve`].
    pub fn new() -> Result<StallPage, String> {
        // SAFETY: userfaultfd(2) takes only flags; a new fd is returned.
        let raw =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if raw < 0 {
            return Err(last_err("userfaultfd"));
        }
        // SAFETY: `raw` is a new fd nothing else owns.
        let uffd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        let mut api = UffdioApi {
            api: UFFD_API,
            ..Default::default()
        };
        uffd_ioctl(&uffd, UFFDIO_API, &mut api)?;
        let page = map_fd(
            -1,
            None,
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            0,
        )
        .map_err(|e| format!("mmap: {}", crate::sys::err_name(&e)))?;
        let page = StallPage { uffd, page };
        let mut reg = UffdioRegister {
            start: page.addr(),
            len: PAGE,
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        uffd_ioctl(&page.uffd, UFFDIO_REGISTER, &mut reg)?;
        Ok(page)
    }

    /// Waits up to `wait` for the fault on the page; true once something stalls on it.
    pub fn wait_fault(&self, wait: Duration) -> Result<bool, String> {
        let mut pfd = libc::pollfd {
            fd: self.uffd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as libc::c_int) };
        if n < 0 {
            return Err(last_err("poll userfaultfd"));
        }
        if n == 0 {
            return Ok(false);
        }
        let mut msg = [0u8; UFFD_MSG_SIZE];
        // SAFETY: reads at most `msg.len()` bytes into `msg`.
        let r = unsafe { libc::read(self.uffd.as_raw_fd(), msg.as_mut_ptr().cast(), msg.len()) };
        if r != UFFD_MSG_SIZE as isize {
            return Err(last_err("read userfaultfd"));
        }
        let addr = u64::from_ne_bytes(msg[16..24].try_into().unwrap());
        if msg[0] != UFFD_EVENT_PAGEFAULT || addr & !(PAGE - 1) != self.addr() {
            return Err(format!("unexpected event {:#x} at {addr:#x}", msg[0]));
        }
        Ok(true)
    }

    /// Fills the page with `head` followed by zeros and wakes what waits on it.
    pub fn resolve(&self, head: &[u8]) -> Result<(), String> {
        let mut src = vec![0u8; PAGE as usize];
        src[..head.len()].copy_from_slice(head);
        let mut copy = UffdioCopy {
            dst: self.addr(),
            src: src.as_ptr() as u64,
            len: PAGE,
            mode: 0,
            copy: 0,
        };
        uffd_ioctl(&self.uffd, UFFDIO_COPY, &mut copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From `include/uapi/linux/userfaultfd.h`, through `<sys/ioctl.h>` on x86_64.
    #[test]
    fn ioctl_numbers() {
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
    }
}
