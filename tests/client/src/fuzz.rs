//! `vfio-test fuzz`: a seeded, reproducible fuzzer over the VFIO device fd that runs every
//! operation on the twin's vfio-pci device and then on its vfio-pci-rs device, in lockstep,
//! and compares the two outcomes.
//!
//! Operation `i` of a run is a pure function of `(seed, i, profile)` ([`gen_op`]): the
//! profile is what the C device reports at the start (region sizes and flags, config size,
//! the PM capability, the device kind from its IDs), so `--replay K` re-creates ops 0..=K
//! exactly. The state an op acts on (mappings, exported DMABUFs, eventfds, the device fd)
//! lives in one [`Side`] per driver; both sides see the same op sequence.
//!
//! An outcome is a string: `ok ...` with the driver-independent output fields, or the errno
//! name. What legitimately differs between two twin devices is masked or left out (see
//! [`Ctx::cfg_mask`] and [`data_compared`]); what differs between the drivers by design is in
//! [`BY_DESIGN`]. Everything else is a divergence: `FUZZ-DIVERGENCE twin=... seed=... op=...`.
//!
//! Writes must not make the VM unusable or the IOMMU log faults: [`write_allowed`] lists the
//! device registers no write reaches (through the fd, a mapping or an ioeventfd).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::checks::{self, GroupSession, Quiet};
use crate::cli::Twin;
use crate::faultsafe::{self, Map};
use crate::irq::Efd;
use crate::report::Reporter;
use crate::sys::{self, err_name, InfoBuf};
use crate::uapi::{self, region_offset};

// ------------------------------------------------------------------------------------------
// PRNG
// ------------------------------------------------------------------------------------------

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's output function.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// splitmix64: self-contained, deterministic, no crate.
#[derive(Clone, Debug)]
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed)
    }

    /// The stream of op `i` of a run with `seed`: independent of every other op, so any op
    /// can be generated alone.
    pub fn for_op(seed: u64, i: u64) -> Prng {
        Prng::new(mix(seed ^ mix(i.wrapping_mul(GOLDEN).wrapping_add(0x5eed))))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }

    /// In `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// An index into `weights`, chosen with those weights.
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let mut r = self.below(total);
        for (i, w) in weights.iter().enumerate() {
            if r < u64::from(*w) {
                return i;
            }
            r -= u64::from(*w);
        }
        weights.len() - 1
    }
}

// ------------------------------------------------------------------------------------------
// What the device is
// ------------------------------------------------------------------------------------------

/// The device types of the VM's twins, from their vendor and device IDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// QEMU edu (1234:11e8).
    Edu,
    /// ivshmem-plain (1af4:1110).
    Ivshmem,
    /// pci-testdev (1b36:0005).
    PciTestdev,
    /// igb (8086:10c9).
    Igb,
    /// Anything else: treated like igb (no device-register writes, no BAR data compared).
    Other,
}

impl Kind {
    pub fn from_ids(vendor: u16, device: u16) -> Kind {
        match (vendor, device) {
            (0x1234, 0x11e8) => Kind::Edu,
            (0x1af4, 0x1110) => Kind::Ivshmem,
            (0x1b36, 0x0005) => Kind::PciTestdev,
            (0x8086, 0x10c9) => Kind::Igb,
            _ => Kind::Other,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Region {
    pub size: u64,
    pub flags: u32,
}

/// What op generation needs to know about the device (read from the C device at the start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub kind: Kind,
    /// Indexes 0-8 (BAR0-5, ROM, config, VGA); size 0 when absent.
    pub regions: Vec<Region>,
    pub cfg_size: u64,
    /// Offset of the PM capability.
    pub pm_cap: Option<u64>,
    /// GET_IRQ_INFO count of INTx, MSI, MSI-X, ERR, REQ.
    pub irq_counts: Vec<u32>,
}

impl Profile {
    fn region(&self, index: u32) -> Region {
        self.regions
            .get(index as usize)
            .copied()
            .unwrap_or_default()
    }

    /// BARs with a size.
    fn bars(&self) -> Vec<u32> {
        (0..6).filter(|i| self.region(*i).size > 0).collect()
    }

    /// BARs that offer mmap.
    fn mmap_bars(&self) -> Vec<u32> {
        (0..6)
            .filter(|i| {
                let r = self.region(*i);
                r.size > 0 && r.flags & uapi::VFIO_REGION_INFO_FLAG_MMAP != 0
            })
            .collect()
    }
}

/// edu's DMA registers (QEMU hw/misc/edu.c): 0x80 source, 0x88 destination, 0x90 count, 0x98
/// command (a write with bit 0 starts a transfer). Never written.
pub const EDU_DMA_REGS: std::ops::Range<u64> = 0x80..0xa0;
/// edu's status register: bit 7 makes QEMU's factorial thread raise an interrupt when it
/// finishes, at a time that depends on the factorial's input (up to seconds later), which
/// would make `irq-poll` outcomes timing-dependent. Never written.
pub const EDU_STATUS_REG: std::ops::Range<u64> = 0x20..0x24;
/// edu's interrupt raise and acknowledge registers: 4-byte writes of one status bit.
pub const EDU_RAISE: u64 = 0x60;
pub const EDU_ACK: u64 = 0x64;
/// edu registers whose reads depend on the timing of QEMU's factorial thread: 0x08 (the
/// factorial: input or result), 0x20 (status: bit 0 "computing") and 0x24 (interrupt status,
/// raised when a factorial finishes with status bit 7 set). Not compared.
pub const EDU_ASYNC_REGS: std::ops::Range<u64> = 0x08..0x28;

fn overlaps(r: &std::ops::Range<u64>, off: u64, len: u64) -> bool {
    off < r.end && off.saturating_add(len) > r.start
}

/// The writes the fuzzer may make (through the fd, a BAR mapping or an ioeventfd), so that no
/// write starts DMA (no IOVA is mapped: the IOMMU would log faults) or reprograms a NIC:
///
/// - config space (7): always; both drivers virtualize it (COMMAND, PM, BARs, MSI/MSI-X, FLR
///   emulation). ROM (6): always, both drivers refuse ROM writes. Indexes 8 and up: refused
///   (no VGA region on the fuzzed twins, no device-specific regions).
/// - edu: every BAR offset but [`EDU_DMA_REGS`] and [`EDU_STATUS_REG`].
/// - ivshmem (registers and shared memory) and pci-testdev: everything.
/// - igb and any other device: no in-range BAR write at all (igb's rings, RCTL/TCTL and its
///   I/O window IOADDR/IODATA reach every register); offsets at or past a BAR's end are fine,
///   the drivers refuse them.
pub fn write_allowed(p: &Profile, index: u32, off: u64, len: u64) -> bool {
    if index >= 6 {
        return p.kind != Kind::Other || index != uapi::VFIO_PCI_VGA_REGION_INDEX;
    }
    let size = p.region(index).size;
    match p.kind {
        Kind::Edu => !overlaps(&EDU_DMA_REGS, off, len) && !overlaps(&EDU_STATUS_REG, off, len),
        Kind::Ivshmem | Kind::PciTestdev => true,
        Kind::Igb | Kind::Other => off >= size,
    }
}

/// Whether the bytes read from `index` at `off` are compared between the twins. Not compared
/// (they legitimately differ between two devices, or depend on timing):
/// - ivshmem BAR2: shared memory, backed by one host file per device, with different contents;
/// - edu [`EDU_ASYNC_REGS`];
/// - igb and other devices' BARs: free-running timers, statistics, the MAC address;
/// - config space bytes in [`Ctx::cfg_mask`] (masked byte by byte, not skipped).
pub fn data_compared(p: &Profile, index: u32, off: u64, len: u64) -> bool {
    if index >= 6 {
        return true;
    }
    match p.kind {
        Kind::Edu => !overlaps(&EDU_ASYNC_REGS, off, len),
        Kind::Ivshmem => index != 2,
        Kind::PciTestdev => true,
        Kind::Igb | Kind::Other => false,
    }
}

// ------------------------------------------------------------------------------------------
// Operations
// ------------------------------------------------------------------------------------------

pub const MAP_SLOTS: u8 = 4;
pub const DMABUF_SLOTS: u8 = 4;
pub const EFDS: u8 = 4;
/// A descriptor number this process never has open.
pub const CLOSED_FD: RawFd = 4000;
/// How long `irq-poll` waits for an eventfd when none is signalled yet.
pub const IRQ_POLL_WAIT: Duration = Duration::from_millis(10);
/// How long [`Side::settle`] waits for the runtime suspend of a device in low power.
pub const SETTLE_WAIT: Duration = Duration::from_millis(100);

/// A file descriptor an op passes to the kernel, resolved per side (the numbers differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdRef {
    /// One of the fuzzer's eventfds.
    Efd(u8),
    /// The eventfd given as LOW_POWER_ENTRY_WITH_WAKEUP's wakeup eventfd, never polled:
    /// whether a resume signals it depends on whether the runtime suspend (a workqueue
    /// after the last `pm_runtime_put`) had happened yet.
    Wake,
    /// An exported DMABUF slot (-1 when empty).
    DmaBuf(u8),
    /// The device fd itself (-1 when closed).
    Dev,
    Group,
    Container,
    /// `/dev/null`: a file that is not an eventfd, group or DMABUF.
    DevNull,
    Neg(i32),
    Closed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IrqData {
    None,
    Bools(Vec<u8>),
    Fds(Vec<FdRef>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    GetInfo {
        argsz: u32,
    },
    RegionInfo {
        index: u32,
        argsz: u32,
    },
    IrqInfo {
        index: u32,
        argsz: u32,
    },
    SetIrqs {
        argsz: u32,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        data: IrqData,
    },
    Read {
        index: u32,
        off: u64,
        len: u32,
    },
    Write {
        index: u32,
        off: u64,
        data: Vec<u8>,
    },
    /// A COMMAND write: decode toggles (IO, MEM, bus master, INTx disable, and noise).
    Command {
        val: u16,
    },
    /// A PMCSR write (devices with a PM capability): D0-D3hot and noise.
    PmState {
        val: u16,
    },
    Mmap {
        slot: u8,
        index: u32,
        off: u64,
        len: u64,
    },
    Munmap {
        slot: u8,
    },
    /// An 8-byte access at `rel` (modulo the mapping's length) of the mapping in `slot`,
    /// through the SIGBUS-safe helpers; a write is done only when [`write_allowed`].
    Touch {
        slot: u8,
        rel: u64,
        write: Option<u64>,
    },
    Feature {
        argsz: u32,
        flags: u32,
        data: Vec<u8>,
        /// An fd placed at this byte offset of `data`.
        fd_at: Option<(usize, FdRef)>,
    },
    DmaBufExport {
        slot: u8,
        argsz_cut: u32,
        flags: u32,
        index: u32,
        open_flags: u32,
        dflags: u32,
        nr_ranges: u32,
        ranges: Vec<(u64, u64)>,
    },
    DmaBufClose {
        slot: u8,
    },
    Ioeventfd {
        argsz: u32,
        flags: u32,
        index: u32,
        off: u64,
        data: u64,
        fd: FdRef,
    },
    /// Write 1 to an eventfd (fires ioeventfds and unmask eventfds) and drain the others.
    Signal {
        efd: u8,
    },
    /// Which of the fuzzer's eventfds were signalled (interrupts, loopbacks, signals), after
    /// waiting up to [`IRQ_POLL_WAIT`] for one; all are drained.
    IrqPoll,
    Reset,
    HotResetInfo {
        argsz: u32,
    },
    HotReset {
        argsz: u32,
        flags: u32,
        count: u32,
        fds: Vec<FdRef>,
    },
    /// A real hot reset: the device's own group fd.
    HotResetOwn,
    /// Close the device fd (mappings and DMABUFs stay) and get a new one from the group.
    Reopen,
    /// Close everything (mappings, DMABUFs, device, group, container) and open again.
    FullReopen,
    /// `_IO(';', 100 + nr)` with a NULL argument.
    RawIoctl {
        nr: u32,
    },
}

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::GetInfo { .. } => "get-info",
            Op::RegionInfo { .. } => "region-info",
            Op::IrqInfo { .. } => "irq-info",
            Op::SetIrqs { .. } => "set-irqs",
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::Command { .. } => "command",
            Op::PmState { .. } => "pm-state",
            Op::Mmap { .. } => "mmap",
            Op::Munmap { .. } => "munmap",
            Op::Touch { .. } => "touch",
            Op::Feature { .. } => "feature",
            Op::DmaBufExport { .. } => "dmabuf-export",
            Op::DmaBufClose { .. } => "dmabuf-close",
            Op::Ioeventfd { .. } => "ioeventfd",
            Op::Signal { .. } => "signal",
            Op::IrqPoll => "irq-poll",
            Op::Reset => "reset",
            Op::HotResetInfo { .. } => "hot-reset-info",
            Op::HotReset { .. } => "hot-reset",
            Op::HotResetOwn => "hot-reset-own",
            Op::Reopen => "reopen",
            Op::FullReopen => "full-reopen",
            Op::RawIoctl { .. } => "raw-ioctl",
        }
    }

