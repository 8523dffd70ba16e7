// SPDX-License-Identifier: Apache-2.0
//! The destination's `migration` thread: waits for the source, checks its setup, loads
//! guest RAM (through [`receive`]), and hands the state to the main loop; or restores a
//! snapshot file.

use std::fs::File;
use std::io::Write;
use std::sync::mpsc::channel;
use std::sync::Arc;

use devices::GuestMemoryMmap;
use qapi::types::MigrationStatus;

use super::receive::{self, Step};
use super::state::Setup;
use super::stream::{StreamReader, PAGE};
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
        let layout = receive::open_snapshot(f, &self.setup, &self.mem)?;
        let total = self.setup.ram.iter().map(|r| r.1).sum();
        self.shared.update(|p| p.total = total);
        self.link.send(Request::Status(MigrationStatus::Active));
        if !crate::memory::is_own_memory(&self.mem) {
            // RAM is this snapshot, mapped privately: what building the VM wrote goes, and
            // the guest reads the rest from the file as it touches it.
            crate::memory::revert_to_snapshot(&self.mem)?;
            let state = layout.state(f).map_err(MigrationError::Receive)?;
            return load_state(&self.link, state);
        }
        let loaded = receive::load_file_ram(f, &layout, &self.mem)?;
        self.shared.update(|p| {
            p.transferred = loaded;
            p.normal = loaded / PAGE as u64;
        });
        let state = layout.state(f).map_err(MigrationError::Receive)?;
        load_state(&self.link, state)
    }
}

fn receive_stream<R: std::io::Read>(
    reader: &mut StreamReader<R>,
    setup: &Setup,
    mem: &GuestMemoryMmap,
    shared: &Shared,
    link: &Link,
) -> Result<(), MigrationError> {
    let total = setup.ram.iter().map(|r| r.1).sum();
    let state = receive::receive_ram(reader, setup, mem, |step| match step {
        Step::Accepted => {
            shared.update(|p| p.total = total);
            link.send(Request::Status(MigrationStatus::Active));
        }
        Step::Pages(n) => shared.update(|p| {
            p.normal += u64::from(n);
            p.transferred += u64::from(n) * PAGE as u64;
        }),
        Step::Zeros(n) => shared.update(|p| p.duplicate += u64::from(n)),
    })?;
    load_state(link, state)
}

/// The main loop loads the state (and takes the images); waits for its verdict.
fn load_state(link: &Link, json: Vec<u8>) -> Result<(), MigrationError> {
    let (tx, rx) = channel();
    link.send(Request::Restore(json, tx));
    rx.recv()
        .map_err(|_| MigrationError::MainLoop)?
        .map_err(MigrationError::State)
}
