//! Region, config-space, BAR/ROM/VGA access, reset, hot reset and PM checks (issue 3), run on
//! ONE device bound to each driver in turn ("swap" phase), so the two drivers are compared
//! byte for byte on the same hardware (twins differ in BAR addresses, MACs, ROM shadowing).
//!
//! For each device and driver this produces
//! - checks with an absolute verdict, derived from what the C vfio-pci does (the expected
//!   values come from the device's sysfs view, not from the driver under test, so both drivers
//!   always report the same set of checks): `PASS|FAIL <twin> <driver> <check>`;
//! - a transcript: every value observed, keyed. The transcripts of the two drivers are then
//!   compared key by key: `PASS|FAIL <twin> parity <key>`, a failure printing the diff
//!   (offsets of differing bytes, differing items of a sequence, or both values).

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::cfgspace::*;
use crate::checks::{get_info, open_node, open_via_group, GroupDevice, Quiet};
use crate::cli::{Driver, Twin};
use crate::mixed::{parse_dependent_devices, shared_group};
use crate::report::Reporter;
use crate::sys::{self, err_name, InfoBuf};
use crate::sysfs;
use crate::uapi::{self, region_offset, size_u32};

/// What the device looks like from sysfs (the truth the expectations are computed from).
#[derive(Clone, Debug)]
pub struct Layout {
    pub bdf: String,
    /// BAR0-5 and the ROM (sysfs `resource` lines 0-6).
    pub res: Vec<Res>,
    /// The raw config space (sysfs `config`), `cfg_size` bytes.
    pub cfg: Vec<u8>,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub group: u32,
    pub caps: Vec<Cap>,
    pub ecaps: Vec<ExtCap>,
    /// Every function on the device's bus (what a bus reset touches), itself included.
    pub bus_peers: Vec<String>,
    /// A bus reset of this device's bus fails -ENOTTY in 7.3 (see `bus_reset_fails_on_link`).
    pub bus_reset_enotty: bool,
    /// An SR-IOV VF: vfio virtualizes its vendor and device IDs, memory decode follows its
    /// PF's SR-IOV MSE bit (COMMAND.MEM is ignored), and its device set is itself alone,
    /// while a bus reset reaches its PF.
    pub is_vf: bool,
}

impl Layout {
    pub fn read(bdf: &str) -> Result<Layout, String> {
        let dir = sysfs::device_dir(bdf);
        let rd = |name: &str| {
            fs::read_to_string(dir.join(name)).map_err(|e| format!("{bdf}/{name}: {e}"))
        };
        let mut res = parse_resources(&rd("resource")?)?;
        res.resize(7, Res::default());
        res.truncate(7);
        let cfg = fs::read(dir.join("config")).map_err(|e| format!("{bdf}/config: {e}"))?;
        if cfg.len() < 64 {
            return Err(format!("{bdf}/config: only {} bytes", cfg.len()));
        }
        let num = |s: String| {
            u32::from_str_radix(s.trim().trim_start_matches("0x"), 16)
                .map_err(|_| format!("{bdf}: bad number {s:?}"))
        };
        let vendor = num(rd("vendor")?)? as u16;
        let device = num(rd("device")?)? as u16;
        let class = num(rd("class")?)?;
        let group = sysfs::iommu_group(bdf).map_err(|e| format!("{bdf}: {e}"))?;
        let caps = std_caps(&cfg);
        let ecaps = ext_caps(&cfg);
        let bus_peers = bus_peers(bdf)?;
        let bus_reset_enotty = link_rule(bdf, &bus_peers);
        let is_vf = dir.join("physfn").exists();
        Ok(Layout {
            bdf: bdf.to_string(),
            res,
            cfg,
            vendor,
            device,
            class,
            group,
            caps,
            ecaps,
            bus_peers,
            bus_reset_enotty,
            is_vf,
        })
    }

    pub fn cfg_size(&self) -> usize {
        self.cfg.len()
    }
    pub fn is_vga(&self) -> bool {
        self.class >> 8 == 0x0300
    }
    pub fn cap(&self, id: u8) -> Option<usize> {
        self.caps.iter().find(|c| c.id == id).map(|c| c.off)
    }
    /// The first memory BAR (index, length).
    pub fn first_mem_bar(&self) -> Option<(u32, u64)> {
        (0..6)
            .find(|&i| self.res[i].is_mem() && self.res[i].len() > 0)
            .map(|i| (i as u32, self.res[i].len()))
    }
    pub fn first_io_bar(&self) -> Option<u32> {
        (0..6)
            .find(|&i| self.res[i].is_io() && self.res[i].len() > 0)
            .map(|i| i as u32)
    }
    /// The BAR holding the MSI-X table, from the raw MSI-X capability.
    pub fn msix_bar(&self) -> Option<(u32, u64, u64)> {
        let x = self.cap(PCI_CAP_ID_MSIX)?;
        let flags = u16::from_le_bytes([self.cfg[x + 2], self.cfg[x + 3]]);
        let table = u32_at(&self.cfg, x + PCI_MSIX_TABLE);
        let size = ((flags & 0x7ff) as u64 + 1) * 16;
        Some((table & 7, (table & !7) as u64, size))
    }
    pub fn has_flr(&self) -> bool {
        self.cap(PCI_CAP_ID_EXP)
            .is_some_and(|e| u32_at(&self.cfg, e + PCI_EXP_DEVCAP) & PCI_EXP_DEVCAP_FLR != 0)
    }
}

/// Whether a bus reset below the device's parent port fails on the link wait.
fn link_rule(bdf: &str, peers: &[String]) -> bool {
    let Ok(real) = fs::canonicalize(sysfs::device_dir(bdf)) else {
        return false;
    };
    let Some(port) = real.parent() else {
        return false;
    };
    let Ok(cfg) = fs::read(port.join("config")) else {
        return false;
    };
    let speed = fs::read_to_string(port.join("max_link_speed"))
        .ok()
        .and_then(|s| parse_link_speed(&s))
        .unwrap_or(0.0);
    let has_pm = peers.iter().any(|p| {
        fs::read(sysfs::device_dir(p).join("config"))
            .map(|c| std_caps(&c).iter().any(|c| c.id == PCI_CAP_ID_PM))
            .unwrap_or(false)
    });
    bus_reset_fails_on_link(&cfg, speed, has_pm)
}

/// `DDDD:BB:DD.F` names in the device's parent directory on the same bus.
fn bus_peers(bdf: &str) -> Result<Vec<String>, String> {
    let real = fs::canonicalize(sysfs::device_dir(bdf)).map_err(|e| format!("{bdf}: {e}"))?;
    let parent = real.parent().ok_or("no parent")?;
    let bus = &bdf[..8];
    let mut v: Vec<String> = fs::read_dir(parent)
        .map_err(|e| format!("{}: {e}", parent.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 12 && n.starts_with(bus) && crate::cli::parse_bdf(n).is_ok())
        .collect();
    v.sort();
    Ok(v)
}

/// One driver's run on one device: the checks go to the reporter as they are made, the
/// observed values to the transcript.
pub struct Ck<'a> {
    rep: &'a mut Reporter,
    subject: String,
    prefix: String,
    pub tr: Vec<(String, String)>,
}

impl Ck<'_> {
    fn name(&self, n: &str) -> String {
        format!("{}{n}", self.prefix)
    }
    /// An absolute check (what C does), nothing recorded.
    pub fn check(&mut self, name: &str, r: Result<(), String>) {
        let n = self.name(name);
        match r {
            Ok(()) => self.rep.pass(&self.subject, &n),
            Err(e) => self.rep.fail(&self.subject, &n, &e),
        }
    }
    /// A value compared between the drivers only.
    pub fn rec(&mut self, key: &str, v: impl Into<String>) {
        let k = self.name(key);
        self.tr.push((k, v.into()));
    }
    /// A value compared between the drivers, and an absolute check of it.
    pub fn both(&mut self, name: &str, v: impl Into<String>, r: Result<(), String>) {
        self.rec(name, v);
        self.check(name, r);
    }
    pub fn note(&mut self, text: &str) {
        let t = format!("{} {}{text}", self.subject, self.prefix);
        self.rep.note(&t);
    }
}

// ------------------------------------------------------------------------------------------
// Device-fd access
// ------------------------------------------------------------------------------------------

/// One pread(2) of `len` bytes at `off` in region `index`: the bytes actually read.
pub fn rd(dev: &File, index: u32, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let n = dev.read_at(&mut buf, region_offset(index, off))?;
    buf.truncate(n);
    Ok(buf)
}

/// One pwrite(2) at `off` in region `index`: the count written.
pub fn wr(dev: &File, index: u32, off: u64, data: &[u8]) -> io::Result<usize> {
    dev.write_at(data, region_offset(index, off))
}

/// `ok <hex>` for a full read, `short <n> <hex>`, or the errno.
pub(crate) fn show_rd(r: &io::Result<Vec<u8>>, want: usize) -> String {
    match r {
        Ok(b) if b.len() == want => format!("ok {}", hex(b)),
        Ok(b) => format!("short {} {}", b.len(), hex(b)),
        Err(e) => err_name(e),
    }
}

fn show_wr(r: &io::Result<usize>, want: usize) -> String {
    match r {
        Ok(n) if *n == want => "ok".to_string(),
        Ok(n) => format!("short {n}"),
        Err(e) => err_name(e),
    }
}

/// How a successful result is shown in a failure: bytes in hex, counts as numbers.
pub(crate) trait ShowOk {
    fn show_ok(&self) -> String;
}

impl ShowOk for Vec<u8> {
    fn show_ok(&self) -> String {
        format!("{} bytes: {}", self.len(), hex(self))
    }
}

impl ShowOk for usize {
    fn show_ok(&self) -> String {
        format!("{self} bytes")
    }
}

impl ShowOk for i32 {
    fn show_ok(&self) -> String {
        format!("returned {self}")
    }
}

pub(crate) fn expect_errno<T: ShowOk>(r: &io::Result<T>, errno: i32) -> Result<(), String> {
    match r {
        Err(e) if e.raw_os_error() == Some(errno) => Ok(()),
        Err(e) => Err(format!(
            "expected {} (as vfio-pci) got {}",
            sys::errno_name(errno),
            err_name(e)
        )),
        Ok(v) => Err(format!(
            "expected {} (as vfio-pci) got success ({})",
            sys::errno_name(errno),
            v.show_ok()
        )),
    }
}

const CFG: u32 = uapi::VFIO_PCI_CONFIG_REGION_INDEX;
const ROM: u32 = uapi::VFIO_PCI_ROM_REGION_INDEX;
const VGA: u32 = uapi::VFIO_PCI_VGA_REGION_INDEX;

/// Little-endian config read of 1, 2 or 4 bytes.
pub(crate) fn cfg_get(dev: &File, off: usize, len: usize) -> Result<u32, String> {
    let b = rd(dev, CFG, off as u64, len)
        .map_err(|e| format!("config read {len}@0x{off:x}: {}", err_name(&e)))?;
    if b.len() != len {
        return Err(format!("config read {len}@0x{off:x}: {} bytes", b.len()));
    }
    let mut a = [0u8; 4];
    a[..len].copy_from_slice(&b);
    Ok(u32::from_le_bytes(a))
}

pub(crate) fn cfg_set(dev: &File, off: usize, len: usize, v: u32) -> Result<(), String> {
    let b = v.to_le_bytes();
    match wr(dev, CFG, off as u64, &b[..len]) {
        Ok(n) if n == len => Ok(()),
        Ok(n) => Err(format!("config write {len}@0x{off:x}: wrote {n}")),
        Err(e) => Err(format!("config write {len}@0x{off:x}: {}", err_name(&e))),
    }
}

/// `0x...` or the error, for transcripts.
fn sv(r: &Result<u32, String>) -> String {
    match r {
        Ok(v) => format!("0x{v:x}"),
        Err(e) => format!("ERR({e})"),
    }
}

/// The whole config space in one read.
fn cfg_bulk(dev: &File, size: usize) -> Result<Vec<u8>, String> {
    match rd(dev, CFG, 0, size) {
        Ok(b) if b.len() == size => Ok(b),
        Ok(b) => Err(format!("read {size} bytes of config: got {}", b.len())),
        Err(e) => Err(format!("read {size} bytes of config: {}", err_name(&e))),
    }
}

