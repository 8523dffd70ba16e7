// SPDX-License-Identifier: Apache-2.0
//! Emulated devices of the vmm.
//!
//! Every device here is reached from a vCPU thread through a [`bus::Bus`] (port I/O or MMIO) and
//! takes only its own lock, never the VM's big lock. Devices that change the VM's run state (a
//! guest poweroff or reset request) report it through a [`VmEventSink`]; devices that appear in
//! the guest's ACPI namespace implement [`acpi_tables::Aml`] so the VMM's table builder can
//! describe them without knowing their details.

pub mod acpi;
pub mod bus;
pub mod event;
pub mod legacy;
pub mod state;
#[cfg(test)]
mod test_utils;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use event::{take_lifecycle_request, ResetCause, VmEvent, VmEventSink};
pub use state::StateError;

/// Guest RAM as the VMM and every device see it: vm-memory's mmap backend with a dirty bitmap
/// per region that records every write made through it (the devices' DMA: request data,
/// status bytes, used rings), which KVM's dirty log does not see. Migration reads and clears
/// both.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
