//! Safe wrappers around `open(2)` and `ioctl(2)` for the VFIO/IOMMUFD requests, plus errno
//! names. Every error comes from `std::io::Error::last_os_error()` (or the errno std already
//! captured), so callers can compare `raw_os_error()` against `libc::E*`.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::uapi::{self, IoctlRequest, SizedArg};

/// Open a character device read-write with `O_CLOEXEC` (std's default), like QEMU does.
pub fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// Convert an ioctl return value into a `Result`, capturing errno on `-1`.
fn check(ret: libc::c_int) -> io::Result<i32> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// An ioctl called with a NULL argument, for requests that take none (`VFIO_GET_API_VERSION`)
/// or to probe how a driver treats a request it does not know.
pub fn ioctl_noarg(fd: &impl AsRawFd, request: u32) -> io::Result<i32> {
    // SAFETY: the argument is a NULL pointer. This process never maps page zero, so even a
    // request that does dereference its argument makes the kernel's checked user-copy fail
    // with EFAULT instead of touching our memory; `fd` is a live descriptor borrowed for the
    // duration of the call.
    check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            request as libc::Ioctl,
            std::ptr::null_mut::<libc::c_void>(),
        )
    })
}

/// The container ioctls that take their argument by value rather than by pointer.
#[derive(Clone, Copy, Debug)]
pub enum ValueIoctl {
    /// `VFIO_CHECK_EXTENSION(extension)`.
    CheckExtension,
    /// `VFIO_SET_IOMMU(iommu type)`.
    SetIommu,
}

/// A VFIO container ioctl whose argument is an integer passed by value.
pub fn ioctl_value(fd: &impl AsRawFd, request: ValueIoctl, value: u32) -> io::Result<i32> {
    let nr = match request {
        ValueIoctl::CheckExtension => uapi::VFIO_CHECK_EXTENSION,
        ValueIoctl::SetIommu => uapi::VFIO_SET_IOMMU,
    };
    // SAFETY: both requests take an unsigned long by value (container.c passes `arg` straight
    // to the extension/type lookup), so the kernel never dereferences it; `fd` is a live
    // descriptor borrowed for the duration of the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), nr as libc::Ioctl, value as libc::c_ulong) })
}

/// `VFIO_GROUP_SET_CONTAINER`: attach `group` to `container`.
pub fn group_set_container(group: &impl AsRawFd, container: &impl AsRawFd) -> io::Result<i32> {
    let container_fd: libc::c_int = container.as_raw_fd();
    // SAFETY: the request reads one `int` (get_user) through its argument, and `&container_fd`
    // points to a live, aligned `c_int` for the whole call; `group` is a live descriptor.
    check(unsafe {
        libc::ioctl(
            group.as_raw_fd(),
            uapi::VFIO_GROUP_SET_CONTAINER as libc::Ioctl,
            &container_fd as *const libc::c_int,
        )
    })
}

/// `VFIO_GROUP_GET_DEVICE_FD`: open the device called `name` in `group`.
pub fn group_get_device_fd(group: &impl AsRawFd, name: &CStr) -> io::Result<File> {
    // SAFETY: the request only reads a NUL-terminated string (strndup_user) through its
    // argument, and `name` is one that outlives the call; `group` is a live descriptor.
    let ret = check(unsafe {
        libc::ioctl(
            group.as_raw_fd(),
            uapi::VFIO_GROUP_GET_DEVICE_FD as libc::Ioctl,
            name.as_ptr(),
        )
    })?;
    // SAFETY: on success the ioctl returns a freshly installed descriptor that nothing else in
    // this process owns, so taking ownership of it is sound.
    let owned = unsafe { OwnedFd::from_raw_fd(ret) };
    Ok(File::from(owned))
}

/// A typed ioctl whose argument is a pointer to a size-prefixed VFIO/IOMMUFD structure the
/// kernel reads and writes.
///
/// The structure's own `argsz`/`size` field bounds what the kernel writes, so it is refused
/// (EINVAL, without calling the kernel) if it claims more than `size_of::<R::Arg>()`. A
/// smaller value is passed through: that is how the bad-input checks provoke the kernel.
pub fn ioctl_struct<R: IoctlRequest>(fd: &impl AsRawFd, arg: &mut R::Arg) -> io::Result<i32> {
    if arg.argsz() as usize > size_of::<R::Arg>() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let ptr: *mut R::Arg = arg;
    // SAFETY: `ptr` comes from an exclusive reference to a live `R::Arg`, so it is valid and
    // aligned for reads and writes of `size_of::<R::Arg>()` bytes for the whole call. By the
    // `IoctlRequest` contract the kernel accesses at most max(argsz, fixed minimum) bytes,
    // both <= size_of (checked above / by the contract), and by the `SizedArg` contract any
    // bytes it writes form a valid `R::Arg`. `fd` is a live descriptor.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), R::NR as libc::Ioctl, ptr) })
}

