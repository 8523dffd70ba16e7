// SPDX-License-Identifier: Apache-2.0
//! The virtual machine: KVM objects, guest memory, devices, ACPI tables and vCPUs, and the
//! operations the main loop performs on them (start, pause, resume, reset, shutdown).

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use block::{Backend, BackendConfig, Registry};
use devices::acpi::{pm, AcpiPm, Ged};
use devices::legacy::{DebugPort, SerialDevice, I8042};
use devices::virtio::{MmioTransport, VirtioBlock};
use devices::{Bus, BusError, VmEventSink};
use kvm_bindings::{
    kvm_irqchip, kvm_pit_config, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::acpi::{write_tables, AcpiError, DsdtBuilder};
use crate::arch::regs::BootEntry;
use crate::boot::{BootError, BootImages};
use crate::disk::DiskSpec;
use crate::layout::{
    ACPI_PM_PORT, COM1_GSI, COM1_PORT, DEBUG_PORT, GED_GSI, I8042_PORT, KVM_TSS_ADDRESS,
    LAST_DEVICE_GSI, VIRTIO_FIRST_GSI, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START,
};
use crate::memory::{create_guest_memory, register_slots, MemoryError};
use crate::vcpu::{Vcpu, VcpuContext, VcpuError, VcpuHandle};

/// Where the guest's serial output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialMode {
    /// The VMM's stdout (and stdin as input).
    Stdio,
    /// A file, created or truncated.
    File(PathBuf),
    /// Discarded.
    None,
}

/// What the VM is built from.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Kernel image (bzImage or PVH ELF).
    pub kernel: PathBuf,
    /// Optional initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Number of vCPUs.
    pub cpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Serial console destination.
    pub serial: SerialMode,
    /// Disks, in `--disk` order (the guest's vda, vdb, ...).
    pub disks: Vec<DiskSpec>,
    /// Log every write to the debug port (0x80) with its time since vmm started.
    pub debug_port: bool,
    /// When vmm started (the debug port's time origin).
    pub started: std::time::Instant,
}

/// Errors while building or operating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm is missing.
    #[error("/dev/kvm does not exist: this host has no KVM (load kvm_intel/kvm_amd, or enable nested virtualization)")]
    KvmMissing,
    /// /dev/kvm cannot be opened by this user.
    #[error("Permission denied opening /dev/kvm: add the user to the 'kvm' group or run as root")]
    KvmDenied,
    /// Opening /dev/kvm failed otherwise.
    #[error("Cannot open /dev/kvm")]
    KvmOpen(#[source] kvm_ioctls::Error),
    /// The host KVM's API version is not 12.
    #[error("KVM API version {0} is not supported (need 12)")]
    KvmApi(i32),
    /// The host KVM lacks a capability we need.
    #[error("The host's KVM lacks the {0} capability")]
    KvmCap(&'static str),
    /// A KVM VM ioctl failed.
    #[error("Cannot {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel/initrd loading.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    /// vCPU setup.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Two devices claim the same addresses (a VMM bug).
    #[error("Cannot place a device on the bus")]
    Bus(#[from] BusError),
    /// An eventfd could not be created.
    #[error("Cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The serial output file cannot be created.
    #[error("Cannot create serial output file '{0}'")]
    SerialFile(PathBuf, #[source] std::io::Error),
    /// A disk image could not be attached.
    #[error("--disk {0}")]
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
}

/// A disk: its block backend and the virtio-blk device (behind its MMIO transport).
pub struct Disk {
    /// The backend the device reads and writes.
    pub backend: Arc<Backend>,
    /// The transport, as the bus sees it.
    pub transport: Arc<Mutex<MmioTransport>>,
    /// The QOM-style path QMP reports as `qdev`.
    pub qdev: String,
}

/// A built VM.
pub struct Vm {
    vm_fd: VmFd,
    mem: GuestMemoryMmap,
    images: BootImages,
    dsdt: DsdtBuilder,
    cpus: u8,
    ram_size: u64,
    pending_vcpus: Vec<Vcpu>,
    vcpus: Vec<VcpuHandle>,
    serial: Arc<Mutex<SerialDevice>>,
    ged: Ged,
    disks: Vec<Disk>,
    initial_irqchips: Vec<kvm_irqchip>,
    initial_pit: kvm_pit_state2,
    reset_generation: u64,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("cpus", &self.cpus)
            .field("ram_size", &self.ram_size)
            .finish()
    }
}

fn open_kvm() -> Result<Kvm, VmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENXIO | libc::ENODEV => VmError::KvmMissing,
        libc::EACCES | libc::EPERM => VmError::KvmDenied,
        _ => VmError::KvmOpen(e),
    })?;
    let api = kvm.get_api_version();
    if api != 12 {
        return Err(VmError::KvmApi(api));
    }
    for (cap, name) in [
        (Cap::Irqchip, "in-kernel irqchip"),
        (Cap::Irqfd, "irqfd"),
        (Cap::Ioeventfd, "ioeventfd"),
        (Cap::UserMemory, "user memory"),
        (Cap::Pit2, "PIT2"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::KvmCap(name));
        }
    }
    Ok(kvm)
}

