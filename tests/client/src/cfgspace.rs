//! Pure logic for the region and config-space checks (unit-tested): the PCI capability walks,
//! sysfs `resource` parsing, what BAR sizing must read back, and the diffs printed when the
//! two drivers answer differently.

use std::fmt::Write as _;

pub const PCI_CFG_SPACE_SIZE: usize = 256;

pub const PCI_COMMAND: usize = 0x04;
pub const PCI_STATUS: usize = 0x06;
pub const PCI_BASE_ADDRESS_0: usize = 0x10;
pub const PCI_ROM_ADDRESS: usize = 0x30;
pub const PCI_CAPABILITY_LIST: usize = 0x34;
pub const PCI_INTERRUPT_LINE: usize = 0x3c;

pub const PCI_COMMAND_IO: u16 = 0x1;
pub const PCI_COMMAND_MEMORY: u16 = 0x2;
pub const PCI_COMMAND_MASTER: u16 = 0x4;
pub const PCI_COMMAND_INTX_DISABLE: u16 = 0x400;
pub const PCI_STATUS_CAP_LIST: u16 = 0x10;

pub const PCI_CAP_ID_PM: u8 = 0x01;
pub const PCI_CAP_ID_VNDR: u8 = 0x09;
pub const PCI_CAP_ID_MSI: u8 = 0x05;
pub const PCI_CAP_ID_EXP: u8 = 0x10;
pub const PCI_CAP_ID_MSIX: u8 = 0x11;
/// Offsets inside the capabilities.
pub const PCI_PM_CTRL: usize = 4;
pub const PCI_MSI_FLAGS: usize = 2;
pub const PCI_MSIX_FLAGS: usize = 2;
pub const PCI_MSIX_TABLE: usize = 4;
pub const PCI_EXP_DEVCAP: usize = 4;
pub const PCI_EXP_DEVCTL: usize = 8;
pub const PCI_EXP_LNKCTL: usize = 0x10;
pub const PCI_EXP_DEVCTL2: usize = 0x28;
pub const PCI_EXP_DEVCAP_FLR: u32 = 1 << 28;
pub const PCI_EXP_DEVCTL_BCR_FLR: u16 = 0x8000;
pub const PCI_EXP_DEVCTL_READRQ: u16 = 0x7000;
pub const PCI_EXP_LNKCAP: usize = 0x0c;
pub const PCI_EXP_LNKSTA: usize = 0x12;
pub const PCI_EXP_LNKCAP_DLLLARC: u32 = 1 << 20;
pub const PCI_EXP_LNKSTA_DLLLA: u16 = 1 << 13;
pub const PCI_EXP_FLAGS_TYPE: u16 = 0x00f0;

/// Whether a secondary bus reset below this port ends in -ENOTTY in Linux 7.3
/// (pci_bridge_wait_for_secondary_bus): for a PCIe root or downstream port faster than
/// 5 GT/s, when some function below has a d3cold delay (a PM capability), Linux waits for the
/// Data Link Layer Link Active bit; a port that reports link activity but never sets it
/// ("Data Link Layer Link Active not set in 100 msec") fails the reset with -ENOTTY.
/// `port_cfg` is the port's config space, `max_speed_gts` its `max_link_speed` in GT/s.
pub fn bus_reset_fails_on_link(port_cfg: &[u8], max_speed_gts: f64, child_has_pm: bool) -> bool {
    let Some(e) = std_caps(port_cfg)
        .iter()
        .find(|c| c.id == PCI_CAP_ID_EXP)
        .map(|c| c.off)
    else {
        return false;
    };
    if e + PCI_EXP_LNKSTA + 2 > port_cfg.len() {
        return false;
    }
    let ptype = (u16_at(port_cfg, e + 2) & PCI_EXP_FLAGS_TYPE) >> 4;
    // PCI_EXP_TYPE_ROOT_PORT (4) or PCI_EXP_TYPE_DOWNSTREAM (6).
    let downstream = ptype == 4 || ptype == 6;
    let reporting = u32_at(port_cfg, e + PCI_EXP_LNKCAP) & PCI_EXP_LNKCAP_DLLLARC != 0;
    let active = u16_at(port_cfg, e + PCI_EXP_LNKSTA) & PCI_EXP_LNKSTA_DLLLA != 0;
    downstream && child_has_pm && max_speed_gts > 5.0 && reporting && !active
}

