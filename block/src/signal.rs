// SPDX-License-Identifier: Apache-2.0
//! The I/O-error signal of a backend and the slots connected to it.
//!
//! Every failed request of a backend is one emission, on the thread that ran the request (the
//! device's block I/O thread or one of its request-pool threads), after the error policy chose
//! the action; the connected slots run in connection order. The backend's own steps are
//! ordinary slots, connected by [`crate::Backend::new`] before any other: [`StatsSlot`] (the
//! statistics, as QEMU's virtio-blk: failed on `report`, done on `ignore`, nothing yet on
//! `stop`) and [`IoStatusSlot`] (the I/O status on `stop`). The VMM then connects, in this
//! order, a slot that queues `BLOCK_IO_ERROR` to the QMP monitor and one that asks the main
//! loop to stop the VM on [`ErrorAction::Stop`]: because the event is queued before the stop
//! is requested, clients always see `BLOCK_IO_ERROR` before `STOP`, and the stop requester
//! sees the statistics and the I/O status already updated.

use std::fmt;
use std::io;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::node::IoKind;
use crate::policy::{ErrorAction, IoStatus, IoStatusCell};
use crate::stats::BlockStats;

/// One failed request, as the slots see it: everything `BLOCK_IO_ERROR` carries, and what the
/// statistics need.
#[derive(Debug)]
pub struct IoErrorEvent<'a> {
    /// The backend's id (QMP's `device`).
    pub device: &'a str,
    /// The node-name of the backend's root as queries show it: implicit filters (the
    /// fault-injection node) are skipped.
    pub node_name: &'a str,
    /// The failed operation; QMP's `operation` is [`IoKind::qmp_operation`].
    pub operation: IoKind,
    /// What the policy did.
    pub action: ErrorAction,
    /// Whether the error is ENOSPC; `None` unless the policy can stop (QEMU sends `nospace`
    /// only when `blk_iostatus_is_enabled`).
    pub nospace: Option<bool>,
    /// The error text as QEMU's `strerror` gives it (`Input/output error`).
    pub reason: &'a str,
    /// Whether the backend's policy can stop the VM.
    pub can_stop: bool,
    /// The host (or injected) error.
    pub error: &'a io::Error,
    /// Bytes the request covers (0 for a flush).
    pub len: u64,
    /// Time from the start of the request to its failure.
    pub elapsed: Duration,
    /// The end offset of a write or write-zeroes (for `wr_highest_offset`), else `None`.
    pub write_end: Option<u64>,
    /// The backend's resume epoch when the request failed ([`Backend::resume_epoch`]): a
    /// resume after the failure retries a stopped request, and makes the VM stop it asks
    /// for stale (the retry asks again if the fault persists).
    ///
    /// [`Backend::resume_epoch`]: crate::Backend::resume_epoch
    pub epoch: u64,
}

impl IoErrorEvent<'_> {
    /// Whether the error is ENOSPC, whatever the policy (unlike [`IoErrorEvent::nospace`]).
    pub fn is_enospc(&self) -> bool {
        self.error.raw_os_error() == Some(libc::ENOSPC)
    }
}

/// A receiver of a backend's I/O-error signal.
///
/// `on_io_error` runs on a block I/O or request thread while the failed request waits, so it
/// must never block: no waiting on the main loop, on a client socket or on a lock another
/// thread may hold for long. Queue the work (a channel, an eventfd) and return. It may connect
/// or disconnect slots: emission holds no lock while slots run.
pub trait IoErrorSlot: Send + Sync + fmt::Debug {
    /// Called once for every failed request.
    fn on_io_error(&self, event: &IoErrorEvent<'_>);
}

/// The backend's statistics as a slot: a reported failure counts as failed, an ignored one as
/// done (bytes, time and `wr_highest_offset` as a success would), a stopped one not yet (its
/// retry is counted when it ends), as QEMU's virtio-blk accounts them.
#[derive(Debug)]
pub struct StatsSlot {
    stats: Arc<BlockStats>,
}

impl StatsSlot {
    /// A slot accounting failures into `stats`.
    pub fn new(stats: Arc<BlockStats>) -> Self {
        Self { stats }
    }

    /// The statistics it updates.
    pub fn stats(&self) -> &Arc<BlockStats> {
        &self.stats
    }
}

impl IoErrorSlot for StatsSlot {
    fn on_io_error(&self, e: &IoErrorEvent<'_>) {
        match e.action {
            ErrorAction::Report => self.stats.account_failed(e.operation),
            ErrorAction::Ignore => {
                self.stats
                    .account_done(e.operation, e.len, e.elapsed, e.write_end);
            }
            ErrorAction::Stop => {}
        }
    }
}

/// The backend's I/O status as a slot: a stop sets `nospace` (ENOSPC) or `failed` unless a
/// status is set already; the first stays until [`crate::Backend::resume`] resets it.
#[derive(Debug)]
pub struct IoStatusSlot {
    status: Arc<IoStatusCell>,
}

impl IoStatusSlot {
    /// A slot setting `status` on stops.
    pub fn new(status: Arc<IoStatusCell>) -> Self {
        Self { status }
    }

    /// The status it sets.
    pub fn status(&self) -> &Arc<IoStatusCell> {
        &self.status
    }
}

impl IoErrorSlot for IoStatusSlot {
    fn on_io_error(&self, e: &IoErrorEvent<'_>) {
        if e.action == ErrorAction::Stop {
            self.status.set_first(if e.is_enospc() {
                IoStatus::NoSpace
            } else {
                IoStatus::Failed
            });
        }
    }
}

/// The handle of a connected slot, for [`crate::Backend::disconnect_io_error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotId(u64);

type SlotList = Arc<[(SlotId, Arc<dyn IoErrorSlot>)]>;

/// The connected slots of one backend: a copy-on-write list, so that emission takes the read
/// lock only to clone an `Arc` and calls the slots without it.
#[derive(Debug)]
pub(crate) struct Slots {
    list: RwLock<(u64, SlotList)>,
}

impl Default for Slots {
    fn default() -> Self {
        Self {
            list: RwLock::new((0, Arc::from(Vec::new()))),
        }
    }
}

impl Slots {
    pub(crate) fn connect(&self, slot: Arc<dyn IoErrorSlot>) -> SlotId {
        let mut guard = self.list.write().unwrap_or_else(|e| e.into_inner());
        guard.0 += 1;
        let id = SlotId(guard.0);
        let mut v: Vec<_> = guard.1.iter().cloned().collect();
        v.push((id, slot));
        guard.1 = Arc::from(v);
        id
    }

    pub(crate) fn disconnect(&self, id: SlotId) -> bool {
        let mut guard = self.list.write().unwrap_or_else(|e| e.into_inner());
        let before = guard.1.len();
        let v: Vec<_> = guard.1.iter().filter(|(i, _)| *i != id).cloned().collect();
        let found = v.len() != before;
        guard.1 = Arc::from(v);
        found
    }

    /// The connected slots, in connection (and emission) order.
    pub(crate) fn list(&self) -> Vec<(SlotId, Arc<dyn IoErrorSlot>)> {
        self.list
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .to_vec()
    }

    pub(crate) fn emit(&self, event: &IoErrorEvent<'_>) {
        let list = self
            .list
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone();
        for (_, slot) in list.iter() {
            slot.on_io_error(event);
        }
    }
}
