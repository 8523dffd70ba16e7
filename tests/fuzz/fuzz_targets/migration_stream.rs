// SPDX-License-Identifier: Apache-2.0
//! The destination's side of a migration on arbitrary input: the stream reader and its
//! receive loop (`vmm/src/migration/stream.rs`, `receive.rs`: records written into a real
//! 32 MiB memfd-backed guest memory, `memory.rs`), the snapshot file's reader (its header,
//! setup and RAM section on a memfd), and the JSON of the `Setup` and `VmState` records
//! (`state.rs`).
//!
//! vmm is a binary crate, so these sources are compiled into this target as they are
//! (`#[path]` modules under the names they use for each other: `receive.rs` names
//! `super::stream` and `super::state`, which resolve here at the crate's root).
//!
//! Input: a mode byte, then
//! - 0: a stream, as the destination reads it from its channel;
//! - 1: a snapshot file as segments `[u32 gap][u32 length][length bytes]` (`gap` bytes of
//!   hole before the segment; a last segment shorter than its length takes what is left);
//! - 2: one JSON record, decoded as a `Setup` and as a `VmState`.
//!
//! This VM (what a source must match): 32 MiB of RAM at 0, one vCPU with every CPU feature,
//! no disks: the committed seeds are streams and snapshots of such a probe guest.
//!
//! Asserts, beyond not panicking, not hanging and not allocating more than the input asks:
//! - every error is one line;
//! - stream: the setup is accepted once, before any page; every record applied (PAGES,
//!   ZEROS, DISCARD) lies inside RAM and its step names it; guest memory is exactly what the
//!   records applied so far say (a model replayed from the same bytes: the last copy of a
//!   page wins, pages never sent and pages discarded are zeros, a refused record wrote or
//!   discarded nothing); how the load ends is what the records say: `Loaded::Complete` at
//!   END with the last STATE record, `Loaded::Postcopy` with the STATE record right after
//!   POSTCOPY (loading stops there), and exactly the loop's own refusal for an END without
//!   a STATE record, a POSTCOPY followed by anything else, or a stream that starts with
//!   RESUME (nothing applied);
//! - snapshot: a layout that reads fits the file (sections in order, inside it, RAM page
//!   aligned); once loaded, every page of guest memory is the RAM section's page;
//! - JSON: a `Setup` or `VmState` that decodes prints and decodes back to the same, and a
//!   setup accepts itself.

#![no_main]
#![allow(dead_code)]

#[path = "../../../vmm/src/error.rs"]
mod error;
#[path = "../../../vmm/src/layout.rs"]
mod layout;
#[path = "../../../vmm/src/memory.rs"]
mod memory;
#[path = "../../../vmm/src/migration/receive.rs"]
mod receive;
#[path = "../../../vmm/src/migration/state.rs"]
mod state;
#[path = "../../../vmm/src/migration/stream.rs"]
mod stream;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, OnceLock};

