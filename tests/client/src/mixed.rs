//! The "mixed" phase: a twin whose two devices share an IOMMU group (e.g. two functions on one
//! conventional PCI bus behind a PCIe-to-PCI bridge), opened at the same time through that
//! one group, the first driven by vfio-pci and the second by vfio-pci-rs.
//!
//! The C driver puts the functions only a bus reset covers into one device set keyed by the
//! bus, and refuses `VFIO_DEVICE_PCI_HOT_RESET` unless every function on the bus is in its
//! set. The Rust driver keeps its devices in sets of its own, so the C device's set lacks
//! the Rust-driven function and the C driver must refuse to reset the bus under it.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;

use crate::checks::{get_info, open_group, GroupSession, InfoValues, Quiet};
use crate::cli::Twin;
use crate::report::{Phase, Stop};
use crate::sys::{self, err_name, InfoBuf};
use crate::sysfs;
use crate::uapi::{self, size_u32, VfioPciDependentDevice};

/// Checks of the mixed phase, in report order (subject `<twin> mixed`).
pub const MIXED_CHECKS: &[&str] = &[
    "both-open",
    "hot-reset-info",
    "hot-reset-refused",
    "rs-alive-after",
    "c-alive-after",
    "close-c-first",
    "reopen-both",
];

/// More functions than any bus or slot can hold (32 devices x 8 functions, plus bridges'
/// subordinates in theory): a `count` past this is garbage, not a topology.
const MAX_HOT_RESET_COUNT: u32 = 4096;

/// The IOMMU group both devices of the twin are in, `None` if they are in different groups
/// (or a group cannot be read: the group phase already reports that).
pub fn shared_group(twin: &Twin) -> Option<u32> {
    let c = sysfs::iommu_group(&twin.bdf_c).ok()?;
    let rs = sysfs::iommu_group(&twin.bdf_rs).ok()?;
    (c == rs).then_some(c)
}

/// Both devices of the twin opened from one group session. Fields drop in declaration order:
/// the device fds, then the group and container.
pub struct BothOpen {
    pub c: File,
    pub rs: File,
    pub session: GroupSession,
}

/// Open the container and the shared group once (type1v2 IOMMU) and get both device fds.
pub fn open_both(twin: &Twin) -> Result<BothOpen, String> {
    let mut quiet = Quiet::default();
    let session = open_group(&twin.bdf_c, &mut quiet)
        .map_err(|_| quiet.failure.take().unwrap_or_default())?;
    let get = |bdf: &str| {
        session
            .device_fd(bdf)
            .map_err(|e| format!("VFIO_GROUP_GET_DEVICE_FD({bdf}): {}", err_name(&e)))
    };
    // On an error `c` is a local declared after `session`, so it is closed first.
    let c = get(&twin.bdf_c)?;
    let rs = get(&twin.bdf_rs)?;
    Ok(BothOpen { c, rs, session })
}

/// What `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` reported with room for every entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HotResetInfo {
    pub flags: u32,
    pub devices: Vec<VfioPciDependentDevice>,
}

impl fmt::Display for HotResetInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "flags={} count={}:",
            uapi::hot_reset_info_flags_str(self.flags),
            self.devices.len()
        )?;
        let devid = self.flags & uapi::VFIO_PCI_HOT_RESET_FLAG_DEV_ID != 0;
        for (i, d) in self.devices.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            if devid {
                // VFIO_PCI_DEVID_NOT_OWNED is -1.
                write!(f, "{sep}{} devid {}", d.bdf(), d.group_id_or_devid as i32)?;
            } else {
                write!(f, "{sep}{} group {}", d.bdf(), d.group_id_or_devid)?;
            }
        }
        Ok(())
    }
}

/// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` with `argsz` = the 12-byte header: no room for any
/// entry. Returns the ioctl's outcome and the header as the kernel left it (with `-ENOSPC`
/// it fills in `count`).
pub fn hot_reset_info_header(dev: &File) -> (io::Result<i32>, uapi::VfioPciHotResetInfo) {
    let mut hdr = uapi::VfioPciHotResetInfo {
        argsz: size_u32::<uapi::VfioPciHotResetInfo>(),
        ..Default::default()
    };
    let r = sys::ioctl_struct::<uapi::DeviceGetPciHotResetInfo>(dev, &mut hdr);
    (r, hdr)
}

/// Parse the entries of a GET_PCI_HOT_RESET_INFO buffer: `count` 8-byte
/// `struct vfio_pci_dependent_device` from byte 12 on. `None` if they run past the buffer.
pub fn parse_dependent_devices(bytes: &[u8], count: u32) -> Option<Vec<VfioPciDependentDevice>> {
    let start = size_u32::<uapi::VfioPciHotResetInfo>() as usize;
    let len = usize::try_from(count).ok()?.checked_mul(8)?;
    let all = bytes.get(start..start.checked_add(len)?)?;
    Some(
        all.chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                VfioPciDependentDevice::from_bytes(b)
            })
            .collect(),
    )
}

