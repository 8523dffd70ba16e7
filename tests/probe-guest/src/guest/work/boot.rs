//! `probe.test=boot`: what the machine looks like from the inside.

use super::Ctx;
use crate::guest::console::Line;
use crate::guest::virtio::Mmio;
use crate::out;
use core::fmt::Write;
use probe_guest::bootinfo::round_mib;

/// Prints RAM, CPUs, ACPI facts, the virtio devices and the command line.
pub fn run(ctx: &mut Ctx) -> u32 {
    let p = ctx.p;
    let present: usize = p
        .virtio()
        .iter()
        .filter(|s| matches!(Mmio { base: s.base }.probe(), Ok(id) if id != 0))
        .count();
    let bytes = p.info.usable_bytes();
    out!(
        "PROBE boot ram_mib={} ram_bytes={} cpus={} virtio={} virtio_slots={} e820={}",
        round_mib(bytes),
        bytes,
        p.cpus(),
        present,
        p.virtio().len(),
        p.info.region_count
    );
    match &p.acpi {
        Ok(a) => {
            let mut l = Line::new();
            let _ = write!(
                l,
                "PROBE acpi rsdp={:#x} rev={} root={} fadt_rev={} hw_reduced={} dsdt={:#x}",
                a.rsdp,
                a.revision,
                if a.xsdt { "xsdt" } else { "rsdt" },
                a.fadt.revision,
                u8::from(a.fadt.flags & probe_guest::acpi::FADT_HW_REDUCED != 0),
                a.dsdt.map_or(0, |d| d.0)
            );
            if let Some(g) = a.fadt.sleep_control {
                let _ = write!(
                    l,
                    " sleep_ctl={}:{:#x}",
                    if g.space_id == 1 { "io" } else { "mmio" },
                    g.address
                );
            }
            if let Some((g, v)) = a.fadt.reset {
                let _ = write!(
                    l,
                    " reset={}:{:#x}={:#x}",
                    if g.space_id == 1 { "io" } else { "mmio" },
                    g.address,
                    v
                );
            }
            if let Some(m) = &a.madt {
                let _ = write!(
                    l,
                    " ioapics={} lapic={:#x}",
                    m.ioapic_count, m.lapic_address
                );
            }
            match p.ged_irq {
                Some(i) => {
                    let _ = write!(l, " ged_gsi={}", i.gsi);
                }
                None => {
                    let _ = write!(l, " ged_gsi=none");
                }
            }
            if let Some(e) = p.aml_error {
                let _ = write!(l, " aml_error_at={}", e.offset);
            }
            l.finish();
        }
        Err(e) => out!("PROBE acpi error={:?}", e),
    }
    for s in p.virtio() {
        let id = Mmio { base: s.base }.probe().unwrap_or(0);
        if id == 0 {
            continue;
        }
        let mut l = Line::new();
        let _ = write!(l, "PROBE virtio base={:#x} size={:#x}", s.base, s.len);
        match s.irq {
            Some(i) => {
                let _ = write!(
                    l,
                    " gsi={} trigger={} polarity={}",
                    i.gsi,
                    if i.edge { "edge" } else { "level" },
                    if i.active_low { "low" } else { "high" }
                );
            }
            None => {
                let _ = write!(l, " gsi=none");
            }
        }
        let _ = write!(l, " id={}", id);
        l.finish();
    }
    let mut l = Line::new();
    let _ = write!(l, "PROBE cmdline ");
    l.push_bytes(p.info.cmdline);
    l.finish();
    let present_ok = p.acpi.is_ok();
    u32::from(!present_ok)
}
