// SPDX-License-Identifier: Apache-2.0
//! Starting migrations on the main loop: the checks of `migrate` and `migrate-incoming`
//! (QEMU's texts), and what each thread is given.

use std::sync::Arc;

use qapi::rt::QmpError;
use qapi::types::{MigrationStatus, RunState};

use super::incoming::Incoming;
use super::outgoing::Outgoing;
use super::uri::{self, MigrationUri};
use crate::machine::Machine;

/// How a destination waits: for `migrate-incoming` (`defer`) or on a URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IncomingSpec {
    /// `-incoming defer`: the URI comes with `migrate-incoming`.
    Defer,
    /// `-incoming URI`.
    Uri(MigrationUri),
}

impl std::str::FromStr for IncomingSpec {
    type Err = uri::UriError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "defer" {
            return Ok(Self::Defer);
        }
        MigrationUri::parse(s).map(Self::Uri)
    }
}

/// The snapshot an `--incoming file:PATH` restores (its RAM is mapped, not read).
pub fn snapshot_path(spec: Option<&IncomingSpec>) -> Option<std::path::PathBuf> {
    match spec {
        Some(IncomingSpec::Uri(MigrationUri::File(p))) => Some(p.clone()),
        _ => None,
    }
}

/// `migrate`: checks, then starts the `migration` thread; the command returns at once.
///
/// # Errors
/// A migration runs, the VM waits for one, an option vmm does not take, a bad URI.
pub fn start_outgoing(
    machine: &mut Machine,
    uri: &str,
    blk: Option<bool>,
    inc: Option<bool>,
    resume: Option<bool>,
) -> Result<(), QmpError> {
    if resume == Some(true) {
        return resume_outgoing(machine, uri);
    }
    if machine.migration.incoming || machine.state() == RunState::Inmigrate {
        return Err(QmpError::generic(
            "Guest is waiting for an incoming migration",
        ));
    }
    if machine.migration.active() {
        return Err(QmpError::generic("There's a migration process in progress"));
    }
    if blk == Some(true) || inc == Some(true) {
        return Err(QmpError::generic(
            "vmm does not copy disks: its images are shared with the destination (blk and inc must be false)",
        ));
    }
    if matches!(
        machine.state(),
        RunState::Shutdown | RunState::InternalError
    ) {
        return Err(QmpError::generic(format!(
            "The VM cannot migrate in state '{}'",
            machine.state().as_str()
        )));
    }
    let uri = MigrationUri::parse(uri).map_err(|e| QmpError::generic(e.to_string()))?;
    if let MigrationUri::FileUffd(_) = uri {
        return Err(QmpError::generic(
            "restore=uffd is for restoring (--incoming), not for saving",
        ));
    }
    if machine.migration.postcopy_ram {
        two_way(&uri)?;
    }
    let channel = named_channel(machine, &uri)?;
    let setup =
        serde_json::to_vec(&machine.vm.setup()).map_err(|e| QmpError::generic(e.to_string()))?;
    let (shared, link) = machine.migration.begin(false);
    let job = Outgoing {
        postcopy_ram: machine.migration.postcopy_ram,
        uri,
        channel,
        setup,
        vm: machine.vm.vm_fd().clone(),
        mem: machine.vm.memory().clone(),
        backends: machine
            .vm
            .disks()
            .iter()
            .map(|d| d.backend.clone())
            .collect(),
        shared,
        link,
        child: None,
    };
    machine
        .migration
        .spawn(move || job.run())
        .map_err(|e| QmpError::generic(format!("Cannot start the migration thread: {e}")))?;
    machine.migration_status(MigrationStatus::Setup);
    Ok(())
}

/// `migrate-incoming`: only on a destination started with `-incoming defer`, once.
///
/// # Errors
/// Not such a destination, already started, a bad URI.
pub fn start_incoming(machine: &mut Machine, uri: &str) -> Result<(), QmpError> {
    if machine.state() != RunState::Inmigrate || !machine.migration.incoming {
        return Err(QmpError::generic("For use with '-incoming defer'"));
    }
    if machine.migration.active() || machine.migration.status() != MigrationStatus::None {
        return Err(QmpError::generic(
            "The incoming migration has already been started",
        ));
    }
    let uri = MigrationUri::parse(uri).map_err(|e| QmpError::generic(e.to_string()))?;
    listen(machine, &uri).map_err(|e| QmpError::generic(crate::error::chain(&e)))
}

