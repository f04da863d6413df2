// SPDX-License-Identifier: GPL-2.0

//! vfio-pci-rs: VFIO PCI user-level meta-driver, a Rust port of vfio-pci and vfio-pci-core.
//!
//! The `vfio-pci-rs` PCI driver binds a function through `driver_override` (or the `ids=`
//! parameter) and hands it to userspace through the VFIO group and cdev interfaces, with the
//! uAPI of `include/uapi/linux/vfio.h`, as the C `vfio-pci` does.
//!
//! C sources: [`drivers/vfio/pci/`](srctree/drivers/vfio/pci/)

use core::{
    mem::{offset_of, size_of},
    sync::atomic::{AtomicBool, Ordering},
};
use kernel::{
    device::{Bound, Core},
    driver, fmt,
    io::Io,
    mm::virt::VmaNew,
    new_mutex, new_rwsem, pci, pm_runtime,
    prelude::*,
    str::BStr,
    sync::{aref::ARef, Arc, Mutex, WriteGuard},
    uaccess::{UserPtr, UserSlice},
    uapi,
    uuid::Uuid,
    vfio,
};

mod vfio_pci_config;
mod vfio_pci_dmabuf;
mod vfio_pci_igd;
mod vfio_pci_intrs;
mod vfio_pci_pm;
mod vfio_pci_priv;
mod vfio_pci_rdwr;
mod vfio_pci_region;
mod vfio_pci_sriov;

use vfio_pci_priv::{IntxMasking, MemoryState, MsixLocation};

module! {
    type: VfioPciModule,
    name: "vfio_pci_rs",
    authors: ["The vfio-pci-rs developers"],
    description: "VFIO PCI - User Level meta-driver (Rust)",
    license: "GPL",
    // The DMABUFs of BAR mappings and exports.
    imports_ns: ["DMA_BUF"],
    params: {
        ids: string {
            default: "",
            description: "Initial PCI IDs to add to the vfio driver, format is \"vendor:device[:subvendor[:subdevice[:class[:class_mask]]]]\" and multiple comma separated entries can be specified",
        },
        nointxmask: bool {
            default: false,
            description: "Disable support for PCI 2.3 style INTx masking.  If this resolves problems for specific devices, report lspci -vvvxxx to linux-pci@vger.kernel.org so the device can be fixed automatically via the broken_intx_masking flag.",
            permissions: 0o644,
        },
        disable_vga: bool {
            default: false,
            description: "Disable VGA resource access through vfio-pci",
            permissions: 0o444,
        },
        disable_idle_d3: bool {
            default: false,
            description: "Disable using the PCI D3 low power state for idle, unused devices",
            permissions: 0o644,
        },
        enable_sriov: bool {
            default: false,
            description: "Enable support for SR-IOV configuration.  Enabling SR-IOV on a PF typically requires support of the userspace PF driver, enabling VFs without such support may result in non-functional VFs or PF.",
            permissions: 0o644,
        },
        disable_denylist: bool {
            default: false,
            description: "Disable use of device denylist. Disabling the denylist allows binding to devices with known errata that may lead to exploitable stability or security issues when accessed by untrusted users.",
            permissions: 0o444,
        },
    },
}

/// The `vfio-pci-rs` PCI driver.
struct VfioPciDriver;

/// The name of the PCI driver: `vfio-pci-rs` beside the C vfio-pci, and `vfio-pci` in a kernel
/// without it (where Kbuild names the module `vfio-pci` too), so that userspace that knows the
/// driver by that name (DPDK, dpdk-devbind, SPDK, libvirt) finds it.
const DRIVER_NAME: &CStr = if cfg!(CONFIG_VFIO_PCI) {
    c"vfio-pci-rs"
} else {
    c"vfio-pci"
};

kernel::pci_device_table!(
    PCI_TABLE,
    <VfioPciDriver as pci::Driver>::IdInfo,
    // Match all, but only through `driver_override`, as vfio-pci does.
    [(pci::DeviceId::vfio_driver_override(None, None), ())]
);

/// What the PCI driver keeps per bound function.
struct VfioPciData {
    /// The VFIO device: the allocation reference, held as C's drvdata holds it, until the
    /// function is unbound.
    vdev: ARef<vfio::Device<VfioPciCore>>,
    /// The VGA region is not offered (`vfio_vga_disabled()`).
    vga_disabled: bool,
    /// Another VGA function sits on this one's bus or below (the walk of
    /// `vfio_pci_set_decode()`). Found at probe: the arbiter asks under its spinlock, where
    /// C's walk of the PCI devices could sleep.
    vga_below: bool,
}

impl pci::Driver for VfioPciDriver {
    type IdInfo = ();
    type Data<'bound> = VfioPciData;
    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;
    const DRIVER_MANAGED_DMA: bool = true;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        let params = Params::get();
        let vga_disabled = !cfg!(CONFIG_VFIO_PCI_RUST_VGA) || params.disable_vga;
        let vga_below = pdev.is_vga() && !pdev.is_on_root_bus() && pdev.vga_on_same_or_lower_bus();
        VfioPciCore::probe(pdev, params).map(|vdev| VfioPciData {
            vdev,
            vga_disabled,
            vga_below,
        })
    }

    const HAS_VGA_CLIENT: bool = true;

    /// `vfio_pci_set_decode()`: a function whose VGA ranges are offered to the user, the only
    /// VGA device, or one on a root bus keeps decoding the legacy ranges; otherwise only if
    /// another VGA function sits below the same bridge.
    fn vga_set_decode<'bound>(
        pdev: &'bound pci::Device<Bound>,
        this: Pin<&Self::Data<'bound>>,
        single_vga: bool,
    ) -> pci::VgaDecodes {
        let normal = pci::VgaDecodes::NORMAL_IO | pci::VgaDecodes::NORMAL_MEM;
        let legacy = pci::VgaDecodes::LEGACY_IO | pci::VgaDecodes::LEGACY_MEM;
        if single_vga || !this.vga_disabled || pdev.is_on_root_bus() || this.vga_below {
            normal | legacy
        } else {
            normal
        }
    }

    /// `vfio_pci_core_unregister_device()`: the function stays in D0 once unbound. The VFIO
    /// device is unregistered after this, which resumes nothing: the usage count taken here
    /// keeps the function active meanwhile.
    fn unbind<'bound>(pdev: &'bound pci::Device<Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        let dev: &kernel::device::Device<Bound> = pdev.as_ref();
        this.vdev.with_registered(pdev.as_ref(), |_, core| {
            let _ = core.sriov_configure(pdev, 0);
            if !core.disable_idle_d3 {
                dev.pm_runtime_get_noresume();
            }
        });
        dev.pm_runtime_forbid();
    }

    const HAS_SRIOV_CONFIGURE: bool = true;

    /// `vfio_pci_sriov_configure()`: only with `enable_sriov`.
    fn sriov_configure<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        this: Pin<&Self::Data<'bound>>,
        nr_virtfn: u16,
    ) -> Result<u16> {
        if !module_parameters::enable_sriov.value() {
            return Err(ENOENT);
        }
        this.vdev
            .with_registered(pdev.as_ref(), |_, core| {
                core.sriov_configure(pdev, nr_virtfn)
            })
            .unwrap_or(Err(ENODEV))
    }

    const HAS_RUNTIME_PM: bool = true;

    /// `vfio_pci_core_runtime_suspend()`.
    fn runtime_suspend<'bound>(
        pdev: &'bound pci::Device<Bound>,
        this: Pin<&Self::Data<'bound>>,
        pm: &pm_runtime::Callback<'_>,
    ) -> Result {
        this.vdev
            .with_registered_pm(pm, |_, core| core.runtime_suspend(pdev));
        Ok(())
    }

    /// `vfio_pci_core_runtime_resume()`.
    fn runtime_resume<'bound>(
        pdev: &'bound pci::Device<Bound>,
        this: Pin<&Self::Data<'bound>>,
        pm: &pm_runtime::Callback<'_>,
    ) -> Result {
        this.vdev
            .with_registered_pm(pm, |_, core| core.runtime_resume(pdev));
        Ok(())
    }

    const HAS_ERROR_DETECTED: bool = true;

    /// `vfio_pci_core_aer_err_detected()`: the user learns of the error through the ERR
    /// eventfd and handles the recovery.
    fn error_detected<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        this: Pin<&Self::Data<'bound>>,
    ) -> pci::ErsResult {
        this.vdev
            .with_registered(pdev.as_ref(), |_, core| core.signal_err());
        pci::ErsResult::CanRecover
    }
}

