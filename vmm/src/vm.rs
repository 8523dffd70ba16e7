// SPDX-License-Identifier: Apache-2.0
//! The virtual machine: KVM objects, guest memory, devices, ACPI tables and vCPUs, and the
//! operations the main loop performs on them (start, pause, resume, reset, shutdown).

use std::path::PathBuf;
use std::sync::Arc;

use devices::GuestMemoryMmap;
use devices::VmEventSink;
use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, CpuId, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use crate::acpi::{write_tables, AcpiError};
use crate::arch::regs::BootEntry;
use crate::boot::{BootError, BootImages};
use block::BlockNode;
use qapi::types::BlockdevOptions;

use crate::blockdev::{self, Plan};
use crate::device_manager::{DeviceError, DeviceManager, Disk, SerialConfig};
use crate::disk::DiskSpec;
use crate::layout::KVM_TSS_ADDRESS;
use crate::memory::{
    create_guest_memory, exclude_from_core_dumps, map_snapshot_memory, register_slots, MemoryError,
};
use crate::migration::state::{cpu_features, CpuFeatureWord, DiskSummary, Setup, VmState};
use crate::vcpu::{Vcpu, VcpuContext, VcpuError, VcpuHandle};

/// What the VM is built from.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Kernel image (bzImage or PVH ELF). `None` builds no guest at all: no RAM, vCPUs,
    /// devices or ACPI tables, only the KVM VM and the monitor (QEMU's `-machine none`, which
    /// management tools run to probe an emulator's capabilities).
    pub kernel: Option<PathBuf>,
    /// Optional initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Number of vCPUs.
    pub cpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// The serial console.
    pub serial: SerialConfig,
    /// Block nodes to create before the disks (QEMU's `-blockdev`), in order.
    pub blockdevs: Vec<BlockdevOptions>,
    /// Disks, in `--disk` order (the guest's vda, vdb, ...).
    pub disks: Vec<DiskSpec>,
    /// Log every write to the debug port (0x80) with its time since vmm started.
    pub debug_port: bool,
    /// When vmm started (the debug port's time origin).
    pub started: std::time::Instant,
    /// Guest RAM is part of core dumps of vmm (QEMU's `dump-guest-core`, on by default).
    pub dump_guest_core: bool,
    /// A snapshot to restore (`--incoming file:PATH`): guest RAM is its RAM section, mapped
    /// privately, read as the guest touches it.
    pub snapshot: Option<PathBuf>,
    /// Open every image inactive (the destination of an incoming migration): no image locks
    /// and no writes until `DeviceManager::activate_images` at the switchover.
    pub inactive_images: bool,
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
    /// More vCPUs than the host's KVM creates in one VM (`KVM_CAP_MAX_VCPUS`); QEMU's words.
    #[error(
        "Number of SMP cpus requested ({asked}) exceeds the maximum cpus supported by KVM ({max})"
    )]
    TooManyVcpus {
        /// `--cpus`.
        asked: u8,
        /// The host's `KVM_CAP_MAX_VCPUS`.
        max: usize,
    },
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
    /// A device could not be created or wired.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A migrated state does not fit this VM.
    #[error("The migrated state does not fit this VM: {0}")]
    State(String),
}

/// Sets a PIC's state to what firmware hands an operating system that routes interrupts
/// through the IOAPIC: initialised (vectors 0x08 and 0x70, as a PC BIOS programs them) with
/// every input masked and nothing pending. KVM's power-on PIC has every input unmasked; device
/// interrupts on GSIs below 16 also reach it, and through the boot vCPU's LINT0 (ExtINT, as
/// in a PC's virtual-wire mode) they arrive as vectors 0..15 once the guest enables
/// interrupts, before it has set up anything. Linux on a hardware-reduced ACPI machine never
/// programs the PIC, and its next boot after a reset died on one (vector 7 taken as #NM).
/// A guest that uses the PIC initialises it itself, which unmasks what it wants.
fn mask_pic(chip: &mut kvm_irqchip) {
    // SAFETY: `chip` is a PIC (master or slave), so `pic` is the member KVM filled in.
    let mut pic = unsafe { chip.chip.pic };
    let master = chip.chip_id == KVM_IRQCHIP_PIC_MASTER;
    pic.irq_base = if master { 0x08 } else { 0x70 };
    pic.imr = 0xff;
    pic.irr = 0;
    pic.isr = 0;
    pic.last_irr = 0;
    pic.init_state = 0;
    pic.init4 = 1;
    chip.chip.pic = pic;
}

