//! The boot information the loader hands over: Linux `boot_params` (bzImage
//! entries) or PVH `hvm_start_info`, reduced to command line, memory map and
//! RSDP address.

use crate::bytes::{u32_at, u64_at, u8_at};
use crate::physmem::PhysMem;

/// How the guest was entered (set by the entry stub that ran).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// 64-bit Linux boot protocol entry (load address + 0x200).
    BzImage64,
    /// 32-bit Linux boot protocol entry (code32_start), also reached from the
    /// 16-bit setup code.
    BzImage32,
    /// PVH entry from the ELF note.
    Pvh,
}

impl EntryKind {
    /// Maps the entry stub's number (see entry.S) to the kind.
    pub fn from_raw(v: u64) -> Option<Self> {
        match v {
            0 => Some(Self::BzImage64),
            1 => Some(Self::BzImage32),
            2 => Some(Self::Pvh),
            _ => None,
        }
    }

    /// Name printed on the ready line.
    pub fn name(self) -> &'static str {
        match self {
            Self::BzImage64 => "bzimage64",
            Self::BzImage32 => "bzimage32",
            Self::Pvh => "pvh",
        }
    }
}

/// One memory map entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemRegion {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// e820 type: 1 usable RAM, 2 reserved, 3 ACPI, 4 NVS, ...
    pub kind: u32,
}

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// Most memory map entries kept.
pub const MAX_REGIONS: usize = 128;
/// Longest command line read.
pub const MAX_CMDLINE: usize = 4096;
/// PVH start info magic.
pub const PVH_MAGIC: u32 = 0x336e_c578;

/// Boot information reduced to what the probe uses.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo<'a> {
    /// The kernel command line (without the terminating NUL).
    pub cmdline: &'a [u8],
    /// Memory map, `region_count` entries valid.
    pub regions: [MemRegion; MAX_REGIONS],
    /// Number of valid entries in `regions`.
    pub region_count: usize,
    /// RSDP address if the loader passed one.
    pub rsdp: Option<u64>,
}

/// Why the boot information is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    /// The structure at the given address is not readable.
    Unreadable(u64),
    /// The PVH magic is wrong.
    BadMagic(u32),
}

impl BootInfo<'_> {
    /// The valid memory map entries.
    pub fn regions(&self) -> &[MemRegion] {
        &self.regions[..self.region_count]
    }

    /// Total usable RAM in bytes.
    pub fn usable_bytes(&self) -> u64 {
        self.regions()
            .iter()
            .filter(|r| r.kind == E820_RAM)
            .map(|r| r.size)
            .sum()
    }
}

/// Total usable RAM rounded to the nearest MiB.
pub fn round_mib(bytes: u64) -> u64 {
    (bytes + (1 << 19)) >> 20
}

fn c_string(mem: &dyn PhysMem, addr: u64) -> &[u8] {
    if addr == 0 {
        return &[];
    }
    let mut len = 0;
    while len < MAX_CMDLINE {
        match mem.read(addr + len as u64, 1) {
            Some([0]) | None => break,
            Some(_) => len += 1,
        }
    }
    mem.read(addr, len).unwrap_or(&[])
}

/// Reads a Linux `boot_params` (zero page) at `addr`.
pub fn from_boot_params(mem: &dyn PhysMem, addr: u64) -> Result<BootInfo<'_>, BootInfoError> {
    let bp = mem
        .read(addr, 4096)
        .ok_or(BootInfoError::Unreadable(addr))?;
    let cmd = u64::from(u32_at(bp, 0x228).unwrap_or(0))
        | (u64::from(u32_at(bp, 0x0c8).unwrap_or(0)) << 32);
    let mut info = BootInfo {
        cmdline: c_string(mem, cmd),
        regions: [MemRegion::default(); MAX_REGIONS],
        region_count: 0,
        rsdp: None,
    };
    let n = (u8_at(bp, 0x1e8).unwrap_or(0) as usize).min(MAX_REGIONS);
    for i in 0..n {
        let off = 0x2d0 + 20 * i;
        info.regions[i] = MemRegion {
            addr: u64_at(bp, off).unwrap_or(0),
            size: u64_at(bp, off + 8).unwrap_or(0),
            kind: u32_at(bp, off + 16).unwrap_or(0),
        };
    }
    info.region_count = n;
    info.rsdp = u64_at(bp, 0x070).filter(|&a| a != 0);
    Ok(info)
}