    /// The op on one line, long byte strings cut.
    pub fn describe(&self) -> String {
        let short = |d: &[u8]| {
            if d.len() <= 16 {
                checks::hex(d)
            } else {
                format!("{}..({} bytes)", checks::hex(&d[..16]), d.len())
            }
        };
        match self {
            Op::Write { index, off, data } => {
                format!(
                    "Write {{ index: {index}, off: 0x{off:x}, data: {} }}",
                    short(data)
                )
            }
            Op::Read { index, off, len } => {
                format!("Read {{ index: {index}, off: 0x{off:x}, len: {len} }}")
            }
            Op::Feature {
                argsz,
                flags,
                data,
                fd_at,
            } => format!(
                "Feature {{ argsz: {argsz}, flags: 0x{flags:x}, data: {}, fd_at: {fd_at:?} }}",
                short(data)
            ),
            Op::SetIrqs {
                argsz,
                flags,
                index,
                start,
                count,
                data,
            } => {
                let d = match data {
                    IrqData::None => "none".to_string(),
                    IrqData::Bools(b) => format!("bools {}", short(b)),
                    IrqData::Fds(f) if f.len() > 8 => {
                        format!("fds {:?}..({} fds)", &f[..8], f.len())
                    }
                    IrqData::Fds(f) => format!("fds {f:?}"),
                };
                format!(
                    "SetIrqs {{ argsz: {argsz}, flags: 0x{flags:x}, index: {index}, start: {start}, count: {count}, data: {d} }}"
                )
            }
            other => format!("{other:?}"),
        }
    }
}

/// Op kinds and their weights (per 10000): cheap ops frequent, resets and reopens rare.
const WEIGHTS: &[(u32, &str)] = &[
    (700, "get-info"),
    (900, "region-info"),
    (600, "irq-info"),
    (1100, "set-irqs"),
    (1500, "read"),
    (900, "write"),
    (250, "command"),
    (120, "pm-state"),
    (250, "mmap"),
    (120, "munmap"),
    (900, "touch"),
    (550, "feature"),
    (220, "dmabuf-export"),
    (120, "dmabuf-close"),
    (350, "ioeventfd"),
    (200, "signal"),
    (40, "irq-poll"),
    (6, "reset"),
    (120, "hot-reset-info"),
    (100, "hot-reset"),
    (3, "hot-reset-own"),
    (15, "reopen"),
    (6, "full-reopen"),
    (60, "raw-ioctl"),
];

fn gen_fd(r: &mut Prng) -> FdRef {
    match r.weighted(&[60, 8, 4, 4, 3, 6, 10, 2, 3]) {
        0 => FdRef::Efd(r.below(u64::from(EFDS)) as u8),
        1 => FdRef::DmaBuf(r.below(u64::from(DMABUF_SLOTS)) as u8),
        2 => FdRef::Dev,
        3 => FdRef::Group,
        4 => FdRef::Container,
        5 => FdRef::DevNull,
        6 => FdRef::Neg(-1),
        7 => FdRef::Neg(-2),
        _ => FdRef::Closed,
    }
}

fn gen_width(r: &mut Prng) -> u64 {
    match r.weighted(&[70, 10, 10, 5]) {
        0 => r.pick(&[1, 2, 4, 8]),
        1 => r.pick(&[3, 5, 6, 7]),
        2 => 9 + r.below(248),
        _ => 4096,
    }
}

/// An offset into a region of `size` bytes for an access of `len`: aligned in range, anywhere
/// in range, around the end, at the end, far past it.
fn gen_off(r: &mut Prng, size: u64, len: u64) -> u64 {
    let off = match r.weighted(&[45, 20, 15, 7, 8, 5]) {
        0 if size >= len => {
            let a = len.next_power_of_two().min(8);
            (r.below(size - len + 1) / a) * a
        }
        0 | 1 => r.below(size.max(1)),
        2 => (size + 8).saturating_sub(r.below(17) + len.min(8)),
        3 => size,
        4 => size + r.below(1 << 20),
        _ => r.below(1 << 40),
    };
    off & uapi::VFIO_PCI_OFFSET_MASK
}

/// A region index: config, present BARs, ROM, VGA, or a bad one.
fn gen_index(r: &mut Prng, p: &Profile) -> u32 {
    let bars = p.bars();
    match r.weighted(&[35, 45, 8, 4, 4, 4]) {
        0 => uapi::VFIO_PCI_CONFIG_REGION_INDEX,
        1 if !bars.is_empty() => r.pick(&bars),
        1 | 2 => r.below(7) as u32,
        3 => uapi::VFIO_PCI_VGA_REGION_INDEX,
        4 => r.pick(&[9, 10, 0xff]),
        _ => r.below(0x10000) as u32,
    }
}

fn gen_argsz(r: &mut Prng, good: u32, bad: &[u32]) -> u32 {
    match r.weighted(&[70, 20, 10]) {
        0 => good,
        1 => r.pick(bad),
        _ => r.below(u64::from(good) * 2 + 16) as u32,
    }
}

