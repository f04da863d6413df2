//! The checks: the same sequence on the vfio-pci device and on the vfio-pci-rs device of
//! each twin pair, then a comparison of what the two drivers answered.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cli::{Driver, Twin};
use crate::mixed;
use crate::report::{Phase, Reporter, Stop};
use crate::sys::{self, err_name, InfoBuf, ValueIoctl};
use crate::sysfs;
use crate::uapi::{self, size_u32};

/// Checks of the group/container path (check 1-3 of the plan), in report order.
pub const GROUP_CHECKS: &[&str] = &[
    "iommu-group",
    "container-open",
    "api-version",
    "group-open",
    "group-viable",
    "set-container",
    "set-iommu",
    "get-device-fd",
    "get-info",
    "get-info-flags",
    "get-info-regions",
    "get-info-irqs",
    "get-info-caps",
    "argsz-short",
    "argsz-minsz",
    "unknown-ioctl",
];

/// Checks of the cdev + iommufd path (check 4), run after every group-path fd is closed.
pub const CDEV_CHECKS: &[&str] = &[
    "cdev-name",
    "cdev-open",
    "cdev-prebind-get-info",
    "iommufd-open",
    "bind-iommufd",
    "ioas-alloc",
    "attach-pt",
    "cdev-get-info",
    "cdev-get-info-match",
    "ioas-destroy",
];

/// Reopening through the group after everything was closed (check 6).
pub const REOPEN_CHECKS: &[&str] = &["reopen"];

/// Values compared between the drivers (check 5), in report order.
pub const PARITY_KEYS: &[&str] = &[
    "get-info",
    "get-info-caps",
    "argsz-short",
    "argsz-minsz",
    "unknown-ioctl",
    "cdev-prebind-get-info",
    "bind-iommufd",
    "attach-pt",
    "cdev-get-info",
    "reopen",
];

/// The "unknown" ioctl: `_IO(VFIO_TYPE, VFIO_BASE + 60)`, far past the last device ioctl.
pub const UNKNOWN_IOCTL: u32 = uapi::vfio_io(60);

/// What GET_INFO reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfoValues {
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
    /// The capability chain (bytes after the fixed structure), empty without CAPS.
    pub caps: Vec<u8>,
}

impl fmt::Display for InfoValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "flags=0x{:x} num_regions={} num_irqs={}",
            self.flags, self.num_regions, self.num_irqs
        )?;
        if !self.caps.is_empty() {
            write!(f, " caps={}", hex(&self.caps))?;
        }
        Ok(())
    }
}

/// Lower-case hex, no separators.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A GET_INFO result plus anything wrong with its capability chain.
pub struct InfoQuery {
    pub values: InfoValues,
    /// Offset of the first capability and (id, version) of each, when there are caps.
    pub cap_ids: Vec<(u16, u16)>,
    pub caps_problem: Option<String>,
}

/// Read a capability header at `off` of an INFO buffer.
fn cap_header_at(buf: &[u8], off: usize) -> Option<uapi::VfioInfoCapHeader> {
    let b = buf.get(off..off + 8)?;
    Some(uapi::VfioInfoCapHeader {
        id: u16::from_ne_bytes([b[0], b[1]]),
        version: u16::from_ne_bytes([b[2], b[3]]),
        next: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
    })
}

/// Walk a VFIO capability chain in `buf` (offsets relative to the start of the INFO buffer)
/// starting at `first`. Returns (id, version) of each capability.
pub fn walk_caps(buf: &[u8], first: u32, fixed: usize) -> Result<Vec<(u16, u16)>, String> {
    let mut out = Vec::new();
    let mut off = first as usize;
    if off == 0 {
        return Err("cap_offset is 0".to_string());
    }
    loop {
        if off < fixed {
            return Err(format!("capability at {off} overlaps the fixed structure"));
        }
        if !off.is_multiple_of(4) {
            return Err(format!("capability at {off} is misaligned"));
        }
        let h = cap_header_at(buf, off)
            .ok_or_else(|| format!("capability at {off} runs past argsz {}", buf.len()))?;
        out.push((h.id, h.version));
        if h.next == 0 {
            return Ok(out);
        }
        if (h.next as usize) <= off {
            return Err(format!("capability at {off} points back to {}", h.next));
        }
        off = h.next as usize;
    }
}

