// SPDX-License-Identifier: Apache-2.0
//! Per-backend I/O accounting, shaped after QMP's `query-blockstats`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::node::IoKind;

#[derive(Debug, Default)]
struct OpStats {
    bytes: AtomicU64,
    ops: AtomicU64,
    total_time_ns: AtomicU64,
    failed: AtomicU64,
    invalid: AtomicU64,
}

impl OpStats {
    fn snapshot(&self) -> OpStatsSnapshot {
        OpStatsSnapshot {
            bytes: self.bytes.load(Ordering::Relaxed),
            operations: self.ops.load(Ordering::Relaxed),
            total_time_ns: self.total_time_ns.load(Ordering::Relaxed),
            failed_operations: self.failed.load(Ordering::Relaxed),
            invalid_operations: self.invalid.load(Ordering::Relaxed),
        }
    }
}

/// The counters of one kind of operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpStatsSnapshot {
    /// Bytes transferred by successful operations.
    pub bytes: u64,
    /// Successful operations.
    pub operations: u64,
    /// Time spent in successful operations.
    pub total_time_ns: u64,
    /// Operations that failed on the host.
    pub failed_operations: u64,
    /// Operations refused before reaching the host (out of range, read-only, misaligned).
    pub invalid_operations: u64,
}

/// Live counters of a backend, updated lock-free by the I/O threads.
#[derive(Debug)]
pub struct BlockStats {
    read: OpStats,
    write: OpStats,
    flush: OpStats,
    discard: OpStats,
    write_zeroes: OpStats,
    wr_highest_offset: AtomicU64,
    epoch: Instant,
    /// Nanoseconds from `epoch` to the end of the last I/O, plus one; 0 means never.
    last_io: AtomicU64,
}

impl Default for BlockStats {
    fn default() -> Self {
        Self {
            read: OpStats::default(),
            write: OpStats::default(),
            flush: OpStats::default(),
            discard: OpStats::default(),
            write_zeroes: OpStats::default(),
            wr_highest_offset: AtomicU64::new(0),
            epoch: Instant::now(),
            last_io: AtomicU64::new(0),
        }
    }
}

impl BlockStats {
    fn op(&self, kind: IoKind) -> &OpStats {
        match kind {
            IoKind::Read => &self.read,
            IoKind::Write => &self.write,
            IoKind::Flush => &self.flush,
            IoKind::Discard => &self.discard,
            IoKind::WriteZeroes => &self.write_zeroes,
        }
    }

    fn touch(&self) {
        let ns = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.last_io.store(ns + 1, Ordering::Relaxed);
    }

    /// Records a successful operation of `bytes` that took `time`; `end` is the end offset of a
    /// write-like operation (for `wr_highest_offset`).
    pub fn account_done(&self, kind: IoKind, bytes: u64, time: Duration, end: Option<u64>) {
        let op = self.op(kind);
        op.bytes.fetch_add(bytes, Ordering::Relaxed);
        op.ops.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
        op.total_time_ns.fetch_add(ns, Ordering::Relaxed);
        if let Some(end) = end {
            self.wr_highest_offset.fetch_max(end, Ordering::Relaxed);
        }
        self.touch();
    }