fn serial_output(mode: &SerialMode) -> Result<Box<dyn Write + Send>, VmError> {
    Ok(match mode {
        SerialMode::Stdio => Box::new(std::io::stdout()),
        SerialMode::File(path) => {
            Box::new(File::create(path).map_err(|e| VmError::SerialFile(path.clone(), e))?)
        }
        SerialMode::None => Box::new(std::io::sink()),
    })
}

fn irqfd(vm: &VmFd, gsi: u32) -> Result<EventFd, VmError> {
    let fd = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
    vm.register_irqfd(&fd, gsi)
        .map_err(|e| VmError::Kvm("register an irqfd", e))?;
    Ok(fd)
}

/// Opens every disk and puts a virtio-blk device for it on the MMIO bus and in the DSDT,
/// in order, each with its own window and GSI.
fn attach_disks(
    vm_fd: &VmFd,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    dsdt: &mut DsdtBuilder,
    specs: &[DiskSpec],
) -> Result<Vec<Disk>, VmError> {
    let slots = (LAST_DEVICE_GSI - VIRTIO_FIRST_GSI + 1) as usize;
    if specs.len() > slots {
        return Err(VmError::TooManyDisks(slots, specs.len()));
    }
    let mut registry = Registry::new();
    let mut disks = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let id = spec.id.clone().unwrap_or_else(|| registry.next_drive_id());
        let config = BackendConfig {
            node_name: spec.node_name.clone(),
            read_only: spec.read_only,
            cache: spec.cache,
            serial: spec.serial.clone(),
            ..BackendConfig::new(id.clone(), spec.path.clone())
        };
        let backend = registry
            .open(config)
            .map_err(|e| VmError::Disk(spec.path.display().to_string(), e))?;
        let slot = i as u32;
        let base = VIRTIO_MMIO_START + u64::from(slot) * VIRTIO_MMIO_SIZE;
        let gsi = VIRTIO_FIRST_GSI + slot;
        let irq = irqfd(vm_fd, gsi)?;
        let transport = MmioTransport::new(
            Box::new(VirtioBlock::new(backend.clone())),
            mem.clone(),
            irq,
            base,
            gsi,
            slot,
        )
        .map_err(|e| VmError::Transport(id.clone(), e))?;
        for (queue, evt) in transport.queue_events().iter().enumerate() {
            vm_fd
                .register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(transport.notify_address()),
                    queue as u32,
                )
                .map_err(|e| VmError::IoEvent(id.clone(), e))?;
        }
        dsdt.add(&transport);
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(transport.clone(), base, VIRTIO_MMIO_SIZE)?;
        disks.push(Disk {
            backend,
            transport,
            qdev: format!("/machine/peripheral/{id}/virtio-backend"),
        });
    }
    Ok(disks)
}

impl Vm {
    /// Builds the VM: everything short of starting the vCPU threads.
    ///
    /// # Errors
    /// Any failure of KVM, memory allocation, image loading or device setup.
    pub fn new(config: &VmConfig, events: &VmEventSink) -> Result<Self, VmError> {
        // Check the images before touching KVM, so a typo gets its own clear error.
        let mut images =
            BootImages::open(&config.kernel, config.initrd.as_deref(), &config.cmdline)?;
        let kvm = open_kvm()?;
        let vm_fd = kvm
            .create_vm()
            .map_err(|e| VmError::Kvm("create the VM", e))?;
        vm_fd
            .set_tss_address(KVM_TSS_ADDRESS)
            .map_err(|e| VmError::Kvm("set the TSS address", e))?;
        vm_fd
            .create_irq_chip()
            .map_err(|e| VmError::Kvm("create the in-kernel irqchip", e))?;
        vm_fd
            .create_pit2(kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            })
            .map_err(|e| VmError::Kvm("create the PIT", e))?;
        let mut initial_irqchips = Vec::new();
        for chip_id in [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ] {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm_fd
                .get_irqchip(&mut chip)
                .map_err(|e| VmError::Kvm("read the irqchip state", e))?;
            initial_irqchips.push(chip);
        }
        let initial_pit = vm_fd
            .get_pit2()
            .map_err(|e| VmError::Kvm("read the PIT state", e))?;

