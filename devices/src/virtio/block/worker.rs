// SPDX-License-Identifier: Apache-2.0
//! The block I/O thread: waits for queue notifications, runs requests, raises the interrupt.
//!
//! It shares with the rest of the VMM only the guest memory, the queues (behind the device's
//! own mutex), the backend and eventfds: it never enters the transport or any VM-wide lock.
//!
//! The I/O thread parses each request as it pops it and hands the host work to a small pool
//! of request threads, so that the host works on several in parallel as a disk with a deep
//! queue would, and so that the I/O thread itself never waits for storage: it puts each
//! request in the used ring as it completes (virtio allows completion in any order), and
//! when the backend is yanked it completes the abandoned requests at once with `EIO`
//! through the error policy, while their threads stay in their syscalls and drop the late
//! results (`block::yank`).
//!
//! Ordering, so that the error policy's `stop` loses and reorders nothing:
//! - requests are numbered as they are popped and start in that order;
//! - a FLUSH is a barrier: it starts only when nothing else is in flight, and nothing starts
//!   while it runs, so it never completes before a write made available earlier;
//! - a request the policy stops is parked; while any is parked nothing new starts;
//! - on the backend's retry event (and only for requests stopped before that resume) the
//!   parked requests go back in front of the line, in their original order, and run one at a
//!   time; one that stops again is parked again (with another `BLOCK_IO_ERROR`) and holds the
//!   rest;
//! - a request over bytes that a yanked, still unreturned write covers waits for that write
//!   to return, so that the late write cannot land after it;
//! - a request over the backend's I/O limits (`block::throttle`) waits first in line, and
//!   so holds the ones behind it, until the throttle's timer fires.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::GuestMemoryMmap;
use block::{Admission, Admitted, Aio, Backend, ThrottleQueue, Ticket, Watcher};
use event_manager::{
    EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberId, SubscriberOps,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::request::{
    complete, parse, run, status_of, ChainError, Op, Outcome, Parsed, RequestConfig,
};
use super::uring::{Finished, Ring};
use super::ThreadHook;
use crate::virtio::VirtioInterrupt;

/// Most request threads per I/O thread (its `Pool`) doing work.
pub const MAX_REQUEST_THREADS: usize = 4;
/// Most further threads an I/O thread keeps while they are stuck in syscalls a yank abandoned;
/// beyond that, new requests wait for a thread.
pub const MAX_STUCK_THREADS: usize = 16;

/// What a queue's I/O thread publishes for the device's quiesce (see
/// [`super::VirtioBlock::quiesce`]): plain counters, changed under the queue's mutex where
/// requests are popped and put in the used ring, so that a reader holding that mutex sees
/// them agree with the queue's indices.
#[derive(Debug, Default)]
pub(super) struct QueueCounts {
    /// Requests popped and not yet in the used ring (in line, throttled, in flight, parked),
    /// or dropped because the driver broke the device.
    pub outstanding: AtomicUsize,
    /// Of those, the requests the error policy stopped (`werror`/`rerror=stop`).
    pub parked: AtomicUsize,
}

impl QueueCounts {
    fn retire(&self, n: usize) {
        if n > 0 {
            self.outstanding.fetch_sub(n, Ordering::AcqRel);
        }
    }
}

/// A descriptor chain that owns its handle on guest memory, so it can cross threads.
type Chain = DescriptorChain<Arc<GuestMemoryMmap>>;

/// A request popped from a queue and parsed, not yet completed.
#[derive(Clone)]
struct Pending {
    /// Position in the order requests were popped.
    seq: u64,
    queue: usize,
    /// The chain's head, for the used ring.
    head: u16,
    parsed: Arc<Parsed>,
    /// Runs alone: a FLUSH (a barrier) or a retried request.
    serial: bool,
    /// The backend's resume epoch when it was stopped (parked requests only).
    epoch: u64,
}

/// A request handed to the pool, admitted on the backend (dropping it releases it).
struct Job {
    /// Unique per start (a retried request starts again under a new id).
    id: u64,
    parsed: Arc<Parsed>,
    admitted: Admitted,
}

/// What a request thread reports: the result, or `None` if a yank abandoned the request.
struct Done {
    id: u64,
    result: Option<Result<Outcome, ChainError>>,
}

/// A request with the pool or on the ring.
struct Started {
    req: Pending,
    ticket: Arc<Ticket>,
    /// Completed already, because a yank abandoned it; its late report is dropped.
    answered: bool,
    /// On the io_uring engine (no request thread holds it).
    on_ring: bool,
}

/// One request thread, and the ticket it works on now.
struct PoolThread {
    handle: JoinHandle<()>,
    current: Arc<Mutex<Option<Arc<Ticket>>>>,
}

/// The request threads of one I/O thread, grown on demand up to [`MAX_REQUEST_THREADS`] working
/// ones (plus those stuck in abandoned syscalls, up to [`MAX_STUCK_THREADS`]).
struct Pool {
    jobs: Option<Sender<Job>>,
    shared_jobs: Arc<Mutex<Receiver<Job>>>,
    done_tx: Sender<Done>,
    done_wake: EventFd,
    idle: Arc<AtomicUsize>,
    threads: Vec<PoolThread>,
    name: String,
    /// Runs first on every request thread.
    hook: ThreadHook,
}

impl Pool {
    fn new(done_tx: Sender<Done>, done_wake: EventFd, name: String, hook: ThreadHook) -> Self {
        let (tx, rx) = channel();
        Self {
            jobs: Some(tx),
            shared_jobs: Arc::new(Mutex::new(rx)),
            done_tx,
            done_wake,
            idle: Arc::new(AtomicUsize::new(0)),
            threads: Vec::new(),
            name,
            hook,
        }
    }

    /// Queues a job, starting another thread when all are busy and the limit allows;
    /// `stuck` threads (in abandoned syscalls) do not count against it.
    fn submit(&mut self, job: Job, ctx: &Arc<RequestContext>, stuck: usize) -> io::Result<()> {
        let limit = MAX_REQUEST_THREADS + stuck.min(MAX_STUCK_THREADS);
        if self.idle.load(Ordering::Acquire) == 0 && self.threads.len() < limit {
            self.spawn(ctx)?;
        }
        match &self.jobs {
            Some(tx) => tx
                .send(job)
                .map_err(|_| io::Error::other("request pool stopped")),
            None => Err(io::Error::other("request pool stopped")),
        }
    }

    fn spawn(&mut self, ctx: &Arc<RequestContext>) -> io::Result<()> {
        let jobs = self.shared_jobs.clone();
        let done = self.done_tx.clone();
        let wake = self.done_wake.try_clone()?;
        let idle = self.idle.clone();
        let ctx = ctx.clone();
        let current = Arc::new(Mutex::new(None));
        let mine = current.clone();
        let name = format!("{}-r{}", self.name, self.threads.len());
        let hook = self.hook.clone();
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            // Without its confinement the thread serves nothing: its jobs stay queued for the
            // others (or are dropped, releasing their tickets, when the pool stops).
            if hook().is_err() {
                return;
            }
            loop {
                idle.fetch_add(1, Ordering::AcqRel);
                let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
                idle.fetch_sub(1, Ordering::AcqRel);
                let Ok(job) = job else { return };
                // The device is being reset: leave the rest alone (dropping the job releases it).
                if ctx.stopping.load(Ordering::Acquire) {
                    return;
                }
                *mine.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(job.admitted.ticket().clone());
                let result = run(&job.parsed, job.admitted.ticket(), &ctx.mem, &ctx.backend);
                drop(job.admitted);
                *mine.lock().unwrap_or_else(|e| e.into_inner()) = None;
                if done.send(Done { id: job.id, result }).is_err() {
                    return;
                }
                // A failed wake only happens when the counter saturates: the I/O thread is due
                // to wake anyway.
                let _ = wake.write(1);
            }
        })?;
        self.threads.push(PoolThread { handle, current });
        Ok(())
    }

    /// Stops taking jobs and waits for the threads to finish the ones they have, so that no
    /// request touches guest memory after the device is reset. A thread stuck in a syscall
    /// a yank abandoned is left to finish alone: it drops its result and touches nothing.
    fn stop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            loop {
                if t.handle.is_finished() {
                    let _ = t.handle.join();
                    break;
                }
                let abandoned = t
                    .current
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .is_some_and(|ticket| ticket.is_abandoned());
                if abandoned {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// What every request needs, shared by the I/O thread and the pool.
struct RequestContext {
    mem: Arc<GuestMemoryMmap>,
    backend: Arc<Backend>,
    config: RequestConfig,
    /// Set by the device before it kills the thread: start nothing more.
    stopping: Arc<AtomicBool>,
    /// Set by the device while it quiesces: requests the throttle holds start without waiting
    /// (QEMU lifts the limits during a drain).
    draining: Arc<AtomicBool>,
}

/// Everything the I/O thread owns or shares.
pub(super) struct Worker {
    ctx: Arc<RequestContext>,
    queues: Arc<Mutex<Vec<Queue>>>,
    queue_events: Vec<EventFd>,
    kill: EventFd,
    interrupt: Arc<VirtioInterrupt>,
    pool: Pool,
    /// The io_uring engine (`aio=io_uring`), when the host allowed one.
    ring: Option<Ring>,
    /// This thread's wake-ups from the backend (resume, yank).
    watcher: Arc<Watcher>,
    /// This thread's place in the backend's throttle group (its timer wakes it).
    throttle: ThrottleQueue,
    done_rx: Receiver<Done>,
    done_wake: EventFd,
    /// Requests with the pool, by job id.
    in_flight: BTreeMap<u64, Started>,
    /// The id of the next job.
    next_job: u64,
    /// A serial request (flush, retry) is in flight: nothing else starts.
    serial_in_flight: bool,
    /// Popped requests not yet started, in order.
    held: VecDeque<Pending>,
    /// Sequence number of the next popped request.
    next_seq: u64,
    /// Requests stopped by the error policy, to run again on the backend's retry event.
    parked: Vec<Pending>,
    /// The driver broke the protocol: ignore the queues until the device is reset.
    broken: bool,
    /// The kill eventfd fired: the thread ends.
    killed: bool,
    /// The registration error of [`init`](MutEventSubscriber::init), for `prepare` to report.
    setup_error: Option<event_manager::Error>,
    /// What the device's quiesce reads.
    counts: Arc<QueueCounts>,
}

impl Worker {
    /// Sets up the I/O thread's state for a device named `name` (thread names derive from it).
    ///
    /// # Errors
    /// Fails when the completion eventfd, the backend watcher or the throttle timer cannot
    /// be created.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mem: GuestMemoryMmap,
        queues: Arc<Mutex<Vec<Queue>>>,
        queue_events: Vec<EventFd>,
        kill: EventFd,
        interrupt: Arc<VirtioInterrupt>,
        backend: Arc<Backend>,
        config: RequestConfig,
        name: String,
        stopping: Arc<AtomicBool>,
        draining: Arc<AtomicBool>,
        counts: Arc<QueueCounts>,
        request_hook: ThreadHook,
    ) -> io::Result<Self> {
        let done_wake = EventFd::new(EFD_NONBLOCK)?;
        let (done_tx, done_rx) = channel();
        let pool = Pool::new(done_tx, done_wake.try_clone()?, name, request_hook);
        let watcher = backend.watch()?;
        let throttle = backend.throttle().queue()?;
        // The VMM said at start-up when the host refuses io_uring; the thread engine serves.
        let ring = match backend.aio() {
            // Room for every request the thread's queues can hold.
            Aio::IoUring => Ring::new(
                u32::from(super::QUEUE_SIZE) * queue_events.len() as u32,
                &mem,
            )
            .ok(),
            Aio::Threads => None,
        };
        Ok(Self {
            ctx: Arc::new(RequestContext {
                mem: Arc::new(mem),
                backend,
                config,
                stopping,
                draining,
            }),
            queues,
            queue_events,
            kill,
            interrupt,
            pool,
            ring,
            watcher,
            throttle,
            done_rx,
            done_wake,
            in_flight: BTreeMap::new(),
            next_job: 0,
            serial_in_flight: false,
            held: VecDeque::new(),
            next_seq: 0,
            parked: Vec::new(),
            broken: false,
            killed: false,
            setup_error: None,
            counts,
        })
    }

    fn process_all(&mut self) {
        for idx in 0..self.queue_events.len() {
            self.process_queue(idx);
        }
    }

    fn set_broken(&mut self) {
        self.broken = true;
        // The line is dropped: a request the throttle holds gives up its group turn.
        self.throttle.cancel();
        self.forget_dead();
        let _ = self.interrupt.set_needs_reset();
    }

    /// The driver broke the device: the requests in line and parked will never run (only a
    /// reset brings the queue back), so they stop counting as outstanding.
    fn forget_dead(&mut self) {
        let dead = self.held.len() + self.parked.len();
        self.held.clear();
        self.parked.clear();
        self.counts.parked.store(0, Ordering::Release);
        self.counts.retire(dead);
    }

    /// Requests with the pool that are not yet completed.
    fn active(&self) -> usize {
        self.in_flight.values().filter(|s| !s.answered).count()
    }

    /// Request threads stuck in syscalls a yank abandoned.
    fn stuck(&self) -> usize {
        self.in_flight
            .values()
            .filter(|s| s.answered && !s.on_ring)
            .count()
    }

    /// Pops every available chain of queue `idx`, parses it into the line and starts what
    /// may start.
    fn process_queue(&mut self, idx: usize) {
        if self.broken {
            return;
        }
        let chains = match self.pop_all(idx) {
            Ok(c) => c,
            Err(()) => return self.set_broken(),
        };
        let mut left = chains.len();
        for chain in chains {
            let head = chain.head_index();
            let parsed = match parse(chain, &self.ctx.mem, &self.ctx.backend, self.ctx.config) {
                Ok(p) => p,
                Err(_) => {
                    // This chain and the rest are dropped with the device.
                    self.counts.retire(left);
                    return self.set_broken();
                }
            };
            left -= 1;
            self.held.push_back(Pending {
                seq: self.next_seq,
                queue: idx,
                head,
                serial: matches!(parsed.op, Op::Flush),
                parsed: Arc::new(parsed),
                epoch: 0,
            });
            self.next_seq += 1;
        }
        self.dispatch();
    }

    /// Starts requests from the front of the line while the ordering rules allow, then
    /// submits the ring's entries for the round in one go.
    fn dispatch(&mut self) {
        self.dispatch_round();
        if let Some(ring) = self.ring.as_mut() {
            ring.submit();
        }
    }

    /// Starts what may start: on the ring when the backend's chain allows it, else on the
    /// pool (never on this thread, which must stay free to complete what a yank abandons).
    fn dispatch_round(&mut self) {
        let draining = self.ctx.draining.load(Ordering::Acquire);
        if draining {
            // A request the throttle held starts now: its turn in the group passes on.
            self.throttle.cancel();
        }
        loop {
            if self.broken
                || self.serial_in_flight
                || !self.parked.is_empty()
                || self.ctx.stopping.load(Ordering::Acquire)
            {
                return;
            }
            let Some(front) = self.held.front() else {
                return;
            };
            if front.serial && self.active() > 0 {
                return;
            }
            let Some(kind) = front.parsed.op.kind() else {
                let Some(req) = self.held.pop_front() else {
                    return;
                };
                let Op::Immediate { status, written } = req.parsed.op else {
                    return;
                };
                let result = complete(&req.parsed, &self.ctx.mem, Ok(status), written);
                self.complete(vec![(req, result)]);
                continue;
            };
            let ranges = front.parsed.op.ranges();
            let bytes = ranges.iter().map(|&(_, len)| len).sum();
            // Over its I/O limits, the request stays first in line until the throttle's timer
            // fires (`Source::Throttle`); while the device quiesces, it goes at once.
            if !draining
                && self
                    .throttle
                    .try_start(kind, bytes, Instant::now())
                    .is_err()
            {
                return;
            }
            let admitted = match self.ctx.backend.admit(kind, ranges) {
                Admission::Run(a) => a,
                // Fenced by a yank: failed at once, through the error policy.
                Admission::Done(c) => {
                    let Some(req) = self.held.pop_front() else {
                        return;
                    };
                    let result = complete(&req.parsed, &self.ctx.mem, status_of(&c), 0);
                    self.complete(vec![(req, result)]);
                    continue;
                }
                // A write a yank abandoned over these bytes may still land: wait for it (the
                // backend's yank event says when it returned).
                Admission::Wait => return,
            };
            let Some(req) = self.held.pop_front() else {
                return;
            };
            let ticket = admitted.ticket().clone();
            let id = self.next_job;
            self.next_job += 1;
            let file = self
                .ring
                .as_ref()
                .and_then(|_| self.ctx.backend.host_file());
            if let (Some(ring), Some(file)) = (self.ring.as_mut(), file) {
                let started = ring.start(
                    id,
                    req.parsed.clone(),
                    admitted,
                    file,
                    &self.ctx.mem,
                    &self.ctx.backend,
                );
                match started {
                    None => {
                        self.serial_in_flight = req.serial;
                        self.in_flight.insert(
                            id,
                            Started {
                                req,
                                ticket,
                                answered: false,
                                on_ring: true,
                            },
                        );
                    }
                    Some(Some(result)) => self.complete(vec![(req, result)]),
                    // Yanked before it reached the host.
                    Some(None) => {
                        let c = self.ctx.backend.fail_yanked(&ticket);
                        let result = complete(&req.parsed, &self.ctx.mem, status_of(&c), 0);
                        self.complete(vec![(req, result)]);
                    }
                }
                continue;
            }
            let job = Job {
                id,
                parsed: req.parsed.clone(),
                admitted,
            };
            let stuck = self.stuck();
            if self.pool.submit(job, &self.ctx, stuck).is_err() {
                return self.set_broken();
            }
            self.serial_in_flight = req.serial;
            self.in_flight.insert(
                id,
                Started {
                    req,
                    ticket,
                    answered: false,
                    on_ring: false,
                },
            );
        }
    }

    /// Chains of queue `idx` popped and not yet in its used ring: in line, with the pool or
    /// the ring, or parked.
    fn outstanding(&self, idx: usize) -> usize {
        self.held.iter().filter(|p| p.queue == idx).count()
            + self
                .in_flight
                .values()
                .filter(|s| !s.answered && s.req.queue == idx)
                .count()
            + self.parked.iter().filter(|p| p.queue == idx).count()
    }

    /// Takes every available chain off queue `idx`, leaving notifications enabled.
    ///
    /// # Errors
    /// The rings cannot be read, the available index runs more than a queue size ahead, or
    /// more chains would be outstanding (popped, not yet in the used ring) than the queue
    /// size: the driver made descriptors available again that the device still holds (a
    /// driver gets a descriptor back only through the used ring). Without that check a driver
    /// that keeps moving the available index makes the device take more and more requests
    /// (and memory) for the same descriptors.
    fn pop_all(&mut self, idx: usize) -> Result<Vec<Chain>, ()> {
        let outstanding = self.outstanding(idx);
        let mem = &self.ctx.mem;
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let Some(queue) = queues.get_mut(idx).filter(|q| q.ready()) else {
            return Ok(Vec::new());
        };
        let room = usize::from(queue.size()).saturating_sub(outstanding);
        let mut chains = Vec::new();
        loop {
            queue.disable_notification(&**mem).map_err(|_| ())?;
            // An available index more than a queue size ahead is an error here.
            let iter = queue.iter(Arc::clone(mem)).map_err(|_| ())?;
            chains.extend(iter);
            if chains.len() > room {
                return Err(());
            }
            match queue.enable_notification(&**mem) {
                Ok(true) => continue,
                Ok(false) => {
                    // Counted before the queue's mutex is released: a quiesce holding it sees
                    // the popped requests with the advanced index.
                    self.counts
                        .outstanding
                        .fetch_add(chains.len(), Ordering::AcqRel);
                    return Ok(chains);
                }
                Err(_) => return Err(()),
            }
        }
    }

    /// Collects what the pool finished and starts what may start next.
    fn collect(&mut self) {
        let reports: Vec<Finished> = self.done_rx.try_iter().map(|d| (d.id, d.result)).collect();
        self.finish(reports);
    }

    /// Collects what the ring finished and starts what may start next.
    fn collect_ring(&mut self) {
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let reports = ring.reap(&self.ctx.mem, &self.ctx.backend);
        self.finish(reports);
    }

    /// Completes the requests of `reports` (pool or ring: id and result, `None` when a yank
    /// abandoned it) and starts what may start next.
    fn finish(&mut self, reports: Vec<Finished>) {
        let mut finished = Vec::new();
        for (id, result) in reports {
            let Some(started) = self.in_flight.remove(&id) else {
                continue;
            };
            // Completed when the yank abandoned it: the late report is dropped.
            if started.answered {
                continue;
            }
            if started.req.serial {
                self.serial_in_flight = false;
            }
            let result = match result {
                Some(r) => r,
                // Abandoned before the yank event was seen here: complete it now.
                None => self.fail_yanked(&started),
            };
            finished.push((started.req, result));
        }
        self.complete(finished);
        self.dispatch();
    }

    /// The completion of an abandoned request: `EIO` through the error policy.
    fn fail_yanked(&self, started: &Started) -> Result<Outcome, ChainError> {
        let c = self.ctx.backend.fail_yanked(&started.ticket);
        complete(&started.req.parsed, &self.ctx.mem, status_of(&c), 0)
    }

    /// The backend was yanked (or an abandoned syscall returned): completes every request a
    /// yank abandoned at once, then starts what may start.
    fn on_yank(&mut self) {
        let _ = self.watcher.yank_event().read();
        let mut finished = Vec::new();
        let ids: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, s)| !s.answered && s.ticket.is_abandoned())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            // A direct read still in the kernel is cut off guest RAM first; one the host
            // refused to cut off is completed when its syscall returns, not now.
            if let Some(ring) = self.ring.as_mut() {
                if !ring.cut_off(id, &self.ctx.mem) {
                    continue;
                }
            }
            let Some(started) = self.in_flight.get(&id) else {
                continue;
            };
            let result = self.fail_yanked(started);
            let req = started.req.clone();
            if req.serial {
                self.serial_in_flight = false;
            }
            if let Some(s) = self.in_flight.get_mut(&id) {
                s.answered = true;
            }
            finished.push((req, result));
        }
        self.complete(finished);
        self.dispatch();
    }

    /// Puts completed requests in their used rings (parks the stopped ones) and notifies.
    fn complete(&mut self, done: Vec<(Pending, Result<Outcome, ChainError>)>) {
        let was_broken = self.broken;
        let mut notify = vec![false; self.queue_events.len()];
        // Requests that leave the device: in the used ring, or dropped with a broken device.
        let mut retired = 0;
        {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            for (req, result) in done {
                let Some(queue) = queues.get_mut(req.queue) else {
                    retired += 1;
                    continue;
                };
                match result {
                    Ok(Outcome::Done(len)) => {
                        retired += 1;
                        if self.broken {
                            continue;
                        }
                        if queue.add_used(&*self.ctx.mem, req.head, len).is_err() {
                            self.broken = true;
                            continue;
                        }
                        notify[req.queue] = true;
                    }
                    Ok(Outcome::Park(epoch)) => {
                        self.parked.push(Pending { epoch, ..req });
                        self.counts
                            .parked
                            .store(self.parked.len(), Ordering::Release);
                    }
                    Err(_) => {
                        retired += 1;
                        self.broken = true;
                    }
                }
            }
            for (idx, yes) in notify.iter().enumerate() {
                if !*yes || self.broken {
                    continue;
                }
                let Some(queue) = queues.get_mut(idx) else {
                    continue;
                };
                match queue.needs_notification(&*self.ctx.mem) {
                    Ok(false) => {}
                    // Notify also when the ring cannot be read: the guest is better woken.
                    _ => {
                        let _ = self.interrupt.signal_used_queue();
                    }
                }
            }
            // After the used ring and the interrupt, still under the queue's mutex.
            self.counts.retire(retired);
        }
        if self.broken {
            if was_broken {
                // Parked requests of a broken device never run again.
                self.forget_dead();
            } else {
                // Once: every later completion of a broken device would interrupt again.
                self.set_broken();
            }
        }
        // A resume may have come before the I/O thread saw the request stop.
        self.retry_parked();
    }

    /// Puts the parked requests back in front of the line, in their original order and to run
    /// one at a time, once the backend was resumed after one of them stopped; then starts
    /// what may start (including newly available requests).
    fn retry_parked(&mut self) {
        let epoch = self.ctx.backend.resume_epoch();
        if self.broken || !self.parked.iter().any(|p| p.epoch != epoch) {
            return;
        }
        let mut parked = std::mem::take(&mut self.parked);
        self.counts.parked.store(0, Ordering::Release);
        parked.sort_by_key(|p| p.seq);
        for mut p in parked.into_iter().rev() {
            p.serial = true;
            self.held.push_front(p);
        }
    }

    /// Registers the I/O thread's event sources (so setup errors reach the caller) and returns
    /// the thread body.
    pub fn prepare(self) -> io::Result<impl FnOnce() + Send + 'static> {
        let mut manager = EventManager::new().map_err(loop_error)?;
        let id = manager.add_subscriber(self);
        if let Some(e) = manager
            .subscriber_mut(id)
            .map_err(loop_error)?
            .setup_error
            .take()
        {
            return Err(loop_error(e));
        }
        Ok(move || Self::run(manager, id))
    }

    /// Runs until the kill eventfd fires.
    fn run(mut manager: EventManager<Worker>, id: SubscriberId) {
        // Requests made available before activation (or before a kick) are served at once.
        if let Ok(worker) = manager.subscriber_mut(id) {
            worker.process_all();
        }
        loop {
            match manager.subscriber_mut(id) {
                Ok(worker) if !worker.killed => {}
                _ => break,
            }
            // The epoll descriptor is ours; failing here means the process is in trouble.
            if manager.run().is_err() {
                break;
            }
        }
        if let Ok(worker) = manager.subscriber_mut(id) {
            worker.pool.stop();
            if let Some(ring) = worker.ring.as_mut() {
                ring.shut_down();
            }
            worker.ctx.backend.unwatch(&worker.watcher);
            // Requests a yank abandoned that were not completed yet are dropped with the
            // device: no drain waits for them.
            for started in worker.in_flight.values() {
                if started.ticket.is_abandoned() {
                    worker.ctx.backend.dismiss_yanked(&started.ticket);
                }
            }
        }
    }
}

