// SPDX-License-Identifier: Apache-2.0
//! Virtio devices on the virtio-mmio transport (virtio 1.2, MMIO register layout version 2).
//!
//! A [`VirtioDevice`] (such as [`VirtioBlock`]) describes its features, queues and config space
//! and runs its data path once activated. The [`MmioTransport`] puts it on the MMIO bus: it
//! implements the registers, the feature and status handshake, the queue setup and reset, and
//! owns the notification eventfds (one per queue, for KVM ioeventfds) and the interrupt
//! ([`VirtioInterrupt`], for a KVM irqfd). On `DRIVER_OK` the transport hands the device an
//! [`ActivateContext`]: the configured queues, the guest memory, the eventfds and the interrupt.
//! The device's data path then runs on its own thread without ever entering the transport (or
//! any VM-wide lock).
//!
//! The virtio ABI (feature and status bits, device IDs, register offsets, request types and
//! layouts) comes from [`virtio_bindings`], generated from Linux's UAPI headers.

pub mod block;
pub mod mmio;

use std::any::Any;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::GuestMemoryMmap;
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::{Queue, QueueState};
use vmm_sys_util::eventfd::EventFd;

pub use block::{BlockState, QuiesceError, VirtioBlock};
pub use mmio::{MmioError, MmioState, MmioTransport, VirtqueueState};

/// The interrupt line of a device and what the guest reads about it.
///
/// Shared between the transport (`InterruptStatus`, `InterruptACK`, `ConfigGeneration`, the
/// `DEVICE_NEEDS_RESET` status bit) and the device's data path, which raises it. The eventfd is
/// registered with KVM as the irqfd of the device's GSI (edge-triggered).
#[derive(Debug)]
pub struct VirtioInterrupt {
    irq: EventFd,
    status: AtomicU32,
    config_generation: AtomicU32,
    needs_reset: AtomicBool,
}

impl VirtioInterrupt {
    /// Wraps the irqfd `irq`.
    pub fn new(irq: EventFd) -> Self {
        Self {
            irq,
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
        }
    }

    /// Sets `bit` in `InterruptStatus` and interrupts the guest, unless `bit` was already set:
    /// then the interrupt that set it has not been acknowledged yet, and the driver's handler,
    /// which reads the status, acknowledges it and only then looks at the queues, will see
    /// what this call reports (QEMU's level-triggered line behaves the same: it stays up until
    /// the acknowledgement, and raising it again interrupts nobody). With several I/O threads
    /// on one device this keeps their completions from interrupting the guest once each,
    /// each interrupt costing the driver two register exits.
    fn raise(&self, bit: u32) -> io::Result<()> {
        if self.status.fetch_or(bit, Ordering::SeqCst) & bit != 0 {
            return Ok(());
        }
        self.irq.write(1)
    }

    /// Tells the guest that used buffers are available.
    ///
    /// # Errors
    /// Writing the irqfd failed.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.raise(VIRTIO_MMIO_INT_VRING)
    }

    /// Tells the guest that the config space changed (bumping `ConfigGeneration`).
    ///
    /// # Errors
    /// Writing the irqfd failed.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.raise(VIRTIO_MMIO_INT_CONFIG)
    }

    /// Puts the device in `DEVICE_NEEDS_RESET` and tells the guest (virtio 1.2, 2.1.2).
    ///
    /// # Errors
    /// Writing the irqfd failed.
    pub fn set_needs_reset(&self) -> io::Result<()> {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.raise(VIRTIO_MMIO_INT_CONFIG)
    }

    /// Whether the device asked for a reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The `InterruptStatus` register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The `ConfigGeneration` register.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// Takes saved `InterruptStatus`, `ConfigGeneration` and `DEVICE_NEEDS_RESET` (a
    /// restore); raises nothing.
    fn restore(&self, status: u32, config_generation: u32, needs_reset: bool) {
        self.status.store(status, Ordering::SeqCst);
        self.config_generation
            .store(config_generation, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
    }

    /// Writes the irqfd without changing `InterruptStatus` (a restore raising what the saved
    /// status says is pending).
    fn raise_again(&self) -> io::Result<()> {
        self.irq.write(1)
    }
}

/// What a device gets when the driver sets `DRIVER_OK`.
#[derive(Debug)]
pub struct ActivateContext {
    /// Guest memory (a cheap clone of the VM's mapping).
    pub mem: GuestMemoryMmap,
    /// The queues as the driver configured them; queues the driver did not enable are
    /// included with `ready() == false`.
    pub queues: Vec<Queue>,
    /// One notification eventfd per queue (clones of the transport's).
    pub queue_events: Vec<EventFd>,
    /// The device's interrupt.
    pub interrupt: std::sync::Arc<VirtioInterrupt>,
    /// The features the driver accepted.
    pub acked_features: u64,
}

/// Errors of [`VirtioDevice::activate`].
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The device got a different number of queues than it has.
    #[error("Expected {expected} queues, got {got}")]
    QueueCount {
        /// What the device has.
        expected: usize,
        /// What it got.
        got: usize,
    },
    /// The data path could not be set up (thread, epoll, eventfd).
    #[error("Cannot start the device's I/O thread")]
    Io(#[source] io::Error),
    /// A ready queue's rings lie outside guest memory or its configuration is invalid.
    #[error("Queue {0} is not valid in guest memory")]
    InvalidQueue(usize),
}

/// A virtio device model, independent of the transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID.
    fn device_type(&self) -> u32;

    /// The maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// The features the device offers, transport bits included.
    fn device_features(&self) -> u64;

    /// Reads `data.len()` bytes of the config space at `offset`; bytes out of range read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the config space; out-of-range and read-only bytes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the data path.
    ///
    /// # Errors
    /// The device cannot run with what it got; the transport sets `DEVICE_NEEDS_RESET`.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;

    /// Stops the data path (waiting for requests in flight) and forgets the queues.
    fn reset(&mut self);

    /// The state of queue `index` as the running data path has it (its indices move on as
    /// requests are served; the transport's copy is the one of activation time), or `None`
    /// when the data path does not run that queue. A migration saves this one.
    fn running_queue_state(&self, index: usize) -> Option<QueueState>;

    /// The device as [`Any`], so that the VMM reaches the concrete device (its migration
    /// state, a disk's quiesce) through the transport.
    fn as_any(&self) -> &dyn Any;

    /// The device as [`Any`], mutably.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;

    #[test]
    fn interrupt_bits_and_generation() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let i = VirtioInterrupt::new(irq.try_clone().unwrap());
        i.signal_used_queue().unwrap();
        assert_eq!(i.status(), 1);
        i.signal_config_change().unwrap();
        assert_eq!(i.status(), 3);
        assert_eq!(i.config_generation(), 1);
        assert_eq!(irq.read().unwrap(), 2);
        // Used buffers again before the driver acknowledged the first: no second interrupt.
        i.signal_used_queue().unwrap();
        assert!(
            irq.read().is_err(),
            "interrupted again before the acknowledgement"
        );
        i.ack(1);
        assert_eq!(i.status(), 2);
        i.signal_used_queue().unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        i.ack(1);
        assert!(!i.needs_reset());
        i.set_needs_reset().unwrap();
        assert!(i.needs_reset());
        i.reset();
        assert!(!i.needs_reset());
        assert_eq!(i.status(), 0);
    }
}
