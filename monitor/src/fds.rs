// SPDX-License-Identifier: Apache-2.0
//! Descriptors clients pass to the monitor: `getfd` and `closefd`, and `fd:NAME` migration
//! URIs.
//!
//! A client on a Unix socket sends descriptors with `SCM_RIGHTS` ancillary data. The monitor
//! thread keeps what a session received, up to [`MAX_PENDING_FDS`], in [`Pending`]; when it
//! forwards a `getfd` of that session it attaches the oldest one ([`PassedFd`]) to the
//! request. `getfd`, `closefd` and the commands that use a name (`migrate fd:NAME`,
//! `migrate-incoming fd:NAME`) run in band on the main loop, in the session's order, against
//! the [`FdTable`] the main loop owns: names belong to the session that gave them (a QEMU
//! monitor serves one client; here each connection is one), at most [`MAX_NAMED_FDS`] each.
//! Descriptors still pending when a session ends are closed with it, its named ones when the
//! main loop hears that it closed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use qapi::rt::QmpError;

use crate::server::SessionId;

/// Descriptors a session may hold received and not yet claimed by `getfd`.
pub const MAX_PENDING_FDS: usize = 16;
/// Names a session may hold (`getfd` without `closefd`).
pub const MAX_NAMED_FDS: usize = 64;

/// The descriptors a session received that no `getfd` took yet (the monitor thread's).
#[derive(Debug, Default)]
pub struct Pending {
    fds: VecDeque<OwnedFd>,
    /// Received beyond the limit (closed at once) since a `getfd` last found one.
    dropped: usize,
}

impl Pending {
    /// Keeps `fds`, closing those beyond [`MAX_PENDING_FDS`]; `lost` were closed already (the
    /// kernel truncated the message, or they were among the VMM's reserve).
    pub fn receive(&mut self, fds: Vec<OwnedFd>, lost: usize) {
        for fd in fds {
            if self.fds.len() < MAX_PENDING_FDS {
                self.fds.push_back(fd);
            } else {
                self.dropped += 1;
            }
        }
        self.dropped += lost;
    }

    /// The oldest descriptor, for a `getfd`; with none, what the error should add about
    /// descriptors closed for the limit.
    pub fn take(&mut self) -> PassedFd {
        match self.fds.pop_front() {
            Some(fd) => PassedFd::new(Ok(fd)),
            None => {
                let dropped = std::mem::take(&mut self.dropped);
                PassedFd::new(Err(dropped))
            }
        }
    }

    /// How many are held.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }
}

/// What the monitor attaches to a `getfd` request: the descriptor, or how many were closed
/// for [`MAX_PENDING_FDS`] when none is there. Shared so the request stays `Clone`; taken
/// once.
#[derive(Debug, Clone)]
pub struct PassedFd(Arc<Mutex<Option<Result<OwnedFd, usize>>>>);

impl PassedFd {
    fn new(v: Result<OwnedFd, usize>) -> Self {
        Self(Arc::new(Mutex::new(Some(v))))
    }

