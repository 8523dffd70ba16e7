// SPDX-License-Identifier: Apache-2.0
//! Host buffers of the block layer: aligned heap buffers (for `O_DIRECT`, and the bounce
//! buffers that keep a yankable request's late result away from guest memory), and copies
//! between one and a list of [`IoBuf`]s.

use std::alloc::{self, Layout};
use std::io;

use crate::node::IoBuf;

/// Memory alignment of `O_DIRECT` buffers (the page size covers every host device).
pub const DIRECT_MEM_ALIGN: usize = 4096;
/// Offset and length alignment of `O_DIRECT` requests (the logical block size of common hosts).
pub const DIRECT_REQ_ALIGN: u64 = 512;
/// Most iovecs passed to one vectored read or write (Linux's `UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// Whether `O_DIRECT` takes a transfer at `offset` over memory `pieces` (address, length)
/// as it is: the offset, every length and the total 512-byte aligned, every address 4 KiB
/// aligned.
pub fn direct_ok(offset: u64, pieces: impl IntoIterator<Item = (usize, usize)>) -> bool {
    let mut total = 0u64;
    for (addr, len) in pieces {
        if !addr.is_multiple_of(DIRECT_MEM_ALIGN) || !(len as u64).is_multiple_of(DIRECT_REQ_ALIGN)
        {
            return false;
        }
        total += len as u64;
    }
    offset.is_multiple_of(DIRECT_REQ_ALIGN) && total.is_multiple_of(DIRECT_REQ_ALIGN)
}

/// The pieces of bytes `skip..skip + len` of the concatenation of `bufs`, in order (fewer
/// bytes when `bufs` end first).
pub fn window<'a, 'b>(
    bufs: &'a [IoBuf<'b>],
    mut skip: u64,
    len: usize,
) -> impl Iterator<Item = IoBuf<'b>> + 'a {
    let mut left = len;
    bufs.iter().filter_map(move |b| {
        let blen = b.len() as u64;
        if left == 0 {
            return None;
        }
        if skip >= blen {
            skip -= blen;
            return None;
        }
        let n = ((blen - skip) as usize).min(left);
        let piece = b.subslice(skip as usize, n).ok();
        left -= n;
        skip = 0;
        piece
    })
}

/// Copies bytes `skip..skip + dst.len()` of the concatenation of `bufs` into `dst`.
pub fn gather(bufs: &[IoBuf<'_>], skip: u64, dst: &mut [u8]) {
    let mut filled = 0;
    for s in window(bufs, skip, dst.len()) {
        s.copy_to(&mut dst[filled..filled + s.len()]);
        filled += s.len();
    }
}

/// Copies `src` into bytes `skip..skip + src.len()` of the concatenation of `bufs`.
pub fn scatter(bufs: &[IoBuf<'_>], skip: u64, src: &[u8]) {
    let mut used = 0;
    for s in window(bufs, skip, src.len()) {
        s.copy_from(&src[used..used + s.len()]);
        used += s.len();
    }
}

/// A zeroed heap buffer aligned for `O_DIRECT`.
pub struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: the buffer is a uniquely owned heap allocation (like a `Box<[u8]>`): nothing else
// points into it, so moving it to another thread is sound.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (at least one), aligned to [`DIRECT_MEM_ALIGN`].
    ///
    /// # Errors
    /// `ENOMEM` when the allocation fails.
    pub fn new(len: usize) -> io::Result<Self> {
        let layout = Layout::from_size_align(len.max(1), DIRECT_MEM_ALIGN)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        Ok(Self { ptr, layout })
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Whether it is empty (never: it holds at least one byte).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The address of its first byte, for a syscall that fills or reads it later.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is a live allocation of `layout.size()` initialized (zeroed) bytes,
        // borrowed through `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    /// The bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live allocation of `layout.size()` initialized (zeroed) bytes,
        // borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }

    /// The bytes as an I/O buffer.
    pub fn as_io_buf(&mut self) -> IoBuf<'_> {
        IoBuf::from(self.as_mut_slice())
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated with exactly this layout and is freed once.
        unsafe { alloc::dealloc(self.ptr, self.layout) };
    }
}