/// The state of an open function, set up by `open_device` and torn down by `close_device`.
#[derive(Default)]
struct OpenState {
    /// A function reset works (`VFIO_DEVICE_FLAGS_RESET`).
    reset_works: bool,
    /// The config state stored at open, loaded back at close.
    saved_state: Option<pci::SavedState>,
    /// The MSI-X table, if the function has one.
    msix: Option<MsixLocation>,
}

/// A function driven by vfio-pci-rs, C's `struct vfio_pci_core_device`.
///
/// Lock order: `open`, then `config`, then `igate`, then `memory_lock`. `dev_regions` is
/// taken alone, or under `mmap_lock`.
#[pin_data]
struct VfioPciCore {
    /// Open state. `open_device` and `close_device` also run under the device set lock.
    #[pin]
    open: Mutex<OpenState>,
    /// The device-specific regions of the open function (`region`, `num_regions`).
    #[pin]
    dev_regions: vfio_pci_region::DevRegions,
    /// The virtualized config space, set up at open.
    #[pin]
    config: Mutex<vfio_pci_config::ConfigState>,
    /// The interrupt setup (`igate`).
    #[pin]
    igate: vfio_pci_intrs::IrqGate,
    /// The ioeventfds (`ioeventfds_lock`, `ioeventfds_list`).
    #[pin]
    ioeventfds: vfio_pci_rdwr::IoEventFds,
    /// The ERR and REQ eventfds.
    #[pin]
    notifiers: Mutex<vfio_pci_intrs::Notifiers>,
    /// Interrupt state the config code reads and changes without `igate`.
    irq_shared: Arc<vfio_pci_intrs::IrqShared>,
    /// Memory decode and power state, and the BAR mappings only reachable under it. Shared
    /// with the function's DMABUFs, whose faults take it for reading.
    memory_lock: Arc<vfio_pci_dmabuf::MemoryLock>,
    /// The DMABUFs of the function's BARs: its mmap()s and exports.
    dmabufs: Arc<vfio_pci_dmabuf::DmaBufs>,
    /// BARs userspace may mmap (`bar_mmap_supported`). Written by `open_device` before any
    /// ioctl or mmap() can run and cleared by `close_device` after the last, so readers need
    /// no lock.
    bar_mmap_supported: [AtomicBool; 6],
    /// The function is a VGA device whose legacy ranges are offered (`has_vga`).
    has_vga: bool,
    /// Idle functions are left in D0 (`disable_idle_d3`).
    disable_idle_d3: bool,
    /// PCI 2.3 INTx masking is not used (`nointxmask`).
    nointxmask: bool,
    /// The function was used and not reset since (`needs_reset`); a slot or bus reset of its
    /// set when all are closed cleans it.
    needs_reset: AtomicBool,
    /// INTx was masked for a runtime suspend and is unmasked on resume (`pm_intx_masked`).
    pm_intx_masked: AtomicBool,
    /// VF token and VF capture of a PF, or the PF's token of a VF.
    sriov: vfio_pci_sriov::Sriov,
}

/// Memory decode forced on under the `memory_lock` write guard, for the driver's own access to
/// BAR memory (ROM, MSI-X table); the COMMAND register is restored on drop
/// (`vfio_pci_memory_lock_and_enable()`, `vfio_pci_memory_unlock_and_restore()`).
struct MemoryEnabled<'a> {
    pdev: &'a pci::Device<Bound>,
    _memory: WriteGuard<'a, MemoryState>,
    command: u16,
}

impl<'a> MemoryEnabled<'a> {
    fn new(core: &'a VfioPciCore, pdev: &'a pci::Device<Bound>) -> Self {
        let memory = core.memory_lock.write();
        let config = pdev.config_space();
        let command = config.read16(uapi::PCI_COMMAND as usize);
        let mem = uapi::PCI_COMMAND_MEMORY as u16;
        if command & mem == 0 {
            config.write16(command | mem, uapi::PCI_COMMAND as usize);
        }
        Self {
            pdev,
            _memory: memory,
            command,
        }
    }
}

impl Drop for MemoryEnabled<'_> {
    fn drop(&mut self) {
        self.pdev
            .config_space()
            .write16(self.command, uapi::PCI_COMMAND as usize);
    }
}

/// The module parameters that shape a function's handling, latched per function at probe as
/// C's `vfio_pci_init_dev()` latches them: a later write through sysfs affects the functions
/// bound after it.
struct Params {
    disable_denylist: bool,
    disable_vga: bool,
    disable_idle_d3: bool,
    nointxmask: bool,
}

impl Params {
    fn get() -> Self {
        Self {
            disable_denylist: *module_parameters::disable_denylist.value_ref(),
            disable_vga: *module_parameters::disable_vga.value_ref(),
            disable_idle_d3: module_parameters::disable_idle_d3.value(),
            nointxmask: module_parameters::nointxmask.value(),
        }
    }
}

/// Whether vfio-pci refuses `pdev` for known errata (`vfio_pci_dev_in_denylist()`).
fn in_denylist(pdev: &pci::Device) -> bool {
    pdev.vendor_id() == pci::Vendor::INTEL
        && matches!(
            pdev.device_id(),
            0x19e2 // QAT_C3XXX
                | 0x19e3 // QAT_C3XXX_VF
                | 0x37c8 // QAT_C62X
                | 0x37c9 // QAT_C62X_VF
                | 0x0435 // QAT_DH895XCC
                | 0x0443 // QAT_DH895XCC_VF
                | 0x0b25 // DSA_SPR0
                | 0x0cfe // IAX_SPR0
        )
}

