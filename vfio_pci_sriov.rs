// SPDX-License-Identifier: GPL-2.0

//! SR-IOV: the VFs of a PF bound to the driver, and the VF token through which the users of
//! the PF and of its VFs show that they trust each other (the SR-IOV parts of
//! `vfio_pci_core.c` and `vfio_pci.c`).
//!
//! A PF bound to the driver has a [`VfToken`] and watches the PCI bus, so that its new VFs get
//! `driver_override` set to this driver. `sriov_numvfs` enables VFs only with the
//! `enable_sriov` parameter; the PF is then listed in [`SRIOV_PFS`] until its VFs are
//! disabled, and a VF probed meanwhile shares the PF's token.
//!
//! Lock order: a PF's device lock, then [`SRIOV_PFS`], then a [`VfToken`]; `memory_lock` is
//! not held with either. `pci_enable_sriov()` probes the new VFs, which take [`SRIOV_PFS`]:
//! it runs without it.

use core::{mem::size_of, ptr};
use kernel::{
    device::{self, Bound, Core},
    global_lock, new_mutex, pci,
    prelude::*,
    sync::{aref::ARef, Arc, Mutex},
    uaccess::UserPtr,
    uapi,
    uuid::Uuid,
    vfio,
};

use crate::{VfioPciCore, DRIVER_NAME};

/// What a [`VfToken`] guards.
pub(crate) struct VfTokenState {
    /// The token the VFs' users must present.
    uuid: Uuid,
    /// How many VFs of the PF are open.
    users: u32,
}

/// The VF token of a PF (`struct vfio_pci_vf_token`), shared with its VFs.
pub(crate) type VfToken = Mutex<VfTokenState>;

/// A PF whose VFs the driver enabled (`vfio_pci_sriov_pfs`).
pub(crate) struct SriovPf {
    pdev: ARef<pci::Device>,
    token: Arc<VfToken>,
}

global_lock! {
    // SAFETY: `init_sriov_pfs()` initialises it in the module's init, before the driver is
    // registered.
    unsafe(uninit) static SRIOV_PFS: Mutex<KVec<SriovPf>> = KVec::new();
}

/// Initialises [`SRIOV_PFS`]; called once, by the module's init, before the driver is
/// registered and so before any probe or `sriov_configure`.
pub(crate) fn init_sriov_pfs() {
    // SAFETY: Called once, before any use of the lock (see above).
    unsafe { SRIOV_PFS.init() };
}

/// The bus notifier of a PF (`vfio_pci_bus_notifier()`).
pub(crate) struct VfCapture {
    pf: ARef<pci::Device>,
}

impl pci::BusNotify for VfCapture {
    fn notify(&self, event: pci::BusEvent, dev: &pci::Device) {
        if !dev.is_virtfn() || !ptr::eq(dev.physfn(), &*self.pf) {
            return;
        }
        let pf: &pci::Device = &self.pf;
        let name = dev.as_ref().name();
        match event {
            pci::BusEvent::AddDevice => {
                dev_info!(pf, "Captured SR-IOV VF {} driver_override\n", name);
                if dev.set_driver_override(DRIVER_NAME).is_err() {
                    dev_warn!(pf, "Cannot set driver_override of VF {}\n", name);
                }
            }
            pci::BusEvent::BoundDriver => {
                let pf_driver = pf.driver_name();
                if let Some(driver) = dev.driver_name().filter(|d| Some(*d) != pf_driver) {
                    dev_warn!(
                        pf,
                        "VF {} bound to driver {} while PF bound to driver {}\n",
                        name,
                        driver,
                        pf_driver.unwrap_or(c"(none)")
                    );
                }
            }
            pci::BusEvent::Other => {}
        }
    }
}

/// The SR-IOV state of a function, set up at probe (`vfio_pci_vf_init()`).
#[derive(Default)]
pub(crate) struct Sriov {
    /// A PF's own token (`vf_token`).
    vf_token: Option<Arc<VfToken>>,
    /// The token of a VF's PF, if the driver enabled the VF (`sriov_pf_core_dev`).
    pf_token: Option<Arc<VfToken>>,
    /// A PF's bus notifier, registered while the PF is bound.
    _capture: Option<Pin<KBox<pci::BusNotifier<VfCapture>>>>,
}

impl Sriov {
    /// `vfio_pci_vf_init()`: a VF finds the token of its PF, if the driver enabled it; a PF
    /// gets a token and starts capturing its VFs.
    pub(crate) fn new(pdev: &pci::Device<Core<'_>>) -> Result<Self> {
        if pdev.is_virtfn() {
            let physfn = pdev.physfn();
            let pf_token = SRIOV_PFS
                .lock()
                .iter()
                .find(|pf| ptr::eq(&*pf.pdev, physfn))
                .map(|pf| pf.token.clone());
            return Ok(Self {
                pf_token,
                ..Default::default()
            });
        }
        if !pdev.is_physfn() {
            return Ok(Self::default());
        }
        let state = VfTokenState {
            uuid: Uuid::generate(),
            users: 0,
        };
        let vf_token = Arc::pin_init(new_mutex!(state), GFP_KERNEL)?;
        let pf: &pci::Device = pdev;
        let capture = KBox::pin_init(
            pci::BusNotifier::new(VfCapture { pf: pf.into() }),
            GFP_KERNEL,
        )?;
        Ok(Self {
            vf_token: Some(vf_token),
            pf_token: None,
            _capture: Some(capture),
        })
    }

