//! Interrupt uAPI checks: VFIO_DEVICE_GET_IRQ_INFO and VFIO_DEVICE_SET_IRQS (INTx, MSI,
//! MSI-X, ERR, REQ), run in `run_twin` on each twin's own device for each driver, after the
//! group/cdev/reopen phases.
//!
//! For each device and driver this produces, like the swap phase (access.rs),
//! - absolute checks `PASS|FAIL <twin> <driver> irq-<check>`: what the C vfio-pci answers
//!   (`vfio_pci_intrs.c`, `vfio_pci_core.c`, `vfio_set_irqs_validate_and_prepare()`), the
//!   expectation computed from the device's sysfs view (interrupt pin and line, MSI and MSI-X
//!   capabilities), never from the driver under test, so both drivers report the same list;
//! - a transcript of every answer (errno or `ok`, `fired`/`quiet` for an eventfd), compared
//!   key by key: `PASS|FAIL <twin> parity irq-<check>`.
//!
//! Sections: GET_IRQ_INFO for every index and bad input; SET_IRQS bad input with nothing
//! enabled (errno table); ERR and REQ (set, loopback through DATA_NONE/DATA_BOOL, replace,
//! unset); INTx, MSI, MSI-X where the device has them (enable, loopback, replace, unset,
//! switching types refused, disable). Functional, on the devices that can raise interrupts
//! from userspace:
//! - edu (QEMU `hw/misc/edu.c`): a write to BAR0 0x60 raises, 0x64 lowers (INTx is a level,
//!   MSI one message per raise): INTx fires and is auto-masked, UNMASK by ioctl (DATA_NONE,
//!   DATA_BOOL), by an unmask eventfd (virqfd) and by COMMAND.INTX_DISABLE, MASK, a pending
//!   interrupt re-sent at unmask; MSI fires and is not auto-masked;
//! - igb (QEMU `hw/net/igb_core.c`): with GPIE.Multiple_MSIX, a write of bit k to EICS sends
//!   MSI-X vector k (EIAC auto-clears the cause): each vector fires on its own eventfd,
//!   replace/unset/re-set one vector, the pending message of a masked vector delivered when it
//!   is set again, a vector added to enabled MSI-X (dynamic allocation).
//!
//! ERR for real where the device has AER, with VFIO_TEST_AER=1 only: a non-fatal error injected
//! through /dev/aer_inject (CONFIG_PCIEAER_INJECT) reaches the driver's error_detected, which
//! signals the ERR eventfd. Not in `make test`: once it has injected, aer_inject serves the
//! bus's config reads from a spinlock_t taken under the raw pci_lock, which lockdep reports
//! ("Invalid wait context") at the next INTx unmask of either driver, and its faked AER
//! registers stay for the rest of the boot.
//!
//! Then: close with interrupts and ERR/REQ eventfds live, reopen (all released); REQ: with a
//! REQ eventfd set and the device open, unbinding the device signals it, the unbind waits for
//! the close, and the device binds again.
//!
//! Every wait on an eventfd is a poll() with a timeout: FIRE for what must come, QUIET for
//! what must not.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::time::Duration;

use crate::access::{cfg_get, cfg_set, rd, wr, Layout};
use crate::cfgspace::*;
use crate::checks::{open_via_group, GroupDevice, Quiet};
use crate::cli::{Driver, Twin};
use crate::report::Reporter;
use crate::sys::{self, err_name, errno_name, InfoBuf};
use crate::sysfs;
use crate::uapi::{self, size_u32};

/// How long an interrupt that must come may take (TCG is slow).
const FIRE: Duration = Duration::from_secs(2);
/// How long an eventfd that must stay quiet is watched.
const QUIET: Duration = Duration::from_millis(300);

const NONE: u32 = uapi::VFIO_IRQ_SET_DATA_NONE;
const BOOL: u32 = uapi::VFIO_IRQ_SET_DATA_BOOL;
const EFD: u32 = uapi::VFIO_IRQ_SET_DATA_EVENTFD;
const MASK: u32 = uapi::VFIO_IRQ_SET_ACTION_MASK;
const UNMASK: u32 = uapi::VFIO_IRQ_SET_ACTION_UNMASK;
const TRIG: u32 = uapi::VFIO_IRQ_SET_ACTION_TRIGGER;

const INTX: u32 = uapi::VFIO_PCI_INTX_IRQ_INDEX;
const MSI: u32 = uapi::VFIO_PCI_MSI_IRQ_INDEX;
const MSIX: u32 = uapi::VFIO_PCI_MSIX_IRQ_INDEX;
const ERR: u32 = uapi::VFIO_PCI_ERR_IRQ_INDEX;
const REQ: u32 = uapi::VFIO_PCI_REQ_IRQ_INDEX;

/// Lower-case names of the five indexes, for check names.
const INDEX_NAMES: [&str; 5] = ["intx", "msi", "msix", "err", "req"];

/// The AER extended capability.
const PCI_EXT_CAP_ID_ERR: u16 = 0x0001;
/// Completion Timeout: an uncorrectable error that is non-fatal by default.
const PCI_ERR_UNC_COMP_TIME: u32 = 0x0000_4000;

/// A descriptor number no process has open (above any RLIMIT_NOFILE): fdget fails, EBADF.
const BAD_FD: i32 = 0x3fff_fff0;

const EINVAL: Option<i32> = Some(libc::EINVAL);
const ENOTTY: Option<i32> = Some(libc::ENOTTY);
const EBADF: Option<i32> = Some(libc::EBADF);
const ERANGE: Option<i32> = Some(libc::ERANGE);
const OK: Option<i32> = None;

/// The device model, for the functional checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// QEMU edu (1234:11e8): INTx and MSI raised through BAR0.
    Edu,
    /// QEMU igb (8086:10c9): MSI-X vectors raised through EICS.
    Igb,
    Other,
}

/// What C's vfio-pci reports for the device, from its sysfs view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    /// `vfio_pci_get_irq_count()` per index: INTx 1 with a pin and an IRQ line, MSI
    /// 1 << Multiple Message Capable, MSI-X table size, ERR 1, REQ 1.
    pub counts: [u32; 5],
    pub kind: Kind,
    /// The device has an AER extended capability (errors can be injected below its port).
    pub aer: bool,
}

impl Expect {
    /// From the raw config space, the capability list and the sysfs `irq` value.
    pub fn new(cfg: &[u8], caps: &[Cap], irq: u32, vendor: u16, device: u16) -> Expect {
        let word = |off: usize| u16::from_le_bytes([cfg[off], cfg[off + 1]]);
        let pin = cfg.get(0x3d).copied().unwrap_or(0);
        let intx = u32::from(pin != 0 && irq != 0);
        let cap = |id: u8| caps.iter().find(|c| c.id == id).map(|c| c.off);
        let msi = cap(PCI_CAP_ID_MSI)
            .map(|c| 1u32 << ((word(c + PCI_MSI_FLAGS) >> 1) & 7))
            .unwrap_or(0);
        let msix = cap(PCI_CAP_ID_MSIX)
            .map(|c| u32::from(word(c + PCI_MSIX_FLAGS) & 0x7ff) + 1)
            .unwrap_or(0);
        let kind = match (vendor, device) {
            (0x1234, 0x11e8) => Kind::Edu,
            (0x8086, 0x10c9) => Kind::Igb,
            _ => Kind::Other,
        };
        let aer = ext_caps(cfg).iter().any(|c| c.id == PCI_EXT_CAP_ID_ERR);
        Expect {
            counts: [intx, msi, msix, 1, 1],
            kind,
            aer,
        }
    }

    pub fn intx(&self) -> u32 {
        self.counts[0]
    }
    pub fn msi(&self) -> u32 {
        self.counts[1]
    }
    pub fn msix(&self) -> u32 {
        self.counts[2]
    }

    /// The `flags` C's GET_IRQ_INFO gives `index`: EVENTFD, plus MASKABLE|AUTOMASKED for
    /// INTx, plus NORESIZE for all but MSI-X with dynamic allocation (which x86 with
    /// interrupt remapping offers: `pci_msix_can_alloc_dyn()`; a device without MSI-X has
    /// `has_dyn_msix` false).
    pub fn info_flags(&self, index: u32) -> u32 {
        let e = uapi::VFIO_IRQ_INFO_EVENTFD;
        match index {
            INTX => e | uapi::VFIO_IRQ_INFO_MASKABLE | uapi::VFIO_IRQ_INFO_AUTOMASKED,
            MSIX if self.msix() > 0 => e,
            _ => e | uapi::VFIO_IRQ_INFO_NORESIZE,
        }
    }
}

// ------------------------------------------------------------------------------------------
// eventfds
// ------------------------------------------------------------------------------------------

/// A non-blocking eventfd.
pub struct Efd(OwnedFd);

impl Efd {
    pub fn new() -> io::Result<Efd> {
        // SAFETY: eventfd(2) with valid flags; it returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a freshly created descriptor nothing else owns.
        Ok(Efd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Wait up to `t` for the counter to become non-zero, then read (and so reset) it:
    /// the counter, 0 if nothing came.
    pub fn wait(&self, t: Duration) -> u64 {
        let mut pfd = libc::pollfd {
            fd: self.raw(),
            events: libc::POLLIN,
            revents: 0,
        };
        let deadline = std::time::Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            // SAFETY: one valid pollfd for the duration of the call.
            let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as libc::c_int) };
            if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        let mut v = 0u64;
        // SAFETY: reads at most 8 bytes into `v`; the descriptor is non-blocking, so an
        // empty counter gives EAGAIN instead of blocking.
        let n = unsafe { libc::read(self.raw(), (&mut v as *mut u64).cast(), 8) };
        if n == 8 {
            v
        } else {
            0
        }
    }

    /// Reset the counter: what had come, 0 if nothing.
    pub fn drain(&self) -> u64 {
        self.wait(Duration::ZERO)
    }

    /// Add 1 to the counter (what an irqfd user would do to an unmask eventfd).
    pub fn signal(&self) -> io::Result<()> {
        let v = 1u64;
        // SAFETY: writes 8 bytes from `v` to our own eventfd.
        let n = unsafe { libc::write(self.raw(), (&v as *const u64).cast(), 8) };
        if n == 8 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

// ------------------------------------------------------------------------------------------
// Reporting
// ------------------------------------------------------------------------------------------

/// One driver's run on one device: checks to the reporter, values to the transcript.
struct Ck<'a> {
    rep: &'a mut Reporter,
    subject: String,
    tr: Vec<(String, String)>,
}

fn outcome(r: &io::Result<i32>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => err_name(e),
    }
}