        let ram_size = config.memory_mib << 20;
        let mem = create_guest_memory(ram_size)?;
        register_slots(&vm_fd, &mem)?;

        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        let mut dsdt = DsdtBuilder::new();
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            irqfd(&vm_fd, COM1_GSI)?,
            serial_output(&config.serial)?,
            COM1_PORT,
            COM1_GSI,
        )));
        pio.insert(serial.clone(), u64::from(COM1_PORT), 8)?;
        dsdt.add(&*serial.lock().unwrap_or_else(|e| e.into_inner()));
        let new_sink = || events.try_clone().map_err(VmError::EventFd);
        pio.insert(
            Arc::new(Mutex::new(I8042::new(new_sink()?))),
            u64::from(I8042_PORT),
            5,
        )?;
        let debug_log: Option<Box<dyn Write + Send>> = if config.debug_port {
            Some(Box::new(std::io::stderr()))
        } else {
            None
        };
        pio.insert(
            Arc::new(Mutex::new(DebugPort::new(config.started, debug_log))),
            u64::from(DEBUG_PORT),
            1,
        )?;
        let acpi_pm = AcpiPm::new(new_sink()?);
        dsdt.add(&acpi_pm);
        pio.insert(
            Arc::new(Mutex::new(acpi_pm)),
            u64::from(ACPI_PM_PORT),
            pm::BLOCK_LEN,
        )?;
        let ged = Ged::new(irqfd(&vm_fd, GED_GSI)?, GED_GSI);
        dsdt.add(&ged);
        let disks = attach_disks(&vm_fd, &mem, &mut mmio, &mut dsdt, &config.disks)?;

        let rsdp = write_tables(&mem, &dsdt, config.cpus)?;
        let entry = images.load(&mem, ram_size, rsdp)?;

        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmError::Kvm("read the supported CPUID", e))?;
        let msr_list = kvm
            .get_msr_index_list()
            .map_err(|e| VmError::Kvm("read the MSR index list", e))?;
        let mut pending_vcpus = Vec::new();
        for id in 0..config.cpus {
            let fd = vm_fd
                .create_vcpu(u64::from(id))
                .map_err(|e| VmError::Kvm("create a vCPU", e))?;
            let ctx = VcpuContext {
                id,
                mem: mem.clone(),
                pio: pio.clone(),
                mmio: mmio.clone(),
                events: new_sink()?,
            };
            pending_vcpus.push(Vcpu::configure(
                fd,
                ctx,
                &cpuid,
                msr_list.as_slice(),
                config.cpus,
                &entry,
            )?);
        }

        Ok(Self {
            vm_fd,
            mem,
            images,
            dsdt,
            cpus: config.cpus,
            ram_size,
            pending_vcpus,
            vcpus: Vec::new(),
            serial,
            ged,
            disks,
            initial_irqchips,
            initial_pit,
            reset_generation: 0,
        })
    }

    /// Starts the vCPU threads, parked if `paused`.
    ///
    /// # Errors
    /// Fails when a thread cannot be created.
    pub fn start(&mut self, paused: bool) -> Result<(), VmError> {
        for vcpu in self.pending_vcpus.drain(..) {
            self.vcpus.push(vcpu.start(paused)?);
        }
        Ok(())
    }

    /// Stops all vCPUs and waits until they are parked.
    pub fn pause(&self) {
        for v in &self.vcpus {
            v.request_pause();
        }
        for v in &self.vcpus {
            v.wait_parked();
        }
    }

    /// Lets all vCPUs run.
    pub fn resume(&self) {
        for v in &self.vcpus {
            v.resume();
        }
    }

    /// Resets the machine in place: interrupt controllers and PIT to their power-on state, ACPI
    /// tables and boot images reloaded, every vCPU back to its power-on state. Leaves the vCPUs
    /// parked; call [`resume`](Self::resume) to run the new boot.
    ///
    /// # Errors
    /// Fails when KVM refuses the state or the images can no longer be loaded.
    pub fn reset(&mut self) -> Result<(), VmError> {
        self.pause();
        for chip in &self.initial_irqchips {
            self.vm_fd
                .set_irqchip(chip)
                .map_err(|e| VmError::Kvm("reset the irqchip", e))?;
        }
        self.vm_fd
            .set_pit2(&self.initial_pit)
            .map_err(|e| VmError::Kvm("reset the PIT", e))?;
        for disk in &self.disks {
            // The same path as a driver writing 0 to the status register: the device stops its
            // I/O thread and forgets its queues.
            disk.transport
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .reset();
        }
        let rsdp = write_tables(&self.mem, &self.dsdt, self.cpus)?;
        let entry = self.images.load(&self.mem, self.ram_size, rsdp)?;
        self.reset_generation += 1;
        for (i, v) in self.vcpus.iter().enumerate() {
            let e: Option<BootEntry> = (i == 0).then_some(entry);
            v.reset(self.reset_generation, e);
        }
        Ok(())
    }

    /// Presses the ACPI power button.
    ///
    /// # Errors
    /// Fails when the interrupt cannot be raised.
    pub fn power_button(&self) -> Result<(), devices::acpi::GedError> {
        self.ged.press_power_button()
    }

    /// Feeds console input to the guest's COM1.
    pub fn serial_input(&self, bytes: &[u8]) {
        self.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .enqueue_input(bytes);
    }

    /// Linux thread ids of the vCPU threads, in vCPU order.
    pub fn vcpu_thread_ids(&self) -> Vec<Option<i32>> {
        self.vcpus.iter().map(VcpuHandle::thread_id).collect()
    }

    /// The disks, in `--disk` order.
    pub fn disks(&self) -> &[Disk] {
        &self.disks
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.len() + self.pending_vcpus.len()
    }

    /// Stops and joins every vCPU thread.
    pub fn shutdown(&mut self) {
        for v in self.vcpus.drain(..) {
            v.stop();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.shutdown();
    }
}
