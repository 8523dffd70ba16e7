// SPDX-License-Identifier: Apache-2.0
//! virtio-blk (virtio 1.2, 5.2) on the block layer.
//!
//! Requests run on a block I/O thread per device, named `blk-<id>`, started when the driver
//! sets `DRIVER_OK` and stopped (and joined) on reset or drop. See [`request`] for what is
//! accepted and how malformed requests complete.

pub mod request;
mod worker;

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use block::{Backend, SECTOR_SIZE};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::request::{RequestConfig, MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS};
use self::worker::Worker;
use super::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};
use super::{device_type, ActivateContext, ActivateError, VirtioDevice};

/// Maximum size of a segment (`size_max`).
pub const VIRTIO_BLK_F_SIZE_MAX: u32 = 1;
/// Maximum number of segments in a request (`seg_max`).
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// The device is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Block size of the disk (`blk_size`).
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Cache flush command support.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// Topology information.
pub const VIRTIO_BLK_F_TOPOLOGY: u32 = 10;
/// DISCARD support.
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
/// WRITE_ZEROES support.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;

/// Size of the queue.
pub const QUEUE_SIZE: u16 = 256;
/// Segment size limit advertised in `size_max`.
pub const SIZE_MAX: u32 = 1 << 20;
/// Length of the config space (`struct virtio_blk_config` up to `write_zeroes_may_unmap`).
pub const CONFIG_SPACE_SIZE: usize = 60;

struct Running {
    kill: EventFd,
    thread: JoinHandle<()>,
}

/// A virtio-blk device on a block [`Backend`].
pub struct VirtioBlock {
    backend: Arc<Backend>,
    features: u64,
    queue_sizes: [u16; 1],
    queues: Arc<Mutex<Vec<Queue>>>,
    running: Option<Running>,
}

impl std::fmt::Debug for VirtioBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioBlock")
            .field("backend", &self.backend.id())
            .field("features", &format_args!("{:#x}", self.features))
            .field("running", &self.running.is_some())
            .finish()
    }
}

impl VirtioBlock {
    /// A device on `backend`; a read-only backend gives a read-only device without DISCARD or
    /// WRITE_ZEROES.
    pub fn new(backend: Arc<Backend>) -> Self {
        let mut features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_F_INDIRECT_DESC)
            | (1 << VIRTIO_F_EVENT_IDX)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_TOPOLOGY);
        if backend.read_only() {
            features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            features |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        Self {
            backend,
            features,
            queue_sizes: [QUEUE_SIZE],
            queues: Arc::new(Mutex::new(Vec::new())),
            running: None,
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// Whether the I/O thread runs.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The config space (`struct virtio_blk_config`), little endian.
    pub fn config_space(&self) -> [u8; CONFIG_SPACE_SIZE] {
        let mut c = [0u8; CONFIG_SPACE_SIZE];
        let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
        put(0, &(self.backend.size() / SECTOR_SIZE).to_le_bytes()); // capacity
        put(8, &SIZE_MAX.to_le_bytes()); // size_max
        put(12, &u32::from(QUEUE_SIZE - 2).to_le_bytes()); // seg_max
                                                           // 16..20 geometry: not offered.
        put(20, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
                                                      // 24 physical_block_exp 0, 25 alignment_offset 0, 26 min_io_size (blocks), 28 opt_io_size.
        put(26, &1u16.to_le_bytes());
        put(32, &[1]); // writeback (informational without CONFIG_WCE)
        put(34, &1u16.to_le_bytes()); // num_queues
        if self.features & (1 << VIRTIO_BLK_F_DISCARD) != 0 {
            put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
            put(40, &MAX_DISCARD_SEGMENTS.to_le_bytes());
            put(44, &1u32.to_le_bytes()); // discard_sector_alignment
        }
        if self.features & (1 << VIRTIO_BLK_F_WRITE_ZEROES) != 0 {
            put(48, &MAX_DISCARD_SECTORS.to_le_bytes());
            put(52, &MAX_DISCARD_SEGMENTS.to_le_bytes());
            put(56, &[1]); // write_zeroes_may_unmap
        }
        c
    }

    fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            // If the write fails the thread cannot be told to stop; joining would hang, so
            // leave it detached (it holds only its own references).
            if running.kill.write(1).is_ok() {
                let _ = running.thread.join();
            }
        }
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl VirtioDevice for VirtioBlock {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_space();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| config.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Every field is read-only without VIRTIO_BLK_F_CONFIG_WCE.
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != self.queue_sizes.len() || ctx.queue_events.len() != ctx.queues.len()
        {
            return Err(ActivateError::QueueCount {
                expected: self.queue_sizes.len(),
                got: ctx.queues.len(),
            });
        }
        self.stop();
        *self.queues.lock().unwrap_or_else(|e| e.into_inner()) = ctx.queues;
        let kill = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Io)?;
        let acked = ctx.acked_features;
        let config = RequestConfig {
            discard: acked & self.features & (1 << VIRTIO_BLK_F_DISCARD) != 0,
            write_zeroes: acked & self.features & (1 << VIRTIO_BLK_F_WRITE_ZEROES) != 0,
        };
        let name = format!("blk-{}", self.backend.id().replace('\0', ""));
        let worker = Worker::new(
            ctx.mem,
            self.queues.clone(),
            ctx.queue_events,
            kill.try_clone().map_err(ActivateError::Io)?,
            ctx.interrupt,
            self.backend.clone(),
            config,
            name.clone(),
        )
        .map_err(ActivateError::Io)?;
        let body = worker.prepare().map_err(ActivateError::Io)?;
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(body)
            .map_err(ActivateError::Io)?;
        self.running = Some(Running { kill, thread });
        Ok(())
    }

    fn reset(&mut self) {
        self.stop();
    }
}

impl Drop for VirtioBlock {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;
