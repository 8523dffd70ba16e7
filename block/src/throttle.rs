// SPDX-License-Identifier: Apache-2.0
//! I/O throttling with QEMU's semantics: `-drive throttling.*` and QMP's
//! `block_set_io_throttle` (QEMU's `util/throttle.c` and `block/throttle-groups.c`).
//!
//! **Limits.** Six leaky buckets ([`Bucket`]): bytes and operations per second, each in
//! total, for reads and for writes. Each has a rate `avg` (units per second; 0 means no
//! limit), an optional burst rate `max` and the burst's length in seconds `max_length` (1 by
//! default). With `iops_size` set, a request larger than it counts as `size / iops_size`
//! operations. [`ThrottleConfig::validate`] applies QEMU 7.2's checks (`throttle_is_valid`)
//! in its order and with its messages.
//!
//! **Buckets** ([`LeakyBuckets`]). A request is admitted when every bucket of its direction
//! has room, and is then accounted in full (so the request that fills a bucket passes, and the
//! next one waits). A bucket leaks at `avg` per second. Without a burst rate a bucket holds
//! a tenth of a second of its rate, so that short bursts pass; with one it holds
//! `max * max_length` units before requests are held back to `avg`, and when `max_length`
//! is more than one second a second level, leaking at `max`, keeps the burst itself at `max`
//! per second (it too holds a tenth of a second). A request over a full bucket waits for the
//! excess to leak: `excess / rate`.
//!
//! **Groups.** Limits always belong to a named group (by default named after the drive);
//! disks in one group share the buckets, and while requests of several disks wait, the
//! group lets them through in round-robin order: one timer per direction is armed in a
//! group, for the queue whose turn it is, and each admitted request passes the turn on to
//! the next queue with a request waiting (a disk's queues take turns like disks). One
//! queue's requests are served in order. Disks in other groups, or without limits, are
//! never delayed.
//!
//! **Directions.** Reads are reads; writes and write-zeroes are writes (QEMU throttles
//! write-zeroes as a write of its length); flushes and discards are not throttled.
//!
//! Each [`Backend`](crate::Backend) carries a [`Throttle`] (its group membership); each
//! I/O thread of its device (one per queue) takes a [`ThrottleQueue`], its own place in the
//! group's round robin, and calls [`ThrottleQueue::try_start`] before it starts a request;
//! when told to wait it leaves the request first in line and waits for
//! [`ThrottleQueue::timer`] to fire. Requests are delayed, never failed. [`ThrottleGroups`]
//! names the groups of one VM.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

use crate::node::IoKind;

/// The largest rate or burst QEMU accepts (`THROTTLE_VALUE_MAX`).
pub const THROTTLE_VALUE_MAX: u64 = 1_000_000_000_000_000;

/// One of the six limits, in QEMU's order (`BucketType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// Bytes per second, reads and writes together.
    BpsTotal,
    /// Bytes per second read.
    BpsRead,
    /// Bytes per second written.
    BpsWrite,
    /// Operations per second, reads and writes together.
    IopsTotal,
    /// Read operations per second.
    IopsRead,
    /// Write operations per second.
    IopsWrite,
}

impl Bucket {
    /// Every bucket, in QEMU's order (the order in which the checks run).
    pub const ALL: [Bucket; 6] = [
        Bucket::BpsTotal,
        Bucket::BpsRead,
        Bucket::BpsWrite,
        Bucket::IopsTotal,
        Bucket::IopsRead,
        Bucket::IopsWrite,
    ];

    /// The `-drive throttling.` key of the rate: `bps-total`, `bps-read`, ... `iops-write`
    /// (the burst keys add `-max` and `-max-length`).
    pub const fn option_name(self) -> &'static str {
        match self {
            Bucket::BpsTotal => "bps-total",
            Bucket::BpsRead => "bps-read",
            Bucket::BpsWrite => "bps-write",
            Bucket::IopsTotal => "iops-total",
            Bucket::IopsRead => "iops-read",
            Bucket::IopsWrite => "iops-write",
        }
    }

    /// QMP's name of the rate (`block_set_io_throttle`, `query-block`): `bps`, `bps_rd`, ...
    /// `iops_wr` (the burst members add `_max` and `_max_length`).
    pub const fn qmp_name(self) -> &'static str {
        match self {
            Bucket::BpsTotal => "bps",
            Bucket::BpsRead => "bps_rd",
            Bucket::BpsWrite => "bps_wr",
            Bucket::IopsTotal => "iops",
            Bucket::IopsRead => "iops_rd",
            Bucket::IopsWrite => "iops_wr",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }

    /// Whether the bucket counts bytes (else operations).
    const fn counts_bytes(self) -> bool {
        matches!(self, Bucket::BpsTotal | Bucket::BpsRead | Bucket::BpsWrite)
    }

    /// Whether requests of `dir` fill this bucket.
    const fn applies_to(self, dir: Direction) -> bool {
        match self {
            Bucket::BpsTotal | Bucket::IopsTotal => true,
            Bucket::BpsRead | Bucket::IopsRead => matches!(dir, Direction::Read),
            Bucket::BpsWrite | Bucket::IopsWrite => matches!(dir, Direction::Write),
        }
    }
}

/// The direction of a throttled request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Reads.
    Read,
    /// Writes and write-zeroes.
    Write,
}

impl Direction {
    /// The direction `kind` is throttled in: `None` for flushes and discards, which QEMU does
    /// not throttle.
    pub const fn of(kind: IoKind) -> Option<Self> {
        match kind {
            IoKind::Read => Some(Direction::Read),
            IoKind::Write | IoKind::WriteZeroes => Some(Direction::Write),
            IoKind::Flush | IoKind::Discard => None,
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// One bucket's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Units (bytes or operations) per second; 0: no limit.
    pub avg: u64,
    /// Burst rate in units per second; 0: no burst beyond a tenth of a second of `avg`.
    pub max: u64,
    /// How many seconds a burst at `max` may last (1 unless set).
    pub max_length: u64,
}

impl Default for Limit {
    fn default() -> Self {
        Self {
            avg: 0,
            max: 0,
            max_length: 1,
        }
    }
}

/// A set of limits (QEMU's `ThrottleConfig`). The default has no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ThrottleConfig {
    limits: [Limit; 6],
    /// Requests larger than this many bytes count as `size / iops_size` operations; 0: every
    /// request is one operation.
    pub iops_size: u64,
}

/// Why [`ThrottleConfig::validate`] refused limits (QEMU 7.2's messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ThrottleConfigError {
    /// A total limit with a read or write limit of the same kind.
    #[error("bps/iops/max total values and read/write values cannot be used at the same time")]
    TotalWithReadWrite,
    /// `iops_size` without an operations limit.
    #[error("iops size requires an iops value to be set")]
    IopsSizeWithoutIops,
    /// A rate or burst beyond [`THROTTLE_VALUE_MAX`].
    #[error("bps/iops/max values must be within [0, {THROTTLE_VALUE_MAX}]")]
    OutOfRange,
    /// A burst length of 0.
    #[error("the burst length cannot be 0")]
    ZeroBurstLength,
    /// A burst length without a burst rate.
    #[error("burst length set without burst rate")]
    BurstLengthWithoutRate,
    /// `max * max_length` beyond [`THROTTLE_VALUE_MAX`].
    #[error("burst length too high for this burst rate")]
    BurstLengthTooHigh,
    /// A burst rate without a rate.
    #[error("bps_max/iops_max require corresponding bps/iops values")]
    BurstWithoutRate,
    /// A burst rate below the rate.
    #[error("bps_max/iops_max cannot be lower than bps/iops")]
    BurstBelowRate,
}

