//! `vfio-test teardown unbind|remove|rmmod BDF` and `vfio-test teardown unplug BDF QEMU_ID`: the
//! driver goes away from a function that a process still uses, with live state: the device fd
//! open with a BAR mapping, an exported DMABUF, MSI or MSI-X vectors, an ioeventfd and the
//! REQ eventfd. The function is an edu (MSI; its registers have no side effects worth
//! fearing, so the holder writes BAR0 and fires the ioeventfd) or an igb (MSI-X; its
//! registers drive DMA and the link, so the holder only reads BAR0 and never fires the
//! ioeventfd).
//!
//! A forked holder sets the state up; the client then unbinds the function from its driver
//! (`unbind`, through sysfs) or removes it from the bus (`remove`, as a hot-unplug does from
//! the PCI core down), unloads its module (`rmmod`, see [`rmmod`]), or has QEMU unplug it
//! (`unplug`, see [`unplug`]). Checked, with C's
//! behaviour as the expectation:
//!
//! - `setup`: the holder's state is in place, and (edu) the ioeventfd writes its data to BAR0;
//! - `req-signalled`: the driver asks for the device back through REQ;
//! - `removal-waits`: the unbind or removal waits while the device is in use;
//! - `mapping-live`: the holder's BAR mapping still works while the removal waits;
//! - `unbind`: after the holder closed its fds, its mapping still holds the device: the
//!   unbind waits until the munmap, then returns; the holder exits 0;
//! - `remove`: the holder is killed with everything live; the removal returns, and a rescan
//!   brings the function back;
//! - `rmmod`: `refused-open`, `refused-mapping`: unloading the driver's module is refused
//!   (EWOULDBLOCK) while the device is open, then while only its BAR mapping and the DMABUF
//!   live; `dmabuf-pins-exporter`: after the munmap (the device closes, its DMABUF is revoked)
//!   vfio-pci unloads but vfio_pci_core, whose ops the DMABUF uses, is refused, as
//!   vfio-pci-rs is; `released`: closing the DMABUF lets it unload; `reload`: it loads again;
//! - `rebind`: the function binds to the driver again and its BAR0 works (edu: a write reads
//!   back; igb: a read succeeds).
//!
//! Each check is a `PASS|FAIL teardown <driver> <mode> <check>` line; the run ends with
//! `N passed, N failed` (exit 1 if any failed).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::access::{rd, wr};
use crate::cfgspace::PCI_COMMAND_MEMORY;
use crate::faultsafe;
use crate::p2p::{command, driver_name, open_type1, EDU_DMA_SRC};
use crate::report::{Phase, Reporter, Stop};
use crate::stress::dmabuf_export;
use crate::sys::{self, err_name};
use crate::sysfs;
use crate::uapi::{self, region_offset};

const CHECKS_UNBIND: &[&str] = &[
    "setup",
    "req-signalled",
    "removal-waits",
    "mapping-live",
    "closed-mapping-holds",
    "munmap-releases",
    "holder-exit",
    "rebind",
];
const CHECKS_REMOVE: &[&str] = &[
    "setup",
    "req-signalled",
    "removal-waits",
    "mapping-live",
    "kill-releases",
    "rescan",
    "rebind",
];
const CHECKS_RMMOD: &[&str] = &[
    "setup",
    "refused-open",
    "refused-mapping",
    "dmabuf-pins-exporter",
    "released",
    "holder-exit",
    "reload",
    "rebind",
];
const CHECKS_UNPLUG: &[&str] = &[
    "setup",
    "qmp-device-del",
    "req-signalled",
    "removal-waits",
    "mapping-live",
    "kill-releases",
    "replug",
    "rebind",
];

/// How the function is taken away.
#[derive(PartialEq, Eq)]
enum Mode {
    /// Through its driver's sysfs `unbind`.
    Unbind,
    /// Through its sysfs `remove`, as the PCI core removes a function.
    Remove,
    /// By unloading the driver's module, which the live state must keep loaded.
    Rmmod,
    /// By QEMU: `device_del` of the device at QEMU id `slot` (a PCIe hot-unplug through the
    /// guest's pciehp), then `device_add` of the same device.
    Unplug(String),
}

