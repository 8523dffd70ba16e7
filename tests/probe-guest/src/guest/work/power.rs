//! `idle`, `reboot` and `triple-fault`.

use super::Ctx;
use crate::guest::arch;
use crate::out;

/// Halts (in ring 0, `sti; hlt`) until the GED interrupt (power button)
/// arrives; then prints `PROBE power-button` and returns, so that the probe
/// powers off. Without a GED it halts until the VMM stops it.
pub fn idle(ctx: &mut Ctx) -> u32 {
    ctx.apic.stop_tick();
    let ged = ctx.p.ged_irq;
    let vector = ged.and_then(|i| ctx.apic.route(i));
    // Count from before the line below: the host may press the button as soon as it reads
    // it, and the interrupt can land before the loop starts.
    let base = vector.map(arch::irq_count);
    match (ged, vector) {
        (Some(i), Some(_)) => out!("PROBE idle ged_gsi={}", i.gsi),
        _ => out!("PROBE idle ged_gsi=none"),
    }
    loop {
        let seen = arch::irq_total();
        if let (Some(v), Some(b)) = (vector, base) {
            if arch::irq_count(v) != b {
                // A level-triggered GED stays masked (by its stub): the
                // probe powers off next anyway.
                out!("PROBE power-button");
                return 0;
            }
        }
        arch::wait_for_interrupt(seen);
    }
}

/// Prints `PROBE reboot method=acpi` and writes the FADT reset register;
/// falls back to a triple fault when there is none or it had no effect.
pub fn reboot(ctx: &mut Ctx) -> u32 {
    let has_reset = matches!(&ctx.p.acpi, Ok(a) if a.fadt.reset.is_some());
    if has_reset {
        out!("PROBE reboot method=acpi");
        ctx.p.reset();
        out!("PROBE reboot acpi-reset-ignored");
    }
    out!("PROBE reboot method=triple-fault");
    arch::triple_fault()
}

/// The i8042 status (read) and command (write) port.
const I8042_COMMAND: u16 = 0x64;
/// i8042 status bit 1: the controller has not taken the last byte yet.
const I8042_INPUT_FULL: u8 = 1 << 1;
/// i8042 command: pulse the CPU reset line.
const I8042_RESET_CPU: u8 = 0xfe;

/// Prints `PROBE kbd-reset` and pulses the reset line through the i8042 controller, as
/// Linux's `reboot=k` does; falls back to a triple fault when that had no effect.
pub fn kbd_reset() -> u32 {
    out!("PROBE kbd-reset");
    for _ in 0..1000 {
        if arch::inb(I8042_COMMAND) & I8042_INPUT_FULL == 0 {
            break;
        }
        crate::guest::platform::spin_ms(1);
    }
    arch::outb(I8042_COMMAND, I8042_RESET_CPU);
    crate::guest::platform::spin_ms(100);
    out!("PROBE kbd-reset-ignored");
    arch::triple_fault()
}

/// Prints `PROBE triple-fault` and resets through a triple fault.
pub fn triple_fault() -> u32 {
    out!("PROBE triple-fault");
    arch::triple_fault()
}