/// `16.0 GT/s PCIe` -> 16.0.
pub fn parse_link_speed(s: &str) -> Option<f64> {
    s.split_whitespace().next()?.parse().ok()
}

/// `IORESOURCE_*` bits of a sysfs `resource` line.
pub const IORESOURCE_IO: u64 = 0x100;
pub const IORESOURCE_MEM: u64 = 0x200;
pub const IORESOURCE_PREFETCH: u64 = 0x2000;
pub const IORESOURCE_MEM_64: u64 = 0x10_0000;

/// One line of `/sys/bus/pci/devices/<bdf>/resource`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Res {
    pub start: u64,
    pub end: u64,
    pub flags: u64,
}

impl Res {
    /// `pci_resource_len()`: 0 for an unset resource.
    pub fn len(&self) -> u64 {
        if self.start == 0 && self.end == 0 {
            0
        } else {
            self.end - self.start + 1
        }
    }
    pub fn is_mem(&self) -> bool {
        self.flags & IORESOURCE_MEM != 0
    }
    pub fn is_io(&self) -> bool {
        self.flags & IORESOURCE_IO != 0
    }
}

/// Parse the sysfs `resource` file: `0x<start> 0x<end> 0x<flags>` per line.
pub fn parse_resources(text: &str) -> Result<Vec<Res>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let num = |s: &str| {
                u64::from_str_radix(s.trim_start_matches("0x"), 16)
                    .map_err(|_| format!("bad resource line {l:?}"))
            };
            match f.as_slice() {
                [a, b, c] => Ok(Res {
                    start: num(a)?,
                    end: num(b)?,
                    flags: num(c)?,
                }),
                _ => Err(format!("bad resource line {l:?}")),
            }
        })
        .collect()
}

/// A standard capability: id and offset of its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    pub id: u8,
    pub off: usize,
}

/// An extended capability: id, version and offset of its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtCap {
    pub id: u16,
    pub ver: u8,
    pub off: usize,
}

pub fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

pub fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Walk the standard capability list of a config space (little-endian bytes). Stops at a
/// pointer into the header, past the end, or after 48 capabilities (a loop).
pub fn std_caps(cfg: &[u8]) -> Vec<Cap> {
    let mut out = Vec::new();
    if cfg.len() < 0x40 || u16_at(cfg, PCI_STATUS) & PCI_STATUS_CAP_LIST == 0 {
        return out;
    }
    let mut pos = (cfg[PCI_CAPABILITY_LIST] & !3) as usize;
    while pos >= 0x40 && pos + 2 <= cfg.len().min(PCI_CFG_SPACE_SIZE) && out.len() < 48 {
        out.push(Cap {
            id: cfg[pos],
            off: pos,
        });
        pos = (cfg[pos + 1] & !3) as usize;
    }
    out
}

/// Walk the extended capability list (from 0x100). Empty for a 256-byte config space or an
/// all-zero/all-ones first header; stops at a pointer below 0x100, past the end, or after
/// 480 capabilities (a loop).
pub fn ext_caps(cfg: &[u8]) -> Vec<ExtCap> {
    let mut out = Vec::new();
    let mut pos = PCI_CFG_SPACE_SIZE;
    while pos >= PCI_CFG_SPACE_SIZE && pos + 4 <= cfg.len() && out.len() < 480 {
        let h = u32_at(cfg, pos);
        if h == 0 || h == u32::MAX {
            break;
        }
        out.push(ExtCap {
            id: (h & 0xffff) as u16,
            ver: ((h >> 16) & 0xf) as u8,
            off: pos,
        });
        pos = ((h >> 20) & !3) as usize;
    }
    out
}

