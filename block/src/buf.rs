// SPDX-License-Identifier: Apache-2.0
//! Host buffers of the block layer: aligned heap buffers (for `O_DIRECT`, and the bounce
//! buffers that keep a yankable request's late result away from guest memory), and copies
//! between one and a list of [`IoBuf`]s.

use std::alloc::{self, Layout};
use std::io;

use crate::node::IoBuf;

/// Memory alignment of `O_DIRECT` buffers (the page size covers every host device).
pub const DIRECT_MEM_ALIGN: usize = 4096;

/// Copies bytes `skip..skip + dst.len()` of the concatenation of `bufs` into `dst`.
pub fn gather(bufs: &[IoBuf<'_>], mut skip: u64, dst: &mut [u8]) {
    let mut filled = 0;
    for b in bufs {
        if filled == dst.len() {
            break;
        }
        let blen = b.len() as u64;
        if skip >= blen {
            skip -= blen;
            continue;
        }
        let n = ((blen - skip) as usize).min(dst.len() - filled);
        if let Ok(s) = b.subslice(skip as usize, n) {
            s.copy_to(&mut dst[filled..filled + n]);
        }
        filled += n;
        skip = 0;
    }
}

/// Copies `src` into bytes `skip..skip + src.len()` of the concatenation of `bufs`.
pub fn scatter(bufs: &[IoBuf<'_>], mut skip: u64, src: &[u8]) {
    let mut used = 0;
    for b in bufs {
        if used == src.len() {
            break;
        }
        let blen = b.len() as u64;
        if skip >= blen {
            skip -= blen;
            continue;
        }
        let n = ((blen - skip) as usize).min(src.len() - used);
        if let Ok(s) = b.subslice(skip as usize, n) {
            s.copy_from(&src[used..used + n]);
        }
        used += n;
        skip = 0;
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