fn loop_error(e: event_manager::Error) -> io::Error {
    io::Error::other(e)
}

/// What woke the I/O thread: the `data` of each registered event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// The device is being reset or dropped.
    Kill,
    /// The backend's error policy lets parked requests run again.
    Retry,
    /// The request pool finished requests.
    Done,
    /// The backend was yanked, or a syscall a yank abandoned returned.
    Yank,
    /// The io_uring engine posted completions.
    Ring,
    /// The throttle's timer: the request first in line may start.
    Throttle,
    /// The driver notified queue N.
    Queue(usize),
}

impl Source {
    const KILL: u32 = 0;
    const RETRY: u32 = 1;
    const DONE: u32 = 2;
    const YANK: u32 = 3;
    const RING: u32 = 4;
    const THROTTLE: u32 = 5;
    const FIRST_QUEUE: u32 = 6;

    fn data(self) -> u32 {
        match self {
            Source::Kill => Self::KILL,
            Source::Retry => Self::RETRY,
            Source::Done => Self::DONE,
            Source::Yank => Self::YANK,
            Source::Ring => Self::RING,
            Source::Throttle => Self::THROTTLE,
            // A device has a handful of queues.
            Source::Queue(i) => Self::FIRST_QUEUE + i as u32,
        }
    }

    fn from_data(data: u32) -> Self {
        match data {
            Self::KILL => Source::Kill,
            Self::RETRY => Source::Retry,
            Self::DONE => Source::Done,
            Self::YANK => Source::Yank,
            Self::RING => Source::Ring,
            Self::THROTTLE => Source::Throttle,
            n => Source::Queue((n - Self::FIRST_QUEUE) as usize),
        }
    }
}

