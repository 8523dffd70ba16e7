// SPDX-License-Identifier: Apache-2.0
//! The virtio-mmio transport, register layout version 2 (virtio 1.2, 4.2).
//!
//! Registers are 32 bits wide and accessed with aligned 32-bit loads and stores; any other
//! access to them is ignored (reads return 0). The config space at 0x100 accepts any width.
//! The transport enforces the status handshake (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK,
//! each requiring the previous ones; writing 0 resets, as does [`MmioTransport::reset`]),
//! refuses FEATURES_OK for features it did not offer or without `VIRTIO_F_VERSION_1`, accepts
//! driver features only between DRIVER and FEATURES_OK and queue setup only between
//! FEATURES_OK and DRIVER_OK.
//!
//! The register offsets are the `VIRTIO_MMIO_*` of [`virtio_bindings::virtio_mmio`]; nothing
//! outside this module needs them (the VMM resets a device with [`MmioTransport::reset`] and
//! finds `QueueNotify` with [`MmioTransport::notify_address`]).

use std::sync::Arc;

use crate::GuestMemoryMmap;
use acpi_tables::{aml, Aml, AmlSink};
use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FAILED as FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET as DEVICE_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_CONFIG_GENERATION, VIRTIO_MMIO_DEVICE_FEATURES,
    VIRTIO_MMIO_DEVICE_FEATURES_SEL, VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_MAGIC_VALUE, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    VIRTIO_MMIO_QUEUE_DESC_HIGH, VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_MMIO_QUEUE_NUM, VIRTIO_MMIO_QUEUE_NUM_MAX, VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_SEL, VIRTIO_MMIO_QUEUE_USED_HIGH, VIRTIO_MMIO_QUEUE_USED_LOW,
    VIRTIO_MMIO_SHM_BASE_HIGH, VIRTIO_MMIO_SHM_LEN_LOW, VIRTIO_MMIO_SHM_SEL, VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_VENDOR_ID, VIRTIO_MMIO_VERSION,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueState, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt};
use crate::bus::BusDevice;
use crate::state::StateError;

/// One virtqueue as the driver configured it and the device has served it: a serde mirror of
/// [`virtio_queue::QueueState`] (which has no serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VirtqueueState {
    /// The largest size the device offers (`QueueNumMax`); must match on restore.
    pub max_size: u16,
    /// The next available-ring entry the device will take (its "last avail idx").
    pub next_avail: u16,
    /// The next used-ring entry the device will fill (the used ring's `idx` as published).
    pub next_used: u16,
    /// `VIRTIO_F_RING_EVENT_IDX` is in use on this queue.
    pub event_idx_enabled: bool,
    /// The size the driver chose (`QueueNum`).
    pub size: u16,
    /// The driver enabled the queue (`QueueReady`).
    pub ready: bool,
    /// Guest physical address of the descriptor table (`QueueDesc`).
    pub desc_table: u64,
    /// Guest physical address of the available (driver) ring (`QueueDriver`).
    pub avail_ring: u64,
    /// Guest physical address of the used (device) ring (`QueueDevice`).
    pub used_ring: u64,
}

impl From<QueueState> for VirtqueueState {
    fn from(q: QueueState) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<VirtqueueState> for QueueState {
    fn from(q: VirtqueueState) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// The transport's guest-visible state (its registers) and its queues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    /// The device's virtio ID (`DeviceID`); must match on restore.
    pub device_type: u32,
    /// The features the device offers (`DeviceFeatures`, both pages); must match on restore.
    pub device_features: u64,
    /// The status the driver wrote (`Status`, without `DEVICE_NEEDS_RESET`, which is
    /// `needs_reset`).
    pub status: u32,
    /// `DeviceFeaturesSel`.
    pub device_features_sel: u32,
    /// `DriverFeaturesSel`.
    pub driver_features_sel: u32,
    /// The features the driver accepted (`DriverFeatures`, both pages).
    pub driver_features: u64,
    /// `QueueSel`.
    pub queue_sel: u32,
    /// Every queue, by index; a running queue's indices are the data path's.
    pub queues: Vec<VirtqueueState>,
    /// `InterruptStatus`: bit 0 used buffers, bit 1 configuration change, not yet acknowledged.
    pub interrupt_status: u32,
    /// `ConfigGeneration`.
    pub config_generation: u32,
    /// The device set `DEVICE_NEEDS_RESET` (the driver must reset it).
    pub needs_reset: bool,
    /// The data path ran (the driver set `DRIVER_OK` and activation succeeded).
    pub activated: bool,
}

// Linux's UAPI headers declare the register offsets but not the values below (the magic is in
// drivers/virtio/virtio_mmio.c): they stay here.

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The register layout version (virtio 1.x).
pub const MMIO_VERSION: u32 = 2;
/// Our vendor ID ("QEMU" in little endian, as QEMU's virtio-mmio reports; guests ignore it).
pub const MMIO_VENDOR_ID: u32 = 0x554d_4551;
/// Size of the MMIO window of one device.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Start of the device's config space in the window.
const CONFIG_SPACE: u64 = VIRTIO_MMIO_CONFIG as u64;

/// The register at `offset` (the bindings' `VIRTIO_MMIO_*` are `u32`); `None` for the config
/// space.
fn register_offset(offset: u64) -> Option<u32> {
    u32::try_from(offset)
        .ok()
        .filter(|&r| r < VIRTIO_MMIO_CONFIG)
}

/// Errors of [`MmioTransport::new`].
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// The device asked for a queue size virtio-queue refuses (0, not a power of 2, > 32768).
    #[error("Invalid maximum queue size {0}")]
    QueueSize(u16),
    /// The window must lie below 4 GiB (ACPI `Memory32Fixed`).
    #[error("virtio-mmio window {0:#x} is not below 4 GiB")]
    Base(u64),
    /// The UID does not fit the 4-character ACPI name (`VRnn`, `Vnnn`).
    #[error("virtio-mmio UID {0} is too large (at most 4095)")]
    Uid(u32),
    /// Creating a notification eventfd failed.
    #[error("Cannot create a queue notification eventfd")]
    EventFd(#[source] std::io::Error),
}

/// A virtio device on the MMIO bus.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queue_events: Vec<EventFd>,
    queues: Vec<Queue>,
    base: u64,
    gsi: u32,
    uid: u32,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    activated: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("base", &self.base)
            .field("gsi", &self.gsi)
            .field("uid", &self.uid)
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish()
    }
}

