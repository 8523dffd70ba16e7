//! `probe.test=smp`: starts every application processor listed in the MADT
//! with INIT-SIPI-SIPI. Each AP enters long mode through the trampoline in
//! entry.S and prints `PROBE ap apic_id=0xNN` itself (from ring 0); the BSP
//! then prints `PROBE smp cpus=N started=M`.

use super::Ctx;
use crate::guest::arch;
use crate::guest::platform::spin_ms;
use crate::guest::timer::now_ns;
use crate::out;
use core::ptr::addr_of;
use probe_guest::bootinfo::E820_RAM;

extern "C" {
    static ap_trampoline: u8;
    static ap_trampoline_end: u8;
    static probe_ap_count: u64;
}

const ICR_INIT: u32 = 0x4500;
const ICR_STARTUP: u32 = 0x4600;

fn ap_count() -> u64 {
    // SAFETY: an aligned u64 in the image, incremented by APs.
    unsafe { core::ptr::read_volatile(addr_of!(probe_ap_count)) }
}

/// A free, usable 4 KiB page below 640 KiB for the trampoline: not page 0,
/// and clear of the boot information and the command line.
fn trampoline_page(ctx: &Ctx) -> Option<u64> {
    let cmd = ctx.p.info.cmdline.as_ptr() as u64;
    let cmd_end = cmd + ctx.p.info.cmdline.len() as u64;
    let avoid = [
        (
            ctx.boot_info_ptr & !0xfff,
            (ctx.boot_info_ptr & !0xfff) + 0x2000,
        ),
        (cmd & !0xfff, cmd_end),
    ];
    (1..0x9f).map(|p| p << 12).find(|&page| {
        let usable = ctx
            .p
            .info
            .regions()
            .iter()
            .any(|r| r.kind == E820_RAM && r.addr <= page && page + 0x1000 <= r.addr + r.size);
        usable && avoid.iter().all(|&(a, b)| page + 0x1000 <= a || page >= b)
    })
}

/// Starts the APs; returns 0 if all of them checked in.
pub fn run(ctx: &mut Ctx) -> u32 {
    let Ok(a) = &ctx.p.acpi else {
        out!("PROBE smp status=no-acpi");
        return 1;
    };
    let Some(madt) = a.madt.as_ref() else {
        out!("PROBE smp status=no-madt");
        return 1;
    };
    let Some(page) = trampoline_page(ctx) else {
        out!("PROBE smp status=no-trampoline-page");
        return 1;
    };
    // Only the addresses of the linker symbols are taken.
    let (start, end) = (
        addr_of!(ap_trampoline) as usize,
        addr_of!(ap_trampoline_end) as usize,
    );
    // SAFETY: `page` is usable RAM that nothing else uses (checked above);
    // the source is the trampoline template inside the image.
    unsafe { core::ptr::copy_nonoverlapping(start as *const u8, page as *mut u8, end - start) };
    let bsp = ctx.apic.bsp_id();
    let cpus = madt.cpus.min(probe_guest::acpi::MAX_CPUS as u32) as usize;
    let mut started = 0u32;
    for &id in &madt.apic_ids[..cpus] {
        if id == bsp {
            continue;
        }
        if id > 0xff {
            out!("PROBE ap apic_id={:#x} status=x2apic-only", id);
            continue;
        }
        let before = ap_count();
        ctx.apic.send_ipi(id, ICR_INIT);
        spin_ms(10);
        let vector = (page >> 12) as u32;
        ctx.apic.send_ipi(id, ICR_STARTUP | vector);
        spin_ms(1);
        if ap_count() == before {
            ctx.apic.send_ipi(id, ICR_STARTUP | vector);
        }
        let deadline = now_ns() + 2_000_000_000;
        while ap_count() == before && now_ns() < deadline {
            arch::pause();
        }
        if ap_count() == before {
            out!("PROBE ap apic_id={:#04x} status=timeout", id);
        } else {
            started += 1;
        }
    }
    out!(
        "PROBE smp cpus={} started={} bsp_apic_id={:#04x}",
        madt.cpus,
        started + 1,
        bsp
    );
    u32::from(started + 1 != madt.cpus)
}
