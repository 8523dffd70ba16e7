// SPDX-License-Identifier: Apache-2.0
//! The virtio-blk request parser (`devices::virtio::block::request::parse`) and its execution
//! (`run`, `complete`) over guest memory and a split virtqueue built from the input, against a
//! real `block::Backend` on a temporary image, as the device's I/O thread runs them.
//!
//! Input: `[config] [heads] [n] n × head (u16 LE)`, then the descriptor table (16 bytes per
//! entry, `size` entries), then the bytes of guest memory from [`DATA`] on (headers, data,
//! indirect tables, discard segments). `config` picks the queue size (bits 0-2: 1 to 16), the offered
//! DISCARD/WRITE_ZEROES features and a read-only image. Guest memory is two regions with a
//! hole between them, so descriptors may straddle a hole or run past the end.
//!
//! Asserts, beyond not panicking:
//! - a chain is refused (the device breaks) exactly when it is cut short (its last descriptor
//!   still has NEXT: a loop, a `next` beyond the table, a bad or nested indirect table), its
//!   last descriptor is empty or device-readable, or it has fewer than 16 device-readable
//!   bytes before its first device-writable one;
//! - reads and writes are whole sectors covering exactly the chain's data part;
//! - a completed request's used length counts at most the chain's device-writable bytes, and
//!   its status byte reads back as OK, IOERR or UNSUPP;
//! - a successful read leaves the image's bytes in the guest buffers, a successful write
//!   leaves the guest's bytes in the image (when the buffers and the status byte do not
//!   overlap), and the image is never changed by a request that is not a write, write-zeroes
//!   or discard.

#![no_main]

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use block::{Admission, Aio, Backend, BackendConfig, Locking};
use devices::virtio::block::request::{complete, parse, run, Op, Outcome, RequestConfig};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};
use devices::GuestMemoryMmap;

/// Guest memory: `[0, LOW_END)`, a hole, then `[HIGH_START, HIGH_END)`.
const LOW_END: u64 = 0x4000;
const HIGH_START: u64 = 0x5000;
const HIGH_END: u64 = 0x9000;
/// The rings, in low memory.
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x200;
const USED: u64 = 0x400;
/// Where the input's free-form bytes start.
const DATA: u64 = 0x1000;
/// The image: 64 sectors.
const IMAGE_SIZE: u64 = 64 * 512;

struct Image {
    path: PathBuf,
    backend: Arc<Backend>,
}

fn image(read_only: bool) -> &'static Image {
    static RW: OnceLock<Image> = OnceLock::new();
    static RO: OnceLock<Image> = OnceLock::new();
    let cell = if read_only { &RO } else { &RW };
    cell.get_or_init(|| {
        let name = format!("vmm-fuzz-blk-{}-{read_only}.raw", std::process::id());
        let path = std::env::temp_dir().join(name);
        let pattern: Vec<u8> = (0..IMAGE_SIZE).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, pattern).expect("image");
        let mut config = BackendConfig::new("fuzz0", &path);
        config.read_only = read_only;
        config.aio = Aio::Threads;
        config.locking = Locking::Off;
        let backend = Arc::new(Backend::open(config).expect("backend"));
        Image { path, backend }
    })
}

fn image_bytes(img: &Image) -> Vec<u8> {
    std::fs::read(&img.path).expect("read image")
}

/// A descriptor of a chain as the parser sees it (zero-length ones left out).
#[derive(Clone, Copy, Debug)]
struct Seg {
    addr: u64,
    len: u64,
    writable: bool,
}

/// The byte range `[start, start + len)` of the chain's bytes, cut by segment.
fn sub_range(segs: &[Seg], mut start: u64, mut len: u64) -> Vec<Seg> {
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
        out.push(Seg {
            addr: s.addr.wrapping_add(start),
            len: n,
            writable: s.writable,
        });
        len -= n;
        start = 0;
    }
    out
}

fn overlaps(a: &Seg, b: &Seg) -> bool {
    let end = |s: &Seg| u128::from(s.addr) + u128::from(s.len);
    u128::from(a.addr) < end(b) && u128::from(b.addr) < end(a)
}