/// Op `i` of the run with `seed` on a device described by `p`: pure.
pub fn gen_op(seed: u64, i: u64, p: &Profile) -> Op {
    let mut r = Prng::for_op(seed, i);
    let weights: Vec<u32> = WEIGHTS.iter().map(|(w, _)| *w).collect();
    let kind = WEIGHTS[r.weighted(&weights)].1;
    let slot = |r: &mut Prng, n: u8| r.below(u64::from(n)) as u8;
    match kind {
        "get-info" => Op::GetInfo {
            argsz: gen_argsz(&mut r, 24, &[0, 15, 16, 20, 23, 32, 64, 256]),
        },
        "region-info" => Op::RegionInfo {
            index: if r.chance(85, 100) {
                r.below(9) as u32
            } else {
                {
                    let x = r.next() as u32;
                    r.pick(&[9, 10, 0x7fff_ffff, 0xffff_ffff, x])
                }
            },
            argsz: gen_argsz(&mut r, 32, &[0, 16, 31, 40, 48, 64, 128, 256]),
        },
        "irq-info" => Op::IrqInfo {
            index: if r.chance(85, 100) {
                r.below(5) as u32
            } else {
                {
                    let x = r.next() as u32;
                    r.pick(&[5, 6, 0x7fff_ffff, 0xffff_ffff, x])
                }
            },
            argsz: gen_argsz(&mut r, 16, &[0, 8, 15, 20, 64]),
        },
        "set-irqs" if r.chance(1, 2) => {
            // A well-formed request: an index the device has, start and count within its
            // count (count 0 with DATA_NONE: disable), eventfds of the fuzzer.
            let index = r.below(5) as u32;
            let n = u64::from(
                p.irq_counts
                    .get(index as usize)
                    .copied()
                    .unwrap_or(1)
                    .max(1),
            );
            let start = r.below(n.min(4)) as u32;
            let count = 1 + r.below((n - u64::from(start)).min(8)) as u32;
            let action = r.pick(&[
                uapi::VFIO_IRQ_SET_ACTION_TRIGGER,
                uapi::VFIO_IRQ_SET_ACTION_TRIGGER,
                uapi::VFIO_IRQ_SET_ACTION_TRIGGER,
                uapi::VFIO_IRQ_SET_ACTION_MASK,
                uapi::VFIO_IRQ_SET_ACTION_UNMASK,
            ]);
            let (flags, count, data) = match r.weighted(&[60, 15, 15, 10]) {
                0 => (
                    uapi::VFIO_IRQ_SET_DATA_EVENTFD | action,
                    count,
                    IrqData::Fds(
                        (0..count)
                            .map(|_| {
                                if r.chance(9, 10) {
                                    FdRef::Efd(r.below(u64::from(EFDS)) as u8)
                                } else {
                                    FdRef::Neg(-1)
                                }
                            })
                            .collect(),
                    ),
                ),
                1 => (
                    uapi::VFIO_IRQ_SET_DATA_BOOL | action,
                    count,
                    IrqData::Bools((0..count).map(|_| r.pick(&[0u8, 1])).collect()),
                ),
                2 => (uapi::VFIO_IRQ_SET_DATA_NONE | action, count, IrqData::None),
                _ => (
                    uapi::VFIO_IRQ_SET_DATA_NONE | uapi::VFIO_IRQ_SET_ACTION_TRIGGER,
                    0,
                    IrqData::None,
                ),
            };
            let dlen = match &data {
                IrqData::None => 0,
                IrqData::Bools(b) => b.len() as u32,
                IrqData::Fds(f) => 4 * f.len() as u32,
            };
            Op::SetIrqs {
                argsz: 20 + dlen,
                flags,
                index,
                start,
                count,
                data,
            }
        }
        "set-irqs" => {
            let index = match r.weighted(&[85, 10, 5]) {
                0 => r.below(5) as u32,
                1 => r.pick(&[5, 6, 7]),
                _ => r.next() as u32,
            };
            let dtype = r.pick(&[
                uapi::VFIO_IRQ_SET_DATA_NONE,
                uapi::VFIO_IRQ_SET_DATA_NONE,
                uapi::VFIO_IRQ_SET_DATA_BOOL,
                uapi::VFIO_IRQ_SET_DATA_BOOL,
                uapi::VFIO_IRQ_SET_DATA_EVENTFD,
                uapi::VFIO_IRQ_SET_DATA_EVENTFD,
                uapi::VFIO_IRQ_SET_DATA_EVENTFD,
                uapi::VFIO_IRQ_SET_DATA_EVENTFD,
            ]);
            let action = r.pick(&[
                uapi::VFIO_IRQ_SET_ACTION_TRIGGER,
                uapi::VFIO_IRQ_SET_ACTION_TRIGGER,
                uapi::VFIO_IRQ_SET_ACTION_TRIGGER,
                uapi::VFIO_IRQ_SET_ACTION_MASK,
                uapi::VFIO_IRQ_SET_ACTION_UNMASK,
            ]);
            let flags = match r.weighted(&[90, 5, 5]) {
                0 => dtype | action,
                1 => r.below(0x40) as u32,
                _ => dtype | action | (1 << (6 + r.below(26))),
            };
            let start = match r.weighted(&[70, 20, 10]) {
                0 => 0,
                1 => 1 + r.below(4) as u32,
                _ => r.next() as u32,
            };
            let count = match r.weighted(&[40, 15, 30, 10, 5]) {
                0 => 1,
                1 => 0,
                2 => 2 + r.below(7) as u32,
                3 => 9 + r.below(3000) as u32,
                _ => r.next() as u32,
            };
            // The data follows flags' data type (most of the time); never more than 4096
            // elements whatever count says.
            let n = count.min(4096) as usize;
            let data = match flags & uapi::VFIO_IRQ_SET_DATA_TYPE_MASK {
                uapi::VFIO_IRQ_SET_DATA_BOOL => {
                    IrqData::Bools((0..n).map(|_| r.pick(&[0u8, 1, 1, 0xfe])).collect())
                }
                uapi::VFIO_IRQ_SET_DATA_EVENTFD => {
                    IrqData::Fds((0..n).map(|_| gen_fd(&mut r)).collect())
                }
                _ => IrqData::None,
            };
            let dlen = match &data {
                IrqData::None => 0,
                IrqData::Bools(b) => b.len() as u32,
                IrqData::Fds(f) => 4 * f.len() as u32,
            };
            let argsz = gen_argsz(&mut r, 20 + dlen, &[0, 19, 20, 21, 20 + dlen / 2, 24]);
            Op::SetIrqs {
                argsz,
                flags,
                index,
                start,
                count,
                data,
            }
        }
        "write" if p.kind == Kind::Edu && r.chance(1, 4) => {
            // Raise or acknowledge an edu interrupt (INTx or MSI, whichever is set up).
            let bit = 1u32 << r.pick(&[0, 0, 1, 5, 31]);
            let (off, v) = match r.weighted(&[55, 35, 10]) {
                0 => (EDU_RAISE, bit),
                1 => (EDU_ACK, if r.chance(1, 2) { u32::MAX } else { bit }),
                _ => (0x04, r.next() as u32),
            };
            Op::Write {
                index: 0,
                off,
                data: v.to_le_bytes().to_vec(),
            }
        }
        "read" | "write" => {
            let index = gen_index(&mut r, p);
            let len = gen_width(&mut r);
            let off = gen_off(&mut r, p.region(index).size, len);
            if kind == "write" && write_allowed(p, index, off, len) {
                Op::Write {
                    index,
                    off,
                    data: r.bytes(len as usize),
                }
            } else {
                Op::Read {
                    index,
                    off,
                    len: len as u32,
                }
            }
        }
        "command" => {
            // IO, MEM, bus master, INTx disable; sometimes any other bit too.
            let mut val = (r.next() as u16) & 0x0407;
            // Memory decode on most of the time, so BAR accesses and mappings get through.
            if r.chance(3, 4) {
                val |= 2;
            }
            if r.chance(1, 8) {
                val |= r.next() as u16;
            }
            Op::Command { val }
        }
        "pm-state" => Op::PmState {
            val: if r.chance(7, 8) {
                r.below(4) as u16
            } else {
                r.next() as u16
            },
        },
        "mmap" => {
            let bars = p.mmap_bars();
            let index = if !bars.is_empty() && r.chance(85, 100) {
                r.pick(&bars)
            } else {
                r.below(10) as u32
            };
            let size = p.region(index).size;
            let pages = (size / faultsafe::PAGE).max(1);
            let mut npages = 1 + r.below(pages.min(512));
            let mut first = r.below(pages - npages.min(pages) + 1);
            let mut off = first * faultsafe::PAGE;
            match r.weighted(&[85, 4, 4, 4, 3]) {
                0 => {}
                1 => off += 1 + r.below(faultsafe::PAGE - 1),
                2 => {
                    first = pages;
                    off = first * faultsafe::PAGE;
                }
                3 => npages = pages + 1,
                _ => npages = 0,
            }
            Op::Mmap {
                slot: slot(&mut r, MAP_SLOTS),
                index,
                off,
                len: npages * faultsafe::PAGE,
            }
        }
        "munmap" => Op::Munmap {
            slot: slot(&mut r, MAP_SLOTS),
        },
        "touch" => Op::Touch {
            slot: slot(&mut r, MAP_SLOTS),
            rel: r.below(1 << 21) & !7,
            write: if r.chance(3, 10) {
                Some(r.next())
            } else {
                None
            },
        },
        // LOW_POWER_EXIT: leaves the low power state an ENTRY put the device in, where every
        // ioctl resumes it (a D3hot -> D0 transition, 10 ms on a device with PM) and lets it
        // suspend again.
        "feature" if r.chance(1, 3) => Op::Feature {
            argsz: 8,
            flags: uapi::VFIO_DEVICE_FEATURE_SET | uapi::VFIO_DEVICE_FEATURE_LOW_POWER_EXIT,
            data: Vec::new(),
            fd_at: None,
        },
        "feature" => {
            let feature = if r.chance(85, 100) {
                r.below(17) as u32
            } else {
                r.next() as u32 & 0xffff
            };
            let g = uapi::VFIO_DEVICE_FEATURE_GET;
            let s = uapi::VFIO_DEVICE_FEATURE_SET;
            let pr = uapi::VFIO_DEVICE_FEATURE_PROBE;
            let mut flags = feature | r.pick(&[0, g, s, s, pr, pr | g, pr | s, pr | g | s, g | s]);
            if r.chance(1, 10) {
                flags |= 1 << (19 + r.below(13));
            }
            let (len, fd_at) = match feature {
                // PCI_VF_TOKEN: a UUID.
                0 => (16, None),
                // LOW_POWER_ENTRY_WITH_WAKEUP: {wakeup_eventfd, reserved}.
                4 => (
                    8,
                    Some((
                        0,
                        match gen_fd(&mut r) {
                            FdRef::Efd(_) => FdRef::Wake,
                            other => other,
                        },
                    )),
                ),
                // This project's DMA_BUF_REVOKE {dmabuf_fd} and DMA_BUF_MEMATTR
                // {dmabuf_fd, memattr}.
                14 => (4, Some((0, gen_fd(&mut r)))),
                15 => (8, Some((0, gen_fd(&mut r)))),
                _ => (r.below(25) as usize, None),
            };
            let mut data = r.bytes(len);
            if feature == 15 && r.chance(3, 4) {
                data[4..8].copy_from_slice(&(r.below(3) as u32).to_ne_bytes());
            }
            let argsz = gen_argsz(&mut r, 8 + len as u32, &[0, 4, 7, 8, 9]);
            Op::Feature {
                argsz,
                flags,
                data,
                fd_at,
            }
        }
        "dmabuf-export" => {
            let bars = p.mmap_bars();
            let index = if !bars.is_empty() && r.chance(85, 100) {
                r.pick(&bars)
            } else {
                r.below(10) as u32
            };
            let size = p.region(index).size;
            let pages = (size / faultsafe::PAGE).max(1);
            let n = r.pick(&[1, 1, 1, 2, 3]);
            let mut ranges = Vec::new();
            for _ in 0..n {
                let np = 1 + r.below(pages.min(512));
                let first = r.below(pages - np.min(pages) + 1);
                let (mut off, mut len) = (first * faultsafe::PAGE, np * faultsafe::PAGE);
                match r.weighted(&[85, 4, 4, 4, 3]) {
                    0 => {}
                    1 => off += 1 + r.below(faultsafe::PAGE - 1),
                    2 => len += 1 + r.below(faultsafe::PAGE - 1),
                    3 => off = size + r.below(4) * faultsafe::PAGE,
                    _ => {
                        len = if r.chance(1, 2) {
                            0
                        } else {
                            u64::MAX - off / 2
                        }
                    }
                }
                ranges.push((off, len));
            }
            let nr_ranges = if r.chance(95, 100) {
                n
            } else {
                r.pick(&[0, n + 1, 4096])
            };
            Op::DmaBufExport {
                slot: slot(&mut r, DMABUF_SLOTS),
                argsz_cut: if r.chance(95, 100) {
                    0
                } else {
                    1 + r.below(24) as u32
                },
                flags: if r.chance(9, 10) {
                    uapi::VFIO_DEVICE_FEATURE_GET
                } else {
                    r.pick(&[
                        uapi::VFIO_DEVICE_FEATURE_SET,
                        uapi::VFIO_DEVICE_FEATURE_PROBE | uapi::VFIO_DEVICE_FEATURE_GET,
                        uapi::VFIO_DEVICE_FEATURE_PROBE | uapi::VFIO_DEVICE_FEATURE_SET,
                        0,
                    ])
                } | uapi::VFIO_DEVICE_FEATURE_DMA_BUF,
                index,
                open_flags: if r.chance(9, 10) {
                    (libc::O_RDWR | libc::O_CLOEXEC) as u32
                } else {
                    {
                        let x = r.next() as u32;
                        r.pick(&[0, libc::O_RDONLY as u32, x])
                    }
                },
                dflags: if r.chance(19, 20) { 0 } else { r.next() as u32 },
                nr_ranges: nr_ranges as u32,
                ranges,
            }
        }
        "dmabuf-close" => Op::DmaBufClose {
            slot: slot(&mut r, DMABUF_SLOTS),
        },
        "ioeventfd" => {
            let index = match r.weighted(&[80, 8, 4, 8]) {
                0 => {
                    let bars = p.bars();
                    if bars.is_empty() {
                        0
                    } else {
                        r.pick(&bars)
                    }
                }
                1 => uapi::VFIO_PCI_CONFIG_REGION_INDEX,
                2 => uapi::VFIO_PCI_ROM_REGION_INDEX,
                _ => r.below(0x100) as u32,
            };
            let size_flag = match r.weighted(&[85, 15]) {
                0 => r.pick(&[1u32, 2, 4, 8]),
                _ => {
                    let x = r.next() as u32;
                    r.pick(&[0, 3, 0x10, x])
                }
            };
            let width = u64::from(size_flag.clamp(1, 8));
            let off = gen_off(&mut r, p.region(index).size, width);
            let mut fd = if r.chance(7, 10) {
                FdRef::Efd(r.below(u64::from(EFDS)) as u8)
            } else {
                gen_fd(&mut r)
            };
            // Where a write is not allowed, only the de-assign form (fd -1) is sent: an
            // assigned ioeventfd would write there when its eventfd fires.
            if !write_allowed(p, index, off, 8) {
                fd = FdRef::Neg(-1);
            }
            Op::Ioeventfd {
                argsz: gen_argsz(&mut r, 32, &[0, 27, 28, 31]),
                flags: size_flag,
                index,
                off,
                data: r.next(),
                fd,
            }
        }
        "irq-poll" => Op::IrqPoll,
        "signal" => Op::Signal {
            efd: slot(&mut r, EFDS),
        },
        "reset" => Op::Reset,
        "hot-reset-info" => Op::HotResetInfo {
            argsz: gen_argsz(&mut r, 12 + 8 * 4, &[0, 11, 12, 16, 20, 28]),
        },
        "hot-reset" => {
            let count = r.pick(&[0, 1, 1, 1, 2, 3, 65]);
            let fds: Vec<FdRef> = (0..count.min(4)).map(|_| gen_fd(&mut r)).collect();
            Op::HotReset {
                argsz: gen_argsz(&mut r, 12 + 4 * count.min(4), &[0, 11, 12, 13]),
                flags: if r.chance(9, 10) { 0 } else { r.next() as u32 },
                count,
                fds,
            }
        }
        "hot-reset-own" => Op::HotResetOwn,
        "reopen" => Op::Reopen,
        "full-reopen" => Op::FullReopen,
        _ => Op::RawIoctl {
            nr: r.below(41) as u32,
        },
    }
}