/// VFIO_DEVICE_GET_INFO with argsz = sizeof(struct vfio_device_info), re-queried with a
/// bigger buffer when the device reports a capability chain.
pub fn get_info(dev: &File) -> io::Result<InfoQuery> {
    let fixed = size_u32::<uapi::VfioDeviceInfo>();
    let mut info = uapi::VfioDeviceInfo {
        argsz: fixed,
        ..Default::default()
    };
    sys::ioctl_struct::<uapi::DeviceGetInfo>(dev, &mut info)?;
    let mut values = InfoValues {
        flags: info.flags,
        num_regions: info.num_regions,
        num_irqs: info.num_irqs,
        caps: Vec::new(),
    };
    let mut cap_ids = Vec::new();
    let mut caps_problem = None;
    let has_caps = info.flags & uapi::VFIO_DEVICE_FLAGS_CAPS != 0;
    if has_caps && info.argsz > fixed {
        // Bound the re-query: a capability chain is a few dozen bytes.
        if info.argsz > 64 * 1024 {
            caps_problem = Some(format!("argsz {} is implausibly large", info.argsz));
        } else {
            let mut buf = InfoBuf::new(info.argsz);
            match sys::ioctl_info_buf::<uapi::DeviceGetInfo>(dev, &mut buf) {
                Err(e) => {
                    caps_problem = Some(format!(
                        "re-query with argsz {}: {}",
                        info.argsz,
                        err_name(&e)
                    ))
                }
                Ok(_) => {
                    let bytes = buf.bytes();
                    let end = (info.argsz as usize).min(bytes.len());
                    let again = (
                        buf.u32_at(4).unwrap_or(0),
                        buf.u32_at(8).unwrap_or(0),
                        buf.u32_at(12).unwrap_or(0),
                    );
                    if again != (values.flags, values.num_regions, values.num_irqs) {
                        caps_problem = Some(format!(
                            "re-query changed flags/num_regions/num_irqs to 0x{:x}/{}/{}",
                            again.0, again.1, again.2
                        ));
                    }
                    values.caps = bytes[fixed as usize..end].to_vec();
                    let cap_offset = buf.u32_at(16).unwrap_or(0);
                    match walk_caps(&bytes[..end], cap_offset, fixed as usize) {
                        Ok(ids) => cap_ids = ids,
                        Err(e) => caps_problem = caps_problem.or(Some(e)),
                    }
                }
            }
        }
    } else if has_caps {
        caps_problem = Some(format!(
            "CAPS set but argsz stayed {} (no room reported for a chain)",
            info.argsz
        ));
    } else if info.argsz != fixed {
        caps_problem = Some(format!("argsz changed to {} without CAPS", info.argsz));
    }
    Ok(InfoQuery {
        values,
        cap_ids,
        caps_problem,
    })
}

/// Wait briefly for a device node (devtmpfs creates them asynchronously to us), then open it.
pub fn open_node(path: &Path) -> Result<File, String> {
    sysfs::wait_for(|| path.exists(), Duration::from_secs(2));
    sys::open_rw(path).map_err(|e| format!("open {}: {}", path.display(), err_name(&e)))
}

/// `/dev/vfio/<group>`, or `/dev/vfio/noiommu-<group>` for a no-IOMMU group.
fn group_node(group: u32) -> (PathBuf, bool) {
    let normal = PathBuf::from(format!("/dev/vfio/{group}"));
    let noiommu = PathBuf::from(format!("/dev/vfio/noiommu-{group}"));
    if !normal.exists() && noiommu.exists() {
        (noiommu, true)
    } else {
        (normal, false)
    }
}

/// A container with one group attached and its IOMMU set: what every device fd of the
/// group needs. Fields drop in declaration order: the group (which leaves the container),
/// then the container. Device fds opened from it must be dropped first.
pub struct GroupSession {
    pub group: File,
    pub(crate) container: File,
    pub group_id: u32,
    /// `/dev/vfio/<group>` (or `noiommu-<group>`).
    pub node: PathBuf,
    pub iommu_type: &'static str,
}

impl GroupSession {
    /// `VFIO_GROUP_GET_DEVICE_FD` for `bdf`.
    pub fn device_fd(&self, bdf: &str) -> io::Result<File> {
        let name = match sysfs::vf_token(bdf) {
            Some(token) => format!("{bdf} vf_token={token}"),
            None => bdf.to_string(),
        };
        let cname = CString::new(name).expect("a validated BDF has no NUL");
        sys::group_get_device_fd(&self.group, &cname)
    }
}

/// A device opened through the legacy container/group path. Fields drop in declaration
/// order: the device, then the session it was opened from.
pub struct GroupDevice {
    pub device: File,
    pub session: GroupSession,
}

/// Receives the outcome of each step of [`open_via_group`].
pub trait Steps {
    fn step<T>(&mut self, name: &'static str, r: Result<T, String>) -> Result<T, Stop>;
}

impl Steps for Phase<'_> {
    fn step<T>(&mut self, name: &'static str, r: Result<T, String>) -> Result<T, Stop> {
        Phase::step(self, name, r)
    }
}

/// Steps that report nothing and remember the first failure.
#[derive(Default)]
pub struct Quiet {
    pub failure: Option<String>,
}

impl Steps for Quiet {
    fn step<T>(&mut self, name: &'static str, r: Result<T, String>) -> Result<T, Stop> {
        r.map_err(|e| {
            self.failure = Some(format!("{name}: {e}"));
            Stop { step: name }
        })
    }
}

/// Check 1: container, group, IOMMU, device fd.
pub fn open_via_group(bdf: &str, s: &mut impl Steps) -> Result<GroupDevice, Stop> {
    let session = open_group(bdf, s)?;
    let device = s.step(
        "get-device-fd",
        session.device_fd(bdf).map_err(|e| err_name(&e)),
    )?;
    Ok(GroupDevice { device, session })
}

