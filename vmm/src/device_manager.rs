// SPDX-License-Identifier: Apache-2.0
//! The device manager: the one place that wires devices into the VM. Each `add_*` method
//! creates one device, gives it its I/O ports or MMIO window and its interrupt (an irqfd on
//! its GSI), puts it on the bus the vCPUs dispatch on, and adds its description to the DSDT.
//! The QEMU-style `-device`/`-blockdev` options and device hotplug call into it too.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use block::{
    Aio, Backend, BackendConfig, BlockNode, HandOverError, Registry, RegistryError,
    ThrottleConfigError, ThrottleGroups, YankTable,
};
use devices::acpi::{pm, AcpiPm, Ged, GedError};
use devices::legacy::{DebugPort, SerialDevice, I8042};
use devices::virtio::block::ThreadHooks;
use devices::virtio::{BlockState, MmioTransport, QuiesceError, VirtioBlock};
use devices::GuestMemoryMmap;
use devices::{Bus, BusDevice, BusError, StateError, VmEventSink};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::acpi::DsdtBuilder;
use crate::disk::{DiskSource, DiskSpec};
use crate::layout::{
    ACPI_PM_PORT, COM1_GSI, COM1_PORT, COM1_PORT_LEN, DEBUG_PORT, DEBUG_PORT_LEN, GED_GSI,
    I8042_PORT, I8042_PORT_LEN, LAST_DEVICE_GSI, VIRTIO_FIRST_GSI, VIRTIO_MMIO_SIZE,
    VIRTIO_MMIO_START,
};
pub use crate::migration::state::{DevicesState, DiskInfo, DiskState, DEVICES_STATE_VERSION};
use crate::pty::{Pty, PtyWriter};
use crate::seccomp::{self, ThreadKind};
use crate::socket_console::{SocketConsole, SocketConsoleWriter};

