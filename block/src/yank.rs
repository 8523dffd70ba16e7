// SPDX-License-Identifier: Apache-2.0
//! Requests in flight on a backend, and yanking them (QMP's `yank` of a `block-node`).
//!
//! Every request a device starts is admitted as a [`Ticket`] ([`crate::Backend::admit`]) and
//! released when the thread that ran it is done with it. Yanking a backend
//! ([`crate::Backend::yank`]) *abandons* every ticket still running: the device completes
//! those requests at once with `EIO` through the error policy, while the threads stuck in
//! their syscalls stay stuck; when such a syscall finally returns its result is dropped
//! ([`Ticket::commit`] fails), and reads never reach guest memory: they land in a bounce
//! buffer first, or (the io_uring engine's reads into whole guest pages) the device cuts
//! them off guest RAM before it completes them. Until the next resume, or until every abandoned syscall has returned,
//! the backend is *fenced*: new requests fail with `EIO` without reaching the host. A request
//! that overlaps an abandoned write (or discard, write-zeroes) waits for that syscall to
//! return ([`crate::Admission::Wait`]), so a late write never lands after a newer one.
//!
//! The [`YankTable`] is the published list of yank instances (the graph's `file` nodes, with
//! the backends above each), read by the monitor thread without the big lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use crate::backend::Backend;
use crate::node::{BlockNode, IoKind};
use crate::registry::Registry;

/// Where a ticket is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketState {
    /// Running on the host (or held by an injected delay).
    Running,
    /// Its thread has committed its result: a yank no longer touches it.
    Committed,
    /// Yanked: the device completes it with `EIO`; its thread's result is dropped.
    Abandoned,
}

/// One request of a device between its admission and the end of its host syscalls.
#[derive(Debug)]
pub struct Ticket {
    kind: IoKind,
    ranges: Vec<(u64, u64)>,
    started: Instant,
    state: Mutex<TicketState>,
    /// Abandoned and completed (or dropped) by its device: a drain no longer waits for it.
    answered: AtomicBool,
}

impl Ticket {
    pub(crate) fn new(kind: IoKind, ranges: Vec<(u64, u64)>) -> Self {
        Self {
            kind,
            ranges,
            started: Instant::now(),
            state: Mutex::new(TicketState::Running),
            answered: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TicketState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kind of the request.
    pub fn kind(&self) -> IoKind {
        self.kind
    }

    /// The byte ranges `(offset, length)` the request touches.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// When it was admitted.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The state now.
    pub fn state(&self) -> TicketState {
        *self.lock()
    }

    /// Whether a yank abandoned it.
    pub fn is_abandoned(&self) -> bool {
        self.state() == TicketState::Abandoned
    }

    /// Makes the running thread's result the request's result (`Running` → `Committed`);
    /// `false` when a yank came first (the result must be dropped). Idempotent.
    pub fn commit(&self) -> bool {
        let mut st = self.lock();
        match *st {
            TicketState::Running | TicketState::Committed => {
                *st = TicketState::Committed;
                true
            }
            TicketState::Abandoned => false,
        }
    }

    /// Runs `f` (a copy to or from guest memory) unless the ticket is abandoned, holding its
    /// lock so that a yank waits for the copy; returns whether `f` ran.
    pub fn while_live(&self, f: impl FnOnce()) -> bool {
        let st = self.lock();
        if *st == TicketState::Abandoned {
            return false;
        }
        f();
        true
    }

    /// Whether its device completed (or dropped) it after a yank abandoned it.
    pub(crate) fn is_answered(&self) -> bool {
        self.answered.load(Ordering::Acquire)
    }

    pub(crate) fn set_answered(&self) {
        self.answered.store(true, Ordering::Release);
    }

    /// `Running` → `Abandoned`; `false` if it was committed (or abandoned) before.
    pub(crate) fn abandon(&self) -> bool {
        let mut st = self.lock();
        if *st == TicketState::Running {
            *st = TicketState::Abandoned;
            true
        } else {
            false
        }
    }

    /// Whether it modifies the image where `ranges` lie (flushes modify nothing by range).
    pub(crate) fn writes_over(&self, ranges: &[(u64, u64)]) -> bool {
        matches!(
            self.kind,
            IoKind::Write | IoKind::Discard | IoKind::WriteZeroes
        ) && self.ranges.iter().any(|&(o, l)| {
            ranges
                .iter()
                .any(|&(po, pl)| o < po.saturating_add(pl) && po < o.saturating_add(l))
        })
    }
}

/// A yank instance of the block graph: a `file` node and the backends whose graph holds it.
#[derive(Debug, Clone)]
struct Instance {
    node_name: String,
    backends: Vec<Arc<Backend>>,
}

/// The yank instances of the block graph (`block-node`: every `file` node, where host
/// syscalls happen), published by the owner of the graph after every change and read by the
/// monitor thread: a read lock held only to copy names or clone `Arc`s.
#[derive(Debug, Default)]
pub struct YankTable {
    instances: RwLock<Vec<Instance>>,
}

impl YankTable {
    /// Publishes the instances of `registry`: its `file` nodes in node order, each with the
    /// backends whose node chain reaches it.
    pub fn publish(&self, registry: &Registry) {
        let backends: Vec<(Arc<Backend>, Vec<String>)> = registry
            .backends()
            .map(|b| (b.clone(), chain_names(b.root())))
            .collect();
        let mut instances: Vec<Instance> = Vec::new();
        let mut add = |node: &Arc<dyn BlockNode>| {
            if node.driver() != "file" || instances.iter().any(|i| i.node_name == node.node_name())
            {
                return;
            }
            instances.push(Instance {
                node_name: node.node_name().to_owned(),
                backends: backends
                    .iter()
                    .filter(|(_, names)| names.iter().any(|n| n == node.node_name()))
                    .map(|(b, _)| b.clone())
                    .collect(),
            });
        };
        for b in registry.backends() {
            let mut node = Some(b.root());
            while let Some(n) = node {
                add(&n);
                node = n.child();
            }
        }
        for n in registry.nodes() {
            add(n);
        }
        *self.instances.write().unwrap_or_else(|e| e.into_inner()) = instances;
    }

    /// The node-names of the instances.
    pub fn node_names(&self) -> Vec<String> {
        self.instances
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|i| i.node_name.clone())
            .collect()
    }

    /// Whether `node_name` is an instance.
    pub fn contains(&self, node_name: &str) -> bool {
        self.instances
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|i| i.node_name == node_name)
    }