impl VfioPciCore {
    /// Allocates and registers the VFIO device of `pdev` (`vfio_pci_probe()` and
    /// `vfio_pci_core_register_device()`).
    fn probe(pdev: &pci::Device<Core<'_>>, params: Params) -> Result<ARef<vfio::Device<Self>>> {
        if in_denylist(pdev) {
            if !params.disable_denylist {
                dev_warn!(
                    pdev,
                    "{:04x}:{:04x} exists in vfio-pci device denylist, driver probing disallowed.\n",
                    pdev.vendor_id().as_raw(),
                    pdev.device_id()
                );
                return Err(EINVAL);
            }
            dev_warn!(
                pdev,
                "device denylist disabled - allowing device {:04x}:{:04x}.\n",
                pdev.vendor_id().as_raw(),
                pdev.device_id()
            );
        }

        let parent: &kernel::device::Device<Core<'_>> = pdev.as_ref();
        let vdev = vfio::Device::<Self>::new(parent)?;
        // The providers importers of the function's DMABUFs map its BARs through
        // (`vfio_pci_core_init_dev()`); a function whose BARs others cannot map has none.
        if let Err(e) = pdev.p2pdma_init() {
            if e != EOPNOTSUPP {
                return Err(e);
            }
        }

        if u32::from(pdev.header_type()) != uapi::PCI_HEADER_TYPE_NORMAL {
            return Err(EINVAL);
        }

        // VFs that already exist may be in use by the host; reject the PF, as C does.
        if pdev.num_vf() != 0 {
            dev_warn!(pdev, "Cannot bind to PF with SR-IOV enabled\n");
            return Err(EBUSY);
        }

        let sriov = vfio_pci_sriov::Sriov::new(pdev)?;

        // A firmware framebuffer may hold the BARs of a VGA function (`vfio_pci_vga_init()`).
        if pdev.is_vga() {
            pdev.remove_conflicting_framebuffers(DRIVER_NAME)?;
        }

        // pci-core leaves the power state unknown at boot and after a driver unbinds; the only
        // transition out of it is to D0, which runtime PM needs. A failure shows again at open.
        let _ = pdev.set_power_state(pci::PowerState::D0);

        // Idle functions suspend from now on, before anyone can open them (the usage count
        // the PCI core holds across probe is given back), unless `disable_idle_d3`.
        let dev: &kernel::device::Device<Bound> = pdev.as_ref();
        dev.pm_runtime_allow();
        if !params.disable_idle_d3 {
            dev.pm_runtime_put();
        }
        let undo_runtime_pm = |e: Error| {
            if !params.disable_idle_d3 {
                dev.pm_runtime_get_noresume();
            }
            dev.pm_runtime_forbid();
            e
        };

        let mut memory = MemoryState::new();
        memory.needs_pm_restore = needs_pm_restore(pdev);
        let memory_lock = Arc::pin_init(new_rwsem!(memory, "vfio_pci_rs::memory_lock"), GFP_KERNEL)
            .map_err(undo_runtime_pm)?;
        let dmabufs = vfio_pci_dmabuf::DmaBufs::new().map_err(undo_runtime_pm)?;
        let irq_shared = vfio_pci_intrs::IrqShared::new().map_err(undo_runtime_pm)?;

        vfio::Registration::new_foreign_owned(
            parent,
            &vdev,
            vfio::DeviceSetKey::for_pci(pdev),
            try_pin_init!(Self {
                open <- new_mutex!(OpenState::default()),
                dev_regions <- new_mutex!(KVec::new()),
                config <- new_mutex!(vfio_pci_config::ConfigState::new()),
                igate <- new_mutex!(vfio_pci_intrs::IrqState::default(), "vfio_pci_rs::igate"),
                ioeventfds <- new_mutex!(KVec::new()),
                notifiers <- new_mutex!(vfio_pci_intrs::Notifiers::default()),
                irq_shared,
                memory_lock,
                dmabufs,
                bar_mmap_supported: [const { AtomicBool::new(false) }; 6],
                has_vga: cfg!(CONFIG_VFIO_PCI_RUST_VGA) && !params.disable_vga && pdev.is_vga(),
                disable_idle_d3: params.disable_idle_d3,
                nointxmask: params.nointxmask,
                needs_reset: AtomicBool::new(false),
                pm_intx_masked: AtomicBool::new(false),
                sriov,
            }),
        )
        .map_err(undo_runtime_pm)?;

        Ok(vdev)
    }

    /// Gives back the usage count an open function holds, so that it suspends when idle.
    fn idle(&self, pdev: &pci::Device<Bound>) {
        if !self.disable_idle_d3 {
            pdev.as_ref().pm_runtime_put();
        }
    }

    /// The PCI function of `vdev`.
    fn pdev(vdev: &vfio::Device<Self, Bound>) -> Result<&pci::Device<Bound>> {
        vdev.parent().try_into()
    }

    /// Answers `VFIO_DEVICE_GET_INFO` (`vfio_pci_ioctl_get_info()`).
    fn ioctl_get_info(&self, pdev: &pci::Device<Bound>, arg: UserPtr) -> Result<isize> {
        type Info = uapi::vfio_device_info;
        let minsz = offset_of!(Info, num_irqs) + size_of::<u32>();
        let mut info: Info = vfio::read_arg(arg, minsz)?;

        let argsz = info.argsz as usize;
        if argsz < minsz {
            return Err(EINVAL);
        }
        let minsz = argsz.min(size_of::<Info>());

        info.flags = uapi::VFIO_DEVICE_FLAGS_PCI;
        if self.open.lock().reset_works {
            info.flags |= uapi::VFIO_DEVICE_FLAGS_RESET;
        }
        info.num_regions = self.num_regions();
        info.num_irqs = uapi::VFIO_PCI_NUM_IRQS;

        let mut caps = vfio::InfoCaps::new();
        match add_atomic_cap(pdev, &mut caps) {
            Ok(()) | Err(ENODEV) => {}
            Err(e) => {
                dev_warn!(pdev, "Failed to setup AtomicOps info capability\n");
                return Err(e);
            }
        }

        if caps.size() != 0 {
            info.flags |= uapi::VFIO_DEVICE_FLAGS_CAPS;
            let needed = size_of::<Info>() + caps.size();
            if argsz < needed {
                info.argsz = needed.try_into()?;
            } else {
                caps.copy_to_user(arg.wrapping_byte_add(size_of::<Info>()), size_of::<Info>())?;
                info.cap_offset = size_of::<Info>() as u32;
            }
        }

        vfio::write_arg(arg, &info, minsz)?;
        Ok(0)
    }
}

/// Adds the AtomicOps completer capability of the function (`vfio_pci_info_atomic_cap()`);
/// `ENODEV` when the function completes none that its root port routes.
fn add_atomic_cap(pdev: &pci::Device<Bound>, caps: &mut vfio::InfoCaps) -> Result {
    let physfn = pdev.physfn();
    let devcap2 = physfn.pcie_capability_read_dword(uapi::PCI_EXP_DEVCAP2 as u16);
    let mut flags = 0;
    for (completer, flag) in [
        (
            uapi::PCI_EXP_DEVCAP2_ATOMIC_COMP32,
            uapi::VFIO_PCI_ATOMIC_COMP32,
        ),
        (
            uapi::PCI_EXP_DEVCAP2_ATOMIC_COMP64,
            uapi::VFIO_PCI_ATOMIC_COMP64,
        ),
        (
            uapi::PCI_EXP_DEVCAP2_ATOMIC_COMP128,
            uapi::VFIO_PCI_ATOMIC_COMP128,
        ),
    ] {
        if devcap2 & completer != 0 && physfn.enable_atomic_ops_to_root(completer).is_ok() {
            flags |= flag;
        }
    }
    if flags == 0 {
        return Err(ENODEV);
    }
    caps.add(&uapi::vfio_device_info_cap_pci_atomic_comp {
        header: uapi::vfio_info_cap_header {
            id: uapi::VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP as u16,
            version: 1,
            next: 0,
        },
        flags,
        reserved: 0,
    })
}

/// Resets `pdev` at close if its and its upstream bridge's locks can be taken: blocking on
/// them could deadlock, and `pci_try_reset_function()` would overwrite the state just loaded.
fn reset_at_close(pdev: &pci::Device<Bound>) -> bool {
    let _bridge_lock = match pdev.upstream_bridge() {
        Some(bridge) => match bridge.try_lock() {
            Some(guard) => Some(guard),
            None => return false,
        },
        None => None,
    };
    pdev.try_lock()
        .is_some_and(|lock| lock.reset_function().is_ok())
}