// ------------------------------------------------------------------------------------------
// Comparison
// ------------------------------------------------------------------------------------------

/// A divergence between the drivers that is by design, not a bug.
pub struct ByDesign {
    pub name: &'static str,
    pub why: &'static str,
    pub applies: fn(&Op, &str, &str) -> bool,
}

fn feature_is(op: &Op, n: u32) -> bool {
    matches!(op, Op::Feature { flags, .. } if flags & uapi::VFIO_DEVICE_FEATURE_MASK == n)
}

/// Every by-design divergence, in one place.
pub const BY_DESIGN: &[ByDesign] = &[
    ByDesign {
        name: "dmabuf-revoke-feature",
        why: "VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE (14) is this project's feature: vfio-pci-rs \
              implements it (PROBE/SET, EBADF/EINVAL/EBADFD for bad fds), the C vfio-pci of \
              7.3 has no such feature (ENOTTY)",
        applies: |op, _, _| feature_is(op, uapi::VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE),
    },
    ByDesign {
        name: "dmabuf-memattr-feature",
        why: "VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR (15) is this project's feature: vfio-pci-rs \
              implements it, the C vfio-pci of 7.3 answers ENOTTY",
        applies: |op, _, _| feature_is(op, uapi::VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR),
    },
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Same,
    ByDesign(usize),
    Divergent,
}

pub fn classify(op: &Op, c: &str, rs: &str) -> Verdict {
    if c == rs {
        return Verdict::Same;
    }
    match BY_DESIGN.iter().position(|b| (b.applies)(op, c, rs)) {
        Some(k) => Verdict::ByDesign(k),
        None => Verdict::Divergent,
    }
}

/// The physical interrupt state of `bdf` from its sysfs config: COMMAND's INTx disable,
/// STATUS's interrupt bit (the INTx pin as the function drives it) and MSI enable.
fn phys_irq_state(bdf: &str) -> String {
    use crate::cfgspace::{std_caps, u16_at, PCI_CAP_ID_MSI};
    let Ok(cfg) = std::fs::read(crate::sysfs::device_dir(bdf).join("config")) else {
        return "unreadable".into();
    };
    let msi = std_caps(&cfg)
        .iter()
        .find(|c| c.id == PCI_CAP_ID_MSI)
        .map_or("none".to_string(), |c| {
            format!("{}", u16_at(&cfg, c.off + 2) & 1)
        });
    format!(
        "intx_disable={} intx_pin={} msi_enable={msi} {}",
        (u16_at(&cfg, 0x04) >> 10) & 1,
        (u16_at(&cfg, 0x06) >> 3) & 1,
        irq_line_state(bdf)
    )
}

