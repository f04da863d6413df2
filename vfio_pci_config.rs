// SPDX-License-Identifier: GPL-2.0

//! Config space virtualization: the capability walk and permission tables of
//! `vfio_pci_config.c`.
//!
//! Userspace may read any field of config space, but what it reads depends on whether the
//! field is virtualized (answered from `vconfig`) or passed through to the hardware. Writes
//! only reach bits the permission tables mark writable; virtualized writable bits land in
//! `vconfig`, the others go to the hardware. A map with one byte per config space byte names
//! the capability there, and so the table and handlers that apply.
//!
//! C source: [`drivers/vfio/pci/vfio_pci_config.c`](srctree/drivers/vfio/pci/vfio_pci_config.c)

use crate::{vfio_pci_priv::IntxMasking, VfioPciCore};
use core::sync::atomic::Ordering;
use kernel::{
    device::Bound,
    pci,
    prelude::*,
    uaccess::{UserPtr, UserSlice},
    uapi,
};

/// `x` of a `pci_regs.h` constant as a config space offset or length.
const fn us(x: u32) -> usize {
    x as usize
}

/// The fake capability ID of the standard header (`PCI_CAP_ID_BASIC`).
const CAP_ID_BASIC: u8 = 0;
/// Map value of bytes no capability claims: raw access (`PCI_CAP_ID_INVALID`).
const CAP_ID_INVALID: u8 = 0xff;
/// Map value of bytes accessed in `vconfig` only (`PCI_CAP_ID_INVALID_VIRT`).
const CAP_ID_INVALID_VIRT: u8 = 0xfe;

const STD_HEADER: usize = us(uapi::PCI_STD_HEADER_SIZEOF);
const CFG_SPACE: usize = us(uapi::PCI_CFG_SPACE_SIZE);
const COMMAND: usize = us(uapi::PCI_COMMAND);
const STATUS: usize = us(uapi::PCI_STATUS);
const BAR0: usize = us(uapi::PCI_BASE_ADDRESS_0);
const BAR5: usize = us(uapi::PCI_BASE_ADDRESS_5);
const ROM: usize = us(uapi::PCI_ROM_ADDRESS);
const INTERRUPT_PIN: usize = us(uapi::PCI_INTERRUPT_PIN);
const CMD_MEMORY: u32 = uapi::PCI_COMMAND_MEMORY;
const CMD_IO: u32 = uapi::PCI_COMMAND_IO;

/// Whether `offset` of the standard header is in a BAR or the ROM BAR (`is_bar()`).
fn is_bar(offset: usize) -> bool {
    (BAR0..BAR5 + 4).contains(&offset) || (ROM..ROM + 4).contains(&offset)
}

/// Length of a standard capability (`pci_cap_length[]`): 0 hides it, 0xff means variable.
fn cap_length(id: u8) -> u32 {
    match u32::from(id) {
        0 => uapi::PCI_STD_HEADER_SIZEOF,
        uapi::PCI_CAP_ID_PM => uapi::PCI_PM_SIZEOF,
        uapi::PCI_CAP_ID_AGP => uapi::PCI_AGP_SIZEOF,
        uapi::PCI_CAP_ID_VPD => uapi::PCI_CAP_VPD_SIZEOF,
        uapi::PCI_CAP_ID_MSI
        | uapi::PCI_CAP_ID_PCIX
        | uapi::PCI_CAP_ID_HT
        | uapi::PCI_CAP_ID_VNDR
        | uapi::PCI_CAP_ID_EXP
        | uapi::PCI_CAP_ID_SATA => 0xff,
        uapi::PCI_CAP_ID_MSIX => uapi::PCI_CAP_MSIX_SIZEOF,
        uapi::PCI_CAP_ID_AF => uapi::PCI_CAP_AF_SIZEOF,
        // Bridge, CompactPCI, debug, hotplug, AGP 8x, secure device, EA: not (yet) exposed.
        _ => 0,
    }
}

/// Length of an extended capability (`pci_ext_cap_length[]`): 0 hides it, 0xff is variable.
fn ext_cap_length(id: u16) -> u32 {
    match u32::from(id) {
        uapi::PCI_EXT_CAP_ID_ERR => uapi::PCI_ERR_ROOT_COMMAND,
        uapi::PCI_EXT_CAP_ID_VC
        | uapi::PCI_EXT_CAP_ID_MFVC
        | uapi::PCI_EXT_CAP_ID_VC9
        | uapi::PCI_EXT_CAP_ID_VNDR
        | uapi::PCI_EXT_CAP_ID_ACS
        | uapi::PCI_EXT_CAP_ID_REBAR
        | uapi::PCI_EXT_CAP_ID_DPA
        | uapi::PCI_EXT_CAP_ID_TPH
        | uapi::PCI_EXT_CAP_ID_DVSEC => 0xff,
        uapi::PCI_EXT_CAP_ID_DSN => uapi::PCI_EXT_CAP_DSN_SIZEOF,
        uapi::PCI_EXT_CAP_ID_PWR => uapi::PCI_EXT_CAP_PWR_SIZEOF,
        uapi::PCI_EXT_CAP_ID_ARI => uapi::PCI_EXT_CAP_ARI_SIZEOF,
        uapi::PCI_EXT_CAP_ID_ATS => uapi::PCI_EXT_CAP_ATS_SIZEOF,
        uapi::PCI_EXT_CAP_ID_SRIOV => uapi::PCI_EXT_CAP_SRIOV_SIZEOF,
        uapi::PCI_EXT_CAP_ID_MCAST => uapi::PCI_EXT_CAP_MCAST_ENDPOINT_SIZEOF,
        uapi::PCI_EXT_CAP_ID_PRI => uapi::PCI_EXT_CAP_PRI_SIZEOF,
        uapi::PCI_EXT_CAP_ID_LTR => uapi::PCI_EXT_CAP_LTR_SIZEOF,
        // Root-only, obsolete, not yet supported and unknown IDs.
        _ => 0,
    }
}

/// How a region's reads are answered (C's `readfn`).
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
enum ReadFn {
    /// Virtualized bits from `vconfig`, the rest from the hardware.
    Default,
    /// The hardware, except the capability ID and next pointer.
    Direct,
    /// The hardware.
    Raw,
    /// `vconfig`.
    Virt,
    /// The standard header: BAR sizing and the virtual memory enable.
    Basic,
    /// MSI: the queue size the interrupt code allows.
    Msi,
}

/// How a region's writes are handled (C's `writefn`); `None` drops them.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
enum WriteFn {
    /// Read-only: writes are dropped.
    None,
    /// Writable bits, virtualized ones to `vconfig`, the others to the hardware.
    Default,
    /// The hardware.
    Raw,
    /// `vconfig`.
    Virt,
    /// COMMAND (memory, I/O and INTx disable) and BAR tracking.
    Basic,
    /// PMCSR power state changes.
    Pm,
    /// VPD address and data.
    Vpd,
    /// PCIe FLR and MRRS.
    Exp,
    /// Advanced Features FLR.
    Af,
    /// MSI queue size and enable.
    Msi,
}

/// Read/write permission bits of a capability, one bit per config space bit (`perm_bits`).
///
/// Any field can be read; a set `virt` bit reads and writes `vconfig`, a set `write` bit
/// lets a write through. The tables are rounded up to a dword, so an access within the
/// capability's last dword stays within them; bytes past a table have no bits set.
struct Perm {
    virt: &'static [u8],
    write: &'static [u8],
    read: ReadFn,
    write_fn: WriteFn,
}

impl Perm {
    /// The `count` bytes of `table` at `offset`, little-endian.
    fn bits(table: &[u8], offset: usize, count: usize) -> u32 {
        let mut bytes = [0u8; 4];
        for (i, byte) in bytes.iter_mut().enumerate().take(count) {
            *byte = table.get(offset + i).copied().unwrap_or(0);
        }
        u32::from_le_bytes(bytes)
    }

    fn virt(&self, offset: usize, count: usize) -> u32 {
        Self::bits(self.virt, offset, count)
    }

    fn write(&self, offset: usize, count: usize) -> u32 {
        Self::bits(self.write, offset, count)
    }
}

const NO_VIRT: u32 = 0;
const ALL_VIRT: u32 = 0xffff_ffff;
const NO_WRITE: u32 = 0;
const ALL_WRITE: u32 = 0xffff_ffff;

/// The bits of a [`Perm`] under construction, `N` rounded up to a dword (`alloc_perm_bits()`).
/// All readable, none writable, none virtualized until set (`p_setb()` etc.).
struct Bits<const N: usize> {
    virt: [u8; N],
    write: [u8; N],
}

// CAST: The `p_set*()` helpers truncate `ALL_VIRT` etc. to the field width, as C does.
impl<const N: usize> Bits<N> {
    const fn new() -> Self {
        Self {
            virt: [0; N],
            write: [0; N],
        }
    }

    const fn set(mut self, off: u32, virt: &[u8], write: &[u8]) -> Self {
        let mut i = 0;
        while i < virt.len() {
            self.virt[off as usize + i] = virt[i];
            self.write[off as usize + i] = write[i];
            i += 1;
        }
        self
    }

    const fn b(self, off: u32, virt: u32, write: u32) -> Self {
        self.set(off, &[virt as u8], &[write as u8])
    }

    const fn w(self, off: u32, virt: u32, write: u32) -> Self {
        self.set(
            off,
            &(virt as u16).to_le_bytes(),
            &(write as u16).to_le_bytes(),
        )
    }

    const fn d(self, off: u32, virt: u32, write: u32) -> Self {
        self.set(off, &virt.to_le_bytes(), &write.to_le_bytes())
    }
}

/// Permissions for the standard header (`init_pci_cap_basic_perm()`).
static BASIC_BITS: Bits<64> = Bits::new()
    // Virtualized for SR-IOV functions, which just have FFFF.
    .w(uapi::PCI_VENDOR_ID, ALL_VIRT, NO_WRITE)
    .w(uapi::PCI_DEVICE_ID, ALL_VIRT, NO_WRITE)
    // INTx disable is used internally for interrupt control, and emulated for functions
    // without PCI 2.3 masking.
    .w(uapi::PCI_COMMAND, uapi::PCI_COMMAND_INTX_DISABLE, ALL_WRITE)
    // The capability list bit, as capabilities may be hidden.
    .w(uapi::PCI_STATUS, uapi::PCI_STATUS_CAP_LIST, NO_WRITE)
    // No harm to write.
    .b(uapi::PCI_CACHE_LINE_SIZE, NO_VIRT, ALL_WRITE)
    .b(uapi::PCI_LATENCY_TIMER, NO_VIRT, ALL_WRITE)
    .b(uapi::PCI_BIST, NO_VIRT, ALL_WRITE)
    // All BARs, the real ones are not the user's.
    .d(uapi::PCI_BASE_ADDRESS_0, ALL_VIRT, ALL_WRITE)
    .d(uapi::PCI_BASE_ADDRESS_1, ALL_VIRT, ALL_WRITE)
    .d(uapi::PCI_BASE_ADDRESS_2, ALL_VIRT, ALL_WRITE)
    .d(uapi::PCI_BASE_ADDRESS_3, ALL_VIRT, ALL_WRITE)
    .d(uapi::PCI_BASE_ADDRESS_4, ALL_VIRT, ALL_WRITE)
    .d(uapi::PCI_BASE_ADDRESS_5, ALL_VIRT, ALL_WRITE)
    .d(uapi::PCI_ROM_ADDRESS, ALL_VIRT, ALL_WRITE)
    // The capability chain, to skip hidden capabilities.
    .b(uapi::PCI_CAPABILITY_LIST, ALL_VIRT, NO_WRITE)
    // Sometimes used by software, just virtualize.
    .b(uapi::PCI_INTERRUPT_LINE, ALL_VIRT, ALL_WRITE)
    // The pin, to hide INTx.
    .b(uapi::PCI_INTERRUPT_PIN, ALL_VIRT, NO_WRITE);

/// Power Management (`init_pci_cap_pm_perm()`).
static PM_BITS: Bits<8> = Bits::new()
    // The next pointer of every capability is virtualized, to hide capabilities.
    .b(uapi::PCI_CAP_LIST_NEXT, ALL_VIRT, NO_WRITE)
    // PME events are handled by the host: PME_Support reads as zero.
    .w(uapi::PCI_PM_PMC, uapi::PCI_PM_CAP_PME_MASK, NO_WRITE)
    // The power state is changed by the driver on the user's behalf; PME_Status and PME_En
    // are virtualized (and cleared) as the user cannot handle PME from D3cold.
    .d(
        uapi::PCI_PM_CTRL,
        uapi::PCI_PM_CTRL_PME_ENABLE | uapi::PCI_PM_CTRL_PME_STATUS,
        !(uapi::PCI_PM_CTRL_PME_ENABLE
            | uapi::PCI_PM_CTRL_PME_STATUS
            | uapi::PCI_PM_CTRL_STATE_MASK),
    );

