//! The bits of a runtime a freestanding Rust binary needs: the memory
//! functions the compiler calls, and the panic handler.

use core::arch::asm;

/// `memcpy` for compiler-generated calls (ring 3 only: uses `rep movsb`).
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid and disjoint.
    unsafe {
        asm!("rep movsb", inout("rdi") dst => _, inout("rsi") src => _, inout("rcx") n => _, options(nostack, preserves_flags));
    }
    dst
}

/// `memmove` for compiler-generated calls.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
        // SAFETY: forward copy is correct when dst is below src or disjoint.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: backward copy (direction flag set, then cleared again) for
    // overlapping ranges with dst above src; both ranges are valid.
    unsafe {
        asm!(
            "std", "rep movsb", "cld",
            inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _, inout("rcx") n => _,
            options(nostack)
        );
    }
    dst
}

/// `memset` for compiler-generated calls.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is valid.
    unsafe {
        asm!("rep stosb", inout("rdi") dst => _, inout("rcx") n => _, in("al") c as u8, options(nostack, preserves_flags));
    }
    dst
}

/// `memcmp` for compiler-generated calls.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller guarantees both ranges are valid for n bytes.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// `bcmp` for compiler-generated calls.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let mut line = super::console::Line::new();
    let _ = core::fmt::Write::write_fmt(&mut line, format_args!("PROBE panic {}", info));
    line.finish();
    super::done(3)
}

/// Referenced by the precompiled `core` (built for unwinding); never called
/// because the probe is built with `panic = "abort"`.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}
