// SPDX-License-Identifier: Apache-2.0
//! The source's `migration` thread: passes over guest RAM while the guest runs, then the
//! switch (the main loop stops the guest and hands over the state), to a stream or a
//! snapshot file.

use std::fs::File;
use std::io::{self, BufRead};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use block::Backend;
use devices::GuestMemoryMmap;
use kvm_ioctls::VmFd;
use qapi::types::MigrationStatus;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::postcopy::{take_lines, PageSet, Reply};
use super::stream::{
    data_range, data_ranges, punch_hole, FileLayout, StreamWriter, FILE_HEADER, MAX_DISCARD,
    MAX_RUN, PAGE,
};
use super::uri::{Channel, MigrationUri};
use super::{Link, MigrationError, Request, Resume, Shared};
use crate::memory::{DirtyLog, DirtyPages};

/// Most passes before the guest is stopped whatever the estimate says: past this the guest
/// dirties memory faster than it can be sent, and each further pass only adds traffic.
/// (QEMU would go on until the estimate fits; a manager there raises the downtime limit.)
const MAX_PASSES: u64 = 30;

/// Most pages of one background run in postcopy (a page request waits behind at most
/// one of them).
const POSTCOPY_RUN: u64 = 16;

/// What the thread needs, gathered on the main loop.
pub struct Outgoing {
    /// The `postcopy-ram` capability: `migrate-start-postcopy` may switch.
    pub postcopy_ram: bool,
    /// Where to.
    pub uri: MigrationUri,
    /// The channel, when the main loop opened it (`fd:` descriptors are taken there).
    pub channel: Option<Channel>,
    /// The source's setup record (JSON).
    pub setup: Vec<u8>,
    /// The KVM VM, for the dirty log.
    pub vm: Arc<VmFd>,
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// The disks' backends, drained once the guest stops.
    pub backends: Vec<Arc<Backend>>,
    /// Shared with the main loop.
    pub shared: Arc<Shared>,
    /// To the main loop.
    pub link: Link,
    /// The `exec:` command, waited for at the end.
    pub child: Option<crate::launcher::ExecChild>,
}

/// Where pages go: a stream's records or a snapshot's fixed offsets.
enum Sink {
    Stream(StreamWriter<Box<dyn super::uri::ReadWrite>>, bool),
    File(File, FileLayout),
}

impl Sink {
    fn bytes(&self, file_written: u64) -> u64 {
        match self {
            Sink::Stream(w, _) => w.bytes,
            Sink::File(..) => file_written,
        }
    }
}

/// The counters of one pass.
#[derive(Default)]
struct PassCount {
    normal: u64,
    zero: u64,
    bytes: u64,
}

struct Sender<'a> {
    job: &'a Outgoing,
    sink: Sink,
    /// Bytes written to a file sink.
    file_bytes: u64,
    /// Pages of each region at their offset in the memory file, for a file sink and for
    /// skipping the holes of the first pass: (region start, length, offset in the memfd).
    regions: Vec<(GuestAddress, u64, u64)>,
    /// Rate limit: the current 100 ms window and what it has sent.
    window: Instant,
    window_bytes: u64,
    buf: Vec<u8>,
    /// The stream's socket (reads of the return path).
    raw: RawFd,
    /// Where a pass stopped because postcopy was asked for.
    cut: Option<u64>,
    /// Postcopy sends at full speed (QEMU's `max-postcopy-bandwidth` default).
    unthrottled: bool,
    /// Bytes of the return path not yet a whole line.
    input: Vec<u8>,
    /// Lines read but not yet served (the requests that came with a resume's list).
    backlog: Vec<String>,
}

impl Outgoing {
    /// Runs the migration to its end and reports it to the main loop.
    pub fn run(mut self) {
        let link = self.link.clone();
        let mut result = self.migrate();
        if let Some(mut child) = self.child.take() {
            // Its pipe is closed (the stream is gone): the command ends once it has read all.
            // After a failure or a cancel it is not waited for (it may never read, or never
            // end): dropping it makes the launcher kill it, as QEMU ends its command.
            if result.is_ok() {
                match child.wait() {
                    Ok(status) if status.success() => {}
                    Ok(status) => {
                        result = Err(MigrationError::State(format!(
                            "The migration command failed ({status})"
                        )))
                    }
                    Err(e) => result = Err(MigrationError::Send(e)),
                }
            }
        }
        let cancelled = self.shared.cancel.load(Ordering::Acquire);
        link.send(Request::Finished(match result {
            Ok(()) => Ok(()),
            Err(_) if cancelled => Err(None),
            Err(e) => Err(Some(crate::error::chain(&e))),
        }));
    }

