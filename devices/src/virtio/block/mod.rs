// SPDX-License-Identifier: Apache-2.0
//! virtio-blk (virtio 1.2, 5.2) on the block layer.
//!
//! Requests run on block I/O threads, one per queue unless the device is built with fewer
//! (`io-threads`): queue `i` runs on thread `i % threads`, named `blk-<id>` (thread 0) and
//! `blk-<id>-q<N>` (thread N, whose first queue is N). The threads are created with the
//! device (so that whatever the VMM confines threads with is in place before the guest runs,
//! and so that activation never creates a thread on a vCPU's thread) and run their queues'
//! data path from `DRIVER_OK` to reset; they end (and are joined) when the device is dropped.
//! With more than one queue (`num-queues`, QEMU's property) the device offers
//! `VIRTIO_BLK_F_MQ`: each thread is one I/O context (its io_uring or request threads) for
//! its queues, on the shared backend. See [`request`] for what is accepted and how malformed
//! requests complete.

mod alias;
pub mod request;
mod uring;
mod worker;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::GuestMemoryMmap;
use block::{Backend, SECTOR_SIZE};
use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::request::{RequestConfig, MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS};
use self::worker::{QueueCounts, Worker};
use super::{ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt};
use crate::state::StateError;

/// What virtio-blk saves of itself for a migration (its queues and registers are the
/// transport's): what the guest's driver was told about the disk, so that a destination
/// with another disk behind the device refuses the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// The features offered (`VIRTIO_BLK_F_*` and the transport's), e.g. RO, MQ, DISCARD.
    pub features: u64,
    /// The number of queues (`num_queues` in the config space).
    pub num_queues: u16,
    /// The disk's size in 512-byte sectors (`capacity` in the config space).
    pub capacity: u64,
}

/// Why [`VirtioBlock::quiesce`] refused.
#[derive(Debug, thiserror::Error)]
pub enum QuiesceError {
    /// Requests are parked by the `werror`/`rerror=stop` policy; they would be lost.
    #[error("disk {0} has requests stopped by an I/O error: resume or fix them first")]
    Stopped(String),
    /// Requests were still outstanding when the time ran out.
    #[error("disk {disk} still has {outstanding} requests in flight after {} ms", .timeout.as_millis())]
    Timeout {
        /// The disk's id.
        disk: String,
        /// Requests popped and not completed, over all queues.
        outstanding: usize,
        /// How long the quiesce waited.
        timeout: Duration,
    },
}

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

/// Runs at the start of a device thread, before it serves anything: the VMM confines the
/// thread there (seccomp). An error ends the thread (the device then fails activation).
pub type ThreadHook = Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

/// The hooks of a device's threads: its queue I/O threads and their request threads.
#[derive(Clone)]
pub struct ThreadHooks {
    /// Runs first on each queue's I/O thread.
    pub io: ThreadHook,
    /// Runs first on each request thread (`aio=threads`, or requests an acting filter sees).
    pub request: ThreadHook,
}

impl Default for ThreadHooks {
    fn default() -> Self {
        let none: ThreadHook = Arc::new(|| Ok(()));
        Self {
            io: none.clone(),
            request: none,
        }
    }
}

/// What a queue's thread needs to run its data path after `DRIVER_OK`.
struct Activation {
    mem: GuestMemoryMmap,
    /// The thread's ready queues.
    queue: Arc<Mutex<Vec<Queue>>>,
    /// Their notification eventfds, in the same order.
    events: Vec<EventFd>,
    interrupt: Arc<VirtioInterrupt>,
    config: RequestConfig,
    stopping: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    counts: Arc<QueueCounts>,
    /// Answered once the data path is set up (or could not be).
    ready: std::sync::mpsc::Sender<io::Result<()>>,
}

/// An I/O thread of the device's queues, alive as long as the device.
struct QueueThread {
    /// Sends activations; dropping it ends the thread.
    start: Option<std::sync::mpsc::Sender<Activation>>,
    /// Ends the running data path (reset).
    kill: EventFd,
    /// Set while a data path runs.
    busy: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The running data path's queues (cleared on reset).
    queue: Option<Arc<Mutex<Vec<Queue>>>>,
    /// The device's index of each of those queues, in their order.
    indices: Vec<usize>,
    /// What the running data path publishes for [`VirtioBlock::quiesce`].
    counts: Option<Arc<QueueCounts>>,
    /// Clones of the running queues' notification eventfds: a quiesce kicks the thread.
    wake: Vec<EventFd>,
}