/// The part of check 1 before the device fd: container, `bdf`'s group, IOMMU type (type1v2
/// preferred, type1 next; noiommu for a no-IOMMU group).
pub fn open_group(bdf: &str, s: &mut impl Steps) -> Result<GroupSession, Stop> {
    let group_id = s.step(
        "iommu-group",
        sysfs::iommu_group(bdf).map_err(|e| format!("readlink iommu_group: {}", err_name(&e))),
    )?;
    let container = s.step("container-open", open_node(Path::new("/dev/vfio/vfio")))?;
    s.step(
        "api-version",
        match sys::ioctl_noarg(&container, uapi::VFIO_GET_API_VERSION) {
            Ok(v) if v == uapi::VFIO_API_VERSION => Ok(()),
            Ok(v) => Err(format!("expected {} got {v}", uapi::VFIO_API_VERSION)),
            Err(e) => Err(err_name(&e)),
        },
    )?;
    let (node, noiommu) = group_node(group_id);
    let group = s.step("group-open", open_node(&node))?;
    let mut status = uapi::VfioGroupStatus {
        argsz: size_u32::<uapi::VfioGroupStatus>(),
        flags: 0,
    };
    s.step(
        "group-viable",
        match sys::ioctl_struct::<uapi::GroupGetStatus>(&group, &mut status) {
            Ok(_) if status.flags & uapi::VFIO_GROUP_FLAGS_VIABLE != 0 => Ok(()),
            Ok(_) => Err(format!(
                "flags 0x{:x} lack VIABLE (another device of group {group_id} is bound to a non-VFIO driver?)",
                status.flags
            )),
            Err(e) => Err(format!("VFIO_GROUP_GET_STATUS: {}", err_name(&e))),
        },
    )?;
    s.step(
        "set-container",
        sys::group_set_container(&group, &container)
            .map_err(|e| err_name(&e))
            .and_then(|_| {
                let mut st = uapi::VfioGroupStatus {
                    argsz: size_u32::<uapi::VfioGroupStatus>(),
                    flags: 0,
                };
                sys::ioctl_struct::<uapi::GroupGetStatus>(&group, &mut st)
                    .map_err(|e| format!("VFIO_GROUP_GET_STATUS after: {}", err_name(&e)))?;
                if st.flags & uapi::VFIO_GROUP_FLAGS_CONTAINER_SET == 0 {
                    return Err(format!("status flags 0x{:x} lack CONTAINER_SET", st.flags));
                }
                Ok(())
            }),
    )?;
    let candidates: &[(u32, &'static str)] = if noiommu {
        &[(uapi::VFIO_NOIOMMU_IOMMU, "noiommu")]
    } else {
        &[
            (uapi::VFIO_TYPE1V2_IOMMU, "type1v2"),
            (uapi::VFIO_TYPE1_IOMMU, "type1"),
        ]
    };
    let iommu_type = s.step("set-iommu", {
        let chosen = candidates.iter().find(|(t, _)| {
            sys::ioctl_value(&container, ValueIoctl::CheckExtension, *t).is_ok_and(|r| r > 0)
        });
        match chosen {
            None => Err("VFIO_CHECK_EXTENSION reports no usable IOMMU type".to_string()),
            Some((t, name)) => sys::ioctl_value(&container, ValueIoctl::SetIommu, *t)
                .map(|_| *name)
                .map_err(|e| format!("VFIO_SET_IOMMU({name}): {}", err_name(&e))),
        }
    })?;
    Ok(GroupSession {
        group,
        container,
        group_id,
        node,
        iommu_type,
    })
}

/// The outcome of an ioctl as compared between drivers: `ok` or the errno name.
fn outcome<T>(r: &io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(e) => err_name(e),
    }
}

/// Everything one driver answered for one device, for the parity checks.
#[derive(Default, Debug)]
pub struct Record {
    pub values: BTreeMap<&'static str, String>,
    /// GET_INFO through the group path, for the cdev path to match.
    pub group_info: Option<InfoValues>,
}

impl Record {
    fn set(&mut self, key: &'static str, v: impl Into<String>) {
        debug_assert!(PARITY_KEYS.contains(&key));
        self.values.insert(key, v.into());
    }
}

