// SPDX-License-Identifier: Apache-2.0
//! ACPI tables for a hardware-reduced machine: RSDP → XSDT → {FADT → DSDT, MADT}.
//!
//! Devices describe themselves in AML; the device manager registers each one with a
//! [`DsdtBuilder`] as it creates it, so adding a device never means editing the tables here.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use devices::acpi::pm;
use devices::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{ACPI_PM_PORT, APIC_START, IOAPIC_START, RSDP_START, SYSTEM_MEM_START};

/// Errors while writing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables outgrew the reserved system area.
    #[error("ACPI tables need {0} bytes, more than the reserved system area holds")]
    TooLarge(u64),
    /// A table could not be written to guest memory.
    #[error("Cannot write the ACPI {0} to guest memory")]
    GuestMemory(&'static str, #[source] vm_memory::GuestMemoryError),
}

/// OEM id in every table header.
const OEM_ID: [u8; 6] = *b"VMM   ";
/// OEM table id in every table header.
const OEM_TABLE_ID: [u8; 8] = *b"VMMMACHN";
/// OEM revision.
const OEM_REVISION: u32 = 1;
/// FADT hypervisor vendor identity.
const HYPERVISOR_VENDOR: [u8; 8] = *b"VMMKVM  ";
/// IA-PC boot architecture flags: no VGA (bit 2), no CMOS RTC (bit 5). The legacy-devices and
/// 8042 bits stay clear: the i8042 only offers its reset line, so drivers should not probe it.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 5);
/// DSDT revision 2: 64-bit integers in AML.
const DSDT_REVISION: u8 = 2;
/// MADT revision (ACPI 6.x).
const MADT_REVISION: u8 = 5;
/// MADT flag: the machine also has dual 8259s (PCAT_COMPAT). KVM's in-kernel irqchip has them.
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT interrupt source override entry type and length.
const MADT_ISO_TYPE: u8 = 2;
const MADT_ISO_LEN: u8 = 10;

/// Collects the AML of every device for the DSDT.
#[derive(Debug, Default)]
pub struct DsdtBuilder {
    body: Vec<u8>,
}

impl DsdtBuilder {
    /// Creates an empty DSDT body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a device's (or any object's) AML, in registration order: the guest enumerates
    /// devices in this order, so the first disk registered becomes `/dev/vda`.
    pub fn add(&mut self, device: &dyn Aml) {
        device.to_aml_bytes(&mut self.body);
    }

    /// The table.
    fn build(&self) -> Sdt {
        let mut dsdt = Sdt::new(
            *b"DSDT",
            36,
            DSDT_REVISION,
            OEM_ID,
            OEM_TABLE_ID,
            OEM_REVISION,
        );
        dsdt.append_slice(&self.body);
        dsdt
    }
}

fn io_register(port: u16, offset: u64) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port) + offset,
    )
}

fn fadt(dsdt: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    f.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    f.reset_reg = io_register(ACPI_PM_PORT, pm::RESET_OFFSET);
    f.reset_value = pm::RESET_VALUE;
    f.sleep_control_reg = io_register(ACPI_PM_PORT, pm::SLEEP_CONTROL_OFFSET);
    f.sleep_status_reg = io_register(ACPI_PM_PORT, pm::SLEEP_STATUS_OFFSET);
    f.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR).into();
    let mut bytes = Vec::new();
    f.finalize().to_aml_bytes(&mut bytes);
    bytes
}

fn interrupt_override(bus_irq: u8, gsi: u32) -> [u8; 10] {
    let mut e = [0u8; 10];
    e[0] = MADT_ISO_TYPE;
    e[1] = MADT_ISO_LEN;
    e[2] = 0; // ISA bus
    e[3] = bus_irq;
    e[4..8].copy_from_slice(&gsi.to_le_bytes());
    // Flags 0: conforms to the bus (edge, active high).
    e
}

