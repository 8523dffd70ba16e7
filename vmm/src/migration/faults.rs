// SPDX-License-Identifier: Apache-2.0
//! The destination's `uffd` thread: it reads guest RAM's missing-page faults (a vCPU, a
//! device's I/O thread, anything of this process that touches a page not yet arrived) and
//! gets each page filled: a page still missing is asked of the source on the return path
//! (postcopy) or read from the snapshot (lazy restore); any other page that faults was
//! never written (a zero page, which no source sends) and is filled with zeros here.
//!
//! It never fills a page twice: [`PageSet`] `missing` is cleared by whoever filled the page
//! (userfaultfd refuses a second fill of a present page anyway), and `claimed` lets the
//! snapshot's background reader and this thread agree on who reads a page.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::postcopy::{PageSet, Reply, PAGE};
use crate::uffd::{Fault, Uffd};

/// The return path's writing end: a duplicate of the stream's socket, none while the stream
/// is broken. Lines are written whole, under the lock.
#[derive(Debug, Default)]
pub struct ReturnPath {
    socket: Mutex<Option<OwnedFd>>,
}

impl ReturnPath {
    /// Writes to `socket` from now on (`None`: the stream broke).
    pub fn set(&self, socket: Option<OwnedFd>) {
        *self.socket.lock().unwrap_or_else(|e| e.into_inner()) = socket;
    }

    /// Sends one message.
    ///
    /// # Errors
    /// No stream, or the write failed.
    pub fn send(&self, r: &Reply) -> io::Result<()> {
        let guard = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = guard.as_ref() else {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "no stream"));
        };
        let line = r.line();
        let mut b = line.as_bytes();
        while !b.is_empty() {
            // SAFETY: send(2) of a live buffer on our socket; MSG_NOSIGNAL: a closed peer
            // gives EPIPE, not a signal.
            let n = unsafe {
                libc::send(
                    s.as_raw_fd(),
                    b.as_ptr().cast(),
                    b.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            b = &b[n as usize..];
        }
        Ok(())
    }
}

/// The threads of this process waiting on a missing page now, as the fault server last
/// saw them (one migration runs at a time). The vCPU code reads it so as not to kick, in a
/// loop, a vCPU that cannot stop before its page arrives.
static BLOCKED: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Whether thread `tid` waits on a missing page of guest RAM.
pub fn is_blocked(tid: i32) -> bool {
    BLOCKED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .binary_search(&tid)
        .is_ok()
}

/// Where missing pages come from.
#[derive(Debug)]
pub enum PageSource {
    /// The source, asked on the return path.
    Remote(Arc<ReturnPath>),
    /// A snapshot: guest RAM's bytes at `offset` of the file (regions back to back).
    File(Arc<File>, u64),
}

/// Guest RAM as the thread sees it: (guest address, length, host address).
pub type HostRegions = Vec<(u64, u64, u64)>;

/// The host address of a guest page, and back.
pub fn host_of(regions: &HostRegions, gpa: u64) -> Option<u64> {
    regions
        .iter()
        .find(|r| gpa >= r.0 && gpa < r.0 + r.1)
        .map(|r| r.2 + (gpa - r.0))
}

fn gpa_of(regions: &HostRegions, host: u64) -> Option<u64> {
    regions
        .iter()
        .find(|r| host >= r.2 && host < r.2 + r.1)
        .map(|r| r.0 + (host - r.2))
}

/// The snapshot file's offset of a guest page (regions back to back from `base`).
pub fn file_offset(regions: &HostRegions, base: u64, gpa: u64) -> Option<u64> {
    let mut off = base;
    for r in regions {
        if gpa >= r.0 && gpa < r.0 + r.1 {
            return Some(off + (gpa - r.0));
        }
        off += r.1;
    }
    None
}

/// What the thread and the migration thread share.
#[derive(Debug)]
pub struct Faults {
    /// The descriptor.
    pub uffd: Arc<Uffd>,
    /// Guest RAM.
    pub regions: HostRegions,
    /// Pages not filled yet.
    pub missing: Arc<PageSet>,
    /// Pages whose reading from a snapshot someone took on.
    pub claimed: PageSet,
    /// Where pages come from.
    pub source: PageSource,
    /// Written to end the thread.
    pub stop: EventFd,
    /// Written after a resume: ask again for what is still waited on.
    pub poke: EventFd,
    /// Set with `poke` after a resume.
    pub resend: AtomicBool,
    /// Pages asked for.
    pub requests: AtomicU64,
    /// Pages filled from a snapshot so far, by either thread (counted before they leave
    /// `missing`: once nothing is missing, the count is final).
    pub filled: AtomicU64,
}

