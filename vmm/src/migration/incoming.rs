// SPDX-License-Identifier: Apache-2.0
//! The destination's `migration` thread: waits for the source, checks its setup, loads
//! guest RAM, and hands the state to the main loop; or restores a snapshot file.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::channel;
use std::sync::Arc;

use devices::GuestMemoryMmap;
use qapi::types::MigrationStatus;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::state::Setup;
use super::stream::{FileLayout, Record, StreamError, StreamReader, PAGE};
use super::uri::Incoming as Endpoint;
use super::{Link, MigrationError, Request, Shared};

/// What the thread needs, gathered on the main loop.
pub struct Incoming {
    /// The listening socket, ready channel or snapshot file.
    pub endpoint: Endpoint,
    /// This VM's setup, which the source's must match.
    pub setup: Setup,
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// Shared with the main loop.
    pub shared: Arc<Shared>,
    /// To the main loop.
    pub link: Link,
}

impl Incoming {
    /// Receives the migration and reports how it ended.
    pub fn run(self) {
        let link = self.link.clone();
        let result = self.receive();
        link.send(Request::IncomingFinished(
            result.map_err(|e| crate::error::chain(&e)),
        ));
    }

    fn receive(self) -> Result<(), MigrationError> {
        match self.endpoint {
            Endpoint::File(ref f, _) => {
                let f = f.try_clone().map_err(MigrationError::Receive)?;
                self.restore_file(&f)
            }
            _ => {
                let Incoming {
                    endpoint,
                    setup,
                    mem,
                    shared,
                    link,
                } = self;
                shared.set_fd(endpoint.raw());
                let channel = endpoint.accept()?;
                shared.set_fd(channel.raw);
                let duplex = channel.duplex;
                // An `exec:` command lives until the stream is read: the launcher kills one
                // that vmm lets go of.
                let _command = channel.child;
                let mut reader = StreamReader::new(channel.stream)?;
                let result = receive_stream(&mut reader, &setup, &mem, &shared, &link);
                if duplex {
                    let line = match &result {
                        Ok(()) => "OK\n".to_owned(),
                        Err(e) => format!("ERR {}\n", crate::error::chain(e)),
                    };
                    let out = reader.get_mut();
                    let _ = out.write_all(line.as_bytes());
                    let _ = out.flush();
                }
                result
            }
        }
    }

    fn restore_file(self, f: &File) -> Result<(), MigrationError> {
        let layout = FileLayout::read(f)?;
        let setup = layout.setup(f).map_err(MigrationError::Receive)?;
        check_setup(&self.setup, &setup)?;
        let total = self.setup.ram.iter().map(|r| r.1).sum();
        self.shared.update(|p| p.total = total);
        self.link.send(Request::Status(MigrationStatus::Active));
        let ram: u64 = self.mem.iter().map(|r| r.len()).sum();
        if layout.ram_len != ram {
            return Err(MigrationError::Stream(StreamError::Layout(
                "its RAM section is not this VM's RAM size",
            )));
        }
        if !crate::memory::is_own_memory(&self.mem) {
            // RAM is this snapshot, mapped privately: what building the VM wrote goes, and
            // the guest reads the rest from the file as it touches it.
            crate::memory::revert_to_snapshot(&self.mem)?;
            let state = layout.state(f).map_err(MigrationError::Receive)?;
            return load_state(&self.link, state);
        }
        discard_ram(&self.mem)?;
        let mut file_off = 0u64;
        let mut loaded = 0u64;
        for r in self.mem.iter() {
            let (start, len) = (r.start_addr(), r.len());
            let mut pos = 0u64;
            while pos < len {
                let base = layout.ram_offset + file_off;
                let (data, hole) = data_range(f, base + pos, base + len);
                let (data, hole) = (data - base, hole - base);
                if data >= hole {
                    break;
                }
                let mut buf = vec![0u8; (hole - data).min(1 << 20) as usize];
                let mut at = 0u64;
                while at < hole - data {
                    let n = (hole - data - at).min(buf.len() as u64) as usize;
                    let src = layout.ram_offset + file_off + data + at;
                    f.read_exact_at(&mut buf[..n], src)
                        .map_err(MigrationError::Receive)?;
                    let gpa = start.unchecked_add(data + at);
                    self.mem
                        .write_slice(&buf[..n], gpa)
                        .map_err(|_| MigrationError::Memory(gpa.0))?;
                    at += n as u64;
                }
                loaded += hole - data;
                pos = hole;
            }
            file_off += len;
        }
        self.shared.update(|p| {
            p.transferred = loaded;
            p.normal = loaded / PAGE as u64;
        });
        let state = layout.state(f).map_err(MigrationError::Receive)?;
        load_state(&self.link, state)
    }
}