fn want_str(want: Option<i32>) -> String {
    want.map_or("success".into(), errno_name)
}

impl Ck<'_> {
    fn check(&mut self, name: &str, r: Result<(), String>) {
        let n = format!("irq-{name}");
        debug_assert!(!self.tr.iter().any(|(k, _)| *k == n), "irq check {n} twice");
        match r {
            Ok(()) => self.rep.pass(&self.subject, &n),
            Err(e) => self.rep.fail(&self.subject, &n, &e),
        }
    }

    fn rec(&mut self, name: &str, v: impl Into<String>) {
        self.tr.push((format!("irq-{name}"), v.into()));
    }

    /// Absolute check and parity key at once (recorded first, so the duplicate test in
    /// `check` sees the other keys only).
    fn both(&mut self, name: &str, v: impl Into<String>, r: Result<(), String>) {
        self.check(name, r);
        self.rec(name, v);
    }

    fn note(&mut self, text: &str) {
        let t = format!("{} {text}", self.subject);
        self.rep.note(&t);
    }

    /// An ioctl's outcome, recorded and checked against `want` (`None`: success).
    fn errno(&mut self, name: &str, r: &io::Result<i32>, want: Option<i32>) {
        let got = r.as_ref().err().and_then(|e| e.raw_os_error());
        let ok = match want {
            None => r.is_ok(),
            Some(w) => got == Some(w),
        };
        let v = outcome(r);
        self.both(
            name,
            v.clone(),
            if ok {
                Ok(())
            } else {
                Err(format!("expected {} (as vfio-pci) got {v}", want_str(want)))
            },
        );
    }

    /// Whether each eventfd fires (waited for up to FIRE) or stays quiet (watched for QUIET
    /// after the others came): one check, the pattern recorded (`fired`, `quiet`, or
    /// `0:fired 1:quiet ...`).
    fn fires(&mut self, name: &str, efds: &[&Efd], want: &[bool]) {
        debug_assert_eq!(efds.len(), want.len());
        let mut got = vec![false; efds.len()];
        for (i, e) in efds.iter().enumerate() {
            if want[i] {
                got[i] = e.wait(FIRE) > 0;
            }
        }
        if want.iter().any(|w| !w) {
            std::thread::sleep(QUIET);
        }
        for (i, e) in efds.iter().enumerate() {
            // Only the unwanted ones are judged after the quiet period: a wanted one may
            // legitimately fire more than once.
            if !want[i] {
                got[i] = e.drain() > 0;
            }
        }
        let word = |b: bool| if b { "fired" } else { "quiet" };
        let show = |v: &[bool]| -> String {
            if v.len() == 1 {
                word(v[0]).to_string()
            } else {
                v.iter()
                    .enumerate()
                    .map(|(i, b)| format!("{i}:{}", word(*b)))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        let v = show(&got);
        let r = if got == want {
            Ok(())
        } else {
            Err(format!("expected {} got {v}", show(want)))
        };
        self.both(name, v, r);
    }

    fn fire1(&mut self, name: &str, e: &Efd, want: bool) {
        self.fires(name, &[e], &[want]);
    }
}

// ------------------------------------------------------------------------------------------
// The device
// ------------------------------------------------------------------------------------------

/// The device fd, with the SET_IRQS forms the checks use.
struct D<'a>(&'a File);

fn fd_bytes(fds: &[i32]) -> Vec<u8> {
    fds.iter().flat_map(|f| f.to_ne_bytes()).collect()
}

/// SET_IRQS with the header as given.
fn set_raw(
    f: &File,
    argsz: u32,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
    data: &[u8],
) -> io::Result<i32> {
    let hdr = uapi::VfioIrqSet {
        argsz,
        flags,
        index,
        start,
        count,
    };
    sys::set_irqs(f, hdr, data)
}

impl D<'_> {
    /// SET_IRQS with argsz covering exactly `data`.
    fn set(&self, flags: u32, index: u32, start: u32, count: u32, data: &[u8]) -> io::Result<i32> {
        let argsz = uapi::VFIO_IRQ_SET_MINSZ + data.len() as u32;
        set_raw(self.0, argsz, flags, index, start, count, data)
    }
    fn fds(&self, action: u32, index: u32, start: u32, fds: &[i32]) -> io::Result<i32> {
        self.set(EFD | action, index, start, fds.len() as u32, &fd_bytes(fds))
    }
    fn none(&self, action: u32, index: u32, start: u32, count: u32) -> io::Result<i32> {
        self.set(NONE | action, index, start, count, &[])
    }
    fn bools(&self, action: u32, index: u32, start: u32, b: &[u8]) -> io::Result<i32> {
        self.set(BOOL | action, index, start, b.len() as u32, b)
    }
    /// Disable INTx/MSI/MSI-X and unset ERR/REQ, whatever is enabled (errors ignored).
    fn reset_irqs(&self) {
        for index in [INTX, MSI, MSIX] {
            let _ = self.none(TRIG, index, 0, 0);
        }
        for index in [ERR, REQ] {
            let _ = self.fds(TRIG, index, 0, &[-1]);
        }
    }
    fn w32(&self, bar: u32, off: u64, v: u32) {
        let _ = wr(self.0, bar, off, &v.to_le_bytes());
    }
    fn r32(&self, bar: u32, off: u64) -> Result<u32, String> {
        match rd(self.0, bar, off, 4) {
            Ok(b) if b.len() == 4 => Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Ok(b) => Err(format!("short read {}", b.len())),
            Err(e) => Err(err_name(&e)),
        }
    }
}

/// edu BAR0 registers.
const EDU_IRQ_STATUS: u64 = 0x24;
const EDU_IRQ_RAISE: u64 = 0x60;
const EDU_IRQ_ACK: u64 = 0x64;

fn edu_raise(d: &D, v: u32) {
    d.w32(0, EDU_IRQ_RAISE, v);
}
fn edu_ack(d: &D) {
    d.w32(0, EDU_IRQ_ACK, 0xffff_ffff);
}

/// igb BAR0 registers (82576 datasheet, QEMU igb_core.c).
const IGB_EICS: u64 = 0x1520;
const IGB_EIMS: u64 = 0x1524;
const IGB_EIMC: u64 = 0x1528;
const IGB_EIAC: u64 = 0x152c;
const IGB_GPIE: u64 = 0x1514;
const IGB_EICR: u64 = 0x1580;
const IGB_GPIE_MSIX_MODE: u32 = 0x10;

/// COMMAND.MEMORY and BUS_MASTER on (an MSI/MSI-X message is a memory write by the device).
fn enable_master(d: &D) -> Result<(), String> {
    let cmd = cfg_get(d.0, PCI_COMMAND, 2)?;
    cfg_set(
        d.0,
        PCI_COMMAND,
        2,
        cmd | u32::from(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER),
    )
}

// ------------------------------------------------------------------------------------------
// The phase
// ------------------------------------------------------------------------------------------

/// The interrupt checks of one twin: each bound driver on its own device, then parity.
pub fn irq_phase(
    rep: &mut Reporter,
    twin: &Twin,
    drivers: &[Driver],
    bound: &std::collections::BTreeMap<Driver, Result<(), String>>,
) {
    let mut transcripts: Vec<(Driver, Vec<(String, String)>)> = Vec::new();
    for &d in drivers {
        let subject = format!("{} {d}", twin.name);
        let bdf = twin.bdf(d);
        if !bound.get(&d).is_some_and(|b| b.is_ok()) {
            rep.fail(&subject, "irq-open", "skipped: bind failed");
            continue;
        }
        let t0 = std::time::Instant::now();
        let mut ck = Ck {
            rep,
            subject: subject.clone(),
            tr: Vec::new(),
        };
        run(&mut ck, bdf, d);
        let tr = ck.tr;
        // VFIO_TEST_IRQ_TRANSCRIPT=1: every value as a note (the errno table, for reference).
        if std::env::var_os("VFIO_TEST_IRQ_TRANSCRIPT").is_some() {
            for (k, v) in &tr {
                rep.note(&format!("{subject} {k} = {v}"));
            }
        }
        rep.note(&format!(
            "{subject} irq run on {bdf}: {} values in {:.1} s",
            tr.len(),
            t0.elapsed().as_secs_f64()
        ));
        transcripts.push((d, tr));
    }
    if let [(Driver::C, c), (Driver::Rs, rs)] = transcripts.as_slice() {
        crate::access::compare(rep, &twin.name, c, rs);
    }
}

fn read_expect(bdf: &str) -> Result<Expect, String> {
    let lay = Layout::read(bdf)?;
    let irq = std::fs::read_to_string(sysfs::device_dir(bdf).join("irq"))
        .map_err(|e| format!("{bdf}/irq: {e}"))?
        .trim()
        .parse::<u32>()
        .map_err(|e| format!("{bdf}/irq: {e}"))?;
    Ok(Expect::new(
        &lay.cfg, &lay.caps, irq, lay.vendor, lay.device,
    ))
}

fn open(bdf: &str) -> Result<GroupDevice, String> {
    let mut quiet = Quiet::default();
    open_via_group(bdf, &mut quiet).map_err(|_| quiet.failure.take().unwrap_or_default())
}

fn run(ck: &mut Ck, bdf: &str, driver: Driver) {
    let exp = match read_expect(bdf) {
        Ok(e) => e,
        Err(e) => {
            ck.check("layout", Err(e));
            return;
        }
    };
    ck.note(&format!(
        "irq expectations {bdf}: counts intx {} msi {} msix {} err 1 req 1, {:?}{}",
        exp.intx(),
        exp.msi(),
        exp.msix(),
        exp.kind,
        if exp.aer { ", AER" } else { "" }
    ));
    let gd = match open(bdf) {
        Ok(gd) => gd,
        Err(e) => {
            ck.check("open", Err(e));
            return;
        }
    };
    ck.check("open", Ok(()));
    let dev = D(&gd.device);
    ck.check("bus-master", enable_master(&dev));
    let devnull = match File::open("/dev/null") {
        Ok(f) => f,
        Err(e) => {
            ck.check("devnull", Err(e.to_string()));
            return;
        }
    };
    if exp.kind == Kind::Edu {
        edu_ack(&dev);
    }
    sec_info(ck, &dev, &exp);
    sec_bad_input(ck, &dev, &exp, devnull.as_raw_fd());
    sec_err_req(ck, &dev, &exp, devnull.as_raw_fd());
    if exp.aer && std::env::var("VFIO_TEST_AER").is_ok_and(|v| v == "1") {
        sec_aer(ck, &dev, bdf);
    }
    if exp.intx() > 0 {
        sec_intx(ck, &dev, &exp, devnull.as_raw_fd());
    }
    if exp.msi() > 0 {
        sec_msi(ck, &dev, &exp, devnull.as_raw_fd());
    }
    if exp.msix() > 0 {
        sec_msix(ck, &dev, &exp, devnull.as_raw_fd());
    }
    dev.reset_irqs();
    drop(gd);
    sec_close(ck, bdf, &exp);
    sec_req_unbind(ck, bdf, driver);
}