impl MmioTransport {
    /// Puts `device` at `base` (a [`MMIO_WINDOW_SIZE`] window below 4 GiB), interrupting
    /// through `irq` (the irqfd of `gsi`); `uid` numbers the ACPI device (`_SB.VRnn`).
    ///
    /// # Errors
    /// Invalid queue sizes, window, UID, or no eventfds.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq: EventFd,
        base: u64,
        gsi: u32,
        uid: u32,
    ) -> Result<Self, MmioError> {
        if base
            .checked_add(MMIO_WINDOW_SIZE)
            .is_none_or(|end| end > 1 << 32)
        {
            return Err(MmioError::Base(base));
        }
        if uid > 0xfff {
            return Err(MmioError::Uid(uid));
        }
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).map_err(|_| MmioError::QueueSize(max)))
            .collect::<Result<Vec<_>, _>>()?;
        let queue_events = queues
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(VirtioInterrupt::new(irq)),
            queue_events,
            queues,
            base,
            gsi,
            uid,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            activated: false,
        })
    }

    /// The notification eventfd of each queue, by queue index. Register each with KVM as an
    /// ioeventfd at [`MmioTransport::notify_address`], length 4, datamatch = its index.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The guest physical address of `QueueNotify`.
    pub fn notify_address(&self) -> u64 {
        self.base + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY)
    }

    /// The start of the MMIO window.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The GSI of the device's interrupt.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// The device status the guest reads.
    pub fn status(&self) -> u32 {
        let needs_reset = if self.interrupt.needs_reset() {
            DEVICE_NEEDS_RESET
        } else {
            0
        };
        self.status | needs_reset
    }

    /// Whether the device's data path is running.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The interrupt shared with the device.
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// The device.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device, mutably.
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may be written only between FEATURES_OK and DRIVER_OK.
    fn queue_setup_allowed(&self) -> bool {
        self.has(FEATURES_OK) && self.status & (DRIVER_OK | FAILED) == 0
    }

    /// Resets the device, exactly as the driver does by writing 0 to the `Status` register
    /// (virtio 1.2, 2.4): the device stops its data path (joining its I/O thread) and forgets
    /// its queues; the transport forgets the queue setup, pending kicks, interrupt status and
    /// negotiated features, and the status reads 0.
    pub fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        // Forget kicks that arrived before the reset.
        for e in &self.queue_events {
            let _ = e.read();
        }
        self.interrupt.reset();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.device_features();
        self.driver_features & !offered == 0
            && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        if let Some(i) = self
            .queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(&self.mem))
        {
            return Err(ActivateError::InvalidQueue(i));
        }
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter_mut().enumerate() {
            q.set_event_idx(event_idx);
            queues.push(Queue::try_from(q.state()).map_err(|_| ActivateError::InvalidQueue(i))?);
        }
        let queue_events = self
            .queue_events
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ActivateError::Io)?;
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_events,
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
        };
        self.device.activate(ctx)
    }

    /// How errors name this device: `virtio-mmio device at 0xd0000000`.
    fn name(&self) -> String {
        format!("virtio-mmio device at {:#x}", self.base)
    }

    /// The transport's registers and queues, for a migration. A queue the device's data path
    /// runs is saved as the data path has it (its indices), so the device must be quiesced
    /// (nothing popped and not completed) for the state to be exact.
    pub fn save_state(&self) -> MmioState {
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                self.device
                    .running_queue_state(i)
                    .unwrap_or_else(|| q.state())
                    .into()
            })
            .collect();
        MmioState {
            device_type: self.device.device_type(),
            device_features: self.device.device_features(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            queues,
            interrupt_status: self.interrupt.status(),
            config_generation: self.interrupt.config_generation(),
            needs_reset: self.interrupt.needs_reset(),
            activated: self.activated,
        }
    }

    /// The checks of [`MmioTransport::restore_state`], changing nothing: that `state` was
    /// saved from the same kind of device with valid queues.
    ///
    /// # Errors
    /// As [`MmioTransport::restore_state`]'s refusals.
    pub fn check_state(&self, state: &MmioState) -> Result<(), StateError> {
        self.checked_queues(state).map(drop)
    }

    fn checked_queues(&self, state: &MmioState) -> Result<Vec<Queue>, StateError> {
        let name = self.name();
        if state.device_type != self.device.device_type() {
            return Err(StateError::mismatch(
                name,
                "device type",
                state.device_type,
                self.device.device_type(),
            ));
        }
        if state.device_features != self.device.device_features() {
            return Err(StateError::mismatch(
                name,
                "offered feature set",
                format_args!("{:#x}", state.device_features),
                format_args!("{:#x}", self.device.device_features()),
            ));
        }
        if state.queues.len() != self.queues.len() {
            return Err(StateError::mismatch(
                name,
                "queue count",
                state.queues.len(),
                self.queues.len(),
            ));
        }
        let mut queues = Vec::with_capacity(state.queues.len());
        for (index, (saved, here)) in state.queues.iter().zip(&self.queues).enumerate() {
            if saved.max_size != here.max_size() {
                return Err(StateError::mismatch(
                    name,
                    "maximum queue size",
                    saved.max_size,
                    here.max_size(),
                ));
            }
            queues.push(Queue::try_from(QueueState::from(*saved)).map_err(|source| {
                StateError::Queue {
                    device: name.clone(),
                    index,
                    source,
                }
            })?);
        }
        Ok(queues)
    }

    /// Takes a saved state: checks first that it was saved from the same kind of device (ID,
    /// offered features, queue count and sizes) with valid queues, and changes nothing when
    /// not. A device running here is reset first. When the saved status has `DRIVER_OK` and
    /// the device did not need a reset, the data path starts on the saved queues (its
    /// indices, `EVENT_IDX` as the driver accepted it) and serves at once what the guest made
    /// available; a pending interrupt status is raised again (a spurious interrupt is
    /// harmless, a lost one would stall the driver).
    ///
    /// # Errors
    /// A different device or queue layout, an invalid saved queue (nothing changed), or a data
    /// path that cannot start or an interrupt that cannot be raised (the registers are
    /// restored; the VM should not run).
    pub fn restore_state(&mut self, state: &MmioState) -> Result<(), StateError> {
        let name = self.name();
        let queues = self.checked_queues(state)?;
        if self.activated {
            self.reset();
        }
        for e in &self.queue_events {
            let _ = e.read();
        }
        self.queues = queues;
        self.status = state.status & !DEVICE_NEEDS_RESET;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.queue_sel = state.queue_sel;
        self.interrupt.restore(
            state.interrupt_status,
            state.config_generation,
            state.needs_reset,
        );
        if self.has(DRIVER_OK) && !state.needs_reset {
            self.activate().map_err(|source| StateError::Activate {
                device: name.clone(),
                source,
            })?;
            self.activated = true;
        }
        if state.interrupt_status != 0 {
            self.interrupt
                .raise_again()
                .map_err(|source| StateError::Interrupt {
                    device: name,
                    source,
                })?;
        }
        Ok(())
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET belongs to the device; the driver may echo it back.
        let value = value & !DEVICE_NEEDS_RESET;
        if value & FAILED != 0 {
            // The driver gave up; drivers often write FAILED alone. Nothing else changes.
            self.status |= FAILED;
            return;
        }
        let old = self.status;
        if value & old != old {
            // Clearing bits is only possible through a reset.
            return;
        }
        let added = value & !old;
        let ordered = [
            (ACKNOWLEDGE, 0),
            (DRIVER, ACKNOWLEDGE),
            (FEATURES_OK, ACKNOWLEDGE | DRIVER),
            (DRIVER_OK, ACKNOWLEDGE | DRIVER | FEATURES_OK),
        ];
        for (bit, requires) in ordered {
            if added & bit == 0 {
                continue;
            }
            if !self.has(requires) || self.has(FAILED) {
                return;
            }
            match bit {
                FEATURES_OK if !self.features_acceptable() => return,
                DRIVER_OK => {
                    if self.interrupt.needs_reset() {
                        return;
                    }
                    self.status |= DRIVER_OK;
                    if self.activate().is_ok() {
                        self.activated = true;
                    } else {
                        let _ = self.interrupt.set_needs_reset();
                    }
                    continue;
                }
                _ => {}
            }
            self.status |= bit;
        }
    }

    fn read_register(&mut self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => MMIO_VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.device_features() as u32,
                1 => (self.device.device_features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status(),
            // No shared memory regions: their length and base read as all ones.
            VIRTIO_MMIO_SHM_LEN_LOW..=VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            VIRTIO_MMIO_CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        let setup = self.queue_setup_allowed();
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                if !self.has(DRIVER) || self.status & (FEATURES_OK | FAILED) != 0 {
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ => {}
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM if setup => {
                if let (Some(q), Ok(n)) = (self.selected_queue(), u16::try_from(value)) {
                    q.set_size(n);
                }
            }
            VIRTIO_MMIO_QUEUE_READY if setup => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW if setup => {
                self.with_queue(|q| q.set_desc_table_address(Some(value), None))
            }
            VIRTIO_MMIO_QUEUE_DESC_HIGH if setup => {
                self.with_queue(|q| q.set_desc_table_address(None, Some(value)))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW if setup => {
                self.with_queue(|q| q.set_avail_ring_address(Some(value), None))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH if setup => {
                self.with_queue(|q| q.set_avail_ring_address(None, Some(value)))
            }
            VIRTIO_MMIO_QUEUE_USED_LOW if setup => {
                self.with_queue(|q| q.set_used_ring_address(Some(value), None))
            }
            VIRTIO_MMIO_QUEUE_USED_HIGH if setup => {
                self.with_queue(|q| q.set_used_ring_address(None, Some(value)))
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                // Reached only when no ioeventfd caught the write: signal the same eventfd.
                if let Some(e) = self.queue_events.get(value as usize) {
                    let _ = e.write(1);
                }
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.set_status(value),
            VIRTIO_MMIO_SHM_SEL => {}
            _ => {}
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        // A queue that is already enabled keeps its addresses (virtio 1.2, 4.2.2.2).
        if let Some(q) = self.selected_queue().filter(|q| !q.ready()) {
            f(q);
        }
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        if self.activated {
            self.device.reset();
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let Some(register) = register_offset(offset) else {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device.read_config(offset - CONFIG_SPACE, data);
            }
            return;
        };
        if data.len() != 4 || !register.is_multiple_of(4) {
            return;
        }
        let v = self.read_register(register);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(register) = register_offset(offset) else {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device.write_config(offset - CONFIG_SPACE, data);
            }
            return;
        };
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if !register.is_multiple_of(4) {
            return;
        }
        self.write_register(register, u32::from_le_bytes(bytes));
    }
}

impl Aml for MmioTransport {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let name = if self.uid < 0x100 {
            format!("_SB_.VR{:02X}", self.uid)
        } else {
            format!("_SB_.V{:03X}", self.uid)
        };
        // `new` checked that the window is below 4 GiB.
        let base = u32::try_from(self.base).unwrap_or(0);
        aml::Device::new(
            name.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &self.uid),
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new(
                    "_CRS".into(),
                    &aml::ResourceTemplate::new(vec![
                        &aml::Memory32Fixed::new(true, base, MMIO_WINDOW_SIZE as u32),
                        &aml::Interrupt::new(true, true, false, false, self.gsi),
                    ]),
                ),
            ],
        )
        .to_aml_bytes(sink);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::virtio::testing::guest_memory;
    use crate::virtio::ActivateError;

    /// (ready, size, descriptor table) of each queue handed to the device.
    type QueueSummary = Vec<(bool, u16, u64)>;

    #[derive(Default)]
    struct Log {
        activations: Vec<(u64, QueueSummary)>,
        resets: usize,
        config_writes: Vec<(u64, Vec<u8>)>,
    }

    struct FakeDevice {
        log: Arc<Mutex<Log>>,
        sizes: Vec<u16>,
        fail: bool,
    }

    const FAKE_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | 0b101;

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn device_features(&self) -> u64 {
            FAKE_FEATURES
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                let o = offset + i as u64;
                *b = if o < 8 { 0xc0 + o as u8 } else { 0 };
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.log
                .lock()
                .unwrap()
                .config_writes
                .push((offset, data.to_vec()));
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            if self.fail {
                return Err(ActivateError::QueueCount {
                    expected: 0,
                    got: 1,
                });
            }
            let queues = ctx
                .queues
                .iter()
                .map(|q| (q.ready(), q.size(), q.desc_table()))
                .collect();
            self.log
                .lock()
                .unwrap()
                .activations
                .push((ctx.acked_features, queues));
            Ok(())
        }
        fn reset(&mut self) {
            self.log.lock().unwrap().resets += 1;
        }
        fn running_queue_state(&self, _index: usize) -> Option<QueueState> {
            None
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
        fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
            self
        }
    }

    struct Fixture {
        t: MmioTransport,
        log: Arc<Mutex<Log>>,
        irq: EventFd,
    }

    fn fixture_with(fail: bool) -> Fixture {
        let log = Arc::new(Mutex::new(Log::default()));
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = FakeDevice {
            log: log.clone(),
            sizes: vec![16, 8],
            fail,
        };
        let t = MmioTransport::new(
            Box::new(dev),
            guest_memory(0x10_0000),
            irq.try_clone().unwrap(),
            0xd000_0000,
            6,
            0,
        )
        .unwrap();
        Fixture { t, log, irq }
    }

    fn fixture() -> Fixture {
        fixture_with(false)
    }

    fn r32(t: &mut MmioTransport, off: u32) -> u32 {
        let mut d = [0u8; 4];
        t.read(0xd000_0000, u64::from(off), &mut d);
        u32::from_le_bytes(d)
    }

    fn w32(t: &mut MmioTransport, off: u32, v: u32) {
        t.write(0xd000_0000, u64::from(off), &v.to_le_bytes());
    }

    fn set_features(t: &mut MmioTransport, f: u64) {
        w32(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        w32(t, VIRTIO_MMIO_DRIVER_FEATURES, f as u32);
        w32(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        w32(t, VIRTIO_MMIO_DRIVER_FEATURES, (f >> 32) as u32);
    }

    /// The driver's handshake up to FEATURES_OK.
    fn negotiate(t: &mut MmioTransport, f: u64) {
        w32(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
        w32(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
        set_features(t, f);
        w32(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    }

    fn setup_queue(t: &mut MmioTransport, sel: u32, size: u32, desc: u64) {
        w32(t, VIRTIO_MMIO_QUEUE_SEL, sel);
        w32(t, VIRTIO_MMIO_QUEUE_NUM, size);
        w32(t, VIRTIO_MMIO_QUEUE_DESC_LOW, desc as u32);
        w32(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, (desc >> 32) as u32);
        w32(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, (desc + 0x1000) as u32);
        w32(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
        w32(t, VIRTIO_MMIO_QUEUE_USED_LOW, (desc + 0x2000) as u32);
        w32(t, VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
        w32(t, VIRTIO_MMIO_QUEUE_READY, 1);
    }

    #[test]
    fn identity_registers() {
        let mut f = fixture();
        assert_eq!(r32(&mut f.t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(r32(&mut f.t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(r32(&mut f.t, VIRTIO_MMIO_DEVICE_ID), 42);
        assert_eq!(r32(&mut f.t, VIRTIO_MMIO_VENDOR_ID), MMIO_VENDOR_ID);
        assert_eq!(r32(&mut f.t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX); // no region
        assert_eq!(f.t.notify_address(), 0xd000_0050);
        assert_eq!(f.t.base(), 0xd000_0000);
        assert_eq!(f.t.gsi(), 6);
        // Wrong widths and misaligned registers read as 0.
        let mut b = [0u8; 1];
        f.t.read(0, u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut b);
        assert_eq!(b, [0]);
        let mut q = [0u8; 8];
        f.t.read(0, u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut q);
        assert_eq!(q, [0; 8]);
        assert_eq!(r32(&mut f.t, 1), 0);
        assert_eq!(r32(&mut f.t, 0xffc), 0);
    }

    #[test]
    fn rejects_bad_construction() {
        let mk = |base: u64, uid: u32, sizes: Vec<u16>| {
            MmioTransport::new(
                Box::new(FakeDevice {
                    log: Arc::default(),
                    sizes,
                    fail: false,
                }),
                guest_memory(0x1000),
                EventFd::new(EFD_NONBLOCK).unwrap(),
                base,
                6,
                uid,
            )
        };
        assert!(matches!(
            mk(0xffff_f001, 0, vec![8]),
            Err(MmioError::Base(_))
        ));
        assert!(matches!(
            mk(0xd000_0000, 4096, vec![8]),
            Err(MmioError::Uid(_))
        ));
        assert!(matches!(
            mk(0xd000_0000, 0, vec![3]),
            Err(MmioError::QueueSize(3))
        ));
        assert!(mk(0xffff_f000, 4095, vec![8]).is_ok());
    }

    #[test]
    fn device_features_are_paged() {
        let mut f = fixture();
        w32(&mut f.t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        assert_eq!(
            r32(&mut f.t, VIRTIO_MMIO_DEVICE_FEATURES),
            FAKE_FEATURES as u32
        );
        w32(&mut f.t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r32(&mut f.t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
        w32(&mut f.t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
        assert_eq!(r32(&mut f.t, VIRTIO_MMIO_DEVICE_FEATURES), 0);
    }

    #[test]
    fn feature_negotiation_rules() {
        let mut f = fixture();
        // Driver features are ignored before DRIVER.
        set_features(&mut f.t, FAKE_FEATURES);
        assert_eq!(f.t.driver_features, 0);
        w32(&mut f.t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
        w32(&mut f.t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
        // Without VERSION_1, FEATURES_OK does not stick.
        set_features(&mut f.t, 1);
        w32(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK,
        );
        assert_eq!(f.t.status(), ACKNOWLEDGE | DRIVER);
        // Features the device did not offer are refused too.
        set_features(&mut f.t, FAKE_FEATURES | 2);
        w32(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK,
        );
        assert_eq!(f.t.status(), ACKNOWLEDGE | DRIVER);
        set_features(&mut f.t, (1 << VIRTIO_F_VERSION_1) | 1);
        w32(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK,
        );
        assert_eq!(f.t.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK);
        // Features are frozen after FEATURES_OK.
        set_features(&mut f.t, FAKE_FEATURES);
        assert_eq!(f.t.driver_features, (1 << VIRTIO_F_VERSION_1) | 1);
    }

    #[test]
    fn status_transitions_are_enforced() {
        let mut f = fixture();
        // DRIVER needs ACKNOWLEDGE, DRIVER_OK needs FEATURES_OK.
        w32(&mut f.t, VIRTIO_MMIO_STATUS, DRIVER);
        assert_eq!(f.t.status(), 0);
        w32(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | DRIVER_OK,
        );
        assert_eq!(f.t.status(), ACKNOWLEDGE | DRIVER);
        assert!(!f.t.is_activated());
        // Going backwards is ignored.
        w32(&mut f.t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
        assert_eq!(f.t.status(), ACKNOWLEDGE | DRIVER);
        // The device-owned bit cannot be set by the driver.
        w32(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | DEVICE_NEEDS_RESET,
        );
        assert_eq!(f.t.status(), ACKNOWLEDGE | DRIVER);
        // FAILED sticks (even written alone) and blocks progress.
        w32(&mut f.t, VIRTIO_MMIO_STATUS, FAILED);
        assert_eq!(f.t.status(), ACKNOWLEDGE | DRIVER | FAILED);
        set_features(&mut f.t, FAKE_FEATURES);
        w32(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FAILED | FEATURES_OK,
        );
        assert_eq!(f.t.status(), ACKNOWLEDGE | DRIVER | FAILED);
        // Reset clears everything.
        w32(&mut f.t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(f.t.status(), 0);
        negotiate(&mut f.t, FAKE_FEATURES);
        assert_eq!(f.t.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    }

    #[test]
    fn queue_registers_only_during_setup() {
        let mut f = fixture();
        assert_eq!(r32(&mut f.t, VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
        w32(&mut f.t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(r32(&mut f.t, VIRTIO_MMIO_QUEUE_NUM_MAX), 8);
        w32(&mut f.t, VIRTIO_MMIO_QUEUE_SEL, 7);
        assert_eq!(r32(&mut f.t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
        assert_eq!(r32(&mut f.t, VIRTIO_MMIO_QUEUE_READY), 0);
        w32(&mut f.t, VIRTIO_MMIO_QUEUE_READY, 1); // no such queue: ignored
                                                   // Before FEATURES_OK the queue cannot be configured.
        w32(&mut f.t, VIRTIO_MMIO_QUEUE_SEL, 0);
        w32(&mut f.t, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(r32(&mut f.t, VIRTIO_MMIO_QUEUE_READY), 0);
        negotiate(&mut f.t, FAKE_FEATURES);
        setup_queue(&mut f.t, 0, 8, 0x10000);
        assert_eq!(r32(&mut f.t, VIRTIO_MMIO_QUEUE_READY), 1);
        assert_eq!(f.t.queues[0].size(), 8);
        assert_eq!(f.t.queues[0].desc_table(), 0x10000);
        assert_eq!(f.t.queues[0].avail_ring(), 0x11000);
        assert_eq!(f.t.queues[0].used_ring(), 0x12000);
        // An enabled queue keeps its addresses; invalid sizes are refused.
        w32(&mut f.t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x20000);
        assert_eq!(f.t.queues[0].desc_table(), 0x10000);
        w32(&mut f.t, VIRTIO_MMIO_QUEUE_SEL, 1);
        w32(&mut f.t, VIRTIO_MMIO_QUEUE_NUM, 3);
        assert_eq!(f.t.queues[1].size(), 8);
        w32(&mut f.t, VIRTIO_MMIO_QUEUE_NUM, 0x10004);
        assert_eq!(f.t.queues[1].size(), 8);
        w32(&mut f.t, VIRTIO_MMIO_QUEUE_NUM, 4);
        assert_eq!(f.t.queues[1].size(), 4);
    }

    #[test]
    fn driver_ok_activates_and_reset_reinitializes() {
        let mut f = fixture();
        let feats = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX);
        negotiate(&mut f.t, feats);
        setup_queue(&mut f.t, 0, 16, 0x10000);
        w32(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert!(f.t.is_activated());
        assert_eq!(f.t.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        {
            let log = f.log.lock().unwrap();
            assert_eq!(log.activations.len(), 1);
            assert_eq!(
                log.activations[0],
                (feats, vec![(true, 16, 0x10000), (false, 8, 0)])
            );
        }
        assert!(f.t.queues[0].event_idx_enabled());
        // Queue registers are frozen after DRIVER_OK.
        w32(&mut f.t, VIRTIO_MMIO_QUEUE_SEL, 1);
        w32(&mut f.t, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(r32(&mut f.t, VIRTIO_MMIO_QUEUE_READY), 0);

        // Reset, then the full sequence again.
        f.t.queue_events()[0].write(1).unwrap();
        w32(&mut f.t, VIRTIO_MMIO_STATUS, 0);
        assert!(!f.t.is_activated());
        assert_eq!(f.log.lock().unwrap().resets, 1);
        assert!(f.t.queue_events()[0].read().is_err(), "stale kick kept");
        assert!(!f.t.queues[0].ready());
        assert_eq!(f.t.driver_features, 0);
        negotiate(&mut f.t, 1 << VIRTIO_F_VERSION_1);
        setup_queue(&mut f.t, 0, 8, 0x20000);
        w32(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert!(f.t.is_activated());
        let log = f.log.lock().unwrap();
        assert_eq!(
            log.activations[1],
            (
                1 << VIRTIO_F_VERSION_1,
                vec![(true, 8, 0x20000), (false, 8, 0)]
            )
        );
        assert!(!f.t.queues[0].event_idx_enabled());
    }

    #[test]
    fn state_round_trip_restores_registers_and_activates() {
        let mut f = fixture();
        let feats = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX);
        negotiate(&mut f.t, feats);
        setup_queue(&mut f.t, 0, 16, 0x10000);
        w32(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        w32(&mut f.t, VIRTIO_MMIO_QUEUE_SEL, 1);
        w32(&mut f.t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        f.t.interrupt().signal_config_change().unwrap();
        f.irq.read().unwrap();
        let state = f.t.save_state();
        assert_eq!(state.queues[0].size, 16);
        assert!(state.queues[0].event_idx_enabled && state.activated);
        let json = serde_json::to_string(&state).unwrap();
        let state: MmioState = serde_json::from_str(&json).unwrap();

        let mut g = fixture();
        g.t.restore_state(&state).unwrap();
        assert_eq!(g.t.save_state(), state);
        assert!(g.t.is_activated());
        let regs = |t: &mut MmioTransport| {
            [
                VIRTIO_MMIO_STATUS,
                VIRTIO_MMIO_QUEUE_READY,
                VIRTIO_MMIO_QUEUE_NUM_MAX,
                VIRTIO_MMIO_DEVICE_FEATURES,
                VIRTIO_MMIO_INTERRUPT_STATUS,
                VIRTIO_MMIO_CONFIG_GENERATION,
            ]
            .map(|r| r32(t, r))
        };
        assert_eq!(regs(&mut g.t), regs(&mut f.t));
        assert_eq!(r32(&mut g.t, VIRTIO_MMIO_CONFIG_GENERATION), 1);
        // The device started on the saved queues, and the pending status was raised again.
        assert_eq!(
            g.log.lock().unwrap().activations,
            vec![(feats, vec![(true, 16, 0x10000), (false, 8, 0)])]
        );
        assert_eq!(g.irq.read().unwrap(), 1);
        // As after DRIVER_OK, queue setup is over.
        w32(&mut g.t, VIRTIO_MMIO_QUEUE_SEL, 0);
        w32(&mut g.t, VIRTIO_MMIO_QUEUE_NUM, 8);
        assert_eq!(g.t.queues[0].size(), 16);
        // A device that needed a reset comes back needing one, without a data path.
        let mut broken = state.clone();
        broken.needs_reset = true;
        let mut h = fixture();
        h.t.restore_state(&broken).unwrap();
        assert!(!h.t.is_activated());
        assert_ne!(r32(&mut h.t, VIRTIO_MMIO_STATUS) & DEVICE_NEEDS_RESET, 0);
        assert!(h.log.lock().unwrap().activations.is_empty());
    }

    #[test]
    fn restore_refuses_another_device_and_changes_nothing() {
        let mut f = fixture();
        negotiate(&mut f.t, FAKE_FEATURES);
        setup_queue(&mut f.t, 0, 16, 0x10000);
        let state = f.t.save_state();
        let one_queue = || {
            MmioTransport::new(
                Box::new(FakeDevice {
                    log: Arc::default(),
                    sizes: vec![16],
                    fail: false,
                }),
                guest_memory(0x10_0000),
                EventFd::new(EFD_NONBLOCK).unwrap(),
                0xd000_0000,
                6,
                0,
            )
            .unwrap()
        };
        let e = one_queue().restore_state(&state).unwrap_err();
        assert_eq!(
            e.to_string(),
            "virtio-mmio device at 0xd0000000: queue count differs (source 2, here 1)"
        );
        let mut g = fixture();
        let mut other = state.clone();
        other.device_features |= 2;
        let e = g.t.restore_state(&other).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "virtio-mmio device at 0xd0000000: offered feature set differs (source {:#x}, \
                 here {FAKE_FEATURES:#x})",
                FAKE_FEATURES | 2
            )
        );
        let mut other = state.clone();
        other.device_type = 2;
        assert!(g.t.restore_state(&other).is_err());
        let mut other = state.clone();
        other.queues[1].max_size = 16;
        assert!(g.t.restore_state(&other).is_err());
        let mut other = state.clone();
        other.queues[0].size = 3;
        let e = g.t.restore_state(&other).unwrap_err();
        assert_eq!(
            e.to_string(),
            "virtio-mmio device at 0xd0000000: saved queue 0 is invalid"
        );
        assert_eq!(g.t.status(), 0, "a refused state changed the transport");
        assert!(g.t.check_state(&state).is_ok());
    }

    #[test]
    fn reset_method_is_the_status_write() {
        let mut f = fixture();
        negotiate(&mut f.t, 1 << VIRTIO_F_VERSION_1);
        setup_queue(&mut f.t, 0, 16, 0x10000);
        w32(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert!(f.t.is_activated());
        f.t.queue_events()[0].write(1).unwrap();
        f.t.interrupt().signal_used_queue().unwrap();
        f.t.reset();
        assert!(!f.t.is_activated());
        assert_eq!(f.log.lock().unwrap().resets, 1);
        assert_eq!(f.t.status(), 0);
        assert_eq!(r32(&mut f.t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert!(f.t.queue_events()[0].read().is_err(), "stale kick kept");
        assert!(!f.t.queues[0].ready());
        assert_eq!(f.t.driver_features, 0);
        // The driver can start over.
        negotiate(&mut f.t, 1 << VIRTIO_F_VERSION_1);
        assert_eq!(f.t.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    }

    #[test]
    fn unusable_queue_or_failed_activation_needs_reset() {
        let mut f = fixture();
        negotiate(&mut f.t, 1 << VIRTIO_F_VERSION_1);
        // The rings lie outside guest memory (1 MiB).
        setup_queue(&mut f.t, 0, 16, 0x20_0000);
        w32(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert!(!f.t.is_activated());
        assert_ne!(f.t.status() & DEVICE_NEEDS_RESET, 0);
        assert_ne!(r32(&mut f.t, VIRTIO_MMIO_INTERRUPT_STATUS) & 2, 0);
        assert_eq!(f.irq.read().unwrap(), 1);
        assert!(f.log.lock().unwrap().activations.is_empty());
        w32(&mut f.t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(f.t.status(), 0);

        let mut f = fixture_with(true);
        negotiate(&mut f.t, 1 << VIRTIO_F_VERSION_1);
        setup_queue(&mut f.t, 0, 16, 0x10000);
        w32(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert!(!f.t.is_activated());
        assert_ne!(r32(&mut f.t, VIRTIO_MMIO_STATUS) & DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn notify_and_interrupt_registers() {
        let mut f = fixture();
        w32(&mut f.t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        assert_eq!(f.t.queue_events()[1].read().unwrap(), 1);
        assert!(f.t.queue_events()[0].read().is_err());
        w32(&mut f.t, VIRTIO_MMIO_QUEUE_NOTIFY, 99); // no such queue
        w32(&mut f.t, VIRTIO_MMIO_QUEUE_NOTIFY, u32::MAX);
        f.t.interrupt().signal_used_queue().unwrap();
        f.t.interrupt().signal_config_change().unwrap();
        assert_eq!(f.irq.read().unwrap(), 2);
        assert_eq!(r32(&mut f.t, VIRTIO_MMIO_INTERRUPT_STATUS), 3);
        assert_eq!(r32(&mut f.t, VIRTIO_MMIO_CONFIG_GENERATION), 1);
        w32(&mut f.t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(r32(&mut f.t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        w32(&mut f.t, VIRTIO_MMIO_INTERRUPT_ACK, 2);
        assert_eq!(r32(&mut f.t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn config_space_is_delegated() {
        let mut f = fixture();
        let mut b = [0u8; 1];
        f.t.read(0, 0x102, &mut b);
        assert_eq!(b, [0xc2]);
        let mut w = [0u8; 2];
        f.t.read(0, 0x106, &mut w);
        assert_eq!(w, [0xc6, 0xc7]);
        let mut q = [0u8; 8];
        f.t.read(0, 0x100, &mut q);
        assert_eq!(q, [0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7]);
        let mut far = [0xffu8; 4];
        f.t.read(0, 0xffc, &mut far);
        assert_eq!(far, [0; 4]);
        let mut odd = [0u8; 3];
        f.t.read(0, 0x100, &mut odd);
        assert_eq!(odd, [0; 3]);
        f.t.write(0, 0x104, &[1, 2]);
        f.t.write(0, 0x104, &[1, 2, 3]); // odd width: ignored
        assert_eq!(f.log.lock().unwrap().config_writes, vec![(4, vec![1, 2])]);
    }

    #[test]
    fn hostile_accesses_do_not_panic() {
        let mut f = fixture();
        let mut seed = 0x1234_5678u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for _ in 0..20_000 {
            let off = u64::from(next() % 0x1100);
            let len = [1usize, 2, 3, 4, 8, 0][(next() % 6) as usize];
            let v = next().to_le_bytes();
            let mut data = vec![0u8; len];
            for (i, b) in data.iter_mut().enumerate() {
                *b = v[i % 4];
            }
            if next() % 2 == 0 {
                f.t.write(0, off, &data);
            } else {
                f.t.read(0, off, &mut data);
            }
        }
        // A reset brings it back to a known state.
        w32(&mut f.t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(f.t.status(), 0);
        assert_eq!(r32(&mut f.t, VIRTIO_MMIO_MAGIC_VALUE), MMIO_MAGIC);
    }

    #[test]
    fn aml_describes_the_window_and_interrupt() {
        let f = fixture();
        let mut bytes = Vec::new();
        f.t.to_aml_bytes(&mut bytes);
        let find = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert_eq!(bytes[0..2], [0x5b, 0x82]); // DeviceOp
        assert!(find(b"VR00"));
        assert!(find(b"_HID\x0dLNRO0005\0"));
        assert!(find(b"_UID\x00")); // Name(_UID, Zero)
        assert!(find(b"_CCA\x01")); // Name(_CCA, One)
                                    // Memory32Fixed(ReadWrite, 0xd0000000, 0x1000)
        assert!(find(&[
            0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00
        ]));
        // Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) { 6 }
        assert!(find(&[
            0x89, 0x06, 0x00, 0x03, 0x01, 0x06, 0x00, 0x00, 0x00
        ]));

        let t = MmioTransport::new(
            Box::new(FakeDevice {
                log: Arc::default(),
                sizes: vec![8],
                fail: false,
            }),
            guest_memory(0x1000),
            EventFd::new(EFD_NONBLOCK).unwrap(),
            0xd000_3000,
            9,
            0x1b,
        )
        .unwrap();
        let mut bytes = Vec::new();
        t.to_aml_bytes(&mut bytes);
        let find = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"VR1B"));
        assert!(find(b"_UID\x0a\x1b"));
        assert!(find(&[0x00, 0x30, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00]));
        assert!(find(&[
            0x89, 0x06, 0x00, 0x03, 0x01, 0x09, 0x00, 0x00, 0x00
        ]));
    }
}