/// Vital Product Data (`init_pci_cap_vpd_perm()`): address and data go through
/// `pci_read_vpd()` / `pci_write_vpd()`.
static VPD_BITS: Bits<8> = Bits::new()
    .b(uapi::PCI_CAP_LIST_NEXT, ALL_VIRT, NO_WRITE)
    .w(uapi::PCI_VPD_ADDR, ALL_VIRT, ALL_WRITE)
    .d(uapi::PCI_VPD_DATA, ALL_VIRT, ALL_WRITE);

/// PCI-X, sized for version 2 (`init_pci_cap_pcix_perm()`).
static PCIX_BITS: Bits<24> = Bits::new()
    .b(uapi::PCI_CAP_LIST_NEXT, ALL_VIRT, NO_WRITE)
    .w(uapi::PCI_X_CMD, NO_VIRT, ALL_WRITE)
    .d(uapi::PCI_X_ECC_CSR, NO_VIRT, ALL_WRITE);

/// PCI Express, sized for the largest version (`init_pci_cap_exp_perm()`).
static EXP_BITS: Bits<52> = Bits::new()
    .b(uapi::PCI_CAP_LIST_NEXT, ALL_VIRT, NO_WRITE)
    // Device control is writable except Phantom Functions (could confuse the IOMMU), MPS
    // (could break other devices' traffic) and ARI (set at probe). FLR and MRRS are
    // virtualized and handled by `exp_write()`.
    .w(
        uapi::PCI_EXP_DEVCTL,
        uapi::PCI_EXP_DEVCTL_BCR_FLR | uapi::PCI_EXP_DEVCTL_PAYLOAD | uapi::PCI_EXP_DEVCTL_READRQ,
        !uapi::PCI_EXP_DEVCTL_PHANTOM,
    )
    .w(uapi::PCI_EXP_DEVCTL2, NO_VIRT, !uapi::PCI_EXP_DEVCTL2_ARI);

/// Advanced Features (`init_pci_cap_af_perm()`), the FLR bit handled by `af_write()`.
static AF_BITS: Bits<8> = Bits::new()
    .b(uapi::PCI_CAP_LIST_NEXT, ALL_VIRT, NO_WRITE)
    .b(
        uapi::PCI_AF_CTRL,
        uapi::PCI_AF_CTRL_FLR,
        uapi::PCI_AF_CTRL_FLR,
    );

/// The writable uncorrectable error bits of AER.
const AER_UNC: u32 = uapi::PCI_ERR_UNC_UND
    | uapi::PCI_ERR_UNC_DLP
    | uapi::PCI_ERR_UNC_SURPDN
    | uapi::PCI_ERR_UNC_POISON_TLP
    | uapi::PCI_ERR_UNC_FCP
    | uapi::PCI_ERR_UNC_COMP_TIME
    | uapi::PCI_ERR_UNC_COMP_ABORT
    | uapi::PCI_ERR_UNC_UNX_COMP
    | uapi::PCI_ERR_UNC_RX_OVER
    | uapi::PCI_ERR_UNC_MALF_TLP
    | uapi::PCI_ERR_UNC_ECRC
    | uapi::PCI_ERR_UNC_UNSUP
    | uapi::PCI_ERR_UNC_ACSV
    | uapi::PCI_ERR_UNC_INTN
    | uapi::PCI_ERR_UNC_MCBTLP
    | uapi::PCI_ERR_UNC_ATOMEG
    | uapi::PCI_ERR_UNC_TLPPRE;

/// The writable correctable error bits of AER.
const AER_COR: u32 = uapi::PCI_ERR_COR_RCVR
    | uapi::PCI_ERR_COR_BAD_TLP
    | uapi::PCI_ERR_COR_BAD_DLLP
    | uapi::PCI_ERR_COR_REP_ROLL
    | uapi::PCI_ERR_COR_REP_TIMER
    | uapi::PCI_ERR_COR_ADV_NFAT
    | uapi::PCI_ERR_COR_INTERNAL
    | uapi::PCI_ERR_COR_LOG_OVER;

/// Advanced Error Reporting (`init_pci_ext_cap_err_perm()`).
static ERR_BITS: Bits<44> = Bits::new()
    // The first dword of every extended capability holds the next pointer.
    .d(0, ALL_VIRT, NO_WRITE)
    .d(uapi::PCI_ERR_UNCOR_STATUS, NO_VIRT, AER_UNC)
    .d(uapi::PCI_ERR_UNCOR_MASK, NO_VIRT, AER_UNC)
    .d(uapi::PCI_ERR_UNCOR_SEVER, NO_VIRT, AER_UNC)
    .d(uapi::PCI_ERR_COR_STATUS, NO_VIRT, AER_COR)
    .d(uapi::PCI_ERR_COR_MASK, NO_VIRT, AER_COR)
    .d(
        uapi::PCI_ERR_CAP,
        NO_VIRT,
        uapi::PCI_ERR_CAP_ECRC_GENE | uapi::PCI_ERR_CAP_ECRC_CHKE,
    );

/// Power Budgeting (`init_pci_ext_cap_pwr_perm()`): the data selector is writable, the data
/// it selects stays read-only.
static PWR_BITS: Bits<16> =
    Bits::new()
        .d(0, ALL_VIRT, NO_WRITE)
        .b(uapi::PCI_PWR_DATA, NO_VIRT, ALL_WRITE);

/// MSI of a function with capability flags `flags`, `N` its length rounded up to a dword
/// (`init_pci_cap_msi_perm()`).
const fn msi_bits<const N: usize>(flags: u32) -> Bits<N> {
    // The upper byte of the control register is reserved.
    let bits = Bits::new()
        .b(uapi::PCI_CAP_LIST_NEXT, ALL_VIRT, NO_WRITE)
        .b(uapi::PCI_MSI_FLAGS, ALL_VIRT, ALL_WRITE)
        .d(uapi::PCI_MSI_ADDRESS_LO, ALL_VIRT, ALL_WRITE);
    let mask = flags & uapi::PCI_MSI_FLAGS_MASKBIT != 0;
    if flags & uapi::PCI_MSI_FLAGS_64BIT != 0 {
        let bits = bits.d(uapi::PCI_MSI_ADDRESS_HI, ALL_VIRT, ALL_WRITE).w(
            uapi::PCI_MSI_DATA_64,
            ALL_VIRT,
            ALL_WRITE,
        );
        if mask {
            bits.d(uapi::PCI_MSI_MASK_64, NO_VIRT, ALL_WRITE).d(
                uapi::PCI_MSI_PENDING_64,
                NO_VIRT,
                ALL_WRITE,
            )
        } else {
            bits
        }
    } else {
        let bits = bits.w(uapi::PCI_MSI_DATA_32, ALL_VIRT, ALL_WRITE);
        if mask {
            bits.d(uapi::PCI_MSI_MASK_32, NO_VIRT, ALL_WRITE).d(
                uapi::PCI_MSI_PENDING_32,
                NO_VIRT,
                ALL_WRITE,
            )
        } else {
            bits
        }
    }
}

// MSI is 10 bytes, 4 more with 64-bit addresses and 10 more with per-vector masking.
static MSI_32_BITS: Bits<12> = msi_bits(0);
static MSI_64_BITS: Bits<16> = msi_bits(uapi::PCI_MSI_FLAGS_64BIT);
static MSI_32_MASK_BITS: Bits<20> = msi_bits(uapi::PCI_MSI_FLAGS_MASKBIT);
static MSI_64_MASK_BITS: Bits<24> =
    msi_bits(uapi::PCI_MSI_FLAGS_64BIT | uapi::PCI_MSI_FLAGS_MASKBIT);

macro_rules! perm {
    ($bits:expr, $read:ident, $write:ident) => {
        Perm {
            virt: &$bits.virt,
            write: &$bits.write,
            read: ReadFn::$read,
            write_fn: WriteFn::$write,
        }
    };
    ($read:ident, $write:ident) => {
        Perm {
            virt: &[],
            write: &[],
            read: ReadFn::$read,
            write_fn: WriteFn::$write,
        }
    };
}

static BASIC_PERM: Perm = perm!(BASIC_BITS, Basic, Basic);
static PM_PERM: Perm = perm!(PM_BITS, Default, Pm);
static VPD_PERM: Perm = perm!(VPD_BITS, Default, Vpd);
static PCIX_PERM: Perm = perm!(PCIX_BITS, Default, Default);
static EXP_PERM: Perm = perm!(EXP_BITS, Default, Exp);
static AF_PERM: Perm = perm!(AF_BITS, Default, Af);
static ERR_PERM: Perm = perm!(ERR_BITS, Default, Default);
static PWR_PERM: Perm = perm!(PWR_BITS, Default, Default);
static MSI_32_PERM: Perm = perm!(MSI_32_BITS, Msi, Msi);
static MSI_64_PERM: Perm = perm!(MSI_64_BITS, Msi, Msi);
static MSI_32_MASK_PERM: Perm = perm!(MSI_32_MASK_BITS, Msi, Msi);
static MSI_64_MASK_PERM: Perm = perm!(MSI_64_MASK_BITS, Msi, Msi);
/// Capabilities without a table: read-only, ID and next virtualized (`direct_ro_perms`).
static DIRECT_RO_PERM: Perm = perm!(Direct, None);
/// Vendor capabilities: read through, written raw.
static VNDR_PERM: Perm = perm!(Direct, Raw);
/// Bytes no capability claims: raw, as some devices hide registers between capabilities
/// (`unassigned_perms`).
static UNASSIGNED_PERM: Perm = perm!(Raw, Raw);
/// Bytes that only live in `vconfig` (`virt_perms`).
static VIRT_PERM: Perm = perm!(Virt, Virt);

/// The table of standard capability `id` (`cap_perms[]`).
fn cap_perm(id: u8) -> &'static Perm {
    match u32::from(id) {
        0 => &BASIC_PERM,
        uapi::PCI_CAP_ID_PM => &PM_PERM,
        uapi::PCI_CAP_ID_VPD => &VPD_PERM,
        uapi::PCI_CAP_ID_PCIX => &PCIX_PERM,
        uapi::PCI_CAP_ID_VNDR => &VNDR_PERM,
        uapi::PCI_CAP_ID_EXP => &EXP_PERM,
        uapi::PCI_CAP_ID_AF => &AF_PERM,
        _ => &DIRECT_RO_PERM,
    }
}

/// The table of extended capability `id` (`ecap_perms[]`).
fn ecap_perm(id: u8) -> &'static Perm {
    match u32::from(id) {
        uapi::PCI_EXT_CAP_ID_ERR => &ERR_PERM,
        uapi::PCI_EXT_CAP_ID_PWR => &PWR_PERM,
        uapi::PCI_EXT_CAP_ID_VNDR | uapi::PCI_EXT_CAP_ID_DVSEC => &VNDR_PERM,
        _ => &DIRECT_RO_PERM,
    }
}

/// The MSI table for a function whose MSI capability has `flags`.
fn msi_perm(flags: u16) -> &'static Perm {
    let flags = u32::from(flags);
    match (
        flags & uapi::PCI_MSI_FLAGS_64BIT != 0,
        flags & uapi::PCI_MSI_FLAGS_MASKBIT != 0,
    ) {
        (false, false) => &MSI_32_PERM,
        (true, false) => &MSI_64_PERM,
        (false, true) => &MSI_32_MASK_PERM,
        (true, true) => &MSI_64_MASK_PERM,
    }
}

/// What the capability walk reports, as C's `pci_dbg()` / `pci_warn()` in the walk.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
enum WalkNote {
    /// A capability of unknown or zero length is left out of the chain.
    Hidden { ext: bool, id: u16, pos: usize },
    /// A capability overlaps one already mapped.
    Conflict {
        ext: bool,
        pos: usize,
        was: u8,
        now: u16,
    },
    /// A variable-length capability whose length is not known.
    UnknownLength { ext: bool, id: u16, pos: usize },
}

/// The config space the walk reads: a real function, or a test's synthetic one.
trait ConfigSource {
    /// Size of config space (`cfg_size`).
    fn cfg_size(&self) -> usize;
    /// The cached PCI Express Capabilities register (`pcie_caps_reg()`).
    fn pcie_flags(&self) -> u16;
    /// Reads config space as `pci_read_config_byte()` does.
    fn read8(&self, pos: usize) -> Result<u8>;
    /// Reads config space as `pci_read_config_word()` does: `pos` must be aligned.
    fn read16(&self, pos: usize) -> Result<u16>;
    /// Reads config space as `pci_read_config_dword()` does: `pos` must be aligned.
    fn read32(&self, pos: usize) -> Result<u32>;
    /// Reports what the walk found.
    fn note(&self, note: WalkNote);
}

/// A config space offset as the PCI accessors take it; beyond them if it does not fit.
fn cfg_pos(pos: usize) -> u16 {
    u16::try_from(pos).unwrap_or(u16::MAX)
}

impl ConfigSource for pci::Device<Bound> {
    fn cfg_size(&self) -> usize {
        self.cfg_size_bytes()
    }

    fn pcie_flags(&self) -> u16 {
        pci::Device::pcie_flags(self)
    }

    fn read8(&self, pos: usize) -> Result<u8> {
        self.read_config_byte(cfg_pos(pos))
    }

