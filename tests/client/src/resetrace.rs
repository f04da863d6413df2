//! `vfio-test reset-race BDF [SECS]`: VFIO_DEVICE_RESET racing BAR faults on a function with
//! an ATS capability (issue 14, the series' scenario 3), on the driver it is bound to.
//!
//! On such a function every reset path (FLR, AF FLR, PM reset) calls
//! `pci_dev_reset_iommu_prepare()`, which takes the IOMMU group's mutex, while the driver
//! holds `memory_lock` for writing; a fault takes `memory_lock` for reading under
//! `mmap_lock`. For SECS seconds (default 15): two faulters map the function's largest
//! mmap-able BAR, read every page and unmap it; a resetter issues VFIO_DEVICE_RESET; a
//! toggler turns memory decode off and on. Checks, each `PASS|FAIL reset-race <driver>
//! <check>`:
//!
//! - `ats`: the function has an ATS extended capability (else the race proves nothing);
//! - `setup`: the device opens through its group and has an mmap-able BAR;
//! - `races`: resets succeeded and faults happened (reads that did not SIGBUS);
//! - `reopen`: the device opens again afterwards and its BAR reads through a new mapping;
//! - `debug_locks`, `no-warn`: lockdep is still on and no lockdep, WARN or oops report
//!   appeared in the kernel log.

use std::collections::BTreeMap;
use std::fs::File;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::checks::{open_via_group, Quiet};
use crate::faultsafe;
use crate::mmap::map_shared;
use crate::p2p::driver_name;
use crate::report::{Phase, Reporter, Stop};
use crate::stress::{bar_region, command, dmesg, kernel_health, set_mem};
use crate::sys::{self, err_name};
use crate::uapi;

const CHECKS: &[&str] = &["ats", "setup", "races", "reopen"];
const PAGE: u64 = 4096;
/// `PCI_EXT_CAP_ID_ATS`.
const EXT_CAP_ATS: u16 = 0x0f;

/// Whether the function's config space (through sysfs, all 4 KiB as root) lists ATS.
fn has_ats(bdf: &str) -> Result<bool, String> {
    let cfg = std::fs::read(crate::sysfs::device_dir(bdf).join("config"))
        .map_err(|e| format!("config: {}", err_name(&e)))?;
    let mut pos = 0x100;
    for _ in 0..(4096 / 4) {
        let Some(h) = cfg.get(pos..pos + 4) else {
            return Ok(false);
        };
        let h = u32::from_le_bytes(h.try_into().unwrap());
        if h == 0 || h == u32::MAX {
            return Ok(false);
        }
        if h as u16 == EXT_CAP_ATS {
            return Ok(true);
        }
        pos = (h >> 20) as usize & !3;
        if pos < 0x100 {
            return Ok(false);
        }
    }
    Ok(false)
}

/// The largest BAR with an mmap area: (index, size, device-fd offset).
fn largest_bar(dev: &File) -> Result<(u32, u64, u64), String> {
    (0..6)
        .filter_map(|i| bar_region(dev, i).ok().map(|(size, off)| (i, size, off)))
        .max_by_key(|&(_, size, _)| size)
        .ok_or_else(|| "no mmap-able BAR".to_string())
}

#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    sigbus: AtomicU64,
    maps: AtomicU64,
    resets: AtomicU64,
    toggles: AtomicU64,
    /// Errors by errno name and operation, reported as notes.
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Counts {
    fn error(&self, what: String) {
        *self.errors.lock().unwrap().entry(what).or_default() += 1;
    }
}

fn race(p: &mut Phase<'_>, bdf: &str, secs: u64) -> Result<(), Stop> {
    let ats = has_ats(bdf);
    p.expect("ats", matches!(ats, Ok(true)), || match &ats {
        Ok(_) => format!("{bdf} has no ATS capability"),
        Err(e) => e.clone(),
    });
    let setup = (|| {
        let mut quiet = Quiet::default();
        let gd = open_via_group(bdf, &mut quiet)
            .map_err(|_| quiet.failure.take().unwrap_or_default())?;
        let bar = largest_bar(&gd.device)?;
        let cmd0 = command(&gd.device)?;
        Ok((gd, bar, cmd0))
    })();
    let (gd, (index, size, off), cmd0) = p.step("setup", setup)?;
    let dev = &gd.device;
    p.note(&format!(
        "BAR{index}: {size:#x} bytes, {secs} s of faults, resets and MEM toggles"
    ));
    let c = Counts::default();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let map = match map_shared(dev, size, off) {
                        Ok(m) => m,
                        Err(e) => {
                            c.error(format!("mmap {}", err_name(&e)));
                            continue;
                        }
                    };
                    c.maps.fetch_add(1, Ordering::Relaxed);
                    for page in 0..size / PAGE {
                        match faultsafe::read64(map.addr + page * PAGE) {
                            Some(_) => c.reads.fetch_add(1, Ordering::Relaxed),
                            None => c.sigbus.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                }
            });
        }
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                match sys::ioctl_noarg(dev, uapi::VFIO_DEVICE_RESET) {
                    Ok(_) => c.resets.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        c.error(format!("reset {}", err_name(&e)));
                        0
                    }
                };
            }
        });
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                match set_mem(dev, cmd0, false).and_then(|()| set_mem(dev, cmd0, true)) {
                    Ok(()) => c.toggles.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        c.error(format!("toggle {e}"));
                        0
                    }
                };
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    p.note(&format!(
        "{} resets, {} MEM toggles, {} mappings, {} page reads, {} SIGBUS",
        get(&c.resets),
        get(&c.toggles),
        get(&c.maps),
        get(&c.reads),
        get(&c.sigbus)
    ));
    for (what, n) in c.errors.lock().unwrap().iter() {
        p.note(&format!("{n} x {what}"));
    }
    p.expect(
        "races",
        get(&c.resets) > 0 && get(&c.reads) > 0 && get(&c.maps) > 1,
        || "no reset or no fault happened: the race did not run".into(),
    );
    drop(gd);
    let reopened = (|| {
        let mut quiet = Quiet::default();
        let gd = open_via_group(bdf, &mut quiet)
            .map_err(|_| quiet.failure.take().unwrap_or_default())?;
        let map =
            map_shared(&gd.device, size, off).map_err(|e| format!("mmap: {}", err_name(&e)))?;
        faultsafe::read64(map.addr)
            .map(|_| ())
            .ok_or_else(|| "the new mapping SIGBUSes".to_string())
    })();
    p.result("reopen", reopened);
    Ok(())
}

pub fn run(bdf: &str, secs: u64) -> ExitCode {
    let mut rep = Reporter::stdout();
    let driver = driver_name(bdf);
    let subject = format!("reset-race {driver}");
    let since = dmesg().map(|l| l.len()).unwrap_or(0);
    let mut p = Phase::new(&mut rep, subject.clone(), CHECKS);
    let r = race(&mut p, bdf, secs);
    p.finish(r);
    kernel_health(&mut rep, &subject, since);
    rep.finish()
}