impl ThrottleConfig {
    /// The limit of bucket `b`.
    pub fn limit(&self, b: Bucket) -> Limit {
        self.limits[b.index()]
    }

    /// The limit of bucket `b`, to change it.
    pub fn limit_mut(&mut self, b: Bucket) -> &mut Limit {
        &mut self.limits[b.index()]
    }

    /// Whether any bucket has a rate (QEMU's `throttle_enabled`): otherwise nothing is
    /// throttled and a disk given these limits leaves its group.
    pub fn is_enabled(&self) -> bool {
        self.limits.iter().any(|l| l.avg > 0)
    }

    /// QEMU 7.2's `throttle_is_valid`, check for check and in its order: totals against
    /// read/write limits, `iops_size` against operation limits, then bucket by bucket the
    /// range, the burst length and the burst rate.
    ///
    /// # Errors
    /// The first check that fails.
    pub fn validate(&self) -> Result<(), ThrottleConfigError> {
        let l = |b: Bucket| self.limit(b);
        let conflict = |total: Bucket, read: Bucket, write: Bucket, f: fn(Limit) -> u64| {
            f(l(total)) != 0 && (f(l(read)) != 0 || f(l(write)) != 0)
        };
        let (bt, br, bw) = (Bucket::BpsTotal, Bucket::BpsRead, Bucket::BpsWrite);
        let (it, ir, iw) = (Bucket::IopsTotal, Bucket::IopsRead, Bucket::IopsWrite);
        if conflict(bt, br, bw, |l| l.avg)
            || conflict(it, ir, iw, |l| l.avg)
            || conflict(bt, br, bw, |l| l.max)
            || conflict(it, ir, iw, |l| l.max)
        {
            return Err(ThrottleConfigError::TotalWithReadWrite);
        }
        if self.iops_size != 0 && [it, ir, iw].iter().all(|&b| l(b).avg == 0) {
            return Err(ThrottleConfigError::IopsSizeWithoutIops);
        }
        for b in Bucket::ALL {
            let Limit {
                avg,
                max,
                max_length,
            } = l(b);
            if avg > THROTTLE_VALUE_MAX || max > THROTTLE_VALUE_MAX {
                return Err(ThrottleConfigError::OutOfRange);
            }
            if max_length == 0 {
                return Err(ThrottleConfigError::ZeroBurstLength);
            }
            if max_length > 1 && max == 0 {
                return Err(ThrottleConfigError::BurstLengthWithoutRate);
            }
            if max != 0 && max_length > THROTTLE_VALUE_MAX / max {
                return Err(ThrottleConfigError::BurstLengthTooHigh);
            }
            if max != 0 && avg == 0 {
                return Err(ThrottleConfigError::BurstWithoutRate);
            }
            if max != 0 && max < avg {
                return Err(ThrottleConfigError::BurstBelowRate);
            }
        }
        Ok(())
    }
}

/// Nanoseconds to let `excess` units leak at `rate` units per second, truncated as QEMU's
/// integer nanoseconds are (a wait under a nanosecond is none).
fn leak_time(excess: f64, rate: f64) -> Duration {
    // `as` saturates: an absurd wait stays finite.
    Duration::from_nanos((excess * 1e9 / rate) as u64)
}

/// The six leaky buckets of one set of limits (QEMU's `ThrottleState`).
#[derive(Debug, Clone)]
pub struct LeakyBuckets {
    config: ThrottleConfig,
    /// Units in each bucket.
    level: [f64; 6],
    /// Units in each bucket's burst level (used when `max_length` > 1).
    burst_level: [f64; 6],
    /// When the buckets last leaked.
    last_leak: Instant,
}

impl LeakyBuckets {
    /// Empty buckets for `config`, leaking from `now`.
    pub fn new(config: ThrottleConfig, now: Instant) -> Self {
        Self {
            config,
            level: [0.0; 6],
            burst_level: [0.0; 6],
            last_leak: now,
        }
    }

    /// The limits.
    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    /// Lets every bucket leak what it would have between the last leak and `now` (a `now`
    /// before the last leak leaks nothing).
    pub fn leak(&mut self, now: Instant) {
        let Some(elapsed) = now.checked_duration_since(self.last_leak) else {
            return;
        };
        self.last_leak = now;
        let secs = elapsed.as_secs_f64();
        for b in Bucket::ALL {
            let i = b.index();
            let limit = self.config.limit(b);
            self.level[i] = (self.level[i] - limit.avg as f64 * secs).max(0.0);
            if limit.max_length > 1 {
                self.burst_level[i] = (self.burst_level[i] - limit.max as f64 * secs).max(0.0);
            }
        }
    }

    /// How long a request of `dir` must wait before it may start, from the levels as they
    /// stand (call [`LeakyBuckets::leak`] first); zero when it may start now.
    pub fn wait(&self, dir: Direction) -> Duration {
        Bucket::ALL
            .into_iter()
            .filter(|b| b.applies_to(dir))
            .map(|b| self.bucket_wait(b))
            .max()
            .unwrap_or_default()
    }

    fn bucket_wait(&self, b: Bucket) -> Duration {
        let Limit {
            avg,
            max,
            max_length,
        } = self.config.limit(b);
        if avg == 0 {
            return Duration::ZERO;
        }
        let (avg, max) = (avg as f64, max as f64);
        let i = b.index();
        // What the bucket holds before requests are held back to `avg`.
        let capacity = if max == 0.0 {
            avg / 10.0
        } else {
            max * max_length as f64
        };
        let excess = self.level[i] - capacity;
        if excess > 0.0 {
            return leak_time(excess, avg);
        }
        // Within a long burst, the burst itself runs at `max`.
        if max_length > 1 {
            let excess = self.burst_level[i] - max / 10.0;
            if excess > 0.0 {
                return leak_time(excess, max);
            }
        }
        Duration::ZERO
    }