/// The state of the in-kernel interrupt controllers (PIC master, PIC slave, IOAPIC) and PIT.
struct ChipState {
    irqchips: Vec<kvm_irqchip>,
    pit: kvm_pit_state2,
}

impl ChipState {
    /// Reads the three interrupt controllers and the PIT.
    fn read(vm_fd: &VmFd) -> Result<Self, VmError> {
        let mut irqchips = Vec::new();
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
            irqchips.push(chip);
        }
        let pit = vm_fd
            .get_pit2()
            .map_err(|e| VmError::Kvm("read the PIT state", e))?;
        Ok(Self { irqchips, pit })
    }

    /// Loads the state; `what` names the act in errors (irqchip, PIT).
    fn write(&self, vm_fd: &VmFd, what: [&'static str; 2]) -> Result<(), VmError> {
        for chip in &self.irqchips {
            vm_fd
                .set_irqchip(chip)
                .map_err(|e| VmError::Kvm(what[0], e))?;
        }
        vm_fd
            .set_pit2(&self.pit)
            .map_err(|e| VmError::Kvm(what[1], e))
    }
}

/// The in-kernel interrupt controllers' and PIT's power-on state, restored on reset.
struct PowerOnState(ChipState);

impl PowerOnState {
    /// KVM's power-on state with the PICs as firmware leaves them ([`mask_pic`]), which it
    /// also sets.
    fn capture(vm_fd: &VmFd) -> Result<Self, VmError> {
        let mut state = ChipState::read(vm_fd)?;
        for chip in &mut state.irqchips {
            if chip.chip_id != KVM_IRQCHIP_IOAPIC {
                mask_pic(chip);
                vm_fd
                    .set_irqchip(chip)
                    .map_err(|e| VmError::Kvm("initialise the PIC", e))?;
            }
        }
        Ok(Self(state))
    }

    fn restore(&self, vm_fd: &VmFd) -> Result<(), VmError> {
        self.0.write(vm_fd, ["reset the irqchip", "reset the PIT"])
    }
}

/// A built VM.
pub struct Vm {
    vm_fd: Arc<VmFd>,
    mem: GuestMemoryMmap,
    /// The boot images; `None` for a VM without a guest.
    images: Option<BootImages>,
    devices: DeviceManager,
    cpus: u8,
    ram_size: u64,
    pending_vcpus: Vec<Vcpu>,
    vcpus: Vec<VcpuHandle>,
    power_on: PowerOnState,
    reset_generation: u64,
    /// The CPU features the guest is given (what a migration's destination must offer).
    cpu_features: Vec<CpuFeatureWord>,
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

/// Checks the vCPU count against the host's KVM limit `max` (`KVM_CAP_MAX_VCPUS`, or the
/// recommended `KVM_CAP_NR_VCPUS` where the kernel lacks it). Above the recommended limit
/// (the host's CPU count) QEMU only warns; vmm says nothing, as more vCPUs than host CPUs is
/// ordinary overcommit.
fn check_vcpus(asked: u8, max: usize) -> Result<(), VmError> {
    if usize::from(asked) > max {
        return Err(VmError::TooManyVcpus { asked, max });
    }
    Ok(())
}

/// Creates the KVM VM with the in-kernel irqchip and PIT this machine relies on.
fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
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
    Ok(vm_fd)
}

