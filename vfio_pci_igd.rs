// SPDX-License-Identifier: GPL-2.0

//! Intel IGD: read-only device-specific regions for assigning an integrated GPU to a VM
//! (C's `vfio_pci_igd.c`).
//!
//! The OpRegion, a firmware table the GPU's driver needs, is offered whole, with its extended
//! VBT appended; its address register (ASLS, config offset 0xfc) is virtualized so that the
//! user cannot change it. The config spaces of the host bridge (00:00.0) and the LPC bridge
//! (00:1f.0) are offered read-only, for a VMM to copy the IDs a guest driver checks.

use crate::{
    vfio_pci_region::{RegionAccess, RegionOps},
    VfioPciCore,
};
use kernel::{
    device::Bound,
    io::memremap::MemRemap,
    pci::{self, Class},
    prelude::*,
    sync::aref::ARef,
    uaccess::UserSlice,
    uapi,
};

/// The first bytes of an OpRegion.
const OPREGION_SIGNATURE: &[u8; 16] = b"IntelGraphicsMem";
/// The size of the OpRegion proper; the extended VBT follows it in the region.
const OPREGION_SIZE: usize = 8 * 1024;
/// The config register holding the OpRegion's physical address (ASLS).
const OPREGION_PCI_ADDR: u16 = 0xfc;
/// Offset of the size field, in KiB.
const OPREGION_SIZE_FIELD: usize = 16;
/// Offset of the version field.
const OPREGION_VERSION: usize = 0x16;
/// Offset of the extended VBT's address (RVDA, OpRegion 2.0 and up).
const OPREGION_RVDA: usize = 0x3ba;
/// Offset of the extended VBT's size (RVDS).
const OPREGION_RVDS: usize = 0x3c2;

/// The region type of the IGD regions: vendor specific, Intel's.
// CAST: A `u16` widened, where `u32::from()` is not `const`.
const IGD_REGION_TYPE: u32 =
    uapi::VFIO_REGION_TYPE_PCI_VENDOR_TYPE | pci::Vendor::INTEL.as_raw() as u32;

/// Where OpRegion bytes come from: memory mapped from firmware, or a buffer in the tests.
trait OpRegionSource {
    /// Copies the bytes at `offset` into `buf`; fails unless all of them exist.
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result;
}

impl OpRegionSource for MemRemap {
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result {
        MemRemap::read(self, offset, buf)
    }
}

impl OpRegionSource for &[u8] {
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result {
        let end = offset.checked_add(buf.len()).ok_or(EINVAL)?;
        buf.copy_from_slice(self.get(offset..end).ok_or(EINVAL)?);
        Ok(())
    }
}

fn read_u16(src: &impl OpRegionSource, offset: usize) -> Result<u16> {
    let mut b = [0; 2];
    src.read(offset, &mut b)?;
    Ok(u16::from_le_bytes(b))
}