    /// Records an operation that failed on the host.
    pub fn account_failed(&self, kind: IoKind) {
        self.op(kind).failed.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    /// Records an operation refused before reaching the host.
    pub fn account_invalid(&self, kind: IoKind) {
        self.op(kind).invalid.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    /// A consistent-enough copy of the counters (each counter is read atomically).
    pub fn snapshot(&self) -> BlockStatsSnapshot {
        let last = self.last_io.load(Ordering::Relaxed);
        let idle_time_ns = (last != 0).then(|| {
            let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            now.saturating_sub(last - 1)
        });
        BlockStatsSnapshot {
            read: self.read.snapshot(),
            write: self.write.snapshot(),
            flush: self.flush.snapshot(),
            discard: self.discard.snapshot(),
            write_zeroes: self.write_zeroes.snapshot(),
            wr_highest_offset: self.wr_highest_offset.load(Ordering::Relaxed),
            idle_time_ns,
        }
    }
}

/// A copy of a backend's counters, kept separately for every kind of operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStatsSnapshot {
    /// Reads.
    pub read: OpStatsSnapshot,
    /// Writes.
    pub write: OpStatsSnapshot,
    /// Flushes (`bytes` is always 0).
    pub flush: OpStatsSnapshot,
    /// Discards.
    pub discard: OpStatsSnapshot,
    /// Write-zeroes.
    pub write_zeroes: OpStatsSnapshot,
    /// The end of the furthest successful write (bytes).
    pub wr_highest_offset: u64,
    /// Time since the last I/O finished; `None` before the first one.
    pub idle_time_ns: Option<u64>,
}

impl BlockStatsSnapshot {
    /// The counters folded the way QEMU's `query-blockstats` reports them: write-zeroes count
    /// as writes (as QEMU's virtio-blk accounts them) and discards are `unmap_*`.
    pub fn qmp(&self) -> QmpBlockStats {
        let wr = |f: fn(&OpStatsSnapshot) -> u64| f(&self.write) + f(&self.write_zeroes);
        QmpBlockStats {
            rd_bytes: self.read.bytes,
            wr_bytes: wr(|o| o.bytes),
            unmap_bytes: self.discard.bytes,
            rd_operations: self.read.operations,
            wr_operations: wr(|o| o.operations),
            flush_operations: self.flush.operations,
            unmap_operations: self.discard.operations,
            rd_total_time_ns: self.read.total_time_ns,
            wr_total_time_ns: wr(|o| o.total_time_ns),
            flush_total_time_ns: self.flush.total_time_ns,
            unmap_total_time_ns: self.discard.total_time_ns,
            wr_highest_offset: self.wr_highest_offset,
            rd_merged: 0,
            wr_merged: 0,
            unmap_merged: 0,
            idle_time_ns: self.idle_time_ns,
            failed_rd_operations: self.read.failed_operations,
            failed_wr_operations: wr(|o| o.failed_operations),
            failed_flush_operations: self.flush.failed_operations,
            failed_unmap_operations: self.discard.failed_operations,
            invalid_rd_operations: self.read.invalid_operations,
            invalid_wr_operations: wr(|o| o.invalid_operations),
            invalid_flush_operations: self.flush.invalid_operations,
            invalid_unmap_operations: self.discard.invalid_operations,
            account_invalid: true,
            account_failed: true,
        }
    }
}

/// The `stats` member of a `query-blockstats` entry (QMP's `BlockDeviceStats`), field for field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)] // The fields are QMP's, documented in QEMU's block-core.json.
pub struct QmpBlockStats {
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub unmap_bytes: u64,
    pub rd_operations: u64,
    pub wr_operations: u64,
    pub flush_operations: u64,
    pub unmap_operations: u64,
    pub rd_total_time_ns: u64,
    pub wr_total_time_ns: u64,
    pub flush_total_time_ns: u64,
    pub unmap_total_time_ns: u64,
    pub wr_highest_offset: u64,
    pub rd_merged: u64,
    pub wr_merged: u64,
    pub unmap_merged: u64,
    pub idle_time_ns: Option<u64>,
    pub failed_rd_operations: u64,
    pub failed_wr_operations: u64,
    pub failed_flush_operations: u64,
    pub failed_unmap_operations: u64,
    pub invalid_rd_operations: u64,
    pub invalid_wr_operations: u64,
    pub invalid_flush_operations: u64,
    pub invalid_unmap_operations: u64,
    pub account_invalid: bool,
    pub account_failed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_folds_like_qmp() {
        let s = BlockStats::default();
        assert_eq!(s.snapshot().idle_time_ns, None);
        s.account_done(IoKind::Read, 4096, Duration::from_nanos(10), None);
        s.account_done(IoKind::Write, 512, Duration::from_nanos(5), Some(1024));
        s.account_done(
            IoKind::WriteZeroes,
            8192,
            Duration::from_nanos(7),
            Some(9000),
        );
        s.account_done(IoKind::Discard, 1024, Duration::from_nanos(3), None);
        s.account_done(IoKind::Flush, 0, Duration::from_nanos(2), None);
        s.account_failed(IoKind::Write);
        s.account_invalid(IoKind::Read);
        s.account_invalid(IoKind::Discard);
        let snap = s.snapshot();
        assert_eq!(snap.write_zeroes.bytes, 8192);
        assert!(snap.idle_time_ns.is_some());
        let q = snap.qmp();
        assert_eq!(q.rd_bytes, 4096);
        assert_eq!(q.wr_bytes, 512 + 8192);
        assert_eq!(q.wr_operations, 2);
        assert_eq!(q.wr_total_time_ns, 12);
        assert_eq!(q.unmap_bytes, 1024);
        assert_eq!(q.flush_operations, 1);
        assert_eq!(q.failed_wr_operations, 1);
        assert_eq!(q.invalid_rd_operations, 1);
        assert_eq!(q.invalid_unmap_operations, 1);
        assert_eq!(q.wr_highest_offset, 9000);
        assert!(q.account_failed && q.account_invalid);
    }
}
