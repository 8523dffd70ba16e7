// SPDX-License-Identifier: Apache-2.0
//! The migration stream and the snapshot file: their byte layout, writers and readers.
//!
//! **Stream** (every URI but `file:`), all integers little endian:
//!
//! ```text
//! magic "VMMMIGR\0" (8 bytes), format version (u32)
//! records, each a tag byte and its body:
//!   1 SETUP  u32 length, JSON `Setup`: what the destination must match
//!   2 PAGES  u64 guest-physical address, u32 count, count × 4096 bytes
//!   3 ZEROS  u64 guest-physical address, u32 count: pages that are now all zeros
//!            (a PAGES or ZEROS record has 1 to 256 pages)
//!   4 STATE  u32 length, JSON `VmState`: vCPUs, interrupt controllers, clock, devices
//!   5 END
//!   6 DISCARD u64 guest-physical address, u32 count (1 to 2^20): pages whose earlier copy
//!            is stale; the destination drops them and waits for them (postcopy)
//!   7 POSTCOPY the switch to postcopy: the STATE record follows, the destination runs, and
//!            the missing pages follow (each once) as PAGES and ZEROS records, then END
//!   8 RESUME the first record of a stream that resumes a paused postcopy (no SETUP)
//! ```
//!
//! Pages may come several times (one per pass); the last copy wins. A page never sent is
//! all zeros. After END, on a socket, the destination answers one line: `OK` once it has
//! loaded the state and taken the images, or `ERR <reason>`; the source finishes only on
//! `OK`, so a refused or failed load leaves the guest running on the source.
//!
//! **Snapshot file** (`file:`): guest RAM stays page-addressable, so a restore (or a later
//! postcopy server) can read any page where it is.
//!
//! ```text
//! 0      header (64 bytes): magic "VMMSNAP\0", format version (u32), 0 (u32),
//!        RAM offset (u64), RAM length (u64), state offset (u64), state length (u64),
//!        setup length (u32), 12 zero bytes
//! 64     JSON `Setup`
//! RAM offset (4 KiB aligned): guest RAM, its regions back to back in guest-physical
//!        order (the hole left out), zero pages left as holes
//! state offset: JSON `VmState`
//! ```
//!
//! The header is written last: a snapshot cut short has no magic and is refused.
//!
//! The readers trust nothing they read: a length is checked against its bound before
//! anything is allocated, and a record's body is read as it arrives (the buffer grows with
//! the bytes that came, not with the length announced), so a short corrupt input cannot make
//! the destination allocate 64 MiB. This file names nothing of the crate: the
//! `migration_stream` fuzz target compiles it as it is.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::os::unix::fs::FileExt;

/// The stream's magic.
pub const STREAM_MAGIC: &[u8; 8] = b"VMMMIGR\0";
/// The snapshot file's magic.
pub const FILE_MAGIC: &[u8; 8] = b"VMMSNAP\0";
/// The format version of both; a different one is refused.
pub const FORMAT_VERSION: u32 = 1;
/// Page size of the stream.
pub const PAGE: usize = 4096;
/// Most pages in one PAGES record.
pub const MAX_RUN: usize = 256;
/// Largest JSON record accepted (the state of 255 vCPUs fits many times).
pub const MAX_JSON: u32 = 64 << 20;
/// Size of the snapshot header.
pub const FILE_HEADER: usize = 64;

const SETUP: u8 = 1;
const PAGES: u8 = 2;
const ZEROS: u8 = 3;
const STATE: u8 = 4;
const END: u8 = 5;
const DISCARD: u8 = 6;
const POSTCOPY: u8 = 7;
const RESUME: u8 = 8;
/// Most pages in one DISCARD record.
pub const MAX_DISCARD: u32 = 1 << 20;

