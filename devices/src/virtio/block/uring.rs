// SPDX-License-Identifier: Apache-2.0
//! The io_uring engine of a block I/O thread (`aio=io_uring`).
//!
//! The I/O thread submits the host operations of the requests it dispatches to its own ring
//! (one `io_uring_enter` per dispatch round, for every request of that round) and reaps the
//! completions in batches when the ring's eventfd fires, so that one round of completions
//! becomes one pass over the used ring and at most one interrupt (EVENT_IDX honoured by the
//! worker). It serves requests only while the backend's node chain forwards them unchanged
//! ([`block::Backend::host_file`]): with a fault-injection rule or an acting filter, the
//! request goes to the thread pool instead, so policies, stats and injection behave the same
//! on both engines.
//!
//! Each request runs its backend operations one after the other (a discard or write-zeroes
//! request may hold several ranges), each operation in steps of at most [`CHUNK`] bytes:
//! reads straight into guest memory through the ring's I/O alias of guest RAM
//! (`IORING_OP_READV`; see [`super::alias`]) when the request's buffers are whole 4 KiB
//! pages, else through the request's own bounce buffer (copied to guest memory on this
//! thread, only while the request's ticket is live, as on the thread engine); writes straight
//! from guest memory (`IORING_OP_WRITEV` over the request's buffers; through the bounce
//! buffer only when `O_DIRECT` cannot take the guest's buffers as they are: not 4 KiB
//! aligned, or more than [`IOV_MAX`] pieces); each step resubmitted after a short transfer.
//! Flushes run as `fdatasync`; discards as a hole punch; write-zeroes as a hole punch (when
//! unmapping is allowed), then `FALLOC_FL_ZERO_RANGE`, then plain writes of zeroes, each
//! falling back when the host does not support it.
//!
//! A yanked request keeps its bounce buffer until its last completion arrives; a request still
//! in the kernel when the device goes away leaves its buffer behind (leaked) rather than free
//! memory the kernel may still write. A yanked read never lands in guest memory the guest was
//! told is free again: a bounced one lands in its buffer, and a direct one is cut off guest
//! RAM ([`Ring::cut_off`]) before the device completes it. A yanked write that the kernel
//! still carries out writes what the guest's buffer holds then, to the range of a write the
//! guest saw fail (whose contents are undefined either way).

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use crate::GuestMemoryMmap;
use block::buf::{direct_ok, gather, huge_backed, scatter, window, AlignedBuf, IOV_MAX};
use block::{Admitted, Backend, HostFile, IoKind};
use io_uring::{opcode, types, IoUring};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::alias::{IoAlias, PAGE};
use super::request::{
    complete, io_bufs, mark_read_dirty, status_of, ChainError, Op, Outcome, Parsed, S_OK,
};

/// Largest read or write step, and the bounce buffer's largest size.
pub const CHUNK: usize = 1 << 20;

/// The iovecs of a direct write, pointing into guest memory (which lives as long as the VM,
/// longer than any request).
#[derive(Default)]
struct GuestIov(Vec<libc::iovec>);

// SAFETY: the pointers are addresses of guest memory, valid from any thread for the VM's
// life; the vector is only read by the kernel while the request is on the ring.
unsafe impl Send for GuestIov {}

/// Bounce buffer sizes: a request's buffer is the smallest that holds its first chunk.
const SIZE_CLASSES: [usize; 4] = [4096, 65536, 262_144, CHUNK];
/// Most spare buffers kept per size class beyond the smallest, whose spares are as many as
/// the ring's requests in flight (4 KiB requests at depth 128 would otherwise free and
/// allocate buffers every round). Large buffers take twice their size on huge pages.
const SPARE_PER_CLASS: [usize; 3] = [64, 32, 16];

/// The size class of a buffer for `len` bytes.
fn size_class(len: usize) -> usize {
    SIZE_CLASSES
        .iter()
        .position(|&c| len <= c)
        .unwrap_or(SIZE_CLASSES.len() - 1)
}

