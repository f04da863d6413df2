//! `vfio-test dev-regions BDF EXPECT`: the device-specific regions of a device bound to
//! either driver: the regions past the fixed `VFIO_PCI_NUM_REGIONS` (9) that C's
//! `vfio_pci_core_register_dev_region()` adds (`vfio_pci_core.c`).
//!
//! - EXPECT `none`: GET_INFO reports 9 regions and index 9 is refused by GET_REGION_INFO,
//!   read, write and mmap (EINVAL), as vfio-pci does on any function but an Intel display.
//! - EXPECT `igd-bridges`: the two regions C's `vfio_pci_igd_cfg_init()` registers for an
//!   Intel display function: index 9 the config space of the host bridge 0000:00:00.0, index
//!   10 that of the LPC bridge 0000:00:1f.0, each read-only (`vfio_pci_igd_cfg_rw()`) with a
//!   `VFIO_REGION_INFO_CAP_TYPE` capability (Intel vendor type, subtype HOST_CFG / LPC_CFG);
//!   index 11 is refused. The expected bytes are the bridge's sysfs `config` file, which root
//!   reads through the same `pci_user_read_config_*()` as C.
//!
//! Each check is a `PASS|FAIL dev-regions <driver> <check>` line saying what was expected and
//! what came back; the run ends with `N passed, N failed` (exit 1 if any failed).

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use crate::access::{rd, wr};
use crate::checks::{get_info, hex, open_via_group, Quiet, Steps, GROUP_CHECKS};
use crate::report::{Reporter, Stop};
use crate::sys::{self, err_name, InfoBuf};
use crate::sysfs;
use crate::uapi::{self, region_offset, VFIO_PCI_NUM_REGIONS};

/// What the device is expected to offer past index 8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// No device-specific region.
    None,
    /// C's two IGD bridge regions, at indexes 9 and 10.
    IgdBridges,
}

impl Expect {
    pub fn parse(s: &str) -> Result<Expect, String> {
        match s {
            "none" => Ok(Expect::None),
            "igd-bridges" => Ok(Expect::IgdBridges),
            _ => Err(format!(
                "unknown expectation {s:?} (expected none or igd-bridges)"
            )),
        }
    }

    /// The device-specific regions expected, in index order from `VFIO_PCI_NUM_REGIONS`.
    fn bridges(self) -> &'static [Bridge] {
        match self {
            Expect::None => &[],
            Expect::IgdBridges => &BRIDGES,
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expect::None => "none",
            Expect::IgdBridges => "igd-bridges",
        })
    }
}

/// A bridge whose config space C's IGD support exposes as a read-only region.
pub struct Bridge {
    /// `pci_get_domain_bus_and_slot(0, 0, devfn)`.
    pub bdf: &'static str,
    pub what: &'static str,
    pub subtype: u32,
    /// The class code C requires (`pdev->class`, as the sysfs `class` file shows it), or it
    /// registers nothing.
    pub class: u32,
}

/// `vfio_pci_igd_cfg_init()`'s two regions, in registration (= index) order.
pub const BRIDGES: [Bridge; 2] = [
    Bridge {
        bdf: "0000:00:00.0",
        what: "host bridge",
        subtype: uapi::VFIO_REGION_SUBTYPE_INTEL_IGD_HOST_CFG,
        class: 0x06_00_00, // PCI_CLASS_BRIDGE_HOST << 8
    },
    Bridge {
        bdf: "0000:00:1f.0",
        what: "LPC bridge",
        subtype: uapi::VFIO_REGION_SUBTYPE_INTEL_IGD_LPC_CFG,
        class: 0x06_01_00, // PCI_CLASS_BRIDGE_ISA << 8
    },
];

/// The `type` of C's IGD regions: Intel vendor type.
pub const IGD_REGION_TYPE: u32 =
    uapi::VFIO_REGION_TYPE_PCI_VENDOR_TYPE | uapi::PCI_VENDOR_ID_INTEL as u32;

/// `sizeof(struct vfio_region_info)`: the fixed part, where the capability chain begins.
const FIXED: usize = uapi::VFIO_REGION_INFO_MINSZ as usize;
/// The `argsz` an IGD region's info needs: the fixed part and one TYPE capability.
const NEEDED: u32 = uapi::VFIO_REGION_INFO_MINSZ + uapi::size_u32::<uapi::VfioRegionInfoCapType>();
/// The buffer of every GET_REGION_INFO here: bytes past what the kernel may write are
/// checked untouched.
const QUERY_BUF: u32 = 256;
/// What the query buffer holds before the call (past argsz and index, and in the output
/// fields, so a field the kernel must write but does not shows).
const FILL: u32 = 0xa5a5_a5a5;
const PAGE: usize = 4096;

/// The opening steps of [`open_via_group`]: the first checks of the group path.
const OPEN_STEPS: &[&str] = GROUP_CHECKS.split_at(8).0;

/// The checks of one IGD bridge region, each suffixed with `[index]`.
const REGION_CHECKS: &[&str] = &[
    "bridge-sysfs",
    "region-info",
    "region-info-argsz40",
    "region-info-caps",
    "region-info-argsz-big",
    "read-whole",
    "read-w1",
    "read-w2",
    "read-w3",
    "read-w4",
    "read-w7",
    "read-w8",
    "read-256",
    "read-short",
    "read-past-end",
    "write",
    "mmap",
];

/// The checks of the first index past the device's regions, suffixed with `[index]`.
const ABSENT_CHECKS: &[&str] = &["region-info", "read", "write", "mmap"];

