// SPDX-License-Identifier: Apache-2.0
//! Parsing and executing one virtio-blk request (virtio 1.2, 5.2.6).
//!
//! A request is a descriptor chain holding, in order, a 16-byte header (device-readable), the
//! data, and a one-byte status (device-writable). The device makes no assumption about how
//! those bytes are split across descriptors. A chain whose header or status cannot be found,
//! or that cannot be followed to its end (a loop, a `next` beyond the table, a descriptor or
//! indirect table outside guest memory, a nested or malformed indirect table: see
//! [`ChainError::Truncated`]), is a driver bug the device cannot answer: the queue is broken
//! and the device asks for a reset (`DEVICE_NEEDS_RESET` and a config interrupt), touching
//! neither the image nor guest memory for it.
//! Everything else, however hostile, completes with a status (`IOERR`, `UNSUPP`).

use std::ops::Deref;

use crate::GuestMemoryMmap;
use block::{Backend, Completion, IoBuf, IoKind, Request, Ticket, SECTOR_SIZE};
use virtio_bindings::virtio_blk::{
    virtio_blk_discard_write_zeroes, virtio_blk_outhdr, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::DescriptorChain;
use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

// The bindings declare every value as `u32`; the status is a byte and the ID length a length.
/// The status byte of a successful request.
pub(super) const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
/// The status byte of a failed request.
pub(super) const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
/// The status byte of an unsupported request.
pub(super) const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
/// Length of the GET_ID string.
const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

/// Most segments in one discard or write-zeroes request.
pub const MAX_DISCARD_SEGMENTS: u32 = 32;
/// Most sectors in one discard or write-zeroes segment.
pub const MAX_DISCARD_SECTORS: u32 = 0x3f_ffff;

/// The request header (`struct virtio_blk_outhdr`), as the driver wrote it (little endian).
#[derive(Debug, Default, Clone, Copy)]
#[repr(transparent)]
pub struct RequestHeader(pub virtio_blk_outhdr);

// SAFETY: `virtio_blk_outhdr` is `repr(C)` with two `u32` then a `u64`: no padding, and every
// bit pattern is a valid value.
unsafe impl ByteValued for RequestHeader {}

impl RequestHeader {
    /// The request type (`VIRTIO_BLK_T_*`).
    pub fn request_type(&self) -> u32 {
        u32::from_le(self.0.type_)
    }

    /// The first sector.
    pub fn sector(&self) -> u64 {
        u64::from_le(self.0.sector)
    }
}

/// A discard or write-zeroes segment (`struct virtio_blk_discard_write_zeroes`), little endian.
#[derive(Debug, Default, Clone, Copy)]
#[repr(transparent)]
pub struct DiscardSegment(pub virtio_blk_discard_write_zeroes);

// SAFETY: `virtio_blk_discard_write_zeroes` is `repr(C)` with a `u64` then two `u32`: no
// padding, and every bit pattern is a valid value.
unsafe impl ByteValued for DiscardSegment {}

impl DiscardSegment {
    /// The first sector.
    pub fn sector(&self) -> u64 {
        u64::from_le(self.0.sector)
    }

    /// The number of sectors.
    pub fn num_sectors(&self) -> u32 {
        u32::from_le(self.0.num_sectors)
    }

    /// The flags (`VIRTIO_BLK_WRITE_ZEROES_FLAG_*`).
    pub fn flags(&self) -> u32 {
        u32::from_le(self.0.flags)
    }
}

const HEADER_LEN: u64 = std::mem::size_of::<RequestHeader>() as u64;
const DISCARD_SEGMENT_LEN: u64 = std::mem::size_of::<DiscardSegment>() as u64;
const _: () = assert!(HEADER_LEN == 16 && DISCARD_SEGMENT_LEN == 16);

/// Most descriptors the device accepts in one chain (indirect tables included).
pub const MAX_CHAIN_DESCRIPTORS: usize = 1024;

/// A chain the device cannot complete with a status: the driver broke the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// More descriptors than [`MAX_CHAIN_DESCRIPTORS`].
    #[error("descriptor chain is too long")]
    TooLong,
    /// Fewer than 16 device-readable bytes before the first device-writable one.
    #[error("request header is missing or too short")]
    Header,
    /// The last descriptor is missing, empty or device-readable.
    #[error("request status byte is missing or not device-writable")]
    Status,
    /// The header or the status lies outside guest memory.
    #[error("request header or status is outside guest memory")]
    Memory,
    /// The chain does not end where its descriptors say: it loops, is longer than its
    /// descriptor table, names a descriptor beyond the table or outside guest memory, or has
    /// a malformed or nested indirect table.
    #[error("descriptor chain loops or cannot be followed to its end")]
    Truncated,
}

