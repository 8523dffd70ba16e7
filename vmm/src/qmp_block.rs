// SPDX-License-Identifier: Apache-2.0
//! `query-block` and `query-blockstats` from the block layer's backends and nodes, in
//! QEMU 7.2's shapes.

use block::{Backend, BlockNode, Bucket, IoStatus, QmpBlockStats};
use qapi::types::{
    BlockDeviceInfo, BlockDeviceIoStatus, BlockDeviceStats, BlockInfo, BlockStats,
    BlockdevCacheInfo, BlockdevDetectZeroesOptions, ImageInfo,
};

use crate::device_manager::Disk;

/// QMP integers are i64; counters past i64::MAX (never reached in practice) saturate.
fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The `inserted` entry of a backend: its image node's, with the backend's I/O limits (those
/// of its throttle group) as QEMU reports them: the six rates always, a burst and its length
/// only when the burst is set, `iops_size` only when set, and the group whenever there are
/// limits. Values are QEMU's unsigned ones in QMP's signed integers, bit for bit (a QMP
/// `iops_size` of -1 reads back as -1).
pub fn device_info(b: &Backend) -> BlockDeviceInfo {
    let mut info = node_info(b.root().as_ref());
    let Some(limits) = b.throttle().limits() else {
        return info;
    };
    let c = limits.config;
    let avg = |bucket| c.limit(bucket).avg as i64;
    let max = |bucket| {
        Some(c.limit(bucket).max)
            .filter(|&m| m != 0)
            .map(|m| m as i64)
    };
    let len = |bucket| max(bucket).map(|_| c.limit(bucket).max_length as i64);
    let (bt, br, bw) = (Bucket::BpsTotal, Bucket::BpsRead, Bucket::BpsWrite);
    let (it, ir, iw) = (Bucket::IopsTotal, Bucket::IopsRead, Bucket::IopsWrite);
    info.bps = avg(bt);
    info.bps_rd = avg(br);
    info.bps_wr = avg(bw);
    info.iops = avg(it);
    info.iops_rd = avg(ir);
    info.iops_wr = avg(iw);
    info.bps_max = max(bt);
    info.bps_rd_max = max(br);
    info.bps_wr_max = max(bw);
    info.iops_max = max(it);
    info.iops_rd_max = max(ir);
    info.iops_wr_max = max(iw);
    info.bps_max_length = len(bt);
    info.bps_rd_max_length = len(br);
    info.bps_wr_max_length = len(bw);
    info.iops_max_length = len(it);
    info.iops_rd_max_length = len(ir);
    info.iops_wr_max_length = len(iw);
    info.iops_size = Some(c.iops_size).filter(|&s| s != 0).map(|s| s as i64);
    info.group = Some(limits.group);
    info
}

/// The `query-named-block-nodes` entry of a node (and `inserted` of a backend's root); `file`
/// is the file of the protocol node at the bottom of its chain, as QEMU shows it.
pub fn node_info(node: &dyn BlockNode) -> BlockDeviceInfo {
    let cache = node.cache();
    let mut file = node.filename().map(|p| p.display().to_string());
    let mut below = node.child();
    while let (None, Some(n)) = (&file, below) {
        file = n.filename().map(|p| p.display().to_string());
        below = n.child();
    }
    let file = file.unwrap_or_default();
    BlockDeviceInfo {
        file: file.clone(),
        node_name: Some(node.node_name().into()),
        ro: node.read_only(),
        drv: node.driver().to_owned(),
        backing_file: None,
        backing_file_depth: 0,
        encrypted: false,
        detect_zeroes: BlockdevDetectZeroesOptions::Off,
        bps: 0,
        bps_rd: 0,
        bps_wr: 0,
        iops: 0,
        iops_rd: 0,
        iops_wr: 0,
        image: ImageInfo {
            filename: file,
            format: node.driver().to_owned(),
            dirty_flag: Some(false),
            actual_size: node.actual_size().map(i),
            virtual_size: i(node.size()),
            cluster_size: None,
            encrypted: None,
            compressed: None,
            backing_filename: None,
            full_backing_filename: None,
            backing_filename_format: None,
            backing_image: None,
        },
        bps_max: None,
        bps_rd_max: None,
        bps_wr_max: None,
        iops_max: None,
        iops_rd_max: None,
        iops_wr_max: None,
        bps_max_length: None,
        bps_rd_max_length: None,
        bps_wr_max_length: None,
        iops_max_length: None,
        iops_rd_max_length: None,
        iops_wr_max_length: None,
        iops_size: None,
        group: None,
        cache: BlockdevCacheInfo {
            writeback: cache.writeback(),
            direct: cache.direct(),
            no_flush: cache.no_flush(),
        },
        write_threshold: 0,
        dirty_bitmaps: None,
    }
}

/// The `query-block` entry of one disk. `io-status` is reported only for devices whose error
/// policy can stop the VM, as in QEMU.
pub fn block_info(backend: &Backend, qdev: &str) -> BlockInfo {
    let io_status = backend
        .io_status_enabled()
        .then(|| match backend.io_status() {
            IoStatus::Ok => BlockDeviceIoStatus::Ok,
            IoStatus::Failed => BlockDeviceIoStatus::Failed,
            IoStatus::NoSpace => BlockDeviceIoStatus::Nospace,
        });
    BlockInfo {
        device: backend.id().into(),
        qdev: Some(qdev.to_owned()),
        r#type: "unknown".into(),
        removable: false,
        locked: false,
        inserted: Some(device_info(backend)),
        tray_open: None,
        io_status,
    }
}

fn device_stats(s: QmpBlockStats) -> BlockDeviceStats {
    BlockDeviceStats {
        rd_bytes: i(s.rd_bytes),
        wr_bytes: i(s.wr_bytes),
        unmap_bytes: i(s.unmap_bytes),
        rd_operations: i(s.rd_operations),
        wr_operations: i(s.wr_operations),
        unmap_operations: i(s.unmap_operations),
        flush_operations: i(s.flush_operations),
        rd_total_time_ns: i(s.rd_total_time_ns),
        wr_total_time_ns: i(s.wr_total_time_ns),
        unmap_total_time_ns: i(s.unmap_total_time_ns),
        flush_total_time_ns: i(s.flush_total_time_ns),
        wr_highest_offset: i(s.wr_highest_offset),
        rd_merged: i(s.rd_merged),
        wr_merged: i(s.wr_merged),
        unmap_merged: i(s.unmap_merged),
        idle_time_ns: s.idle_time_ns.map(i),
        failed_rd_operations: i(s.failed_rd_operations),
        failed_wr_operations: i(s.failed_wr_operations),
        failed_unmap_operations: i(s.failed_unmap_operations),
        failed_flush_operations: i(s.failed_flush_operations),
        invalid_rd_operations: i(s.invalid_rd_operations),
        invalid_wr_operations: i(s.invalid_wr_operations),
        invalid_unmap_operations: i(s.invalid_unmap_operations),
        invalid_flush_operations: i(s.invalid_flush_operations),
        account_invalid: s.account_invalid,
        account_failed: s.account_failed,
        timed_stats: Vec::new(),
        rd_latency_histogram: None,
        wr_latency_histogram: None,
        flush_latency_histogram: None,
    }
}

/// The `query-blockstats` entry of one disk: per device, or with `query-nodes` per node
/// (then without `device`, as QEMU does).
pub fn block_stats(d: &Disk, query_nodes: bool) -> BlockStats {
    BlockStats {
        device: (!query_nodes).then(|| d.backend.id().into()),
        qdev: (!query_nodes).then(|| d.qdev.clone()),
        node_name: Some(d.backend.root().node_name().into()),
        stats: device_stats(d.backend.stats().snapshot().qmp()),
        parent: None,
        backing: None,
    }
}