/// The two-call protocol: argsz = header must give `ENOSPC` and the count, then argsz with
/// room for `count` entries must succeed.
pub fn hot_reset_info(dev: &File) -> Result<HotResetInfo, String> {
    let (r, hdr) = hot_reset_info_header(dev);
    let count = match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => hdr.count,
        Err(e) => {
            return Err(format!(
                "argsz {} (no room for entries): expected ENOSPC got {}",
                hdr.argsz,
                err_name(&e)
            ))
        }
        Ok(_) => {
            return Err(format!(
                "argsz {} (no room for entries): expected ENOSPC got success (count {})",
                hdr.argsz, hdr.count
            ))
        }
    };
    if count == 0 || count > MAX_HOT_RESET_COUNT {
        return Err(format!("ENOSPC with implausible count {count}"));
    }
    let argsz = size_u32::<uapi::VfioPciHotResetInfo>() + 8 * count;
    let mut buf = InfoBuf::new(argsz);
    sys::ioctl_info_buf::<uapi::DeviceGetPciHotResetInfo>(dev, &mut buf)
        .map_err(|e| format!("argsz {argsz} (room for {count}): {}", err_name(&e)))?;
    let flags = buf.u32_at(4).unwrap_or(0);
    let got = buf.u32_at(8).unwrap_or(0);
    if got > count {
        return Err(format!(
            "argsz {argsz} (room for {count}) succeeded with count {got}"
        ));
    }
    let devices = parse_dependent_devices(&buf.bytes(), got)
        .ok_or_else(|| format!("count {got} runs past the {argsz}-byte buffer"))?;
    Ok(HotResetInfo { flags, devices })
}