/// What became of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Completed; the used length is the number of bytes written to the guest.
    Done(u32),
    /// The backend's policy stopped it: leave it in the ring and retry it once the backend's
    /// resume epoch differs from this one.
    Park(u64),
}

/// Features the request parser needs to know about.
#[derive(Debug, Clone, Copy)]
pub struct RequestConfig {
    /// DISCARD is offered.
    pub discard: bool,
    /// WRITE_ZEROES is offered.
    pub write_zeroes: bool,
}

/// A piece of a request's data in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    addr: GuestAddress,
    len: u64,
    writable: bool,
}

/// A byte range of the chain's data part, by segment.
fn sub_range(segs: &[Segment], mut start: u64, mut len: u64) -> Vec<Segment> {
    let mut out = Vec::new();
    for s in segs {
        if len == 0 {
            break;
        }
        if start >= s.len {
            start -= s.len;
            continue;
        }
        let n = (s.len - start).min(len);
        out.push(Segment {
            addr: s.addr.unchecked_add(start),
            len: n,
            writable: s.writable,
        });
        len -= n;
        start = 0;
    }
    out
}

/// Reads an object laid out over `segs` (as [`sub_range`] cuts it); `None` if the segments do
/// not hold exactly its size or lie outside guest memory.
fn read_split<T: ByteValued + Default>(mem: &GuestMemoryMmap, segs: &[Segment]) -> Option<T> {
    let mut obj = T::default();
    let bytes = obj.as_mut_slice();
    let mut done = 0usize;
    for s in segs {
        let len = usize::try_from(s.len).ok()?;
        let end = done.checked_add(len)?;
        mem.read_slice(bytes.get_mut(done..end)?, s.addr).ok()?;
        done = end;
    }
    (done == bytes.len()).then_some(obj)
}

/// Guest memory of `segs` as I/O buffers; `None` if any byte is outside guest memory.
pub(super) fn io_bufs<'m>(mem: &'m GuestMemoryMmap, segs: &[Segment]) -> Option<Vec<IoBuf<'m>>> {
    let mut bufs = Vec::with_capacity(segs.len());
    for s in segs {
        let len = usize::try_from(s.len).ok()?;
        s.addr.checked_add(s.len)?;
        for slice in GuestMemoryBackend::get_slices(mem, s.addr, len) {
            let slice = slice.ok()?;
            // SAFETY: the slice lies in a mapping of `mem`, which outlives `'m`; only the
            // dirty bitmap is left behind (the block layer's buffers carry none): what a read
            // writes there is marked by `complete`, once it is in guest memory.
            bufs.push(unsafe { IoBuf::new(slice.ptr_guard_mut().as_ptr(), slice.len()) });
        }
    }
    Some(bufs)
}

/// A request as the I/O thread parsed it, ready to run on a request thread.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// Where the status byte goes.
    status_addr: GuestAddress,
    /// What to do.
    pub op: Op,
}

/// The host work of a request.
#[derive(Debug, Clone)]
pub enum Op {
    /// Completed while parsing (GET_ID, unsupported or malformed requests): the status and
    /// the data bytes written to the guest.
    Immediate {
        /// The status byte.
        status: u8,
        /// Data bytes written to the guest.
        written: u64,
    },
    /// Read `len` bytes at `offset` into the guest buffers `data`.
    Read {
        /// Start of the range.
        offset: u64,
        /// The guest buffers.
        data: Vec<Segment>,
        /// Total length.
        len: u64,
    },
    /// Write the guest buffers `data` at `offset`.
    Write {
        /// Start of the range.
        offset: u64,
        /// The guest buffers.
        data: Vec<Segment>,
        /// Total length.
        len: u64,
    },
    /// Flush.
    Flush,
    /// Discard `(offset, length)` ranges, in order.
    Discard(Vec<(u64, u64)>),
    /// Zero `(offset, length, may_unmap)` ranges, in order.
    WriteZeroes(Vec<(u64, u64, bool)>),
}

