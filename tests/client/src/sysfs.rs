//! Binding PCI devices to drivers through sysfs, the way an administrator would:
//! `driver/unbind`, `driver_override`, `drivers_probe`.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

const PCI_DEVICES: &str = "/sys/bus/pci/devices";
const PCI_DRIVERS: &str = "/sys/bus/pci/drivers";
const DRIVERS_PROBE: &str = "/sys/bus/pci/drivers_probe";

/// `/sys/bus/pci/devices/<bdf>`.
pub fn device_dir(bdf: &str) -> PathBuf {
    Path::new(PCI_DEVICES).join(bdf)
}

/// The kernel module that provides a PCI driver: `vfio-pci-rs` -> `vfio_pci_rs`.
pub fn module_for_driver(driver: &str) -> String {
    driver.replace('-', "_")
}

/// The last path component of a symlink's target, e.g. `vfio-pci` for a `driver` link.
fn link_basename(path: &Path) -> io::Result<String> {
    let target = fs::read_link(path)?;
    target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The driver the device is bound to, `None` if unbound.
/// The SR-IOV VF token to present when opening `bdf`: `VFIO_TEST_VF_TOKEN` (a UUID string)
/// for a VF bound to the same driver as its PF, and for a PF, whose token it then sets. A VF
/// whose PF is not bound to its driver needs none, and the drivers refuse one (`EINVAL`).
pub fn vf_token(bdf: &str) -> Option<String> {
    let token = std::env::var("VFIO_TEST_VF_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())?;
    let dir = device_dir(bdf);
    let is_pf = fs::read_to_string(dir.join("sriov_totalvfs"))
        .is_ok_and(|n| n.trim().parse::<u32>().is_ok_and(|n| n > 0));
    let pf_driver = link_basename(&dir.join("physfn"))
        .ok()
        .and_then(|pf| current_driver(&pf).ok().flatten());
    let is_vf_of_same_driver =
        pf_driver.is_some_and(|pf| current_driver(bdf).ok().flatten() == Some(pf));
    (is_pf || is_vf_of_same_driver).then_some(token)
}

/// The 16 bytes of a UUID string (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`).
pub fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s.bytes().filter(|&c| c != b'-').collect();
    if s.len() != 36 || hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

pub fn current_driver(bdf: &str) -> io::Result<Option<String>> {
    let link = device_dir(bdf).join("driver");
    match link_basename(&link) {
        Ok(name) => Ok(Some(name)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The IOMMU group number, from the `iommu_group` link.
pub fn iommu_group(bdf: &str) -> io::Result<u32> {
    let name = link_basename(&device_dir(bdf).join("iommu_group"))?;
    name.parse()
        .map_err(|_| io::Error::other(format!("iommu_group link ends in {name:?}")))
}

/// The name of the device's VFIO cdev (`vfioN`), the single entry of `<dev>/vfio-dev/`.
pub fn vfio_cdev_name(bdf: &str) -> io::Result<String> {
    let mut names: Vec<String> = fs::read_dir(device_dir(bdf).join("vfio-dev"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vfio"))
        .collect();
    names.sort();
    match names.len() {
        1 => Ok(names.remove(0)),
        0 => Err(io::Error::from_raw_os_error(libc::ENOENT)),
        _ => Err(io::Error::other(format!(
            "several entries in vfio-dev: {}",
            names.join(" ")
        ))),
    }
}

/// Write `data` to a sysfs attribute with a single write(2), as `echo` would.
pub fn write_attr(path: &Path, data: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(data.as_bytes())
}

fn describe(e: &io::Error) -> String {
    crate::sys::err_name(e)
}

/// Run `/sbin/modprobe <module>` (or `modprobe` from PATH if there is no /sbin/modprobe) if
/// `/sys/bus/pci/drivers/<driver>` is missing, and check the driver appeared.
pub fn ensure_driver(driver: &str) -> Result<(), String> {
    let dir = Path::new(PCI_DRIVERS).join(driver);
    if dir.exists() {
        return Ok(());
    }
    let module = module_for_driver(driver);
    let modprobe = if Path::new("/sbin/modprobe").exists() {
        "/sbin/modprobe"
    } else {
        "modprobe"
    };
    let out = Command::new(modprobe)
        .arg(&module)
        .output()
        .map_err(|e| format!("cannot run {modprobe} {module}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{modprobe} {module} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if wait_for(|| dir.exists(), Duration::from_secs(2)) {
        Ok(())
    } else {
        Err(format!(
            "{modprobe} {module} succeeded but {} is missing",
            dir.display()
        ))
    }
}

/// Poll `cond` every 10ms until it holds or `timeout` passes.
pub fn wait_for(mut cond: impl FnMut() -> bool, timeout: Duration) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        sleep(Duration::from_millis(10));
    }
}

/// Unbind the device from its current driver, if any.
pub fn unbind(bdf: &str) -> Result<(), String> {
    if current_driver(bdf)
        .map_err(|e| format!("readlink driver: {}", describe(&e)))?
        .is_none()
    {
        return Ok(());
    }
    let unbind = device_dir(bdf).join("driver/unbind");
    write_attr(&unbind, bdf)
        .map_err(|e| format!("write {}: {}", unbind.display(), describe(&e)))?;
    if wait_for(
        || matches!(current_driver(bdf), Ok(None)),
        Duration::from_secs(5),
    ) {
        Ok(())
    } else {
        Err("device still bound after unbind".to_string())
    }
}

/// Bind the device to `driver`: load the module if needed, unbind from the current driver,
/// set `driver_override`, write the BDF to `drivers_probe`, and check the `driver` link.
pub fn bind(bdf: &str, driver: &str) -> Result<(), String> {
    let dev = device_dir(bdf);
    if !dev.exists() {
        return Err(format!("{} does not exist", dev.display()));
    }
    ensure_driver(driver)?;
    unbind(bdf)?;
    let ovr = dev.join("driver_override");
    write_attr(&ovr, driver).map_err(|e| format!("write {}: {}", ovr.display(), describe(&e)))?;
    // drivers_probe fails only for errors other than "no driver matched"; check the link
    // afterwards either way.
    let probe = write_attr(Path::new(DRIVERS_PROBE), bdf);
    let bound = wait_for(
        || current_driver(bdf).ok().flatten().as_deref() == Some(driver),
        Duration::from_secs(5),
    );
    if bound {
        return Ok(());
    }
    let now = match current_driver(bdf) {
        Ok(Some(d)) => d,
        Ok(None) => "no driver".to_string(),
        Err(e) => describe(&e),
    };
    match probe {
        Err(e) => Err(format!(
            "write {DRIVERS_PROBE}: {}; device has {now}",
            describe(&e)
        )),
        Ok(()) => Err(format!(
            "device has {now} after drivers_probe, not {driver}"
        )),
    }
}

/// Undo [`bind`]: unbind, then clear `driver_override`.
pub fn restore(bdf: &str) -> Result<(), String> {
    let unbound = unbind(bdf);
    let ovr = device_dir(bdf).join("driver_override");
    let cleared =
        write_attr(&ovr, "\n").map_err(|e| format!("write {}: {}", ovr.display(), describe(&e)));
    unbound.and(cleared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        assert_eq!(module_for_driver("vfio-pci"), "vfio_pci");
        assert_eq!(module_for_driver("vfio-pci-rs"), "vfio_pci_rs");
    }

    #[test]
    fn paths() {
        assert_eq!(
            device_dir("0000:01:00.0"),
            PathBuf::from("/sys/bus/pci/devices/0000:01:00.0")
        );
    }

    #[test]
    fn wait_for_times_out_and_succeeds() {
        assert!(!wait_for(|| false, Duration::from_millis(20)));
        let mut n = 0;
        assert!(wait_for(
            || {
                n += 1;
                n > 2
            },
            Duration::from_secs(1)
        ));
    }
}
