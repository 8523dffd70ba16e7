// SPDX-License-Identifier: Apache-2.0
//! The VM's run state and the lifecycle operations on it, shared by guest requests (poweroff,
//! reset), host requests (signals) and QMP commands, with the QMP events each one emits.
//!
//! Everything here runs on the main loop thread, which owns the [`Machine`]: that ownership is
//! the "big lock" of the architecture.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use monitor::MonitorHandle;
use qapi::events::Event;
use qapi::rt::QmpError;
use qapi::rt::Timestamp;
use qapi::types::{
    MigrationArg, MigrationPassArg, MigrationStatus, ResetArg, RunState, ShutdownArg, ShutdownCause,
};

use crate::migration::state::VmState;
use crate::migration::{Migrations, Request};
use crate::vm::{Vm, VmError};

/// The run state, readable without the big lock (by out-of-band commands).
#[derive(Debug, Default)]
pub struct SharedRunState(AtomicU8);

const STATES: [RunState; 9] = [
    RunState::Prelaunch,
    RunState::Running,
    RunState::Paused,
    RunState::Shutdown,
    RunState::InternalError,
    RunState::IoError,
    RunState::Inmigrate,
    RunState::FinishMigrate,
    RunState::Postmigrate,
];

impl SharedRunState {
    /// The state as last published.
    pub fn get(&self) -> RunState {
        STATES
            .get(usize::from(self.0.load(Ordering::Acquire)))
            .copied()
            .unwrap_or(RunState::Running)
    }

    /// Publishes a new state.
    pub fn set(&self, state: RunState) {
        let index = STATES.iter().position(|s| *s == state).unwrap_or(1);
        self.0.store(index as u8, Ordering::Release);
    }
}

/// How the main loop should end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Exit with this code.
    Code(i32),
}

/// What the guest's own power-off and reset requests do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lifecycle {
    /// A guest reset ends the VM (`SHUTDOWN` with reason `guest-reset`) instead of rebooting it
    /// (`--no-reboot`, QEMU's `-no-reboot`).
    pub no_reboot: bool,
    /// A guest power-off (and, with `no_reboot`, a guest reset) leaves the VM paused in
    /// `shutdown` after `SHUTDOWN` and `STOP`, instead of ending vmm: until `quit` or a
    /// termination signal ends it, or `system_reset` and `cont` boot it again (QEMU's
    /// `-no-shutdown`, which libvirt uses for its reboots).
    pub no_shutdown: bool,
}

/// The VM plus its run state and the settings that decide how lifecycle requests end.
pub struct Machine {
    /// The virtual machine.
    pub vm: Vm,
    state: RunState,
    shared: Arc<SharedRunState>,
    /// Where events go, with the state changes they announce: see [`Machine::announce`].
    monitor: Option<MonitorHandle>,
    lifecycle: Lifecycle,
    /// `--name`.
    pub name: Option<String>,
    /// What `query-chardev` shows of the monitors' sockets (the serial port's comes from the
    /// device manager).
    pub monitor_chardevs: Vec<qapi::types::ChardevInfo>,
    /// The `events` migration capability (`migrate-set-capabilities`).
    pub migration_events: bool,
    /// Migrations: the parameters, the last one's counters, the thread of a running one.
    pub migration: Migrations,
    /// The descriptors QMP clients named with `getfd` (`fd:NAME` migrations take them).
    pub fds: monitor::fds::FdTable,
    /// An incoming migration starts the guest when it completes (no `-S`, or `cont` while
    /// it was received).
    autostart: bool,
    exit: Option<Exit>,
    /// A vCPU hit an internal error since the last reset (`quit` then exits 1).
    failed: bool,
    /// A guest reset that came during an incoming postcopy: done once all RAM is here
    /// (resetting writes the boot tables into RAM that may not have arrived).
    deferred_reset: bool,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("state", &self.state)
            .field("exit", &self.exit)
            .finish()
    }
}

