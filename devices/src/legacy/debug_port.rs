// SPDX-License-Identifier: Apache-2.0
//! The PC debug (POST code) port, used as a boot timer.
//!
//! Guests write progress codes to I/O port 0x80; instrumented guests mark milestones there
//! (the probe guest writes 0x41 when it is ready). The device timestamps every code relative to
//! the VMM's start, keeps the latest, and logs each one when asked to.

use std::io::Write;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;
use crate::state::StateError;

/// The debug port's guest-visible state: the code reads return. When it was written is
/// host-side (a boot timer of this process) and not saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DebugPortState {
    /// The latest code written, if any (reads return it, or 0 without one).
    pub last_code: Option<u8>,
}

/// The debug port device.
pub struct DebugPort {
    start: Instant,
    log: Option<Box<dyn Write + Send>>,
    last: Option<(u8, Duration)>,
}

impl std::fmt::Debug for DebugPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugPort")
            .field("last", &self.last)
            .finish()
    }
}

impl DebugPort {
    /// Creates the port; times are measured from `start`, and each code is written to `log`
    /// when one is given.
    pub fn new(start: Instant, log: Option<Box<dyn Write + Send>>) -> Self {
        Self {
            start,
            log,
            last: None,
        }
    }

    /// The code reads return, for a migration.
    pub fn save_state(&self) -> DebugPortState {
        DebugPortState {
            last_code: self.last.map(|(code, _)| code),
        }
    }

    /// Takes the latest code of `state`, timed at the restore (the source's time origin means
    /// nothing here). Nothing is logged.
    ///
    /// # Errors
    /// None: every saved value is valid (the `Result` keeps the devices' restores alike).
    pub fn restore_state(&mut self, state: &DebugPortState) -> Result<(), StateError> {
        self.last = state.last_code.map(|code| (code, self.start.elapsed()));
        Ok(())
    }

    /// The latest code and when it was written.
    pub fn last(&self) -> Option<(u8, Duration)> {
        self.last
    }
}

impl BusDevice for DebugPort {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        // Reads return the latest code, as on boards that latch it.
        data.fill(self.last.map_or(0, |(c, _)| c));
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        let Some(&code) = data.first() else { return };
        let at = self.start.elapsed();
        self.last = Some((code, at));
        if let Some(log) = self.log.as_mut() {
            // Logging is best effort; a closed stderr must not stop the guest.
            let _ = writeln!(
                log,
                "vmm: debug port: code {code:#04x} at {:.3} ms",
                at.as_secs_f64() * 1000.0
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::SharedBuf;

    #[test]
    fn records_and_logs_codes() {
        let log = SharedBuf::default();
        let mut port = DebugPort::new(Instant::now(), Some(Box::new(log.clone())));
        assert_eq!(port.last(), None);
        port.write(0x80, 0, &[0x41]);
        let (code, _) = port.last().unwrap();
        assert_eq!(code, 0x41);
        let mut data = [0u8; 1];
        port.read(0x80, 0, &mut data);
        assert_eq!(data, [0x41]);
        let text = String::from_utf8(log.bytes()).unwrap();
        assert!(text.starts_with("vmm: debug port: code 0x41 at "), "{text}");
        port.write(0x80, 0, &[]);
        assert_eq!(port.last().unwrap().0, 0x41);
    }

    #[test]
    fn the_latest_code_survives_save_and_restore() {
        let mut src = DebugPort::new(Instant::now(), None);
        assert_eq!(src.save_state(), DebugPortState { last_code: None });
        src.write(0x80, 0, &[0x41]);
        let state = src.save_state();
        assert_eq!(state.last_code, Some(0x41));
        let mut dst = DebugPort::new(Instant::now(), None);
        dst.restore_state(&state).unwrap();
        let mut data = [0u8; 1];
        dst.read(0x80, 0, &mut data);
        assert_eq!(data, [0x41]);
        dst.restore_state(&DebugPortState::default()).unwrap();
        assert_eq!(dst.last(), None);
    }

    #[test]
    fn silent_without_a_log() {
        let mut port = DebugPort::new(Instant::now(), None);
        port.write(0x80, 0, &[7]);
        assert_eq!(port.last().unwrap().0, 7);
    }
}
