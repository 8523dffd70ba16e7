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
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Read sectors.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Write sectors.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Flush the write cache.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Get the device ID string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Discard sectors.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// Write zeroes.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Host or request error.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Unsupported request.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Length of the GET_ID string.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;
/// Most segments in one discard or write-zeroes request.
pub const MAX_DISCARD_SEGMENTS: u32 = 32;
/// Most sectors in one discard or write-zeroes segment.
pub const MAX_DISCARD_SECTORS: u32 = 0x3f_ffff;
/// Unmap flag of a write-zeroes segment.
const WRITE_ZEROES_UNMAP: u32 = 1;

const HEADER_LEN: u64 = 16;
const DISCARD_SEGMENT_LEN: u64 = 16;
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
    /// The backend's policy stopped it: leave it in the ring and retry later.
    Park,
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

/// Reads the bytes of `segs` into a vector (they are small: header, discard segments).
fn read_bytes(mem: &GuestMemoryMmap, segs: &[Segment]) -> Option<Vec<u8>> {
    let mut v = Vec::new();
    for s in segs {
        let start = v.len();
        v.resize(start + usize::try_from(s.len).ok()?, 0);
        mem.read_slice(&mut v[start..], s.addr).ok()?;
    }
    Some(v)
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
    let header = read_bytes(mem, &sub_range(&segs, 0, HEADER_LEN)).ok_or(ChainError::Memory)?;
    let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let req_type = le32(&header[0..4]);
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());

    let data = sub_range(&segs, HEADER_LEN, total - HEADER_LEN - 1);
    let data_len = total - HEADER_LEN - 1;
    let (status, written) = execute(req_type, sector, &data, data_len, mem, backend, cfg);
    let Some(status) = status else {
        return Ok(Outcome::Park);
    };
    mem.write_obj(status, status_addr)
        .map_err(|_| ChainError::Memory)?;
    Ok(Outcome::Done(
        u32::try_from(written + 1).unwrap_or(u32::MAX),
    ))
}

/// Maps a backend completion to a status; `None` parks the request.
fn status_of(c: &Completion) -> Option<u8> {
    match c {
        Completion::Ok | Completion::Ignored(_) => Some(VIRTIO_BLK_S_OK),
        Completion::Invalid(_) | Completion::Failed(_) => Some(VIRTIO_BLK_S_IOERR),
        Completion::Stopped(_) => None,
    }
}

/// Runs a parsed request; returns the status (`None`: park) and the data bytes written to the
/// guest.
fn execute(
    req_type: u32,
    sector: u64,
    data: &[Segment],
    data_len: u64,
    mem: &GuestMemoryMmap,
    backend: &Backend,
    cfg: RequestConfig,
) -> (Option<u8>, u64) {
    let ioerr = |kind: IoKind| {
        backend.account_invalid(kind);
        (Some(VIRTIO_BLK_S_IOERR), 0)
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
            let written = if read && status == Some(VIRTIO_BLK_S_OK) {
                data_len
            } else {
                0
            };
            (status, written)
        }
        VIRTIO_BLK_T_FLUSH => (status_of(&backend.submit(Request::Flush)), 0),
        VIRTIO_BLK_T_GET_ID => {
            if data.iter().any(|s| !s.writable) {
                return (Some(VIRTIO_BLK_S_IOERR), 0);
            }
            let mut id = [0u8; VIRTIO_BLK_ID_BYTES];
            let serial = backend.serial().as_bytes();
            let n = serial.len().min(VIRTIO_BLK_ID_BYTES);
            id[..n].copy_from_slice(&serial[..n]);
            let len = data_len.min(VIRTIO_BLK_ID_BYTES as u64);
            let mut done = 0usize;
            for s in sub_range(data, 0, len) {
                let n = s.len as usize;
                if mem.write_slice(&id[done..done + n], s.addr).is_err() {
                    return (Some(VIRTIO_BLK_S_IOERR), 0);
                }
                done += n;
            }
            (Some(VIRTIO_BLK_S_OK), len)
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
                return (Some(VIRTIO_BLK_S_UNSUPP), 0);
            }
            let Some(raw) = read_bytes(mem, data) else {
                return ioerr(kind);
            };
            // Validate every segment before touching the image.
            let mut ranges = Vec::with_capacity(count as usize);
            for seg in raw.chunks_exact(DISCARD_SEGMENT_LEN as usize) {
                let start = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
                let num = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
                let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
                let allowed = if discard { 0 } else { WRITE_ZEROES_UNMAP };
                if flags & !allowed != 0 {
                    return (Some(VIRTIO_BLK_S_UNSUPP), 0);
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
                    flags & WRITE_ZEROES_UNMAP != 0,
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
                    Some(VIRTIO_BLK_S_OK) => {}
                    other => return (other, 0),
                }
            }
            (Some(VIRTIO_BLK_S_OK), 0)
        }
        _ => (Some(VIRTIO_BLK_S_UNSUPP), 0),
    }
}
