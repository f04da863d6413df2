//! The parts of the VFIO and IOMMUFD user API this client uses.
//!
//! Transcribed by hand from the Linux 7.3 headers `include/uapi/linux/vfio.h` and
//! `include/uapi/linux/iommufd.h`. Every structure is `#[repr(C)]` with the field order and
//! types of the header; `__aligned_u64` fields become `u64` in a structure that carries
//! `align(8)`, so the layout is the same on 32-bit targets too. The unit tests at the bottom
//! pin sizes, offsets and ioctl numbers against values computed from the C header.

/// `_IOC_NRBITS` etc. from `include/uapi/asm-generic/ioctl.h` (x86, arm64, riscv, ...).
const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
const IOC_NONE: u32 = 0;

/// `_IOC(dir, type, nr, size)`.
pub const fn ioc(dir: u32, ty: u8, nr: u32, size: u32) -> u32 {
    (dir << IOC_DIRSHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | (nr << IOC_NRSHIFT)
        | (size << IOC_SIZESHIFT)
}

/// `_IO(type, nr)`: VFIO and IOMMUFD encode neither direction nor size in their numbers (the
/// structures carry their own `argsz`/`size`), so every request is an `_IO`.
pub const fn io(ty: u8, nr: u32) -> u32 {
    ioc(IOC_NONE, ty, nr, 0)
}

// ---------------------------------------------------------------------------------------
// vfio.h
// ---------------------------------------------------------------------------------------

pub const VFIO_API_VERSION: i32 = 0;

/// Extensions / IOMMU types for `VFIO_CHECK_EXTENSION` and `VFIO_SET_IOMMU`.
pub const VFIO_TYPE1_IOMMU: u32 = 1;
pub const VFIO_TYPE1V2_IOMMU: u32 = 3; // VFIO_TYPE1v2_IOMMU
pub const VFIO_NOIOMMU_IOMMU: u32 = 8;

pub const VFIO_TYPE: u8 = b';';
pub const VFIO_BASE: u32 = 100;

/// `_IO(VFIO_TYPE, VFIO_BASE + n)`.
pub const fn vfio_io(n: u32) -> u32 {
    io(VFIO_TYPE, VFIO_BASE + n)
}

/// `struct vfio_info_cap_header`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VfioInfoCapHeader {
    pub id: u16,
    pub version: u16,
    pub next: u32,
}

// Container (/dev/vfio/vfio) ioctls.
pub const VFIO_GET_API_VERSION: u32 = vfio_io(0);
pub const VFIO_CHECK_EXTENSION: u32 = vfio_io(1);
pub const VFIO_SET_IOMMU: u32 = vfio_io(2);

/// `struct vfio_group_status`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioGroupStatus {
    pub argsz: u32,
    pub flags: u32,
}
pub const VFIO_GROUP_FLAGS_VIABLE: u32 = 1 << 0;
pub const VFIO_GROUP_FLAGS_CONTAINER_SET: u32 = 1 << 1;

// Group (/dev/vfio/$GROUP) ioctls.
pub const VFIO_GROUP_GET_STATUS: u32 = vfio_io(3);
/// Argument: pointer to an `__s32` container fd.
pub const VFIO_GROUP_SET_CONTAINER: u32 = vfio_io(4);
/// Argument: pointer to a NUL-terminated device name; returns a new fd.
pub const VFIO_GROUP_GET_DEVICE_FD: u32 = vfio_io(6);

/// `struct vfio_device_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioDeviceInfo {
    pub argsz: u32,
    pub flags: u32,
    /// Max region index + 1.
    pub num_regions: u32,
    /// Max IRQ index + 1.
    pub num_irqs: u32,
    /// Offset within the info buffer of the first capability.
    pub cap_offset: u32,
    pub pad: u32,
}
/// `offsetofend(struct vfio_device_info, num_irqs)`: the kernel's minimum `argsz`.
pub const VFIO_DEVICE_INFO_MINSZ: u32 = 16;

pub const VFIO_DEVICE_FLAGS_RESET: u32 = 1 << 0;
pub const VFIO_DEVICE_FLAGS_PCI: u32 = 1 << 1;
pub const VFIO_DEVICE_FLAGS_PLATFORM: u32 = 1 << 2;
pub const VFIO_DEVICE_FLAGS_AMBA: u32 = 1 << 3;
pub const VFIO_DEVICE_FLAGS_CCW: u32 = 1 << 4;
pub const VFIO_DEVICE_FLAGS_AP: u32 = 1 << 5;
pub const VFIO_DEVICE_FLAGS_FSL_MC: u32 = 1 << 6;
pub const VFIO_DEVICE_FLAGS_CAPS: u32 = 1 << 7;
pub const VFIO_DEVICE_FLAGS_CDX: u32 = 1 << 8;

/// Names of the `VFIO_DEVICE_FLAGS_*` bits, lowest bit first.
pub const VFIO_DEVICE_FLAG_NAMES: [(u32, &str); 9] = [
    (VFIO_DEVICE_FLAGS_RESET, "RESET"),
    (VFIO_DEVICE_FLAGS_PCI, "PCI"),
    (VFIO_DEVICE_FLAGS_PLATFORM, "PLATFORM"),
    (VFIO_DEVICE_FLAGS_AMBA, "AMBA"),
    (VFIO_DEVICE_FLAGS_CCW, "CCW"),
    (VFIO_DEVICE_FLAGS_AP, "AP"),
    (VFIO_DEVICE_FLAGS_FSL_MC, "FSL_MC"),
    (VFIO_DEVICE_FLAGS_CAPS, "CAPS"),
    (VFIO_DEVICE_FLAGS_CDX, "CDX"),
];

