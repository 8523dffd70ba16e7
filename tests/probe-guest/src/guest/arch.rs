//! Ring-0 glue (entry.S) and the CPU primitives ring 3 uses: port and MMIO
//! access, the `ud2` call gate, interrupt bookkeeping shared with the ring-0
//! stubs, `rdtsc` and `cpuid`.

use core::arch::{asm, global_asm};
use core::ptr::{addr_of, addr_of_mut};

global_asm!(include_str!("entry.S"), options(att_syntax));

/// Number of IDT vectors (must match NVEC in entry.S).
pub const NVEC: usize = 128;
/// Vector of the LAPIC timer tick.
pub const TIMER_VECTOR: u8 = 0x7e;
/// Vector the LAPIC uses for spurious interrupts.
pub const SPURIOUS_VECTOR: u8 = 0x7f;
/// First vector used for IOAPIC pins (vector = IRQ_BASE + GSI).
pub const IRQ_BASE: u8 = 0x30;
/// Vector of the IPI that wakes a blk-bench worker CPU.
pub const WAKE_VECTOR: u8 = 0x7d;
/// Bench worker APs entry.S provides stacks, TSSs and per-CPU areas for (CPUs 1..=7).
pub const MAX_APS: usize = 7;
/// Words per per-CPU area (64 bytes, entry.S `PERCPU_SIZE`).
const PERCPU_WORDS: usize = 8;

extern "C" {
    static probe_irq_counts: [u64; NVEC];
    static mut probe_irq_level: [u8; NVEC];
    static mut probe_irq_ioapic: [u64; NVEC];
    static mut probe_irq_redir: [u32; NVEC];
    static mut probe_lapic_eoi: u64;
    /// Recorded by the ring-0 fault stub.
    pub static probe_fault_vector: u64;
    /// Recorded by the ring-0 fault stub.
    pub static probe_fault_error: u64;
    /// Recorded by the ring-0 fault stub.
    pub static probe_fault_rip: u64;
    /// Recorded by the ring-0 fault stub.
    pub static probe_fault_cs: u64;
    /// Recorded by the ring-0 fault stub.
    pub static probe_fault_cr2: u64;
    static probe_percpu: [u64; PERCPU_WORDS * (MAX_APS + 1)];
    static mut probe_ap_index: u64;
}

const GATE_WAIT: u64 = 1;
const GATE_RESET: u64 = 2;
const GATE_IOAPIC_WRITE: u64 = 4;
const GATE_IOAPIC_READ: u64 = 5;

/// Reads one of the fault words recorded by the ring-0 stub.
pub fn fault_word(w: &'static u64) -> u64 {
    // SAFETY: the reference points at an aligned u64 in the image's data.
    unsafe { core::ptr::read_volatile(w) }
}

/// Interrupts this CPU took so far: the count in its per-CPU area, which the
/// wait gate compares with.
pub fn irq_total() -> u64 {
    let v: u64;
    // SAFETY: GS base is this CPU's per-CPU area (entry.S sets it before ring 3
    // runs); word 0 is its interrupt count, written only by this CPU's stubs.
    unsafe {
        asm!("mov {}, qword ptr gs:[0]", out(reg) v, options(nostack, readonly, preserves_flags))
    };
    v
}

/// A fault that stopped bench worker CPU k (recorded by entry.S's `ap_fault`).
#[derive(Clone, Copy, Debug)]
pub struct CpuFault {
    /// Exception vector.
    pub vector: u64,
    /// Error code (0 if the exception has none).
    pub err: u64,
    /// Faulting instruction.
    pub rip: u64,
    /// CR2 at the time (page faults).
    pub cr2: u64,
}

/// The fault that stopped worker CPU `k` (1..=MAX_APS), if any.
pub fn cpu_fault(k: usize) -> Option<CpuFault> {
    let k = k.min(MAX_APS);
    let word = |i: usize| {
        // SAFETY: in-bounds word of per-CPU area k, written by that CPU's fault stub.
        unsafe { core::ptr::read_volatile(addr_of!(probe_percpu[PERCPU_WORDS * k + i])) }
    };
    let v = word(3);
    (v != 0).then(|| CpuFault {
        vector: v - 1,
        err: word(4),
        rip: word(5),
        cr2: word(6),
    })
}

/// The index the next AP started with INIT-SIPI-SIPI takes: 0 halts it after
/// it checked in (`probe.test=smp`), k in 1..=MAX_APS makes it bench worker k.
pub fn set_ap_index(k: u64) {
    // SAFETY: an aligned u64 in the image, read by the AP being started.
    unsafe { core::ptr::write_volatile(addr_of_mut!(probe_ap_index), k) }
}

/// Interrupts taken so far on `vector`.
pub fn irq_count(vector: u8) -> u64 {
    let v = (vector as usize).min(NVEC - 1);
    // SAFETY: in-bounds element of the stub's counter array.
    unsafe { core::ptr::read_volatile(addr_of!(probe_irq_counts[v])) }
}