/// How long `migrate-incoming` waits for the `migration` thread to listen (a bind).
const LISTEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sets up the destination's side of `uri` on the `migration` thread (which alone may make
/// sockets and open files) and waits until it listens or has failed to.
///
/// # Errors
/// The URI cannot be listened on or opened, or the thread is gone.
pub fn listen(machine: &mut Machine, uri: &MigrationUri) -> Result<(), super::MigrationError> {
    // `fd:NAME` of `migrate-incoming`: a descriptor the client named with `getfd`, taken
    // here (the main loop owns the names) and handed to the thread.
    let named = match uri {
        MigrationUri::Fd(name) => machine.fds.take(name),
        _ => None,
    };
    let (shared, link) = machine.migration.begin(true);
    let uffd_jobs = machine.migration.uffd_jobs();
    let (ready, listening) = std::sync::mpsc::channel();
    let setup = machine.vm.setup();
    let mem = machine.vm.memory().clone();
    let uri = uri.clone();
    let lazy = matches!(uri, MigrationUri::FileUffd(_));
    let gone = |e| super::MigrationError::Io("start the migration thread for", String::new(), e);
    machine
        .migration
        .spawn(move || {
            let named = std::cell::Cell::new(named);
            let endpoint = match uri::Incoming::listen(&uri, &|_| named.take()) {
                Ok(e) => e,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            Incoming {
                endpoint,
                setup,
                mem,
                shared,
                link,
                uffd_jobs,
                lazy,
            }
            .run();
        })
        .map_err(gone)?;
    let result = listening
        .recv_timeout(LISTEN_TIMEOUT)
        .map_err(|_| gone(std::io::Error::other("no answer")))
        .and_then(|r| r.map_err(super::MigrationError::from));
    if result.is_err() {
        // Nothing runs: the next migrate-incoming may try again.
        machine.migration.end(MigrationStatus::None, None);
        machine.publish_migration();
        return result;
    }
    machine.migration_status(MigrationStatus::Setup);
    Ok(())
}

/// Postcopy's channel must carry the return path.
fn two_way(uri: &MigrationUri) -> Result<(), QmpError> {
    if matches!(
        uri,
        MigrationUri::File(_) | MigrationUri::FileUffd(_) | MigrationUri::Exec(_)
    ) {
        return Err(QmpError::generic(
            "Postcopy needs a two-way channel: unix:, tcp: or a socket fd: (not exec: or file:)",
        ));
    }
    Ok(())
}

/// The channel of an `fd:NAME` URI, its descriptor taken from the session's names now (so
/// that a later `closefd` cannot race the thread); `None` for other URIs.
fn named_channel(
    machine: &mut Machine,
    uri: &MigrationUri,
) -> Result<Option<uri::Channel>, QmpError> {
    let MigrationUri::Fd(name) = uri else {
        return Ok(None);
    };
    let named = std::cell::Cell::new(machine.fds.take(name));
    uri::connect(uri, &|_| named.take())
        .map(Some)
        .map_err(|e| QmpError::generic(e.to_string()))
}

/// `migrate` with `resume`: a paused postcopy continues on `uri` (connected on the
/// `migration` thread; an `fd:` name is taken here).
fn resume_outgoing(machine: &mut Machine, uri: &str) -> Result<(), QmpError> {
    let paused = machine
        .migration
        .shared()
        .filter(|s| !s.incoming && s.get(|p| p.status) == MigrationStatus::PostcopyPaused)
        .cloned();
    let Some(shared) = paused else {
        return Err(QmpError::generic(
            "Cannot resume if there is no paused migration",
        ));
    };
    let uri = MigrationUri::parse(uri).map_err(|e| QmpError::generic(e.to_string()))?;
    two_way(&uri)?;
    let channel = named_channel(machine, &uri)?;
    if !shared.set_resume(super::Resume::Connect(uri, channel)) {
        return Err(QmpError::generic("Migrate recovery is triggered already"));
    }
    Ok(())
}

/// `migrate-start-postcopy`: the running outgoing migration switches at its next run of
/// pages.
///
/// # Errors
/// QEMU's texts: no migration runs, or the capability was off when it started.
pub fn start_postcopy(machine: &mut Machine) -> Result<(), QmpError> {
    let running = machine
        .migration
        .shared()
        .filter(|s| !s.incoming && machine.migration.active())
        .cloned();
    let Some(shared) = running else {
        return Err(QmpError::generic(
            "Postcopy must be started after migration has been started",
        ));
    };
    if !machine.migration.postcopy_ram {
        return Err(QmpError::generic(
            "Enable postcopy with migrate_set_capability before the start of migration",
        ));
    }
    shared
        .postcopy
        .store(true, std::sync::atomic::Ordering::Release);
    Ok(())
}

/// `migrate-pause` on the `current` migration (out of band the published one, in band the
/// main loop's): breaks the stream of a postcopy (a shutdown of the socket, which does not
/// block); both sides pause.
///
/// # Errors
/// QEMU's text when no postcopy is active or recovering.
pub fn pause(current: Option<Arc<super::Shared>>) -> Result<(), QmpError> {
    let shared = current.filter(|s| {
        matches!(
            s.get(|p| p.status),
            MigrationStatus::PostcopyActive | MigrationStatus::PostcopyRecover
        )
    });
    let Some(shared) = shared else {
        return Err(QmpError::generic(
            "migrate-pause is currently only supported during postcopy-active state",
        ));
    };
    shared.interrupt();
    Ok(())
}

/// `migrate-recover` (out of band): a destination in `postcopy-paused` listens on `uri`;
/// the `migration` thread does the listening (the monitor thread makes no sockets).
///
/// # Errors
/// QEMU's texts: not a paused destination, recovery already started; a bad URI or one a
/// destination cannot listen on again.
pub fn recover(current: Option<Arc<super::Shared>>, uri: &str) -> Result<(), QmpError> {
    let shared =
        current.filter(|s| s.incoming && s.get(|p| p.status) == MigrationStatus::PostcopyPaused);
    let Some(shared) = shared else {
        return Err(QmpError::generic(
            "Migrate recover can only be run when postcopy is paused.",
        ));
    };
    let uri = MigrationUri::parse(uri).map_err(|e| QmpError::generic(e.to_string()))?;
    if !matches!(uri, MigrationUri::Unix(_) | MigrationUri::Tcp(..)) {
        return Err(QmpError::generic(
            "migrate-recover listens on unix: or tcp: only",
        ));
    }
    if !shared.set_resume(super::Resume::Listen(uri)) {
        return Err(QmpError::generic("Migrate recovery is triggered already"));
    }
    Ok(())
}