/// Compare two config snapshots for a check.
fn same_cfg(
    before: &Result<Vec<u8>, String>,
    after: &Result<Vec<u8>, String>,
) -> Result<(), String> {
    match (before, after) {
        (Ok(a), Ok(b)) if a == b => Ok(()),
        (Ok(a), Ok(b)) => Err(format!(
            "config changed (offset: before/after): {}",
            byte_diff(a, b, 12)
        )),
        (Err(e), _) => Err(format!("before: {e}")),
        (_, Err(e)) => Err(format!("after: {e}")),
    }
}

/// FNV-1a, to record big buffers compactly.
fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ *x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// A run number: every device run uses its own nonces and ivshmem offsets, so a write that
/// silently did nothing cannot read back what an earlier run left behind.
static RUN: AtomicU32 = AtomicU32::new(0);

pub(crate) fn nonce_bytes(run: u32, len: usize, salt: u8) -> Vec<u8> {
    let seed = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(run.wrapping_mul(40503))
        .wrapping_add(salt as u32);
    (0..len)
        .map(|i| {
            let x = seed.wrapping_add((i as u32).wrapping_mul(0x9e37_79b9));
            (x ^ (x >> 13) ^ (x >> 24)) as u8 | 1
        })
        .collect()
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(salt))
        .collect()
}

/// The ivshmem backing files, in the directory scripts/vm.sh hands the guest in
/// `VFIO_TEST_IVSHMEM_DIR` (the host's cache is wherever the user keeps it, so nothing is
/// guessed here).
pub(crate) fn ivshmem_files() -> Result<Vec<PathBuf>, String> {
    let dir = std::env::var_os("VFIO_TEST_IVSHMEM_DIR")
        .ok_or("VFIO_TEST_IVSHMEM_DIR is not set (scripts/vm.sh sets it)")?;
    let dir = PathBuf::from(dir);
    let files: Vec<PathBuf> = ["ivshmem1", "ivshmem2"]
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.exists())
        .collect();
    if files.is_empty() {
        return Err(format!("no ivshmem backing file in {}", dir.display()));
    }
    Ok(files)
}

// ------------------------------------------------------------------------------------------
// Region info
// ------------------------------------------------------------------------------------------

fn region_info(dev: &File, index: u32, argsz: u32) -> (io::Result<i32>, uapi::VfioRegionInfo) {
    let mut r = uapi::VfioRegionInfo {
        argsz,
        index,
        ..Default::default()
    };
    let res = sys::ioctl_struct::<uapi::DeviceGetRegionInfo>(dev, &mut r);
    (res, r)
}

fn show_ri(r: &io::Result<i32>, i: &uapi::VfioRegionInfo) -> String {
    match r {
        Ok(_) => format!(
            "ok flags={} size=0x{:x} offset=0x{:x} argsz={} cap_offset={}",
            uapi::region_flags_str(i.flags),
            i.size,
            i.offset,
            i.argsz,
            i.cap_offset
        ),
        Err(e) => err_name(e),
    }
}

/// A region capability chain: cap_offset, the bytes after the fixed part, and (id, version,
/// next) of each capability.
type RegionCaps = (u32, Vec<u8>, Vec<(u16, u16, u32)>);

/// A write sequence: the original value, the value after the write, after the restore.
type Seq = (
    Result<u32, String>,
    Result<u32, String>,
    Result<u32, String>,
);

/// The capability chain of region `index` with `argsz` bytes of room: (cap_offset, chain
/// bytes after the fixed part, (id, version, next) of each capability).
fn region_caps(dev: &File, index: u32, argsz: u32) -> Result<RegionCaps, String> {
    if !(32..=4096).contains(&argsz) {
        return Err(format!("implausible argsz {argsz}"));
    }
    let mut buf = InfoBuf::new(argsz);
    buf.set_u32(8, index);
    sys::ioctl_info_buf::<uapi::DeviceGetRegionInfo>(dev, &mut buf)
        .map_err(|e| format!("argsz {argsz}: {}", err_name(&e)))?;
    let cap_offset = buf.u32_at(12).unwrap_or(0);
    let bytes = buf.bytes();
    let chain = bytes[32..argsz as usize].to_vec();
    let mut caps = Vec::new();
    let mut off = cap_offset as usize;
    while off != 0 && caps.len() < 16 {
        if off < 32 || off + 8 > argsz as usize {
            return Err(format!("capability at {off} outside 32..{argsz}"));
        }
        let id = u16::from_ne_bytes([bytes[off], bytes[off + 1]]);
        let ver = u16::from_ne_bytes([bytes[off + 2], bytes[off + 3]]);
        let next = u32::from_ne_bytes([
            bytes[off + 4],
            bytes[off + 5],
            bytes[off + 6],
            bytes[off + 7],
        ]);
        caps.push((id, ver, next));
        if next != 0 && next as usize <= off {
            return Err(format!("capability at {off} points back to {next}"));
        }
        off = next as usize;
    }
    Ok((cap_offset, chain, caps))
}

fn sec_region_info(ck: &mut Ck, dev: &File, lay: &Layout) {
    const R: u32 = uapi::VFIO_REGION_INFO_FLAG_READ;
    const W: u32 = uapi::VFIO_REGION_INFO_FLAG_WRITE;
    const M: u32 = uapi::VFIO_REGION_INFO_FLAG_MMAP;
    const C: u32 = uapi::VFIO_REGION_INFO_FLAG_CAPS;
    let msix_bar = lay.msix_bar().map(|(b, _, _)| b);
    let indexes: Vec<u32> = (0..=9).chain([0x7fff_ffff, u32::MAX]).collect();
    for index in indexes {
        let (r, i) = region_info(dev, index, 32);
        let name = format!("region-info[{index}]");
        let got = |want_flags: u32, want_size: u64| -> Result<(), String> {
            let (Ok(_), info) = (&r, &i) else {
                return Err(format!("expected success got {}", show_ri(&r, &i)));
            };
            let mut bad = Vec::new();
            if info.flags != want_flags {
                bad.push(format!(
                    "flags {} (expected {})",
                    uapi::region_flags_str(info.flags),
                    uapi::region_flags_str(want_flags)
                ));
            }
            if info.size != want_size {
                bad.push(format!("size 0x{:x} (expected 0x{want_size:x})", info.size));
            }
            if info.offset != region_offset(index, 0) {
                bad.push(format!(
                    "offset 0x{:x} (expected 0x{:x})",
                    info.offset,
                    region_offset(index, 0)
                ));
            }
            if bad.is_empty() {
                Ok(())
            } else {
                Err(bad.join(", "))
            }
        };
        let verdict = match index {
            0..=5 => {
                let res = lay.res[index as usize];
                if res.len() == 0 {
                    got(0, 0)
                } else {
                    let mmap = res.is_mem() && res.len() >= 4096;
                    let mut f = R | W;
                    if mmap {
                        f |= M;
                    }
                    if mmap && msix_bar == Some(index) {
                        f |= C;
                    }
                    if res.is_mem() && res.len() < 4096 {
                        // A sub-page BAR is mmap-able only if vfio-pci could reserve the rest
                        // of its page: not decided here, compared between the drivers.
                        f = (f & !M) | (i.flags & M);
                    }
                    got(f, res.len())
                }
            }
            6 => {
                let rom = lay.res[6];
                if rom.start != 0 {
                    got(R, rom.len())
                } else {
                    got(0, 0)
                }
            }
            7 => got(R | W, lay.cfg_size() as u64),
            8 if lay.is_vga() => got(R | W, 0xc0000),
            _ => expect_errno(&r, libc::EINVAL),
        };
        let mut value = show_ri(&r, &i);
        // A capability chain: argsz must have grown to make room for it, then a call with
        // that argsz returns it.
        if r.is_ok() && i.flags & C != 0 {
            match region_caps(dev, index, i.argsz) {
                Ok((off, chain, caps)) => {
                    value.push_str(&format!("; caps cap_offset={off} chain={}", hex(&chain)));
                    let _ = caps;
                }
                Err(e) => value.push_str(&format!("; caps ERR({e})")),
            }
        }
        ck.both(&name, value, verdict);
    }

    // The MSI-X BAR's MSIX_MAPPABLE capability, through the two-call protocol.
    if let Some(b) = msix_bar.filter(|b| lay.res[*b as usize].len() >= 4096) {
        let (r, i) = region_info(dev, b, 32);
        let v = (|| {
            r.as_ref()
                .map_err(|e| format!("argsz 32: {}", err_name(e)))?;
            if i.flags & C == 0 || i.argsz != 40 || i.cap_offset != 0 {
                return Err(format!(
                    "argsz 32: expected CAPS set, argsz grown to 40, cap_offset 0 (as vfio-pci), got {}",
                    show_ri(&r, &i)
                ));
            }
            let (off, _, caps) = region_caps(dev, b, 40)?;
            if off != 32 || caps != [(uapi::VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, 0)] {
                return Err(format!(
                    "argsz 40: expected cap_offset 32 and one MSIX_MAPPABLE v1 capability, got cap_offset {off} caps {caps:?}"
                ));
            }
            Ok(())
        })();
        ck.check(&format!("region-info-caps[{b}]"), v);
    }

    for (argsz, name) in [
        (uapi::VFIO_REGION_INFO_MINSZ - 1, "region-info-argsz-short"),
        (0, "region-info-argsz-0"),
    ] {
        let (r, i) = region_info(dev, CFG, argsz);
        ck.both(name, show_ri(&r, &i), expect_errno(&r, libc::EINVAL));
    }
    // A bigger argsz than needed is fine and, without capabilities, left alone.
    let mut buf = InfoBuf::new(256);
    buf.set_u32(8, CFG);
    let r = sys::ioctl_info_buf::<uapi::DeviceGetRegionInfo>(dev, &mut buf);
    let v = match &r {
        Ok(_) => format!(
            "ok argsz={} flags=0x{:x} size=0x{:x}",
            buf.argsz(),
            buf.u32_at(4).unwrap_or(0),
            u64::from(buf.u32_at(16).unwrap_or(0)) | (u64::from(buf.u32_at(20).unwrap_or(0)) << 32)
        ),
        Err(e) => err_name(e),
    };
    let want = format!("ok argsz=256 flags=0x3 size=0x{:x}", lay.cfg_size());
    let verdict = if v == want {
        Ok(())
    } else {
        Err(format!("expected [{want}] got [{v}]"))
    };
    ck.both("region-info-argsz-big", v, verdict);
}

// ------------------------------------------------------------------------------------------
// Config space reads
// ------------------------------------------------------------------------------------------

fn sec_cfg_read(ck: &mut Ck, dev: &File, lay: &Layout) -> Option<Vec<u8>> {
    let size = lay.cfg_size();
    let bulk = rd(dev, CFG, 0, size);
    let verdict = match &bulk {
        Ok(b) if b.len() == size => {
            let mut bad = Vec::new();
            // A VF reads all ones there: vfio shows the IDs of sysfs `vendor` and `device`.
            let ids = if lay.is_vf {
                [lay.vendor.to_le_bytes(), lay.device.to_le_bytes()].concat()
            } else {
                lay.cfg[..4].to_vec()
            };
            if b[..4] != ids[..] {
                bad.push(format!(
                    "vendor/device {} (sysfs {})",
                    hex(&b[..4]),
                    hex(&ids)
                ));
            }
            if b[8..12] != lay.cfg[8..12] {
                bad.push(format!(
                    "revision/class {} (sysfs {})",
                    hex(&b[8..12]),
                    hex(&lay.cfg[8..12])
                ));
            }
            if b[0x2c..0x30] != lay.cfg[0x2c..0x30] {
                bad.push(format!(
                    "subsystem {} (sysfs {})",
                    hex(&b[0x2c..0x30]),
                    hex(&lay.cfg[0x2c..0x30])
                ));
            }
            if bad.is_empty() {
                Ok(())
            } else {
                Err(bad.join(", "))
            }
        }
        _ => Err(format!("read {size} bytes: {}", show_rd(&bulk, size))),
    };
    ck.both("cfg-bulk", show_rd(&bulk, size), verdict);
    let bulk = bulk.ok().filter(|b| b.len() == size);

    for w in [1usize, 2, 4, 8] {
        let mut all = Vec::with_capacity(size);
        let mut err = None;
        for off in (0..size).step_by(w) {
            match rd(dev, CFG, off as u64, w) {
                Ok(b) if b.len() == w => all.extend_from_slice(&b),
                r => {
                    err = Some(format!("{w}@0x{off:x}: {}", show_rd(&r, w)));
                    break;
                }
            }
        }
        let name = format!("cfg-read{w}");
        let verdict = match (&err, &bulk) {
            (Some(e), _) => Err(e.clone()),
            (None, None) => Err("no bulk read to compare with".into()),
            (None, Some(b)) if *b == all => Ok(()),
            (None, Some(b)) => Err(format!(
                "{w}-byte reads differ from the bulk read (offset: bulk/{w}-byte): {}",
                byte_diff(b, &all, 12)
            )),
        };
        let value = match err {
            Some(e) => e,
            None => format!("ok {}", hex(&all)),
        };
        ck.both(&name, value, verdict);
    }

    // Accesses that do not fit one aligned dword: the C driver splits them.
    let mut spots = vec![
        (1, 3),
        (1, 2),
        (3, 2),
        (2, 4),
        (3, 4),
        (5, 8),
        (0x3d, 3),
        (0xfd, 3),
    ];
    if size > 256 {
        spots.extend([(0x101, 6), (0xffd, 3)]);
    }
    let mut items = Vec::new();
    let mut bad = Vec::new();
    for (off, len) in spots {
        let r = rd(dev, CFG, off as u64, len);
        items.push(format!("{len}@0x{off:x}={}", show_rd(&r, len)));
        match (&r, &bulk) {
            (Ok(b), Some(all)) if b.len() == len && b[..] == all[off..off + len] => {}
            (_, Some(all)) => bad.push(format!(
                "{len}@0x{off:x}: {} (bulk {})",
                show_rd(&r, len),
                hex(&all[off..off + len])
            )),
            (_, None) => bad.push(format!("{len}@0x{off:x}: no bulk read")),
        }
    }
    let verdict = if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join(", "))
    };
    ck.both("cfg-read-unaligned", items.join("; "), verdict);
    bulk
}

