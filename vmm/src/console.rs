// SPDX-License-Identifier: Apache-2.0
//! The guest console on the VMM's terminal: raw mode while the VM runs (restored on every
//! exit path), stdin forwarded to COM1, and QEMU's `-nographic` escape (Ctrl-A x quits,
//! Ctrl-A Ctrl-A sends a literal Ctrl-A).

use std::io::IsTerminal;

use vmm_sys_util::terminal::Terminal;

use crate::device_manager::SerialMode;

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
}