    fn read16(&self, pos: usize) -> Result<u16> {
        self.read_config_word(cfg_pos(pos))
    }

    fn read32(&self, pos: usize) -> Result<u32> {
        self.read_config_dword(cfg_pos(pos))
    }

    fn note(&self, note: WalkNote) {
        match note {
            WalkNote::Hidden {
                ext: false,
                id,
                pos,
            } => {
                dev_dbg!(self, "vfio_cap_init: hiding cap {:#x}@{:#x}\n", id, pos)
            }
            WalkNote::Hidden { ext: true, id, pos } => {
                dev_dbg!(self, "vfio_ecap_init: hiding ecap {:#x}@{:#x}\n", id, pos)
            }
            WalkNote::Conflict {
                ext: false,
                pos,
                was,
                now,
            } => dev_warn!(
                self,
                "vfio_cap_init: PCI config conflict @{:#x}, was cap {:#x} now cap {:#x}\n",
                pos,
                was,
                now
            ),
            WalkNote::Conflict {
                ext: true,
                pos,
                was,
                now,
            } => dev_warn!(
                self,
                "vfio_ecap_init: PCI config conflict @{:#x}, was ecap {:#x} now ecap {:#x}\n",
                pos,
                was,
                now
            ),
            WalkNote::UnknownLength {
                ext: false,
                id,
                pos,
            } => dev_warn!(
                self,
                "vfio_cap_len: unknown length for PCI cap {:#x}@{:#x}\n",
                id,
                pos
            ),
            WalkNote::UnknownLength { ext: true, id, pos } => dev_warn!(
                self,
                "vfio_ext_cap_len: unknown length for PCI ecap {:#x}@{:#x}\n",
                id,
                pos
            ),
        }
    }
}

/// The virtualized config space of an open function.
///
/// # Invariants
///
/// `map` and `vconfig` have the same length, the config space size: at least 256 bytes.
struct Virt {
    /// The capability ID owning each byte, or `CAP_ID_INVALID{,_VIRT}` (`pci_config_map`).
    map: KVec<u8>,
    /// The virtualized config space (`vconfig`), little-endian as config space is.
    vconfig: KVec<u8>,
    /// The MSI table, chosen by the first MSI capability (`msi_perm`).
    msi_perm: Option<&'static Perm>,
    /// The virtual BARs need sizing fixups before they are read (`bardirty`).
    bardirty: bool,
    /// BAR0-5 and the ROM BAR at open, restored after a reset the driver did not see
    /// (`rbar`).
    rbar: [u32; 7],
}

impl Virt {
    /// A config space of `size` bytes, all unassigned but the standard header.
    fn new(size: usize) -> Result<Self> {
        if size < CFG_SPACE {
            return Err(EINVAL);
        }
        let mut map = KVec::with_capacity(size, GFP_KERNEL_ACCOUNT)?;
        map.extend_with(STD_HEADER, CAP_ID_BASIC, GFP_KERNEL_ACCOUNT)?;
        map.extend_with(size - STD_HEADER, CAP_ID_INVALID, GFP_KERNEL_ACCOUNT)?;
        let mut vconfig = KVec::with_capacity(size, GFP_KERNEL_ACCOUNT)?;
        vconfig.extend_with(size, 0, GFP_KERNEL_ACCOUNT)?;
        // INVARIANT: Both are `size` bytes long.
        Ok(Self {
            map,
            vconfig,
            msi_perm: None,
            bardirty: true,
            rbar: [0; 7],
        })
    }

    fn size(&self) -> usize {
        self.vconfig.len()
    }

    /// The `count` (up to 4) bytes of `vconfig` at `pos`; bytes past its end read as 0.
    fn get(&self, pos: usize, count: usize) -> u32 {
        Perm::bits(&self.vconfig, pos, count)
    }

    /// Stores the low `count` bytes of `val` in `vconfig` at `pos`, none past its end.
    fn set(&mut self, pos: usize, count: usize, val: u32) {
        for (i, byte) in val.to_le_bytes().into_iter().enumerate().take(count) {
            if let Some(v) = self.vconfig.get_mut(pos + i) {
                *v = byte;
            }
        }
    }

    fn get8(&self, pos: usize) -> u8 {
        self.get(pos, 1) as u8
    }

    fn get16(&self, pos: usize) -> u16 {
        self.get(pos, 2) as u16
    }

    fn set16(&mut self, pos: usize, val: u16) {
        self.set(pos, 2, val.into());
    }

    fn command(&self) -> u32 {
        u32::from(self.get16(COMMAND))
    }

    /// Where the capability holding `pos` starts (`vfio_find_cap_start()`); 0 in the
    /// standard header.
    fn find_cap_start(&self, mut pos: usize) -> usize {
        let base = if pos >= CFG_SPACE {
            CFG_SPACE
        } else {
            STD_HEADER
        };
        let cap = self.map[pos];
        if cap == CAP_ID_BASIC {
            return 0;
        }
        // Abutting capabilities of the same type look like one, as in C.
        while pos > base && self.map[pos - 1] == cap {
            pos -= 1;
        }
        pos
    }

    /// The bytes left from `pos` to the end of its dword or its capability
    /// (`vfio_pci_cap_remaining_dword()`).
    fn cap_remaining_dword(&self, pos: usize) -> usize {
        let cap = self.map[pos];
        let mut i = 1;
        while (pos + i) % 4 != 0 && self.map.get(pos + i) == Some(&cap) {
            i += 1;
        }
        i
    }

    /// The bytes of an access of `count` at `pos` done in one go: aligned, a dword at most,
    /// and within one capability. The caller goes on to the next chunk.
    fn chunk(&self, pos: usize, count: usize) -> usize {
        let count = count.min(self.cap_remaining_dword(pos));
        if count >= 4 && pos % 4 == 0 {
            4
        } else if count >= 2 && pos % 2 == 0 {
            2
        } else {
            1
        }
    }

    /// What a direct read of `count` bytes at `pos`, `offset` into its capability, returns
    /// when the hardware has `hw` there: the capability ID and next pointer (the whole
    /// header of an extended capability) come from `vconfig`.
    fn direct_mangle(&self, pos: usize, offset: usize, count: usize, hw: u32) -> u32 {
        if pos >= CFG_SPACE {
            if offset < 4 {
                return self.get(pos, count);
            }
        } else if pos >= STD_HEADER {
            if offset == us(uapi::PCI_CAP_LIST_ID) && count > 1 {
                let n = count.min(us(uapi::PCI_CAP_FLAGS));
                return (hw & (u32::MAX << (n * 8))) | self.get(pos, n);
            } else if offset == us(uapi::PCI_CAP_LIST_NEXT) {
                return (hw & !0xff) | self.get(pos, 1);
            }
        }
        hw
    }

    /// Reads `size` bytes at `offset` into `vconfig` in the largest aligned accesses
    /// (`vfio_fill_vconfig_bytes()`).
    fn fill(&mut self, dev: &impl ConfigSource, mut offset: usize, mut size: usize) -> Result {
        while size != 0 {
            let filled = if size >= 4 && offset % 4 == 0 {
                let val = dev.read32(offset)?;
                self.set(offset, 4, val);
                4
            } else if size >= 2 && offset % 2 == 0 {
                let val = dev.read16(offset)?;
                self.set(offset, 2, val.into());
                2
            } else {
                let val = dev.read8(offset)?;
                self.set(offset, 1, val.into());
                1
            };
            offset += filled;
            size -= filled;
        }
        Ok(())
    }

    /// Claims `len` bytes at `pos` for capability `id`, warning about overlaps, and fills
    /// them in `vconfig`. C writes past the map for a capability running off the end of
    /// config space; here it is cut at the end.
    fn claim(
        &mut self,
        dev: &impl ConfigSource,
        ext: bool,
        id: u16,
        pos: usize,
        len: usize,
    ) -> Result {
        let len = len.min(self.size().saturating_sub(pos));
        if len == 0 {
            return Ok(());
        }
        for i in pos..pos + len {
            if self.map[i] != CAP_ID_INVALID {
                dev.note(WalkNote::Conflict {
                    ext,
                    pos: i,
                    was: self.map[i],
                    now: id,
                });
            }
        }
        // CAST: Extended IDs are mapped by their low byte, as C's `memset()` does.
        self.map[pos..pos + len].fill(id as u8);
        self.fill(dev, pos, len)
    }

    /// The length of standard capability `cap` at `pos` (`vfio_cap_len()`).
    fn cap_len(
        &mut self,
        dev: &impl ConfigSource,
        ext_caps: &mut bool,
        cap: u8,
        pos: usize,
    ) -> Result<usize> {
        let pcie_type = (u32::from(dev.pcie_flags()) & uapi::PCI_EXP_FLAGS_TYPE) >> 4;
        match u32::from(cap) {
            uapi::PCI_CAP_ID_MSI => {
                let flags = dev.read16(pos + us(uapi::PCI_MSI_FLAGS))?;
                let mut len = 10;
                if u32::from(flags) & uapi::PCI_MSI_FLAGS_64BIT != 0 {
                    len += 4;
                }
                if u32::from(flags) & uapi::PCI_MSI_FLAGS_MASKBIT != 0 {
                    len += 10;
                }
                // The first MSI capability chooses the table.
                self.msi_perm.get_or_insert(msi_perm(flags));
                Ok(len)
            }
            uapi::PCI_CAP_ID_PCIX => {
                let cmd = dev.read16(pos + us(uapi::PCI_X_CMD))?;
                if (cmd >> 12) & 3 == 0 {
                    return Ok(us(uapi::PCI_CAP_PCIX_SIZEOF_V0));
                }
                if dev.cfg_size() > CFG_SPACE {
                    // C tests an uninitialized value if this read fails.
                    *ext_caps = dev.read32(CFG_SPACE).unwrap_or(0) != 0;
                }
                Ok(us(uapi::PCI_CAP_PCIX_SIZEOF_V2))
            }
            // The length follows the next pointer.
            uapi::PCI_CAP_ID_VNDR => Ok(dev.read8(pos + us(uapi::PCI_CAP_FLAGS))?.into()),
            uapi::PCI_CAP_ID_EXP => {
                if dev.cfg_size() > CFG_SPACE {
                    *ext_caps = dev.read32(CFG_SPACE).unwrap_or(0) != 0;
                }
                let rc_end = pcie_type == uapi::PCI_EXP_TYPE_RC_END;
                Ok(
                    match (
                        u32::from(dev.pcie_flags()) & uapi::PCI_EXP_FLAGS_VERS == 1,
                        rc_end,
                    ) {
                        // "All Devices" only, no link.
                        (true, true) => 0xc,
                        (true, false) => us(uapi::PCI_CAP_EXP_ENDPOINT_SIZEOF_V1),
                        // No link.
                        (false, true) => 0x2c,
                        (false, false) => us(uapi::PCI_CAP_EXP_ENDPOINT_SIZEOF_V2),
                    },
                )
            }
            uapi::PCI_CAP_ID_HT => {
                let byte = dev.read8(pos + 3)?;
                Ok(if u32::from(byte) & uapi::HT_3BIT_CAP_MASK != 0 {
                    us(uapi::HT_CAP_SIZEOF_SHORT)
                } else {
                    us(uapi::HT_CAP_SIZEOF_LONG)
                })
            }
            uapi::PCI_CAP_ID_SATA => {
                let byte = dev.read8(pos + us(uapi::PCI_SATA_REGS))?;
                Ok(
                    if u32::from(byte) & uapi::PCI_SATA_REGS_MASK == uapi::PCI_SATA_REGS_INLINE {
                        us(uapi::PCI_SATA_SIZEOF_LONG)
                    } else {
                        us(uapi::PCI_SATA_SIZEOF_SHORT)
                    },
                )
            }
            _ => {
                dev.note(WalkNote::UnknownLength {
                    ext: false,
                    id: cap.into(),
                    pos,
                });
                Ok(0)
            }
        }
    }