// Device fd ioctls.
pub const VFIO_DEVICE_GET_INFO: u32 = vfio_io(7);

/// `VFIO_IOMMU_MAP_DMA` (Type1 container).
pub const VFIO_IOMMU_MAP_DMA: u32 = vfio_io(13);
/// `VFIO_IOMMU_UNMAP_DMA` (Type1 container).
pub const VFIO_IOMMU_UNMAP_DMA: u32 = vfio_io(14);
pub const VFIO_DMA_MAP_FLAG_READ: u32 = 1 << 0;
pub const VFIO_DMA_MAP_FLAG_WRITE: u32 = 1 << 1;

/// `struct vfio_iommu_type1_dma_map`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioIommuType1DmaMap {
    pub argsz: u32,
    pub flags: u32,
    pub vaddr: u64,
    pub iova: u64,
    pub size: u64,
}

/// `struct vfio_iommu_type1_dma_unmap` without its flexible `__u8 data[]` (only read with
/// `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`, not used here).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioIommuType1DmaUnmap {
    pub argsz: u32,
    pub flags: u32,
    pub iova: u64,
    pub size: u64,
}
pub const VFIO_DEVICE_GET_REGION_INFO: u32 = vfio_io(8);
pub const VFIO_DEVICE_GET_IRQ_INFO: u32 = vfio_io(9);
/// `VFIO_DEVICE_RESET`: no argument.
pub const VFIO_DEVICE_RESET: u32 = vfio_io(11);
pub const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: u32 = vfio_io(12);
pub const VFIO_DEVICE_PCI_HOT_RESET: u32 = vfio_io(13);
pub const VFIO_DEVICE_BIND_IOMMUFD: u32 = vfio_io(18);
/// `VFIO_DEVICE_BIND_FLAG_TOKEN`: `token_uuid_ptr` points to the VF token.
pub const VFIO_DEVICE_BIND_FLAG_TOKEN: u32 = 1 << 0;
pub const VFIO_DEVICE_ATTACH_IOMMUFD_PT: u32 = vfio_io(19);

/// `VFIO_PCI_NUM_REGIONS`: BAR0-5, ROM, CONFIG, VGA.
pub const VFIO_PCI_NUM_REGIONS: u32 = 9;
/// `VFIO_PCI_NUM_IRQS`: INTX, MSI, MSIX, ERR, REQ.
pub const VFIO_PCI_NUM_IRQS: u32 = 5;

pub const VFIO_PCI_REGION_NAMES: [&str; 9] = [
    "BAR0", "BAR1", "BAR2", "BAR3", "BAR4", "BAR5", "ROM", "CONFIG", "VGA",
];
pub const VFIO_PCI_IRQ_NAMES: [&str; 5] = ["INTX", "MSI", "MSIX", "ERR", "REQ"];

/// `struct vfio_region_info`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VfioRegionInfo {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub cap_offset: u32,
    /// `__aligned_u64`: region size in bytes.
    pub size: u64,
    /// `__aligned_u64`: region offset from the start of the device fd.
    pub offset: u64,
}
pub const VFIO_REGION_INFO_FLAG_READ: u32 = 1 << 0;
pub const VFIO_REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
pub const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
pub const VFIO_REGION_INFO_FLAG_CAPS: u32 = 1 << 3;
/// `offsetofend(struct vfio_region_info, offset)`: the core's minimum `argsz`.
pub const VFIO_REGION_INFO_MINSZ: u32 = 32;
/// Region capability id (`struct vfio_info_cap_header.id`) of the MSI-X BAR's capability.
pub const VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: u16 = 3;
/// Region capability id of [`VfioRegionInfoCapType`] (version 1): what a device-specific
/// region (index >= `VFIO_PCI_NUM_REGIONS`) is.
pub const VFIO_REGION_INFO_CAP_TYPE: u16 = 2;

/// `struct vfio_region_info_cap_type`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VfioRegionInfoCapType {
    pub header: VfioInfoCapHeader,
    /// Global per bus driver, e.g. `VFIO_REGION_TYPE_PCI_VENDOR_TYPE | vendor`.
    pub r#type: u32,
    /// Type specific, e.g. `VFIO_REGION_SUBTYPE_INTEL_IGD_HOST_CFG`.
    pub subtype: u32,
}
/// Region type containing a PCI vendor ID in its low 16 bits.
pub const VFIO_REGION_TYPE_PCI_VENDOR_TYPE: u32 = 1 << 31;
pub const VFIO_REGION_TYPE_PCI_VENDOR_MASK: u32 = 0xffff;
/// 8086 vendor sub-types: the IGD OpRegion, and the config space of the host bridge
/// (00:00.0) and of the LPC bridge (00:1f.0), read-only (`vfio_pci_igd.c`).
pub const VFIO_REGION_SUBTYPE_INTEL_IGD_OPREGION: u32 = 1;
pub const VFIO_REGION_SUBTYPE_INTEL_IGD_HOST_CFG: u32 = 2;
pub const VFIO_REGION_SUBTYPE_INTEL_IGD_LPC_CFG: u32 = 3;
/// `PCI_VENDOR_ID_INTEL` (`include/linux/pci_ids.h`).
pub const PCI_VENDOR_ID_INTEL: u16 = 0x8086;

