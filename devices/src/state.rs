// SPDX-License-Identifier: Apache-2.0
//! What the devices save for a migration or snapshot, and why a restore is refused.
//!
//! Each device with guest-visible state has a plain-data state struct (serde) with a
//! `save_state` and a `restore_state`; the VMM's device manager gathers them into one
//! versioned section (see `docs/architecture.md`, "Migration state"). A restore checks the
//! saved state against the device it is restored into first and changes nothing when it
//! refuses, with a one-line [`StateError`] naming the device and what differs.

use crate::virtio::ActivateError;

/// Why a saved state cannot be restored into a device.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The saved device and this one differ: `what` (a size, a feature set, a count), as the
    /// source had it and as it is here.
    #[error("{device}: {what} differs (source {saved}, here {here})")]
    Mismatch {
        /// The device (`COM1`, `virtio-mmio device at 0xd0000000`, `disk drive0`).
        device: String,
        /// What differs.
        what: &'static str,
        /// The source's value.
        saved: String,
        /// This device's value.
        here: String,
    },
    /// The saved receive FIFO of COM1 holds more bytes than the UART has room for.
    #[error("COM1: the saved receive FIFO holds {0} bytes, more than the UART's 64")]
    SerialFifo(usize),
    /// The restored UART's pending interrupt could not be raised.
    #[error("COM1: cannot raise the restored interrupt")]
    SerialInterrupt(#[source] std::io::Error),
    /// A saved virtqueue is not a valid queue (size, alignment).
    #[error("{device}: saved queue {index} is invalid")]
    Queue {
        /// The device.
        device: String,
        /// The queue's index.
        index: usize,
        /// What virtio-queue refused.
        #[source]
        source: virtio_queue::Error,
    },
    /// The saved status says the driver runs the device, and its data path cannot start here.
    #[error("{device}: cannot restart the data path")]
    Activate {
        /// The device.
        device: String,
        /// Why.
        #[source]
        source: ActivateError,
    },
    /// The restored interrupt status could not be raised again.
    #[error("{device}: cannot raise the restored interrupt")]
    Interrupt {
        /// The device.
        device: String,
        /// The irqfd write's error.
        #[source]
        source: std::io::Error,
    },
}

impl StateError {
    /// A [`StateError::Mismatch`] of `what` on `device`.
    pub fn mismatch(
        device: impl Into<String>,
        what: &'static str,
        saved: impl std::fmt::Display,
        here: impl std::fmt::Display,
    ) -> Self {
        Self::Mismatch {
            device: device.into(),
            what,
            saved: saved.to_string(),
            here: here.to_string(),
        }
    }
}
