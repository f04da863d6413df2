//! `vfio-test stress BDF [--secs N] [--driver D]...`: the race stress of issue 4, run in a VM
//! boot of its own (tests/guest/stress.sh) after the main one.
//!
//! ONE ivshmem-plain device (BAR2: 1 GiB backed by a host file) is bound to each driver in
//! turn (vfio-pci, then vfio-pci-rs). For each driver, for `--secs` seconds:
//! - faulting threads read and write an offset-encoded pattern over the whole BAR through
//!   several live mappings (1 GiB-, 2 MiB- and misaligned addresses, and mappings with
//!   vm_pgoff > 0); every read that does not SIGBUS must return the pattern;
//! - a toggler clears and sets COMMAND.MEM through config writes on the device fd;
//! - a resetter issues VFIO_DEVICE_RESET;
//! - a reopener opens the device again through its group, maps a window with the new fd,
//!   closes that fd with the mapping live (or makes it the fd the others use, closing the
//!   previous one), touches it and unmaps it;
//! - a remapper munmaps one of the live mappings and maps it again at the same address;
//! - on a driver that offers VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE (14; vfio-pci-rs), a revoker
//!   exports a DMABUF (feature 11), maps it, revokes it for good and checks it stays revoked.
//!
//! SIGBUS is expected while memory is off or the device resets: threads survive it through
//! faultsafe.rs. Afterwards: the pattern, written anew with memory enabled, is compared with
//! the host backing file per 2 MiB; every fd is closed and the module refcount, the number of
//! DMABUFs and of open files must come back to what they were; the device opens again; no
//! oops/WARN/lockdep report appeared in dmesg and debug_locks is still 1.
//!
//! Output: `PASS|FAIL stress <driver> <check>`, notes with the counts, `N passed, N failed`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::access::{cfg_get, cfg_set, ivshmem_files};
use crate::checks::{open_via_group, parse_lockdep_stats, suspicious_lines, GroupSession, Quiet};
use crate::cli::Driver;
use crate::faultsafe::{self, Map, Reserve, Rng, G1, M2, PAGE};
use crate::report::Reporter;
use crate::sys::{self, err_name};
use crate::sysfs;
use crate::uapi::{self, size_u32};

/// The BAR the stress runs on: ivshmem-plain's shared memory.
pub const BAR: u32 = 2;
const PCI_COMMAND: usize = 0x4;
const PCI_COMMAND_MEMORY: u32 = 0x2;

// ------------------------------------------------------------------------------------------
// Device helpers shared with bench.rs and the demo
// ------------------------------------------------------------------------------------------

/// Size and device-fd offset of a region (GET_REGION_INFO), refusing one without MMAP.
pub fn bar_region(dev: &File, index: u32) -> Result<(u64, u64), String> {
    let mut r = uapi::VfioRegionInfo {
        argsz: size_u32::<uapi::VfioRegionInfo>(),
        index,
        ..Default::default()
    };
    sys::ioctl_struct::<uapi::DeviceGetRegionInfo>(dev, &mut r)
        .map_err(|e| format!("GET_REGION_INFO {index}: {}", err_name(&e)))?;
    if r.flags & uapi::VFIO_REGION_INFO_FLAG_MMAP == 0 || r.size == 0 {
        return Err(format!(
            "region {index} is not mmappable (flags {}, size 0x{:x})",
            uapi::region_flags_str(r.flags),
            r.size
        ));
    }
    Ok((r.size, r.offset))
}

/// Set or clear COMMAND.MEM through a config write on the device fd, from the COMMAND value
/// `cmd0` (so a racing reset cannot make this write something else).
pub fn set_mem(dev: &File, cmd0: u32, on: bool) -> Result<(), String> {
    let v = if on {
        cmd0 | PCI_COMMAND_MEMORY
    } else {
        cmd0 & !PCI_COMMAND_MEMORY
    };
    cfg_set(dev, PCI_COMMAND, 2, v)
}

/// COMMAND as the device fd shows it.
pub fn command(dev: &File) -> Result<u32, String> {
    cfg_get(dev, PCI_COMMAND, 2)
}

