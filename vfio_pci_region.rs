// SPDX-License-Identifier: GPL-2.0

//! Device-specific regions: the regions a function offers at index `VFIO_PCI_NUM_REGIONS` and
//! up, besides its BARs, ROM, config space and VGA (`vfio_pci_core_register_dev_region()`).
//!
//! Each has a type and subtype, reported in a `VFIO_REGION_INFO_CAP_TYPE` capability, and
//! operations of its own. They are registered while the function is opened and released when
//! it is closed, as C does.

use crate::{vfio_pci_priv, VfioPciCore};
use kernel::{
    mm::virt::VmaNew,
    prelude::*,
    sync::{Arc, Mutex},
    uaccess::UserPtr,
    uapi, vfio,
};

/// A read or write of a device-specific region.
pub(crate) struct RegionAccess {
    /// The user buffer.
    pub(crate) buf: UserPtr,
    /// Bytes to transfer: at least one, and none past the end of the region.
    pub(crate) count: usize,
    /// The offset within the region, below its size.
    pub(crate) pos: u64,
    /// A write, not a read.
    pub(crate) write: bool,
}

/// What a device-specific region does (`struct vfio_pci_regops`). Dropping it releases what
/// it holds (`release`).
pub(crate) trait RegionOps: Send + Sync {
    /// Reads or writes the region; returns the bytes transferred.
    fn rw(&self, access: RegionAccess) -> Result<usize>;

    /// Maps the region; only called for one registered with `VFIO_REGION_INFO_FLAG_MMAP`.
    fn mmap(&self, _vma: &VmaNew) -> Result {
        Err(EINVAL)
    }

    /// Adds the capabilities the region has besides its type.
    fn add_capability(&self, _caps: &mut vfio::InfoCaps) -> Result {
        Ok(())
    }
}

/// A registered device-specific region (`struct vfio_pci_region`).
pub(crate) struct DevRegion {
    /// `VFIO_REGION_TYPE_*`, with the vendor ID for vendor types.
    region_type: u32,
    /// The subtype within the type.
    subtype: u32,
    /// The size in bytes.
    size: u64,
    /// `VFIO_REGION_INFO_FLAG_*`.
    flags: u32,
    ops: KBox<dyn RegionOps>,
}

/// The device-specific regions of an open function, in index order from
/// `VFIO_PCI_NUM_REGIONS`.
///
/// Lock order: `mmap_lock` (for mmap()), then this. Accesses take a reference to the region
/// and drop the lock before they touch user memory.
pub(crate) type DevRegions = Mutex<KVec<Arc<DevRegion>>>;

/// The registry index of region `index`, if it is a device-specific one.
fn dev_index(index: u32) -> Option<usize> {
    index
        .checked_sub(uapi::VFIO_PCI_NUM_REGIONS)
        .and_then(|i| usize::try_from(i).ok())
}

impl VfioPciCore {
    /// Registers a device-specific region of the open function
    /// (`vfio_pci_core_register_dev_region()`).
    pub(crate) fn register_dev_region(
        &self,
        region_type: u32,
        subtype: u32,
        ops: KBox<dyn RegionOps>,
        size: u64,
        flags: u32,
    ) -> Result {
        let region = Arc::new(
            DevRegion {
                region_type,
                subtype,
                size,
                flags,
                ops,
            },
            GFP_KERNEL_ACCOUNT,
        )?;
        self.dev_regions.lock().push(region, GFP_KERNEL_ACCOUNT)?;
        Ok(())
    }

    /// Releases the device-specific regions, at close or when an open fails.
    pub(crate) fn release_dev_regions(&self) {
        // Taken out first: a region's release must not run under the lock.
        let regions = core::mem::take(&mut *self.dev_regions.lock());
        drop(regions);
    }

    /// The number of regions (`VFIO_PCI_NUM_REGIONS + num_regions`).
    pub(crate) fn num_regions(&self) -> u32 {
        let dev = u32::try_from(self.dev_regions.lock().len()).unwrap_or(u32::MAX);
        uapi::VFIO_PCI_NUM_REGIONS.saturating_add(dev)
    }

    /// The device-specific region `index`, if registered.
    fn dev_region(&self, index: u32) -> Option<Arc<DevRegion>> {
        self.dev_regions.lock().get(dev_index(index)?).cloned()
    }

    /// Describes device-specific region `info.index` (the `default:` case of
    /// `vfio_pci_ioctl_get_region_info()`).
    pub(crate) fn dev_region_info(
        &self,
        info: &mut uapi::vfio_region_info,
        caps: &mut vfio::InfoCaps,
    ) -> Result {
        let region = self.dev_region(info.index).ok_or(EINVAL)?;
        info.offset = vfio_pci_priv::index_to_offset(info.index);
        info.size = region.size;
        info.flags = region.flags;
        caps.add(&uapi::vfio_region_info_cap_type {
            header: uapi::vfio_info_cap_header {
                id: uapi::VFIO_REGION_INFO_CAP_TYPE as u16,
                version: 1,
                next: 0,
            },
            type_: region.region_type,
            subtype: region.subtype,
        })?;
        region.ops.add_capability(caps)
    }

    /// Reads or writes device-specific region `index` at `pos` within it; returns the bytes
    /// transferred. As each of C's region `rw` ops does: an offset at or past the end fails
    /// with `EINVAL`, and a transfer is cut at the end.
    pub(crate) fn dev_region_rw(
        &self,
        index: u32,
        buf: UserPtr,
        count: usize,
        pos: u64,
        write: bool,
    ) -> Result<usize> {
        let region = self.dev_region(index).ok_or(EINVAL)?;
        if pos >= region.size {
            return Err(EINVAL);
        }
        let count = usize::try_from(region.size - pos).map_or(count, |left| count.min(left));
        region.ops.rw(RegionAccess {
            buf,
            count,
            pos,
            write,
        })
    }

    /// Maps device-specific region `index`, if it may be mapped (`vfio_pci_core_mmap()`).
    pub(crate) fn dev_region_mmap(&self, index: u32, vma: &VmaNew) -> Result {
        let region = self.dev_region(index).ok_or(EINVAL)?;
        if region.flags & uapi::VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(EINVAL);
        }
        region.ops.mmap(vma)
    }
}
