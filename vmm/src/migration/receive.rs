// SPDX-License-Identifier: Apache-2.0
//! The destination's loading of guest RAM, apart from the thread and the main loop: the
//! source's setup checked against this VM's, the records of a stream written into guest
//! memory until its END, and a snapshot file's RAM section copied in. Everything the source
//! sent is checked first: a page outside guest RAM, a setup that does not decode or does not
//! match, a snapshot whose RAM is not this VM's size is refused with one line.
//!
//! It names only [`super::stream`], [`super::state`] and `crate::memory` (and the workspace's
//! crates), so the `migration_stream` fuzz target compiles it, with them, as it is.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use devices::GuestMemoryMmap;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::state::Setup;
use super::stream::{
    data_ranges, punch_hole, FileLayout, Record, StreamError, StreamReader, MAX_RUN, PAGE,
};

/// Errors of loading what a source sent.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The stream or the snapshot is corrupt, truncated or of another format.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// Reading the snapshot, or discarding guest RAM, failed.
    #[error("Cannot receive the migration stream")]
    Receive(#[source] io::Error),
    /// The source's VM differs from this one.
    #[error("The source's VM does not match this one: {0}")]
    Mismatch(String),
    /// A JSON record does not decode.
    #[error("Corrupt migration stream: its {0} does not decode: {1}")]
    Decode(&'static str, String),
    /// A page outside guest RAM.
    #[error("Corrupt migration stream: a page at {0:#x} is outside guest RAM")]
    Memory(u64),
    /// Guest RAM is a snapshot's file mapped privately, which must never be punched.
    #[error("guest RAM is a snapshot's: it cannot take a migration")]
    NotOwnMemory,
}

/// What loading has done so far, for the destination's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The source's setup matches; guest RAM was discarded (zeros) to receive it.
    Accepted,
    /// Pages loaded with their bytes.
    Pages(u32),
    /// Pages made zeros.
    Zeros(u32),
    /// Pages dropped (holes again) to be filled in postcopy.
    Discard {
        /// First page's guest-physical address.
        gpa: u64,
        /// Number of pages.
        count: u32,
    },
}

/// How a stream's loading ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    /// At its END: all of RAM is in; the last state record (JSON).
    Complete(Vec<u8>),
    /// At the state record after POSTCOPY: the destination runs now, and the discarded
    /// pages follow on the same stream.
    Postcopy(Vec<u8>),
}

/// Decodes the source's setup (JSON) and checks that this VM, `here`, can take its state.
///
/// # Errors
/// The setup does not decode, or what differs.
pub fn check_setup(here: &Setup, json: &[u8]) -> Result<Setup, LoadError> {
    let source: Setup =
        serde_json::from_slice(json).map_err(|e| LoadError::Decode("setup", e.to_string()))?;
    source
        .validate()
        .map_err(|e| LoadError::Decode("setup", e))?;
    here.accept(&source).map_err(LoadError::Mismatch)?;
    Ok(source)
}

/// Reads a stream up to its END into `mem` (this VM's RAM, described by `here`), and returns
/// the state record (JSON, not decoded: the main loop decodes and loads it); or up to the
/// state record that follows POSTCOPY. `step` is told of each thing done. The setup is
/// checked before anything is written; a page is written (or discarded) only if the whole
/// run is inside guest RAM.
///
/// # Errors
/// A corrupt or truncated stream, a mismatched setup, a page outside RAM, no state record
/// before the END or right after POSTCOPY.
pub fn receive_ram<R: Read>(
    reader: &mut StreamReader<R>,
    here: &Setup,
    mem: &GuestMemoryMmap,
    mut step: impl FnMut(Step),
) -> Result<Loaded, LoadError> {
    let mut state = None;
    loop {
        match reader.next()? {
            Record::Discard { gpa, count } => {
                let at = in_ram_bytes(mem, gpa, u64::from(count) * PAGE as u64)?;
                discard_pages(mem, at, u64::from(count) * PAGE as u64)?;
                step(Step::Discard { gpa, count });
            }
            Record::Postcopy => {
                return match reader.next()? {
                    Record::State(json) => Ok(Loaded::Postcopy(json)),
                    _ => Err(LoadError::Stream(StreamError::Order(
                        "postcopy without the state right after",
                    ))),
                };
            }
            Record::Resume => {
                return Err(LoadError::Stream(StreamError::Order(
                    "a resume record in a new stream",
                )))
            }
            Record::Setup(json) => {
                check_setup(here, &json)?;
                // The VM was built with its boot images loaded; the source's RAM replaces
                // all of it, and a page the source never sends is zeros.
                discard_ram(mem)?;
                step(Step::Accepted);
            }
            Record::Pages { gpa, count } => {
                let at = in_ram(mem, gpa, count)?;
                mem.write_slice(&reader.data, at)
                    .map_err(|_| LoadError::Memory(gpa))?;
                step(Step::Pages(count));
            }
            Record::Zeros { gpa, count } => {
                let at = in_ram(mem, gpa, count)?;
                static ZEROS: [u8; MAX_RUN * PAGE] = [0; MAX_RUN * PAGE];
                mem.write_slice(&ZEROS[..count as usize * PAGE], at)
                    .map_err(|_| LoadError::Memory(gpa))?;
                step(Step::Zeros(count));
            }
            Record::State(json) => state = Some(json),
            Record::End => {
                return state
                    .map(Loaded::Complete)
                    .ok_or(LoadError::Stream(StreamError::Order(
                        "the end without the state",
                    )));
            }
        }
    }
}