fn madt(cpus: u8) -> Sdt {
    let mut m = Sdt::new(
        *b"APIC",
        44,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    m.write_u32(36, APIC_START as u32);
    m.write_u32(40, MADT_PCAT_COMPAT);
    let mut body = Vec::new();
    for id in 0..cpus {
        ProcessorLocalApic::new(id, id, EnabledStatus::Enabled).to_aml_bytes(&mut body);
    }
    IoApic::new(0, IOAPIC_START as u32, 0).to_aml_bytes(&mut body);
    // KVM routes the PIT (ISA IRQ 0) to IOAPIC pin 2, as on PCs.
    body.extend_from_slice(&interrupt_override(0, 2));
    m.append_slice(&body);
    m
}

/// Writes all tables to the reserved system area and the RSDP to [`RSDP_START`]; returns the
/// RSDP's address for the boot protocol.
///
/// # Errors
/// Fails when the tables do not fit or cannot be written.
pub fn write_tables(
    mem: &GuestMemoryMmap,
    dsdt: &DsdtBuilder,
    cpus: u8,
) -> Result<GuestAddress, AcpiError> {
    let mut next = SYSTEM_MEM_START;
    let mut place = |bytes: &[u8], what: &'static str| -> Result<u64, AcpiError> {
        let at = next;
        let end = at + bytes.len() as u64;
        if end > RSDP_START {
            return Err(AcpiError::TooLarge(end - SYSTEM_MEM_START));
        }
        mem.write_slice(bytes, GuestAddress(at))
            .map_err(|e| AcpiError::GuestMemory(what, e))?;
        next = end.next_multiple_of(8);
        Ok(at)
    };
    let dsdt_addr = place(dsdt.build().as_slice(), "DSDT")?;
    let fadt_addr = place(&fadt(dsdt_addr), "FADT")?;
    let madt_addr = place(madt(cpus).as_slice(), "MADT")?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let xsdt_addr = place(&xsdt_bytes, "XSDT")?;
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    mem.write_slice(&rsdp, GuestAddress(RSDP_START))
        .map_err(|e| AcpiError::GuestMemory("RSDP", e))?;
    Ok(GuestAddress(RSDP_START))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let head = read(mem, addr, 8);
        let len = u32::from_le_bytes(head[4..8].try_into().unwrap()) as usize;
        read(mem, addr, len)
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    struct Dummy;
    impl Aml for Dummy {
        fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
            acpi_tables::aml::Name::new("FOO_".into(), &0x1234u16).to_aml_bytes(sink);
        }
    }

    #[test]
    fn tables_chain_with_valid_checksums() {
        let mem = mem();
        let mut dsdt = DsdtBuilder::new();
        dsdt.add(&Dummy);
        let rsdp_addr = write_tables(&mem, &dsdt, 4).unwrap();
        assert_eq!(rsdp_addr, GuestAddress(0xe_0000));

        let rsdp = read(&mem, 0xe_0000, 36);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[0..20]));
        assert!(checksum_ok(&rsdp));
        assert_eq!(rsdp[15], 2);

        let xsdt = table(&mem, u64_at(&rsdp, 24));
        assert_eq!(&xsdt[0..4], b"XSDT");
        assert!(checksum_ok(&xsdt));
        assert_eq!(xsdt.len(), 36 + 16);

        let fadt = table(&mem, u64_at(&xsdt, 36));
        assert_eq!(&fadt[0..4], b"FACP");
        assert_eq!(fadt.len(), 276);
        assert!(checksum_ok(&fadt));
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "hardware-reduced");
        assert_ne!(flags & (1 << 10), 0, "reset register supported");
        // Reset register: system I/O, port 0x602, value 0x42.
        assert_eq!(fadt[116], 1);
        assert_eq!(u64_at(&fadt, 120), 0x602);
        assert_eq!(fadt[128], 0x42);
        // Sleep control/status registers at 244/256.
        assert_eq!((fadt[244], u64_at(&fadt, 248)), (1, 0x600));
        assert_eq!((fadt[256], u64_at(&fadt, 260)), (1, 0x601));
        assert_eq!(&fadt[268..276], b"VMMKVM  ");

        let dsdt = table(&mem, u64_at(&fadt, 140));
        assert_eq!(&dsdt[0..4], b"DSDT");
        assert!(checksum_ok(&dsdt));
        assert_eq!(
            &dsdt[36..],
            &[0x08, b'F', b'O', b'O', b'_', 0x0b, 0x34, 0x12]
        );

        let madt = table(&mem, u64_at(&xsdt, 44));
        assert_eq!(&madt[0..4], b"APIC");
        assert!(checksum_ok(&madt));
        assert_eq!(madt.len(), 44 + 4 * 8 + 12 + 10);
        let lapics: Vec<(u8, u8)> = madt[44..]
            .chunks(8)
            .take(4)
            .map(|e| {
                assert_eq!((e[0], e[1]), (0, 8));
                (e[3], e[4])
            })
            .collect();
        assert_eq!(lapics, vec![(0, 1), (1, 1), (2, 1), (3, 1)]);
        assert_eq!(&madt[76..80], &[1, 12, 0, 0]);
        assert_eq!(&madt[88..92], &[2, 10, 0, 0]);
    }

    #[test]
    fn too_many_devices_is_an_error() {
        struct Huge;
        impl Aml for Huge {
            fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
                sink.vec(&vec![0u8; 0x5_0000]);
            }
        }
        let mut dsdt = DsdtBuilder::new();
        dsdt.add(&Huge);
        assert!(matches!(
            write_tables(&mem(), &dsdt, 1),
            Err(AcpiError::TooLarge(_))
        ));
    }
}
