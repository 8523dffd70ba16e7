//! The probe guest: a tiny freestanding x86_64 guest that boots through the
//! Linux boot protocol (bzImage 16/32/64-bit entries) or PVH, sets up ring 0
//! minimally (entry.S) and runs its workloads in ring 3. See README.md.
#![no_std]
#![no_main]

mod guest;

use core::mem::MaybeUninit;
use core::ptr::addr_of_mut;
use guest::apic::Apic;
use guest::mem::Allocator;
use guest::platform::Platform;
use guest::work::{self, Ctx};
use guest::{console::Console, done, timer};
use probe_guest::bootinfo::EntryKind;
use probe_guest::cmdline::{self, CmdlineError};

static mut PLATFORM: MaybeUninit<Platform> = MaybeUninit::uninit();

/// The PC debug (POST code) port.
const DEBUG_PORT: u16 = 0x80;
/// The code written there once the probe is ready (Cloud Hypervisor's "userspace" code).
const READY_CODE: u8 = 0x41;

/// Ring-3 entry, called by `user_entry` in entry.S with the boot
/// information pointer and the entry kind.
#[no_mangle]
pub extern "C" fn probe_main(info: u64, kind: u64) -> ! {
    Console::init();
    let entry = EntryKind::from_raw(kind).unwrap_or(EntryKind::BzImage64);
    let platform = match Platform::discover(entry, info) {
        Ok(p) => p,
        Err(e) => {
            out!("PROBE ready entry={} cpus=0", entry.name());
            out!("PROBE error boot-info={:?} ptr={:#x}", e, info);
            done(2)
        }
    };
    // SAFETY: written once, here, before anything reads it; afterwards only
    // shared references exist.
    let p: &'static Platform = unsafe { (*addr_of_mut!(PLATFORM)).write(platform) };
    guest::set_platform(p);
    out!("PROBE ready entry={} cpus={}", entry.name(), p.cpus());
    // Boot-progress code 0x41 on the PC debug port: a VMM can timestamp "ready" itself.
    guest::arch::outb(DEBUG_PORT, READY_CODE);
    let params = match cmdline::parse(p.info.cmdline) {
        Ok(params) => params,
        Err(e) => {
            let mut l = guest::console::Line::new();
            let (what, word): (&str, &[u8]) = match e {
                CmdlineError::UnknownTest(w) => ("unknown-test", w),
                CmdlineError::UnknownParam(w) => ("unknown-param", w),
                CmdlineError::BadValue(w) => ("bad-value", w),
                CmdlineError::TooManyTests => ("too-many-tests", b""),
                CmdlineError::NoTest => ("no-test", b""),
            };
            let _ = core::fmt::Write::write_fmt(
                &mut l,
                format_args!("PROBE error cmdline={} word=", what),
            );
            l.push_bytes(word);
            l.finish();
            done(2)
        }
    };
    timer::calibrate();
    let apic = Apic::init(match &p.acpi {
        Ok(a) => a.madt.as_ref(),
        Err(_) => None,
    });
    let alloc = Allocator::new(&p.info);
    let mut ctx = Ctx::new(p, params, alloc, apic, info);
    let rc = work::run_all(&mut ctx);
    done(rc)
}
