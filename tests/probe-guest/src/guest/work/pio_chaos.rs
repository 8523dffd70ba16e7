//! `probe.test=pio-chaos`: `probe.count` hostile port I/O and MMIO accesses
//! (seeded by `probe.seed`) to every port range the VMM emulates and to the
//! ports and addresses around and between its devices; then checks that the
//! devices still work.
//!
//! Targets, each access a random read or write of a random width (ports: 1,
//! 2 or 4 bytes; MMIO: 1, 2, 4 or 8 bytes, some unaligned):
//! - COM1 (0x3f8-0x3ff): every register, the divisor latch (DLAB), FIFO
//!   control, line and modem control (loopback included), scratch. A byte
//!   the UART would transmit is a lowercase letter, so that the console
//!   stays text.
//! - the i8042 (0x60-0x64), without command 0xFE (which resets the machine).
//! - the debug port (0x80).
//! - the ACPI sleep control/status and reset block (the FADT's sleep control
//!   register, the block's other ports), without S5 with SLP_EN (power off)
//!   and without the reset value; other sleep types with SLP_EN (which the
//!   VMM does not implement) are written on purpose.
//! - ports nobody emulates (next to the devices above, the PC's usual ones:
//!   DMA, CMOS, COM2-4, LPT, IDE, PCI configuration, and random ones). Ports
//!   the kernel's PIC, PIT and ELCR answer are left alone.
//! - MMIO in the gaps: between the top of RAM and the MMIO hole, the hole
//!   below the first virtio-mmio window, right around the windows, between
//!   the last window and the I/O APIC, between the I/O APIC and the local
//!   APIC, above the local APIC (up to the pages KVM keeps for itself).
//!
//! Every read of a port or address nobody emulates must return all ones.
//! Afterwards the probe reprograms COM1 and checks the UART (scratch
//! register), the debug port (the code read back), the i8042's status (0)
//! and the sleep status (0); the console printing the result line is the
//! UART's check, and a test that follows with `idle` checks the GED.

use super::Ctx;
use crate::guest::arch::{inb, inl, inw, outb, outl, outw};
use crate::guest::console::Console;
use crate::out;
use probe_guest::acpi::{AcpiInfo, GAS_IO};
use probe_guest::bootinfo::E820_RAM;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const COM1: u16 = 0x3f8;
const I8042: u16 = 0x60;
const I8042_CMD: u16 = 0x64;
const DEBUG_PORT: u16 = 0x80;
/// The i8042 command that pulses the reset line.
const KBD_RESET: u8 = 0xfe;
/// SLP_EN in the sleep control register.
const SLP_EN: u8 = 1 << 5;

/// Port ranges nobody emulates on this machine (start, length).
const NOBODY: [(u16, u16); 16] = [
    (0x00, 0x1c),  // DMA controller 1
    (0x24, 0x18),  // between the PICs and the PIT
    (0x65, 0x0b),  // right after the i8042
    (0x70, 0x02),  // CMOS/RTC
    (0x81, 0x0f),  // right after the debug port, DMA page registers
    (0xc0, 0x20),  // DMA controller 2
    (0x1f0, 0x08), // IDE
    (0x2f8, 0x08), // COM2
    (0x378, 0x03), // LPT1
    (0x3e8, 0x08), // COM3
    (0x3f0, 0x08), // right before COM1
    (0x400, 0x10), // right after COM1
    (0x510, 0x02), // QEMU's fw_cfg
    (0x5f0, 0x10), // right before the ACPI block
    (0x608, 0x18), // right after it
    (0xcf8, 0x08), // PCI configuration mechanism 1
];

/// Whether a port access of `width` bytes at `port` might reach a device
/// the kernel emulates (8259 PICs, PIT, speaker port, ELCR): left alone.
fn kernel_port(port: u16, width: u16) -> bool {
    const KVM: [(u16, u16); 5] = [(0x20, 2), (0x40, 4), (0x61, 1), (0xa0, 2), (0x4d0, 2)];
    let (a, b) = (u32::from(port), u32::from(port) + u32::from(width));
    KVM.iter().any(|&(s, l)| {
        let (s, e) = (u32::from(s), u32::from(s) + u32::from(l));
        a < e && s < b
    })
}