/// Read widths of the `read-wN` checks.
const WIDTHS: [usize; 6] = [1, 2, 3, 4, 7, 8];

/// Every check `expect` reports, in report order (a failed step reports the rest skipped).
pub fn check_names(expect: Expect) -> Vec<String> {
    let mut v: Vec<String> = OPEN_STEPS.iter().map(|s| s.to_string()).collect();
    v.push("get-info".into());
    v.push("num-regions".into());
    let n = expect.bridges().len() as u32;
    for index in VFIO_PCI_NUM_REGIONS..VFIO_PCI_NUM_REGIONS + n {
        v.extend(REGION_CHECKS.iter().map(|c| format!("{c}[{index}]")));
    }
    let past = VFIO_PCI_NUM_REGIONS + n;
    v.extend(ABSENT_CHECKS.iter().map(|c| format!("{c}[{past}]")));
    v.push("reopen".into());
    v
}

// ------------------------------------------------------------------------------------------
// Reporting
// ------------------------------------------------------------------------------------------

/// The checks of one run: like `report::Phase`, with names built at run time (they carry the
/// region index); a failed step reports every check not reached as a skipped failure.
struct Checks<'a> {
    rep: &'a mut Reporter,
    subject: String,
    names: Vec<String>,
    done: Vec<String>,
}

impl Checks<'_> {
    fn check(&mut self, name: &str, r: Result<(), String>) {
        debug_assert!(
            self.names.iter().any(|n| n == name),
            "check {name} not declared"
        );
        debug_assert!(
            !self.done.iter().any(|n| n == name),
            "check {name} reported twice"
        );
        self.done.push(name.to_string());
        match r {
            Ok(()) => self.rep.pass(&self.subject, name),
            Err(d) => self.rep.fail(&self.subject, name, &d),
        }
    }

    fn note(&mut self, text: &str) {
        let line = format!("{} {text}", self.subject);
        self.rep.note(&line);
    }

    fn skip_rest(&mut self, why: &str) {
        let rest: Vec<String> = self
            .names
            .iter()
            .filter(|n| !self.done.contains(n))
            .cloned()
            .collect();
        for n in rest {
            self.check(&n, Err(format!("skipped: {why}")));
        }
    }
}

impl Steps for Checks<'_> {
    fn step<T>(&mut self, name: &'static str, r: Result<T, String>) -> Result<T, Stop> {
        match r {
            Ok(v) => {
                self.check(name, Ok(()));
                Ok(v)
            }
            Err(d) => {
                self.check(name, Err(d));
                Err(Stop { step: name })
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// GET_REGION_INFO replies and their capability chain (pure)
// ------------------------------------------------------------------------------------------

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off + 4)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from(u32_at(b, off)?) | (u64::from(u32_at(b, off + 4)?) << 32))
}

/// The fixed part of a `struct vfio_region_info` as the kernel left it.
pub type Reply = uapi::VfioRegionInfo;

/// Reads the fixed part of a `struct vfio_region_info` from a query buffer.
pub fn parse_reply(b: &[u8]) -> Option<Reply> {
    Some(Reply {
        argsz: u32_at(b, 0)?,
        flags: u32_at(b, 4)?,
        index: u32_at(b, 8)?,
        cap_offset: u32_at(b, 12)?,
        size: u64_at(b, 16)?,
        offset: u64_at(b, 24)?,
    })
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "argsz={} flags={} index={} cap_offset={} size=0x{:x} offset=0x{:x}",
            self.argsz,
            uapi::region_flags_str(self.flags),
            self.index,
            self.cap_offset,
            self.size,
            self.offset
        )
    }
}

/// One capability of an INFO chain: its offset in the buffer and its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    pub at: usize,
    pub header: uapi::VfioInfoCapHeader,
}

/// Walk the capability chain of an INFO reply from `first` (the `cap_offset`): `buf` is what
/// the kernel may have written (the first `argsz` bytes), `fixed` the size of the fixed part.
/// Every capability must lie after the fixed part, 8-byte aligned (`vfio_info_cap_add()`
/// aligns them), inside `buf`, each `next` further on; 0 ends the chain.
pub fn parse_chain(buf: &[u8], first: u32, fixed: usize) -> Result<Vec<Cap>, String> {
    let mut caps = Vec::new();
    let mut at = first as usize;
    while at != 0 {
        if caps.len() == 16 {
            return Err("more than 16 capabilities (a loop?)".into());
        }
        if at < fixed {
            return Err(format!(
                "capability at {at} inside the fixed part (< {fixed})"
            ));
        }
        if !at.is_multiple_of(8) {
            return Err(format!("capability at {at} not 8-byte aligned"));
        }
        let Some(h) = buf.get(at..at + 8) else {
            return Err(format!("capability at {at} runs past argsz {}", buf.len()));
        };
        let header = uapi::VfioInfoCapHeader {
            id: u16::from_ne_bytes([h[0], h[1]]),
            version: u16::from_ne_bytes([h[2], h[3]]),
            next: u32::from_ne_bytes([h[4], h[5], h[6], h[7]]),
        };
        let next = header.next;
        caps.push(Cap { at, header });
        if next != 0 && next as usize <= at {
            return Err(format!("capability at {at} points back to {next}"));
        }
        at = next as usize;
    }
    Ok(caps)
}