    /// A VF of a PF of the driver was opened (`vfio_pci_core_finish_enable()`).
    pub(crate) fn opened(&self) {
        if let Some(token) = &self.pf_token {
            token.lock().users += 1;
        }
    }

    /// A VF of a PF of the driver was closed (`vfio_pci_core_close_device()`).
    pub(crate) fn closed(&self) {
        if let Some(token) = &self.pf_token {
            let mut token = token.lock();
            token.users = token.users.saturating_sub(1);
        }
    }
}

impl VfioPciCore {
    /// `vfio_pci_core_sriov_configure()`: enables `nr_virtfn` VFs, or disables them for 0.
    /// Called with the PF's device lock held.
    pub(crate) fn sriov_configure(
        &self,
        pdev: &pci::Device<Core<'_>>,
        nr_virtfn: u16,
    ) -> Result<u16> {
        let dev: &device::Device<Bound> = pdev.as_ref();
        let pf: &pci::Device = pdev;
        if nr_virtfn != 0 {
            let token = self.sriov.vf_token.clone().ok_or(EINVAL)?;
            {
                // Only the thread that lists the PF enables VFs, once until they are disabled.
                let mut pfs = SRIOV_PFS.lock();
                if pfs.iter().any(|listed| ptr::eq(&*listed.pdev, pf)) {
                    return Err(EINVAL);
                }
                pfs.push(
                    SriovPf {
                        pdev: pf.into(),
                        token,
                    },
                    GFP_KERNEL,
                )?;
            }
            // The PF stays in D0 while it has VFs: resume it from runtime or user D3hot.
            if let Err(e) = dev.pm_runtime_resume_and_get() {
                self.sriov_unlist(pf);
                return Err(e);
            }
            {
                let mut memory = self.memory_lock.write();
                let _ = Self::set_power_state(pdev, &mut memory, pci::PowerState::D0);
                memory.sriov_active = true;
            }
            if let Err(e) = pdev.enable_sriov(nr_virtfn) {
                dev.pm_runtime_put();
                self.sriov_unlist(pf);
                return Err(e);
            }
            return Ok(nr_virtfn);
        }
        if pdev.num_vf() != 0 {
            pdev.disable_sriov();
            dev.pm_runtime_put();
        }
        self.sriov_unlist(pf);
        Ok(0)
    }

    /// The PF has no VFs of the driver any more.
    fn sriov_unlist(&self, pf: &pci::Device) {
        self.memory_lock.write().sriov_active = false;
        SRIOV_PFS
            .lock()
            .retain(|listed| !ptr::eq(&*listed.pdev, pf));
    }

    /// `vfio_pci_core_match_token_uuid()`.
    ///
    /// There's always some degree of trust or collaboration between SR-IOV PF and VFs, even if
    /// just that the PF hosts the SR-IOV capability and can disrupt VFs with a reset. The
    /// users of a VF whose PF is bound to the driver must present the PF's VF token; the users
    /// of a PF whose VFs are in use the current token, and otherwise a token they present
    /// becomes the PF's.
    pub(crate) fn match_token(&self, pdev: &pci::Device<Bound>, uuid: Option<&Uuid>) -> Result {
        if pdev.is_virtfn() {
            let Some(pf_token) = &self.sriov.pf_token else {
                // The PF is not bound to the driver: no VF token.
                if uuid.is_none() {
                    return Ok(());
                }
                dev_info!(
                    pdev,
                    "VF token incorrectly provided, PF not bound to vfio-pci\n"
                );
                return Err(EINVAL);
            };
            let Some(uuid) = uuid else {
                dev_info!(pdev, "VF token required to access device\n");
                return Err(EACCES);
            };
            if pf_token.lock().uuid != *uuid {
                dev_info!(pdev, "Incorrect VF token provided for device\n");
                return Err(EACCES);
            }
        } else if let Some(vf_token) = &self.sriov.vf_token {
            let mut token = vf_token.lock();
            if token.users != 0 {
                let Some(uuid) = uuid else {
                    dev_info!(pdev, "VF token required to access device\n");
                    return Err(EACCES);
                };
                if token.uuid != *uuid {
                    dev_info!(pdev, "Incorrect VF token provided for device\n");
                    return Err(EACCES);
                }
            } else if let Some(uuid) = uuid {
                token.uuid = *uuid;
            }
        } else if uuid.is_some() {
            dev_info!(pdev, "VF token incorrectly provided, not a PF or VF\n");
            return Err(EINVAL);
        }
        Ok(())
    }

    /// `VFIO_DEVICE_FEATURE_PCI_VF_TOKEN` (`vfio_pci_core_feature_token()`): sets the PF's VF
    /// token. GET is refused, as it could give away the token of the previous user.
    pub(crate) fn feature_vf_token(&self, flags: u32, arg: UserPtr, argsz: usize) -> Result<i32> {
        let Some(vf_token) = &self.sriov.vf_token else {
            return Err(ENOTTY);
        };
        let minsz = size_of::<[u8; 16]>();
        if !vfio::check_feature(flags, argsz, uapi::VFIO_DEVICE_FEATURE_SET, minsz)? {
            return Ok(0);
        }
        let uuid: [u8; 16] = vfio::read_arg(arg, minsz)?;
        vf_token.lock().uuid = Uuid(uuid);
        Ok(0)
    }
}