/// A heap buffer for INFO ioctls that return a capability chain after the fixed structure.
/// Backed by `u64`s so it is 8-byte aligned like the kernel structures.
pub struct InfoBuf {
    words: Vec<u64>,
}

impl InfoBuf {
    /// A zeroed buffer of at least `len` bytes whose `argsz` (first `u32`) is `len`.
    pub fn new(len: u32) -> Self {
        let words = vec![0u64; (len as usize).div_ceil(8).max(1)];
        let mut buf = InfoBuf { words };
        buf.set_u32(0, len);
        buf
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.words.len() * 8
    }

    /// All bytes of the buffer.
    pub fn bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    /// The native-endian `u32` at byte `offset`, `None` past the end.
    pub fn u32_at(&self, offset: usize) -> Option<u32> {
        let b = self.bytes();
        let s = b.get(offset..offset + 4)?;
        Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
    }

    pub fn set_u32(&mut self, offset: usize, v: u32) {
        let mut b = self.bytes();
        b[offset..offset + 4].copy_from_slice(&v.to_ne_bytes());
        for (w, chunk) in self.words.iter_mut().zip(b.chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(chunk);
            *w = u64::from_ne_bytes(a);
        }
    }

    pub fn argsz(&self) -> u32 {
        self.u32_at(0).unwrap_or(0)
    }
}

/// A typed INFO ioctl on an [`InfoBuf`] larger than the fixed structure: the kernel writes the
/// fixed structure and, if `argsz` is large enough, the capability chain after it, never more
/// than `argsz` bytes.
pub fn ioctl_info_buf<R: IoctlRequest>(fd: &impl AsRawFd, buf: &mut InfoBuf) -> io::Result<i32> {
    if buf.argsz() as usize > buf.capacity() || buf.capacity() < size_of::<R::Arg>() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let ptr = buf.words.as_mut_ptr();
    // SAFETY: `ptr` points to a live, exclusively borrowed, 8-byte aligned allocation of
    // `capacity()` bytes, at least `size_of::<R::Arg>()` (checked above). By the
    // `IoctlRequest` contract the kernel accesses at most max(argsz, fixed minimum) bytes,
    // and argsz <= capacity was checked above. Any bytes are valid `u64`s. `fd` is live.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), R::NR as libc::Ioctl, ptr) })
}

/// `VFIO_DEVICE_PCI_HOT_RESET` on a group-opened device: `struct vfio_pci_hot_reset` with
/// `flags` 0 and `group_fds[]` = `group_fds`, `argsz` covering the whole array. (A cdev-opened
/// device takes an empty array.)
pub fn pci_hot_reset(dev: &impl AsRawFd, group_fds: &[BorrowedFd<'_>]) -> io::Result<i32> {
    let count =
        u32::try_from(group_fds.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let header = uapi::VfioPciHotReset {
        argsz: uapi::size_u32::<uapi::VfioPciHotReset>() + 4 * count,
        flags: 0,
        count,
    };
    // The structure as `__u32`s: the 12-byte header, then the `__s32` fds (4-aligned, at
    // offset 12 as in the C layout), each stored as its bit pattern.
    let mut words: Vec<u32> = vec![header.argsz, header.flags, header.count];
    words.extend(group_fds.iter().map(|fd| fd.as_raw_fd() as u32));
    let ptr = words.as_mut_ptr();
    // SAFETY: `ptr` points to a live, exclusively borrowed, 4-byte aligned allocation of
    // `12 + 4 * count` bytes. The handler reads the 12-byte header, then exactly `count`
    // `__s32`s from `group_fds[]` (it bounds `count` by the number of functions on the bus
    // and reads nothing else) and writes nothing back. The group fds are borrowed, so they
    // stay open for the call; `dev` is a live descriptor.
    check(unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            uapi::VFIO_DEVICE_PCI_HOT_RESET as libc::Ioctl,
            ptr,
        )
    })
}

