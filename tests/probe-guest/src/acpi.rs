//! ACPI table walker: RSDP -> XSDT (or RSDT) -> FADT, MADT and DSDT.

use crate::bytes::{checksum, u32_at, u64_at, u8_at};
use crate::physmem::PhysMem;

/// Why the ACPI tables could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// No RSDP at the given address or in the BIOS area.
    NoRsdp,
    /// A table is unreadable, too short or has a bad checksum.
    BadTable(u64),
    /// The root table lists no FADT.
    NoFadt,
}

/// Generic Address Structure (ACPI 5.2.3.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gas {
    /// 0 = system memory, 1 = system I/O.
    pub space_id: u8,
    /// Register width in bits.
    pub bit_width: u8,
    /// Bit offset of the register.
    pub bit_offset: u8,
    /// Access size: 0 undefined, 1 byte, 2 word, 3 dword, 4 qword.
    pub access_size: u8,
    /// Address in the given space.
    pub address: u64,
}

/// GAS address space: system memory.
pub const GAS_MEMORY: u8 = 0;
/// GAS address space: system I/O ports.
pub const GAS_IO: u8 = 1;

impl Gas {
    /// Decodes the 12-byte GAS at `off`; `None` if absent (address 0).
    pub fn parse(b: &[u8], off: usize) -> Option<Gas> {
        let gas = Gas {
            space_id: u8_at(b, off)?,
            bit_width: u8_at(b, off + 1)?,
            bit_offset: u8_at(b, off + 2)?,
            access_size: u8_at(b, off + 3)?,
            address: u64_at(b, off + 4)?,
        };
        (gas.address != 0).then_some(gas)
    }
}

/// What the probe needs from the FADT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fadt {
    /// FADT revision (header byte 8).
    pub revision: u8,
    /// Fixed feature flags (offset 112).
    pub flags: u32,
    /// Physical address of the DSDT (X_DSDT preferred).
    pub dsdt: u64,
    /// PM1a control block, legacy (non HW-reduced) sleep control.
    pub pm1a_cnt: Option<Gas>,
    /// Reset register and the value to write there.
    pub reset: Option<(Gas, u8)>,
    /// HW-reduced sleep control register.
    pub sleep_control: Option<Gas>,
    /// HW-reduced sleep status register.
    pub sleep_status: Option<Gas>,
}

/// FADT flag: HW_REDUCED_ACPI.
pub const FADT_HW_REDUCED: u32 = 1 << 20;
/// FADT flag: RESET_REG_SUP.
pub const FADT_RESET_REG_SUP: u32 = 1 << 10;

/// Maximum number of I/O APICs and CPUs remembered from the MADT.
pub const MAX_IOAPICS: usize = 4;
/// Maximum number of APIC ids remembered (CPUs beyond are only counted).
pub const MAX_CPUS: usize = 64;

/// An I/O APIC from the MADT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoApic {
    /// I/O APIC id.
    pub id: u8,
    /// MMIO base.
    pub address: u32,
    /// First GSI it serves.
    pub gsi_base: u32,
}

/// What the probe needs from the MADT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Madt {
    /// Local APIC MMIO address (with the 64-bit override applied).
    pub lapic_address: u64,
    /// Enabled processors (Local APIC and x2APIC entries with bit 0 set).
    pub cpus: u32,
    /// APIC ids of the first `MAX_CPUS` enabled processors.
    pub apic_ids: [u32; MAX_CPUS],
    /// I/O APICs, `ioapic_count` of them valid.
    pub ioapics: [IoApic; MAX_IOAPICS],
    /// Number of valid entries in `ioapics`.
    pub ioapic_count: usize,
}

/// Everything found by [`walk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiInfo {
    /// Where the RSDP was.
    pub rsdp: u64,
    /// RSDP revision (0 = ACPI 1.0 with RSDT only).
    pub revision: u8,
    /// Whether the XSDT (rather than the RSDT) was used.
    pub xsdt: bool,
    /// The FADT.
    pub fadt: Fadt,
    /// The MADT, if present.
    pub madt: Option<Madt>,
    /// DSDT address and total length (header included), if present.
    pub dsdt: Option<(u64, u32)>,
}

const SDT_HEADER_LEN: usize = 36;

/// Checks the RSDP at `addr` (signature and the ACPI 1.0 checksum).
fn rsdp_at(mem: &dyn PhysMem, addr: u64) -> bool {
    match mem.read(addr, 20) {
        Some(b) => &b[..8] == b"RSD PTR " && checksum(b) == 0,
        None => false,
    }
}

