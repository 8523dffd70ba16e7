// SPDX-License-Identifier: Apache-2.0
//! The main loop: waits on the VM's event queue, the QMP monitor's in-band requests, host
//! signals and console input, and turns each into an operation on the [`Machine`]. The main
//! loop thread owns the machine; running here is what "holding the big lock" means.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use devices::{VmEvent, VmEventSink};
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use monitor::dispatch::response;
use monitor::{
    FdBudget, Inband, Limits, Monitor, MonitorConfig, MonitorError, MonitorHandle, SessionId,
    SocketSpec, ToMain,
};
use qapi::rt::QmpError;
use qapi::types::ShutdownCause;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::block_signals;
use crate::console::{Console, ConsoleAction, PtyConsole, PtyWatch, RawTerminal};
use crate::device_manager::SerialMode;
use crate::error::chain;
use crate::host;
use crate::machine::{Exit, Lifecycle, Machine, SharedRunState};
use crate::migration::control::IncomingSpec;
use crate::migration::Migrations;
use crate::qmp::{version_info, OobServer};
use crate::qmp_async::{self, Start};
use crate::seccomp::{self, ThreadKind};
use crate::signals::{
    install_kick_handler, install_terminate_handlers, main_loop_takes_over, SignalError,
};
use crate::socket_console::{ClientInput, SocketConsole};
use crate::vm::{Vm, VmConfig, VmError};

/// Errors of the main loop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Building or operating the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Signal handling could not be set up.
    #[error(transparent)]
    Signals(#[from] SignalError),
    /// The QMP monitor could not start.
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    /// An eventfd could not be created.
    #[error("Cannot create the main loop's eventfds")]
    EventFd(#[source] std::io::Error),
    /// The main loop's epoll failed.
    #[error("Main loop epoll failed: {0}")]
    EventLoop(event_manager::Error),
    /// The guest or a vCPU hit an unrecoverable error.
    #[error("{0}")]
    Guest(String),
    /// A seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// The open-file limit could not be read.
    #[error("Cannot read the open-file limit (RLIMIT_NOFILE)")]
    OpenFiles(#[source] std::io::Error),
    /// The incoming migration could not be set up.
    #[error(transparent)]
    Incoming(crate::migration::MigrationError),
}

/// Options of a run beyond the VM's configuration.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// What guest power-off and reset requests do.
    pub lifecycle: Lifecycle,
    /// Start with the vCPUs parked (`prelaunch` until `cont`).
    pub paused: bool,
    /// `--name`.
    pub name: Option<String>,
    /// QMP sockets.
    pub qmp: Vec<SocketSpec>,
    /// Most QMP clients at once.
    pub qmp_max_clients: usize,
    /// What `query-chardev` shows of the monitors' sockets.
    pub monitor_chardevs: Vec<qapi::types::ChardevInfo>,
    /// Wait for an incoming migration (`--incoming`, QEMU's `-incoming`).
    pub incoming: Option<IncomingSpec>,
}

/// What woke the main loop: the `data` of each registered event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// A device or vCPU queued a [`VmEvent`].
    VmEvents,
    /// SIGTERM, SIGINT or SIGHUP arrived.
    Signal,
    /// The monitor queued in-band requests ([`ToMain`]).
    Monitor,
    /// Console input on stdin.
    Stdin,
    /// A worker finished the waiting part of a command.
    Jobs,
    /// Input (or a hang-up) on the serial console's pseudo-terminal.
    Pty,
    /// Time to look for a reader of the serial console's pseudo-terminal again.
    PtyTimer,
    /// A client is waiting on the serial console's socket.
    ConsoleListener,
    /// Input (or a hang-up) from the serial console's socket client.
    ConsoleClient,
    /// A migration thread asks for something.
    Migration,
}

impl Source {
    const ALL: [Source; 10] = [
        Source::VmEvents,
        Source::Signal,
        Source::Monitor,
        Source::Stdin,
        Source::Jobs,
        Source::Pty,
        Source::PtyTimer,
        Source::ConsoleListener,
        Source::ConsoleClient,
        Source::Migration,
    ];

    fn data(self) -> u32 {
        self as u32
    }

    fn from_data(data: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.data() == data)
    }
}

