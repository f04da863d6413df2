//! `vfio-test bench`, `vfio-test stress` and `vfio-test mmap-demo` (issue 4): the command
//! line of the three, the benchmark and the demo. The stress itself is in stress.rs.
//!
//! The benchmark binds ONE ivshmem-plain device to vfio-pci and vfio-pci-rs in turn (C, Rust,
//! C, Rust, ...: `--runs` pairs after one discarded warm-up pair) and measures on BAR2 (1 GiB):
//! - fault throughput after a fresh mmap, touching every 4 KiB page of a span: mapped at a
//!   1 GiB-aligned address (PUD faults), a 2 MiB-aligned one (PMD) and a misaligned one
//!   (PTE); ru_minflt confirms the granularity;
//! - revoke + refault with 64 live 2 MiB mappings: COMMAND.MEM clear + set (both zap every
//!   mapping), then the refault of all of them;
//! - mmap + munmap of a 2 MiB window (vfio-pci-rs creates a DMABUF per mmap);
//! - VFIO_DEVICE_GET_REGION_INFO latency.
//!
//! Each is printed as the median Rust/C ratio over the pairs, with the spread (min-max of the
//! per-pair ratios); higher is better for Rust (throughput, or C's latency over Rust's).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::checks::{open_via_group, Quiet};
use crate::cli::{parse_bdf, Driver};
use crate::faultsafe::{self, Map, Reserve, G1, M2, PAGE};
use crate::stress::{self, bar_region, command, set_mem, BAR};
use crate::sys::{self, err_name};
use crate::sysfs;
use crate::uapi::{self, size_u32};

pub const USAGE: &str = "\
  vfio-test stress BDF [--secs N] [--driver vfio-pci|vfio-pci-rs]...
      the race stress on BDF's BAR2 (ivshmem-plain), each driver in turn (default: both,
      vfio-pci first), N seconds each (default 60); PASS/FAIL lines, `N passed, N failed`
  vfio-test bench BDF [--runs N]
      fault throughput (4K/2M/1G), revoke+refault, mmap and region-info latency on BDF's
      BAR2, vfio-pci and vfio-pci-rs interleaved over N pairs (default 5); Rust/C ratios
  vfio-test mmap-demo BDF [BAR]
      map a BAR of BDF (default 2) through the driver it is bound to, show the maps line,
      disable memory (SIGBUS), enable it again (data back)
";

#[derive(Debug, PartialEq, Eq)]
pub enum Extra {
    Stress {
        bdf: String,
        secs: u64,
        drivers: Vec<Driver>,
    },
    Bench {
        bdf: String,
        runs: usize,
    },
    MmapDemo {
        bdf: String,
        bar: u32,
    },
}

fn number<T: std::str::FromStr>(opt: &str, v: Option<&String>) -> Result<T, String> {
    v.ok_or_else(|| format!("{opt} needs a value"))?
        .parse()
        .map_err(|_| format!("bad value for {opt}"))
}