/// Finds the RSDP: at `hint` if it is valid there, else by scanning the BIOS
/// area 0xE0000-0xFFFFF on 16-byte boundaries.
pub fn find_rsdp(mem: &dyn PhysMem, hint: Option<u64>) -> Option<u64> {
    if let Some(h) = hint.filter(|&h| h != 0) {
        if rsdp_at(mem, h) {
            return Some(h);
        }
    }
    (0xE0000u64..0x100000)
        .step_by(16)
        .find(|&a| rsdp_at(mem, a))
}

/// Reads a whole system description table at `addr` and verifies its
/// checksum; returns its bytes (header included).
pub fn read_sdt(mem: &dyn PhysMem, addr: u64) -> Option<&[u8]> {
    let hdr = mem.read(addr, SDT_HEADER_LEN)?;
    let len = u32_at(hdr, 4)? as usize;
    if len < SDT_HEADER_LEN {
        return None;
    }
    let table = mem.read(addr, len)?;
    (checksum(table) == 0).then_some(table)
}

/// Walks RSDP -> XSDT/RSDT -> FADT, MADT, DSDT.
pub fn walk(mem: &dyn PhysMem, rsdp_hint: Option<u64>) -> Result<AcpiInfo, AcpiError> {
    let rsdp = find_rsdp(mem, rsdp_hint).ok_or(AcpiError::NoRsdp)?;
    let r = mem.read(rsdp, 20).ok_or(AcpiError::NoRsdp)?;
    let revision = r[15];
    let rsdt_addr = u64::from(u32_at(r, 16).unwrap_or(0));
    let mut xsdt_addr = 0;
    if revision >= 2 {
        if let Some(r2) = mem.read(rsdp, 36) {
            if checksum(r2) == 0 {
                xsdt_addr = u64_at(r2, 24).unwrap_or(0);
            }
        }
    }
    let (root_addr, entry_size) = if xsdt_addr != 0 {
        (xsdt_addr, 8)
    } else {
        (rsdt_addr, 4)
    };
    let root = read_sdt(mem, root_addr).ok_or(AcpiError::BadTable(root_addr))?;
    let mut fadt = None;
    let mut madt = None;
    let mut off = SDT_HEADER_LEN;
    while off + entry_size <= root.len() {
        let addr = if entry_size == 8 {
            u64_at(root, off).unwrap_or(0)
        } else {
            u64::from(u32_at(root, off).unwrap_or(0))
        };
        off += entry_size;
        let Some(sig) = mem.read(addr, 4) else {
            continue;
        };
        match sig {
            b"FACP" => {
                fadt = Some(parse_fadt(
                    read_sdt(mem, addr).ok_or(AcpiError::BadTable(addr))?,
                ))
            }
            b"APIC" => {
                madt = Some(parse_madt(
                    read_sdt(mem, addr).ok_or(AcpiError::BadTable(addr))?,
                ))
            }
            _ => {}
        }
    }
    let fadt = fadt.ok_or(AcpiError::NoFadt)?;
    let dsdt = match mem.read(fadt.dsdt, SDT_HEADER_LEN) {
        Some(h) if &h[..4] == b"DSDT" => {
            read_sdt(mem, fadt.dsdt).map(|t| (fadt.dsdt, t.len() as u32))
        }
        _ => None,
    };
    Ok(AcpiInfo {
        rsdp,
        revision,
        xsdt: entry_size == 8,
        fadt,
        madt,
        dsdt,
    })
}

/// Decodes the FADT fields the probe uses (offsets from ACPI 6.x, 5.2.9).
pub fn parse_fadt(t: &[u8]) -> Fadt {
    let x_dsdt = u64_at(t, 140).unwrap_or(0);
    let dsdt = if x_dsdt != 0 {
        x_dsdt
    } else {
        u64::from(u32_at(t, 40).unwrap_or(0))
    };
    let flags = u32_at(t, 112).unwrap_or(0);
    let x_pm1a = Gas::parse(t, 172);
    let pm1a_cnt = x_pm1a.or_else(|| {
        let port = u32_at(t, 64).unwrap_or(0);
        (port != 0).then_some(Gas {
            space_id: GAS_IO,
            bit_width: 16,
            bit_offset: 0,
            access_size: 2,
            address: u64::from(port),
        })
    });
    let reset = Gas::parse(t, 116).map(|g| (g, u8_at(t, 128).unwrap_or(0)));
    Fadt {
        revision: t[8],
        flags,
        dsdt,
        pm1a_cnt,
        reset,
        sleep_control: Gas::parse(t, 244),
        sleep_status: Gas::parse(t, 256),
    }
}