    /// Walks the standard capability chain (`vfio_cap_init()`), hiding what has no length
    /// and clearing the capability list bit if nothing is left.
    fn cap_init(&mut self, dev: &impl ConfigSource, ext_caps: &mut bool) -> Result {
        let status = dev.read16(STATUS)?;
        if u32::from(status) & uapi::PCI_STATUS_CAP_LIST == 0 {
            return Ok(());
        }
        let mut pos = dev.read8(us(uapi::PCI_CAPABILITY_LIST))?;
        // The pointer to patch when a capability is skipped.
        let mut prev = us(uapi::PCI_CAPABILITY_LIST);
        let mut caps = 0;

        // Capabilities are dwords at least: this bounds a looping chain.
        let mut loops = (CFG_SPACE - STD_HEADER) / us(uapi::PCI_CAP_SIZEOF);
        while pos != 0 && loops > 0 {
            loops -= 1;
            let p = usize::from(pos);
            let cap = dev.read8(p)?;
            let next = dev.read8(p + us(uapi::PCI_CAP_LIST_NEXT))?;

            // ID 0 is a NULL capability, which would look like our fake basic header.
            let mut len = 0;
            if cap != 0 && u32::from(cap) <= uapi::PCI_CAP_ID_MAX {
                len = cap_length(cap) as usize;
                if len == 0xff {
                    len = self.cap_len(dev, ext_caps, cap, p)?;
                }
            }

            if len == 0 {
                dev.note(WalkNote::Hidden {
                    ext: false,
                    id: cap.into(),
                    pos: p,
                });
                self.set(prev, 1, next.into());
                pos = next;
                continue;
            }

            self.claim(dev, false, cap.into(), p, len)?;
            if u32::from(cap) == uapi::PCI_CAP_ID_PM {
                // PME_Support, PME_Status and PME_En read as zero.
                let pmc = p + us(uapi::PCI_PM_PMC);
                let ctrl = p + us(uapi::PCI_PM_CTRL);
                self.set16(pmc, self.get16(pmc) & !(uapi::PCI_PM_CAP_PME_MASK as u16));
                let pme = (uapi::PCI_PM_CTRL_PME_ENABLE | uapi::PCI_PM_CTRL_PME_STATUS) as u16;
                self.set16(ctrl, self.get16(ctrl) & !pme);
            }

            prev = p + us(uapi::PCI_CAP_LIST_NEXT);
            pos = next;
            caps += 1;
        }

        if caps == 0 {
            let status = self.get16(STATUS) & !(uapi::PCI_STATUS_CAP_LIST as u16);
            self.set16(STATUS, status);
        }
        Ok(())
    }

    /// The length of extended capability `ecap` at `epos` (`vfio_ext_cap_len()`).
    fn ext_cap_len(dev: &impl ConfigSource, ecap: u16, epos: usize) -> Result<usize> {
        let len = match u32::from(ecap) {
            uapi::PCI_EXT_CAP_ID_VNDR => {
                (dev.read32(epos + us(uapi::PCI_VNDR_HEADER))? >> 20) & 0xfff
            }
            uapi::PCI_EXT_CAP_ID_VC | uapi::PCI_EXT_CAP_ID_VC9 | uapi::PCI_EXT_CAP_ID_MFVC => {
                vc_cap_len(dev, epos)?
            }
            uapi::PCI_EXT_CAP_ID_ACS => {
                let byte = dev.read8(epos + us(uapi::PCI_ACS_CAP))?;
                if u32::from(byte) & uapi::PCI_ACS_EC != 0 {
                    let byte = u32::from(dev.read8(epos + us(uapi::PCI_ACS_EGRESS_BITS))?);
                    let bits = if byte != 0 {
                        byte.next_multiple_of(32)
                    } else {
                        256
                    };
                    8 + bits / 8
                } else {
                    8
                }
            }
            uapi::PCI_EXT_CAP_ID_REBAR => {
                let byte = u32::from(dev.read8(epos + us(uapi::PCI_REBAR_CTRL))?);
                let nbar =
                    (byte & uapi::PCI_REBAR_CTRL_NBAR_MASK) >> uapi::PCI_REBAR_CTRL_NBAR_SHIFT;
                4 + nbar * 8
            }
            uapi::PCI_EXT_CAP_ID_DPA => {
                let byte = u32::from(dev.read8(epos + us(uapi::PCI_DPA_CAP))?);
                uapi::PCI_DPA_BASE_SIZEOF + (byte & uapi::PCI_DPA_CAP_SUBSTATE_MASK) + 1
            }
            uapi::PCI_EXT_CAP_ID_TPH => {
                let dword = dev.read32(epos + us(uapi::PCI_TPH_CAP))?;
                if dword & uapi::PCI_TPH_CAP_LOC_MASK == uapi::PCI_TPH_LOC_CAP {
                    let sts = (dword & uapi::PCI_TPH_CAP_ST_MASK) >> uapi::PCI_TPH_CAP_ST_SHIFT;
                    uapi::PCI_TPH_BASE_SIZEOF + sts * 2 + 2
                } else {
                    uapi::PCI_TPH_BASE_SIZEOF
                }
            }
            uapi::PCI_EXT_CAP_ID_DVSEC => {
                (dev.read32(epos + us(uapi::PCI_DVSEC_HEADER1))? >> 20) & 0xfff
            }
            _ => {
                dev.note(WalkNote::UnknownLength {
                    ext: true,
                    id: ecap,
                    pos: epos,
                });
                0
            }
        };
        Ok(us(len))
    }

    /// Walks the extended capability chain (`vfio_ecap_init()`). Hidden capabilities are
    /// skipped by patching the previous header, or, for the first one, replaced by a
    /// placeholder whose ID and version read as zero.
    fn ecap_init(&mut self, dev: &impl ConfigSource, ext_caps: bool) -> Result {
        if !ext_caps {
            return Ok(());
        }
        let mut epos = CFG_SPACE;
        let mut prev: Option<usize> = None;
        let mut ecaps = 0;

        // Bounds a looping chain.
        let mut loops = (dev.cfg_size().saturating_sub(CFG_SPACE)) / us(uapi::PCI_CAP_SIZEOF);
        while loops > 0 && epos >= CFG_SPACE {
            loops -= 1;
            let header = dev.read32(epos)?;
            let ecap = header as u16;
            let next = us((header >> 20) & 0xffc);
            let mut hidden = false;

            let mut len = 0;
            if u32::from(ecap) <= uapi::PCI_EXT_CAP_ID_MAX {
                len = ext_cap_length(ecap) as usize;
                if len == 0xff {
                    len = Self::ext_cap_len(dev, ecap, epos)?;
                }
            }

            if len == 0 {
                dev.note(WalkNote::Hidden {
                    ext: true,
                    id: ecap,
                    pos: epos,
                });
                // Not the first in the chain: skip over it.
                if let Some(prev) = prev {
                    epos = next;
                    // CAST: `next` is at most 0xffc.
                    let val = (self.get(prev, 4) & !(0xffc << 20)) | ((next as u32) << 20);
                    self.set(prev, 4, val);
                    continue;
                }
                // The first anchors the chain: a placeholder the direct read virtualizes.
                len = us(uapi::PCI_CAP_SIZEOF);
                hidden = true;
            }

            self.claim(dev, true, ecap, epos, len)?;

            // A placeholder keeps only its next pointer. Only real capabilities count.
            if hidden {
                self.set(epos, 4, self.get(epos, 4) & (0xffc << 20));
            } else {
                ecaps += 1;
            }

            prev = Some(epos);
            epos = next;
        }

        // XXX as in C: the spec says ID 0, version 0, next 0 when there are no ecaps.
        if ecaps == 0 {
            self.set(CFG_SPACE, 4, 0);
        }
        Ok(())
    }
}

/// The length of a VC, VC9 or MFVC capability at `pos` (`vfio_vc_cap_len()`).
fn vc_cap_len(dev: &impl ConfigSource, pos: usize) -> Result<u32> {
    let evcc = dev.read32(pos + us(uapi::PCI_VC_PORT_CAP1))? & uapi::PCI_VC_CAP1_EVCC;
    let cap2 = dev.read32(pos + us(uapi::PCI_VC_PORT_CAP2))?;
    let phases = if cap2 & uapi::PCI_VC_CAP2_128_PHASE != 0 {
        128
    } else if cap2 & uapi::PCI_VC_CAP2_64_PHASE != 0 {
        64
    } else if cap2 & uapi::PCI_VC_CAP2_32_PHASE != 0 {
        32
    } else {
        0
    };
    let vc_arb = phases * 4;

    // Port and function arbitration tables are never writable, so their size is a guess.
    let mut len = uapi::PCI_CAP_VC_BASE_SIZEOF + (1 + evcc) * uapi::PCI_CAP_VC_PER_VC_SIZEOF;
    if vc_arb != 0 {
        len = len.next_multiple_of(16) + vc_arb / 8;
    }
    Ok(len)
}

/// What the BAR fixup needs to know of a BAR (`pci_resource_*()`).
#[derive(Copy, Clone, Default)]
struct BarResource {
    /// The host assigned it (`pci_resource_start() != 0`).
    assigned: bool,
    /// Its size.
    len: u64,
    /// Its flags as BAR bits (`vfio_generate_bar_flags()`); unused for the ROM.
    flags: u32,
}

impl BarResource {
    fn of(pdev: &pci::Device, bar: u32) -> Self {
        let flags = match pdev.resource_flags(bar) {
            Ok(f) if f.is_io() => uapi::PCI_BASE_ADDRESS_SPACE_IO,
            Ok(f) => {
                let mut val = uapi::PCI_BASE_ADDRESS_SPACE_MEMORY;
                if f.is_prefetch() {
                    val |= uapi::PCI_BASE_ADDRESS_MEM_PREFETCH;
                }
                if f.is_mem_64() {
                    val |= uapi::PCI_BASE_ADDRESS_MEM_TYPE_64;
                }
                val
            }
            Err(_) => 0,
        };
        Self {
            assigned: pdev.resource_start(bar).unwrap_or(0) != 0,
            len: pdev.resource_len(bar).unwrap_or(0),
            flags,
        }
    }
}

/// Makes the virtual BARs of `vconfig` read as hardware would: the written address masked
/// to the BAR size, with the BAR's flags, so that sizing with all ones works
/// (`vfio_bar_fixup()`). `res` holds BAR0-5 and the ROM; `platform_rom` is the length of a
/// shadow ROM.
fn bar_fixup(virt: &mut Virt, res: &[BarResource; 7], platform_rom: Option<usize>) {
    let mut i = 0;
    let mut pos = BAR0;
    while i < 6 {
        let r = res[i];
        if !r.assigned {
            // Unmapped by the host: unimplemented for the user.
            virt.set(pos, 4, 0);
        } else {
            let mask = !r.len.wrapping_sub(1);
            // CAST: The low half of the mask; the high half goes to the upper BAR.
            let mut vbar = virt.get(pos, 4) & mask as u32;
            vbar |= r.flags;
            virt.set(pos, 4, vbar);
            if vbar & uapi::PCI_BASE_ADDRESS_MEM_TYPE_64 != 0 {
                // As in C, a 64-bit BAR5 masks the dword after it.
                pos += 4;
                i += 1;
                let upper = virt.get(pos, 4) & (mask >> 32) as u32;
                virt.set(pos, 4, upper);
            }
        }
        pos += 4;
        i += 1;
    }

    // The actual ROM BAR size is reported even if REGION_INFO reported none, as the ROM
    // could not be read, or the shadow ROM's.
    let rom = &res[6];
    let mask = if rom.assigned {
        Some(!rom.len.wrapping_sub(1))
    } else {
        platform_rom.map(|len| {
            let size = (len as u64).checked_next_power_of_two().unwrap_or(0);
            !size.wrapping_sub(1)
        })
    };
    let vbar = match mask {
        // CAST: The ROM BAR is 32-bit.
        Some(mask) => virt.get(ROM, 4) & (mask as u32 | uapi::PCI_ROM_ADDRESS_ENABLE),
        None => 0,
    };
    virt.set(ROM, 4, vbar);
    virt.bardirty = false;
}

/// The virtualized config space of an open function (C's `vconfig`, `pci_config_map`, ...),
/// and what the config code keeps of the interrupt state.
pub(crate) struct ConfigState {
    /// The virtualized config space, while the function is open.
    virt: Option<Virt>,
    /// INTx masking of the open function.
    intx: Option<IntxMasking>,
    /// The function has extended capabilities to walk (`extended_caps`); as in C, kept
    /// across opens.
    extended_caps: bool,
}

impl ConfigState {
    /// The state of a closed function.
    pub(crate) const fn new() -> Self {
        Self {
            virt: None,
            intx: None,
            extended_caps: false,
        }
    }

    /// The virtual interrupt pin (`vconfig[PCI_INTERRUPT_PIN]`), 0 when closed.
    pub(crate) fn interrupt_pin(&self) -> u8 {
        self.virt.as_ref().map_or(0, |v| v.get8(INTERRUPT_PIN))
    }
}

/// An access to one chunk of config space: a dword or less within one capability.
struct Access<'a> {
    /// For `memory_lock` and the power state.
    core: &'a VfioPciCore,
    pdev: &'a pci::Device<Bound>,
    /// The open function's virtualized config space.
    v: &'a mut Virt,
    /// The rest of [`ConfigState`], which the handlers read or update.
    intx: Option<IntxMasking>,
    /// The table of the capability accessed.
    perm: &'static Perm,
    /// The offset in config space.
    pos: usize,
    /// The offset in the capability.
    offset: usize,
    /// 1, 2 or 4.
    count: usize,
}

