// SPDX-License-Identifier: Apache-2.0
//! The guest console on the VMM's terminal: raw mode while the VM runs (restored on every
//! exit path), stdin forwarded to COM1, and QEMU's `-nographic` escape (Ctrl-A x quits,
//! Ctrl-A Ctrl-A sends a literal Ctrl-A). Or on a pseudo-terminal ([`PtyConsole`]): its input
//! forwarded to COM1 while someone has it open.

use std::io::IsTerminal;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::terminal::Terminal;
use vmm_sys_util::timerfd::TimerFd;

use crate::device_manager::SerialMode;
use crate::pty::Pty;

/// Puts the controlling terminal in raw mode for the guest console and restores it on drop.
#[derive(Debug)]
pub struct RawTerminal {
    active: bool,
}

impl RawTerminal {
    /// Enters raw mode when the serial console is on stdio and stdin is a terminal.
    pub fn enter(serial: &SerialMode) -> Self {
        let stdin = std::io::stdin().lock();
        let active = *serial == SerialMode::Stdio
            && std::io::stdin().is_terminal()
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

/// What console input amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum ConsoleAction {
    /// Bytes for the guest's serial port.
    Forward(Vec<u8>),
    /// The user typed the quit escape.
    Quit,
}

/// The console input filter: Ctrl-A, then x to quit, Ctrl-A again for a literal Ctrl-A.
#[derive(Debug, Default)]
pub struct Console {
    pending_escape: bool,
}

impl Console {
    const CTRL_A: u8 = 0x01;

    /// Filters one chunk of input; the escape state carries over between chunks.
    pub fn filter(&mut self, input: &[u8]) -> ConsoleAction {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.pending_escape {
                self.pending_escape = false;
                match b {
                    b'x' | b'X' => return ConsoleAction::Quit,
                    Self::CTRL_A => out.push(b),
                    _ => {}
                }
            } else if b == Self::CTRL_A {
                self.pending_escape = true;
            } else {
                out.push(b);
            }
        }
        ConsoleAction::Forward(out)
    }

    /// Reads what stdin has (it is readable) and filters it. `None` means stdin is finished
    /// (EOF or an error): stop watching it.
    pub fn read_stdin(&mut self) -> Option<ConsoleAction> {
        let mut buf = [0u8; 256];
        // SAFETY: reading into a live local buffer of the given length.
        let got = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        if got <= 0 {
            return None;
        }
        Some(self.filter(&buf[..got.unsigned_abs()]))
    }
}

/// How often a pseudo-terminal nobody has open is checked for a new reader (QEMU checks
/// every second).
const PTY_RECHECK: Duration = Duration::from_millis(500);

/// What the main loop should do about the pseudo-terminal's master descriptor.
#[derive(Debug, PartialEq, Eq)]
pub enum PtyWatch {
    /// Watch it for input: a reader is there.
    Watch,
    /// Stop watching it (it reports a hang-up without a reader) until the timer finds one.
    Unwatch,
    /// Nothing changes.
    Keep,
}

/// The input side of a serial console on a pseudo-terminal. While nobody has the slave open,
/// the master reports a hang-up that epoll would return at once, again and again; so then the
/// main loop stops watching it and a timer looks for a reader instead.
#[derive(Debug)]
pub struct PtyConsole {
    pty: Arc<Pty>,
    timer: TimerFd,
    watching: bool,
}

impl PtyConsole {
    /// Wraps the console's pty; [`PtyConsole::start`] tells whether to watch it.
    ///
    /// # Errors
    /// The timer cannot be created.
    pub fn new(pty: Arc<Pty>) -> std::io::Result<Self> {
        Ok(Self {
            pty,
            timer: TimerFd::new().map_err(std::io::Error::from)?,
            watching: false,
        })
    }

    /// The master's descriptor, for epoll.
    pub fn pty_fd(&self) -> i32 {
        self.pty.as_raw_fd()
    }

    /// The recheck timer's descriptor, for epoll.
    pub fn timer_fd(&self) -> i32 {
        self.timer.as_raw_fd()
    }

    /// The initial decision: [`PtyWatch::Watch`] the master if a reader is there, else
    /// [`PtyWatch::Keep`] (it is not watched yet) with the timer armed.
    pub fn start(&mut self) -> PtyWatch {
        self.watching = !self.pty.connected();
        match self.recheck() {
            PtyWatch::Unwatch => PtyWatch::Keep,
            other => other,
        }
    }

    fn recheck(&mut self) -> PtyWatch {
        let connected = self.pty.connected();
        self.pty.set_reader(connected);
        if connected == self.watching {
            return PtyWatch::Keep;
        }
        self.watching = connected;
        if connected {
            let _ = self.timer.clear();
            PtyWatch::Watch
        } else {
            let _ = self.timer.reset(PTY_RECHECK, Some(PTY_RECHECK));
            PtyWatch::Unwatch
        }
    }

    /// The master is readable (or hung up): returns the input for COM1 and what to do about
    /// the descriptor.
    pub fn on_readable(&mut self) -> (Vec<u8>, PtyWatch) {
        let mut buf = [0u8; 256];
        match self.pty.read(&mut buf) {
            Ok(n) if n > 0 => (buf[..n].to_vec(), PtyWatch::Keep),
            // Nothing to read: the reader left.
            _ => (Vec::new(), self.recheck()),
        }
    }

    /// The recheck timer fired.
    pub fn on_timer(&mut self) -> PtyWatch {
        let _ = self.timer.wait();
        self.recheck()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences() {
        let mut c = Console::default();
        assert_eq!(
            c.filter(b"ab\x01\x01c"),
            ConsoleAction::Forward(b"ab\x01c".to_vec())
        );
        assert_eq!(c.filter(b"\x01"), ConsoleAction::Forward(Vec::new()));
        assert_eq!(c.filter(b"x"), ConsoleAction::Quit);
    }

    #[test]
    fn pty_console_watches_only_while_read() {
        use std::io::Write;
        let pty = Arc::new(Pty::open().unwrap());
        let mut c = PtyConsole::new(pty.clone()).unwrap();
        assert_eq!(
            c.start(),
            PtyWatch::Keep,
            "nobody there, nothing watched yet"
        );
        assert!(c.timer.is_armed().unwrap());
        let mut slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pty.path())
            .unwrap();
        assert_eq!(c.on_timer(), PtyWatch::Watch);
        slave.write_all(b"hi").unwrap();
        let mut got = Vec::new();
        for _ in 0..100 {
            got.extend(c.on_readable().0);
            if got.len() >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(got, b"hi");
        drop(slave);
        assert_eq!(c.on_readable(), (Vec::new(), PtyWatch::Unwatch));
        assert!(c.timer.is_armed().unwrap());
    }
}