/// Errors of reading a stream or a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The channel failed.
    #[error("The migration stream failed")]
    Io(#[source] io::Error),
    /// The channel ended before the END record (the source went away, or a cut-off file).
    #[error("The migration stream ended early: it stops before its end record")]
    Truncated,
    /// Not a vmm stream.
    #[error("Not a vmm migration stream (bad magic)")]
    Magic,
    /// Not a complete vmm snapshot.
    #[error("Not a complete vmm snapshot (bad magic: not one, or cut short)")]
    FileMagic,
    /// Another format version.
    #[error(
        "Migration format version {0} is not supported (this vmm reads version {FORMAT_VERSION})"
    )]
    Version(u32),
    /// An unknown record.
    #[error("Corrupt migration stream: unknown record type {0}")]
    Record(u8),
    /// A record out of order.
    #[error("Corrupt migration stream: {0}")]
    Order(&'static str),
    /// A JSON record too large.
    #[error("Corrupt migration stream: a {0}-byte JSON record")]
    TooLarge(u32),
    /// A PAGES or ZEROS record of 0 or too many pages.
    #[error("Corrupt migration stream: a run of {0} pages")]
    Run(u32),
    /// A PAGES or ZEROS record at an address that is not a page's.
    #[error("Corrupt migration stream: pages at {0:#x}, which is not page aligned")]
    Unaligned(u64),
    /// A snapshot's offsets do not fit the file.
    #[error("Corrupt snapshot: {0}")]
    Layout(&'static str),
    /// A snapshot whose sections end beyond the file (cut short).
    #[error("Corrupt snapshot: cut short (its {0} ends at byte {1}, the file has {2})")]
    Short(&'static str, u64, u64),
}

impl From<io::Error> for StreamError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Self::Truncated
        } else {
            Self::Io(e)
        }
    }
}

/// One record as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    /// What the destination must match (JSON).
    Setup(Vec<u8>),
    /// `count` pages at `gpa`, their bytes in the reader's buffer.
    Pages {
        /// First page's guest-physical address.
        gpa: u64,
        /// Number of pages.
        count: u32,
    },
    /// Pages that are zeros now.
    Zeros {
        /// First page's guest-physical address.
        gpa: u64,
        /// Number of pages.
        count: u32,
    },
    /// The VM's state (JSON).
    State(Vec<u8>),
    /// The end.
    End,
    /// Pages whose copy is stale (postcopy).
    Discard {
        /// First page's guest-physical address.
        gpa: u64,
        /// Number of pages.
        count: u32,
    },
    /// The switch to postcopy.
    Postcopy,
    /// A resumed postcopy stream starts.
    Resume,
}

/// Writes the stream, counting bytes.
pub struct StreamWriter<W: Write> {
    out: io::BufWriter<W>,
    /// Bytes written so far.
    pub bytes: u64,
}

impl<W: Write> StreamWriter<W> {
    /// Starts a stream on `out` (writes the magic and version).
    ///
    /// # Errors
    /// The channel failed.
    pub fn new(out: W) -> io::Result<Self> {
        let mut w = Self {
            out: io::BufWriter::with_capacity(1 << 20, out),
            bytes: 0,
        };
        w.put(STREAM_MAGIC)?;
        w.put(&FORMAT_VERSION.to_le_bytes())?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.bytes += b.len() as u64;
        Ok(())
    }

    fn json(&mut self, tag: u8, body: &[u8]) -> io::Result<()> {
        let len = u32::try_from(body.len()).map_err(|_| io::Error::other("record too large"))?;
        self.put(&[tag])?;
        self.put(&len.to_le_bytes())?;
        self.put(body)
    }

    /// A SETUP record.
    ///
    /// # Errors
    /// The channel failed.
    pub fn setup(&mut self, json: &[u8]) -> io::Result<()> {
        self.json(SETUP, json)
    }