/// `VFIO_DEVICE_FEATURE` with `{argsz, flags}` and `data` after it.
fn feature(dev: &File, flags: u32, data: &[u8]) -> io::Result<i32> {
    const VFIO_DEVICE_FEATURE: u32 = uapi::vfio_io(17);
    let len = 8 + data.len();
    let mut words = vec![0u64; len.div_ceil(8)];
    let mut bytes = vec![0u8; words.len() * 8];
    bytes[..4].copy_from_slice(&(len as u32).to_ne_bytes());
    bytes[4..8].copy_from_slice(&flags.to_ne_bytes());
    bytes[8..len].copy_from_slice(data);
    for (w, c) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        *w = u64::from_ne_bytes(c.try_into().expect("8 bytes"));
    }
    // SAFETY: `words` is a live, exclusively borrowed, 8-aligned buffer of at least `argsz`
    // bytes; the features used here (DMA_BUF with its ranges, DMA_BUF_REVOKE, PROBE) read at
    // most argsz bytes and write nothing back. A returned fd is owned by the caller.
    let r = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            VFIO_DEVICE_FEATURE as libc::Ioctl,
            words.as_mut_ptr(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

const FEATURE_GET: u32 = 1 << 16;
const FEATURE_SET: u32 = 1 << 17;
const FEATURE_PROBE: u32 = 1 << 18;
/// Linux 7.3's VFIO_DEVICE_FEATURE_DMA_BUF.
const FEATURE_DMA_BUF: u32 = 11;
/// This project's VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE (`struct { __s32 dmabuf_fd; }`).
const FEATURE_DMA_BUF_REVOKE: u32 = 14;

/// Whether the driver offers the permanent DMABUF revoke (PROBE of SET).
pub fn has_dmabuf_revoke(dev: &File) -> Result<(), String> {
    feature(
        dev,
        FEATURE_PROBE | FEATURE_SET | FEATURE_DMA_BUF_REVOKE,
        &[],
    )
    .map(|_| ())
    .map_err(|e| err_name(&e))
}

/// Export one range of region `index` as a DMABUF (feature 11, GET).
pub fn dmabuf_export(dev: &File, index: u32, off: u64, len: u64) -> io::Result<OwnedFd> {
    dmabuf_export_ranges(dev, index, &[(off, len)])
}

/// Export `(offset, length)` ranges of region `index` as one DMABUF (feature 11, GET).
pub fn dmabuf_export_ranges(dev: &File, index: u32, ranges: &[(u64, u64)]) -> io::Result<OwnedFd> {
    let mut d = Vec::with_capacity(16 + 16 * ranges.len());
    d.extend_from_slice(&index.to_ne_bytes());
    d.extend_from_slice(&((libc::O_RDWR | libc::O_CLOEXEC) as u32).to_ne_bytes());
    d.extend_from_slice(&0u32.to_ne_bytes()); // flags
    d.extend_from_slice(&(ranges.len() as u32).to_ne_bytes()); // nr_ranges
    for (off, len) in ranges {
        d.extend_from_slice(&off.to_ne_bytes());
        d.extend_from_slice(&len.to_ne_bytes());
    }
    let fd = feature(dev, FEATURE_GET | FEATURE_DMA_BUF, &d)?;
    // SAFETY: on success the ioctl returns a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Revoke an exported DMABUF for good (feature 14, SET).
pub fn dmabuf_revoke(dev: &File, fd: RawFd) -> io::Result<i32> {
    feature(dev, FEATURE_SET | FEATURE_DMA_BUF_REVOKE, &fd.to_ne_bytes())
}

// ------------------------------------------------------------------------------------------
// Kernel-side bookkeeping (leaks, health)
// ------------------------------------------------------------------------------------------

/// What must come back after every fd and mapping is gone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// /sys/module/<module>/refcnt: the VFIO core holds the driver's module while the
    /// device is open.
    pub module_refcnt: Option<i64>,
    /// DMABUF objects in /sys/kernel/debug/dma_buf/bufinfo.
    pub dmabufs: Option<u64>,
    /// Allocated file handles (/proc/sys/fs/file-nr, first field).
    pub files: Option<u64>,
    /// SUnreclaim from /proc/meminfo, KiB.
    pub sunreclaim_kb: Option<u64>,
}

fn mount_debugfs() {
    let mounted = std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some("/sys/kernel/debug"))
        })
        .unwrap_or(false);
    if !mounted {
        let _ = Command::new("mount")
            .args(["-t", "debugfs", "none", "/sys/kernel/debug"])
            .output();
    }
}