/// `VFIO_PCI_INDEX_TO_OFFSET(index)`: regions sit at `index << 40` in the device fd.
pub const VFIO_PCI_OFFSET_SHIFT: u32 = 40;
/// `VFIO_PCI_OFFSET_MASK`: the position within a region.
pub const VFIO_PCI_OFFSET_MASK: u64 = (1 << VFIO_PCI_OFFSET_SHIFT) - 1;
pub const VFIO_PCI_ROM_REGION_INDEX: u32 = 6;
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
pub const VFIO_PCI_VGA_REGION_INDEX: u32 = 8;

/// The device-fd offset of byte `off` of region `index`.
pub const fn region_offset(index: u32, off: u64) -> u64 {
    ((index as u64) << VFIO_PCI_OFFSET_SHIFT) + off
}

/// `struct vfio_irq_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioIrqInfo {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub count: u32,
}
pub const VFIO_IRQ_INFO_EVENTFD: u32 = 1 << 0;
pub const VFIO_IRQ_INFO_MASKABLE: u32 = 1 << 1;
pub const VFIO_IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
pub const VFIO_IRQ_INFO_NORESIZE: u32 = 1 << 3;

/// `VFIO_DEVICE_SET_IRQS`: argument `struct vfio_irq_set` followed by `count` data elements
/// (none, one `__u8` bool or one `__s32` eventfd per interrupt, as `flags` says).
pub const VFIO_DEVICE_SET_IRQS: u32 = vfio_io(10);

/// `struct vfio_irq_set` without its flexible array `__u8 data[]`, which starts at byte 20.
/// Not a [`SizedArg`]: the kernel reads `count` elements of data after the header, so
/// `sys::set_irqs` builds the buffer from a slice.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioIrqSet {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub start: u32,
    pub count: u32,
}
/// `offsetofend(struct vfio_irq_set, count)`: the kernel's minimum `argsz`.
pub const VFIO_IRQ_SET_MINSZ: u32 = 20;
pub const VFIO_IRQ_SET_DATA_NONE: u32 = 1 << 0;
pub const VFIO_IRQ_SET_DATA_BOOL: u32 = 1 << 1;
pub const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
pub const VFIO_IRQ_SET_ACTION_MASK: u32 = 1 << 3;
pub const VFIO_IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
pub const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
pub const VFIO_IRQ_SET_DATA_TYPE_MASK: u32 = 0x7;
pub const VFIO_IRQ_SET_ACTION_TYPE_MASK: u32 = 0x38;

/// `VFIO_DEVICE_IOEVENTFD`: write `data` at device fd `offset` when `fd` is signalled.
pub const VFIO_DEVICE_IOEVENTFD: u32 = vfio_io(16);
pub const VFIO_DEVICE_IOEVENTFD_32: u32 = 1 << 2;

/// `struct vfio_device_ioeventfd`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioDeviceIoeventfd {
    pub argsz: u32,
    pub flags: u32,
    pub offset: u64,
    pub data: u64,
    /// -1 to de-assign.
    pub fd: i32,
    pub reserved: u32,
}

/// The interrupt indexes of a vfio-pci device (`VFIO_PCI_*_IRQ_INDEX`).
pub const VFIO_PCI_INTX_IRQ_INDEX: u32 = 0;
pub const VFIO_PCI_MSI_IRQ_INDEX: u32 = 1;
pub const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;
pub const VFIO_PCI_ERR_IRQ_INDEX: u32 = 3;
pub const VFIO_PCI_REQ_IRQ_INDEX: u32 = 4;

/// `struct vfio_pci_dependent_device`: one function a hot reset of the device would reset.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VfioPciDependentDevice {
    /// The union `{ __u32 group_id; __u32 devid; }`: the IOMMU group number, or with
    /// `VFIO_PCI_HOT_RESET_FLAG_DEV_ID` (cdev-opened device) the iommufd device id.
    pub group_id_or_devid: u32,
    pub segment: u16,
    pub bus: u8,
    /// Use `PCI_SLOT`/`PCI_FUNC`: `devfn >> 3`, `devfn & 7`.
    pub devfn: u8,
}

impl VfioPciDependentDevice {
    /// Parse one entry from its 8 native-endian bytes.
    pub fn from_bytes(b: [u8; 8]) -> Self {
        VfioPciDependentDevice {
            group_id_or_devid: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            segment: u16::from_ne_bytes([b[4], b[5]]),
            bus: b[6],
            devfn: b[7],
        }
    }

    /// The function's address in sysfs form, `DDDD:BB:DD.F`.
    pub fn bdf(&self) -> String {
        format!(
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment,
            self.bus,
            self.devfn >> 3,
            self.devfn & 7
        )
    }
}

/// `struct vfio_pci_hot_reset_info` without its flexible array
/// `struct vfio_pci_dependent_device devices[]`, which starts at byte 12. The kernel's
/// minimum `argsz` is `offsetofend(count)` = 12; it answers `-ENOSPC` with `count` filled in
/// when `argsz` leaves no room for every entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioPciHotResetInfo {
    pub argsz: u32,
    pub flags: u32,
    pub count: u32,
}
pub const VFIO_PCI_HOT_RESET_FLAG_DEV_ID: u32 = 1 << 0;
pub const VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED: u32 = 1 << 1;