/// The `VFIO_REGION_INFO_CAP_TYPE` capability `cap` of `buf`, whole.
pub fn cap_type(buf: &[u8], cap: &Cap) -> Result<uapi::VfioRegionInfoCapType, String> {
    if cap.header.id != uapi::VFIO_REGION_INFO_CAP_TYPE {
        return Err(format!(
            "capability at {} has id {} (TYPE is {})",
            cap.at,
            cap.header.id,
            uapi::VFIO_REGION_INFO_CAP_TYPE
        ));
    }
    let (Some(ty), Some(subtype)) = (u32_at(buf, cap.at + 8), u32_at(buf, cap.at + 12)) else {
        return Err(format!(
            "TYPE capability at {} runs past argsz {}",
            cap.at,
            buf.len()
        ));
    };
    Ok(uapi::VfioRegionInfoCapType {
        header: cap.header,
        r#type: ty,
        subtype,
    })
}

/// `0x80008086 (PCI vendor 8086) subtype 2 (IGD_HOST_CFG)`.
pub fn type_str(ty: u32, subtype: u32) -> String {
    let t = if ty & uapi::VFIO_REGION_TYPE_PCI_VENDOR_TYPE != 0 {
        format!(
            "0x{ty:x} (PCI vendor {:04x})",
            ty & uapi::VFIO_REGION_TYPE_PCI_VENDOR_MASK
        )
    } else {
        format!("0x{ty:x}")
    };
    let s = match (ty == IGD_REGION_TYPE, subtype) {
        (true, uapi::VFIO_REGION_SUBTYPE_INTEL_IGD_OPREGION) => " (IGD_OPREGION)",
        (true, uapi::VFIO_REGION_SUBTYPE_INTEL_IGD_HOST_CFG) => " (IGD_HOST_CFG)",
        (true, uapi::VFIO_REGION_SUBTYPE_INTEL_IGD_LPC_CFG) => " (IGD_LPC_CFG)",
        _ => "",
    };
    format!("{t} subtype {subtype}{s}")
}

/// What C answers to GET_REGION_INFO of an IGD bridge region (`index`, `size` bytes,
/// `subtype`) called with `argsz`, given the reply buffer `buf` (`QUERY_BUF` bytes, filled
/// with `FILL` before the call): `Ok` or every difference.
///
/// C (`vfio_get_region_info()`): flags READ|CAPS; with `argsz` < 48 the fixed part only,
/// `argsz` raised to 48 and `cap_offset` 0; otherwise `argsz` kept, `cap_offset` 32 and one
/// TYPE capability (id 2, version 1, next 0) at 32. Nothing written past that.
pub fn igd_info_verdict(
    buf: &[u8],
    argsz: u32,
    index: u32,
    size: u64,
    subtype: u32,
) -> Result<(), String> {
    let Some(r) = parse_reply(buf) else {
        return Err(format!("reply of {} bytes", buf.len()));
    };
    let chain_fits = argsz >= NEEDED;
    let (want_argsz, want_cap) = if chain_fits {
        (argsz, FIXED as u32)
    } else {
        (NEEDED, 0)
    };
    let want_flags = uapi::VFIO_REGION_INFO_FLAG_READ | uapi::VFIO_REGION_INFO_FLAG_CAPS;
    let mut bad = Vec::new();
    let mut field = |name: &str, got: String, want: String| {
        if got != want {
            bad.push(format!("{name} {got} (expected {want})"));
        }
    };
    field("argsz", r.argsz.to_string(), want_argsz.to_string());
    field(
        "flags",
        uapi::region_flags_str(r.flags),
        uapi::region_flags_str(want_flags),
    );
    field("index", r.index.to_string(), index.to_string());
    field("cap_offset", r.cap_offset.to_string(), want_cap.to_string());
    field("size", format!("0x{:x}", r.size), format!("0x{size:x}"));
    field(
        "offset",
        format!("0x{:x}", r.offset),
        format!("0x{:x}", region_offset(index, 0)),
    );
    let written = if chain_fits { NEEDED } else { FIXED as u32 } as usize;
    if chain_fits {
        let within = &buf[..(argsz as usize).min(buf.len())];
        match parse_chain(within, r.cap_offset, FIXED) {
            Err(e) => bad.push(format!("chain: {e}")),
            Ok(caps) => {
                let want_header = uapi::VfioInfoCapHeader {
                    id: uapi::VFIO_REGION_INFO_CAP_TYPE,
                    version: 1,
                    next: 0,
                };
                match caps.as_slice() {
                    [c] if c.at == FIXED && c.header == want_header => match cap_type(within, c) {
                        Ok(t) if t.r#type == IGD_REGION_TYPE && t.subtype == subtype => {}
                        Ok(t) => bad.push(format!(
                            "TYPE capability {} (expected {})",
                            type_str(t.r#type, t.subtype),
                            type_str(IGD_REGION_TYPE, subtype)
                        )),
                        Err(e) => bad.push(e),
                    },
                    _ => bad.push(format!(
                        "capabilities {} (expected one TYPE v1 at {FIXED} with next 0)",
                        caps_str(&caps)
                    )),
                }
            }
        }
    }
    let touched: Vec<String> = buf
        .iter()
        .enumerate()
        .skip(written)
        .filter(|(i, b)| **b != FILL.to_ne_bytes()[i % 4])
        .map(|(i, _)| format!("{i}"))
        .take(8)
        .collect();
    if !touched.is_empty() {
        bad.push(format!(
            "bytes written past {written}: offsets {}",
            touched.join(",")
        ));
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "argsz {argsz}: {}; got {r}, chain {}",
            bad.join(", "),
            hex(&buf[FIXED..written.max(NEEDED as usize).min(buf.len())])
        ))
    }
}

