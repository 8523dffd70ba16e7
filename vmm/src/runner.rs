// SPDX-License-Identifier: Apache-2.0
//! The main loop: waits on the VM's event queue, the QMP monitor's in-band requests, host
//! signals and console input, and turns each into an operation on the [`Machine`]. The main
//! loop thread owns the machine; running here is what "holding the big lock" means.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;

use devices::{VmEvent, VmEventSink};
use monitor::{
    reply, Inband, Monitor, MonitorConfig, MonitorError, MonitorHandle, SocketSpec, ToMain,
};
use qapi::types::ShutdownCause;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::terminal::Terminal;

use crate::machine::{Exit, Machine, SharedRunState};
use crate::qmp::{blockdev_names, version_info, OobServer};
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
    /// The QMP monitor could not start.
    #[error(transparent)]
    Monitor(#[from] MonitorError),
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
    /// Start with the vCPUs parked (`prelaunch` until `cont`).
    pub paused: bool,
    /// `--name`.
    pub name: Option<String>,
    /// QMP sockets.
    pub qmp: Vec<SocketSpec>,
}

/// The eventfd that the SIGTERM/SIGINT handler writes.
static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_terminate(signum: libc::c_int) {
    let fd = SIGNAL_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let value = u64::from(signum.unsigned_abs());
        // SAFETY: write(2) is async-signal-safe; the buffer is a live local of 8 bytes and the
        // fd is an eventfd that stays open for the life of the process.
        unsafe { libc::write(fd, (&value as *const u64).cast(), 8) };
    }
}

