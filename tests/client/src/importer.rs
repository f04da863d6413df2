//! `vfio-test importer IVSHMEM_BDF OTHER_BDF`: a kernel importer of an exported BAR DMABUF,
//! through the test module `dma-buf-importer-test` (drivers/dma-buf/dma-buf-importer-test.c
//! in tree/linux.patch): the exporter's attach, `map_dma_buf`, `unmap_dma_buf` and
//! invalidation paths, which no driver of this VM's devices imports through.
//!
//! ivshmem (bound to a VFIO driver) exports 2 MiB of BAR2 from 64 KiB on; the module attaches
//! it for a PCI function as a dynamic peer-to-peer importer that honours invalidation, unless
//! a check says otherwise. Checked:
//!
//! - `attach-static`, `attach-pinned`: an importer that does not allow peer-to-peer, and one
//!   that cannot be invalidated, are refused (EOPNOTSUPP);
//! - `map-self`: for ivshmem itself (the same function: no bridge between them, so bus
//!   addresses) the mapping is one segment at BAR2's address plus 64 KiB, 2 MiB long;
//! - `revoke-invalidates`: memory decode off invalidates the importer's mapping;
//! - `map-revoked`: mapping again while revoked fails (ENODEV);
//! - `restore-map`: with memory on again the importer maps the same segment again;
//! - `attach-revoked`: a new attachment to a revoked buffer is refused (ENODEV);
//! - `map-unreachable`: for `OTHER_BDF` (another function, behind another root port of a
//!   host bridge that pci_p2pdma does not know to forward peer-to-peer) attach succeeds and
//!   mapping fails (EINVAL);
//! - `close-invalidates`: closing the device with the buffer mapped by the importer
//!   invalidates the mapping, and the importer detaches afterwards.
//!
//! Each check is a `PASS|FAIL importer <driver> <bdf> <check>` line; the run ends with
//! `N passed, N failed` (exit 1 if any failed).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::process::ExitCode;

use crate::cfgspace::PCI_COMMAND_MEMORY;
use crate::p2p::{command, driver_name, expect_errno, open_type1};
use crate::report::{Phase, Reporter, Stop};
use crate::stress::dmabuf_export;
use crate::sys::err_name;
use crate::sysfs;

const CHECKS: &[&str] = &[
    "open",
    "export",
    "attach-static",
    "attach-pinned",
    "map-self",
    "revoke-invalidates",
    "map-revoked",
    "restore-map",
    "attach-revoked",
    "map-unreachable",
    "close-invalidates",
];

const CONTROL: &str = "/sys/kernel/debug/dma_buf_importer_test";
const BAR2: u32 = 2;
const EXPORT_OFFSET: u64 = 0x1_0000;
const EXPORT_LEN: u64 = 0x20_0000;

/// The test module's control file.
struct Importer(File);

impl Importer {
    fn open() -> Result<Self, String> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL)
            .map(Self)
            .map_err(|e| {
                format!(
                    "{CONTROL}: {} (modprobe dma-buf-importer-test)",
                    err_name(&e)
                )
            })
    }

    fn cmd(&self, cmd: &str) -> std::io::Result<()> {
        (&self.0).write(cmd.as_bytes()).map(|_| ())
    }

    fn must(&self, cmd: &str) -> Result<(), String> {
        self.cmd(cmd)
            .map_err(|e| format!("{cmd}: {}", err_name(&e)))
    }

    fn attach(&self, buf: &OwnedFd, bdf: &str, kind: &str) -> std::io::Result<()> {
        self.cmd(format!("attach {} {bdf} {kind}", buf.as_raw_fd()).trim_end())
    }

    /// Detaches whatever is attached; no error if nothing is.
    fn reset(&self) {
        let _ = self.cmd("detach");
    }

    fn state(&self) -> Result<State, String> {
        let mut text = vec![0u8; 4096];
        let n = self
            .0
            .read_at(&mut text, 0)
            .map_err(|e| format!("read {CONTROL}: {}", err_name(&e)))?;
        State::parse(&String::from_utf8_lossy(&text[..n]))
    }
}

/// What the module reports.
#[derive(Debug, Default, PartialEq, Eq)]
struct State {
    attached: bool,
    invalidations: u32,
    /// (DMA address, length) of each segment, when mapped.
    segments: Vec<(u64, u64)>,
    mapped: bool,
}

impl State {
    fn parse(text: &str) -> Result<Self, String> {
        let mut st = State::default();
        let num = |s: &str| {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => s.parse(),
            }
            .map_err(|_| format!("bad number {s:?} in {text:?}"))
        };
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["attached", a, "mapped", m, "invalidations", n] => {
                    st.attached = *a == "1";
                    st.mapped = *m == "1";
                    st.invalidations = num(n)? as u32;
                }
                ["dma", addr, "len", len] => st.segments.push((num(addr)?, num(len)?)),
                _ => return Err(format!("unexpected line {line:?} from {CONTROL}")),
            }
        }
        Ok(st)
    }
}