/// A virtio-blk device on a block [`Backend`].
pub struct VirtioBlock {
    backend: Arc<Backend>,
    features: u64,
    queue_sizes: Vec<u16>,
    /// Queue `i` runs on thread `i % threads.len()`; empty when they could not be created
    /// (activation then fails).
    threads: Vec<QueueThread>,
    /// Why the threads could not be created.
    spawn_error: Option<io::Error>,
    /// Set before the data paths are killed: start nothing more.
    stopping: Arc<AtomicBool>,
    /// Set while [`VirtioBlock::quiesce`] runs: throttled requests start at once.
    draining: Arc<AtomicBool>,
    /// The running data path's guest memory and interrupt (set on activation).
    running: Option<(GuestMemoryMmap, Arc<VirtioInterrupt>)>,
}

impl std::fmt::Debug for VirtioBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioBlock")
            .field("backend", &self.backend.id())
            .field("features", &format_args!("{:#x}", self.features))
            .field("queues", &self.queue_sizes.len())
            .field("running", &self.is_running())
            .finish()
    }
}

impl VirtioBlock {
    /// A single-queue device on `backend`; a read-only backend gives a read-only device
    /// without DISCARD or WRITE_ZEROES.
    pub fn new(backend: Arc<Backend>) -> Self {
        Self::with_queues(backend, 1)
    }

    /// [`VirtioBlock::build`] with a thread per queue and without thread hooks.
    pub fn with_queues(backend: Arc<Backend>, num_queues: u16) -> Self {
        Self::build(backend, num_queues, num_queues, ThreadHooks::default())
    }