/// Checks 1-3 on a bound device, through the group path. Every fd is closed on return.
pub fn group_phase(p: &mut Phase, bdf: &str, rec: &mut Record) -> Result<(), Stop> {
    let gd = open_via_group(bdf, p)?;
    p.note(&format!(
        "{bdf} iommu_group {} iommu {}",
        gd.session.group_id, gd.session.iommu_type
    ));
    let dev = &gd.device;

    // Check 2: GET_INFO.
    let q = p.step("get-info", get_info(dev).map_err(|e| err_name(&e)))?;
    let v = q.values.clone();
    p.note(&format!(
        "get-info {} flags {}",
        v,
        uapi::device_flags_str(v.flags)
    ));
    p.expect(
        "get-info-flags",
        v.flags & uapi::VFIO_DEVICE_FLAGS_PCI != 0,
        || {
            format!(
                "expected PCI (0x{:x}) set, got {}",
                uapi::VFIO_DEVICE_FLAGS_PCI,
                uapi::device_flags_str(v.flags)
            )
        },
    );
    p.expect(
        "get-info-regions",
        v.num_regions >= uapi::VFIO_PCI_NUM_REGIONS,
        || {
            format!(
                "expected >= {} got {}",
                uapi::VFIO_PCI_NUM_REGIONS,
                v.num_regions
            )
        },
    );
    p.expect(
        "get-info-irqs",
        v.num_irqs == uapi::VFIO_PCI_NUM_IRQS,
        || format!("expected {} got {}", uapi::VFIO_PCI_NUM_IRQS, v.num_irqs),
    );
    match &q.caps_problem {
        None => {
            if !q.cap_ids.is_empty() {
                let ids: Vec<String> = q
                    .cap_ids
                    .iter()
                    .map(|(id, ver)| format!("{id}v{ver}"))
                    .collect();
                p.note(&format!("capabilities {}", ids.join(" ")));
            }
            p.pass("get-info-caps");
        }
        Some(problem) => p.fail("get-info-caps", problem),
    }
    rec.set(
        "get-info",
        format!(
            "flags=0x{:x} num_regions={} num_irqs={}",
            v.flags, v.num_regions, v.num_irqs
        ),
    );
    rec.set(
        "get-info-caps",
        if q.caps_problem.is_some() {
            "invalid".to_string()
        } else if v.caps.is_empty() {
            "none".to_string()
        } else {
            hex(&v.caps)
        },
    );
    rec.group_info = Some(v.clone());

    // Check 3: bad input.
    let mut short = uapi::VfioDeviceInfo {
        argsz: uapi::VFIO_DEVICE_INFO_MINSZ - 1,
        ..Default::default()
    };
    let r = sys::ioctl_struct::<uapi::DeviceGetInfo>(dev, &mut short);
    rec.set("argsz-short", outcome(&r));
    p.expect(
        "argsz-short",
        matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EINVAL)),
        || format!("GET_INFO argsz 15: expected EINVAL got {}", outcome(&r)),
    );

    let mut min = uapi::VfioDeviceInfo {
        argsz: uapi::VFIO_DEVICE_INFO_MINSZ,
        ..Default::default()
    };
    let r = sys::ioctl_struct::<uapi::DeviceGetInfo>(dev, &mut min);
    let got = (min.flags, min.num_regions, min.num_irqs);
    rec.set(
        "argsz-minsz",
        match &r {
            Ok(_) => format!(
                "ok flags=0x{:x} num_regions={} num_irqs={}",
                got.0, got.1, got.2
            ),
            Err(e) => err_name(e),
        },
    );
    match &r {
        Err(e) => p.fail(
            "argsz-minsz",
            &format!("GET_INFO argsz 16: expected success got {}", err_name(e)),
        ),
        Ok(_) if got != (v.flags, v.num_regions, v.num_irqs) => p.fail(
            "argsz-minsz",
            &format!(
                "GET_INFO argsz 16 returned flags=0x{:x} num_regions={} num_irqs={}, full query {v}",
                got.0, got.1, got.2
            ),
        ),
        Ok(_) if min.cap_offset != 0 || min.pad != 0 => p.fail(
            "argsz-minsz",
            &format!(
                "GET_INFO argsz 16 wrote past argsz: cap_offset={} pad={}",
                min.cap_offset, min.pad
            ),
        ),
        Ok(_) => p.pass("argsz-minsz"),
    }

    let r = sys::ioctl_noarg(dev, UNKNOWN_IOCTL);
    rec.set("unknown-ioctl", outcome(&r));
    p.expect(
        "unknown-ioctl",
        matches!(&r, Err(e) if e.raw_os_error() == Some(libc::ENOTTY)),
        || {
            format!(
                "ioctl 0x{UNKNOWN_IOCTL:x}: expected ENOTTY got {}",
                outcome(&r)
            )
        },
    );
    drop(gd);
    Ok(())
}

/// Check 4: the cdev + iommufd path. Must run with no group-path fd open for the device.
pub fn cdev_phase(p: &mut Phase, bdf: &str, rec: &mut Record) -> Result<(), Stop> {
    let name = p.step(
        "cdev-name",
        sysfs::vfio_cdev_name(bdf).map_err(|e| format!("{bdf}/vfio-dev: {}", err_name(&e))),
    )?;
    let node = PathBuf::from(format!("/dev/vfio/devices/{name}"));
    let dev = p.step("cdev-open", open_node(&node))?;

    // The core refuses every ioctl but BIND before the device is bound to an iommufd.
    let mut info = uapi::VfioDeviceInfo {
        argsz: size_u32::<uapi::VfioDeviceInfo>(),
        ..Default::default()
    };
    let r = sys::ioctl_struct::<uapi::DeviceGetInfo>(&dev, &mut info);
    rec.set("cdev-prebind-get-info", outcome(&r));
    p.expect(
        "cdev-prebind-get-info",
        matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EINVAL)),
        || format!("GET_INFO before BIND: expected EINVAL got {}", outcome(&r)),
    );

    let iommufd = p.step("iommufd-open", open_node(Path::new("/dev/iommu")))?;
    let token = sysfs::vf_token(bdf).and_then(|t| sysfs::uuid_bytes(&t));
    let mut bind = uapi::VfioDeviceBindIommufd {
        argsz: size_u32::<uapi::VfioDeviceBindIommufd>(),
        flags: if token.is_some() {
            uapi::VFIO_DEVICE_BIND_FLAG_TOKEN
        } else {
            0
        },
        iommufd: std::os::fd::AsRawFd::as_raw_fd(&iommufd),
        out_devid: 0,
        token_uuid_ptr: token.as_ref().map_or(0, |t| t.as_ptr() as u64),
    };
    let r = sys::ioctl_struct::<uapi::DeviceBindIommufd>(&dev, &mut bind);
    rec.set("bind-iommufd", outcome(&r));
    p.step(
        "bind-iommufd",
        r.map_err(|e| format!("VFIO_DEVICE_BIND_IOMMUFD: {}", err_name(&e))),
    )?;
    let mut alloc = uapi::IommuIoasAlloc {
        size: size_u32::<uapi::IommuIoasAlloc>(),
        flags: 0,
        out_ioas_id: 0,
    };
    p.step(
        "ioas-alloc",
        sys::ioctl_struct::<uapi::IommuIoasAllocReq>(&iommufd, &mut alloc)
            .map_err(|e| format!("IOMMU_IOAS_ALLOC: {}", err_name(&e))),
    )?;
    let ioas = alloc.out_ioas_id;
    let mut attach = uapi::VfioDeviceAttachIommufdPt {
        argsz: size_u32::<uapi::VfioDeviceAttachIommufdPt>(),
        flags: 0,
        pt_id: ioas,
        pasid: 0,
    };
    let r = sys::ioctl_struct::<uapi::DeviceAttachIommufdPt>(&dev, &mut attach);
    rec.set("attach-pt", outcome(&r));
    p.step(
        "attach-pt",
        r.map_err(|e| {
            format!(
                "VFIO_DEVICE_ATTACH_IOMMUFD_PT(ioas {ioas}): {}",
                err_name(&e)
            )
        }),
    )?;
    p.note(&format!(
        "{node} devid {} ioas {ioas} hwpt {}",
        bind.out_devid,
        attach.pt_id,
        node = node.display()
    ));

    let q = p.step(
        "cdev-get-info",
        get_info(&dev).map_err(|e| format!("GET_INFO after bind+attach: {}", err_name(&e))),
    )?;
    rec.set("cdev-get-info", q.values.to_string());
    match &rec.group_info {
        None => p.fail(
            "cdev-get-info-match",
            "no group-path GET_INFO to compare with",
        ),
        Some(g) => p.expect("cdev-get-info-match", *g == q.values, || {
            format!("cdev {} != group {g}", q.values)
        }),
    }

    // Closing the device fd unbinds it from the iommufd and detaches it, which drops its use
    // of the IOAS: only then can the IOAS be destroyed.
    drop(dev);
    let mut destroy = uapi::IommuDestroy {
        size: size_u32::<uapi::IommuDestroy>(),
        id: ioas,
    };
    p.step(
        "ioas-destroy",
        sys::ioctl_struct::<uapi::IommuDestroyReq>(&iommufd, &mut destroy).map_err(|e| {
            format!(
                "IOMMU_DESTROY(ioas {ioas}) after closing the device: {}",
                err_name(&e)
            )
        }),
    )?;
    drop(iommufd);
    Ok(())
}