/// Refuses a source whose setup this VM cannot take.
fn check_setup(here: &Setup, json: &[u8]) -> Result<(), MigrationError> {
    let source: Setup =
        serde_json::from_slice(json).map_err(|e| MigrationError::Decode("setup", e.to_string()))?;
    here.accept(&source).map_err(MigrationError::Mismatch)
}

fn receive_stream<R: std::io::Read>(
    reader: &mut StreamReader<R>,
    setup: &Setup,
    mem: &GuestMemoryMmap,
    shared: &Shared,
    link: &Link,
) -> Result<(), MigrationError> {
    let mut state = None;
    loop {
        match reader.next()? {
            Record::Setup(json) => {
                check_setup(setup, &json)?;
                shared.update(|p| p.total = setup.ram.iter().map(|r| r.1).sum());
                link.send(Request::Status(MigrationStatus::Active));
                // The VM was built with its boot images loaded; the source's RAM replaces
                // all of it, and a page the source never sends is zeros.
                discard_ram(mem)?;
            }
            Record::Pages { gpa, count } => {
                mem.write_slice(&reader.data, GuestAddress(gpa))
                    .map_err(|_| MigrationError::Memory(gpa))?;
                shared.update(|p| {
                    p.normal += u64::from(count);
                    p.transferred += reader.data.len() as u64;
                });
            }
            Record::Zeros { gpa, count } => {
                let len = u64::from(count) * PAGE as u64;
                let zeros = vec![0u8; len as usize];
                mem.write_slice(&zeros, GuestAddress(gpa))
                    .map_err(|_| MigrationError::Memory(gpa))?;
                shared.update(|p| p.duplicate += u64::from(count));
            }
            Record::State(json) => state = Some(json),
            Record::End => {
                let Some(json) = state else {
                    return Err(MigrationError::Stream(StreamError::Order(
                        "the end without the state",
                    )));
                };
                return load_state(link, json);
            }
        }
    }
}

/// The main loop loads the state (and takes the images); waits for its verdict.
fn load_state(link: &Link, json: Vec<u8>) -> Result<(), MigrationError> {
    let (tx, rx) = channel();
    link.send(Request::Restore(json, tx));
    rx.recv()
        .map_err(|_| MigrationError::MainLoop)?
        .map_err(MigrationError::State)
}

/// Makes all of guest RAM zeros again (holes in the memory file: the host frees it).
fn discard_ram(mem: &GuestMemoryMmap) -> Result<(), MigrationError> {
    if !crate::memory::is_own_memory(mem) {
        // Never punch a file that is not ours.
        return Err(MigrationError::State(
            "guest RAM is a snapshot's: it cannot take a migration".into(),
        ));
    }
    for r in mem.iter() {
        let Some(f) = r.file_offset() else {
            continue;
        };
        // SAFETY: fallocate on the VM's own memory file; the range is one region's, and
        // the mapping stays valid (a punched page reads as zeros).
        let rc = unsafe {
            libc::fallocate(
                f.file().as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                f.start() as i64,
                r.len() as i64,
            )
        };
        if rc != 0 {
            return Err(MigrationError::Receive(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The next data range of a snapshot at or after `from` (below `end`), page aligned.
fn data_range(f: &File, from: u64, end: u64) -> (u64, u64) {
    let fd = f.as_raw_fd();
    // SAFETY: lseek on our own descriptor; only its offset moves (reads use pread).
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
    let data = from.max(data as u64 - (data as u64 - from) % page);
    (data, (hole.next_multiple_of(page)).min(end))
}