/// `struct aer_error_inj` of drivers/pci/pcie/aer_inject.c, as written to /dev/aer_inject.
pub fn aer_inj_bytes(bdf: &str, uncor: u32) -> Option<Vec<u8>> {
    let (domain, rest) = bdf.split_once(':')?;
    let (bus, devfn) = rest.split_once(':')?;
    let (dev, func) = devfn.split_once('.')?;
    let num = |x: &str| u32::from_str_radix(x, 16).ok();
    let mut b = vec![0u8; 32];
    b[0] = num(bus)? as u8;
    b[1] = num(dev)? as u8;
    b[2] = num(func)? as u8;
    b[4..8].copy_from_slice(&uncor.to_ne_bytes());
    b[28..32].copy_from_slice(&num(domain)?.to_ne_bytes());
    Some(b)
}

fn aer_inject(bdf: &str, uncor: u32) -> Result<(), String> {
    let bytes = aer_inj_bytes(bdf, uncor).ok_or_else(|| format!("bad BDF {bdf}"))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/aer_inject")
        .map_err(|e| {
            format!(
                "/dev/aer_inject: {} (needs CONFIG_PCIEAER_INJECT)",
                err_name(&e)
            )
        })?;
    match io::Write::write(&mut f, &bytes) {
        Ok(n) if n == bytes.len() => Ok(()),
        Ok(n) => Err(format!("aer_inject wrote {n} bytes")),
        Err(e) => Err(format!("aer_inject: {}", err_name(&e))),
    }
}

/// ERR for real: an uncorrectable non-fatal error injected below the device's root port goes
/// through AER recovery to the driver's error_detected, which signals the ERR eventfd.
fn sec_aer(ck: &mut Ck, dev: &D, bdf: &str) {
    let x = match Efd::new() {
        Ok(x) => x,
        Err(e) => {
            ck.check("aer-eventfd", Err(err_name(&e)));
            return;
        }
    };
    ck.errno("aer-err-set", &dev.fds(TRIG, ERR, 0, &[x.raw()]), OK);
    let r = aer_inject(bdf, PCI_ERR_UNC_COMP_TIME);
    ck.both(
        "aer-inject-nonfatal",
        r.clone().map_or_else(|e| e, |()| "ok".into()),
        r,
    );
    // AER handles the error in its threaded interrupt handler: allow it twice the time.
    let got = x.wait(FIRE * 2);
    ck.both(
        "aer-err-fires",
        if got > 0 { "fired" } else { "quiet" },
        if got > 0 {
            Ok(())
        } else {
            Err("no ERR signal within 4 s of the injected error".into())
        },
    );
    ck.fire1("aer-err-fires-once", &x, false);
    ck.errno("aer-err-unset", &dev.fds(TRIG, ERR, 0, &[-1]), OK);
    let r = aer_inject(bdf, PCI_ERR_UNC_COMP_TIME);
    ck.both(
        "aer-inject-unset",
        r.clone().map_or_else(|e| e, |()| "ok".into()),
        r,
    );
    std::thread::sleep(FIRE);
    ck.fire1("aer-err-unset-quiet", &x, false);
    // The device still answers after the recovery.
    let (r, _) = irq_info(dev, size_u32::<uapi::VfioIrqInfo>(), ERR);
    ck.errno("aer-after-recovery-info", &r, OK);
}

// ------------------------------------------------------------------------------------------
// GET_IRQ_INFO
// ------------------------------------------------------------------------------------------

fn irq_info(dev: &D, argsz: u32, index: u32) -> (io::Result<i32>, uapi::VfioIrqInfo) {
    let mut info = uapi::VfioIrqInfo {
        argsz,
        index,
        ..Default::default()
    };
    let r = sys::ioctl_struct::<uapi::DeviceGetIrqInfo>(dev.0, &mut info);
    (r, info)
}

fn sec_info(ck: &mut Ck, dev: &D, exp: &Expect) {
    let full = size_u32::<uapi::VfioIrqInfo>();
    for index in 0..5u32 {
        let name = format!("info-{}", INDEX_NAMES[index as usize]);
        let (r, info) = irq_info(dev, full, index);
        let want = (exp.info_flags(index), exp.counts[index as usize]);
        let v = match &r {
            Ok(_) => format!(
                "ok flags=0x{:x} ({}) count={} index={} argsz={}",
                info.flags,
                uapi::irq_flags_str(info.flags),
                info.count,
                info.index,
                info.argsz
            ),
            Err(e) => err_name(e),
        };
        let res = match &r {
            Err(e) => Err(format!("expected success got {}", err_name(e))),
            Ok(_)
                if (info.flags, info.count) != want
                    || info.index != index
                    || info.argsz != full =>
            {
                Err(format!(
                    "expected flags=0x{:x} ({}) count={} index={index} argsz={full}, got {v}",
                    want.0,
                    uapi::irq_flags_str(want.0),
                    want.1
                ))
            }
            Ok(_) => Ok(()),
        };
        ck.both(&name, v, res);
    }
    for (name, index) in [("info-index5", 5u32), ("info-index-max", u32::MAX)] {
        let (r, _) = irq_info(dev, full, index);
        ck.errno(name, &r, EINVAL);
    }
    for (name, argsz) in [("info-argsz-15", 15u32), ("info-argsz-0", 0)] {
        let (r, _) = irq_info(dev, argsz, ERR);
        ck.errno(name, &r, EINVAL);
    }
    // argsz larger than the structure: the fixed part is answered, nothing after it written.
    let mut buf = InfoBuf::new(64);
    buf.set_u32(8, INTX);
    for off in (16..64).step_by(4) {
        buf.set_u32(off, 0xa5a5_a5a5);
    }
    let r = sys::ioctl_info_buf::<uapi::DeviceGetIrqInfo>(dev.0, &mut buf);
    let tail_ok = (16..64)
        .step_by(4)
        .all(|off| buf.u32_at(off) == Some(0xa5a5_a5a5));
    let got = (
        buf.u32_at(0).unwrap_or(0),
        buf.u32_at(4).unwrap_or(0),
        buf.u32_at(12).unwrap_or(0),
    );
    let want = (64, exp.info_flags(INTX), exp.intx());
    let v = match &r {
        Ok(_) => format!(
            "ok argsz={} flags=0x{:x} count={} tail {}",
            got.0,
            got.1,
            got.2,
            if tail_ok { "untouched" } else { "written" }
        ),
        Err(e) => err_name(e),
    };
    let res = match &r {
        Ok(_) if got == want && tail_ok => Ok(()),
        _ => Err(format!(
            "expected ok argsz=64 flags=0x{:x} count={} tail untouched, got {v}",
            want.1, want.2
        )),
    };
    ck.both("info-argsz-64", v, res);
}

// ------------------------------------------------------------------------------------------
// SET_IRQS bad input, nothing enabled
// ------------------------------------------------------------------------------------------