    /// Accounts a request of `bytes` in direction `dir`.
    pub fn account(&mut self, dir: Direction, bytes: u64) {
        let size = self.config.iops_size;
        let ops = if size != 0 && bytes > size {
            bytes as f64 / size as f64
        } else {
            1.0
        };
        for b in Bucket::ALL.into_iter().filter(|b| b.applies_to(dir)) {
            let units = if b.counts_bytes() { bytes as f64 } else { ops };
            let i = b.index();
            self.level[i] += units;
            if self.config.limit(b).max_length > 1 {
                self.burst_level[i] += units;
            }
        }
    }
}

/// A member of a throttle group (one per [`Throttle`]).
type MemberId = u64;

/// A member's place in its group's schedule.
#[derive(Debug)]
struct Slot<W> {
    id: MemberId,
    /// The member has a request waiting, per direction.
    pending: [bool; 2],
    /// How to wake the member.
    waker: W,
}

/// What [`GroupState::try_start`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// Start the request (it is accounted).
    Go,
    /// Wait until the member's timer fires.
    Wait,
    /// The member is not in this group (it moved): ask its current group.
    Gone,
}

/// The schedule of one group: its buckets, its members in round-robin order, and per
/// direction the one armed timer (whose member's turn it is, and when) and the last member
/// given the turn. Pure: alarms to set are collected for the caller.
#[derive(Debug)]
struct GroupState<W> {
    buckets: LeakyBuckets,
    slots: Vec<Slot<W>>,
    /// The armed timer per direction: the member it wakes and when.
    timer: [Option<(MemberId, Instant)>; 2],
    /// Per direction, where the round-robin search for the next member starts.
    token: [Option<MemberId>; 2],
    /// Alarms decided but not yet set: wake this member at that time.
    alarms: Vec<(MemberId, Instant)>,
}

impl<W> GroupState<W> {
    fn new(config: ThrottleConfig, now: Instant) -> Self {
        Self {
            buckets: LeakyBuckets::new(config, now),
            slots: Vec::new(),
            timer: [None; 2],
            token: [None; 2],
            alarms: Vec::new(),
        }
    }

    fn index(&self, id: MemberId) -> Option<usize> {
        self.slots.iter().position(|s| s.id == id)
    }

    fn alarm(&mut self, id: MemberId, at: Instant) {
        self.alarms.push((id, at));
    }

    fn add(&mut self, id: MemberId, waker: W) {
        self.slots.push(Slot {
            id,
            pending: [false; 2],
            waker,
        });
    }

    /// Removes a member; returns whether it had a request waiting. Its turn passes on.
    fn remove(&mut self, id: MemberId, now: Instant) -> bool {
        let was_pending = self.cancel(id, now);
        if let Some(i) = self.index(id) {
            self.slots.remove(i);
        }
        for token in &mut self.token {
            if *token == Some(id) {
                *token = None;
            }
        }
        was_pending
    }

    /// Forgets a member's waiting requests and passes its turn on; returns whether it had
    /// any.
    fn cancel(&mut self, id: MemberId, now: Instant) -> bool {
        let Some(i) = self.index(id) else {
            return false;
        };
        let was_pending = self.slots[i].pending.contains(&true);
        self.slots[i].pending = [false; 2];
        for d in [Direction::Read, Direction::Write] {
            if self.timer[d.index()].is_some_and(|(t, _)| t == id) {
                self.timer[d.index()] = None;
                self.schedule_next(d, now);
            }
        }
        was_pending
    }

    /// New limits: empty buckets from `now`; the member whose timer is armed goes at once
    /// (and passes the turn on as usual).
    fn configure(&mut self, config: ThrottleConfig, now: Instant) {
        self.buckets = LeakyBuckets::new(config, now);
        for d in 0..2 {
            if let Some((t, _)) = self.timer[d] {
                self.timer[d] = Some((t, now));
                self.alarm(t, now);
            }
        }
    }

    /// The next member after the round-robin token with a request waiting in `dir` (the
    /// token itself last), if any.
    fn next_waiting(&self, dir: Direction) -> Option<MemberId> {
        let d = dir.index();
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let start = self.token[d].and_then(|t| self.index(t)).unwrap_or(n - 1);
        (1..=n)
            .map(|k| &self.slots[(start + k) % n])
            .find(|s| s.pending[d])
            .map(|s| s.id)
    }

    /// Whether `token`'s request must wait; when it must and no timer is armed, arms one for
    /// `token` at the time the buckets allow it (QEMU's `throttle_group_schedule_timer`).
    fn must_wait(&mut self, token: MemberId, dir: Direction, now: Instant) -> bool {
        let d = dir.index();
        if self.timer[d].is_some() {
            return true;
        }
        self.buckets.leak(now);
        let wait = self.buckets.wait(dir);
        if wait.is_zero() {
            return false;
        }
        let at = now + wait;
        self.timer[d] = Some((token, at));
        self.token[d] = Some(token);
        self.alarm(token, at);
        true
    }

    /// Gives the turn to the next member with a request waiting: at once if the buckets
    /// allow, else when they will.
    fn schedule_next(&mut self, dir: Direction, now: Instant) {
        let Some(next) = self.next_waiting(dir) else {
            return;
        };
        if !self.must_wait(next, dir, now) {
            let d = dir.index();
            self.timer[d] = Some((next, now));
            self.token[d] = Some(next);
            self.alarm(next, now);
        }
    }

    /// Member `id` asks to start a request of `bytes` in `dir` at `now`.
    ///
    /// A member whose timer has fired goes without a new check (its wait was computed when
    /// the timer was armed); any other waits while a timer is armed in its direction or while
    /// it already has a request waiting, or if the buckets are full (then it arms the timer).
    /// A request that goes is accounted and passes the turn on.
    fn try_start(&mut self, id: MemberId, dir: Direction, bytes: u64, now: Instant) -> Attempt {
        let d = dir.index();
        let Some(i) = self.index(id) else {
            return Attempt::Gone;
        };
        if let Some((t, at)) = self.timer[d].filter(|&(t, _)| t == id) {
            if now >= at {
                self.timer[d] = None;
                if self.slots[i].pending[d] {
                    self.slots[i].pending[d] = false;
                    self.buckets.account(dir, bytes);
                    self.schedule_next(dir, now);
                    return Attempt::Go;
                }
            } else if self.slots[i].pending[d] {
                // Woken early (an older alarm): wait for this one.
                self.alarm(t, at);
                return Attempt::Wait;
            }
        }
        if self.slots[i].pending[d] {
            return Attempt::Wait;
        }
        let token = self.next_waiting(dir).unwrap_or(id);
        if self.must_wait(token, dir, now) {
            self.slots[i].pending[d] = true;
            return Attempt::Wait;
        }
        self.buckets.account(dir, bytes);
        self.schedule_next(dir, now);
        Attempt::Go
    }
}