/// What a finished request reports: its result, or `None` if a yank abandoned it.
pub(super) type Finished = (u64, Option<Result<Outcome, ChainError>>);

/// One backend operation of a request.
#[derive(Debug, Clone, Copy)]
struct HostOp {
    kind: IoKind,
    offset: u64,
    len: u64,
    /// Write-zeroes may deallocate.
    may_unmap: bool,
}

/// How a write-zeroes operation proceeds: each phase falls back to the next when the host
/// does not support it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZeroPhase {
    Punch,
    ZeroRange,
    Buffers,
}

/// A request on the ring.
struct Job {
    parsed: Arc<Parsed>,
    admitted: Admitted,
    file: HostFile,
    ops: Vec<HostOp>,
    /// The operation in progress.
    op: usize,
    /// When the operation began (for the statistics).
    started: Instant,
    /// Bytes of the operation done.
    pos: u64,
    /// Bytes of the current chunk done (a short transfer resumes there).
    chunk_done: usize,
    /// The current chunk's length.
    chunk: usize,
    phase: ZeroPhase,
    /// The bounce buffer (reads, and writes that cannot go direct).
    buf: Option<AlignedBuf>,
    /// The guest memory of the current direct step (a direct read's: alias addresses).
    iov: GuestIov,
    /// The step on the ring is a direct read (its data goes to guest memory through `iov`).
    direct_read: bool,
    /// A direct read of this request reached guest memory (marked dirty however it ends).
    touched: bool,
    /// Alias ranges a yank cut off under this request, mapped back when the kernel is done.
    cut: Vec<(usize, usize)>,
    /// The bounce buffer holds the current chunk of a write.
    gathered: bool,
    /// Data bytes written to the guest.
    written: u64,
}

impl Job {
    /// Cuts the direct read on the ring off guest RAM through `alias` (no longer a direct
    /// read once cut); `false` if the host refused.
    fn cut_off(&mut self, alias: &mut IoAlias) -> bool {
        let ranges = self.iov.0.iter().map(|v| (v.iov_base as usize, v.iov_len));
        let done = alias.cut(ranges, &mut self.cut).is_ok();
        if done {
            self.direct_read = false;
        }
        done
    }
}

/// The ring of one I/O thread, and the requests on it.
pub(super) struct Ring {
    ring: IoUring,
    event: EventFd,
    /// Guest RAM mapped again for direct reads; `None`: every read bounces.
    alias: Option<IoAlias>,
    jobs: HashMap<u64, Job>,
    /// A zeroed buffer for write-zeroes that falls back to writes.
    zeroes: Option<AlignedBuf>,
    /// Bounce buffers no request uses, by size class ([`size_class`]).
    spare: Vec<Vec<AlignedBuf>>,
    /// Entries pushed since the last submit.
    queued: usize,
    /// The requests the ring was sized for.
    entries: usize,
}

/// What a step asks of the ring next.
enum Next {
    /// An entry to push.
    Submit(io_uring::squeue::Entry),
    /// The request is finished: its status (or park) and data bytes written.
    Done(Result<u8, u64>),
    /// A yank abandoned it.
    Abandoned,
}

impl Ring {
    /// A ring for `entries` requests in flight over guest memory `mem`, its completions
    /// signalled on an eventfd.
    ///
    /// # Errors
    /// The host refuses io_uring or the eventfd.
    pub fn new(entries: u32, mem: &GuestMemoryMmap) -> io::Result<Self> {
        // Completions are posted by task work on this thread. By default the kernel sends an
        // IPI to interrupt the thread for it when it is running; cooperative task running
        // (Linux 5.19+) waits for the thread's next system call or interrupt instead (a
        // sleeping thread is still woken at once, and it always ends a round in a system
        // call: the epoll wait, which the pending work interrupts). On a nested host an IPI
        // is a VM exit: it was a third of the kernel time of depth-128 4 KiB reads.
        let mut plain = IoUring::builder();
        plain.setup_cqsize(entries * 2);
        let ring = match plain.clone().setup_coop_taskrun().build(entries) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => plain.build(entries)?,
            r => r?,
        };
        let event = EventFd::new(EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(event.as_raw_fd())?;
        Ok(Self {
            ring,
            event,
            alias: IoAlias::new(mem),
            jobs: HashMap::new(),
            zeroes: None,
            spare: (0..SIZE_CLASSES.len()).map(|_| Vec::new()).collect(),
            queued: 0,
            entries: entries as usize,
        })
    }