/// The errno table: every call with nothing enabled, against what C answers. Calls C
/// accepts (enabling an index without an eventfd) are undone right after.
fn sec_bad_input(ck: &mut Ck, dev: &D, exp: &Expect, devnull: RawFd) {
    let t = match Efd::new() {
        Ok(t) => t,
        Err(e) => {
            ck.check("set-eventfd", Err(err_name(&e)));
            return;
        }
    };
    let raw = |argsz: u32, flags: u32, index: u32, start: u32, count: u32, data: &[u8]| {
        set_raw(dev.0, argsz, flags, index, start, count, data)
    };
    let m = uapi::VFIO_IRQ_SET_MINSZ;
    let efd4 = fd_bytes(&[t.raw()]);

    // The header (vfio_set_irqs_validate_and_prepare), on ERR: every device has it.
    ck.errno(
        "set-argsz-19",
        &raw(m - 1, NONE | TRIG, ERR, 0, 0, &[]),
        EINVAL,
    );
    ck.errno("set-argsz-0", &raw(0, NONE | TRIG, ERR, 0, 0, &[]), EINVAL);
    ck.errno(
        "set-argsz-no-data",
        &raw(m, EFD | TRIG, ERR, 0, 1, &[]),
        EINVAL,
    );
    ck.errno(
        "set-argsz-partial-data",
        &raw(m + 3, EFD | TRIG, ERR, 0, 1, &efd4[..3]),
        EINVAL,
    );
    ck.errno(
        "set-argsz-64-unset",
        &raw(64, EFD | TRIG, ERR, 0, 1, &fd_bytes(&[-1])),
        OK,
    );
    ck.errno("set-index5", &dev.none(TRIG, 5, 0, 0), EINVAL);
    ck.errno("set-index-max", &dev.none(TRIG, u32::MAX, 0, 0), EINVAL);
    ck.errno("set-start-past-count", &dev.none(TRIG, ERR, 1, 0), EINVAL);
    ck.errno("set-count-past-count", &dev.none(TRIG, ERR, 0, 2), EINVAL);
    ck.errno(
        "set-start-count-overflow",
        &dev.none(TRIG, ERR, 1, u32::MAX),
        EINVAL,
    );
    ck.errno("set-count-max", &dev.none(TRIG, ERR, 0, u32::MAX), EINVAL);
    ck.errno(
        "set-flag-0x40",
        &raw(m, NONE | TRIG | 0x40, ERR, 0, 0, &[]),
        EINVAL,
    );
    ck.errno(
        "set-flag-bit31",
        &raw(m, NONE | TRIG | 1 << 31, ERR, 0, 0, &[]),
        EINVAL,
    );
    ck.errno("set-no-action", &raw(m, NONE, ERR, 0, 0, &[]), ENOTTY);
    ck.errno(
        "set-mask-and-trigger",
        &raw(m, NONE | MASK | TRIG, ERR, 0, 0, &[]),
        ENOTTY,
    );
    ck.errno(
        "set-unmask-and-trigger",
        &raw(m, NONE | UNMASK | TRIG, INTX, 0, 0, &[]),
        if exp.intx() > 0 { ENOTTY } else { EINVAL },
    );
    ck.errno(
        "set-all-actions",
        &raw(
            m,
            NONE | uapi::VFIO_IRQ_SET_ACTION_TYPE_MASK,
            ERR,
            0,
            0,
            &[],
        ),
        ENOTTY,
    );
    ck.errno("set-no-data-type", &raw(m, TRIG, ERR, 0, 0, &[]), EINVAL);
    ck.errno(
        "set-none-and-bool",
        &raw(m + 1, NONE | BOOL | TRIG, ERR, 0, 1, &[1]),
        EINVAL,
    );
    ck.errno(
        "set-bool-and-eventfd",
        &raw(m + 4, BOOL | EFD | TRIG, ERR, 0, 1, &efd4),
        EINVAL,
    );
    ck.errno(
        "set-all-data-types",
        &raw(
            m + 4,
            uapi::VFIO_IRQ_SET_DATA_TYPE_MASK | TRIG,
            ERR,
            0,
            1,
            &efd4,
        ),
        EINVAL,
    );

    // ERR and REQ: TRIGGER only; nothing set yet.
    for (idx, n) in [(ERR, "err"), (REQ, "req")] {
        ck.errno(&format!("set-{n}-mask"), &dev.none(MASK, idx, 0, 1), ENOTTY);
        ck.errno(
            &format!("set-{n}-unmask"),
            &dev.none(UNMASK, idx, 0, 1),
            ENOTTY,
        );
        ck.errno(
            &format!("set-{n}-disable-unset"),
            &dev.none(TRIG, idx, 0, 0),
            EINVAL,
        );
        ck.errno(
            &format!("set-{n}-loopback-unset"),
            &dev.none(TRIG, idx, 0, 1),
            EINVAL,
        );
        ck.errno(
            &format!("set-{n}-bool-count0"),
            &dev.bools(TRIG, idx, 0, &[]),
            EINVAL,
        );
        ck.errno(
            &format!("set-{n}-bool-unset"),
            &dev.bools(TRIG, idx, 0, &[1]),
            OK,
        );
        ck.errno(
            &format!("set-{n}-eventfd-count0"),
            &dev.fds(TRIG, idx, 0, &[]),
            EINVAL,
        );
        ck.errno(
            &format!("set-{n}-eventfd-devnull"),
            &dev.fds(TRIG, idx, 0, &[devnull]),
            EINVAL,
        );
        ck.errno(
            &format!("set-{n}-eventfd-device-fd"),
            &dev.fds(TRIG, idx, 0, &[dev.0.as_raw_fd()]),
            EINVAL,
        );
        ck.errno(
            &format!("set-{n}-eventfd-minus2"),
            &dev.fds(TRIG, idx, 0, &[-2]),
            EINVAL,
        );
        ck.errno(
            &format!("set-{n}-eventfd-badfd"),
            &dev.fds(TRIG, idx, 0, &[BAD_FD]),
            EBADF,
        );
        ck.errno(
            &format!("set-{n}-eventfd-unset-unset"),
            &dev.fds(TRIG, idx, 0, &[-1]),
            OK,
        );
    }

    // INTx, not enabled. Without a pin C counts 0 interrupts: EINVAL for any start.
    let pin = exp.intx() > 0;
    let if_pin = |w: Option<i32>| if pin { w } else { EINVAL };
    ck.errno("set-intx-disable-idle", &dev.none(TRIG, INTX, 0, 0), EINVAL);
    ck.errno(
        "set-intx-loopback-idle",
        &dev.none(TRIG, INTX, 0, 1),
        EINVAL,
    );
    ck.errno(
        "set-intx-bool-idle",
        &dev.bools(TRIG, INTX, 0, &[1]),
        EINVAL,
    );
    ck.errno(
        "set-intx-unmask-idle",
        &dev.none(UNMASK, INTX, 0, 1),
        EINVAL,
    );
    ck.errno("set-intx-mask-idle", &dev.none(MASK, INTX, 0, 1), EINVAL);
    ck.errno(
        "set-intx-count2",
        &dev.fds(TRIG, INTX, 0, &[t.raw(), t.raw()]),
        EINVAL,
    );
    ck.errno(
        "set-intx-start1",
        &dev.fds(TRIG, INTX, 1, &[t.raw()]),
        EINVAL,
    );
    ck.errno(
        "set-intx-eventfd-count0",
        &dev.fds(TRIG, INTX, 0, &[]),
        EINVAL,
    );
    ck.errno(
        "set-intx-eventfd-devnull",
        &dev.fds(TRIG, INTX, 0, &[devnull]),
        EINVAL,
    );
    ck.errno(
        "set-intx-eventfd-badfd",
        &dev.fds(TRIG, INTX, 0, &[BAD_FD]),
        if_pin(EBADF),
    );
    // A negative fd enables INTx with no trigger (vfio_intx_enable(vdev, NULL)).
    ck.errno(
        "set-intx-eventfd-minus2",
        &dev.fds(TRIG, INTX, 0, &[-2]),
        if_pin(OK),
    );
    ck.errno(
        "set-intx-no-trigger-loopback",
        &dev.none(TRIG, INTX, 0, 1),
        if_pin(OK),
    );
    ck.errno(
        "set-intx-no-trigger-disable",
        &dev.none(TRIG, INTX, 0, 0),
        if_pin(OK),
    );

    // MSI, not enabled.
    let msi = exp.msi() > 0;
    let if_msi = |w: Option<i32>| if msi { w } else { EINVAL };
    ck.errno("set-msi-disable-idle", &dev.none(TRIG, MSI, 0, 0), EINVAL);
    ck.errno("set-msi-loopback-idle", &dev.none(TRIG, MSI, 0, 1), EINVAL);
    ck.errno("set-msi-bool-idle", &dev.bools(TRIG, MSI, 0, &[1]), EINVAL);
    ck.errno("set-msi-mask", &dev.none(MASK, MSI, 0, 1), if_msi(ENOTTY));
    ck.errno(
        "set-msi-unmask",
        &dev.none(UNMASK, MSI, 0, 1),
        if_msi(ENOTTY),
    );
    let over = vec![t.raw(); exp.msi() as usize + 1];
    ck.errno("set-msi-count-above", &dev.fds(TRIG, MSI, 0, &over), EINVAL);
    // count 0 with EVENTFD: pci_alloc_irq_vectors(pdev, 1, 0, ...) is -ERANGE.
    ck.errno(
        "set-msi-eventfd-count0",
        &dev.fds(TRIG, MSI, 0, &[]),
        if_msi(ERANGE),
    );
    ck.errno(
        "set-msi-eventfd-devnull",
        &dev.fds(TRIG, MSI, 0, &[devnull]),
        EINVAL,
    );
    ck.errno(
        "set-msi-eventfd-badfd",
        &dev.fds(TRIG, MSI, 0, &[BAD_FD]),
        if_msi(EBADF),
    );
    ck.errno(
        "set-msi-state-after-bad-fd",
        &dev.none(TRIG, MSI, 0, 1),
        EINVAL,
    );
    // A negative fd enables MSI with no vector set.
    ck.errno(
        "set-msi-eventfd-minus2",
        &dev.fds(TRIG, MSI, 0, &[-2]),
        if_msi(OK),
    );
    ck.errno(
        "set-msi-no-vector-loopback",
        &dev.none(TRIG, MSI, 0, 1),
        if_msi(OK),
    );
    ck.errno(
        "set-msi-no-vector-disable",
        &dev.none(TRIG, MSI, 0, 0),
        if_msi(OK),
    );

    // MSI-X, not enabled.
    let msix = exp.msix() > 0;
    let if_msix = |w: Option<i32>| if msix { w } else { EINVAL };
    ck.errno("set-msix-disable-idle", &dev.none(TRIG, MSIX, 0, 0), EINVAL);
    ck.errno(
        "set-msix-loopback-idle",
        &dev.none(TRIG, MSIX, 0, 1),
        EINVAL,
    );
    ck.errno(
        "set-msix-mask",
        &dev.none(MASK, MSIX, 0, 1),
        if_msix(ENOTTY),
    );
    ck.errno(
        "set-msix-unmask",
        &dev.none(UNMASK, MSIX, 0, 1),
        if_msix(ENOTTY),
    );
    let over = vec![t.raw(); exp.msix() as usize + 1];
    ck.errno(
        "set-msix-count-above",
        &dev.fds(TRIG, MSIX, 0, &over),
        EINVAL,
    );
    ck.errno(
        "set-msix-start-at-count",
        &dev.fds(TRIG, MSIX, exp.msix(), &[t.raw()]),
        EINVAL,
    );
    ck.errno(
        "set-msix-eventfd-count0",
        &dev.fds(TRIG, MSIX, 0, &[]),
        if_msix(ERANGE),
    );
    ck.errno(
        "set-msix-eventfd-devnull",
        &dev.fds(TRIG, MSIX, 0, &[devnull]),
        EINVAL,
    );
    ck.errno(
        "set-msix-eventfd-minus2",
        &dev.fds(TRIG, MSIX, 0, &[-2]),
        if_msix(OK),
    );
    ck.errno(
        "set-msix-no-vector-disable",
        &dev.none(TRIG, MSIX, 0, 0),
        if_msix(OK),
    );
    ck.fire1("set-bad-input-no-signal", &t, false);
    dev.reset_irqs();
}

// ------------------------------------------------------------------------------------------
// ERR and REQ
// ------------------------------------------------------------------------------------------