fn pio_read(port: u16, width: u16) -> u32 {
    match width {
        1 => u32::from(inb(port)),
        2 => u32::from(inw(port)),
        _ => inl(port),
    }
}

fn pio_write(port: u16, width: u16, v: u32) {
    match width {
        1 => outb(port, v as u8),
        2 => outw(port, v as u16),
        _ => outl(port, v),
    }
}

fn all_ones(width: u64) -> u64 {
    if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * width)) - 1
    }
}

fn mmio_read(addr: u64, width: u64) -> u64 {
    // SAFETY: `addr` is in a gap of the guest-physical map that holds no RAM
    // and no device (`Gaps`); the page tables map it (identity, below 4 GiB).
    // Reading it has no effect on guest memory.
    unsafe {
        match width {
            1 => u64::from(core::ptr::read_volatile(addr as *const u8)),
            2 => u64::from(core::ptr::read_volatile(addr as *const u16)),
            4 => u64::from(core::ptr::read_volatile(addr as *const u32)),
            _ => core::ptr::read_volatile(addr as *const u64),
        }
    }
}

fn mmio_write(addr: u64, width: u64, v: u64) {
    // SAFETY: as for `mmio_read`: nothing is there, so the store changes no
    // memory the guest uses.
    unsafe {
        match width {
            1 => core::ptr::write_volatile(addr as *mut u8, v as u8),
            2 => core::ptr::write_volatile(addr as *mut u16, v as u16),
            4 => core::ptr::write_volatile(addr as *mut u32, v as u32),
            _ => core::ptr::write_volatile(addr as *mut u64, v),
        }
    }
}

/// Most MMIO gaps.
const MAX_GAPS: usize = 48;

/// The guest-physical ranges that hold neither RAM nor a device.
struct Gaps {
    ranges: [(u64, u64); MAX_GAPS],
    count: usize,
}

impl Gaps {
    /// The gaps of this machine: the ranges below 4 GiB (above the top of
    /// RAM) that no DSDT window, I/O APIC, local APIC or KVM page covers.
    fn find(ctx: &Ctx) -> Self {
        let ram_top = ctx
            .p
            .info
            .regions()
            .iter()
            .filter(|r| r.kind == E820_RAM && r.addr < 1 << 32)
            .map(|r| (r.addr + r.size).min(1 << 32))
            .max()
            .unwrap_or(0);
        // Taken, sorted below: the windows, the APICs, KVM's identity-map
        // and real-mode TSS pages at the top of the hole (and whatever may
        // sit above them), and the 4 GiB line.
        let mut busy = [(0u64, 0u64); MAX_GAPS];
        let mut n = 0;
        for s in ctx.p.virtio() {
            if n < MAX_GAPS - 4 {
                busy[n] = (s.base, s.base + s.len.max(0x1000));
                n += 1;
            }
        }
        let (ioapic, lapic) = match &ctx.p.acpi {
            Ok(AcpiInfo { madt: Some(m), .. }) => (
                m.ioapics[..m.ioapic_count.max(1)]
                    .iter()
                    .map(|i| u64::from(i.address))
                    .min()
                    .unwrap_or(0xfec0_0000),
                m.lapic_address,
            ),
            _ => (0xfec0_0000, 0xfee0_0000),
        };
        busy[n] = (ioapic, ioapic + 0x1000);
        busy[n + 1] = (lapic, lapic + 0x1000);
        busy[n + 2] = (0xfffb_c000, 1 << 32);
        n += 3;
        let busy = &mut busy[..n];
        busy.sort_unstable();
        let mut g = Gaps {
            ranges: [(0, 0); MAX_GAPS],
            count: 0,
        };
        let mut at = ram_top.max(0x10_0000);
        for &(s, e) in busy.iter() {
            if s > at && g.count < MAX_GAPS {
                g.ranges[g.count] = (at, s);
                g.count += 1;
            }
            at = at.max(e);
        }
        g
    }