/// `struct vfio_pci_hot_reset` without its flexible array `__s32 group_fds[]`, which starts
/// at byte 12. Not a [`SizedArg`]: the kernel reads `count` group fds after the header
/// whatever `argsz` says, so `sys::pci_hot_reset` builds the buffer from a slice.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioPciHotReset {
    pub argsz: u32,
    pub flags: u32,
    pub count: u32,
}

/// `struct vfio_device_bind_iommufd`.
///
/// Note the 7.3 header has a trailing `__aligned_u64 token_uuid_ptr` (only read when
/// `VFIO_DEVICE_BIND_FLAG_TOKEN` is set), so the full structure is 24 bytes; the kernel's
/// minimum `argsz` is `offsetofend(out_devid)` = 16.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioDeviceBindIommufd {
    pub argsz: u32,
    pub flags: u32,
    pub iommufd: i32,
    pub out_devid: u32,
    /// `__aligned_u64`: user pointer to a 16-byte UUID, valid with `VFIO_DEVICE_BIND_FLAG_TOKEN`.
    pub token_uuid_ptr: u64,
}

/// `struct vfio_device_attach_iommufd_pt`.
///
/// The 7.3 header has a trailing `__u32 pasid` (only read with `VFIO_DEVICE_ATTACH_PASID`),
/// so the full structure is 16 bytes; the kernel's minimum `argsz` is
/// `offsetofend(pt_id)` = 12.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioDeviceAttachIommufdPt {
    pub argsz: u32,
    pub flags: u32,
    pub pt_id: u32,
    pub pasid: u32,
}

// ---------------------------------------------------------------------------------------
// iommufd.h
// ---------------------------------------------------------------------------------------

pub const IOMMUFD_TYPE: u8 = b';';
pub const IOMMUFD_CMD_DESTROY: u32 = 0x80;
pub const IOMMUFD_CMD_IOAS_ALLOC: u32 = 0x81;

/// `struct iommu_destroy`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IommuDestroy {
    pub size: u32,
    pub id: u32,
}
pub const IOMMU_DESTROY: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY);

/// `struct iommu_ioas_alloc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IommuIoasAlloc {
    pub size: u32,
    pub flags: u32,
    pub out_ioas_id: u32,
}
pub const IOMMU_IOAS_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC);

pub const IOMMUFD_CMD_IOAS_MAP: u32 = 0x85;
pub const IOMMUFD_CMD_IOAS_UNMAP: u32 = 0x86;
pub const IOMMUFD_CMD_IOAS_MAP_FILE: u32 = 0x8f;
/// `enum iommufd_ioas_map_flags`.
pub const IOMMU_IOAS_MAP_FIXED_IOVA: u32 = 1 << 0;
pub const IOMMU_IOAS_MAP_WRITEABLE: u32 = 1 << 1;
pub const IOMMU_IOAS_MAP_READABLE: u32 = 1 << 2;

/// `struct iommu_ioas_map`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IommuIoasMap {
    pub size: u32,
    pub flags: u32,
    pub ioas_id: u32,
    pub reserved: u32,
    pub user_va: u64,
    pub length: u64,
    pub iova: u64,
}
pub const IOMMU_IOAS_MAP: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP);

/// `struct iommu_ioas_map_file`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IommuIoasMapFile {
    pub size: u32,
    pub flags: u32,
    pub ioas_id: u32,
    pub fd: i32,
    pub start: u64,
    pub length: u64,
    pub iova: u64,
}
pub const IOMMU_IOAS_MAP_FILE: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP_FILE);

/// `struct iommu_ioas_unmap`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IommuIoasUnmap {
    pub size: u32,
    pub ioas_id: u32,
    pub iova: u64,
    pub length: u64,
}
pub const IOMMU_IOAS_UNMAP: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP);

// ---------------------------------------------------------------------------------------
// VFIO_DEVICE_FEATURE and the DMABUF features
// ---------------------------------------------------------------------------------------

/// `VFIO_DEVICE_FEATURE`: argument `struct vfio_device_feature` followed by the feature's
/// data.
pub const VFIO_DEVICE_FEATURE: u32 = vfio_io(17);

/// `struct vfio_device_feature` (the header; `data[]` follows).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioDeviceFeature {
    pub argsz: u32,
    pub flags: u32,
}
pub const VFIO_DEVICE_FEATURE_MASK: u32 = 0xffff;
pub const VFIO_DEVICE_FEATURE_GET: u32 = 1 << 16;
pub const VFIO_DEVICE_FEATURE_SET: u32 = 1 << 17;
pub const VFIO_DEVICE_FEATURE_PROBE: u32 = 1 << 18;

/// Linux 7.3: GET creates a DMABUF fd for ranges of a BAR.
pub const VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY: u32 = 3;
pub const VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP: u32 = 4;
pub const VFIO_DEVICE_FEATURE_LOW_POWER_EXIT: u32 = 5;
pub const VFIO_DEVICE_FEATURE_DMA_BUF: u32 = 11;
/// This project (issue 4): SET revokes an exported DMABUF for good. Data:
/// [`VfioDeviceFeatureDmaBufRevoke`]. Not in 7.3: the C vfio-pci answers ENOTTY.
pub const VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE: u32 = 14;
/// This project (issue 4): SET the memory attribute of later mmap()s of an exported DMABUF.
/// Data: [`VfioDeviceFeatureDmaBufMemattr`]. Not in 7.3: the C vfio-pci answers ENOTTY.
pub const VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR: u32 = 15;
/// `memattr` values: non-cached (the default) and write-combining.
pub const VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR_NC: u32 = 0;
pub const VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR_WC: u32 = 1;