fn sec_err_req(ck: &mut Ck, dev: &D, exp: &Expect, devnull: RawFd) {
    let (a, b) = match (Efd::new(), Efd::new()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => {
            ck.check("err-eventfd", Err("eventfd failed".into()));
            return;
        }
    };
    for (idx, n) in [(ERR, "err"), (REQ, "req")] {
        a.drain();
        b.drain();
        ck.errno(&format!("{n}-set"), &dev.fds(TRIG, idx, 0, &[a.raw()]), OK);
        ck.fire1(&format!("{n}-set-no-signal"), &a, false);
        ck.errno(
            &format!("{n}-loopback-none"),
            &dev.none(TRIG, idx, 0, 1),
            OK,
        );
        ck.fire1(&format!("{n}-loopback-none-fires"), &a, true);
        ck.errno(
            &format!("{n}-loopback-bool1"),
            &dev.bools(TRIG, idx, 0, &[1]),
            OK,
        );
        ck.fire1(&format!("{n}-loopback-bool1-fires"), &a, true);
        ck.errno(
            &format!("{n}-loopback-bool0"),
            &dev.bools(TRIG, idx, 0, &[0]),
            OK,
        );
        ck.fire1(&format!("{n}-loopback-bool0-quiet"), &a, false);
        // Any non-zero byte is true.
        ck.errno(
            &format!("{n}-loopback-bool-0xfe"),
            &dev.bools(TRIG, idx, 0, &[0xfe]),
            OK,
        );
        ck.fire1(&format!("{n}-loopback-bool-0xfe-fires"), &a, true);
        ck.errno(
            &format!("{n}-start1"),
            &dev.fds(TRIG, idx, 1, &[b.raw()]),
            EINVAL,
        );
        ck.errno(
            &format!("{n}-count2"),
            &dev.fds(TRIG, idx, 0, &[b.raw(), b.raw()]),
            EINVAL,
        );
        // A bad fd leaves the eventfd in place.
        ck.errno(
            &format!("{n}-replace-devnull"),
            &dev.fds(TRIG, idx, 0, &[devnull]),
            EINVAL,
        );
        let _ = dev.none(TRIG, idx, 0, 1);
        ck.fire1(&format!("{n}-kept-after-bad-fd"), &a, true);
        ck.errno(
            &format!("{n}-replace"),
            &dev.fds(TRIG, idx, 0, &[b.raw()]),
            OK,
        );
        let _ = dev.none(TRIG, idx, 0, 1);
        ck.fires(
            &format!("{n}-replaced-fires-new"),
            &[&a, &b],
            &[false, true],
        );
        // The same eventfd again.
        ck.errno(
            &format!("{n}-replace-same"),
            &dev.fds(TRIG, idx, 0, &[b.raw()]),
            OK,
        );
        ck.errno(&format!("{n}-unset"), &dev.fds(TRIG, idx, 0, &[-1]), OK);
        ck.errno(
            &format!("{n}-loopback-after-unset"),
            &dev.none(TRIG, idx, 0, 1),
            EINVAL,
        );
        ck.errno(
            &format!("{n}-bool-after-unset"),
            &dev.bools(TRIG, idx, 0, &[1]),
            OK,
        );
        ck.fires(&format!("{n}-unset-quiet"), &[&a, &b], &[false, false]);
        // DATA_NONE with count 0 unsets too.
        ck.errno(
            &format!("{n}-set-again"),
            &dev.fds(TRIG, idx, 0, &[a.raw()]),
            OK,
        );
        ck.errno(&format!("{n}-disable-none"), &dev.none(TRIG, idx, 0, 0), OK);
        ck.errno(
            &format!("{n}-disable-none-again"),
            &dev.none(TRIG, idx, 0, 0),
            EINVAL,
        );
        ck.errno(
            &format!("{n}-loopback-after-disable"),
            &dev.none(TRIG, idx, 0, 1),
            EINVAL,
        );
        ck.fires(&format!("{n}-disable-quiet"), &[&a, &b], &[false, false]);
    }
    // ERR and REQ beside an enabled interrupt of the device and each other: independent.
    ck.errno(
        "err-req-both-set",
        &{
            let r1 = dev.fds(TRIG, ERR, 0, &[a.raw()]);
            r1.and_then(|_| dev.fds(TRIG, REQ, 0, &[b.raw()]))
        },
        OK,
    );
    if exp.intx() > 0 {
        let _ = dev.fds(TRIG, INTX, 0, &[-2]);
    }
    let _ = dev.none(TRIG, ERR, 0, 1);
    ck.fires("err-loopback-only-err", &[&a, &b], &[true, false]);
    let _ = dev.none(TRIG, REQ, 0, 1);
    ck.fires("req-loopback-only-req", &[&a, &b], &[false, true]);
    dev.reset_irqs();
}

// ------------------------------------------------------------------------------------------
// INTx
// ------------------------------------------------------------------------------------------

fn sec_intx(ck: &mut Ck, dev: &D, exp: &Expect, devnull: RawFd) {
    let (t, t2) = match (Efd::new(), Efd::new()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => {
            ck.check("intx-eventfd", Err("eventfd failed".into()));
            return;
        }
    };
    ck.errno("intx-enable", &dev.fds(TRIG, INTX, 0, &[t.raw()]), OK);
    ck.fire1("intx-enable-no-signal", &t, false);
    ck.errno("intx-enable-again", &dev.fds(TRIG, INTX, 0, &[t.raw()]), OK);
    ck.errno("intx-loopback-none", &dev.none(TRIG, INTX, 0, 1), OK);
    ck.fire1("intx-loopback-none-fires", &t, true);
    ck.errno("intx-loopback-bool1", &dev.bools(TRIG, INTX, 0, &[1]), OK);
    ck.fire1("intx-loopback-bool1-fires", &t, true);
    ck.errno("intx-loopback-bool0", &dev.bools(TRIG, INTX, 0, &[0]), OK);
    ck.fire1("intx-loopback-bool0-quiet", &t, false);

    // Masking and unmasking by ioctl (without an interrupt pending).
    ck.errno("intx-mask-none", &dev.none(MASK, INTX, 0, 1), OK);
    ck.errno("intx-mask-twice", &dev.none(MASK, INTX, 0, 1), OK);
    // The loopback signals whatever the mask says.
    let _ = dev.none(TRIG, INTX, 0, 1);
    ck.fire1("intx-loopback-while-masked-fires", &t, true);
    ck.errno("intx-unmask-none", &dev.none(UNMASK, INTX, 0, 1), OK);
    ck.errno("intx-mask-bool1", &dev.bools(MASK, INTX, 0, &[1]), OK);
    ck.errno("intx-mask-bool0", &dev.bools(MASK, INTX, 0, &[0]), OK);
    ck.errno("intx-unmask-bool1", &dev.bools(UNMASK, INTX, 0, &[1]), OK);
    ck.errno("intx-unmask-bool0", &dev.bools(UNMASK, INTX, 0, &[0]), OK);
    ck.errno(
        "intx-mask-eventfd",
        &dev.fds(MASK, INTX, 0, &[t2.raw()]),
        ENOTTY,
    );
    ck.errno("intx-unmask-count0", &dev.none(UNMASK, INTX, 0, 0), EINVAL);
    ck.errno("intx-mask-count0", &dev.none(MASK, INTX, 0, 0), EINVAL);
    ck.errno(
        "intx-unmask-eventfd-devnull",
        &dev.fds(UNMASK, INTX, 0, &[devnull]),
        EINVAL,
    );
    ck.errno(
        "intx-unmask-eventfd-badfd",
        &dev.fds(UNMASK, INTX, 0, &[BAD_FD]),
        EBADF,
    );
    ck.errno(
        "intx-unmask-eventfd-unset-unset",
        &dev.fds(UNMASK, INTX, 0, &[-1]),
        OK,
    );
    // One unmask eventfd at a time (vfio_virqfd_enable: EBUSY), removed by fd -1.
    ck.errno(
        "intx-unmask-eventfd-set",
        &dev.fds(UNMASK, INTX, 0, &[t2.raw()]),
        OK,
    );
    ck.errno(
        "intx-unmask-eventfd-busy",
        &dev.fds(UNMASK, INTX, 0, &[t2.raw()]),
        Some(libc::EBUSY),
    );
    ck.errno(
        "intx-unmask-eventfd-remove",
        &dev.fds(UNMASK, INTX, 0, &[-1]),
        OK,
    );
    ck.fire1("intx-mask-unmask-no-signal", &t, false);

    // Switching types while INTx is on.
    ck.errno("intx-then-msi", &dev.fds(TRIG, MSI, 0, &[t2.raw()]), EINVAL);
    ck.errno(
        "intx-then-msix",
        &dev.fds(TRIG, MSIX, 0, &[t2.raw()]),
        EINVAL,
    );
    ck.errno("intx-then-msi-disable", &dev.none(TRIG, MSI, 0, 0), EINVAL);
    ck.errno(
        "intx-then-msix-disable",
        &dev.none(TRIG, MSIX, 0, 0),
        EINVAL,
    );
    ck.errno("intx-then-msi-loopback", &dev.none(TRIG, MSI, 0, 1), EINVAL);

    // COMMAND.INTX_DISABLE in config space masks INTx and stops even the loopback.
    let cmd = cfg_get(dev.0, PCI_COMMAND, 2).unwrap_or(0);
    let _ = cfg_set(
        dev.0,
        PCI_COMMAND,
        2,
        cmd | u32::from(PCI_COMMAND_INTX_DISABLE),
    );
    let _ = dev.none(TRIG, INTX, 0, 1);
    ck.fire1("intx-disintx-loopback-quiet", &t, false);
    let _ = cfg_set(
        dev.0,
        PCI_COMMAND,
        2,
        cmd & !u32::from(PCI_COMMAND_INTX_DISABLE),
    );
    let _ = dev.none(TRIG, INTX, 0, 1);
    ck.fire1("intx-disintx-cleared-loopback-fires", &t, true);

    // Replace and unset the trigger.
    ck.errno("intx-replace", &dev.fds(TRIG, INTX, 0, &[t2.raw()]), OK);
    let _ = dev.none(TRIG, INTX, 0, 1);
    ck.fires("intx-replaced-fires-new", &[&t, &t2], &[false, true]);
    ck.errno("intx-unset-trigger", &dev.fds(TRIG, INTX, 0, &[-1]), OK);
    ck.errno("intx-loopback-no-trigger", &dev.none(TRIG, INTX, 0, 1), OK);
    ck.fires("intx-unset-quiet", &[&t, &t2], &[false, false]);
    ck.errno("intx-set-again", &dev.fds(TRIG, INTX, 0, &[t.raw()]), OK);

    if exp.kind == Kind::Edu {
        edu_intx(ck, dev, &t, &t2);
    }

    ck.errno("intx-disable", &dev.none(TRIG, INTX, 0, 0), OK);
    ck.errno("intx-disable-again", &dev.none(TRIG, INTX, 0, 0), EINVAL);
    ck.errno(
        "intx-loopback-disabled",
        &dev.none(TRIG, INTX, 0, 1),
        EINVAL,
    );
    ck.errno(
        "intx-unmask-disabled",
        &dev.none(UNMASK, INTX, 0, 1),
        EINVAL,
    );
    ck.fire1("intx-disabled-quiet", &t, false);
}

