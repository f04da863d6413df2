//! Command-line parsing (pure logic, unit-tested).

use std::fmt;
use std::time::Duration;

use crate::devregion::Expect;
use crate::p2p::Container;

pub const USAGE: &str = "\
usage:
  vfio-test [--driver vfio-pci|vfio-pci-rs]... [--only-driver vfio-pci|vfio-pci-rs] TWIN...
      TWIN is NAME=BDF_C,BDF_RS (e.g. edu=0000:01:00.0,0000:02:00.0): BDF_C is bound to
      vfio-pci, BDF_RS to vfio-pci-rs, the same checks run on both and their results are
      compared. --driver (repeatable) selects the drivers to test (default: both);
      --only-driver NAME tests that driver alone (no parity checks).
      Prints PASS/FAIL lines and ends with `N passed, N failed`; exits 1 if any failed.
      When both devices of a twin are in one IOMMU group, a `mixed` phase also opens them
      together through that group (checks `<twin> mixed <check>`).
  vfio-test bind BDF DRIVER     bind BDF to DRIVER via driver_override + drivers_probe
  vfio-test unbind BDF          unbind BDF and clear its driver_override
  vfio-test info BDF            open BDF through its VFIO group and print GET_INFO
  vfio-test hold BDF SECONDS [--cdev]
      open BDF (through its group, type1v2 container: fully opened; with --cdev only
      open() /dev/vfio/devices/vfioN, no iommufd bound), print `held BDF PATH`, sleep
      SECONDS (decimal, e.g. 5 or 0.5), close, print `released BDF`; exit 1 on a failure
  vfio-test dev-regions BDF none|igd-bridges
      open BDF (bound to vfio-pci or vfio-pci-rs) through its group and check its
      device-specific regions (index >= 9): none at all, or the two IGD bridge regions of
      C's vfio_pci_igd.c (index 9: config space of 0000:00:00.0, 10: of 0000:00:1f.0;
      read-only, TYPE capability); PASS/FAIL lines, `N passed, N failed`; exit 1 if any failed
  vfio-test p2p-dma EDU_BDF IVSHMEM_BDF [type1|compat]
  vfio-test p2p-iommufd EDU_BDF IVSHMEM_BDF [IVSHMEM_BACKING_FILE]
      open an edu and an ivshmem (bound to VFIO drivers) in one Type1 container, map a page
      of memory and 2 MiB of ivshmem's BAR2 (its mmap()) for DMA, and have edu's DMA engine
      copy memory -> BAR, BAR -> memory, and into the BAR with its memory decode off;
      PASS/FAIL lines, `N passed, N failed`; exit 1 if any failed
  vfio-test importer IVSHMEM_BDF OTHER_BDF
      export 2 MiB of ivshmem's BAR2 as a DMABUF and import it in the kernel through the
      test module dma-buf-importer-test: attach refusals, map for ivshmem itself, invalidation
      on revoke and close, ENODEV while revoked, EINVAL for OTHER_BDF (no P2P path);
      PASS/FAIL lines, `N passed, N failed`; exit 1 if any failed
  vfio-test teardown unbind|remove|rmmod BDF | unplug BDF QEMU_ID
      a forked holder opens an edu or igb (bound to a VFIO driver) with a BAR0 mapping, an
      exported DMABUF, MSI (edu) or 4 MSI-X vectors (igb), an ioeventfd and REQ; then the
      function is unbound (the holder closes its fds, then unmaps), removed from the bus
      (the holder is killed, then a rescan brings it back) or unplugged by QEMU's
      device_del QEMU_ID (the holder is killed, then device_add plugs it back): REQ is
      signalled, the removal waits for the last user, the function binds and works again;
      or (rmmod) the driver's module is refused while the device is open or mapped, the
      DMABUF's exporter module while the DMABUF lives, and unloads after; PASS/FAIL lines,
      `N passed, N failed`
  vfio-test reset-race BDF [SECS]
      on a function with ATS bound to a VFIO driver: SECS seconds (default 15) of
      VFIO_DEVICE_RESET, BAR faults and memory-decode toggles at once, then lockdep still
      on, no kernel report, the device opens again; PASS/FAIL lines, `N passed, N failed`
  vfio-test fuzz [--seed S] [--ops N] [--replay K [--from F]] TWIN...
      seeded, reproducible fuzzing of the device fd: op i (from S and i alone) runs on the
      twin's vfio-pci device, then on its vfio-pci-rs device (both already bound), and the
      outcomes are compared; a difference not listed as by design prints a
      `FUZZ-DIVERGENCE twin=NAME seed=S op=I kind=K c=... rs=...` line. N ops per twin
      (default 10000), S decimal or 0x hex (default: the time). --replay K runs ops 0..=K
      of the seed and prints every op and both outcomes (--from F: only ops F..=K, all
      run). Checks `fuzz NAME ops` (both
      devices survived: they reopen and answer GET_INFO as before) and `fuzz NAME parity`
      (no unlisted divergence); `N passed, N failed`; exit 1 if any failed
