// SPDX-License-Identifier: Apache-2.0
//! The destination's `migration` thread: waits for the source, checks its setup, loads
//! guest RAM (through [`receive`]), and hands the state to the main loop; or restores a
//! snapshot file.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

use devices::GuestMemoryMmap;
use qapi::types::MigrationStatus;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::faults::{host_of, Faults, HostRegions, PageSource, ReturnPath};
use super::postcopy::{PageSet, Reply, MAX_LINE_PAGES};
use super::receive::{self, Loaded, Step};
use super::state::Setup;
use super::stream::{data_ranges, FileLayout, Record, StreamError, StreamReader, PAGE};
use super::uri::Incoming as Endpoint;
use super::{Job, Link, MigrationError, Request, Resume, Shared};
use crate::uffd::Uffd;

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
    /// The `uffd` thread, which serves faults in postcopy.
    pub uffd_jobs: Option<Sender<Job>>,
    /// A snapshot is restored through userfaultfd (`restore=uffd`).
    pub lazy: bool,
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
                    uffd_jobs,
                    lazy: _,
                } = self;
                shared.set_fd(endpoint.raw());
                let channel = endpoint.accept()?;
                shared.set_fd(channel.raw);
                let duplex = channel.duplex;
                let raw = channel.raw;
                // An `exec:` command lives until the stream is read: the launcher kills one
                // that vmm lets go of.
                let _command = channel.child;
                let mut reader = StreamReader::new(channel.stream)?;
                let missing = Arc::new(PageSet::new(&setup.ram));
                let result = receive_stream(&mut reader, &setup, &mem, &shared, &link, &missing);
                let result = match result {
                    Ok(Loaded::Postcopy(state)) if duplex => {
                        let ret = Arc::new(ReturnPath::default());
                        // SAFETY: the stream's socket, open while `reader` is.
                        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
                        ret.set(super::uri::socket_dup(fd));
                        let p = Postcopy {
                            mem: &mem,
                            shared: &shared,
                            link: &link,
                            missing,
                            ret,
                        };
                        return p.run(reader, state, uffd_jobs);
                    }
                    Ok(Loaded::Postcopy(_)) => Err(MigrationError::State(
                        "Postcopy needs a two-way channel".into(),
                    )),
                    Ok(Loaded::Complete(state)) => load_state(&link, state, false),
                    Err(e) => Err(e),
                };
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
        let layout = receive::open_snapshot(f, &self.setup, &self.mem)?;
        let total = self.setup.ram.iter().map(|r| r.1).sum();
        self.shared.update(|p| p.total = total);
        self.link.send(Request::Status(MigrationStatus::Active));
        if self.lazy {
            let f = f.try_clone().map_err(MigrationError::Receive)?;
            return self.restore_lazy(f, &layout);
        }
        if !crate::memory::is_own_memory(&self.mem) {
            // RAM is this snapshot, mapped privately: what building the VM wrote goes, and
            // the guest reads the rest from the file as it touches it.
            crate::memory::revert_to_snapshot(&self.mem)?;
            let state = layout.state(f).map_err(MigrationError::Receive)?;
            return load_state(&self.link, state, false);
        }
        let loaded = receive::load_file_ram(f, &layout, &self.mem)?;
        self.shared.update(|p| {
            p.transferred = loaded;
            p.normal = loaded / PAGE as u64;
        });
        let state = layout.state(f).map_err(MigrationError::Receive)?;
        load_state(&self.link, state, false)
    }
}