fn caps_str(caps: &[Cap]) -> String {
    if caps.is_empty() {
        return "none".into();
    }
    let v: Vec<String> = caps
        .iter()
        .map(|c| {
            format!(
                "id {} v{} at {} next {}",
                c.header.id, c.header.version, c.at, c.header.next
            )
        })
        .collect();
    v.join("; ")
}

// ------------------------------------------------------------------------------------------
// Reads (pure parts)
// ------------------------------------------------------------------------------------------

/// The offsets of the `read-wN` checks of a region of `size` bytes: every offset (all
/// alignments) in the first 256 bytes, then every multiple of `width`, as long as the whole
/// read fits.
pub fn width_offsets(size: usize, width: usize) -> Vec<usize> {
    if width == 0 || width > size {
        return Vec::new();
    }
    (0..=size - width)
        .filter(|&o| o < 256 || o % width == 0)
        .collect()
}

/// What C's `vfio_pci_igd_cfg_rw()` answers to a read of `len` bytes at `pos` of a region
/// holding `truth`: the bytes (short at the end), or `None` for EINVAL (`pos` >= size).
pub fn expected_read(truth: &[u8], pos: u64, len: usize) -> Option<&[u8]> {
    let size = truth.len() as u64;
    if pos >= size {
        return None;
    }
    let start = pos as usize;
    let end = start + len.min(truth.len() - start);
    Some(&truth[start..end])
}

/// The first differing offsets of two byte strings, `0x10: want/got`, and any length
/// difference.
pub fn diff(want: &[u8], got: &[u8], base: u64) -> String {
    let mut out: Vec<String> = want
        .iter()
        .zip(got)
        .enumerate()
        .filter(|(_, (w, g))| w != g)
        .take(8)
        .map(|(i, (w, g))| format!("0x{:x}: {w:02x}/{g:02x}", base + i as u64))
        .collect();
    if want.len() != got.len() {
        out.push(format!("{} bytes (expected {})", got.len(), want.len()));
    }
    out.join(", ")
}

// ------------------------------------------------------------------------------------------
// Device access
// ------------------------------------------------------------------------------------------

/// GET_REGION_INFO of `index` with `argsz`, in a `QUERY_BUF`-byte buffer filled with `FILL`:
/// the whole buffer afterwards.
fn query(dev: &File, index: u32, argsz: u32) -> io::Result<Vec<u8>> {
    let mut buf = InfoBuf::new(QUERY_BUF);
    for off in (0..QUERY_BUF as usize).step_by(4) {
        buf.set_u32(off, FILL);
    }
    buf.set_u32(0, argsz);
    buf.set_u32(8, index);
    sys::ioctl_info_buf::<uapi::DeviceGetRegionInfo>(dev, &mut buf)?;
    Ok(buf.bytes())
}

/// mmap(2) one page of the device fd at `off`, `MAP_SHARED` with `prot`, unmapped at once if
/// it succeeds: the address it got.
fn try_mmap(dev: &File, prot: i32, off: u64) -> io::Result<u64> {
    // SAFETY: a new mapping where the kernel chooses (no MAP_FIXED), so nothing existing is
    // replaced; it is never accessed.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            prot,
            libc::MAP_SHARED,
            dev.as_raw_fd(),
            off as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `p` is the page-long mapping made above, referenced by nothing.
    unsafe { libc::munmap(p, PAGE) };
    Ok(p as u64)
}

/// `Ok` for EINVAL, else what came back instead.
fn want_einval<T>(
    what: &str,
    r: io::Result<T>,
    show: impl FnOnce(T) -> String,
) -> Result<(), String> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        Err(e) => Err(format!(
            "{what}: expected EINVAL (as vfio-pci) got {}",
            err_name(&e)
        )),
        Ok(v) => Err(format!(
            "{what}: expected EINVAL (as vfio-pci) got success ({})",
            show(v)
        )),
    }
}

/// A read of `len` bytes at `pos` of region `index`, against [`expected_read`].
fn read_verdict(dev: &File, index: u32, truth: &[u8], pos: u64, len: usize) -> Result<(), String> {
    let what = format!("pread {len} at 0x{pos:x}");
    let r = rd(dev, index, pos, len);
    match expected_read(truth, pos, len) {
        None => want_einval(&what, r, |b| format!("{} bytes", b.len())),
        Some(want) => match r {
            Ok(got) if got == want => Ok(()),
            Ok(got) => Err(format!("{what}: {} (expected/got)", diff(want, &got, pos))),
            Err(e) => Err(format!(
                "{what}: expected {} bytes got {}",
                want.len(),
                err_name(&e)
            )),
        },
    }
}