/// The timer a throttled device waits on (a non-blocking timerfd: other members of its group
/// arm it from their threads). Register it for reading; when it fires, call
/// [`ThrottleTimer::clear`] and ask [`Throttle::try_start`] again.
#[derive(Debug)]
pub struct ThrottleTimer {
    fd: RawFd,
    timer: Mutex<TimerFd>,
}

impl ThrottleTimer {
    fn new() -> io::Result<Self> {
        let timer = TimerFd::new()?;
        let fd = timer.as_raw_fd();
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            fd,
            timer: Mutex::new(timer),
        })
    }

    fn lock(&self) -> MutexGuard<'_, TimerFd> {
        self.timer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Arms the timer to fire at `at` (at once if `at` has passed), replacing any earlier
    /// setting.
    fn arm_at(&self, at: Instant) {
        // Zero would disarm the timer.
        let after = at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        // Fails only on a bad descriptor or value: neither can happen here.
        let _ = self.lock().reset(after, None);
    }

    /// Consumes the expirations that made the timer readable; a no-op if there are none.
    pub fn clear(&self) {
        // EAGAIN when another thread re-armed it since it fired: nothing to consume.
        let _ = self.lock().wait();
    }

    /// Whether the timer is armed and has not fired yet.
    pub fn is_armed(&self) -> bool {
        self.lock().is_armed().unwrap_or(false)
    }
}

impl AsRawFd for ThrottleTimer {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

/// A throttle group: its name and schedule.
#[derive(Debug)]
struct Group {
    name: String,
    state: Mutex<GroupState<Arc<ThrottleTimer>>>,
}

impl Group {
    fn state(&self) -> MutexGuard<'_, GroupState<Arc<ThrottleTimer>>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Sets the alarms the schedule decided, on the members' timers (under the group's lock, so
/// that alarms of one group are set in the order they were decided).
fn ring(state: &mut GroupState<Arc<ThrottleTimer>>) {
    for (id, at) in std::mem::take(&mut state.alarms) {
        if let Some(i) = state.index(id) {
            state.slots[i].waker.arm_at(at);
        }
    }
}

/// The throttle groups of one VM, by name (QEMU's `throttle_groups`). A group lives while a
/// disk is in it; one made again later starts afresh.
#[derive(Debug, Clone, Default)]
pub struct ThrottleGroups {
    groups: Arc<Mutex<HashMap<String, Weak<Group>>>>,
}

impl ThrottleGroups {
    /// No groups.
    pub fn new() -> Self {
        Self::default()
    }

    /// The group `name`, made (without limits) if no disk is in one of that name.
    fn get(&self, name: &str, now: Instant) -> Arc<Group> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.retain(|_, g| g.strong_count() > 0);
        if let Some(g) = groups.get(name).and_then(Weak::upgrade) {
            return g;
        }
        let g = Arc::new(Group {
            name: name.to_owned(),
            state: Mutex::new(GroupState::new(ThrottleConfig::default(), now)),
        });
        groups.insert(name.to_owned(), Arc::downgrade(&g));
        g
    }

    /// The names of the groups that have disks, sorted.
    pub fn names(&self) -> Vec<String> {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = groups
            .iter()
            .filter(|(_, g)| g.strong_count() > 0)
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }
}

/// A request must wait: [`ThrottleQueue::timer`] fires when to ask again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled;

/// A disk's limits as queries show them: its group's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleLimits {
    /// The group's limits.
    pub config: ThrottleConfig,
    /// The group's name.
    pub group: String,
}

/// A backend's group (none without limits) and its queues, each a member of the group's
/// schedule.
#[derive(Debug, Default)]
struct Membership {
    group: Option<Arc<Group>>,
    /// Each queue's member id and timer.
    queues: Vec<(MemberId, Arc<ThrottleTimer>)>,
}

/// What a backend's [`Throttle`] and its [`ThrottleQueue`]s share.
#[derive(Debug, Default)]
struct Shared {
    /// In a group: requests go through it. A load on every request when not.
    active: AtomicBool,
    membership: Mutex<Membership>,
}

impl Shared {
    fn membership(&self) -> MutexGuard<'_, Membership> {
        self.membership.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The I/O limits of one backend: its membership of a throttle group, for all its queues.
/// Each I/O thread of its device takes a [`ThrottleQueue`] and asks it before it starts a
/// request.
#[derive(Debug, Default)]
pub struct Throttle {
    shared: Arc<Shared>,
}

/// Member ids, unique in the process.
static NEXT_MEMBER: AtomicU64 = AtomicU64::new(1);

impl Throttle {
    /// A throttle without limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// A place in the backend's group for one I/O thread (one per queue of a device), with
    /// the timer that thread waits on. Dropping it gives its turn up.
    ///
    /// # Errors
    /// The timerfd could not be created.
    pub fn queue(&self) -> io::Result<ThrottleQueue> {
        let queue = ThrottleQueue {
            shared: self.shared.clone(),
            id: NEXT_MEMBER.fetch_add(1, Ordering::Relaxed),
            timer: Arc::new(ThrottleTimer::new()?),
        };
        let mut m = self.shared.membership();
        m.queues.push((queue.id, queue.timer.clone()));
        if let Some(g) = &m.group {
            g.state().add(queue.id, queue.timer.clone());
        }
        Ok(queue)
    }

    /// Sets the limits as QEMU's `block_set_io_throttle` and `-drive throttling.*` do.
    /// With some limit set, a backend not in a group joins `group`, or `default_group` (the
    /// name it was addressed by) when `group` is `None`; one in a group moves only when
    /// `group` names another. The limits then become the whole group's, with empty buckets.
    /// Without any limit the backend leaves its group. A request that was waiting is asked
    /// for again at once (its queue's timer fires).
    ///
    /// # Errors
    /// [`ThrottleConfig::validate`]'s; nothing changes then.
    pub fn set_limits(
        &self,
        groups: &ThrottleGroups,
        config: ThrottleConfig,
        group: Option<&str>,
        default_group: &str,
    ) -> Result<(), ThrottleConfigError> {
        config.validate()?;
        let now = Instant::now();
        let mut m = self.shared.membership();
        if !config.is_enabled() {
            if let Some(old) = m.group.take() {
                self.shared.active.store(false, Ordering::Release);
                leave(&old, &m.queues, now);
            }
            return Ok(());
        }
        let target = match (&m.group, group) {
            (Some(g), Some(name)) if g.name != name => Some(name),
            (Some(_), _) => None,
            (None, name) => Some(name.unwrap_or(default_group)),
        };
        if let Some(name) = target {
            if let Some(old) = m.group.take() {
                leave(&old, &m.queues, now);
            }
            let new = groups.get(name, now);
            {
                let mut state = new.state();
                for (id, timer) in &m.queues {
                    state.add(*id, timer.clone());
                }
            }
            m.group = Some(new);
        }
        if let Some(g) = &m.group {
            let mut state = g.state();
            state.configure(config, now);
            ring(&mut state);
        }
        self.shared.active.store(true, Ordering::Release);
        Ok(())
    }

