// SPDX-License-Identifier: Apache-2.0
//! Legacy PC devices: the 8250 UART, the i8042 reset line and the debug port.

pub mod debug_port;
pub mod i8042;
pub mod serial;

pub use debug_port::{DebugPort, DebugPortState};
pub use i8042::{I8042State, I8042};
pub use serial::{IrqTrigger, SerialDevice, SerialDeviceState};