/// The function under test, by its IDs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// QEMU edu (1234:11e8): MSI, one vector.
    Edu,
    /// QEMU igb (8086:10c9): MSI-X, [`IGB_VECTORS`] vectors.
    Igb,
}

/// MSI-X vectors the holder enables on igb (it has 25).
const IGB_VECTORS: usize = 4;

fn kind_of(bdf: &str) -> Result<Kind, String> {
    let id = |f: &str| {
        let path = sysfs::device_dir(bdf).join(f);
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("{}: {}", path.display(), err_name(&e)))
    };
    match (id("vendor")?.as_str(), id("device")?.as_str()) {
        ("0x1234", "0x11e8") => Ok(Kind::Edu),
        ("0x8086", "0x10c9") => Ok(Kind::Igb),
        (v, d) => Err(format!("{bdf} is {v}:{d}, neither edu nor igb")),
    }
}

const BAR0: u32 = 0;
const MAP_LEN: usize = 4096;
/// edu's DMA source address: a plain 64-bit register (DMA starts only from the command).
const WORD: u64 = EDU_DMA_SRC;
const WORD_VALUE: u64 = 0x1234_5678_9abc_def0;
/// edu's liveness register: reads back the inverse of what was written.
const IOEVENTFD_AT: u64 = 0x04;
const IOEVENTFD_DATA: u64 = 0x1eef_da7a;

fn new_eventfd() -> Result<OwnedFd, String> {
    crate::mmap::new_eventfd().map_err(|e| format!("eventfd: {}", err_name(&e)))
}

/// Waits up to `limit` for `fd` to be readable.
fn readable(fd: RawFd, limit: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&mut p, 1, ms) == 1 }
}

fn signal(fd: &OwnedFd) -> Result<(), String> {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to an eventfd we own.
    let n = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
    if n == 8 {
        Ok(())
    } else {
        Err(format!(
            "eventfd write: {}",
            err_name(&io::Error::last_os_error())
        ))
    }
}

fn set_irq_eventfds(dev: &File, index: u32, fds: &[RawFd]) -> Result<(), String> {
    let data: Vec<u8> = fds.iter().flat_map(|f| f.to_ne_bytes()).collect();
    let hdr = uapi::VfioIrqSet {
        argsz: uapi::VFIO_IRQ_SET_MINSZ + data.len() as u32,
        flags: uapi::VFIO_IRQ_SET_DATA_EVENTFD | uapi::VFIO_IRQ_SET_ACTION_TRIGGER,
        index,
        start: 0,
        count: fds.len() as u32,
    };
    sys::set_irqs(dev, hdr, &data)
        .map(|_| ())
        .map_err(|e| format!("SET_IRQS index {index}: {}", err_name(&e)))
}