    /// A PAGES record: `data` holds whole pages starting at `gpa`.
    ///
    /// # Errors
    /// The channel failed.
    pub fn pages(&mut self, gpa: u64, data: &[u8]) -> io::Result<()> {
        let count = (data.len() / PAGE) as u32;
        self.put(&[PAGES])?;
        self.put(&gpa.to_le_bytes())?;
        self.put(&count.to_le_bytes())?;
        self.put(data)
    }

    /// A ZEROS record.
    ///
    /// # Errors
    /// The channel failed.
    pub fn zeros(&mut self, gpa: u64, count: u32) -> io::Result<()> {
        self.put(&[ZEROS])?;
        self.put(&gpa.to_le_bytes())?;
        self.put(&count.to_le_bytes())
    }

    /// A STATE record.
    ///
    /// # Errors
    /// The channel failed.
    pub fn state(&mut self, json: &[u8]) -> io::Result<()> {
        self.json(STATE, json)
    }

    /// A DISCARD record.
    ///
    /// # Errors
    /// The channel failed.
    pub fn discard(&mut self, gpa: u64, count: u32) -> io::Result<()> {
        self.put(&[DISCARD])?;
        self.put(&gpa.to_le_bytes())?;
        self.put(&count.to_le_bytes())
    }

    /// The POSTCOPY record.
    ///
    /// # Errors
    /// The channel failed.
    pub fn postcopy(&mut self) -> io::Result<()> {
        self.put(&[POSTCOPY])
    }

    /// Starts a resumed stream on `out`: magic, version and the RESUME record.
    ///
    /// # Errors
    /// The channel failed.
    pub fn resume(out: W) -> io::Result<Self> {
        let mut w = Self::new(out)?;
        w.put(&[RESUME])?;
        w.out.flush()?;
        Ok(w)
    }

    /// The END record, then everything is flushed.
    ///
    /// # Errors
    /// The channel failed.
    pub fn end(&mut self) -> io::Result<()> {
        self.put(&[END])?;
        self.out.flush()
    }

    /// Sends what is buffered.
    ///
    /// # Errors
    /// The channel failed.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The channel, for the destination's answer.
    pub fn get_mut(&mut self) -> &mut W {
        self.out.get_mut()
    }
}

/// Reads the stream.
pub struct StreamReader<R: Read> {
    input: io::BufReader<R>,
    /// The bytes of the last PAGES record.
    pub data: Vec<u8>,
    seen_setup: bool,
}

impl<R: Read> StreamReader<R> {
    /// Checks the magic and version at the start of `input`.
    ///
    /// # Errors
    /// Not a stream, another version, or the channel failed.
    pub fn new(input: R) -> Result<Self, StreamError> {
        let mut input = io::BufReader::with_capacity(1 << 20, input);
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != STREAM_MAGIC {
            return Err(StreamError::Magic);
        }
        let version = read_u32(&mut input)?;
        if version != FORMAT_VERSION {
            return Err(StreamError::Version(version));
        }
        Ok(Self {
            input,
            data: Vec::new(),
            seen_setup: false,
        })
    }

    /// The next record. SETUP must come first; pages and state only after it.
    ///
    /// # Errors
    /// A corrupt or truncated stream, or the channel failed.
    pub fn next(&mut self) -> Result<Record, StreamError> {
        let mut tag = [0u8; 1];
        self.input.read_exact(&mut tag)?;
        if tag[0] == RESUME {
            if self.seen_setup {
                return Err(StreamError::Order("a resume record inside a stream"));
            }
            self.seen_setup = true;
            return Ok(Record::Resume);
        }
        if tag[0] != SETUP && !self.seen_setup {
            return Err(StreamError::Order("no setup record first"));
        }
        match tag[0] {
            SETUP => {
                if self.seen_setup {
                    return Err(StreamError::Order("a second setup record"));
                }
                self.seen_setup = true;
                Ok(Record::Setup(self.json()?))
            }
            PAGES => {
                let (gpa, count) = self.run()?;
                let mut data = std::mem::take(&mut self.data);
                let read = read_body(&mut self.input, count as usize * PAGE, &mut data);
                self.data = data;
                read?;
                Ok(Record::Pages { gpa, count })
            }
            ZEROS => {
                let (gpa, count) = self.run()?;
                Ok(Record::Zeros { gpa, count })
            }
            STATE => Ok(Record::State(self.json()?)),
            END => Ok(Record::End),
            DISCARD => {
                let gpa = read_u64(&mut self.input)?;
                let count = read_u32(&mut self.input)?;
                if count == 0 || count > MAX_DISCARD {
                    return Err(StreamError::Run(count));
                }
                if !gpa.is_multiple_of(PAGE as u64) {
                    return Err(StreamError::Unaligned(gpa));
                }
                Ok(Record::Discard { gpa, count })
            }
            POSTCOPY => Ok(Record::Postcopy),
            t => Err(StreamError::Record(t)),
        }
    }

