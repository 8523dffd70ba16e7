// SPDX-License-Identifier: Apache-2.0
//! What a migration carries besides RAM: the [`Setup`] a destination must match (checked
//! before any page is loaded) and the [`VmState`] loaded at the switch, with its parts: each
//! vCPU's [`VcpuState`] and the devices' [`DevicesState`].
//!
//! Plain data only (serde, `kvm_bindings`, the `devices` crate's state structs): the
//! `migration_stream` fuzz target compiles this file as it is.

use devices::acpi::{AcpiPmState, GedState};
use devices::legacy::{DebugPortState, I8042State, SerialDeviceState};
use devices::virtio::{BlockState, MmioState};
use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_pit_state2,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId,
};
use serde::{Deserialize, Serialize};

/// One CPUID register of feature bits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuFeatureWord {
    /// CPUID leaf.
    pub leaf: u32,
    /// CPUID subleaf.
    pub subleaf: u32,
    /// The register: "eax", "ebx", "ecx" or "edx".
    pub reg: String,
    /// Its bits as the guest sees them.
    pub bits: u32,
}

/// The CPUID registers that hold feature flags a guest may use: leaves 1, 6, 7 (subleaves 0
/// and 1), 0xd (subleaf 1), 0x14, 0x80000001, 0x80000007 and 0x80000008.
const FEATURE_REGS: [(u32, u32, &str); 14] = [
    (0x1, 0, "ecx"),
    (0x1, 0, "edx"),
    (0x6, 0, "eax"),
    (0x7, 0, "ebx"),
    (0x7, 0, "ecx"),
    (0x7, 0, "edx"),
    (0x7, 1, "eax"),
    (0xd, 1, "eax"),
    (0x14, 0, "ebx"),
    (0x80000001, 0, "ecx"),
    (0x80000001, 0, "edx"),
    (0x80000007, 0, "edx"),
    (0x80000008, 0, "ebx"),
    (0x7, 1, "edx"),
];

/// Bits of leaf 1 that are not features: the APIC id and counts (EBX is not taken) and,
/// in ECX, OSXSAVE (bit 27), which follows the guest's CR4.
const NOT_FEATURES_1_ECX: u32 = 1 << 27;

/// The feature words of `cpuid` (a vCPU's table).
pub fn cpu_features(cpuid: &CpuId) -> Vec<CpuFeatureWord> {
    let mut out = Vec::new();
    for (leaf, subleaf, reg) in FEATURE_REGS {
        let Some(e) = cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == leaf && e.index == subleaf)
        else {
            continue;
        };
        let mut bits = match reg {
            "eax" => e.eax,
            "ebx" => e.ebx,
            "ecx" => e.ecx,
            _ => e.edx,
        };
        if (leaf, reg) == (0x1, "ecx") {
            bits &= !NOT_FEATURES_1_ECX;
        }
        out.push(CpuFeatureWord {
            leaf,
            subleaf,
            reg: reg.to_owned(),
            bits,
        });
    }
    out
}

/// A disk as a destination must have it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSummary {
    /// The device id (QEMU's qdev id, or vmm's `id=`).
    pub id: String,
    /// Bytes.
    pub size: u64,
    /// Read-only.
    pub read_only: bool,
    /// Queues.
    pub queues: u16,
}

/// What the destination must match, sent first: the destination refuses a mismatch before
/// it loads any page, and the source goes on running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setup {
    /// Guest RAM ranges (guest-physical start, bytes).
    pub ram: Vec<(u64, u64)>,
    /// vCPUs.
    pub cpus: u8,
    /// The CPU features the guest was given.
    pub cpu_features: Vec<CpuFeatureWord>,
    /// The disks, in guest order.
    pub disks: Vec<DiskSummary>,
}