impl MutEventSubscriber for Worker {
    fn init(&mut self, ops: &mut EventOps) {
        let mut sources = vec![
            Events::with_data(&self.kill, Source::Kill.data(), EventSet::IN),
            Events::with_data(
                self.watcher.retry_event(),
                Source::Retry.data(),
                EventSet::IN,
            ),
            Events::with_data(&self.done_wake, Source::Done.data(), EventSet::IN),
            Events::with_data(self.watcher.yank_event(), Source::Yank.data(), EventSet::IN),
            Events::with_data(self.throttle.timer(), Source::Throttle.data(), EventSet::IN),
        ];
        if let Some(ring) = &self.ring {
            sources.push(Events::with_data(
                ring.event(),
                Source::Ring.data(),
                EventSet::IN,
            ));
        }
        for (i, e) in self.queue_events.iter().enumerate() {
            sources.push(Events::with_data(e, Source::Queue(i).data(), EventSet::IN));
        }
        for events in sources {
            if let Err(e) = ops.add(events) {
                self.setup_error = Some(e);
                return;
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match Source::from_data(events.data()) {
            Source::Kill => {
                self.pool.stop();
                if let Some(ring) = self.ring.as_mut() {
                    ring.shut_down();
                }
                self.killed = true;
            }
            Source::Retry => {
                let _ = self.watcher.retry_event().read();
                self.retry_parked();
                self.process_all();
            }
            Source::Done => {
                let _ = self.done_wake.read();
                self.collect();
            }
            Source::Yank => self.on_yank(),
            Source::Ring => self.collect_ring(),
            Source::Throttle => {
                self.throttle.timer().clear();
                self.dispatch();
            }
            Source::Queue(idx) => {
                if let Some(e) = self.queue_events.get(idx) {
                    let _ = e.read();
                }
                self.process_queue(idx);
            }
        }
    }
}