// ------------------------------------------------------------------------------------------
// Bad input
// ------------------------------------------------------------------------------------------

fn sec_bad_input(ck: &mut Ck, dev: &File, lay: &Layout) {
    let size = lay.cfg_size() as u64;
    let r = rd(dev, CFG, size, 4);
    ck.both(
        "bad-cfg-past-end",
        show_rd(&r, 4),
        expect_errno(&r, libc::EFAULT),
    );
    let r = rd(dev, CFG, size - 2, 4);
    ck.both(
        "bad-cfg-straddle",
        show_rd(&r, 4),
        expect_errno(&r, libc::EFAULT),
    );
    let r = wr(dev, CFG, size, &[0; 4]);
    ck.both(
        "bad-cfg-write-past-end",
        show_wr(&r, 4),
        expect_errno(&r, libc::EFAULT),
    );
    let r = wr(dev, CFG, size - 1, &[0; 2]);
    ck.both(
        "bad-cfg-write-straddle",
        show_wr(&r, 2),
        expect_errno(&r, libc::EFAULT),
    );
    let r = rd(dev, CFG, 0xff_ffff_fff0, 4);
    ck.both(
        "bad-cfg-far",
        show_rd(&r, 4),
        expect_errno(&r, libc::EFAULT),
    );
    let r = rd(dev, 9, 0, 4);
    ck.both(
        "bad-index9-read",
        show_rd(&r, 4),
        expect_errno(&r, libc::EINVAL),
    );
    let r = wr(dev, 9, 0, &[0; 4]);
    ck.both(
        "bad-index9-write",
        show_wr(&r, 4),
        expect_errno(&r, libc::EINVAL),
    );
    let r = rd(dev, 0xfffff, 0, 4);
    ck.both(
        "bad-index-huge",
        show_rd(&r, 4),
        expect_errno(&r, libc::EINVAL),
    );
    // A zero-length read: recorded (the VFS may answer before the driver).
    let r = rd(dev, CFG, 0, 0);
    ck.rec("bad-cfg-zero-len", show_rd(&r, 0));

    if let Some(i) = (0..6).find(|&i| lay.res[i].len() == 0) {
        let r = rd(dev, i as u32, 0, 4);
        ck.both(
            "bad-absent-bar-read",
            show_rd(&r, 4),
            expect_errno(&r, libc::EINVAL),
        );
        let r = wr(dev, i as u32, 0, &[0; 4]);
        ck.both(
            "bad-absent-bar-write",
            show_wr(&r, 4),
            expect_errno(&r, libc::EINVAL),
        );
    }
    if let Some((b, len)) = lay.first_mem_bar() {
        let r = rd(dev, b, len, 4);
        ck.both(
            "bad-bar-past-end",
            show_rd(&r, 4),
            expect_errno(&r, libc::EINVAL),
        );
        let r = wr(dev, b, len, &[0; 4]);
        ck.both(
            "bad-bar-write-past-end",
            show_wr(&r, 4),
            expect_errno(&r, libc::EINVAL),
        );
        // Straddling the end: the C driver clamps the count (a short read), no error.
        let r = rd(dev, b, len - 4, 8);
        let v = match &r {
            Ok(x) if x.len() == 4 => Ok(()),
            _ => Err(format!(
                "expected a short read of 4 bytes (as vfio-pci) got {}",
                show_rd(&r, 8)
            )),
        };
        ck.both("bad-bar-straddle", show_rd(&r, 8), v);
    }
    let r = wr(dev, ROM, 0, &[0; 4]);
    ck.both(
        "bad-rom-write",
        show_wr(&r, 4),
        expect_errno(&r, libc::EINVAL),
    );
    if lay.res[6].start == 0 {
        let r = rd(dev, ROM, 0, 4);
        ck.both(
            "bad-rom-read-absent",
            show_rd(&r, 4),
            expect_errno(&r, libc::EINVAL),
        );
    }
    if !lay.is_vga() {
        let r = rd(dev, VGA, 0x3cc, 1);
        ck.both(
            "bad-vga-read-not-vga",
            show_rd(&r, 1),
            expect_errno(&r, libc::EINVAL),
        );
    }
    // Three bytes at an odd offset: the C driver splits the access (1 + 2), it does not
    // refuse it. 0x3d-0x3f (interrupt pin, min_gnt, max_lat) are read-only.
    let before = cfg_get(dev, 0x3c, 4);
    let r = wr(dev, CFG, 0x3d, &[0xff; 3]);
    let after = cfg_get(dev, 0x3c, 4);
    let v = match (&r, &before, &after) {
        (Ok(3), Ok(b), Ok(a)) if a == b => Ok(()),
        _ => Err(format!(
            "expected 3 bytes written, 0x3c..0x40 unchanged (as vfio-pci); got {} and 0x3c {} -> {}",
            show_wr(&r, 3),
            sv(&before),
            sv(&after)
        )),
    };
    ck.both(
        "cfg-write-3-unaligned",
        format!("{} {} -> {}", show_wr(&r, 3), sv(&before), sv(&after)),
        v,
    );
}

// ------------------------------------------------------------------------------------------
// Config writes
// ------------------------------------------------------------------------------------------

/// orig, after writing `val`, after writing orig back.
fn write_seq(dev: &File, off: usize, len: usize, val: u32) -> Seq {
    let orig = cfg_get(dev, off, len);
    let w = cfg_set(dev, off, len, val);
    let got = w.and_then(|()| cfg_get(dev, off, len));
    let back = match &orig {
        Ok(o) => cfg_set(dev, off, len, *o).and_then(|()| cfg_get(dev, off, len)),
        Err(e) => Err(e.clone()),
    };
    (orig, got, back)
}

fn seq_str(s: &Seq) -> String {
    format!("orig={} got={} restored={}", sv(&s.0), sv(&s.1), sv(&s.2))
}