impl Access<'_> {
    /// The start of the capability accessed.
    fn start(&self) -> usize {
        self.pos - self.offset
    }

    /// Reads the hardware on behalf of the user (`vfio_user_config_read()`).
    fn user_read(&self, pos: usize, count: usize) -> Result<u32> {
        let pos = cfg_pos(pos);
        match count {
            1 => self.pdev.user_read_config_byte(pos).map(u32::from),
            2 => self.pdev.user_read_config_word(pos).map(u32::from),
            4 => self.pdev.user_read_config_dword(pos),
            _ => Err(EINVAL),
        }
    }

    /// Writes the hardware on behalf of the user (`vfio_user_config_write()`).
    fn user_write(&self, pos: usize, count: usize, val: u32) -> Result {
        let pos = cfg_pos(pos);
        // CAST: The value is truncated to the access width.
        match count {
            1 => self.pdev.user_write_config_byte(pos, val as u8),
            2 => self.pdev.user_write_config_word(pos, val as u16),
            4 => self.pdev.user_write_config_dword(pos, val),
            _ => Err(EINVAL),
        }
    }

    /// The value of `count` bytes with every bit set.
    fn all_ones(&self) -> u32 {
        u32::MAX >> (32 - self.count * 8)
    }

    /// `vfio_default_config_read()`.
    fn default_read(&mut self) -> Result<u32> {
        let (pos, count) = (self.pos, self.count);
        let mut val = self.v.get(pos, count);
        let virt = self.perm.virt(self.offset, count);
        // Any non-virtualized bits?
        if virt != self.all_ones() {
            let phys = self.user_read(pos, count)?;
            val = (phys & !virt) | (val & virt);
        }
        Ok(val)
    }

    /// `vfio_default_config_write()`.
    fn default_write(&mut self, val: u32) -> Result {
        let (pos, count) = (self.pos, self.count);
        let write = self.perm.write(self.offset, count);
        if write == 0 {
            // Drop: no writable bits.
            return Ok(());
        }
        let virt = self.perm.virt(self.offset, count);

        // Virtualized and writable bits go to vconfig.
        if write & virt != 0 {
            let v = &mut *self.v;
            let cur = v.get(pos, count);
            v.set(pos, count, (cur & !(write & virt)) | (val & write & virt));
        }

        // The others, to the hardware.
        if write & !virt != 0 {
            let phys = self.user_read(pos, count)?;
            let phys = (phys & !(write & !virt)) | (val & write & !virt);
            self.user_write(pos, count, phys)?;
        }
        Ok(())
    }

    /// Reads the hardware, but the capability ID and next pointer from `vconfig`
    /// (`vfio_direct_config_read()`).
    fn direct_read(&mut self) -> Result<u32> {
        let hw = self.user_read(self.pos, self.count)?;
        Ok(self.v.direct_mangle(self.pos, self.offset, self.count, hw))
    }

    /// `vfio_basic_config_read()`.
    fn basic_read(&mut self) -> Result<u32> {
        // `pos == offset` in the standard header.
        if is_bar(self.offset) && self.v.bardirty {
            let mut res = [BarResource::default(); 7];
            for (bar, r) in (0u32..).zip(res.iter_mut()) {
                *r = BarResource::of(self.pdev, bar);
            }
            let platform_rom = self.pdev.platform_rom().map(|(_, len)| len);
            bar_fixup(self.v, &res, platform_rom);
        }

        let mut val = self.default_read()?;

        // The virtual memory enable of functions without one.
        if self.offset == COMMAND && self.pdev.no_command_memory() {
            val |= self.v.command() & CMD_MEMORY;
        }
        Ok(val)
    }

    /// Whether the BARs lost the values they had at open (`vfio_need_bar_restore()`).
    fn need_bar_restore(&mut self) -> bool {
        let rbar = self.v.rbar;
        (0..6).any(|i| {
            rbar[i] != 0
                && self
                    .pdev
                    .user_read_config_dword(cfg_pos(BAR0 + 4 * i))
                    .map_or(true, |bar| bar != rbar[i])
        })
    }

    /// Restores the BARs after a reset the driver did not see (`vfio_bar_restore()`).
    fn bar_restore(&mut self) {
        if self.pdev.is_virtfn() {
            return;
        }
        dev_info!(
            self.pdev,
            "vfio_bar_restore: reset recovery - restoring BARs\n"
        );
        let rbar = self.v.rbar;
        for (i, bar) in rbar.iter().take(6).enumerate() {
            let _ = self
                .pdev
                .user_write_config_dword(cfg_pos(BAR0 + 4 * i), *bar);
        }
        let _ = self.pdev.user_write_config_dword(cfg_pos(ROM), rbar[6]);

        if self.intx == Some(IntxMasking::Broken) {
            if let Ok(cmd) = self.pdev.user_read_config_word(cfg_pos(COMMAND)) {
                let cmd = cmd | uapi::PCI_COMMAND_INTX_DISABLE as u16;
                let _ = self.pdev.user_write_config_word(cfg_pos(COMMAND), cmd);
            }
        }
    }

    /// `vfio_basic_config_write()`: COMMAND memory and I/O enable are tracked under the
    /// `memory_lock` write guard, INTx disable is emulated, and BARs need a fixup.
    fn basic_write(&mut self, val: u32) -> Result {
        if self.offset == COMMAND {
            let phys_cmd = u32::from(self.pdev.user_read_config_word(cfg_pos(COMMAND))?);
            let virt_cmd = self.v.command();
            let new_cmd = val;

            let phys_mem = phys_cmd & CMD_MEMORY != 0;
            let virt_mem = virt_cmd & CMD_MEMORY != 0;
            let new_mem = new_cmd & CMD_MEMORY != 0;
            let phys_io = phys_cmd & CMD_IO != 0;
            let virt_io = virt_cmd & CMD_IO != 0;
            let new_io = new_cmd & CMD_IO != 0;

            let core = self.core;
            let mut memory = core.memory_lock.write();
            if !new_mem {
                core.dma_buf_move(&mut memory, true);
            }

            // Writing an enable that we think is set but the hardware shows clear means a
            // backdoor reset (SR-IOV functions trigger this too): restore the BARs first.
            if (new_mem && virt_mem && !phys_mem && !self.pdev.no_command_memory())
                || (new_io && virt_io && !phys_io)
                || self.need_bar_restore()
            {
                self.bar_restore();
            }

            self.default_write(val)?;

            // Save the memory and I/O enables for the test above next time.
            let mask = CMD_MEMORY | CMD_IO;
            let cmd = (self.v.command() & !mask) | (new_cmd & mask);
            // CAST: COMMAND is 16 bits.
            self.v.set16(COMMAND, cmd as u16);
            memory.command_memory = cmd & CMD_MEMORY != 0;
            core.dma_buf_restore(self.pdev, &mut memory);
            drop(memory);
        } else {
            self.default_write(val)?;
        }

        // Emulate INTx disable.
        if (COMMAND..=COMMAND + 1).contains(&self.offset) {
            let virt_intx_disable = self.v.command() & uapi::PCI_COMMAND_INTX_DISABLE != 0;
            let virq_disabled = &self.core.irq_shared.virq_disabled;
            if virt_intx_disable != virq_disabled.load(Ordering::Relaxed) {
                virq_disabled.store(virt_intx_disable, Ordering::Relaxed);
                if virt_intx_disable {
                    self.core.intx_mask(self.pdev);
                } else {
                    self.core.intx_unmask(self.pdev);
                }
            }
        }

        if is_bar(self.offset) {
            self.v.bardirty = true;
        }
        Ok(())
    }

    /// `vfio_pm_config_write()`: the user asks for a D-state, the driver moves the function
    /// there (`vfio_lock_and_set_power_state()`).
    fn pm_write(&mut self, val: u32) -> Result {
        self.default_write(val)?;
        if self.offset == us(uapi::PCI_PM_CTRL) {
            let state = match val & uapi::PCI_PM_CTRL_STATE_MASK {
                0 => pci::PowerState::D0,
                1 => pci::PowerState::D1,
                2 => pci::PowerState::D2,
                _ => pci::PowerState::D3Hot,
            };
            let core = self.core;
            let mut memory = core.memory_lock.write();
            if state == pci::PowerState::D3Hot {
                core.dma_buf_move(&mut memory, true);
            }
            let _ = VfioPciCore::set_power_state(self.pdev, &mut memory, state);
            core.dma_buf_restore(self.pdev, &mut memory);
        }
        Ok(())
    }

    /// `vfio_vpd_config_write()`: a write of the address register's flag byte starts a VPD
    /// read or write, and toggling the flag signals its completion.
    fn vpd_write(&mut self, val: u32) -> Result {
        self.default_write(val)?;
        let addr_hi = us(uapi::PCI_VPD_ADDR) + 1;
        if self.offset > addr_hi || self.offset + self.count <= addr_hi {
            return Ok(());
        }
        let paddr = self.start() + us(uapi::PCI_VPD_ADDR);
        let pdata = self.start() + us(uapi::PCI_VPD_DATA);
        let flag = uapi::PCI_VPD_ADDR_F as u16;
        let addr = self.v.get16(paddr);

        if addr & flag != 0 {
            let data = self.v.get(pdata, 4);
            let written = self
                .pdev
                .write_vpd((addr & !flag).into(), &data.to_ne_bytes());
            if written != Ok(4) {
                // Not toggling the flag makes the user's driver time out.
                return Ok(());
            }
        } else {
            let mut data = [0u8; 4];
            if self.pdev.read_vpd(addr.into(), &mut data).is_err() {
                return Ok(());
            }
            self.v.set(pdata, 4, u32::from_ne_bytes(data));
        }
        self.v.set16(paddr, addr ^ flag);
        Ok(())
    }

    /// Resets the function for an emulated FLR, under the `memory_lock` write guard.
    fn flr(&self) {
        let core = self.core;
        let mut memory = core.memory_lock.write();
        core.dma_buf_move(&mut memory, true);
        let _ = self.pdev.try_reset_function();
        core.dma_buf_restore(self.pdev, &mut memory);
    }

    /// `vfio_exp_config_write()`: FLR is emulated, MRRS written with a floor at MPS.
    fn exp_write(&mut self, val: u32) -> Result {
        let ctrl = self.start() + us(uapi::PCI_EXP_DEVCTL);
        let readrq_mask = uapi::PCI_EXP_DEVCTL_READRQ as u16;
        let readrq = self.v.get16(ctrl) & readrq_mask;

        self.default_write(val)?;

        // FLR reads as zero. The reset might not be a PCIe FLR.
        let flr = uapi::PCI_EXP_DEVCTL_BCR_FLR as u16;
        let devctl = self.v.get16(ctrl);
        if devctl & flr != 0 {
            self.v.set16(ctrl, devctl & !flr);
            let devcap = self.start() + us(uapi::PCI_EXP_DEVCAP);
            if self
                .pdev
                .user_read_config_dword(cfg_pos(devcap))
                .is_ok_and(|cap| cap & uapi::PCI_EXP_DEVCAP_FLR != 0)
            {
                self.flr();
            }
        }

        // MPS is virtualized: the physical one needs a system-wide view. MRRS goes to the
        // hardware, but no lower than MPS, so full TLPs are used.
        let new_readrq = self.v.get16(ctrl) & readrq_mask;
        if readrq != new_readrq {
            let rq = 128 << (new_readrq >> 12);
            let _ = self.pdev.pcie_set_readrq(rq.max(self.pdev.pcie_get_mps()));
        }
        Ok(())
    }

    /// `vfio_af_config_write()`: FLR is emulated. The reset might not be an AF FLR.
    fn af_write(&mut self, val: u32) -> Result {
        let ctrl = self.start() + us(uapi::PCI_AF_CTRL);
        self.default_write(val)?;

        let flr = uapi::PCI_AF_CTRL_FLR as u8;
        let c = self.v.get8(ctrl);
        if c & flr != 0 {
            self.v.set(ctrl, 1, (c & !flr).into());
            let cap = self.start() + us(uapi::PCI_AF_CAP);
            if self
                .pdev
                .user_read_config_byte(cfg_pos(cap))
                .is_ok_and(|cap| {
                    u32::from(cap) & uapi::PCI_AF_CAP_FLR != 0
                        && u32::from(cap) & uapi::PCI_AF_CAP_TP != 0
                })
            {
                self.flr();
            }
        }
        Ok(())
    }

    /// The access covers the MSI control register (as C tests it).
    fn covers_msi_flags(&self) -> bool {
        let flags = us(uapi::PCI_MSI_FLAGS);
        self.offset <= flags && self.offset + self.count >= flags
    }

    /// `vfio_msi_config_read()`.
    fn msi_read(&mut self) -> Result<u32> {
        if self.covers_msi_flags() {
            // C updates the queue size from msi_qmax at the capability start, not at the
            // flags: the ID byte, which is not virtualized, so this is not visible.
            let start = self.v.find_cap_start(self.pos);
            let qmask = uapi::PCI_MSI_FLAGS_QMASK as u16;
            let qmax = u16::from(self.core.irq_shared.msi_qmax.load(Ordering::Relaxed)) << 1;
            let v = &mut *self.v;
            v.set16(start, (v.get16(start) & !qmask) | qmax);
        }
        self.default_read()
    }

    /// `vfio_msi_config_write()`: enable is the interrupt code's, the queue size bounded by
    /// what it allows; the result goes to the hardware.
    fn msi_write(&mut self, val: u32) -> Result {
        self.default_write(val)?;
        if !self.covers_msi_flags() {
            return Ok(());
        }
        let start = self.v.find_cap_start(self.pos);
        let pflags = start + us(uapi::PCI_MSI_FLAGS);
        let mut flags = self.v.get16(pflags);

        // MSI is enabled through the SET_IRQS ioctl.
        if !self.core.irq_shared.msi_enabled.load(Ordering::Relaxed) {
            flags &= !(uapi::PCI_MSI_FLAGS_ENABLE as u16);
        }

        let qsize = uapi::PCI_MSI_FLAGS_QSIZE as u16;
        let qmax = u16::from(self.core.irq_shared.msi_qmax.load(Ordering::Relaxed));
        if (flags & qsize) >> 4 > qmax {
            flags = (flags & !qsize) | (qmax << 4);
        }

        self.v.set16(pflags, flags);
        self.pdev.user_write_config_word(cfg_pos(pflags), flags)
    }

    /// Runs the read handler of the access.
    fn read(&mut self) -> Result<u32> {
        match self.perm.read {
            ReadFn::Default => self.default_read(),
            ReadFn::Direct => self.direct_read(),
            ReadFn::Raw => self.user_read(self.pos, self.count),
            ReadFn::Virt => {
                let (pos, count) = (self.pos, self.count);
                Ok(self.v.get(pos, count))
            }
            ReadFn::Basic => self.basic_read(),
            ReadFn::Msi => self.msi_read(),
        }
    }

    /// Runs the write handler of the access.
    fn write(&mut self, val: u32) -> Result {
        match self.perm.write_fn {
            WriteFn::None => Ok(()),
            WriteFn::Default => self.default_write(val),
            WriteFn::Raw => self.user_write(self.pos, self.count, val),
            WriteFn::Virt => {
                let (pos, count) = (self.pos, self.count);
                self.v.set(pos, count, val);
                Ok(())
            }
            WriteFn::Basic => self.basic_write(val),
            WriteFn::Pm => self.pm_write(val),
            WriteFn::Vpd => self.vpd_write(val),
            WriteFn::Exp => self.exp_write(val),
            WriteFn::Af => self.af_write(val),
            WriteFn::Msi => self.msi_write(val),
        }
    }
}