/// The main loop: owns the [`Machine`] (holding the big lock is being here) and turns each
/// input into an operation on it.
struct MainLoop {
    machine: Machine,
    vm_events: Receiver<VmEvent>,
    vm_wake: EventFd,
    signal_fd: EventFd,
    monitor_rx: Receiver<ToMain>,
    monitor_wake: EventFd,
    monitor: Option<MonitorHandle>,
    /// Console input filter, when the serial console is on stdio.
    console: Option<Console>,
    /// The serial console's pseudo-terminal, when it has one.
    pty: Option<PtyConsole>,
    /// The serial console's socket and its client's descriptor, when it has one.
    socket_console: Option<(Arc<SocketConsole>, Option<i32>)>,
    paused: bool,
    waiting_for_client: bool,
    /// Set when the loop must end, with what [`run`] returns.
    outcome: Option<Result<i32, RunError>>,
    /// Sessions with a command waiting on a worker ([`qmp_async`]), and their in-band items
    /// queued behind it, in order.
    stalled: HashMap<SessionId, VecDeque<Inband>>,
    /// Stalled sessions that closed: their named descriptors close once their queue ran.
    closing: HashSet<SessionId>,
    jobs_tx: Sender<JobDone>,
    jobs_rx: Receiver<JobDone>,
    jobs_wake: EventFd,
}

/// A [`qmp_async::Job`] that a worker finished, with what its reply needs.
struct JobDone {
    session: SessionId,
    command: String,
    id: Option<serde_json::Value>,
    explicit_handles: bool,
    outcome: qmp_async::Outcome,
}

impl MainLoop {
    fn on_vm_events(&mut self) {
        let _ = self.vm_wake.read();
        while let Ok(event) = self.vm_events.try_recv() {
            match event {
                VmEvent::PowerOff => {
                    self.machine.shutdown(true, ShutdownCause::GuestShutdown, 0);
                }
                VmEvent::Reset(_) => {
                    if let Err(e) = self.machine.reset(true, ShutdownCause::GuestReset) {
                        if self.monitor.is_none() {
                            self.outcome = Some(Err(e.into()));
                            return;
                        }
                        crate::report::error(format_args!("{}", chain(&e)));
                    }
                }
                VmEvent::IoErrorStop { device, epoch } => {
                    self.machine.io_error_stop(&device, epoch)
                }
                VmEvent::Fatal(msg) => {
                    let keep = self.monitor.is_some();
                    self.machine.internal_error(keep);
                    if !keep {
                        self.outcome = Some(Err(RunError::Guest(msg)));
                        return;
                    }
                    crate::report::error(format_args!("{msg}"));
                }
            }
            if self.machine.exit().is_some() {
                break;
            }
        }
    }

    fn on_monitor(&mut self) {
        let _ = self.monitor_wake.read();
        while let Ok(msg) = self.monitor_rx.try_recv() {
            if self.machine.exit().is_some() {
                // After quit (or any shutdown that ends vmm) nothing more runs or is emitted:
                // commands queued behind it get no reply, as with QEMU, which exits.
                break;
            }
            match msg {
                ToMain::WaitedClientConnected => {
                    if self.waiting_for_client {
                        self.waiting_for_client = false;
                        if !self.paused {
                            self.machine.launch();
                        }
                    }
                }
                ToMain::SessionClosed(session) => {
                    if self.stalled.contains_key(&session) {
                        self.closing.insert(session);
                    } else {
                        self.machine.fds.session_closed(session);
                    }
                }
                ToMain::Request { session, item } => match self.stalled.get_mut(&session) {
                    // Behind the session's waiting command, to keep its replies in order.
                    Some(queue) => queue.push_back(item),
                    None => self.run_item(session, item),
                },
            }
        }
    }

    fn respond(&self, session: SessionId, answer: Option<serde_json::Value>) {
        if let Some(m) = &self.monitor {
            m.respond(session, answer);
        }
    }

    /// Runs one in-band item of `session`: under the big lock, or — for a command that may
    /// wait on storage — its waiting part on a worker, the session stalling until it is done.
    fn run_item(&mut self, session: SessionId, item: Inband) {
        let fd = match &item {
            Inband::Execute { fd, .. } => fd.clone(),
            Inband::Reply(_) => None,
        };
        // `getfd`, `closefd` and `fd:NAME` act on this session's descriptors.
        self.machine.fds.begin(session, fd);
        self.run_item_now(session, item);
        self.machine.fds.end();
    }