impl Machine {
    /// Wraps a built (not yet started) VM. The vCPUs start parked: `prelaunch` until
    /// [`launch`](Self::launch).
    pub fn new(
        vm: Vm,
        lifecycle: Lifecycle,
        name: Option<String>,
        shared: Arc<SharedRunState>,
        monitor: Option<MonitorHandle>,
        migration: Migrations,
    ) -> Self {
        shared.set(RunState::Prelaunch);
        Self {
            vm,
            state: RunState::Prelaunch,
            shared,
            monitor,
            lifecycle,
            name,
            monitor_chardevs: Vec::new(),
            migration_events: false,
            migration,
            fds: monitor::fds::FdTable::default(),
            autostart: false,
            exit: None,
            failed: false,
            deferred_reset: false,
        }
    }

    /// The current run state.
    pub fn state(&self) -> RunState {
        self.state
    }

    /// Emits `event` and, with it, changes the run state to `state`. The copy of the state
    /// that the monitor thread reads (for out-of-band commands) changes in the same step in
    /// which the monitor queues the event to its clients, so no client can see a state
    /// before the event that announces it, nor the event before the state.
    fn announce(&mut self, event: Event, state: Option<RunState>) {
        if let Some(s) = state {
            self.state = s;
        }
        let publish = state.map(|s| {
            let shared = self.shared.clone();
            Box::new(move || shared.set(s)) as Box<dyn FnOnce() + Send>
        });
        self.emit_then(event, publish);
    }

    /// Queues `event` to the monitor with `publish` (a copy of state for out-of-band readers),
    /// which takes effect in the step that queues the event to the clients; without a monitor
    /// `publish` runs at once.
    fn emit_then(&self, event: Event, publish: Option<Box<dyn FnOnce() + Send>>) {
        match &self.monitor {
            Some(m) => m.emit_then(event, Timestamp::now(), publish),
            None => {
                if let Some(f) = publish {
                    f();
                }
            }
        }
    }

    /// Changes the run state without an event.
    fn set_state(&mut self, state: RunState) {
        self.state = state;
        let shared = self.shared.clone();
        self.in_order(Box::new(move || shared.set(state)));
    }

    /// Runs `publish` (a copy of state for out-of-band readers) after the events emitted so
    /// far have reached the monitor.
    fn in_order(&self, publish: Box<dyn FnOnce() + Send>) {
        match &self.monitor {
            Some(m) => m.run_in_order(publish),
            None => publish(),
        }
    }

    /// Publishes the current migration and its status for the monitor thread, in order.
    pub fn publish_migration(&self) {
        self.in_order(self.migration.publication());
    }

    /// Set when the main loop should end.
    pub fn exit(&self) -> Option<&Exit> {
        self.exit.as_ref()
    }

    /// Starts the guest (from `prelaunch`), emitting `RESUME`.
    pub fn launch(&mut self) {
        if self.state() == RunState::Prelaunch {
            // As QEMU: RESUME goes out before the vCPUs run, so it precedes anything the
            // guest does.
            self.announce(Event::Resume, Some(RunState::Running));
            self.vm.resume();
        }
    }

    /// `stop`: pauses a running guest and emits `STOP`; a no-op otherwise.
    pub fn stop(&mut self) {
        if self.state() == RunState::Running {
            self.vm.pause();
            self.announce(Event::Stop, Some(RunState::Paused));
        }
    }

    /// A disk's error policy stopped a request: pauses a running guest in `io-error` and
    /// emits `STOP` (after the `BLOCK_IO_ERROR` the I/O thread already emitted). A VM that is
    /// not running stays as it is (QEMU 7.2's `do_vm_stop` acts on a running VM only; the
    /// request waits parked for `cont`, and libvirt keeps its pause reason). Nothing when a
    /// `cont` has resumed `device` since the request failed (its resume epoch is past
    /// `epoch`): that `cont` retries the request, which asks again if the fault persists.
    pub fn io_error_stop(&mut self, device: &str, epoch: u64) {
        let stale = self
            .vm
            .disks()
            .iter()
            .find(|d| d.backend.id() == device)
            .is_some_and(|d| d.backend.resume_epoch() != epoch);
        if stale {
            return;
        }
        if self.state() == RunState::Running {
            self.vm.pause();
            self.announce(Event::Stop, Some(RunState::IoError));
        }
    }