    /// Signalled when completions are posted.
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    /// Starts request `id` on `file`. Returns its result when it finished without the host
    /// (a refusal, a flush with nothing to flush; `Some(None)`: a yank), else `None`: it
    /// completes in [`Ring::reap`].
    pub fn start(
        &mut self,
        id: u64,
        parsed: Arc<Parsed>,
        admitted: Admitted,
        file: HostFile,
        mem: &GuestMemoryMmap,
        backend: &Backend,
    ) -> Option<Option<Result<Outcome, ChainError>>> {
        let ops = host_ops(&parsed.op);
        let mut job = Job {
            parsed,
            admitted,
            file,
            ops,
            op: 0,
            started: Instant::now(),
            pos: 0,
            chunk_done: 0,
            chunk: 0,
            phase: ZeroPhase::Punch,
            buf: None,
            iov: GuestIov::default(),
            direct_read: false,
            touched: false,
            cut: Vec::new(),
            gathered: false,
            written: 0,
        };
        let next = self.begin_op(&mut job, mem, backend);
        match self.advance(id, job, next, mem, backend) {
            Some(done) => Some(Some(done)),
            None if self.jobs.contains_key(&id) => None,
            None => Some(None),
        }
    }

    /// Submits what was pushed since the last call (one syscall for the round).
    pub fn submit(&mut self) {
        if self.queued > 0 {
            // Entries stay queued on a transient failure (EBUSY, EAGAIN, EINTR): the next
            // submit or reap sends them.
            if self.ring.submit().is_ok() {
                self.queued = 0;
            }
        }
    }

    /// Reaps every completion posted and advances their requests; returns the finished ones.
    pub fn reap(&mut self, mem: &GuestMemoryMmap, backend: &Backend) -> Vec<Finished> {
        let _ = self.event.read();
        let mut finished = Vec::new();
        loop {
            let cqes: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            if cqes.is_empty() {
                break;
            }
            for (id, res) in cqes {
                let Some(mut job) = self.jobs.remove(&id) else {
                    continue;
                };
                let next = self.step_done(&mut job, res, mem, backend);
                if let Some(done) = self.advance(id, job, next, mem, backend) {
                    finished.push((id, Some(done)));
                } else if !self.jobs.contains_key(&id) {
                    finished.push((id, None));
                }
            }
        }
        self.submit();
        finished
    }

