// SPDX-License-Identifier: Apache-2.0
//! virtio-blk (virtio 1.2, 5.2) on the block layer.
//!
//! Requests run on a block I/O thread per queue, named `blk-<id>` (queue 0) and
//! `blk-<id>-q<N>`, started when the driver sets `DRIVER_OK` and stopped (and joined) on reset
//! or drop. With more than one queue (`num-queues`, QEMU's property) the device offers
//! `VIRTIO_BLK_F_MQ`: each queue is its own I/O context (its thread, its io_uring or request
//! threads) on the shared backend. See [`request`] for what is accepted and how malformed
//! requests complete.

pub mod request;
mod uring;
mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use block::{Backend, SECTOR_SIZE};
use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::request::{RequestConfig, MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS};
use self::worker::Worker;
use super::{ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most queues a device offers (`num-queues`).
pub const MAX_QUEUES: u16 = 16;
/// Segment size limit advertised in `size_max`.
pub const SIZE_MAX: u32 = 1 << 20;
/// Length of the config space the device exposes: `struct virtio_blk_config` up to
/// `write_zeroes_may_unmap` and its padding (the secure-erase and zoned fields are not
/// offered; reads beyond read 0).
pub const CONFIG_SPACE_SIZE: usize =
    std::mem::offset_of!(virtio_blk_config, max_secure_erase_sectors);
const _: () = assert!(CONFIG_SPACE_SIZE == 60);

/// The virtio-blk config space (`struct virtio_blk_config`, virtio 1.2, 5.2.4).
///
/// Fields hold little-endian values (virtio 1.x): build them with `to_le()`. On x86, the only
/// target of this VMM, that is the identity, but it keeps the layout right on any host.
#[derive(Debug, Default, Clone, Copy)]
#[repr(transparent)]
pub struct BlockConfig(pub virtio_blk_config);

// SAFETY: `virtio_blk_config` is `repr(C, packed)` plain data (integers and arrays of them):
// it has no padding and every bit pattern is a valid value.
unsafe impl ByteValued for BlockConfig {}

/// The I/O thread of one queue.
struct Running {
    kill: EventFd,
    thread: JoinHandle<()>,
    /// Its queue (cleared on reset).
    queue: Arc<Mutex<Vec<Queue>>>,
}

/// A virtio-blk device on a block [`Backend`].
pub struct VirtioBlock {
    backend: Arc<Backend>,
    features: u64,
    queue_sizes: Vec<u16>,
    running: Vec<Running>,
    /// Set before the I/O threads are killed: start nothing more.
    stopping: Arc<AtomicBool>,
}

impl std::fmt::Debug for VirtioBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioBlock")
            .field("backend", &self.backend.id())
            .field("features", &format_args!("{:#x}", self.features))
            .field("queues", &self.queue_sizes.len())
            .field("running", &!self.running.is_empty())
            .finish()
    }
}

impl VirtioBlock {
    /// A single-queue device on `backend`; a read-only backend gives a read-only device
    /// without DISCARD or WRITE_ZEROES.
    pub fn new(backend: Arc<Backend>) -> Self {
        Self::with_queues(backend, 1)
    }