    /// Takes the descriptor (once).
    pub fn take(&self) -> Option<Result<OwnedFd, usize>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl PartialEq for PassedFd {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The error of `getfd` without a descriptor (QEMU's text, and why when the limit closed
/// some).
fn none_supplied(dropped: usize) -> QmpError {
    let mut desc = "No file descriptor supplied via SCM_RIGHTS".to_owned();
    if dropped > 0 {
        desc.push_str(&format!(
            " ({dropped} received earlier were closed: a session holds at most {MAX_PENDING_FDS} descriptors not yet claimed by getfd, and none of those vmm keeps for itself)"
        ));
    }
    QmpError::generic(desc)
}

/// The named descriptors of every session, and the one the running `getfd` brought (the main
/// loop's).
#[derive(Debug, Default)]
pub struct FdTable {
    names: HashMap<SessionId, BTreeMap<String, OwnedFd>>,
    /// The session whose command runs.
    current: Option<SessionId>,
    /// What the monitor attached to it.
    passed: Option<PassedFd>,
}

impl FdTable {
    /// A command of `session` starts, with what the monitor attached to it.
    pub fn begin(&mut self, session: SessionId, passed: Option<PassedFd>) {
        self.current = Some(session);
        self.passed = passed;
    }

    /// The command is done: a descriptor it did not claim is closed.
    pub fn end(&mut self) {
        self.current = None;
        self.passed = None;
    }

    /// `getfd`: names the descriptor the running command brought. A name in use is
    /// replaced, its old descriptor closed.
    ///
    /// # Errors
    /// QEMU's: a name starting with a digit, no descriptor; and the session's limit.
    pub fn getfd(&mut self, fdname: &str) -> Result<(), QmpError> {
        let passed = self.passed.take().and_then(|p| p.take());
        if fdname.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(QmpError::generic(
                "Parameter 'fdname' expects a name not starting with a digit",
            ));
        }
        let fd = match passed {
            Some(Ok(fd)) => fd,
            Some(Err(dropped)) => return Err(none_supplied(dropped)),
            None => return Err(none_supplied(0)),
        };
        let Some(session) = self.current else {
            return Err(none_supplied(0));
        };
        let names = self.names.entry(session).or_default();
        if !names.contains_key(fdname) && names.len() >= MAX_NAMED_FDS {
            return Err(QmpError::generic(format!(
                "Too many named file descriptors: a session holds at most {MAX_NAMED_FDS}; close some with closefd"
            )));
        }
        names.insert(fdname.to_owned(), fd);
        Ok(())
    }

    /// `closefd`: closes the running session's descriptor `fdname`.
    ///
    /// # Errors
    /// QEMU's, when the session has no such name.
    pub fn closefd(&mut self, fdname: &str) -> Result<(), QmpError> {
        self.take(fdname)
            .map(drop)
            .ok_or_else(|| QmpError::generic(format!("File descriptor named '{fdname}' not found")))
    }

    /// Takes the running session's descriptor `name` out of the table (a migration's
    /// `fd:NAME`, which then owns it).
    pub fn take(&mut self, name: &str) -> Option<OwnedFd> {
        let session = self.current?;
        let names = self.names.get_mut(&session)?;
        let fd = names.remove(name);
        if names.is_empty() {
            self.names.remove(&session);
        }
        fd
    }

    /// The session closed: its descriptors are closed.
    pub fn session_closed(&mut self, session: SessionId) {
        self.names.remove(&session);
    }

    /// How many descriptors `session` has named.
    pub fn named(&self, session: SessionId) -> usize {
        self.names.get(&session).map_or(0, BTreeMap::len)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    fn fd() -> OwnedFd {
        OwnedFd::from(UnixStream::pair().unwrap().0)
    }

    fn is_open(raw: i32) -> bool {
        // SAFETY: F_GETFD on any number only reads.
        unsafe { libc::fcntl(raw, libc::F_GETFD) >= 0 }
    }

    #[test]
    fn getfd_takes_the_oldest_pending_descriptor() {
        let mut pending = Pending::default();
        let (a, b) = (fd(), fd());
        let (ra, rb) = (a.as_raw_fd(), b.as_raw_fd());
        pending.receive(vec![a, b], 0);
        let mut table = FdTable::default();
        table.begin(1, Some(pending.take()));
        table.getfd("first").unwrap();
        table.end();
        table.begin(1, Some(pending.take()));
        table.getfd("second").unwrap();
        table.end();
        assert!(pending.is_empty());
        table.begin(1, None);
        assert_eq!(table.take("first").unwrap().as_raw_fd(), ra);
        assert_eq!(table.take("second").unwrap().as_raw_fd(), rb);
        assert!(table.take("first").is_none(), "taken once");
    }

    #[test]
    fn qemus_errors() {
        let mut pending = Pending::default();
        let mut table = FdTable::default();
        table.begin(1, Some(pending.take()));
        assert_eq!(
            table.getfd("x").unwrap_err().desc,
            "No file descriptor supplied via SCM_RIGHTS"
        );
        table.begin(1, None);
        assert_eq!(
            table.getfd("x").unwrap_err().desc,
            "No file descriptor supplied via SCM_RIGHTS"
        );
        assert_eq!(
            table.closefd("x").unwrap_err().desc,
            "File descriptor named 'x' not found"
        );
        pending.receive(vec![fd()], 0);
        table.begin(1, Some(pending.take()));
        assert_eq!(
            table.getfd("1abc").unwrap_err().desc,
            "Parameter 'fdname' expects a name not starting with a digit"
        );
    }

    #[test]
    fn names_are_per_session_and_replacing_closes_the_old_one() {
        let mut pending = Pending::default();
        let mut table = FdTable::default();
        let old = fd();
        let raw_old = old.as_raw_fd();
        pending.receive(vec![old], 0);
        table.begin(1, Some(pending.take()));
        table.getfd("m").unwrap();
        pending.receive(vec![fd()], 0);
        table.begin(1, Some(pending.take()));
        table.getfd("m").unwrap();
        assert!(!is_open(raw_old), "the replaced descriptor is closed");
        assert_eq!(table.named(1), 1);
        table.begin(2, None);
        assert!(table.take("m").is_none(), "another session's name");
        assert_eq!(
            table.closefd("m").unwrap_err().desc,
            "File descriptor named 'm' not found"
        );
        table.begin(1, None);
        table.closefd("m").unwrap();
        assert_eq!(table.named(1), 0);
    }

    #[test]
    fn closed_sessions_and_unclaimed_descriptors_are_closed() {
        let mut pending = Pending::default();
        let mut table = FdTable::default();
        let a = fd();
        let ra = a.as_raw_fd();
        pending.receive(vec![a], 0);
        table.begin(1, Some(pending.take()));
        table.getfd("m").unwrap();
        table.end();
        table.session_closed(1);
        assert!(!is_open(ra));
        // A getfd that fails before naming closes what it brought at its end.
        let b = fd();
        let rb = b.as_raw_fd();
        pending.receive(vec![b], 0);
        table.begin(1, Some(pending.take()));
        table.end();
        assert!(!is_open(rb));
        let c = fd();
        let rc = c.as_raw_fd();
        pending.receive(vec![c], 0);
        drop(pending);
        assert!(
            !is_open(rc),
            "a session's pending descriptors close with it"
        );
    }

    #[test]
    fn limits() {
        let mut pending = Pending::default();
        pending.receive((0..MAX_PENDING_FDS + 2).map(|_| fd()).collect(), 1);
        assert_eq!(pending.len(), MAX_PENDING_FDS);
        let mut table = FdTable::default();
        for i in 0..MAX_PENDING_FDS {
            table.begin(1, Some(pending.take()));
            table.getfd(&format!("n{i}")).unwrap();
        }
        table.begin(1, Some(pending.take()));
        assert_eq!(
            table.getfd("more").unwrap_err().desc,
            format!("No file descriptor supplied via SCM_RIGHTS (3 received earlier were closed: a session holds at most {MAX_PENDING_FDS} descriptors not yet claimed by getfd, and none of those vmm keeps for itself)")
        );
        table.begin(1, Some(pending.take()));
        assert_eq!(
            table.getfd("more").unwrap_err().desc,
            "No file descriptor supplied via SCM_RIGHTS",
            "the note is given once"
        );
        for i in MAX_PENDING_FDS..MAX_NAMED_FDS {
            pending.receive(vec![fd()], 0);
            table.begin(1, Some(pending.take()));
            table.getfd(&format!("n{i}")).unwrap();
        }
        pending.receive(vec![fd()], 0);
        table.begin(1, Some(pending.take()));
        assert!(table
            .getfd("over")
            .unwrap_err()
            .desc
            .starts_with("Too many named file descriptors"));
        pending.receive(vec![fd()], 0);
        table.begin(1, Some(pending.take()));
        table.getfd("n0").unwrap();
        assert_eq!(table.named(1), MAX_NAMED_FDS, "replacing is not adding");
    }
}
