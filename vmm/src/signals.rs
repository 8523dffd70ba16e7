// SPDX-License-Identifier: Apache-2.0
//! Every signal the VMM handles, in one place:
//!
//! - the vCPU **kick** ([`kick_signal`], a real-time signal): its handler sets
//!   `immediate_exit` in the receiving thread's `kvm_run` page (registered with
//!   [`set_kick_target`]), so a pause request cannot be lost between a vCPU thread's last
//!   check and its next `KVM_RUN`;
//! - the **termination** signals SIGTERM, SIGINT and SIGHUP: while the VM is being built
//!   (opening a user's file may block) they end vmm at once with one line and exit code 1;
//!   from [`main_loop_takes_over`] on, their handler writes the signal number to an eventfd
//!   that the main loop waits on, so the VM shuts down cleanly (`SHUTDOWN` with reason
//!   `host-signal`, terminal restored, exit 0).
//!
//! Both handlers only perform async-signal-safe operations (a byte store, a `write(2)`).

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// Errors installing signal handlers.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The kick signal handler could not be installed.
    #[error("Cannot install the vCPU kick signal handler")]
    Kick(#[source] vmm_sys_util::errno::Error),
    /// A termination signal handler could not be installed.
    #[error("Cannot set up handling of SIGTERM/SIGINT/SIGHUP")]
    Terminate(#[source] std::io::Error),
}

/// The real-time signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, for the kick signal handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    IMMEDIATE_EXIT.with(|p| {
        let ptr = p.get();
        if !ptr.is_null() {
            // SAFETY: the pointer was registered by this thread with `set_kick_target` from its
            // live kvm_run mapping, which stays mapped until the thread clears it again, and a
            // byte store is async-signal-safe.
            unsafe { std::ptr::write_volatile(ptr, 1) };
        }
    });
}

/// Installs the kick handler; call once before starting vCPU threads.
///
/// # Errors
/// Fails when the signal handler cannot be installed.
pub fn install_kick_handler() -> Result<(), SignalError> {
    register_signal_handler(kick_signal(), handle_kick).map_err(SignalError::Kick)
}

/// Registers (or, with a null pointer, clears) the calling thread's `kvm_run.immediate_exit`
/// byte as the target of the kick signal. A vCPU thread sets it before its first `KVM_RUN`
/// and clears it before its `kvm_run` mapping goes away.
pub fn set_kick_target(immediate_exit: *mut u8) {
    IMMEDIATE_EXIT.with(|p| p.set(immediate_exit));
}

/// The eventfd that the termination handler writes.
static TERMINATE_FD: AtomicI32 = AtomicI32::new(-1);
/// Set once the main loop will read [`TERMINATE_FD`]; before that (while the VM is being
/// built, when opening a user's file may block) a termination signal ends the process at once.
static LOOP_TAKES_OVER: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(signum: libc::c_int) {
    if !LOOP_TAKES_OVER.load(Ordering::Acquire) {
        let msg: &[u8] = match signum {
            libc::SIGINT => b"vmm: interrupted (SIGINT) before the VM started\n",
            libc::SIGHUP => b"vmm: hung up (SIGHUP) before the VM started\n",
            _ => b"vmm: terminated (SIGTERM) before the VM started\n",
        };
        // SAFETY: write(2) and _exit(2) are async-signal-safe; the message is a static buffer.
        // Nothing needs cleaning up yet: no socket is bound and the terminal is untouched.
        unsafe {
            libc::write(libc::STDERR_FILENO, msg.as_ptr().cast(), msg.len());
            libc::_exit(1);
        }
    }
    let fd = TERMINATE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let value = u64::from(signum.unsigned_abs());
        // SAFETY: write(2) is async-signal-safe; the buffer is a live local of 8 bytes and the
        // fd is an eventfd that stays open for the life of the process.
        unsafe { libc::write(fd, (&value as *const u64).cast(), 8) };
    }
}

/// From now on termination signals are queued for the main loop (which shuts the VM down
/// cleanly) instead of ending the process. Call once nothing before the main loop can block.
pub fn main_loop_takes_over() {
    LOOP_TAKES_OVER.store(true, Ordering::Release);
}

/// Makes SIGTERM, SIGINT and SIGHUP write to `fd` (an eventfd that must stay open for the
/// rest of the process) instead of killing the process.
///
/// # Errors
/// Fails when `sigaction` refuses a handler.
pub fn install_terminate_handlers(fd: &EventFd) -> Result<(), SignalError> {
    TERMINATE_FD.store(fd.as_raw_fd(), Ordering::Relaxed);
    let handler: extern "C" fn(libc::c_int) = on_terminate;
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; we set a handler that only calls
        // async-signal-safe functions, and check the return value.
        let ret = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = handler as libc::sighandler_t;
            act.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut())
        };
        if ret != 0 {
            return Err(SignalError::Terminate(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}