/// Marks `vector` as level-triggered, delivered by redirection register
/// `index` (low word `redir`) of the I/O APIC at `ioapic`: its stub masks the
/// pin, and ring 3 unmasks it with [`ioapic_write`] once the device is quiet.
/// `None` makes the vector edge-triggered (the stub only EOIs).
pub fn set_level(vector: u8, level: Option<(u64, u8, u32)>) {
    let v = (vector as usize).min(NVEC - 1);
    let (base, index, redir) = level.unwrap_or((0, 0, 0));
    // SAFETY: in-bounds elements of the stub's tables; the stub reads them
    // only for this vector, which is not routed yet.
    unsafe {
        core::ptr::write_volatile(addr_of_mut!(probe_irq_ioapic[v]), base);
        core::ptr::write_volatile(addr_of_mut!(probe_irq_redir[v]), redir);
        core::ptr::write_volatile(addr_of_mut!(probe_irq_level[v]), index);
    }
}

/// Writes I/O APIC register `index` (atomically with respect to the stubs).
pub fn ioapic_write(base: u64, index: u32, value: u32) {
    let rcx = (u64::from(index) << 32) | u64::from(value);
    // SAFETY: handled by the #UD stub, which writes the two I/O APIC
    // registers with interrupts off and only changes RAX.
    unsafe {
        asm!("ud2", inout("rax") GATE_IOAPIC_WRITE => _, in("rdx") base, in("rcx") rcx, options(nostack))
    }
}

/// Reads I/O APIC register `index`.
pub fn ioapic_read(base: u64, index: u32) -> u32 {
    let v: u64;
    // SAFETY: as for `ioapic_write`.
    unsafe {
        asm!("ud2", inout("rax") GATE_IOAPIC_READ => v, in("rdx") base, in("rcx") u64::from(index), options(nostack))
    }
    v as u32
}

/// Tells the ring-0 stubs where the LAPIC EOI register is.
pub fn set_lapic_eoi(addr: u64) {
    // SAFETY: an aligned u64 in the image, read by the ring-0 stub.
    unsafe { core::ptr::write_volatile(addr_of_mut!(probe_lapic_eoi), addr) }
}

/// Sleeps in ring 0 (`sti; hlt`) unless an interrupt arrived after
/// `irq_total()` returned `seen`.
pub fn wait_for_interrupt(seen: u64) {
    // SAFETY: the gate is handled by the #UD stub, which only changes RAX.
    unsafe { asm!("ud2", inout("rax") GATE_WAIT => _, in("rdx") seen, options(nostack)) }
}

/// Resets the machine with a triple fault.
pub fn triple_fault() -> ! {
    // SAFETY: the gate never returns.
    unsafe { asm!("ud2", in("rax") GATE_RESET, options(nostack, noreturn)) }
}

/// Port input, 8 bits (allowed from ring 3 by the TSS I/O bitmap).
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port I/O has no memory effects on this guest.
    unsafe { asm!("in al, dx", out("al") v, in("dx") port, options(nostack, nomem)) };
    v
}

/// Port input, 16 bits.
pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: port I/O has no memory effects on this guest.
    unsafe { asm!("in ax, dx", out("ax") v, in("dx") port, options(nostack, nomem)) };
    v
}

/// Port input, 32 bits.
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: port I/O has no memory effects on this guest.
    unsafe { asm!("in eax, dx", out("eax") v, in("dx") port, options(nostack, nomem)) };
    v
}

/// Port output, 8 bits.
pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O has no memory effects on this guest.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nostack, nomem)) }
}

/// Port output, 16 bits.
pub fn outw(port: u16, v: u16) {
    // SAFETY: port I/O has no memory effects on this guest.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") v, options(nostack, nomem)) }
}

/// Port output, 32 bits.
pub fn outl(port: u16, v: u32) {
    // SAFETY: port I/O has no memory effects on this guest.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") v, options(nostack, nomem)) }
}

/// 32-bit MMIO read.
pub fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: callers pass device register addresses from ACPI, which the
    // page tables map (uncached in the 3-4 GiB hole, identity elsewhere).
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// 16-bit MMIO read.
pub fn mmio_read16(addr: u64) -> u16 {
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::read_volatile(addr as *const u16) }
}

/// 32-bit MMIO write.
pub fn mmio_write32(addr: u64, v: u32) {
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

/// 16-bit MMIO write.
pub fn mmio_write16(addr: u64, v: u16) {
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u16, v) }
}

/// 8-bit MMIO write.
pub fn mmio_write8(addr: u64, v: u8) {
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u8, v) }
}

/// Time stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc is allowed in ring 3 (CR4.TSD is clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// `cpuid` leaf `leaf`, subleaf 0: (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// A spin-loop hint.
pub fn pause() {
    core::hint::spin_loop();
}