/// What a BAR reads back after writing all ones through vfio-pci (vfio_bar_fixup): the size
/// mask and the BAR's type bits; 0 for a BAR the host did not assign; the upper half of a
/// 64-bit BAR gives the upper size mask.
pub fn bar_sizing_expect(res: &[Res], bar: usize) -> u32 {
    // Is this the upper dword of a 64-bit BAR?
    let mut i = 0;
    while i < 6 {
        let r = res.get(i).copied().unwrap_or_default();
        let is64 = r.is_mem() && r.flags & IORESOURCE_MEM_64 != 0 && r.len() != 0;
        if i == bar {
            if r.len() == 0 {
                return 0;
            }
            let mask = !(r.len() - 1);
            if r.is_io() {
                return (mask as u32) | 1;
            }
            let mut v = mask as u32;
            if r.flags & IORESOURCE_PREFETCH != 0 {
                v |= 0x8;
            }
            if is64 {
                v |= 0x4;
            }
            return v;
        }
        if is64 {
            if i + 1 == bar {
                return (!(r.len() - 1) >> 32) as u32;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    0
}

/// What the ROM BAR reads back after writing all ones: size mask plus the enable bit, or 0
/// without a ROM (pci_resource_start == 0; a shadowed ROM has a start too).
pub fn rom_sizing_expect(rom: &Res) -> u32 {
    if rom.start == 0 {
        0
    } else {
        (!(rom.len() - 1) as u32) | 1
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decode lower/upper-case hex (even length), `None` otherwise.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.is_empty() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The offsets at which two byte strings differ, as `0x10: ff/00` (first value, second value),
/// at most `max` of them, plus a count and a length note.
pub fn byte_diff(a: &[u8], b: &[u8], max: usize) -> String {
    let mut out = String::new();
    let mut n = 0;
    for i in 0..a.len().min(b.len()) {
        if a[i] != b[i] {
            if n < max {
                if n > 0 {
                    out.push_str(", ");
                }
                let _ = write!(out, "0x{i:x}: {:02x}/{:02x}", a[i], b[i]);
            }
            n += 1;
        }
    }
    if n > max {
        let _ = write!(out, ", ... {} bytes differ in all", n);
    }
    if a.len() != b.len() {
        if !out.is_empty() {
            out.push_str("; ");
        }
        let _ = write!(out, "length {} vs {}", a.len(), b.len());
    }
    out
}

/// A readable difference between what vfio-pci (`c`) and vfio-pci-rs (`rs`) recorded for one
/// key: byte offsets when both are hex dumps of a same-length buffer (`ok <hex>` or bare hex),
/// the differing items when both are `; `-separated sequences, both values otherwise.
pub fn value_diff(c: &str, rs: &str) -> String {
    let strip = |s: &str| s.strip_prefix("ok ").map(str::to_string);
    if let (Some(a), Some(b)) = (strip(c), strip(rs)) {
        if let (Some(x), Some(y)) = (unhex(&a), unhex(&b)) {
            if x.len() == y.len() && x.len() > 8 {
                return format!(
                    "bytes differ (offset: vfio-pci/vfio-pci-rs): {}",
                    byte_diff(&x, &y, 12)
                );
            }
        }
    }
    let ia: Vec<&str> = c.split("; ").collect();
    let ib: Vec<&str> = rs.split("; ").collect();
    if ia.len() > 1 || ib.len() > 1 {
        let mut out = Vec::new();
        let mut n = 0;
        for i in 0..ia.len().max(ib.len()) {
            let x = ia.get(i).copied().unwrap_or("(none)");
            let y = ib.get(i).copied().unwrap_or("(none)");
            if x != y {
                if n < 8 {
                    out.push(format!(
                        "vfio-pci [{}] vfio-pci-rs [{}]",
                        abbrev(x, 120),
                        abbrev(y, 120)
                    ));
                }
                n += 1;
            }
        }
        if n > 8 {
            out.push(format!("... {n} items differ in all"));
        }
        return out.join(" | ");
    }
    format!(
        "vfio-pci [{}] vfio-pci-rs [{}]",
        abbrev(c, 160),
        abbrev(rs, 160)
    )
}

/// Short form of a long value for notes: the first `max` characters.
pub fn abbrev(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_string()
    } else {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}... ({} chars)", &s[..end], s.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_with_caps() -> Vec<u8> {
        let mut c = vec![0u8; 4096];
        c[PCI_STATUS] = PCI_STATUS_CAP_LIST as u8;
        c[PCI_CAPABILITY_LIST] = 0x40;
        c[0x40] = PCI_CAP_ID_PM;
        c[0x41] = 0x50;
        c[0x50] = PCI_CAP_ID_MSI;
        c[0x51] = 0x70;
        c[0x70] = PCI_CAP_ID_MSIX;
        c[0x71] = 0x00;
        // AER at 0x100 -> ARI at 0x150 -> SR-IOV at 0x160.
        c[0x100..0x104].copy_from_slice(&(0x0001u32 | (1 << 16) | (0x150 << 20)).to_le_bytes());
        c[0x150..0x154].copy_from_slice(&(0x000eu32 | (1 << 16) | (0x160 << 20)).to_le_bytes());
        c[0x160..0x164].copy_from_slice(&(0x0010u32 | (1 << 16)).to_le_bytes());
        c
    }

    #[test]
    fn walks() {
        let c = cfg_with_caps();
        assert_eq!(
            std_caps(&c),
            vec![
                Cap { id: 1, off: 0x40 },
                Cap { id: 5, off: 0x50 },
                Cap {
                    id: 0x11,
                    off: 0x70
                }
            ]
        );
        let e = ext_caps(&c);
        assert_eq!(e.len(), 3);
        assert_eq!(
            e[2],
            ExtCap {
                id: 0x10,
                ver: 1,
                off: 0x160
            }
        );
        // No extended space, no extended caps.
        assert!(ext_caps(&c[..256]).is_empty());
        // No CAP_LIST bit: no caps.
        let mut n = c.clone();
        n[PCI_STATUS] = 0;
        assert!(std_caps(&n).is_empty());
    }

    #[test]
    fn walks_terminate_on_loops_and_bad_pointers() {
        let mut c = cfg_with_caps();
        c[0x71] = 0x40; // MSI-X points back to PM: a loop.
        assert_eq!(std_caps(&c).len(), 48);
        c[0x71] = 0x20; // into the header: end.
        assert_eq!(std_caps(&c).len(), 3);
        let mut e = cfg_with_caps();
        e[0x160..0x164].copy_from_slice(&(0x0010u32 | (1 << 16) | (0x100 << 20)).to_le_bytes());
        assert_eq!(ext_caps(&e).len(), 480);
        e[0x160..0x164].copy_from_slice(&(0x0010u32 | (1 << 16) | (0x80 << 20)).to_le_bytes());
        assert_eq!(ext_caps(&e).len(), 3);
        // A pointer to the last dword stays in bounds, one past it ends the walk.
        e[0x160..0x164].copy_from_slice(&(0x0010u32 | (0xffc << 20)).to_le_bytes());
        e[0xffc..0x1000].copy_from_slice(&0x0003u32.to_le_bytes());
        assert_eq!(ext_caps(&e).len(), 4);
    }

    #[test]
    fn resources_and_sizing() {
        let text = "\
0x00000000fdc00000 0x00000000fdc1ffff 0x0000000000040200
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000003000 0x000000000000301f 0x0000000000040101
0x00000000fdc40000 0x00000000fdc43fff 0x0000000000140204
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000000c0000 0x00000000000dffff 0x0000000000000212
";
        let r = parse_resources(text).unwrap();
        assert_eq!(r.len(), 7);
        assert_eq!(r[0].len(), 0x20000);
        assert!(r[2].is_io());
        assert_eq!(bar_sizing_expect(&r, 0), 0xfffe_0000);
        assert_eq!(bar_sizing_expect(&r, 1), 0);
        assert_eq!(bar_sizing_expect(&r, 2), 0xffff_ffe1);
        assert_eq!(bar_sizing_expect(&r, 3), 0xffff_c004);
        assert_eq!(bar_sizing_expect(&r, 4), 0xffff_ffff);
        assert_eq!(bar_sizing_expect(&r, 5), 0);
        assert_eq!(rom_sizing_expect(&r[6]), 0xfffe_0001);
        assert_eq!(rom_sizing_expect(&Res::default()), 0);
        // A 1 GiB 64-bit prefetchable BAR2.
        let mut iv = vec![Res::default(); 7];
        iv[2] = Res {
            start: 0xfe_c000_0000,
            end: 0xfe_ffff_ffff,
            flags: 0x14220c,
        };
        assert_eq!(bar_sizing_expect(&iv, 2), 0xc000_000c);
        assert_eq!(bar_sizing_expect(&iv, 3), 0xffff_ffff);
        assert!(parse_resources("0x1 0x2").is_err());
    }

    #[test]
    fn link_wait_rule() {
        let mut port = vec![0u8; 256];
        port[PCI_STATUS] = PCI_STATUS_CAP_LIST as u8;
        port[PCI_CAPABILITY_LIST] = 0x54;
        port[0x54] = PCI_CAP_ID_EXP;
        port[0x56] = 0x42; // v2, root port
        port[0x54 + PCI_EXP_LNKCAP + 2] = 0x10; // DLLLARC
        assert!(bus_reset_fails_on_link(&port, 16.0, true));
        assert!(!bus_reset_fails_on_link(&port, 16.0, false));
        assert!(!bus_reset_fails_on_link(&port, 5.0, true));
        port[0x54 + PCI_EXP_LNKSTA + 1] = 0x20; // DLLLA set
        assert!(!bus_reset_fails_on_link(&port, 16.0, true));
        port[0x54 + PCI_EXP_LNKSTA + 1] = 0;
        port[0x56] = 0x72; // PCIe-to-PCI bridge: not a downstream port
        assert!(!bus_reset_fails_on_link(&port, 16.0, true));
        assert!(!bus_reset_fails_on_link(&[0u8; 64], 16.0, true));
        assert_eq!(parse_link_speed("16.0 GT/s PCIe"), Some(16.0));
        assert_eq!(parse_link_speed("Unknown"), None);
    }

    #[test]
    fn diffs() {
        assert_eq!(unhex("00ff10").unwrap(), vec![0, 0xff, 0x10]);
        assert!(unhex("0").is_none());
        assert!(unhex("zz").is_none());
        assert_eq!(byte_diff(&[1, 2, 3], &[1, 9, 3], 4), "0x1: 02/09");
        assert_eq!(byte_diff(&[1, 2], &[1, 2, 3], 4), "length 2 vs 3");
        assert_eq!(
            byte_diff(&[0; 6], &[1; 6], 2),
            "0x0: 00/01, 0x1: 00/01, ... 6 bytes differ in all"
        );
        let a = format!("ok {}", hex(&[0u8; 16]));
        let mut b16 = [0u8; 16];
        b16[4] = 0xaa;
        let b = format!("ok {}", hex(&b16));
        assert_eq!(
            value_diff(&a, &b),
            "bytes differ (offset: vfio-pci/vfio-pci-rs): 0x4: 00/aa"
        );
        assert_eq!(
            value_diff("a=1; b=2; c=3", "a=1; b=5; c=3"),
            "vfio-pci [b=2] vfio-pci-rs [b=5]"
        );
        assert_eq!(
            value_diff("a=1", "a=1; b=2"),
            "vfio-pci [(none)] vfio-pci-rs [b=2]"
        );
        assert_eq!(
            value_diff("EINVAL", "ENOTTY"),
            "vfio-pci [EINVAL] vfio-pci-rs [ENOTTY]"
        );
        assert_eq!(abbrev("abcdef", 3), "abc... (6 chars)");
        let long = "ab".repeat(200);
        assert!(value_diff(&format!("ok {long}"), "EINVAL").ends_with("vfio-pci-rs [EINVAL]"));
        assert!(value_diff(&format!("ok {long}"), "EINVAL").len() < 250);
        assert_eq!(abbrev("abc", 3), "abc");
    }
}