impl Setup {
    /// Checks what a source's setup says of itself: each CPU feature register one of EAX,
    /// EBX, ECX, EDX (the name is printed in refusals, which are one line), and listed once
    /// (a register listed twice would be checked against this VM's first copy only).
    ///
    /// # Errors
    /// Another register name, or a register listed twice.
    pub fn validate(&self) -> Result<(), String> {
        for (i, w) in self.cpu_features.iter().enumerate() {
            if !["eax", "ebx", "ecx", "edx"].contains(&w.reg.as_str()) {
                return Err(format!(
                    "CPUID leaf {:#x} subleaf {}: no register \"{}\"",
                    w.leaf,
                    w.subleaf,
                    w.reg.escape_debug()
                ));
            }
            let twice = self.cpu_features[..i]
                .iter()
                .any(|d| (d.leaf, d.subleaf, &d.reg) == (w.leaf, w.subleaf, &w.reg));
            if twice {
                return Err(format!(
                    "CPUID leaf {:#x} subleaf {} {} is listed twice",
                    w.leaf, w.subleaf, w.reg
                ));
            }
        }
        Ok(())
    }

    /// Checks that a VM with this setup can take the state of `source`'s VM: the same RAM,
    /// vCPUs and disks, and every CPU feature the source's guest had.
    ///
    /// # Errors
    /// What differs, in one line.
    pub fn accept(&self, source: &Setup) -> Result<(), String> {
        let mib = |r: &[(u64, u64)]| r.iter().map(|(_, l)| l).sum::<u64>() >> 20;
        if self.ram != source.ram {
            return Err(format!(
                "the source has {} MiB of RAM, this VM {} MiB",
                mib(&source.ram),
                mib(&self.ram)
            ));
        }
        if self.cpus != source.cpus {
            return Err(format!(
                "the source has {} vCPUs, this VM {}",
                source.cpus, self.cpus
            ));
        }
        for s in &source.cpu_features {
            let here = self
                .cpu_features
                .iter()
                .find(|d| (d.leaf, d.subleaf, &d.reg) == (s.leaf, s.subleaf, &s.reg))
                .map_or(0, |d| d.bits);
            let missing = s.bits & !here;
            if missing != 0 {
                return Err(format!(
                    "this host's CPU lacks features the guest uses: CPUID leaf {:#x} subleaf {} {} bits {:#x}",
                    s.leaf, s.subleaf, s.reg, missing
                ));
            }
        }
        if self.disks.len() != source.disks.len() {
            return Err(format!(
                "the source has {} disks, this VM {}",
                source.disks.len(),
                self.disks.len()
            ));
        }
        for (i, (d, s)) in self.disks.iter().zip(&source.disks).enumerate() {
            if d != s {
                return Err(format!(
                    "disk {i} differs: the source's is id={} size={} read-only={} queues={}, this VM's id={} size={} read-only={} queues={}",
                    s.id.escape_debug(), s.size, s.read_only, s.queues, d.id, d.size, d.read_only, d.queues
                ));
            }
        }
        Ok(())
    }
}

/// Everything of the VM but its RAM, at the switch (every vCPU parked, devices quiesced).
#[derive(Debug, Serialize, Deserialize)]
pub struct VmState {
    /// Each vCPU, in order.
    pub vcpus: Vec<VcpuState>,
    /// KVM's PIC master, PIC slave and IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    /// KVM's PIT.
    pub pit: kvm_pit_state2,
    /// KVM's clock (kvmclock's time base).
    pub clock: kvm_clock_data,
    /// The emulated devices.
    pub devices: DevicesState,
}

/// Everything KVM holds for one vCPU, as a migration or snapshot carries it.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE and extended state.
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Every MSR KVM lists that it could read, as (index, value).
    pub msrs: Vec<(u32, u64)>,
    /// Run state (running, halted, waiting for SIPI).
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
}

/// The version of [`DevicesState`], the device section of a migration stream. Bump it when a
/// field changes meaning or is added without a default; a destination refuses other
/// versions. See `docs/architecture.md`, "Migration state".
pub const DEVICES_STATE_VERSION: u32 = 1;

/// What identifies a disk to its guest and to the block graph: a destination whose disk
/// differs in any of these refuses the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// The drive id (`drive0`, `-device ...,id=`).
    pub id: String,
    /// The node-name of the disk's root node (below the implicit fault filter).
    pub node_name: String,
    /// The image's size in bytes.
    pub size: u64,
    /// The disk is read-only.
    pub read_only: bool,
    /// The device's queue count (`num-queues`).
    pub num_queues: u16,
    /// The serial number the guest reads (GET_ID): the configured one, else the id.
    pub serial: String,
}