    /// `cont`: resumes a paused (or prelaunch) guest and emits `RESUME`; then the disks retry
    /// the requests their error policy stopped, in their original order (a fault that persists
    /// stops the VM again: `BLOCK_IO_ERROR`, `STOP`).
    ///
    /// # Errors
    /// Fails in states a resume cannot leave: after an internal error or a shutdown.
    pub fn cont(&mut self) -> Result<(), QmpError> {
        match self.state() {
            RunState::Running => Ok(()),
            // As QEMU: the guest starts once the incoming migration completes.
            RunState::Inmigrate => {
                self.autostart = true;
                Ok(())
            }
            RunState::FinishMigrate | RunState::Postmigrate
                if crate::migration::in_postcopy(self.migration.status())
                    && !self.migration.incoming =>
            {
                Err(QmpError::generic(
                    "The guest runs on the postcopy destination: its newest state is there, so it cannot run here",
                ))
            }
            RunState::FinishMigrate => Err(QmpError::generic("Migration is not finalized yet")),
            RunState::Paused | RunState::Prelaunch | RunState::IoError | RunState::Postmigrate => {
                // After a completed migration the images belong to the destination: running
                // here again takes them back (as QEMU's cont), or fails while it holds them.
                if self.state() == RunState::Postmigrate {
                    self.vm
                        .devices_mut()
                        .activate_images()
                        .map_err(|e| QmpError::generic(crate::error::chain(&e)))?;
                }
                // As QEMU: the disks' I/O status is reset before `RESUME`, so no client sees
                // the guest running with a stale `failed`; the stopped requests are retried
                // once it runs (a failure then is reported after the `RESUME`, and is not
                // wiped by a reset that comes after it).
                for disk in self.vm.disks() {
                    disk.backend.clear_status();
                }
                self.announce(Event::Resume, Some(RunState::Running));
                self.vm.resume();
                for disk in self.vm.disks() {
                    disk.backend.release_stopped();
                }
                Ok(())
            }
            // QEMU's text for both: only a reset leaves these states.
            _ => Err(QmpError::generic(
                "Resetting the Virtual Machine is required",
            )),
        }
    }

    /// Ends the VM with `SHUTDOWN {guest, reason}` and the exit code. A request of the guest
    /// (`guest`) under [`Lifecycle::no_shutdown`] only stops it: `SHUTDOWN`, then `STOP`, in
    /// `shutdown` state, as QEMU's `-no-shutdown`; a host request (`quit`, a signal, the
    /// console's quit key) always ends it.
    pub fn shutdown(&mut self, guest: bool, reason: ShutdownCause, code: i32) {
        if self.exit.is_some() {
            return;
        }
        if guest && self.lifecycle.no_shutdown {
            if self.state() == RunState::Shutdown {
                return;
            }
            self.vm.pause();
            self.announce(Event::Shutdown(ShutdownArg { guest, reason }), None);
            // STOP only when the guest was running, as QEMU's vm_stop.
            if self.state() == RunState::Running {
                self.announce(Event::Stop, Some(RunState::Shutdown));
            } else {
                self.set_state(RunState::Shutdown);
            }
            return;
        }
        self.vm.pause();
        self.announce(
            Event::Shutdown(ShutdownArg { guest, reason }),
            Some(RunState::Shutdown),
        );
        self.exit = Some(Exit::Code(code));
    }

    /// A reset requested by the guest (`guest`) or the host: `RESET`, then an in-place reset,
    /// or with `--no-reboot` a shutdown with the same reason (see [`Machine::shutdown`]). The run
    /// state is kept (a paused VM stays paused), except that a VM stopped in `shutdown` (by
    /// `-no-shutdown`) waits in `prelaunch` for `cont`, as QEMU's.
    ///
    /// # Errors
    /// Fails when KVM refuses the power-on state; the VM is then in `internal-error` (or,
    /// without a monitor, about to exit 1).
    pub fn reset(&mut self, guest: bool, reason: ShutdownCause) -> Result<(), VmError> {
        if self.lifecycle.no_reboot {
            self.shutdown(guest, reason, 0);
            return Ok(());
        }
        if self.in_incoming_postcopy() {
            // The guest's own reset waits for the rest of its RAM, stopped (a host reset is
            // refused by `system_reset`).
            self.vm.pause();
            self.deferred_reset = true;
            return Ok(());
        }
        self.announce(Event::Reset(ResetArg { guest, reason }), None);
        if let Err(e) = self.vm.reset() {
            // The vCPUs are parked in a half-reset machine: never report it as running. With a
            // monitor it waits in internal-error (STOP when it was running) for another reset
            // or quit; without one vmm exits 1.
            self.internal_error(self.monitor.is_some());
            return Err(e);
        }
        match self.state() {
            RunState::Running => self.vm.resume(),
            RunState::InternalError => {
                // A reset recovers from an internal error, as in QEMU.
                self.failed = false;
                self.set_state(RunState::Paused);
            }
            RunState::Shutdown => self.set_state(RunState::Prelaunch),
            _ => {}
        }
        Ok(())
    }