/// Guest RAM for a restore from the snapshot at `path`: its RAM section mapped privately,
/// when the snapshot is complete and of this RAM size; otherwise RAM of its own (the restore
/// then refuses the snapshot with the reason).
fn snapshot_memory(path: &std::path::Path, ram_size: u64) -> Result<GuestMemoryMmap, VmError> {
    let mapped = std::fs::File::open(path).ok().and_then(|f| {
        let layout = crate::migration::stream::FileLayout::read(&f).ok()?;
        (layout.ram_len == ram_size).then(|| map_snapshot_memory(ram_size, &f, layout.ram_offset))
    });
    match mapped {
        Some(mem) => Ok(mem?),
        None => Ok(create_guest_memory(ram_size)?),
    }
}

/// Adds the machine's devices in their fixed order: the legacy devices, then one virtio-blk
/// device per disk.
fn add_devices(devices: &mut DeviceManager, config: &VmConfig) -> Result<(), DeviceError> {
    DeviceManager::check_disk_count(config.disks.len())?;
    devices.set_images_inactive(config.inactive_images);
    devices.add_serial(&config.serial)?;
    devices.add_i8042()?;
    devices.add_debug_port(config.started, config.debug_port)?;
    devices.add_acpi_pm()?;
    devices.add_power_button()?;
    for options in &config.blockdevs {
        add_blockdev(devices, options)?;
    }
    for disk in &config.disks {
        devices.add_disk(disk)?;
    }
    Ok(())
}

/// Creates a `-blockdev` node, as `blockdev-add` does (opening its file right here: the VM
/// does not run yet).
fn add_blockdev(devices: &mut DeviceManager, options: &BlockdevOptions) -> Result<(), DeviceError> {
    let name = match &options.node_name {
        Some(n) => format!("node-name={n}"),
        None => "without a node-name".to_owned(),
    };
    let fail = |e: String| DeviceError::Blockdev(name.clone(), e);
    let node: Arc<dyn BlockNode> = match blockdev::plan(devices, options.clone()).map_err(fail)? {
        Plan::Open(file) => Arc::new(file.open().map_err(|e| fail(crate::error::chain(&e)))?),
        Plan::Ready(node) => node,
    };
    blockdev::add(devices, node).map_err(fail)
}

/// Creates and configures every vCPU (not started), the boot processor entering at `entry`.
fn create_vcpus(
    kvm: &Kvm,
    vm_fd: &VmFd,
    mem: &GuestMemoryMmap,
    devices: &DeviceManager,
    cpus: u8,
    entry: &BootEntry,
) -> Result<(Vec<Vcpu>, Vec<CpuFeatureWord>), VmError> {
    let cpuid: CpuId = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| VmError::Kvm("read the supported CPUID", e))?;
    let mut boot_cpuid = cpuid.clone();
    crate::arch::cpuid::patch_cpuid(&mut boot_cpuid, 0, cpus);
    let features = cpu_features(&boot_cpuid);
    let msr_list = kvm
        .get_msr_index_list()
        .map_err(|e| VmError::Kvm("read the MSR index list", e))?;
    let mut vcpus = Vec::new();
    for id in 0..cpus {
        let fd = vm_fd
            .create_vcpu(u64::from(id))
            .map_err(|e| VmError::Kvm("create a vCPU", e))?;
        let ctx = VcpuContext {
            id,
            mem: mem.clone(),
            pio: devices.pio().clone(),
            mmio: devices.mmio().clone(),
            events: devices.event_sink()?,
        };
        vcpus.push(Vcpu::configure(
            fd,
            ctx,
            &cpuid,
            msr_list.as_slice(),
            cpus,
            entry,
        )?);
    }
    Ok((vcpus, features))
}