/// `Total N objects` of a dma_buf bufinfo dump.
pub fn parse_bufinfo_total(s: &str) -> Option<u64> {
    s.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("Total ")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// A /proc/meminfo field in KiB.
pub fn meminfo_kb(s: &str, field: &str) -> Option<u64> {
    s.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

impl Census {
    pub fn take(module: &str) -> Census {
        mount_debugfs();
        let read = |p: &str| std::fs::read_to_string(p).ok();
        Census {
            module_refcnt: read(&format!("/sys/module/{module}/refcnt"))
                .and_then(|s| s.trim().parse().ok()),
            dmabufs: read("/sys/kernel/debug/dma_buf/bufinfo")
                .and_then(|s| parse_bufinfo_total(&s)),
            files: read("/proc/sys/fs/file-nr")
                .and_then(|s| s.split_whitespace().next()?.parse().ok()),
            sunreclaim_kb: read("/proc/meminfo").and_then(|s| meminfo_kb(&s, "SUnreclaim")),
        }
    }
}

/// The kernel log, one line per entry.
pub(crate) fn dmesg() -> Result<Vec<String>, String> {
    let o = Command::new("dmesg")
        .output()
        .map_err(|e| format!("cannot run dmesg: {e}"))?;
    if !o.status.success() {
        return Err(format!("dmesg failed: {}", o.status));
    }
    Ok(String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

fn debug_locks() -> Option<String> {
    mount_debugfs();
    if let Ok(s) = std::fs::read_to_string("/sys/kernel/debug/debug_locks") {
        return Some(s.trim().to_string());
    }
    parse_lockdep_stats(&std::fs::read_to_string("/proc/lockdep_stats").ok()?)
}

/// Lockdep still on and nothing suspicious in the kernel log after line `since`.
pub fn kernel_health(rep: &mut Reporter, subject: &str, since: usize) {
    match debug_locks() {
        Some(v) if v == "1" => rep.pass(subject, "debug_locks"),
        Some(_) if crate::checks::lockdep_off_at_start() => rep.note(&format!(
            "{subject} debug_locks: off before the tests began (a report at boot); not counted"
        )),
        Some(v) => rep.fail(
            subject,
            "debug_locks",
            &format!("debug_locks is {v}: lockdep turned itself off after a report"),
        ),
        None => rep.fail(subject, "debug_locks", "no debug_locks (lockdep missing?)"),
    }
    match dmesg() {
        Err(e) => rep.fail(subject, "no-warn", &e),
        Ok(lines) => {
            let new = lines.get(since..).unwrap_or(&[]).join("\n");
            let bad = suspicious_lines(&new);
            if bad.is_empty() {
                rep.pass(subject, "no-warn");
            } else {
                for l in bad.iter().take(40) {
                    rep.note(&format!("dmesg: {l}"));
                }
                rep.fail(
                    subject,
                    "no-warn",
                    &format!("{} warning/oops/lockdep lines in dmesg (above)", bad.len()),
                );
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Watchdog: a hang must become a report, not a silent VM
// ------------------------------------------------------------------------------------------

/// What each stress thread is doing (thread name -> action), for the watchdog's report.
static ACTIVITY: Mutex<BTreeMap<String, &'static str>> = Mutex::new(BTreeMap::new());
/// The phase being watched: (name, since, limit).
static PHASE: Mutex<Option<(String, Instant, Duration)>> = Mutex::new(None);

fn act(thread: &str, what: &'static str) {
    ACTIVITY.lock().unwrap().insert(thread.to_string(), what);
}

/// Watch `phase` from now on: if it is not over within `limit` (times
/// `STRESS_WATCHDOG_SCALE`, a whole number, for slow kernels such as the sanitizer's), the
/// watchdog reports.
fn watch(phase: &str, limit: Duration) {
    let scale = std::env::var("STRESS_WATCHDOG_SCALE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1);
    *PHASE.lock().unwrap() = Some((phase.to_string(), Instant::now(), limit * scale));
}

fn unwatch() {
    *PHASE.lock().unwrap() = None;
}

/// The watchdog thread: the kernel has no hung-task detector in this config, so a deadlock
/// would only show as a VM without output. On a phase past its limit: print what every
/// thread was doing, the blocked tasks' stacks (sysrq w) and the kernel log's tail, a FAIL
/// line, and power the VM off (sysrq o): a task stuck in the kernel cannot be killed.
fn start_watchdog() {
    thread::spawn(|| loop {
        thread::sleep(Duration::from_secs(1));
        let late = PHASE
            .lock()
            .unwrap()
            .as_ref()
            .filter(|(_, since, limit)| since.elapsed() > *limit)
            .map(|(p, since, _)| (p.clone(), since.elapsed()));
        let Some((phase, took)) = late else {
            continue;
        };
        println!(
            "# watchdog: {phase} not over after {:.0} s",
            took.as_secs_f64()
        );
        for (t, a) in ACTIVITY.lock().unwrap().iter() {
            println!("# watchdog: {t}: {a}");
        }
        let since = dmesg().map(|l| l.len()).unwrap_or(0);
        let _ = std::fs::write("/proc/sysrq-trigger", "w");
        thread::sleep(Duration::from_secs(3));
        if let Ok(lines) = dmesg() {
            let from = since.saturating_sub(40);
            for l in lines.get(from..).unwrap_or(&[]).iter().take(400) {
                println!("# dmesg: {l}");
            }
        }
        println!(
            "FAIL {phase}: hung for {:.0} s (blocked tasks above); powering the VM off",
            took.as_secs_f64()
        );
        let _ = std::io::Write::flush(&mut std::io::stdout());
        thread::sleep(Duration::from_secs(2));
        let _ = std::fs::write("/proc/sysrq-trigger", "o");
        thread::sleep(Duration::from_secs(60));
    });
}

// ------------------------------------------------------------------------------------------
// The stress
// ------------------------------------------------------------------------------------------

/// One long-lived mapping of BAR2: where it sits and which part of the BAR it shows.
#[derive(Clone, Copy, Debug)]
struct SlotSpec {
    name: &'static str,
    bar_off: u64,
    len: u64,
    /// The address is `skew` past a multiple of `align`.
    align: u64,
    skew: u64,
}

/// PUD-, PMD- and PTE-sized faults, and vm_pgoff > 0 with and without PMD alignment.
const SLOTS: [SlotSpec; 5] = [
    SlotSpec {
        name: "1G-aligned",
        bar_off: 0,
        len: G1,
        align: G1,
        skew: 0,
    },
    SlotSpec {
        name: "2M-aligned",
        bar_off: 0,
        len: G1,
        align: G1,
        skew: M2,
    },
    SlotSpec {
        name: "misaligned",
        bar_off: 0,
        len: G1,
        align: G1,
        skew: PAGE,
    },
    SlotSpec {
        name: "pgoff-2M",
        bar_off: M2 + PAGE,
        len: 256 << 20,
        align: M2,
        skew: PAGE,
    },
    SlotSpec {
        name: "pgoff-4K",
        bar_off: 3 * PAGE,
        len: 64 << 20,
        align: M2,
        skew: 5 * PAGE,
    },
];

struct Slot {
    spec: SlotSpec,
    at: u64,
    /// Dropped before `_res` (declaration order): the mapping is replaced by PROT_NONE
    /// inside the reservation, then the reservation goes.
    map: RwLock<Option<Map>>,
    _res: Reserve,
}

#[derive(Default)]
struct Counters {
    accesses: AtomicU64,
    sigbus: AtomicU64,
    mismatches: AtomicU64,
    toggles: AtomicU64,
    resets_ok: AtomicU64,
    reopens: AtomicU64,
    remaps: AtomicU64,
    revokes: AtomicU64,
    /// Accesses to a permanently revoked DMABUF mapping that did not SIGBUS.
    revoked_readable: AtomicU64,
    /// mmap of a permanently revoked DMABUF that succeeded.
    revoked_mappable: AtomicU64,
}

/// Shared by the stress threads.
struct Ctx<'a> {
    bdf: &'a str,
    session: &'a GroupSession,
    /// The device fd the toggler, resetter, remapper and revoker use; the reopener swaps it.
    cur: Mutex<Arc<File>>,
    bar_size: u64,
    region_off: u64,
    cmd0: u32,
    seed: u64,
    slots: Vec<Slot>,
    stop: AtomicBool,
    c: Counters,
    /// Errors by thread and kind, counted: a stress action that fails unexpectedly.
    errors: Mutex<BTreeMap<String, u64>>,
    /// Reset outcomes other than success, by errno.
    reset_errs: Mutex<BTreeMap<String, u64>>,
    /// DMABUF export/mmap outcomes other than success, by errno (recorded, not judged).
    dmabuf_errs: Mutex<BTreeMap<String, u64>>,
    /// The first data mismatches seen.
    bad_data: Mutex<Vec<String>>,
}

fn bump(m: &Mutex<BTreeMap<String, u64>>, key: String) {
    *m.lock().unwrap().entry(key).or_default() += 1;
}

fn show_counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} x{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sleep a random time in `lo..hi` milliseconds, in steps, returning early on stop.
fn nap(ctx: &Ctx, rng: &mut Rng, lo: u64, hi: u64) {
    let ms = lo + rng.below(hi - lo);
    let until = Instant::now() + Duration::from_millis(ms);
    while !ctx.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        thread::sleep((until - now).min(Duration::from_millis(20)));
    }
}

impl Ctx<'_> {
    fn fd(&self) -> Arc<File> {
        self.cur.lock().unwrap().clone()
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn error(&self, what: String) {
        bump(&self.errors, what);
    }

    /// Read the word at `va` (BAR offset `bar_off`) and compare it with the pattern.
    /// False after a SIGBUS.
    fn verify(&self, va: u64, bar_off: u64, what: &str) -> bool {
        self.c.accesses.fetch_add(1, Ordering::Relaxed);
        match faultsafe::read64(va) {
            None => {
                self.c.sigbus.fetch_add(1, Ordering::Relaxed);
                false
            }
            Some(v) => {
                let want = faultsafe::pattern(bar_off / 8, self.seed);
                if v != want {
                    self.c.mismatches.fetch_add(1, Ordering::Relaxed);
                    let mut b = self.bad_data.lock().unwrap();
                    if b.len() < 8 {
                        b.push(format!(
                            "{what}: BAR+0x{bar_off:x} read 0x{v:016x}, expected 0x{want:016x}"
                        ));
                    }
                }
                true
            }
        }
    }

    /// Store the pattern at `va` (BAR offset `bar_off`). False after a SIGBUS.
    fn store(&self, va: u64, bar_off: u64) -> bool {
        self.c.accesses.fetch_add(1, Ordering::Relaxed);
        if faultsafe::write64(va, faultsafe::pattern(bar_off / 8, self.seed)) {
            true
        } else {
            self.c.sigbus.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// Walk a random run of up to 256 pages of a random slot: read one word per page (checked),
/// write another; move on after a SIGBUS.
fn faulter(ctx: &Ctx, id: u64) {
    act(&format!("faulter{id}"), "faulting");
    let mut rng = Rng::seeded(id);
    let mut round = 0u64;
    while !ctx.stopped() {
        round += 1;
        let slot = &ctx.slots[rng.below(ctx.slots.len() as u64) as usize];
        let guard = slot.map.read().unwrap();
        let Some(m) = guard.as_ref() else {
            drop(guard);
            thread::yield_now();
            continue;
        };
        let pages = m.len / PAGE;
        let start = rng.below(pages);
        let end = (start + 256).min(pages);
        for p in start..end {
            let w = (p * 7 + round) % 512;
            let off = p * PAGE + w * 8;
            if !ctx.verify(m.addr + off, slot.spec.bar_off + off, slot.spec.name) {
                break;
            }
            let off2 = p * PAGE + ((w + 256) % 512) * 8;
            if !ctx.store(m.addr + off2, slot.spec.bar_off + off2) {
                break;
            }
        }
    }
}

fn toggler(ctx: &Ctx) {
    let mut rng = Rng::seeded(101);
    while !ctx.stopped() {
        let f = ctx.fd();
        act("toggler", "config write: COMMAND.MEM off");
        if let Err(e) = set_mem(&f, ctx.cmd0, false) {
            ctx.error(format!("toggler: MEM off: {e}"));
        }
        act("toggler", "sleeping");
        nap(ctx, &mut rng, 1, 4);
        act("toggler", "config write: COMMAND.MEM on");
        if let Err(e) = set_mem(&f, ctx.cmd0, true) {
            ctx.error(format!("toggler: MEM on: {e}"));
        }
        ctx.c.toggles.fetch_add(1, Ordering::Relaxed);
        act("toggler", "sleeping");
        nap(ctx, &mut rng, 3, 20);
    }
}

fn resetter(ctx: &Ctx) {
    let mut rng = Rng::seeded(202);
    while !ctx.stopped() {
        act("resetter", "sleeping");
        nap(ctx, &mut rng, 50, 250);
        let f = ctx.fd();
        act("resetter", "VFIO_DEVICE_RESET");
        match sys::ioctl_noarg(&*f, uapi::VFIO_DEVICE_RESET) {
            Ok(_) => {
                ctx.c.resets_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => bump(&ctx.reset_errs, err_name(&e)),
        }
    }
}

/// Touch `n` spread-out pages of a mapping of BAR offset `bar_off`; stop at a SIGBUS.
fn touch_window(ctx: &Ctx, m: &Map, bar_off: u64, n: u64, what: &str) {
    let step = (m.len / PAGE / n).max(1) * PAGE;
    let mut off = 0;
    while off < m.len {
        if !ctx.verify(m.addr + off + 8, bar_off + off + 8, what) {
            return;
        }
        off += step;
    }
}

fn reopener(ctx: &Ctx) {
    let mut rng = Rng::seeded(303);
    while !ctx.stopped() {
        act("reopener", "sleeping");
        nap(ctx, &mut rng, 20, 80);
        act("reopener", "GET_DEVICE_FD");
        let f2 = match ctx.session.device_fd(ctx.bdf) {
            Ok(f) => f,
            Err(e) => {
                ctx.error(format!("reopener: GET_DEVICE_FD: {}", err_name(&e)));
                continue;
            }
        };
        let off = rng.below(ctx.bar_size / M2) * M2;
        act("reopener", "mmap");
        let m = match Map::new(f2.as_raw_fd(), None, M2, ctx.region_off + off) {
            Ok(m) => m,
            Err(e) => {
                ctx.error(format!("reopener: mmap: {}", err_name(&e)));
                continue;
            }
        };
        act("reopener", "touching");
        touch_window(ctx, &m, off, 8, "reopened fd");
        act("reopener", "closing an fd");
        if rng.below(2) == 0 {
            // The new fd becomes the one everybody uses; the previous one is closed when
            // the last thread using it lets go.
            *ctx.cur.lock().unwrap() = Arc::new(f2);
        } else {
            drop(f2);
        }
        // The fd that made the mapping may be closed now: the mapping must still work.
        act("reopener", "touching after close");
        touch_window(ctx, &m, off, 8, "mapping of a closed fd");
        act("reopener", "munmap");
        drop(m);
        ctx.c.reopens.fetch_add(1, Ordering::Relaxed);
    }
}

fn remapper(ctx: &Ctx) {
    let mut rng = Rng::seeded(404);
    while !ctx.stopped() {
        act("remapper", "sleeping");
        nap(ctx, &mut rng, 10, 50);
        let slot = &ctx.slots[rng.below(ctx.slots.len() as u64) as usize];
        act("remapper", "waiting for the slot");
        let mut g = slot.map.write().unwrap();
        act("remapper", "munmap");
        *g = None;
        let f = ctx.fd();
        act("remapper", "mmap");
        match Map::new(
            f.as_raw_fd(),
            Some(slot.at),
            slot.spec.len,
            ctx.region_off + slot.spec.bar_off,
        ) {
            Ok(m) => {
                *g = Some(m);
                ctx.c.remaps.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => ctx.error(format!(
                "remapper: mmap {}: {}",
                slot.spec.name,
                err_name(&e)
            )),
        }
    }
}

fn revoker(ctx: &Ctx) {
    let mut rng = Rng::seeded(505);
    while !ctx.stopped() {
        act("revoker", "sleeping");
        nap(ctx, &mut rng, 20, 80);
        let f = ctx.fd();
        let off = rng.below(ctx.bar_size / M2) * M2;
        act("revoker", "export");
        let buf = match dmabuf_export(&f, BAR, off, M2) {
            Ok(b) => b,
            Err(e) => {
                bump(&ctx.dmabuf_errs, format!("export {}", err_name(&e)));
                continue;
            }
        };
        let m = match Map::new(buf.as_raw_fd(), None, M2, 0) {
            Ok(m) => Some(m),
            Err(e) => {
                bump(&ctx.dmabuf_errs, format!("mmap {}", err_name(&e)));
                None
            }
        };
        if let Some(m) = &m {
            touch_window(ctx, m, off, 4, "exported DMABUF");
        }
        act("revoker", "revoke");
        match dmabuf_revoke(&f, buf.as_raw_fd()) {
            Ok(_) => {
                ctx.c.revokes.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                ctx.error(format!("revoker: REVOKE: {}", err_name(&e)));
                continue;
            }
        }
        if let Some(m) = &m {
            for i in 0..4 {
                ctx.c.accesses.fetch_add(1, Ordering::Relaxed);
                if faultsafe::read64(m.addr + i * (M2 / 4)).is_some() {
                    ctx.c.revoked_readable.fetch_add(1, Ordering::Relaxed);
                } else {
                    ctx.c.sigbus.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if Map::new(buf.as_raw_fd(), None, M2, 0).is_ok() {
            ctx.c.revoked_mappable.fetch_add(1, Ordering::Relaxed);
        }
        match dmabuf_revoke(&f, buf.as_raw_fd()) {
            Err(e) if e.raw_os_error() == Some(libc::EBADFD) => {}
            r => ctx.error(format!(
                "revoker: second REVOKE: {} (expected EBADFD)",
                match r {
                    Ok(_) => "success".to_string(),
                    Err(e) => err_name(&e),
                }
            )),
        }
    }
}

/// The outcome of the final data check against the host file.
pub struct FileCheck {
    pub file: PathBuf,
    pub chunks: u64,
    pub bad_chunks: Vec<u64>,
}

/// Drop the guest's page cache, so the host file is read from the host.
pub fn drop_caches() {
    // SAFETY: sync(2) takes no arguments.
    unsafe { libc::sync() };
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Compare the first `size` bytes of each candidate backing file, per 2 MiB chunk, with the
/// pattern for `seed`. The file that matches best (the one behind this device) is reported.
pub fn check_host_file(files: &[PathBuf], size: u64, seed: u64) -> Result<FileCheck, String> {
    drop_caches();
    // Which file: the one whose first chunk matches.
    let mut buf = vec![0u8; M2 as usize];
    let mut chosen = None;
    for f in files {
        let fh = File::open(f).map_err(|e| format!("{}: {e}", f.display()))?;
        if fh.read_exact_at(&mut buf, 0).is_ok() && chunk_ok(&buf, 0, seed) {
            chosen = Some(f.clone());
            break;
        }
    }
    let Some(file) = chosen else {
        return Err(format!(
            "the first 2 MiB of no backing file ({}) hold the pattern",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let fh = File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    // SAFETY: advice on a file this function opened; no memory involved.
    unsafe { libc::posix_fadvise(fh.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let chunks = size / M2;
    // Several readers at once: 9p answers each request with a round trip to the host, so
    // requests in flight together go faster even on one vCPU.
    const READERS: u64 = 4;
    let done = AtomicU64::new(0);
    let results: Vec<Result<Vec<u64>, String>> = thread::scope(|s| {
        let handles: Vec<_> = (0..READERS)
            .map(|r| {
                let (fh, file, done) = (&fh, &file, &done);
                s.spawn(move || {
                    let mut buf = vec![0u8; M2 as usize];
                    let mut bad = Vec::new();
                    let mut c = r;
                    while c < chunks {
                        fh.read_exact_at(&mut buf, c * M2)
                            .map_err(|e| format!("{} at 0x{:x}: {e}", file.display(), c * M2))?;
                        if !chunk_ok(&buf, c * M2, seed) {
                            bad.push(c);
                        }
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if n % 128 == 0 {
                            println!("# read {} MiB of {}", n * 2, file.display());
                        }
                        c += READERS;
                    }
                    Ok(bad)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("reader panicked".into())))
            .collect()
    });
    let mut bad_chunks = Vec::new();
    for r in results {
        bad_chunks.extend(r?);
    }
    bad_chunks.sort_unstable();
    Ok(FileCheck {
        file,
        chunks,
        bad_chunks,
    })
}

/// Whether `buf` (the file's bytes at `off`) holds the pattern.
pub fn chunk_ok(buf: &[u8], off: u64, seed: u64) -> bool {
    buf.chunks_exact(8).enumerate().all(|(i, w)| {
        u64::from_ne_bytes(w.try_into().expect("8 bytes"))
            == faultsafe::pattern(off / 8 + i as u64, seed)
    })
}

fn seed_for(driver: Driver, salt: u64) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    Rng(t ^ salt ^ ((driver as u64) << 40)).next()
}

/// Fill the whole BAR with the pattern through a fresh 1 GiB-aligned mapping (memory on).
/// Returns the words written and checked, or what went wrong.
fn fill_bar(dev: &File, size: u64, region_off: u64, seed: u64) -> Result<(), String> {
    let (_res, at) = Reserve::placed(size, G1, 0).map_err(|e| format!("reserve: {e}"))?;
    let m = Map::new(dev.as_raw_fd(), Some(at), size, region_off)
        .map_err(|e| format!("mmap BAR{BAR}: {}", err_name(&e)))?;
    let n = size / 8;
    let done = faultsafe::fill(m.addr, n, 0, seed);
    if done != n {
        return Err(format!(
            "SIGBUS at BAR+0x{:x} while filling with memory enabled",
            done * 8
        ));
    }
    match faultsafe::check(m.addr, n, 0, seed) {
        faultsafe::Check::Ok => Ok(()),
        faultsafe::Check::Mismatch(i) => Err(format!(
            "read back BAR+0x{:x}: not the pattern just written",
            i * 8
        )),
        faultsafe::Check::Sigbus(i) => Err(format!(
            "SIGBUS at BAR+0x{:x} reading back with memory enabled",
            i * 8
        )),
    }
}

/// Wait up to `secs` for the census to come back to `base` (fput and DMABUF release are
/// deferred), returning the last one taken.
fn settle(module: &str, base: &Census, secs: u64) -> Census {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let now = Census::take(module);
        let files_ok = match (base.files, now.files) {
            (Some(b), Some(n)) => n <= b + 16,
            _ => true,
        };
        if (now.module_refcnt == base.module_refcnt && now.dmabufs == base.dmabufs && files_ok)
            || Instant::now() >= until
        {
            return now;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Run the stress on `bdf` bound to `driver` for `secs`.
fn stress_driver(rep: &mut Reporter, bdf: &str, driver: Driver, secs: u64) {
    let subject = format!("stress {driver}");
    let module = driver.module();
    let since = dmesg().map(|l| l.len()).unwrap_or(0);
    if let Err(e) = sysfs::bind(bdf, &driver.pci_name()) {
        rep.fail(&subject, "bind", &e);
        return;
    }
    rep.pass(&subject, "bind");
    let base = Census::take(module);

    let mut quiet = Quiet::default();
    let gd = match open_via_group(bdf, &mut quiet) {
        Ok(g) => g,
        Err(_) => {
            rep.fail(&subject, "open", &quiet.failure.take().unwrap_or_default());
            return;
        }
    };
    let dev = gd.device;
    let session = gd.session;
    let (bar_size, region_off) = match bar_region(&dev, BAR) {
        Ok(v) => v,
        Err(e) => {
            rep.fail(&subject, "open", &e);
            return;
        }
    };
    let cmd0 = match command(&dev) {
        Ok(c) => c,
        Err(e) => {
            rep.fail(&subject, "open", &e);
            return;
        }
    };
    rep.pass(&subject, "open");
    let has_reset = crate::checks::get_info(&dev)
        .map(|q| q.values.flags & uapi::VFIO_DEVICE_FLAGS_RESET != 0)
        .unwrap_or(false);
    let revoke_feature = has_dmabuf_revoke(&dev);
    rep.note(&format!(
        "{subject}: {bdf} BAR{BAR} 0x{bar_size:x} bytes, COMMAND 0x{cmd0:x}, VFIO_DEVICE_RESET {}, DMA_BUF_REVOKE {}",
        if has_reset { "offered" } else { "not offered" },
        match &revoke_feature {
            Ok(()) => "offered".to_string(),
            Err(e) => format!("not offered ({e})"),
        }
    ));

    // The pattern the faulters check, everywhere, before they start.
    let seed = seed_for(driver, 0x5eed);
    let t = Instant::now();
    let _ = set_mem(&dev, cmd0, true);
    watch(&format!("{subject} prefill"), Duration::from_secs(300));
    match fill_bar(&dev, bar_size, region_off, seed) {
        Ok(()) => rep.pass(&subject, "prefill"),
        Err(e) => {
            rep.fail(&subject, "prefill", &e);
            return;
        }
    }
    rep.note(&format!(
        "{subject}: prefilled 0x{bar_size:x} bytes in {:.1} s",
        t.elapsed().as_secs_f64()
    ));

    let mut slots = Vec::new();
    let mut map_err = None;
    for spec in SLOTS {
        if spec.bar_off + spec.len > bar_size {
            continue;
        }
        let placed = Reserve::placed(spec.len, spec.align, spec.skew)
            .map_err(|e| format!("reserve: {e}"))
            .and_then(|(res, at)| {
                Map::new(
                    dev.as_raw_fd(),
                    Some(at),
                    spec.len,
                    region_off + spec.bar_off,
                )
                .map(|m| (res, at, m))
                .map_err(|e| {
                    format!(
                        "mmap {} (BAR+0x{:x}): {}",
                        spec.name,
                        spec.bar_off,
                        err_name(&e)
                    )
                })
            });
        match placed {
            Ok((res, at, m)) => slots.push(Slot {
                spec,
                at,
                map: RwLock::new(Some(m)),
                _res: res,
            }),
            Err(e) => {
                map_err = Some(e);
                break;
            }
        }
    }
    if let Some(e) = map_err {
        rep.fail(&subject, "map", &e);
        return;
    }
    rep.pass(&subject, "map");

    let ctx = Ctx {
        bdf,
        session: &session,
        cur: Mutex::new(Arc::new(dev)),
        bar_size,
        region_off,
        cmd0,
        seed,
        slots,
        stop: AtomicBool::new(false),
        c: Counters::default(),
        errors: Mutex::default(),
        reset_errs: Mutex::default(),
        dmabuf_errs: Mutex::default(),
        bad_data: Mutex::default(),
    };
    let flt0 = faultsafe::minflt();
    let bus0 = faultsafe::sigbus_caught();
    let t0 = Instant::now();
    thread::scope(|s| {
        for id in 0..3 {
            let ctx = &ctx;
            s.spawn(move || faulter(ctx, id));
        }
        s.spawn(|| toggler(&ctx));
        if has_reset {
            s.spawn(|| resetter(&ctx));
        }
        s.spawn(|| reopener(&ctx));
        s.spawn(|| remapper(&ctx));
        if revoke_feature.is_ok() {
            s.spawn(|| revoker(&ctx));
        }
        watch(
            &format!("{subject} threads"),
            Duration::from_secs(secs + 90),
        );
        let c = &ctx.c;
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        while t0.elapsed() < Duration::from_secs(secs) {
            thread::sleep(
                Duration::from_secs(10).min(Duration::from_secs(secs).saturating_sub(t0.elapsed())),
            );
            println!(
                "# {subject}: {:.0} s: {} accesses, {} SIGBUS, {} toggles, {} resets, {} reopens, {} remaps, {} revokes",
                t0.elapsed().as_secs_f64(),
                ld(&c.accesses),
                ld(&c.sigbus),
                ld(&c.toggles),
                ld(&c.resets_ok),
                ld(&c.reopens),
                ld(&c.remaps),
                ld(&c.revokes)
            );
        }
        ctx.stop.store(true, Ordering::Relaxed);
    });
    watch(&format!("{subject} report"), Duration::from_secs(60));
    ACTIVITY.lock().unwrap().clear();
    // One lock at a time: a guard lives to the end of its statement.
    let reset_errs = ctx.reset_errs.lock().unwrap().clone();
    let elapsed = t0.elapsed().as_secs_f64();
    let faults = faultsafe::minflt() - flt0;
    let caught = faultsafe::sigbus_caught() - bus0;
    let c = &ctx.c;
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    rep.note(&format!(
        "{subject}: stressed {elapsed:.1} s: {} accesses, {faults} minor faults, {} SIGBUS ({caught} caught by the handler), {} COMMAND.MEM toggles, {} resets ({} failed: {}), {} reopens, {} remaps, {} DMABUF revokes, {} data mismatches",
        ld(&c.accesses),
        ld(&c.sigbus),
        ld(&c.toggles),
        ld(&c.resets_ok),
        reset_errs.values().sum::<u64>(),
        show_counts(&reset_errs),
        ld(&c.reopens),
        ld(&c.remaps),
        ld(&c.revokes),
        ld(&c.mismatches),
    ));
    println!(
        "stress-stats {driver} secs={elapsed:.1} accesses={} faults={faults} sigbus={} toggles={} resets={} reopens={} remaps={} revokes={} mismatches={}",
        ld(&c.accesses),
        ld(&c.sigbus),
        ld(&c.toggles),
        ld(&c.resets_ok),
        ld(&c.reopens),
        ld(&c.remaps),
        ld(&c.revokes),
        ld(&c.mismatches)
    );

    // Judge what the threads saw.
    let errors = ctx.errors.lock().unwrap().clone();
    if errors.is_empty() {
        rep.pass(&subject, "actions");
    } else {
        rep.fail(&subject, "actions", &show_counts(&errors));
    }
    let mism = ld(&c.mismatches);
    if mism == 0 {
        rep.pass(&subject, "data-during-stress");
    } else {
        for l in ctx.bad_data.lock().unwrap().iter() {
            rep.note(&format!("{subject}: {l}"));
        }
        rep.fail(
            &subject,
            "data-during-stress",
            &format!("{mism} reads that did not SIGBUS returned something else than the pattern"),
        );
    }
    // Every action must actually have happened, and memory-off must have been seen.
    let mut missing = Vec::new();
    if ld(&c.accesses) == 0 || faults <= 0 {
        missing.push("no faulting access");
    }
    if ld(&c.sigbus) == 0 {
        missing.push("no SIGBUS while memory was toggled off");
    }
    if ld(&c.toggles) == 0 {
        missing.push("no COMMAND.MEM toggle");
    }
    if ld(&c.reopens) == 0 {
        missing.push("no reopen");
    }
    if ld(&c.remaps) == 0 {
        missing.push("no remap");
    }
    if missing.is_empty() {
        rep.pass(&subject, "coverage");
    } else {
        rep.fail(&subject, "coverage", &missing.join(", "));
    }
    if has_reset {
        let errs = reset_errs.clone();
        // pci_try_reset_function() may give EAGAIN when it cannot take the device lock.
        let odd: Vec<String> = errs
            .iter()
            .filter(|(k, _)| k.as_str() != "EAGAIN")
            .map(|(k, v)| format!("{k} x{v}"))
            .collect();
        if ld(&c.resets_ok) > 0 && odd.is_empty() {
            rep.pass(&subject, "reset");
        } else {
            rep.fail(
                &subject,
                "reset",
                &format!(
                    "{} resets succeeded; failures: {}",
                    ld(&c.resets_ok),
                    show_counts(&errs)
                ),
            );
        }
    }
    if revoke_feature.is_ok() {
        let dm = ctx.dmabuf_errs.lock().unwrap().clone();
        rep.note(&format!(
            "{subject}: DMABUF export/mmap failures: {}",
            show_counts(&dm)
        ));
        let (rr, rm) = (ld(&c.revoked_readable), ld(&c.revoked_mappable));
        if ld(&c.revokes) > 0 && rr == 0 && rm == 0 {
            rep.pass(&subject, "dmabuf-revoke");
        } else {
            rep.fail(
                &subject,
                "dmabuf-revoke",
                &format!(
                    "{} revokes; {rr} accesses after a revoke did not SIGBUS, {rm} mmaps of a revoked DMABUF succeeded",
                    ld(&c.revokes)
                ),
            );
        }
    }

    // The full data check: memory on, the pattern with a new seed over the whole BAR, then
    // the host's backing file, per 2 MiB.
    let dev = ctx.fd();
    let Ctx { slots, cur, .. } = ctx;
    watch(&format!("{subject} data check"), Duration::from_secs(600));
    drop(slots);
    drop(cur);
    let _ = set_mem(&dev, cmd0, true);
    let seed2 = seed_for(driver, 0xf11e);
    let t = Instant::now();
    match fill_bar(&dev, bar_size, region_off, seed2) {
        Ok(()) => rep.pass(&subject, "data-fill"),
        Err(e) => rep.fail(&subject, "data-fill", &e),
    }
    // STRESS_HOST_FILE_CHECK=0 (the sanitizer boots): data-fill has written the whole BAR
    // and read it back through a mapping; the 1 GiB host file is not read again over 9p,
    // which under KASAN did not reach its first 256 MiB in 15 minutes.
    if std::env::var("STRESS_HOST_FILE_CHECK").is_ok_and(|v| v == "0") {
        rep.note(&format!(
            "{subject}: host file check skipped (STRESS_HOST_FILE_CHECK=0); data-fill took {:.1} s",
            t.elapsed().as_secs_f64()
        ));
    } else {
        match ivshmem_files().and_then(|files| check_host_file(&files, bar_size, seed2)) {
            Ok(fc) if fc.bad_chunks.is_empty() => {
                rep.note(&format!(
                    "{subject}: {} ({} chunks of 2 MiB) holds the pattern; data check took {:.1} s",
                    fc.file.display(),
                    fc.chunks,
                    t.elapsed().as_secs_f64()
                ));
                rep.pass(&subject, "data-host-file");
            }
            Ok(fc) => rep.fail(
                &subject,
                "data-host-file",
                &format!(
                    "{}: {} of {} 2 MiB chunks differ from the pattern, first at {}",
                    fc.file.display(),
                    fc.bad_chunks.len(),
                    fc.chunks,
                    fc.bad_chunks
                        .iter()
                        .take(8)
                        .map(|c| format!("0x{:x}", c * M2))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            ),
            Err(e) => rep.fail(&subject, "data-host-file", &e),
        }
    }

    // Everything closed: nothing may be left behind.
    watch(&format!("{subject} close"), Duration::from_secs(120));
    let open = Census::take(module);
    drop(dev);
    drop(session);
    let after = settle(module, &base, 10);
    rep.note(&format!(
        "{subject}: census before open / while open / after close: module refcnt {:?}/{:?}/{:?}, DMABUFs {:?}/{:?}/{:?}, files {:?}/{:?}/{:?}, SUnreclaim KiB {:?}/{:?}/{:?}",
        base.module_refcnt, open.module_refcnt, after.module_refcnt,
        base.dmabufs, open.dmabufs, after.dmabufs,
        base.files, open.files, after.files,
        base.sunreclaim_kb, open.sunreclaim_kb, after.sunreclaim_kb,
    ));
    let mut leaks = Vec::new();
    if after.module_refcnt != base.module_refcnt {
        leaks.push(format!(
            "{module} refcnt {:?} (was {:?})",
            after.module_refcnt, base.module_refcnt
        ));
    }
    if after.dmabufs != base.dmabufs {
        leaks.push(format!(
            "{:?} DMABUFs (were {:?})",
            after.dmabufs, base.dmabufs
        ));
    }
    if let (Some(b), Some(a)) = (base.files, after.files) {
        if a > b + 16 {
            leaks.push(format!("{a} open files (were {b})"));
        }
    }
    // Unreclaimable slab: a leaked DMABUF/file/vma per mapping made (thousands of them)
    // would show; 8 MiB leaves room for caches warming up.
    if let (Some(b), Some(a)) = (base.sunreclaim_kb, after.sunreclaim_kb) {
        if a > b + 8192 {
            leaks.push(format!("SUnreclaim {a} KiB (was {b} KiB)"));
        }
    }
    if leaks.is_empty() {
        rep.pass(&subject, "no-leak");
    } else {
        rep.fail(&subject, "no-leak", &leaks.join(", "));
    }

    // The device opens again, answers, and maps.
    let mut quiet = Quiet::default();
    match open_via_group(bdf, &mut quiet) {
        Ok(gd) => {
            let r = bar_region(&gd.device, BAR).and_then(|(_, off)| {
                let m = Map::new(gd.device.as_raw_fd(), None, PAGE, off)
                    .map_err(|e| format!("mmap: {}", err_name(&e)))?;
                match faultsafe::read64(m.addr) {
                    Some(v) if v == faultsafe::pattern(0, seed2) => Ok(()),
                    Some(v) => Err(format!("BAR+0 reads 0x{v:x} after reopening")),
                    None => Err("SIGBUS after reopening".into()),
                }
            });
            match r {
                Ok(()) => rep.pass(&subject, "reopen-after"),
                Err(e) => rep.fail(&subject, "reopen-after", &e),
            }
        }
        Err(_) => rep.fail(
            &subject,
            "reopen-after",
            &quiet.failure.take().unwrap_or_default(),
        ),
    }
    unwatch();
    kernel_health(rep, &subject, since);
}

/// Unbind `bdf` in a thread: a device some reference still holds makes the unbind wait
/// forever, which must become a FAIL, not a hung test.
fn restore_with_timeout(bdf: &str, secs: u64) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let b = bdf.to_string();
    thread::spawn(move || {
        let _ = tx.send(sysfs::restore(&b));
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| Err(format!("unbind still blocked after {secs} s")))
}

/// Unbind `bdf` and clear its driver_override, failing after 30 s.
pub fn restore_device(bdf: &str) -> Result<(), String> {
    restore_with_timeout(bdf, 30)
}

/// `vfio-test stress`: every driver in turn on `bdf`, then the device unbound.
pub fn run(bdf: &str, drivers: &[Driver], secs: u64) -> std::process::ExitCode {
    faultsafe::install();
    start_watchdog();
    let mut rep = Reporter::stdout();
    rep.note(&format!(
        "stress on {bdf} BAR{BAR}, {secs} s per driver, drivers: {}",
        drivers
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    for &d in drivers {
        stress_driver(&mut rep, bdf, d, secs);
        match restore_with_timeout(bdf, 30) {
            Ok(()) => rep.pass(&format!("stress {d}"), "unbind"),
            Err(e) => {
                rep.fail(&format!("stress {d}"), "unbind", &e);
                break;
            }
        }
    }
    println!("{}", rep.summary());
    if rep.failed() == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bufinfo_and_meminfo() {
        let b = "\nDma-buf Objects:\nsize\tflags\tmode\tcount\texp_name\tino\tname\n\nTotal 3 objects, 12288 bytes\n";
        assert_eq!(parse_bufinfo_total(b), Some(3));
        assert_eq!(parse_bufinfo_total("nothing"), None);
        let m = "MemTotal:        2000000 kB\nSUnreclaim:        51234 kB\n";
        assert_eq!(meminfo_kb(m, "SUnreclaim"), Some(51234));
        assert_eq!(meminfo_kb(m, "Slab"), None);
    }

    #[test]
    fn chunks_hold_the_pattern() {
        let seed = 99;
        let off = 3 * M2;
        let mut buf: Vec<u8> = (0..1024u64)
            .flat_map(|i| faultsafe::pattern(off / 8 + i, seed).to_ne_bytes())
            .collect();
        assert!(chunk_ok(&buf, off, seed));
        assert!(!chunk_ok(&buf, off + 8, seed));
        buf[4000] ^= 1;
        assert!(!chunk_ok(&buf, off, seed));
    }

    #[test]
    fn slots_fit_and_are_placed_as_named() {
        for s in SLOTS {
            assert!(s.bar_off + s.len <= G1, "{}", s.name);
            assert_eq!(s.bar_off % PAGE, 0);
            // VA - BAR offset decides the largest possible page.
            let congruent = |sz: u64| (s.skew.wrapping_sub(s.bar_off)) % sz == 0;
            match s.name {
                "1G-aligned" => assert!(congruent(G1)),
                "2M-aligned" | "pgoff-2M" => assert!(congruent(M2) && !congruent(G1)),
                _ => assert!(!congruent(M2)),
            }
        }
    }
}