    /// Yanks instance `node_name`: every backend above it abandons its running requests.
    /// Returns how many were abandoned, or `None` when there is no such instance. Never
    /// blocks on I/O.
    pub fn yank(&self, node_name: &str) -> Option<usize> {
        let backends = self
            .instances
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|i| i.node_name == node_name)?
            .backends
            .clone();
        Some(backends.iter().map(|b| b.yank()).sum())
    }
}

/// The node-names of `node` and every node below it.
fn chain_names(node: Arc<dyn BlockNode>) -> Vec<String> {
    let mut names = Vec::new();
    let mut node = Some(node);
    while let Some(n) = node {
        names.push(n.node_name().to_owned());
        node = n.child();
    }
    names
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::backend::{Admission, BackendConfig};
    use crate::file::FileNode;
    use crate::node::CacheMode;
    use crate::raw::RawNode;

    fn image() -> TempFile {
        let f = TempFile::new().unwrap();
        f.as_file().set_len(4096).unwrap();
        f
    }

    #[test]
    fn tickets_commit_or_abandon_once() {
        let t = Ticket::new(IoKind::Write, vec![(0, 512)]);
        assert!(t.abandon());
        assert!(!t.commit() && !t.abandon() && t.is_abandoned());
        assert!(!t.while_live(|| panic!("must not run")));
        let t = Ticket::new(IoKind::Read, vec![(0, 512)]);
        assert!(t.commit() && t.commit());
        assert!(!t.abandon());
        assert_eq!(t.state(), TicketState::Committed);
    }

    #[test]
    fn only_modifying_tickets_over_the_range_block() {
        let w = Ticket::new(IoKind::Write, vec![(1024, 512)]);
        assert!(w.writes_over(&[(1024, 1)]));
        assert!(w.writes_over(&[(0, 2048)]));
        assert!(!w.writes_over(&[(0, 1024)]));
        assert!(!w.writes_over(&[(1536, 512)]));
        assert!(!w.writes_over(&[]));
        let r = Ticket::new(IoKind::Read, vec![(1024, 512)]);
        assert!(!r.writes_over(&[(1024, 512)]));
        let d = Ticket::new(IoKind::Discard, vec![(0, 512), (4096, 512)]);
        assert!(d.writes_over(&[(4096, 4096)]));
    }

    #[test]
    fn the_table_lists_file_nodes_and_yanks_their_backends() {
        let (a, b) = (image(), image());
        let mut reg = Registry::new();
        let backend = reg
            .open(BackendConfig {
                node_name: Some("disk0".into()),
                ..BackendConfig::new("drive0", a.as_path())
            })
            .unwrap();
        let file = FileNode::open("file1", b.as_path(), false, CacheMode::default()).unwrap();
        let file: Arc<dyn BlockNode> = Arc::new(file);
        reg.add_node(file.clone()).unwrap();
        reg.add_node(Arc::new(RawNode::new("raw1", file))).unwrap();
        let table = YankTable::default();
        assert!(table.node_names().is_empty());
        table.publish(&reg);
        assert_eq!(table.node_names(), vec!["disk0", "file1"]);
        assert!(table.contains("file1") && !table.contains("raw1"));
        assert_eq!(table.yank("nope"), None);
        assert_eq!(table.yank("file1"), Some(0));
        // Yanking drive0's node fences it: a request fails at once, until resume.
        let Admission::Run(admitted) = backend.admit(IoKind::Write, vec![(0, 512)]) else {
            panic!("not admitted");
        };
        assert_eq!(table.yank("disk0"), Some(1));
        assert!(admitted.ticket().is_abandoned());
        assert_eq!((backend.in_flight(), backend.abandoned()), (0, 1));
        assert!(matches!(
            backend.admit(IoKind::Read, vec![(0, 512)]),
            Admission::Done(crate::Completion::Failed(_))
        ));
        // After a resume, requests over the abandoned write's bytes wait for it; others run.
        backend.resume();
        assert!(matches!(
            backend.admit(IoKind::Read, vec![(256, 512)]),
            Admission::Wait
        ));
        assert!(matches!(
            backend.admit(IoKind::Read, vec![(512, 512)]),
            Admission::Run(_)
        ));
        drop(admitted);
        assert_eq!(backend.abandoned(), 0);
        assert!(matches!(
            backend.admit(IoKind::Read, vec![(0, 512)]),
            Admission::Run(_)
        ));
    }
}