fn install_terminate_handlers(fd: &EventFd) -> Result<(), RunError> {
    SIGNAL_FD.store(fd.as_raw_fd(), Ordering::Relaxed);
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
const TOKEN_MONITOR: u64 = 4;

fn epoll_add(epoll_fd: RawFd, fd: RawFd, token: u64) -> Result<(), RunError> {
    epoll::ctl(
        epoll_fd,
        epoll::ControlOptions::EPOLL_CTL_ADD,
        fd,
        epoll::Event::new(epoll::Events::EPOLLIN, token),
    )
    .map_err(RunError::Epoll)
}

/// The main loop's inputs.
struct Inputs {
    vm_events: Receiver<VmEvent>,
    vm_wake: EventFd,
    signal_fd: EventFd,
    monitor_rx: Receiver<ToMain>,
    monitor_wake: EventFd,
    epoll_fd: RawFd,
}

/// Builds and runs the VM until it powers off or is told to stop; returns the exit code.
///
/// # Errors
/// Fails when the VM cannot be built, or stops on an unrecoverable guest error without a
/// monitor to report it to.
pub fn run(config: &VmConfig, options: &RunOptions) -> Result<i32, RunError> {
    let (events, vm_events, vm_wake) = VmEventSink::new().map_err(VmError::EventFd)?;
    install_kick_handler()?;
    let signal_fd = EventFd::new(EFD_NONBLOCK).map_err(RunError::Signals)?;
    install_terminate_handlers(&signal_fd)?;
    let vm = Vm::new(config, &events)?;

    let state = Arc::new(SharedRunState::default());
    let (monitor_tx, monitor_rx) = channel();
    let monitor_wake = EventFd::new(EFD_NONBLOCK).map_err(RunError::Signals)?;
    let monitor = if options.qmp.is_empty() {
        None
    } else {
        Some(Monitor::start(MonitorConfig {
            sockets: options.qmp.clone(),
            version: serde_json::to_value(version_info()).unwrap_or_default(),
            oob: Arc::new(OobServer::new(
                state.clone(),
                options.name.clone(),
                blockdev_names(&vm),
            )),
            to_main: monitor_tx,
            main_wake: monitor_wake.try_clone().map_err(VmError::EventFd)?,
        })?)
    };
    let mut machine = Machine::new(
        vm,
        options.no_reboot,
        options.name.clone(),
        state,
        monitor.as_ref().map(Monitor::handle),
    );
    let _terminal = RawTerminal::enter(&config.serial);

    let epoll_fd = epoll::create(true).map_err(RunError::Epoll)?;
    let inputs = Inputs {
        vm_events,
        vm_wake,
        signal_fd,
        monitor_rx,
        monitor_wake,
        epoll_fd,
    };
    epoll_add(epoll_fd, inputs.vm_wake.as_raw_fd(), TOKEN_EVENTS)?;
    epoll_add(epoll_fd, inputs.signal_fd.as_raw_fd(), TOKEN_SIGNAL)?;
    epoll_add(epoll_fd, inputs.monitor_wake.as_raw_fd(), TOKEN_MONITOR)?;
    if config.serial == SerialMode::Stdio {
        // stdin may be a file or /dev/null that epoll refuses; then there is no console input.
        let _ = epoll_add(epoll_fd, libc::STDIN_FILENO, TOKEN_STDIN);
    }

    machine.vm.start(true)?;
    let wait_for_client = options.qmp.iter().any(|s| s.wait);
    if !options.paused && !wait_for_client {
        machine.launch();
    }
    let result = main_loop(
        &mut machine,
        &inputs,
        monitor.as_ref().map(Monitor::handle),
        options,
        wait_for_client,
    );
    machine.vm.shutdown();
    // Dropping the monitor flushes the last replies and events, then closes the sockets.
    drop(monitor);
    // SAFETY: epoll_fd is a descriptor we created and no longer use.
    unsafe { libc::close(epoll_fd) };
    result
}

fn main_loop(
    machine: &mut Machine,
    inputs: &Inputs,
    monitor: Option<MonitorHandle>,
    options: &RunOptions,
    mut waiting_for_client: bool,
) -> Result<i32, RunError> {
    let mut ready = vec![epoll::Event::new(epoll::Events::empty(), 0); 8];
    let mut escape = Escape::default();
    let mut buf = [0u8; 256];
    loop {
        if let Some(Exit::Code(code)) = machine.exit() {
            return Ok(*code);
        }
        let n = match epoll::wait(inputs.epoll_fd, -1, &mut ready) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(RunError::Epoll(e)),
        };
        for ev in &ready[..n] {
            match ev.data {
                TOKEN_EVENTS => {
                    let _ = inputs.vm_wake.read();
                    while let Ok(event) = inputs.vm_events.try_recv() {
                        match event {
                            VmEvent::PowerOff => {
                                machine.shutdown(true, ShutdownCause::GuestShutdown, 0);
                            }
                            VmEvent::Reset(_) => {
                                machine.reset(true, ShutdownCause::GuestReset)?;
                            }
                            VmEvent::Fatal(msg) => {
                                let keep = monitor.is_some();
                                machine.internal_error(keep);
                                if !keep {
                                    return Err(RunError::Guest(msg));
                                }
                                eprintln!("vmm: {msg}");
                            }
                        }
                        if machine.exit().is_some() {
                            break;
                        }
                    }
                }
                TOKEN_SIGNAL => {
                    let _ = inputs.signal_fd.read();
                    machine.shutdown(false, ShutdownCause::HostSignal, 0);
                }
                TOKEN_MONITOR => {
                    let _ = inputs.monitor_wake.read();
                    while let Ok(msg) = inputs.monitor_rx.try_recv() {
                        match msg {
                            ToMain::WaitedClientConnected => {
                                if waiting_for_client {
                                    waiting_for_client = false;
                                    if !options.paused {
                                        machine.launch();
                                    }
                                }
                            }
                            ToMain::Request { session, item } => {
                                let answer = execute(machine, item);
                                if let Some(m) = &monitor {
                                    m.respond(session, answer);
                                }
                            }
                        }
                    }
                }
                TOKEN_STDIN => {
                    // SAFETY: reading into a live local buffer of the given length.
                    let got = unsafe {
                        libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len())
                    };
                    if got <= 0 {
                        // EOF or error: stop watching the console.
                        let _ = epoll::ctl(
                            inputs.epoll_fd,
                            epoll::ControlOptions::EPOLL_CTL_DEL,
                            libc::STDIN_FILENO,
                            epoll::Event::new(epoll::Events::empty(), 0),
                        );
                        continue;
                    }
                    match escape.filter(&buf[..got.unsigned_abs()]) {
                        ConsoleAction::Quit => {
                            machine.shutdown(false, ShutdownCause::HostUi, 0);
                        }
                        ConsoleAction::Forward(bytes) => machine.vm.serial_input(&bytes),
                    }
                }
                _ => {}
            }
        }
    }
}

/// Runs one in-band item and returns the message for the client (None when a successful
/// command sends no reply).
fn execute(machine: &mut Machine, item: Inband) -> Option<serde_json::Value> {
    match item {
        Inband::Reply(v) => Some(v),
        Inband::Execute {
            command,
            arguments,
            id,
        } => {
            let result = qapi::commands::dispatch(machine, &command, arguments);
            let success_response =
                qapi::commands::command_info(&command).is_none_or(|c| c.success_response);
            if result.is_ok() && !success_response {
                None
            } else {
                Some(reply(result, id))
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