    /// A device with `num_queues` queues (1 to [`MAX_QUEUES`], clamped), offering
    /// `VIRTIO_BLK_F_MQ` when there are several.
    pub fn with_queues(backend: Arc<Backend>, num_queues: u16) -> Self {
        let num_queues = num_queues.clamp(1, MAX_QUEUES);
        let mut features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
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
        if num_queues > 1 {
            features |= 1 << VIRTIO_BLK_F_MQ;
        }
        Self {
            backend,
            features,
            queue_sizes: vec![QUEUE_SIZE; usize::from(num_queues)],
            running: Vec::new(),
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// Whether the I/O threads run.
    pub fn is_running(&self) -> bool {
        !self.running.is_empty()
    }

    /// The number of queues.
    pub fn num_queues(&self) -> u16 {
        self.queue_sizes.len() as u16
    }

    /// The config space, little endian.
    pub fn config(&self) -> BlockConfig {
        let discard = self.features & (1 << VIRTIO_BLK_F_DISCARD) != 0;
        let write_zeroes = self.features & (1 << VIRTIO_BLK_F_WRITE_ZEROES) != 0;
        let if_offered = |offered: bool, v: u32| if offered { v.to_le() } else { 0 };
        BlockConfig(virtio_blk_config {
            capacity: (self.backend.size() / SECTOR_SIZE).to_le(),
            size_max: SIZE_MAX.to_le(),
            seg_max: u32::from(QUEUE_SIZE - 2).to_le(),
            // geometry: not offered.
            blk_size: (SECTOR_SIZE as u32).to_le(),
            // physical_block_exp 0, alignment_offset 0, min_io_size 1 block, opt_io_size 0.
            min_io_size: 1u16.to_le(),
            // Informational without VIRTIO_BLK_F_CONFIG_WCE.
            wce: 1,
            num_queues: self.num_queues().to_le(),
            max_discard_sectors: if_offered(discard, MAX_DISCARD_SECTORS),
            max_discard_seg: if_offered(discard, MAX_DISCARD_SEGMENTS),
            discard_sector_alignment: if_offered(discard, 1),
            max_write_zeroes_sectors: if_offered(write_zeroes, MAX_DISCARD_SECTORS),
            max_write_zeroes_seg: if_offered(write_zeroes, MAX_DISCARD_SEGMENTS),
            write_zeroes_may_unmap: u8::from(write_zeroes),
            ..Default::default()
        })
    }

    /// The bytes of the config space the device exposes (see [`CONFIG_SPACE_SIZE`]).
    pub fn config_space(&self) -> [u8; CONFIG_SPACE_SIZE] {
        let mut c = [0u8; CONFIG_SPACE_SIZE];
        c.copy_from_slice(&self.config().as_slice()[..CONFIG_SPACE_SIZE]);
        c
    }

    /// Starts the I/O thread `name` of one queue.
    fn start_queue(
        &mut self,
        name: String,
        queue: Queue,
        event: EventFd,
        mem: &GuestMemoryMmap,
        interrupt: &Arc<VirtioInterrupt>,
        config: RequestConfig,
    ) -> Result<(), ActivateError> {
        let queue = Arc::new(Mutex::new(vec![queue]));
        let kill = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Io)?;
        let worker = Worker::new(
            mem.clone(),
            queue.clone(),
            vec![event],
            kill.try_clone().map_err(ActivateError::Io)?,
            interrupt.clone(),
            self.backend.clone(),
            config,
            name.clone(),
            self.stopping.clone(),
        )
        .map_err(ActivateError::Io)?;
        let body = worker.prepare().map_err(ActivateError::Io)?;
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(body)
            .map_err(ActivateError::Io)?;
        self.running.push(Running {
            kill,
            thread,
            queue,
        });
        Ok(())
    }

    fn stop(&mut self) {
        if self.running.is_empty() {
            return;
        }
        self.stopping.store(true, Ordering::Release);
        // A thread whose kill cannot be written cannot be told to stop; joining it would hang,
        // so it is left detached (it holds only its own references).
        let told: Vec<Running> = self
            .running
            .drain(..)
            .filter(|r| r.kill.write(1).is_ok())
            .collect();
        // A request an injected delay holds would hold the reset: release delays until every
        // thread (each joins its request threads) is gone.
        while told.iter().any(|r| !r.thread.is_finished()) {
            self.backend.release_delays();
            std::thread::sleep(Duration::from_millis(1));
        }
        for r in told {
            let _ = r.thread.join();
            r.queue.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }
}

impl VirtioDevice for VirtioBlock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
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
        self.stopping = Arc::new(AtomicBool::new(false));
        let acked = ctx.acked_features;
        let config = RequestConfig {
            discard: acked & self.features & (1 << VIRTIO_BLK_F_DISCARD) != 0,
            write_zeroes: acked & self.features & (1 << VIRTIO_BLK_F_WRITE_ZEROES) != 0,
        };
        let base = format!("blk-{}", self.backend.id().replace('\0', ""));
        for (i, (queue, event)) in ctx.queues.into_iter().zip(ctx.queue_events).enumerate() {
            // A driver without MQ sets up queue 0 only: the others get no thread.
            if !queue.ready() {
                continue;
            }
            let name = if i == 0 {
                base.clone()
            } else {
                format!("{base}-q{i}")
            };
            let started = self.start_queue(name, queue, event, &ctx.mem, &ctx.interrupt, config);
            if let Err(e) = started {
                // The queues started before this one stop again.
                self.stop();
                return Err(e);
            }
        }
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