fn sec_cfg_write(ck: &mut Ck, dev: &File, lay: &Layout, vbulk: &Option<Vec<u8>>) {
    // BAR and ROM sizing.
    for bar in 0..6usize {
        let s = write_seq(dev, PCI_BASE_ADDRESS_0 + 4 * bar, 4, u32::MAX);
        let want = bar_sizing_expect(&lay.res, bar);
        let v = match &s {
            (Ok(o), Ok(g), Ok(b)) if *g == want && b == o => Ok(()),
            _ => Err(format!(
                "expected got=0x{want:x} and restored=orig (as vfio-pci); {}",
                seq_str(&s)
            )),
        };
        ck.both(&format!("cfg-bar-sizing[{bar}]"), seq_str(&s), v);
    }
    let s = write_seq(dev, PCI_ROM_ADDRESS, 4, u32::MAX);
    let want = rom_sizing_expect(&lay.res[6]);
    let v = match &s {
        (Ok(o), Ok(g), Ok(b)) if *g == want && b == o => Ok(()),
        _ => Err(format!(
            "expected got=0x{want:x} and restored=orig (as vfio-pci); {}",
            seq_str(&s)
        )),
    };
    ck.both("cfg-rom-sizing", seq_str(&s), v);
    let s = write_seq(dev, PCI_ROM_ADDRESS, 4, 0xffff_fffe);
    let want = want & !1;
    let v = match &s {
        (_, Ok(g), _) if *g == want => Ok(()),
        _ => Err(format!(
            "expected got=0x{want:x} (as vfio-pci); {}",
            seq_str(&s)
        )),
    };
    ck.both("cfg-rom-sizing-no-enable", seq_str(&s), v);

    // COMMAND: each bit alone, all, then back.
    let orig = cfg_get(dev, PCI_COMMAND, 2);
    let mut items = Vec::new();
    let mut bad = Vec::new();
    let bits = PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE;
    for val in [
        0u16,
        PCI_COMMAND_IO,
        PCI_COMMAND_MEMORY,
        PCI_COMMAND_MASTER,
        PCI_COMMAND_INTX_DISABLE,
        bits,
        0xffff,
    ] {
        let r =
            cfg_set(dev, PCI_COMMAND, 2, val as u32).and_then(|()| cfg_get(dev, PCI_COMMAND, 4));
        items.push(format!("0x{val:x}->{}", sv(&r)));
        match &r {
            Ok(g) if (*g as u16) & bits == val & bits => {}
            _ => bad.push(format!(
                "wrote 0x{val:x} read {} (expected bits 0x{:x})",
                sv(&r),
                val & bits
            )),
        }
    }
    let back = orig
        .clone()
        .and_then(|o| cfg_set(dev, PCI_COMMAND, 2, o).and_then(|()| cfg_get(dev, PCI_COMMAND, 2)));
    items.push(format!("orig {}->{}", sv(&orig), sv(&back)));
    if orig.is_err() || back != orig {
        bad.push(format!("restore: orig {} read {}", sv(&orig), sv(&back)));
    }
    let v = if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join(", "))
    };
    ck.both("cfg-command", items.join("; "), v);

    // BAR access with memory decode disabled: C refuses memory BARs (EIO), not I/O BARs.
    sec_mem_disabled(ck, dev, lay, &orig);

    // STATUS: RW1C and read-only bits; nothing set to clear here, so it reads back unchanged.
    let s = write_seq(dev, PCI_STATUS, 2, 0xffff);
    let v = match &s {
        (Ok(o), Ok(g), _) if g == o => Ok(()),
        _ => Err(format!("expected got=orig (as vfio-pci); {}", seq_str(&s))),
    };
    ck.both("cfg-status-write", seq_str(&s), v);

    // Read-only and reserved header fields ignore writes.
    let mut items = Vec::new();
    let mut bad = Vec::new();
    for (off, len, what) in [
        (0x00, 4, "vendor/device"),
        (0x08, 4, "revision/class"),
        (0x0e, 1, "header type"),
        (0x28, 4, "cardbus CIS"),
        (0x2c, 4, "subsystem"),
        (0x34, 1, "capability pointer"),
        (0x35, 3, "reserved 0x35"),
        (0x38, 4, "reserved 0x38"),
        (0x3d, 1, "interrupt pin"),
    ] {
        let s = write_seq(dev, off, len, u32::MAX >> (32 - 8 * len));
        items.push(format!("0x{off:x}: {}", seq_str(&s)));
        match &s {
            (Ok(o), Ok(g), _) if g == o => {}
            _ => bad.push(format!("{what} (0x{off:x}): {}", seq_str(&s))),
        }
    }
    let v = if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join(", "))
    };
    ck.both("cfg-readonly-header", items.join("; "), v);

    // Interrupt line: virtualized, writable.
    let s = write_seq(dev, PCI_INTERRUPT_LINE, 1, 0xa5);
    let v = match &s {
        (Ok(o), Ok(0xa5), Ok(b)) if b == o => Ok(()),
        _ => Err(format!(
            "expected got=0xa5, restored=orig (as vfio-pci); {}",
            seq_str(&s)
        )),
    };
    ck.both("cfg-interrupt-line", seq_str(&s), v);
    // Cache line size and latency timer: passed to the hardware; compared only.
    let s = write_seq(dev, 0x0c, 2, 0xffff);
    ck.rec("cfg-cacheline-latency", seq_str(&s));

    // Capability headers (id, next) are read-only.
    let mut items = Vec::new();
    let mut bad = Vec::new();
    for c in &lay.caps {
        let s = write_seq(dev, c.off, 2, 0xffff);
        items.push(format!("cap 0x{:x}@0x{:x}: {}", c.id, c.off, seq_str(&s)));
        if !matches!(&s, (Ok(o), Ok(g), _) if g == o) {
            bad.push(format!("cap 0x{:x}@0x{:x}: {}", c.id, c.off, seq_str(&s)));
        }
    }
    for c in &lay.ecaps {
        let s = write_seq(dev, c.off, 4, u32::MAX);
        items.push(format!("ecap 0x{:x}@0x{:x}: {}", c.id, c.off, seq_str(&s)));
        if !matches!(&s, (Ok(o), Ok(g), _) if g == o) {
            bad.push(format!("ecap 0x{:x}@0x{:x}: {}", c.id, c.off, seq_str(&s)));
        }
    }
    if !items.is_empty() {
        let v = if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join(", "))
        };
        ck.both("cfg-cap-headers-readonly", items.join("; "), v);
    }

    if let Some(m) = lay.cap(PCI_CAP_ID_MSI) {
        sec_msi(ck, dev, lay, m);
    }
    if let Some(x) = lay.cap(PCI_CAP_ID_MSIX) {
        // vfio-pci has no write handler for MSI-X: every write to it is dropped.
        let orig = cfg_get(dev, x + PCI_MSIX_FLAGS, 2);
        let mut items = Vec::new();
        let mut ok = orig.is_ok();
        for val in [0x8000u32, 0x4000, 0x07ff, 0xffff, 0] {
            let r = cfg_set(dev, x + PCI_MSIX_FLAGS, 2, val)
                .and_then(|()| cfg_get(dev, x + PCI_MSIX_FLAGS, 2));
            items.push(format!("0x{val:x}->{}", sv(&r)));
            ok &= r == orig;
        }
        let v = if ok {
            Ok(())
        } else {
            Err(format!(
                "expected every read = orig {} (writes dropped, as vfio-pci); {}",
                sv(&orig),
                items.join(", ")
            ))
        };
        ck.both(
            "cfg-msix-control",
            format!("orig {}; {}", sv(&orig), items.join("; ")),
            v,
        );
        let s = write_seq(dev, x + PCI_MSIX_TABLE, 4, u32::MAX);
        let v = match &s {
            (Ok(o), Ok(g), _) if g == o => Ok(()),
            _ => Err(format!(
                "table offset/BIR must be read-only (as vfio-pci); {}",
                seq_str(&s)
            )),
        };
        ck.both("cfg-msix-table-bir", seq_str(&s), v);
    }
    if let Some(e) = lay.cap(PCI_CAP_ID_EXP) {
        let orig = cfg_get(dev, e + PCI_EXP_DEVCTL, 2);
        let mut items = vec![format!("orig {}", sv(&orig))];
        let mut ok = orig.is_ok();
        if let Ok(o) = &orig {
            // MRRS is virtualized: what is written reads back. The error-reporting enables go
            // to the hardware (which may not implement them): compared only.
            let rq = (o & !(PCI_EXP_DEVCTL_READRQ as u32)) | (((o >> 12) + 1) & 7) << 12;
            let r = cfg_set(dev, e + PCI_EXP_DEVCTL, 2, rq)
                .and_then(|()| cfg_get(dev, e + PCI_EXP_DEVCTL, 2));
            items.push(format!("0x{rq:x}->{}", sv(&r)));
            ok &= r.as_ref().is_ok_and(|g| {
                g & PCI_EXP_DEVCTL_READRQ as u32 == rq & PCI_EXP_DEVCTL_READRQ as u32
            });
            let val = (o | 0x000f) & !(PCI_EXP_DEVCTL_BCR_FLR as u32);
            let r = cfg_set(dev, e + PCI_EXP_DEVCTL, 2, val)
                .and_then(|()| cfg_get(dev, e + PCI_EXP_DEVCTL, 2));
            items.push(format!("0x{val:x}->{}", sv(&r)));
            let back = cfg_set(dev, e + PCI_EXP_DEVCTL, 2, *o)
                .and_then(|()| cfg_get(dev, e + PCI_EXP_DEVCTL, 2));
            items.push(format!("back->{}", sv(&back)));
            ok &= back == orig;
        }
        let v = if ok {
            Ok(())
        } else {
            Err(format!("expected the written MRRS to read back and the restore to read orig (as vfio-pci); {}", items.join(", ")))
        };
        ck.both("cfg-exp-devctl", items.join("; "), v);
        let s = write_seq(dev, e + PCI_EXP_DEVCTL2, 2, 0xffff);
        ck.rec("cfg-exp-devctl2", seq_str(&s));
    }
    if let Some(p) = lay.cap(PCI_CAP_ID_VNDR) {
        let s = write_seq(dev, p + 4, 4, u32::MAX);
        ck.rec("cfg-vendor-cap", seq_str(&s));
    }

    // Sweeps: every dword (all ones, then the original value), then every byte of the
    // standard space, except the registers with side effects tested on their own (PM state,
    // PCIe device control with its FLR bit, link control). Compared between the drivers, and
    // the config space must read as before afterwards.
    let mut skip: Vec<usize> = Vec::new();
    if let Some(p) = lay.cap(PCI_CAP_ID_PM) {
        skip.push(p + PCI_PM_CTRL);
    }
    if let Some(e) = lay.cap(PCI_CAP_ID_EXP) {
        skip.extend([e + PCI_EXP_DEVCTL, e + PCI_EXP_LNKCTL]);
    }
    let before = cfg_bulk(dev, lay.cfg_size());
    let mut items = Vec::new();
    for off in (0..lay.cfg_size()).step_by(4).filter(|o| !skip.contains(o)) {
        let s = write_seq(dev, off, 4, u32::MAX);
        items.push(format!("0x{off:x}:{}/{}/{}", sv(&s.0), sv(&s.1), sv(&s.2)));
    }
    ck.rec("cfg-sweep32", items.join("; "));
    let after = cfg_bulk(dev, lay.cfg_size());
    ck.check("cfg-sweep32-restored", same_cfg(&before, &after));
    let mut items = Vec::new();
    for off in (0..lay.cfg_size().min(256)).filter(|o| !skip.contains(&(o & !3))) {
        let s = write_seq(dev, off, 1, 0xff);
        items.push(format!("0x{off:x}:{}/{}/{}", sv(&s.0), sv(&s.1), sv(&s.2)));
    }
    ck.rec("cfg-sweep8", items.join("; "));
    let after8 = cfg_bulk(dev, lay.cfg_size());
    ck.check("cfg-sweep8-restored", same_cfg(&before, &after8));
    let _ = vbulk;
}

fn sec_msi(ck: &mut Ck, dev: &File, _lay: &Layout, m: usize) {
    let orig = cfg_get(dev, m + PCI_MSI_FLAGS, 2);
    let en = cfg_set(dev, m + PCI_MSI_FLAGS, 2, orig.clone().unwrap_or(0) | 1)
        .and_then(|()| cfg_get(dev, m + PCI_MSI_FLAGS, 2));
    let qs = cfg_set(dev, m + PCI_MSI_FLAGS, 2, orig.clone().unwrap_or(0) | 0x70)
        .and_then(|()| cfg_get(dev, m + PCI_MSI_FLAGS, 2));
    let back = orig.clone().and_then(|o| {
        cfg_set(dev, m + PCI_MSI_FLAGS, 2, o).and_then(|()| cfg_get(dev, m + PCI_MSI_FLAGS, 2))
    });
    let value = format!(
        "orig {} enable->{} qsize->{} back->{}",
        sv(&orig),
        sv(&en),
        sv(&qs),
        sv(&back)
    );
    // MSI is enabled through VFIO_DEVICE_SET_IRQS only: the enable bit reads back clear; the
    // queue size is clamped to what the device offers (QMASK); the restore reads orig.
    let v = match (&orig, &en, &qs, &back) {
        (Ok(o), Ok(e), Ok(q), Ok(b)) if e & 1 == 0 && (q >> 4) & 7 <= (o >> 1) & 7 && b == o => {
            Ok(())
        }
        _ => Err(format!(
            "expected enable to read 0, QSIZE <= QMASK, restore = orig (as vfio-pci); {value}"
        )),
    };
    ck.both("cfg-msi-control", value, v);
    let s = write_seq(dev, m + 4, 4, 0xfee0_1004);
    let v = match &s {
        (Ok(o), Ok(0xfee0_1004), Ok(b)) if b == o => Ok(()),
        _ => Err(format!(
            "expected the virtualized address to read back (as vfio-pci); {}",
            seq_str(&s)
        )),
    };
    ck.both("cfg-msi-address", seq_str(&s), v);
}

/// A BAR access with COMMAND.MEM clear is refused with EIO; a VF's memory decode is its PF's
/// SR-IOV MSE, so COMMAND.MEM changes nothing there.
fn memdisabled_verdict<T: ShowOk>(r: &io::Result<T>, lay: &Layout) -> Result<(), String> {
    if !lay.is_vf {
        return expect_errno(r, libc::EIO);
    }
    r.as_ref()
        .map(|_| ())
        .map_err(|e| format!("expected success on a VF (as vfio-pci) got {}", err_name(e)))
}

fn sec_mem_disabled(ck: &mut Ck, dev: &File, lay: &Layout, orig_cmd: &Result<u32, String>) {
    let Some((b, _)) = lay.first_mem_bar() else {
        return;
    };
    let Ok(cmd) = orig_cmd.clone() else {
        let mut names = vec!["bar-memdisabled-read", "bar-memdisabled-write"];
        if lay.res[6].start != 0 {
            names.push("rom-memdisabled-read");
        }
        if lay.first_io_bar().is_some() {
            names.push("bar-io-memdisabled-read");
        }
        names.push("bar-memreenabled-read");
        for n in names {
            ck.both(
                n,
                "skipped",
                Err(format!("COMMAND unreadable: {}", sv(orig_cmd))),
            );
        }
        return;
    };
    let pre = rd(dev, b, 0, 4);
    let io = lay.first_io_bar();
    let off = cfg_set(
        dev,
        PCI_COMMAND,
        2,
        cmd & !(PCI_COMMAND_MEMORY as u32) | PCI_COMMAND_IO as u32,
    );
    let r = rd(dev, b, 0, 4);
    ck.both(
        "bar-memdisabled-read",
        show_rd(&r, 4),
        off.clone().and_then(|()| memdisabled_verdict(&r, lay)),
    );
    // Write back what was read (harmless if a driver lets it through).
    let data = pre
        .as_ref()
        .ok()
        .filter(|p| p.len() == 4)
        .cloned()
        .unwrap_or(vec![0; 4]);
    let r = wr(dev, b, 0, &data);
    ck.both(
        "bar-memdisabled-write",
        show_wr(&r, 4),
        off.clone().and_then(|()| memdisabled_verdict(&r, lay)),
    );
    if lay.res[6].start != 0 {
        // A shadowed ROM is mapped from its shadow copy and then refused like a BAR (EIO); a
        // ROM BAR cannot be mapped at all with decode off: pci_map_rom() finds no 55aa
        // signature, and vfio-pci answers ENOMEM.
        let shadow = lay.res[6].flags & 2 != 0;
        let r = rd(dev, ROM, 0, 2);
        let want = if shadow { libc::EIO } else { libc::ENOMEM };
        ck.both(
            "rom-memdisabled-read",
            show_rd(&r, 2),
            off.clone().and_then(|()| expect_errno(&r, want)),
        );
    }
    if let Some(i) = io {
        // Only the outcome is compared: the register's value is the device's business.
        let r = rd(dev, i, 0, 1);
        let (value, v) = match &r {
            Ok(x) if x.len() == 1 => ("ok 1 byte".to_string(), Ok(())),
            _ => (
                show_rd(&r, 1),
                Err(format!(
                    "I/O BARs are not gated on memory decode in vfio-pci; got {}",
                    show_rd(&r, 1)
                )),
            ),
        };
        ck.both("bar-io-memdisabled-read", value, v);
    }
    let on = cfg_set(dev, PCI_COMMAND, 2, cmd);
    let r = rd(dev, b, 0, 4);
    let v = match (&on, &r, &pre) {
        (Ok(()), Ok(x), Ok(p)) if x == p && x.len() == 4 => Ok(()),
        _ => Err(format!(
            "after re-enabling memory: {} (before disabling: {})",
            show_rd(&r, 4),
            show_rd(&pre, 4)
        )),
    };
    ck.both("bar-memreenabled-read", show_rd(&r, 4), v);
}