    /// A random access of `width` bytes inside a gap; a third of them right
    /// at a gap's edge (next to a device or the top of RAM).
    fn pick(&self, rng: &mut Rng, width: u64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let (s, e) = self.ranges[rng.below(self.count as u64) as usize];
        if e - s < 16 {
            return None;
        }
        let span = e - s - width;
        let addr = match rng.below(3) {
            0 => s + rng.below(64.min(span)),
            1 => e - width - rng.below(64.min(span)),
            _ => s + rng.below(span),
        };
        Some(addr)
    }
}

/// What the chaos did.
#[derive(Default)]
struct Tally {
    pio: u64,
    mmio: u64,
    unclaimed_reads: u64,
    unclaimed_bad: u64,
    first_bad: Option<(u64, u64)>,
}

impl Tally {
    fn check_unclaimed(&mut self, at: u64, width: u64, v: u64) {
        self.unclaimed_reads += 1;
        if v != all_ones(width) {
            self.unclaimed_bad += 1;
            self.first_bad.get_or_insert((at, v));
        }
    }
}

/// The ACPI sleep control port and the reset port, when they are I/O ports.
fn acpi_ports(ctx: &Ctx) -> (Option<u16>, Option<(u16, u8)>) {
    let Ok(a) = &ctx.p.acpi else {
        return (None, None);
    };
    let sleep = a
        .fadt
        .sleep_control
        .filter(|g| g.space_id == GAS_IO)
        .map(|g| g.address as u16);
    let reset = a
        .fadt
        .reset
        .filter(|(g, _)| g.space_id == GAS_IO)
        .map(|(g, v)| (g.address as u16, v));
    (sleep, reset)
}