/// The guest bytes of `segs`, if all are in guest memory.
fn gather(mem: &GuestMemoryMmap, segs: &[Seg]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for s in segs {
        let mut buf = vec![0u8; usize::try_from(s.len).ok()?];
        mem.read_slice(&mut buf, GuestAddress(s.addr)).ok()?;
        out.extend_from_slice(&buf);
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let [config, heads, rest @ ..] = data else {
        return;
    };
    let size = 1u16 << ((config & 7) % 5);
    let cfg = RequestConfig {
        discard: config & 0x08 != 0,
        write_zeroes: config & 0x10 != 0,
    };
    let img = image(config & 0x20 != 0);
    let n = usize::from(*heads % (2 * size as u8 + 1));
    let (head_bytes, rest) = rest.split_at(rest.len().min(2 * n));
    let table_len = 16 * usize::from(size);
    let (table, rest) = rest.split_at(rest.len().min(table_len));

    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), LOW_END as usize),
        (GuestAddress(HIGH_START), (HIGH_END - HIGH_START) as usize),
    ])
    .expect("guest memory");
    mem.write_slice(table, GuestAddress(DESC)).expect("table");
    let low = rest.len().min((LOW_END - DATA) as usize);
    mem.write_slice(&rest[..low], GuestAddress(DATA))
        .expect("data");
    let high = (rest.len() - low).min((HIGH_END - HIGH_START) as usize);
    mem.write_slice(&rest[low..low + high], GuestAddress(HIGH_START))
        .expect("data");
    let heads: Vec<u16> = head_bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    for (i, h) in heads.iter().enumerate() {
        let slot = AVAIL + 4 + 2 * (i as u64 % u64::from(size));
        mem.write_obj(*h, GuestAddress(slot)).expect("avail");
    }
    mem.write_obj(heads.len() as u16, GuestAddress(AVAIL + 2))
        .expect("avail idx");

    let mut queue = Queue::new(16).expect("queue");
    queue.set_size(size);
    queue.set_desc_table_address(Some(DESC as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    queue.set_used_ring_address(Some(USED as u32), Some(0));
    queue.set_ready(true);
    assert!(queue.is_valid(&mem), "the rings fit");

    let mem = Arc::new(mem);
    let backend = &img.backend;
    let mut chains = Vec::new();
    if let Ok(iter) = queue.iter(Arc::clone(&mem)) {
        chains.extend(iter);
    }
    for chain in chains {
        let head = chain.head_index();
        let segs: Vec<Seg> = chain
            .clone()
            .filter(|d| d.len() > 0)
            .map(|d| Seg {
                addr: d.addr().0,
                len: u64::from(d.len()),
                writable: d.is_write_only(),
            })
            .collect();
        let total: u64 = segs.iter().map(|s| s.len).sum();
        let prefix: u64 = segs.iter().take_while(|s| !s.writable).map(|s| s.len).sum();
        let writable: u64 = segs.iter().filter(|s| s.writable).map(|s| s.len).sum();
        // The chain as virtio-queue yields it: cut short if its last descriptor still says
        // "next" (a loop, a next beyond the table, a bad indirect table, ...); the status
        // descriptor is the last one, empty or not.
        let last = chain.clone().last();
        let cut = last.is_some_and(|d| d.has_next());
        let status_ok = last.is_some_and(|d| d.len() > 0 && d.is_write_only());
        let well_formed = !cut && status_ok && prefix >= 16 && total > 16;
        let before = image_bytes(img);

        let parsed = match parse(chain, &mem, backend, cfg) {
            Ok(p) => p,
            Err(e) => {
                // Refused for its shape, or for a header or status outside guest memory.
                let outside = matches!(
                    e,
                    devices::virtio::block::request::ChainError::Memory
                        | devices::virtio::block::request::ChainError::TooLong
                );
                assert!(
                    !well_formed || outside,
                    "well-formed chain refused: {e} {segs:?}"
                );
                continue;
            }
        };
        assert!(well_formed, "malformed chain accepted: {segs:?}");
        let status = segs.last().expect("a status descriptor");
        let status_addr = status.addr + (status.len - 1);
        let data_segs = sub_range(&segs, 16, total - 17);
        let data_len = total - 17;

        let modifies = matches!(
            parsed.op,
            Op::Write { .. } | Op::WriteZeroes(_) | Op::Discard(_)
        );
        if let Op::Read { len, offset, .. } | Op::Write { len, offset, .. } = &parsed.op {
            assert_eq!(*len, data_len, "the data part is the request");
            assert_eq!(len % 512, 0, "whole sectors");
            assert_eq!(offset % 512, 0, "sector aligned");
        }
        let result = match parsed.op.kind() {
            None => {
                let Op::Immediate { status, written } = parsed.op else {
                    unreachable!("an operation without a kind is immediate");
                };
                assert!(written <= data_len.min(20), "{written} bytes written");
                complete(&parsed, &mem, Ok(status), written)
            }
            Some(kind) => match backend.admit(kind, parsed.op.ranges()) {
                Admission::Run(admitted) => {
                    run(&parsed, admitted.ticket(), &mem, backend).expect("nothing yanks here")
                }
                Admission::Done(_) | Admission::Wait => panic!("no yank, no fence"),
            },
        };
        let used = match result {
            Ok(Outcome::Done(used)) => used,
            Ok(Outcome::Park(_)) => panic!("the report policy never parks"),
            Err(e) => panic!("status byte checked while parsing, yet: {e}"),
        };
        assert!(
            u64::from(used) <= writable,
            "used {used} of {writable} writable bytes"
        );
        let s: u8 = mem.read_obj(GuestAddress(status_addr)).expect("status");
        assert!(s <= 2, "status {s}");
        let after = image_bytes(img);
        if !modifies {
            assert!(before == after, "the image changed under {:?}", parsed.op);
        }
        let status_seg = Seg {
            addr: status_addr,
            len: 1,
            writable: true,
        };
        let disjoint = data_segs.iter().enumerate().all(|(i, a)| {
            !overlaps(a, &status_seg) && data_segs[i + 1..].iter().all(|b| !overlaps(a, b))
        });
        if s == 0 && disjoint {
            if let Op::Read { offset, len, .. } | Op::Write { offset, len, .. } = &parsed.op {
                let guest = gather(&mem, &data_segs).expect("buffers in guest memory");
                let mut disk = vec![0u8; *len as usize];
                let file = std::fs::File::open(&img.path).expect("image");
                file.read_exact_at(&mut disk, *offset)
                    .expect("in the image");
                assert!(guest == disk, "data differ after {:?}", parsed.op);
            }
        }
        let _ = queue.add_used(&*mem, head, used);
    }
});
