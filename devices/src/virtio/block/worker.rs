// SPDX-License-Identifier: Apache-2.0
//! The block I/O thread: waits for queue notifications, runs requests, raises the interrupt.
//!
//! It shares with the rest of the VMM only the guest memory, the queues (behind the device's
//! own mutex), the backend and eventfds: it never enters the transport or any VM-wide lock.
//!
//! A lone request runs on the I/O thread itself (the fastest path at queue depth 1). When
//! several are available at once they go to a small pool of request threads, so that the host
//! works on them in parallel as a disk with a deep queue would; the I/O thread puts each one in
//! the used ring as it completes (virtio allows completion in any order).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use block::Backend;
use event_manager::{
    EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberId, SubscriberOps,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::request::{handle_chain, ChainError, Outcome, RequestConfig};
use crate::virtio::VirtioInterrupt;

/// Most request threads per device.
pub const MAX_REQUEST_THREADS: usize = 4;

/// A descriptor chain that owns its handle on guest memory, so it can cross threads.
type Chain = DescriptorChain<Arc<GuestMemoryMmap>>;

/// A request handed to the pool.
struct Job {
    queue: usize,
    chain: Chain,
}

/// A request the pool finished.
struct Done {
    queue: usize,
    /// Kept to put the request back in line when the error policy parks it.
    chain: Chain,
    result: Result<Outcome, ChainError>,
}

/// The request threads of one device, grown on demand up to [`MAX_REQUEST_THREADS`].
struct Pool {
    jobs: Option<Sender<Job>>,
    shared_jobs: Arc<Mutex<Receiver<Job>>>,
    done_tx: Sender<Done>,
    done_wake: EventFd,
    idle: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
    name: String,
}

impl Pool {
    fn new(done_tx: Sender<Done>, done_wake: EventFd, name: String) -> Self {
        let (tx, rx) = channel();
        Self {
            jobs: Some(tx),
            shared_jobs: Arc::new(Mutex::new(rx)),
            done_tx,
            done_wake,
            idle: Arc::new(AtomicUsize::new(0)),
            threads: Vec::new(),
            name,
        }
    }

    /// Queues a job, starting another thread when all are busy and the limit allows.
    fn submit(&mut self, job: Job, ctx: &Arc<RequestContext>) -> io::Result<()> {
        if self.idle.load(Ordering::Acquire) == 0 && self.threads.len() < MAX_REQUEST_THREADS {
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
        let name = format!("{}-r{}", self.name, self.threads.len());
        let handle = std::thread::Builder::new().name(name).spawn(move || loop {
            idle.fetch_add(1, Ordering::AcqRel);
            let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
            idle.fetch_sub(1, Ordering::AcqRel);
            let Ok(job) = job else { return };
            let result = handle_chain(job.chain.clone(), &ctx.mem, &ctx.backend, ctx.config);
            let sent = done.send(Done {
                queue: job.queue,
                chain: job.chain,
                result,
            });
            if sent.is_err() {
                return;
            }
            // A failed wake only happens when the counter saturates: the I/O thread is due
            // to wake anyway.
            let _ = wake.write(1);
        })?;
        self.threads.push(handle);
        Ok(())
    }

    /// Stops taking jobs and waits for the threads to finish the ones they have, so that no
    /// request touches guest memory after the device is reset.
    fn stop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What every request needs, shared by the I/O thread and the pool.
struct RequestContext {
    mem: Arc<GuestMemoryMmap>,
    backend: Arc<Backend>,
    config: RequestConfig,
}

/// Everything the I/O thread owns or shares.
pub(super) struct Worker {
    ctx: Arc<RequestContext>,
    queues: Arc<Mutex<Vec<Queue>>>,
    queue_events: Vec<EventFd>,
    kill: EventFd,
    interrupt: Arc<VirtioInterrupt>,
    pool: Pool,
    done_rx: Receiver<Done>,
    done_wake: EventFd,
    /// Requests with the pool.
    in_flight: usize,
    /// Requests stopped by the error policy, to run again on the backend's retry event.
    parked: Vec<(usize, Chain)>,
    /// The driver broke the protocol: ignore the queues until the device is reset.
    broken: bool,
    /// The kill eventfd fired: the thread ends.
    killed: bool,
    /// The registration error of [`init`](MutEventSubscriber::init), for `prepare` to report.
    setup_error: Option<event_manager::Error>,
}

impl Worker {
    /// Sets up the I/O thread's state for a device named `name` (thread names derive from it).
    ///
    /// # Errors
    /// Fails when the completion eventfd cannot be created.
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
    ) -> io::Result<Self> {
        let done_wake = EventFd::new(EFD_NONBLOCK)?;
        let (done_tx, done_rx) = channel();
        let pool = Pool::new(done_tx, done_wake.try_clone()?, name);
        Ok(Self {
            ctx: Arc::new(RequestContext {
                mem: Arc::new(mem),
                backend,
                config,
            }),
            queues,
            queue_events,
            kill,
            interrupt,
            pool,
            done_rx,
            done_wake,
            in_flight: 0,
            parked: Vec::new(),
            broken: false,
            killed: false,
            setup_error: None,
        })
    }

    fn process_all(&mut self) {
        for idx in 0..self.queue_events.len() {
            self.process_queue(idx);
        }
    }

    fn set_broken(&mut self) {
        self.broken = true;
        let _ = self.interrupt.set_needs_reset();
    }

    /// Pops every available chain of queue `idx` and runs them: inline when there is just one
    /// and nothing else is in flight, else on the pool.
    fn process_queue(&mut self, idx: usize) {
        if !self.parked.is_empty() || self.broken {
            return;
        }
        let mut chains = match self.pop_all(idx) {
            Ok(c) => c,
            Err(()) => return self.set_broken(),
        };
        let lone = chains.len() == 1 && self.in_flight == 0;
        if let Some(chain) = chains.pop_if(|_| lone) {
            let result = handle_chain(
                chain.clone(),
                &self.ctx.mem,
                &self.ctx.backend,
                self.ctx.config,
            );
            self.complete(vec![Done {
                queue: idx,
                chain,
                result,
            }]);
            return;
        }
        for chain in chains {
            if self
                .pool
                .submit(Job { queue: idx, chain }, &self.ctx)
                .is_err()
            {
                return self.set_broken();
            }
            self.in_flight += 1;
        }
    }

    /// Takes every available chain off queue `idx`, leaving notifications enabled.
    fn pop_all(&mut self, idx: usize) -> Result<Vec<Chain>, ()> {
        let mem = &self.ctx.mem;
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let Some(queue) = queues.get_mut(idx).filter(|q| q.ready()) else {
            return Ok(Vec::new());
        };
        let mut chains = Vec::new();
        loop {
            queue.disable_notification(&**mem).map_err(|_| ())?;
            // An available index more than a queue size ahead is an error here.
            let iter = queue.iter(Arc::clone(mem)).map_err(|_| ())?;
            chains.extend(iter);
            match queue.enable_notification(&**mem) {
                Ok(true) => continue,
                Ok(false) => return Ok(chains),
                Err(_) => return Err(()),
            }
        }
    }

    /// Collects what the pool finished.
    fn collect(&mut self) {
        let done: Vec<Done> = self.done_rx.try_iter().collect();
        self.in_flight -= done.len().min(self.in_flight);
        self.complete(done);
    }

    /// Puts completed requests in their used rings (parks the stopped ones) and notifies.
    fn complete(&mut self, done: Vec<Done>) {
        let mut notify = vec![false; self.queue_events.len()];
        {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            for d in done {
                let Some(queue) = queues.get_mut(d.queue) else {
                    continue;
                };
                match d.result {
                    Ok(Outcome::Done(len)) => {
                        if self.broken {
                            continue;
                        }
                        if queue
                            .add_used(&*self.ctx.mem, d.chain.head_index(), len)
                            .is_err()
                        {
                            self.broken = true;
                            continue;
                        }
                        notify[d.queue] = true;
                    }
                    Ok(Outcome::Park) => self.parked.push((d.queue, d.chain)),
                    Err(_) => self.broken = true,
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
        }
        if self.broken {
            let _ = self.interrupt.set_needs_reset();
        }
    }

    /// Runs the parked requests again (the backend's policy allows it), then new ones.
    fn retry_parked(&mut self) {
        if self.parked.is_empty() || self.broken {
            return;
        }
        for (queue, chain) in std::mem::take(&mut self.parked) {
            if self.pool.submit(Job { queue, chain }, &self.ctx).is_err() {
                return self.set_broken();
            }
            self.in_flight += 1;
        }
        self.process_all();
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
    /// The driver notified queue N.
    Queue(usize),
}

impl Source {
    const KILL: u32 = 0;
    const RETRY: u32 = 1;
    const DONE: u32 = 2;
    const FIRST_QUEUE: u32 = 3;

    fn data(self) -> u32 {
        match self {
            Source::Kill => Self::KILL,
            Source::Retry => Self::RETRY,
            Source::Done => Self::DONE,
            // A device has a handful of queues.
            Source::Queue(i) => Self::FIRST_QUEUE + i as u32,
        }
    }

    fn from_data(data: u32) -> Self {
        match data {
            Self::KILL => Source::Kill,
            Self::RETRY => Source::Retry,
            Self::DONE => Source::Done,
            n => Source::Queue((n - Self::FIRST_QUEUE) as usize),
        }
    }
}

impl MutEventSubscriber for Worker {
    fn init(&mut self, ops: &mut EventOps) {
        let mut sources = vec![
            Events::with_data(&self.kill, Source::Kill.data(), EventSet::IN),
            Events::with_data(
                self.ctx.backend.retry_event(),
                Source::Retry.data(),
                EventSet::IN,
            ),
            Events::with_data(&self.done_wake, Source::Done.data(), EventSet::IN),
        ];
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
                self.killed = true;
            }
            Source::Retry => {
                let _ = self.ctx.backend.retry_event().read();
                self.retry_parked();
            }
            Source::Done => {
                let _ = self.done_wake.read();
                self.collect();
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