/// The bytes of a `#[repr(C)]` feature structure of this section (integers only, no padding),
/// as the kernel reads them.
pub trait FeatureBytes: Copy {
    fn to_bytes(&self) -> Vec<u8>;
}

macro_rules! feature_bytes {
    ($($t:ty),*) => {$(
        impl FeatureBytes for $t {
            fn to_bytes(&self) -> Vec<u8> {
                let p: *const $t = self;
                // SAFETY: `$t` is a #[repr(C)] struct of integers without padding (its size
                // is pinned by the layout tests), so all its size_of bytes are initialized
                // and readable for the lifetime of `self`.
                unsafe { core::slice::from_raw_parts(p.cast::<u8>(), core::mem::size_of::<$t>()) }
                    .to_vec()
            }
        }
    )*};
}

feature_bytes!(
    VfioDeviceFeature,
    VfioRegionDmaRange,
    VfioDeviceFeatureDmaBuf,
    VfioDeviceFeatureDmaBufRevoke,
    VfioDeviceFeatureDmaBufMemattr
);

/// `struct vfio_region_dma_range`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VfioRegionDmaRange {
    pub offset: u64,
    pub length: u64,
}

/// `struct vfio_device_feature_dma_buf` (the fixed part; `dma_ranges[nr_ranges]` follows).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioDeviceFeatureDmaBuf {
    pub region_index: u32,
    pub open_flags: u32,
    pub flags: u32,
    pub nr_ranges: u32,
}

/// `struct vfio_device_feature_dma_buf_revoke` (this project).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioDeviceFeatureDmaBufRevoke {
    pub dmabuf_fd: i32,
}

/// `struct vfio_device_feature_dma_buf_memattr` (this project).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioDeviceFeatureDmaBufMemattr {
    pub dmabuf_fd: i32,
    pub memattr: u32,
}

/// A structure passed by pointer to a VFIO/IOMMUFD ioctl, whose first field is the size the
/// kernel may access (`argsz` in VFIO, `size` in IOMMUFD).
///
/// # Safety
///
/// Implementors must be `#[repr(C)]` plain old data: every bit pattern is a valid value (the
/// kernel overwrites them freely), with no padding the kernel could not write, and
/// [`SizedArg::argsz`] must return the first `u32` field. The ioctl wrapper relies on this to
/// check that the kernel never accesses more than `size_of::<Self>()` bytes.
pub unsafe trait SizedArg: Copy {
    fn argsz(&self) -> u32;
}

macro_rules! sized_arg {
    ($($t:ty => $field:ident),* $(,)?) => {$(
        // SAFETY: `$t` is a #[repr(C)] struct of integers only (any bit pattern is valid) and
        // `$field` is its first field, the size the kernel honours.
        unsafe impl SizedArg for $t {
            fn argsz(&self) -> u32 {
                self.$field
            }
        }
    )*};
}

sized_arg! {
    VfioGroupStatus => argsz,
    VfioDeviceInfo => argsz,
    VfioRegionInfo => argsz,
    VfioIrqInfo => argsz,
    VfioPciHotResetInfo => argsz,
    VfioDeviceBindIommufd => argsz,
    VfioDeviceAttachIommufdPt => argsz,
    IommuDestroy => size,
    IommuIoasAlloc => size,
    IommuIoasMap => size,
    IommuIoasMapFile => size,
    IommuIoasUnmap => size,
    VfioIommuType1DmaMap => argsz,
    VfioIommuType1DmaUnmap => argsz,
    VfioDeviceIoeventfd => argsz,
}

/// An ioctl request that takes a pointer to a [`SizedArg`] structure, typed so the wrapper in
/// `sys.rs` can only pass each request the structure the kernel expects for it.
///
/// # Safety
///
/// `NR` must be a VFIO/IOMMUFD request whose kernel handler accesses at most
/// max(`argsz`, fixed minimum of `Arg`) bytes through its argument, and that minimum must not
/// exceed `size_of::<Arg>()` (true of every argsz/size-prefixed VFIO and IOMMUFD ioctl).
pub unsafe trait IoctlRequest {
    type Arg: SizedArg;
    const NR: u32;
}

macro_rules! ioctl_request {
    ($($req:ident: $nr:ident => $arg:ty),* $(,)?) => {$(
        #[doc = concat!("Typed `", stringify!($nr), "`.")]
        pub struct $req;
        // SAFETY: the handler of `$nr` takes a `$arg` and honours its argsz/size field: it
        // copies in at most the minimum fixed part (<= size_of) or argsz, and copies out at
        // most min(argsz, its own struct size).
        unsafe impl IoctlRequest for $req {
            type Arg = $arg;
            const NR: u32 = $nr;
        }
    )*};
}