    fn migrate(&mut self) -> Result<(), MigrationError> {
        let mut raw = -1;
        let sink = match &self.uri {
            MigrationUri::File(path) | MigrationUri::FileUffd(path) => {
                let f = File::options()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(path)
                    .map_err(|e| MigrationError::Io("create", path.display().to_string(), e))?;
                let ram: u64 = self.mem.iter().map(|r| r.len()).sum();
                let layout = FileLayout::new(self.setup.len(), ram);
                f.set_len(layout.state_offset)
                    .map_err(|e| MigrationError::Io("size", path.display().to_string(), e))?;
                f.write_all_at(&self.setup, FILE_HEADER as u64)
                    .map_err(MigrationError::Send)?;
                self.shared.set_fd(f.as_raw_fd());
                Sink::File(f, layout)
            }
            _ => {
                let mut channel = match self.channel.take() {
                    Some(c) => c,
                    None => super::uri::connect(&self.uri, &|_| None)?,
                };
                self.child = channel.child.take();
                self.shared.set_fd(channel.raw);
                // A cancel that came while the channel opened found nothing to shut down.
                if self.shared.cancel.load(Ordering::Acquire) {
                    return Err(MigrationError::Cancelled);
                }
                raw = channel.raw;
                let duplex = channel.duplex;
                let mut w = StreamWriter::new(channel.stream).map_err(MigrationError::Send)?;
                w.setup(&self.setup).map_err(MigrationError::Send)?;
                Sink::Stream(w, duplex)
            }
        };
        let regions = self
            .mem
            .iter()
            .map(|r| {
                let off = r.file_offset().map_or(0, |f| f.start());
                (r.start_addr(), r.len(), off)
            })
            .collect();
        let mut s = Sender {
            job: self,
            sink,
            file_bytes: 0,
            regions,
            window: Instant::now(),
            window_bytes: 0,
            buf: Vec::with_capacity(MAX_RUN * PAGE),
            raw,
            cut: None,
            unthrottled: false,
            input: Vec::new(),
            backlog: Vec::new(),
        };
        let result = s.run();
        if let (Err(MigrationError::Send(_)), Sink::Stream(w, true)) = (&result, &mut s.sink) {
            // A destination that refuses says why before it closes: that is the error.
            if let Some(reason) = refusal(w.get_mut(), raw) {
                return Err(MigrationError::Refused(reason));
            }
        }
        result
    }
}