    /// `system_powerdown`: presses the ACPI power button after emitting `POWERDOWN`.
    ///
    /// # Errors
    /// Fails when the button interrupt cannot be raised.
    pub fn powerdown(&mut self) -> Result<(), QmpError> {
        self.announce(Event::Powerdown, None);
        self.vm
            .power_button()
            .map_err(|e| QmpError::generic(crate::error::chain(&e)))
    }

    /// An unrecoverable vCPU error. With a monitor (`keep`) the VM stays, paused in
    /// `internal-error`, for inspection; without one vmm exits 1.
    pub fn internal_error(&mut self, keep: bool) {
        self.vm.pause();
        self.failed = true;
        if !keep {
            self.set_state(RunState::InternalError);
            self.exit = Some(Exit::Code(1));
        } else if self.state() == RunState::Running {
            self.announce(Event::Stop, Some(RunState::InternalError));
        } else {
            self.set_state(RunState::InternalError);
        }
    }

    /// The exit code `quit` uses: 1 after an internal error, else 0.
    pub fn quit_code(&self) -> i32 {
        i32::from(self.failed)
    }

    /// Waits for an incoming migration (`-incoming`): the vCPUs stay parked in `inmigrate`;
    /// the guest starts when it completes if `autostart` (no `-S`).
    pub fn await_incoming(&mut self, autostart: bool) {
        self.autostart = autostart;
        self.migration.incoming = true;
        self.set_state(RunState::Inmigrate);
    }

    /// Records the migration's new `status`, with a MIGRATION event when it changed.
    pub fn migration_status(&mut self, status: MigrationStatus) {
        if self.migration.set_status(status) {
            self.migration_event(status);
        }
    }

    /// Publishes the migration's new `status` for out-of-band readers with its MIGRATION
    /// event (when the `events` capability is on) in one step, as [`announce`](Self::announce)
    /// does a run state: no client sees the status before the event, nor the event before it.
    fn migration_event(&mut self, status: MigrationStatus) {
        let publish = self.migration.publication();
        if self.migration_events {
            self.emit_then(Event::Migration(MigrationArg { status }), Some(publish));
        } else {
            self.in_order(publish);
        }
    }

    /// Serves one request of the migration thread (see [`Request`]).
    pub fn on_migration(&mut self, request: Request) {
        match request {
            Request::Status(s) => self.migration_status(s),
            Request::Pass(n) => {
                if self.migration_events {
                    let pass = i64::try_from(n).unwrap_or(i64::MAX);
                    self.announce(Event::MigrationPass(MigrationPassArg { pass }), None);
                }
            }
            Request::Pause(done) => {
                self.migration.was_running = self.state() == RunState::Running;
                self.vm.pause_parked();
                if self.migration.was_running {
                    self.announce(Event::Stop, Some(RunState::FinishMigrate));
                }
                let _ = done.send(());
            }
            Request::SaveState(done) => {
                let _ = done.send(self.save_for_migration());
            }
            Request::Finished(result) => self.outgoing_finished(result),
            Request::Restore(json, postcopy, done) => {
                let result = self.restore_from_migration(&json);
                if result.is_ok() && postcopy {
                    // The destination runs before the rest of RAM is here.
                    self.migration_status(MigrationStatus::PostcopyActive);
                    self.start_migrated_guest();
                }
                let _ = done.send(result);
            }
            Request::IncomingFinished(result) => self.incoming_finished(result),
        }
    }

