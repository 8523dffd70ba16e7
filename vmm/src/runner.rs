// SPDX-License-Identifier: Apache-2.0
//! The main loop: waits on the VM's event queue, host signals and console input, and turns
//! guest requests (poweroff, reset) and host requests (SIGTERM, Ctrl-A x) into VM operations.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::Receiver;

use devices::{VmEvent, VmEventSink};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::terminal::Terminal;

use crate::vcpu::{chain, install_kick_handler, VcpuError};
use crate::vm::{SerialMode, Vm, VmConfig, VmError};

/// Errors of the main loop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Building or operating the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Signal handling could not be set up.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// epoll failed.
    #[error("Main loop epoll failed")]
    Epoll(#[source] std::io::Error),
    /// Termination signal handling could not be set up.
    #[error("Cannot set up handling of SIGTERM/SIGINT")]
    Signals(#[source] std::io::Error),
    /// The guest or a vCPU hit an unrecoverable error.
    #[error("{0}")]
    Guest(String),
}

/// Options of a run beyond the VM's configuration.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Exit instead of resetting.
    pub no_reboot: bool,
    /// Start with the vCPUs parked.
    pub paused: bool,
}

/// The eventfd that the SIGTERM/SIGINT handler writes.
static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_terminate(signum: libc::c_int) {
    let fd = SIGNAL_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let value = u64::from(signum as u32);
        // SAFETY: write(2) is async-signal-safe; the buffer is a live local of 8 bytes and the
        // fd is an eventfd that stays open for the life of the process.
        unsafe { libc::write(fd, (&value as *const u64).cast(), 8) };
    }
}