    fn run_item_now(&mut self, session: SessionId, item: Inband) {
        let Inband::Execute {
            command,
            arguments,
            id,
            explicit_handles,
            ..
        } = &item
        else {
            let answer = item.run(&mut self.machine);
            return self.respond(session, answer);
        };
        let job = match qmp_async::start(&mut self.machine, command, arguments.clone()) {
            None => {
                let answer = item.run(&mut self.machine);
                return self.respond(session, answer);
            }
            Some(Start::Done(result)) => {
                let answer = response(command, result, id.clone(), *explicit_handles);
                return self.respond(session, answer);
            }
            Some(Start::Wait(job)) => job,
        };
        let done = JobDone {
            session,
            command: command.clone(),
            id: id.clone(),
            explicit_handles: *explicit_handles,
            outcome: qmp_async::Outcome::Closed,
        };
        let failed = |text: String| {
            response(
                command,
                Err(QmpError::generic(text)),
                id.clone(),
                *explicit_handles,
            )
        };
        let wake = match self.jobs_wake.try_clone() {
            Ok(w) => w,
            Err(e) => {
                return self.respond(session, failed(format!("Cannot create an eventfd: {e}")))
            }
        };
        let tx = self.jobs_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("qmp-job".into())
            .spawn(move || {
                // Narrower than the main loop's filter, which it inherits and keeps if this
                // fails (the command still gets its answer).
                if let Err(e) = seccomp::confine(ThreadKind::QmpJob) {
                    eprintln!("vmm: {}", chain(&e));
                }
                let outcome = job.run();
                if tx.send(JobDone { outcome, ..done }).is_ok() {
                    let _ = wake.write(1);
                }
            });
        match spawned {
            Ok(_) => {
                self.stalled.insert(session, VecDeque::new());
            }
            Err(e) => self.respond(
                session,
                failed(format!("Cannot start a worker thread: {e}")),
            ),
        }
    }

    /// Completes the commands whose waiting part is done, then runs what their sessions
    /// queued behind them.
    fn on_jobs(&mut self) {
        let _ = self.jobs_wake.read();
        while let Ok(done) = self.jobs_rx.try_recv() {
            if self.machine.exit().is_some() {
                break;
            }
            let result = qmp_async::finish(&mut self.machine, done.outcome);
            let answer = response(&done.command, result, done.id, done.explicit_handles);
            self.respond(done.session, answer);
            let mut queue = self.stalled.remove(&done.session).unwrap_or_default();
            while let Some(item) = queue.pop_front() {
                if let Some(again) = self.stalled.get_mut(&done.session) {
                    // Another command of the session started to wait: the rest stays behind.
                    again.push_back(item);
                    again.extend(queue.drain(..));
                    break;
                }
                self.run_item(done.session, item);
            }
            if !self.stalled.contains_key(&done.session) && self.closing.remove(&done.session) {
                self.machine.fds.session_closed(done.session);
            }
        }
    }

    fn on_stdin(&mut self, ops: &mut EventOps) {
        let Some(console) = &mut self.console else {
            return;
        };
        match console.read_stdin() {
            None => {
                // EOF or error: stop watching the console.
                let _ = ops.remove(Events::empty_raw(libc::STDIN_FILENO));
                self.console = None;
            }
            Some(ConsoleAction::Quit) => {
                self.machine.shutdown(false, ShutdownCause::HostUi, 0);
            }
            Some(ConsoleAction::Forward(bytes)) => self.machine.vm.serial_input(&bytes),
        }
    }

    /// Adds or removes the pseudo-terminal's master in the epoll set.
    fn watch_pty(&mut self, ops: &mut EventOps, watch: PtyWatch) {
        let Some(pty) = &self.pty else {
            return;
        };
        let events = Events::with_data_raw(pty.pty_fd(), Source::Pty.data(), EventSet::IN);
        let done = match watch {
            PtyWatch::Watch => ops.add(events),
            PtyWatch::Unwatch => ops.remove(events),
            PtyWatch::Keep => Ok(()),
        };
        if let Err(e) = done {
            // The console loses its input; the guest and its output go on.
            crate::report::error(format_args!("serial console input stops: {e}"));
            self.pty = None;
        }
    }