/// Decodes the MADT: CPUs, local APIC address, I/O APICs.
pub fn parse_madt(t: &[u8]) -> Madt {
    let mut m = Madt {
        lapic_address: u64::from(u32_at(t, 36).unwrap_or(0xfee0_0000)),
        cpus: 0,
        apic_ids: [0; MAX_CPUS],
        ioapics: [IoApic::default(); MAX_IOAPICS],
        ioapic_count: 0,
    };
    let mut off = 44;
    while off + 2 <= t.len() {
        let (kind, len) = (t[off], t[off + 1] as usize);
        if len < 2 || off + len > t.len() {
            break;
        }
        let e = &t[off..off + len];
        let cpu = match kind {
            0 if len >= 8 => Some((u32::from(e[3]), u32_at(e, 4).unwrap_or(0))),
            9 if len >= 16 => Some((u32_at(e, 4).unwrap_or(0), u32_at(e, 8).unwrap_or(0))),
            _ => None,
        };
        if let Some((apic_id, flags)) = cpu {
            if flags & 1 != 0 {
                if (m.cpus as usize) < MAX_CPUS {
                    m.apic_ids[m.cpus as usize] = apic_id;
                }
                m.cpus += 1;
            }
        }
        if kind == 1 && len >= 12 && m.ioapic_count < MAX_IOAPICS {
            m.ioapics[m.ioapic_count] = IoApic {
                id: e[2],
                address: u32_at(e, 4).unwrap_or(0),
                gsi_base: u32_at(e, 8).unwrap_or(0),
            };
            m.ioapic_count += 1;
        }
        if kind == 5 && len >= 12 {
            m.lapic_address = u64_at(e, 4).unwrap_or(m.lapic_address);
        }
        off += len;
    }
    m
}

/// Test helpers that build ACPI tables byte by byte.
#[cfg(test)]
pub(crate) mod build {
    /// A table with a valid header and checksum around `body`.
    pub fn sdt(sig: &[u8; 4], rev: u8, body: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(sig);
        t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
        t.push(rev);
        t.push(0);
        t.extend_from_slice(b"PROBE ");
        t.extend_from_slice(b"TESTTBL ");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(b"TEST");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(body);
        fix(&mut t, 9);
        t
    }

    /// Sets byte `at` so that the whole slice sums to zero.
    pub fn fix(t: &mut [u8], at: usize) {
        t[at] = 0;
        let s = crate::bytes::checksum(t);
        t[at] = 0u8.wrapping_sub(s);
    }