/// Parse the arguments of the three subcommands; `Ok(None)` for any other command line.
pub fn parse(args: &[String]) -> Result<Option<Extra>, String> {
    let Some(cmd) = args.first() else {
        return Ok(None);
    };
    let mut rest = args[1..].iter();
    let mut bdf = None;
    let mut secs = 60u64;
    let mut runs = 5usize;
    let mut drivers = Vec::new();
    let mut positional = Vec::new();
    match cmd.as_str() {
        "stress" | "bench" | "mmap-demo" => {}
        _ => return Ok(None),
    }
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--secs" if cmd == "stress" => secs = number("--secs", rest.next())?,
            "--runs" if cmd == "bench" => runs = number("--runs", rest.next())?,
            "--driver" if cmd == "stress" => {
                let d = Driver::parse(rest.next().ok_or("--driver needs a value")?)?;
                if !drivers.contains(&d) {
                    drivers.push(d);
                }
            }
            o if o.starts_with('-') => return Err(format!("{cmd}: unknown option {o:?}")),
            p => positional.push(p.to_string()),
        }
    }
    let mut pos = positional.into_iter();
    if let Some(b) = pos.next() {
        bdf = Some(parse_bdf(&b)?);
    }
    let bdf = bdf.ok_or_else(|| format!("{cmd} needs a BDF"))?;
    let extra = match cmd.as_str() {
        "stress" => {
            if secs == 0 {
                return Err("--secs must be at least 1".into());
            }
            drivers.sort();
            if drivers.is_empty() {
                drivers = Driver::ALL.to_vec();
            }
            Extra::Stress { bdf, secs, drivers }
        }
        "bench" => {
            if runs == 0 {
                return Err("--runs must be at least 1".into());
            }
            Extra::Bench { bdf, runs }
        }
        _ => {
            let bar = match pos.next() {
                Some(b) => b
                    .parse::<u32>()
                    .ok()
                    .filter(|b| *b < 6)
                    .ok_or("mmap-demo: BAR is 0-5")?,
                None => BAR,
            };
            Extra::MmapDemo { bdf, bar }
        }
    };
    if let Some(x) = pos.next() {
        return Err(format!("{cmd}: unexpected argument {x:?}"));
    }
    Ok(Some(extra))
}

/// Run `stress`, `bench` or `mmap-demo` if that is the command; `None` for anything else.
pub fn dispatch(args: &[String]) -> Option<ExitCode> {
    match parse(args) {
        Ok(None) => None,
        Err(e) => {
            eprintln!("vfio-test: {e}");
            eprint!("{USAGE}");
            Some(ExitCode::from(2))
        }
        Ok(Some(Extra::Stress { bdf, secs, drivers })) => Some(stress::run(&bdf, &drivers, secs)),
        Ok(Some(Extra::Bench { bdf, runs })) => Some(bench(&bdf, runs)),
        Ok(Some(Extra::MmapDemo { bdf, bar })) => Some(match mmap_demo(&bdf, bar) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vfio-test: {e}");
                ExitCode::FAILURE
            }
        }),
    }
}

// ------------------------------------------------------------------------------------------
// Benchmark
// ------------------------------------------------------------------------------------------

/// One measured quantity of one run.
#[derive(Clone, Debug)]
struct Sample {
    /// Higher is better (GB/s, or 1/s for a latency).
    score: f64,
    /// As printed: GB/s, or the latency in µs.
    shown: f64,
    /// Minor faults seen, where that matters.
    faults: Option<i64>,
}

#[derive(Clone, Copy)]
struct Measure {
    name: &'static str,
    unit: &'static str,
}

const MEASURES: [Measure; 7] = [
    Measure {
        name: "fault-1G",
        unit: "GB/s",
    },
    Measure {
        name: "fault-2M",
        unit: "GB/s",
    },
    Measure {
        name: "fault-4K",
        unit: "GB/s",
    },
    Measure {
        name: "revoke-64maps",
        unit: "us",
    },
    Measure {
        name: "refault-64maps",
        unit: "us",
    },
    Measure {
        name: "mmap-munmap",
        unit: "us",
    },
    Measure {
        name: "region-info",
        unit: "us",
    },
];

/// Span touched for the 4 KiB-granular fault measure.
const SPAN_4K: u64 = 128 << 20;

fn latency(d: Duration, n: u64) -> Sample {
    let us = d.as_secs_f64() * 1e6 / n as f64;
    Sample {
        score: 1.0 / us,
        shown: us,
        faults: None,
    }
}