use devices::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use receive::{LoadError, Loaded, Step};
use state::{CpuFeatureWord, Setup, VmState};
use stream::{Record, StreamError, StreamReader, FILE_HEADER, MAX_JSON, PAGE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// Guest RAM of this VM.
const RAM: u64 = 32 << 20;
/// Largest snapshot file the harness makes (holes included).
const MAX_FILE: u64 = 64 << 20;

/// The CPUID registers `state::cpu_features` reports.
const FEATURE_REGS: [(u32, u32, &str); 14] = [
    (0x1, 0, "ecx"),
    (0x1, 0, "edx"),
    (0x6, 0, "eax"),
    (0x7, 0, "ebx"),
    (0x7, 0, "ecx"),
    (0x7, 0, "edx"),
    (0x7, 1, "eax"),
    (0xd, 1, "eax"),
    (0x14, 0, "ebx"),
    (0x80000001, 0, "ecx"),
    (0x80000001, 0, "edx"),
    (0x80000007, 0, "edx"),
    (0x80000008, 0, "ebx"),
    (0x7, 1, "edx"),
];

/// This VM's setup.
fn here() -> Setup {
    Setup {
        ram: vec![(0, RAM)],
        cpus: 1,
        cpu_features: FEATURE_REGS
            .iter()
            .map(|&(leaf, subleaf, reg)| CpuFeatureWord {
                leaf,
                subleaf,
                reg: reg.to_owned(),
                bits: u32::MAX,
            })
            .collect(),
        disks: Vec::new(),
    }
}

/// The VM's memory and a scratch memfd for snapshot files, made once.
struct World {
    mem: GuestMemoryMmap,
    file: File,
    here: Setup,
}

fn world() -> &'static Mutex<World> {
    static W: OnceLock<Mutex<World>> = OnceLock::new();
    W.get_or_init(|| {
        // SAFETY: a NUL-terminated name, valid flags; the result is checked.
        let fd = unsafe { libc::memfd_create(c"vmm-fuzz-snapshot".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        Mutex::new(World {
            mem: memory::create_guest_memory(RAM).expect("guest memory"),
            // SAFETY: `fd` was just created and nothing else owns it.
            file: unsafe { File::from_raw_fd(fd) },
            here: here(),
        })
    })
}

fn one_line(e: &dyn std::error::Error) -> String {
    let s = error::chain(e);
    assert!(
        !s.is_empty() && !s.contains('\n'),
        "error not one line: {s:?}"
    );
    s
}

/// The byte ranges of `f` that hold data, from SEEK_DATA/SEEK_HOLE, below `end`.
fn data_ranges(f: &File, end: u64) -> Vec<(u64, u64)> {
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = 0i64;
    while (pos as u64) < end {
        // SAFETY: lseek on our own descriptor.
        let d = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if d < 0 || d as u64 >= end {
            break;
        }
        // SAFETY: as above.
        let h = unsafe { libc::lseek(fd, d, libc::SEEK_HOLE) };
        let h = if h < 0 { end } else { (h as u64).min(end) };
        out.push((d as u64, h));
        pos = h as i64;
    }
    out
}

/// The pages of guest memory that may hold data (the memfd's allocated pages).
fn touched_pages(mem: &GuestMemoryMmap) -> Vec<u64> {
    let r = mem.iter().next().expect("one region");
    let f = r.file_offset().expect("memfd-backed").file();
    let mut pages = Vec::new();
    for (d, h) in data_ranges(f, r.len()) {
        let mut p = d - d % PAGE as u64;
        while p < h {
            pages.push(p);
            p += PAGE as u64;
        }
    }
    pages
}

fn page_of(mem: &GuestMemoryMmap, gpa: u64) -> Vec<u8> {
    let mut b = vec![0u8; PAGE];
    mem.read_slice(&mut b, GuestAddress(gpa))
        .expect("page in RAM");
    b
}

/// How the records of a stream say its loading ends, replayed by the model.
enum Expected {
    /// At END, after this last STATE record: `Loaded::Complete`.
    Complete(Vec<u8>),
    /// At END, with no STATE record before it.
    EndWithoutState,
    /// At POSTCOPY and the STATE record right after it: `Loaded::Postcopy`.
    Postcopy(Vec<u8>),
    /// At POSTCOPY followed by another record.
    PostcopyWithoutState,
    /// At RESUME, the first record: a new stream does not take it.
    Resume,
    /// The reader or the loop refused a record (or the stream ended early).
    Refused,
}

impl std::fmt::Debug for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Expected::Complete(s) => write!(f, "Complete ({}-byte state)", s.len()),
            Expected::EndWithoutState => write!(f, "EndWithoutState"),
            Expected::Postcopy(s) => write!(f, "Postcopy ({}-byte state)", s.len()),
            Expected::PostcopyWithoutState => write!(f, "PostcopyWithoutState"),
            Expected::Resume => write!(f, "Resume"),
            Expected::Refused => write!(f, "Refused"),
        }
    }
}

/// How the loading ended, without the state's bytes.
fn ended(r: &Result<Loaded, LoadError>) -> String {
    match r {
        Ok(Loaded::Complete(s)) => format!("Complete ({}-byte state)", s.len()),
        Ok(Loaded::Postcopy(s)) => format!("Postcopy ({}-byte state)", s.len()),
        Err(e) => format!("error: {e}"),
    }
}

/// The errors of the loop itself, which a refused record never gives.
const LOOP_ORDER_ERRORS: [&str; 3] = [
    "the end without the state",
    "postcopy without the state right after",
    "a resume record in a new stream",
];

/// The end of `count` pages at `gpa`, asserted inside RAM: a record the loop applied lies
/// in guest memory.
fn applied_end(gpa: u64, count: u32, what: &str) -> u64 {
    let end = gpa.checked_add(u64::from(count) * PAGE as u64);
    assert!(
        end.is_some_and(|e| e <= RAM),
        "{what} of {count} pages at {gpa:#x} applied outside RAM"
    );
    end.unwrap_or(RAM)
}