fn read_u32(src: &impl OpRegionSource, offset: usize) -> Result<u32> {
    let mut b = [0; 4];
    src.read(offset, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(src: &impl OpRegionSource, offset: usize) -> Result<u64> {
    let mut b = [0; 8];
    src.read(offset, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// What the header of an OpRegion at ASLS `addr` says (`vfio_pci_igd_opregion_init()`).
#[derive(Debug, PartialEq, Eq)]
struct OpRegionLayout {
    /// The region size: the OpRegion's, plus the extended VBT's.
    size: u32,
    /// The extended VBT: its physical address and size.
    vbt: Option<(u32, u32)>,
    /// The value the virtualized ASLS register reads: C leaves the extended VBT's address
    /// there when there is one, and so does this port.
    asls: u32,
}

impl OpRegionLayout {
    /// Parses the header of `opregion`, found at `addr`.
    ///
    /// Arithmetic is C's: 32 bits, wrapping. A malformed table (no signature, a zero size)
    /// fails with `EINVAL`.
    fn parse(opregion: &impl OpRegionSource, addr: u32) -> Result<Self> {
        let mut signature = [0; 16];
        opregion.read(0, &mut signature)?;
        if &signature != OPREGION_SIGNATURE {
            return Err(EINVAL);
        }
        let size_kib = read_u32(opregion, OPREGION_SIZE_FIELD)?;
        if size_kib == 0 {
            return Err(EINVAL);
        }
        let mut layout = Self {
            size: size_kib.wrapping_mul(1024),
            vbt: None,
            asls: addr,
        };
        // Since OpRegion 2.0 an extended VBT, too big for mailbox 4, is located by RVDA and
        // RVDS: RVDA is its physical address in 2.0, its offset from the OpRegion in 2.1 and
        // up. Either way it follows the OpRegion in the region, which then reads as 2.1.
        let version = read_u16(opregion, OPREGION_VERSION)?;
        if version >= 0x0200 {
            let rvda = read_u64(opregion, OPREGION_RVDA)?;
            let rvds = read_u32(opregion, OPREGION_RVDS)?;
            if rvda != 0 && rvds != 0 {
                layout.size = layout.size.wrapping_add(rvds);
                // CAST: C keeps the address in 32 bits.
                let rvda = rvda as u32;
                let vbt = if version == 0x0200 {
                    rvda
                } else {
                    addr.wrapping_add(rvda)
                };
                layout.vbt = Some((vbt, rvds));
                layout.asls = vbt;
            }
        }
        Ok(layout)
    }
}

/// The OpRegion as userspace reads it: the table, its extended VBT right after the first
/// 8 KiB, and the version and RVDA patched to say so (`vfio_pci_igd_rw()`).
struct OpRegionView<S> {
    /// The OpRegion, `OPREGION_SIZE` bytes.
    opregion: S,
    /// The extended VBT, if any.
    vbt: Option<S>,
}

impl<S: OpRegionSource> OpRegionView<S> {
    /// Copies the region's bytes at `pos` into `buf`. Bytes past the OpRegion and the
    /// extended VBT fail with `EINVAL`; C reads past its mappings there.
    fn read(&self, pos: usize, buf: &mut [u8]) -> Result {
        let mut done = 0;
        while done < buf.len() {
            let p = pos + done;
            let out = &mut buf[done..];
            let n = if p < OPREGION_VERSION {
                let n = out.len().min(OPREGION_VERSION - p);
                self.opregion.read(p, &mut out[..n])?;
                n
            } else if p < OPREGION_VERSION + 2 {
                let mut version = read_u16(&self.opregion, OPREGION_VERSION)?;
                // An OpRegion 2.0 with an extended VBT reads as 2.1: the VBT is relative.
                if version == 0x0200 && self.vbt.is_some() {
                    version = 0x0201;
                }
                Self::copy_patch(&version.to_le_bytes(), p - OPREGION_VERSION, out)
            } else if p < OPREGION_RVDA {
                let n = out.len().min(OPREGION_RVDA - p);
                self.opregion.read(p, &mut out[..n])?;
                n
            } else if p < OPREGION_RVDA + 8 {
                // CAST: 8 KiB, widened.
                let rvda: u64 = if self.vbt.is_some() {
                    OPREGION_SIZE as u64
                } else {
                    0
                };
                Self::copy_patch(&rvda.to_le_bytes(), p - OPREGION_RVDA, out)
            } else if p < OPREGION_SIZE {
                let n = out.len().min(OPREGION_SIZE - p);
                self.opregion.read(p, &mut out[..n])?;
                n
            } else {
                let vbt = self.vbt.as_ref().ok_or(EINVAL)?;
                vbt.read(p - OPREGION_SIZE, out)?;
                out.len()
            };
            done += n;
        }
        Ok(())
    }

    /// Copies the bytes of `patch` from `from` on into `out`; returns how many.
    fn copy_patch(patch: &[u8], from: usize, out: &mut [u8]) -> usize {
        let src = &patch[from..];
        let n = out.len().min(src.len());
        out[..n].copy_from_slice(&src[..n]);
        n
    }
}

impl RegionOps for OpRegionView<MemRemap> {
    fn rw(&self, access: RegionAccess) -> Result<usize> {
        if access.write {
            return Err(EINVAL);
        }
        let pos = usize::try_from(access.pos).map_err(|_| EINVAL)?;
        let mut user = UserSlice::new(access.buf, access.count).writer();
        let mut chunk = [0u8; 256];
        let mut done = 0;
        while done < access.count {
            let n = chunk.len().min(access.count - done);
            self.read(pos + done, &mut chunk[..n])?;
            user.write_slice(&chunk[..n])?;
            done += n;
        }
        Ok(access.count)
    }
}

/// The config space of a bridge, read-only (`vfio_pci_igd_cfg_rw()`).
struct BridgeConfig {
    pdev: ARef<pci::Device>,
}

impl RegionOps for BridgeConfig {
    fn rw(&self, access: RegionAccess) -> Result<usize> {
        if access.write {
            return Err(EINVAL);
        }
        let pdev = &self.pdev;
        let mut user = UserSlice::new(access.buf, access.count).writer();
        let mut pos = u16::try_from(access.pos).map_err(|_| EINVAL)?;
        let mut left = access.count;
        // As C: a byte to reach even, a word to reach a dword, dwords, then words and bytes.
        while left > 0 {
            let n: u16 = if pos & 1 != 0 || left == 1 {
                user.write_slice(&[pdev.user_read_config_byte(pos)?])?;
                1
            } else if (pos & 3 != 0 && left > 2) || left < 4 {
                user.write_slice(&pdev.user_read_config_word(pos)?.to_le_bytes())?;
                2
            } else {
                user.write_slice(&pdev.user_read_config_dword(pos)?.to_le_bytes())?;
                4
            };
            pos += n;
            left -= usize::from(n);
        }
        Ok(access.count)
    }
}

/// Whether the function gets the IGD regions at open: an Intel display function
/// (`vfio_pci_is_intel_display()`). A kernel built for tests on machines without an IGD
/// (`CONFIG_VFIO_PCI_RUST_IGD_TEST`) tries the bridge regions on non-VGA display functions
/// too, as an IGD that is not the boot VGA device is one.
fn has_igd_regions(pdev: &pci::Device) -> bool {
    cfg!(CONFIG_VFIO_PCI_RUST_IGD)
        && pdev.is_display()
        && (pdev.vendor_id() == pci::Vendor::INTEL
            || (cfg!(CONFIG_VFIO_PCI_RUST_IGD_TEST) && pdev.pci_class() == Class::DISPLAY_OTHER))
}

impl VfioPciCore {
    /// Registers the IGD regions of a function being opened, if it has them
    /// (`vfio_pci_open_device()`): a function without an OpRegion has none.
    pub(crate) fn igd_open(&self, pdev: &pci::Device<Bound>) -> Result {
        if !has_igd_regions(pdev) {
            return Ok(());
        }
        match self.igd_init(pdev) {
            Ok(()) | Err(ENODEV) => Ok(()),
            Err(e) => {
                dev_warn!(pdev, "Failed to setup Intel IGD regions\n");
                Err(e)
            }
        }
    }

    /// Registers the IGD regions (`vfio_pci_igd_init()`). Fails with `ENODEV` for a function
    /// without an OpRegion.
    fn igd_init(&self, pdev: &pci::Device<Bound>) -> Result {
        match self.igd_opregion_init(pdev) {
            Err(ENODEV)
                if cfg!(CONFIG_VFIO_PCI_RUST_IGD_TEST)
                    && pdev.vendor_id() != pci::Vendor::INTEL => {}
            r => r?,
        }
        self.igd_cfg_init()
    }

    /// `vfio_pci_igd_opregion_init()`.
    fn igd_opregion_init(&self, pdev: &pci::Device<Bound>) -> Result {
        let addr = pdev.read_config_dword(OPREGION_PCI_ADDR)?;
        if addr == 0 || addr == !0 {
            return Err(ENODEV);
        }
        let opregion = MemRemap::new_wb(addr.into(), OPREGION_SIZE)?;
        let layout = OpRegionLayout::parse(&opregion, addr)?;
        let vbt = match layout.vbt {
            Some((vbt, len)) => Some(MemRemap::new_wb(vbt.into(), usize::try_from(len)?)?),
            None => None,
        };
        let view = KBox::new(OpRegionView { opregion, vbt }, GFP_KERNEL_ACCOUNT)?;
        self.register_dev_region(
            IGD_REGION_TYPE,
            uapi::VFIO_REGION_SUBTYPE_INTEL_IGD_OPREGION,
            view,
            layout.size.into(),
            uapi::VFIO_REGION_INFO_FLAG_READ,
        )?;
        // The user reads the register from `vconfig` and cannot change it.
        self.config_virtualize_dword(OPREGION_PCI_ADDR.into(), layout.asls);
        Ok(())
    }

    /// `vfio_pci_igd_cfg_init()`: the host bridge's config region, then the LPC bridge's.
    fn igd_cfg_init(&self) -> Result {
        for (devfn, class, subtype) in [
            (
                0,
                Class::BRIDGE_HOST,
                uapi::VFIO_REGION_SUBTYPE_INTEL_IGD_HOST_CFG,
            ),
            (
                0x1f << 3,
                Class::BRIDGE_ISA,
                uapi::VFIO_REGION_SUBTYPE_INTEL_IGD_LPC_CFG,
            ),
        ] {
            let bridge = pci::Device::get_domain_bus_and_slot(0, 0, devfn).ok_or(ENODEV)?;
            if bridge.vendor_id() != pci::Vendor::INTEL || bridge.pci_class() != class {
                return Err(EINVAL);
            }
            let size = u64::try_from(bridge.cfg_size_bytes())?;
            self.register_dev_region(
                IGD_REGION_TYPE,
                subtype,
                KBox::new(BridgeConfig { pdev: bridge }, GFP_KERNEL_ACCOUNT)?,
                size,
                uapi::VFIO_REGION_INFO_FLAG_READ,
            )?;
        }
        Ok(())
    }
}

#[kunit_tests(vfio_pci_rs_igd)]
mod tests {
    use super::*;

    /// A synthetic OpRegion of 8 KiB: byte `i` is `i % 251` but for the header fields.
    fn opregion(version: u16, rvda: u64, rvds: u32) -> Result<KVec<u8>> {
        let mut op = KVec::with_capacity(OPREGION_SIZE, GFP_KERNEL)?;
        for i in 0..OPREGION_SIZE {
            op.push((i % 251) as u8, GFP_KERNEL)?;
        }
        op[..16].copy_from_slice(OPREGION_SIGNATURE);
        op[OPREGION_SIZE_FIELD..OPREGION_SIZE_FIELD + 4].copy_from_slice(&8u32.to_le_bytes());
        op[OPREGION_VERSION..OPREGION_VERSION + 2].copy_from_slice(&version.to_le_bytes());
        op[OPREGION_RVDA..OPREGION_RVDA + 8].copy_from_slice(&rvda.to_le_bytes());
        op[OPREGION_RVDS..OPREGION_RVDS + 4].copy_from_slice(&rvds.to_le_bytes());
        Ok(op)
    }

    /// An extended VBT of `len` bytes, each `0xa0 ^ (i % 256)`.
    fn vbt(len: usize) -> Result<KVec<u8>> {
        let mut v = KVec::with_capacity(len, GFP_KERNEL)?;
        for i in 0..len {
            v.push(0xa0 ^ (i % 256) as u8, GFP_KERNEL)?;
        }
        Ok(v)
    }

    /// The region bytes `pos..pos + len` as userspace reads them.
    fn read(view: &OpRegionView<&[u8]>, pos: usize, len: usize) -> Result<KVec<u8>> {
        let mut out = KVec::with_capacity(len, GFP_KERNEL)?;
        out.extend_with(len, 0, GFP_KERNEL)?;
        view.read(pos, &mut out)?;
        Ok(out)
    }

    #[test]
    fn opregion_1_x_has_no_extended_vbt() -> Result {
        // Before 2.0 RVDA is mailbox data: not followed, and read as 0 as C patches it.
        let op = opregion(0x0100, 0x1000, 0x100)?;
        let layout = OpRegionLayout::parse(&op.as_slice(), 0x7fe0_0000)?;
        assert_eq!(
            layout,
            OpRegionLayout {
                size: 8192,
                vbt: None,
                asls: 0x7fe0_0000
            }
        );
        let view = OpRegionView {
            opregion: op.as_slice(),
            vbt: None,
        };
        let all = read(&view, 0, OPREGION_SIZE)?;
        assert_eq!(&all[OPREGION_RVDA..OPREGION_RVDA + 8], &[0; 8]);
        assert_eq!(&all[..OPREGION_RVDA], &op[..OPREGION_RVDA]);
        assert_eq!(&all[OPREGION_RVDA + 8..], &op[OPREGION_RVDA + 8..]);
        // Nothing backs the region past the OpRegion.
        assert_eq!(read(&view, OPREGION_SIZE - 1, 2).err(), Some(EINVAL));
        Ok(())
    }

    #[test]
    fn opregion_2_0_absolute_vbt_reads_as_2_1() -> Result {
        // 2.0: RVDA is the VBT's physical address, kept in 32 bits as C keeps it.
        let op = opregion(0x0200, 0x1_7000_0000, 0x1800)?;
        let layout = OpRegionLayout::parse(&op.as_slice(), 0x7fe0_0000)?;
        assert_eq!(
            layout,
            OpRegionLayout {
                size: 8192 + 0x1800,
                vbt: Some((0x7000_0000, 0x1800)),
                asls: 0x7000_0000
            }
        );
        let ext = vbt(0x1800)?;
        let view = OpRegionView {
            opregion: op.as_slice(),
            vbt: Some(ext.as_slice()),
        };
        // The version reads 2.1 and RVDA the VBT's offset, byte by byte too.
        let header = read(&view, 0x10, 16)?;
        assert_eq!(&header[..6], &op[0x10..0x16]);
        assert_eq!(&header[6..8], &0x0201u16.to_le_bytes());
        assert_eq!(&header[8..], &op[0x18..0x20]);
        assert_eq!(read(&view, OPREGION_VERSION + 1, 1)?[0], 0x02);
        let rvda = read(&view, OPREGION_RVDA - 2, 12)?;
        assert_eq!(&rvda[2..10], &(OPREGION_SIZE as u64).to_le_bytes());
        assert_eq!(&rvda[10..], &op[OPREGION_RVDS..OPREGION_RVDS + 2]);
        assert_eq!(read(&view, OPREGION_RVDA + 1, 2)?, [0x20, 0]);
        // The VBT follows the 8 KiB of the OpRegion, across the boundary too.
        let seam = read(&view, OPREGION_SIZE - 4, 8)?;
        assert_eq!(&seam[..4], &op[OPREGION_SIZE - 4..]);
        assert_eq!(&seam[4..], &ext[..4]);
        assert_eq!(read(&view, OPREGION_SIZE + 0x17ff, 1)?[0], ext[0x17ff]);
        Ok(())
    }

    #[test]
    fn opregion_2_1_relative_vbt() -> Result {
        // 2.1: RVDA is relative to the OpRegion; the version is left alone.
        let op = opregion(0x0201, 0x2000, 0x1000)?;
        let layout = OpRegionLayout::parse(&op.as_slice(), 0x7fe0_0000)?;
        assert_eq!(
            layout,
            OpRegionLayout {
                size: 8192 + 0x1000,
                vbt: Some((0x7fe0_2000, 0x1000)),
                asls: 0x7fe0_2000
            }
        );
        let ext = vbt(0x1000)?;
        let view = OpRegionView {
            opregion: op.as_slice(),
            vbt: Some(ext.as_slice()),
        };
        let all = read(&view, 0, 8192 + 0x1000)?;
        assert_eq!(&all[OPREGION_VERSION..OPREGION_VERSION + 2], &[0x01, 0x02]);
        assert_eq!(&all[OPREGION_SIZE..], ext.as_slice());
        Ok(())
    }

    #[test]
    fn opregion_2_0_without_vbt() -> Result {
        // RVDA or RVDS zero: no extended VBT, the version stays 2.0.
        for (rvda, rvds) in [(0x7000_0000, 0), (0, 0x1800)] {
            let op = opregion(0x0200, rvda, rvds)?;
            let layout = OpRegionLayout::parse(&op.as_slice(), 0x7fe0_0000)?;
            assert_eq!((layout.size, layout.vbt), (8192, None));
            let view = OpRegionView {
                opregion: op.as_slice(),
                vbt: None,
            };
            assert_eq!(read(&view, OPREGION_VERSION, 2)?, [0x00, 0x02]);
        }
        Ok(())
    }

    #[test]
    fn opregion_malformed() -> Result {
        // No signature, a zero size, a table too short for its header: refused.
        let mut op = opregion(0x0201, 0, 0)?;
        op[15] = b'x';
        assert_eq!(
            OpRegionLayout::parse(&op.as_slice(), 0x1000).err(),
            Some(EINVAL)
        );
        let mut op = opregion(0x0201, 0, 0)?;
        op[OPREGION_SIZE_FIELD..OPREGION_SIZE_FIELD + 4].copy_from_slice(&[0; 4]);
        assert_eq!(
            OpRegionLayout::parse(&op.as_slice(), 0x1000).err(),
            Some(EINVAL)
        );
        let op = opregion(0x0201, 0x2000, 0x1000)?;
        assert_eq!(
            OpRegionLayout::parse(&&op[..OPREGION_RVDS], 0x1000).err(),
            Some(EINVAL)
        );
        // C's 32-bit arithmetic: 4 GiB of KiB wraps to 0, RVDS adds to that.
        let mut op = opregion(0x0201, 0x2000, 0x1000)?;
        op[OPREGION_SIZE_FIELD..OPREGION_SIZE_FIELD + 4]
            .copy_from_slice(&0x0040_0000u32.to_le_bytes());
        assert_eq!(OpRegionLayout::parse(&op.as_slice(), 0x1000)?.size, 0x1000);
        Ok(())
    }
}