// ------------------------------------------------------------------------------------------
// Power management
// ------------------------------------------------------------------------------------------

fn sec_pm(ck: &mut Ck, dev: &File, lay: &Layout) {
    let Some(p) = lay.cap(PCI_CAP_ID_PM) else {
        ck.note("no PM capability: no D-state checks");
        return;
    };
    let ctl = p + PCI_PM_CTRL;
    let bar = lay.first_mem_bar().map(|(b, _)| b).unwrap_or(0);
    let orig = cfg_get(dev, ctl, 2);
    let o = orig.clone().unwrap_or(0) & !3;
    let pre = rd(dev, bar, 0, 4);
    ck.rec("pm-pmc", sv(&cfg_get(dev, p + 2, 2)));

    let d3 = cfg_set(dev, ctl, 2, o | 3).and_then(|()| cfg_get(dev, ctl, 2));
    let v = match &d3 {
        Ok(x) if x & 3 == 3 => Ok(()),
        _ => Err(format!(
            "PMCSR after writing D3hot: {} (expected state 3, as vfio-pci)",
            sv(&d3)
        )),
    };
    ck.both("pm-d3hot", sv(&d3), v);
    let r = rd(dev, bar, 0, 4);
    ck.both(
        "pm-d3hot-bar-read",
        show_rd(&r, 4),
        expect_errno(&r, libc::EIO),
    );
    let r = wr(dev, bar, 0, pre.as_deref().unwrap_or(&[0; 4]));
    ck.both(
        "pm-d3hot-bar-write",
        show_wr(&r, 4),
        expect_errno(&r, libc::EIO),
    );
    let c = cfg_bulk(dev, lay.cfg_size());
    ck.rec(
        "pm-d3hot-config",
        match &c {
            Ok(b) => format!("ok {}", hex(b)),
            Err(e) => e.clone(),
        },
    );
    let d0 = cfg_set(dev, ctl, 2, o).and_then(|()| cfg_get(dev, ctl, 2));
    let v = match &d0 {
        Ok(x) if x & 3 == 0 => Ok(()),
        _ => Err(format!(
            "PMCSR after writing D0: {} (expected state 0, as vfio-pci)",
            sv(&d0)
        )),
    };
    ck.both("pm-d0", sv(&d0), v);
    let r = rd(dev, bar, 0, 4);
    let v = match (&r, &pre) {
        (Ok(x), Ok(p)) if x == p && x.len() == 4 => Ok(()),
        _ => Err(format!(
            "BAR{bar} read back in D0: {} (before D3hot: {})",
            show_rd(&r, 4),
            show_rd(&pre, 4)
        )),
    };
    ck.both("pm-d0-bar-read", show_rd(&r, 4), v);
    // D1 and D2 (the igb supports neither): compared only.
    let d1 = cfg_set(dev, ctl, 2, o | 1).and_then(|()| cfg_get(dev, ctl, 2));
    let d2 = cfg_set(dev, ctl, 2, o | 2).and_then(|()| cfg_get(dev, ctl, 2));
    let back = cfg_set(dev, ctl, 2, o).and_then(|()| cfg_get(dev, ctl, 2));
    ck.rec(
        "pm-d1-d2",
        format!("d1 {} d2 {} d0 {}", sv(&d1), sv(&d2), sv(&back)),
    );
}

// ------------------------------------------------------------------------------------------
// BAR, ROM and VGA access
// ------------------------------------------------------------------------------------------

/// Write `data` at `off` of BAR `bar` and read it back.
fn round_trip(dev: &File, bar: u32, off: u64, data: &[u8]) -> (String, Result<(), String>) {
    let w = wr(dev, bar, off, data);
    let r = rd(dev, bar, off, data.len());
    let value = format!(
        "w {} r {}",
        show_wr(&w, data.len()),
        show_rd(&r, data.len())
    );
    let v = match (&w, &r) {
        (Ok(n), Ok(b)) if *n == data.len() && b == data => Ok(()),
        _ => Err(format!(
            "wrote {} at BAR{bar}+0x{off:x}: {value}",
            hex(data)
        )),
    };
    (value, v)
}

/// Round trips at 1, 2, 4, 8 bytes (aligned and not) and 4 KiB at `base` of a RAM-like BAR:
/// first a per-run nonce (so a write that does nothing cannot pass on stale data), then a
/// fixed pattern (compared between the drivers).
fn ram_round_trips(ck: &mut Ck, dev: &File, bar: u32, base: u64, run: u32) {
    for (i, (off, len)) in [
        (0u64, 1usize),
        (2, 2),
        (4, 4),
        (8, 8),
        (0x13, 8),
        (0x21, 4),
        (0x31, 3),
        (0x41, 7),
        (0x1000, 4096),
    ]
    .into_iter()
    .enumerate()
    {
        let name = if len == 4096 {
            format!("bar{bar}-rw-bulk4k")
        } else if off % len as u64 == 0 {
            format!("bar{bar}-rw{len}")
        } else {
            format!("bar{bar}-rw{len}-unaligned@0x{off:x}")
        };
        let (_, nv) = round_trip(dev, bar, base + off, &nonce_bytes(run, len, i as u8));
        let (value, v) = round_trip(dev, bar, base + off, &pattern(len, i as u8));
        let value = if len > 64 {
            format!("{} fnv={:x}", &value[..value.find(' ').unwrap_or(0)], {
                let r = rd(dev, bar, base + off, len).unwrap_or_default();
                fnv(&r)
            })
        } else {
            value
        };
        ck.both(&name, value, nv.and(v));
    }
}

fn sec_bars(ck: &mut Ck, dev: &File, lay: &Layout, run: u32) {
    match (lay.vendor, lay.device) {
        (0x1af4, 0x1110) => ivshmem(ck, dev, lay, run),
        (0x1234, 0x11e8) => edu(ck, dev, run),
        (0x1b36, 0x0005) => testdev(ck, dev, lay),
        (0x8086, 0x10c9) => igb(ck, dev, lay, run),
        (0x1234, 0x1111) => vga(ck, dev, lay, run),
        _ => ck.note("no device-specific BAR checks for this device"),
    }
}

fn ivshmem(ck: &mut Ck, dev: &File, lay: &Layout, run: u32) {
    // BAR2: the shared memory.
    ram_round_trips(ck, dev, 2, 0x1000, run);
    let len = lay.res[2].len();
    let r = rd(dev, 2, len - 4, 8);
    let v = match &r {
        Ok(b) if b.len() == 4 => Ok(()),
        _ => Err(format!(
            "expected a short read of 4 at the end of BAR2 (as vfio-pci) got {}",
            show_rd(&r, 8)
        )),
    };
    ck.both("bar2-straddle-end", show_rd(&r, 8), v);

    // What the guest wrote through BAR2 is in the host's backing file.
    let off = 0x10_0000 + u64::from(run) * 0x1000;
    let data = nonce_bytes(run, 4096, 0xee);
    let w = wr(dev, 2, off, &data);
    let files = ivshmem_files();
    let v = (|| {
        let files = files.as_ref().map_err(String::clone)?;
        match &w {
            Ok(4096) => {}
            _ => {
                return Err(format!(
                    "write 4096 at BAR2+0x{off:x}: {}",
                    show_wr(&w, 4096)
                ))
            }
        }
        let mut seen = Vec::new();
        for f in files {
            let fh = File::open(f).map_err(|e| format!("{}: {e}", f.display()))?;
            let mut buf = vec![0u8; 4096];
            let n = fh
                .read_at(&mut buf, off)
                .map_err(|e| format!("{}: {e}", f.display()))?;
            if n == 4096 && buf == data {
                return Ok(());
            }
            seen.push(format!("{}: {}", f.display(), hex(&buf[..16])));
        }
        Err(format!(
            "bytes written through BAR2 (+0x{off:x}: {}...) not in any backing file: {}",
            hex(&data[..16]),
            seen.join(", ")
        ))
    })();
    ck.both("bar2-host-backing-file", show_wr(&w, 4096), v);

    // BAR0: registers. IntrMask (0x0) is read-write.
    let (value, v) = round_trip(dev, 0, 0, &0x5a5a_0001u32.to_le_bytes());
    ck.both("bar0-intrmask-rw", value, v);
    let _ = wr(dev, 0, 0, &[0; 4]);
    let r = rd(dev, 0, 0, 16);
    ck.rec("bar0-regs", show_rd(&r, 16));
}

fn edu(ck: &mut Ck, dev: &File, run: u32) {
    let r = rd(dev, 0, 0, 4);
    let v = match &r {
        Ok(b) if b[..] == 0x0100_00edu32.to_le_bytes() => Ok(()),
        _ => Err(format!(
            "edu identification register: expected 0x010000ed got {}",
            show_rd(&r, 4)
        )),
    };
    ck.both("edu-id", show_rd(&r, 4), v);
    // 0x04: the liveness register reads back the inverse of what was written.
    for (name, val) in [
        ("edu-inverse", 0x1234_5678u32),
        (
            "edu-inverse-nonce",
            u32::from_le_bytes(nonce_bytes(run, 4, 4).try_into().unwrap()),
        ),
    ] {
        let w = wr(dev, 0, 4, &val.to_le_bytes());
        let r = rd(dev, 0, 4, 4);
        let value = format!("w {} r {}", show_wr(&w, 4), show_rd(&r, 4));
        let v = match (&w, &r) {
            (Ok(4), Ok(b)) if b[..] == (!val).to_le_bytes() => Ok(()),
            _ => Err(format!(
                "wrote 0x{val:08x} at 0x4, expected to read 0x{:08x}: {value}",
                !val
            )),
        };
        if name == "edu-inverse" {
            ck.both(name, value, v);
        } else {
            ck.check(name, v);
        }
    }
    // 8-byte register (DMA source address at 0x80).
    let (value, v) = round_trip(dev, 0, 0x80, &0x0000_0000_1122_3344u64.to_le_bytes());
    ck.both("edu-rw8", value, v);
    // Narrow reads of a 4-byte register: what the device answers, compared only.
    for (off, len) in [(0u64, 1usize), (0, 2), (2, 2), (1, 1)] {
        let r = rd(dev, 0, off, len);
        ck.rec(&format!("edu-read{len}@0x{off:x}"), show_rd(&r, len));
    }
}

fn testdev(ck: &mut Ck, dev: &File, lay: &Layout) {
    let r = rd(dev, 0, 0, 64);
    let v = match &r {
        Ok(b) if b.len() == 64 => Ok(()),
        _ => Err(format!("BAR0 read 64: {}", show_rd(&r, 64))),
    };
    ck.both("bar0-read64", show_rd(&r, 64), v);
    if let Some(io) = lay.first_io_bar() {
        for (off, len) in [(0u64, 1usize), (0, 2), (0, 4), (1, 1), (2, 2), (4, 4)] {
            let r = rd(dev, io, off, len);
            let v = match &r {
                Ok(b) if b.len() == len => Ok(()),
                _ => Err(format!(
                    "I/O BAR{io} read {len}@0x{off:x}: {}",
                    show_rd(&r, len)
                )),
            };
            ck.both(
                &format!("bar{io}-io-read{len}@0x{off:x}"),
                show_rd(&r, len),
                v,
            );
        }
    }
}