impl Op {
    /// The backend operation, or `None` for an immediate request.
    pub fn kind(&self) -> Option<IoKind> {
        match self {
            Op::Immediate { .. } => None,
            Op::Read { .. } => Some(IoKind::Read),
            Op::Write { .. } => Some(IoKind::Write),
            Op::Flush => Some(IoKind::Flush),
            Op::Discard(_) => Some(IoKind::Discard),
            Op::WriteZeroes(_) => Some(IoKind::WriteZeroes),
        }
    }

    /// The byte ranges the request touches.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        match self {
            Op::Immediate { .. } | Op::Flush => Vec::new(),
            Op::Read { offset, len, .. } | Op::Write { offset, len, .. } => vec![(*offset, *len)],
            Op::Discard(r) => r.clone(),
            Op::WriteZeroes(r) => r.iter().map(|&(o, l, _)| (o, l)).collect(),
        }
    }
}

/// Parses the request of `chain` on the I/O thread. Requests that need no host I/O (GET_ID,
/// unsupported or malformed ones) are completed here: [`Op::Immediate`].
///
/// # Errors
/// The chain has no usable header or status (the caller breaks the device).
pub fn parse<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    backend: &Backend,
    cfg: RequestConfig,
) -> Result<Parsed, ChainError>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    let mut segs = Vec::new();
    let mut last_desc = None;
    for (i, d) in chain.enumerate() {
        if i == MAX_CHAIN_DESCRIPTORS {
            return Err(ChainError::TooLong);
        }
        last_desc = Some(d);
        if d.len() > 0 {
            segs.push(Segment {
                addr: d.addr(),
                len: u64::from(d.len()),
                writable: d.is_write_only(),
            });
        }
    }
    // virtio-queue ends a chain silently where it cannot go on: a loop or a chain longer than
    // its table (after a table's worth of descriptors), a `next` beyond the table, a
    // descriptor outside guest memory, a bad or nested indirect table, more than 4 GiB in
    // all. Its last descriptor then still says "next": what it yielded is not the chain.
    let last_desc = last_desc.ok_or(ChainError::Status)?;
    if last_desc.has_next() {
        return Err(ChainError::Truncated);
    }

    // The status byte: the last byte of the last descriptor, which must be device-writable
    // and not empty (a zero-length last descriptor has no last byte).
    if last_desc.len() == 0 || !last_desc.is_write_only() {
        return Err(ChainError::Status);
    }
    let last = segs.last().copied().ok_or(ChainError::Status)?;
    let status_addr = last
        .addr
        .checked_add(last.len - 1)
        .ok_or(ChainError::Memory)?;
    if !GuestMemoryBackend::check_range(mem, status_addr, 1) {
        return Err(ChainError::Memory);
    }
    let total: u64 = segs.iter().map(|s| s.len).sum();

    // The header: the first 16 bytes, all device-readable.
    let readable_prefix: u64 = segs.iter().take_while(|s| !s.writable).map(|s| s.len).sum();
    if readable_prefix < HEADER_LEN || total < HEADER_LEN + 1 {
        return Err(ChainError::Header);
    }
    let header: RequestHeader =
        read_split(mem, &sub_range(&segs, 0, HEADER_LEN)).ok_or(ChainError::Memory)?;
    let data_len = total - HEADER_LEN - 1;
    let data = sub_range(&segs, HEADER_LEN, data_len);
    let op = classify(header, data, data_len, mem, backend, cfg);
    Ok(Parsed { status_addr, op })
}

