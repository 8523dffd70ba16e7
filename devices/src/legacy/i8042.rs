// SPDX-License-Identifier: Apache-2.0
//! The part of the i8042 keyboard controller a VM needs: the CPU reset line.
//!
//! Linux's `reboot=k` (and its fallback chain) pulses the reset line by writing command 0xFE to
//! the command port. The controller reports no data and no keyboard, so drivers probing it find
//! an empty controller and move on.

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;
use crate::event::{ResetCause, VmEvent, VmEventSink};
use crate::state::StateError;

/// The i8042's guest-visible state: none. The controller model keeps no registers (status and
/// data read 0, the only command acted on is the reset pulse, which is not latched), so the
/// struct has no fields; it is saved so that the format names the device, and a later
/// version that models more of the controller adds its fields here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct I8042State {}

/// Offset of the command/status port (0x64) from the data port (0x60).
const COMMAND_OFFSET: u64 = 4;
/// The "pulse output line" command that resets the CPU.
const CMD_RESET_CPU: u8 = 0xfe;

/// An i8042 at ports 0x60..0x65 whose only effect is a system reset request.
#[derive(Debug)]
pub struct I8042 {
    events: VmEventSink,
}

impl I8042 {
    /// Creates the controller; reset requests go to `events`.
    pub fn new(events: VmEventSink) -> Self {
        Self { events }
    }
}

impl I8042 {
    /// The controller's state (it has none; see [`I8042State`]).
    pub fn save_state(&self) -> I8042State {
        I8042State {}
    }

    /// Restores [`I8042State`]: nothing to take.
    ///
    /// # Errors
    /// None (the `Result` keeps the devices' restores alike).
    pub fn restore_state(&mut self, _state: &I8042State) -> Result<(), StateError> {
        Ok(())
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty. Data reads return 0.
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.events.send(VmEvent::Reset(ResetCause::I8042));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_fe_requests_reset_and_nothing_else_does() {
        let (sink, rx, _wake) = VmEventSink::new().unwrap();
        let mut dev = I8042::new(sink);
        dev.write(0x60, 0, &[0xfe]);
        dev.write(0x60, 4, &[0xaa]);
        assert!(rx.try_recv().is_err());
        dev.write(0x60, 4, &[0xfe]);
        assert_eq!(rx.try_recv().unwrap(), VmEvent::Reset(ResetCause::I8042));
        let mut status = [0xffu8];
        dev.read(0x60, 4, &mut status);
        assert_eq!(status, [0]);
    }
}