/// The PASS condition of `hot-reset-info`: exactly the twin's two functions, each reported
/// in the shared group (a group-opened device gets group ids, not iommufd devids).
pub fn check_hot_reset_info(info: &HotResetInfo, twin: &Twin, group: u32) -> Result<(), String> {
    if info.flags & uapi::VFIO_PCI_HOT_RESET_FLAG_DEV_ID != 0 {
        return Err(format!(
            "{info}: DEV_ID flag set on a group-opened device (entries are devids, not groups)"
        ));
    }
    if info.devices.len() != 2 {
        return Err(format!(
            "expected count 2 ({} and {}), got {info}",
            twin.bdf_c, twin.bdf_rs
        ));
    }
    for bdf in [&twin.bdf_c, &twin.bdf_rs] {
        match info.devices.iter().find(|d| d.bdf() == *bdf) {
            None => return Err(format!("{bdf} not listed: {info}")),
            Some(d) if d.group_id_or_devid != group => {
                return Err(format!(
                    "{bdf} listed in group {}, not {group}: {info}",
                    d.group_id_or_devid
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The `rs-hot-reset-info-errno` note: what the header-only call answered.
fn header_outcome(r: &io::Result<i32>, hdr: &uapi::VfioPciHotResetInfo) -> String {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => format!("ENOSPC (count {})", hdr.count),
        Err(e) => err_name(e),
        Ok(_) => format!("ok (count {}, no room given)", hdr.count),
    }
}

/// GET_INFO now, compared with the flags/num_regions/num_irqs of `before`.
fn still_alive(dev: &File, before: &Result<InfoValues, String>) -> Result<(), String> {
    let now = get_info(dev)
        .map_err(|e| format!("GET_INFO: {}", err_name(&e)))?
        .values;
    let before = before
        .as_ref()
        .map_err(|e| format!("GET_INFO now {now}, but it failed before: {e}"))?;
    if (now.flags, now.num_regions, now.num_irqs)
        != (before.flags, before.num_regions, before.num_irqs)
    {
        return Err(format!("GET_INFO {now} differs from before ({before})"));
    }
    Ok(())
}

fn info_values(dev: &File) -> Result<InfoValues, String> {
    get_info(dev)
        .map(|q| q.values)
        .map_err(|e| format!("GET_INFO: {}", err_name(&e)))
}

/// The mixed phase on a twin whose devices are both bound (C to vfio-pci, Rust to
/// vfio-pci-rs) and both in IOMMU group `group`. Every fd is closed on return.
pub fn mixed_phase(p: &mut Phase, twin: &Twin, group: u32) -> Result<(), Stop> {
    let both = p.step("both-open", open_both(twin))?;
    p.note(&format!(
        "{} and {} open through {} (iommu {})",
        twin.bdf_c,
        twin.bdf_rs,
        both.session.node.display(),
        both.session.iommu_type
    ));
    let before_c = info_values(&both.c);
    let before_rs = info_values(&both.rs);

    match hot_reset_info(&both.c) {
        Ok(info) => {
            p.note(&format!("hot-reset-info {info}"));
            p.result("hot-reset-info", check_hot_reset_info(&info, twin, group));
        }
        Err(e) => p.fail("hot-reset-info", &e),
    }

    // The C device set holds only the C function, so vfio_pci_dev_set_resettable() finds
    // the Rust-driven function outside it and the reset is refused before anything is
    // touched.
    let r = sys::pci_hot_reset(&both.c, &[both.session.group.as_fd()]);
    p.expect(
        "hot-reset-refused",
        matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EINVAL)),
        || match &r {
            Ok(_) => format!(
                "PCI_HOT_RESET(group {group}) succeeded: it reset the bus under {}, which vfio-pci-rs owns",
                twin.bdf_rs
            ),
            Err(e) => format!("PCI_HOT_RESET(group {group}): expected EINVAL got {}", err_name(e)),
        },
    );

    p.result("rs-alive-after", still_alive(&both.rs, &before_rs));
    p.result("c-alive-after", still_alive(&both.c, &before_c));

    // Recorded, not judged: vfio-pci-rs answers ENOTTY until its hot-reset issue lands.
    let (r, hdr) = hot_reset_info_header(&both.rs);
    p.note(&format!(
        "rs-hot-reset-info-errno {}",
        header_outcome(&r, &hdr)
    ));

    let BothOpen { c, rs, session } = both;
    drop(c);
    p.result(
        "close-c-first",
        still_alive(&rs, &before_rs).map_err(|e| format!("after closing the vfio-pci fd: {e}")),
    );
    drop(rs);
    drop(session);

    let r = open_both(twin).and_then(|again| {
        still_alive(&again.c, &before_c).map_err(|e| format!("{}: {e}", twin.bdf_c))?;
        still_alive(&again.rs, &before_rs).map_err(|e| format!("{}: {e}", twin.bdf_rs))
    });
    p.result("reopen-both", r);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(group: u32, bus: u8, slot: u8, func: u8) -> VfioPciDependentDevice {
        VfioPciDependentDevice {
            group_id_or_devid: group,
            segment: 0,
            bus,
            devfn: (slot << 3) | func,
        }
    }

    fn twin() -> Twin {
        crate::cli::parse_twin("mixed-bus=0000:0c:01.0,0000:0c:02.0").unwrap()
    }

    #[test]
    fn check_lists_are_unique() {
        let mut v = MIXED_CHECKS.to_vec();
        v.sort();
        v.dedup();
        assert_eq!(v.len(), MIXED_CHECKS.len());
    }

    #[test]
    fn parse_entries() {
        let mut bytes = vec![0u8; 12];
        bytes[8..12].copy_from_slice(&2u32.to_ne_bytes());
        for d in [dep(32, 0x0c, 1, 0), dep(32, 0x0c, 2, 0)] {
            bytes.extend_from_slice(&d.group_id_or_devid.to_ne_bytes());
            bytes.extend_from_slice(&d.segment.to_ne_bytes());
            bytes.push(d.bus);
            bytes.push(d.devfn);
        }
        let v = parse_dependent_devices(&bytes, 2).unwrap();
        assert_eq!(v, vec![dep(32, 0x0c, 1, 0), dep(32, 0x0c, 2, 0)]);
        assert_eq!(v[1].bdf(), "0000:0c:02.0");
        assert!(parse_dependent_devices(&bytes, 3).is_none());
        assert_eq!(parse_dependent_devices(&bytes, 0).unwrap(), vec![]);
    }

    #[test]
    fn hot_reset_info_verdict() {
        let t = twin();
        let good = HotResetInfo {
            flags: 0,
            devices: vec![dep(32, 0x0c, 1, 0), dep(32, 0x0c, 2, 0)],
        };
        assert_eq!(
            good.to_string(),
            "flags=0x0 (-) count=2: 0000:0c:01.0 group 32, 0000:0c:02.0 group 32"
        );
        assert!(check_hot_reset_info(&good, &t, 32).is_ok());
        assert!(check_hot_reset_info(&good, &t, 33).is_err());
        let one = HotResetInfo {
            flags: 0,
            devices: vec![dep(32, 0x0c, 1, 0)],
        };
        assert!(check_hot_reset_info(&one, &t, 32).is_err());
        let wrong = HotResetInfo {
            flags: 0,
            devices: vec![dep(32, 0x0c, 1, 0), dep(32, 0x0c, 3, 0)],
        };
        let e = check_hot_reset_info(&wrong, &t, 32).unwrap_err();
        assert!(e.starts_with("0000:0c:02.0 not listed"), "{e}");
        let devid = HotResetInfo {
            flags: uapi::VFIO_PCI_HOT_RESET_FLAG_DEV_ID,
            ..good
        };
        assert!(check_hot_reset_info(&devid, &t, 32).is_err());
    }

    #[test]
    fn header_outcomes() {
        let hdr = uapi::VfioPciHotResetInfo {
            argsz: 12,
            flags: 0,
            count: 2,
        };
        let enotty = Err(io::Error::from_raw_os_error(libc::ENOTTY));
        assert_eq!(header_outcome(&enotty, &hdr), "ENOTTY");
        let enospc = Err(io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(header_outcome(&enospc, &hdr), "ENOSPC (count 2)");
    }
}