/// Mode 0: a stream.
fn fuzz_stream(w: &World, bytes: &[u8]) {
    receive::discard_ram(&w.mem).expect("discard");
    let Ok(mut reader) = StreamReader::new(bytes).map_err(|e| one_line(&e)) else {
        return;
    };
    let mut steps = Vec::new();
    let result = receive::receive_ram(&mut reader, &w.here, &w.mem, |s| steps.push(s));
    if let Err(e) = &result {
        one_line(e);
    }
    if let Some(i) = steps.iter().position(|s| *s == Step::Accepted) {
        assert_eq!(i, 0, "pages before the setup was accepted: {steps:?}");
    }
    assert!(
        steps.first().is_none_or(|s| *s == Step::Accepted),
        "a step before the setup was accepted: {steps:?}"
    );
    assert!(
        steps.iter().filter(|s| **s == Step::Accepted).count() <= 1,
        "setup accepted twice"
    );

    // The model: the same bytes read again, each applied step's record replayed into a map
    // of pages (None: zeros; a page not in the map was never written since the setup, which
    // discarded all of RAM: zeros too).
    let mut model: BTreeMap<u64, Option<Vec<u8>>> = BTreeMap::new();
    let mut again = StreamReader::new(bytes).expect("read once, reads again");
    let mut applied = steps.iter();
    let mut last_state = None;
    let mut first = true;
    let mut expected = Expected::Refused;
    while let Ok(rec) = again.next() {
        let step = match &rec {
            Record::State(json) => {
                last_state = Some(json.clone());
                continue;
            }
            Record::End => {
                expected = match last_state.take() {
                    Some(s) => Expected::Complete(s),
                    None => Expected::EndWithoutState,
                };
                break;
            }
            Record::Postcopy => {
                // Loading stops at the record after POSTCOPY, whatever it is.
                expected = match again.next() {
                    Ok(Record::State(json)) => Expected::Postcopy(json),
                    Ok(_) => Expected::PostcopyWithoutState,
                    Err(_) => Expected::Refused,
                };
                break;
            }
            Record::Resume => {
                assert!(first, "a RESUME record read after the first");
                expected = Expected::Resume;
                break;
            }
            Record::Setup(_)
            | Record::Pages { .. }
            | Record::Zeros { .. }
            | Record::Discard { .. } => match applied.next() {
                Some(s) => *s,
                None => break, // the record the loop refused
            },
        };
        first = false;
        match (rec, step) {
            (Record::Setup(_), Step::Accepted) => model.clear(),
            (Record::Pages { gpa, count }, Step::Pages(n)) => {
                assert_eq!(count, n);
                applied_end(gpa, count, "PAGES");
                assert_eq!(
                    again.data.len(),
                    count as usize * PAGE,
                    "a short PAGES record"
                );
                for (i, p) in again.data.chunks(PAGE).enumerate() {
                    model.insert(gpa + (i * PAGE) as u64, Some(p.to_vec()));
                }
            }
            (Record::Zeros { gpa, count }, Step::Zeros(n)) => {
                assert_eq!(count, n);
                applied_end(gpa, count, "ZEROS");
                for i in 0..u64::from(count) {
                    model.insert(gpa + i * PAGE as u64, None);
                }
            }
            (Record::Discard { gpa, count }, Step::Discard { gpa: g, count: n }) => {
                assert_eq!((gpa, count), (g, n), "the step is not its record's");
                let end = applied_end(gpa, count, "DISCARD");
                // The discarded pages are zeros now: those the map holds become None, the
                // others are not in it (zeros already), so a DISCARD of all of RAM costs
                // what the map holds, not an entry per page.
                for (_, page) in model.range_mut(gpa..end) {
                    *page = None;
                }
            }
            (r, s) => panic!("step {s:?} for record {r:?}"),
        }
    }
    assert!(applied.next().is_none(), "more steps than records");
    match (&result, &expected) {
        (Ok(Loaded::Complete(state)), Expected::Complete(want)) => {
            assert!(state == want, "not the last state record");
            fuzz_json(state);
        }
        (Ok(Loaded::Postcopy(state)), Expected::Postcopy(want)) => {
            assert!(state == want, "not the state record right after POSTCOPY");
            fuzz_json(state);
        }
        (Err(LoadError::Stream(StreamError::Order(why))), _) if LOOP_ORDER_ERRORS.contains(why) => {
            let want = match expected {
                Expected::EndWithoutState => LOOP_ORDER_ERRORS[0],
                Expected::PostcopyWithoutState => LOOP_ORDER_ERRORS[1],
                Expected::Resume => LOOP_ORDER_ERRORS[2],
                _ => panic!("the load ended with {why:?}, the records say {expected:?}"),
            };
            assert_eq!(*why, want, "the records say {expected:?}");
            if matches!(expected, Expected::Resume) {
                assert!(steps.is_empty(), "a resumed stream applied {steps:?}");
            }
        }
        (Err(_), Expected::Refused) => {}
        (r, e) => panic!("the load ended with {}, the records say {e:?}", ended(r)),
    }
    // Memory is the model: its pages as the records left them, every other page zeros.
    for (&gpa, page) in &model {
        let got = page_of(&w.mem, gpa);
        match page {
            Some(p) => assert!(got == *p, "page {gpa:#x} is not its last copy"),
            None => assert!(
                got.iter().all(|&b| b == 0),
                "zeroed or discarded page {gpa:#x} is not zeros"
            ),
        }
    }
    for gpa in touched_pages(&w.mem) {
        if !model.contains_key(&gpa) {
            let got = page_of(&w.mem, gpa);
            assert!(
                got.iter().all(|&b| b == 0),
                "page {gpa:#x} written by no record"
            );
        }
    }
}