/// `VFIO_DEVICE_PCI_HOT_RESET` with every header field chosen by the caller, for the
/// bad-input checks: `argsz`, `flags` and `count` as given, followed by `fds` (raw numbers,
/// which may be invalid on purpose). The buffer always holds at least `count` entries (padded
/// with -1), so the kernel never reads past it whatever `count` says; `count` is capped at
/// 64 for that reason.
pub fn pci_hot_reset_raw(
    dev: &impl AsRawFd,
    argsz: u32,
    flags: u32,
    count: u32,
    fds: &[i32],
) -> io::Result<i32> {
    if count > 64 || fds.len() > 64 {
        return Err(io::Error::from_raw_os_error(libc::E2BIG));
    }
    let mut words: Vec<u32> = vec![argsz, flags, count];
    words.extend(fds.iter().map(|fd| *fd as u32));
    while words.len() < 3 + count as usize {
        words.push(u32::MAX);
    }
    let ptr = words.as_mut_ptr();
    // SAFETY: `ptr` points to a live, exclusively borrowed, 4-byte aligned allocation of
    // `12 + 4 * max(count, fds.len())` bytes. The handler reads the 12-byte header, then at
    // most `count` `__s32`s (only when it accepts `count`), never more than the buffer holds,
    // and writes nothing back. Invalid fd numbers are only looked up by the kernel (fget),
    // which fails cleanly; `dev` is a live descriptor.
    check(unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            uapi::VFIO_DEVICE_PCI_HOT_RESET as libc::Ioctl,
            ptr,
        )
    })
}

/// `VFIO_DEVICE_FEATURE` with the header `{argsz, flags}` followed by `data`, `argsz` as given
/// (it may understate the data on purpose, for the bad-input checks). Returns what the ioctl
/// returns (a new fd for a DMABUF export: the caller owns it).
///
/// The buffer always holds `max(argsz, 8 + data.len())` bytes, and for
/// `VFIO_DEVICE_FEATURE_DMA_BUF` additionally every range the `nr_ranges` in `data` claims
/// (zero-padded): the C handler reads `nr_ranges` ranges whatever `argsz` says. `nr_ranges` and
/// `argsz` are capped at 4096 entries / 64 KiB for that reason.
pub fn device_feature(dev: &impl AsRawFd, argsz: u32, flags: u32, data: &[u8]) -> io::Result<i32> {
    let mut len = (8 + data.len()).max(argsz as usize);
    if flags & uapi::VFIO_DEVICE_FEATURE_MASK == uapi::VFIO_DEVICE_FEATURE_DMA_BUF
        && data.len() >= 16
    {
        let nr = u32::from_ne_bytes([data[12], data[13], data[14], data[15]]) as usize;
        if nr > 4096 {
            return Err(io::Error::from_raw_os_error(libc::E2BIG));
        }
        len = len.max(8 + 16 + 16 * nr);
    }
    if len > 65536 {
        return Err(io::Error::from_raw_os_error(libc::E2BIG));
    }
    let mut words = vec![0u64; len.div_ceil(8)];
    let mut bytes = vec![0u8; words.len() * 8];
    bytes[..8].copy_from_slice(&uapi::FeatureBytes::to_bytes(&uapi::VfioDeviceFeature {
        argsz,
        flags,
    }));
    bytes[8..8 + data.len()].copy_from_slice(data);
    for (w, c) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        *w = u64::from_ne_bytes(a);
    }
    let ptr = words.as_mut_ptr();
    // SAFETY: `ptr` points to a live, exclusively borrowed, 8-byte aligned allocation of at
    // least `len` bytes: argsz bytes, the data, and for DMA_BUF every range `nr_ranges` names
    // (checked above), which bounds what any handler reads. Handlers write back at most argsz
    // bytes (the DMA_BUF, revoke and memattr handlers write nothing). `dev` is a live
    // descriptor. An fd returned is a new descriptor owned by the caller.
    check(unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            uapi::VFIO_DEVICE_FEATURE as libc::Ioctl,
            ptr,
        )
    })
}