/// Map `len` bytes of the BAR at an address `skew` past a 1 GiB boundary and time touching
/// every page.
fn fault_span(dev: &File, off: u64, len: u64, skew: u64) -> Result<Sample, String> {
    let (_res, at) = Reserve::placed(len, G1, skew).map_err(|e| format!("reserve: {e}"))?;
    let m = Map::new(dev.as_raw_fd(), Some(at), len, off)
        .map_err(|e| format!("mmap: {}", err_name(&e)))?;
    let f0 = faultsafe::minflt();
    let t0 = Instant::now();
    let mut p = 0;
    while p < len {
        if faultsafe::read64(m.addr + p).is_none() {
            return Err(format!("SIGBUS at +0x{p:x}"));
        }
        p += PAGE;
    }
    let t = t0.elapsed();
    let faults = faultsafe::minflt() - f0;
    if std::env::var_os("VFIO_TEST_PTDUMP").is_some() {
        ptdump(m.addr, m.len);
    }
    drop(m);
    Ok(Sample {
        score: len as f64 / t.as_secs_f64() / 1e9,
        shown: len as f64 / t.as_secs_f64() / 1e9,
        faults: Some(faults),
    })
}

/// The lines of the current process's page-table dump (PTDUMP_DEBUGFS) that cover
/// `addr..addr + len`: page size and cache attributes as the CPU sees them.
fn ptdump(addr: u64, len: u64) {
    let Ok(dump) = std::fs::read_to_string("/sys/kernel/debug/page_tables/current_user") else {
        println!("# ptdump: /sys/kernel/debug/page_tables/current_user unreadable");
        return;
    };
    let mut shown = 0;
    for l in dump.lines() {
        let Some((a, rest)) = l.trim_start_matches("0x").split_once('-') else {
            continue;
        };
        let b = rest
            .trim_start_matches("0x")
            .split_whitespace()
            .next()
            .unwrap_or("");
        let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        if a < addr + len && b > addr && shown < 4 {
            println!("# ptdump 0x{addr:x}+0x{len:x}: {l}");
            shown += 1;
        }
    }
}

/// 64 live 2 MiB mappings, all touched; then ITER times: COMMAND.MEM clear + set (timed:
/// the revoke), then touch every page of every mapping again (timed: the refault).
fn revoke_refault(dev: &File, off: u64, size: u64) -> Result<(Sample, Sample), String> {
    const N: u64 = 64;
    const ITER: u64 = 10;
    if N * M2 > size {
        return Err("BAR too small".into());
    }
    let cmd0 = command(dev)?;
    // A 2 MiB hole between the mappings, so none can merge with its neighbour.
    let (_res, at) = Reserve::placed(2 * N * M2, M2, 0).map_err(|e| format!("reserve: {e}"))?;
    let mut maps = Vec::new();
    for i in 0..N {
        maps.push(
            Map::new(dev.as_raw_fd(), Some(at + 2 * i * M2), M2, off + i * M2)
                .map_err(|e| format!("mmap {i}: {}", err_name(&e)))?,
        );
    }
    let touch_all = |maps: &[Map]| -> Result<(), String> {
        for m in maps {
            let mut p = 0;
            while p < m.len {
                faultsafe::read64(m.addr + p).ok_or("SIGBUS with memory enabled")?;
                p += PAGE;
            }
        }
        Ok(())
    };
    touch_all(&maps)?;
    let (mut revoke, mut refault) = (Duration::ZERO, Duration::ZERO);
    let f0 = faultsafe::minflt();
    for _ in 0..ITER {
        let t0 = Instant::now();
        set_mem(dev, cmd0, false)?;
        set_mem(dev, cmd0, true)?;
        let t1 = Instant::now();
        touch_all(&maps)?;
        revoke += t1 - t0;
        refault += t1.elapsed();
    }
    let faults = (faultsafe::minflt() - f0) / ITER as i64;
    let mut rf = latency(refault, ITER);
    rf.faults = Some(faults);
    Ok((latency(revoke, ITER), rf))
}

fn mmap_munmap(dev: &File, off: u64) -> Result<Sample, String> {
    const N: u64 = 1000;
    let t0 = Instant::now();
    for _ in 0..N {
        let m = Map::new(dev.as_raw_fd(), None, M2, off)
            .map_err(|e| format!("mmap: {}", err_name(&e)))?;
        drop(m);
    }
    Ok(latency(t0.elapsed(), N))
}