/// Waits up to 2 s for edu's liveness register to show the ioeventfd's write.
fn ioeventfd_wrote(dev: &File) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let got = rd(dev, BAR0, IOEVENTFD_AT, 4).map_err(|e| format!("pread: {}", err_name(&e)))?;
        if got == (!IOEVENTFD_DATA as u32).to_le_bytes() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the ioeventfd wrote nothing: BAR0 holds {got:02x?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The holder's live state; dropping it closes every fd, but not the mapping.
struct Live {
    _container: File,
    _group: File,
    _dev: File,
    dmabuf: Option<OwnedFd>,
    _vectors: Vec<OwnedFd>,
    _ioeventfd: OwnedFd,
}

/// Opens `bdf`, maps a page of BAR0 and sets the state up; the mapping's address is returned
/// beside it.
fn set_up(bdf: &str, kind: Kind, req: RawFd) -> Result<(Live, u64), String> {
    let (container, group, dev) = open_type1(bdf)?;
    command(&dev, PCI_COMMAND_MEMORY, true)?;
    // SAFETY: a new shared mapping of the device fd; the holder keeps it until it unmaps it.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MAP_LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            dev.as_raw_fd(),
            region_offset(BAR0, 0) as libc::off_t,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(format!(
            "mmap BAR0: {}",
            err_name(&io::Error::last_os_error())
        ));
    }
    let addr = map as u64;
    let touched = match kind {
        Kind::Edu => faultsafe::write64(addr + WORD, WORD_VALUE),
        Kind::Igb => faultsafe::read64(addr).is_some(),
    };
    if !touched {
        return Err("SIGBUS on the fresh mapping".into());
    }
    let dmabuf = dmabuf_export(&dev, BAR0, 0, MAP_LEN as u64)
        .map_err(|e| format!("VFIO_DEVICE_FEATURE_DMA_BUF: {}", err_name(&e)))?;
    let (index, n) = match kind {
        Kind::Edu => (uapi::VFIO_PCI_MSI_IRQ_INDEX, 1),
        Kind::Igb => (uapi::VFIO_PCI_MSIX_IRQ_INDEX, IGB_VECTORS),
    };
    let vectors = (0..n)
        .map(|_| new_eventfd())
        .collect::<Result<Vec<_>, _>>()?;
    let raw: Vec<RawFd> = vectors.iter().map(|v| v.as_raw_fd()).collect();
    set_irq_eventfds(&dev, index, &raw)?;
    set_irq_eventfds(&dev, uapi::VFIO_PCI_REQ_IRQ_INDEX, &[req])?;
    let ioeventfd = new_eventfd()?;
    let mut arg = uapi::VfioDeviceIoeventfd {
        argsz: uapi::size_u32::<uapi::VfioDeviceIoeventfd>(),
        flags: uapi::VFIO_DEVICE_IOEVENTFD_32,
        offset: region_offset(BAR0, IOEVENTFD_AT),
        data: IOEVENTFD_DATA,
        fd: ioeventfd.as_raw_fd(),
        reserved: 0,
    };
    sys::ioctl_struct::<uapi::DeviceIoeventfd>(&dev, &mut arg)
        .map_err(|e| format!("VFIO_DEVICE_IOEVENTFD: {}", err_name(&e)))?;
    if kind == Kind::Edu {
        signal(&ioeventfd)?;
        ioeventfd_wrote(&dev)?;
    }
    let live = Live {
        _container: container,
        _group: group,
        _dev: dev,
        dmabuf: Some(dmabuf),
        _vectors: vectors,
        _ioeventfd: ioeventfd,
    };
    Ok((live, addr))
}

/// The holder's end of the conversation: a line per step, read by the client.
struct Holder {
    pid: libc::pid_t,
    to: File,
    from: File,
}

fn pipe() -> Result<(File, File), String> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", err_name(&io::Error::last_os_error())));
    }
    // SAFETY: two new fds nothing else owns.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

