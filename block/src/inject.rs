// SPDX-License-Identifier: Apache-2.0
//! Fault injection: a filter node in the spirit of QEMU's `blkdebug`.
//!
//! Every backend has a [`FaultNode`] on top of its root. It is an implicit filter: queries,
//! the registry and [`crate::IoErrorEvent`] see the node below it (as QEMU skips implicit
//! filters with `bdrv_skip_filters`), and without rules a request pays one atomic load for it.
//! Rules ([`FaultRule`]) fail matching requests with an errno, delay them, or both; an injected
//! error is `io::Error::from_raw_os_error(errno)`, so it takes exactly the path of a host
//! error (policy, slots, retry).
//!
//! Delays wait on a condition variable: removing the rule, removing all rules or
//! [`FaultNode::release_delays`] wakes the request at once, and it proceeds as if the rule were
//! gone.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::node::{BlockNode, CacheMode, IoBuf, IoKind, SECTOR_SIZE};

/// The longest delay a rule may ask for.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

/// The errnos a rule may inject, with their names (`eio`, ...).
const ERRNOS: [(&str, i32); 5] = [
    ("eio", libc::EIO),
    ("enospc", libc::ENOSPC),
    ("eperm", libc::EPERM),
    ("erofs", libc::EROFS),
    ("edquot", libc::EDQUOT),
];

/// The errno a name (`eio`, `enospc`, `eperm`, `erofs`, `edquot`; any case) stands for.
pub fn parse_errno(name: &str) -> Option<i32> {
    ERRNOS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, e)| *e)
}

/// The name of an injectable errno (`eio`, ...), the reverse of [`parse_errno`].
pub fn errno_name(errno: i32) -> Option<&'static str> {
    ERRNOS.iter().find(|(_, e)| *e == errno).map(|(n, _)| *n)
}

/// One fault-injection rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    /// The operation it matches: [`IoKind::Read`], [`IoKind::Write`] or [`IoKind::Flush`].
    pub operation: IoKind,
    /// The error a matching request fails with; `None`: it runs normally (after `delay`).
    pub errno: Option<i32>,
    /// The first sector of the range it matches; `None`: every request.
    pub sector: Option<u64>,
    /// The number of sectors from `sector` (1 when absent).
    pub count: Option<u64>,
    /// Remove the rule after its first match.
    pub once: bool,
    /// Wait this long before failing (or running) a matching request.
    pub delay: Option<Duration>,
}

impl FaultRule {
    /// A rule failing every request of `operation` with `errno`.
    pub fn new(operation: IoKind, errno: i32) -> Self {
        Self {
            operation,
            errno: Some(errno),
            sector: None,
            count: None,
            once: false,
            delay: None,
        }
    }

    /// Whether a request of `kind` on bytes `range` (`None`: no range, a flush) matches.
    fn matches(&self, kind: IoKind, range: Option<(u64, u64)>) -> bool {
        if kind != self.operation {
            return false;
        }
        let Some(first) = self.sector else {
            return true;
        };
        let end = first.saturating_add(self.count.unwrap_or(1));
        match range {
            // [offset/512, (offset+len)/512) intersects [first, end).
            Some((offset, len)) => {
                let lo = offset / SECTOR_SIZE;
                let hi = offset.saturating_add(len) / SECTOR_SIZE;
                lo < end && first < hi
            }
            None => false,
        }
    }
}