/// Chooses the table and start of the capability at `pos` of `virt`.
fn lookup(virt: &Virt, pos: usize) -> (&'static Perm, usize) {
    match virt.map[pos] {
        CAP_ID_INVALID => (&UNASSIGNED_PERM, pos),
        CAP_ID_INVALID_VIRT => (&VIRT_PERM, pos),
        // A hidden first extended capability may have any ID: its table is the default.
        id if pos >= CFG_SPACE => (ecap_perm(id), virt.find_cap_start(pos)),
        id => {
            let perm = if u32::from(id) == uapi::PCI_CAP_ID_MSI {
                virt.msi_perm.unwrap_or(&DIRECT_RO_PERM)
            } else {
                cap_perm(id)
            };
            let start = if id > CAP_ID_BASIC {
                virt.find_cap_start(pos)
            } else {
                0
            };
            (perm, start)
        }
    }
}

impl VfioPciCore {
    /// Builds the virtualized config space at open (`vfio_config_init()`).
    pub(crate) fn config_init(&self, pdev: &pci::Device<Bound>, intx: IntxMasking) -> Result {
        let mut state = self.config.lock();
        let mut virt = Virt::new(pdev.cfg_size_bytes())?;
        virt.fill(pdev, 0, STD_HEADER)?;

        // For restore after a reset.
        let rbar = core::array::from_fn(|i| virt.get(if i < 6 { BAR0 + 4 * i } else { ROM }, 4));
        virt.rbar = rbar;

        if pdev.is_virtfn() {
            // VFs read FFFF here.
            virt.set16(us(uapi::PCI_VENDOR_ID), pdev.vendor_id().as_raw());
            virt.set16(us(uapi::PCI_DEVICE_ID), pdev.device_id());

            // VFs must implement the pin as read-only zero (SR-IOV 1.1, 3.4.1.18); users
            // cannot tell a VF's bogus pin apart, so it is hidden here.
            let pin = virt.get8(INTERRUPT_PIN);
            let known_bogus = pdev.vendor_id() == pci::Vendor::INTEL && pdev.device_id() == 0x270c;
            if pin != 0 && !known_bogus {
                dev_warn!(pdev, "Hardware bug: VF reports bogus INTx pin {}\n", pin);
            }
            virt.set(INTERRUPT_PIN, 1, 0);
        }

        if pdev.no_command_memory() {
            // VFs and such have no memory enable bit, so it is clear after
            // pci_enable_device(); set it, for consistency with PFs.
            let cmd = virt.get16(COMMAND) | CMD_MEMORY as u16;
            virt.set16(COMMAND, cmd);
        }

        if !cfg!(CONFIG_VFIO_PCI_RUST_INTX)
            || intx == IntxMasking::Broken
            || pdev.intx_irq().is_none()
        {
            virt.set(INTERRUPT_PIN, 1, 0);
        }

        virt.cap_init(pdev, &mut state.extended_caps)?;
        virt.ecap_init(pdev, state.extended_caps)?;

        self.memory_lock.write().command_memory = virt.command() & CMD_MEMORY != 0;
        state.virt = Some(virt);
        state.intx = Some(intx);
        Ok(())
    }

    /// Makes the dword at `pos` live in `vconfig` alone, with value `val`: writes do not reach
    /// the hardware, as C does for the IGD's OpRegion address (`PCI_CAP_ID_INVALID_VIRT` in
    /// `pci_config_map`).
    pub(crate) fn config_virtualize_dword(&self, pos: usize, val: u32) {
        let mut state = self.config.lock();
        if let Some(virt) = state.virt.as_mut() {
            virt.set(pos, 4, val);
            for byte in virt.map.iter_mut().skip(pos).take(4) {
                *byte = CAP_ID_INVALID_VIRT;
            }
        }
    }

    /// Drops the virtualized config space at close (`vfio_config_free()`).
    pub(crate) fn config_free(&self) {
        let mut state = self.config.lock();
        state.virt = None;
        state.intx = None;
        self.memory_lock.write().command_memory = false;
    }

    /// Calls `f` on the access of the first chunk of `count` bytes at `pos`, under `config`.
    fn with_access<R>(
        &self,
        pdev: &pci::Device<Bound>,
        count: usize,
        pos: u64,
        f: impl FnOnce(&mut Access<'_>) -> R,
    ) -> Result<R> {
        let mut guard = self.config.lock();
        let ConfigState { virt, intx, .. } = &mut *guard;
        let virt = virt.as_mut().ok_or(ENODEV)?;

        let size = virt.size() as u64;
        if pos >= size || count as u64 > size - pos {
            return Err(EFAULT);
        }
        // CAST: `pos` < `size`.
        let pos = pos as usize;

        let count = virt.chunk(pos, count);

        let (perm, start) = lookup(virt, pos);
        Ok(f(&mut Access {
            core: self,
            pdev,
            v: virt,
            intx: *intx,
            perm,
            pos,
            offset: pos - start,
            count,
        }))
    }

    /// Reads or writes a dword or less of config space, within one capability
    /// (`vfio_pci_config_rw_single()`); returns the bytes done.
    fn config_rw_single(
        &self,
        pdev: &pci::Device<Bound>,
        buf: UserPtr,
        count: usize,
        pos: u64,
        write: bool,
    ) -> Result<usize> {
        // As in C, no lock is held across the user copy: a copy that faults, even into a
        // BAR mapping or a stalled userfaultfd page, must not keep `config` from interrupt
        // setup and other accesses. The chunking depends only on the config map, which
        // does not change while the function is open.
        if write {
            let (count, writable) = self.with_access(pdev, count, pos, |a| {
                (a.count, a.perm.write_fn != WriteFn::None)
            })?;
            if !writable {
                return Ok(count);
            }
            let mut bytes = [0u8; 4];
            UserSlice::new(buf, count)
                .reader()
                .read_slice(&mut bytes[..count])?;
            self.with_access(pdev, count, pos, |a| a.write(u32::from_le_bytes(bytes)))??;
            Ok(count)
        } else {
            let (count, val) = self.with_access(pdev, count, pos, |a| -> Result<_> {
                Ok((a.count, a.read()?))
            })??;
            UserSlice::new(buf, count)
                .writer()
                .write_slice(&val.to_le_bytes()[..count])?;
            Ok(count)
        }
    }

    /// Reads or writes config space through the virtualization (`vfio_pci_config_rw()`).
    ///
    /// As in C, an error after some chunks were done is returned as such, without the
    /// progress, and `pos` only moves on success.
    pub(crate) fn config_rw(
        &self,
        pdev: &pci::Device<Bound>,
        buf: UserPtr,
        mut count: usize,
        pos: &mut i64,
        write: bool,
    ) -> Result<usize> {
        // CAST: The VFIO core only passes file positions it accepted, which are not negative.
        let mut off = *pos as u64 & crate::vfio_pci_priv::OFFSET_MASK;
        let mut done = 0;
        while count != 0 {
            let n = self.config_rw_single(pdev, buf.wrapping_byte_add(done), count, off, write)?;
            count -= n;
            done += n;
            off += n as u64;
        }
        // CAST: `done` is at most the config space size.
        *pos += done as i64;
        Ok(done)
    }
}

#[kunit_tests(vfio_pci_rs_config)]
mod tests {
    use super::*;
    use core::cell::Cell;

    /// A synthetic config space, read as `pci_read_config_*()` read hardware: a misaligned
    /// or out of range access fails as `PCIBIOS_BAD_REGISTER_NUMBER` does.
    struct Fake {
        cfg: KVec<u8>,
        pcie_flags: u16,
        conflicts: Cell<u32>,
        hidden: Cell<u32>,
        unknown: Cell<u32>,
        reads: Cell<u32>,
    }

    impl Fake {
        /// A function with `size` bytes of config space and a header with capabilities
        /// starting at `cap_ptr` (none if 0).
        fn new(size: usize, cap_ptr: u8) -> Result<Self> {
            let mut fake = Self {
                cfg: KVec::from_elem(0, size, GFP_KERNEL)?,
                pcie_flags: 0,
                conflicts: Cell::new(0),
                hidden: Cell::new(0),
                unknown: Cell::new(0),
                reads: Cell::new(0),
            };
            fake.w32(0, 0x11e8_1234);
            fake.w16(COMMAND, 0x0407);
            fake.w32(8, 0x00ff_0010);
            fake.w32(BAR0, 0xfe00_000c);
            fake.w32(BAR0 + 4, 0x0000_0001);
            fake.w8(INTERRUPT_PIN, 1);
            if cap_ptr != 0 {
                fake.w16(STATUS, uapi::PCI_STATUS_CAP_LIST as u16);
                fake.w8(us(uapi::PCI_CAPABILITY_LIST), cap_ptr);
            }
            Ok(fake)
        }

        fn w8(&mut self, pos: usize, val: u8) {
            self.cfg[pos] = val;
        }

        fn w16(&mut self, pos: usize, val: u16) {
            self.cfg[pos..pos + 2].copy_from_slice(&val.to_le_bytes());
        }

        fn w32(&mut self, pos: usize, val: u32) {
            self.cfg[pos..pos + 4].copy_from_slice(&val.to_le_bytes());
        }

        /// A standard capability header.
        fn cap(&mut self, pos: usize, id: u32, next: u8) {
            self.w8(pos, id as u8);
            self.w8(pos + 1, next);
        }

        /// An extended capability header, version 1.
        fn ecap(&mut self, pos: usize, id: u32, next: usize) {
            self.w32(pos, id | (1 << 16) | ((next as u32) << 20));
        }

        fn bytes<const N: usize>(&self, pos: usize) -> Result<[u8; N]> {
            self.reads.set(self.reads.get() + 1);
            if pos % N != 0 || pos + N > self.cfg.len() {
                return Err(EFAULT);
            }
            let mut b = [0u8; N];
            b.copy_from_slice(&self.cfg[pos..pos + N]);
            Ok(b)
        }
    }

    impl ConfigSource for Fake {
        fn cfg_size(&self) -> usize {
            self.cfg.len()
        }

        fn pcie_flags(&self) -> u16 {
            self.pcie_flags
        }

        fn read8(&self, pos: usize) -> Result<u8> {
            self.bytes::<1>(pos).map(u8::from_le_bytes)
        }

        fn read16(&self, pos: usize) -> Result<u16> {
            self.bytes::<2>(pos).map(u16::from_le_bytes)
        }

        fn read32(&self, pos: usize) -> Result<u32> {
            self.bytes::<4>(pos).map(u32::from_le_bytes)
        }

        fn note(&self, note: WalkNote) {
            let counter = match note {
                WalkNote::Conflict { .. } => &self.conflicts,
                WalkNote::Hidden { .. } => &self.hidden,
                WalkNote::UnknownLength { .. } => &self.unknown,
            };
            counter.set(counter.get() + 1);
        }
    }

    /// Builds the map and `vconfig` of `fake` as `vfio_config_init()` does.
    fn walk(fake: &Fake) -> Result<Virt> {
        let mut virt = Virt::new(fake.cfg_size())?;
        virt.fill(fake, 0, STD_HEADER)?;
        let mut ext_caps = false;
        virt.cap_init(fake, &mut ext_caps)?;
        virt.ecap_init(fake, ext_caps)?;
        Ok(virt)
    }