";

/// The two drivers under comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Driver {
    /// The C reference driver `vfio-pci` (module `vfio_pci`).
    C,
    /// The Rust port `vfio-pci-rs` (module `vfio_pci_rs`).
    Rs,
}

impl Driver {
    pub const ALL: [Driver; 2] = [Driver::C, Driver::Rs];

    pub fn name(self) -> &'static str {
        match self {
            Driver::C => "vfio-pci",
            Driver::Rs => "vfio-pci-rs",
        }
    }

    /// The name the driver has on the PCI bus, for binding. vfio-pci-rs registers as
    /// `vfio-pci` in a kernel without the C driver; the guest script then says so in
    /// `VFIO_TEST_RS_PCI_DRIVER`.
    pub fn pci_name(self) -> String {
        match self {
            Driver::C => self.name().to_string(),
            Driver::Rs => {
                std::env::var("VFIO_TEST_RS_PCI_DRIVER").unwrap_or_else(|_| self.name().to_string())
            }
        }
    }

    /// The kernel module of the driver.
    pub fn module(self) -> &'static str {
        match self {
            Driver::C => "vfio_pci",
            Driver::Rs => "vfio_pci_rs",
        }
    }

    pub fn parse(s: &str) -> Result<Driver, String> {
        match s {
            "vfio-pci" | "vfio_pci" => Ok(Driver::C),
            "vfio-pci-rs" | "vfio_pci_rs" => Ok(Driver::Rs),
            _ => Err(format!(
                "unknown driver {s:?} (expected vfio-pci or vfio-pci-rs)"
            )),
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One twin pair: the same kind of device twice, one per driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Twin {
    pub name: String,
    /// Bound to vfio-pci.
    pub bdf_c: String,
    /// Bound to vfio-pci-rs.
    pub bdf_rs: String,
}

impl Twin {
    pub fn bdf(&self, d: Driver) -> &str {
        match d {
            Driver::C => &self.bdf_c,
            Driver::Rs => &self.bdf_rs,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cmd {
    Run {
        drivers: Vec<Driver>,
        twins: Vec<Twin>,
    },
    Bind {
        bdf: String,
        driver: String,
    },
    Unbind {
        bdf: String,
    },
    Info {
        bdf: String,
    },
    Hold {
        bdf: String,
        time: Duration,
        cdev: bool,
    },
    DevRegions {
        bdf: String,
        expect: Expect,
    },
    P2pDma {
        edu: String,
        ivshmem: String,
        container: Container,
    },
    /// Peer-to-peer DMA through an iommufd IOAS that maps ivshmem's BAR2 DMABUF.
    P2pIommufd {
        edu: String,
        ivshmem: String,
        backing: Option<std::path::PathBuf>,
    },
    Importer {
        ivshmem: String,
        other: String,
    },
    Teardown {
        mode: String,
        bdf: String,
        /// `unplug`: the function's QEMU device id.
        slot: Option<String>,
    },
    /// VFIO_DEVICE_RESET racing BAR faults on a function with ATS (resetrace.rs).
    ResetRace {
        bdf: String,
        secs: u64,
    },
    /// The device-fd fuzzer (fuzz.rs).
    Fuzz {
        seed: Option<u64>,
        ops: u64,
        replay: Option<u64>,
        /// With `replay`: print ops from this one on (all run).
        from: u64,
        twins: Vec<Twin>,
    },
    Help,
}

/// A number: decimal or `0x` hex.
pub fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("bad number {s:?} (decimal or 0x hex)"))
}

/// `fuzz [--seed S] [--ops N] [--replay K] TWIN...`.
fn parse_fuzz(args: &[String]) -> Result<Cmd, String> {
    let (mut seed, mut ops, mut replay, mut from) = (None, 10_000, None, 0);
    let mut twins: Vec<Twin> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (opt, inline) = match arg.split_once('=') {
            Some((o, v)) if o.starts_with("--") => (o, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        if matches!(opt, "--seed" | "--ops" | "--replay" | "--from") {
            let v = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("{opt} needs a value"))?,
            };
            let n = parse_u64(&v)?;
            match opt {
                "--seed" => seed = Some(n),
                "--ops" => ops = n,
                "--from" => from = n,
                _ => replay = Some(n),
            }
        } else if arg.starts_with('-') {
            return Err(format!("fuzz: unknown option {arg:?}"));
        } else {
            let t = parse_twin(arg)?;
            if twins.iter().any(|x| x.name == t.name) {
                return Err(format!("twin {} given twice", t.name));
            }
            twins.push(t);
        }
    }
    if twins.is_empty() {
        return Err("fuzz needs at least one twin NAME=BDF_C,BDF_RS".to_string());
    }
    if ops == 0 && replay.is_none() {
        return Err("--ops must be at least 1".to_string());
    }
    if from > 0 && replay.is_none_or(|k| from > k) {
        return Err("--from F needs --replay K with F <= K".to_string());
    }
    Ok(Cmd::Fuzz {
        seed,
        ops,
        replay,
        from,
        twins,
    })
}

/// Validate a PCI address and return it in sysfs form: `DDDD:BB:DD.F`, lower case. A missing
/// domain means domain 0.
pub fn parse_bdf(s: &str) -> Result<String, String> {
    let bad = || format!("bad PCI address {s:?} (expected DDDD:BB:DD.F)");
    let parts: Vec<&str> = s.split(':').collect();
    let (domain, bus, devfn) = match parts.as_slice() {
        [d, b, df] => (*d, *b, *df),
        [b, df] => ("0000", *b, *df),
        _ => return Err(bad()),
    };
    let (dev, func) = devfn.split_once('.').ok_or_else(bad)?;
    let hex = |x: &str, max_len: usize| {
        !x.is_empty() && x.len() <= max_len && x.chars().all(|c| c.is_ascii_hexdigit())
    };
    if !hex(domain, 8) || !hex(bus, 2) || !hex(dev, 2) || !hex(func, 1) {
        return Err(bad());
    }
    let domain_v = u32::from_str_radix(domain, 16).map_err(|_| bad())?;
    let bus_v = u32::from_str_radix(bus, 16).map_err(|_| bad())?;
    let dev_v = u32::from_str_radix(dev, 16).map_err(|_| bad())?;
    let func_v = u32::from_str_radix(func, 16).map_err(|_| bad())?;
    if dev_v > 0x1f || func_v > 7 {
        return Err(bad());
    }
    Ok(format!("{domain_v:04x}:{bus_v:02x}:{dev_v:02x}.{func_v:x}"))
}

/// `NAME=BDF_C,BDF_RS`.
pub fn parse_twin(s: &str) -> Result<Twin, String> {
    let (name, bdfs) = s
        .split_once('=')
        .ok_or_else(|| format!("bad twin spec {s:?} (expected NAME=BDF_C,BDF_RS)"))?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "bad twin name {name:?} (letters, digits, '-', '_', '.')"
        ));
    }
    let (c, rs) = bdfs
        .split_once(',')
        .ok_or_else(|| format!("bad twin spec {s:?} (expected NAME=BDF_C,BDF_RS)"))?;
    let bdf_c = parse_bdf(c)?;
    let bdf_rs = parse_bdf(rs)?;
    if bdf_c == bdf_rs {
        return Err(format!(
            "twin {name}: both drivers given the same device {bdf_c}"
        ));
    }
    Ok(Twin {
        name: name.to_string(),
        bdf_c,
        bdf_rs,
    })
}