/// edu's level INTx through vfio's auto-masking. `t` is the trigger; INTx is enabled and
/// unmasked, nothing raised.
fn edu_intx(ck: &mut Ck, dev: &D, t: &Efd, t2: &Efd) {
    let unmask = |d: &D| {
        let _ = d.none(UNMASK, INTX, 0, 1);
    };
    edu_ack(dev);
    t.drain();
    edu_raise(dev, 1);
    ck.fire1("edu-intx-fires", t, true);
    let st = dev.r32(0, EDU_IRQ_STATUS);
    let v = match &st {
        Ok(x) => format!("0x{x:x}"),
        Err(e) => e.clone(),
    };
    ck.both(
        "edu-intx-status",
        v.clone(),
        match st {
            Ok(1) => Ok(()),
            _ => Err(format!("irq status register: expected 0x1 got {v}")),
        },
    );
    // Auto-masked: lower and raise again, nothing comes.
    dev.w32(0, EDU_IRQ_ACK, 1);
    edu_raise(dev, 2);
    ck.fire1("edu-intx-automasked", t, false);
    // Unmask with the line still up: the pending interrupt is sent again.
    ck.errno("edu-intx-unmask", &dev.none(UNMASK, INTX, 0, 1), OK);
    ck.fire1("edu-intx-unmask-pending-refires", t, true);
    // Lowered, then unmasked: quiet, and the next raise fires.
    edu_ack(dev);
    unmask(dev);
    ck.fire1("edu-intx-unmask-idle-quiet", t, false);
    edu_raise(dev, 4);
    ck.fire1("edu-intx-fires-again", t, true);
    edu_ack(dev);
    ck.errno(
        "edu-intx-unmask-bool1",
        &dev.bools(UNMASK, INTX, 0, &[1]),
        OK,
    );
    edu_raise(dev, 8);
    ck.fire1("edu-intx-unmask-bool1-rearms", t, true);
    edu_ack(dev);
    ck.errno(
        "edu-intx-unmask-bool0",
        &dev.bools(UNMASK, INTX, 0, &[0]),
        OK,
    );
    edu_raise(dev, 8);
    ck.fire1("edu-intx-unmask-bool0-stays-masked", t, false);
    edu_ack(dev);
    unmask(dev);
    t.drain();

    // MASK by ioctl holds a raise back until UNMASK.
    ck.errno("edu-intx-mask", &dev.none(MASK, INTX, 0, 1), OK);
    edu_raise(dev, 0x10);
    ck.fire1("edu-intx-mask-blocks", t, false);
    unmask(dev);
    ck.fire1("edu-intx-unmask-after-mask-fires", t, true);
    edu_ack(dev);
    unmask(dev);
    t.drain();

    // An unmask eventfd (virqfd).
    let u = match Efd::new() {
        Ok(u) => u,
        Err(e) => {
            ck.check("edu-intx-virqfd-eventfd", Err(err_name(&e)));
            return;
        }
    };
    ck.errno(
        "edu-intx-unmask-eventfd",
        &dev.fds(UNMASK, INTX, 0, &[u.raw()]),
        OK,
    );
    edu_raise(dev, 1);
    ck.fire1("edu-intx-fires-with-virqfd", t, true);
    edu_ack(dev);
    let _ = u.signal();
    std::thread::sleep(Duration::from_millis(50));
    edu_raise(dev, 2);
    ck.fire1("edu-intx-virqfd-rearms", t, true);
    // Masked with the line up: a signal on the unmask eventfd re-sends it.
    let _ = u.signal();
    ck.fire1("edu-intx-virqfd-pending-refires", t, true);
    edu_ack(dev);
    let _ = u.signal();
    std::thread::sleep(Duration::from_millis(50));
    t.drain();
    ck.errno(
        "edu-intx-unmask-eventfd-busy",
        &dev.fds(UNMASK, INTX, 0, &[t2.raw()]),
        Some(libc::EBUSY),
    );
    ck.errno(
        "edu-intx-unmask-eventfd-remove",
        &dev.fds(UNMASK, INTX, 0, &[-1]),
        OK,
    );
    edu_raise(dev, 4);
    ck.fire1("edu-intx-fires-after-virqfd-removed", t, true);
    edu_ack(dev);
    let _ = u.signal();
    let _ = t2.signal();
    std::thread::sleep(Duration::from_millis(50));
    t2.drain();
    edu_raise(dev, 4);
    ck.fire1("edu-intx-removed-virqfd-no-unmask", t, false);
    edu_ack(dev);
    unmask(dev);
    t.drain();

    // COMMAND.INTX_DISABLE masks; clearing it unmasks and re-sends a pending interrupt.
    let cmd = cfg_get(dev.0, PCI_COMMAND, 2).unwrap_or(0);
    let _ = cfg_set(
        dev.0,
        PCI_COMMAND,
        2,
        cmd | u32::from(PCI_COMMAND_INTX_DISABLE),
    );
    edu_raise(dev, 0x20);
    ck.fire1("edu-intx-disintx-blocks", t, false);
    let _ = cfg_set(
        dev.0,
        PCI_COMMAND,
        2,
        cmd & !u32::from(PCI_COMMAND_INTX_DISABLE),
    );
    ck.fire1("edu-intx-disintx-cleared-fires", t, true);
    edu_ack(dev);
    unmask(dev);
    t.drain();

    // The replaced trigger gets the device's interrupt.
    let _ = dev.fds(TRIG, INTX, 0, &[t2.raw()]);
    edu_raise(dev, 1);
    ck.fires("edu-intx-replaced-trigger", &[t, t2], &[false, true]);
    edu_ack(dev);
    unmask(dev);
    // No trigger: the interrupt is taken and masked, nothing signalled.
    let _ = dev.fds(TRIG, INTX, 0, &[-1]);
    edu_raise(dev, 1);
    ck.fires("edu-intx-no-trigger-quiet", &[t, t2], &[false, false]);
    edu_ack(dev);
    unmask(dev);
    let _ = dev.fds(TRIG, INTX, 0, &[t.raw()]);
    t.drain();
    t2.drain();
}

// ------------------------------------------------------------------------------------------
// MSI
// ------------------------------------------------------------------------------------------

fn sec_msi(ck: &mut Ck, dev: &D, exp: &Expect, devnull: RawFd) {
    let (m, m2) = match (Efd::new(), Efd::new()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => {
            ck.check("msi-eventfd", Err("eventfd failed".into()));
            return;
        }
    };
    let edu = exp.kind == Kind::Edu;
    if edu {
        edu_ack(dev);
    }
    ck.errno("msi-enable", &dev.fds(TRIG, MSI, 0, &[m.raw()]), OK);
    ck.fire1("msi-enable-no-signal", &m, false);
    let flags = cfg_get(dev.0, msi_flags_off(dev).unwrap_or(0), 2);
    let v = match &flags {
        Ok(f) => format!("0x{:x}", f & 0x71),
        Err(e) => e.clone(),
    };
    // The control register's low byte is virtual (what the user wrote): compared only.
    ck.rec("msi-config-flags-enabled", v);
    if edu {
        edu_raise(dev, 1);
        ck.fire1("edu-msi-fires", &m, true);
        // MSI is an edge: every raise is a message, nothing is masked.
        edu_raise(dev, 2);
        ck.fire1("edu-msi-not-automasked", &m, true);
        edu_ack(dev);
        ck.fire1("edu-msi-ack-quiet", &m, false);
    }
    ck.errno("msi-loopback-none", &dev.none(TRIG, MSI, 0, 1), OK);
    ck.fire1("msi-loopback-none-fires", &m, true);
    ck.errno("msi-loopback-bool1", &dev.bools(TRIG, MSI, 0, &[1]), OK);
    ck.fire1("msi-loopback-bool1-fires", &m, true);
    ck.errno("msi-loopback-bool0", &dev.bools(TRIG, MSI, 0, &[0]), OK);
    ck.fire1("msi-loopback-bool0-quiet", &m, false);
    ck.errno(
        "msi-loopback-bool-0xff",
        &dev.bools(TRIG, MSI, 0, &[0xff]),
        OK,
    );
    ck.fire1("msi-loopback-bool-0xff-fires", &m, true);
    ck.errno("msi-mask-enabled", &dev.none(MASK, MSI, 0, 1), ENOTTY);
    ck.errno("msi-unmask-enabled", &dev.none(UNMASK, MSI, 0, 1), ENOTTY);

    // Switching types while MSI is on.
    ck.errno(
        "msi-then-intx",
        &dev.fds(TRIG, INTX, 0, &[m2.raw()]),
        EINVAL,
    );
    ck.errno(
        "msi-then-intx-unmask",
        &dev.none(UNMASK, INTX, 0, 1),
        EINVAL,
    );
    ck.errno("msi-then-intx-disable", &dev.none(TRIG, INTX, 0, 0), EINVAL);
    ck.errno(
        "msi-then-msix",
        &dev.fds(TRIG, MSIX, 0, &[m2.raw()]),
        EINVAL,
    );

    // Replace the vector's eventfd; a bad fd unsets the vector (MSI stays enabled).
    ck.errno("msi-replace", &dev.fds(TRIG, MSI, 0, &[m2.raw()]), OK);
    let _ = dev.none(TRIG, MSI, 0, 1);
    ck.fires("msi-replaced-fires-new", &[&m, &m2], &[false, true]);
    if edu {
        edu_raise(dev, 1);
        ck.fires("edu-msi-replaced-trigger", &[&m, &m2], &[false, true]);
        edu_ack(dev);
    }
    ck.errno(
        "msi-replace-devnull",
        &dev.fds(TRIG, MSI, 0, &[devnull]),
        EINVAL,
    );
    ck.errno("msi-after-bad-fd-loopback", &dev.none(TRIG, MSI, 0, 1), OK);
    ck.fires("msi-bad-fd-unset-vector", &[&m, &m2], &[false, false]);
    ck.errno("msi-set-again", &dev.fds(TRIG, MSI, 0, &[m.raw()]), OK);
    let _ = dev.none(TRIG, MSI, 0, 1);
    ck.fire1("msi-set-again-fires", &m, true);
    if edu {
        edu_raise(dev, 1);
        ck.fire1("edu-msi-set-again-fires", &m, true);
        edu_ack(dev);
    }
    ck.errno("msi-unset-vector", &dev.fds(TRIG, MSI, 0, &[-1]), OK);
    ck.errno("msi-unset-vector-loopback", &dev.none(TRIG, MSI, 0, 1), OK);
    ck.fire1("msi-unset-vector-quiet", &m, false);
    ck.errno(
        "msi-set-after-unset",
        &dev.fds(TRIG, MSI, 0, &[m.raw()]),
        OK,
    );
    if edu {
        edu_ack(dev);
    }
    ck.errno("msi-disable", &dev.none(TRIG, MSI, 0, 0), OK);
    ck.errno("msi-disable-again", &dev.none(TRIG, MSI, 0, 0), EINVAL);
    ck.errno("msi-loopback-disabled", &dev.none(TRIG, MSI, 0, 1), EINVAL);
    let flags = cfg_get(dev.0, msi_flags_off(dev).unwrap_or(0), 2);
    let v = match &flags {
        Ok(f) => format!("0x{:x}", f & 0x71),
        Err(e) => e.clone(),
    };
    ck.rec("msi-config-flags-disabled", v);
    // Enabling after a disable works again.
    ck.errno("msi-enable-again", &dev.fds(TRIG, MSI, 0, &[m.raw()]), OK);
    let _ = dev.none(TRIG, MSI, 0, 1);
    ck.fire1("msi-enable-again-fires", &m, true);
    ck.errno("msi-disable-last", &dev.none(TRIG, MSI, 0, 0), OK);
}

