//! The parsers against real tables: QEMU 7.2 `-M microvm,acpi=on -smp 2`
//! with two virtio-blk devices, dumped from guest memory (fixtures/).

use crate::acpi::{self, GAS_MEMORY};
use crate::aml::{self, Hid};
use crate::physmem::Regions;
use crate::resource::{self, Irq};

const RSDP: &[u8] = include_bytes!("../fixtures/qemu-microvm/rsdp.bin");
const XSDT: &[u8] = include_bytes!("../fixtures/qemu-microvm/xsdt.bin");
const FACP: &[u8] = include_bytes!("../fixtures/qemu-microvm/facp.bin");
const APIC: &[u8] = include_bytes!("../fixtures/qemu-microvm/apic.bin");
const DSDT: &[u8] = include_bytes!("../fixtures/qemu-microvm/dsdt.bin");

/// The tables at the addresses they had (fixtures/qemu-microvm/ADDRESSES).
const MEM: [(u64, &[u8]); 5] = [
    (0xf3490, RSDP),
    (0xeff97, XSDT),
    (0xefe31, FACP),
    (0xefc80, DSDT),
    (0xeff3d, APIC),
];

#[test]
fn walks_qemu_microvm_tables() {
    let mem = Regions::new(&MEM);
    let info = acpi::walk(&mem, None).unwrap();
    assert_eq!(info.rsdp, 0xf3490);
    assert!(info.xsdt);
    assert_eq!(info.dsdt, Some((0xefc80, DSDT.len() as u32)));
    let f = info.fadt;
    assert_ne!(f.flags & acpi::FADT_HW_REDUCED, 0);
    let ctl = f.sleep_control.unwrap();
    assert_eq!((ctl.space_id, ctl.address), (GAS_MEMORY, 0xfea0_0200));
    let (reset, value) = f.reset.unwrap();
    assert_eq!(
        (reset.space_id, reset.address, value),
        (GAS_MEMORY, 0xfea0_0202, 0x42)
    );
    let m = info.madt.unwrap();
    assert_eq!(m.cpus, 2);
    assert_eq!(&m.apic_ids[..2], &[0, 1]);
    assert_eq!(m.ioapic_count, 2);
    assert_eq!(m.ioapics[1].gsi_base, 24);
}

#[test]
fn reads_qemu_microvm_dsdt() {
    let mut virtio = Vec::new();
    let mut ged = None;
    let mut names = Vec::new();
    let g = aml::walk_devices(&DSDT[36..], &mut |d| {
        names.push(d.name);
        let res = d.crs.map(resource::parse).unwrap_or_default();
        match d.hid {
            Some(h) if h.is("LNRO0005") => virtio.push(res),
            Some(h) if h.is("ACPI0013") => ged = res.irq,
            _ => {}
        }
    })
    .unwrap();
    assert_eq!(g.s5_slp_typ, Some(5));
    assert_eq!(
        names,
        vec![*b"FWCF", *b"COM1", *b"GED_", *b"PWRB", *b"VR23", *b"VR22"]
    );
    assert_eq!(virtio.len(), 2);
    assert_eq!(virtio[0].mem, Some((0xfeb0_2e00, 0x200)));
    assert_eq!(
        virtio[0].irq,
        Some(Irq {
            gsi: 47,
            edge: false,
            active_low: false
        })
    );
    assert_eq!(virtio[1].mem, Some((0xfeb0_2c00, 0x200)));
    assert_eq!(ged.map(|i| i.gsi), Some(9));
}

#[test]
fn qemu_microvm_hids_of_both_kinds() {
    let mut found = Vec::new();
    aml::walk_devices(&DSDT[36..], &mut |d| found.push((d.name, d.hid))).unwrap();
    let hid_of = |n: &[u8; 4]| {
        found
            .iter()
            .find(|(name, _)| name == n)
            .and_then(|(_, h)| *h)
            .unwrap()
    };
    // COM1 uses EISAID("PNP0501"), the power button a string.
    assert!(matches!(hid_of(b"COM1"), Hid::Eisa(_)));
    assert!(hid_of(b"COM1").is("PNP0501"));
    assert!(matches!(hid_of(b"PWRB"), Hid::Str(_)));
    assert!(hid_of(b"PWRB").is("PNP0C0C"));
    assert!(hid_of(b"FWCF").is("QEMU0002"));
}