/// `VFIO_DEVICE_SET_IRQS` with every header field chosen by the caller (`hdr`), followed by `data`
/// (the raw `data[]` bytes: bools, or `__s32` eventfds in native byte order), `argsz` as given
/// (it may understate or overstate the data on purpose, for the bad-input checks).
///
/// The buffer always holds `max(argsz, 20 + data.len())` bytes: the kernel reads the 20-byte
/// header, then `count` elements only when `argsz - 20` covers them
/// (`vfio_set_irqs_validate_and_prepare`), so never past the buffer. `argsz` is capped at
/// 64 KiB.
pub fn set_irqs(dev: &impl AsRawFd, hdr: uapi::VfioIrqSet, data: &[u8]) -> io::Result<i32> {
    let min = uapi::VFIO_IRQ_SET_MINSZ as usize;
    let len = (min + data.len()).max(hdr.argsz as usize);
    if len > 65536 {
        return Err(io::Error::from_raw_os_error(libc::E2BIG));
    }
    let mut bytes = vec![0u8; len.div_ceil(4) * 4];
    let fields = [hdr.argsz, hdr.flags, hdr.index, hdr.start, hdr.count];
    for (i, v) in fields.into_iter().enumerate() {
        bytes[4 * i..4 * i + 4].copy_from_slice(&v.to_ne_bytes());
    }
    bytes[min..min + data.len()].copy_from_slice(data);
    let mut words: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let ptr = words.as_mut_ptr();
    // SAFETY: `ptr` points to a live, exclusively borrowed, 4-byte aligned allocation of at
    // least max(argsz, 20 + data.len()) bytes. The handler reads the 20-byte header, then at
    // most argsz - 20 bytes of data (it refuses a `count` whose data argsz does not cover),
    // and writes nothing back. Fds in the data are only looked up by the kernel (fdget), which
    // fails cleanly for a bad one; `dev` is a live descriptor.
    check(unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            uapi::VFIO_DEVICE_SET_IRQS as libc::Ioctl,
            ptr,
        )
    })
}

/// The symbolic name of an errno value, e.g. `EINVAL`.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EPIPE => "EPIPE",
        libc::ERANGE => "ERANGE",
        libc::EDEADLK => "EDEADLK",
        libc::ENOSYS => "ENOSYS",
        libc::ENODATA => "ENODATA",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::ENOLINK => "ENOLINK",
        libc::EPROTO => "EPROTO",
        libc::EBADFD => "EBADFD",
        libc::ENOTCONN => "ENOTCONN",
        libc::ENOMSG => "ENOMSG",
        libc::EIDRM => "EIDRM",
        libc::ENOKEY => "ENOKEY",
        libc::EKEYREJECTED => "EKEYREJECTED",
        libc::EHWPOISON => "EHWPOISON",
        // Kernel-internal codes that should never reach userspace, but a buggy driver might
        // leak them: include/linux/errno.h.
        512 => "ERESTARTSYS",
        513 => "ERESTARTNOINTR",
        514 => "ERESTARTNOHAND",
        515 => "ENOIOCTLCMD",
        524 => "ENOTSUPP",
        _ => return format!("errno{errno}"),
    };
    name.to_string()
}

/// `EINVAL` for an OS error, the error's text otherwise.
pub fn err_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => errno_name(n),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::EINVAL), "EINVAL");
        assert_eq!(errno_name(libc::ENOTTY), "ENOTTY");
        assert_eq!(errno_name(515), "ENOIOCTLCMD");
        assert_eq!(errno_name(9999), "errno9999");
        assert_eq!(
            err_name(&io::Error::from_raw_os_error(libc::EBUSY)),
            "EBUSY"
        );
    }

    #[test]
    fn info_buf() {
        let mut b = InfoBuf::new(30);
        assert_eq!(b.capacity(), 32);
        assert_eq!(b.argsz(), 30);
        b.set_u32(16, 0xdead_beef);
        assert_eq!(b.u32_at(16), Some(0xdead_beef));
        assert_eq!(b.u32_at(30), None);
        assert_eq!(b.bytes().len(), 32);
    }

    #[test]
    fn oversized_argsz_is_refused_before_the_kernel() {
        // fd -1 would give EBADF if the kernel were called; the wrapper must refuse first.
        struct Neg;
        impl AsRawFd for Neg {
            fn as_raw_fd(&self) -> std::os::fd::RawFd {
                -1
            }
        }
        let mut info = crate::uapi::VfioDeviceInfo {
            argsz: 1000,
            ..Default::default()
        };
        let e = ioctl_struct::<uapi::DeviceGetInfo>(&Neg, &mut info).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        info.argsz = 24;
        let e = ioctl_struct::<uapi::DeviceGetInfo>(&Neg, &mut info).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));

        let mut buf = InfoBuf::new(24);
        buf.set_u32(0, 64);
        let e = ioctl_info_buf::<uapi::DeviceGetInfo>(&Neg, &mut buf).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        // A buffer smaller than the fixed structure is refused too.
        let mut small = InfoBuf::new(16);
        let e = ioctl_info_buf::<uapi::DeviceGetInfo>(&Neg, &mut small).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }
}
