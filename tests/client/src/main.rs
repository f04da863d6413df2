//! `vfio-test`: userspace integration client for the vfio-pci-rs port.
//!
//! Binds twin devices to the C `vfio-pci` and the Rust `vfio-pci-rs`, drives both through
//! the VFIO uAPI (group/container path and cdev/iommufd path), checks each answer and that
//! the Rust port answers exactly like the C driver. See `cli::USAGE` and `report.rs` for the
//! command line and output format.

mod access;
mod bench;
mod cfgspace;
mod checks;
mod cli;
mod devregion;
mod faultsafe;
mod fuzz;
mod hazards;
mod hold;
mod importer;
mod irq;
mod mixed;
mod mmap;
mod p2p;
mod report;
mod resetrace;
mod stress;
mod sys;
mod sysfs;
mod teardown;
mod uapi;
mod uffd;

use std::process::ExitCode;

use cli::Cmd;
use report::Reporter;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `stress`, `bench` and `mmap-demo` parse their own arguments (bench.rs).
    if let Some(code) = bench::dispatch(&args) {
        return code;
    }
    let cmd = match cli::parse(&args) {
        Ok(cmd) => cmd,
        Err(e) => {
            eprintln!("vfio-test: {e}");
            eprint!("{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match cmd {
        Cmd::Help => {
            print!("{}{}", cli::USAGE, bench::USAGE);
            ExitCode::SUCCESS
        }
        Cmd::Bind { bdf, driver } => {
            done(sysfs::bind(&bdf, &driver).map(|()| println!("{bdf}: bound to {driver}")))
        }
        Cmd::Unbind { bdf } => done(sysfs::restore(&bdf).map(|()| println!("{bdf}: unbound"))),
        Cmd::Info { bdf } => done(checks::info(&bdf)),
        Cmd::Hold { bdf, time, cdev } => done(hold::hold(&bdf, time, cdev)),
        Cmd::DevRegions { bdf, expect } => devregion::run(&bdf, expect),
        Cmd::P2pDma {
            edu,
            ivshmem,
            container,
        } => p2p::run(&edu, &ivshmem, container),
        Cmd::P2pIommufd {
            edu,
            ivshmem,
            backing,
        } => p2p::run_iommufd(&edu, &ivshmem, backing.as_deref()),
        Cmd::Importer { ivshmem, other } => importer::run(&ivshmem, &other),
        Cmd::Teardown { mode, bdf, slot } => teardown::run(&mode, &bdf, slot.as_deref()),
        Cmd::ResetRace { bdf, secs } => resetrace::run(&bdf, secs),
        Cmd::Fuzz {
            seed,
            ops,
            replay,
            from,
            twins,
        } => fuzz::run(&twins, seed, ops, replay, from),
        Cmd::Run { drivers, twins } => {
            let mut rep = Reporter::stdout();
            for twin in &twins {
                checks::run_twin(&mut rep, twin, &drivers);
            }
            checks::kernel_checks(&mut rep);
            for line in rep.tally_lines() {
                println!("# checks per device type: {line}");
            }
            rep.finish()
        }
    }
}

fn done(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vfio-test: {e}");
            ExitCode::FAILURE
        }
    }
}