fn read_line(f: &mut File) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while let Ok(1) = f.read(&mut b) {
        if b[0] == b'\n' {
            break;
        }
        out.push(b[0]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The holder process: sets up, reports, then does what each line from the client says.
fn holder_main(bdf: &str, kind: Kind, req: RawFd, mut cmds: File, mut out: File) -> ! {
    let mut say = |s: &str| {
        let _ = out.write_all(format!("{s}\n").as_bytes());
    };
    let (live, addr) = match set_up(bdf, kind, req) {
        Ok(x) => x,
        Err(e) => {
            say(&format!("error {e}"));
            // SAFETY: leave the child without running the parent's exit path.
            unsafe { libc::_exit(1) }
        }
    };
    say("ready");
    let mut live = Some(live);
    let mut dmabuf: Option<OwnedFd> = None;
    loop {
        match read_line(&mut cmds).as_str() {
            "touch" => match (kind, faultsafe::read64(addr + WORD)) {
                (Kind::Edu, Some(v)) if v != WORD_VALUE => say(&format!("read {v:#x}")),
                (_, Some(_)) => say("ok"),
                (_, None) => say("SIGBUS"),
            },
            "close" => {
                drop(live.take());
                drop(dmabuf.take());
                say("ok");
            }
            // Everything but the exported DMABUF (and the mapping).
            "close-device" => {
                if let Some(mut l) = live.take() {
                    dmabuf = l.dmabuf.take();
                }
                say("ok");
            }
            "close-dmabuf" => {
                drop(dmabuf.take());
                say("ok");
            }
            "munmap" => {
                // SAFETY: the mapping made in set_up(); nothing refers to it any more.
                unsafe { libc::munmap(addr as *mut libc::c_void, MAP_LEN) };
                say("ok");
            }
            // SAFETY: leave the child without running the parent's exit path.
            _ => unsafe { libc::_exit(0) },
        }
    }
}

impl Holder {
    fn start(bdf: &str, kind: Kind, req: RawFd) -> Result<(Self, String), String> {
        let (cmd_r, cmd_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        // SAFETY: the client is single-threaded here; the child runs holder_main and leaves
        // with _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", err_name(&io::Error::last_os_error())));
        }
        if pid == 0 {
            drop(cmd_w);
            drop(out_r);
            holder_main(bdf, kind, req, cmd_r, out_w);
        }
        let mut h = Holder {
            pid,
            to: cmd_w,
            from: out_r,
        };
        let first = read_line(&mut h.from);
        Ok((h, first))
    }

    fn ask(&mut self, cmd: &str) -> String {
        let _ = self.to.write_all(format!("{cmd}\n").as_bytes());
        read_line(&mut self.from)
    }

    /// Waits for the holder's exit: "exit N" or "signal N".
    fn wait(&mut self) -> String {
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
        self.pid = 0;
        if libc::WIFEXITED(status) {
            format!("exit {}", libc::WEXITSTATUS(status))
        } else {
            format!("signal {}", libc::WTERMSIG(status))
        }
    }

    /// Kills the holder and reaps it: Ok if SIGKILL is what ended it.
    fn kill(&mut self) -> Result<(), String> {
        // SAFETY: kills our own child, not reaped yet (`wait` has not run: `pid` is set).
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let st = self.wait();
        if st == format!("signal {}", libc::SIGKILL) {
            Ok(())
        } else {
            Err(format!("holder: {st}"))
        }
    }
}

impl Drop for Holder {
    /// A holder a failed check left behind is killed, so the removal can finish.
    fn drop(&mut self) {
        if self.pid > 0 {
            let _ = self.kill();
        }
    }
}

/// Writes `value` to a sysfs file in a thread; the receiver gets the result when it returns.
fn sysfs_write_async(path: String, value: String) -> mpsc::Receiver<Result<(), String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = std::fs::write(&path, value).map_err(|e| format!("{path}: {}", err_name(&e)));
        let _ = tx.send(r);
    });
    rx
}

fn pending(rx: &mpsc::Receiver<Result<(), String>>, wait: Duration) -> Result<(), String> {
    match rx.recv_timeout(wait) {
        Err(mpsc::RecvTimeoutError::Timeout) => Ok(()),
        Ok(r) => Err(format!("returned ({r:?}) while the device is in use")),
        Err(e) => Err(format!("{e}")),
    }
}

fn finished(rx: &mpsc::Receiver<Result<(), String>>, limit: Duration) -> Result<(), String> {
    match rx.recv_timeout(limit) {
        Ok(r) => r,
        Err(_) => Err(format!("still waiting after {limit:?}")),
    }
}

fn expect_ok(what: &str, got: String) -> Result<(), String> {
    if got == "ok" {
        Ok(())
    } else {
        Err(format!("{what}: {got}"))
    }
}