/// Offset of the MSI control word in config space, through the device fd.
fn msi_flags_off(dev: &D) -> Option<usize> {
    let cfg = rd(dev.0, uapi::VFIO_PCI_CONFIG_REGION_INDEX, 0, 256).ok()?;
    std_caps(&cfg)
        .iter()
        .find(|c| c.id == PCI_CAP_ID_MSI)
        .map(|c| c.off + PCI_MSI_FLAGS)
}

// ------------------------------------------------------------------------------------------
// MSI-X
// ------------------------------------------------------------------------------------------

fn sec_msix(ck: &mut Ck, dev: &D, exp: &Expect, devnull: RawFd) {
    let n = exp.msix().min(4) as usize;
    if n < 3 {
        ck.note(&format!(
            "irq MSI-X table of {n} entries: vector checks need 3"
        ));
        ck.errno("msix-enable-small", &dev.none(TRIG, MSIX, 0, 0), EINVAL);
        return;
    }
    let efds: Vec<Efd> = (0..n + 2).filter_map(|_| Efd::new().ok()).collect();
    if efds.len() != n + 2 {
        ck.check("msix-eventfd", Err("eventfd failed".into()));
        return;
    }
    let e: Vec<&Efd> = efds[..n].iter().collect();
    let f = &efds[n];
    let g = &efds[n + 1];
    let raws: Vec<i32> = e.iter().map(|x| x.raw()).collect();
    let igb = exp.kind == Kind::Igb;
    let mask = (1u32 << (n + 1)) - 1;
    let only = |k: usize| -> Vec<bool> { (0..n).map(|i| i == k).collect() };
    let fire_vec = |k: usize| {
        dev.w32(0, IGB_EICS, 1 << k);
    };
    if igb {
        // MSI-X mode, auto-clear of the causes, every vector we use enabled.
        dev.w32(0, IGB_GPIE, IGB_GPIE_MSIX_MODE);
        dev.w32(0, IGB_EICR, 0xffff_ffff);
        dev.w32(0, IGB_EIAC, mask);
        dev.w32(0, IGB_EIMS, mask);
    }
    ck.errno("msix-enable", &dev.fds(TRIG, MSIX, 0, &raws), OK);
    ck.fires("msix-enable-no-signal", &e, &vec![false; n]);
    if igb {
        for k in 0..n {
            fire_vec(k);
            ck.fires(&format!("igb-msix-vector{k}-fires"), &e, &only(k));
        }
    }
    ck.errno("msix-loopback-all", &dev.none(TRIG, MSIX, 0, n as u32), OK);
    ck.fires("msix-loopback-all-fire", &e, &vec![true; n]);
    let pattern: Vec<u8> = (0..n).map(|i| u8::from(i % 2 == 0)).collect();
    ck.errno(
        "msix-loopback-bool",
        &dev.bools(TRIG, MSIX, 0, &pattern),
        OK,
    );
    ck.fires(
        "msix-loopback-bool-pattern",
        &e,
        &pattern.iter().map(|b| *b != 0).collect::<Vec<_>>(),
    );
    ck.errno("msix-loopback-one", &dev.none(TRIG, MSIX, 1, 1), OK);
    ck.fires("msix-loopback-one-fires", &e, &only(1));
    // Beyond the enabled vectors but inside the table: nothing there, nothing signalled.
    if exp.msix() as usize > n {
        ck.errno(
            "msix-loopback-unset-vector",
            &dev.none(TRIG, MSIX, n as u32, 1),
            OK,
        );
    }
    ck.errno("msix-mask-enabled", &dev.none(MASK, MSIX, 0, 1), ENOTTY);
    ck.errno("msix-unmask-enabled", &dev.none(UNMASK, MSIX, 0, 1), ENOTTY);
    ck.errno(
        "msix-then-intx",
        &dev.fds(TRIG, INTX, 0, &[f.raw()]),
        EINVAL,
    );
    ck.errno("msix-then-msi", &dev.fds(TRIG, MSI, 0, &[f.raw()]), EINVAL);
    ck.errno("msix-then-msi-disable", &dev.none(TRIG, MSI, 0, 0), EINVAL);

    // One vector: replace, unset, set again.
    ck.errno("msix-replace-one", &dev.fds(TRIG, MSIX, 1, &[f.raw()]), OK);
    let mut all: Vec<&Efd> = e.clone();
    all.push(f);
    let only_f: Vec<bool> = (0..=n).map(|i| i == n).collect();
    let _ = dev.none(TRIG, MSIX, 1, 1);
    ck.fires("msix-replaced-loopback", &all, &only_f);
    if igb {
        fire_vec(1);
        ck.fires("igb-msix-replaced-fires", &all, &only_f);
    }
    ck.errno("msix-unset-one", &dev.fds(TRIG, MSIX, 1, &[-1]), OK);
    let _ = dev.none(TRIG, MSIX, 1, 1);
    ck.fires("msix-unset-loopback-quiet", &all, &vec![false; n + 1]);
    if igb {
        fire_vec(1);
        ck.fires("igb-msix-unset-quiet", &all, &vec![false; n + 1]);
        fire_vec(2);
        let mut w = vec![false; n + 1];
        w[2] = true;
        ck.fires("igb-msix-others-still-fire", &all, &w);
    }
    ck.errno(
        "msix-set-one-again",
        &dev.fds(TRIG, MSIX, 1, &[e[1].raw()]),
        OK,
    );
    if igb {
        // The message sent while the vector was masked (no handler) is pending in the PBA
        // and delivered when the vector is unmasked again.
        ck.fires("igb-msix-pending-delivered", &e, &only(1));
        fire_vec(1);
        ck.fires("igb-msix-set-again-fires", &e, &only(1));
    }
    let _ = dev.none(TRIG, MSIX, 1, 1);
    ck.fires("msix-set-again-loopback", &e, &only(1));

    // A vector past the ones enabled: dynamic allocation (no NORESIZE) adds it.
    if exp.msix() as usize > n {
        let want = if exp.info_flags(MSIX) & uapi::VFIO_IRQ_INFO_NORESIZE == 0 {
            OK
        } else {
            EINVAL
        };
        ck.errno(
            "msix-grow",
            &dev.fds(TRIG, MSIX, n as u32, &[g.raw()]),
            want,
        );
        let _ = dev.none(TRIG, MSIX, n as u32, 1);
        ck.fire1("msix-grow-loopback", g, want.is_none());
        if igb {
            fire_vec(n);
            ck.fire1("igb-msix-grown-vector-fires", g, want.is_none());
        }
        ck.errno("msix-grow-unset", &dev.fds(TRIG, MSIX, n as u32, &[-1]), OK);
    }

    // A bad fd in a block: C unsets every vector of the block up to the bad one.
    ck.errno(
        "msix-block-bad-fd",
        &dev.fds(TRIG, MSIX, 0, &[e[0].raw(), devnull]),
        EINVAL,
    );
    let _ = dev.none(TRIG, MSIX, 0, n as u32);
    let w: Vec<bool> = (0..n).map(|i| i >= 2).collect();
    ck.fires("msix-block-bad-fd-rolls-back", &e, &w);
    ck.errno("msix-block-reset", &dev.fds(TRIG, MSIX, 0, &raws), OK);
    if igb {
        // The rolled-back vectors were masked: drop whatever they still deliver.
        std::thread::sleep(QUIET);
        for x in &e {
            x.drain();
        }
        dev.w32(0, IGB_EIMC, 0xffff_ffff);
        dev.w32(0, IGB_EICR, 0xffff_ffff);
    }
    ck.errno("msix-disable", &dev.none(TRIG, MSIX, 0, 0), OK);
    ck.errno("msix-disable-again", &dev.none(TRIG, MSIX, 0, 0), EINVAL);
    ck.errno(
        "msix-loopback-disabled",
        &dev.none(TRIG, MSIX, 0, 1),
        EINVAL,
    );
    ck.fires("msix-disabled-quiet", &e, &vec![false; n]);
    // Enabling a single vector in the middle (start > 0) from nothing.
    ck.errno(
        "msix-enable-start2",
        &dev.fds(TRIG, MSIX, 2, &[e[2].raw()]),
        OK,
    );
    let _ = dev.none(TRIG, MSIX, 0, n as u32);
    ck.fires("msix-enable-start2-loopback", &e, &only(2));
    ck.errno("msix-disable-last", &dev.none(TRIG, MSIX, 0, 0), OK);
    if igb {
        dev.w32(0, IGB_GPIE, 0);
    }
}

// ------------------------------------------------------------------------------------------
// Close with everything live, reopen
// ------------------------------------------------------------------------------------------