/// Mode 1: a snapshot file made of segments.
fn fuzz_file(w: &World, mut bytes: &[u8]) {
    let f = &w.file;
    f.set_len(0).expect("truncate");
    let mut end = 0u64;
    while bytes.len() >= 8 {
        let gap = u64::from(u32::from_le_bytes(bytes[0..4].try_into().unwrap()));
        let len = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
        bytes = &bytes[8..];
        let seg = &bytes[..len.min(bytes.len())];
        bytes = &bytes[seg.len()..];
        let at = end + gap;
        if at + seg.len() as u64 > MAX_FILE {
            break;
        }
        f.write_all_at(seg, at).expect("write segment");
        end = at + seg.len() as u64;
    }
    f.set_len(end).expect("size");
    receive::discard_ram(&w.mem).expect("discard");

    let layout = match receive::open_snapshot(f, &w.here, &w.mem) {
        Ok(l) => l,
        Err(e) => {
            one_line(&e);
            return;
        }
    };
    assert!(layout.setup_len <= MAX_JSON && layout.state_len <= u64::from(MAX_JSON));
    assert!(FILE_HEADER as u64 + u64::from(layout.setup_len) <= layout.ram_offset);
    assert_eq!(layout.ram_offset % PAGE as u64, 0);
    assert!(layout.ram_offset + layout.ram_len <= layout.state_offset);
    assert!(layout.state_offset + layout.state_len <= end);
    assert_eq!(layout.ram_len, RAM);

    match receive::load_file_ram(f, &layout, &w.mem) {
        Ok(loaded) => assert!(loaded <= RAM),
        Err(e) => {
            one_line(&e);
            return;
        }
    }
    // Every page of memory is the file's: the pages the file holds, and the pages memory
    // holds (the rest are zeros on both sides).
    let mut pages: Vec<u64> = data_ranges(f, layout.ram_offset + RAM)
        .into_iter()
        .filter(|&(_, h)| h > layout.ram_offset)
        .flat_map(|(d, h)| {
            let d = d.max(layout.ram_offset) - layout.ram_offset;
            let h = h - layout.ram_offset;
            (d - d % PAGE as u64..h).step_by(PAGE)
        })
        .collect();
    pages.extend(touched_pages(&w.mem));
    pages.sort_unstable();
    pages.dedup();
    for gpa in pages {
        let mut want = vec![0u8; PAGE];
        f.read_exact_at(&mut want, layout.ram_offset + gpa)
            .expect("RAM section inside the file");
        assert!(
            page_of(&w.mem, gpa) == want,
            "page {gpa:#x} differs from the file's"
        );
    }
    match layout.state(f) {
        Ok(json) => fuzz_json(&json),
        Err(e) => panic!("state inside the file does not read: {e}"),
    }
}

/// Mode 2 (and every state a stream or file loads): the JSON records.
fn fuzz_json(json: &[u8]) {
    match receive::check_setup(&here(), json) {
        Ok(source) => {
            let again = serde_json::to_vec(&source).expect("print setup");
            let back: Setup = serde_json::from_slice(&again).expect("setup reads back");
            assert_eq!(back, source);
            assert_eq!(source.accept(&source), Ok(()), "a setup refuses itself");
        }
        Err(e) => {
            one_line(&e);
        }
    }
    if let Ok(s) = serde_json::from_slice::<VmState>(json) {
        let a = serde_json::to_string(&s).expect("print state");
        let back: VmState = serde_json::from_str(&a).expect("state reads back");
        let b = serde_json::to_string(&back).expect("print state again");
        assert_eq!(a, b, "the state changed through JSON");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let w = world().lock().unwrap_or_else(|e| e.into_inner());
    match mode % 3 {
        0 => fuzz_stream(&w, rest),
        1 => fuzz_file(&w, rest),
        _ => fuzz_json(rest),
    }
});