/// Sends `request` (`device_del ID` or `device_add ID`) to QEMU's monitor through the host
/// (scripts/vm.sh watches `$VFIO_TEST_QMP_DIR/qmp-request`); returns QEMU's answer.
fn qmp(request: &str) -> Result<String, String> {
    let dir = std::env::var("VFIO_TEST_QMP_DIR")
        .map_err(|_| "VFIO_TEST_QMP_DIR is not set (not in scripts/vm.sh's VM?)".to_string())?;
    let dir = std::path::Path::new(&dir);
    let reply = dir.join("qmp-reply");
    let _ = std::fs::remove_file(&reply);
    std::fs::write(dir.join("qmp-request"), request)
        .map_err(|e| format!("qmp-request: {}", err_name(&e)))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = std::fs::read_to_string(&reply) {
            let _ = std::fs::remove_file(&reply);
            return Ok(s);
        }
        if Instant::now() > deadline {
            return Err(format!("no answer to {request:?} from the host in 20 s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `qmp(request)`, succeeding when the HMP command printed nothing (as HMP does on success).
fn qmp_ok(request: &str) -> Result<(), String> {
    let reply = qmp(request)?;
    if reply.contains(r#"{"return": ""}"#) {
        Ok(())
    } else {
        Err(format!("{request}: {}", reply.trim().replace('\n', " | ")))
    }
}

/// Waits up to `limit` for `path` to exist (`present`) or not.
fn wait_path(path: &std::path::Path, present: bool, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while path.exists() != present {
        if Instant::now() > deadline {
            return Err(format!(
                "{} {} after {limit:?}",
                path.display(),
                if present { "absent" } else { "still there" }
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Binds `bdf` to `driver` again and checks that BAR0 works.
fn rebind(bdf: &str, driver: &str, kind: Kind) -> Result<(), String> {
    sysfs::bind(bdf, driver).map_err(|e| format!("bind: {e}"))?;
    let (_container, _group, dev) = open_type1(bdf)?;
    command(&dev, PCI_COMMAND_MEMORY, true)?;
    if kind == Kind::Igb {
        return rd(&dev, BAR0, 0, 4)
            .map(|_| ())
            .map_err(|e| format!("pread: {}", err_name(&e)));
    }
    let v = 0x7ea2_d0e5u32;
    wr(&dev, BAR0, IOEVENTFD_AT, &v.to_le_bytes())
        .map_err(|e| format!("pwrite: {}", err_name(&e)))?;
    match rd(&dev, BAR0, IOEVENTFD_AT, 4) {
        Ok(b) if b == (!v).to_le_bytes() => Ok(()),
        other => Err(format!("read back {other:?}")),
    }
}

fn checks(p: &mut Phase, bdf: &str, driver: &str, mode: &Mode) -> Result<(), Stop> {
    let (kind, req, mut holder) = p.step(
        "setup",
        (|| {
            let kind = kind_of(bdf)?;
            let req = new_eventfd()?;
            let (holder, first) = Holder::start(bdf, kind, req.as_raw_fd())?;
            if first != "ready" {
                return Err(format!("holder: {first}"));
            }
            Ok((kind, req, holder))
        })(),
    )?;
    let sysfs_dir = sysfs::device_dir(bdf);
    if let Mode::Unplug(slot) = mode {
        return unplug(p, bdf, driver, kind, slot, &req, holder);
    }
    if *mode == Mode::Rmmod {
        return rmmod(p, bdf, driver, kind, holder);
    }
    let remove = *mode == Mode::Remove;
    let rx = if remove {
        sysfs_write_async(sysfs_dir.join("remove").display().to_string(), "1".into())
    } else {
        sysfs_write_async(
            sysfs_dir.join("driver/unbind").display().to_string(),
            bdf.into(),
        )
    };
    p.result(
        "req-signalled",
        if readable(req.as_raw_fd(), Duration::from_secs(5)) {
            Ok(())
        } else {
            Err("no REQ within 5 s".into())
        },
    );
    p.result("removal-waits", pending(&rx, Duration::from_millis(500)));
    p.result("mapping-live", expect_ok("touch", holder.ask("touch")));
    if remove {
        let killed = holder.kill();
        p.result(
            "kill-releases",
            finished(&rx, Duration::from_secs(10)).and(killed),
        );
        p.result(
            "rescan",
            (|| {
                std::fs::write("/sys/bus/pci/rescan", "1")
                    .map_err(|e| format!("rescan: {}", err_name(&e)))?;
                let deadline = Instant::now() + Duration::from_secs(10);
                while !sysfs_dir.exists() {
                    if Instant::now() > deadline {
                        return Err("the function did not come back".into());
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(())
            })(),
        );
    } else {
        p.result(
            "closed-mapping-holds",
            expect_ok("close", holder.ask("close"))
                .and_then(|()| pending(&rx, Duration::from_millis(1000)))
                .and_then(|()| expect_ok("touch after close", holder.ask("touch"))),
        );
        p.result(
            "munmap-releases",
            expect_ok("munmap", holder.ask("munmap"))
                .and_then(|()| finished(&rx, Duration::from_secs(10))),
        );
        let _ = holder.to.write_all(b"exit\n");
        let st = holder.wait();
        p.result("holder-exit", if st == "exit 0" { Ok(()) } else { Err(st) });
    }
    p.result("rebind", rebind(bdf, driver, kind));
    Ok(())
}

/// `delete_module(2)` of `module`, as `rmmod` does it (O_NONBLOCK: refused, not waited for,
/// while the module is in use).
fn delete_module(module: &str) -> io::Result<()> {
    let name = std::ffi::CString::new(module).expect("a module name has no NUL");
    // SAFETY: a NUL-terminated name and flags; the kernel copies the name.
    let r = unsafe { libc::syscall(libc::SYS_delete_module, name.as_ptr(), libc::O_NONBLOCK) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Ok if unloading `module` is refused as in use (`EWOULDBLOCK`).
fn rmmod_refused(module: &str) -> Result<(), String> {
    match delete_module(module) {
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(()),
        Err(e) => Err(format!("rmmod {module}: {}, not EWOULDBLOCK", err_name(&e))),
        Ok(()) => Err(format!("rmmod {module} succeeded while in use")),
    }
}

fn rmmod_ok(module: &str) -> Result<(), String> {
    delete_module(module).map_err(|e| format!("rmmod {module}: {}", err_name(&e)))
}

/// The module whose `dma_buf_ops` an exported DMABUF of `driver` uses, which the DMABUF holds:
/// vfio-pci's DMABUFs are vfio_pci_core's (vfio_pci_dmabuf.c is part of vfio-pci-core.ko),
/// vfio-pci-rs is one module.
fn dmabuf_exporter(driver: &str) -> String {
    match driver {
        "vfio-pci" => "vfio_pci_core".into(),
        _ => sysfs::module_for_driver(driver),
    }
}

/// The module goes while a process has the function: the open device (through the VFIO core's
/// module reference) and the device's BAR mapping (which holds the device open) keep the
/// driver's module; an exported DMABUF, revoked once the device is closed, keeps only the
/// module of its ops; with everything closed the module unloads, and loads and binds again.
fn rmmod(
    p: &mut Phase,
    bdf: &str,
    driver: &str,
    kind: Kind,
    mut holder: Holder,
) -> Result<(), Stop> {
    let module = sysfs::module_for_driver(driver);
    let exporter = dmabuf_exporter(driver);
    p.result("refused-open", rmmod_refused(&module));
    p.result(
        "refused-mapping",
        expect_ok("close-device", holder.ask("close-device"))
            .and_then(|()| rmmod_refused(&module))
            .and_then(|()| expect_ok("touch after close", holder.ask("touch"))),
    );
    // vfio-pci unloads here: its function is closed, and the DMABUF is not its own.
    p.result(
        "dmabuf-pins-exporter",
        expect_ok("munmap", holder.ask("munmap")).and_then(|()| {
            if exporter != module {
                rmmod_ok(&module)?;
            }
            rmmod_refused(&exporter)
        }),
    );
    p.result(
        "released",
        expect_ok("close-dmabuf", holder.ask("close-dmabuf")).and_then(|()| rmmod_ok(&exporter)),
    );
    let _ = holder.to.write_all(b"exit\n");
    let st = holder.wait();
    p.result("holder-exit", if st == "exit 0" { Ok(()) } else { Err(st) });
    p.step("reload", sysfs::ensure_driver(driver))?;
    p.result("rebind", rebind(bdf, driver, kind));
    Ok(())
}

/// The hot-unplug: QEMU's `device_del` presses the slot's attention button, the guest's
/// pciehp removes the function after its 5 s delay (the removal waits for the holder, as
/// `remove` does); killing the holder lets it finish, QEMU then drops the device, and
/// `device_add` plugs the same device in again, which pciehp enumerates.
fn unplug(
    p: &mut Phase,
    bdf: &str,
    driver: &str,
    kind: Kind,
    slot: &str,
    req: &OwnedFd,
    mut holder: Holder,
) -> Result<(), Stop> {
    let sysfs_dir = sysfs::device_dir(bdf);
    p.step("qmp-device-del", qmp_ok(&format!("device_del {slot}")))?;
    p.result(
        "req-signalled",
        if readable(req.as_raw_fd(), Duration::from_secs(20)) {
            Ok(())
        } else {
            Err("no REQ within 20 s of device_del".into())
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    p.result(
        "removal-waits",
        if sysfs_dir.exists() {
            Ok(())
        } else {
            Err("the function is gone while the device is in use".into())
        },
    );
    p.result("mapping-live", expect_ok("touch", holder.ask("touch")));
    let killed = holder.kill();
    p.result(
        "kill-releases",
        wait_path(&sysfs_dir, false, Duration::from_secs(20)).and(killed),
    );
    p.result(
        "replug",
        (|| {
            // QEMU drops the device once the guest powered the slot off: until then the id
            // is taken.
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match qmp_ok(&format!("device_add {slot}")) {
                    Ok(()) => break,
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(500)),
                }
            }
            wait_path(&sysfs_dir, true, Duration::from_secs(20))
        })(),
    );
    // A function that has just been enumerated may still be settling (udev, the driver core's
    // own probe): one run in a full boot saw VFIO_GROUP_GET_DEVICE_FD fail with ENODEV right
    // after a successful bind to vfio-pci. Tries again for up to 2 s, saying so, and reports
    // the kernel log's lines about the function if it never works.
    let mut r = rebind(bdf, driver, kind);
    let mut tries = 1;
    while r.is_err() && tries < 10 {
        std::thread::sleep(Duration::from_millis(200));
        r = rebind(bdf, driver, kind);
        tries += 1;
    }
    if tries > 1 {
        p.note(&format!("rebind after replug took {tries} attempts"));
    }
    p.result(
        "rebind",
        r.map_err(|e| {
            let log = std::process::Command::new("dmesg")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let about: Vec<&str> = log.lines().filter(|l| l.contains(bdf)).collect();
            let tail = about[about.len().saturating_sub(8)..].join(" | ");
            format!("{e} (after {tries} attempts; dmesg: {tail})")
        }),
    );
    Ok(())
}

/// Runs the teardown of `mode` (`unbind`, `remove` or `unplug` with the function's QEMU
/// device id `slot`) on edu or igb `bdf`, bound to a VFIO driver; leaves it bound to that driver
/// again.
pub fn run(mode: &str, bdf: &str, slot: Option<&str>) -> ExitCode {
    let mut rep = Reporter::stdout();
    let driver = driver_name(bdf);
    let mode = match (mode, slot) {
        ("remove", _) => Mode::Remove,
        ("rmmod", _) => Mode::Rmmod,
        ("unplug", Some(slot)) => Mode::Unplug(slot.to_string()),
        _ => Mode::Unbind,
    };
    let (names, name) = match &mode {
        Mode::Unbind => (CHECKS_UNBIND, "unbind"),
        Mode::Remove => (CHECKS_REMOVE, "remove"),
        Mode::Rmmod => (CHECKS_RMMOD, "rmmod"),
        Mode::Unplug(_) => (CHECKS_UNPLUG, "unplug"),
    };
    let mut p = Phase::new(&mut rep, format!("teardown {driver} {name}"), names);
    let r = checks(&mut p, bdf, &driver, &mode);
    p.finish(r);
    rep.finish()
}