/// Runs a parsed request's host work under `ticket` (admitted on the backend for it) and
/// writes its status. Returns `None` when a yank abandoned the ticket: nothing of the request
/// is touched and the I/O thread completes it.
///
/// # Errors
/// The status byte cannot be written (checked while parsing, so not expected).
pub fn run(
    parsed: &Parsed,
    ticket: &Ticket,
    mem: &GuestMemoryMmap,
    backend: &Backend,
) -> Option<Result<Outcome, ChainError>> {
    let (status, written) = match &parsed.op {
        Op::Immediate { status, written } => (Ok(*status), *written),
        Op::Read { offset, data, len } | Op::Write { offset, data, len } => {
            let read = matches!(parsed.op, Op::Read { .. });
            let kind = if read { IoKind::Read } else { IoKind::Write };
            let Some(bufs) = io_bufs(mem, data) else {
                if !ticket.commit() {
                    return None;
                }
                backend.account_invalid(kind);
                return Some(complete(parsed, mem, Ok(S_IOERR), 0));
            };
            let offset = *offset;
            let req = if read {
                Request::Read {
                    offset,
                    bufs: &bufs,
                }
            } else {
                Request::Write {
                    offset,
                    bufs: &bufs,
                }
            };
            let status = status_of(&backend.run(ticket, req, true)?);
            let written = if read && status == Ok(S_OK) { *len } else { 0 };
            (status, written)
        }
        Op::Flush => (status_of(&backend.run(ticket, Request::Flush, true)?), 0),
        Op::Discard(ranges) => {
            let mut status = Ok(S_OK);
            for (i, &(offset, len)) in ranges.iter().enumerate() {
                let last = i + 1 == ranges.len();
                status = status_of(&backend.run(ticket, Request::Discard { offset, len }, last)?);
                if status != Ok(S_OK) {
                    break;
                }
            }
            (status, 0)
        }
        Op::WriteZeroes(ranges) => {
            let mut status = Ok(S_OK);
            for (i, &(offset, len, may_unmap)) in ranges.iter().enumerate() {
                let last = i + 1 == ranges.len();
                let req = Request::WriteZeroes {
                    offset,
                    len,
                    may_unmap,
                };
                status = status_of(&backend.run(ticket, req, last)?);
                if status != Ok(S_OK) {
                    break;
                }
            }
            (status, 0)
        }
    };
    Some(complete(parsed, mem, status, written))
}

/// Writes the status of a finished request (`Ok`), or parks it (`Err(epoch)`).
///
/// # Errors
/// The status byte cannot be written.
pub fn complete(
    parsed: &Parsed,
    mem: &GuestMemoryMmap,
    status: Status,
    written: u64,
) -> Result<Outcome, ChainError> {
    let status = match status {
        Ok(s) => s,
        Err(epoch) => return Ok(Outcome::Park(epoch)),
    };
    if written > 0 {
        mark_read_dirty(mem, parsed);
    }
    mem.write_obj(status, parsed.status_addr)
        .map_err(|_| ChainError::Memory)?;
    Ok(Outcome::Done(
        u32::try_from(written + 1).unwrap_or(u32::MAX),
    ))
}

/// Marks a read request's buffers written in guest memory's dirty bitmap (a read's data
/// reaches the guest through the block layer's buffers or the kernel, neither of which
/// tracks writes; called whatever the outcome where a direct read may have written part).
pub(super) fn mark_read_dirty(mem: &GuestMemoryMmap, parsed: &Parsed) {
    let Op::Read { data, .. } = &parsed.op else {
        return;
    };
    for s in data {
        let Ok(len) = usize::try_from(s.len) else {
            continue;
        };
        for slice in GuestMemoryBackend::get_slices(mem, s.addr, len).flatten() {
            slice.bitmap().mark_dirty(0, slice.len());
        }
    }
}

/// A status byte, or `Err(epoch)`: park the request (see [`Outcome::Park`]).
pub type Status = Result<u8, u64>;

/// Maps a backend completion to a status.
pub fn status_of(c: &Completion) -> Status {
    match c {
        Completion::Ok | Completion::Ignored(_) => Ok(S_OK),
        Completion::Invalid(_) | Completion::Failed(_) => Ok(S_IOERR),
        Completion::Stopped { epoch, .. } => Err(*epoch),
    }
}