    fn on_pty(&mut self, ops: &mut EventOps) {
        let Some(pty) = &mut self.pty else {
            return;
        };
        let (input, watch) = pty.on_readable();
        if !input.is_empty() {
            self.machine.vm.serial_input(&input);
        }
        self.watch_pty(ops, watch);
    }

    /// Accepts a console client; the listener rests while it is connected.
    fn on_console_listener(&mut self, ops: &mut EventOps) {
        let Some((console, client)) = &mut self.socket_console else {
            return;
        };
        let fd = match console.accept() {
            Ok(Some(fd)) => fd,
            Ok(None) => return,
            Err(e) => {
                crate::report::error(format_args!("serial console: accept failed: {e}"));
                return;
            }
        };
        let listener = console.listener_fd();
        let swapped = ops
            .remove(Events::with_data_raw(
                listener,
                Source::ConsoleListener.data(),
                EventSet::IN,
            ))
            .and_then(|()| {
                ops.add(Events::with_data_raw(
                    fd,
                    Source::ConsoleClient.data(),
                    EventSet::IN,
                ))
            });
        match swapped {
            Ok(()) => *client = Some(fd),
            Err(e) => {
                crate::report::error(format_args!("serial console input stops: {e}"));
                console.close_client();
            }
        }
    }

    /// Forwards a console client's input; when it leaves, listens for the next one.
    fn on_console_client(&mut self, ops: &mut EventOps) {
        let Some((console, client)) = &mut self.socket_console else {
            return;
        };
        match console.read() {
            ClientInput::Data(bytes) => self.machine.vm.serial_input(&bytes),
            ClientInput::Nothing => {}
            ClientInput::Closed => {
                if let Some(fd) = client.take() {
                    let _ = ops.remove(Events::with_data_raw(
                        fd,
                        Source::ConsoleClient.data(),
                        EventSet::IN,
                    ));
                }
                console.close_client();
                let listener = Events::with_data_raw(
                    console.listener_fd(),
                    Source::ConsoleListener.data(),
                    EventSet::IN,
                );
                if let Err(e) = ops.add(listener) {
                    crate::report::error(format_args!("serial console stops listening: {e}"));
                    self.socket_console = None;
                }
            }
        }
    }

    fn on_pty_timer(&mut self, ops: &mut EventOps) {
        let Some(pty) = &mut self.pty else {
            return;
        };
        let watch = pty.on_timer();
        self.watch_pty(ops, watch);
    }
}