impl Vm {
    /// Builds the VM: everything short of starting the vCPU threads.
    ///
    /// # Errors
    /// Any failure of KVM, memory allocation, image loading or device setup.
    pub fn new(config: &VmConfig, events: &VmEventSink) -> Result<Self, VmError> {
        let Some(kernel) = &config.kernel else {
            return Self::without_guest(events);
        };
        // Check the images before touching KVM, so a typo gets its own clear error.
        let mut images = BootImages::open(kernel, config.initrd.as_deref(), &config.cmdline)?;
        let kvm = open_kvm()?;
        check_vcpus(config.cpus, kvm.get_max_vcpus())?;
        let vm_fd = Arc::new(create_vm(&kvm)?);
        let power_on = PowerOnState::capture(&vm_fd)?;
        let ram_size = config.memory_mib << 20;
        let mem = match &config.snapshot {
            Some(path) => snapshot_memory(path, ram_size)?,
            None => create_guest_memory(ram_size)?,
        };
        if !config.dump_guest_core {
            exclude_from_core_dumps(&mem)?;
        }
        register_slots(&vm_fd, &mem)?;
        let mut devices = DeviceManager::new(vm_fd.clone(), &mem, events)?;
        add_devices(&mut devices, config)?;
        let rsdp = write_tables(&mem, devices.dsdt(), config.cpus)?;
        let entry = images.load(&mem, ram_size, rsdp)?;
        let (pending_vcpus, cpu_features) =
            create_vcpus(&kvm, &vm_fd, &mem, &devices, config.cpus, &entry)?;
        Ok(Self {
            vm_fd,
            mem,
            images: Some(images),
            devices,
            cpus: config.cpus,
            ram_size,
            pending_vcpus,
            vcpus: Vec::new(),
            power_on,
            reset_generation: 0,
            cpu_features,
        })
    }

