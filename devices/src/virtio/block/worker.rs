// SPDX-License-Identifier: Apache-2.0
//! The block I/O thread: waits for queue notifications, runs requests, raises the interrupt.
//!
//! It shares with the rest of the VMM only the guest memory, the queues (behind the device's
//! own mutex), the backend and eventfds: it never enters the transport or any VM-wide lock.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use block::Backend;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::request::{handle_chain, Outcome, RequestConfig};
use crate::virtio::VirtioInterrupt;

const KILL_TOKEN: u64 = 0;
const RETRY_TOKEN: u64 = 1;
const FIRST_QUEUE_TOKEN: u64 = 2;

/// Everything the I/O thread owns or shares.
pub(super) struct Worker {
    pub mem: GuestMemoryMmap,
    pub queues: Arc<Mutex<Vec<Queue>>>,
    pub queue_events: Vec<EventFd>,
    pub kill: EventFd,
    pub interrupt: Arc<VirtioInterrupt>,
    pub backend: Arc<Backend>,
    pub config: RequestConfig,
    /// A request was stopped by the error policy: wait for the backend's retry event.
    parked: bool,
    /// The driver broke the protocol: ignore the queues until the device is reset.
    broken: bool,
}

/// Why processing a queue ended early.
enum Stop {
    Parked,
    Broken,
}

impl Worker {
    pub fn new(
        mem: GuestMemoryMmap,
        queues: Arc<Mutex<Vec<Queue>>>,
        queue_events: Vec<EventFd>,
        kill: EventFd,
        interrupt: Arc<VirtioInterrupt>,
        backend: Arc<Backend>,
        config: RequestConfig,
    ) -> Self {
        Self {
            mem,
            queues,
            queue_events,
            kill,
            interrupt,
            backend,
            config,
            parked: false,
            broken: false,
        }
    }

    fn epoll(&self) -> io::Result<Epoll> {
        let epoll = Epoll::new()?;
        let add = |fd: i32, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(self.kill.as_raw_fd(), KILL_TOKEN)?;
        add(self.backend.retry_event().as_raw_fd(), RETRY_TOKEN)?;
        for (i, e) in self.queue_events.iter().enumerate() {
            add(e.as_raw_fd(), FIRST_QUEUE_TOKEN + i as u64)?;
        }
        Ok(epoll)
    }

    /// Runs until the kill eventfd fires.
    pub fn run(mut self, epoll: Epoll) {
        // Requests made available before activation (or before a kick) are served at once.
        self.process_all();
        let mut events = vec![EpollEvent::default(); self.queue_events.len() + 2];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The epoll descriptor is ours; failing here means the process is in trouble.
                Err(_) => return,
            };
            for ev in &events[..n] {
                match ev.data() {
                    KILL_TOKEN => return,
                    RETRY_TOKEN => {
                        let _ = self.backend.retry_event().read();
                        if self.parked {
                            self.parked = false;
                            self.process_all();
                        }
                    }
                    token => {
                        let idx = (token - FIRST_QUEUE_TOKEN) as usize;
                        if let Some(e) = self.queue_events.get(idx) {
                            let _ = e.read();
                        }
                        self.process_queue(idx);
                    }
                }
            }
        }
    }

    fn process_all(&mut self) {
        for idx in 0..self.queue_events.len() {
            self.process_queue(idx);
        }
    }

    fn process_queue(&mut self, idx: usize) {
        if self.parked || self.broken {
            return;
        }
        let queues = self.queues.clone();
        let mut queues = queues.lock().unwrap_or_else(|e| e.into_inner());
        let Some(queue) = queues.get_mut(idx).filter(|q| q.ready()) else {
            return;
        };
        let (used, stop) = self.drain(queue);
        match stop {
            Some(Stop::Broken) => {
                self.broken = true;
                let _ = self.interrupt.set_needs_reset();
                return;
            }
            Some(Stop::Parked) => self.parked = true,
            None => {}
        }
        if used {
            match queue.needs_notification(&self.mem) {
                Ok(false) => {}
                // Notify also when the ring cannot be read: the guest is better woken.
                _ => {
                    let _ = self.interrupt.signal_used_queue();
                }
            }
        }
    }

    /// Pops and runs chains until the ring is empty (with notifications re-enabled), a request
    /// is parked, or the driver broke the protocol. Returns whether anything was used.
    fn drain(&self, queue: &mut Queue) -> (bool, Option<Stop>) {
        let mem = &self.mem;
        let mut used = false;
        loop {
            if queue.disable_notification(mem).is_err() {
                return (used, Some(Stop::Broken));
            }
            loop {
                // An available index more than a queue size ahead is caught here.
                let chain = match queue.iter(mem) {
                    Ok(mut it) => it.next(),
                    Err(_) => return (used, Some(Stop::Broken)),
                };
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                match handle_chain(chain, mem, &self.backend, self.config) {
                    Ok(Outcome::Done(len)) => {
                        if queue.add_used(mem, head, len).is_err() {
                            return (used, Some(Stop::Broken));
                        }
                        used = true;
                    }
                    Ok(Outcome::Park) => {
                        // Leave the chain in the ring; it is popped again on retry.
                        queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                        return (used, Some(Stop::Parked));
                    }
                    Err(_) => return (used, Some(Stop::Broken)),
                }
            }
            match queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => return (used, None),
                Err(_) => return (used, Some(Stop::Broken)),
            }
        }
    }

    /// Builds the epoll set (so setup errors reach the caller) and returns the thread body.
    pub fn prepare(self) -> io::Result<impl FnOnce() + Send + 'static> {
        let epoll = self.epoll()?;
        Ok(move || self.run(epoll))
    }
}