/// The PCI function of a device set member.
fn member_pdev<'a>(
    member: &vfio::DeviceSetMember<'a, VfioPciCore>,
) -> Result<&'a pci::Device<Bound>> {
    member.device().parent().try_into()
}

/// The function to pass to `pci_reset_bus()` if every function the set's slot or bus reset
/// reaches is in the set (`vfio_pci_dev_set_resettable()`): they all stay put and every driver
/// of them takes part in the reset.
fn dev_set_resettable<'a>(
    dev_set: &vfio::DeviceSetGuard<'_, VfioPciCore>,
    members: &[vfio::DeviceSetMember<'a, VfioPciCore>],
) -> Option<&'a pci::Device<Bound>> {
    // All functions of a set share one reset, so any of them answers for all.
    let pdev = member_pdev(members.first()?).ok()?;
    let scope = pdev.reset_scope()?;
    pdev.for_each_in_reset_scope(scope, |dep| {
        if dev_set.contains(dep.as_ref()) {
            Ok(())
        } else {
            Err(ENODEV)
        }
    })
    .ok()?;
    Some(pdev)
}

/// Resets the set's slot or bus when no function of it is open and one of them was left
/// dirty, e.g. for lack of a function reset (`vfio_pci_dev_set_try_reset()`).
fn dev_set_try_reset(dev_set: &vfio::DeviceSetGuard<'_, VfioPciCore>) {
    // The function being closed still counts as open.
    if dev_set.open_count() > 1 {
        return;
    }
    let Ok(members) = dev_set.members() else {
        return;
    };
    if !members
        .iter()
        .any(|member| member.data().needs_reset.load(Ordering::Relaxed))
    {
        return;
    }
    let Some(pdev) = dev_set_resettable(dev_set, &members) else {
        return;
    };

    // Some functions of the set may be runtime-suspended: resume them all for the reset.
    let Ok(_active) = dev_set_pm_runtime_get(&members) else {
        return;
    };
    let reset_done = pdev.reset_bus().is_ok();
    if reset_done {
        for member in &members {
            member.data().needs_reset.store(false, Ordering::Relaxed);
        }
    }
}

/// Resumes every function of a device set and keeps them active until the guards are dropped
/// (`vfio_pci_dev_set_pm_runtime_get()`).
fn dev_set_pm_runtime_get<'a>(
    members: &[vfio::DeviceSetMember<'a, VfioPciCore>],
) -> Result<KVec<pm_runtime::ActiveGuard<'a>>> {
    let mut active = KVec::with_capacity(members.len(), GFP_KERNEL)?;
    for member in members {
        let dev: &'a kernel::device::Device<Bound> = member_pdev(member)?.as_ref();
        // Cannot fail: the capacity is reserved.
        active.push(dev.pm_runtime_active()?, GFP_KERNEL)?;
    }
    Ok(active)
}

/// Whether `pdev` loses its state on the way back from D3hot, its PMCSR having No_Soft_Reset
/// clear (`vfio_pci_probe_power_state()`).
fn needs_pm_restore(pdev: &pci::Device<Bound>) -> bool {
    let pm = pdev.pm_cap();
    if pm == 0 {
        return false;
    }
    let pmcsr = pdev
        .config_space()
        .try_read16(usize::from(pm) + uapi::PCI_PM_CTRL as usize)
        .unwrap_or(0);
    u32::from(pmcsr) & uapi::PCI_PM_CTRL_NO_SOFT_RESET == 0
}

/// Devices whose INTx masking is known broken (`vfio_pci_nointx()`): i40e and X550 NICs.
fn intx_masking_broken(pdev: &pci::Device) -> bool {
    pdev.vendor_id() == pci::Vendor::INTEL
        && matches!(
            pdev.device_id(),
            0x1572 | 0x1574 | 0x1580..=0x1581 | 0x1583..=0x158b | 0x37d0..=0x37d2 | 0x1563
        )
}

/// The location of `pdev`'s MSI-X table, read from its capability.
fn msix_location(pdev: &pci::Device<Bound>) -> Option<MsixLocation> {
    let pos = usize::from(pdev.msix_cap());
    if pos == 0 {
        return None;
    }
    let config = pdev.config_space();
    let flags = config
        .try_read16(pos + uapi::PCI_MSIX_FLAGS as usize)
        .ok()?;
    let table = config
        .try_read32(pos + uapi::PCI_MSIX_TABLE as usize)
        .ok()?;
    Some(MsixLocation {
        bar: table & uapi::PCI_MSIX_TABLE_BIR,
        offset: u64::from(table & uapi::PCI_MSIX_TABLE_OFFSET),
        size: (u64::from(u32::from(flags) & uapi::PCI_MSIX_FLAGS_QSIZE) + 1) * 16,
    })
}

impl VfioPciCore {
    /// Moves the function to `state`, saving its config state on the way into D3hot and
    /// restoring it on the way back when the function loses it (`vfio_pci_set_power_state()`).
    ///
    /// Takes the [`MemoryState`] of a held `memory_lock` write guard: memory decode changes.
    fn set_power_state(
        pdev: &pci::Device<Bound>,
        memory: &mut MemoryState,
        state: pci::PowerState,
    ) -> Result {
        let current = pdev.power_state() as i32;
        let target = state as i32;
        let d3hot = pci::PowerState::D3Hot as i32;

        // A PF with VFs enabled keeps its power: the VFs depend on it.
        if target > 0 && memory.sriov_active {
            return Err(EBUSY);
        }

        let needs_save = memory.needs_pm_restore && current < d3hot && target >= d3hot;
        if needs_save {
            pdev.save_state();
        }
        let needs_restore = memory.needs_pm_restore && current >= d3hot && target <= 0;

        pdev.set_power_state(state)?;

        // D3 might be unsupported via quirk: only keep the state if the function got there.
        if needs_save && pdev.power_state() as i32 >= d3hot {
            memory.pm_save = pdev.store_saved_state();
        } else if needs_restore {
            let _ = pdev.load_saved_state(memory.pm_save.take());
            pdev.restore_state();
        }
        Ok(())
    }

    /// Maps the BARs for read and write (`vfio_pci_core_map_bars()`), as C does at open.
    fn map_bars(pdev: &pci::Device<Bound>) -> [Result<pci::IoMapping>; 6] {
        core::array::from_fn(|bar| {
            // CAST: `bar` < 6.
            let bar = bar as u32;
            if pdev.resource_len(bar)? == 0 {
                return Err(ENODEV);
            }
            pdev.iomap_bar(bar, c"vfio").inspect_err(|_| {
                dev_dbg!(pdev, "Failed to map region {}\n", bar);
            })
        })
    }

