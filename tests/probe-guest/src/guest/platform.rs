//! The machine as discovered at boot: boot information, ACPI tables, the
//! virtio-mmio and GED devices from the DSDT, and ACPI power control.

use super::arch::{self, mmio_write16, mmio_write32, mmio_write8, outb, outl, outw};
use super::mem::Identity;
use probe_guest::acpi::{self, AcpiError, AcpiInfo, Gas, GAS_IO, GAS_MEMORY};
use probe_guest::aml::{self, AmlError};
use probe_guest::bootinfo::{self, BootInfo, BootInfoError, EntryKind};
use probe_guest::physmem::PhysMem;
use probe_guest::resource::{self, Irq};

/// Most virtio-mmio slots remembered.
pub const MAX_VIRTIO: usize = 32;

/// A `LNRO0005` device from the DSDT.
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioSlot {
    /// MMIO window base.
    pub base: u64,
    /// MMIO window length.
    pub len: u64,
    /// Its interrupt.
    pub irq: Option<Irq>,
}

/// Everything the tests need to know about the machine.
pub struct Platform {
    /// Boot information.
    pub info: BootInfo<'static>,
    /// The ACPI tables, or why they are unusable.
    pub acpi: Result<AcpiInfo, AcpiError>,
    /// AML decoding error in the DSDT, if any.
    pub aml_error: Option<AmlError>,
    /// virtio-mmio slots in DSDT order.
    pub virtio: [VirtioSlot; MAX_VIRTIO],
    /// Number of valid entries in `virtio`.
    pub virtio_count: usize,
    /// The GED (`ACPI0013`) interrupt: the power button.
    pub ged_irq: Option<Irq>,
    /// SLP_TYP for S5 (from `\_S5_`, default 5).
    pub s5_slp_typ: u8,
}

/// Why boot information could not be read.
pub type BootError = BootInfoError;

static IDENTITY: Identity = Identity;

impl Platform {
    /// Reads the boot information at `ptr` (for `entry`), then walks ACPI.
    pub fn discover(entry: EntryKind, ptr: u64) -> Result<Self, BootError> {
        let mem: &'static dyn PhysMem = &IDENTITY;
        let info = match entry {
            EntryKind::Pvh => bootinfo::from_pvh(mem, ptr)?,
            _ => bootinfo::from_boot_params(mem, ptr)?,
        };
        let mut p = Platform {
            info,
            acpi: acpi::walk(mem, info.rsdp),
            aml_error: None,
            virtio: [VirtioSlot::default(); MAX_VIRTIO],
            virtio_count: 0,
            ged_irq: None,
            s5_slp_typ: 5,
        };
        if let Ok(AcpiInfo {
            dsdt: Some((addr, len)),
            ..
        }) = p.acpi
        {
            if let Some(table) = mem.read(addr, len as usize) {
                let (mut slots, mut count, mut ged) =
                    ([VirtioSlot::default(); MAX_VIRTIO], 0, None);
                let r = aml::walk_devices(&table[36..], &mut |d| {
                    let Some(hid) = d.hid else { return };
                    let res = d.crs.map(resource::parse).unwrap_or_default();
                    if hid.is("LNRO0005") && count < MAX_VIRTIO {
                        if let Some((base, len)) = res.mem {
                            slots[count] = VirtioSlot {
                                base,
                                len,
                                irq: res.irq,
                            };
                            count += 1;
                        }
                    } else if hid.is("ACPI0013") && ged.is_none() {
                        ged = res.irq;
                    }
                });
                match r {
                    Ok(g) => p.s5_slp_typ = g.s5_slp_typ.unwrap_or(5),
                    Err(e) => p.aml_error = Some(e),
                }
                p.virtio = slots;
                p.virtio_count = count;
                p.ged_irq = ged;
            }
        }
        Ok(p)
    }

    /// The virtio-mmio slots.
    pub fn virtio(&self) -> &[VirtioSlot] {
        &self.virtio[..self.virtio_count]
    }

    /// Number of CPUs in the MADT (1 without one).
    pub fn cpus(&self) -> u32 {
        match &self.acpi {
            Ok(AcpiInfo { madt: Some(m), .. }) => m.cpus,
            _ => 1,
        }
    }

    /// ACPI S5 (soft off): the HW-reduced sleep control register, else
    /// PM1a_CNT. Returns only if neither exists or the write had no effect.
    pub fn poweroff(&self) {
        let Ok(a) = &self.acpi else { return };
        let typ = u64::from(self.s5_slp_typ & 7);
        if let Some(g) = a.fadt.sleep_control {
            write_gas(&g, (typ << 2) | (1 << 5));
        } else if let Some(g) = a.fadt.pm1a_cnt {
            write_gas(&g, (typ << 10) | (1 << 13));
        }
        spin_ms(100);
    }

    /// Writes the FADT reset value to the reset register. Returns if there
    /// is none or the machine did not reset.
    pub fn reset(&self) -> bool {
        let Ok(a) = &self.acpi else { return false };
        let Some((g, v)) = a.fadt.reset else {
            return false;
        };
        write_gas(&g, u64::from(v));
        spin_ms(100);
        true
    }
}

/// Busy-waits about `ms` milliseconds.
pub fn spin_ms(ms: u64) {
    let end = super::timer::now_ns() + ms * 1_000_000;
    while super::timer::now_ns() < end {
        arch::pause();
    }
}

/// Writes `value` to the register a GAS describes (I/O port or MMIO).
pub fn write_gas(g: &Gas, value: u64) {
    let size = match g.access_size {
        1..=4 => 1u8 << (g.access_size - 1),
        _ => (g.bit_width / 8).clamp(1, 4),
    };
    let value = value << g.bit_offset;
    match (g.space_id, size) {
        (GAS_IO, 1) => outb(g.address as u16, value as u8),
        (GAS_IO, 2) => outw(g.address as u16, value as u16),
        (GAS_IO, _) => outl(g.address as u16, value as u32),
        (GAS_MEMORY, 1) => mmio_write8(g.address, value as u8),
        (GAS_MEMORY, 2) => mmio_write16(g.address, value as u16),
        (GAS_MEMORY, _) => mmio_write32(g.address, value as u32),
        _ => {}
    }
}
