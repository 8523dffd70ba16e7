//! Local APIC and I/O APIC programming (xAPIC MMIO, from ring 3).
//!
//! Vectors: 0x30 + GSI for I/O APIC pins (GSI 0-76), 0x7d the wake-up IPI
//! of blk-bench's worker CPUs, 0x7e LAPIC timer tick, 0x7f spurious.

use super::arch::{
    self, mmio_read32, mmio_write32, IRQ_BASE, SPURIOUS_VECTOR, TIMER_VECTOR, WAKE_VECTOR,
};
use probe_guest::acpi::{IoApic, Madt, MAX_IOAPICS};
use probe_guest::resource::Irq;

const LAPIC_ID: u64 = 0x20;
const LAPIC_TPR: u64 = 0x80;
const LAPIC_EOI: u64 = 0xb0;
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_LVT_TIMER: u64 = 0x320;
const LAPIC_LVT_LINT0: u64 = 0x350;
const LAPIC_LVT_LINT1: u64 = 0x360;
const LAPIC_TIMER_INIT: u64 = 0x380;
const LAPIC_TIMER_DIV: u64 = 0x3e0;
const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;

/// The interrupt controllers found in the MADT.
pub struct Apic {
    lapic: u64,
    ioapics: [IoApic; MAX_IOAPICS],
    ioapic_count: usize,
    bsp_id: u32,
}

impl Apic {
    /// Enables the local APIC (spurious vector 0x3f), masks LINT0/LINT1 (the
    /// 8259 is masked by entry.S) and tells the stubs where EOI is.
    pub fn init(madt: Option<&Madt>) -> Self {
        let (lapic, ioapics, ioapic_count) = match madt {
            Some(m) => (m.lapic_address, m.ioapics, m.ioapic_count),
            None => (
                0xfee0_0000,
                [IoApic {
                    id: 0,
                    address: 0xfec0_0000,
                    gsi_base: 0,
                }; MAX_IOAPICS],
                1,
            ),
        };
        arch::set_lapic_eoi(lapic + LAPIC_EOI);
        Self::setup_local(lapic);
        let bsp_id = mmio_read32(lapic + LAPIC_ID) >> 24;
        Self {
            lapic,
            ioapics,
            ioapic_count,
            bsp_id,
        }
    }

    /// Local APIC id of this CPU.
    pub fn bsp_id(&self) -> u32 {
        self.bsp_id
    }

    fn ioapic_for(&self, gsi: u32) -> Option<(u64, u32)> {
        self.ioapics[..self.ioapic_count].iter().find_map(|io| {
            let base = u64::from(io.address);
            let pins = ((arch::ioapic_read(base, 1) >> 16) & 0xff) + 1;
            (gsi >= io.gsi_base && gsi < io.gsi_base + pins).then_some((base, gsi - io.gsi_base))
        })
    }

    fn write_redir(base: u64, pin: u32, low: u32, high: u32) {
        arch::ioapic_write(base, 0x10 + 2 * pin + 1, high);
        arch::ioapic_write(base, 0x10 + 2 * pin, low);
    }

    /// Routes `irq` to this CPU on vector `IRQ_BASE + gsi` with the trigger
    /// mode and polarity from ACPI, unmasked. Returns the vector, or `None`
    /// when the GSI has no vector or no I/O APIC serves it.
    pub fn route(&self, irq: Irq) -> Option<u8> {
        let vector = IRQ_BASE.checked_add(u8::try_from(irq.gsi).ok()?)?;
        if vector >= WAKE_VECTOR {
            return None;
        }
        let (base, pin) = self.ioapic_for(irq.gsi)?;
        let mut low = u32::from(vector);
        if irq.active_low {
            low |= 1 << 13;
        }
        if !irq.edge {
            low |= 1 << 15;
        }
        arch::set_level(
            vector,
            (!irq.edge).then_some((base, (0x10 + 2 * pin) as u8, low)),
        );
        Self::write_redir(base, pin, low, self.bsp_id << 24);
        Some(vector)
    }

    /// Unmasks a level-triggered pin that its stub masked (after the
    /// device was told to lower the line).
    pub fn unmask_level(vector: u8, irq: Irq, ioapic_base: u64, pin: u32) {
        let mut low = u32::from(vector) | (1 << 15);
        if irq.active_low {
            low |= 1 << 13;
        }
        arch::ioapic_write(ioapic_base, 0x10 + 2 * pin, low);
    }

    /// The I/O APIC base and pin serving `gsi`.
    pub fn pin_of(&self, gsi: u32) -> Option<(u64, u32)> {
        self.ioapic_for(gsi)
    }

    /// Masks the pin of `gsi`.
    pub fn mask(&self, gsi: u32) {
        if let Some((base, pin)) = self.ioapic_for(gsi) {
            Self::write_redir(base, pin, LVT_MASKED, 0);
        }
    }

    /// Starts a periodic tick on `TIMER_VECTOR` (only used to wake up the
    /// wait loops so that they can check timeouts; its rate is unimportant:
    /// about 60 Hz with KVM's 1 GHz APIC bus).
    pub fn start_tick(&self) {
        mmio_write32(self.lapic + LAPIC_TIMER_DIV, 0x3); // divide by 16
        mmio_write32(
            self.lapic + LAPIC_LVT_TIMER,
            LVT_PERIODIC | u32::from(TIMER_VECTOR),
        );
        mmio_write32(self.lapic + LAPIC_TIMER_INIT, 1_000_000);
    }

    /// Stops the tick.
    pub fn stop_tick(&self) {
        mmio_write32(
            self.lapic + LAPIC_LVT_TIMER,
            LVT_MASKED | u32::from(TIMER_VECTOR),
        );
        mmio_write32(self.lapic + LAPIC_TIMER_INIT, 0);
    }

    /// Sends an IPI (ICR low/high) and waits for the delivery status to clear.
    pub fn send_ipi(&self, dest: u32, low: u32) {
        Self::ipi(self.lapic, dest, low)
    }

    /// `send_ipi` through the LAPIC registers at `lapic` (every CPU sees its
    /// own LAPIC there).
    pub fn ipi(lapic: u64, dest: u32, low: u32) {
        mmio_write32(lapic + 0x310, dest << 24);
        mmio_write32(lapic + 0x300, low);
        for _ in 0..100_000 {
            if mmio_read32(lapic + 0x300) & (1 << 12) == 0 {
                break;
            }
            arch::pause();
        }
    }

    /// LAPIC register base.
    pub fn base(&self) -> u64 {
        self.lapic
    }

    /// Sets up the calling CPU's local APIC as `init` does for the boot CPU
    /// (enabled, LINT0/LINT1 and timer masked, TPR 0) and returns a handle
    /// for it without I/O APICs (a worker CPU routes no pins).
    pub fn init_local(lapic: u64) -> Self {
        Self::setup_local(lapic);
        Self {
            lapic,
            ioapics: [IoApic {
                id: 0,
                address: 0,
                gsi_base: 0,
            }; MAX_IOAPICS],
            ioapic_count: 0,
            bsp_id: mmio_read32(lapic + LAPIC_ID) >> 24,
        }
    }

    fn setup_local(lapic: u64) {
        mmio_write32(lapic + LAPIC_LVT_LINT0, LVT_MASKED);
        mmio_write32(lapic + LAPIC_LVT_LINT1, LVT_MASKED);
        mmio_write32(
            lapic + LAPIC_LVT_TIMER,
            LVT_MASKED | u32::from(TIMER_VECTOR),
        );
        mmio_write32(lapic + LAPIC_TPR, 0);
        mmio_write32(lapic + LAPIC_SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
    }
}
