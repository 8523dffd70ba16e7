// SPDX-License-Identifier: Apache-2.0
//! The VMM's slots on every disk's I/O-error signal (`block::IoErrorSlot`), connected in
//! this order so that clients see `BLOCK_IO_ERROR` before the `STOP` it causes:
//!
//! 1. [`QmpRelay`] emits `BLOCK_IO_ERROR` into the QMP monitor's inbox (never blocking);
//! 2. [`StopRequester`] asks the main loop to pause the VM in `io-error` when the policy
//!    stopped the request.
//!
//! Both run on the block I/O thread that saw the failure, without the big lock. (The backend's
//! own slots, `block::StatsSlot` and `block::IoStatusSlot`, connected by `Backend::new`, run
//! before them: the stop requester sees the failure counted and the io-status set.)

use std::sync::Arc;

use block::{Backend, ErrorAction, IoErrorEvent, IoErrorSlot, IoKind};
use devices::{VmEvent, VmEventSink};
use monitor::MonitorHandle;
use qapi::events::{Event, EventSink};
use qapi::rt::Timestamp;
use qapi::types::{BlockErrorAction, BlockIoErrorArg, Blockdev, IoOperationType};

/// Emits `BLOCK_IO_ERROR` (a signal of the disk's `Blockdev`) to the monitor.
#[derive(Debug)]
pub struct QmpRelay {
    monitor: MonitorHandle,
    qom_path: String,
}

impl IoErrorSlot for QmpRelay {
    fn on_io_error(&self, e: &IoErrorEvent<'_>) {
        let operation = match e.operation {
            IoKind::Read => IoOperationType::Read,
            _ => IoOperationType::Write,
        };
        let action = match e.action {
            ErrorAction::Report => BlockErrorAction::Report,
            ErrorAction::Ignore => BlockErrorAction::Ignore,
            ErrorAction::Stop => BlockErrorAction::Stop,
        };
        let event = Event::BlockIoError {
            owner: Some(Blockdev(e.device.to_owned())),
            data: BlockIoErrorArg {
                qom_path: self.qom_path.clone(),
                device: e.device.to_owned(),
                node_name: Some(e.node_name.to_owned()),
                operation,
                action,
                nospace: e.nospace,
                reason: e.reason.to_owned(),
            },
        };
        self.monitor.emit(event, Timestamp::now());
    }
}

/// Asks the main loop to stop the VM when the policy stopped the request.
#[derive(Debug)]
pub struct StopRequester {
    events: VmEventSink,
}

impl IoErrorSlot for StopRequester {
    fn on_io_error(&self, e: &IoErrorEvent<'_>) {
        if e.action == ErrorAction::Stop {
            self.events.send(VmEvent::IoErrorStop {
                device: e.device.to_owned(),
                epoch: e.epoch,
            });
        }
    }
}

/// Connects the VMM's slots to a disk's backend, relay first.
///
/// # Errors
/// The event sink cannot be duplicated (descriptor limit).
pub fn connect(
    backend: &Backend,
    qom_path: &str,
    monitor: Option<&MonitorHandle>,
    events: &VmEventSink,
) -> std::io::Result<()> {
    if let Some(m) = monitor {
        backend.connect_io_error(Arc::new(QmpRelay {
            monitor: m.clone(),
            qom_path: qom_path.to_owned(),
        }));
    }
    backend.connect_io_error(Arc::new(StopRequester {
        events: events.try_clone()?,
    }));
    Ok(())
}