    fn map_is(virt: &Virt, range: core::ops::Range<usize>, id: u8) -> bool {
        virt.map[range].iter().all(|&b| b == id)
    }

    /// A PCIe endpoint: PM, 64-bit MSI, PCIe v2, MSI-X, then AER, an unknown ecap and DSN.
    fn endpoint() -> Result<Fake> {
        let mut f = Fake::new(4096, 0x40)?;
        f.pcie_flags = 0x0002; // v2 endpoint
        f.cap(0x40, uapi::PCI_CAP_ID_PM, 0x50);
        f.w16(0x42, 0xfe03); // PME_Support set
        f.w16(0x44, 0x8100); // PME_Status, PME_En
        f.cap(0x50, uapi::PCI_CAP_ID_MSI, 0x70);
        f.w16(0x52, uapi::PCI_MSI_FLAGS_64BIT as u16);
        f.cap(0x70, uapi::PCI_CAP_ID_EXP, 0xb0);
        f.w16(0x72, 0x0002);
        f.cap(0xb0, uapi::PCI_CAP_ID_MSIX, 0);
        f.ecap(0x100, uapi::PCI_EXT_CAP_ID_ERR, 0x148);
        f.ecap(0x148, 0x25, 0x160);
        f.ecap(0x160, uapi::PCI_EXT_CAP_ID_DSN, 0);
        Ok(f)
    }

    #[test]
    fn basic_header_permissions() {
        let p = &BASIC_PERM;
        // Vendor and device IDs: virtualized (for VFs), read-only.
        assert_eq!(p.virt(0, 4), 0xffff_ffff);
        assert_eq!(p.write(0, 4), 0);
        // COMMAND: only INTx disable virtualized, every bit written; STATUS: the
        // capability list bit virtualized, nothing written.
        assert_eq!(p.virt(COMMAND, 2), uapi::PCI_COMMAND_INTX_DISABLE);
        assert_eq!(p.write(COMMAND, 2), 0xffff);
        assert_eq!(p.virt(STATUS, 2), uapi::PCI_STATUS_CAP_LIST);
        assert_eq!(p.write(STATUS, 2), 0);
        // Revision and class: read-only hardware.
        assert_eq!((p.virt(8, 4), p.write(8, 4)), (0, 0));
        // Cache line, latency timer, BIST writable; header type read-only.
        assert_eq!(p.write(0xc, 4), 0xff00_ffff);
        assert_eq!(p.virt(0xc, 4), 0);
        // BARs and ROM BAR: all virtualized and writable; CardBus CIS and subsystem IDs
        // read-only hardware.
        for bar in [BAR0, BAR0 + 4, BAR0 + 8, BAR0 + 12, BAR0 + 16, BAR5, ROM] {
            assert!(is_bar(bar));
            assert_eq!((p.virt(bar, 4), p.write(bar, 4)), (ALL_VIRT, ALL_WRITE));
        }
        for off in [0x28, 0x2c] {
            assert!(!is_bar(off));
            assert_eq!((p.virt(off, 4), p.write(off, 4)), (0, 0));
        }
        // Capability pointer virtual read-only, line virtual writable, pin virtual read-only.
        assert_eq!((p.virt(0x34, 1), p.write(0x34, 1)), (0xff, 0));
        assert_eq!(p.virt(0x3c, 4), 0x0000_ffff);
        assert_eq!(p.write(0x3c, 4), 0x0000_00ff);
        assert_eq!((p.read, p.write_fn), (ReadFn::Basic, WriteFn::Basic));
    }

    #[test]
    fn capability_permissions() {
        // PM: the state is changed by the driver, PME bits are virtual.
        assert_eq!(PM_PERM.virt(0, 4), 0xf800_ff00);
        assert_eq!(PM_PERM.write(0, 4), 0);
        let ctrl = us(uapi::PCI_PM_CTRL);
        assert_eq!(PM_PERM.virt(ctrl, 2), 0x8100);
        assert_eq!(PM_PERM.write(ctrl, 2) & 3, 0);
        assert_eq!(PM_PERM.write(ctrl, 2), 0x7efc);
        // PCIe: phantom functions, ARI not writable; FLR, MPS, MRRS virtual.
        let devctl = us(uapi::PCI_EXP_DEVCTL);
        assert_eq!(EXP_PERM.write(devctl, 2), 0xfdff);
        assert_eq!(EXP_PERM.virt(devctl, 2), 0xf0e0);
        assert_eq!(EXP_PERM.write(us(uapi::PCI_EXP_DEVCTL2), 2), 0xffdf);
        assert_eq!(EXP_PERM.virt.len(), 52);
        // AF: only FLR, virtual; VPD address and data virtual; PCI-X command writable.
        assert_eq!(AF_PERM.virt(4, 1), 1);
        assert_eq!(AF_PERM.write(4, 1), 1);
        assert_eq!(AF_PERM.write(0, 4), 0);
        assert_eq!(VPD_PERM.virt(0, 4), 0xffff_ff00);
        assert_eq!(VPD_PERM.write(4, 4), ALL_WRITE);
        assert_eq!(PCIX_PERM.write(0, 4), 0xffff_0000);
        // AER: the header is virtual, status/mask/severity and ECRC enables writable.
        assert_eq!(ERR_PERM.virt(0, 4), ALL_VIRT);
        assert_eq!(ERR_PERM.write(0, 4), 0);
        assert_eq!(ERR_PERM.write(us(uapi::PCI_ERR_UNCOR_MASK), 4), AER_UNC);
        assert_eq!(ERR_PERM.write(us(uapi::PCI_ERR_COR_STATUS), 4), AER_COR);
        assert_eq!(ERR_PERM.write(us(uapi::PCI_ERR_CAP), 4), 0x140);
        assert_eq!(ERR_PERM.virt.len(), 44);
        // Power budgeting: C makes the byte at PCI_PWR_DATA writable (its comment says the
        // data select, which is at PCI_PWR_DSR); parity keeps it so.
        assert_eq!(PWR_PERM.write(8, 4), 0xff);
        assert_eq!(PWR_PERM.write(4, 4), 0);
        // MSI-X and unlisted caps are read-only; vendor caps written raw.
        assert_eq!(
            cap_perm(uapi::PCI_CAP_ID_MSIX as u8).write_fn,
            WriteFn::None
        );
        assert_eq!(cap_perm(uapi::PCI_CAP_ID_VNDR as u8).write_fn, WriteFn::Raw);
        assert_eq!(
            ecap_perm(uapi::PCI_EXT_CAP_ID_DVSEC as u8).write_fn,
            WriteFn::Raw
        );
        assert_eq!(
            ecap_perm(uapi::PCI_EXT_CAP_ID_DSN as u8).read,
            ReadFn::Direct
        );
    }

    #[test]
    fn msi_permissions() {
        let flags = |f: u32| f as u16;
        // 32-bit: data at 8, no mask.
        let p = msi_perm(0);
        assert_eq!(p.virt.len(), 12);
        assert_eq!(p.virt(0, 4), 0x00ff_ff00);
        assert_eq!(p.write(0, 4), 0x00ff_0000);
        assert_eq!(p.virt(8, 2), 0xffff);
        // 64-bit with masking: data at 12, mask and pending written through.
        let p = msi_perm(flags(
            uapi::PCI_MSI_FLAGS_64BIT | uapi::PCI_MSI_FLAGS_MASKBIT,
        ));
        assert_eq!(p.virt.len(), 24);
        assert_eq!(p.virt(8, 4), ALL_VIRT);
        assert_eq!(p.virt(12, 2), 0xffff);
        assert_eq!((p.virt(16, 4), p.write(16, 4)), (0, ALL_WRITE));
        assert_eq!((p.virt(20, 4), p.write(20, 4)), (0, ALL_WRITE));
        let p = msi_perm(flags(uapi::PCI_MSI_FLAGS_MASKBIT));
        assert_eq!(p.virt.len(), 20);
        assert_eq!((p.virt(12, 4), p.write(12, 4)), (0, ALL_WRITE));
        // Past a table: nothing virtual or writable.
        assert_eq!(msi_perm(0).virt(12, 4), 0);
    }

    #[test]
    fn capability_lengths() {
        let id = |x: u32| x as u8;
        assert_eq!(cap_length(id(uapi::PCI_CAP_ID_PM)), 8);
        assert_eq!(cap_length(id(uapi::PCI_CAP_ID_MSIX)), 12);
        assert_eq!(cap_length(id(uapi::PCI_CAP_ID_AF)), 6);
        assert_eq!(cap_length(id(uapi::PCI_CAP_ID_VPD)), 8);
        assert_eq!(cap_length(id(uapi::PCI_CAP_ID_AGP)), 12);
        assert_eq!(cap_length(id(uapi::PCI_CAP_ID_EXP)), 0xff);
        assert_eq!(cap_length(id(uapi::PCI_CAP_ID_SLOTID)), 0);
        assert_eq!(cap_length(id(uapi::PCI_CAP_ID_EA)), 0);
        let ext = |x: u32| x as u16;
        assert_eq!(ext_cap_length(ext(uapi::PCI_EXT_CAP_ID_ERR)), 44);
        assert_eq!(ext_cap_length(ext(uapi::PCI_EXT_CAP_ID_SRIOV)), 64);
        assert_eq!(ext_cap_length(ext(uapi::PCI_EXT_CAP_ID_VC9)), 0xff);
        assert_eq!(ext_cap_length(ext(uapi::PCI_EXT_CAP_ID_PASID)), 0);
        assert_eq!(ext_cap_length(ext(uapi::PCI_EXT_CAP_ID_RCRB)), 0);
        assert_eq!(ext_cap_length(0x25), 0);
    }

    #[test]
    fn variable_ext_lengths() -> Result {
        let mut f = Fake::new(4096, 0)?;
        // VC: one extended VC, 64-phase arbitration: 16 + 2 * 12, rounded to 48, + 32.
        f.w32(0x104, 1);
        f.w32(0x108, uapi::PCI_VC_CAP2_64_PHASE);
        assert_eq!(vc_cap_len(&f, 0x100)?, 80);
        // ACS with egress control: 0 bits means 256.
        f.w8(0x204, uapi::PCI_ACS_EC as u8);
        assert_eq!(
            Virt::ext_cap_len(&f, uapi::PCI_EXT_CAP_ID_ACS as u16, 0x200)?,
            40
        );
        f.w8(0x205, 5);
        assert_eq!(
            Virt::ext_cap_len(&f, uapi::PCI_EXT_CAP_ID_ACS as u16, 0x200)?,
            12
        );
        // Resizable BAR with 3 BARs, vendor-specific with a length of 0x14.
        f.w8(0x308, 3 << 5);
        assert_eq!(
            Virt::ext_cap_len(&f, uapi::PCI_EXT_CAP_ID_REBAR as u16, 0x300)?,
            28
        );
        f.w32(0x404, 0x014 << 20);
        assert_eq!(
            Virt::ext_cap_len(&f, uapi::PCI_EXT_CAP_ID_VNDR as u16, 0x400)?,
            0x14
        );
        // TPH with an ST table of 4 entries in the capability.
        f.w32(0x504, uapi::PCI_TPH_LOC_CAP | (3 << 16));
        assert_eq!(
            Virt::ext_cap_len(&f, uapi::PCI_EXT_CAP_ID_TPH as u16, 0x500)?,
            20
        );
        Ok(())
    }

    #[test]
    fn walks_a_well_formed_endpoint() -> Result {
        let f = endpoint()?;
        let v = walk(&f)?;
        assert!(map_is(&v, 0..0x40, CAP_ID_BASIC));
        assert!(map_is(&v, 0x40..0x48, uapi::PCI_CAP_ID_PM as u8));
        assert!(map_is(&v, 0x48..0x50, CAP_ID_INVALID));
        assert!(map_is(&v, 0x50..0x5e, uapi::PCI_CAP_ID_MSI as u8));
        assert!(map_is(&v, 0x5e..0x70, CAP_ID_INVALID));
        assert!(map_is(&v, 0x70..0xa4, uapi::PCI_CAP_ID_EXP as u8));
        assert!(map_is(&v, 0xb0..0xbc, uapi::PCI_CAP_ID_MSIX as u8));
        assert!(map_is(&v, 0x100..0x12c, uapi::PCI_EXT_CAP_ID_ERR as u8));
        assert!(map_is(&v, 0x148..0x160, CAP_ID_INVALID));
        assert!(map_is(&v, 0x160..0x16c, uapi::PCI_EXT_CAP_ID_DSN as u8));
        assert!(v.msi_perm.is_some_and(|p| core::ptr::eq(p, &MSI_64_PERM)));
        // PME_Support, PME_Status and PME_En read as zero.
        assert_eq!(v.get16(0x42), 0x0603);
        assert_eq!(v.get16(0x44), 0);
        // The unknown ecap is skipped in the chain.
        assert_eq!(v.get(0x100, 4) >> 20, 0x160);
        assert_eq!(v.get(0x160, 4), f.read32(0x160)?);
        assert_eq!(f.hidden.get(), 1);
        assert_eq!(f.conflicts.get(), 0);
        // Chunks: up to a dword, within one capability.
        assert_eq!(v.cap_remaining_dword(0x5c), 2);
        assert_eq!(v.cap_remaining_dword(0x4a), 2);
        assert_eq!(v.find_cap_start(0x5d), 0x50);
        assert_eq!(v.find_cap_start(0x12b), 0x100);
        assert_eq!(lookup(&v, 0x44).1, 0x40);
        assert_eq!(lookup(&v, 0x10).1, 0);
        assert_eq!(lookup(&v, 0x4c).0.read, ReadFn::Raw);
        assert!(core::ptr::eq(lookup(&v, 0x54).0, &MSI_64_PERM));
        Ok(())
    }