    /// Reads or writes region `index << 40` of the device fd (`vfio_pci_rw()`).
    fn rw(
        &self,
        pdev: &pci::Device<Bound>,
        buf: UserPtr,
        count: usize,
        pos: &mut i64,
        write: bool,
    ) -> Result<usize> {
        if count == 0 {
            return Ok(0);
        }
        // CAST: The VFIO core only passes file positions it accepted, which are not negative.
        let index = vfio_pci_priv::offset_to_index(*pos as u64);
        let index = u32::try_from(index).map_err(|_| EINVAL)?;
        if index >= self.num_regions() {
            return Err(EINVAL);
        }
        let _active = pdev.as_ref().pm_runtime_active().map_err(|e| {
            dev_info!(pdev, "runtime resume failed {}\n", e.to_errno());
            EIO
        })?;
        match index {
            uapi::VFIO_PCI_CONFIG_REGION_INDEX => self.config_rw(pdev, buf, count, pos, write),
            uapi::VFIO_PCI_ROM_REGION_INDEX if write => Err(EINVAL),
            uapi::VFIO_PCI_BAR0_REGION_INDEX..=uapi::VFIO_PCI_ROM_REGION_INDEX => {
                self.bar_rw(pdev, buf, count, pos, write)
            }
            uapi::VFIO_PCI_VGA_REGION_INDEX => self.vga_rw(pdev, buf, count, pos, write),
            _ => {
                let offset = u64::try_from(*pos)? & vfio_pci_priv::OFFSET_MASK;
                let done = self.dev_region_rw(index, buf, count, offset, write)?;
                *pos += i64::try_from(done)?;
                Ok(done)
            }
        }
    }

    /// Describes region `info.index` (`vfio_pci_ioctl_get_region_info()`).
    fn region_info(
        &self,
        pdev: &pci::Device<Bound>,
        info: &mut uapi::vfio_region_info,
        caps: &mut vfio::InfoCaps,
    ) -> Result {
        let read_write = uapi::VFIO_REGION_INFO_FLAG_READ | uapi::VFIO_REGION_INFO_FLAG_WRITE;
        let index = info.index;
        match index {
            uapi::VFIO_PCI_CONFIG_REGION_INDEX => {
                info.offset = vfio_pci_priv::index_to_offset(index);
                info.size = pdev.cfg_size_bytes() as u64;
                info.flags = read_write;
            }
            uapi::VFIO_PCI_BAR0_REGION_INDEX..=uapi::VFIO_PCI_BAR5_REGION_INDEX => {
                info.offset = vfio_pci_priv::index_to_offset(index);
                info.size = pdev.resource_len(index)?;
                if info.size == 0 {
                    info.flags = 0;
                    return Ok(());
                }
                info.flags = read_write;
                if self.bar_mmap_supported[index as usize].load(Ordering::Relaxed) {
                    info.flags |= uapi::VFIO_REGION_INFO_FLAG_MMAP;
                    if self.open.lock().msix.is_some_and(|msix| msix.bar == index) {
                        caps.add(&uapi::vfio_info_cap_header {
                            id: uapi::VFIO_REGION_INFO_CAP_MSIX_MAPPABLE as u16,
                            version: 1,
                            next: 0,
                        })?;
                    }
                }
            }
            uapi::VFIO_PCI_ROM_REGION_INDEX => {
                info.offset = vfio_pci_priv::index_to_offset(index);
                info.flags = 0;
                info.size = 0;
                if pdev.resource_start(index)? != 0 {
                    // The ROM must hold a valid image; mapping it needs memory decode.
                    let memory = MemoryEnabled::new(self, pdev);
                    if pdev.map_rom().is_some() {
                        info.flags = uapi::VFIO_REGION_INFO_FLAG_READ;
                        // Report the BAR size, not the ROM size.
                        info.size = pdev.resource_len(index)?;
                    }
                    drop(memory);
                } else if let Some((_, len)) = pdev.platform_rom() {
                    info.flags = uapi::VFIO_REGION_INFO_FLAG_READ;
                    // Report the BAR size as a power of two.
                    info.size = (len as u64).checked_next_power_of_two().unwrap_or(0);
                }
            }
            uapi::VFIO_PCI_VGA_REGION_INDEX => {
                if !self.has_vga {
                    return Err(EINVAL);
                }
                info.offset = vfio_pci_priv::index_to_offset(index);
                info.size = 0xc0000;
                info.flags = read_write;
            }
            _ => return self.dev_region_info(info, caps),
        }
        Ok(())
    }

    /// Finds which BARs userspace may mmap (`vfio_pci_probe_mmaps()`): memory BARs of a page or
    /// more, and smaller ones that start a page, whose rest of the page is then reserved.
    fn probe_mmaps(&self, pdev: &pci::Device<Bound>, memory: &mut MemoryState) {
        for bar in 0..6u32 {
            let i = bar as usize;
            self.bar_mmap_supported[i].store(false, Ordering::Relaxed);
            let (Ok(flags), Ok(len)) = (pdev.resource_flags(bar), pdev.resource_len(bar)) else {
                continue;
            };
            if !flags.is_mem() || len == 0 {
                continue;
            }
            if len >= kernel::page::PAGE_SIZE as u64 {
                self.bar_mmap_supported[i].store(true, Ordering::Relaxed);
                continue;
            }
            if let Ok(reservation) = pdev.reserve_bar_page_tail(bar) {
                memory.page_tail_reservations[i] = Some(reservation);
                self.bar_mmap_supported[i].store(true, Ordering::Relaxed);
            }
        }
    }

    /// Handles `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`
    /// (`vfio_pci_ioctl_get_pci_hot_reset_info()`): the functions a hot reset would reach, with
    /// their IOMMU group, or with their iommufd device ID when the device was opened by cdev.
    fn ioctl_get_pci_hot_reset_info(
        vdev: &vfio::Device<Self, Bound>,
        pdev: &pci::Device<Bound>,
        arg: UserPtr,
    ) -> Result<isize> {
        type Info = uapi::vfio_pci_hot_reset_info;
        type Dependent = uapi::vfio_pci_dependent_device;
        let minsz = offset_of!(Info, count) + size_of::<u32>();
        let mut hdr: Info = vfio::read_arg(arg, minsz)?;
        let argsz = hdr.argsz as usize;
        if argsz < minsz {
            return Err(EINVAL);
        }
        hdr.flags = 0;

        let scope = pdev.reset_scope().ok_or(ENODEV)?;
        let mut count = 0usize;
        pdev.for_each_in_reset_scope(scope, |_| {
            count += 1;
            Ok(())
        })?;
        if count == 0 {
            return Err(ERANGE);
        }
        if count > argsz.saturating_sub(size_of::<Info>()) / size_of::<Dependent>() {
            hdr.count = count.try_into()?;
            vfio::write_arg(arg, &hdr, minsz)?;
            return Err(ENOSPC);
        }

        let cdev = vdev.cdev_opened();
        let mut flags = 0;
        if cdev {
            flags =
                uapi::VFIO_PCI_HOT_RESET_FLAG_DEV_ID | uapi::VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED;
        }
        let mut devices = KVec::<Dependent>::with_capacity(count, GFP_KERNEL)?;
        {
            let dev_set = vdev.lock_dev_set();
            let members = dev_set.members()?;
            let ctx = vdev.iommufd_ctx();
            pdev.for_each_in_reset_scope(scope, |dep| {
                // The topology changed since we counted.
                if devices.len() >= count {
                    return Err(EAGAIN);
                }
                let mut info = Dependent {
                    segment: dep.domain_nr(),
                    bus: dep.bus_number(),
                    devfn: dep.devfn(),
                    __bindgen_anon_1: uapi::vfio_pci_dependent_device__bindgen_ty_1 { devid: 0 },
                };
                if cdev {
                    // A hot reset needs every function it reaches in the set.
                    let owner = members
                        .iter()
                        .find(|m| core::ptr::eq(&**m.device().parent(), dep.as_ref()))
                        .zip(ctx)
                        .map_or(vfio::IommufdOwner::NotOwned, |(m, ctx)| {
                            m.iommufd_owner(ctx)
                        });
                    info.__bindgen_anon_1.devid = match owner {
                        vfio::IommufdOwner::DevId(id) => id,
                        vfio::IommufdOwner::GroupOwned => uapi::VFIO_PCI_DEVID_OWNED,
                        vfio::IommufdOwner::NotOwned => {
                            flags &= !uapi::VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED;
                            uapi::VFIO_PCI_DEVID_NOT_OWNED as u32
                        }
                    };
                } else {
                    // Functions without an IOMMU group are not isolated: no reset for them.
                    let group = dep.iommu_group_id().ok_or(EPERM)?;
                    info.__bindgen_anon_1.group_id = group as u32;
                }
                Ok(devices.push(info, GFP_KERNEL)?)
            })?;
        }

        let mut writer = UserSlice::new(
            arg.wrapping_byte_add(size_of::<Info>()),
            devices.len() * size_of::<Dependent>(),
        )
        .writer();
        for device in &devices {
            writer.write(device)?;
        }
        hdr.count = devices.len().try_into()?;
        hdr.flags = flags;
        vfio::write_arg(arg, &hdr, minsz)?;
        Ok(0)
    }