fn igb(ck: &mut Ck, dev: &File, lay: &Layout, run: u32) {
    let status = rd(dev, 0, 0x8, 4);
    let v = match &status {
        Ok(b) if b.len() == 4 => Ok(()),
        _ => Err(format!("STATUS read: {}", show_rd(&status, 4))),
    };
    ck.both("igb-status", show_rd(&status, 4), v);
    // RAL0 (0x5400) is read-write.
    let (_, nv) = round_trip(dev, 0, 0x5400, &nonce_bytes(run, 4, 1));
    let (value, v) = round_trip(dev, 0, 0x5400, &0x1234_5678u32.to_le_bytes());
    ck.both("igb-ral0-rw4", value, nv.and(v));
    for (off, len) in [(0x5400u64, 8usize), (0x5400, 2), (0x5402, 2), (0x5401, 1)] {
        let r = rd(dev, 0, off, len);
        ck.rec(&format!("igb-read{len}@0x{off:x}"), show_rd(&r, len));
    }
    // I/O BAR: IOADDR/IODATA window onto the registers.
    if let Some(io) = lay.first_io_bar() {
        let w = wr(dev, io, 0, &0x8u32.to_le_bytes());
        let r = rd(dev, io, 4, 4);
        let value = format!("w {} r {}", show_wr(&w, 4), show_rd(&r, 4));
        let v = match (&w, &r, &status) {
            (Ok(4), Ok(x), Ok(s)) if x == s => Ok(()),
            _ => Err(format!(
                "IOADDR=0x8 then IODATA: {value}; STATUS via BAR0 {}",
                show_rd(&status, 4)
            )),
        };
        ck.both("igb-io-indirect", value, v);
    }
    // The MSI-X table is excluded: reads give ones, writes are dropped.
    if let Some((b, toff, tsize)) = lay.msix_bar() {
        let r = rd(dev, b, toff, 16);
        let v = match &r {
            Ok(x) if x.len() == 16 && x.iter().all(|b| *b == 0xff) => Ok(()),
            _ => Err(format!(
                "MSI-X table read: expected 16 x ff (as vfio-pci) got {}",
                show_rd(&r, 16)
            )),
        };
        ck.both("msix-table-read", show_rd(&r, 16), v);
        let w = wr(dev, b, toff, &[0; 4]);
        let r = rd(dev, b, toff, 4);
        let value = format!("w {} r {}", show_wr(&w, 4), show_rd(&r, 4));
        let v = match (&w, &r) {
            (Ok(4), Ok(x)) if x[..] == [0xff; 4] => Ok(()),
            _ => Err(format!(
                "MSI-X table write must be dropped (count 4, still ff): {value}"
            )),
        };
        ck.both("msix-table-write-dropped", value, v);
        let r = rd(dev, b, toff + tsize - 8, 16);
        let v = match &r {
            Ok(x) if x.len() == 16 && x[..8] == [0xff; 8] => Ok(()),
            _ => Err(format!(
                "straddling the MSI-X table end: expected 8 x ff then the BAR, got {}",
                show_rd(&r, 16)
            )),
        };
        ck.both("msix-table-straddle", show_rd(&r, 16), v);
        let pba = if b as usize == 3 {
            0x2000
        } else {
            toff + 0x2000
        };
        let r = rd(dev, b, pba, 8);
        ck.rec("msix-pba-read", show_rd(&r, 8));
    }
}

fn vga(ck: &mut Ck, dev: &File, lay: &Layout, run: u32) {
    ram_round_trips(ck, dev, 0, 0x10_0000, run);
    // BAR2: bochs dispi registers; 0x500 is the ID register (0xb0c0..0xb0c5).
    let r = rd(dev, 2, 0x500, 2);
    let v = match &r {
        Ok(b) if b.len() == 2 && u16::from_le_bytes([b[0], b[1]]) & 0xfff0 == 0xb0c0 => Ok(()),
        _ => Err(format!(
            "bochs ID register: expected 0xb0cX got {}",
            show_rd(&r, 2)
        )),
    };
    ck.both("vga-bar2-dispi-id", show_rd(&r, 2), v);

    // ROM.
    let rom = lay.res[6];
    if rom.start != 0 {
        let r = rd(dev, ROM, 0, 2);
        let v = match &r {
            Ok(b) if b[..] == [0x55, 0xaa] => Ok(()),
            _ => Err(format!(
                "ROM signature: expected 55aa got {}",
                show_rd(&r, 2)
            )),
        };
        ck.both("rom-signature", show_rd(&r, 2), v);
        let r = rd(dev, ROM, 0, 8);
        ck.both(
            "rom-read8",
            show_rd(&r, 8),
            match &r {
                Ok(b) if b.len() == 8 => Ok(()),
                _ => Err(format!("ROM read 8: {}", show_rd(&r, 8))),
            },
        );
        let size = rom.len() as usize;
        let r = rd(dev, ROM, 0, size);
        let value = match &r {
            Ok(b) => format!(
                "n={} fnv={:x} tail={}",
                b.len(),
                fnv(b),
                hex(&b[b.len().saturating_sub(16)..])
            ),
            Err(e) => err_name(e),
        };
        let v = match &r {
            Ok(b) if b.len() == size => Ok(()),
            _ => Err(format!("whole ROM BAR (0x{size:x}): {value}")),
        };
        ck.both("rom-read-all", value, v);
        let r = rd(dev, ROM, size as u64 - 4, 8);
        ck.both(
            "rom-straddle-end",
            show_rd(&r, 8),
            match &r {
                Ok(b) if b.len() == 4 => Ok(()),
                _ => Err(format!(
                    "expected a short read of 4 (as vfio-pci) got {}",
                    show_rd(&r, 8)
                )),
            },
        );
        let r = rd(dev, ROM, size as u64, 4);
        ck.both(
            "rom-past-end",
            show_rd(&r, 4),
            expect_errno(&r, libc::EINVAL),
        );
    }

    // The VGA region: legacy memory 0xa0000-0xbffff and I/O ports 0x3b0-0x3bb, 0x3c0-0x3df.
    let r = rd(dev, VGA, 0x3cc, 1);
    ck.both(
        "vga-io-misc-output",
        show_rd(&r, 1),
        match &r {
            Ok(b) if b.len() == 1 => Ok(()),
            _ => Err(format!("read 0x3cc: {}", show_rd(&r, 1))),
        },
    );
    let r = rd(dev, VGA, 0xa0000, 16);
    ck.both(
        "vga-mem-read",
        show_rd(&r, 16),
        match &r {
            Ok(b) if b.len() == 16 => Ok(()),
            _ => Err(format!("read 16 at 0xa0000: {}", show_rd(&r, 16))),
        },
    );
    let r = rd(dev, VGA, 0xbfff8, 16);
    ck.both(
        "vga-mem-straddle-end",
        show_rd(&r, 16),
        match &r {
            Ok(b) if b.len() == 8 => Ok(()),
            _ => Err(format!(
                "expected a short read of 8 (as vfio-pci) got {}",
                show_rd(&r, 16)
            )),
        },
    );
    let r = rd(dev, VGA, 0x3b8, 8);
    ck.both(
        "vga-io-straddle",
        show_rd(&r, 8),
        match &r {
            Ok(b) if b.len() == 4 => Ok(()),
            _ => Err(format!(
                "0x3b8 + 8: expected a short read of 4 (as vfio-pci) got {}",
                show_rd(&r, 8)
            )),
        },
    );
    for (off, name) in [
        (0u64, "vga-bad-low"),
        (0x3bc, "vga-bad-gap"),
        (0x3e0, "vga-bad-after-io"),
        (0xc0000, "vga-bad-end"),
    ] {
        let r = rd(dev, VGA, off, 1);
        ck.both(name, show_rd(&r, 1), expect_errno(&r, libc::EINVAL));
    }
}

// ------------------------------------------------------------------------------------------
// Reset
// ------------------------------------------------------------------------------------------

/// A device register whose value a reset changes, for the transcript.
fn device_state(dev: &File, lay: &Layout) -> Option<(u32, u64, usize)> {
    match (lay.vendor, lay.device) {
        (0x1af4, 0x1110) => Some((0, 0, 4)),      // ivshmem IntrMask
        (0x1234, 0x11e8) => Some((0, 4, 4)),      // edu liveness
        (0x8086, 0x10c9) => Some((0, 0x5400, 4)), // igb RAL0
        (0x1234, 0x1111) => Some((2, 0x502, 2)),  // bochs XRES
        _ => {
            let _ = dev;
            None
        }
    }
}

fn sec_reset(ck: &mut Ck, dev: &File, lay: &Layout, has_reset: Option<bool>) {
    let reset = || sys::ioctl_noarg(dev, uapi::VFIO_DEVICE_RESET);
    let want_ok = has_reset.unwrap_or(true);
    let expect = |r: &io::Result<i32>| -> Result<(), String> {
        match (has_reset, r) {
            (None, _) => Err("GET_INFO failed: cannot tell whether RESET is offered".into()),
            (Some(true), Ok(_)) => Ok(()),
            (Some(false), _) => expect_errno(r, libc::EINVAL),
            (Some(true), Err(e)) => Err(format!(
                "GET_INFO offers RESET but VFIO_DEVICE_RESET failed: {}",
                err_name(e)
            )),
        }
    };
    // Visible changes first: bus master on, interrupt line, a device register.
    let cmd = cfg_get(dev, PCI_COMMAND, 2);
    let _ = cfg_set(
        dev,
        PCI_COMMAND,
        2,
        cmd.clone().unwrap_or(0) | PCI_COMMAND_MASTER as u32,
    );
    let _ = cfg_set(dev, PCI_INTERRUPT_LINE, 1, 0x5a);
    let st = device_state(dev, lay);
    if let Some((b, off, len)) = st {
        let _ = wr(dev, b, off, &[0x11, 0x22, 0x33, 0x44][..len]);
    }
    let before = cfg_bulk(dev, lay.cfg_size());
    let r = reset();
    let after = cfg_bulk(dev, lay.cfg_size());
    ck.both(
        "reset",
        match &r {
            Ok(v) => format!("ok {v}"),
            Err(e) => err_name(e),
        },
        expect(&r),
    );
    // The function's config space is saved and restored around the reset.
    if want_ok {
        ck.check("reset-config-kept", same_cfg(&before, &after));
    }
    if let Some((b, off, len)) = st {
        let r = rd(dev, b, off, len);
        ck.rec("reset-device-register", show_rd(&r, len));
    }
    let _ = cmd.map(|c| cfg_set(dev, PCI_COMMAND, 2, c));

    // From D3hot: the C driver returns the device to D0 first.
    if let Some(p) = lay.cap(PCI_CAP_ID_PM) {
        let ctl = cfg_get(dev, p + PCI_PM_CTRL, 2).unwrap_or(0) & !3;
        let _ = cfg_set(dev, p + PCI_PM_CTRL, 2, ctl | 3);
        let r = reset();
        let after = cfg_get(dev, p + PCI_PM_CTRL, 2);
        let bar = lay.first_mem_bar().map(|(b, _)| b).unwrap_or(0);
        let read = rd(dev, bar, 0, 4);
        let value = format!(
            "{} pmcsr {} bar {}",
            match &r {
                Ok(v) => format!("ok {v}"),
                Err(e) => err_name(e),
            },
            sv(&after),
            show_rd(&read, 4)
        );
        let v = expect(&r).and_then(|()| match (&after, &read) {
            (Ok(a), Ok(x)) if a & 3 == 0 && x.len() == 4 => Ok(()),
            _ => Err(format!(
                "after reset from D3hot: {value} (expected D0 and a readable BAR, as vfio-pci)"
            )),
        });
        ck.both("reset-from-d3hot", value, v);
        let _ = cfg_set(dev, p + PCI_PM_CTRL, 2, ctl);
    }

    // FLR through the PCIe capability: the bit is virtualized and reads back as 0.
    if let (Some(e), true) = (lay.cap(PCI_CAP_ID_EXP), lay.has_flr()) {
        let before = cfg_bulk(dev, lay.cfg_size());
        if let Some((b, off, len)) = st {
            let _ = wr(dev, b, off, &[0x55, 0x66, 0x77, 0x88][..len]);
        }
        let dc = cfg_get(dev, e + PCI_EXP_DEVCTL, 2);
        let w = dc.clone().and_then(|d| {
            cfg_set(
                dev,
                e + PCI_EXP_DEVCTL,
                2,
                d | PCI_EXP_DEVCTL_BCR_FLR as u32,
            )
        });
        let got = cfg_get(dev, e + PCI_EXP_DEVCTL, 2);
        let v = match (&w, &got, &dc) {
            (Ok(()), Ok(g), Ok(d)) if g == d => Ok(()),
            _ => Err(format!("DEVCTL {} | FLR written ({w:?}), read back {} (expected the original, FLR reads 0)", sv(&dc), sv(&got))),
        };
        ck.both("exp-flr-write", sv(&got), v);
        let after = cfg_bulk(dev, lay.cfg_size());
        ck.check("exp-flr-config-kept", same_cfg(&before, &after));
        if let Some((b, off, len)) = st {
            let r = rd(dev, b, off, len);
            ck.rec("exp-flr-device-register", show_rd(&r, len));
        }
    }
}