fn region_info_latency(dev: &File) -> Result<Sample, String> {
    const N: u64 = 20000;
    let t0 = Instant::now();
    for _ in 0..N {
        let mut r = uapi::VfioRegionInfo {
            argsz: size_u32::<uapi::VfioRegionInfo>(),
            index: BAR,
            ..Default::default()
        };
        sys::ioctl_struct::<uapi::DeviceGetRegionInfo>(dev, &mut r)
            .map_err(|e| format!("GET_REGION_INFO: {}", err_name(&e)))?;
    }
    Ok(latency(t0.elapsed(), N))
}

/// One run on `bdf` bound to `driver`: every measure, in MEASURES order.
fn bench_run(bdf: &str, driver: Driver) -> Result<Vec<Result<Sample, String>>, String> {
    sysfs::bind(bdf, &driver.pci_name())?;
    let mut quiet = Quiet::default();
    let gd =
        open_via_group(bdf, &mut quiet).map_err(|_| quiet.failure.take().unwrap_or_default())?;
    let dev = &gd.device;
    let (size, off) = bar_region(dev, BAR)?;
    set_mem(dev, command(dev)?, true)?;
    // Binding sends uevents; udev handles them on the guest's only vCPU. Let that finish
    // before timing anything, or the first measure pays for it.
    let _ = std::process::Command::new("udevadm").arg("settle").status();
    std::thread::sleep(Duration::from_secs(1));
    let mut out = vec![
        fault_span(dev, off, size.min(G1), 0),
        fault_span(dev, off, size.min(G1), M2),
        fault_span(dev, off, size.min(SPAN_4K), PAGE),
    ];
    match revoke_refault(dev, off, size) {
        Ok((a, b)) => {
            out.push(Ok(a));
            out.push(Ok(b));
        }
        Err(e) => {
            out.push(Err(e.clone()));
            out.push(Err(e));
        }
    }
    out.push(mmap_munmap(dev, off));
    out.push(region_info_latency(dev));
    Ok(out)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The verdict on the ratios of one measure: (median, min, max).
pub fn ratio_stats(ratios: &[f64]) -> Option<(f64, f64, f64)> {
    if ratios.is_empty() {
        return None;
    }
    let mut v = ratios.to_vec();
    let med = median(&mut v);
    Some((med, v[0], v[v.len() - 1]))
}

fn bench(bdf: &str, runs: usize) -> ExitCode {
    faultsafe::install();
    println!(
        "# bench on {bdf} BAR{BAR}: 1 warm-up pair, then {runs} pairs (vfio-pci, vfio-pci-rs)"
    );
    // Warm up: the host backs the BAR with a file; the first touches of its pages cost the
    // host (QEMU) a page-cache fault each, whichever driver comes first.
    for d in Driver::ALL {
        let t = Instant::now();
        match bench_run(bdf, d) {
            Ok(_) => println!("# warm-up {d}: {:.1} s", t.elapsed().as_secs_f64()),
            Err(e) => println!("# warm-up {d}: {e}"),
        }
    }
    // results[driver][run][measure]
    let mut results: Vec<Vec<Vec<Result<Sample, String>>>> = vec![Vec::new(), Vec::new()];
    for run in 0..runs {
        for (i, d) in Driver::ALL.into_iter().enumerate() {
            let t = Instant::now();
            let r = bench_run(bdf, d)
                .unwrap_or_else(|e| MEASURES.iter().map(|_| Err(e.clone())).collect());
            let line: Vec<String> = MEASURES
                .iter()
                .zip(&r)
                .map(|(m, s)| match s {
                    Ok(s) => format!(
                        "{}={:.3}{}{}",
                        m.name,
                        s.shown,
                        m.unit,
                        s.faults.map(|f| format!("({f}flt)")).unwrap_or_default()
                    ),
                    Err(e) => format!("{}=ERR({e})", m.name),
                })
                .collect();
            println!(
                "# run {} {d} ({:.1} s): {}",
                run + 1,
                t.elapsed().as_secs_f64(),
                line.join(" ")
            );
            results[i].push(r);
        }
    }
    let _ = stress::restore_device(bdf);

    println!("# Rust/C ratio per measure: median (min-max over {runs} pairs); higher = Rust better (throughput, or C latency / Rust latency)");
    println!(
        "{:<16} {:>14} {:>14} {:>8} {:>17}  faults C/Rust",
        "measure", "vfio-pci", "vfio-pci-rs", "ratio", "spread"
    );
    let mut below = Vec::new();
    for (k, m) in MEASURES.iter().enumerate() {
        let mut ratios = Vec::new();
        let (mut c_vals, mut r_vals) = (Vec::new(), Vec::new());
        let (mut c_flt, mut r_flt) = (None, None);
        let mut errs = Vec::new();
        for (c_run, r_run) in results[0].iter().zip(&results[1]) {
            match (&c_run[k], &r_run[k]) {
                (Ok(c), Ok(r)) => {
                    ratios.push(r.score / c.score);
                    c_vals.push(c.shown);
                    r_vals.push(r.shown);
                    c_flt = c.faults.or(c_flt);
                    r_flt = r.faults.or(r_flt);
                }
                (c, r) => {
                    for (d, x) in [("vfio-pci", c), ("vfio-pci-rs", r)] {
                        if let Err(e) = x {
                            errs.push(format!("{d}: {e}"));
                        }
                    }
                }
            }
        }
        let flt = |f: Option<i64>| f.map(|f| f.to_string()).unwrap_or("-".into());
        match ratio_stats(&ratios) {
            Some((med, lo, hi)) => {
                println!(
                    "{:<16} {:>10.3} {:<4}{:>10.3} {:<4}{:>8.3} {:>8.3}-{:<8.3}  {}/{}",
                    m.name,
                    median(&mut c_vals),
                    m.unit,
                    median(&mut r_vals),
                    m.unit,
                    med,
                    lo,
                    hi,
                    flt(c_flt),
                    flt(r_flt)
                );
                if hi < 0.95 {
                    below.push(format!("{} ({med:.3}, {lo:.3}-{hi:.3})", m.name));
                }
            }
            None => {
                errs.dedup();
                println!(
                    "{:<16} no ratio: {}",
                    m.name,
                    errs.first().cloned().unwrap_or_default()
                );
            }
        }
    }
    if below.is_empty() {
        println!("# no measure below 0.95 outside its spread");
    } else {
        println!(
            "# BELOW 0.95 outside the spread (a bug to find): {}",
            below.join(", ")
        );
    }
    ExitCode::SUCCESS
}

// ------------------------------------------------------------------------------------------
// make run: mmap-demo
// ------------------------------------------------------------------------------------------

fn mmap_demo(bdf: &str, bar: u32) -> Result<(), String> {
    faultsafe::install();
    let driver = sysfs::current_driver(bdf)
        .map_err(|e| format!("{bdf}: {}", err_name(&e)))?
        .unwrap_or_else(|| "none".into());
    let mut quiet = Quiet::default();
    let gd =
        open_via_group(bdf, &mut quiet).map_err(|_| quiet.failure.take().unwrap_or_default())?;
    let dev = &gd.device;
    let (size, off) = bar_region(dev, bar)?;
    let len = size.min(M2);
    let cmd0 = command(dev)?;
    set_mem(dev, cmd0, true)?;
    let m = Map::new(dev.as_raw_fd(), None, len, off)
        .map_err(|e| format!("mmap BAR{bar}: {}", err_name(&e)))?;
    println!(
        "mapped BAR{bar} of {bdf} ({driver}): 0x{len:x} of 0x{size:x} bytes at 0x{:x}",
        m.addr
    );
    println!(
        "/proc/self/maps: {}",
        faultsafe::maps_line(m.addr).unwrap_or_else(|| "(not found)".into())
    );
    let value = 0x7e57_0000_0000_0000u64 | u64::from(std::process::id());
    let at = m.addr + 0x100;
    if !faultsafe::write64(at, value) {
        return Err("SIGBUS writing with memory enabled".into());
    }
    let back = faultsafe::read64(at).ok_or("SIGBUS reading with memory enabled")?;
    println!("wrote 0x{value:016x} at BAR{bar}+0x100, read back 0x{back:016x}");
    if back != value {
        return Err("the value did not come back".into());
    }

    set_mem(dev, cmd0, false)?;
    println!(
        "COMMAND.MEM cleared through a config write (COMMAND now 0x{:04x})",
        command(dev)?
    );
    let before = faultsafe::sigbus_caught();
    match faultsafe::read64(at) {
        None => println!(
            "read BAR{bar}+0x100 -> SIGBUS (the mapping is revoked; {} SIGBUS caught)",
            faultsafe::sigbus_caught() - before
        ),
        Some(v) => {
            let _ = set_mem(dev, cmd0, true);
            return Err(format!(
                "read 0x{v:016x} with memory disabled: the mapping was not revoked"
            ));
        }
    }

    set_mem(dev, cmd0, true)?;
    println!(
        "COMMAND.MEM set again (COMMAND now 0x{:04x})",
        command(dev)?
    );
    let again = faultsafe::read64(at).ok_or("SIGBUS after memory was enabled again")?;
    println!("read BAR{bar}+0x100 -> 0x{again:016x} (refaulted, data intact)");
    if again != value {
        return Err("the data did not come back".into());
    }
    drop(m);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn parses_the_three_commands() {
        assert_eq!(parse(&args(&["edu=0000:01:00.0,0000:02:00.0"])), Ok(None));
        assert_eq!(parse(&args(&[])), Ok(None));
        assert_eq!(
            parse(&args(&["stress", "03:00.0"])),
            Ok(Some(Extra::Stress {
                bdf: "0000:03:00.0".into(),
                secs: 60,
                drivers: vec![Driver::C, Driver::Rs]
            }))
        );
        assert_eq!(
            parse(&args(&[
                "stress",
                "--driver",
                "vfio-pci-rs",
                "0000:03:00.0",
                "--secs",
                "5"
            ])),
            Ok(Some(Extra::Stress {
                bdf: "0000:03:00.0".into(),
                secs: 5,
                drivers: vec![Driver::Rs]
            }))
        );
        assert_eq!(
            parse(&args(&["bench", "0000:03:00.0", "--runs", "7"])),
            Ok(Some(Extra::Bench {
                bdf: "0000:03:00.0".into(),
                runs: 7
            }))
        );
        assert_eq!(
            parse(&args(&["mmap-demo", "0000:04:00.0"])),
            Ok(Some(Extra::MmapDemo {
                bdf: "0000:04:00.0".into(),
                bar: 2
            }))
        );
        assert_eq!(
            parse(&args(&["mmap-demo", "0000:04:00.0", "0"])),
            Ok(Some(Extra::MmapDemo {
                bdf: "0000:04:00.0".into(),
                bar: 0
            }))
        );
        for bad in [
            &["stress"][..],
            &["stress", "zz"],
            &["stress", "03:00.0", "--secs"],
            &["stress", "03:00.0", "--secs", "0"],
            &["stress", "03:00.0", "--secs", "x"],
            &["stress", "03:00.0", "--runs", "3"],
            &["stress", "03:00.0", "--driver", "nvme"],
            &["bench", "03:00.0", "--runs", "0"],
            &["bench", "03:00.0", "04:00.0"],
            &["mmap-demo", "03:00.0", "6"],
            &["mmap-demo", "03:00.0", "2", "3"],
            &["bench", "03:00.0", "--frob"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio_stats(&[]), None);
        assert_eq!(ratio_stats(&[1.0, 0.9, 1.2]), Some((1.0, 0.9, 1.2)));
        assert_eq!(ratio_stats(&[1.0, 0.8, 1.2, 1.1]), Some((1.05, 0.8, 1.2)));
    }
}