fn install_terminate_handlers(fd: &EventFd) -> Result<(), RunError> {
    SIGNAL_FD.store(fd.as_raw_fd(), Ordering::Relaxed);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; we set a handler that only calls
        // async-signal-safe functions, and check the return value.
        let ret = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_terminate as usize;
            act.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut())
        };
        if ret != 0 {
            return Err(RunError::Signals(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Puts the controlling terminal in raw mode for the guest console and restores it on drop.
struct RawTerminal {
    active: bool,
}

impl RawTerminal {
    fn enter(serial: &SerialMode) -> Self {
        let stdin = std::io::stdin().lock();
        let active = *serial == SerialMode::Stdio
            && std::io::IsTerminal::is_terminal(&std::io::stdin())
            && stdin.set_raw_mode().is_ok();
        Self { active }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if self.active {
            // Nothing more can be done if restoring fails while exiting.
            let _ = std::io::stdin().lock().set_canon_mode();
        }
    }
}

/// Console escape: Ctrl-A, then x to quit (as QEMU's -nographic), Ctrl-A again for a literal.
#[derive(Default)]
struct Escape {
    pending: bool,
}

enum ConsoleAction {
    Forward(Vec<u8>),
    Quit,
}

impl Escape {
    const CTRL_A: u8 = 0x01;

    fn filter(&mut self, input: &[u8]) -> ConsoleAction {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.pending {
                self.pending = false;
                match b {
                    b'x' | b'X' => return ConsoleAction::Quit,
                    Self::CTRL_A => out.push(b),
                    _ => {}
                }
            } else if b == Self::CTRL_A {
                self.pending = true;
            } else {
                out.push(b);
            }
        }
        ConsoleAction::Forward(out)
    }
}

const TOKEN_EVENTS: u64 = 1;
const TOKEN_SIGNAL: u64 = 2;
const TOKEN_STDIN: u64 = 3;

fn epoll_add(epoll_fd: RawFd, fd: RawFd, token: u64) -> Result<(), RunError> {
    epoll::ctl(
        epoll_fd,
        epoll::ControlOptions::EPOLL_CTL_ADD,
        fd,
        epoll::Event::new(epoll::Events::EPOLLIN, token),
    )
    .map_err(RunError::Epoll)
}

/// Builds and runs the VM until it powers off or is told to stop; returns the exit code.
///
/// # Errors
/// Fails when the VM cannot be built, or stops on an unrecoverable guest error.
pub fn run(config: &VmConfig, options: &RunOptions) -> Result<i32, RunError> {
    let (events, rx, wake) = VmEventSink::new().map_err(VmError::EventFd)?;
    install_kick_handler()?;
    let signal_fd = EventFd::new(EFD_NONBLOCK).map_err(RunError::Signals)?;
    install_terminate_handlers(&signal_fd)?;
    let mut vm = Vm::new(config, &events)?;
    let _terminal = RawTerminal::enter(&config.serial);

    let epoll_fd = epoll::create(true).map_err(RunError::Epoll)?;
    epoll_add(epoll_fd, wake.as_raw_fd(), TOKEN_EVENTS)?;
    epoll_add(epoll_fd, signal_fd.as_raw_fd(), TOKEN_SIGNAL)?;
    let console = config.serial == SerialMode::Stdio;
    if console {
        // stdin may be a file or /dev/null that epoll refuses; then there is no console input.
        let _ = epoll_add(epoll_fd, libc::STDIN_FILENO, TOKEN_STDIN);
    }

    vm.start(options.paused)?;
    let result = main_loop(&mut vm, &rx, &wake, &signal_fd, epoll_fd, options);
    vm.shutdown();
    // SAFETY: epoll_fd is a descriptor we created and no longer use.
    unsafe { libc::close(epoll_fd) };
    result
}

fn main_loop(
    vm: &mut Vm,
    rx: &Receiver<VmEvent>,
    wake: &EventFd,
    signal_fd: &EventFd,
    epoll_fd: RawFd,
    options: &RunOptions,
) -> Result<i32, RunError> {
    let mut ready = vec![epoll::Event::new(epoll::Events::empty(), 0); 8];
    let mut escape = Escape::default();
    let mut buf = [0u8; 256];
    loop {
        let n = match epoll::wait(epoll_fd, -1, &mut ready) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(RunError::Epoll(e)),
        };
        for ev in &ready[..n] {
            match ev.data {
                TOKEN_EVENTS => {
                    let _ = wake.read();
                    while let Ok(event) = rx.try_recv() {
                        match event {
                            VmEvent::PowerOff => return Ok(0),
                            VmEvent::Reset(_) if options.no_reboot => return Ok(0),
                            VmEvent::Reset(_) => {
                                vm.reset()?;
                                vm.resume();
                            }
                            VmEvent::Fatal(msg) => return Err(RunError::Guest(msg)),
                        }
                    }
                }
                TOKEN_SIGNAL => {
                    let _ = signal_fd.read();
                    return Ok(0);
                }
                TOKEN_STDIN => {
                    // SAFETY: reading into a live local buffer of the given length.
                    let got = unsafe {
                        libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len())
                    };
                    if got <= 0 {
                        // EOF or error: stop watching the console.
                        let _ = epoll::ctl(
                            epoll_fd,
                            epoll::ControlOptions::EPOLL_CTL_DEL,
                            libc::STDIN_FILENO,
                            epoll::Event::new(epoll::Events::empty(), 0),
                        );
                        continue;
                    }
                    match escape.filter(&buf[..got as usize]) {
                        ConsoleAction::Quit => return Ok(0),
                        ConsoleAction::Forward(bytes) => vm.serial_input(&bytes),
                    }
                }
                _ => {}
            }
        }
    }
}

/// Formats a run error for the one-line report on stderr.
pub fn describe(e: &RunError) -> String {
    chain(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences() {
        let mut e = Escape::default();
        match e.filter(b"ab\x01\x01c") {
            ConsoleAction::Forward(v) => assert_eq!(v, b"ab\x01c"),
            ConsoleAction::Quit => panic!("quit"),
        }
        match e.filter(b"\x01") {
            ConsoleAction::Forward(v) => assert!(v.is_empty()),
            ConsoleAction::Quit => panic!("quit"),
        }
        assert!(matches!(e.filter(b"x"), ConsoleAction::Quit));
    }
}