    /// A PAGES or ZEROS record's address and page count (1 to [`MAX_RUN`]).
    fn run(&mut self) -> Result<(u64, u32), StreamError> {
        let gpa = read_u64(&mut self.input)?;
        let count = read_u32(&mut self.input)?;
        if count == 0 || count as usize > MAX_RUN {
            return Err(StreamError::Run(count));
        }
        if !gpa.is_multiple_of(PAGE as u64) {
            return Err(StreamError::Unaligned(gpa));
        }
        Ok((gpa, count))
    }

    fn json(&mut self) -> Result<Vec<u8>, StreamError> {
        let len = read_u32(&mut self.input)?;
        if len > MAX_JSON {
            return Err(StreamError::TooLarge(len));
        }
        let mut body = Vec::new();
        read_body(&mut self.input, len as usize, &mut body)?;
        Ok(body)
    }

    /// The channel, to answer the source.
    pub fn get_mut(&mut self) -> &mut R {
        self.input.get_mut()
    }
}

/// Most bytes reserved for a record's body before any of it has arrived.
const INITIAL_BODY: usize = 64 << 10;

/// Reads exactly `len` bytes of a record's body into `buf` (cleared first), which grows with
/// what arrives: a length announced by a corrupt or truncated input costs only the bytes
/// that really came.
///
/// # Errors
/// The input ended first (`UnexpectedEof`) or failed.
fn read_body(r: &mut impl Read, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    buf.reserve(len.min(INITIAL_BODY));
    let got = r.take(len as u64).read_to_end(buf)?;
    if got < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("a record of {len} bytes ended after {got}"),
        ));
    }
    Ok(())
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Where things are in a snapshot file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLayout {
    /// Offset of guest RAM.
    pub ram_offset: u64,
    /// Bytes of guest RAM.
    pub ram_len: u64,
    /// Offset of the state.
    pub state_offset: u64,
    /// Bytes of state.
    pub state_len: u64,
    /// Bytes of setup (at offset [`FILE_HEADER`]).
    pub setup_len: u32,
}

impl FileLayout {
    /// Where RAM goes for a setup record of `setup_len` bytes and `ram_len` bytes of RAM.
    pub fn new(setup_len: usize, ram_len: u64) -> Self {
        let ram_offset = (FILE_HEADER + setup_len).next_multiple_of(PAGE) as u64;
        Self {
            ram_offset,
            ram_len,
            state_offset: ram_offset + ram_len,
            state_len: 0,
            setup_len: setup_len as u32,
        }
    }

    /// The header's bytes.
    pub fn header(&self) -> [u8; FILE_HEADER] {
        let mut h = [0u8; FILE_HEADER];
        h[0..8].copy_from_slice(FILE_MAGIC);
        h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[16..24].copy_from_slice(&self.ram_offset.to_le_bytes());
        h[24..32].copy_from_slice(&self.ram_len.to_le_bytes());
        h[32..40].copy_from_slice(&self.state_offset.to_le_bytes());
        h[40..48].copy_from_slice(&self.state_len.to_le_bytes());
        h[48..52].copy_from_slice(&self.setup_len.to_le_bytes());
        h
    }