/// The interrupts the kernel took on `bdf`'s INTx line (`/proc/interrupts`, all CPUs) and its
/// spurious-interrupt accounting (`/proc/irq/N/spurious`: handled count, unhandled count).
fn irq_line_state(bdf: &str) -> String {
    let Some(irq) = std::fs::read_to_string(crate::sysfs::device_dir(bdf).join("irq"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return "irq=?".into();
    };
    let key = irq.to_string();
    let taken: u64 = std::fs::read_to_string("/proc/interrupts")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (n, rest) = l.trim_start().split_once(':')?;
            (n == key).then(|| {
                rest.split_whitespace()
                    .map_while(|w| w.parse::<u64>().ok())
                    .sum()
            })
        })
        .unwrap_or(0);
    let spurious = std::fs::read_to_string(format!("/proc/irq/{irq}/spurious"))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .chunks(2)
        .filter(|kv| kv[0] == "count" || kv[0] == "unhandled")
        .map(|kv| kv.join("="))
        .collect::<Vec<_>>()
        .join(" ");
    format!("irq={irq} taken={taken} {spurious}")
}

/// `hex` of `data` read at `off`, with the bytes `mask` marks (indexed from 0) as `..`.
pub fn masked_hex(data: &[u8], off: u64, mask: &[bool]) -> String {
    data.iter()
        .enumerate()
        .map(|(j, b)| {
            let at = off as usize + j;
            if mask.get(at).copied().unwrap_or(false) {
                "..".to_string()
            } else {
                format!("{b:02x}")
            }
        })
        .collect()
}