/// Errors while creating or wiring a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Two devices claim the same addresses (a VMM bug).
    #[error("Cannot place a device on the bus")]
    Bus(#[from] BusError),
    /// An eventfd could not be created.
    #[error("Cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// KVM refused an irqfd.
    #[error("Cannot register an irqfd for GSI {0}")]
    Irqfd(u32, #[source] kvm_ioctls::Error),
    /// COM1 could not be reset.
    #[error("Cannot reset COM1")]
    SerialReset(#[source] std::io::Error),
    /// The serial output file cannot be created.
    #[error("Cannot create serial output file '{0}'")]
    SerialFile(PathBuf, #[source] std::io::Error),
    /// A disk could not be attached: the option that made it (`--disk PATH`, `-device ...`).
    #[error("{0}")]
    Disk(String, #[source] block::RegistryError),
    /// More disks than virtio-mmio slots.
    #[error("At most {0} disks fit in the virtio-mmio window; {1} were given")]
    TooManyDisks(usize, usize),
    /// The virtio-mmio transport could not be created.
    #[error("Cannot create the virtio-mmio transport of disk {0}")]
    Transport(String, #[source] devices::virtio::MmioError),
    /// KVM refused an ioeventfd.
    #[error("Cannot register the queue notification of disk {0}")]
    IoEvent(String, #[source] kvm_ioctls::Error),
    /// A fault-injection rule of `--disk` does not fit the image (`--disk PATH`).
    #[error("{0}")]
    Inject(String, #[source] block::InjectError),
    /// The serial console's pseudo-terminal.
    #[error(transparent)]
    Pty(#[from] crate::pty::PtyError),
    /// The serial console's socket.
    #[error("Cannot create the serial console's socket")]
    SerialSocket(#[source] monitor::listener::ListenError),
    /// A `-blockdev` node cannot be created: the node (`node-name=NAME`) and why.
    #[error("-blockdev {0}: {1}")]
    Blockdev(String, String),
    /// The I/O limits of a disk are refused: the option that made it and why.
    #[error("{0}: {1}")]
    Throttle(String, ThrottleConfigError),
    /// A saved device state of another format version.
    #[error("Device state version {saved} is not supported (this vmm reads version {here})")]
    StateVersion {
        /// The version in the state.
        saved: u32,
        /// [`DEVICES_STATE_VERSION`].
        here: u32,
    },
    /// A device the source had is missing here, or the other way round.
    #[error("{0}")]
    StateDevices(String),
    /// A device refused its saved state (a mismatch, an invalid value).
    #[error(transparent)]
    State(#[from] StateError),
    /// A disk could not be quiesced for the migration.
    #[error(transparent)]
    Quiesce(#[from] QuiesceError),
    /// A disk's transport carries something other than virtio-blk (a VMM bug).
    #[error("Disk {0} is not a virtio-blk device")]
    NotBlock(String),
    /// An image could not be handed over to the destination.
    #[error("Cannot hand over block node '{0}'")]
    Inactivate(String, #[source] HandOverError),
    /// An image could not be taken over (another process holds its locks).
    #[error("Cannot take over block node '{0}'")]
    Activate(String, #[source] HandOverError),
}

/// A device's mutex, even if a thread panicked while holding it.
fn locked<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The virtio-blk device behind a disk's transport.
fn block_of<'a>(t: &'a MmioTransport, id: &str) -> Result<&'a VirtioBlock, DeviceError> {
    t.device()
        .as_any()
        .downcast_ref::<VirtioBlock>()
        .ok_or_else(|| DeviceError::NotBlock(id.to_owned()))
}

/// The virtio-blk device behind a disk's transport, mutably.
fn block_of_mut<'a>(
    t: &'a mut MmioTransport,
    id: &str,
) -> Result<&'a mut VirtioBlock, DeviceError> {
    t.device_mut()
        .as_any_mut()
        .downcast_mut::<VirtioBlock>()
        .ok_or_else(|| DeviceError::NotBlock(id.to_owned()))
}

/// Refuses when the source had `what` and this VM has not, or the other way round.
fn same_presence<A, B>(what: &str, saved: &Option<A>, here: &Option<B>) -> Result<(), DeviceError> {
    match (saved.is_some(), here.is_some()) {
        (true, false) => Err(DeviceError::StateDevices(format!(
            "The source has {what} and this VM has none"
        ))),
        (false, true) => Err(DeviceError::StateDevices(format!(
            "This VM has {what} and the source had none"
        ))),
        _ => Ok(()),
    }
}

/// Where the guest's serial output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialMode {
    /// The VMM's stdout (and stdin as input).
    Stdio,
    /// A file, created or truncated (`/dev/fdset/N`: a descriptor of an `-add-fd` set).
    File(PathBuf),
    /// A file, created or appended to (or a descriptor set, as for `File`).
    Append(PathBuf),
    /// A new pseudo-terminal: output to its master, input from it (see [`crate::pty`]).
    Pty,
    /// A listening socket: one client at a time is the console (see
    /// [`crate::socket_console`]).
    Socket(monitor::SocketSpec),
    /// Discarded.
    None,
}

/// A file that also gets everything the guest writes to its serial port (QEMU's chardev
/// `logfile`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerialLog {
    /// The file (or `/dev/fdset/N`).
    pub path: PathBuf,
    /// Append to it rather than truncate it (`logappend`).
    pub append: bool,
}

/// The guest's COM1 and the character device behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerialConfig {
    /// Where output goes and input comes from.
    pub mode: SerialMode,
    /// A copy of the output.
    pub log: Option<SerialLog>,
    /// The character device's label in `query-chardev` (`serial0` for `--serial`, the
    /// `-chardev` id otherwise).
    pub label: String,
    /// The device's id when `-device isa-serial,id=...` gave one (`qom-list` lists it under
    /// `/machine/peripheral`).
    pub device_id: Option<String>,
}

impl SerialConfig {
    /// COM1 on `mode`, with QEMU's label for `-serial`'s chardev and no log.
    pub fn new(mode: SerialMode) -> Self {
        Self {
            mode,
            log: None,
            label: "serial0".into(),
            device_id: None,
        }
    }
}

/// What `query-chardev` shows of the serial port's character device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerialChardev {
    /// The label.
    pub label: String,
    /// QEMU's description of the backend (`pty:/dev/pts/3`, `stdio`, `file:PATH`, `null`).
    pub filename: String,
    /// The `-device isa-serial` id, if any.
    pub device_id: Option<String>,
}

/// Writes the guest's output to its destination and to the log. A failing log write does not
/// hold the console back (the bytes are lost to the log only).
struct Tee {
    out: Box<dyn Write + Send>,
    log: std::fs::File,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        let _ = self.log.write_all(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// A disk: its block backend and the virtio-blk device (behind its MMIO transport).
pub struct Disk {
    /// The backend the device reads and writes.
    pub backend: Arc<Backend>,
    /// The transport, as the bus sees it.
    pub transport: Arc<Mutex<MmioTransport>>,
    /// The QOM-style path QMP reports as `qdev` (and `qom-path` in `BLOCK_IO_ERROR`).
    pub qdev: String,
    /// What the virtio-blk device told the driver (fixed for the device's life).
    pub block: BlockState,
}

/// The number of virtio-mmio slots: one GSI each, from [`VIRTIO_FIRST_GSI`] to the IOAPIC's
/// last pin.
const VIRTIO_SLOTS: usize = (LAST_DEVICE_GSI - VIRTIO_FIRST_GSI + 1) as usize;

/// Owns the buses, the DSDT under construction and every device that needs the VMM's
/// attention after boot (serial input, the power button, disks for reset and QMP).
pub struct DeviceManager {
    vm_fd: Arc<VmFd>,
    mem: GuestMemoryMmap,
    events: VmEventSink,
    pio: Bus,
    mmio: Bus,
    dsdt: DsdtBuilder,
    registry: Registry,
    serial: Option<Arc<Mutex<SerialDevice>>>,
    /// The serial console's pseudo-terminal, whose input the main loop reads.
    serial_pty: Option<Arc<Pty>>,
    /// The serial console's listening socket, whose clients the main loop accepts and reads.
    serial_socket: Option<Arc<SocketConsole>>,
    /// What `query-chardev` shows of the serial port's backend.
    serial_chardev: Option<SerialChardev>,
    i8042: Option<Arc<Mutex<I8042>>>,
    debug_port: Option<Arc<Mutex<DebugPort>>>,
    acpi_pm: Option<Arc<Mutex<AcpiPm>>>,
    ged: Option<Ged>,
    disks: Vec<Disk>,
    /// Nodes created by QMP's `blockdev-add` (only those may be deleted by `blockdev-del`).
    monitor_nodes: BTreeSet<String>,
    /// The graph's yank instances, published after every change for the monitor thread.
    yank: Arc<YankTable>,
    /// The disks' throttle groups, by name.
    throttle_groups: ThrottleGroups,
    /// Images are opened inactive (an incoming migration) until [`DeviceManager::
    /// activate_images`].
    images_inactive: bool,
}

impl std::fmt::Debug for DeviceManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceManager")
            .field("disks", &self.disks.len())
            .finish()
    }
}

impl DeviceManager {
    /// A device manager with empty buses for the VM `vm_fd` with guest memory `mem`; devices
    /// that raise VM events (poweroff, reset) get clones of `events`.
    ///
    /// # Errors
    /// Fails when the event sink cannot be duplicated.
    pub fn new(
        vm_fd: Arc<VmFd>,
        mem: &GuestMemoryMmap,
        events: &VmEventSink,
    ) -> Result<Self, DeviceError> {
        Ok(Self {
            vm_fd,
            mem: mem.clone(),
            events: events.try_clone().map_err(DeviceError::EventFd)?,
            pio: Bus::new(),
            mmio: Bus::new(),
            dsdt: DsdtBuilder::new(),
            registry: Registry::new(),
            serial: None,
            serial_pty: None,
            serial_socket: None,
            serial_chardev: None,
            i8042: None,
            debug_port: None,
            acpi_pm: None,
            ged: None,
            disks: Vec::new(),
            monitor_nodes: BTreeSet::new(),
            yank: Arc::new(YankTable::default()),
            throttle_groups: ThrottleGroups::new(),
            images_inactive: false,
        })
    }

    /// Opens the images of the disks and block nodes added from now on inactive (`true`: the
    /// VM is an incoming migration's destination, QEMU's `-incoming`): without their locks,
    /// while the source still runs on them, and refusing writes until
    /// [`DeviceManager::activate_images`] at the switchover.
    pub fn set_images_inactive(&mut self, inactive: bool) {
        self.images_inactive = inactive;
    }

    /// Whether new images are opened inactive (see [`DeviceManager::set_images_inactive`]).
    pub fn images_inactive(&self) -> bool {
        self.images_inactive
    }

    fn irqfd(&self, gsi: u32) -> Result<EventFd, DeviceError> {
        let fd = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        self.vm_fd
            .register_irqfd(&fd, gsi)
            .map_err(|e| DeviceError::Irqfd(gsi, e))?;
        Ok(fd)
    }

    fn sink(&self) -> Result<VmEventSink, DeviceError> {
        self.events.try_clone().map_err(DeviceError::EventFd)
    }

    fn add_pio<D: BusDevice + 'static>(
        &mut self,
        device: D,
        port: u16,
        len: u64,
    ) -> Result<Arc<Mutex<D>>, DeviceError> {
        let device = Arc::new(Mutex::new(device));
        self.pio.insert(device.clone(), u64::from(port), len)?;
        Ok(device)
    }

    /// COM1 (16550A) on its ISA ports and IRQ 4, writing to `config.mode` (and its log).
    ///
    /// # Errors
    /// Fails when the output file or the pseudo-terminal cannot be created or KVM refuses
    /// the interrupt.
    pub fn add_serial(&mut self, config: &SerialConfig) -> Result<(), DeviceError> {
        let file = |path: &PathBuf, append| {
            crate::fdset::open_output(path, append)
                .map_err(|e| DeviceError::SerialFile(path.clone(), e))
        };
        let (mut output, filename): (Box<dyn Write + Send>, String) = match &config.mode {
            SerialMode::Stdio => (Box::new(std::io::stdout()), "stdio".into()),
            SerialMode::File(path) | SerialMode::Append(path) => {
                let append = matches!(config.mode, SerialMode::Append(_));
                let shown = format!("file:{}", path.display());
                (Box::new(file(path, append)?), shown)
            }
            SerialMode::Pty => {
                let pty = Arc::new(Pty::open()?);
                let shown = format!("pty:{}", pty.path().display());
                self.serial_pty = Some(pty.clone());
                (Box::new(PtyWriter(pty)), shown)
            }
            SerialMode::Socket(spec) => {
                let console =
                    Arc::new(SocketConsole::bind(spec).map_err(DeviceError::SerialSocket)?);
                self.serial_socket = Some(console.clone());
                (
                    Box::new(SocketConsoleWriter(console)),
                    crate::qmp_socket::describe(&spec.endpoint),
                )
            }
            SerialMode::None => (Box::new(std::io::sink()), "null".into()),
        };
        if let Some(log) = &config.log {
            output = Box::new(Tee {
                out: output,
                log: file(&log.path, log.append)?,
            });
        }
        // A discarded console has no character device (QEMU's `-serial none`).
        self.serial_chardev = (config.mode != SerialMode::None).then(|| SerialChardev {
            label: config.label.clone(),
            filename,
            device_id: config.device_id.clone(),
        });
        let serial = SerialDevice::new(self.irqfd(COM1_GSI)?, output, COM1_PORT, COM1_GSI);
        self.dsdt.add(&serial);
        self.serial = Some(self.add_pio(serial, COM1_PORT, COM1_PORT_LEN)?);
        Ok(())
    }

    /// The i8042 controller's reset line (command 0xFE resets the VM).
    ///
    /// # Errors
    /// Fails when the event sink cannot be duplicated.
    pub fn add_i8042(&mut self) -> Result<(), DeviceError> {
        let i8042 = I8042::new(self.sink()?);
        self.i8042 = Some(self.add_pio(i8042, I8042_PORT, I8042_PORT_LEN)?);
        Ok(())
    }

    /// The debug port 0x80, logging each write with its time since `started` when `log`.
    ///
    /// # Errors
    /// Fails only on a bus conflict (a VMM bug).
    pub fn add_debug_port(
        &mut self,
        started: std::time::Instant,
        log: bool,
    ) -> Result<(), DeviceError> {
        let out: Option<Box<dyn Write + Send>> = log.then(|| Box::new(std::io::stderr()) as _);
        self.debug_port =
            Some(self.add_pio(DebugPort::new(started, out), DEBUG_PORT, DEBUG_PORT_LEN)?);
        Ok(())
    }

    /// The ACPI sleep control/status and reset registers, with `_S5` in the DSDT.
    ///
    /// # Errors
    /// Fails when the event sink cannot be duplicated.
    pub fn add_acpi_pm(&mut self) -> Result<(), DeviceError> {
        let acpi_pm = AcpiPm::new(self.sink()?);
        self.dsdt.add(&acpi_pm);
        self.acpi_pm = Some(self.add_pio(acpi_pm, ACPI_PM_PORT, pm::BLOCK_LEN)?);
        Ok(())
    }

    /// The power button, notified through a generic event device on its GSI.
    ///
    /// # Errors
    /// Fails when KVM refuses the interrupt.
    pub fn add_power_button(&mut self) -> Result<(), DeviceError> {
        let ged = Ged::new(self.irqfd(GED_GSI)?, GED_GSI);
        self.dsdt.add(&ged);
        self.ged = Some(ged);
        Ok(())
    }

    /// Opens a disk image and attaches it as a virtio-blk device in the next virtio-mmio slot
    /// (its own window and GSI, in `--disk` order).
    ///
    /// # Errors
    /// Fails when the image cannot be opened, the slots are used up, or KVM refuses the
    /// device's interrupt or queue notification.
    pub fn add_disk(&mut self, spec: &DiskSpec) -> Result<(), DeviceError> {
        let slot = self.disks.len();
        Self::check_disk_count(slot + 1)?;
        let id = spec
            .id
            .clone()
            .unwrap_or_else(|| self.registry.next_drive_id());
        let aio = match spec.aio {
            Some(Aio::Threads) => Aio::Threads,
            asked => {
                match block::io_uring_available() {
                    Ok(()) => Aio::IoUring,
                    Err(e) => {
                        // A notice, not an error: the thread engine serves the same requests.
                        if asked.is_some() {
                            crate::report::error(format_args!(
                                "io_uring is not available here ({e}): disk {id} uses aio=threads"
                            ));
                        }
                        Aio::Threads
                    }
                }
            }
        };
        let backend = match &spec.source {
            DiskSource::Image(path) => self.registry.open(BackendConfig {
                node_name: spec.node_name.clone(),
                read_only: spec.read_only,
                cache: spec.cache,
                serial: spec.serial.clone(),
                aio,
                locking: spec.locking,
                inactive: self.images_inactive,
                ..BackendConfig::new(id.clone(), path.clone())
            }),
            DiskSource::Node(node) => self.registry.attach(&id, node, |b| {
                b.with_serial(spec.serial.clone()).with_aio(aio)
            }),
        }
        .map_err(|e| DeviceError::Disk(spec.source.to_string(), e))?;
        backend.set_error_policy(Arc::new(spec.policy));
        for rule in &spec.inject {
            backend
                .inject(rule.clone())
                .map_err(|e| DeviceError::Inject(spec.source.to_string(), e))?;
        }
        // As QEMU's -drive: the group is the drive id unless named.
        backend
            .throttle()
            .set_limits(
                &self.throttle_groups,
                spec.throttle,
                spec.throttle_group.as_deref(),
                &id,
            )
            .map_err(|e| DeviceError::Throttle(spec.source.to_string(), e))?;
        let slot = slot as u32;
        let base = VIRTIO_MMIO_START + u64::from(slot) * VIRTIO_MMIO_SIZE;
        let gsi = VIRTIO_FIRST_GSI + slot;
        let device = VirtioBlock::build(
            backend.clone(),
            spec.num_queues,
            spec.io_threads(
                std::thread::available_parallelism()
                    .map(usize::from)
                    .unwrap_or(1),
            ),
            ThreadHooks {
                io: seccomp::hook(ThreadKind::BlockIo),
                request: seccomp::hook(ThreadKind::BlockRequest),
            },
        );
        let block = device.save_state();
        let transport = MmioTransport::new(
            Box::new(device),
            self.mem.clone(),
            self.irqfd(gsi)?,
            base,
            gsi,
            slot,
        )
        .map_err(|e| DeviceError::Transport(id.clone(), e))?;
        for (queue, evt) in transport.queue_events().iter().enumerate() {
            self.vm_fd
                .register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(transport.notify_address()),
                    queue as u32,
                )
                .map_err(|e| DeviceError::IoEvent(id.clone(), e))?;
        }
        self.dsdt.add(&transport);
        let transport = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(transport.clone(), base, VIRTIO_MMIO_SIZE)?;
        self.disks.push(Disk {
            backend,
            transport,
            qdev: format!("/machine/peripheral/{id}/virtio-backend"),
            block,
        });
        self.yank.publish(&self.registry);
        Ok(())
    }

    /// Checks that `count` disks fit before any is opened, so a long `--disk` list fails with
    /// the count rather than after opening the first eighteen images.
    ///
    /// # Errors
    /// [`DeviceError::TooManyDisks`] when they do not fit.
    pub fn check_disk_count(count: usize) -> Result<(), DeviceError> {
        if count > VIRTIO_SLOTS {
            return Err(DeviceError::TooManyDisks(VIRTIO_SLOTS, count));
        }
        Ok(())
    }

    /// The port I/O bus the vCPUs dispatch `in`/`out` on.
    pub fn pio(&self) -> &Bus {
        &self.pio
    }

    /// The MMIO bus the vCPUs dispatch memory exits on.
    pub fn mmio(&self) -> &Bus {
        &self.mmio
    }

    /// The DSDT describing every device added so far.
    pub fn dsdt(&self) -> &DsdtBuilder {
        &self.dsdt
    }

    /// A new handle on the VM event queue (for vCPUs).
    ///
    /// # Errors
    /// Fails when the event sink cannot be duplicated.
    pub fn event_sink(&self) -> Result<VmEventSink, DeviceError> {
        self.sink()
    }

    /// Returns every device to its power-on state (for a system reset): virtio devices stop
    /// their I/O threads and forget their queues, as after a driver reset (the device releases
    /// requests that an injection rule is delaying, so that its I/O thread can stop); COM1
    /// forgets the previous driver's settings.
    ///
    /// # Errors
    /// Fails when COM1 cannot be reset (no file descriptor left for its interrupt).
    pub fn reset(&self) -> Result<(), DeviceError> {
        if let Some(serial) = &self.serial {
            serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .reset()
                .map_err(DeviceError::SerialReset)?;
        }
        for disk in &self.disks {
            disk.transport
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .reset();
        }
        Ok(())
    }

    /// Presses the ACPI power button; a machine built without one ignores the press, as a
    /// PC without a button would.
    ///
    /// # Errors
    /// Fails when the button's interrupt cannot be raised.
    pub fn power_button(&self) -> Result<(), GedError> {
        match &self.ged {
            Some(ged) => ged.press_power_button(),
            None => Ok(()),
        }
    }

    /// The serial console's pseudo-terminal, if it has one.
    pub fn serial_pty(&self) -> Option<&Arc<Pty>> {
        self.serial_pty.as_ref()
    }

    /// The serial console's listening socket, if it has one.
    pub fn serial_socket(&self) -> Option<&Arc<SocketConsole>> {
        self.serial_socket.as_ref()
    }

    /// The serial port's character device, if the machine has a serial port.
    pub fn serial_chardev(&self) -> Option<&SerialChardev> {
        self.serial_chardev.as_ref()
    }

    /// Feeds console input to COM1 (dropped when there is no serial port).
    pub fn serial_input(&self, bytes: &[u8]) {
        if let Some(serial) = &self.serial {
            serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .enqueue_input(bytes);
        }
    }

    /// The disks, in `--disk` order.
    pub fn disks(&self) -> &[Disk] {
        &self.disks
    }

    /// The block graph.
    pub fn block_graph(&self) -> &Registry {
        &self.registry
    }

    /// The disks' throttle groups (QMP's `block_set_io_throttle` moves disks between them).
    pub fn throttle_groups(&self) -> &ThrottleGroups {
        &self.throttle_groups
    }

    /// The block graph's yank instances, as last published (shared with the monitor thread).
    pub fn yank_table(&self) -> &Arc<YankTable> {
        &self.yank
    }

    /// Adds a node made by `blockdev-add`.
    ///
    /// # Errors
    /// Its node-name is taken or malformed.
    pub fn add_monitor_node(&mut self, node: Arc<dyn BlockNode>) -> Result<(), RegistryError> {
        let name = node.node_name().to_owned();
        self.registry.add_node(node)?;
        self.monitor_nodes.insert(name);
        self.yank.publish(&self.registry);
        Ok(())
    }

    /// Takes a node made by `blockdev-add` out of the graph (`blockdev-del`); the caller closes
    /// it (off the main loop: closing a file on hung storage may block).
    ///
    /// # Errors
    /// QEMU's texts: no such node, a node not made by `blockdev-add`, a node in use.
    pub fn remove_monitor_node(&mut self, name: &str) -> Result<Arc<dyn BlockNode>, String> {
        if self.registry.node(name).is_none() {
            return Err(RegistryError::NoSuchNode(name.to_owned()).to_string());
        }
        if !self.monitor_nodes.contains(name) {
            return Err(format!("Node {name} is not owned by the monitor"));
        }
        let node = self.registry.remove_node(name).map_err(|e| e.to_string())?;
        self.monitor_nodes.remove(name);
        self.yank.publish(&self.registry);
        Ok(node)
    }
}

// The migration's side of the devices. Called by the migration (branch s17-mig), which is
// merged with this branch; until then only the tests call it.
impl DeviceManager {
    /// What identifies disk `disk` (see [`DiskInfo`]).
    fn disk_info(disk: &Disk) -> DiskInfo {
        DiskInfo {
            id: disk.backend.id().to_owned(),
            node_name: disk.backend.root().node_name().to_owned(),
            size: disk.backend.size(),
            read_only: disk.backend.read_only(),
            num_queues: disk.block.num_queues,
            serial: disk.backend.serial().to_owned(),
        }
    }

    /// Every device's state, for a migration or snapshot: call it with every vCPU parked and
    /// after [`DeviceManager::quiesce`] (else the disks' queue indices may be behind the
    /// requests their I/O threads popped).
    pub fn save_state(&self) -> DevicesState {
        let disks = self
            .disks
            .iter()
            .map(|disk| DiskState {
                info: Self::disk_info(disk),
                transport: locked(&disk.transport).save_state(),
                block: disk.block,
            })
            .collect();
        DevicesState {
            version: DEVICES_STATE_VERSION,
            serial: self.serial.as_ref().map(|d| locked(d).save_state()),
            i8042: self.i8042.as_ref().map(|d| locked(d).save_state()),
            debug_port: self.debug_port.as_ref().map(|d| locked(d).save_state()),
            acpi_pm: self.acpi_pm.as_ref().map(|d| locked(d).save_state()),
            ged: self.ged.as_ref().map(Ged::save_state),
            disks,
        }
    }

    /// Checks `state` against this VM's devices, changing nothing: the version, the same
    /// devices, the same disks (id, node-name, size, read-only, queues, serial), each
    /// device's checks.
    ///
    /// # Errors
    /// The first difference, in one line naming what differs.
    pub fn check_state(&self, state: &DevicesState) -> Result<(), DeviceError> {
        if state.version != DEVICES_STATE_VERSION {
            return Err(DeviceError::StateVersion {
                saved: state.version,
                here: DEVICES_STATE_VERSION,
            });
        }
        same_presence("COM1", &state.serial, &self.serial)?;
        same_presence("an i8042", &state.i8042, &self.i8042)?;
        same_presence("a debug port", &state.debug_port, &self.debug_port)?;
        same_presence("ACPI PM registers", &state.acpi_pm, &self.acpi_pm)?;
        same_presence("a power button", &state.ged, &self.ged)?;
        if let Some(serial) = &state.serial {
            SerialDevice::check_state(serial)?;
        }
        if state.disks.len() != self.disks.len() {
            return Err(DeviceError::StateDevices(format!(
                "The source has {} disks, this VM has {}",
                state.disks.len(),
                self.disks.len()
            )));
        }
        for (saved, disk) in state.disks.iter().zip(&self.disks) {
            let here = Self::disk_info(disk);
            let s = &saved.info;
            if s.id != here.id {
                return Err(StateError::mismatch(
                    format!("disk {}", here.id),
                    "drive id",
                    s.id.escape_debug(),
                    &here.id,
                )
                .into());
            }
            let name = format!("disk {}", here.id);
            let differs = |what, a: &dyn std::fmt::Display, b: &dyn std::fmt::Display| {
                DeviceError::from(StateError::mismatch(name.clone(), what, a, b))
            };
            // A generated name (`#block123`) says only in which order nodes were made.
            let generated = |n: &str| n.starts_with('#');
            if s.node_name != here.node_name
                && !(generated(&s.node_name) && generated(&here.node_name))
            {
                return Err(differs(
                    "node-name",
                    &s.node_name.escape_debug(),
                    &here.node_name,
                ));
            }
            if s.size != here.size {
                return Err(differs(
                    "size",
                    &format_args!("{} bytes", s.size),
                    &format_args!("{} bytes", here.size),
                ));
            }
            if s.read_only != here.read_only {
                return Err(differs("read-only", &s.read_only, &here.read_only));
            }
            if s.num_queues != here.num_queues {
                return Err(differs("num-queues", &s.num_queues, &here.num_queues));
            }
            if s.serial != here.serial {
                return Err(differs("serial", &s.serial.escape_debug(), &here.serial));
            }
            let mut t = locked(&disk.transport);
            // The virtio-blk check changes nothing either (it takes the device mutably as
            // restores do).
            block_of_mut(&mut t, disk.backend.id())?.restore_state(&saved.block)?;
            t.check_state(&saved.transport)?;
        }
        Ok(())
    }

    /// Restores every device from `state` (an incoming migration, before the vCPUs run):
    /// [`DeviceManager::check_state`] first, so a mismatch changes nothing; then each device
    /// takes its state, and a disk whose driver had it running starts its data path on the
    /// saved queues. That data path serves at once what the guest made available (nothing,
    /// when the source quiesced), and an inactive image refuses writes: call
    /// [`DeviceManager::activate_images`] first, or at least before the vCPUs run.
    ///
    /// # Errors
    /// A mismatch (nothing changed), or a device that could not take its state (a data path
    /// that cannot start, an interrupt that cannot be raised: the VM must not run).
    pub fn restore_state(&self, state: &DevicesState) -> Result<(), DeviceError> {
        self.check_state(state)?;
        if let (Some(saved), Some(d)) = (&state.serial, &self.serial) {
            locked(d).restore_state(saved)?;
        }
        if let (Some(saved), Some(d)) = (&state.i8042, &self.i8042) {
            locked(d).restore_state(saved)?;
        }
        if let (Some(saved), Some(d)) = (&state.debug_port, &self.debug_port) {
            locked(d).restore_state(saved)?;
        }
        if let (Some(saved), Some(d)) = (&state.acpi_pm, &self.acpi_pm) {
            locked(d).restore_state(saved)?;
        }
        if let (Some(saved), Some(d)) = (&state.ged, &self.ged) {
            d.restore_state(saved)?;
        }
        for (saved, disk) in state.disks.iter().zip(&self.disks) {
            locked(&disk.transport).restore_state(&saved.transport)?;
        }
        Ok(())
    }

    /// Quiesces every disk ([`VirtioBlock::quiesce`]) within `timeout` overall: called on the
    /// main thread with every vCPU parked (and the backends drained), before
    /// [`DeviceManager::save_state`]. The disks keep running: a cancelled migration just
    /// resumes the vCPUs.
    ///
    /// # Errors
    /// A disk with requests stopped by an I/O error, or requests still in flight when the
    /// time is up.
    pub fn quiesce(&self, timeout: Duration) -> Result<(), DeviceError> {
        let deadline = Instant::now() + timeout;
        for disk in &self.disks {
            let t = locked(&disk.transport);
            let left = deadline.saturating_duration_since(Instant::now());
            block_of(&t, disk.backend.id())?.quiesce(left)?;
        }
        Ok(())
    }

    /// Hands every image over to the destination (the source's switchover, after
    /// [`DeviceManager::quiesce`]): each writable image is flushed (`fdatasync`) and every
    /// image's locks are released, the files staying open; writes are refused until
    /// [`DeviceManager::activate_images`] (a failed migration). On failure the images are
    /// as they were.
    ///
    /// # Errors
    /// The node whose flush or unlock failed.
    pub fn inactivate_images(&mut self) -> Result<(), DeviceError> {
        self.registry
            .inactivate_all()
            .map_err(|(node, e)| DeviceError::Inactivate(node, e))?;
        self.images_inactive = true;
        Ok(())
    }

    /// Takes every image over: the destination at the switchover (its images were opened
    /// inactive), or the source when the migration failed after
    /// [`DeviceManager::inactivate_images`]. Images opened from now on are active.
    ///
    /// # Errors
    /// An image whose locks another process holds (the images that could be activated are).
    pub fn activate_images(&mut self) -> Result<(), DeviceError> {
        self.registry
            .activate_all()
            .map_err(|(node, e)| DeviceError::Activate(node, e))?;
        self.images_inactive = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use kvm_ioctls::Kvm;
    use vm_memory::GuestAddress;
    use vmm_sys_util::tempfile::TempFile;

    use super::*;

    /// An image of `sectors` sectors.
    fn image(sectors: usize) -> TempFile {
        let f = TempFile::new().unwrap();
        std::fs::write(f.as_path(), vec![0u8; sectors * 512]).unwrap();
        f
    }

    /// A machine's devices (COM1, i8042, debug port, ACPI PM, power button) and `disks`
    /// (`--disk` values), images opened inactive if asked; `None` without KVM.
    fn machine(disks: &[String], inactive: bool) -> Option<DeviceManager> {
        let kvm = Kvm::new().ok()?;
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let (events, _rx, _wake) = VmEventSink::new().unwrap();
        let mut dm = DeviceManager::new(Arc::new(vm), &mem, &events).unwrap();
        dm.set_images_inactive(inactive);
        dm.add_serial(&SerialConfig::new(SerialMode::None)).unwrap();
        dm.add_i8042().unwrap();
        dm.add_debug_port(Instant::now(), false).unwrap();
        dm.add_acpi_pm().unwrap();
        dm.add_power_button().unwrap();
        for d in disks {
            dm.add_disk(&d.parse().unwrap()).unwrap();
        }
        Some(dm)
    }

    fn disk(f: &TempFile, opts: &str) -> String {
        format!("{},id=d0,node-name=n0{opts}", f.as_path().display())
    }

    fn err(r: Result<(), DeviceError>) -> String {
        crate::error::chain(&r.unwrap_err())
    }

    #[test]
    fn state_round_trip_and_one_line_refusals() {
        let img = image(128);
        let Some(src) = machine(&[disk(&img, "")], false) else {
            return;
        };
        src.serial_input(b"abc");
        let state = src.save_state();
        assert_eq!(state.version, DEVICES_STATE_VERSION);
        assert_eq!(state.serial.as_ref().unwrap().rx_fifo, b"abc");
        let info = &state.disks[0].info;
        assert_eq!(
            (info.id.as_str(), info.node_name.as_str(), info.size),
            ("d0", "n0", 65536)
        );
        assert_eq!(
            (info.read_only, info.num_queues, info.serial.as_str()),
            (false, 1, "d0")
        );
        let json = serde_json::to_string(&state).unwrap();
        let state: DevicesState = serde_json::from_str(&json).unwrap();

        // The destination opens the same image inactive (the source holds its locks).
        let dst = machine(&[disk(&img, "")], true).unwrap();
        dst.restore_state(&state).unwrap();
        assert_eq!(dst.save_state(), state);

        // Refusals, each one line naming what differs, changing nothing.
        let fresh = machine(&[disk(&img, "")], true).unwrap();
        let before = fresh.save_state();
        let mut other = state.clone();
        other.version = 2;
        assert_eq!(
            err(fresh.restore_state(&other)),
            "Device state version 2 is not supported (this vmm reads version 1)"
        );
        let mut other = state.clone();
        other.disks[0].info.serial = "other".into();
        assert_eq!(
            err(fresh.restore_state(&other)),
            "disk d0: serial differs (source other, here d0)"
        );
        let mut other = state.clone();
        other.ged = None;
        assert_eq!(
            err(fresh.restore_state(&other)),
            "This VM has a power button and the source had none"
        );
        let mut other = state.clone();
        other.disks[0].transport.queues[0].size = 3;
        // A check deep in the last device still comes before any change.
        other.serial.as_mut().unwrap().scratch = 0x42;
        assert_eq!(
            err(fresh.restore_state(&other)),
            "virtio-mmio device at 0xd0000000: saved queue 0 is invalid: invalid queue size"
        );
        assert_eq!(fresh.save_state(), before);

        let bigger = image(256);
        let dst = machine(&[disk(&bigger, "")], false).unwrap();
        assert_eq!(
            err(dst.restore_state(&state)),
            "disk d0: size differs (source 65536 bytes, here 131072 bytes)"
        );
        let none = machine(&[], false).unwrap();
        assert_eq!(
            err(none.restore_state(&state)),
            "The source has 1 disks, this VM has 0"
        );
        drop(dst);
        let mq = machine(&[disk(&bigger, ",num-queues=2")], false).unwrap();
        let mut other = state.clone();
        other.disks[0].info.size = 131072;
        assert_eq!(
            err(mq.restore_state(&other)),
            "disk d0: num-queues differs (source 1, here 2)"
        );
        // Idle disks quiesce at once.
        src.quiesce(Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn images_are_handed_over_between_two_machines() {
        let img = image(128);
        let Some(mut src) = machine(&[disk(&img, "")], false) else {
            return;
        };
        let mut dst = machine(&[disk(&img, "")], true).unwrap();
        assert!(dst.images_inactive());
        let path = img.as_path().display();
        assert_eq!(
            err(dst.activate_images()),
            format!(
                "Cannot take over block node 'n0': Failed to get \"write\" lock: is another \
                 process using the image [{path}]?"
            )
        );
        src.quiesce(Duration::from_secs(1)).unwrap();
        src.inactivate_images().unwrap();
        dst.activate_images().unwrap();
        assert!(!dst.images_inactive());
        assert!(src.activate_images().is_err());
        // The destination failed after all: the source takes its images back.
        dst.inactivate_images().unwrap();
        src.activate_images().unwrap();
        assert!(src.block_graph().all_active());
    }
}