    /// Reads and checks the header of `file`.
    ///
    /// # Errors
    /// Not a complete snapshot, another version, offsets beyond the file.
    pub fn read(file: &File) -> Result<Self, StreamError> {
        let mut h = [0u8; FILE_HEADER];
        match file.read_exact_at(&mut h, 0) {
            // Shorter than a header: no magic either.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(StreamError::FileMagic)
            }
            r => r.map_err(StreamError::Io)?,
        }
        if &h[0..8] != FILE_MAGIC {
            return Err(StreamError::FileMagic);
        }
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap_or_default());
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or_default());
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(StreamError::Version(version));
        }
        let l = Self {
            ram_offset: u64_at(16),
            ram_len: u64_at(24),
            state_offset: u64_at(32),
            state_len: u64_at(40),
            setup_len: u32_at(48),
        };
        let size = file.metadata().map_err(StreamError::Io)?.len();
        if l.setup_len > MAX_JSON || l.state_len > u64::from(MAX_JSON) {
            return Err(StreamError::Layout("a JSON section is too large"));
        }
        if (FILE_HEADER as u64 + u64::from(l.setup_len)) > l.ram_offset
            || !l.ram_offset.is_multiple_of(PAGE as u64)
        {
            return Err(StreamError::Layout("RAM overlaps the setup"));
        }
        let ram_end = l.ram_offset.checked_add(l.ram_len);
        let state_end = l.state_offset.checked_add(l.state_len);
        match (ram_end, state_end) {
            (Some(r), Some(_)) if r > size => Err(StreamError::Short("RAM", r, size)),
            (Some(r), Some(s)) if r <= l.state_offset => match s <= size {
                true => Ok(l),
                false => Err(StreamError::Short("state", s, size)),
            },
            _ => Err(StreamError::Layout("its sections overlap or overflow")),
        }
    }

    /// The setup section of `file`.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn setup(&self, file: &File) -> io::Result<Vec<u8>> {
        let mut b = vec![0u8; self.setup_len as usize];
        file.read_exact_at(&mut b, FILE_HEADER as u64)?;
        Ok(b)
    }

    /// The state section of `file`.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn state(&self, file: &File) -> io::Result<Vec<u8>> {
        let mut b = vec![0u8; self.state_len as usize];
        file.read_exact_at(&mut b, self.state_offset)?;
        Ok(b)
    }
}

/// The next data range of the file `fd` at or after `from` (below `end`), as (start, end),
/// whole pages (`from` is page aligned): `SEEK_DATA` and `SEEK_HOLE`; past the last data,
/// (end, end). Pages outside the ranges are holes: never written, read as zeros. Used on the
/// memory file (a source's first pass) and on a snapshot (a restore that copies RAM).
pub fn data_range(fd: RawFd, from: u64, end: u64) -> (u64, u64) {
    // SAFETY: lseek on a descriptor the caller owns; only its offset moves, which nothing
    // else uses (reads and writes of these files are positional).
    let data = unsafe { libc::lseek(fd, from as i64, libc::SEEK_DATA) };
    if data < 0 || data as u64 >= end {
        return (end, end);
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
    let hole = if hole < 0 {
        end
    } else {
        (hole as u64).min(end)
    };
    let page = PAGE as u64;
    let data = ((data as u64) & !(page - 1)).max(from);
    (data, hole.next_multiple_of(page).min(end))
}

/// The page-aligned ranges `[data, hole)` of `fd` between `from` and `end` that hold data,
/// in order ([`data_range`] after [`data_range`]); without a descriptor, all of it.
pub fn data_ranges(fd: Option<RawFd>, from: u64, end: u64) -> impl Iterator<Item = (u64, u64)> {
    let mut pos = from;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let (data, hole) = match fd {
            Some(fd) => data_range(fd, pos, end),
            None => (pos, end),
        };
        if data >= hole {
            pos = end;
            return None;
        }
        pos = hole;
        Some((data, hole))
    })
}