    /// Waits for the requests still on the ring that a yank did not abandon (as a drain
    /// does: hung storage that is not yanked holds it), dropping their results (the device is
    /// going away); leaks the buffers of the abandoned ones still in the kernel.
    pub fn shut_down(&mut self) {
        self.submit();
        while self
            .jobs
            .values()
            .any(|j| !j.admitted.ticket().is_abandoned())
        {
            let ts = types::Timespec::new().nsec(10_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            let done: Vec<u64> = self.ring.completion().map(|c| c.user_data()).collect();
            for id in done {
                // A request with more steps would need them; the device is gone: stop here.
                self.jobs.remove(&id);
            }
        }
        if !self.jobs.is_empty() {
            if let Some(mut alias) = self.alias.take() {
                // Abandoned reads not cut off yet (a cut the host refused): once more, since
                // the device is going away without waiting for them.
                for job in self.jobs.values_mut().filter(|j| j.direct_read) {
                    let _ = job.cut_off(&mut alias);
                }
                // Reads still in the kernel may write to their alias addresses whenever they
                // return: the addresses stay reserved and inaccessible, rather than be
                // unmapped and reused by a later mapping (the next activation's alias, a
                // buffer). A whole mapping's mprotect splits nothing and charges no memory,
                // so it does not fail but on a kernel bug; nothing could be done about it here.
                let _ = alias.retire();
            }
        }
        for (_, job) in self.jobs.drain() {
            if let Some(buf) = job.buf {
                std::mem::forget(buf);
            }
            std::mem::forget(job.iov);
        }
        if let Some(z) = self.zeroes.take() {
            std::mem::forget(z);
        }
    }

    /// Acts on `next` for request `id`: pushes its entry (keeping the job) or finishes it.
    fn advance(
        &mut self,
        id: u64,
        mut job: Job,
        mut next: Next,
        mem: &GuestMemoryMmap,
        backend: &Backend,
    ) -> Option<Result<Outcome, ChainError>> {
        loop {
            match next {
                Next::Submit(entry) => {
                    let entry = entry.user_data(id);
                    // SAFETY: the entry points at the job's bounce buffer, at the ring's zero
                    // buffer, or at the job's iovecs (of guest memory, which outlives the
                    // ring), all kept alive until its completion is reaped: the job goes into
                    // `self.jobs` right below, and `shut_down` leaks what is still in flight.
                    let pushed = unsafe { self.ring.submission().push(&entry).is_ok() }
                        || (self.ring.submit().is_ok()
                            // SAFETY: as above.
                            && unsafe { self.ring.submission().push(&entry).is_ok() });
                    if !pushed {
                        next =
                            self.fail_op(&mut job, io::Error::other("io_uring is full"), backend);
                        continue;
                    }
                    self.queued += 1;
                    self.jobs.insert(id, job);
                    return None;
                }
                Next::Done(status) => {
                    if job.touched && job.written == 0 {
                        // A failed direct read may have written part of the buffers.
                        mark_read_dirty(mem, &job.parsed);
                    }
                    let result = complete(&job.parsed, mem, status, job.written);
                    self.recycle(job);
                    return Some(result);
                }
                // Its last entry completed (or none was ever submitted): the kernel is done
                // with its buffer. A direct read may have written guest memory first.
                Next::Abandoned => {
                    if job.touched {
                        mark_read_dirty(mem, &job.parsed);
                    }
                    self.recycle(job);
                    return None;
                }
            }
        }
    }

    /// A bounce buffer of at least `len` bytes: a spare one of its size class, or a new one.
    fn take_buf(&mut self, len: usize) -> io::Result<AlignedBuf> {
        let class = size_class(len);
        match self.spare[class].pop() {
            Some(b) => Ok(b),
            None => AlignedBuf::new(SIZE_CLASSES[class]),
        }
    }

    /// Keeps a buffer for later requests (up to the ring's size of the smallest class, up
    /// to [`SPARE_PER_CLASS`] of the others).
    fn put_buf(&mut self, buf: AlignedBuf) {
        let class = size_class(buf.len());
        let most = match class {
            0 => self.entries,
            c => SPARE_PER_CLASS[c - 1],
        };
        if SIZE_CLASSES[class] == buf.len() && self.spare[class].len() < most {
            self.spare[class].push(buf);
        }
    }

    /// Takes back the buffer of a request that is done with the kernel, and maps back
    /// what a yank cut off under it.
    fn recycle(&mut self, mut job: Job) {
        if let Some(b) = job.buf.take() {
            self.put_buf(b);
        }
        if !job.cut.is_empty() {
            if let Some(alias) = self.alias.as_mut() {
                alias.restore(&job.cut);
            }
        }
    }

    /// Cuts request `id`'s direct read off guest RAM, if one is in the kernel (a yank
    /// abandoned it: the device completes it next, and the guest may reuse its buffers);
    /// `false` if the host refused, when the request must not be completed before its
    /// completion arrives.
    pub fn cut_off(&mut self, id: u64, mem: &GuestMemoryMmap) -> bool {
        let (Some(job), Some(alias)) = (self.jobs.get_mut(&id), self.alias.as_mut()) else {
            return true;
        };
        if !job.direct_read {
            return true;
        }
        let done = job.cut_off(alias);
        // The punched pages read as zeroes now.
        mark_read_dirty(mem, &job.parsed);
        done
    }

    /// Begins operation `job.op` (or finishes the request when none is left).
    fn begin_op(&mut self, job: &mut Job, mem: &GuestMemoryMmap, backend: &Backend) -> Next {
        let Some(op) = job.ops.get(job.op).copied() else {
            return Next::Done(Ok(0));
        };
        let range = op_range(&op);
        job.started = match backend.begin_op(job.admitted.ticket(), op.kind, range) {
            Ok(t) => t,
            Err(Some(c)) => return Next::Done(status_of(&c)),
            Err(None) => return Next::Abandoned,
        };
        job.pos = 0;
        job.phase = if op.may_unmap {
            ZeroPhase::Punch
        } else {
            ZeroPhase::ZeroRange
        };
        match op.kind {
            IoKind::Read | IoKind::Write => self.next_chunk(job, mem, backend),
            IoKind::Flush => {
                if job.file.no_flush() {
                    return self.end_op(job, Ok(()), mem, backend);
                }
                Next::Submit(
                    opcode::Fsync::new(types::Fd(job.file.fd()))
                        .flags(types::FsyncFlags::DATASYNC)
                        .build(),
                )
            }
            IoKind::Discard => Next::Submit(fallocate(
                &job.file,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                op.offset,
                op.len,
            )),
            IoKind::WriteZeroes => self.zero_step(job, op, mem, backend),
        }
    }

    /// The entry of the write-zeroes phase `job.phase`.
    fn zero_step(
        &mut self,
        job: &mut Job,
        op: HostOp,
        mem: &GuestMemoryMmap,
        backend: &Backend,
    ) -> Next {
        match job.phase {
            ZeroPhase::Punch => Next::Submit(fallocate(
                &job.file,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                op.offset,
                op.len,
            )),
            ZeroPhase::ZeroRange => Next::Submit(fallocate(
                &job.file,
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                op.offset,
                op.len,
            )),
            ZeroPhase::Buffers => self.next_chunk(job, mem, backend),
        }
    }

    /// Prepares the next chunk of a read, a write or a zero write (resuming a short one).
    fn next_chunk(&mut self, job: &mut Job, mem: &GuestMemoryMmap, backend: &Backend) -> Next {
        let op = job.ops[job.op];
        if job.pos >= op.len && job.chunk_done == 0 {
            return self.end_op(job, Ok(()), mem, backend);
        }
        if job.chunk_done == 0 {
            job.chunk = (op.len - job.pos).min(CHUNK as u64) as usize;
        }
        if op.kind == IoKind::Write {
            if let Some(next) = self.direct_write(job, mem, op) {
                return next;
            }
        }
        if op.kind == IoKind::Read && job.buf.is_none() {
            if let Some(next) = self.direct_read(job, mem, op) {
                return next;
            }
            // The rest of a chunk a short direct read left bounces as a chunk of its own.
            job.pos += job.chunk_done as u64;
            job.chunk -= job.chunk_done;
            job.chunk_done = 0;
        }
        let zero_write = op.kind == IoKind::WriteZeroes;
        if zero_write {
            if self.zeroes.is_none() {
                match AlignedBuf::new(CHUNK) {
                    Ok(b) => self.zeroes = Some(b),
                    Err(e) => return self.fail_op(job, e, backend),
                }
            }
        } else if job.buf.is_none() {
            match self.take_buf(job.chunk) {
                Ok(b) => job.buf = Some(b),
                Err(e) => return self.fail_op(job, e, backend),
            }
        }
        // A write copies its chunk from guest memory before the first submission of it
        // through the buffer.
        if op.kind == IoKind::Write && !job.gathered {
            let (Some(buf), Some(bufs)) = (job.buf.as_mut(), guest_bufs(&job.parsed, mem)) else {
                return self.fail_op(job, io::Error::from_raw_os_error(libc::EFAULT), backend);
            };
            let window = &mut buf.as_mut_slice()[..job.chunk];
            if !job
                .admitted
                .ticket()
                .while_live(|| gather(&bufs, job.pos, window))
            {
                return Next::Abandoned;
            }
            job.gathered = true;
        }
        let base = if zero_write {
            self.zeroes.as_mut().map(AlignedBuf::as_mut_ptr)
        } else {
            job.buf.as_mut().map(AlignedBuf::as_mut_ptr)
        };
        let Some(base) = base else {
            return self.fail_op(job, io::Error::from_raw_os_error(libc::ENOMEM), backend);
        };
        // SAFETY: `chunk_done < chunk <= buffer length`, so the pointer stays in the buffer.
        let ptr = unsafe { base.add(job.chunk_done) };
        let len = (job.chunk - job.chunk_done) as u32;
        let at = op.offset + job.pos + job.chunk_done as u64;
        let fd = types::Fd(job.file.fd());
        Next::Submit(match op.kind {
            IoKind::Read => opcode::Read::new(fd, ptr, len).offset(at).build(),
            _ => opcode::Write::new(fd, ptr.cast_const(), len)
                .offset(at)
                .build(),
        })
    }

    /// The current write step straight from guest memory, unless it must bounce (`None`).
    fn direct_write(&mut self, job: &mut Job, mem: &GuestMemoryMmap, op: HostOp) -> Option<Next> {
        if job.buf.is_some() {
            // This write bounced from its first step: it goes on so.
            return None;
        }
        if job.admitted.ticket().is_abandoned() {
            // A yank: the kernel is not handed guest memory the guest may reuse.
            return Some(Next::Abandoned);
        }
        let bufs = guest_bufs(&job.parsed, mem)?;
        let from = job.pos + job.chunk_done as u64;
        let len = (job.chunk - job.chunk_done) as u64;
        let at = op.offset + from;
        job.iov.0.clear();
        job.iov
            .0
            .extend(window(&bufs, from, len as usize).map(|s| libc::iovec {
                iov_base: s.ptr_guard_mut().as_ptr().cast(),
                iov_len: s.len(),
            }));
        vectored(job, IoKind::Write, at, len as usize)
    }

    /// The current read step straight into guest memory through the alias, unless it must
    /// bounce (`None`): no alias, buffers that are not whole pages (a yank cuts off whole
    /// pages, which must all be the request's), a range cut off by a yank, more than
    /// [`IOV_MAX`] pieces, or what `O_DIRECT` cannot take; and a step as long as a
    /// huge-page bounce buffer when a device transfers the data ([`HostFile::dma`]): it then
    /// fills contiguous memory rather than guest RAM's scattered 4 KiB pages, which on a disk
    /// moved fewer MiB/s than the copy costs (1 MiB reads at depth 4: 675-920 MiB/s direct,
    /// 1190-1451 through the huge buffer).
    fn direct_read(&mut self, job: &mut Job, mem: &GuestMemoryMmap, op: HostOp) -> Option<Next> {
        let alias = self.alias.as_ref()?;
        if job.file.dma() && huge_backed(job.chunk) {
            return None;
        }
        if job.admitted.ticket().is_abandoned() {
            return Some(Next::Abandoned);
        }
        let bufs = guest_bufs(&job.parsed, mem)?;
        let whole_pages = |b: &block::IoBuf<'_>| {
            (b.ptr_guard().as_ptr() as usize).is_multiple_of(PAGE) && b.len().is_multiple_of(PAGE)
        };
        if !bufs.iter().all(whole_pages) {
            return None;
        }
        let from = job.pos + job.chunk_done as u64;
        let len = job.chunk - job.chunk_done;
        let at = op.offset + from;
        job.iov.0.clear();
        for s in window(&bufs, from, len) {
            let a = alias.translate(s.ptr_guard().as_ptr() as usize, s.len())?;
            job.iov.0.push(libc::iovec {
                iov_base: a as *mut libc::c_void,
                iov_len: s.len(),
            });
        }
        let next = vectored(job, IoKind::Read, at, len)?;
        job.direct_read = true;
        job.touched = true;
        Some(next)
    }

