// SPDX-License-Identifier: Apache-2.0
//! Legacy PC devices: the 8250 UART and the i8042 reset line.

pub mod i8042;
pub mod serial;

pub use i8042::I8042;
pub use serial::{IrqTrigger, SerialDevice};