/// Check 6: after everything was closed, the device opens again through the group.
pub fn reopen_phase(p: &mut Phase, bdf: &str, rec: &mut Record) -> Result<(), Stop> {
    let mut quiet = Quiet::default();
    let r = open_via_group(bdf, &mut quiet)
        .map_err(|_| quiet.failure.take().unwrap_or_default())
        .and_then(|gd| {
            get_info(&gd.device)
                .map_err(|e| format!("get-info: {}", err_name(&e)))
                .map(|q| q.values)
        });
    rec.set(
        "reopen",
        match &r {
            Ok(v) => format!("ok {v}"),
            Err(e) => e.clone(),
        },
    );
    let r = r.and_then(|v| match &rec.group_info {
        Some(g) if *g != v => Err(format!("GET_INFO {v} differs from first open {g}")),
        _ => Ok(()),
    });
    p.step("reopen", r)?;
    Ok(())
}

/// Check 5: every recorded value of vfio-pci-rs must equal vfio-pci's.
pub fn parity(rep: &mut Reporter, twin: &str, c: &Record, rs: &Record) {
    let subject = format!("{twin} parity");
    for key in PARITY_KEYS {
        let a = c.values.get(key);
        let b = rs.values.get(key);
        match (a, b) {
            (Some(a), Some(b)) if a == b => rep.pass(&subject, key),
            _ => {
                let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "none".into());
                rep.fail(
                    &subject,
                    key,
                    &format!("{} [{}] vfio-pci-rs [{}]", Driver::C, show(a), show(b)),
                );
            }
        }
    }
}

