// SPDX-License-Identifier: Apache-2.0
//! Host buffers of the block layer: aligned heap buffers (for `O_DIRECT`, and the bounce
//! buffers that keep a yankable request's late result away from guest memory where it does
//! not go straight there), and copies between one and a list of [`IoBuf`]s.

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

/// Size of a transparent huge page on x86_64.
pub const HUGE_PAGE: usize = 2 << 20;

/// Whether an [`AlignedBuf`] of `len` bytes is its own huge-page mapping (physically
/// contiguous where the host gives it huge pages) rather than heap memory.
pub const fn huge_backed(len: usize) -> bool {
    len >= HUGE_PAGE / 2
}

/// A zeroed buffer aligned for `O_DIRECT`. Buffers of at least half a huge page are their
/// own anonymous mappings, huge-page aligned and advised `MADV_HUGEPAGE`, so that a 1 MiB
/// transfer is physically contiguous memory rather than 256 scattered pages (on a nested
/// host whose disk is virtio, `fio` moves 1.6-1.7x the MiB/s from huge pages). Such a
/// buffer takes its length rounded up to 2 MiB.
pub struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
    /// The mapping's length when the buffer is one (`ptr` is its start).
    mapped: Option<usize>,
}

// SAFETY: the buffer is a uniquely owned allocation (like a `Box<[u8]>`): nothing else
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
        if huge_backed(len) {
            if let Some((ptr, mapped)) = map_huge(len) {
                return Ok(Self {
                    ptr,
                    layout,
                    mapped: Some(mapped),
                });
            }
        }
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        Ok(Self {
            ptr,
            layout,
            mapped: None,
        })
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

/// An anonymous mapping of at least `len` bytes, huge-page aligned and sized, advised to be
/// backed by huge pages (the host may still use small pages); `None` when mapping fails.
fn map_huge(len: usize) -> Option<(*mut u8, usize)> {
    let size = len.checked_next_multiple_of(HUGE_PAGE)?;
    let span = size.checked_add(HUGE_PAGE)?;
    // SAFETY: a new private anonymous mapping; no existing memory is affected.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return None;
    }
    let head = (base as usize).next_multiple_of(HUGE_PAGE) - base as usize;
    let start = base as usize + head;
    // SAFETY: both ranges lie inside the mapping just made and nothing points into them;
    // what stays mapped is `start..start + size`.
    unsafe {
        if head > 0 {
            libc::munmap(base, head);
        }
        let tail = span - head - size;
        if tail > 0 {
            libc::munmap((start + size) as *mut libc::c_void, tail);
        }
        // Advice only: without huge pages the buffer works the same.
        libc::madvise(start as *mut libc::c_void, size, libc::MADV_HUGEPAGE);
    }
    Some((start as *mut u8, size))
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        match self.mapped {
            // SAFETY: `ptr..ptr + len` is the buffer's own mapping, unmapped once.
            Some(len) => unsafe {
                libc::munmap(self.ptr.cast(), len);
            },
            // SAFETY: `ptr` was allocated with exactly this layout and is freed once.
            None => unsafe { alloc::dealloc(self.ptr, self.layout) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small buffers come from the heap, large ones are their own huge-page aligned
    /// mappings; both are zeroed, aligned for O_DIRECT, as long as asked and writable.
    #[test]
    fn buffers_are_zeroed_aligned_and_large_ones_huge_page_aligned() {
        for len in [1, 4096, 65536, HUGE_PAGE / 2, HUGE_PAGE + 4096] {
            let mut b = AlignedBuf::new(len).unwrap();
            assert_eq!(b.len(), len);
            assert!(b.as_slice().iter().all(|&x| x == 0), "{len}: not zeroed");
            let addr = b.as_mut_ptr() as usize;
            assert!(addr.is_multiple_of(DIRECT_MEM_ALIGN), "{len}: {addr:#x}");
            if len >= HUGE_PAGE / 2 {
                assert!(addr.is_multiple_of(HUGE_PAGE), "{len}: {addr:#x}");
            }
            b.as_mut_slice().fill(0x5a);
            assert!(b.as_slice().iter().all(|&x| x == 0x5a));
        }
    }
}