fn sec_close(ck: &mut Ck, bdf: &str, exp: &Expect) {
    let efds: Vec<Efd> = (0..3).filter_map(|_| Efd::new().ok()).collect();
    if efds.len() != 3 {
        ck.check("close-eventfd", Err("eventfd failed".into()));
        return;
    }
    let (t, x, r) = (&efds[0], &efds[1], &efds[2]);
    // The richest interrupt the device has.
    let index = if exp.msix() > 0 {
        Some(MSIX)
    } else if exp.msi() > 0 {
        Some(MSI)
    } else if exp.intx() > 0 {
        Some(INTX)
    } else {
        None
    };
    let setup = open(bdf).and_then(|gd| {
        let dev = D(&gd.device);
        enable_master(&dev)?;
        if let Some(i) = index {
            dev.fds(TRIG, i, 0, &[t.raw()])
                .map_err(|e| format!("enable {}: {}", INDEX_NAMES[i as usize], err_name(&e)))?;
        }
        dev.fds(TRIG, ERR, 0, &[x.raw()])
            .map_err(|e| format!("ERR eventfd: {}", err_name(&e)))?;
        dev.fds(TRIG, REQ, 0, &[r.raw()])
            .map_err(|e| format!("REQ eventfd: {}", err_name(&e)))?;
        Ok(gd)
    });
    let v = setup
        .as_ref()
        .map(|_| "ok".to_string())
        .unwrap_or_else(|e| e.clone());
    ck.both(
        "close-setup",
        v,
        setup.as_ref().map(|_| ()).map_err(|e| e.clone()),
    );
    // Close the device with everything live.
    drop(setup);
    ck.fires("close-no-signal", &[t, x, r], &[false, false, false]);
    let gd = match open(bdf) {
        Ok(gd) => gd,
        Err(e) => {
            ck.check("close-reopen", Err(e));
            return;
        }
    };
    ck.check("close-reopen", Ok(()));
    let dev = D(&gd.device);
    ck.errno("close-released-err", &dev.none(TRIG, ERR, 0, 1), EINVAL);
    ck.errno("close-released-req", &dev.none(TRIG, REQ, 0, 1), EINVAL);
    if let Some(i) = index {
        let n = INDEX_NAMES[i as usize];
        ck.errno(
            &format!("close-released-{n}-loopback"),
            &dev.none(TRIG, i, 0, 1),
            EINVAL,
        );
        ck.errno(
            &format!("close-reenable-{n}"),
            &dev.fds(TRIG, i, 0, &[t.raw()]),
            OK,
        );
        ck.errno(
            &format!("close-reenabled-{n}-disable"),
            &dev.none(TRIG, i, 0, 0),
            OK,
        );
    }
    if exp.kind == Kind::Edu {
        // After MSI was torn down by the close, the device is back on INTx.
        let _ = enable_master(&dev);
        edu_ack(&dev);
        ck.errno(
            "edu-close-intx-enable",
            &dev.fds(TRIG, INTX, 0, &[t.raw()]),
            OK,
        );
        edu_raise(&dev, 1);
        ck.fire1("edu-close-intx-fires", t, true);
        edu_ack(&dev);
    }
    dev.reset_irqs();
    drop(gd);
}

// ------------------------------------------------------------------------------------------
// REQ: unbind while open
// ------------------------------------------------------------------------------------------

fn sec_req_unbind(ck: &mut Ck, bdf: &str, driver: Driver) {
    let r = match Efd::new() {
        Ok(r) => r,
        Err(e) => {
            ck.check("req-unbind-eventfd", Err(err_name(&e)));
            return;
        }
    };
    let gd = match open(bdf) {
        Ok(gd) => gd,
        Err(e) => {
            ck.check("req-unbind-open", Err(e));
            return;
        }
    };
    ck.check("req-unbind-open", Ok(()));
    let dev = D(&gd.device);
    ck.errno("req-unbind-set", &dev.fds(TRIG, REQ, 0, &[r.raw()]), OK);
    let (tx, rx) = mpsc::channel();
    let unbind = sysfs::device_dir(bdf).join("driver/unbind");
    let name = bdf.to_string();
    std::thread::spawn(move || {
        let res = sysfs::write_attr(&unbind, &name).map_err(|e| err_name(&e));
        let _ = tx.send(res);
    });
    // vfio_unregister_group_dev() calls the driver's request op at once, then every 10 s.
    let got = r.wait(FIRE * 2);
    ck.both(
        "req-unbind-signals",
        if got > 0 { "fired" } else { "quiet" },
        if got > 0 {
            Ok(())
        } else {
            Err(format!(
                "no REQ signal within {} s of the unbind",
                (FIRE * 2).as_secs()
            ))
        },
    );
    let early = rx.try_recv();
    ck.both(
        "req-unbind-waits-for-close",
        match &early {
            Err(_) => "waiting".to_string(),
            Ok(r) => format!("returned {r:?}"),
        },
        match &early {
            Err(mpsc::TryRecvError::Empty) => Ok(()),
            other => Err(format!("unbind returned with the device open: {other:?}")),
        },
    );
    drop(gd);
    let done = match early {
        Ok(r) => Ok(r),
        Err(_) => rx.recv_timeout(Duration::from_secs(30)),
    };
    let v = match &done {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => e.clone(),
        Err(_) => "timeout".to_string(),
    };
    let unbound = matches!(sysfs::current_driver(bdf), Ok(None));
    ck.both(
        "req-unbind-completes",
        v.clone(),
        if matches!(done, Ok(Ok(()))) && unbound {
            Ok(())
        } else {
            Err(format!(
                "unbind after the close: {v}, device {}",
                if unbound { "unbound" } else { "still bound" }
            ))
        },
    );
    let rebind = sysfs::bind(bdf, &driver.pci_name());
    ck.check("req-rebind", rebind.clone());
    let again = open(bdf).and_then(|gd| {
        let (r, info) = irq_info(&D(&gd.device), size_u32::<uapi::VfioIrqInfo>(), REQ);
        r.map_err(|e| err_name(&e))?;
        if info.count != 1 {
            return Err(format!("REQ count {}", info.count));
        }
        Ok(())
    });
    ck.check("req-rebind-reopen", again);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_with(caps: &[(u8, &[u8])], pin: u8) -> Vec<u8> {
        let mut cfg = vec![0u8; 256];
        cfg[0x06] = 0x10;
        cfg[0x3d] = pin;
        let mut off = 0x40;
        cfg[0x34] = off as u8;
        for (i, (id, body)) in caps.iter().enumerate() {
            cfg[off] = *id;
            let next = if i + 1 < caps.len() { off + 0x10 } else { 0 };
            cfg[off + 1] = next as u8;
            cfg[off + 2..off + 2 + body.len()].copy_from_slice(body);
            off += 0x10;
        }
        cfg
    }

    #[test]
    fn expectations_from_config() {
        // edu: pin A, MSI with MMC 0 (1 vector), 64-bit.
        let cfg = cfg_with(&[(PCI_CAP_ID_MSI, &[0x80, 0x00])], 1);
        let e = Expect::new(&cfg, &std_caps(&cfg), 11, 0x1234, 0x11e8);
        assert_eq!(e.counts, [1, 1, 0, 1, 1]);
        assert_eq!(e.kind, Kind::Edu);
        assert_eq!(e.info_flags(INTX), 0x7);
        assert_eq!(e.info_flags(MSI), 0x9);
        assert_eq!(e.info_flags(MSIX), 0x9);
        assert_eq!(e.info_flags(ERR), 0x9);
        // No IRQ line routed: no INTx.
        let e = Expect::new(&cfg, &std_caps(&cfg), 0, 0x1234, 0x11e8);
        assert_eq!(e.intx(), 0);
        // igb-like: MSI with MMC 3 (8 vectors), MSI-X table size 10 (QSIZE 9).
        let cfg = cfg_with(
            &[
                (PCI_CAP_ID_MSI, &[0x06, 0x00]),
                (PCI_CAP_ID_MSIX, &[0x09, 0x00]),
            ],
            1,
        );
        let e = Expect::new(&cfg, &std_caps(&cfg), 10, 0x8086, 0x10c9);
        assert_eq!(e.counts, [1, 8, 10, 1, 1]);
        assert_eq!(e.kind, Kind::Igb);
        assert_eq!(e.info_flags(MSIX), 0x1);
        // Nothing at all.
        let cfg = cfg_with(&[], 0);
        let e = Expect::new(&cfg, &std_caps(&cfg), 0, 0x1b36, 5);
        assert_eq!(e.counts, [0, 0, 0, 1, 1]);
        assert_eq!(e.kind, Kind::Other);
    }

    #[test]
    fn aer_inject_struct() {
        let b = aer_inj_bytes("0000:07:00.0", PCI_ERR_UNC_COMP_TIME).unwrap();
        assert_eq!(b.len(), 32);
        assert_eq!(&b[..4], &[7, 0, 0, 0]);
        assert_eq!(u32::from_ne_bytes([b[4], b[5], b[6], b[7]]), 0x4000);
        assert_eq!(&b[8..32], &[0u8; 24]);
        let b = aer_inj_bytes("0001:0c:02.1", 1).unwrap();
        assert_eq!(&b[..3], &[0x0c, 2, 1]);
        assert_eq!(&b[28..32], &1u32.to_ne_bytes());
        assert!(aer_inj_bytes("zz", 1).is_none());
    }

    #[test]
    fn eventfd_wait_and_signal() {
        let e = Efd::new().unwrap();
        assert_eq!(e.drain(), 0);
        e.signal().unwrap();
        e.signal().unwrap();
        assert_eq!(e.wait(Duration::from_millis(10)), 2);
        assert_eq!(e.wait(Duration::from_millis(10)), 0);
    }

    #[test]
    fn fire_checks_report_patterns() {
        let mut rep = Reporter::collect();
        let mut ck = Ck {
            rep: &mut rep,
            subject: "edu vfio-pci".into(),
            tr: Vec::new(),
        };
        let (a, b) = (Efd::new().unwrap(), Efd::new().unwrap());
        a.signal().unwrap();
        ck.fires("x", &[&a, &b], &[true, false]);
        b.signal().unwrap();
        ck.fires("y", &[&a, &b], &[true, false]);
        ck.errno(
            "z",
            &Err(io::Error::from_raw_os_error(libc::ENOTTY)),
            EINVAL,
        );
        let tr = ck.tr.clone();
        assert_eq!(
            tr,
            [
                ("irq-x".to_string(), "0:fired 1:quiet".to_string()),
                ("irq-y".to_string(), "0:quiet 1:fired".to_string()),
                ("irq-z".to_string(), "ENOTTY".to_string()),
            ]
        );
        assert_eq!(rep.summary(), "1 passed, 2 failed");
        assert_eq!(
            rep.lines()[1],
            "FAIL edu vfio-pci irq-y: expected 0:fired 1:quiet got 0:quiet 1:fired"
        );
        assert_eq!(
            rep.lines()[2],
            "FAIL edu vfio-pci irq-z: expected EINVAL (as vfio-pci) got ENOTTY"
        );
    }
}