impl Incoming {
    /// A restore through userfaultfd (Firecracker's UFFD handler's way, into this VM's own
    /// memory file): RAM is emptied, the snapshot's data pages become missing pages, the
    /// guest runs at once (`postcopy-active`); the `uffd` thread reads a page from the file
    /// when something touches it, this thread reads the rest in address order, and a page
    /// is filled once, by whoever claimed it.
    fn restore_lazy(self, f: File, layout: &FileLayout) -> Result<(), MigrationError> {
        receive::discard_ram(&self.mem)?;
        let regions = host_regions(&self.mem);
        let ram: Vec<(u64, u64)> = regions.iter().map(|r| (r.0, r.1)).collect();
        let missing = Arc::new(PageSet::new(&ram));
        let mut base = layout.ram_offset;
        for &(gpa, len, _) in &regions {
            // The file's holes are zero pages: not missing (a fault there is zeroed).
            for (data, hole) in data_ranges(Some(f.as_raw_fd()), base, base + len) {
                missing.insert_range(gpa + data - base, (hole - data).div_ceil(PAGE as u64));
            }
            base += len;
        }
        let f = Arc::new(f);
        let faults = start_faults(
            &regions,
            missing.clone(),
            PageSource::File(f.clone(), layout.ram_offset),
            self.uffd_jobs.clone(),
        )?;
        let _stop = StopOnDrop(faults.clone());
        let state = layout.state(&f).map_err(MigrationError::Receive)?;
        load_state(&self.link, state, true)?;
        const RUN: u64 = 64;
        let mut buf = vec![0u8; RUN as usize * PAGE];
        let mut cursor = 0u64;
        // Pages read from the file, by this thread or by the uffd thread for a fault, that
        // the progress counts already.
        let mut counted = 0;
        let publish = |counted: &mut u64| {
            let filled = faults.filled.load(Ordering::Acquire);
            let n = filled - *counted;
            let len = n * PAGE as u64;
            *counted = filled;
            let requests = faults.requests.load(Ordering::Relaxed);
            self.shared.update(|p| {
                p.transferred += len;
                p.normal += n;
                p.postcopy_bytes += len;
                p.postcopy_requests = requests;
            });
        };
        while let Some((i, gpa)) = missing.next_from(cursor) {
            if self.shared.cancel.load(Ordering::Acquire) {
                return Err(MigrationError::Cancelled);
            }
            let n = faults
                .fill_from_file(gpa, &mut buf)
                .map_err(MigrationError::Fill)?;
            if n == 0 {
                // The fault server is filling it.
                cursor = i + 1;
                std::thread::yield_now();
                continue;
            }
            publish(&mut counted);
            cursor = i + n;
        }
        publish(&mut counted);
        for r in &regions {
            let _ = faults.uffd.unregister(r.2, r.1);
        }
        Ok(())
    }
}

/// Guest RAM's regions: (guest address, length, host address).
fn host_regions(mem: &GuestMemoryMmap) -> HostRegions {
    mem.iter()
        .map(|r| (r.start_addr().0, r.len(), r.as_ptr() as u64))
        .collect()
}

/// Registers guest RAM with a new userfaultfd and starts the fault server on the `uffd`
/// thread.
fn start_faults(
    regions: &HostRegions,
    missing: Arc<PageSet>,
    source: PageSource,
    jobs: Option<Sender<Job>>,
) -> Result<Arc<Faults>, MigrationError> {
    let uffd = Uffd::new()?;
    for r in regions {
        uffd.register(r.2, r.1)?;
    }
    let ram: Vec<(u64, u64)> = regions.iter().map(|r| (r.0, r.1)).collect();
    let event = || EventFd::new(EFD_NONBLOCK).map_err(MigrationError::Receive);
    let faults = Arc::new(Faults {
        uffd: Arc::new(uffd),
        regions: regions.clone(),
        missing,
        claimed: PageSet::new(&ram),
        source,
        stop: event()?,
        poke: event()?,
        resend: AtomicBool::new(false),
        requests: AtomicU64::new(0),
        filled: AtomicU64::new(0),
    });
    let server = faults.clone();
    let sent = jobs.map(|j| j.send(Box::new(move || server.serve())));
    if !matches!(sent, Some(Ok(()))) {
        return Err(MigrationError::State("the uffd thread has ended".into()));
    }
    Ok(faults)
}

fn receive_stream<R: std::io::Read>(
    reader: &mut StreamReader<R>,
    setup: &Setup,
    mem: &GuestMemoryMmap,
    shared: &Shared,
    link: &Link,
    missing: &PageSet,
) -> Result<Loaded, MigrationError> {
    let total = setup.ram.iter().map(|r| r.1).sum();
    let loaded = receive::receive_ram(reader, setup, mem, |step| match step {
        Step::Accepted => {
            shared.update(|p| p.total = total);
            link.send(Request::Status(MigrationStatus::Active));
        }
        Step::Pages(n) => shared.update(|p| {
            p.normal += u64::from(n);
            p.transferred += u64::from(n) * PAGE as u64;
        }),
        Step::Zeros(n) => shared.update(|p| p.duplicate += u64::from(n)),
        Step::Discard { gpa, count } => missing.insert_range(gpa, u64::from(count)),
    })?;
    Ok(loaded)
}