ioctl_request! {
    GroupGetStatus: VFIO_GROUP_GET_STATUS => VfioGroupStatus,
    DeviceGetInfo: VFIO_DEVICE_GET_INFO => VfioDeviceInfo,
    DeviceGetRegionInfo: VFIO_DEVICE_GET_REGION_INFO => VfioRegionInfo,
    DeviceGetIrqInfo: VFIO_DEVICE_GET_IRQ_INFO => VfioIrqInfo,
    DeviceGetPciHotResetInfo: VFIO_DEVICE_GET_PCI_HOT_RESET_INFO => VfioPciHotResetInfo,
    DeviceBindIommufd: VFIO_DEVICE_BIND_IOMMUFD => VfioDeviceBindIommufd,
    DeviceAttachIommufdPt: VFIO_DEVICE_ATTACH_IOMMUFD_PT => VfioDeviceAttachIommufdPt,
    IommuDestroyReq: IOMMU_DESTROY => IommuDestroy,
    IommuIoasAllocReq: IOMMU_IOAS_ALLOC => IommuIoasAlloc,
    IommuIoasMapReq: IOMMU_IOAS_MAP => IommuIoasMap,
    IommuIoasMapFileReq: IOMMU_IOAS_MAP_FILE => IommuIoasMapFile,
    IommuIoasUnmapReq: IOMMU_IOAS_UNMAP => IommuIoasUnmap,
    IommuMapDma: VFIO_IOMMU_MAP_DMA => VfioIommuType1DmaMap,
    IommuUnmapDma: VFIO_IOMMU_UNMAP_DMA => VfioIommuType1DmaUnmap,
    DeviceIoeventfd: VFIO_DEVICE_IOEVENTFD => VfioDeviceIoeventfd,
}

/// `size_of::<T>()` as the `u32` the kernel structures carry.
pub const fn size_u32<T>() -> u32 {
    core::mem::size_of::<T>() as u32
}

/// Render `VFIO_DEVICE_FLAGS_*` as `0x3 (RESET|PCI)`.
pub fn device_flags_str(flags: u32) -> String {
    let mut names: Vec<String> = VFIO_DEVICE_FLAG_NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| (*n).to_string())
        .collect();
    let known = VFIO_DEVICE_FLAG_NAMES
        .iter()
        .fold(0, |acc, (bit, _)| acc | bit);
    if flags & !known != 0 {
        names.push(format!("0x{:x}", flags & !known));
    }
    format!("0x{flags:x} ({})", names.join("|"))
}

/// Render `VFIO_REGION_INFO_FLAG_*` as `READ|WRITE|MMAP`.
pub fn region_flags_str(flags: u32) -> String {
    bits_str(
        flags,
        &[
            (VFIO_REGION_INFO_FLAG_READ, "READ"),
            (VFIO_REGION_INFO_FLAG_WRITE, "WRITE"),
            (VFIO_REGION_INFO_FLAG_MMAP, "MMAP"),
            (VFIO_REGION_INFO_FLAG_CAPS, "CAPS"),
        ],
    )
}

/// Render `VFIO_IRQ_INFO_*` as `EVENTFD|MASKABLE`.
pub fn irq_flags_str(flags: u32) -> String {
    bits_str(
        flags,
        &[
            (VFIO_IRQ_INFO_EVENTFD, "EVENTFD"),
            (VFIO_IRQ_INFO_MASKABLE, "MASKABLE"),
            (VFIO_IRQ_INFO_AUTOMASKED, "AUTOMASKED"),
            (VFIO_IRQ_INFO_NORESIZE, "NORESIZE"),
        ],
    )
}

/// Render `VFIO_PCI_HOT_RESET_FLAG_*` as `0x3 (DEV_ID|DEV_ID_OWNED)`.
pub fn hot_reset_info_flags_str(flags: u32) -> String {
    let names = bits_str(
        flags,
        &[
            (VFIO_PCI_HOT_RESET_FLAG_DEV_ID, "DEV_ID"),
            (VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED, "DEV_ID_OWNED"),
        ],
    );
    format!("0x{flags:x} ({names})")
}