// ------------------------------------------------------------------------------------------
// Hot reset
// ------------------------------------------------------------------------------------------

fn hot_reset_info_raw(dev: &File, argsz: u32) -> (io::Result<i32>, InfoBuf) {
    let mut buf = InfoBuf::new(argsz.max(12));
    buf.set_u32(0, argsz);
    let r = sys::ioctl_info_buf::<uapi::DeviceGetPciHotResetInfo>(dev, &mut buf);
    (r, buf)
}

fn show_hri(r: &io::Result<i32>, buf: &InfoBuf) -> String {
    let flags = buf.u32_at(4).unwrap_or(0);
    let count = buf.u32_at(8).unwrap_or(0);
    match r {
        Ok(_) => {
            let devs = parse_dependent_devices(&buf.bytes(), count).unwrap_or_default();
            let list: Vec<String> = devs
                .iter()
                .map(|d| format!("{}={}", d.bdf(), d.group_id_or_devid as i32))
                .collect();
            format!(
                "ok flags={} count={count} [{}]",
                uapi::hot_reset_info_flags_str(flags),
                list.join(" ")
            )
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => format!("ENOSPC count={count}"),
        Err(e) => err_name(e),
    }
}

/// Group form of the hot reset ioctls, on a device opened through its group.
fn sec_hot_reset_group(ck: &mut Ck, gd: &GroupDevice, lay: &Layout, other_group: Option<&File>) {
    let dev = &gd.device;
    let n = lay.bus_peers.len() as u32;
    let (r, b) = hot_reset_info_raw(dev, 11);
    ck.both(
        "hot-reset-info-argsz-short",
        show_hri(&r, &b),
        expect_errno(&r, libc::EINVAL),
    );
    let (r, b) = hot_reset_info_raw(dev, 12);
    let v = match &r {
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && b.u32_at(8) == Some(n) => Ok(()),
        _ => Err(format!(
            "argsz 12: expected ENOSPC with count {n} (as vfio-pci) got {}",
            show_hri(&r, &b)
        )),
    };
    ck.both("hot-reset-info-enospc", show_hri(&r, &b), v);
    let full = 12 + 8 * n;
    let (r, b) = hot_reset_info_raw(dev, full);
    let want: Vec<String> = lay
        .bus_peers
        .iter()
        .map(|p| {
            let g = if *p == lay.bdf {
                Ok(lay.group)
            } else {
                sysfs::iommu_group(p)
            };
            format!("{p}={}", g.map(|g| g as i32).unwrap_or(-100))
        })
        .collect();
    let want = format!("ok flags=0x0 (-) count={n} [{}]", want.join(" "));
    let got = show_hri(&r, &b);
    let v = if got == want {
        Ok(())
    } else {
        Err(format!("expected [{want}] (as vfio-pci) got [{got}]"))
    };
    ck.both("hot-reset-info", got, v);

    let own = gd.session.group.as_raw_fd();
    let hr = |argsz: u32, flags: u32, count: u32, fds: &[i32]| {
        sys::pci_hot_reset_raw(dev, argsz, flags, count, fds)
    };
    let show = |r: &io::Result<i32>| match r {
        Ok(v) => format!("ok {v}"),
        Err(e) => err_name(e),
    };
    let r = hr(11, 0, 1, &[own]);
    ck.both(
        "hot-reset-argsz-short",
        show(&r),
        expect_errno(&r, libc::EINVAL),
    );
    let r = hr(16, 1, 1, &[own]);
    ck.both("hot-reset-flags", show(&r), expect_errno(&r, libc::EINVAL));
    let r = hr(12, 0, 0, &[]);
    ck.both(
        "hot-reset-count0-group-opened",
        show(&r),
        expect_errno(&r, libc::EINVAL),
    );
    let r = hr(16, 0, 1, &[-1]);
    ck.both("hot-reset-bad-fd", show(&r), expect_errno(&r, libc::EBADF));
    let r = hr(16, 0, 1, &[dev.as_raw_fd()]);
    ck.both(
        "hot-reset-not-a-group-fd",
        show(&r),
        expect_errno(&r, libc::EINVAL),
    );
    let fds = vec![own; n as usize + 1];
    let r = hr(12 + 4 * (n + 1), 0, n + 1, &fds);
    ck.both(
        "hot-reset-count-too-big",
        show(&r),
        expect_errno(&r, libc::EINVAL),
    );
    if let Some(g) = other_group {
        let r = hr(16, 0, 1, &[g.as_raw_fd()]);
        ck.both(
            "hot-reset-missing-group",
            show(&r),
            expect_errno(&r, libc::EINVAL),
        );
    }
    let before = cfg_bulk(dev, lay.cfg_size());
    let r = hr(16, 0, 1, &[own]);
    let after = cfg_bulk(dev, lay.cfg_size());
    ck.both("hot-reset", show(&r), hot_reset_verdict(&r, lay));
    ck.check("hot-reset-config-kept", same_cfg(&before, &after));
}

/// Success, or -ENOTTY where Linux's wait for the link after the bus reset fails.
fn hot_reset_verdict(r: &io::Result<i32>, lay: &Layout) -> Result<(), String> {
    if lay.is_vf {
        return expect_errno(r, libc::EINVAL).map_err(|e| {
            format!("{e}; a VF's device set is the VF alone, and a bus reset reaches its PF")
        });
    }
    if lay.bus_reset_enotty {
        return expect_errno(r, libc::ENOTTY).map_err(|e| {
            format!("{e}; the port below which the bus is reset never reports its link active, so vfio-pci's pci_reset_bus() fails")
        });
    }
    r.as_ref()
        .map(|_| ())
        .map_err(|e| format!("expected success (as vfio-pci) got {}", err_name(e)))
}

/// The iommufd form, on a device opened through its cdev: zero-length array, DEV_ID flags.
fn sec_hot_reset_cdev(ck: &mut Ck, lay: &Layout) {
    let names = [
        "cdev-hot-reset-info",
        "cdev-hot-reset-count1",
        "cdev-hot-reset-flags",
        "cdev-hot-reset",
    ];
    let opened = (|| -> Result<(File, File, u32), String> {
        let (dev, iommufd, devid) = cdev_bind_iommufd(&lay.bdf)?;
        let mut alloc = uapi::IommuIoasAlloc {
            size: size_u32::<uapi::IommuIoasAlloc>(),
            ..Default::default()
        };
        sys::ioctl_struct::<uapi::IommuIoasAllocReq>(&iommufd, &mut alloc)
            .map_err(|e| format!("IOAS_ALLOC: {}", err_name(&e)))?;
        let mut attach = uapi::VfioDeviceAttachIommufdPt {
            argsz: size_u32::<uapi::VfioDeviceAttachIommufdPt>(),
            pt_id: alloc.out_ioas_id,
            ..Default::default()
        };
        sys::ioctl_struct::<uapi::DeviceAttachIommufdPt>(&dev, &mut attach)
            .map_err(|e| format!("ATTACH_IOMMUFD_PT: {}", err_name(&e)))?;
        Ok((dev, iommufd, devid))
    })();
    let (dev, _iommufd, devid) = match opened {
        Ok(x) => x,
        Err(e) => {
            for n in names {
                ck.check(n, Err(format!("cdev open: {e}")));
            }
            return;
        }
    };
    let n = lay.bus_peers.len() as u32;
    let (r, b) = hot_reset_info_raw(&dev, 12 + 8 * n);
    let got = show_hri(&r, &b);
    // Record it without the devid numbers (allocation order is not the driver's business),
    // but check that this device's entry is its own devid.
    let v = (|| {
        r.as_ref()
            .map_err(|e| format!("expected success got {}", err_name(e)))?;
        let flags = b.u32_at(4).unwrap_or(0);
        if flags & uapi::VFIO_PCI_HOT_RESET_FLAG_DEV_ID == 0 {
            return Err(format!("DEV_ID not set on a cdev-opened device: {got}"));
        }
        let devs =
            parse_dependent_devices(&b.bytes(), b.u32_at(8).unwrap_or(0)).unwrap_or_default();
        if devs.len() != n as usize {
            return Err(format!("expected {n} entries: {got}"));
        }
        // Every function is in this driver's device set and its group is owned through this
        // iommufd: OWNED stays set, the others are listed as VFIO_PCI_DEVID_OWNED (0).
        // A VF's PF is outside its device set: listed as not owned (-1), OWNED clear.
        let want_flags = if lay.is_vf {
            uapi::VFIO_PCI_HOT_RESET_FLAG_DEV_ID
        } else {
            uapi::VFIO_PCI_HOT_RESET_FLAG_DEV_ID | uapi::VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED
        };
        if flags != want_flags {
            return Err(format!(
                "flags: expected {} (as vfio-pci) got {got}",
                uapi::hot_reset_info_flags_str(want_flags)
            ));
        }
        for d in &devs {
            let want = if d.bdf() == lay.bdf {
                devid
            } else if lay.is_vf {
                u32::MAX
            } else {
                0
            };
            if d.group_id_or_devid != want {
                return Err(format!(
                    "{} should be listed with devid {want} (as vfio-pci): {got}",
                    d.bdf()
                ));
            }
        }
        Ok(())
    })();
    let own_re = format!("={devid}]");
    ck.both(
        "cdev-hot-reset-info",
        got.replace(&own_re, "=SELF]")
            .replace(&format!("={devid} "), "=SELF "),
        v,
    );
    let show = |r: &io::Result<i32>| match r {
        Ok(v) => format!("ok {v}"),
        Err(e) => err_name(e),
    };
    let r = sys::pci_hot_reset_raw(&dev, 16, 0, 1, &[-1]);
    ck.both(
        "cdev-hot-reset-count1",
        show(&r),
        expect_errno(&r, libc::EINVAL),
    );
    let r = sys::pci_hot_reset_raw(&dev, 12, 1, 0, &[]);
    ck.both(
        "cdev-hot-reset-flags",
        show(&r),
        expect_errno(&r, libc::EINVAL),
    );
    let before = cfg_bulk(&dev, lay.cfg_size());
    let r = sys::pci_hot_reset_raw(&dev, 12, 0, 0, &[]);
    let after = cfg_bulk(&dev, lay.cfg_size());
    let v = hot_reset_verdict(&r, lay)
        .map_err(|e| format!("zero-length array on a cdev-opened device: {e}"))
        .and_then(|()| same_cfg(&before, &after));
    ck.both("cdev-hot-reset", show(&r), v);
}

// ------------------------------------------------------------------------------------------
// The swap phase
// ------------------------------------------------------------------------------------------

/// Everything on `lay.bdf`, bound to `driver`: one open through the group for the region,
/// config, BAR, PM, reset and group-form hot reset checks, then one through the cdev.
fn probe(
    rep: &mut Reporter,
    subject: &str,
    prefix: &str,
    lay: &Layout,
    other_group: Option<&File>,
    driver: Driver,
) -> Vec<(String, String)> {
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let mut ck = Ck {
        rep,
        subject: subject.to_string(),
        prefix: prefix.to_string(),
        tr: Vec::new(),
    };
    let mut quiet = Quiet::default();
    match open_via_group(&lay.bdf, &mut quiet) {
        Err(_) => {
            let e = quiet.failure.take().unwrap_or_default();
            ck.check("open", Err(e));
        }
        Ok(gd) => {
            ck.check("open", Ok(()));
            let dev = &gd.device;
            let has_reset = get_info(dev)
                .ok()
                .map(|q| q.values.flags & uapi::VFIO_DEVICE_FLAGS_RESET != 0);
            sec_region_info(&mut ck, dev, lay);
            let vbulk = sec_cfg_read(&mut ck, dev, lay);
            sec_bad_input(&mut ck, dev, lay);
            sec_cfg_write(&mut ck, dev, lay, &vbulk);
            sec_pm(&mut ck, dev, lay);
            sec_bars(&mut ck, dev, lay, run);
            sec_reset(&mut ck, dev, lay, has_reset);
            sec_hot_reset_group(&mut ck, &gd, lay, other_group);
        }
    }
    sec_hot_reset_cdev(&mut ck, lay);
    // BAR mmap (issue 4): its own opens, with every fd above closed.
    crate::mmap::sec_mmap(&mut ck, lay, driver, run);
    ck.tr
}

/// Compare two transcripts key by key: `PASS|FAIL <twin> parity <key>`.
pub fn compare(rep: &mut Reporter, twin: &str, c: &[(String, String)], rs: &[(String, String)]) {
    let subject = format!("{twin} parity");
    for (k, a) in c {
        match rs.iter().find(|(k2, _)| k2 == k) {
            Some((_, b)) if a == b => rep.pass(&subject, k),
            Some((_, b)) => rep.fail(&subject, k, &value_diff(a, b)),
            None => rep.fail(
                &subject,
                k,
                &format!(
                    "vfio-pci-rs recorded nothing (vfio-pci: {})",
                    abbrev(a, 200)
                ),
            ),
        }
    }
    for (k, b) in rs {
        if !c.iter().any(|(k2, _)| k2 == k) {
            rep.fail(
                &subject,
                k,
                &format!(
                    "vfio-pci recorded nothing (vfio-pci-rs: {})",
                    abbrev(b, 200)
                ),
            );
        }
    }
}

/// The devices the swap phase runs on: the vfio-pci device of every twin; for VGA also the
/// other one (the vfio-pci device has the boot VGA's shadowed ROM, the other a ROM BAR).
pub fn swap_targets(twin: &Twin) -> Vec<(String, Option<String>)> {
    let partner = |x: &str, other: &str| {
        shared_group(twin)
            .map(|_| other.to_string())
            .filter(|_| x != other)
    };
    let mut v = vec![(twin.bdf_c.clone(), partner(&twin.bdf_c, &twin.bdf_rs))];
    if twin.name == "vga" {
        v.push((twin.bdf_rs.clone(), partner(&twin.bdf_rs, &twin.bdf_c)));
    }
    v
}

/// Bind `bdf` (and the function sharing its IOMMU group, if any) to `d`.
fn bind_all(bdf: &str, partner: &Option<String>, d: Driver) -> Result<(), String> {
    if let Some(p) = partner {
        sysfs::bind(p, &d.pci_name()).map_err(|e| format!("{p}: {e}"))?;
    }
    sysfs::bind(bdf, &d.pci_name()).map_err(|e| format!("{bdf}: {e}"))
}

/// The swap phase of one twin: each target bound to each driver in turn, probed, compared;
/// then every device goes back to the driver it had.
pub fn swap_phase(rep: &mut Reporter, twin: &Twin, drivers: &[Driver]) {
    for (i, (bdf, partner)) in swap_targets(twin).into_iter().enumerate() {
        let prefix = if i == 0 {
            String::new()
        } else {
            format!("{}/", &bdf[5..])
        };
        let lay = match Layout::read(&bdf) {
            Ok(l) => l,
            Err(e) => {
                rep.fail(
                    &format!("{} swap", twin.name),
                    &format!("{prefix}layout"),
                    &e,
                );
                continue;
            }
        };
        rep.note(&format!(
            "{} swap {bdf}: cfg {} bytes, caps [{}], ecaps [{}], bus {}",
            twin.name,
            lay.cfg_size(),
            lay.caps
                .iter()
                .map(|c| format!("{:x}@{:x}", c.id, c.off))
                .collect::<Vec<_>>()
                .join(" "),
            lay.ecaps
                .iter()
                .map(|c| format!("{:x}@{:x}", c.id, c.off))
                .collect::<Vec<_>>()
                .join(" "),
            lay.bus_peers.join(" ")
        ));
        // Another VFIO group (the twin's other device, when it is in a group of its own) for
        // the "missing group" hot reset.
        let other_bdf = if bdf == twin.bdf_c {
            &twin.bdf_rs
        } else {
            &twin.bdf_c
        };
        let mut transcripts = Vec::new();
        // VFIO_TEST_SELF_PARITY=1: run vfio-pci twice and compare it with itself, to find
        // values that are not deterministic (a parity key must only differ between drivers).
        let self_parity = std::env::var_os("VFIO_TEST_SELF_PARITY").is_some();
        let runs: Vec<Driver> = if self_parity {
            vec![Driver::C, Driver::C]
        } else {
            drivers.to_vec()
        };
        for &d in &runs {
            let subject = format!("{} {d}", twin.name);
            let t0 = std::time::Instant::now();
            match bind_all(&bdf, &partner, d) {
                Err(e) => {
                    rep.fail(&subject, &format!("{prefix}swap-bind"), &e);
                    transcripts.push((d, Vec::new()));
                    continue;
                }
                Ok(()) => rep.pass(&subject, &format!("{prefix}swap-bind")),
            }
            let other = if partner.is_none() {
                sysfs::iommu_group(other_bdf)
                    .ok()
                    .and_then(|g| sys::open_rw(Path::new(&format!("/dev/vfio/{g}"))).ok())
            } else {
                None
            };
            if partner.is_none() && other.is_none() {
                rep.note(&format!(
                    "{} {d} {prefix}no other VFIO group to pass as a missing group",
                    twin.name
                ));
            }
            let t = probe(rep, &subject, &prefix, &lay, other.as_ref(), d);
            drop(other);
            rep.note(&format!(
                "{subject} {prefix}swap run on {bdf}: {} values in {:.1} s",
                t.len(),
                t0.elapsed().as_secs_f64()
            ));
            transcripts.push((d, t));
        }
        if let [(Driver::C, c), (_, rs)] = transcripts.as_slice() {
            compare(rep, &twin.name, c, rs);
        }
        // Back to where run_twin put them.
        let home = |x: &str| {
            if x == twin.bdf_c {
                Driver::C
            } else {
                Driver::Rs
            }
        };
        let mut back = Ok(());
        if let Some(p) = &partner {
            back = back.and(sysfs::bind(p, &home(p).pci_name()));
        }
        back = back.and(sysfs::bind(&bdf, &home(&bdf).pci_name()));
        match back {
            Ok(()) => rep.pass(&format!("{} swap", twin.name), &format!("{prefix}rebind")),
            Err(e) => rep.fail(
                &format!("{} swap", twin.name),
                &format!("{prefix}rebind"),
                &e,
            ),
        }
    }
}

/// Opens the device's cdev and binds it to a fresh iommufd: (device, iommufd, devid).
pub(crate) fn cdev_bind_iommufd(bdf: &str) -> Result<(File, File, u32), String> {
    let name = sysfs::vfio_cdev_name(bdf).map_err(|e| format!("vfio-dev: {}", err_name(&e)))?;
    let dev = open_node(Path::new(&format!("/dev/vfio/devices/{name}")))?;
    let iommufd = open_node(Path::new("/dev/iommu"))?;
    let token = sysfs::vf_token(bdf).and_then(|t| sysfs::uuid_bytes(&t));
    let mut bind = uapi::VfioDeviceBindIommufd {
        argsz: size_u32::<uapi::VfioDeviceBindIommufd>(),
        iommufd: iommufd.as_raw_fd(),
        flags: if token.is_some() {
            uapi::VFIO_DEVICE_BIND_FLAG_TOKEN
        } else {
            0
        },
        token_uuid_ptr: token.as_ref().map_or(0, |t| t.as_ptr() as u64),
        ..Default::default()
    };
    sys::ioctl_struct::<uapi::DeviceBindIommufd>(&dev, &mut bind)
        .map_err(|e| format!("BIND_IOMMUFD: {}", err_name(&e)))?;
    Ok((dev, iommufd, bind.out_devid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_comparison() {
        let c = vec![
            ("a".to_string(), "ok 00".to_string()),
            ("b".to_string(), "EINVAL".to_string()),
            ("c".to_string(), "x".to_string()),
        ];
        let rs = vec![
            ("a".to_string(), "ok 00".to_string()),
            ("b".to_string(), "ENOTTY".to_string()),
            ("d".to_string(), "y".to_string()),
        ];
        let mut rep = Reporter::collect();
        compare(&mut rep, "edu", &c, &rs);
        assert_eq!(rep.summary(), "1 passed, 3 failed");
        assert_eq!(rep.lines()[0], "PASS edu parity a");
        assert_eq!(
            rep.lines()[1],
            "FAIL edu parity b: vfio-pci [EINVAL] vfio-pci-rs [ENOTTY]"
        );
        assert!(rep.lines()[2].starts_with("FAIL edu parity c: vfio-pci-rs recorded nothing"));
        assert!(rep.lines()[3].starts_with("FAIL edu parity d: vfio-pci recorded nothing"));
    }

    #[test]
    fn show_helpers() {
        assert_eq!(show_rd(&Ok(vec![1, 2]), 2), "ok 0102");
        assert_eq!(show_rd(&Ok(vec![1]), 2), "short 1 01");
        assert_eq!(
            show_rd(&Err(io::Error::from_raw_os_error(libc::EIO)), 2),
            "EIO"
        );
        assert_eq!(show_wr(&Ok(4), 4), "ok");
        assert_eq!(show_wr(&Ok(2), 4), "short 2");
        assert!(expect_errno::<i32>(
            &Err(io::Error::from_raw_os_error(libc::EINVAL)),
            libc::EINVAL
        )
        .is_ok());
        let e = expect_errno::<i32>(
            &Err(io::Error::from_raw_os_error(libc::ENOTTY)),
            libc::EINVAL,
        )
        .unwrap_err();
        assert_eq!(e, "expected EINVAL (as vfio-pci) got ENOTTY");
        let e = expect_errno(&Ok(3usize), libc::EFAULT).unwrap_err();
        assert_eq!(e, "expected EFAULT (as vfio-pci) got success (3 bytes)");
    }

    #[test]
    fn nonces_differ_per_run_and_patterns_do_not() {
        assert_ne!(nonce_bytes(0, 8, 0), nonce_bytes(1, 8, 0));
        assert_eq!(pattern(4, 1), vec![1, 8, 15, 22]);
        assert_eq!(fnv(b""), 0xcbf2_9ce4_8422_2325);
        assert!(nonce_bytes(3, 64, 2).iter().all(|b| *b != 0));
    }

    #[test]
    fn hot_reset_info_display() {
        let mut b = InfoBuf::new(28);
        b.set_u32(4, 0);
        b.set_u32(8, 2);
        // 0000:0c:01.0 group 32, 0000:0c:02.0 group 32
        b.set_u32(12, 32);
        b.set_u32(16, u32::from_ne_bytes([0, 0, 0x0c, 1 << 3]));
        b.set_u32(20, 32);
        b.set_u32(24, u32::from_ne_bytes([0, 0, 0x0c, 2 << 3]));
        assert_eq!(
            show_hri(&Ok(0), &b),
            "ok flags=0x0 (-) count=2 [0000:0c:01.0=32 0000:0c:02.0=32]"
        );
        assert_eq!(
            show_hri(&Err(io::Error::from_raw_os_error(libc::ENOSPC)), &b),
            "ENOSPC count=2"
        );
        assert_eq!(
            show_hri(&Err(io::Error::from_raw_os_error(libc::ENOTTY)), &b),
            "ENOTTY"
        );
    }

    #[test]
    fn swap_targets_per_twin() {
        let t = crate::cli::parse_twin("vga=0000:09:00.0,0000:0a:00.0").unwrap();
        let v: Vec<String> = swap_targets(&t).into_iter().map(|(b, _)| b).collect();
        assert_eq!(v, ["0000:09:00.0", "0000:0a:00.0"]);
        let t = crate::cli::parse_twin("edu=0000:01:00.0,0000:02:00.0").unwrap();
        assert_eq!(swap_targets(&t).len(), 1);
        assert_eq!(swap_targets(&t)[0].0, "0000:01:00.0");
    }

    #[test]
    fn same_cfg_reports_offsets() {
        assert!(same_cfg(&Ok(vec![1, 2]), &Ok(vec![1, 2])).is_ok());
        let e = same_cfg(&Ok(vec![1, 2]), &Ok(vec![1, 3])).unwrap_err();
        assert_eq!(e, "config changed (offset: before/after): 0x1: 02/03");
        assert!(same_cfg(&Err("x".into()), &Ok(vec![])).is_err());
    }
}