/// BAR `bar`'s start address from sysfs (bus and CPU addresses are the same on x86).
fn bar_start(bdf: &str, bar: usize) -> Result<u64, String> {
    let path = sysfs::device_dir(bdf).join("resource");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {}", path.display(), err_name(&e)))?;
    text.lines()
        .nth(bar)
        .and_then(|l| l.split_whitespace().next())
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .ok_or_else(|| format!("no BAR{bar} in {}", path.display()))
}

fn expect_state(what: &str, got: &State, want: &State) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: {got:?}, expected {want:?}"))
    }
}

fn checks(p: &mut Phase, ivshmem_bdf: &str, other_bdf: &str) -> Result<(), Stop> {
    let (imp, container, group, dev, bar2) = p.step(
        "open",
        (|| {
            let imp = Importer::open()?;
            imp.reset();
            let (container, group, dev) = open_type1(ivshmem_bdf)?;
            command(&dev, PCI_COMMAND_MEMORY, true)?;
            let bar2 = bar_start(ivshmem_bdf, BAR2 as usize)?;
            Ok((imp, container, group, dev, bar2))
        })(),
    )?;
    let buf = p.step(
        "export",
        dmabuf_export(&dev, BAR2, EXPORT_OFFSET, EXPORT_LEN)
            .map_err(|e| format!("VFIO_DEVICE_FEATURE_DMA_BUF of BAR2: {}", err_name(&e))),
    )?;
    let mapped = |invalidations| State {
        attached: true,
        invalidations,
        segments: vec![(bar2 + EXPORT_OFFSET, EXPORT_LEN)],
        mapped: true,
    };
    let unmapped = |invalidations| State {
        attached: true,
        invalidations,
        segments: vec![],
        mapped: false,
    };

    p.result(
        "attach-static",
        expect_errno(
            "static attach",
            imp.attach(&buf, ivshmem_bdf, "static"),
            libc::EOPNOTSUPP,
        ),
    );
    p.result(
        "attach-pinned",
        expect_errno(
            "pinned attach",
            imp.attach(&buf, ivshmem_bdf, "pinned"),
            libc::EOPNOTSUPP,
        ),
    );
    p.result(
        "map-self",
        (|| {
            imp.attach(&buf, ivshmem_bdf, "")
                .map_err(|e| format!("attach: {}", err_name(&e)))?;
            imp.must("map")?;
            expect_state("mapped", &imp.state()?, &mapped(0))
        })(),
    );
    p.result(
        "revoke-invalidates",
        (|| {
            command(&dev, PCI_COMMAND_MEMORY, false)?;
            expect_state("memory off", &imp.state()?, &unmapped(1))
        })(),
    );
    p.result(
        "map-revoked",
        expect_errno("map while revoked", imp.cmd("map"), libc::ENODEV),
    );
    p.result(
        "restore-map",
        (|| {
            command(&dev, PCI_COMMAND_MEMORY, true)?;
            let after = imp.state()?;
            imp.must("map")?;
            expect_state("mapped again", &imp.state()?, &mapped(after.invalidations))
        })(),
    );
    imp.reset();
    p.result(
        "attach-revoked",
        (|| {
            command(&dev, PCI_COMMAND_MEMORY, false)?;
            let r = imp.attach(&buf, ivshmem_bdf, "");
            imp.reset();
            command(&dev, PCI_COMMAND_MEMORY, true)?;
            expect_errno("attach while revoked", r, libc::ENODEV)
        })(),
    );
    p.result(
        "map-unreachable",
        (|| {
            imp.attach(&buf, other_bdf, "")
                .map_err(|e| format!("attach for {other_bdf}: {}", err_name(&e)))?;
            let r = imp.cmd("map");
            imp.reset();
            expect_errno(&format!("map for {other_bdf}"), r, libc::EINVAL)
        })(),
    );
    p.result(
        "close-invalidates",
        (|| {
            imp.attach(&buf, ivshmem_bdf, "")
                .map_err(|e| format!("attach: {}", err_name(&e)))?;
            imp.must("map")?;
            drop(buf);
            drop(dev);
            drop(group);
            drop(container);
            let st = imp.state()?;
            imp.must("detach")?;
            if st.mapped || st.invalidations == 0 {
                return Err(format!(
                    "after close: {st:?}, expected unmapped by an invalidation"
                ));
            }
            Ok(())
        })(),
    );
    Ok(())
}

/// Runs the checks on ivshmem `ivshmem_bdf` (bound to a VFIO driver) with `other_bdf` as the
/// unreachable importer.
pub fn run(ivshmem_bdf: &str, other_bdf: &str) -> ExitCode {
    let mut rep = Reporter::stdout();
    let driver = driver_name(ivshmem_bdf);
    let mut p = Phase::new(&mut rep, format!("importer {driver} {ivshmem_bdf}"), CHECKS);
    let r = checks(&mut p, ivshmem_bdf, other_bdf);
    p.finish(r);
    rep.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_parses_the_modules_lines() {
        let st = State::parse(
            "attached 1 mapped 1 invalidations 2\ndma 0x00000000fe000000 len 0x200000\n",
        )
        .unwrap();
        assert_eq!(
            st,
            State {
                attached: true,
                invalidations: 2,
                segments: vec![(0xfe00_0000, 0x20_0000)],
                mapped: true
            }
        );
        assert!(State::parse("what\n").is_err());
    }
}