/// Run every check on one twin pair for the selected drivers.
pub fn run_twin(rep: &mut Reporter, twin: &Twin, drivers: &[Driver]) {
    let desc: Vec<String> = drivers
        .iter()
        .map(|d| format!("{d} {}", twin.bdf(*d)))
        .collect();
    rep.note(&format!("{}: {}", twin.name, desc.join(", ")));

    // Bind every device first: devices sharing an IOMMU group must all be bound to VFIO
    // drivers before the group is viable.
    let mut bound: BTreeMap<Driver, Result<(), String>> = BTreeMap::new();
    for &d in drivers {
        let subject = format!("{} {d}", twin.name);
        let r = sysfs::bind(twin.bdf(d), &d.pci_name());
        match &r {
            Ok(()) => rep.pass(&subject, "bind"),
            Err(e) => rep.fail(&subject, "bind", &format!("{}: {e}", twin.bdf(d))),
        }
        bound.insert(d, r);
    }

    // VFIO_TEST_ONLY=irq (for short development boots): bind, the interrupt checks, restore.
    if std::env::var("VFIO_TEST_ONLY").is_ok_and(|v| v == "irq") {
        crate::irq::irq_phase(rep, twin, drivers, &bound);
        restore_all(rep, twin, drivers);
        return;
    }

    let mut records: BTreeMap<Driver, Record> =
        drivers.iter().map(|d| (*d, Record::default())).collect();
    type PhaseFn = fn(&mut Phase, &str, &mut Record) -> Result<(), Stop>;
    let phases: [(&'static [&'static str], PhaseFn); 3] = [
        (GROUP_CHECKS, group_phase),
        (CDEV_CHECKS, cdev_phase),
        (REOPEN_CHECKS, reopen_phase),
    ];
    // Phase by phase, so that every group-path fd of the twin is closed before any cdev is
    // opened (the two drivers' devices may share an IOMMU group).
    for (names, run) in phases {
        for &d in drivers {
            let subject = format!("{} {d}", twin.name);
            let mut p = Phase::new(rep, subject, names);
            let rec = records.get_mut(&d).expect("record per driver");
            if bound.get(&d).is_some_and(|b| b.is_ok()) {
                let r = run(&mut p, twin.bdf(d), rec);
                p.finish(r);
            } else {
                p.skip_rest("bind failed");
            }
        }
    }

    if let (Some(c), Some(rs)) = (records.get(&Driver::C), records.get(&Driver::Rs)) {
        parity(rep, &twin.name, c, rs);
    }

    // Interrupts (GET_IRQ_INFO, SET_IRQS): each driver on its own device of the twin.
    crate::irq::irq_phase(rep, twin, drivers, &bound);

    // Both devices in one IOMMU group (e.g. two functions on one conventional bus): open
    // them together and check the C driver will not reset the bus under the Rust device.
    let both_drivers = Driver::ALL.iter().all(|d| drivers.contains(d));
    if let Some(group) = both_drivers.then(|| mixed::shared_group(twin)).flatten() {
        let mut p = Phase::new(rep, format!("{} mixed", twin.name), mixed::MIXED_CHECKS);
        if Driver::ALL
            .iter()
            .all(|d| bound.get(d).is_some_and(|b| b.is_ok()))
        {
            let r = mixed::mixed_phase(&mut p, twin, group);
            p.finish(r);
        } else {
            p.skip_rest("bind failed");
        }
    }

    // Regions, config space, BAR/ROM access, PM and resets: one device through each driver
    // in turn, compared byte for byte.
    if drivers
        .iter()
        .all(|d| bound.get(d).is_some_and(|b| b.is_ok()))
    {
        crate::access::swap_phase(rep, twin, drivers);
    } else {
        rep.fail(
            &format!("{} swap", twin.name),
            "bind",
            "skipped: bind failed",
        );
    }

    restore_all(rep, twin, drivers);
}

/// Unbind every device of the twin and clear its driver_override.
fn restore_all(rep: &mut Reporter, twin: &Twin, drivers: &[Driver]) {
    for &d in drivers {
        let subject = format!("{} {d}", twin.name);
        match sysfs::restore(twin.bdf(d)) {
            Ok(()) => rep.pass(&subject, "restore"),
            Err(e) => rep.fail(&subject, "restore", &e),
        }
    }
}

/// Lines of a kernel log that show a warning, bug, oops or lockdep splat.
pub fn suspicious_lines(log: &str) -> Vec<&str> {
    const PATTERNS: &[&str] = &[
        "WARNING:",
        "BUG:",
        "Oops",
        "kernel BUG at",
        "possible circular locking",
        "circular locking dependency",
        "possible recursive locking",
        "inconsistent lock state",
        "suspicious RCU usage",
        "DEBUG_LOCKS_WARN_ON",
        "turning off the locking correctness validator",
        "general protection fault",
        "UBSAN:",
        "KASAN",
        "refcount_t:",
        // The banner around every lockdep (and KASAN/RCU) report.
        "====================",
    ];
    log.lines()
        .filter(|l| PATTERNS.iter().any(|p| l.contains(p)))
        .collect()
}

/// The value of `debug_locks:` in /proc/lockdep_stats.
pub fn parse_lockdep_stats(stats: &str) -> Option<String> {
    stats.lines().find_map(|l| {
        let rest = l.trim_start().strip_prefix("debug_locks:")?;
        Some(rest.trim().to_string())
    })
}

fn debugfs_mounted(mounts: &str) -> bool {
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/kernel/debug"))
}