/// What a request asks for, with its checks: the work for a request thread, or an
/// immediate status.
fn classify(
    header: RequestHeader,
    data: Vec<Segment>,
    data_len: u64,
    mem: &GuestMemoryMmap,
    backend: &Backend,
    cfg: RequestConfig,
) -> Op {
    let req_type = header.request_type();
    let sector = header.sector();
    let immediate = |status: u8, written: u64| Op::Immediate { status, written };
    let ioerr = |kind: IoKind| {
        backend.account_invalid(kind);
        immediate(S_IOERR, 0)
    };
    match req_type {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let read = req_type == VIRTIO_BLK_T_IN;
            let kind = if read { IoKind::Read } else { IoKind::Write };
            // The guest must give device-writable buffers to read into and readable ones to
            // write from, whole sectors, inside guest memory.
            if data.iter().any(|s| s.writable != read) || !data_len.is_multiple_of(SECTOR_SIZE) {
                return ioerr(kind);
            }
            let Some(offset) = sector.checked_mul(SECTOR_SIZE) else {
                return ioerr(kind);
            };
            if io_bufs(mem, &data).is_none() {
                return ioerr(kind);
            }
            if read {
                Op::Read {
                    offset,
                    data,
                    len: data_len,
                }
            } else {
                Op::Write {
                    offset,
                    data,
                    len: data_len,
                }
            }
        }
        VIRTIO_BLK_T_FLUSH => Op::Flush,
        VIRTIO_BLK_T_GET_ID => {
            if data.iter().any(|s| !s.writable) {
                return immediate(S_IOERR, 0);
            }
            let mut id = [0u8; ID_BYTES];
            let serial = backend.serial().as_bytes();
            let n = serial.len().min(ID_BYTES);
            id[..n].copy_from_slice(&serial[..n]);
            let len = data_len.min(ID_BYTES as u64);
            let mut done = 0usize;
            for s in sub_range(&data, 0, len) {
                let n = s.len as usize;
                if mem.write_slice(&id[done..done + n], s.addr).is_err() {
                    return immediate(S_IOERR, 0);
                }
                done += n;
            }
            immediate(S_OK, len)
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = req_type == VIRTIO_BLK_T_DISCARD;
            let kind = if discard {
                IoKind::Discard
            } else {
                IoKind::WriteZeroes
            };
            let offered = if discard {
                cfg.discard
            } else {
                cfg.write_zeroes
            };
            let count = data_len / DISCARD_SEGMENT_LEN;
            if !offered
                || data_len == 0
                || !data_len.is_multiple_of(DISCARD_SEGMENT_LEN)
                || count > u64::from(MAX_DISCARD_SEGMENTS)
                || data.iter().any(|s| s.writable)
            {
                return immediate(S_UNSUPP, 0);
            }
            // Read every segment, then validate them all before touching the image.
            let Some(segments) = (0..count)
                .map(|i| {
                    let at = sub_range(&data, i * DISCARD_SEGMENT_LEN, DISCARD_SEGMENT_LEN);
                    read_split::<DiscardSegment>(mem, &at)
                })
                .collect::<Option<Vec<_>>>()
            else {
                return ioerr(kind);
            };
            let mut ranges = Vec::with_capacity(segments.len());
            for seg in segments {
                let (start, num, flags) = (seg.sector(), seg.num_sectors(), seg.flags());
                let allowed = if discard {
                    0
                } else {
                    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
                };
                if flags & !allowed != 0 {
                    return immediate(S_UNSUPP, 0);
                }
                if num > MAX_DISCARD_SECTORS {
                    return ioerr(kind);
                }
                let Some(offset) = start.checked_mul(SECTOR_SIZE) else {
                    return ioerr(kind);
                };
                // Every range inside the disk, before the first one runs: the backend checks
                // each range as it comes, which would leave the ones before a bad one done.
                let len = u64::from(num) * SECTOR_SIZE;
                if offset
                    .checked_add(len)
                    .is_none_or(|end| end > backend.size())
                {
                    return ioerr(kind);
                }
                ranges.push((offset, len, flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0));
            }
            if discard {
                Op::Discard(ranges.into_iter().map(|(o, l, _)| (o, l)).collect())
            } else {
                Op::WriteZeroes(ranges)
            }
        }
        _ => immediate(S_UNSUPP, 0),
    }
}