/// A number of seconds: digits, optionally a fraction (`5`, `0.5`); no sign, no exponent.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let bad = || format!("bad number of seconds {s:?} (expected e.g. 5 or 0.5)");
    let (int, frac) = s.split_once('.').unwrap_or((s, "0"));
    let digits = |x: &str| !x.is_empty() && x.chars().all(|c| c.is_ascii_digit());
    if !digits(int) || !digits(frac) {
        return Err(bad());
    }
    let secs: f64 = s.parse().map_err(|_| bad())?;
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

fn one_arg(cmd: &str, rest: &[String]) -> Result<String, String> {
    match rest {
        [bdf] => parse_bdf(bdf),
        _ => Err(format!("{cmd} takes exactly one argument: BDF")),
    }
}

/// Parse the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Cmd, String> {
    let Some(first) = args.first() else {
        return Err("no twin spec given".to_string());
    };
    match first.as_str() {
        "-h" | "--help" | "help" => return Ok(Cmd::Help),
        "bind" => {
            return match &args[1..] {
                [bdf, driver] => {
                    if driver.is_empty()
                        || driver.contains('/')
                        || driver.contains(char::is_whitespace)
                    {
                        return Err(format!("bad driver name {driver:?}"));
                    }
                    Ok(Cmd::Bind {
                        bdf: parse_bdf(bdf)?,
                        driver: driver.clone(),
                    })
                }
                _ => Err("bind takes exactly two arguments: BDF DRIVER".to_string()),
            };
        }
        "unbind" => {
            return Ok(Cmd::Unbind {
                bdf: one_arg("unbind", &args[1..])?,
            })
        }
        "info" => {
            return Ok(Cmd::Info {
                bdf: one_arg("info", &args[1..])?,
            })
        }
        "hold" => {
            let cdev = args[1..].iter().any(|a| a == "--cdev");
            let rest: Vec<&String> = args[1..].iter().filter(|a| *a != "--cdev").collect();
            return match rest.as_slice() {
                [bdf, secs] if args.len() == 3 + usize::from(cdev) => Ok(Cmd::Hold {
                    bdf: parse_bdf(bdf)?,
                    time: parse_seconds(secs)?,
                    cdev,
                }),
                _ => Err("hold takes BDF SECONDS [--cdev]".to_string()),
            };
        }
        "dev-regions" => {
            return match &args[1..] {
                [bdf, expect] => Ok(Cmd::DevRegions {
                    bdf: parse_bdf(bdf)?,
                    expect: Expect::parse(expect)?,
                }),
                _ => {
                    Err("dev-regions takes exactly two arguments: BDF none|igd-bridges".to_string())
                }
            };
        }
        "p2p-dma" => {
            return match &args[1..] {
                [edu, ivshmem, rest @ ..] if rest.len() <= 1 => Ok(Cmd::P2pDma {
                    edu: parse_bdf(edu)?,
                    ivshmem: parse_bdf(ivshmem)?,
                    container: rest
                        .first()
                        .map_or(Ok(Container::Type1), |c| Container::parse(c))?,
                }),
                _ => Err("p2p-dma takes EDU_BDF IVSHMEM_BDF [type1|compat]".to_string()),
            };
        }
        "p2p-iommufd" => {
            return match &args[1..] {
                [edu, ivshmem, rest @ ..] if rest.len() <= 1 => Ok(Cmd::P2pIommufd {
                    edu: parse_bdf(edu)?,
                    ivshmem: parse_bdf(ivshmem)?,
                    backing: rest.first().map(std::path::PathBuf::from),
                }),
                _ => {
                    Err("p2p-iommufd takes EDU_BDF IVSHMEM_BDF [IVSHMEM_BACKING_FILE]".to_string())
                }
            };
        }
        "teardown" => {
            return match &args[1..] {
                [mode, bdf] if ["unbind", "remove", "rmmod"].contains(&mode.as_str()) => Ok(Cmd::Teardown {
                    mode: mode.clone(),
                    bdf: parse_bdf(bdf)?,
                    slot: None,
                }),
                [mode, bdf, slot] if mode == "unplug" => Ok(Cmd::Teardown {
                    mode: mode.clone(),
                    bdf: parse_bdf(bdf)?,
                    slot: Some(slot.clone()),
                }),
                _ => Err(
                    "teardown takes unbind|remove|rmmod BDF, or unplug BDF QEMU_ID (BDF: an edu or an igb)".to_string(),
                ),
            };
        }
        "reset-race" => {
            return match &args[1..] {
                [bdf] => Ok(Cmd::ResetRace {
                    bdf: parse_bdf(bdf)?,
                    secs: 15,
                }),
                [bdf, secs] => Ok(Cmd::ResetRace {
                    bdf: parse_bdf(bdf)?,
                    secs: parse_u64(secs)?,
                }),
                _ => Err("reset-race takes BDF [SECS]".to_string()),
            };
        }
        "fuzz" => return parse_fuzz(&args[1..]),
        "importer" => {
            return match &args[1..] {
                [ivshmem, other] => Ok(Cmd::Importer {
                    ivshmem: parse_bdf(ivshmem)?,
                    other: parse_bdf(other)?,
                }),
                _ => Err("importer takes IVSHMEM_BDF OTHER_BDF".to_string()),
            };
        }
        _ => {}
    }

    let mut selected: Vec<Driver> = Vec::new();
    let mut only: Option<Driver> = None;
    let mut twins: Vec<Twin> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut opt_value = |opt: &str| -> Result<Option<String>, String> {
            if arg == opt {
                it.next()
                    .cloned()
                    .map(Some)
                    .ok_or_else(|| format!("{opt} needs a value"))
            } else if let Some(v) = arg.strip_prefix(&format!("{opt}=")) {
                Ok(Some(v.to_string()))
            } else {
                Ok(None)
            }
        };
        if let Some(v) = opt_value("--driver")? {
            let d = Driver::parse(&v)?;
            if !selected.contains(&d) {
                selected.push(d);
            }
        } else if let Some(v) = opt_value("--only-driver")? {
            let d = Driver::parse(&v)?;
            if only.is_some_and(|o| o != d) {
                return Err("--only-driver given twice with different drivers".to_string());
            }
            only = Some(d);
        } else if arg == "-h" || arg == "--help" {
            return Ok(Cmd::Help);
        } else if arg.starts_with('-') {
            return Err(format!("unknown option {arg:?}"));
        } else {
            let t = parse_twin(arg)?;
            if twins.iter().any(|o| o.name == t.name) {
                return Err(format!("twin name {} given twice", t.name));
            }
            twins.push(t);
        }
    }
    if twins.is_empty() {
        return Err("no twin spec given".to_string());
    }
    let mut drivers = match only {
        Some(d) => {
            if !selected.is_empty() && !selected.contains(&d) {
                return Err(format!(
                    "--only-driver {d} conflicts with --driver {}",
                    selected[0]
                ));
            }
            vec![d]
        }
        None if selected.is_empty() => Driver::ALL.to_vec(),
        None => selected,
    };
    // Always C first: the reference runs first and the Rust port is compared against it.
    drivers.sort();
    Ok(Cmd::Run { drivers, twins })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn bdf_forms() {
        assert_eq!(parse_bdf("0000:01:00.0").unwrap(), "0000:01:00.0");
        assert_eq!(parse_bdf("01:00.0").unwrap(), "0000:01:00.0");
        assert_eq!(parse_bdf("0000:0C:1f.7").unwrap(), "0000:0c:1f.7");
        assert_eq!(parse_bdf("10000:00:02.0").unwrap(), "10000:00:02.0");
        for bad in [
            "",
            "0000:01:00",
            "0000:01:20.0",
            "0000:01:00.8",
            "0000:001:00.0",
            "x:01:00.0",
            "0000:01:00.0.1",
            "1:2:3:4.0",
        ] {
            assert!(parse_bdf(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn teardown_modes() {
        match parse(&args(&["teardown", "remove", "01:00.0"])).unwrap() {
            Cmd::Teardown { mode, bdf, .. } => {
                assert_eq!(mode, "remove");
                assert_eq!(bdf, "0000:01:00.0");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&args(&["teardown", "rmmod", "01:00.0"])),
            Ok(Cmd::Teardown { ref mode, .. }) if mode == "rmmod"
        ));
        assert!(parse(&args(&["teardown", "unplug", "01:00.0"])).is_err());
        assert!(parse(&args(&["teardown", "rmmod", "01:00.0", "slot1"])).is_err());
        assert!(parse(&args(&["teardown", "unbind"])).is_err());
        match parse(&args(&["reset-race", "0e:00.0", "3"])).unwrap() {
            Cmd::ResetRace { bdf, secs } => {
                assert_eq!(bdf, "0000:0e:00.0");
                assert_eq!(secs, 3);
            }
            _ => panic!("not reset-race"),
        }
        assert!(parse(&args(&["reset-race"])).is_err());
    }

    #[test]
    fn twin_spec() {
        let t = parse_twin("edu=0000:01:00.0,0000:02:00.0").unwrap();
        assert_eq!(t.name, "edu");
        assert_eq!(t.bdf(Driver::C), "0000:01:00.0");
        assert_eq!(t.bdf(Driver::Rs), "0000:02:00.0");
        let t = parse_twin("mixed-bus=0000:0c:01.0,0c:02.0").unwrap();
        assert_eq!(t.bdf_rs, "0000:0c:02.0");
        assert!(parse_twin("edu").is_err());
        assert!(parse_twin("edu=0000:01:00.0").is_err());
        assert!(parse_twin("=0000:01:00.0,0000:02:00.0").is_err());
        assert!(parse_twin("e du=0000:01:00.0,0000:02:00.0").is_err());
        assert!(parse_twin("edu=0000:01:00.0,0000:01:00.0").is_err());
    }

    #[test]
    fn run_defaults_to_both_drivers() {
        let cmd = parse(&args(&[
            "edu=0000:01:00.0,0000:02:00.0",
            "ivshmem=0000:03:00.0,0000:04:00.0",
        ]))
        .unwrap();
        match cmd {
            Cmd::Run { drivers, twins } => {
                assert_eq!(drivers, vec![Driver::C, Driver::Rs]);
                assert_eq!(twins.len(), 2);
                assert_eq!(twins[1].name, "ivshmem");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn driver_options() {
        let run = |a: &[&str]| match parse(&args(a)).unwrap() {
            Cmd::Run { drivers, .. } => drivers,
            other => panic!("{other:?}"),
        };
        let t = "edu=0000:01:00.0,0000:02:00.0";
        assert_eq!(run(&["--driver", "vfio-pci-rs", t]), vec![Driver::Rs]);
        assert_eq!(
            run(&["--driver=vfio-pci-rs", "--driver", "vfio-pci", t]),
            vec![Driver::C, Driver::Rs]
        );
        assert_eq!(run(&["--only-driver", "vfio-pci", t]), vec![Driver::C]);
        assert_eq!(run(&[t, "--only-driver=vfio-pci-rs"]), vec![Driver::Rs]);
        assert_eq!(
            run(&["--driver", "vfio-pci-rs", "--only-driver", "vfio-pci-rs", t]),
            vec![Driver::Rs]
        );
        assert!(parse(&args(&[
            "--driver",
            "vfio-pci",
            "--only-driver",
            "vfio-pci-rs",
            t
        ]))
        .is_err());
        assert!(parse(&args(&["--driver", "nvme", t])).is_err());
        assert!(parse(&args(&["--driver"])).is_err());
        assert!(parse(&args(&["--frob", t])).is_err());
        assert!(parse(&args(&["--driver", "vfio-pci"])).is_err());
        assert!(parse(&args(&[t, t])).is_err());
        assert!(parse(&args(&[])).is_err());
    }

    #[test]
    fn subcommands() {
        assert_eq!(
            parse(&args(&["bind", "0000:01:00.0", "vfio-pci-rs"])).unwrap(),
            Cmd::Bind {
                bdf: "0000:01:00.0".into(),
                driver: "vfio-pci-rs".into()
            }
        );
        assert_eq!(
            parse(&args(&["unbind", "01:00.0"])).unwrap(),
            Cmd::Unbind {
                bdf: "0000:01:00.0".into()
            }
        );
        assert_eq!(
            parse(&args(&["info", "0000:08:00.0"])).unwrap(),
            Cmd::Info {
                bdf: "0000:08:00.0".into()
            }
        );
        assert_eq!(parse(&args(&["--help"])).unwrap(), Cmd::Help);
        assert!(parse(&args(&["bind", "0000:01:00.0"])).is_err());
        assert!(parse(&args(&["bind", "0000:01:00.0", "../x"])).is_err());
        assert!(parse(&args(&["unbind"])).is_err());
        assert!(parse(&args(&["info", "a", "b"])).is_err());
        assert!(parse(&args(&["info", "zz"])).is_err());
    }

    #[test]
    fn dev_regions() {
        assert_eq!(
            parse(&args(&["dev-regions", "00:03.0", "igd-bridges"])).unwrap(),
            Cmd::DevRegions {
                bdf: "0000:00:03.0".into(),
                expect: Expect::IgdBridges
            }
        );
        assert_eq!(
            parse(&args(&["dev-regions", "0000:00:03.0", "none"])).unwrap(),
            Cmd::DevRegions {
                bdf: "0000:00:03.0".into(),
                expect: Expect::None
            }
        );
        for bad in [
            &["dev-regions"][..],
            &["dev-regions", "00:03.0"],
            &["dev-regions", "00:03.0", "igd"],
            &["dev-regions", "zz", "none"],
            &["dev-regions", "00:03.0", "none", "x"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hold() {
        assert_eq!(
            parse(&args(&["hold", "0000:0c:01.0", "5"])).unwrap(),
            Cmd::Hold {
                bdf: "0000:0c:01.0".into(),
                time: Duration::from_secs(5),
                cdev: false
            }
        );
        assert_eq!(
            parse(&args(&["hold", "0c:02.0", "0.5", "--cdev"])).unwrap(),
            Cmd::Hold {
                bdf: "0000:0c:02.0".into(),
                time: Duration::from_millis(500),
                cdev: true
            }
        );
        assert_eq!(
            parse(&args(&["hold", "--cdev", "0c:02.0", "0"])).unwrap(),
            Cmd::Hold {
                bdf: "0000:0c:02.0".into(),
                time: Duration::ZERO,
                cdev: true
            }
        );
        for bad in [
            &["hold"][..],
            &["hold", "0c:02.0"],
            &["hold", "0c:02.0", "5", "6"],
            &["hold", "0c:02.0", "5", "--cdev", "--cdev"],
            &["hold", "0c:02.0", "5", "--frob"],
            &["hold", "zz", "5"],
            &["hold", "0c:02.0", "-1"],
            &["hold", "0c:02.0", "1e3"],
            &["hold", "0c:02.0", "5s"],
            &["hold", "0c:02.0", ".5"],
            &["hold", "0c:02.0", "5."],
            &["hold", "0c:02.0", "inf"],
            &["hold", "0c:02.0", "99999999999999999999999999"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn fuzz() {
        let t = "edu=0000:01:00.0,0000:02:00.0";
        assert_eq!(
            parse(&args(&["fuzz", t])).unwrap(),
            Cmd::Fuzz {
                seed: None,
                ops: 10_000,
                replay: None,
                from: 0,
                twins: vec![parse_twin(t).unwrap()]
            }
        );
        assert_eq!(
            parse(&args(&[
                "fuzz",
                "--seed",
                "0x10",
                "--ops=5",
                t,
                "--replay",
                "3",
                "--from=2",
                "igb=07:00.0,08:00.0"
            ]))
            .unwrap(),
            Cmd::Fuzz {
                seed: Some(16),
                ops: 5,
                replay: Some(3),
                from: 2,
                twins: vec![
                    parse_twin(t).unwrap(),
                    parse_twin("igb=0000:07:00.0,0000:08:00.0").unwrap()
                ]
            }
        );
        for bad in [
            &["fuzz"][..],
            &["fuzz", "--seed", t],
            &["fuzz", "--seed"],
            &["fuzz", "--ops", "0", t],
            &["fuzz", "--ops", "-1", t],
            &["fuzz", "--frob", t],
            &["fuzz", t, t],
            &["fuzz", "0000:01:00.0"],
            &["fuzz", "--from", "2", t],
            &["fuzz", "--replay", "1", "--from", "2", t],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_u64("0xff"), Ok(255));
        assert_eq!(parse_u64("1764700000"), Ok(1_764_700_000));
        assert!(parse_u64("x").is_err());
    }
}