impl MutEventSubscriber for MainLoop {
    fn init(&mut self, ops: &mut EventOps) {
        for (fd, source) in [
            (&self.vm_wake, Source::VmEvents),
            (&self.signal_fd, Source::Signal),
            (&self.monitor_wake, Source::Monitor),
            (&self.jobs_wake, Source::Jobs),
            (self.machine.migration.wake(), Source::Migration),
        ] {
            if let Err(e) = ops.add(Events::with_data(fd, source.data(), EventSet::IN)) {
                self.outcome = Some(Err(RunError::EventLoop(e)));
                return;
            }
        }
        if let Some(pty) = &mut self.pty {
            let timer = pty.timer_fd();
            let watch = pty.start();
            let timer = Events::with_data_raw(timer, Source::PtyTimer.data(), EventSet::IN);
            if let Err(e) = ops.add(timer) {
                self.outcome = Some(Err(RunError::EventLoop(e)));
                return;
            }
            self.watch_pty(ops, watch);
        }
        if let Some((console, _)) = &self.socket_console {
            let listener = Events::with_data_raw(
                console.listener_fd(),
                Source::ConsoleListener.data(),
                EventSet::IN,
            );
            if let Err(e) = ops.add(listener) {
                self.outcome = Some(Err(RunError::EventLoop(e)));
                return;
            }
        }
        if self.console.is_some() {
            // stdin may be a file or /dev/null that epoll refuses; then there is no console
            // input.
            let stdin =
                Events::with_data_raw(libc::STDIN_FILENO, Source::Stdin.data(), EventSet::IN);
            if ops.add(stdin).is_err() {
                self.console = None;
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.outcome.is_some() {
            // The loop is ending; other events of the same wake-up are not acted on.
            return;
        }
        match Source::from_data(events.data()) {
            Some(Source::VmEvents) => self.on_vm_events(),
            Some(Source::Signal) => {
                let _ = self.signal_fd.read();
                self.machine.shutdown(false, ShutdownCause::HostSignal, 0);
            }
            Some(Source::Monitor) => self.on_monitor(),
            Some(Source::Stdin) => self.on_stdin(ops),
            Some(Source::Jobs) => self.on_jobs(),
            Some(Source::Pty) => self.on_pty(ops),
            Some(Source::PtyTimer) => self.on_pty_timer(ops),
            Some(Source::ConsoleListener) => self.on_console_listener(ops),
            Some(Source::ConsoleClient) => self.on_console_client(ops),
            Some(Source::Migration) => {
                while let Some(request) = self.machine.migration.next_request() {
                    self.machine.on_migration(request);
                    if self.machine.exit().is_some() {
                        break;
                    }
                }
            }
            None => {}
        }
        if self.outcome.is_none() {
            if let Some(Exit::Code(code)) = self.machine.exit() {
                self.outcome = Some(Ok(*code));
            }
        }
    }
}

/// Builds and runs the VM until it powers off or is told to stop; returns the exit code.
/// `ready` (QEMU's `-daemonize`) is told once the VM is built and the monitors listen.
///
/// # Errors
/// Fails when the VM cannot be built, or stops on an unrecoverable guest error without a
/// monitor to report it to.
pub fn run(
    config: &VmConfig,
    options: &RunOptions,
    ready: Option<crate::daemon::Ready>,
) -> Result<i32, RunError> {
    // Before anything opens files: what the host allows, less a reserve, is the clients'.
    let open_files = host::raise_open_files().map_err(RunError::OpenFiles)?;
    let (events, vm_events, vm_wake) = VmEventSink::new().map_err(RunError::EventFd)?;
    install_kick_handler()?;
    let signal_fd = EventFd::new(EFD_NONBLOCK).map_err(RunError::EventFd)?;
    install_terminate_handlers(&signal_fd)?;
    let vm = Vm::new(config, &events)?;

    let state = Arc::new(SharedRunState::default());
    if options.incoming.is_some() {
        // A destination is `inmigrate` to its first client already (`await_incoming` below
        // sets the main loop's copy): no client sees `prelaunch` turn into it without an
        // event.
        state.set(qapi::types::RunState::Inmigrate);
    }
    // Its threads start before the main thread confines itself (their own filters).
    let migrations = Migrations::new().map_err(RunError::EventFd)?;
    let (monitor_tx, monitor_rx) = channel();
    let monitor_wake = EventFd::new(EFD_NONBLOCK).map_err(RunError::EventFd)?;
    let monitor = if options.qmp.is_empty() {
        None
    } else {
        Some(Monitor::start(MonitorConfig {
            sockets: options.qmp.clone(),
            version: serde_json::to_value(version_info()).unwrap_or_default(),
            oob: Arc::new(OobServer::new(
                state.clone(),
                options.name.clone(),
                &vm,
                migrations.published(),
            )),
            to_main: monitor_tx,
            main_wake: monitor_wake.try_clone().map_err(RunError::EventFd)?,
            limits: Limits {
                max_clients: options.qmp_max_clients,
                descriptors: Some(FdBudget {
                    limit: open_files,
                    reserve: host::fd_reserve(
                        config.disks.iter().map(|d| u64::from(d.num_queues)).sum(),
                    ),
                }),
                ..Limits::default()
            },
            thread_hook: seccomp::hook(ThreadKind::Monitor),
        })?)
    };
    // Nothing from here to the main loop waits on a user's file or peer: the loop will see a
    // termination signal that arrives now.
    main_loop_takes_over();
    let handle = monitor.as_ref().map(Monitor::handle);
    for disk in vm.disks() {
        block_signals::connect(&disk.backend, &disk.qdev, handle.as_ref(), &events)
            .map_err(RunError::EventFd)?;
    }
    let mut machine = Machine::new(
        vm,
        options.lifecycle,
        options.name.clone(),
        state,
        handle.clone(),
        migrations,
    );
    match &options.incoming {
        None => {}
        Some(spec) => {
            machine.await_incoming(!options.paused);
            if let IncomingSpec::Uri(uri) = spec {
                // Listening before the monitors answer, so a source started next finds it.
                crate::migration::control::listen(&mut machine, uri).map_err(RunError::Incoming)?;
            }
        }
    }
    machine.monitor_chardevs = options.monitor_chardevs.clone();
    if let Some(ready) = ready {
        // The VM is built and every monitor listens: whoever waits for the daemon may
        // connect now.
        ready.notify();
    }
    let _terminal = RawTerminal::enter(&config.serial.mode);
    let socket_console = machine.vm.devices().serial_socket().cloned();
    let pty = match machine.vm.devices().serial_pty() {
        Some(p) => Some(PtyConsole::new(p.clone()).map_err(RunError::EventFd)?),
        None => None,
    };
    let waiting_for_client = options.qmp.iter().any(|s| s.wait);
    let (jobs_tx, jobs_rx) = channel();
    let mut main = MainLoop {
        machine,
        vm_events,
        vm_wake,
        signal_fd,
        monitor_rx,
        monitor_wake,
        monitor: handle,
        console: (config.serial.mode == SerialMode::Stdio).then(Console::default),
        pty,
        socket_console: socket_console.map(|c| (c, None)),
        paused: options.paused,
        waiting_for_client,
        outcome: None,
        stalled: HashMap::new(),
        closing: HashSet::new(),
        jobs_tx,
        jobs_rx,
        jobs_wake: EventFd::new(EFD_NONBLOCK).map_err(RunError::EventFd)?,
    };
    main.machine.vm.start(true)?;
    if !options.paused && !waiting_for_client && options.incoming.is_none() {
        main.machine.launch();
    }
    let mut manager = EventManager::new().map_err(RunError::EventLoop)?;
    // Every narrower thread (vCPUs, monitor, block I/O) exists: the main thread confines
    // itself before its loop serves any client or guest request.
    seccomp::confine(ThreadKind::Main)?;
    let result = run_main_loop(&mut manager, main);
    // The loop owns the machine: dropping it stops and joins the vCPU and block I/O threads
    // before the monitor sends its last messages.
    teardown(manager);
    // Dropping the monitor flushes the last replies and events, then closes the sockets.
    drop(monitor);
    result
}

/// How long vmm waits at exit for the VM's threads to end.
const TEARDOWN_GRACE: Duration = Duration::from_secs(3);

/// Drops the machine on a thread of its own and waits for it at most [`TEARDOWN_GRACE`]: a
/// block I/O thread stuck in a syscall on storage that does not answer (a dead NFS server)
/// never ends, and must not keep vmm from exiting (the process's exit ends it).
fn teardown(manager: EventManager<MainLoop>) {
    let (tx, rx) = channel();
    let spawned = std::thread::Builder::new()
        .name("vm-teardown".into())
        .spawn(move || {
            if let Err(e) = seccomp::confine(ThreadKind::Teardown) {
                eprintln!("vmm: {}", chain(&e));
            }
            drop(manager);
            let _ = tx.send(());
        });
    // A failed spawn dropped the machine right here.
    if spawned.is_ok() && rx.recv_timeout(TEARDOWN_GRACE).is_err() {
        crate::report::error(format_args!(
            "a disk's I/O is stuck on storage that does not answer; exiting without waiting for it"
        ));
    }
}

/// Runs the main loop until it has an outcome.
fn run_main_loop(manager: &mut EventManager<MainLoop>, main: MainLoop) -> Result<i32, RunError> {
    let id = manager.add_subscriber(main);
    loop {
        let main = manager.subscriber_mut(id).map_err(RunError::EventLoop)?;
        if let Some(outcome) = main.outcome.take() {
            return outcome;
        }
        manager.run().map_err(RunError::EventLoop)?;
    }
}

/// Formats a run error for the one-line report on stderr.
pub fn describe(e: &RunError) -> String {
    chain(e)
}