/// The destination's postcopy: guest RAM registered with userfaultfd, the `uffd` thread
/// serving faults, the guest running, the missing pages filled as they come; a broken
/// stream pauses until `migrate-recover` (the guest runs on meanwhile, a vCPU that touches a
/// missing page waits).
struct Postcopy<'a> {
    mem: &'a GuestMemoryMmap,
    shared: &'a Arc<Shared>,
    link: &'a Link,
    missing: Arc<PageSet>,
    ret: Arc<ReturnPath>,
}

/// Ends the fault server when the migration ends, however it ends.
struct StopOnDrop(Arc<Faults>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.stop.write(1);
    }
}

impl Postcopy<'_> {
    fn run(
        self,
        reader: StreamReader<Box<dyn super::uri::ReadWrite>>,
        state: Vec<u8>,
        jobs: Option<Sender<Job>>,
    ) -> Result<(), MigrationError> {
        let regions = host_regions(self.mem);
        let started = start_faults(
            &regions,
            self.missing.clone(),
            PageSource::Remote(self.ret.clone()),
            jobs,
        );
        let faults = match started {
            Ok(f) => f,
            Err(e) => {
                let _ = self.ret.send(&Reply::Err(crate::error::chain(&e)));
                return Err(e);
            }
        };
        let _stop = StopOnDrop(faults.clone());
        if let Err(e) = load_state(self.link, state, true) {
            let _ = self.ret.send(&Reply::Err(crate::error::chain(&e)));
            return Err(e);
        }
        // A lost RUN is no loss: the source learns it from the resume.
        let _ = self.ret.send(&Reply::Run);
        let mut reader = reader;
        loop {
            match self.fill(&mut reader, &faults) {
                Ok(()) => break,
                Err(_) if self.shared.cancel.load(Ordering::Acquire) => {
                    return Err(MigrationError::Cancelled)
                }
                Err(e) => reader = self.paused(&faults, &e)?,
            }
        }
        let _ = self.ret.send(&Reply::Ok);
        for r in &regions {
            let _ = faults.uffd.unregister(r.2, r.1);
        }
        Ok(())
    }

    /// Fills missing pages from the stream until its END (every page in).
    fn fill<R: Read>(
        &self,
        reader: &mut StreamReader<R>,
        faults: &Faults,
    ) -> Result<(), MigrationError> {
        loop {
            self.shared
                .update(|p| p.postcopy_requests = faults.requests.load(Ordering::Relaxed));
            match reader.next()? {
                Record::Pages { gpa, count } => {
                    let data = std::mem::take(&mut reader.data);
                    let r = self.fill_run(faults, gpa, count, Some(&data));
                    reader.data = data;
                    r?;
                }
                Record::Zeros { gpa, count } => self.fill_run(faults, gpa, count, None)?,
                Record::End => {
                    let left = self.missing.count();
                    if left > 0 {
                        return Err(MigrationError::Stream(StreamError::Order(
                            "the end of postcopy with pages still missing",
                        )));
                    }
                    return Ok(());
                }
                _ => {
                    return Err(MigrationError::Stream(StreamError::Order(
                        "a record postcopy does not take",
                    )))
                }
            }
        }
    }

    /// Fills the missing ones of `count` pages at `gpa` (with `data`, or zeros); a page
    /// that is not missing is left as it is.
    fn fill_run(
        &self,
        faults: &Faults,
        gpa: u64,
        count: u32,
        data: Option<&[u8]>,
    ) -> Result<(), MigrationError> {
        if !self.missing.contains_range(gpa, count) {
            return Err(MigrationError::Memory(gpa));
        }
        // Only this thread fills pages that are in `missing` (the fault server zero-fills
        // only pages that are not), so each run of missing ones is absent and goes at once.
        let mut filled = 0u64;
        let mut i = 0u64;
        while i < u64::from(count) {
            let page = |k: u64| gpa + k * PAGE as u64;
            if !self.missing.contains(page(i)) {
                i += 1;
                continue;
            }
            let mut n = 1;
            while i + n < u64::from(count) && self.missing.contains(page(i + n)) {
                n += 1;
            }
            let host = host_of(&faults.regions, page(i)).ok_or(MigrationError::Memory(page(i)))?;
            let len = (n as usize) * PAGE;
            match data {
                Some(d) => {
                    let at = (i as usize) * PAGE;
                    faults.uffd.copy(host, &d[at..at + len])
                }
                None => faults.uffd.zero(host, len as u64),
            }
            .map_err(MigrationError::Fill)?;
            for k in i..i + n {
                if self.missing.remove(page(k)) {
                    filled += 1;
                }
            }
            i += n;
        }
        let bytes = if data.is_some() {
            filled * PAGE as u64
        } else {
            0
        };
        self.shared.update(|p| {
            p.postcopy_bytes += bytes;
            p.transferred += bytes;
            if data.is_some() {
                p.normal += filled;
            } else {
                p.duplicate += filled;
            }
        });
        Ok(())
    }

    /// The stream broke: `postcopy-paused` until `migrate-recover`; then the source's
    /// resumed stream, once told which pages are still missing.
    fn paused(
        &self,
        faults: &Faults,
        why: &MigrationError,
    ) -> Result<StreamReader<Box<dyn super::uri::ReadWrite>>, MigrationError> {
        let mut why = crate::error::chain(why);
        loop {
            self.ret.set(None);
            self.shared.release();
            self.shared.update(|p| {
                p.error = Some(format!(
                    "Postcopy is paused ({why}): waiting for migrate-recover"
                ))
            });
            self.link
                .send(Request::Status(MigrationStatus::PostcopyPaused));
            let Some(Resume::Listen(uri)) = self.shared.wait_resume() else {
                return Err(MigrationError::Cancelled);
            };
            self.link
                .send(Request::Status(MigrationStatus::PostcopyRecover));
            match self.reconnect(&uri, faults) {
                Ok(reader) => {
                    self.shared.update(|p| p.error = None);
                    self.link
                        .send(Request::Status(MigrationStatus::PostcopyActive));
                    return Ok(reader);
                }
                Err(_) if self.shared.cancel.load(Ordering::Acquire) => {
                    return Err(MigrationError::Cancelled)
                }
                Err(e) => why = crate::error::chain(&e),
            }
        }
    }

    fn reconnect(
        &self,
        uri: &super::uri::MigrationUri,
        faults: &Faults,
    ) -> Result<StreamReader<Box<dyn super::uri::ReadWrite>>, MigrationError> {
        let endpoint = Endpoint::listen(uri, &|_| None)?;
        self.shared.set_fd(endpoint.raw());
        let channel = endpoint.accept()?;
        self.shared.set_fd(channel.raw);
        let raw = channel.raw;
        let mut reader = StreamReader::new(channel.stream)?;
        if reader.next()? != Record::Resume {
            return Err(MigrationError::Stream(StreamError::Order(
                "a resumed stream without its resume record",
            )));
        }
        // SAFETY: the new stream's socket, open while `reader` is.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        // The list first, whole, and only then the fault server's requests.
        let list = ReturnPath::default();
        list.set(super::uri::socket_dup(fd));
        for (gpa, count) in self.missing.runs(MAX_LINE_PAGES) {
            list.send(&Reply::Pending(gpa, count))
                .map_err(MigrationError::Send)?;
        }
        list.send(&Reply::Ready).map_err(MigrationError::Send)?;
        self.ret.set(super::uri::socket_dup(fd));
        // The fault server asks again for what vCPUs wait on.
        faults.resend.store(true, Ordering::Release);
        let _ = faults.poke.write(1);
        Ok(reader)
    }
}

/// The main loop loads the state (and takes the images), and with `postcopy` runs the guest
/// at once; waits for its verdict.
fn load_state(link: &Link, json: Vec<u8>, postcopy: bool) -> Result<(), MigrationError> {
    let (tx, rx) = channel();
    link.send(Request::Restore(json, postcopy, tx));
    rx.recv()
        .map_err(|_| MigrationError::MainLoop)?
        .map_err(MigrationError::State)
}