fn bits_str(flags: u32, names: &[(u32, &str)]) -> String {
    let mut out: Vec<String> = names
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| (*n).to_string())
        .collect();
    let known = names.iter().fold(0, |acc, (bit, _)| acc | bit);
    if flags & !known != 0 {
        out.push(format!("0x{:x}", flags & !known));
    }
    if out.is_empty() {
        "-".to_string()
    } else {
        out.join("|")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn ioc_encoding() {
        // _IO(';', 100) = (0x3b << 8) | 100
        assert_eq!(io(b';', 100), 0x3b64);
        // _IOR('T', 0x30, 4) style sanity check of the generic encoding: dir=2 (read).
        assert_eq!(ioc(2, b'T', 0x30, 4), 0x8004_5430);
    }

    #[test]
    fn vfio_ioctl_numbers() {
        assert_eq!(VFIO_GET_API_VERSION, 0x3b64);
        assert_eq!(VFIO_CHECK_EXTENSION, 0x3b65);
        assert_eq!(VFIO_SET_IOMMU, 0x3b66);
        assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA, 0x3b72);
        assert_eq!(core::mem::size_of::<VfioIommuType1DmaMap>(), 32);
        assert_eq!(core::mem::size_of::<VfioIommuType1DmaUnmap>(), 24);
        assert_eq!(VFIO_GROUP_GET_STATUS, 0x3b67);
        assert_eq!(VFIO_GROUP_SET_CONTAINER, 0x3b68);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(VFIO_DEVICE_GET_INFO, 0x3b6b);
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO, 0x3b6c);
        assert_eq!(VFIO_DEVICE_GET_IRQ_INFO, 0x3b6d);
        assert_eq!(VFIO_DEVICE_SET_IRQS, 0x3b6e);
        assert_eq!(VFIO_DEVICE_RESET, 0x3b6f);
        assert_eq!(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, 0x3b70);
        assert_eq!(VFIO_DEVICE_PCI_HOT_RESET, 0x3b71);
        assert_eq!(VFIO_DEVICE_BIND_IOMMUFD, 0x3b76);
        assert_eq!(VFIO_DEVICE_ATTACH_IOMMUFD_PT, 0x3b77);
        // The "unknown ioctl" the checks use: VFIO_BASE + 60.
        assert_eq!(vfio_io(60), 0x3ba0);
    }

    #[test]
    fn iommufd_ioctl_numbers() {
        assert_eq!(IOMMU_DESTROY, 0x3b80);
        assert_eq!(IOMMU_IOAS_ALLOC, 0x3b81);
    }

    #[test]
    fn vfio_struct_layouts() {
        assert_eq!(size_of::<VfioInfoCapHeader>(), 8);
        assert_eq!(offset_of!(VfioInfoCapHeader, version), 2);
        assert_eq!(offset_of!(VfioInfoCapHeader, next), 4);

        assert_eq!(size_of::<VfioGroupStatus>(), 8);
        assert_eq!(offset_of!(VfioGroupStatus, flags), 4);

        assert_eq!(size_of::<VfioDeviceInfo>(), 24);
        assert_eq!(offset_of!(VfioDeviceInfo, flags), 4);
        assert_eq!(offset_of!(VfioDeviceInfo, num_regions), 8);
        assert_eq!(offset_of!(VfioDeviceInfo, num_irqs), 12);
        assert_eq!(offset_of!(VfioDeviceInfo, cap_offset), 16);
        assert_eq!(offset_of!(VfioDeviceInfo, pad), 20);
        assert_eq!(
            (offset_of!(VfioDeviceInfo, num_irqs) + 4) as u32,
            VFIO_DEVICE_INFO_MINSZ
        );

        assert_eq!(size_of::<VfioRegionInfo>(), 32);
        assert_eq!(align_of::<VfioRegionInfo>(), 8);
        assert_eq!(offset_of!(VfioRegionInfo, index), 8);
        assert_eq!(offset_of!(VfioRegionInfo, cap_offset), 12);
        assert_eq!(offset_of!(VfioRegionInfo, size), 16);
        assert_eq!(offset_of!(VfioRegionInfo, offset), 24);

        assert_eq!(size_of::<VfioRegionInfoCapType>(), 16);
        assert_eq!(offset_of!(VfioRegionInfoCapType, r#type), 8);
        assert_eq!(offset_of!(VfioRegionInfoCapType, subtype), 12);

        assert_eq!(size_of::<VfioIrqInfo>(), 16);
        assert_eq!(offset_of!(VfioIrqInfo, index), 8);
        assert_eq!(offset_of!(VfioIrqInfo, count), 12);

        assert_eq!(size_of::<VfioIrqSet>() as u32, VFIO_IRQ_SET_MINSZ);
        assert_eq!(offset_of!(VfioIrqSet, index), 8);
        assert_eq!(offset_of!(VfioIrqSet, start), 12);
        assert_eq!(offset_of!(VfioIrqSet, count), 16);
        assert_eq!(
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD,
            VFIO_IRQ_SET_DATA_TYPE_MASK
        );
        assert_eq!(
            VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_ACTION_TRIGGER,
            VFIO_IRQ_SET_ACTION_TYPE_MASK
        );
        assert_eq!(VFIO_PCI_REQ_IRQ_INDEX + 1, VFIO_PCI_NUM_IRQS);

        assert_eq!(size_of::<VfioPciDependentDevice>(), 8);
        assert_eq!(size_of::<VfioDeviceIoeventfd>(), 32);
        assert_eq!(offset_of!(VfioDeviceIoeventfd, fd), 24);
        assert_eq!(VFIO_DEVICE_IOEVENTFD, 0x3b74);
        assert_eq!(align_of::<VfioPciDependentDevice>(), 4);
        assert_eq!(offset_of!(VfioPciDependentDevice, segment), 4);
        assert_eq!(offset_of!(VfioPciDependentDevice, bus), 6);
        assert_eq!(offset_of!(VfioPciDependentDevice, devfn), 7);

        // The flexible arrays start right after the 12-byte headers (offsetof(devices) and
        // offsetof(group_fds) are 12 in the C header: both element types are 4-aligned).
        assert_eq!(size_of::<VfioPciHotResetInfo>(), 12);
        assert_eq!(offset_of!(VfioPciHotResetInfo, flags), 4);
        assert_eq!(offset_of!(VfioPciHotResetInfo, count), 8);
        assert_eq!(size_of::<VfioPciHotReset>(), 12);
        assert_eq!(offset_of!(VfioPciHotReset, flags), 4);
        assert_eq!(offset_of!(VfioPciHotReset, count), 8);

        assert_eq!(size_of::<VfioDeviceBindIommufd>(), 24);
        assert_eq!(align_of::<VfioDeviceBindIommufd>(), 8);
        assert_eq!(offset_of!(VfioDeviceBindIommufd, flags), 4);
        assert_eq!(offset_of!(VfioDeviceBindIommufd, iommufd), 8);
        assert_eq!(offset_of!(VfioDeviceBindIommufd, out_devid), 12);
        assert_eq!(offset_of!(VfioDeviceBindIommufd, token_uuid_ptr), 16);

        assert_eq!(size_of::<VfioDeviceAttachIommufdPt>(), 16);
        assert_eq!(offset_of!(VfioDeviceAttachIommufdPt, flags), 4);
        assert_eq!(offset_of!(VfioDeviceAttachIommufdPt, pt_id), 8);
        assert_eq!(offset_of!(VfioDeviceAttachIommufdPt, pasid), 12);
    }

    #[test]
    fn feature_layouts() {
        assert_eq!(VFIO_DEVICE_FEATURE, 0x3b75);
        assert_eq!(size_of::<VfioDeviceFeature>(), 8);
        assert_eq!(size_of::<VfioRegionDmaRange>(), 16);
        assert_eq!(offset_of!(VfioRegionDmaRange, length), 8);
        assert_eq!(size_of::<VfioDeviceFeatureDmaBuf>(), 16);
        assert_eq!(offset_of!(VfioDeviceFeatureDmaBuf, open_flags), 4);
        assert_eq!(offset_of!(VfioDeviceFeatureDmaBuf, flags), 8);
        assert_eq!(offset_of!(VfioDeviceFeatureDmaBuf, nr_ranges), 12);
        assert_eq!(size_of::<VfioDeviceFeatureDmaBufRevoke>(), 4);
        assert_eq!(size_of::<VfioDeviceFeatureDmaBufMemattr>(), 8);
        assert_eq!(offset_of!(VfioDeviceFeatureDmaBufMemattr, memattr), 4);
        assert_eq!(
            VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_GET,
            0x5_0000
        );
        // 13 is 7.3's VFIO_DEVICE_FEATURE_ZPCI_ERROR (the series' v4 number for revoke).
        assert_eq!(VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE, 14);
        assert_eq!(VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR, 15);
    }

    #[test]
    fn iommufd_struct_layouts() {
        assert_eq!(size_of::<IommuDestroy>(), 8);
        assert_eq!(offset_of!(IommuDestroy, id), 4);
        assert_eq!(size_of::<IommuIoasAlloc>(), 12);
        assert_eq!(offset_of!(IommuIoasAlloc, flags), 4);
        assert_eq!(offset_of!(IommuIoasAlloc, out_ioas_id), 8);
    }

    #[test]
    fn region_offsets() {
        assert_eq!(
            region_offset(VFIO_PCI_CONFIG_REGION_INDEX, 0),
            0x700_0000_0000
        );
        assert_eq!(
            region_offset(VFIO_PCI_VGA_REGION_INDEX, 0x3cc),
            0x800_0000_03cc
        );
        assert_eq!(region_offset(2, 0x1000), 0x200_0000_1000);
        assert_eq!(VFIO_PCI_ROM_REGION_INDEX + 1, VFIO_PCI_CONFIG_REGION_INDEX);
    }

    #[test]
    fn constants() {
        assert_eq!(VFIO_TYPE, 0x3b);
        assert_eq!(VFIO_TYPE1V2_IOMMU, 3);
        assert_eq!(VFIO_DEVICE_FLAGS_PCI, 2);
        assert_eq!(VFIO_DEVICE_FLAGS_CAPS, 0x80);
        assert_eq!(VFIO_PCI_REGION_NAMES.len() as u32, VFIO_PCI_NUM_REGIONS);
        assert_eq!(VFIO_PCI_IRQ_NAMES.len() as u32, VFIO_PCI_NUM_IRQS);
        assert_eq!(VFIO_GROUP_FLAGS_CONTAINER_SET, 2);
        assert_eq!(VFIO_REGION_INFO_CAP_TYPE, 2);
        assert_eq!(
            VFIO_REGION_TYPE_PCI_VENDOR_TYPE | u32::from(PCI_VENDOR_ID_INTEL),
            0x8000_8086
        );
        assert_eq!(VFIO_PCI_OFFSET_MASK, 0xff_ffff_ffff);
    }

    #[test]
    fn sized_arg_reads_first_field() {
        let info = VfioDeviceInfo {
            argsz: 15,
            ..Default::default()
        };
        assert_eq!(info.argsz(), 15);
        let alloc = IommuIoasAlloc {
            size: size_u32::<IommuIoasAlloc>(),
            ..Default::default()
        };
        assert_eq!(alloc.argsz(), 12);
    }

    #[test]
    fn dependent_device_bytes() {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&32u32.to_ne_bytes());
        b[4..6].copy_from_slice(&1u16.to_ne_bytes());
        b[6] = 0x0c;
        b[7] = (2 << 3) | 1;
        let d = VfioPciDependentDevice::from_bytes(b);
        assert_eq!(d.group_id_or_devid, 32);
        assert_eq!(d.bdf(), "0001:0c:02.1");
    }

    #[test]
    fn flag_strings() {
        assert_eq!(device_flags_str(0x3), "0x3 (RESET|PCI)");
        assert_eq!(device_flags_str(0x82), "0x82 (PCI|CAPS)");
        assert_eq!(device_flags_str(0x1002), "0x1002 (PCI|0x1000)");
        assert_eq!(region_flags_str(0x7), "READ|WRITE|MMAP");
        assert_eq!(region_flags_str(0), "-");
        assert_eq!(irq_flags_str(0x9), "EVENTFD|NORESIZE");
        assert_eq!(hot_reset_info_flags_str(0), "0x0 (-)");
        assert_eq!(hot_reset_info_flags_str(3), "0x3 (DEV_ID|DEV_ID_OWNED)");
    }
}
