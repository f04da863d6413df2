//! `vfio-test hold BDF SECONDS [--cdev]`: keep a device open for a while, so shell tests can
//! check what the kernel does meanwhile (`rmmod` of the driver's module must fail "in use",
//! unbinding must wait for the close).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::checks::{open_node, open_via_group, Quiet};
use crate::sys::err_name;
use crate::sysfs;

fn say(line: &str) -> Result<(), String> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("write to stdout: {e}"))
}

/// Open `bdf`, print `held <BDF> <path>`, sleep `time`, close, print `released <BDF>`.
///
/// The default opens the device fully through the group/container path: the driver's
/// `open_device` runs and the VFIO core holds a reference on the driver's module. With
/// `cdev` it only `open()`s `/dev/vfio/devices/vfioN` without binding an iommufd: the
/// device is not opened yet (no `open_device`, no module reference), only its registration
/// is held.
pub fn hold(bdf: &str, time: Duration, cdev: bool) -> Result<(), String> {
    if cdev {
        let name =
            sysfs::vfio_cdev_name(bdf).map_err(|e| format!("{bdf}/vfio-dev: {}", err_name(&e)))?;
        let path = PathBuf::from(format!("/dev/vfio/devices/{name}"));
        let dev = open_node(&path)?;
        keep(bdf, &path, dev, time)
    } else {
        let mut quiet = Quiet::default();
        let gd = open_via_group(bdf, &mut quiet)
            .map_err(|_| quiet.failure.take().unwrap_or_default())?;
        let path = gd.session.node.clone();
        keep(bdf, &path, gd, time)
    }
}

/// Announce, hold `held` open for `time`, close it (by dropping it), announce.
fn keep<T>(bdf: &str, path: &Path, held: T, time: Duration) -> Result<(), String> {
    say(&format!("held {bdf} {}", path.display()))?;
    std::thread::sleep(time);
    drop(held);
    say(&format!("released {bdf}"))
}