impl Faults {
    /// Reads the missing pages from `gpa` on (as many as `buf` holds, up to the first page
    /// that is not missing or that someone else took) from the snapshot and fills them:
    /// how many.
    ///
    /// # Errors
    /// The file cannot be read or the pages cannot be filled.
    pub fn fill_from_file(&self, gpa: u64, buf: &mut [u8]) -> io::Result<u64> {
        let PageSource::File(f, base) = &self.source else {
            return Ok(0);
        };
        let (Some(host), Some(off)) = (
            host_of(&self.regions, gpa),
            file_offset(&self.regions, *base, gpa),
        ) else {
            return Ok(0);
        };
        let most = (buf.len() as u64) / PAGE;
        let page = |k: u64| gpa + k * PAGE;
        let mut n = 0;
        while n < most && self.missing.contains(page(n)) && self.claimed.insert(page(n)) {
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        let len = (n * PAGE) as usize;
        f.read_exact_at(&mut buf[..len], off)?;
        self.uffd.copy(host, &buf[..len])?;
        self.filled.fetch_add(n, Ordering::AcqRel);
        for k in 0..n {
            self.missing.remove(page(k));
        }
        Ok(n)
    }

    /// Runs the thread until `stop` is written or the descriptor fails.
    pub fn serve(&self) {
        let mut faults = Vec::new();
        // Page, faulting thread.
        let mut waiting: Vec<(u64, i32)> = Vec::new();
        let mut buf = vec![0u8; PAGE as usize];
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.uffd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.poke.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: three valid pollfds; a timeout so that filled pages leave `waiting`.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, 50) };
            if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return;
            }
            if fds[1].revents != 0 {
                BLOCKED.lock().unwrap_or_else(|e| e.into_inner()).clear();
                return;
            }
            if fds[2].revents != 0 {
                let _ = self.poke.read();
            }
            faults.clear();
            if fds[0].revents != 0 && self.uffd.read_faults(&mut faults).is_err() {
                return;
            }
            for f in &faults {
                self.on_fault(f, &mut waiting, &mut buf);
            }
            self.settle(&mut waiting);
        }
    }

    fn on_fault(&self, f: &Fault, waiting: &mut Vec<(u64, i32)>, buf: &mut [u8]) {
        let host = f.address & !(PAGE - 1);
        let Some(gpa) = gpa_of(&self.regions, host) else {
            return;
        };
        if !self.missing.contains(gpa) {
            // Never written on the source (or filled meanwhile: then only a wake).
            let _ = self.uffd.zero(host, PAGE);
            return;
        }
        match &self.source {
            PageSource::Remote(path) => {
                waiting.push((gpa, f.thread));
                if self.claimed.insert(gpa) {
                    self.requests.fetch_add(1, Ordering::Relaxed);
                    // A broken stream: asked again after the resume.
                    let _ = path.send(&Reply::Req(gpa, 1));
                }
            }
            PageSource::File(..) => {
                if let Ok(1) = self.fill_from_file(gpa, buf) {
                    self.requests.fetch_add(1, Ordering::Relaxed);
                } else if self.missing.contains(gpa) {
                    // The background reader has it; its fill wakes the thread.
                    waiting.push((gpa, f.thread));
                }
            }
        }
    }

    /// Drops the waits whose page arrived, asks again after a resume, and publishes who
    /// still waits.
    fn settle(&self, waiting: &mut Vec<(u64, i32)>) {
        let resend = self.resend.swap(false, Ordering::AcqRel);
        waiting.retain(|&(gpa, _)| self.missing.contains(gpa));
        if resend {
            if let PageSource::Remote(path) = &self.source {
                let mut asked = Vec::new();
                for &(gpa, _) in waiting.iter() {
                    if !asked.contains(&gpa) {
                        asked.push(gpa);
                        let _ = path.send(&Reply::Req(gpa, 1));
                    }
                }
            }
        }
        let mut tids: Vec<i32> = waiting.iter().map(|w| w.1).collect();
        tids.sort_unstable();
        tids.dedup();
        *BLOCKED.lock().unwrap_or_else(|e| e.into_inner()) = tids;
    }
}
