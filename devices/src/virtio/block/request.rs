// SPDX-License-Identifier: Apache-2.0
//! Parsing and executing one virtio-blk request (virtio 1.2, 5.2.6).
//!
//! A request is a descriptor chain holding, in order, a 16-byte header (device-readable), the
//! data, and a one-byte status (device-writable). The device makes no assumption about how
//! those bytes are split across descriptors. A chain whose header or status cannot be found is
//! a driver bug the device cannot answer: the queue is broken and the device asks for a reset.
//! Everything else, however hostile, completes with a status (`IOERR`, `UNSUPP`).

use std::ops::Deref;

use block::{Backend, Completion, IoBuf, IoKind, Request, SECTOR_SIZE};
use virtio_bindings::virtio_blk::{
    virtio_blk_discard_write_zeroes, virtio_blk_outhdr, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

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

#[derive(Debug, Clone, Copy)]
struct Segment {
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
fn io_bufs<'m>(mem: &'m GuestMemoryMmap, segs: &[Segment]) -> Option<Vec<IoBuf<'m>>> {
    let mut bufs = Vec::with_capacity(segs.len());
    for s in segs {
        let len = usize::try_from(s.len).ok()?;
        s.addr.checked_add(s.len)?;
        for slice in GuestMemoryBackend::get_slices(mem, s.addr, len) {
            bufs.push(slice.ok()?);
        }
    }
    Some(bufs)
}

/// Parses and runs the request of `chain`, writes its status and returns the outcome.
///
/// # Errors
/// The chain has no usable header or status (the caller breaks the device).
pub fn handle_chain<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    backend: &Backend,
    cfg: RequestConfig,
) -> Result<Outcome, ChainError>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    let mut segs = Vec::new();
    for d in chain {
        if segs.len() == MAX_CHAIN_DESCRIPTORS {
            return Err(ChainError::TooLong);
        }
        if d.len() > 0 {
            segs.push(Segment {
                addr: d.addr(),
                len: u64::from(d.len()),
                writable: d.is_write_only(),
            });
        }
    }

    // The status byte: the last byte of the last descriptor, which must be device-writable.
    let last = segs.last().copied().ok_or(ChainError::Status)?;
    if !last.writable {
        return Err(ChainError::Status);
    }
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
    let req_type = header.request_type();
    let sector = header.sector();

    let data = sub_range(&segs, HEADER_LEN, total - HEADER_LEN - 1);
    let data_len = total - HEADER_LEN - 1;
    let (status, written) = execute(req_type, sector, &data, data_len, mem, backend, cfg);
    let status = match status {
        Ok(s) => s,
        Err(epoch) => return Ok(Outcome::Park(epoch)),
    };
    mem.write_obj(status, status_addr)
        .map_err(|_| ChainError::Memory)?;
    Ok(Outcome::Done(
        u32::try_from(written + 1).unwrap_or(u32::MAX),
    ))
}

/// A status byte, or `Err(epoch)`: park the request (see [`Outcome::Park`]).
type Status = Result<u8, u64>;

/// Maps a backend completion to a status.
fn status_of(c: &Completion) -> Status {
    match c {
        Completion::Ok | Completion::Ignored(_) => Ok(S_OK),
        Completion::Invalid(_) | Completion::Failed(_) => Ok(S_IOERR),
        Completion::Stopped { epoch, .. } => Err(*epoch),
    }
}

/// Whether `chain` is a FLUSH request, read from its header without consuming it; `false`
/// when the header cannot be read (the request then fails on its own).
pub fn is_flush<M>(chain: &DescriptorChain<M>, mem: &GuestMemoryMmap) -> bool
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let mut segs = Vec::new();
    let mut have = 0u64;
    for d in chain.clone().take(MAX_CHAIN_DESCRIPTORS) {
        if d.is_write_only() {
            break;
        }
        if d.len() > 0 {
            segs.push(Segment {
                addr: d.addr(),
                len: u64::from(d.len()),
                writable: false,
            });
            have += u64::from(d.len());
        }
        if have >= 4 {
            break;
        }
    }
    read_split::<u32>(mem, &sub_range(&segs, 0, 4))
        .is_some_and(|t| u32::from_le(t) == VIRTIO_BLK_T_FLUSH)
}

/// Runs a parsed request; returns the status and the data bytes written to the guest.
fn execute(
    req_type: u32,
    sector: u64,
    data: &[Segment],
    data_len: u64,
    mem: &GuestMemoryMmap,
    backend: &Backend,
    cfg: RequestConfig,
) -> (Status, u64) {
    let ioerr = |kind: IoKind| {
        backend.account_invalid(kind);
        (Ok(S_IOERR), 0)
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
            let Some(bufs) = io_bufs(mem, data) else {
                return ioerr(kind);
            };
            let c = backend.submit(if read {
                Request::Read {
                    offset,
                    bufs: &bufs,
                }
            } else {
                Request::Write {
                    offset,
                    bufs: &bufs,
                }
            });
            let status = status_of(&c);
            let written = if read && status == Ok(S_OK) {
                data_len
            } else {
                0
            };
            (status, written)
        }
        VIRTIO_BLK_T_FLUSH => (status_of(&backend.submit(Request::Flush)), 0),
        VIRTIO_BLK_T_GET_ID => {
            if data.iter().any(|s| !s.writable) {
                return (Ok(S_IOERR), 0);
            }
            let mut id = [0u8; ID_BYTES];
            let serial = backend.serial().as_bytes();
            let n = serial.len().min(ID_BYTES);
            id[..n].copy_from_slice(&serial[..n]);
            let len = data_len.min(ID_BYTES as u64);
            let mut done = 0usize;
            for s in sub_range(data, 0, len) {
                let n = s.len as usize;
                if mem.write_slice(&id[done..done + n], s.addr).is_err() {
                    return (Ok(S_IOERR), 0);
                }
                done += n;
            }
            (Ok(S_OK), len)
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
                return (Ok(S_UNSUPP), 0);
            }
            // Read every segment, then validate them all before touching the image.
            let Some(segments) = (0..count)
                .map(|i| {
                    let at = sub_range(data, i * DISCARD_SEGMENT_LEN, DISCARD_SEGMENT_LEN);
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
                    return (Ok(S_UNSUPP), 0);
                }
                if num > MAX_DISCARD_SECTORS {
                    return ioerr(kind);
                }
                let Some(offset) = start.checked_mul(SECTOR_SIZE) else {
                    return ioerr(kind);
                };
                ranges.push((
                    offset,
                    u64::from(num) * SECTOR_SIZE,
                    flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
                ));
            }
            for (offset, len, may_unmap) in ranges {
                let req = if discard {
                    Request::Discard { offset, len }
                } else {
                    Request::WriteZeroes {
                        offset,
                        len,
                        may_unmap,
                    }
                };
                match status_of(&backend.submit(req)) {
                    Ok(S_OK) => {}
                    other => return (other, 0),
                }
            }
            (Ok(S_OK), 0)
        }
        _ => (Ok(S_UNSUPP), 0),
    }
}