impl Sender<'_> {
    fn cancelled(&self) -> Result<(), MigrationError> {
        if self.job.shared.cancel.load(Ordering::Acquire) {
            Err(MigrationError::Cancelled)
        } else {
            Ok(())
        }
    }

    fn run(&mut self) -> Result<(), MigrationError> {
        let shared = self.job.shared.clone();
        let log = DirtyLog::start(self.job.vm.clone(), self.job.mem.clone())?;
        shared.update(|p| {
            p.setup_ms = Some(p.started.elapsed().as_millis() as i64);
            p.total = self.job.mem.iter().map(|r| r.len()).sum();
            p.remaining = p.total;
        });
        self.job.link.send(Request::Status(MigrationStatus::Active));
        // Pass 1: every page that holds data (the memory file's holes are zeros).
        let mut pass = 1;
        self.job.link.send(Request::Pass(pass));
        let started = Instant::now();
        let count = self.send_all()?;
        self.account(&count, started.elapsed(), true);
        let mut rest = self.cut.take().map(|at| self.data_pages_from(at));
        loop {
            if let Some(rest) = rest.take() {
                return self.postcopy(&log, rest);
            }
            self.cancelled()?;
            let dirty = log.sync()?;
            shared.update(|p| p.dirty_syncs += 1);
            if self.postcopy_wanted() {
                let rest = self.page_set(dirty.pages());
                return self.postcopy(&log, rest);
            }
            let pages = dirty.count();
            let remaining = pages * PAGE as u64;
            let rate = shared.get(|p| p.bandwidth.max(1.0));
            let expected_ms = (remaining as f64 / rate * 1000.0) as u64;
            shared.update(|p| {
                p.remaining = remaining;
                p.expected_downtime_ms = expected_ms as i64;
            });
            let limit = shared.params().downtime_limit;
            if expected_ms <= limit || pass >= MAX_PASSES {
                return self.switch(&log, dirty);
            }
            pass += 1;
            self.job.link.send(Request::Pass(pass));
            let started = Instant::now();
            let count = self.send_pages(&dirty)?;
            self.account(&count, started.elapsed(), true);
            if let Some(at) = self.cut.take() {
                rest = Some(self.page_set(dirty.pages().filter(|p| p.0 >= at)));
            }
        }
    }

    /// Whether to switch to postcopy now: asked for, and the channel has a return path.
    fn postcopy_wanted(&self) -> bool {
        self.job.postcopy_ram
            && matches!(self.sink, Sink::Stream(_, true))
            && self.job.shared.postcopy.load(Ordering::Acquire)
    }

    /// The pages of `pages` as a set.
    fn page_set(&self, pages: impl Iterator<Item = GuestAddress>) -> PageSet {
        let ram: Vec<(u64, u64)> = self.regions.iter().map(|r| (r.0 .0, r.1)).collect();
        let set = PageSet::new(&ram);
        for p in pages {
            set.insert(p.0);
        }
        set
    }

    /// The VMM's own memory file, whose holes are pages never written (a snapshot mapped
    /// privately has the guest's writes outside its file: none then).
    fn memory_file(&self) -> Option<RawFd> {
        self.job
            .mem
            .iter()
            .next()
            .filter(|_| crate::memory::is_own_memory(&self.job.mem))
            .and_then(|r| r.file_offset().map(|f| f.file().as_raw_fd()))
    }

    /// The pages of the memory file's data ranges from `at` on: what the first pass had
    /// still to send when postcopy cut it.
    fn data_pages_from(&self, at: u64) -> PageSet {
        let set = self.page_set(std::iter::empty());
        let fd = self.memory_file();
        for &(start, len, off) in &self.regions {
            let from = at.saturating_sub(start.0).min(len);
            for (data, hole) in data_ranges(fd, off + from, off + len) {
                set.insert_range(start.0 + data - off, (hole - data).div_ceil(PAGE as u64));
            }
        }
        set
    }

    /// The switch to postcopy: the guest stops and its disks drain, the main loop saves the
    /// state and lets go of the images; the pages still to send (`rest`, and what the guest
    /// wrote since) are named to the destination (it drops its copies), the state goes, and
    /// the destination runs. Then those pages stream, each once, the ones it asks for first;
    /// a broken stream pauses until `migrate` with `resume`.
    fn postcopy(&mut self, log: &DirtyLog, rest: PageSet) -> Result<(), MigrationError> {
        let down = Instant::now();
        let state = self.stop_and_save(None)?;
        let last = log.sync()?;
        self.job.shared.update(|p| p.dirty_syncs += 1);
        for p in last.pages() {
            rest.insert(p.0);
        }
        let Sink::Stream(w, _) = &mut self.sink else {
            return Err(MigrationError::State("postcopy needs a stream".into()));
        };
        for (gpa, count) in rest.runs(MAX_DISCARD) {
            w.discard(gpa, count).map_err(MigrationError::Send)?;
        }
        w.postcopy().map_err(MigrationError::Send)?;
        w.state(&state).map_err(MigrationError::Send)?;
        w.flush().map_err(MigrationError::Send)?;
        let remaining = rest.count() * PAGE as u64;
        self.job.shared.update(|p| {
            p.transferred = w.bytes;
            p.remaining = remaining;
        });
        self.job
            .link
            .send(Request::Status(MigrationStatus::PostcopyActive));
        self.unthrottled = true;
        let mut todo = rest;
        let mut ran = None;
        loop {
            let result = self.serve(&todo, &mut ran, down);
            match result {
                Ok(()) => {
                    self.job.shared.update(|p| p.remaining = 0);
                    return Ok(());
                }
                // Refused before it ran: the guest is still here, whole.
                Err(e @ MigrationError::Refused(_)) if ran.is_none() => return Err(e),
                Err(e) if self.job.shared.cancel.load(Ordering::Acquire) => return Err(e),
                Err(e) => {
                    let why = crate::error::chain(&e);
                    todo = self.paused(&why)?;
                    ran.get_or_insert(down.elapsed());
                }
            }
        }
    }

    /// Serves postcopy until the destination has every page: its requests first, the rest
    /// in address order. `ran` is set when the destination says it runs.
    fn serve(
        &mut self,
        todo: &PageSet,
        ran: &mut Option<Duration>,
        down: Instant,
    ) -> Result<(), MigrationError> {
        let mut cursor = 0u64;
        let mut ended = false;
        let mut count = PassCount::default();
        loop {
            self.cancelled()?;
            let wait = if ended { 200 } else { 0 };
            let lines = match std::mem::take(&mut self.backlog) {
                b if b.is_empty() => self.replies(wait)?,
                b => b,
            };
            for line in lines {
                match Reply::parse(&line)? {
                    Reply::Run if ran.is_none() => {
                        let d = down.elapsed();
                        *ran = Some(d);
                        self.job
                            .shared
                            .update(|p| p.downtime_ms = Some(d.as_millis() as i64));
                    }
                    Reply::Err(reason) if ran.is_none() => {
                        return Err(MigrationError::Refused(reason))
                    }
                    Reply::Req(gpa, n) => {
                        if !todo.contains_range(gpa, n) {
                            return Err(super::postcopy::ProtocolError(format!(
                                "a request for pages outside guest RAM ({gpa:#x}, {n})"
                            ))
                            .into());
                        }
                        self.job.shared.update(|p| p.postcopy_requests += 1);
                        self.send_wanted(todo, gpa, n, &mut count)?;
                    }
                    Reply::Ok if ended => return Ok(()),
                    other => {
                        return Err(super::postcopy::ProtocolError(format!(
                            "'{}' now",
                            other.line().trim_end()
                        ))
                        .into())
                    }
                }
            }
            if ended {
                continue;
            }
            match todo.next_from(cursor) {
                Some((i, gpa)) => {
                    let mut n = 0u64;
                    while n < POSTCOPY_RUN && todo.remove(gpa + n * PAGE as u64) {
                        n += 1;
                    }
                    self.send_postcopy_run(gpa, n, &mut count)?;
                    cursor = i + n;
                }
                None => {
                    let Sink::Stream(w, _) = &mut self.sink else {
                        return Ok(());
                    };
                    w.end().map_err(MigrationError::Send)?;
                    ended = true;
                }
            }
        }
    }

    /// Sends the requested pages that are still to send (a page already sent is not sent
    /// again).
    fn send_wanted(
        &mut self,
        todo: &PageSet,
        gpa: u64,
        n: u32,
        count: &mut PassCount,
    ) -> Result<(), MigrationError> {
        let mut run: Option<(u64, u64)> = None;
        for i in 0..u64::from(n) {
            let page = gpa + i * PAGE as u64;
            let take = todo.remove(page);
            match (&mut run, take) {
                (Some((_, len)), true) if *len < MAX_RUN as u64 => *len += 1,
                (_, true) => {
                    if let Some((s, len)) = run.replace((page, 1)) {
                        self.send_postcopy_run(s, len, count)?;
                    }
                }
                (_, false) => {
                    if let Some((s, len)) = run.take() {
                        self.send_postcopy_run(s, len, count)?;
                    }
                }
            }
        }
        if let Some((s, len)) = run {
            self.send_postcopy_run(s, len, count)?;
        }
        Ok(())
    }

    /// Sends `n` pages of postcopy and pushes them out.
    fn send_postcopy_run(
        &mut self,
        gpa: u64,
        n: u64,
        count: &mut PassCount,
    ) -> Result<(), MigrationError> {
        let before = count.bytes;
        self.send_run(GuestAddress(gpa), n, false, count)?;
        let Sink::Stream(w, _) = &mut self.sink else {
            return Ok(());
        };
        w.flush().map_err(MigrationError::Send)?;
        let (sent, bytes) = (count.bytes - before, w.bytes);
        let left = n * PAGE as u64;
        self.job.shared.update(|p| {
            p.postcopy_bytes += sent;
            p.transferred = bytes;
            p.remaining = p.remaining.saturating_sub(left);
            p.normal += sent / PAGE as u64;
            p.duplicate += (left - sent) / PAGE as u64;
        });
        Ok(())
    }

    /// The complete lines the destination sent, waiting up to `wait_ms` for some.
    fn replies(&mut self, wait_ms: i32) -> Result<Vec<String>, MigrationError> {
        let mut pfd = libc::pollfd {
            fd: self.raw,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stream's socket.
        let ready = unsafe { libc::poll(&mut pfd, 1, wait_ms) };
        if ready <= 0 {
            return Ok(Vec::new());
        }
        let mut buf = [0u8; 4096];
        // SAFETY: recv(2) into a local buffer on the stream's socket, without blocking.
        let n = unsafe {
            libc::recv(
                self.raw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n == 0 {
            return Err(MigrationError::Receive(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the destination closed the stream",
            )));
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(Vec::new()),
                _ => Err(MigrationError::Receive(e)),
            };
        }
        self.input.extend_from_slice(&buf[..n as usize]);
        Ok(take_lines(&mut self.input)?)
    }

    /// The stream broke during postcopy: `postcopy-paused` until `migrate` with `resume`
    /// names where the destination listens again; then the pages it still misses (which it
    /// lists) are what is left to send.
    fn paused(&mut self, why: &str) -> Result<PageSet, MigrationError> {
        let shared = self.job.shared.clone();
        let mut why = why.to_owned();
        loop {
            shared.release();
            shared.update(|p| {
                p.error = Some(format!(
                    "Postcopy is paused ({why}): the guest runs on the destination; \
                     continue with migrate-recover there and migrate with resume here"
                ))
            });
            self.job
                .link
                .send(Request::Status(MigrationStatus::PostcopyPaused));
            let Some(Resume::Connect(uri, channel)) = shared.wait_resume() else {
                return Err(MigrationError::Cancelled);
            };
            self.job
                .link
                .send(Request::Status(MigrationStatus::PostcopyRecover));
            match self.reconnect(&uri, channel) {
                Ok(todo) => {
                    shared.update(|p| {
                        p.error = None;
                        p.remaining = todo.count() * PAGE as u64;
                    });
                    self.job
                        .link
                        .send(Request::Status(MigrationStatus::PostcopyActive));
                    return Ok(todo);
                }
                Err(e) if shared.cancel.load(Ordering::Acquire) => return Err(e),
                // Paused again, with why the resume failed.
                Err(e) => why = crate::error::chain(&e),
            }
        }
    }

    /// Connects again and reads what the destination still misses.
    fn reconnect(
        &mut self,
        uri: &MigrationUri,
        channel: Option<Channel>,
    ) -> Result<PageSet, MigrationError> {
        let channel = match channel {
            Some(c) => c,
            None => super::uri::connect(uri, &|_| None)?,
        };
        self.job.shared.set_fd(channel.raw);
        self.raw = channel.raw;
        let w = StreamWriter::resume(channel.stream).map_err(MigrationError::Send)?;
        self.sink = Sink::Stream(w, true);
        let todo = self.page_set(std::iter::empty());
        self.input.clear();
        self.backlog.clear();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            self.cancelled()?;
            let mut lines = self.replies(200)?.into_iter();
            while let Some(line) = lines.next() {
                match Reply::parse(&line)? {
                    Reply::Pending(gpa, n) if todo.contains_range(gpa, n) => {
                        todo.insert_range(gpa, u64::from(n));
                    }
                    // A vCPU's request may come before the list ends: served after it.
                    Reply::Req(..) => self.backlog.push(line),
                    Reply::Ready => {
                        self.backlog.extend(lines);
                        return Ok(todo);
                    }
                    other => {
                        return Err(super::postcopy::ProtocolError(format!(
                            "'{}' while resuming",
                            other.line().trim_end()
                        ))
                        .into())
                    }
                }
            }
        }
        Err(MigrationError::Reply(io::Error::new(
            io::ErrorKind::TimedOut,
            "the destination did not list its missing pages",
        )))
    }

    /// The switch: the guest stops, its disks drain, the main loop saves the state and
    /// lets go of the images; the last dirty pages and the state go; the destination says
    /// whether it took them.
    fn switch(&mut self, log: &DirtyLog, before: DirtyPages) -> Result<(), MigrationError> {
        let down = Instant::now();
        let state = self.stop_and_save(Some(MigrationStatus::Device))?;
        // Everything written after the last sync, the devices' last completions included.
        let mut last = log.sync()?;
        merge(&mut last, &before);
        self.job.shared.update(|p| p.dirty_syncs += 1);
        let started = Instant::now();
        let count = self.send_pages(&last)?;
        self.account(&count, started.elapsed(), false);
        match &mut self.sink {
            Sink::Stream(w, duplex) => {
                w.state(&state).map_err(MigrationError::Send)?;
                w.end().map_err(MigrationError::Send)?;
                self.job.shared.update(|p| p.transferred = w.bytes);
                if *duplex {
                    let reply = read_line(w.get_mut()).map_err(MigrationError::Reply)?;
                    if let Some(reason) = reply.strip_prefix("ERR ") {
                        return Err(MigrationError::Refused(reason.to_owned()));
                    }
                    if reply != "OK" {
                        return Err(MigrationError::Refused(format!(
                            "unexpected answer '{reply}'"
                        )));
                    }
                }
            }
            Sink::File(f, layout) => {
                layout.state_len = state.len() as u64;
                f.write_all_at(&state, layout.state_offset)
                    .map_err(MigrationError::Send)?;
                f.sync_data().map_err(MigrationError::Send)?;
                // The header last: only a complete snapshot has the magic.
                f.write_all_at(&layout.header(), 0)
                    .map_err(MigrationError::Send)?;
                f.sync_data().map_err(MigrationError::Send)?;
                self.file_bytes += (FILE_HEADER + state.len()) as u64;
                let b = self.file_bytes;
                self.job.shared.update(|p| p.transferred = b);
            }
        }
        let downtime = down.elapsed().as_millis() as i64;
        self.job.shared.update(|p| {
            p.downtime_ms = Some(downtime);
            p.remaining = 0;
        });
        Ok(())
    }

    /// The guest stops (then the status is `status`, if any), its disks drain on this
    /// thread, and the main loop saves the state and lets go of the images: the state.
    fn stop_and_save(
        &mut self,
        status: Option<MigrationStatus>,
    ) -> Result<Vec<u8>, MigrationError> {
        let (tx, rx) = channel();
        self.job.link.send(Request::Pause(tx));
        rx.recv().map_err(|_| MigrationError::MainLoop)?;
        if let Some(s) = status {
            self.job.link.send(Request::Status(s));
        }
        for b in &self.job.backends {
            b.drain();
        }
        self.cancelled()?;
        let (tx, rx) = channel();
        self.job.link.send(Request::SaveState(tx));
        rx.recv()
            .map_err(|_| MigrationError::MainLoop)?
            .map_err(MigrationError::State)
    }

    /// Updates the counters after a pass that took `took`.
    fn account(&mut self, c: &PassCount, took: Duration, precopy: bool) {
        let total = self.sink.bytes(self.file_bytes);
        let secs = took.as_secs_f64().max(1e-6);
        self.job.shared.update(|p| {
            p.transferred = total;
            p.normal += c.normal;
            p.duplicate += c.zero;
            if precopy {
                p.precopy_bytes += c.bytes;
            } else {
                p.downtime_bytes += c.bytes;
            }
            if c.bytes > 0 {
                // What the channel took per second in this pass: the estimate of the switch.
                p.bandwidth = c.bytes as f64 / secs;
                p.mbps = p.bandwidth * 8.0 / 1e6;
                p.pages_per_second = (c.normal as f64 / secs) as u64;
            }
            p.dirty_pages_rate = ((c.normal + c.zero) as f64 / secs) as i64;
        });
    }

    /// The first pass: every page in the data ranges of the memory file; pages in its holes
    /// were never written and are zeros on the destination too.
    fn send_all(&mut self) -> Result<PassCount, MigrationError> {
        let mut count = PassCount::default();
        let fd = self.memory_file();
        let regions = self.regions.clone();
        for (start, len, off) in regions {
            let mut pos = 0u64;
            while pos < len {
                self.cancelled()?;
                let (data, hole) = match fd {
                    Some(fd) => data_range(fd, off + pos, off + len),
                    None => (off + pos, off + len),
                };
                let (data, hole) = (data - off, hole - off);
                count.zero += (data - pos) / PAGE as u64;
                let mut addr = data;
                let file_sink = match &self.sink {
                    Sink::File(f, layout) => Some((f.as_raw_fd(), layout.ram_offset)),
                    Sink::Stream(..) => None,
                };
                if let (Some(memfd), Some((snap, ram_offset))) = (fd, file_sink) {
                    // Memory file to snapshot file in the kernel: no copy through this
                    // thread (zero pages inside data ranges are written as they are).
                    let to = ram_offset + off;
                    while addr < hole {
                        self.cancelled()?;
                        let step = (hole - addr).min((MAX_RUN * PAGE) as u64);
                        let done = copy_range(memfd, off + addr, snap, to + addr, step)
                            .map_err(MigrationError::Send)?;
                        count.normal += done / PAGE as u64;
                        count.bytes += done;
                        self.file_bytes += done;
                        addr += done;
                        self.throttle(done);
                    }
                }
                while addr < hole {
                    if self.postcopy_wanted() {
                        self.cut = Some(start.0 + addr);
                        return Ok(count);
                    }
                    let n = ((hole - addr) / PAGE as u64).min(MAX_RUN as u64);
                    self.send_run(start.unchecked_add(addr), n, true, &mut count)?;
                    addr += n * PAGE as u64;
                }
                pos = hole;
            }
        }
        Ok(count)
    }

    /// Sends the marked pages (a later pass, or the last one).
    fn send_pages(&mut self, dirty: &DirtyPages) -> Result<PassCount, MigrationError> {
        let mut count = PassCount::default();
        let mut run: Option<(GuestAddress, u64)> = None;
        for page in dirty.pages() {
            match run {
                Some((start, n))
                    if start.unchecked_add(n * PAGE as u64) == page && n < MAX_RUN as u64 =>
                {
                    run = Some((start, n + 1));
                }
                _ => {
                    if let Some((start, n)) = run.take() {
                        self.cancelled()?;
                        if self.postcopy_wanted() {
                            self.cut = Some(start.0);
                            return Ok(count);
                        }
                        self.send_run(start, n, false, &mut count)?;
                    }
                    run = Some((page, 1));
                }
            }
        }
        if let Some((start, n)) = run {
            self.send_run(start, n, false, &mut count)?;
        }
        Ok(count)
    }

    /// Sends `n` consecutive pages from `start`: the non-zero ones with their bytes, the zero
    /// ones (unless `first`: the destination has zeros there) as markers.
    fn send_run(
        &mut self,
        start: GuestAddress,
        n: u64,
        first: bool,
        count: &mut PassCount,
    ) -> Result<(), MigrationError> {
        let len = (n as usize) * PAGE;
        self.buf.resize(len, 0);
        self.job
            .mem
            .read_slice(&mut self.buf, start)
            .map_err(|_| MigrationError::Memory(start.0))?;
        let mut i = 0usize;
        while i < n as usize {
            let zero = is_zero(&self.buf[i * PAGE..(i + 1) * PAGE]);
            let mut j = i + 1;
            while j < n as usize && is_zero(&self.buf[j * PAGE..(j + 1) * PAGE]) == zero {
                j += 1;
            }
            let gpa = start.0 + (i * PAGE) as u64;
            if zero {
                count.zero += (j - i) as u64;
                if !first {
                    self.write_zeros(gpa, (j - i) as u32)?;
                }
            } else {
                count.normal += (j - i) as u64;
                count.bytes += ((j - i) * PAGE) as u64;
                let data = std::mem::take(&mut self.buf);
                let r = self.write_pages(gpa, &data[i * PAGE..j * PAGE]);
                self.buf = data;
                r?;
            }
            i = j;
        }
        self.throttle(len as u64);
        Ok(())
    }

    /// The memory file offset of `gpa`.
    fn file_offset(&self, gpa: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|(s, l, _)| gpa >= s.0 && gpa < s.0 + l)
            .map(|(s, _, off)| off + (gpa - s.0))
    }

    fn write_pages(&mut self, gpa: u64, data: &[u8]) -> Result<(), MigrationError> {
        let at = self.file_offset(gpa);
        match &mut self.sink {
            Sink::Stream(w, _) => w.pages(gpa, data).map_err(MigrationError::Send),
            Sink::File(f, layout) => {
                let at = at.ok_or(MigrationError::Memory(gpa))?;
                f.write_all_at(data, layout.ram_offset + at)
                    .map_err(MigrationError::Send)?;
                self.file_bytes += data.len() as u64;
                Ok(())
            }
        }
    }

    fn write_zeros(&mut self, gpa: u64, n: u32) -> Result<(), MigrationError> {
        let at = self.file_offset(gpa);
        match &mut self.sink {
            Sink::Stream(w, _) => w.zeros(gpa, n).map_err(MigrationError::Send),
            Sink::File(f, layout) => {
                let at = at.ok_or(MigrationError::Memory(gpa))?;
                zero_range(f, layout.ram_offset + at, u64::from(n) * PAGE as u64)
                    .map_err(MigrationError::Send)
            }
        }
    }

    /// Holds the pace to `max-bandwidth`, in 100 ms windows.
    fn throttle(&mut self, bytes: u64) {
        if self.unthrottled {
            return;
        }
        self.window_bytes += bytes;
        let per_window = (self.job.shared.params().max_bandwidth / 10).max(PAGE as u64);
        if self.window_bytes < per_window {
            return;
        }
        let elapsed = self.window.elapsed();
        if let Some(rest) = Duration::from_millis(100).checked_sub(elapsed) {
            std::thread::sleep(rest);
        }
        self.window = Instant::now();
        self.window_bytes = 0;
    }
}