    /// A KVM VM with nothing in it: what `query-kvm` reports is then true, and no guest runs.
    fn without_guest(events: &VmEventSink) -> Result<Self, VmError> {
        let kvm = open_kvm()?;
        let vm_fd = Arc::new(create_vm(&kvm)?);
        let power_on = PowerOnState::capture(&vm_fd)?;
        let mem = GuestMemoryMmap::new();
        let devices = DeviceManager::new(vm_fd.clone(), &mem, events)?;
        Ok(Self {
            vm_fd,
            mem,
            images: None,
            devices,
            cpus: 0,
            ram_size: 0,
            pending_vcpus: Vec::new(),
            vcpus: Vec::new(),
            power_on,
            reset_generation: 0,
            cpu_features: Vec::new(),
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

    /// Stops all vCPUs and waits until they are parked, or (postcopy) wait on a page that
    /// has not arrived: those park when it comes, before they run guest code again; `false`
    /// if one such vCPU is not parked yet.
    pub fn pause(&self) -> bool {
        for v in &self.vcpus {
            v.request_pause();
        }
        let mut all = true;
        for v in &self.vcpus {
            all &= v.wait_stopped();
        }
        all
    }

    /// Stops all vCPUs and waits until every one is parked (to read or set their state),
    /// those blocked on a missing page included.
    pub fn pause_parked(&self) {
        if !self.pause() {
            for v in &self.vcpus {
                v.wait_parked();
            }
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
        self.pause_parked();
        // Devices first, so that what a stopping device signals reaches the old controller
        // state, which the restore then discards (a late edge still finds its input masked).
        self.devices.reset()?;
        self.power_on.restore(&self.vm_fd)?;
        let Some(images) = &mut self.images else {
            // Nothing else to return to its power-on state.
            return Ok(());
        };
        let rsdp = write_tables(&self.mem, self.devices.dsdt(), self.cpus)?;
        let entry = images.load(&self.mem, self.ram_size, rsdp)?;
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
        self.devices.power_button()
    }

    /// Feeds console input to the guest's COM1.
    pub fn serial_input(&self, bytes: &[u8]) {
        self.devices.serial_input(bytes);
    }

    /// Linux thread ids of the vCPU threads, in vCPU order.
    pub fn vcpu_thread_ids(&self) -> Vec<Option<i32>> {
        self.vcpus.iter().map(VcpuHandle::thread_id).collect()
    }

    /// The disks, in `--disk` order.
    pub fn disks(&self) -> &[Disk] {
        self.devices.disks()
    }

    /// The device manager (the block graph, for QMP's block commands).
    pub fn devices(&self) -> &DeviceManager {
        &self.devices
    }

    /// The device manager, to add or remove block nodes.
    pub fn devices_mut(&mut self) -> &mut DeviceManager {
        &mut self.devices
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.len() + self.pending_vcpus.len()
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The KVM VM.
    pub fn vm_fd(&self) -> &Arc<VmFd> {
        &self.vm_fd
    }

    /// What a migration's destination must match: RAM, vCPUs, CPU features, disks.
    pub fn setup(&self) -> Setup {
        Setup {
            ram: self
                .mem
                .iter()
                .map(|r| (r.start_addr().raw_value(), r.len()))
                .collect(),
            cpus: self.cpus,
            cpu_features: self.cpu_features.clone(),
            disks: self
                .disks()
                .iter()
                .map(|d| DiskSummary {
                    id: d.qdev.clone(),
                    size: d.backend.size(),
                    read_only: d.backend.read_only(),
                    queues: d
                        .transport
                        .lock()
                        .map(|t| t.device().queue_max_sizes().len() as u16)
                        .unwrap_or(0),
                })
                .collect(),
        }
    }

    /// The complete state but RAM. Every vCPU must be parked and the devices quiesced.
    ///
    /// # Errors
    /// KVM refused to report part of it.
    pub fn save_state(&self) -> Result<VmState, VmError> {
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for v in &self.vcpus {
            vcpus.push(v.save()?);
        }
        let ChipState { irqchips, pit } = ChipState::read(&self.vm_fd)?;
        let clock = self
            .vm_fd
            .get_clock()
            .map_err(|e| VmError::Kvm("read the KVM clock", e))?;
        Ok(VmState {
            vcpus,
            irqchips,
            pit,
            clock,
            devices: self.devices.save_state(),
        })
    }

    /// Loads `state` (of a VM with the same [`setup`](Self::setup)) into this VM, whose
    /// vCPUs are parked and whose RAM already holds the source's pages.
    ///
    /// # Errors
    /// The state does not fit this VM, or KVM refused part of it.
    pub fn restore_state(&mut self, state: VmState) -> Result<(), VmError> {
        if state.vcpus.len() != self.vcpus.len() || state.irqchips.len() != 3 {
            return Err(VmError::State(format!(
                "{} vCPUs and {} interrupt controllers in the state, {} and 3 here",
                state.vcpus.len(),
                state.irqchips.len(),
                self.vcpus.len()
            )));
        }
        // Devices first: a device that refuses its state leaves KVM's untouched.
        self.devices.restore_state(&state.devices)?;
        ChipState {
            irqchips: state.irqchips,
            pit: state.pit,
        }
        .write(
            &self.vm_fd,
            ["load the irqchip state", "load the PIT state"],
        )?;
        // Only the time goes over: the flags say which of the other fields KVM filled in.
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        self.vm_fd
            .set_clock(&clock)
            .map_err(|e| VmError::Kvm("load the KVM clock", e))?;
        for (v, s) in self.vcpus.iter().zip(state.vcpus) {
            v.restore(s)?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpus_against_kvm_limit() {
        assert!(check_vcpus(64, 64).is_ok());
        assert!(check_vcpus(1, 1).is_ok());
        let e = check_vcpus(64, 8).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Number of SMP cpus requested (64) exceeds the maximum cpus supported by KVM (8)"
        );
    }

    #[test]
    fn this_hosts_kvm_takes_the_largest_count() {
        // Every KVM since Linux 4.x creates at least 64 vCPUs per VM (KVM_MAX_VCPUS >= 255 on
        // x86); where /dev/kvm is missing there is nothing to check.
        if let Ok(kvm) = Kvm::new() {
            assert!(check_vcpus(crate::cli::MAX_CPUS, kvm.get_max_vcpus()).is_ok());
        }
    }
}