    /// The limits in force (the group's) and the group's name; `None` without limits.
    pub fn limits(&self) -> Option<ThrottleLimits> {
        let group = self.shared.membership().group.clone()?;
        let config = *group.state().buckets.config();
        Some(ThrottleLimits {
            config,
            group: group.name.clone(),
        })
    }
}

/// Takes `queues` out of `group`; a request one of them kept is asked for again at once.
fn leave(group: &Group, queues: &[(MemberId, Arc<ThrottleTimer>)], now: Instant) {
    let mut state = group.state();
    for (id, timer) in queues {
        if state.remove(*id, now) {
            timer.arm_at(now);
        }
    }
    ring(&mut state);
}

/// One I/O thread's place in its backend's throttle group ([`Throttle::queue`]).
#[derive(Debug)]
pub struct ThrottleQueue {
    shared: Arc<Shared>,
    id: MemberId,
    timer: Arc<ThrottleTimer>,
}

impl ThrottleQueue {
    /// The timer the thread waits on while a request is throttled.
    pub fn timer(&self) -> &ThrottleTimer {
        &self.timer
    }

    /// Asks to start a request of `kind` over `bytes` at `now`. `Ok`: start it (it is
    /// accounted). [`Throttled`]: keep it (first in line) and ask again, for the same request,
    /// when [`ThrottleQueue::timer`] fires; one queue's requests are served in the order it
    /// asks. Flushes, discards and requests of a backend without limits always start.
    ///
    /// # Errors
    /// [`Throttled`]: the request must wait.
    pub fn try_start(&self, kind: IoKind, bytes: u64, now: Instant) -> Result<(), Throttled> {
        let Some(dir) = Direction::of(kind) else {
            return Ok(());
        };
        if !self.shared.active.load(Ordering::Acquire) {
            return Ok(());
        }
        loop {
            let Some(group) = self.shared.membership().group.clone() else {
                return Ok(());
            };
            let mut state = group.state();
            let attempt = state.try_start(self.id, dir, bytes, now);
            ring(&mut state);
            match attempt {
                Attempt::Go => return Ok(()),
                Attempt::Wait => return Err(Throttled),
                // Moved to another group (or out of any) meanwhile: ask that one.
                Attempt::Gone => continue,
            }
        }
    }