    /// A device with `num_queues` queues (1 to [`MAX_QUEUES`], clamped), offering
    /// `VIRTIO_BLK_F_MQ` when there are several, served by `io_threads` I/O threads (1 to
    /// `num_queues`, clamped; queue `i` on thread `i % io_threads`). Each thread runs
    /// `hooks.io` first; their request threads run `hooks.request`.
    pub fn build(
        backend: Arc<Backend>,
        num_queues: u16,
        io_threads: u16,
        hooks: ThreadHooks,
    ) -> Self {
        let num_queues = num_queues.clamp(1, MAX_QUEUES);
        let io_threads = io_threads.clamp(1, num_queues);
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
        // Read the host's huge-page setting for the I/O alias here: the I/O threads that map
        // it are confined before they could read it (and would then assume huge pages).
        let _ = alias::shmem_may_be_huge();
        let base = format!("blk-{}", backend.id().replace('\0', ""));
        let mut threads = Vec::new();
        let mut spawn_error = None;
        for i in 0..io_threads {
            let name = if i == 0 {
                base.clone()
            } else {
                format!("{base}-q{i}")
            };
            match QueueThread::spawn(name, backend.clone(), hooks.clone()) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    spawn_error = Some(e);
                    break;
                }
            }
        }
        if spawn_error.is_some() {
            // Without all of its threads the device cannot run: end the others.
            threads.clear();
        }
        Self {
            backend,
            features,
            queue_sizes: vec![QUEUE_SIZE; usize::from(num_queues)],
            threads,
            spawn_error,
            stopping: Arc::new(AtomicBool::new(false)),
            draining: Arc::new(AtomicBool::new(false)),
            running: None,
        }
    }

    /// How errors name the device: `disk <id>`.
    fn name(&self) -> String {
        format!("disk {}", self.backend.id())
    }

    /// What the driver was told about the disk, for a migration.
    pub fn save_state(&self) -> BlockState {
        BlockState {
            features: self.features,
            num_queues: self.num_queues(),
            capacity: self.backend.size() / SECTOR_SIZE,
        }
    }

    /// Checks a saved [`BlockState`] against this device: the disk must have the size, the
    /// queue count and the features the source's driver was told of (the device's running
    /// state is its transport's). Nothing is changed.
    ///
    /// # Errors
    /// [`StateError::Mismatch`] naming the disk and what differs.
    pub fn restore_state(&mut self, state: &BlockState) -> Result<(), StateError> {
        let here = self.save_state();
        if state.capacity != here.capacity {
            return Err(StateError::mismatch(
                self.name(),
                "size",
                format_args!("{} sectors", state.capacity),
                format_args!("{} sectors", here.capacity),
            ));
        }
        if state.num_queues != here.num_queues {
            return Err(StateError::mismatch(
                self.name(),
                "num-queues",
                state.num_queues,
                here.num_queues,
            ));
        }
        if state.features != here.features {
            return Err(StateError::mismatch(
                self.name(),
                "offered feature set",
                format_args!("{:#x}", state.features),
                format_args!("{:#x}", here.features),
            ));
        }
        Ok(())
    }

    /// Waits until no queue has a request popped and not yet completed, so that the queues'
    /// saved indices are exact: called by the VMM with every vCPU parked (the guest makes
    /// nothing new available), on the main thread. Each running queue's thread is kicked, so
    /// that what the guest made available before its vCPUs stopped is served too; a request
    /// the throttle holds starts at once, without waiting for its limits (as QEMU's drain
    /// lifts them: a quiesce bounded by the migration's downtime cannot wait out a limit of
    /// a few operations a second), and is not accounted. It ends when every queue's used
    /// ring holds every completion (and the interrupt was sent) and nothing more is
    /// available. A queue the driver broke (`DEVICE_NEEDS_RESET`) counts once its host
    /// operations returned. The device then keeps running as before.
    ///
    /// # Errors
    /// [`QuiesceError::Stopped`] at once when requests are parked by the error policy
    /// (`werror`/`rerror=stop`); [`QuiesceError::Timeout`] when requests are still
    /// outstanding after `timeout`. The device runs on in either case.
    pub fn quiesce(&self, timeout: Duration) -> Result<(), QuiesceError> {
        let Some((mem, interrupt)) = self.running.as_ref().filter(|_| self.is_running()) else {
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        self.draining.store(true, Ordering::Release);
        for wake in self.threads.iter().flat_map(|t| &t.wake) {
            // A failed write means the counter is saturated: the thread is woken anyway.
            let _ = wake.write(1);
        }
        let result = loop {
            let mut outstanding = 0;
            let mut settled = true;
            let mut stopped = false;
            for t in &self.threads {
                let (Some(queue), Some(counts)) = (&t.queue, &t.counts) else {
                    continue;
                };
                // The thread changes the counts under this mutex as it pops and completes.
                let queues = queue.lock().unwrap_or_else(|e| e.into_inner());
                let n = counts.outstanding.load(Ordering::Acquire);
                stopped |= counts.parked.load(Ordering::Acquire) > 0;
                outstanding += n;
                if n > 0 {
                    settled = false;
                } else if !interrupt.needs_reset() {
                    // Available and not popped yet: the kick has not been served.
                    let pending = queues.iter().filter(|q| q.ready()).any(|q| {
                        q.avail_idx(mem, std::sync::atomic::Ordering::Acquire)
                            .is_ok_and(|idx| idx.0 != q.next_avail())
                    });
                    settled &= !pending;
                }
            }
            if stopped {
                break Err(QuiesceError::Stopped(self.backend.id().to_owned()));
            }
            if settled {
                break Ok(());
            }
            if Instant::now() >= deadline {
                break Err(QuiesceError::Timeout {
                    disk: self.backend.id().to_owned(),
                    outstanding,
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        self.draining.store(false, Ordering::Release);
        result
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// Whether the data path runs (between `DRIVER_OK` and reset).
    pub fn is_running(&self) -> bool {
        self.threads.iter().any(|t| t.queue.is_some())
    }

    /// The number of I/O threads serving the queues.
    pub fn io_threads(&self) -> u16 {
        self.threads.len() as u16
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

    /// Stops every queue's data path (its thread stays for the next activation).
    fn stop(&mut self) {
        if !self.is_running() {
            return;
        }
        self.stopping.store(true, Ordering::Release);
        for t in &self.threads {
            if t.queue.is_some() {
                // A failed write means the counter is saturated: the thread is woken anyway.
                let _ = t.kill.write(1);
            }
        }
        // A request an injected delay holds would hold the reset: release delays until every
        // data path (each joins its request threads) has ended.
        while self.threads.iter().any(|t| t.busy.load(Ordering::Acquire)) {
            self.backend.release_delays();
            std::thread::sleep(Duration::from_millis(1));
        }
        for t in &mut self.threads {
            if let Some(q) = t.queue.take() {
                q.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
            t.indices.clear();
            t.counts = None;
            t.wake.clear();
        }
        self.running = None;
    }
}

impl QueueThread {
    /// Creates the thread `name`: it runs `hooks.io`, then one data path per activation.
    fn spawn(name: String, backend: Arc<Backend>, hooks: ThreadHooks) -> io::Result<Self> {
        let kill = EventFd::new(EFD_NONBLOCK)?;
        let thread_kill = kill.try_clone()?;
        let busy = Arc::new(AtomicBool::new(false));
        let thread_busy = busy.clone();
        let (tx, rx) = std::sync::mpsc::channel::<Activation>();
        let thread_name = name.clone();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let hooked = (hooks.io)();
            for act in rx {
                let ran = hooked.as_ref().map_err(io_error).and_then(|()| {
                    // Leftover kills of an earlier reset must not end this run.
                    let _ = thread_kill.read();
                    let worker = Worker::new(
                        act.mem,
                        act.queue,
                        act.events,
                        thread_kill.try_clone()?,
                        act.interrupt,
                        backend.clone(),
                        act.config,
                        thread_name.clone(),
                        act.stopping,
                        act.draining,
                        act.counts,
                        hooks.request.clone(),
                    )?;
                    worker.prepare()
                });
                match ran {
                    Ok(body) => {
                        let _ = act.ready.send(Ok(()));
                        body();
                    }
                    Err(e) => {
                        let _ = act.ready.send(Err(e));
                    }
                }
                thread_busy.store(false, Ordering::Release);
            }
        })?;
        Ok(Self {
            start: Some(tx),
            kill,
            busy,
            thread: Some(thread),
            queue: None,
            indices: Vec::new(),
            counts: None,
            wake: Vec::new(),
        })
    }

    /// Hands the thread an activation of the device's queues `indices` and waits until its
    /// data path is set up.
    fn activate(
        &mut self,
        act: Activation,
        indices: Vec<usize>,
        ready: Receiver<io::Result<()>>,
    ) -> io::Result<()> {
        let queue = act.queue.clone();
        let counts = act.counts.clone();
        let wake = act
            .events
            .iter()
            .map(EventFd::try_clone)
            .collect::<io::Result<Vec<_>>>()?;
        self.busy.store(true, Ordering::Release);
        let sent = self.start.as_ref().map(|tx| tx.send(act));
        if !matches!(sent, Some(Ok(()))) {
            self.busy.store(false, Ordering::Release);
            return Err(io::Error::other("the queue's I/O thread has ended"));
        }
        match ready.recv() {
            Ok(Ok(())) => {
                self.queue = Some(queue);
                self.indices = indices;
                self.counts = Some(counts);
                self.wake = wake;
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::other("the queue's I/O thread has ended")),
        }
    }
}

impl Drop for QueueThread {
    fn drop(&mut self) {
        // Closing the channel ends the thread once its data path (killed by the device's
        // stop) is over.
        self.start = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The hook's error, for the activation's reply.
fn io_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
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
        if let Some(e) = &self.spawn_error {
            return Err(ActivateError::Io(io_error(e)));
        }
        self.stop();
        self.stopping = Arc::new(AtomicBool::new(false));
        self.running = Some((ctx.mem.clone(), ctx.interrupt.clone()));
        let acked = ctx.acked_features;
        let config = RequestConfig {
            discard: acked & self.features & (1 << VIRTIO_BLK_F_DISCARD) != 0,
            write_zeroes: acked & self.features & (1 << VIRTIO_BLK_F_WRITE_ZEROES) != 0,
        };
        // Each thread's ready queues; a driver without MQ sets up queue 0 only, and the
        // others stay idle.
        let threads = self.threads.len();
        let mut groups: Vec<(Vec<usize>, Vec<Queue>, Vec<EventFd>)> =
            (0..threads).map(|_| Default::default()).collect();
        for (i, (queue, event)) in ctx.queues.into_iter().zip(ctx.queue_events).enumerate() {
            if let Some((indices, queues, events)) =
                groups.get_mut(i % threads).filter(|_| queue.ready())
            {
                indices.push(i);
                queues.push(queue);
                events.push(event);
            }
        }
        for (t, (indices, queues, events)) in self.threads.iter_mut().zip(groups) {
            if queues.is_empty() {
                continue;
            }
            let (ready, wait) = channel();
            let act = Activation {
                mem: ctx.mem.clone(),
                queue: Arc::new(Mutex::new(queues)),
                events,
                interrupt: ctx.interrupt.clone(),
                config,
                stopping: self.stopping.clone(),
                draining: self.draining.clone(),
                counts: Arc::new(QueueCounts::default()),
                ready,
            };
            if let Err(e) = t.activate(act, indices, wait) {
                // The threads started before this one stop again.
                self.stop();
                return Err(ActivateError::Io(e));
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.stop();
    }

    fn running_queue_state(&self, index: usize) -> Option<QueueState> {
        let t = self.threads.get(index % self.threads.len().max(1))?;
        let at = t.indices.iter().position(|&i| i == index)?;
        let queues = t.queue.as_ref()?.lock().unwrap_or_else(|e| e.into_inner());
        queues.get(at).map(|q| q.state())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl Drop for VirtioBlock {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;