/// The guest address of a run of `count` pages at `gpa`, if all of it is guest RAM.
fn in_ram(mem: &GuestMemoryMmap, gpa: u64, count: u32) -> Result<GuestAddress, LoadError> {
    in_ram_bytes(mem, gpa, u64::from(count) * PAGE as u64)
}

fn in_ram_bytes(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> Result<GuestAddress, LoadError> {
    let at = GuestAddress(gpa);
    if gpa.checked_add(len).is_none() || !mem.check_range(at, len as usize) {
        return Err(LoadError::Memory(gpa));
    }
    Ok(at)
}

/// Makes `len` bytes of guest RAM at `at` holes of the memory file (zeros, and missing
/// pages for userfaultfd), region by region.
fn discard_pages(mem: &GuestMemoryMmap, at: GuestAddress, len: u64) -> Result<(), LoadError> {
    if !crate::memory::is_own_memory(mem) {
        return Err(LoadError::NotOwnMemory);
    }
    let mut done = 0u64;
    while done < len {
        let gpa = at.unchecked_add(done);
        let r = mem.find_region(gpa).ok_or(LoadError::Memory(gpa.0))?;
        let off = gpa.0 - r.start_addr().0;
        let n = (r.len() - off).min(len - done);
        if let Some(f) = r.file_offset() {
            punch_hole(f.file().as_raw_fd(), f.start() + off, n).map_err(LoadError::Receive)?;
        }
        done += n;
    }
    Ok(())
}

/// Reads and checks a snapshot's header and setup against this VM (`here`, whose RAM is
/// `mem`): the layout to load from.
///
/// # Errors
/// Not a complete snapshot, a corrupt layout, a setup that does not decode or match, a RAM
/// section of another size than this VM's RAM.
pub fn open_snapshot(
    f: &File,
    here: &Setup,
    mem: &GuestMemoryMmap,
) -> Result<FileLayout, LoadError> {
    let layout = FileLayout::read(f)?;
    let setup = layout.setup(f).map_err(LoadError::Receive)?;
    check_setup(here, &setup)?;
    let ram: u64 = mem.iter().map(|r| r.len()).sum();
    if layout.ram_len != ram {
        return Err(LoadError::Stream(StreamError::Layout(
            "its RAM section is not this VM's RAM size",
        )));
    }
    Ok(layout)
}

/// Copies a snapshot's RAM section into `mem` (discarded first), skipping the file's holes
/// (zero pages); returns the bytes loaded.
///
/// # Errors
/// The file cannot be read, or guest RAM cannot be discarded.
pub fn load_file_ram(
    f: &File,
    layout: &FileLayout,
    mem: &GuestMemoryMmap,
) -> Result<u64, LoadError> {
    discard_ram(mem)?;
    let mut file_off = 0u64;
    let mut loaded = 0u64;
    let mut buf = Vec::new();
    for r in mem.iter() {
        let (start, len) = (r.start_addr(), r.len());
        let base = layout.ram_offset + file_off;
        for (data, hole) in data_ranges(Some(f.as_raw_fd()), base, base + len) {
            let (data, hole) = (data - base, hole - base);
            buf.resize((hole - data).min(1 << 20) as usize, 0);
            let mut at = 0u64;
            while at < hole - data {
                let n = (hole - data - at).min(buf.len() as u64) as usize;
                let src = base + data + at;
                f.read_exact_at(&mut buf[..n], src)
                    .map_err(LoadError::Receive)?;
                let gpa = start.unchecked_add(data + at);
                mem.write_slice(&buf[..n], gpa)
                    .map_err(|_| LoadError::Memory(gpa.0))?;
                at += n as u64;
            }
            loaded += hole - data;
        }
        file_off += len;
    }
    Ok(loaded)
}

/// Makes all of guest RAM zeros again (holes in the memory file: the host frees it).
///
/// # Errors
/// Guest RAM is not the VM's own memory file (a snapshot's, mapped privately: never
/// punched), or the memory file refused the hole.
pub fn discard_ram(mem: &GuestMemoryMmap) -> Result<(), LoadError> {
    for r in mem.iter() {
        // The mapping stays valid: a punched page of the memory file reads as zeros.
        discard_pages(mem, r.start_addr(), r.len())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::stream::StreamWriter;
    use super::*;

    fn here() -> Setup {
        Setup {
            ram: vec![(0, 4 * PAGE as u64)],
            cpus: 1,
            cpu_features: Vec::new(),
            disks: Vec::new(),
        }
    }

    fn stream(body: impl FnOnce(&mut StreamWriter<Vec<u8>>)) -> Vec<u8> {
        let mut w = StreamWriter::new(Vec::new()).unwrap();
        w.setup(&serde_json::to_vec(&here()).unwrap()).unwrap();
        body(&mut w);
        w.end().unwrap();
        w.get_mut().clone()
    }

    fn load(s: &[u8], mem: &GuestMemoryMmap) -> (Result<Loaded, LoadError>, Vec<Step>) {
        let mut steps = Vec::new();
        let mut r = StreamReader::new(s).unwrap();
        let res = receive_ram(&mut r, &here(), mem, |s| steps.push(s));
        (res, steps)
    }

    #[test]
    fn pages_and_zeros_land_the_last_copy_winning() {
        let mem = crate::memory::create_guest_memory(4 * PAGE as u64).unwrap();
        let s = stream(|w| {
            w.pages(0x1000, &[7u8; 2 * PAGE]).unwrap();
            w.zeros(0x2000, 1).unwrap();
            w.state(b"{}").unwrap();
        });
        let (res, steps) = load(&s, &mem);
        assert_eq!(res.unwrap(), Loaded::Complete(b"{}".to_vec()));
        assert_eq!(steps, [Step::Accepted, Step::Pages(2), Step::Zeros(1)]);
        let mut b = [0u8; 2];
        mem.read_slice(&mut b, GuestAddress(0x1fff)).unwrap();
        assert_eq!(b, [7, 0]);
    }

    /// A run that starts in RAM and ends past it is refused before any of it is written.
    #[test]
    fn a_run_past_the_end_of_ram_writes_nothing() {
        let mem = crate::memory::create_guest_memory(4 * PAGE as u64).unwrap();
        for (gpa, n) in [(0x3000u64, 2usize), (u64::MAX - 0xfff, 1)] {
            let s = stream(|w| w.pages(gpa, &vec![9u8; n * PAGE]).unwrap());
            let (res, _) = load(&s, &mem);
            assert_eq!(
                res.unwrap_err().to_string(),
                format!("Corrupt migration stream: a page at {gpa:#x} is outside guest RAM")
            );
            let mut b = [0u8; 1];
            mem.read_slice(&mut b, GuestAddress(0x3000)).unwrap();
            assert_eq!(b, [0]);
        }
    }

    /// A discarded page is zeros again; the state right after POSTCOPY ends the loading
    /// (the rest comes in postcopy), anything else there is refused.
    #[test]
    fn postcopy_discards_then_stops_at_its_state() {
        let mem = crate::memory::create_guest_memory(4 * PAGE as u64).unwrap();
        let s = stream(|w| {
            w.pages(0x1000, &[7u8; 2 * PAGE]).unwrap();
            w.discard(0x2000, 1).unwrap();
            w.postcopy().unwrap();
            w.state(b"{}").unwrap();
        });
        let (res, steps) = load(&s, &mem);
        assert_eq!(res.unwrap(), Loaded::Postcopy(b"{}".to_vec()));
        assert_eq!(
            steps,
            [
                Step::Accepted,
                Step::Pages(2),
                Step::Discard {
                    gpa: 0x2000,
                    count: 1
                }
            ]
        );
        let mut b = [0u8; 2];
        mem.read_slice(&mut b, GuestAddress(0x1fff)).unwrap();
        assert_eq!(b, [7, 0]);
        let s = stream(|w| {
            w.postcopy().unwrap();
            w.pages(0x1000, &[7u8; PAGE]).unwrap();
        });
        assert_eq!(
            load(&s, &mem).0.unwrap_err().to_string(),
            "Corrupt migration stream: postcopy without the state right after"
        );
        let s = stream(|w| w.discard(0x3000, 2).unwrap());
        assert_eq!(
            load(&s, &mem).0.unwrap_err().to_string(),
            "Corrupt migration stream: a page at 0x3000 is outside guest RAM"
        );
    }

    #[test]
    fn another_setup_and_no_state_are_refused() {
        let mem = crate::memory::create_guest_memory(4 * PAGE as u64).unwrap();
        let (res, steps) = load(&stream(|_| {}), &mem);
        assert_eq!(
            res.unwrap_err().to_string(),
            "Corrupt migration stream: the end without the state"
        );
        assert_eq!(steps, [Step::Accepted]);
        let mut other = here();
        other.ram = vec![(0, 64 << 20)];
        let mut w = StreamWriter::new(Vec::new()).unwrap();
        w.setup(&serde_json::to_vec(&other).unwrap()).unwrap();
        w.end().unwrap();
        let (res, steps) = load(w.get_mut(), &mem);
        assert_eq!(
            res.unwrap_err().to_string(),
            "The source's VM does not match this one: the source has 64 MiB of RAM, this VM 0 MiB"
        );
        assert!(steps.is_empty());
    }
}