/// Config bytes that differ between two twin devices whatever the driver: the BARs and the
/// ROM BAR (addresses), the interrupt line, and whatever differed when both were opened.
pub fn config_mask(c: &[u8], rs: &[u8]) -> Vec<bool> {
    let n = c.len().max(rs.len());
    (0..n)
        .map(|i| {
            (0x10..0x28).contains(&i)
                || (0x30..0x34).contains(&i)
                || i == 0x3c
                || c.get(i) != rs.get(i)
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// Execution
// ------------------------------------------------------------------------------------------

/// What the execution of an op needs besides the side's state.
pub struct Ctx {
    pub profile: Profile,
    /// Config bytes not compared (see [`config_mask`]).
    pub cfg_mask: Vec<bool>,
}

struct Mapped {
    map: Map,
    index: u32,
    off: u64,
}

/// One driver's device and everything the fuzzer holds on it. Fields drop in declaration
/// order: device fd, mappings, DMABUFs, then the group session.
pub struct Side {
    bdf: String,
    dev: Option<File>,
    maps: Vec<Option<Mapped>>,
    dmabufs: Vec<Option<OwnedFd>>,
    efds: Vec<Efd>,
    wake: Efd,
    devnull: File,
    group_id: u32,
    /// A LOW_POWER_ENTRY (3) or _WITH_WAKEUP (4) succeeded and no exit was seen since: see
    /// [`Side::settle`].
    low_power: bool,
    /// `power/runtime_status` of the device in sysfs.
    runtime_status: std::path::PathBuf,
    /// Settles that gave up waiting for the runtime suspend.
    pub settle_timeouts: u64,
    session: Option<GroupSession>,
}

fn outcome_of<T>(r: io::Result<T>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => ok(v),
        Err(e) => err_name(&e),
    }
}

/// `struct vfio_device_ioeventfd`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct VfioDeviceIoeventfd {
    argsz: u32,
    flags: u32,
    offset: u64,
    data: u64,
    fd: i32,
    reserved: u32,
}
const VFIO_DEVICE_IOEVENTFD: u32 = uapi::vfio_io(16);

fn ioeventfd(dev: &File, arg: &mut VfioDeviceIoeventfd) -> io::Result<i32> {
    // SAFETY: `arg` is a live, exclusively borrowed 32-byte structure; the handler reads at
    // most offsetofend(fd) = 28 bytes of it and writes nothing back. The fd in it is only
    // looked up by the kernel (eventfd_ctx_fdget), which fails cleanly for a bad one.
    let r = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            VFIO_DEVICE_IOEVENTFD as libc::Ioctl,
            arg as *mut VfioDeviceIoeventfd,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Side {
    pub fn open(bdf: &str) -> Result<Side, String> {
        let mut q = Quiet::default();
        let gd = checks::open_via_group(bdf, &mut q)
            .map_err(|_| q.failure.unwrap_or_else(|| "open failed".into()))?;
        let efds = (0..EFDS)
            .map(|_| Efd::new())
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| format!("eventfd: {}", err_name(&e)))?;
        let wake = Efd::new().map_err(|e| format!("eventfd: {}", err_name(&e)))?;
        let devnull = File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
        Ok(Side {
            bdf: bdf.to_string(),
            dev: Some(gd.device),
            maps: (0..MAP_SLOTS).map(|_| None).collect(),
            dmabufs: (0..DMABUF_SLOTS).map(|_| None).collect(),
            efds,
            wake,
            devnull,
            group_id: gd.session.group_id,
            low_power: false,
            runtime_status: crate::sysfs::device_dir(bdf).join("power/runtime_status"),
            settle_timeouts: 0,
            session: Some(gd.session),
        })
    }

    /// After an op, while the device is in low power: wait until it has runtime-suspended
    /// again (every ioctl, read and write resumes it; the suspend follows from a workqueue
    /// after the op's `pm_runtime_put`). Without this, whether the next op finds it suspended
    /// depends on the scheduler, and so do its outcomes: the wakeup eventfd's resume that
    /// ends LOW_POWER_ENTRY_WITH_WAKEUP only happens from the suspended state (until then,
    /// mapped accesses SIGBUS), and on a device with PM, BAR accesses of a suspended device
    /// are EIO. The wakeup eventfd signalled means low power was left.
    pub fn settle(&mut self) {
        if !self.low_power {
            return;
        }
        if self.wake.drain() > 0 {
            self.low_power = false;
            return;
        }
        let start = Instant::now();
        loop {
            let st = std::fs::read_to_string(&self.runtime_status).unwrap_or_default();
            if st.trim() == "suspended" {
                return;
            }
            if start.elapsed() >= SETTLE_WAIT {
                // Something keeps it active (or it left low power some other way): stop
                // waiting after every op.
                self.settle_timeouts += 1;
                self.low_power = false;
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn resolve(&self, f: FdRef) -> RawFd {
        match f {
            FdRef::Efd(k) => self.efds[k as usize].raw(),
            FdRef::Wake => self.wake.raw(),
            FdRef::DmaBuf(k) => self.dmabufs[k as usize]
                .as_ref()
                .map_or(-1, |fd| fd.as_raw_fd()),
            FdRef::Dev => self.dev.as_ref().map_or(-1, |d| d.as_raw_fd()),
            FdRef::Group => self.session.as_ref().map_or(-1, |s| s.group.as_raw_fd()),
            FdRef::Container => self
                .session
                .as_ref()
                .map_or(-1, |s| s.container.as_raw_fd()),
            FdRef::DevNull => self.devnull.as_raw_fd(),
            FdRef::Neg(n) => n,
            FdRef::Closed => CLOSED_FD,
        }
    }

    /// Drop every mapping, DMABUF and the device, then the session, and open all again.
    fn full_reopen(&mut self) -> Result<(), String> {
        self.dev = None;
        for m in &mut self.maps {
            *m = None;
        }
        for d in &mut self.dmabufs {
            *d = None;
        }
        self.session = None;
        self.low_power = false;
        self.wake.drain();
        let mut q = Quiet::default();
        let gd = checks::open_via_group(&self.bdf, &mut q)
            .map_err(|_| q.failure.unwrap_or_else(|| "open failed".into()))?;
        self.dev = Some(gd.device);
        self.group_id = gd.session.group_id;
        self.session = Some(gd.session);
        Ok(())
    }

    /// GET_INFO's flags/regions/irqs, for the survival check.
    pub fn info(&self) -> Result<String, String> {
        let dev = self.dev.as_ref().ok_or("no device fd")?;
        checks::get_info(dev)
            .map(|q| q.values.to_string())
            .map_err(|e| err_name(&e))
    }

    /// Run `op`; its normalised outcome.
    pub fn exec(&mut self, op: &Op, ctx: &Ctx) -> String {
        // Ops that need no device fd.
        match op {
            Op::Munmap { slot } => {
                return match self.maps[*slot as usize].take() {
                    Some(_) => "ok".into(),
                    None => "empty".into(),
                }
            }
            Op::DmaBufClose { slot } => {
                return match self.dmabufs[*slot as usize].take() {
                    Some(_) => "ok".into(),
                    None => "empty".into(),
                }
            }
            Op::Touch { slot, rel, write } => {
                let Some(m) = self.maps[*slot as usize].as_ref() else {
                    return "empty".into();
                };
                let rel = (rel % m.map.len) & !7;
                let addr = m.map.addr + rel;
                let off = m.off + rel;
                let p = &ctx.profile;
                return match write {
                    Some(v) if write_allowed(p, m.index, off, 8) => {
                        if faultsafe::write64(addr, *v) {
                            "ok write".into()
                        } else {
                            "sigbus".into()
                        }
                    }
                    _ => match faultsafe::read64(addr) {
                        None => "sigbus".into(),
                        Some(v) if data_compared(p, m.index, off, 8) => format!("ok {v:016x}"),
                        Some(_) => "ok read".into(),
                    },
                };
            }
            Op::Signal { efd } => {
                let r = self.efds[*efd as usize].signal();
                for (k, e) in self.efds.iter().enumerate() {
                    if k != *efd as usize {
                        e.drain();
                    }
                }
                return outcome_of(r, |()| "ok".into());
            }
            Op::IrqPoll => {
                let mut pfds: Vec<libc::pollfd> = self
                    .efds
                    .iter()
                    .map(|e| libc::pollfd {
                        fd: e.raw(),
                        events: libc::POLLIN,
                        revents: 0,
                    })
                    .collect();
                // SAFETY: `pfds` is a live array of EFDS pollfds for the duration of the call.
                unsafe {
                    libc::poll(
                        pfds.as_mut_ptr(),
                        pfds.len() as libc::nfds_t,
                        IRQ_POLL_WAIT.as_millis() as libc::c_int,
                    )
                };
                // An interrupt raised by the op before lands at once (one vCPU); give any
                // other one in flight a moment too.
                std::thread::sleep(Duration::from_millis(1));
                let fired: String = self
                    .efds
                    .iter()
                    .map(|e| if e.drain() > 0 { '1' } else { '0' })
                    .collect();
                return format!("fired {fired}");
            }
            Op::Reopen => {
                self.dev = None;
                let Some(s) = self.session.as_ref() else {
                    return "no session".into();
                };
                return match s.device_fd(&self.bdf) {
                    Ok(f) => {
                        self.dev = Some(f);
                        "ok".into()
                    }
                    Err(e) => err_name(&e),
                };
            }
            Op::FullReopen => {
                return match self.full_reopen() {
                    Ok(()) => "ok".into(),
                    Err(e) => e,
                }
            }
            _ => {}
        }
        let Some(dev) = self.dev.as_ref() else {
            return "no device fd".into();
        };
        match op {
            Op::GetInfo { argsz } => info_op::<uapi::DeviceGetInfo>(dev, *argsz, &[]),
            Op::RegionInfo { index, argsz } => {
                info_op::<uapi::DeviceGetRegionInfo>(dev, *argsz, &[(8, *index)])
            }
            Op::IrqInfo { index, argsz } => {
                info_op::<uapi::DeviceGetIrqInfo>(dev, *argsz, &[(8, *index)])
            }
            Op::SetIrqs {
                argsz,
                flags,
                index,
                start,
                count,
                data,
            } => {
                let bytes: Vec<u8> = match data {
                    IrqData::None => Vec::new(),
                    IrqData::Bools(b) => b.clone(),
                    IrqData::Fds(f) => f
                        .iter()
                        .flat_map(|x| self.resolve(*x).to_ne_bytes())
                        .collect(),
                };
                let hdr = uapi::VfioIrqSet {
                    argsz: *argsz,
                    flags: *flags,
                    index: *index,
                    start: *start,
                    count: *count,
                };
                outcome_of(sys::set_irqs(dev, hdr, &bytes), |v| format!("ok {v}"))
            }
            Op::Read { index, off, len } => {
                let mut buf = vec![0u8; *len as usize];
                outcome_of(dev.read_at(&mut buf, region_offset(*index, *off)), |n| {
                    let got = &buf[..n];
                    if *index == uapi::VFIO_PCI_CONFIG_REGION_INDEX {
                        format!("ok {n} {}", masked_hex(got, *off, &ctx.cfg_mask))
                    } else if data_compared(&ctx.profile, *index, *off, n as u64) {
                        format!("ok {n} {}", checks::hex(got))
                    } else {
                        format!("ok {n}")
                    }
                })
            }
            Op::Write { index, off, data } => {
                outcome_of(dev.write_at(data, region_offset(*index, *off)), |n| {
                    format!("ok {n}")
                })
            }
            Op::Command { val } => outcome_of(
                dev.write_at(
                    &val.to_le_bytes(),
                    region_offset(uapi::VFIO_PCI_CONFIG_REGION_INDEX, 4),
                ),
                |n| format!("ok {n}"),
            ),
            Op::PmState { val } => match ctx.profile.pm_cap {
                None => "no pm cap".into(),
                Some(pm) => outcome_of(
                    dev.write_at(
                        &val.to_le_bytes(),
                        region_offset(uapi::VFIO_PCI_CONFIG_REGION_INDEX, pm + 4),
                    ),
                    |n| format!("ok {n}"),
                ),
            },
            Op::Mmap {
                slot,
                index,
                off,
                len,
            } => {
                let fd = dev.as_raw_fd();
                self.maps[*slot as usize] = None;
                match Map::new(fd, None, *len, region_offset(*index, *off)) {
                    Ok(map) => {
                        self.maps[*slot as usize] = Some(Mapped {
                            map,
                            index: *index,
                            off: *off,
                        });
                        "ok".into()
                    }
                    Err(e) => err_name(&e),
                }
            }
            Op::Feature {
                argsz,
                flags,
                data,
                fd_at,
            } => {
                let mut d = data.clone();
                if let Some((at, f)) = fd_at {
                    d[*at..*at + 4].copy_from_slice(&self.resolve(*f).to_ne_bytes());
                }
                let r = sys::device_feature(dev, *argsz, *flags, &d);
                let set_only = flags & uapi::VFIO_DEVICE_FEATURE_SET != 0
                    && flags & uapi::VFIO_DEVICE_FEATURE_PROBE == 0;
                if r.is_ok() && set_only {
                    match flags & uapi::VFIO_DEVICE_FEATURE_MASK {
                        uapi::VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY
                        | uapi::VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP => {
                            self.low_power = true
                        }
                        uapi::VFIO_DEVICE_FEATURE_LOW_POWER_EXIT => self.low_power = false,
                        _ => {}
                    }
                }
                outcome_of(r, |v| {
                    let get = flags & uapi::VFIO_DEVICE_FEATURE_GET != 0;
                    let probe = flags & uapi::VFIO_DEVICE_FEATURE_PROBE != 0;
                    if flags & uapi::VFIO_DEVICE_FEATURE_MASK == uapi::VFIO_DEVICE_FEATURE_DMA_BUF
                        && get
                        && !probe
                        && v > 0
                    {
                        // SAFETY: a DMA_BUF GET returns a new descriptor nothing else owns.
                        drop(unsafe { OwnedFd::from_raw_fd(v) });
                        "ok fd".into()
                    } else {
                        format!("ok {v}")
                    }
                })
            }
            Op::DmaBufExport {
                slot,
                argsz_cut,
                flags,
                index,
                open_flags,
                dflags,
                nr_ranges,
                ranges,
            } => {
                let mut d = Vec::new();
                d.extend_from_slice(&index.to_ne_bytes());
                d.extend_from_slice(&open_flags.to_ne_bytes());
                d.extend_from_slice(&dflags.to_ne_bytes());
                d.extend_from_slice(&nr_ranges.to_ne_bytes());
                for (o, l) in ranges {
                    d.extend_from_slice(&o.to_ne_bytes());
                    d.extend_from_slice(&l.to_ne_bytes());
                }
                let argsz = (8 + d.len() as u32).saturating_sub(*argsz_cut);
                self.dmabufs[*slot as usize] = None;
                let r = sys::device_feature(dev, argsz, *flags, &d);
                let probe = flags & uapi::VFIO_DEVICE_FEATURE_PROBE != 0;
                outcome_of(r, |v| {
                    if v > 0 && !probe {
                        // SAFETY: the export returned a new descriptor nothing else owns.
                        self.dmabufs[*slot as usize] = Some(unsafe { OwnedFd::from_raw_fd(v) });
                        "ok fd".into()
                    } else {
                        format!("ok {v}")
                    }
                })
            }
            Op::Ioeventfd {
                argsz,
                flags,
                index,
                off,
                data,
                fd,
            } => {
                let mut arg = VfioDeviceIoeventfd {
                    argsz: *argsz,
                    flags: *flags,
                    offset: region_offset(*index, *off),
                    data: *data,
                    fd: self.resolve(*fd),
                    reserved: 0,
                };
                outcome_of(ioeventfd(dev, &mut arg), |v| format!("ok {v}"))
            }
            Op::Reset => outcome_of(sys::ioctl_noarg(dev, uapi::VFIO_DEVICE_RESET), |v| {
                format!("ok {v}")
            }),
            Op::HotResetInfo { argsz } => self.hot_reset_info(dev, *argsz),
            Op::HotReset {
                argsz,
                flags,
                count,
                fds,
            } => {
                let raw: Vec<i32> = fds.iter().map(|f| self.resolve(*f)).collect();
                outcome_of(
                    sys::pci_hot_reset_raw(dev, *argsz, *flags, *count, &raw),
                    |v| format!("ok {v}"),
                )
            }
            Op::HotResetOwn => match self.session.as_ref() {
                None => "no session".into(),
                Some(s) => outcome_of(sys::pci_hot_reset(dev, &[s.group.as_fd()]), |v| {
                    format!("ok {v}")
                }),
            },
            Op::RawIoctl { nr } => outcome_of(sys::ioctl_noarg(dev, uapi::vfio_io(*nr)), |v| {
                format!("ok {v}")
            }),
            Op::Munmap { .. }
            | Op::DmaBufClose { .. }
            | Op::Touch { .. }
            | Op::Signal { .. }
            | Op::IrqPoll
            | Op::Reopen
            | Op::FullReopen => unreachable!("handled above"),
        }
    }

    /// GET_PCI_HOT_RESET_INFO, the device list normalised: this device's BDF shows as `self`,
    /// its own group as `own` (the twins differ in both).
    fn hot_reset_info(&self, dev: &File, argsz: u32) -> String {
        let mut buf = InfoBuf::new(argsz.max(12 + 8 * 8));
        buf.set_u32(0, argsz);
        let r = sys::ioctl_info_buf::<uapi::DeviceGetPciHotResetInfo>(dev, &mut buf);
        let flags = buf.u32_at(4).unwrap_or(0);
        let count = buf.u32_at(8).unwrap_or(0);
        match r {
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                format!("ENOSPC count={count}")
            }
            Err(e) => err_name(&e),
            Ok(v) => {
                let bytes = buf.bytes();
                let devs = crate::mixed::parse_dependent_devices(&bytes, count.min(8))
                    .unwrap_or_default()
                    .iter()
                    .map(|d| {
                        let bdf = if d.bdf() == self.bdf {
                            "self".to_string()
                        } else {
                            d.bdf()
                        };
                        let g = if d.group_id_or_devid == self.group_id {
                            "own".to_string()
                        } else {
                            d.group_id_or_devid.to_string()
                        };
                        format!("{bdf}/{g}")
                    })
                    .collect::<Vec<_>>();
                format!(
                    "ok {v} flags=0x{flags:x} count={count} [{}]",
                    devs.join(",")
                )
            }
        }
    }
}

/// An INFO ioctl with `argsz` and the u32 fields `set` (offset, value), on a buffer that holds
/// at least 256 bytes: `ok` and every byte of the buffer after argsz (what the kernel wrote,
/// zeroes elsewhere), the argsz the kernel left.
fn info_op<R: uapi::IoctlRequest>(dev: &File, argsz: u32, set: &[(usize, u32)]) -> String {
    let mut buf = InfoBuf::new(argsz.max(256));
    buf.set_u32(0, argsz);
    for (at, v) in set {
        buf.set_u32(*at, *v);
    }
    match sys::ioctl_info_buf::<R>(dev, &mut buf) {
        Ok(v) => {
            let b = buf.bytes();
            let end = b
                .iter()
                .rposition(|x| *x != 0)
                .map_or(4, |p| (p + 1).max(4));
            format!(
                "ok {v} argsz={} {}",
                buf.argsz(),
                checks::hex(&b[4..end.max(4)])
            )
        }
        Err(e) => err_name(&e),
    }
}

// ------------------------------------------------------------------------------------------
// The run
// ------------------------------------------------------------------------------------------

/// Divergences printed per twin (all are counted).
pub const DIVERGENCE_CAP: u64 = 200;

fn read_config(side: &Side, size: u64) -> Result<Vec<u8>, String> {
    let dev = side.dev.as_ref().ok_or("no device fd")?;
    let mut buf = vec![0u8; size as usize];
    let n = dev
        .read_at(
            &mut buf,
            region_offset(uapi::VFIO_PCI_CONFIG_REGION_INDEX, 0),
        )
        .map_err(|e| format!("config read: {}", err_name(&e)))?;
    buf.truncate(n);
    Ok(buf)
}

/// The profile of the device behind `side` (its region info and config space).
pub fn read_profile(side: &Side) -> Result<(Profile, Vec<u8>), String> {
    let dev = side.dev.as_ref().ok_or("no device fd")?;
    let mut regions = Vec::new();
    for index in 0..9 {
        let mut ri = uapi::VfioRegionInfo {
            argsz: uapi::size_u32::<uapi::VfioRegionInfo>(),
            index,
            ..Default::default()
        };
        match sys::ioctl_struct::<uapi::DeviceGetRegionInfo>(dev, &mut ri) {
            Ok(_) => regions.push(Region {
                size: ri.size,
                flags: ri.flags,
            }),
            Err(_) => regions.push(Region::default()),
        }
    }
    let mut irq_counts = Vec::new();
    for index in 0..5 {
        let mut ii = uapi::VfioIrqInfo {
            argsz: uapi::size_u32::<uapi::VfioIrqInfo>(),
            index,
            ..Default::default()
        };
        irq_counts.push(
            match sys::ioctl_struct::<uapi::DeviceGetIrqInfo>(dev, &mut ii) {
                Ok(_) => ii.count,
                Err(_) => 0,
            },
        );
    }
    let cfg_size = regions[uapi::VFIO_PCI_CONFIG_REGION_INDEX as usize].size;
    let cfg = read_config(side, cfg_size.clamp(64, 4096))?;
    let vendor = u16::from_le_bytes([cfg[0], cfg[1]]);
    let device = u16::from_le_bytes([cfg[2], cfg[3]]);
    // Walk the standard capability list for PM (id 1).
    let mut pm_cap = None;
    if cfg[6] & 0x10 != 0 {
        let mut at = cfg[0x34] as usize & !3;
        for _ in 0..48 {
            if at < 0x40 || at + 2 > cfg.len() {
                break;
            }
            if cfg[at] == 1 {
                pm_cap = Some(at as u64);
                break;
            }
            at = cfg[at + 1] as usize & !3;
        }
    }
    Ok((
        Profile {
            kind: Kind::from_ids(vendor, device),
            regions,
            cfg_size,
            pm_cap,
            irq_counts,
        },
        cfg,
    ))
}

/// Fuzz one twin; reports `fuzz NAME ops` and `fuzz NAME parity`.
pub fn fuzz_twin(
    rep: &mut Reporter,
    twin: &Twin,
    seed: u64,
    ops: u64,
    replay: Option<u64>,
    from: u64,
) {
    let subject = format!("fuzz {}", twin.name);
    let open = Side::open(&twin.bdf_c).and_then(|c| Ok((c, Side::open(&twin.bdf_rs)?)));
    let (mut c, mut rs) = match open {
        Ok(v) => v,
        Err(e) => {
            rep.fail(&subject, "ops", &format!("open: {e}"));
            rep.fail(&subject, "parity", "skipped: open failed");
            return;
        }
    };
    let setup = (|| {
        let (profile, cfg_c) = read_profile(&c)?;
        let (profile_rs, cfg_rs) = read_profile(&rs)?;
        if profile_rs != profile {
            rep.note(&format!(
                "fuzz {}: the vfio-pci-rs device's profile differs: {profile_rs:?} (vfio-pci: {profile:?}); ops are generated from vfio-pci's",
                twin.name
            ));
        }
        let cfg_mask = config_mask(&cfg_c, &cfg_rs);
        let info = (c.info()?, rs.info()?);
        Ok::<_, String>((Ctx { profile, cfg_mask }, info))
    })();
    let (ctx, info0) = match setup {
        Ok(v) => v,
        Err(e) => {
            rep.fail(&subject, "ops", &format!("setup: {e}"));
            rep.fail(&subject, "parity", "skipped: setup failed");
            return;
        }
    };
    let masked: Vec<String> = ctx
        .cfg_mask
        .iter()
        .enumerate()
        .filter(|(i, m)| {
            **m && !((0x10..0x28).contains(i) || (0x30..0x34).contains(i) || *i == 0x3c)
        })
        .map(|(i, _)| format!("0x{i:x}"))
        .collect();
    rep.note(&format!(
        "fuzz {} seed={seed} ops={ops} {} (vfio-pci) {} (vfio-pci-rs) kind={:?} pm={:?} config bytes masked besides BARs/ROM/line: [{}]",
        twin.name,
        twin.bdf_c,
        twin.bdf_rs,
        ctx.profile.kind,
        ctx.profile.pm_cap,
        masked.join(" ")
    ));

    let n = replay.map_or(ops, |k| k + 1);
    let mut divergent = 0u64;
    let mut by_design = vec![0u64; BY_DESIGN.len()];
    // Per op kind: count and time spent (both devices).
    let mut per_kind: std::collections::BTreeMap<&'static str, (u64, Duration)> =
        Default::default();
    let start = Instant::now();
    let mut last_progress = Instant::now();
    // FUZZ_TRACE_PHYS=1 with --replay: each device's physical INTx and MSI state after each
    // printed op, whenever it changes (to find where the twins' interrupt pins part).
    let trace_phys = replay.is_some() && std::env::var_os("FUZZ_TRACE_PHYS").is_some();
    let mut phys_last = (String::new(), String::new());
    for i in 0..n {
        let op = gen_op(seed, i, &ctx.profile);
        let t0 = Instant::now();
        let oc = c.exec(&op, &ctx);
        c.settle();
        let ors = rs.exec(&op, &ctx);
        rs.settle();
        let e = per_kind.entry(op.kind()).or_default();
        e.0 += 1;
        e.1 += t0.elapsed();
        let v = classify(&op, &oc, &ors);
        if replay.is_some() && i >= from {
            let mark = match v {
                Verdict::Same => "same",
                Verdict::ByDesign(_) => "by-design",
                Verdict::Divergent => "DIVERGENT",
            };
            println!("op {i} {mark}: {}", op.describe());
            println!("  c={oc}");
            println!("  rs={ors}");
        }
        if trace_phys && i >= from {
            let now = (phys_irq_state(&twin.bdf_c), phys_irq_state(&twin.bdf_rs));
            if now != phys_last {
                println!("phys op {i}: c {} | rs {}", now.0, now.1);
                phys_last = now;
            }
        }
        match v {
            Verdict::Same => {}
            Verdict::ByDesign(k) => by_design[k] += 1,
            Verdict::Divergent => {
                divergent += 1;
                if divergent <= DIVERGENCE_CAP {
                    rep.raw(&format!(
                        "FUZZ-DIVERGENCE twin={} seed={seed} op={i} kind={} c={oc} rs={ors}",
                        twin.name,
                        op.kind()
                    ));
                    rep.note(&format!("  op {i}: {}", op.describe()));
                } else if divergent == DIVERGENCE_CAP + 1 {
                    rep.note(&format!(
                        "fuzz {}: more than {DIVERGENCE_CAP} divergences, the rest only counted",
                        twin.name
                    ));
                }
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(60) {
            last_progress = Instant::now();
            let t = start.elapsed().as_secs_f64();
            rep.note(&format!(
                "fuzz {}: {}/{n} ops, {t:.0} s, {:.0} ops/s, {divergent} divergences",
                twin.name,
                i + 1,
                (i + 1) as f64 / t
            ));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    rep.note(&format!(
        "fuzz {}: {n} ops (each on both devices) in {secs:.1} s: {:.0} ops/s",
        twin.name,
        n as f64 / secs.max(1e-9)
    ));
    let kinds: Vec<String> = per_kind
        .iter()
        .map(|(k, (n, t))| format!("{k} {n} ({:.1} s)", t.as_secs_f64()))
        .collect();
    rep.note(&format!(
        "fuzz {} op mix (count, time on both devices): {}",
        twin.name,
        kinds.join(", ")
    ));
    if c.settle_timeouts + rs.settle_timeouts > 0 {
        rep.note(&format!(
            "fuzz {}: a device in low power did not runtime-suspend within {} ms {} times (vfio-pci) and {} times (vfio-pci-rs)",
            twin.name,
            SETTLE_WAIT.as_millis(),
            c.settle_timeouts,
            rs.settle_timeouts
        ));
    }
    for (k, b) in BY_DESIGN.iter().enumerate() {
        if by_design[k] > 0 {
            rep.note(&format!(
                "fuzz {} by design: {} x{}: {}",
                twin.name, b.name, by_design[k], b.why
            ));
        }
    }

    // Survival: both devices close and open again and answer GET_INFO as at the start.
    let survived = (|| {
        c.full_reopen()
            .map_err(|e| format!("vfio-pci reopen: {e}"))?;
        rs.full_reopen()
            .map_err(|e| format!("vfio-pci-rs reopen: {e}"))?;
        let now = (c.info()?, rs.info()?);
        if now != info0 {
            return Err(format!("GET_INFO now {now:?}, at the start {info0:?}"));
        }
        Ok(())
    })();
    match survived {
        Ok(()) => rep.pass(&subject, "ops"),
        Err(e) => rep.fail(&subject, "ops", &e),
    }
    if divergent == 0 {
        rep.pass(&subject, "parity");
    } else {
        rep.fail(
            &subject,
            "parity",
            &format!("{divergent} divergences not listed as by design (FUZZ-DIVERGENCE lines)"),
        );
    }
}

/// `vfio-test fuzz`.
pub fn run(
    twins: &[Twin],
    seed: Option<u64>,
    ops: u64,
    replay: Option<u64>,
    from: u64,
) -> ExitCode {
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    faultsafe::install();
    let mut rep = Reporter::stdout();
    rep.note(&format!(
        "fuzz seed={seed} ops={ops}{}",
        replay.map_or(String::new(), |k| format!(" replay 0..={k}"))
    ));
    for twin in twins {
        fuzz_twin(&mut rep, twin, seed, ops, replay, from);
    }
    rep.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(kind: Kind) -> Profile {
        let mut regions = vec![Region::default(); 9];
        let mm = uapi::VFIO_REGION_INFO_FLAG_READ
            | uapi::VFIO_REGION_INFO_FLAG_WRITE
            | uapi::VFIO_REGION_INFO_FLAG_MMAP;
        regions[0] = Region {
            size: 1 << 20,
            flags: mm,
        };
        regions[2] = Region {
            size: 1 << 30,
            flags: mm,
        };
        regions[7] = Region {
            size: 256,
            flags: 3,
        };
        Profile {
            kind,
            regions,
            cfg_size: 256,
            pm_cap: Some(0x40),
            irq_counts: vec![1, 1, 10, 1, 1],
        }
    }

    #[test]
    fn prng_is_splitmix64_and_deterministic() {
        // splitmix64's first output from state 0.
        assert_eq!(Prng::new(0).next(), 0xe220_a839_7b1d_cdaf);
        let a: Vec<u64> = (0..8)
            .map(|_| 0)
            .scan(Prng::new(42), |r, _| Some(r.next()))
            .collect();
        let b: Vec<u64> = (0..8)
            .map(|_| 0)
            .scan(Prng::new(42), |r, _| Some(r.next()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(Prng::for_op(1, 0).next(), Prng::for_op(1, 1).next());
        assert_ne!(Prng::for_op(1, 5).next(), Prng::for_op(2, 5).next());
        let mut r = Prng::new(7);
        assert!((0..1000).all(|_| r.below(10) < 10));
        assert_eq!(r.below(0), 0);
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            counts[r.weighted(&[1, 0, 2])] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!(counts[2] > counts[0]);
    }

    #[test]
    fn ops_are_a_function_of_seed_and_index() {
        let p = profile(Kind::Edu);
        for i in 0..500 {
            assert_eq!(gen_op(9, i, &p), gen_op(9, i, &p));
        }
        let a: Vec<Op> = (0..100).map(|i| gen_op(1, i, &p)).collect();
        let b: Vec<Op> = (0..100).map(|i| gen_op(2, i, &p)).collect();
        assert_ne!(a, b);
        // Op 57 alone is op 57 of the sequence.
        assert_eq!(gen_op(1, 57, &p), a[57]);
    }

    #[test]
    fn every_kind_is_generated() {
        let p = profile(Kind::Ivshmem);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..200_000 {
            seen.insert(gen_op(3, i, &p).kind());
        }
        for (_, k) in WEIGHTS {
            assert!(seen.contains(k), "{k} never generated");
        }
    }

    #[test]
    fn no_write_reaches_excluded_registers() {
        for kind in [Kind::Edu, Kind::Igb, Kind::Other] {
            let p = profile(kind);
            for i in 0..100_000 {
                match gen_op(5, i, &p) {
                    Op::Write { index, off, data } => {
                        assert!(write_allowed(&p, index, off, data.len() as u64));
                        if index < 6 {
                            match kind {
                                Kind::Edu => {
                                    assert!(!overlaps(&EDU_DMA_REGS, off, data.len() as u64))
                                }
                                _ => assert!(off >= p.region(index).size),
                            }
                        }
                    }
                    Op::Ioeventfd { index, off, fd, .. } => {
                        if !write_allowed(&p, index, off, 8) {
                            assert_eq!(fd, FdRef::Neg(-1));
                        }
                    }
                    _ => {}
                }
            }
        }
        let p = profile(Kind::Edu);
        assert!(!write_allowed(&p, 0, 0x98, 4));
        assert!(!write_allowed(&p, 0, 0x7c, 8));
        assert!(write_allowed(&p, 0, 0x60, 4));
        assert!(!write_allowed(&p, 0, 0x20, 4));
        assert!(write_allowed(&p, 0, 0xa0, 4));
        assert!(write_allowed(&p, 7, 0x4, 2));
        let p = profile(Kind::Igb);
        assert!(!write_allowed(&p, 0, 0, 4));
        assert!(write_allowed(&p, 0, 1 << 20, 4));
    }

    #[test]
    fn divergences_are_classified() {
        let read = Op::Read {
            index: 7,
            off: 0,
            len: 4,
        };
        assert_eq!(classify(&read, "ok 4 aa", "ok 4 aa"), Verdict::Same);
        assert_eq!(classify(&read, "ok 4 aa", "EINVAL"), Verdict::Divergent);
        let revoke = Op::Feature {
            argsz: 12,
            flags: uapi::VFIO_DEVICE_FEATURE_SET | 14,
            data: vec![0; 4],
            fd_at: Some((0, FdRef::DmaBuf(0))),
        };
        assert_eq!(classify(&revoke, "ENOTTY", "EBADF"), Verdict::ByDesign(0));
        let memattr = Op::Feature {
            argsz: 16,
            flags: uapi::VFIO_DEVICE_FEATURE_PROBE | 15,
            data: vec![0; 8],
            fd_at: None,
        };
        assert_eq!(classify(&memattr, "ENOTTY", "ok 0"), Verdict::ByDesign(1));
        let other = Op::Feature {
            argsz: 8,
            flags: uapi::VFIO_DEVICE_FEATURE_PROBE | 3,
            data: vec![],
            fd_at: None,
        };
        assert_eq!(classify(&other, "ENOTTY", "ok 0"), Verdict::Divergent);
    }

    #[test]
    fn config_masking() {
        let mut a = vec![0u8; 64];
        let mut b = vec![0u8; 64];
        a[0x10] = 0xfe;
        b[0x10] = 0x00;
        a[0x2c] = 1;
        b[0x2c] = 2;
        let m = config_mask(&a, &b);
        assert!(m[0x10] && m[0x27] && m[0x30] && m[0x3c] && m[0x2c]);
        assert!(!m[0] && !m[0x28] && !m[0x3d]);
        assert_eq!(masked_hex(&[1, 2, 3, 4], 0x0e, &m), "0102....");
        assert_eq!(masked_hex(&[9], 0x100, &m), "09");
    }

    #[test]
    fn data_comparison_policy() {
        let p = profile(Kind::Edu);
        assert!(data_compared(&p, 0, 0, 4));
        assert!(!data_compared(&p, 0, 0x20, 4));
        assert!(!data_compared(&p, 0, 0x04, 8));
        assert!(!data_compared(&profile(Kind::Ivshmem), 2, 0, 4));
        assert!(data_compared(&profile(Kind::Ivshmem), 0, 0, 4));
        assert!(!data_compared(&profile(Kind::Igb), 0, 0, 4));
        assert!(data_compared(&profile(Kind::Igb), 6, 0, 4));
    }
}