    #[test]
    fn hides_unknown_standard_caps() -> Result {
        let mut f = Fake::new(256, 0x40)?;
        f.cap(0x40, uapi::PCI_CAP_ID_PM, 0x48);
        f.cap(0x48, uapi::PCI_CAP_ID_SLOTID, 0x4c);
        f.cap(0x4c, 0, 0x50); // NULL capability
        f.cap(0x50, uapi::PCI_CAP_ID_MSIX, 0);
        let v = walk(&f)?;
        assert_eq!(v.get8(0x41), 0x50);
        assert!(map_is(&v, 0x48..0x50, CAP_ID_INVALID));
        assert_eq!(f.hidden.get(), 2);

        // Only hidden capabilities: the list is empty and the status bit clear.
        let mut f = Fake::new(256, 0x48)?;
        f.cap(0x48, uapi::PCI_CAP_ID_SLOTID, 0x4c);
        f.cap(0x4c, uapi::PCI_CAP_ID_EA, 0);
        let v = walk(&f)?;
        assert_eq!(v.get8(0x34), 0);
        assert_eq!(u32::from(v.get16(STATUS)) & uapi::PCI_STATUS_CAP_LIST, 0);
        Ok(())
    }

    #[test]
    fn looping_chains_terminate() -> Result {
        // Two capabilities pointing at each other: the walk stops after 48 steps, as C's.
        let mut f = Fake::new(256, 0x40)?;
        f.cap(0x40, uapi::PCI_CAP_ID_PM, 0x48);
        f.cap(0x48, uapi::PCI_CAP_ID_MSIX, 0x40);
        walk(&f)?;
        assert!(f.reads.get() < 300);
        assert!(f.conflicts.get() > 0);

        // A capability pointing at itself.
        let mut f = Fake::new(256, 0x40)?;
        f.cap(0x40, uapi::PCI_CAP_ID_MSIX, 0x40);
        walk(&f)?;

        // Hidden capabilities in a loop patch the chain but still end.
        let mut f = Fake::new(256, 0x40)?;
        f.cap(0x40, uapi::PCI_CAP_ID_SLOTID, 0x44);
        f.cap(0x44, uapi::PCI_CAP_ID_SLOTID, 0x40);
        let v = walk(&f)?;
        assert_eq!(f.hidden.get(), 48);
        assert_eq!(u32::from(v.get16(STATUS)) & uapi::PCI_STATUS_CAP_LIST, 0);

        // Extended capabilities in a loop: bounded by the dwords of extended space.
        let mut f = endpoint()?;
        f.ecap(0x160, uapi::PCI_EXT_CAP_ID_DSN, 0x100);
        let v = walk(&f)?;
        assert!(f.reads.get() < 8000);
        assert!(map_is(&v, 0x160..0x16c, uapi::PCI_EXT_CAP_ID_DSN as u8));
        Ok(())
    }

    #[test]
    fn pointers_into_the_header() -> Result {
        // A capability in the standard header takes over its bytes, with a warning, as in C.
        let mut f = Fake::new(256, 0x10)?;
        f.cap(0x10, uapi::PCI_CAP_ID_PM, 0);
        let v = walk(&f)?;
        assert!(map_is(&v, 0x10..0x18, uapi::PCI_CAP_ID_PM as u8));
        assert_eq!(f.conflicts.get(), 8);
        let (perm, start) = lookup(&v, 0x14);
        assert!(core::ptr::eq(perm, &PM_PERM));
        assert_eq!(start, 0x14);

        // An extended capability pointing below 0x100 ends the chain.
        let mut f = endpoint()?;
        f.ecap(0x100, uapi::PCI_EXT_CAP_ID_ERR, 0x40);
        let v = walk(&f)?;
        assert!(map_is(&v, 0x160..0x16c, CAP_ID_INVALID));
        Ok(())
    }

    #[test]
    fn overlapping_and_truncated_caps() -> Result {
        // Overlaps are warned about, the later capability wins, as in C.
        let mut f = Fake::new(256, 0x40)?;
        f.cap(0x40, uapi::PCI_CAP_ID_PM, 0x44);
        f.cap(0x44, uapi::PCI_CAP_ID_MSIX, 0);
        let v = walk(&f)?;
        assert_eq!(f.conflicts.get(), 4);
        assert!(map_is(&v, 0x40..0x44, uapi::PCI_CAP_ID_PM as u8));
        assert!(map_is(&v, 0x44..0x50, uapi::PCI_CAP_ID_MSIX as u8));

        // A vendor capability running off the end of config space is cut there.
        let mut f = Fake::new(256, 0xf8)?;
        f.cap(0xf8, uapi::PCI_CAP_ID_VNDR, 0);
        f.w8(0xfa, 0x40);
        let v = walk(&f)?;
        assert!(map_is(&v, 0xf8..0x100, uapi::PCI_CAP_ID_VNDR as u8));
        assert_eq!(v.cap_remaining_dword(0xfd), 3);

        // So are extended ones, to the end of extended config space.
        let mut f = endpoint()?;
        f.ecap(0x160, uapi::PCI_EXT_CAP_ID_VNDR, 0xff8);
        f.w32(0x164, 0xfff << 20);
        f.ecap(0xff8, uapi::PCI_EXT_CAP_ID_VNDR, 0);
        f.w32(0xffc, 0x20 << 20);
        let v = walk(&f)?;
        assert!(map_is(&v, 0x160..0x1000, uapi::PCI_EXT_CAP_ID_VNDR as u8));
        assert!(f.conflicts.get() >= 8);

        // A misaligned MSI capability fails the walk as C's pci_read_config_word() does.
        let mut f = Fake::new(256, 0x41)?;
        f.cap(0x41, uapi::PCI_CAP_ID_MSI, 0);
        assert_eq!(walk(&f).err(), Some(EFAULT));
        Ok(())
    }

    #[test]
    fn hidden_first_ecap() -> Result {
        // An unknown first ecap anchors the chain with ID and version zeroed.
        let mut f = endpoint()?;
        f.ecap(0x100, 0x25, 0x160);
        let v = walk(&f)?;
        assert_eq!(v.get(0x100, 4), 0x160 << 20);
        assert!(map_is(&v, 0x100..0x104, 0x25));
        assert_eq!(lookup(&v, 0x100).0.read, ReadFn::Direct);

        // With nothing else, the header reads zero.
        let mut f = endpoint()?;
        f.ecap(0x100, 0x25, 0);
        let v = walk(&f)?;
        assert_eq!(v.get(0x100, 4), 0);

        // An ID past the table maps by its low byte, as C's memset(): 0x1fe reads as
        // virtual, 0x1ff as unassigned.
        let mut f = endpoint()?;
        f.ecap(0x100, 0x1fe, 0);
        let v = walk(&f)?;
        assert_eq!(lookup(&v, 0x100).0.read, ReadFn::Virt);

        // No extended capabilities when the first dword is zero.
        let mut f = endpoint()?;
        f.w32(0x100, 0);
        f.ecap(0x200, uapi::PCI_EXT_CAP_ID_ERR, 0);
        let v = walk(&f)?;
        assert!(map_is(&v, 0x100..0x1000, CAP_ID_INVALID));
        Ok(())
    }

    #[test]
    fn chunks() -> Result {
        let f = endpoint()?;
        let v = walk(&f)?;
        // Aligned, a dword at most.
        assert_eq!(v.chunk(0, 4096), 4);
        assert_eq!(v.chunk(1, 3), 1);
        assert_eq!(v.chunk(2, 2), 2);
        assert_eq!(v.chunk(2, 8), 2);
        assert_eq!(v.chunk(4, 3), 2);
        // Not across a capability's end: MSI ends at 0x5e, PCIe at 0xa4, in mid-dword.
        assert_eq!(v.chunk(0x5c, 4), 2);
        assert_eq!(v.chunk(0x5d, 3), 1);
        assert_eq!(v.chunk(0x5e, 2), 2);
        assert_eq!(v.chunk(0xa0, 8), 4);
        // Not from the header into the first capability.
        assert_eq!(v.chunk(0x3e, 4), 2);
        Ok(())
    }

    #[test]
    fn direct_reads_virtualize_the_chain() -> Result {
        let mut f = endpoint()?;
        f.cap(0xb0, uapi::PCI_CAP_ID_MSIX, 0xc0);
        f.cap(0xc0, uapi::PCI_CAP_ID_SLOTID, 0);
        let v = walk(&f)?;
        // The hidden capability is unlinked in vconfig; reads of ID and next get that.
        assert_eq!(v.get8(0xb1), 0);
        let hw = f.read32(0xb0)?;
        assert_eq!(hw & 0xff00, 0xc000);
        assert_eq!(v.direct_mangle(0xb0, 0, 4, hw), hw & 0xffff_00ff);
        assert_eq!(v.direct_mangle(0xb0, 0, 2, hw & 0xffff), hw & 0x00ff);
        assert_eq!(v.direct_mangle(0xb1, 1, 1, 0xc0), 0);
        // A lone ID byte and the rest of the capability come from the hardware.
        assert_eq!(v.direct_mangle(0xb0, 0, 1, 0x11), 0x11);
        assert_eq!(v.direct_mangle(0xb4, 4, 4, 0x1234_5678), 0x1234_5678);
        // The extended header comes from vconfig: the hidden 0x148 ecap is skipped.
        let hw = f.read32(0x100)?;
        assert_eq!(hw >> 20, 0x148);
        assert_eq!(v.direct_mangle(0x100, 0, 4, hw) >> 20, 0x160);
        assert_eq!(v.direct_mangle(0x102, 2, 2, hw >> 16), 0x1601);
        assert_eq!(v.direct_mangle(0x104, 4, 4, 0xdead), 0xdead);
        // In the header (a capability pointing there), nothing is virtualized.
        assert_eq!(v.direct_mangle(0x10, 0, 4, 0xdead), 0xdead);
        Ok(())
    }

    #[test]
    fn bar_sizing() -> Result {
        let mut v = Virt::new(256)?;
        let mem64 = uapi::PCI_BASE_ADDRESS_MEM_TYPE_64 | uapi::PCI_BASE_ADDRESS_MEM_PREFETCH;
        let mut res = [BarResource::default(); 7];
        res[0] = BarResource {
            assigned: true,
            len: 0x4000,
            flags: mem64,
        };
        res[2] = BarResource {
            assigned: true,
            len: 0x20,
            flags: uapi::PCI_BASE_ADDRESS_SPACE_IO,
        };
        res[4] = BarResource {
            assigned: true,
            len: 0x1000,
            flags: 0,
        };
        res[6] = BarResource {
            assigned: true,
            len: 0x10000,
            flags: 0,
        };
        for pos in [BAR0, BAR0 + 4, BAR0 + 8, BAR0 + 12, BAR0 + 16, BAR5, ROM] {
            v.set(pos, 4, u32::MAX);
        }
        bar_fixup(&mut v, &res, None);
        assert_eq!(v.get(BAR0, 4), 0xffff_c00c);
        assert_eq!(v.get(BAR0 + 4, 4), 0xffff_ffff);
        assert_eq!(v.get(BAR0 + 8, 4), 0xffff_ffe1);
        assert_eq!(v.get(BAR0 + 12, 4), 0);
        assert_eq!(v.get(BAR0 + 16, 4), 0xffff_f000);
        assert_eq!(v.get(BAR5, 4), 0);
        assert_eq!(v.get(ROM, 4), 0xffff_0001);
        assert!(!v.bardirty);

        // A shadow ROM is sized up to a power of two; no ROM at all reads zero.
        res[6] = BarResource::default();
        v.set(ROM, 4, u32::MAX);
        bar_fixup(&mut v, &res, Some(0x9000));
        assert_eq!(v.get(ROM, 4), 0xffff_0001);
        v.set(ROM, 4, u32::MAX);
        bar_fixup(&mut v, &res, None);
        assert_eq!(v.get(ROM, 4), 0);

        // A written address keeps its aligned part.
        v.set(BAR0 + 16, 4, 0xfebc_1234);
        bar_fixup(&mut v, &res, None);
        assert_eq!(v.get(BAR0 + 16, 4), 0xfebc_1000);
        Ok(())
    }
}