/// A rule that cannot be installed, or an unknown rule id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// Only reads, writes and flushes can be failed.
    #[error("Fault injection supports the operations read, write and flush, not '{}'", .0.as_str())]
    Operation(IoKind),
    /// An errno outside [`parse_errno`]'s set.
    #[error("Error number {0} cannot be injected (expected eio, enospc, eperm, erofs or edquot)")]
    Errno(i32),
    /// `count` is 0.
    #[error("Parameter 'count' must be at least 1")]
    ZeroCount,
    /// `count` without `sector`.
    #[error("Parameter 'count' requires 'sector'")]
    CountWithoutSector,
    /// The sector range goes past the end of the image.
    #[error("Sectors {sector}+{count} are beyond the end of the image ({sectors} sectors)")]
    OutOfRange {
        /// The first sector.
        sector: u64,
        /// The number of sectors.
        count: u64,
        /// The image size in sectors.
        sectors: u64,
    },
    /// A delay above [`MAX_DELAY`].
    #[error("Delay of {0} ms is above the limit of 3600000 ms")]
    Delay(u128),
    /// Neither an errno nor a delay: the rule would do nothing.
    #[error("An injection rule needs an error number or a delay")]
    NoEffect,
    /// No rule with this id.
    #[error("No injection rule with id {id} on '{device}'")]
    UnknownId {
        /// The id asked for.
        id: u64,
        /// The backend's id.
        device: String,
    },
}

#[derive(Debug)]
struct Installed {
    id: u64,
    rule: FaultRule,
    /// A `once` rule whose match is still delaying its request: it matches nothing more and
    /// goes when the delay ends.
    consumed: bool,
}

#[derive(Debug)]
struct Waiter {
    token: u64,
    rule: u64,
    cancelled: bool,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<Installed>,
    next_id: u64,
    waiters: Vec<Waiter>,
    next_token: u64,
}

/// The fault-injection filter (driver `blkdebug`) a backend keeps on top of its root.
#[derive(Debug)]
pub struct FaultNode {
    name: String,
    child: RwLock<Arc<dyn BlockNode>>,
    /// Number of installed rules: the one load of the fast path.
    active: AtomicUsize,
    state: Mutex<State>,
    wake: Condvar,
}

impl FaultNode {
    /// A filter named `name` (implicit: never shown) above `child`, with no rules.
    pub fn new(name: impl Into<String>, child: Arc<dyn BlockNode>) -> Self {
        Self {
            name: name.into(),
            child: RwLock::new(child),
            active: AtomicUsize::new(0),
            state: Mutex::new(State {
                next_id: 1,
                ..State::default()
            }),
            wake: Condvar::new(),
        }
    }

