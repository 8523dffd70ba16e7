//! `probe.test=smp`: starts every application processor listed in the MADT
//! with INIT-SIPI-SIPI. Each AP enters long mode through the trampoline in
//! entry.S and prints `PROBE ap apic_id=0xNN` itself (from ring 0); the BSP
//! then prints `PROBE smp cpus=N started=M`. The same start, with an AP
//! index, gives blk-bench and mem-walk their worker CPUs (`start_workers`).

use super::{workers, Ctx};
use crate::guest::arch::{self, MAX_APS};
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

/// Copies the trampoline to a free page below 640 KiB; returns the page.
fn install_trampoline(ctx: &Ctx) -> Option<u64> {
    let page = trampoline_page(ctx)?;
    // Only the addresses of the linker symbols are taken.
    let (start, end) = (
        addr_of!(ap_trampoline) as usize,
        addr_of!(ap_trampoline_end) as usize,
    );
    // SAFETY: `page` is usable RAM that nothing else uses (checked by
    // `trampoline_page`); the source is the trampoline template in the image.
    unsafe { core::ptr::copy_nonoverlapping(start as *const u8, page as *mut u8, end - start) };
    Some(page)
}

/// Starts the AP with APIC id `id` through the trampoline at `page` as AP
/// index `index` (0: halts once it checked in; k: bench worker k). Returns
/// whether it checked in within 2 s.
fn start_ap(ctx: &Ctx, id: u32, page: u64, index: u64) -> bool {
    let before = ap_count();
    arch::set_ap_index(index);
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
    ap_count() != before
}

/// The MADT's CPUs other than the boot CPU, in MADT order (APIC ids), and
/// how many there are.
fn other_cpus(ctx: &Ctx) -> ([u32; probe_guest::acpi::MAX_CPUS], usize) {
    let mut ids = [0; probe_guest::acpi::MAX_CPUS];
    let mut n = 0;
    if let Ok(probe_guest::acpi::AcpiInfo { madt: Some(m), .. }) = &ctx.p.acpi {
        let cpus = (m.cpus as usize).min(probe_guest::acpi::MAX_CPUS);
        for &id in m.apic_ids[..cpus]
            .iter()
            .filter(|&&id| id != ctx.apic.bsp_id())
        {
            ids[n] = id;
            n += 1;
        }
    }
    (ids, n)
}

/// Starts up to `n` worker CPUs (indices 1..=n) for blk-bench or mem-walk, with
/// their wake-up interrupts (and timer tick) on (`irq`) or off. Returns the APIC ids of the
/// workers that run, index k at position k-1, and their number; prints a
/// `PROBE <what>` line (`blk-bench-worker`, `mem-walk-worker`) for each one that did not
/// start.
pub fn start_workers(ctx: &Ctx, n: usize, irq: bool, what: &str) -> ([u32; MAX_APS], usize) {
    let mut started = [0; MAX_APS];
    let (ids, count) = other_cpus(ctx);
    let Some(page) = install_trampoline(ctx) else {
        out!("PROBE {} status=no-trampoline-page", what);
        return (started, 0);
    };
    let mut k = 0;
    for &id in ids[..count].iter().filter(|&&id| id <= 0xff) {
        if k == n.min(MAX_APS) {
            break;
        }
        let index = k + 1;
        workers::prepare(index, ctx.apic.base(), irq);
        if !start_ap(ctx, id, page, index as u64) {
            out!(
                "PROBE {} index={} apic_id={:#04x} status=timeout",
                what,
                index,
                id
            );
            break;
        }
        if !workers::wait_ready(index, 2_000_000_000) {
            out!(
                "PROBE {} index={} apic_id={:#04x} status=not-ready",
                what,
                index,
                id
            );
            break;
        }
        started[k] = id;
        k += 1;
    }
    (started, k)
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
    let Some(page) = install_trampoline(ctx) else {
        out!("PROBE smp status=no-trampoline-page");
        return 1;
    };
    let bsp = ctx.apic.bsp_id();
    let (ids, count) = other_cpus(ctx);
    let mut started = 0u32;
    for &id in &ids[..count] {
        if id > 0xff {
            out!("PROBE ap apic_id={:#x} status=x2apic-only", id);
            continue;
        }
        if start_ap(ctx, id, page, 0) {
            started += 1;
        } else {
            out!("PROBE ap apic_id={:#04x} status=timeout", id);
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