    /// A 36-byte revision-2 RSDP pointing to `xsdt` (and `rsdt`).
    pub fn rsdp(rsdt: u32, xsdt: u64) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(b"RSD PTR ");
        r.push(0);
        r.extend_from_slice(b"PROBE ");
        r.push(if xsdt != 0 { 2 } else { 0 });
        r.extend_from_slice(&rsdt.to_le_bytes());
        r.extend_from_slice(&36u32.to_le_bytes());
        r.extend_from_slice(&xsdt.to_le_bytes());
        r.extend_from_slice(&[0, 0, 0, 0]);
        fix(&mut r[..20], 8);
        fix(&mut r, 32);
        r
    }

    /// A GAS in bytes.
    pub fn gas(space: u8, width: u8, access: u8, addr: u64) -> [u8; 12] {
        let mut g = [0u8; 12];
        g[0] = space;
        g[1] = width;
        g[3] = access;
        g[4..].copy_from_slice(&addr.to_le_bytes());
        g
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;
    use crate::physmem::Regions;

    /// A HW-reduced FADT like our VMM's: sleep registers at port 0x600.
    fn fadt_body(dsdt: u64) -> Vec<u8> {
        let mut t = vec![0u8; 276 - 36];
        let put = |t: &mut Vec<u8>, off: usize, b: &[u8]| {
            t[off - 36..off - 36 + b.len()].copy_from_slice(b)
        };
        put(
            &mut t,
            112,
            &(FADT_HW_REDUCED | FADT_RESET_REG_SUP).to_le_bytes(),
        );
        put(&mut t, 116, &gas(GAS_IO, 8, 1, 0x600));
        put(&mut t, 128, &[1]);
        put(&mut t, 140, &dsdt.to_le_bytes());
        put(&mut t, 244, &gas(GAS_IO, 8, 1, 0x600));
        put(&mut t, 256, &gas(GAS_IO, 8, 1, 0x601));
        t
    }

    fn madt() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for (id, flags) in [(0u8, 1u32), (1, 1), (2, 0), (3, 2)] {
            b.extend_from_slice(&[0, 8, id, id]);
            b.extend_from_slice(&flags.to_le_bytes());
        }
        b.extend_from_slice(&[1, 12, 7, 0]);
        b.extend_from_slice(&0xfec0_0000u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        // x2APIC entry, enabled, id 300.
        b.extend_from_slice(&[9, 16, 0, 0]);
        b.extend_from_slice(&300u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&5u32.to_le_bytes());
        sdt(b"APIC", 5, &b)
    }

    #[test]
    fn walks_xsdt_fadt_madt_dsdt() {
        let dsdt = sdt(b"DSDT", 2, &[0x10, 0x05, 0x5f, 0x53, 0x42, 0x5f]);
        let fadt = sdt(b"FACP", 6, &fadt_body(0x3000));
        let madt = madt();
        let mut xb = Vec::new();
        xb.extend_from_slice(&0x1000u64.to_le_bytes());
        xb.extend_from_slice(&0x2000u64.to_le_bytes());
        let xsdt = sdt(b"XSDT", 1, &xb);
        let rsdp = rsdp(0, 0x800);
        let regions = [
            (0xE0000u64, &rsdp[..]),
            (0x800, &xsdt[..]),
            (0x1000, &fadt[..]),
            (0x2000, &madt[..]),
            (0x3000, &dsdt[..]),
        ];
        let mem = Regions::new(&regions);
        let info = walk(&mem, None).unwrap();
        assert_eq!(info.rsdp, 0xE0000);
        assert!(info.xsdt);
        assert_eq!(info.dsdt, Some((0x3000, dsdt.len() as u32)));
        let f = info.fadt;
        assert_eq!(f.sleep_control.unwrap().address, 0x600);
        assert_eq!(f.sleep_control.unwrap().space_id, GAS_IO);
        assert_eq!(f.sleep_status.unwrap().address, 0x601);
        assert_eq!(f.reset.unwrap().0.address, 0x600);
        assert_eq!(f.reset.unwrap().1, 1);
        assert!(f.pm1a_cnt.is_none());
        let m = info.madt.unwrap();
        assert_eq!(m.cpus, 3);
        assert_eq!(&m.apic_ids[..3], &[0, 1, 300]);
        assert_eq!(m.ioapic_count, 1);
        assert_eq!(
            m.ioapics[0],
            IoApic {
                id: 7,
                address: 0xfec0_0000,
                gsi_base: 0
            }
        );
        assert_eq!(m.lapic_address, 0xfee0_0000);
        // The hint wins when valid, and a bad hint falls back to the scan.
        assert_eq!(walk(&mem, Some(0xE0000)).unwrap().rsdp, 0xE0000);
        assert_eq!(walk(&mem, Some(0x1000)).unwrap().rsdp, 0xE0000);
    }

    #[test]
    fn rsdt_fallback_and_legacy_pm1a() {
        let mut body = vec![0u8; 116 - 36];
        body[40 - 36..44 - 36].copy_from_slice(&0x4000u32.to_le_bytes());
        body[64 - 36..68 - 36].copy_from_slice(&0x604u32.to_le_bytes());
        let fadt = sdt(b"FACP", 1, &body);
        let dsdt = sdt(b"DSDT", 1, &[]);
        let rsdt = sdt(b"RSDT", 1, &0x1000u32.to_le_bytes());
        let rsdp = rsdp(0x800, 0);
        let regions = [
            (0xF0010u64, &rsdp[..]),
            (0x800, &rsdt[..]),
            (0x1000, &fadt[..]),
            (0x4000, &dsdt[..]),
        ];
        let info = walk(&Regions::new(&regions), None).unwrap();
        assert_eq!(info.rsdp, 0xF0010);
        assert!(!info.xsdt);
        assert_eq!(info.fadt.dsdt, 0x4000);
        assert_eq!(info.fadt.pm1a_cnt.unwrap().address, 0x604);
        assert!(info.fadt.sleep_control.is_none());
        assert!(info.madt.is_none());
        assert_eq!(info.dsdt, Some((0x4000, 36)));
    }

    #[test]
    fn bad_checksum_is_rejected() {
        let mut xsdt = sdt(b"XSDT", 1, &[]);
        xsdt[9] ^= 1;
        let rsdp = rsdp(0, 0x800);
        let regions = [(0xE0000u64, &rsdp[..]), (0x800, &xsdt[..])];
        assert_eq!(
            walk(&Regions::new(&regions), None),
            Err(AcpiError::BadTable(0x800))
        );
        assert_eq!(walk(&Regions::new(&[]), None), Err(AcpiError::NoRsdp));
    }
}