    /// Handles `VFIO_DEVICE_PCI_HOT_RESET` (`vfio_pci_ioctl_pci_hot_reset()`): with the group
    /// fds of every function it reaches, or for a cdev-opened device with none, when one
    /// iommufd context owns them all.
    fn ioctl_pci_hot_reset(
        vdev: &vfio::Device<Self, Bound>,
        pdev: &pci::Device<Bound>,
        arg: UserPtr,
    ) -> Result<isize> {
        type HotReset = uapi::vfio_pci_hot_reset;
        let minsz = offset_of!(HotReset, count) + size_of::<u32>();
        let hdr: HotReset = vfio::read_arg(arg, minsz)?;
        if (hdr.argsz as usize) < minsz || hdr.flags != 0 {
            return Err(EINVAL);
        }
        // A zero-length array is only for cdev-opened devices.
        if (hdr.count != 0) == vdev.cdev_opened() {
            return Err(EINVAL);
        }
        let scope = pdev.reset_scope().ok_or(ENODEV)?;

        if hdr.count == 0 {
            return Self::dev_set_hot_reset(vdev, None, vdev.iommufd_ctx());
        }

        // At most one group per function: don't copy an arbitrarily large array.
        let mut count = 0usize;
        pdev.for_each_in_reset_scope(scope, |_| {
            count += 1;
            Ok(())
        })?;
        let array_count = hdr.count as usize;
        if array_count > count {
            return Err(EINVAL);
        }
        let mut reader = UserSlice::new(
            arg.wrapping_byte_add(size_of::<HotReset>()),
            array_count * size_of::<i32>(),
        )
        .reader();
        let mut fds = KVec::<i32>::with_capacity(array_count, GFP_KERNEL)?;
        for _ in 0..array_count {
            fds.push(reader.read::<i32>()?, GFP_KERNEL)?;
        }
        // Hold each group across the reset.
        let mut groups = KVec::with_capacity(array_count, GFP_KERNEL)?;
        for fd in fds {
            groups.push(vfio::GroupFile::from_fd(fd)?, GFP_KERNEL)?;
        }
        Self::dev_set_hot_reset(vdev, Some(&groups), None)
    }

    /// Resets the slot or bus of the device set if the caller owns every function in it
    /// (`vfio_pci_dev_set_hot_reset()`).
    fn dev_set_hot_reset(
        vdev: &vfio::Device<Self, Bound>,
        groups: Option<&[vfio::GroupFile]>,
        ctx: Option<vfio::IommufdCtx>,
    ) -> Result<isize> {
        let dev_set = vdev.lock_dev_set();
        let members = dev_set.members()?;
        let pdev = dev_set_resettable(&dev_set, &members).ok_or(EINVAL)?;
        // Dropped last: the functions suspend again after the memory locks are released.
        let _active = dev_set_pm_runtime_get(&members)?;

        for member in &members {
            // With groups, each function must be in one of them; from a cdev, each must be
            // bound to the caller's iommufd, or have its group owned by it.
            let owned = match (ctx, groups) {
                (Some(ctx), _) => member.iommufd_owner(ctx) != vfio::IommufdOwner::NotOwned,
                (None, Some(groups)) => member.in_groups(groups),
                (None, None) => false,
            };
            if !owned {
                return Err(EINVAL);
            }
        }

        let mut locked: KVec<(
            &pci::Device<Bound>,
            WriteGuard<'_, MemoryState>,
            &vfio::DeviceSetMember<'_, Self>,
        )> = KVec::with_capacity(members.len(), GFP_KERNEL)?;
        for member in &members {
            // Keep users off each function during the reset: revoke its DMABUFs under the
            // write guard. Locking several is prone to deadlock: give up on contention, and
            // give back what the functions already locked had.
            let locking = member_pdev(member).and_then(|member_pdev| {
                let memory = member.data().get_ref().memory_lock.try_write();
                Ok((member_pdev, memory.ok_or(EBUSY)?))
            });
            let (member_pdev, mut memory) = match locking {
                Ok(locking) => locking,
                Err(e) => {
                    for (member_pdev, memory, member) in locked.iter_mut() {
                        if member.open_count() != 0 {
                            member.data().dma_buf_restore(member_pdev, memory);
                        }
                    }
                    return Err(e);
                }
            };
            member.data().dma_buf_move(&mut memory, true);
            // Cannot fail: the capacity is reserved.
            locked.push((member_pdev, memory, member), GFP_KERNEL)?;
        }

        // A function outside D0 would be put in D0 by the reset behind our back, losing the
        // state a NoSoftRst- function keeps in `pm_save`.
        for (member_pdev, memory, _) in locked.iter_mut() {
            let _ = Self::set_power_state(member_pdev, memory, pci::PowerState::D0);
        }
        let ret = pdev.reset_bus();
        for (member_pdev, memory, member) in locked.iter_mut() {
            if member.open_count() != 0 {
                member.data().dma_buf_restore(member_pdev, memory);
            }
        }
        ret.map(|()| 0)
    }

    /// Handles `VFIO_DEVICE_RESET` (`vfio_pci_ioctl_reset()`).
    fn ioctl_reset(&self, pdev: &pci::Device<Bound>) -> Result<isize> {
        if !self.open.lock().reset_works {
            return Err(EINVAL);
        }
        let mut memory = self.memory_lock.write();
        // A reset from D3hot would skip the state a NoSoftRst- function keeps in `pm_save`.
        let _ = Self::set_power_state(pdev, &mut memory, pci::PowerState::D0);
        // Revoke after the move to D0, whose restore could enable memory again.
        self.dma_buf_move(&mut memory, true);
        let ret = pdev.try_reset_function();
        self.dma_buf_restore(pdev, &mut memory);
        ret.map(|()| 0)
    }
}

impl vfio::Driver for VfioPciCore {
    type Data = Self;
    const NAME: &'static CStr = DRIVER_NAME;