    /// The node below (what queries show as the backend's root).
    pub fn current_child(&self) -> Arc<dyn BlockNode> {
        self.child.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the node below; requests already running finish on the old one.
    pub fn set_child(&self, child: Arc<dyn BlockNode>) {
        *self.child.write().unwrap_or_else(|e| e.into_inner()) = child;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update_active(&self, st: &State) {
        self.active.store(st.rules.len(), Ordering::Release);
    }

    /// Checks `rule` against an image of `size` bytes.
    ///
    /// # Errors
    /// See [`InjectError`].
    pub fn validate(rule: &FaultRule, size: u64) -> Result<(), InjectError> {
        if !matches!(rule.operation, IoKind::Read | IoKind::Write | IoKind::Flush) {
            return Err(InjectError::Operation(rule.operation));
        }
        if let Some(e) = rule.errno {
            if errno_name(e).is_none() {
                return Err(InjectError::Errno(e));
            }
        }
        if rule.count == Some(0) {
            return Err(InjectError::ZeroCount);
        }
        let sectors = size / SECTOR_SIZE;
        match (rule.sector, rule.count) {
            (None, Some(_)) => return Err(InjectError::CountWithoutSector),
            (Some(sector), count) => {
                let count = count.unwrap_or(1);
                if sector.checked_add(count).is_none_or(|end| end > sectors) {
                    return Err(InjectError::OutOfRange {
                        sector,
                        count,
                        sectors,
                    });
                }
            }
            (None, None) => {}
        }
        if let Some(d) = rule.delay {
            if d > MAX_DELAY {
                return Err(InjectError::Delay(d.as_millis()));
            }
        }
        if rule.errno.is_none() && rule.delay.is_none() {
            return Err(InjectError::NoEffect);
        }
        Ok(())
    }

    /// Installs a rule (checked against the child's size) and returns its id (1, 2, ...).
    ///
    /// # Errors
    /// See [`InjectError`].
    pub fn inject(&self, rule: FaultRule) -> Result<u64, InjectError> {
        Self::validate(&rule, self.size())?;
        let mut st = self.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.rules.push(Installed {
            id,
            rule,
            consumed: false,
        });
        self.update_active(&st);
        Ok(id)
    }

    /// Removes rule `id` (`None`: every rule) and wakes the requests they delay. `device`
    /// names the backend in the error.
    ///
    /// # Errors
    /// [`InjectError::UnknownId`].
    pub fn remove(&self, id: Option<u64>, device: &str) -> Result<(), InjectError> {
        let mut st = self.lock();
        match id {
            None => {
                st.rules.clear();
                st.waiters.iter_mut().for_each(|w| w.cancelled = true);
            }
            Some(id) => {
                let before = st.rules.len();
                st.rules.retain(|r| r.id != id);
                if st.rules.len() == before {
                    return Err(InjectError::UnknownId {
                        id,
                        device: device.to_string(),
                    });
                }
                st.waiters
                    .iter_mut()
                    .filter(|w| w.rule == id)
                    .for_each(|w| w.cancelled = true);
            }
        }
        self.update_active(&st);
        drop(st);
        self.wake.notify_all();
        Ok(())
    }

    /// The installed rules with their ids, oldest first (a `once` rule still delaying its
    /// request included).
    pub fn rules(&self) -> Vec<(u64, FaultRule)> {
        self.lock()
            .rules
            .iter()
            .map(|r| (r.id, r.rule.clone()))
            .collect()
    }

    /// Wakes every delayed request now (on reset and shutdown); each proceeds as if its rule
    /// were gone. Rules stay installed.
    pub fn release_delays(&self) {
        let mut st = self.lock();
        st.waiters.iter_mut().for_each(|w| w.cancelled = true);
        drop(st);
        self.wake.notify_all();
    }

    /// How many requests rule `id` is delaying right now.
    pub fn held_by(&self, id: u64) -> usize {
        self.lock()
            .waiters
            .iter()
            .filter(|w| w.rule == id && !w.cancelled)
            .count()
    }

    /// Applies the rules to a request of `kind` on `range`: `Ok` lets it run.
    ///
    /// # Errors
    /// The injected error.
    pub fn check(&self, kind: IoKind, range: Option<(u64, u64)>) -> io::Result<()> {
        if self.active.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let mut st = self.lock();
        // Rules whose delay was cancelled for this request.
        let mut skip: Vec<u64> = Vec::new();
        loop {
            let Some(idx) = st
                .rules
                .iter()
                .position(|r| !r.consumed && !skip.contains(&r.id) && r.rule.matches(kind, range))
            else {
                return Ok(());
            };
            let (id, errno, delay, once) = {
                let r = &st.rules[idx];
                (r.id, r.rule.errno, r.rule.delay, r.rule.once)
            };
            let result = || errno.map_or(Ok(()), |e| Err(io::Error::from_raw_os_error(e)));
            let Some(delay) = delay else {
                if once {
                    st.rules.remove(idx);
                    self.update_active(&st);
                }
                return result();
            };
            if once {
                st.rules[idx].consumed = true;
            }
            let token = st.next_token;
            st.next_token += 1;
            st.waiters.push(Waiter {
                token,
                rule: id,
                cancelled: false,
            });
            let deadline = Instant::now() + delay;
            let cancelled = loop {
                let w = st.waiters.iter().position(|w| w.token == token);
                if w.is_none_or(|w| st.waiters[w].cancelled) {
                    break true;
                }
                let now = Instant::now();
                if now >= deadline {
                    break false;
                }
                st = self
                    .wake
                    .wait_timeout(st, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            };
            st.waiters.retain(|w| w.token != token);
            if cancelled {
                skip.push(id);
                continue;
            }
            if once {
                st.rules.retain(|r| r.id != id);
                self.update_active(&st);
            }
            return result();
        }
    }
}

impl BlockNode for FaultNode {
    fn node_name(&self) -> &str {
        &self.name
    }

    fn driver(&self) -> &str {
        "blkdebug"
    }

    fn child(&self) -> Option<Arc<dyn BlockNode>> {
        Some(self.current_child())
    }

    fn host_file(&self) -> Option<crate::file::HostFile> {
        // With rules installed every request must pass through `check`.
        if self.active.load(Ordering::Acquire) == 0 {
            self.current_child().host_file()
        } else {
            None
        }
    }

    fn implicit(&self) -> bool {
        true
    }

    fn size(&self) -> u64 {
        self.current_child().size()
    }

    fn read_only(&self) -> bool {
        self.current_child().read_only()
    }

    fn cache(&self) -> CacheMode {
        self.current_child().cache()
    }

    fn filename(&self) -> Option<&Path> {
        None
    }

    fn read_vectored(&self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()> {
        let len = bufs.iter().map(|b| b.len() as u64).sum();
        self.check(IoKind::Read, Some((offset, len)))?;
        self.current_child().read_vectored(offset, bufs)
    }

    fn write_vectored(&self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()> {
        let len = bufs.iter().map(|b| b.len() as u64).sum();
        self.check(IoKind::Write, Some((offset, len)))?;
        self.current_child().write_vectored(offset, bufs)
    }

    fn flush(&self) -> io::Result<()> {
        self.check(IoKind::Flush, None)?;
        self.current_child().flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;

    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::file::FileNode;

    fn node(sectors: u64) -> (TempFile, FaultNode) {
        let f = TempFile::new().unwrap();
        std::fs::write(f.as_path(), vec![0u8; (sectors * SECTOR_SIZE) as usize]).unwrap();
        let file = FileNode::open("disk0", f.as_path(), false, CacheMode::default()).unwrap();
        (f, FaultNode::new("#inject", Arc::new(file)))
    }

    fn errno(r: io::Result<()>) -> Option<i32> {
        r.err().map(|e| e.raw_os_error().unwrap())
    }

    #[test]
    fn errno_names() {
        for (name, e) in ERRNOS {
            assert_eq!(parse_errno(name), Some(e));
            assert_eq!(parse_errno(&name.to_uppercase()), Some(e));
            assert_eq!(errno_name(e), Some(name));
        }
        assert_eq!(parse_errno("enoent"), None);
        assert_eq!(errno_name(libc::ENOENT), None);
        assert_eq!(
            io::Error::from_raw_os_error(libc::EROFS).kind(),
            io::ErrorKind::ReadOnlyFilesystem
        );
    }

    #[test]
    fn validation_errors() {
        let (_f, n) = node(16);
        let rule = |f: fn(&mut FaultRule)| {
            let mut r = FaultRule::new(IoKind::Write, libc::EIO);
            f(&mut r);
            n.inject(r).unwrap_err().to_string()
        };
        assert_eq!(
            rule(|r| r.operation = IoKind::Discard),
            "Fault injection supports the operations read, write and flush, not 'discard'"
        );
        assert_eq!(
            rule(|r| r.errno = Some(libc::ENOENT)),
            "Error number 2 cannot be injected (expected eio, enospc, eperm, erofs or edquot)"
        );
        assert_eq!(
            rule(|r| {
                r.sector = Some(0);
                r.count = Some(0)
            }),
            "Parameter 'count' must be at least 1"
        );
        assert_eq!(
            rule(|r| r.count = Some(2)),
            "Parameter 'count' requires 'sector'"
        );
        assert_eq!(
            rule(|r| r.sector = Some(16)),
            "Sectors 16+1 are beyond the end of the image (16 sectors)"
        );
        assert_eq!(
            rule(|r| {
                r.sector = Some(10);
                r.count = Some(u64::MAX)
            }),
            format!(
                "Sectors 10+{} are beyond the end of the image (16 sectors)",
                u64::MAX
            )
        );
        assert_eq!(
            rule(|r| r.delay = Some(MAX_DELAY + Duration::from_millis(1))),
            "Delay of 3600001 ms is above the limit of 3600000 ms"
        );
        assert_eq!(
            rule(|r| r.errno = None),
            "An injection rule needs an error number or a delay"
        );
        assert!(n.rules().is_empty());
        assert_eq!(
            n.remove(Some(7), "drive0").unwrap_err().to_string(),
            "No injection rule with id 7 on 'drive0'"
        );
        // The last sector is fine.
        let mut r = FaultRule::new(IoKind::Read, libc::EIO);
        r.sector = Some(15);
        assert_eq!(n.inject(r), Ok(1));
    }

    #[test]
    fn sector_ranges_match() {
        let (_f, n) = node(64);
        let mut r = FaultRule::new(IoKind::Write, libc::ENOSPC);
        r.sector = Some(10);
        r.count = Some(4); // sectors 10..14
        assert_eq!(n.inject(r), Ok(1));
        let w = |sector: u64, sectors: u64| {
            errno(n.check(IoKind::Write, Some((sector * 512, sectors * 512))))
        };
        assert_eq!(w(0, 10), None);
        assert_eq!(w(0, 11), Some(libc::ENOSPC));
        assert_eq!(w(13, 1), Some(libc::ENOSPC));
        assert_eq!(w(14, 8), None);
        assert_eq!(w(9, 6), Some(libc::ENOSPC));
        // A partial sector at the end of the range does not reach the next one.
        assert_eq!(errno(n.check(IoKind::Write, Some((9 * 512, 1023)))), None);
        // Other operations do not match; a flush has no range.
        assert_eq!(errno(n.check(IoKind::Read, Some((10 * 512, 512)))), None);
        assert_eq!(errno(n.check(IoKind::Flush, None)), None);
        // Without count: one sector.
        let mut r = FaultRule::new(IoKind::Read, libc::EIO);
        r.sector = Some(20);
        assert_eq!(n.inject(r), Ok(2));
        assert_eq!(
            errno(n.check(IoKind::Read, Some((20 * 512, 512)))),
            Some(libc::EIO)
        );
        assert_eq!(errno(n.check(IoKind::Read, Some((21 * 512, 512)))), None);
        // Without sector: everything of the operation, flushes included.
        assert_eq!(n.inject(FaultRule::new(IoKind::Flush, libc::EIO)), Ok(3));
        assert_eq!(errno(n.check(IoKind::Flush, None)), Some(libc::EIO));
        // The oldest matching rule decides.
        assert_eq!(n.inject(FaultRule::new(IoKind::Write, libc::EPERM)), Ok(4));
        assert_eq!(w(10, 1), Some(libc::ENOSPC));
        assert_eq!(w(30, 1), Some(libc::EPERM));
    }

    #[test]
    fn once_remove_and_ids() {
        let (_f, n) = node(8);
        let mut once = FaultRule::new(IoKind::Read, libc::EIO);
        once.once = true;
        assert_eq!(n.inject(once.clone()), Ok(1));
        assert_eq!(n.inject(FaultRule::new(IoKind::Write, libc::EIO)), Ok(2));
        assert_eq!(n.inject(FaultRule::new(IoKind::Flush, libc::EIO)), Ok(3));
        assert_eq!(
            n.rules().iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(n.rules()[0].1, once);
        assert_eq!(
            errno(n.check(IoKind::Read, Some((0, 512)))),
            Some(libc::EIO)
        );
        assert_eq!(errno(n.check(IoKind::Read, Some((0, 512)))), None);
        assert_eq!(
            n.rules().iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![2, 3]
        );
        n.remove(Some(2), "drive0").unwrap();
        assert_eq!(errno(n.check(IoKind::Write, Some((0, 512)))), None);
        assert!(n.remove(Some(2), "drive0").is_err());
        n.remove(None, "drive0").unwrap();
        assert!(n.rules().is_empty());
        assert_eq!(errno(n.check(IoKind::Flush, None)), None);
        // Ids keep increasing after removals.
        assert_eq!(n.inject(FaultRule::new(IoKind::Write, libc::EIO)), Ok(4));
        n.remove(None, "drive0").unwrap();
        assert_eq!(n.active.load(Ordering::Relaxed), 0);
    }

    /// Starts a request that an hour-long delay holds; returns the channel its result arrives
    /// on, once it has started waiting.
    fn delayed(n: &Arc<FaultNode>, kind: IoKind) -> std::sync::mpsc::Receiver<Option<i32>> {
        let (tx, rx) = channel();
        let waiting = n.lock().waiters.len();
        let n2 = n.clone();
        std::thread::spawn(move || {
            let r = n2.check(kind, Some((0, 512)));
            let _ = tx.send(errno(r));
        });
        while n.lock().waiters.len() == waiting {
            std::thread::yield_now();
        }
        rx
    }

    #[test]
    fn delays_are_cancelled_by_removal_and_release() {
        let (_f, n) = node(8);
        let n = Arc::new(n);
        // Delay then fail: removing the rule lets the request run as if it were gone.
        let mut slow = FaultRule::new(IoKind::Write, libc::EIO);
        slow.delay = Some(MAX_DELAY);
        let id = n.inject(slow.clone()).unwrap();
        let rx = delayed(&n, IoKind::Write);
        assert!(rx.try_recv().is_err());
        n.remove(Some(id), "drive0").unwrap();
        assert_eq!(rx.recv().unwrap(), None);

        // Removing another rule does not release it; removing all does.
        let id = n.inject(slow.clone()).unwrap();
        let other = n.inject(FaultRule::new(IoKind::Read, libc::EIO)).unwrap();
        let rx = delayed(&n, IoKind::Write);
        n.remove(Some(other), "drive0").unwrap();
        assert!(n.lock().waiters.len() == 1 && rx.try_recv().is_err());
        n.remove(None, "drive0").unwrap();
        assert_eq!(rx.recv().unwrap(), None);
        assert!(n.remove(Some(id), "drive0").is_err());

        // Hang without failing (no errno): release_delays wakes it and the rule stays.
        let mut hang = FaultRule::new(IoKind::Read, libc::EIO);
        hang.errno = None;
        hang.delay = Some(MAX_DELAY);
        n.inject(hang).unwrap();
        let rx1 = delayed(&n, IoKind::Read);
        let rx2 = delayed(&n, IoKind::Read);
        n.release_delays();
        assert_eq!(rx1.recv().unwrap(), None);
        assert_eq!(rx2.recv().unwrap(), None);
        assert_eq!(n.rules().len(), 1);
        assert!(n.lock().waiters.is_empty());
        n.remove(None, "drive0").unwrap();

        // A once rule with a delay matches one request, stays listed while it waits, and can
        // be removed by id meanwhile.
        let mut once = slow.clone();
        once.once = true;
        let id = n.inject(once).unwrap();
        let rx = delayed(&n, IoKind::Write);
        assert_eq!(errno(n.check(IoKind::Write, Some((0, 512)))), None);
        assert_eq!(n.rules().len(), 1);
        n.remove(Some(id), "drive0").unwrap();
        assert_eq!(rx.recv().unwrap(), None);
    }

    #[test]
    fn short_delays_then_fail_or_run() {
        let (_f, n) = node(8);
        let mut r = FaultRule::new(IoKind::Flush, libc::EDQUOT);
        r.delay = Some(Duration::from_millis(5));
        r.once = true;
        n.inject(r).unwrap();
        let start = Instant::now();
        assert_eq!(errno(n.check(IoKind::Flush, None)), Some(libc::EDQUOT));
        assert!(start.elapsed() >= Duration::from_millis(5));
        assert!(n.rules().is_empty());
        // Through the node interface.
        let mut r = FaultRule::new(IoKind::Flush, libc::EIO);
        r.errno = None;
        r.delay = Some(Duration::from_millis(1));
        n.inject(r).unwrap();
        assert!(n.flush().is_ok());
        let e = n.flush().map(|_| ()).and_then(|_| {
            n.inject(FaultRule::new(IoKind::Write, libc::EROFS))
                .unwrap();
            n.write_vectored(0, &[])
        });
        assert_eq!(errno(e), Some(libc::EROFS));
    }
}