    /// The switch on the source: devices quiesced, the state saved, the images handed over.
    fn save_for_migration(&mut self) -> Result<Vec<u8>, String> {
        let devices = self.vm.devices_mut();
        devices
            .quiesce(crate::migration::QUIESCE_TIMEOUT)
            .map_err(|e| crate::error::chain(&e))?;
        let state = self.vm.save_state().map_err(|e| crate::error::chain(&e))?;
        let json = serde_json::to_vec(&state).map_err(|e| e.to_string())?;
        self.vm
            .devices_mut()
            .inactivate_images()
            .map_err(|e| crate::error::chain(&e))?;
        Ok(json)
    }

    /// The outgoing migration ended: `postmigrate`, or the guest back as it was.
    fn outgoing_finished(&mut self, result: Result<(), Option<String>>) {
        let failed = result.is_err();
        let (status, error) = match result {
            Ok(()) => (MigrationStatus::Completed, None),
            Err(None) => (MigrationStatus::Cancelled, None),
            Err(Some(e)) => (MigrationStatus::Failed, Some(e)),
        };
        if failed {
            // The images may have been handed over already: take them back.
            if let Err(e) = self.vm.devices_mut().activate_images() {
                crate::report::error(format_args!("{}", crate::error::chain(&e)));
            }
            if self.state() == RunState::FinishMigrate {
                self.announce(Event::Resume, Some(RunState::Running));
                self.vm.resume();
            }
        } else {
            self.set_state(RunState::Postmigrate);
        }
        self.migration.was_running = false;
        // The status changes for out-of-band readers (`query-migrate`) with its event, after
        // the run state, in the monitor's order: whoever sees `failed` sees the guest
        // running again.
        self.migration.end(status, error);
        self.migration_event(status);
    }

    /// Loads a migrated state into this (parked) VM and takes the images.
    fn restore_from_migration(&mut self, json: &[u8]) -> Result<(), String> {
        let state: VmState = serde_json::from_slice(json)
            .map_err(|e| format!("Corrupt migration stream: its state does not decode: {e}"))?;
        self.vm
            .devices()
            .check_state(&state.devices)
            .map_err(|e| crate::error::chain(&e))?;
        // The images first: a restored disk serves its queues at once.
        self.vm
            .devices_mut()
            .activate_images()
            .map_err(|e| crate::error::chain(&e))?;
        if let Err(e) = self.vm.restore_state(state) {
            // The source keeps running: this side must not hold its images.
            let _ = self.vm.devices_mut().inactivate_images();
            return Err(crate::error::chain(&e));
        }
        Ok(())
    }

    /// Whether this VM is a postcopy destination whose RAM is still arriving.
    pub fn in_incoming_postcopy(&self) -> bool {
        self.migration.incoming && crate::migration::in_postcopy(self.migration.status())
    }

    /// The migrated guest runs, or waits paused with `-S`.
    fn start_migrated_guest(&mut self) {
        if self.autostart {
            self.announce(Event::Resume, Some(RunState::Running));
            self.vm.resume();
        } else {
            self.set_state(RunState::Paused);
        }
    }

    /// The incoming migration ended: the guest runs (or waits paused with `-S`); a failed
    /// one ends vmm with exit code 1, as QEMU's "load of migration failed".
    fn incoming_finished(&mut self, result: Result<(), String>) {
        self.migration.incoming = false;
        match result {
            Ok(()) => {
                // The guest runs (or waits paused) before the status says `completed`, as
                // QEMU orders them: whoever sees it may use the VM at once. After a postcopy
                // it has run since the switch.
                if self.state() == RunState::Inmigrate {
                    self.start_migrated_guest();
                }
                self.migration.end(MigrationStatus::Completed, None);
                self.migration_event(MigrationStatus::Completed);
                if std::mem::take(&mut self.deferred_reset) {
                    if let Err(e) = self.reset(true, ShutdownCause::GuestReset) {
                        crate::report::error(format_args!("{}", crate::error::chain(&e)));
                    }
                }
            }
            Err(e) => {
                self.migration.end(MigrationStatus::Failed, Some(e.clone()));
                self.migration_event(MigrationStatus::Failed);
                crate::report::error(format_args!("load of migration failed: {e}"));
                self.exit = Some(Exit::Code(1));
            }
        }
    }
}