    /// `vfio_pci_core_enable()`.
    fn open_device(vdev: &vfio::Device<Self, Bound>, this: Pin<&Self>) -> Result {
        let pdev = Self::pdev(vdev)?;
        // The open function holds a usage count: it does not suspend until close.
        if !this.disable_idle_d3 {
            pdev.as_ref().pm_runtime_resume_and_get()?;
        }
        let mut open = this.open.lock();

        // Don't allow our initial saved state to include busmaster.
        pdev.clear_master();
        if let Err(e) = pdev.enable_device() {
            this.idle(pdev);
            return Err(e);
        }

        // If reset fails because of the device lock, fail this path entirely.
        let reset = pdev.try_reset_function();
        if reset == Err(EAGAIN) {
            pdev.disable_device();
            this.idle(pdev);
            return Err(EAGAIN);
        }

        pdev.save_state();
        let saved_state = pdev.store_saved_state();
        if saved_state.is_none() {
            dev_dbg!(pdev, "open_device: Couldn't store saved state\n");
        }

        let intx = if this.nointxmask {
            IntxMasking::Unused
        } else if intx_masking_broken(pdev) {
            dev_info!(pdev, "Masking broken INTx support\n");
            pdev.intx(false);
            IntxMasking::Broken
        } else if pdev.intx_mask_supported() {
            IntxMasking::Supported
        } else {
            IntxMasking::Unused
        };

        let config = pdev.config_space();
        let cmd = config.read16(uapi::PCI_COMMAND as usize);
        let intx_disable = uapi::PCI_COMMAND_INTX_DISABLE as u16;
        if intx == IntxMasking::Supported && cmd & intx_disable != 0 {
            config.write16(cmd & !intx_disable, uapi::PCI_COMMAND as usize);
        }

        this.irq_open(intx);
        if let Err(e) = this
            .config_init(pdev, intx)
            .and_then(|()| this.igd_open(pdev))
        {
            this.release_dev_regions();
            this.config_free();
            let _ = pdev.load_saved_state(saved_state);
            pdev.disable_device();
            this.idle(pdev);
            return Err(e);
        }

        this.memory_lock.write().bars = Self::map_bars(pdev);

        *open = OpenState {
            reset_works: reset.is_ok(),
            saved_state,
            msix: msix_location(pdev),
        };
        this.probe_mmaps(pdev, &mut this.memory_lock.write());
        this.sriov.opened();
        Ok(())
    }

    /// `vfio_pci_core_disable()`.
    fn close_device(
        vdev: &vfio::Device<Self, Bound>,
        this: Pin<&Self>,
        dev_set: &vfio::DeviceSetGuard<'_, Self>,
    ) {
        let Ok(pdev) = Self::pdev(vdev) else {
            return;
        };
        this.sriov.closed();
        // Out of low power: the open function's usage count is back; and out of a runtime
        // suspend, before any lock a runtime PM callback takes.
        this.pm_exit_and_restore(pdev);
        let _ = pdev.as_ref().pm_runtime_resume();
        this.dma_buf_cleanup();
        for mmap in &this.bar_mmap_supported {
            mmap.store(false, Ordering::Relaxed);
        }
        let mut open = this.open.lock();

        // A function reset, e.g. a PM reset, fails outside D0; and a NoSoftRst- function gets
        // back the state it kept in `pm_save`.
        {
            let mut memory = this.memory_lock.write();
            let _ = Self::set_power_state(pdev, &mut memory, pci::PowerState::D0);
            memory.pm_save = None;
        }

        // Stop the device from further DMA, and its interrupts.
        pdev.clear_master();
        this.irq_close(pdev);
        this.ioeventfd_close();

        this.config_free();
        this.release_dev_regions();
        {
            let mut memory = this.memory_lock.write();
            memory.bars = core::array::from_fn(|_| Err(ENODEV));
            memory.page_tail_reservations = [const { None }; 6];
        }
        this.needs_reset.store(true, Ordering::Relaxed);

        // Restore the state saved at open, and reset if we can: resetting with the current
        // state beats nothing, but saving and restoring it without a reset is busy work.
        let mut restore = true;
        if pdev.load_saved_state(open.saved_state.take()).is_err() {
            dev_info!(pdev, "close_device: Couldn't reload saved state\n");
            restore = open.reset_works;
            if restore {
                pdev.save_state();
            }
        }

        if restore {
            // Disable INTx and MSI, presumably to avoid spurious interrupts during reset.
            pdev.config_space().write16(
                uapi::PCI_COMMAND_INTX_DISABLE as u16,
                uapi::PCI_COMMAND as usize,
            );
            if open.reset_works && reset_at_close(pdev) {
                this.needs_reset.store(false, Ordering::Relaxed);
            }
            pdev.restore_state();
        }

        pdev.disable_device();
        *open = OpenState::default();
        dev_set_try_reset(dev_set);
        this.idle(pdev);
    }

    /// `vfio_pci_core_ioctl()`.
    fn ioctl(
        vdev: &vfio::Device<Self, Bound>,
        this: Pin<&Self>,
        cmd: u32,
        arg: UserPtr,
    ) -> Result<isize> {
        let pdev = Self::pdev(vdev)?;
        match cmd {
            vfio::DEVICE_GET_INFO => this.ioctl_get_info(pdev, arg),
            vfio::DEVICE_GET_IRQ_INFO => this.ioctl_get_irq_info(pdev, arg),
            vfio::DEVICE_SET_IRQS => this.ioctl_set_irqs(pdev, arg),
            vfio::DEVICE_IOEVENTFD => this.ioctl_ioeventfd(pdev, arg),
            vfio::DEVICE_RESET => this.ioctl_reset(pdev),
            vfio::DEVICE_GET_PCI_HOT_RESET_INFO => {
                Self::ioctl_get_pci_hot_reset_info(vdev, pdev, arg)
            }
            vfio::DEVICE_PCI_HOT_RESET => Self::ioctl_pci_hot_reset(vdev, pdev, arg),
            _ => Err(ENOTTY),
        }
    }

    /// `vfio_pci_core_read()`.
    fn read(
        vdev: &vfio::Device<Self, Bound>,
        this: Pin<&Self>,
        buf: UserPtr,
        count: usize,
        pos: &mut i64,
    ) -> Result<usize> {
        let pdev = Self::pdev(vdev)?;
        this.rw(pdev, buf, count, pos, false)
    }

    /// `vfio_pci_core_write()`.
    fn write(
        vdev: &vfio::Device<Self, Bound>,
        this: Pin<&Self>,
        buf: UserPtr,
        count: usize,
        pos: &mut i64,
    ) -> Result<usize> {
        let pdev = Self::pdev(vdev)?;
        this.rw(pdev, buf, count, pos, true)
    }

    /// `vfio_pci_core_mmap()`: BARs are mapped through a DMABUF.
    fn mmap(vdev: &vfio::Device<Self, Bound>, this: Pin<&Self>, vma: &VmaNew) -> Result {
        this.mmap(vdev, vma)
    }

    /// `vfio_pci_core_ioctl_feature()`.
    fn device_feature(
        vdev: &vfio::Device<Self, Bound>,
        this: Pin<&Self>,
        flags: u32,
        arg: UserPtr,
        argsz: usize,
    ) -> Result<i32> {
        match flags & uapi::VFIO_DEVICE_FEATURE_MASK {
            uapi::VFIO_DEVICE_FEATURE_PCI_VF_TOKEN => this.feature_vf_token(flags, arg, argsz),
            uapi::VFIO_DEVICE_FEATURE_DMA_BUF if cfg!(CONFIG_VFIO_PCI_RUST_DMABUF) => {
                this.feature_dma_buf(vdev, flags, arg, argsz)
            }
            uapi::VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE => {
                this.feature_dma_buf_revoke(flags, arg, argsz)
            }
            uapi::VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR => {
                this.feature_dma_buf_memattr(flags, arg, argsz)
            }
            uapi::VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY => {
                this.feature_pm_entry(Self::pdev(vdev)?, flags, argsz)
            }
            uapi::VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP => {
                this.feature_pm_entry_with_wakeup(Self::pdev(vdev)?, flags, arg, argsz)
            }
            uapi::VFIO_DEVICE_FEATURE_LOW_POWER_EXIT => {
                this.feature_pm_exit(Self::pdev(vdev)?, flags, argsz)
            }
            _ => Err(ENOTTY),
        }
    }