/// Several reads: `Ok`, or how many failed and the first few.
fn reads_verdict(
    dev: &File,
    index: u32,
    truth: &[u8],
    reads: impl IntoIterator<Item = (u64, usize)>,
) -> Result<(), String> {
    let mut n = 0;
    let mut failed = Vec::new();
    for (pos, len) in reads {
        n += 1;
        if let Err(e) = read_verdict(dev, index, truth, pos, len) {
            failed.push(e);
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    let count = failed.len();
    failed.truncate(4);
    Err(format!("{count} of {n} reads wrong: {}", failed.join("; ")))
}

/// The sysfs `config` of `b`, checked to be a bridge C accepts (Intel, the class it requires)
/// and a config space size.
fn bridge_config(b: &Bridge) -> Result<Vec<u8>, String> {
    let path = sysfs::device_dir(b.bdf).join("config");
    let cfg = fs::read(&path).map_err(|e| format!("read {}: {}", path.display(), err_name(&e)))?;
    let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if cfg.len() as u64 != len || !(cfg.len() == 256 || cfg.len() == 4096) {
        return Err(format!(
            "{}: read {} bytes, file size {len} (expected 256 or 4096, the whole config space: run as root)",
            path.display(),
            cfg.len()
        ));
    }
    let vendor = u16::from_le_bytes([cfg[0], cfg[1]]);
    let class = u32::from_le_bytes([cfg[9], cfg[10], cfg[11], 0]);
    if vendor != uapi::PCI_VENDOR_ID_INTEL || class != b.class {
        return Err(format!(
            "{} {}: vendor {vendor:04x} class {class:06x}, not the Intel {:06x} C's vfio_pci_igd_cfg_init() requires",
            b.what, b.bdf, b.class
        ));
    }
    Ok(cfg)
}

// ------------------------------------------------------------------------------------------
// The checks
// ------------------------------------------------------------------------------------------

/// The checks of one IGD bridge region at `index`.
fn bridge_checks(ck: &mut Checks, dev: &File, index: u32, b: &Bridge) {
    let name = |c: &str| format!("{c}[{index}]");
    let truth = match bridge_config(b) {
        Ok(t) => t,
        Err(e) => {
            ck.check(&name("bridge-sysfs"), Err(e));
            for c in &REGION_CHECKS[1..] {
                ck.check(&name(c), Err("skipped: bridge-sysfs failed".into()));
            }
            return;
        }
    };
    ck.check(&name("bridge-sysfs"), Ok(()));
    ck.note(&format!(
        "region {index}: {} {} ({:04x}:{:04x}), {} bytes of config space",
        b.what,
        b.bdf,
        u16::from_le_bytes([truth[0], truth[1]]),
        u16::from_le_bytes([truth[2], truth[3]]),
        truth.len()
    ));
    let size = truth.len() as u64;

    for (check, argsz) in [
        ("region-info", uapi::VFIO_REGION_INFO_MINSZ),
        ("region-info-argsz40", 40),
        ("region-info-caps", NEEDED),
        ("region-info-argsz-big", QUERY_BUF),
    ] {
        let v = match query(dev, index, argsz) {
            Ok(buf) => {
                if argsz == NEEDED {
                    if let Some(r) = parse_reply(&buf) {
                        let chain = parse_chain(&buf[..NEEDED as usize], r.cap_offset, FIXED);
                        let ty = chain
                            .ok()
                            .and_then(|c| c.first().and_then(|c| cap_type(&buf, c).ok()));
                        let ty = ty.map_or("no TYPE capability".into(), |t| {
                            type_str(t.r#type, t.subtype)
                        });
                        ck.note(&format!("region-info[{index}] {r} type {ty}"));
                    }
                }
                igd_info_verdict(&buf, argsz, index, size, b.subtype)
            }
            Err(e) => Err(format!(
                "argsz {argsz}: expected success got {}",
                err_name(&e)
            )),
        };
        ck.check(&name(check), v);
    }

    // One read of the whole region.
    ck.check(
        &name("read-whole"),
        read_verdict(dev, index, &truth, 0, truth.len()),
    );
    for w in WIDTHS {
        let reads = width_offsets(truth.len(), w)
            .into_iter()
            .map(|o| (o as u64, w));
        ck.check(
            &name(&format!("read-w{w}")),
            reads_verdict(dev, index, &truth, reads),
        );
    }
    let reads = [0, 1, 2, 3, 0x7f, size - 256].map(|o| (o, 256));
    ck.check(&name("read-256"), reads_verdict(dev, index, &truth, reads));
    // Crossing the end: short, size - pos bytes.
    let n = truth.len();
    let reads = [
        (size - 4, 8),
        (size - 1, 4),
        (size - 3, 8),
        (size - 2, 3),
        (0, n + PAGE),
        (1, n),
    ];
    ck.check(
        &name("read-short"),
        reads_verdict(dev, index, &truth, reads),
    );
    // At or past the end: EINVAL.
    let reads = [
        (size, 1),
        (size, 4),
        (size + 1, 2),
        (size + PAGE as u64, 4),
        (uapi::VFIO_PCI_OFFSET_MASK, 1),
    ];
    ck.check(
        &name("read-past-end"),
        reads_verdict(dev, index, &truth, reads),
    );

    // Writes, of the bytes already there (so a write wrongly accepted changes nothing):
    // EINVAL, and the bridge's config space is the same afterwards.
    let mut bad = Vec::new();
    for (pos, len) in [
        (0, 1),
        (0, 4),
        (1, 2),
        (0x3c, 4),
        (n - 1, 1),
        (n, 4),
        (0, n),
    ] {
        let data: Vec<u8> = (pos..pos + len)
            .map(|i| truth.get(i).copied().unwrap_or(0))
            .collect();
        let what = format!("pwrite {len} at 0x{pos:x}");
        if let Err(e) = want_einval(&what, wr(dev, index, pos as u64, &data), |n| {
            format!("{n} bytes")
        }) {
            bad.push(e);
        }
    }
    match bridge_config(b) {
        Ok(after) if after == truth => {}
        Ok(after) => bad.push(format!(
            "{} config changed: {}",
            b.bdf,
            diff(&truth, &after, 0)
        )),
        Err(e) => bad.push(format!("re-read: {e}")),
    }
    if let Err(e) = read_verdict(dev, index, &truth, 0, truth.len()) {
        bad.push(format!("after the writes: {e}"));
    }
    ck.check(
        &name("write"),
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("; "))
        },
    );

    // No mmap: C's regops have none (and the region lacks FLAG_MMAP).
    ck.check(&name("mmap"), mmap_verdict(dev, index));
}

/// mmap of region `index`, read-write and read-only: EINVAL both.
fn mmap_verdict(dev: &File, index: u32) -> Result<(), String> {
    let off = region_offset(index, 0);
    let mut bad = Vec::new();
    for (prot, what) in [
        (libc::PROT_READ | libc::PROT_WRITE, "mmap shared read-write"),
        (libc::PROT_READ, "mmap shared read-only"),
    ] {
        if let Err(e) = want_einval(what, try_mmap(dev, prot, off), |a| format!("at 0x{a:x}")) {
            bad.push(e);
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

/// The checks of `index`, the first index past the device's regions: EINVAL everywhere.
fn absent_checks(ck: &mut Checks, dev: &File, index: u32) {
    let name = |c: &str| format!("{c}[{index}]");
    ck.check(
        &name("region-info"),
        want_einval(
            "GET_REGION_INFO argsz 32",
            query(dev, index, uapi::VFIO_REGION_INFO_MINSZ),
            |b| parse_reply(&b).map_or("?".into(), |r| r.to_string()),
        ),
    );
    ck.check(
        &name("read"),
        want_einval("pread 4 at 0", rd(dev, index, 0, 4), |b| {
            format!("{} bytes: {}", b.len(), hex(&b))
        }),
    );
    ck.check(
        &name("write"),
        want_einval("pwrite 4 at 0", wr(dev, index, 0, &[0; 4]), |n| {
            format!("{n} bytes")
        }),
    );
    ck.check(&name("mmap"), mmap_verdict(dev, index));
}

/// Close everything, open again: the same regions (C frees them in `close_device` and
/// registers them again in `open_device`, so they neither vanish nor double).
fn reopen(bdf: &str, expect: Expect) -> Result<(), String> {
    let mut quiet = Quiet::default();
    let gd =
        open_via_group(bdf, &mut quiet).map_err(|_| quiet.failure.take().unwrap_or_default())?;
    let dev = &gd.device;
    let q = get_info(dev).map_err(|e| format!("GET_INFO: {}", err_name(&e)))?;
    let bridges = expect.bridges();
    let want = VFIO_PCI_NUM_REGIONS + bridges.len() as u32;
    let mut bad = Vec::new();
    if q.values.num_regions != want {
        bad.push(format!(
            "num_regions {} after close and reopen (expected {want})",
            q.values.num_regions
        ));
    }
    for (i, b) in bridges.iter().enumerate() {
        let index = VFIO_PCI_NUM_REGIONS + i as u32;
        let r = query(dev, index, NEEDED)
            .map_err(|e| err_name(&e))
            .and_then(|buf| {
                let r = parse_reply(&buf).ok_or("short reply")?;
                let caps = parse_chain(&buf[..NEEDED as usize], r.cap_offset, FIXED)?;
                let t = caps
                    .first()
                    .ok_or_else(|| format!("no capability ({r})"))
                    .and_then(|c| cap_type(&buf, c))?;
                if t.r#type == IGD_REGION_TYPE && t.subtype == b.subtype {
                    Ok(())
                } else {
                    Err(format!(
                        "type {} (expected {})",
                        type_str(t.r#type, t.subtype),
                        type_str(IGD_REGION_TYPE, b.subtype)
                    ))
                }
            });
        if let Err(e) = r {
            bad.push(format!("region-info[{index}] after reopen: {e}"));
        }
    }
    let r = query(dev, want, uapi::VFIO_REGION_INFO_MINSZ);
    if let Err(e) = want_einval(&format!("region-info[{want}] after reopen"), r, |_| {
        "a region".into()
    }) {
        bad.push(e);
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

fn run_checks(ck: &mut Checks, bdf: &str, expect: Expect) -> Result<(), Stop> {
    let bridges = expect.bridges();
    let want = VFIO_PCI_NUM_REGIONS + bridges.len() as u32;
    {
        let gd = open_via_group(bdf, ck)?;
        ck.note(&format!(
            "{bdf} iommu_group {} iommu {}",
            gd.session.group_id, gd.session.iommu_type
        ));
        let dev = &gd.device;
        let q = ck.step("get-info", get_info(dev).map_err(|e| err_name(&e)))?;
        ck.note(&format!("get-info {}", q.values));
        let n = q.values.num_regions;
        ck.check(
            "num-regions",
            if n == want {
                Ok(())
            } else {
                Err(format!(
                    "expected {want} ({} device-specific) got {n}",
                    bridges.len()
                ))
            },
        );
        for (i, b) in bridges.iter().enumerate() {
            bridge_checks(ck, dev, VFIO_PCI_NUM_REGIONS + i as u32, b);
        }
        absent_checks(ck, dev, want);
        // The device, group and container close here.
    }
    ck.check("reopen", reopen(bdf, expect));
    Ok(())
}

/// `vfio-test dev-regions BDF EXPECT`.
pub fn run(bdf: &str, expect: Expect) -> ExitCode {
    let driver = match sysfs::current_driver(bdf) {
        Ok(Some(d)) => d,
        Ok(None) => "unbound".into(),
        Err(e) => format!("driver-{}", err_name(&e)),
    };
    let mut rep = Reporter::stdout();
    {
        let mut ck = Checks {
            rep: &mut rep,
            subject: format!("dev-regions {driver}"),
            names: check_names(expect),
            done: Vec::new(),
        };
        ck.note(&format!("{bdf}: expecting {expect}"));
        let why = match run_checks(&mut ck, bdf, expect) {
            Ok(()) => "not reached".to_string(),
            Err(stop) => format!("{} failed", stop.step),
        };
        ck.skip_rest(&why);
    }
    rep.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply buffer as C writes it for argsz >= 48 (or < 48: fixed part only).
    fn c_reply(argsz: u32, index: u32, size: u64, subtype: u32) -> Vec<u8> {
        let mut b: Vec<u8> = (0..QUERY_BUF as usize)
            .map(|i| FILL.to_ne_bytes()[i % 4])
            .collect();
        let fits = argsz >= NEEDED;
        let put = |b: &mut Vec<u8>, off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        put(
            &mut b,
            0,
            &(if fits { argsz } else { NEEDED }).to_ne_bytes(),
        );
        put(&mut b, 4, &9u32.to_ne_bytes());
        put(&mut b, 8, &index.to_ne_bytes());
        put(&mut b, 12, &(if fits { 32u32 } else { 0 }).to_ne_bytes());
        put(&mut b, 16, &size.to_ne_bytes());
        put(&mut b, 24, &region_offset(index, 0).to_ne_bytes());
        if fits {
            put(&mut b, 32, &2u16.to_ne_bytes());
            put(&mut b, 34, &1u16.to_ne_bytes());
            put(&mut b, 36, &0u32.to_ne_bytes());
            put(&mut b, 40, &IGD_REGION_TYPE.to_ne_bytes());
            put(&mut b, 44, &subtype.to_ne_bytes());
        }
        b
    }

    #[test]
    fn expectations_parse() {
        assert_eq!(Expect::parse("none"), Ok(Expect::None));
        assert_eq!(Expect::parse("igd-bridges"), Ok(Expect::IgdBridges));
        assert!(Expect::parse("igd").is_err());
        assert!(Expect::parse("").is_err());
        assert_eq!(Expect::IgdBridges.to_string(), "igd-bridges");
    }

    #[test]
    fn names() {
        let none = check_names(Expect::None);
        assert_eq!(none.len(), OPEN_STEPS.len() + 2 + 4 + 1);
        assert!(none.contains(&"region-info[9]".to_string()));
        assert!(none.contains(&"mmap[9]".to_string()));
        let igd = check_names(Expect::IgdBridges);
        assert_eq!(
            igd.len(),
            OPEN_STEPS.len() + 2 + 2 * REGION_CHECKS.len() + 4 + 1
        );
        for n in ["read-w7[10]", "region-info-caps[9]", "read[11]", "reopen"] {
            assert!(igd.contains(&n.to_string()), "{n}");
        }
        // No name twice (region-info[9] is a bridge check here, region-info[11] absent).
        let mut sorted = igd.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), igd.len());
    }

    #[test]
    fn a_failed_step_reports_every_check() {
        let mut rep = Reporter::collect();
        {
            let mut ck = Checks {
                rep: &mut rep,
                subject: "dev-regions vfio-pci".into(),
                names: check_names(Expect::None),
                done: Vec::new(),
            };
            let r: Result<(), Stop> = (|| {
                ck.step("iommu-group", Ok(()))?;
                ck.step::<()>("container-open", Err("ENOENT".into()))?;
                Ok(())
            })();
            ck.skip_rest(&format!("{} failed", r.unwrap_err().step));
        }
        let lines = rep.lines();
        assert_eq!(lines.len(), check_names(Expect::None).len());
        assert_eq!(lines[0], "PASS dev-regions vfio-pci iommu-group");
        assert_eq!(lines[1], "FAIL dev-regions vfio-pci container-open: ENOENT");
        assert_eq!(
            lines.last().unwrap(),
            "FAIL dev-regions vfio-pci reopen: skipped: container-open failed"
        );
    }

    #[test]
    fn constants_match_c() {
        assert_eq!(NEEDED, 48);
        assert_eq!(IGD_REGION_TYPE, 0x8000_8086);
        assert_eq!(BRIDGES[0].subtype, 2);
        assert_eq!(BRIDGES[1].subtype, 3);
    }

    #[test]
    fn chain_of_one_type_capability() {
        let b = c_reply(48, 9, 256, 2);
        let r = parse_reply(&b).unwrap();
        assert_eq!(r.cap_offset, 32);
        let caps = parse_chain(&b[..48], r.cap_offset, FIXED).unwrap();
        assert_eq!(
            caps,
            [Cap {
                at: 32,
                header: uapi::VfioInfoCapHeader {
                    id: 2,
                    version: 1,
                    next: 0
                }
            }]
        );
        let t = cap_type(&b[..48], &caps[0]).unwrap();
        assert_eq!((t.r#type, t.subtype), (0x8000_8086, 2));
        assert_eq!(
            type_str(t.r#type, t.subtype),
            "0x80008086 (PCI vendor 8086) subtype 2 (IGD_HOST_CFG)"
        );
        // No chain at all.
        assert_eq!(parse_chain(&b, 0, FIXED).unwrap(), []);
    }

    #[test]
    fn bad_chains() {
        let mut b = c_reply(64, 9, 256, 2);
        // Truncated by argsz.
        assert!(parse_chain(&b[..36], 32, FIXED).is_err());
        // Inside the fixed part, unaligned.
        assert!(parse_chain(&b, 16, FIXED).is_err());
        assert!(parse_chain(&b, 36, FIXED).is_err());
        // Pointing back at itself.
        b[36..40].copy_from_slice(&32u32.to_ne_bytes());
        assert!(parse_chain(&b, 32, FIXED)
            .unwrap_err()
            .contains("points back"));
        // Another capability id is not a TYPE capability.
        let c = Cap {
            at: 32,
            header: uapi::VfioInfoCapHeader {
                id: 3,
                version: 1,
                next: 0,
            },
        };
        assert!(cap_type(&b, &c).is_err());
        // Two capabilities: walked in order.
        let mut b = c_reply(64, 9, 256, 2);
        b[36..40].copy_from_slice(&48u32.to_ne_bytes());
        b[48..50].copy_from_slice(&3u16.to_ne_bytes());
        b[50..52].copy_from_slice(&1u16.to_ne_bytes());
        b[52..56].copy_from_slice(&0u32.to_ne_bytes());
        let caps = parse_chain(&b[..64], 32, FIXED).unwrap();
        assert_eq!(caps.len(), 2);
        assert_eq!(caps[1].at, 48);
        assert_eq!(caps[1].header.id, 3);
    }

    #[test]
    fn c_replies_pass() {
        for argsz in [32, 40, 47, 48, 64, 256] {
            let b = c_reply(argsz, 10, 4096, 3);
            assert_eq!(igd_info_verdict(&b, argsz, 10, 4096, 3), Ok(()), "{argsz}");
        }
    }

    #[test]
    fn wrong_replies_fail() {
        // Too small an argsz must still grow argsz and zero cap_offset.
        let mut b = c_reply(32, 9, 256, 2);
        b[0..4].copy_from_slice(&32u32.to_ne_bytes());
        let e = igd_info_verdict(&b, 32, 9, 256, 2).unwrap_err();
        assert!(e.contains("argsz 32 (expected 48)"), "{e}");
        let mut b = c_reply(32, 9, 256, 2);
        b[12..16].copy_from_slice(&FILL.to_ne_bytes());
        assert!(igd_info_verdict(&b, 32, 9, 256, 2)
            .unwrap_err()
            .contains("cap_offset"));
        // Flags without CAPS.
        let mut b = c_reply(48, 9, 256, 2);
        b[4..8].copy_from_slice(&1u32.to_ne_bytes());
        assert!(igd_info_verdict(&b, 48, 9, 256, 2)
            .unwrap_err()
            .contains("flags READ (expected READ|CAPS)"));
        // Wrong subtype, wrong size, wrong offset.
        let b = c_reply(48, 9, 256, 3);
        assert!(igd_info_verdict(&b, 48, 9, 256, 2)
            .unwrap_err()
            .contains("IGD_LPC_CFG"));
        assert!(igd_info_verdict(&c_reply(48, 9, 4096, 2), 48, 9, 256, 2).is_err());
        assert!(igd_info_verdict(&c_reply(48, 10, 256, 2), 48, 9, 256, 2).is_err());
        // A chain written although argsz had no room for it.
        let mut b = c_reply(48, 9, 256, 2);
        b[0..4].copy_from_slice(&48u32.to_ne_bytes());
        b[12..16].copy_from_slice(&0u32.to_ne_bytes());
        let e = igd_info_verdict(&b, 40, 9, 256, 2).unwrap_err();
        assert!(e.contains("bytes written past 32"), "{e}");
        // Bytes written past the chain.
        let mut b = c_reply(256, 9, 256, 2);
        b[100] = 0;
        assert!(igd_info_verdict(&b, 256, 9, 256, 2)
            .unwrap_err()
            .contains("offsets 100"));
        // argsz changed when it was big enough.
        let mut b = c_reply(256, 9, 256, 2);
        b[0..4].copy_from_slice(&48u32.to_ne_bytes());
        assert!(igd_info_verdict(&b, 256, 9, 256, 2).is_err());
    }

    #[test]
    fn read_expectations() {
        let truth: Vec<u8> = (0..=255).collect();
        assert_eq!(expected_read(&truth, 0, 4), Some(&truth[0..4]));
        assert_eq!(expected_read(&truth, 255, 1), Some(&truth[255..]));
        // Crossing the end: short.
        assert_eq!(expected_read(&truth, 252, 8), Some(&truth[252..]));
        assert_eq!(expected_read(&truth, 1, 4096).unwrap().len(), 255);
        // At or past the end: EINVAL.
        assert_eq!(expected_read(&truth, 256, 1), None);
        assert_eq!(expected_read(&truth, uapi::VFIO_PCI_OFFSET_MASK, 1), None);
    }

    #[test]
    fn width_offsets_cover_every_alignment_then_stride() {
        let o = width_offsets(256, 4);
        assert_eq!(o.len(), 253);
        assert_eq!(o.last(), Some(&252));
        let o = width_offsets(4096, 3);
        assert!(o.contains(&255) && o.contains(&258) && !o.contains(&257));
        assert_eq!(o.last(), Some(&4092));
        let o = width_offsets(4096, 8);
        assert_eq!(o.last(), Some(&4088));
        assert!(width_offsets(4, 8).is_empty());
        assert!(width_offsets(4, 0).is_empty());
    }

    #[test]
    fn diffs() {
        assert_eq!(diff(&[1, 2, 3], &[1, 9, 3], 0x10), "0x11: 02/09");
        assert_eq!(diff(&[1, 2], &[1], 0), "1 bytes (expected 2)");
        assert_eq!(diff(&[1], &[1], 0), "");
    }
}