    /// Forgets the request the thread was told to keep (it drops it: the device is broken),
    /// passing the queue's turn in its group on.
    pub fn cancel(&self) {
        let group = self.shared.membership().group.clone();
        if let Some(group) = group {
            let mut state = group.state();
            state.cancel(self.id, Instant::now());
            ring(&mut state);
        }
    }
}

impl Drop for ThrottleQueue {
    fn drop(&mut self) {
        let mut m = self.shared.membership();
        m.queues.retain(|(id, _)| *id != self.id);
        if let Some(group) = &m.group {
            let mut state = group.state();
            state.remove(self.id, Instant::now());
            ring(&mut state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn cfg(b: Bucket, avg: u64, max: u64, max_length: u64) -> ThrottleConfig {
        let mut c = ThrottleConfig::default();
        *c.limit_mut(b) = Limit {
            avg,
            max,
            max_length,
        };
        c
    }

    fn err(c: &ThrottleConfig) -> String {
        c.validate().unwrap_err().to_string()
    }

    #[test]
    fn config_checks_have_qemus_order_and_texts() {
        // Each text as QEMU 7.2 answers block_set_io_throttle with these values.
        assert!(ThrottleConfig::default().validate().is_ok());
        assert!(!ThrottleConfig::default().is_enabled());
        let mut c = cfg(Bucket::BpsTotal, 100, 0, 1);
        c.limit_mut(Bucket::BpsRead).avg = 10;
        assert_eq!(
            err(&c),
            "bps/iops/max total values and read/write values cannot be used at the same time"
        );
        // Checked before the range: a huge total with a read limit is a conflict first.
        c.limit_mut(Bucket::BpsTotal).avg = u64::MAX;
        assert_eq!(c.validate(), Err(ThrottleConfigError::TotalWithReadWrite));
        let mut c = cfg(Bucket::IopsTotal, 0, 5, 1);
        c.limit_mut(Bucket::IopsWrite).max = 5;
        assert_eq!(c.validate(), Err(ThrottleConfigError::TotalWithReadWrite));
        // Read and write limits together are fine.
        let mut c = cfg(Bucket::BpsRead, 100, 0, 1);
        c.limit_mut(Bucket::BpsWrite).avg = 50;
        assert!(c.validate().is_ok());
        assert!(c.is_enabled());

        let mut c = cfg(Bucket::BpsTotal, 100, 0, 1);
        c.iops_size = 4096;
        assert_eq!(err(&c), "iops size requires an iops value to be set");
        let mut c = cfg(Bucket::IopsRead, 100, 0, 1);
        c.iops_size = 4096;
        assert!(c.validate().is_ok());
        // QEMU takes any iops_size once an iops limit is set (a QMP -1 is u64::MAX).
        c.iops_size = u64::MAX;
        assert!(c.validate().is_ok());

        let range = "bps/iops/max values must be within [0, 1000000000000000]";
        assert!(cfg(Bucket::BpsTotal, THROTTLE_VALUE_MAX, 0, 1)
            .validate()
            .is_ok());
        assert_eq!(
            err(&cfg(Bucket::BpsTotal, THROTTLE_VALUE_MAX + 1, 0, 1)),
            range
        );
        assert_eq!(err(&cfg(Bucket::IopsWrite, 1, u64::MAX, 1)), range);
        assert_eq!(
            err(&cfg(Bucket::BpsRead, 100, 200, 0)),
            "the burst length cannot be 0"
        );
        assert_eq!(
            err(&cfg(Bucket::BpsRead, 100, 0, 2)),
            "burst length set without burst rate"
        );
        assert_eq!(
            err(&cfg(Bucket::BpsRead, 100, 200, u64::MAX)),
            "burst length too high for this burst rate"
        );
        // max * length may reach THROTTLE_VALUE_MAX, not pass it.
        assert!(cfg(Bucket::BpsRead, 100, 200, THROTTLE_VALUE_MAX / 200)
            .validate()
            .is_ok());
        assert_eq!(
            cfg(Bucket::BpsRead, 100, 200, THROTTLE_VALUE_MAX / 200 + 1).validate(),
            Err(ThrottleConfigError::BurstLengthTooHigh)
        );
        assert_eq!(
            err(&cfg(Bucket::BpsTotal, 0, 100, 1)),
            "bps_max/iops_max require corresponding bps/iops values"
        );
        assert_eq!(
            err(&cfg(Bucket::BpsTotal, 100, 10, 1)),
            "bps_max/iops_max cannot be lower than bps/iops"
        );
        // Bucket order: an error in bps-total is found before one in iops-write.
        let mut c = cfg(Bucket::BpsTotal, 100, 10, 1);
        c.limit_mut(Bucket::IopsWrite).avg = u64::MAX;
        assert_eq!(c.validate(), Err(ThrottleConfigError::BurstBelowRate));
    }

    #[test]
    fn directions() {
        assert_eq!(Direction::of(IoKind::Read), Some(Direction::Read));
        assert_eq!(Direction::of(IoKind::Write), Some(Direction::Write));
        assert_eq!(Direction::of(IoKind::WriteZeroes), Some(Direction::Write));
        assert_eq!(Direction::of(IoKind::Flush), None);
        assert_eq!(Direction::of(IoKind::Discard), None);
    }

    /// Starts requests of `bytes` back to back on `b` from `t0`, each as soon as the buckets
    /// allow (sleeping exactly the wait they ask for); returns the start times relative to
    /// `t0`.
    fn run(
        b: &mut LeakyBuckets,
        t0: Instant,
        dir: Direction,
        bytes: u64,
        n: usize,
    ) -> Vec<Duration> {
        let mut now = t0;
        let mut starts = Vec::new();
        for _ in 0..n {
            loop {
                b.leak(now);
                let w = b.wait(dir);
                if w.is_zero() {
                    break;
                }
                now += w;
            }
            b.account(dir, bytes);
            starts.push(now - t0);
        }
        starts
    }

    #[test]
    fn iops_without_burst_allow_a_tenth_of_a_second_then_the_rate() {
        let t0 = Instant::now();
        let mut b = LeakyBuckets::new(cfg(Bucket::IopsTotal, 100, 0, 1), t0);
        let starts = run(&mut b, t0, Direction::Read, 4096, 211);
        // The bucket holds 10 operations: 11 pass at once (the one that fills it passes).
        assert!(starts[..11].iter().all(|s| s.is_zero()), "{starts:?}");
        assert!(starts[11] > Duration::ZERO);
        // Then one every 10 ms: 200 more take 2 s.
        let span = starts[210] - starts[10];
        assert!(span >= 2000 * MS - MS && span <= 2000 * MS + MS, "{span:?}");
        // Writes count in the total too.
        assert!(!b.wait(Direction::Write).is_zero());
    }

    #[test]
    fn bps_waits_for_the_excess_to_leak() {
        let t0 = Instant::now();
        // 1 MB/s: the bucket holds 100 kB.
        let mut b = LeakyBuckets::new(cfg(Bucket::BpsWrite, 1_000_000, 0, 1), t0);
        b.account(Direction::Write, 1_000_000);
        // 900 kB beyond the bucket: 0.9 s.
        assert_eq!(b.wait(Direction::Write), 900 * MS);
        // Reads are not limited by a write limit.
        assert!(b.wait(Direction::Read).is_zero());
        b.leak(t0 + 450 * MS);
        let w = b.wait(Direction::Write);
        assert!(w.abs_diff(450 * MS) < Duration::from_micros(1), "{w:?}");
        b.leak(t0 + 900 * MS);
        assert!(b.wait(Direction::Write).is_zero());
        // Ten seconds of idling do not store more than the bucket.
        b.leak(t0 + 10_900 * MS);
        let starts = run(&mut b, t0 + 10_900 * MS, Direction::Write, 50_000, 4);
        assert_eq!(&starts[..3], &[Duration::ZERO; 3]);
        assert_eq!(starts[3], 50 * MS);
    }

    #[test]
    fn bursts_run_at_max_for_their_length_then_at_avg() {
        let t0 = Instant::now();
        // 10 IOPS, bursts of 100 IOPS for 2 s.
        let mut b = LeakyBuckets::new(cfg(Bucket::IopsRead, 10, 100, 2), t0);
        let starts = run(&mut b, t0, Direction::Read, 512, 400);
        // The burst: 11 at once (a tenth of a second of the burst rate), then 100 per second.
        assert!(starts[..11].iter().all(|s| s.is_zero()));
        let at = |n: usize| starts[n].as_secs_f64();
        assert!((at(110) - 1.0).abs() < 0.002, "{}", at(110));
        // The bucket (200 operations, leaking 10 a second) fills after about 2.2 s of burst,
        // then requests go at 10 per second.
        let end = (1..starts.len())
            .find(|&i| (starts[i] - starts[i - 1]) > 50 * MS)
            .unwrap();
        assert!((215..=225).contains(&end), "burst ended at request {end}");
        let after = at(end + 100) - at(end);
        assert!((after - 10.0).abs() < 0.01, "{after}");
    }

    #[test]
    fn iops_size_counts_large_requests_as_several() {
        let t0 = Instant::now();
        let mut c = cfg(Bucket::IopsTotal, 100, 0, 1);
        c.iops_size = 4096;
        let mut b = LeakyBuckets::new(c, t0);
        // 64 KiB is 16 operations: 6 beyond the bucket's 10.
        b.account(Direction::Write, 65536);
        assert_eq!(b.wait(Direction::Read), 60 * MS);
        // Smaller requests are one operation.
        let mut b = LeakyBuckets::new(c, t0);
        for _ in 0..11 {
            b.account(Direction::Read, 512);
        }
        assert_eq!(b.wait(Direction::Read), 10 * MS);
    }

    /// A group schedule driven by hand: members 1, 2, 3.
    fn group(c: ThrottleConfig, t0: Instant) -> GroupState<()> {
        let mut g = GroupState::new(c, t0);
        for id in 1..=3 {
            g.add(id, ());
        }
        g
    }

    fn alarms(g: &mut GroupState<()>) -> Vec<(MemberId, Instant)> {
        std::mem::take(&mut g.alarms)
    }

    #[test]
    fn a_group_shares_its_buckets_and_serves_members_round_robin() {
        let t0 = Instant::now();
        let r = Direction::Read;
        // 10 IOPS: one operation beyond the bucket's one waits 100 ms.
        let mut g = group(cfg(Bucket::IopsTotal, 10, 0, 1), t0);
        assert_eq!(g.try_start(1, r, 512, t0), Attempt::Go);
        assert_eq!(g.try_start(2, r, 512, t0), Attempt::Go);
        assert!(alarms(&mut g).is_empty());
        // The bucket is full: member 3 waits and its timer is armed for when it has room.
        assert_eq!(g.try_start(3, r, 512, t0), Attempt::Wait);
        assert_eq!(alarms(&mut g), [(3, t0 + 100 * MS)]);
        // While the timer is armed everyone else waits, without another timer.
        assert_eq!(g.try_start(1, r, 512, t0 + 10 * MS), Attempt::Wait);
        assert_eq!(g.try_start(2, r, 512, t0 + 20 * MS), Attempt::Wait);
        assert!(alarms(&mut g).is_empty());
        // Asking again early changes nothing.
        assert_eq!(g.try_start(1, r, 512, t0 + 30 * MS), Attempt::Wait);
        // Member 3's timer fires: it goes and the turn passes to the next member after it
        // with a request waiting (1), when the bucket allows.
        let t1 = t0 + 100 * MS;
        assert_eq!(g.try_start(3, r, 512, t1), Attempt::Go);
        assert_eq!(alarms(&mut g), [(1, t1 + 100 * MS)]);
        // 3 asks again: it waits behind 1 and 2.
        assert_eq!(g.try_start(3, r, 512, t1), Attempt::Wait);
        let t2 = t1 + 100 * MS;
        assert_eq!(g.try_start(1, r, 512, t2), Attempt::Go);
        assert_eq!(alarms(&mut g), [(2, t2 + 100 * MS)]);
        let t3 = t2 + 100 * MS;
        assert_eq!(g.try_start(2, r, 512, t3), Attempt::Go);
        assert_eq!(alarms(&mut g), [(3, t3 + 100 * MS)]);
        let t4 = t3 + 100 * MS;
        assert_eq!(g.try_start(3, r, 512, t4), Attempt::Go);
        // Nobody waits: no timer, and the next request waits for the bucket again.
        assert!(alarms(&mut g).is_empty());
        assert_eq!(g.timer, [None, None]);
        assert_eq!(g.try_start(2, r, 512, t4), Attempt::Wait);
    }

    #[test]
    fn the_turn_goes_at_once_when_the_bucket_has_room() {
        let t0 = Instant::now();
        let r = Direction::Read;
        let mut g = group(cfg(Bucket::BpsTotal, 1000, 0, 1), t0);
        assert_eq!(g.try_start(1, r, 1100, t0), Attempt::Go);
        assert_eq!(g.try_start(2, r, 10, t0), Attempt::Wait);
        assert_eq!(g.try_start(3, r, 10, t0), Attempt::Wait);
        // 1000 bytes over a 100-byte bucket: 1 s.
        assert_eq!(alarms(&mut g), [(2, t0 + 1000 * MS)]);
        // Member 2 takes its turn late: meanwhile the bucket emptied, so member 3 is woken at
        // once.
        let t1 = t0 + 1500 * MS;
        assert_eq!(g.try_start(2, r, 10, t1), Attempt::Go);
        assert_eq!(alarms(&mut g), [(3, t1)]);
        assert_eq!(g.try_start(3, r, 10, t1), Attempt::Go);
    }

    #[test]
    fn reads_and_writes_have_their_own_turns() {
        let t0 = Instant::now();
        let mut c = cfg(Bucket::IopsRead, 10, 0, 1);
        c.limit_mut(Bucket::IopsWrite).avg = 10;
        let mut g = group(c, t0);
        let (r, w) = (Direction::Read, Direction::Write);
        for _ in 0..2 {
            assert_eq!(g.try_start(1, r, 512, t0), Attempt::Go);
        }
        assert_eq!(g.try_start(1, r, 512, t0), Attempt::Wait);
        // A write of another member is not held by the read timer.
        assert_eq!(g.try_start(2, w, 512, t0), Attempt::Go);
        assert_eq!(alarms(&mut g), [(1, t0 + 100 * MS)]);
    }

    #[test]
    fn cancelling_or_leaving_passes_the_turn_on() {
        let t0 = Instant::now();
        let r = Direction::Read;
        let mut g = group(cfg(Bucket::IopsTotal, 10, 0, 1), t0);
        for id in [1, 1] {
            assert_eq!(g.try_start(id, r, 512, t0), Attempt::Go);
        }
        assert_eq!(g.try_start(1, r, 512, t0), Attempt::Wait);
        assert_eq!(g.try_start(2, r, 512, t0), Attempt::Wait);
        assert_eq!(alarms(&mut g), [(1, t0 + 100 * MS)]);
        // Member 1's device is reset: its turn goes to 2, when the bucket allows.
        let t1 = t0 + 40 * MS;
        assert!(g.cancel(1, t1));
        assert_eq!(alarms(&mut g), [(2, t0 + 100 * MS)]);
        assert!(!g.cancel(1, t1));
        // Member 2 leaves while waiting: the group has no timer left for anyone.
        assert!(g.remove(2, t1));
        assert!(alarms(&mut g).is_empty());
        assert_eq!(g.timer, [None, None]);
        assert_eq!(g.try_start(2, r, 512, t1), Attempt::Gone);
        // 3 finds the bucket still full (its own timer now).
        assert_eq!(g.try_start(3, r, 512, t1), Attempt::Wait);
        assert_eq!(alarms(&mut g), [(3, t0 + 100 * MS)]);
    }

    #[test]
    fn new_limits_empty_the_buckets_and_release_the_turn() {
        let t0 = Instant::now();
        let r = Direction::Read;
        let mut g = group(cfg(Bucket::IopsTotal, 1, 0, 1), t0);
        assert_eq!(g.try_start(1, r, 512, t0), Attempt::Go);
        assert_eq!(g.try_start(2, r, 512, t0), Attempt::Wait);
        assert_eq!(alarms(&mut g), [(2, t0 + 900 * MS)]);
        let t1 = t0 + 10 * MS;
        g.configure(cfg(Bucket::IopsTotal, 1000, 0, 1), t1);
        assert_eq!(alarms(&mut g), [(2, t1)]);
        assert_eq!(g.try_start(2, r, 512, t1), Attempt::Go);
        assert_eq!(g.try_start(3, r, 512, t1), Attempt::Go);
    }

    fn set(
        t: &Throttle,
        groups: &ThrottleGroups,
        c: ThrottleConfig,
        group: Option<&str>,
        name: &str,
    ) {
        t.set_limits(groups, c, group, name).unwrap();
    }

    #[test]
    fn throttles_join_move_and_leave_groups_as_qemu_does() {
        let groups = ThrottleGroups::new();
        let (a, b) = (Throttle::new(), Throttle::new());
        assert_eq!(a.limits(), None);
        let c10 = cfg(Bucket::IopsTotal, 10, 0, 1);
        let c99 = cfg(Bucket::BpsTotal, 99, 0, 1);
        // -drive id=d0,throttling.iops-total=10,throttling.group=g and
        // -drive id=d1,throttling.bps-total=99,throttling.group=g: the later limits win.
        set(&a, &groups, c10, Some("g"), "d0");
        set(&b, &groups, c99, Some("g"), "d1");
        for t in [&a, &b] {
            assert_eq!(
                t.limits(),
                Some(ThrottleLimits {
                    config: c99,
                    group: "g".into()
                })
            );
        }
        // Without a group the member stays where it is; with another it moves and takes its
        // limits there.
        set(&a, &groups, c10, None, "d0");
        assert_eq!(b.limits().unwrap().config, c10);
        set(&a, &groups, c99, Some("h"), "d0");
        assert_eq!(a.limits().unwrap().group, "h");
        assert_eq!(
            b.limits().unwrap(),
            ThrottleLimits {
                config: c10,
                group: "g".into()
            }
        );
        assert_eq!(groups.names(), ["g", "h"]);
        // No limits: out of the group, which goes when empty. Back in, the default name.
        set(&b, &groups, ThrottleConfig::default(), Some("x"), "d1");
        assert_eq!(b.limits(), None);
        assert_eq!(groups.names(), ["h"]);
        set(&b, &groups, c10, None, "d1");
        assert_eq!(b.limits().unwrap().group, "d1");
        // Invalid limits change nothing.
        let bad = cfg(Bucket::BpsTotal, 0, 5, 1);
        assert_eq!(
            b.set_limits(&groups, bad, Some("h"), "d1"),
            Err(ThrottleConfigError::BurstWithoutRate)
        );
        assert_eq!(b.limits().unwrap().group, "d1");
        drop(a);
        assert_eq!(groups.names(), ["d1"]);
    }

    /// Waits (10 s at most, a hang guard) until `timer` fires, as an I/O thread's epoll does.
    fn wait_for(timer: &ThrottleTimer) {
        let mut pfd = libc::pollfd {
            fd: timer.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, 10_000) };
        assert_eq!(ready, 1, "timer never fired");
        timer.clear();
    }

    #[test]
    fn a_throttled_request_is_woken_by_its_timer() {
        let groups = ThrottleGroups::new();
        let t = Throttle::new();
        let q = t.queue().unwrap();
        // Unlimited: everything goes, nothing armed.
        assert_eq!(q.try_start(IoKind::Read, 1 << 20, Instant::now()), Ok(()));
        set(&t, &groups, cfg(Bucket::IopsTotal, 20, 0, 1), None, "d0");
        let t0 = Instant::now();
        let mut started = 0;
        while q.try_start(IoKind::Write, 512, t0).is_ok() {
            started += 1;
        }
        // The bucket holds two operations: three pass.
        assert_eq!(started, 3);
        // Flushes and discards are never held.
        assert_eq!(q.try_start(IoKind::Flush, 0, t0), Ok(()));
        assert_eq!(q.try_start(IoKind::Discard, 4096, t0), Ok(()));
        wait_for(q.timer());
        // Clearing again does not block.
        q.timer().clear();
        // One operation beyond a 2-operation bucket at 20 IOPS: at least 50 ms.
        assert!(t0.elapsed() >= 50 * MS);
        assert_eq!(q.try_start(IoKind::Write, 512, Instant::now()), Ok(()));
        // Removing the limits wakes a waiting request at once.
        let t1 = Instant::now();
        while q.try_start(IoKind::Read, 512, t1).is_ok() {}
        q.timer().clear();
        set(&t, &groups, ThrottleConfig::default(), None, "d0");
        wait_for(q.timer());
        assert_eq!(q.try_start(IoKind::Read, 512, Instant::now()), Ok(()));
    }

    #[test]
    fn every_queue_of_a_backend_gets_its_turn() {
        let groups = ThrottleGroups::new();
        let t = Throttle::new();
        let q1 = t.queue().unwrap();
        set(&t, &groups, cfg(Bucket::IopsTotal, 10, 0, 1), None, "d0");
        // A queue made while the backend has limits joins its group.
        let q2 = t.queue().unwrap();
        let t0 = Instant::now();
        while q1.try_start(IoKind::Read, 512, t0).is_ok() {}
        assert!(q2.try_start(IoKind::Read, 512, t0).is_err());
        assert!(!q2.timer().is_armed());
        // q1's turn comes; taking it passes the turn to q2, whose own timer fires.
        wait_for(q1.timer());
        assert_eq!(q1.try_start(IoKind::Read, 512, Instant::now()), Ok(()));
        wait_for(q2.timer());
        assert_eq!(q2.try_start(IoKind::Read, 512, Instant::now()), Ok(()));
        // A dropped queue leaves the group; the backend's limits stay.
        drop(q2);
        assert_eq!(t.limits().unwrap().group, "d0");
    }

    #[test]
    fn a_queue_cancelled_or_dropped_passes_its_turn_on_across_threads() {
        let groups = ThrottleGroups::new();
        let (a, b, c) = (Throttle::new(), Throttle::new(), Throttle::new());
        let limit = cfg(Bucket::IopsTotal, 10, 0, 1);
        for (t, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
            set(t, &groups, limit, Some("g"), name);
        }
        let (qa, qb, qc) = (a.queue().unwrap(), b.queue().unwrap(), c.queue().unwrap());
        let t0 = Instant::now();
        while qa.try_start(IoKind::Read, 512, t0).is_ok() {}
        // b and c wait behind a's armed timer.
        assert!(qb.try_start(IoKind::Read, 512, t0).is_err());
        assert!(qc.try_start(IoKind::Read, 512, t0).is_err());
        assert!(!qb.timer().is_armed() && !qc.timer().is_armed());
        // a's device drops its request (broken): the turn goes to b, from another thread.
        std::thread::spawn(move || qa.cancel()).join().unwrap();
        wait_for(qb.timer());
        assert_eq!(qb.try_start(IoKind::Read, 512, Instant::now()), Ok(()));
        // c is next; b asks again and waits behind it, then b's queue goes away.
        assert!(qb.try_start(IoKind::Read, 512, Instant::now()).is_err());
        wait_for(qc.timer());
        assert_eq!(qc.try_start(IoKind::Read, 512, Instant::now()), Ok(()));
        drop(qb);
        // Nobody is left waiting: c's next request finds no turn held by the gone queue.
        while qc.try_start(IoKind::Read, 512, Instant::now()).is_ok() {}
        wait_for(qc.timer());
        assert_eq!(qc.try_start(IoKind::Read, 512, Instant::now()), Ok(()));
    }
}