    const HAS_MATCH_TOKEN: bool = true;

    /// `vfio_pci_core_match_token_uuid()`.
    fn match_token_uuid(
        vdev: &vfio::Device<Self, Bound>,
        this: Pin<&Self>,
        uuid: Option<&Uuid>,
    ) -> Result {
        this.match_token(Self::pdev(vdev)?, uuid)
    }

    /// `vfio_pci_core_request()`.
    fn request(vdev: &vfio::Device<Self, Bound>, this: Pin<&Self>, count: u32) {
        if let Ok(pdev) = Self::pdev(vdev) {
            this.request(pdev, count);
        }
    }

    /// `vfio_pci_ioctl_get_region_info()`.
    fn get_region_info(
        vdev: &vfio::Device<Self, Bound>,
        this: Pin<&Self>,
        info: &mut uapi::vfio_region_info,
        caps: &mut vfio::InfoCaps,
    ) -> Result {
        let pdev = Self::pdev(vdev)?;
        this.region_info(pdev, info, caps)
    }
}

/// The module: the registered driver, plus the `ids=` entries added to it.
#[pin_data]
struct VfioPciModule {
    #[pin]
    driver: driver::Registration<pci::Adapter<VfioPciDriver>>,
}

impl kernel::InPlaceModule for VfioPciModule {
    fn init(module: &'static ThisModule) -> impl PinInit<Self, Error> {
        vfio_pci_sriov::init_sriov_pfs();
        try_pin_init!(Self {
            driver <- driver::Registration::new(DRIVER_NAME, module),
        })
        .pin_chain(|this| {
            add_ids(&this.driver, module_parameters::ids.value_ref().as_bytes());
            if *module_parameters::disable_denylist.value_ref() {
                pr_warn!("device denylist disabled.\n");
            }
            Ok(())
        })
    }
}

/// A PCI ID of the `ids=` parameter.
#[derive(Debug, PartialEq, Eq)]
struct DynamicId {
    vendor: u32,
    device: u32,
    subvendor: u32,
    subdevice: u32,
    class: u32,
    class_mask: u32,
}

impl fmt::Display for DynamicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:04x}:{:04x}[{:04x}:{:04x}]] class {:#08x}/{:08x}",
            self.vendor, self.device, self.subvendor, self.subdevice, self.class, self.class_mask
        )
    }
}

/// Parses a hexadecimal field the way `sscanf("%x")` does: leading white space, an optional
/// `0x`, then as many hex digits as there are (at least one), truncated to 32 bits.
fn scan_hex(s: &[u8]) -> Option<(u32, &[u8])> {
    let s = s.trim_ascii_start();
    let s = match s {
        [b'0', b'x' | b'X', rest @ ..] if rest.first().is_some_and(u8::is_ascii_hexdigit) => rest,
        _ => s,
    };
    let digits = s.iter().take_while(|c| c.is_ascii_hexdigit()).count();
    if digits == 0 {
        return None;
    }
    let value = s[..digits].iter().fold(0u64, |acc, &c| {
        let digit = (c as char).to_digit(16).unwrap_or(0);
        acc.wrapping_mul(16).wrapping_add(u64::from(digit))
    });
    // CAST: `%x` stores into an `unsigned int`, keeping the low 32 bits.
    Some((value as u32, &s[digits..]))
}

/// Parses one `ids=` entry as `sscanf(id, "%x:%x:%x:%x:%x:%x")` does in vfio-pci: `None` when
/// fewer than the vendor and device fields match.
fn parse_id(id: &[u8]) -> Option<DynamicId> {
    let mut fields = [0u32; 6];
    let mut count = 0;
    let mut rest = id;
    while count < fields.len() {
        if count > 0 {
            match rest.split_first() {
                Some((b':', tail)) => rest = tail,
                _ => break,
            }
        }
        let Some((value, tail)) = scan_hex(rest) else {
            break;
        };
        fields[count] = value;
        count += 1;
        rest = tail;
    }
    if count < 2 {
        return None;
    }
    let any = pci::DeviceId::PCI_ANY_ID;
    Some(DynamicId {
        vendor: fields[0],
        device: fields[1],
        subvendor: if count > 2 { fields[2] } else { any },
        subdevice: if count > 3 { fields[3] } else { any },
        class: fields[4],
        class_mask: fields[5],
    })
}

/// Adds the comma-separated `ids=` entries to the driver, as `vfio_pci_fill_ids()` does.
fn add_ids(driver: &driver::Registration<pci::Adapter<VfioPciDriver>>, ids: &[u8]) {
    for entry in ids.split(|&c| c == b',').filter(|entry| !entry.is_empty()) {
        let Some(id) = parse_id(entry) else {
            pr_warn!("invalid id string \"{}\"\n", BStr::from_bytes(entry));
            continue;
        };
        match driver.add_dynid(
            id.vendor,
            id.device,
            id.subvendor,
            id.subdevice,
            id.class,
            id.class_mask,
        ) {
            Ok(()) => pr_info!("add {}\n", id),
            Err(e) => pr_warn!("failed to add dynamic id {} ({})\n", id, e.to_errno()),
        }
    }
}

#[kunit_tests(vfio_pci_rs_ids)]
mod tests {
    use super::*;

    const ANY: u32 = pci::DeviceId::PCI_ANY_ID;

    fn id(fields: [u32; 6]) -> Option<DynamicId> {
        Some(DynamicId {
            vendor: fields[0],
            device: fields[1],
            subvendor: fields[2],
            subdevice: fields[3],
            class: fields[4],
            class_mask: fields[5],
        })
    }

    #[test]
    fn vendor_and_device() {
        assert_eq!(parse_id(b"8086:10c9"), id([0x8086, 0x10c9, ANY, ANY, 0, 0]));
    }

    #[test]
    fn all_six_fields() {
        assert_eq!(
            parse_id(b"1234:11e8:1af4:1100:ff0000:ffff00"),
            id([0x1234, 0x11e8, 0x1af4, 0x1100, 0xff0000, 0xffff00])
        );
    }

    #[test]
    fn scanf_prefixes_and_space() {
        assert_eq!(
            parse_id(b" 0x8086:0X10C9"),
            id([0x8086, 0x10c9, ANY, ANY, 0, 0])
        );
    }

    #[test]
    fn stops_at_first_mismatch() {
        // sscanf stops at `zz` with two fields converted; the rest is ignored.
        assert_eq!(
            parse_id(b"8086:10c9:zz"),
            id([0x8086, 0x10c9, ANY, ANY, 0, 0])
        );
        assert_eq!(
            parse_id(b"8086:10c9-1af4"),
            id([0x8086, 0x10c9, ANY, ANY, 0, 0])
        );
        assert_eq!(parse_id(b"1:2:3"), id([1, 2, 3, ANY, 0, 0]));
    }

    #[test]
    fn too_few_fields() {
        assert_eq!(parse_id(b"8086"), None);
        assert_eq!(parse_id(b"8086:"), None);
        assert_eq!(parse_id(b"zz:10c9"), None);
        assert_eq!(parse_id(b""), None);
        // `0x` without a hex digit after it is the number 0 followed by `x`.
        assert_eq!(parse_id(b"0x:1"), None);
    }

    #[test]
    fn truncates_to_32_bits() {
        assert_eq!(
            parse_id(b"123456789:1"),
            id([0x23456789, 1, ANY, ANY, 0, 0])
        );
    }
}