/// Reads a PVH `hvm_start_info` at `addr`.
pub fn from_pvh(mem: &dyn PhysMem, addr: u64) -> Result<BootInfo<'_>, BootInfoError> {
    let si = mem.read(addr, 48).ok_or(BootInfoError::Unreadable(addr))?;
    let magic = u32_at(si, 0).unwrap_or(0);
    if magic != PVH_MAGIC {
        return Err(BootInfoError::BadMagic(magic));
    }
    let version = u32_at(si, 4).unwrap_or(0);
    let cmd = u64_at(si, 24).unwrap_or(0);
    let rsdp = u64_at(si, 32).filter(|&a| a != 0);
    let mut info = BootInfo {
        cmdline: c_string(mem, cmd),
        regions: [MemRegion::default(); MAX_REGIONS],
        region_count: 0,
        rsdp,
    };
    if version >= 1 {
        let ext = mem.read(addr, 56).ok_or(BootInfoError::Unreadable(addr))?;
        let table = u64_at(ext, 40).unwrap_or(0);
        let n = (u32_at(ext, 48).unwrap_or(0) as usize).min(MAX_REGIONS);
        if n > 0 {
            let t = mem
                .read(table, 24 * n)
                .ok_or(BootInfoError::Unreadable(table))?;
            for i in 0..n {
                info.regions[i] = MemRegion {
                    addr: u64_at(t, 24 * i).unwrap_or(0),
                    size: u64_at(t, 24 * i + 8).unwrap_or(0),
                    kind: u32_at(t, 24 * i + 16).unwrap_or(0),
                };
            }
            info.region_count = n;
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::physmem::Regions;

    #[test]
    fn boot_params() {
        let mut bp = vec![0u8; 4096];
        bp[0x070..0x078].copy_from_slice(&0xe0000u64.to_le_bytes());
        bp[0x228..0x22c].copy_from_slice(&0x20000u32.to_le_bytes());
        bp[0x1e8] = 3;
        let map = [
            (0u64, 0x9fc00u64, 1u32),
            (0x9fc00, 0x400, 2),
            (0x100000, 0xff00000, 1),
        ];
        for (i, (a, s, t)) in map.iter().enumerate() {
            let off = 0x2d0 + 20 * i;
            bp[off..off + 8].copy_from_slice(&a.to_le_bytes());
            bp[off + 8..off + 16].copy_from_slice(&s.to_le_bytes());
            bp[off + 16..off + 20].copy_from_slice(&t.to_le_bytes());
        }
        let cmd = b"probe.test=boot console=ttyS0\0";
        let regions = [(0x7000u64, &bp[..]), (0x20000, &cmd[..])];
        let mem = Regions::new(&regions);
        let info = from_boot_params(&mem, 0x7000).unwrap();
        assert_eq!(info.cmdline, b"probe.test=boot console=ttyS0");
        assert_eq!(info.rsdp, Some(0xe0000));
        assert_eq!(info.regions().len(), 3);
        assert_eq!(info.usable_bytes(), 0x9fc00 + 0xff00000);
        assert_eq!(round_mib(info.usable_bytes()), 256);
    }

    #[test]
    fn pvh_start_info() {
        let mut si = [0u8; 56];
        si[0..4].copy_from_slice(&PVH_MAGIC.to_le_bytes());
        si[4..8].copy_from_slice(&1u32.to_le_bytes());
        si[24..32].copy_from_slice(&0x3000u64.to_le_bytes());
        si[40..48].copy_from_slice(&0x4000u64.to_le_bytes());
        si[48..52].copy_from_slice(&2u32.to_le_bytes());
        let mut table = [0u8; 48];
        table[8..16].copy_from_slice(&0xa0000u64.to_le_bytes());
        table[16] = 1;
        table[24..32].copy_from_slice(&0x100000u64.to_le_bytes());
        table[32..40].copy_from_slice(&0x7f00000u64.to_le_bytes());
        table[40] = 1;
        let cmd = b"probe.test=idle\0";
        let regions = [
            (0x1000u64, &si[..]),
            (0x3000, &cmd[..]),
            (0x4000, &table[..]),
        ];
        let mem = Regions::new(&regions);
        let info = from_pvh(&mem, 0x1000).unwrap();
        assert_eq!(info.cmdline, b"probe.test=idle");
        assert_eq!(info.rsdp, None);
        assert_eq!(info.usable_bytes(), 0xa0000 + 0x7f00000);
        assert_eq!(round_mib(info.usable_bytes()), 128);
        assert_eq!(
            from_pvh(&mem, 0x4000).unwrap_err(),
            BootInfoError::BadMagic(0)
        );
        assert_eq!(
            from_pvh(&mem, 0x3000).unwrap_err(),
            BootInfoError::Unreadable(0x3000)
        );
    }
}