/// Read debug_locks: /sys/kernel/debug/debug_locks (mounting debugfs if needed), else the
/// `debug_locks:` line of /proc/lockdep_stats (Linux 7.3 has no debugfs file for it).
fn read_debug_locks(rep: &mut Reporter) -> Option<(String, &'static str)> {
    const DEBUGFS: &str = "/sys/kernel/debug";
    const FILE: &str = "/sys/kernel/debug/debug_locks";
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !debugfs_mounted(&mounts) {
        match Command::new("mount")
            .args(["-t", "debugfs", "none", DEBUGFS])
            .output()
        {
            Ok(o) if o.status.success() => rep.note(&format!("mounted debugfs at {DEBUGFS}")),
            Ok(o) => rep.note(&format!(
                "mount -t debugfs none {DEBUGFS}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => rep.note(&format!("cannot run mount: {e}")),
        }
    }
    if let Ok(s) = std::fs::read_to_string(FILE) {
        return Some((s.trim().to_string(), FILE));
    }
    let stats = std::fs::read_to_string("/proc/lockdep_stats").ok()?;
    parse_lockdep_stats(&stats).map(|v| (v, "/proc/lockdep_stats"))
}

/// Under tests/guest/sanitize.sh: a report at boot, before any test, had already turned
/// lockdep off (`VFIO_TEST_LOCKDEP_OFF_AT_START=1`); sanitize.sh lists it.
pub fn lockdep_off_at_start() -> bool {
    std::env::var("VFIO_TEST_LOCKDEP_OFF_AT_START").is_ok_and(|v| v == "1")
}

/// The index of the first kernel log line the tests answer for (`VFIO_TEST_DMESG_FROM`, 1-based
/// as `tail -n +N`; set by tests/guest/sanitize.sh after the boot's own reports), else 0.
pub fn dmesg_from() -> usize {
    std::env::var("VFIO_TEST_DMESG_FROM")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(0, |n| n.saturating_sub(1))
}

/// Kernel health at the end of the run: lockdep still enabled, no splat in the log.
pub fn kernel_checks(rep: &mut Reporter) {
    match read_debug_locks(rep) {
        Some((v, _)) if v != "1" && lockdep_off_at_start() => {
            rep.raw(&format!("debug_locks={v}"));
            rep.note(
                "kernel debug_locks: off before the tests began (a report at boot); not counted",
            );
        }
        Some((v, src)) => {
            rep.raw(&format!("debug_locks={v}"));
            if v == "1" {
                rep.pass("kernel", "debug_locks");
            } else {
                rep.fail(
                    "kernel",
                    "debug_locks",
                    &format!("{src} says {v}: lockdep turned itself off after a report"),
                );
            }
        }
        None => {
            rep.raw("debug_locks=unavailable");
            rep.note("kernel debug_locks: neither /sys/kernel/debug/debug_locks nor /proc/lockdep_stats (no lockdep?); not counted");
        }
    }

    match Command::new("dmesg").output() {
        Err(e) => rep.fail("kernel", "no-warn", &format!("cannot run dmesg: {e}")),
        Ok(o) if !o.status.success() => rep.fail(
            "kernel",
            "no-warn",
            &format!(
                "dmesg failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ),
        Ok(o) => {
            let log = String::from_utf8_lossy(&o.stdout);
            let log = log
                .lines()
                .skip(dmesg_from())
                .collect::<Vec<_>>()
                .join("\n");
            let bad = suspicious_lines(&log);
            if bad.is_empty() {
                rep.pass("kernel", "no-warn");
            } else {
                const SHOW: usize = 60;
                for l in bad.iter().take(SHOW) {
                    rep.note(&format!("dmesg: {l}"));
                }
                if bad.len() > SHOW {
                    rep.note(&format!("dmesg: ... {} more", bad.len() - SHOW));
                }
                rep.fail(
                    "kernel",
                    "no-warn",
                    &format!(
                        "{} warning/bug/lockdep lines in dmesg (shown above)",
                        bad.len()
                    ),
                );
            }
        }
    }
}

/// `vfio-test info BDF`: open the device through its group and print what it offers.
pub fn info(bdf: &str) -> Result<(), String> {
    let driver = sysfs::current_driver(bdf)
        .map_err(|e| format!("{bdf}: {}", err_name(&e)))?
        .unwrap_or_else(|| "none".into());
    println!("device {bdf}");
    println!("driver {driver}");
    let mut quiet = Quiet::default();
    let gd =
        open_via_group(bdf, &mut quiet).map_err(|_| quiet.failure.take().unwrap_or_default())?;
    println!("iommu_group {}", gd.session.group_id);
    println!("iommu {}", gd.session.iommu_type);
    match sysfs::vfio_cdev_name(bdf) {
        Ok(n) => println!("cdev /dev/vfio/devices/{n}"),
        Err(e) => println!("cdev none ({})", err_name(&e)),
    }
    let q = get_info(&gd.device).map_err(|e| format!("VFIO_DEVICE_GET_INFO: {}", err_name(&e)))?;
    let v = &q.values;
    println!("flags {}", uapi::device_flags_str(v.flags));
    println!("num_regions {}", v.num_regions);
    println!("num_irqs {}", v.num_irqs);
    if v.caps.is_empty() {
        println!("caps none");
    } else {
        let ids: Vec<String> = q
            .cap_ids
            .iter()
            .map(|(id, ver)| format!("{id}v{ver}"))
            .collect();
        println!(
            "caps {} ({} bytes: {})",
            ids.join(" "),
            v.caps.len(),
            hex(&v.caps)
        );
    }
    if let Some(p) = &q.caps_problem {
        println!("caps problem: {p}");
    }
    for index in 0..v.num_regions {
        let mut r = uapi::VfioRegionInfo {
            argsz: size_u32::<uapi::VfioRegionInfo>(),
            index,
            ..Default::default()
        };
        let name = uapi::VFIO_PCI_REGION_NAMES
            .get(index as usize)
            .copied()
            .unwrap_or("DEV");
        match sys::ioctl_struct::<uapi::DeviceGetRegionInfo>(&gd.device, &mut r) {
            Ok(_) => println!(
                "region {index} {name}: size 0x{:x} offset 0x{:x} flags {}",
                r.size,
                r.offset,
                uapi::region_flags_str(r.flags)
            ),
            Err(e) => println!("region {index} {name}: {}", err_name(&e)),
        }
    }
    for index in 0..v.num_irqs {
        let mut irq = uapi::VfioIrqInfo {
            argsz: size_u32::<uapi::VfioIrqInfo>(),
            index,
            ..Default::default()
        };
        let name = uapi::VFIO_PCI_IRQ_NAMES
            .get(index as usize)
            .copied()
            .unwrap_or("DEV");
        match sys::ioctl_struct::<uapi::DeviceGetIrqInfo>(&gd.device, &mut irq) {
            Ok(_) => println!(
                "irq {index} {name}: count {} flags {}",
                irq.count,
                uapi::irq_flags_str(irq.flags)
            ),
            Err(e) => println!("irq {index} {name}: {}", err_name(&e)),
        }
    }
    // The config header and the start of each BAR, read through the device fd.
    for (index, len) in [
        (7u64, 64usize),
        (0, 16),
        (1, 16),
        (2, 16),
        (3, 16),
        (4, 16),
        (5, 16),
    ] {
        let name = uapi::VFIO_PCI_REGION_NAMES[index as usize];
        let mut buf = vec![0u8; len];
        match std::os::unix::fs::FileExt::read_at(&gd.device, &mut buf, index << 40) {
            Ok(n) => println!("read {name}[0..{n}]: {}", hex(&buf[..n])),
            Err(e) => println!("read {name}: {}", err_name(&e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(id: u16, ver: u16, next: u32, extra: usize) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&id.to_ne_bytes());
        v.extend_from_slice(&ver.to_ne_bytes());
        v.extend_from_slice(&next.to_ne_bytes());
        v.extend(std::iter::repeat_n(0u8, extra));
        v
    }

    #[test]
    fn cap_chain_walk() {
        // 24-byte fixed part, then an atomic-comp cap (16 bytes) and a second cap.
        let mut buf = vec![0u8; 24];
        buf.extend(cap(5, 1, 40, 8));
        buf.extend(cap(1, 2, 0, 0));
        assert_eq!(walk_caps(&buf, 24, 24).unwrap(), vec![(5, 1), (1, 2)]);
        assert!(walk_caps(&buf, 0, 24).is_err());
        assert!(walk_caps(&buf, 8, 24).is_err());
        assert!(walk_caps(&buf, 26, 24).is_err());
        assert!(walk_caps(&buf[..44], 24, 24).is_err());
        // A chain that loops back is rejected.
        let mut looping = vec![0u8; 24];
        looping.extend(cap(5, 1, 24, 8));
        assert!(walk_caps(&looping, 24, 24).is_err());
    }

    #[test]
    fn info_values_display() {
        let v = InfoValues {
            flags: 3,
            num_regions: 9,
            num_irqs: 5,
            caps: vec![],
        };
        assert_eq!(v.to_string(), "flags=0x3 num_regions=9 num_irqs=5");
        let v = InfoValues {
            caps: vec![5, 0, 1, 0],
            ..v
        };
        assert_eq!(
            v.to_string(),
            "flags=0x3 num_regions=9 num_irqs=5 caps=05000100"
        );
    }

    #[test]
    fn check_lists_are_unique() {
        for list in [GROUP_CHECKS, CDEV_CHECKS, REOPEN_CHECKS, PARITY_KEYS] {
            let mut v = list.to_vec();
            v.sort();
            v.dedup();
            assert_eq!(v.len(), list.len());
        }
        assert_eq!(UNKNOWN_IOCTL, 0x3ba0);
    }

    #[test]
    fn parity_lines() {
        let mut c = Record::default();
        let mut rs = Record::default();
        for k in PARITY_KEYS {
            c.set(k, "ok");
            rs.set(k, "ok");
        }
        rs.set("argsz-short", "ok");
        c.set("argsz-short", "EINVAL");
        rs.values.remove("reopen");
        let mut rep = Reporter::collect();
        parity(&mut rep, "edu", &c, &rs);
        assert_eq!(
            rep.summary(),
            format!("{} passed, 2 failed", PARITY_KEYS.len() - 2)
        );
        assert!(rep.lines().contains(
            &"FAIL edu parity argsz-short: vfio-pci [EINVAL] vfio-pci-rs [ok]".to_string()
        ));
        assert!(rep
            .lines()
            .contains(&"FAIL edu parity reopen: vfio-pci [ok] vfio-pci-rs [none]".to_string()));
        assert!(rep
            .lines()
            .contains(&"PASS edu parity get-info".to_string()));
    }

    #[test]
    fn dmesg_scan() {
        let log = "\
[    0.000000] Linux version 7.3.4
[    0.100000] \tRCU lockdep checking is enabled.
[    0.200000] Lock dependency validator: Copyright (c) 2006 Red Hat, Inc., Ingo Molnar
[    5.000000] vfio-pci 0000:01:00.0: enabling device
[    6.000000] ======================================================
[    6.000001] WARNING: possible circular locking dependency detected
[    7.000000] BUG: KASAN: slab-use-after-free in vfio_pci_core_close_device
[    8.000000] Oops: general protection fault, probably for non-canonical address
[    9.000000] ------------[ cut here ]------------
";
        let bad = suspicious_lines(log);
        assert_eq!(bad.len(), 4, "{bad:?}");
        assert!(bad[0].contains("====="));
        assert!(
            suspicious_lines("[ 1.0] all fine\n[ 2.0] RCU lockdep checking is enabled.\n")
                .is_empty()
        );
    }

    #[test]
    fn lockdep_stats_parse() {
        let stats = " lock-classes:                         1234 [max: 8192]\n debug_locks:                             1\n";
        assert_eq!(parse_lockdep_stats(stats).as_deref(), Some("1"));
        assert_eq!(parse_lockdep_stats("nothing"), None);
    }

    #[test]
    fn mounts_parse() {
        assert!(debugfs_mounted(
            "debugfs /sys/kernel/debug debugfs rw 0 0\n"
        ));
        assert!(!debugfs_mounted("proc /proc proc rw 0 0\n"));
    }
}
