// SPDX-License-Identifier: Apache-2.0
//! Requests from devices and vCPUs to the VMM's main loop.

use std::cell::Cell;
use std::sync::mpsc::{channel, Receiver, Sender};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the guest asked to be reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetCause {
    /// The guest wrote the ACPI reset register from the FADT.
    AcpiResetRegister,
    /// The guest pulsed the reset line through the i8042 controller (command 0xFE).
    I8042,
    /// A vCPU triple-faulted (KVM reported a shutdown exit).
    TripleFault,
}

/// A request for the main loop, raised on a vCPU or device thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest entered ACPI S5 (soft off) through the sleep control register.
    PowerOff,
    /// The guest asked for a system reset.
    Reset(ResetCause),
    /// A vCPU hit a condition the VMM cannot recover from; the text says which and where.
    Fatal(String),
    /// A disk's error policy stopped a request (`werror`/`rerror` `stop`, or `enospc` on
    /// ENOSPC): the VM must pause in `io-error`. Raised on the block I/O thread right after it
    /// emitted `BLOCK_IO_ERROR`, so the event precedes the `STOP` that follows. A `cont` that
    /// resumed `device` after the failure (its resume epoch is past `epoch`) makes the request
    /// stale: the request is retried, and a fault that persists asks again (QEMU's `cont`
    /// drops a pending stop request the same way).
    IoErrorStop {
        /// The backend's id.
        device: String,
        /// Its resume epoch when the request failed.
        epoch: u64,
    },
}

thread_local! {
    /// Set on a thread when it queues a reset or power-off request; see
    /// [`take_lifecycle_request`].
    static LIFECYCLE_REQUESTED: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread queued a reset or power-off request ([`VmEvent::Reset`],
/// [`VmEvent::PowerOff`]) since the last call, which clears it. A vCPU thread asks after each
/// device write: one that has just asked for a reset through a device register (the ACPI reset
/// register, the i8042 reset line, the sleep control register) must not run guest code until
/// the main loop has acted on it, as a CPU does not run past the reset it triggered. Linux
/// would otherwise go on, 15 ms later, to its next reset method (the i8042 after the ACPI
/// register), and a main loop slower than that (a loaded host) would reset twice and announce
/// two `RESET`s.
pub fn take_lifecycle_request() -> bool {
    LIFECYCLE_REQUESTED.with(|f| f.replace(false))
}

/// The sending side of the main loop's event queue: a channel plus an eventfd that wakes the
/// main loop's epoll. Cheap to clone; one per device or vCPU thread.
#[derive(Debug)]
pub struct VmEventSink {
    tx: Sender<VmEvent>,
    wake: EventFd,
}

impl VmEventSink {
    /// Creates a connected sink and the receiver the main loop drains, plus the eventfd the main
    /// loop waits on.
    ///
    /// # Errors
    /// Fails when the eventfd cannot be created (file descriptor limit).
    pub fn new() -> std::io::Result<(Self, Receiver<VmEvent>, EventFd)> {
        let (tx, rx) = channel();
        let wake = EventFd::new(EFD_NONBLOCK)?;
        let main_side = wake.try_clone()?;
        Ok((Self { tx, wake }, rx, main_side))
    }

    /// Queues `event` and wakes the main loop. Never blocks; if the main loop is gone the event
    /// is dropped, since nobody is left to act on it.
    pub fn send(&self, event: VmEvent) {
        if matches!(event, VmEvent::Reset(_) | VmEvent::PowerOff) {
            LIFECYCLE_REQUESTED.with(|f| f.set(true));
        }
        if self.tx.send(event).is_ok() {
            // The eventfd counter cannot overflow in practice (2^64 - 2 wakes); a failed write
            // would only mean the main loop already exited.
            let _ = self.wake.write(1);
        }
    }

    /// Returns another handle to the same queue.
    ///
    /// # Errors
    /// Fails when the eventfd cannot be duplicated (file descriptor limit).
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            tx: self.tx.clone(),
            wake: self.wake.try_clone()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_queues_and_wakes() {
        let (sink, rx, wake) = VmEventSink::new().unwrap();
        let clone = sink.try_clone().unwrap();
        clone.send(VmEvent::PowerOff);
        sink.send(VmEvent::Reset(ResetCause::I8042));
        assert_eq!(wake.read().unwrap(), 2);
        assert_eq!(rx.try_recv().unwrap(), VmEvent::PowerOff);
        assert_eq!(rx.try_recv().unwrap(), VmEvent::Reset(ResetCause::I8042));
    }

    #[test]
    fn lifecycle_requests_are_flagged_on_the_sending_thread_only() {
        let (sink, _rx, _wake) = VmEventSink::new().unwrap();
        assert!(!take_lifecycle_request());
        sink.send(VmEvent::IoErrorStop {
            device: "d".into(),
            epoch: 0,
        });
        sink.send(VmEvent::Fatal("x".into()));
        assert!(!take_lifecycle_request(), "not a reset or power-off");
        sink.send(VmEvent::Reset(ResetCause::AcpiResetRegister));
        let other = sink.try_clone().unwrap();
        std::thread::spawn(move || {
            assert!(!take_lifecycle_request(), "another thread's request");
            other.send(VmEvent::PowerOff);
            assert!(take_lifecycle_request());
        })
        .join()
        .unwrap();
        assert!(take_lifecycle_request());
        assert!(!take_lifecycle_request(), "taken once");
    }
}