/// Runs the chaos; returns 0 if the devices work afterwards and every
/// unclaimed read returned all ones.
pub fn run(ctx: &mut Ctx) -> u32 {
    let p = ctx.params;
    let mut rng = Rng(p.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
    let (sleep, reset) = acpi_ports(ctx);
    let (slp_typ_s5, pm_base) = (ctx.p.s5_slp_typ & 7, sleep.unwrap_or(0x600));
    let gaps = Gaps::find(ctx);
    let mut t = Tally::default();
    // The UART's DLAB, as the chaos left it (offset 0 is then the divisor,
    // not the transmitter).
    let mut dlab = false;
    for _ in 0..p.count {
        let write = rng.below(2) == 0;
        let v = rng.next();
        let width = 1u16 << rng.below(3);
        match rng.below(16) {
            // COM1, every register.
            0..=3 => {
                let off = rng.below(8) as u16;
                let port = COM1 + off;
                if write {
                    let mut v = v as u32;
                    if off == 3 {
                        dlab = v & 0x80 != 0;
                    }
                    if off == 0 && !dlab {
                        v = (v & !0xff) | u32::from(b'a' + (v as u8 % 26));
                    }
                    pio_write(port, width, v);
                } else {
                    pio_read(port, width);
                }
                t.pio += 1;
            }
            // The i8042's data and command ports, never its reset command.
            4 | 5 => {
                let port = I8042 + rng.below(5) as u16;
                if kernel_port(port, width) {
                    continue;
                }
                if write {
                    let mut v = v as u32;
                    if port == I8042_CMD && v as u8 == KBD_RESET {
                        v ^= 1;
                    }
                    pio_write(port, width, v);
                } else {
                    pio_read(port, width);
                }
                t.pio += 1;
            }
            // The debug port.
            6 => {
                if write {
                    pio_write(DEBUG_PORT, width, v as u32);
                } else {
                    pio_read(DEBUG_PORT, width);
                }
                t.pio += 1;
            }
            // The ACPI block: sleep control (other sleep types with SLP_EN
            // on purpose, S5 only without it), status, reset (never the
            // reset value), the spare port.
            7 | 8 => {
                let port = pm_base + rng.below(4) as u16;
                if write {
                    let mut v = v as u32;
                    if Some(port) == sleep {
                        if rng.below(4) == 0 {
                            // A sleep state the VMM does not implement.
                            let typ = [0u8, 1, 2, 3, 4, 6, 7][rng.below(7) as usize];
                            v = (v & !0xff) | u32::from((typ << 2) | SLP_EN);
                        }
                        if (v as u8 >> 2) & 7 == slp_typ_s5 && v as u8 & SLP_EN != 0 {
                            v &= !u32::from(SLP_EN);
                        }
                    }
                    if let Some((rp, rv)) = reset {
                        if port == rp && v as u8 == rv {
                            v ^= 1;
                        }
                    }
                    pio_write(port, width, v);
                } else {
                    pio_read(port, width);
                }
                t.pio += 1;
            }
            // Ports nobody emulates.
            9..=11 => {
                let port = if rng.below(3) == 0 {
                    0x1000 + rng.below(0xf000 - 4) as u16
                } else {
                    let (s, l) = NOBODY[rng.below(NOBODY.len() as u64) as usize];
                    s + rng.below(u64::from(l)) as u16
                };
                // Accesses that start at one of the devices' ports are theirs:
                // only the start port counts for the bus.
                let start_is_device = (COM1..COM1 + 8).contains(&port)
                    || (I8042..=I8042_CMD).contains(&port)
                    || port == DEBUG_PORT
                    || (pm_base..pm_base + 4).contains(&port);
                if kernel_port(port, width) || start_is_device {
                    continue;
                }
                if write {
                    pio_write(port, width, v as u32);
                } else {
                    let r = pio_read(port, width);
                    t.check_unclaimed(u64::from(port), u64::from(width), u64::from(r));
                }
                t.pio += 1;
            }
            // MMIO in the gaps.
            _ => {
                let width = 1u64 << rng.below(4);
                let Some(addr) = gaps.pick(&mut rng, width) else {
                    continue;
                };
                if write {
                    mmio_write(addr, width, v);
                } else {
                    let r = mmio_read(addr, width);
                    t.check_unclaimed(addr, width, r);
                }
                t.mmio += 1;
            }
        }
    }
    // The console back to 8N1 without loopback, and a fresh line after
    // whatever letters the chaos sent.
    Console::init();
    Console::write_bytes(b"\r\n");
    outb(COM1 + 7, 0x5a);
    let scratch = inb(COM1 + 7);
    let lsr = inb(COM1 + 5);
    let com1_ok = scratch == 0x5a && lsr != 0xff && lsr & 0x20 != 0;
    outb(DEBUG_PORT, 0x42);
    let debug_ok = inb(DEBUG_PORT) == 0x42;
    let i8042_status = inb(I8042_CMD);
    let pm_status = inb(pm_base + 1);
    let ok = com1_ok && debug_ok && i8042_status == 0 && pm_status == 0 && t.unclaimed_bad == 0;
    let (bad_at, bad_v) = t.first_bad.unwrap_or((0, 0));
    out!(
        "PROBE pio-chaos seed={} count={} pio={} mmio={} gaps={} unclaimed_reads={} unclaimed_bad={} first_bad={:#x}={:#x} com1={} debug_port={} i8042_status={:#04x} pm_status={:#04x} status={}",
        p.seed,
        p.count,
        t.pio,
        t.mmio,
        gaps.count,
        t.unclaimed_reads,
        t.unclaimed_bad,
        bad_at,
        bad_v,
        if com1_ok { "ok" } else { "bad" },
        if debug_ok { "ok" } else { "bad" },
        i8042_status,
        pm_status,
        if ok { "ok" } else { "bad" }
    );
    u32::from(!ok)
}