/// Adds the pages of `other` to `into` (same regions).
fn merge(into: &mut DirtyPages, other: &DirtyPages) {
    for ((_, _, a), (_, _, b)) in into.regions.iter_mut().zip(&other.regions) {
        for (x, y) in a.iter_mut().zip(b) {
            *x |= y;
        }
    }
}

/// Whether a page is all zeros.
fn is_zero(page: &[u8]) -> bool {
    let (pre, words, post) = {
        // SAFETY: u64 has no invalid bit patterns; align_to splits off what is unaligned.
        unsafe { page.align_to::<u64>() }
    };
    pre.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && post.iter().all(|&b| b == 0)
}

/// Copies `len` bytes from `from` at `src` to `to` at `dst` in the kernel: `copy_file_range`,
/// or `sendfile` where the two files are on different filesystems (a memfd and a disk's);
/// returns `len` (or an error).
fn copy_range(from: i32, src: u64, to: i32, dst: u64, len: u64) -> io::Result<u64> {
    let mut src = src as i64;
    let mut dst = dst as i64;
    let mut done = 0u64;
    let mut cross = false;
    while done < len {
        let want = (len - done) as usize;
        let n = if cross {
            // SAFETY: lseek on the snapshot file, whose own offset nothing else uses (its
            // other writes are positional); sendfile from the memfd at `src`, which it
            // advances, to that position.
            unsafe {
                if libc::lseek(to, dst, libc::SEEK_SET) < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::sendfile(to, from, &mut src, want)
            }
        } else {
            // SAFETY: both descriptors are open files of this process; the offsets are ours
            // (the call does not move the files' own offsets when given pointers).
            unsafe { libc::copy_file_range(from, &mut src, to, &mut dst, want, 0) }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if !cross
                && matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                )
            {
                cross = true;
                continue;
            }
            return Err(e);
        }
        if cross {
            dst += n as i64;
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the memory file ended early",
            ));
        }
        done += n as u64;
    }
    Ok(done)
}

/// Makes `len` bytes at `offset` of the snapshot `f` zeros again: a hole, or written zeros
/// on a filesystem without holes.
fn zero_range(f: &File, offset: u64, len: u64) -> io::Result<()> {
    if punch_hole(f.as_raw_fd(), offset, len).is_ok() {
        return Ok(());
    }
    f.write_all_at(&vec![0u8; len as usize], offset)
}

/// The destination's `ERR` line, if it sent one (waited for at most a second).
fn refusal(stream: &mut Box<dyn super::uri::ReadWrite>, raw: i32) -> Option<String> {
    let mut pfd = libc::pollfd {
        fd: raw,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; `raw` is the stream's descriptor, open while `stream` is.
    if unsafe { libc::poll(&mut pfd, 1, 1000) } <= 0 {
        return None;
    }
    let line = read_line(stream).ok()?;
    line.strip_prefix("ERR ").map(str::to_owned)
}

/// One line of the destination's answer.
fn read_line(stream: &mut Box<dyn super::uri::ReadWrite>) -> io::Result<String> {
    let mut r = io::BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the destination closed the stream",
        ));
    }
    Ok(line.trim_end().to_owned())
}