    /// A completion `res` of `job`'s current step: what comes next.
    fn step_done(
        &mut self,
        job: &mut Job,
        res: i32,
        mem: &GuestMemoryMmap,
        backend: &Backend,
    ) -> Next {
        let was_direct = std::mem::take(&mut job.direct_read);
        if job.admitted.ticket().is_abandoned() {
            return Next::Abandoned;
        }
        let op = job.ops[job.op];
        let err = (res < 0).then(|| io::Error::from_raw_os_error(-res));
        match op.kind {
            IoKind::Flush => self.end_op(job, err.map_or(Ok(()), Err), mem, backend),
            IoKind::Discard => {
                let r = match err {
                    Some(e) if unsupported(&e) => Ok(()),
                    Some(e) => Err(e),
                    None => Ok(()),
                };
                self.end_op(job, r, mem, backend)
            }
            IoKind::WriteZeroes if job.phase != ZeroPhase::Buffers => match err {
                None => self.end_op(job, Ok(()), mem, backend),
                Some(e) if unsupported(&e) => {
                    job.phase = if job.phase == ZeroPhase::Punch {
                        ZeroPhase::ZeroRange
                    } else {
                        ZeroPhase::Buffers
                    };
                    self.zero_step(job, op, mem, backend)
                }
                Some(e) => self.end_op(job, Err(e), mem, backend),
            },
            _ => {
                if let Some(e) = err {
                    return self.end_op(job, Err(e), mem, backend);
                }
                let n = res as usize;
                if n == 0 && op.kind != IoKind::Read {
                    return self.end_op(
                        job,
                        Err(io::Error::from(io::ErrorKind::WriteZero)),
                        mem,
                        backend,
                    );
                }
                if n == 0 {
                    // End of file (the image shrank under us): the rest reads as zeroes.
                    if let Some(buf) = job.buf.as_mut() {
                        buf.as_mut_slice()[job.chunk_done..job.chunk].fill(0);
                    } else if was_direct {
                        let Some(bufs) = guest_bufs(&job.parsed, mem) else {
                            return self.fail_op(
                                job,
                                io::Error::from_raw_os_error(libc::EFAULT),
                                backend,
                            );
                        };
                        let zeroes = vec![0u8; job.chunk - job.chunk_done];
                        let from = job.pos + job.chunk_done as u64;
                        if !job
                            .admitted
                            .ticket()
                            .while_live(|| scatter(&bufs, from, &zeroes))
                        {
                            return Next::Abandoned;
                        }
                    }
                    job.chunk_done = job.chunk;
                } else {
                    job.chunk_done = (job.chunk_done + n).min(job.chunk);
                }
                if job.chunk_done < job.chunk {
                    return self.next_chunk(job, mem, backend);
                }
                if op.kind == IoKind::Read && !was_direct {
                    let (Some(buf), Some(bufs)) = (job.buf.as_ref(), guest_bufs(&job.parsed, mem))
                    else {
                        return self.fail_op(
                            job,
                            io::Error::from_raw_os_error(libc::EFAULT),
                            backend,
                        );
                    };
                    let window = &buf.as_slice()[..job.chunk];
                    if !job
                        .admitted
                        .ticket()
                        .while_live(|| scatter(&bufs, job.pos, window))
                    {
                        return Next::Abandoned;
                    }
                }
                job.pos += job.chunk as u64;
                job.chunk_done = 0;
                job.gathered = false;
                self.next_chunk(job, mem, backend)
            }
        }
    }

