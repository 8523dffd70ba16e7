//! The probe guest proper (ring 3 after entry.S).

pub mod apic;
pub mod arch;
pub mod blk;
pub mod console;
pub mod mem;
pub mod platform;
pub mod rt;
pub mod timer;
pub mod virtio;
pub mod work;

use core::sync::atomic::{AtomicPtr, Ordering};
use platform::Platform;

/// The discovered platform, for `done` (power off) from anywhere.
static PLATFORM: AtomicPtr<Platform> = AtomicPtr::new(core::ptr::null_mut());

/// Registers the platform used by `done` to power off.
pub fn set_platform(p: &'static Platform) {
    PLATFORM.store(p as *const Platform as *mut Platform, Ordering::Release);
}

/// Prints `PROBE-DONE rc=N` and powers the machine off (ACPI S5). If that
/// does not work, resets through a triple fault so that the VMM still stops.
pub fn done(rc: u32) -> ! {
    crate::out!("PROBE-DONE rc={}", rc);
    let p = PLATFORM.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: only ever set from a `&'static Platform`.
        unsafe { &*p }.poweroff();
    }
    crate::out!("PROBE poweroff-failed");
    arch::triple_fault()
}

/// Ring-3 reporter of unexpected exceptions (entered from the ring-0 fault stub).
#[no_mangle]
pub extern "C" fn probe_fault_report() -> ! {
    use arch::*;
    // SAFETY: the statics are plain u64s written by the fault stub.
    let (v, e, rip, cs, cr2) = unsafe {
        (
            fault_word(&probe_fault_vector),
            fault_word(&probe_fault_error),
            fault_word(&probe_fault_rip),
            fault_word(&probe_fault_cs),
            fault_word(&probe_fault_cr2),
        )
    };
    crate::out!(
        "PROBE fault vector={} rip={:#x} err={:#x} cs={:#x} cr2={:#x}",
        v,
        rip,
        e,
        cs,
        cr2
    );
    done(3)
}