/// One disk's saved state: what it is, its transport and its virtio-blk device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskState {
    /// The disk, checked against the destination's.
    pub info: DiskInfo,
    /// The virtio-mmio registers and the queues (with the data path's indices).
    pub transport: MmioState,
    /// What the driver was told (features, queue count, capacity).
    pub block: BlockState,
}

/// The device section of a migration: every emulated device's guest-visible state. Devices
/// the machine does not have are `None` (a destination must have the same set).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    /// [`DEVICES_STATE_VERSION`] of the source.
    pub version: u32,
    /// COM1.
    pub serial: Option<SerialDeviceState>,
    /// The i8042 (no fields: it keeps no state).
    pub i8042: Option<I8042State>,
    /// The debug port (the latest code).
    pub debug_port: Option<DebugPortState>,
    /// The ACPI sleep and reset registers (no fields: they keep no state).
    pub acpi_pm: Option<AcpiPmState>,
    /// The power button's GED (no fields: it keeps no state).
    pub ged: Option<GedState>,
    /// The disks, in slot (`--disk`) order.
    pub disks: Vec<DiskState>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> Setup {
        Setup {
            ram: vec![(0, 256 << 20)],
            cpus: 2,
            cpu_features: vec![CpuFeatureWord {
                leaf: 1,
                subleaf: 0,
                reg: "ecx".into(),
                bits: 0b1011,
            }],
            disks: vec![DiskSummary {
                id: "drive0".into(),
                size: 1 << 20,
                read_only: false,
                queues: 1,
            }],
        }
    }

    #[test]
    fn the_same_setup_is_accepted() {
        assert_eq!(setup().accept(&setup()), Ok(()));
    }

    #[test]
    fn more_features_here_are_fine_fewer_are_not() {
        let mut here = setup();
        here.cpu_features[0].bits = 0b1111;
        assert_eq!(here.accept(&setup()), Ok(()));
        here.cpu_features[0].bits = 0b0011;
        assert_eq!(
            here.accept(&setup()).unwrap_err(),
            "this host's CPU lacks features the guest uses: CPUID leaf 0x1 subleaf 0 ecx bits 0x8"
        );
    }

    /// Found by the `migration_stream` fuzz target: a setup listing a feature register
    /// twice with different bits refused itself (each copy was checked against the first).
    #[test]
    fn fuzz_a_feature_register_listed_twice_is_refused() {
        let mut s = setup();
        let mut again = s.cpu_features[0].clone();
        again.bits = 0b0100;
        s.cpu_features.push(again);
        assert_eq!(
            s.validate().unwrap_err(),
            "CPUID leaf 0x1 subleaf 0 ecx is listed twice"
        );
        assert_eq!(setup().validate(), Ok(()));
    }

    /// Found by the `migration_stream` fuzz target: a register name with a newline made the
    /// refusal (and the destination's `ERR` line to the source) two lines.
    #[test]
    fn fuzz_source_strings_in_refusals_stay_one_line() {
        let mut s = setup();
        s.cpu_features[0].reg = "e\nnn\ndx".into();
        assert_eq!(
            s.validate().unwrap_err(),
            "CPUID leaf 0x1 subleaf 0: no register \"e\\nnn\\ndx\""
        );
        let mut s = setup();
        s.disks[0].id = "a\nb".into();
        assert!(setup()
            .accept(&s)
            .unwrap_err()
            .starts_with("disk 0 differs: the source's is id=a\\nb size="));
    }

    #[test]
    fn mismatches_say_what_differs() {
        let mut here = setup();
        here.ram = vec![(0, 512 << 20)];
        assert_eq!(
            here.accept(&setup()).unwrap_err(),
            "the source has 256 MiB of RAM, this VM 512 MiB"
        );
        let mut here = setup();
        here.cpus = 4;
        assert_eq!(
            here.accept(&setup()).unwrap_err(),
            "the source has 2 vCPUs, this VM 4"
        );
        let mut here = setup();
        here.disks.clear();
        assert_eq!(
            here.accept(&setup()).unwrap_err(),
            "the source has 1 disks, this VM 0"
        );
        let mut here = setup();
        here.disks[0].size = 2 << 20;
        assert!(here
            .accept(&setup())
            .unwrap_err()
            .starts_with("disk 0 differs"));
    }
}