    /// A failure before the host saw the step: the request ends with it.
    fn fail_op(&mut self, job: &mut Job, e: io::Error, backend: &Backend) -> Next {
        let op = job.ops[job.op];
        let ticket = job.admitted.ticket().clone();
        match backend.end_op(&ticket, op.kind, op_range(&op), job.started, Err(e), true) {
            Some(c) => Next::Done(status_of(&c)),
            None => Next::Abandoned,
        }
    }

    /// Ends operation `job.op` with `result`: accounts it, then begins the next one, or
    /// finishes the request (on a failure, or after the last).
    fn end_op(
        &mut self,
        job: &mut Job,
        result: io::Result<()>,
        mem: &GuestMemoryMmap,
        backend: &Backend,
    ) -> Next {
        let op = job.ops[job.op];
        if matches!(
            op.kind,
            IoKind::Flush | IoKind::Discard | IoKind::WriteZeroes
        ) {
            job.file.remeasure();
        }
        let last = job.op + 1 == job.ops.len();
        let ticket = job.admitted.ticket().clone();
        let Some(c) = backend.end_op(&ticket, op.kind, op_range(&op), job.started, result, last)
        else {
            return Next::Abandoned;
        };
        match status_of(&c) {
            Ok(s) if s == S_OK && !last => {
                job.op += 1;
                if let Some(b) = job.buf.take() {
                    self.put_buf(b);
                }
                self.begin_op(job, mem, backend)
            }
            Ok(s) => {
                if s == S_OK && op.kind == IoKind::Read {
                    job.written = op.len;
                }
                Next::Done(Ok(s))
            }
            park => Next::Done(park),
        }
    }
}