/// Makes `len` bytes at `offset` of the file `fd` a hole (zeros; the space is freed).
///
/// # Errors
/// The filesystem refused (it may have no holes).
pub fn punch_hole(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate on a descriptor the caller owns; the kernel checks the range.
    let r = unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as i64,
            len as i64,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_reads_back() {
        let mut w = StreamWriter::new(Vec::new()).unwrap();
        w.setup(b"{}").unwrap();
        let page = vec![7u8; PAGE * 2];
        w.pages(0x1000, &page).unwrap();
        w.zeros(0x5000, 3).unwrap();
        w.state(b"{\"a\":1}").unwrap();
        w.end().unwrap();
        let n = w.bytes;
        let bytes = w.get_mut().clone();
        assert_eq!(n as usize, bytes.len());
        let mut r = StreamReader::new(&bytes[..]).unwrap();
        assert_eq!(r.next().unwrap(), Record::Setup(b"{}".to_vec()));
        assert_eq!(
            r.next().unwrap(),
            Record::Pages {
                gpa: 0x1000,
                count: 2
            }
        );
        assert_eq!(r.data, page);
        assert_eq!(
            r.next().unwrap(),
            Record::Zeros {
                gpa: 0x5000,
                count: 3
            }
        );
        assert_eq!(r.next().unwrap(), Record::State(b"{\"a\":1}".to_vec()));
        assert_eq!(r.next().unwrap(), Record::End);
        assert!(matches!(r.next(), Err(StreamError::Truncated)));
    }

    #[test]
    fn corrupt_streams_are_refused() {
        let ok = {
            let mut w = StreamWriter::new(Vec::new()).unwrap();
            w.setup(b"{}").unwrap();
            w.flush().unwrap();
            w.get_mut().clone()
        };
        let mut bad = ok.clone();
        bad[0] = b'X';
        assert_eq!(
            StreamReader::new(&bad[..]).err().unwrap().to_string(),
            "Not a vmm migration stream (bad magic)"
        );
        let mut v2 = ok.clone();
        v2[8] = 2;
        assert!(matches!(
            StreamReader::new(&v2[..]),
            Err(StreamError::Version(2))
        ));
        // Pages before the setup.
        let mut early = ok[..12].to_vec();
        early.extend([PAGES]);
        assert!(matches!(
            StreamReader::new(&early[..]).unwrap().next(),
            Err(StreamError::Order(_))
        ));
        // A run too long, an unknown tag, a huge JSON length, a truncated page.
        for tail in [
            [&[PAGES][..], &0u64.to_le_bytes(), &1000u32.to_le_bytes()].concat(),
            vec![9],
            [&[STATE][..], &u32::MAX.to_le_bytes()].concat(),
            [
                &[PAGES][..],
                &0u64.to_le_bytes(),
                &1u32.to_le_bytes(),
                &[0; 10],
            ]
            .concat(),
        ] {
            let s = [ok.clone(), tail].concat();
            let mut r = StreamReader::new(&s[..]).unwrap();
            assert!(matches!(r.next().unwrap(), Record::Setup(_)));
            assert!(r.next().is_err());
        }
    }

    /// A stream of `tail` after the magic, the version and an empty setup.
    fn after_setup(tail: &[u8]) -> Vec<u8> {
        let mut w = StreamWriter::new(Vec::new()).unwrap();
        w.setup(b"{}").unwrap();
        w.flush().unwrap();
        [w.get_mut().clone(), tail.to_vec()].concat()
    }

    /// Found by the `migration_stream` fuzz target: ZEROS then PAGES at addresses inside a
    /// page (0x1800) overlapped half a page each; the source only sends page addresses.
    #[test]
    fn fuzz_unaligned_pages_are_refused() {
        for tag in [PAGES, ZEROS] {
            let s =
                after_setup(&[&[tag][..], &0x1800u64.to_le_bytes(), &1u32.to_le_bytes()].concat());
            let mut r = StreamReader::new(&s[..]).unwrap();
            r.next().unwrap();
            assert_eq!(
                r.next().unwrap_err().to_string(),
                "Corrupt migration stream: pages at 0x1800, which is not page aligned"
            );
        }
    }

    /// A ZEROS record of 0 or of more than [`MAX_RUN`] pages is refused as a PAGES one is
    /// (before: any count, which the receive loop turned into a buffer of count pages).
    #[test]
    fn zeros_runs_are_bounded() {
        for count in [0u32, MAX_RUN as u32 + 1, u32::MAX] {
            let s =
                after_setup(&[&[ZEROS][..], &0u64.to_le_bytes(), &count.to_le_bytes()].concat());
            let mut r = StreamReader::new(&s[..]).unwrap();
            r.next().unwrap();
            assert_eq!(
                r.next().unwrap_err().to_string(),
                format!("Corrupt migration stream: a run of {count} pages")
            );
        }
    }

    /// A record announcing 64 MiB followed by a few bytes costs those bytes, not 64 MiB,
    /// and says the stream ended early.
    #[test]
    fn a_short_record_allocates_what_came() {
        let mut buf = Vec::new();
        let e = read_body(&mut &b"abc"[..], MAX_JSON as usize, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(buf.capacity() <= INITIAL_BODY, "{}", buf.capacity());
        let s = after_setup(&[&[STATE][..], &MAX_JSON.to_le_bytes(), b"{\"a\""].concat());
        let mut r = StreamReader::new(&s[..]).unwrap();
        r.next().unwrap();
        assert_eq!(
            r.next().unwrap_err().to_string(),
            "The migration stream ended early: it stops before its end record"
        );
        // A PAGES run cut inside its bytes, and a stream cut between records.
        let s = after_setup(
            &[
                &[PAGES][..],
                &0u64.to_le_bytes(),
                &2u32.to_le_bytes(),
                &[1; 100],
            ]
            .concat(),
        );
        let mut r = StreamReader::new(&s[..]).unwrap();
        r.next().unwrap();
        assert!(matches!(r.next(), Err(StreamError::Truncated)));
        let empty = after_setup(&[]);
        let mut r = StreamReader::new(&empty[..]).unwrap();
        r.next().unwrap();
        assert!(matches!(r.next(), Err(StreamError::Truncated)));
    }

    #[test]
    fn snapshot_layout_round_trip() {
        let path = std::env::temp_dir().join(format!("vmm-snaplayout-{}", std::process::id()));
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let mut l = FileLayout::new(100, 1 << 20);
        assert_eq!(l.ram_offset, 4096);
        l.state_len = 5;
        f.set_len(l.state_offset + 5).unwrap();
        // No header yet: refused.
        assert!(matches!(FileLayout::read(&f), Err(StreamError::FileMagic)));
        f.write_all_at(&l.header(), 0).unwrap();
        assert_eq!(FileLayout::read(&f).unwrap(), l);
        // Cut short: in the state, in RAM.
        f.set_len(l.state_offset + 2).unwrap();
        assert_eq!(
            FileLayout::read(&f).unwrap_err().to_string(),
            "Corrupt snapshot: cut short (its state ends at byte 1052677, the file has 1052674)"
        );
        f.set_len(l.ram_offset + 10).unwrap();
        assert_eq!(
            FileLayout::read(&f).unwrap_err().to_string(),
            "Corrupt snapshot: cut short (its RAM ends at byte 1052672, the file has 4106)"
        );
        // Shorter than a header.
        f.set_len(10).unwrap();
        assert!(matches!(FileLayout::read(&f), Err(StreamError::FileMagic)));
        std::fs::remove_file(&path).unwrap();
    }
}