/// The entry of a direct read or write step over `job.iov` (`len` bytes at image offset
/// `at`), or `None` when it must bounce: the iovecs do not cover the step, are more than
/// [`IOV_MAX`], or are not aligned as `O_DIRECT` needs (a short transfer resumes where the
/// kernel stopped, which may break that alignment: the rest then bounces).
fn vectored(job: &Job, kind: IoKind, at: u64, len: usize) -> Option<Next> {
    let iov = &job.iov.0;
    let whole = iov.iter().map(|v| v.iov_len).sum::<usize>() == len;
    let fits = || direct_ok(at, iov.iter().map(|v| (v.iov_base as usize, v.iov_len)));
    if !whole || iov.len() > IOV_MAX || (job.file.direct() && !fits()) {
        return None;
    }
    let (fd, ptr, n) = (types::Fd(job.file.fd()), iov.as_ptr(), iov.len() as u32);
    Some(Next::Submit(match kind {
        IoKind::Read => opcode::Readv::new(fd, ptr, n).offset(at).build(),
        _ => opcode::Writev::new(fd, ptr, n).offset(at).build(),
    }))
}

/// The backend operations of a request, in order.
fn host_ops(op: &Op) -> Vec<HostOp> {
    let one = |kind, offset, len| HostOp {
        kind,
        offset,
        len,
        may_unmap: false,
    };
    match op {
        Op::Immediate { .. } => Vec::new(),
        Op::Read { offset, len, .. } => vec![one(IoKind::Read, *offset, *len)],
        Op::Write { offset, len, .. } => vec![one(IoKind::Write, *offset, *len)],
        Op::Flush => vec![one(IoKind::Flush, 0, 0)],
        Op::Discard(r) => r.iter().map(|&(o, l)| one(IoKind::Discard, o, l)).collect(),
        Op::WriteZeroes(r) => r
            .iter()
            .map(|&(offset, len, may_unmap)| HostOp {
                kind: IoKind::WriteZeroes,
                offset,
                len,
                may_unmap,
            })
            .collect(),
    }
}

/// The range the backend validates and accounts for `op`.
fn op_range(op: &HostOp) -> Option<(u64, u64)> {
    (op.kind != IoKind::Flush).then_some((op.offset, op.len))
}

/// The guest buffers of a read or write request.
fn guest_bufs<'m>(parsed: &Parsed, mem: &'m GuestMemoryMmap) -> Option<Vec<block::IoBuf<'m>>> {
    match &parsed.op {
        Op::Read { data, .. } | Op::Write { data, .. } => io_bufs(mem, data),
        _ => None,
    }
}

fn fallocate(file: &HostFile, mode: i32, offset: u64, len: u64) -> io_uring::squeue::Entry {
    opcode::Fallocate::new(types::Fd(file.fd()), len)
        .offset(offset)
        .mode(mode)
        .build()
}

fn unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
    )
}
