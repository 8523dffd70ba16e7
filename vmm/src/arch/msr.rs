// SPDX-License-Identifier: Apache-2.0
//! The MSR values a vCPU boots with, limited to the MSRs this host's KVM accepts.
//!
//! Some KVM implementations (the PVM nested hypervisor among them) refuse MSRs that hardware
//! KVM accepts, so every MSR is checked against `KVM_GET_MSR_INDEX_LIST` first.

use kvm_bindings::{kvm_msr_entry, Msrs};

/// IA32_SYSENTER_CS/ESP/EIP.
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// SYSCALL target registers.
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// Time stamp counter.
const MSR_IA32_TSC: u32 = 0x10;
/// IA32_MISC_ENABLE: bit 0 enables fast string operations.
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRR default type: MTRRs enabled (bit 11), default type write-back (6).
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;
/// The page attribute table, and its power-on value (WB, WT, UC-, UC, twice).
const MSR_IA32_CR_PAT: u32 = 0x277;
const PAT_POWER_ON: u64 = 0x0007_0406_0007_0406;
/// The TSC-deadline timer's deadline (0: disarmed).
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// KVM's paravirtual MSRs that hold guest-physical addresses KVM keeps writing to (the
/// kvmclock page, steal time, the async page fault and PV EOI areas) once a guest enabled
/// them. 0 turns each off; KVM's poll control is 1 at power-on. (The wall clock MSRs are
/// left alone: a write makes KVM store the wall clock at the address written.)
const MSR_KVM_SYSTEM_TIME: u32 = 0x12;
const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
const MSR_KVM_ASYNC_PF_EN: u32 = 0x4b56_4d02;
const MSR_KVM_STEAL_TIME: u32 = 0x4b56_4d03;
const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;
const MSR_KVM_POLL_CONTROL: u32 = 0x4b56_4d05;
const MSR_KVM_ASYNC_PF_INT: u32 = 0x4b56_4d06;

/// The boot values, before filtering. They are also the values a reset restores: after a
/// guest reset KVM must not go on updating memory the previous boot pointed it at (the new
/// boot's kernel may live there), nor fire the previous boot's TSC deadline.
const BOOT_MSRS: [(u32, u64); 20] = [
    (MSR_IA32_SYSENTER_CS, 0),
    (MSR_IA32_SYSENTER_ESP, 0),
    (MSR_IA32_SYSENTER_EIP, 0),
    (MSR_STAR, 0),
    (MSR_CSTAR, 0),
    (MSR_KERNEL_GS_BASE, 0),
    (MSR_SYSCALL_MASK, 0),
    (MSR_LSTAR, 0),
    (MSR_IA32_TSC, 0),
    (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    (MSR_IA32_CR_PAT, PAT_POWER_ON),
    (MSR_IA32_TSC_DEADLINE, 0),
    (MSR_KVM_SYSTEM_TIME, 0),
    (MSR_KVM_SYSTEM_TIME_NEW, 0),
    (MSR_KVM_ASYNC_PF_EN, 0),
    (MSR_KVM_ASYNC_PF_INT, 0),
    (MSR_KVM_STEAL_TIME, 0),
    (MSR_KVM_PV_EOI_EN, 0),
    (MSR_KVM_POLL_CONTROL, 1),
];

/// The boot MSRs that appear in `supported` (KVM's MSR index list).
pub fn boot_msrs(supported: &[u32]) -> Msrs {
    let entries: Vec<kvm_msr_entry> = BOOT_MSRS
        .iter()
        .filter(|(index, _)| supported.contains(index))
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    // At most 20 entries: far below the FAM wrapper's limit, so creation cannot fail; an
    // empty list is the safe fallback all the same.
    Msrs::from_entries(&entries)
        .or_else(|_| Msrs::new(0))
        .expect("an empty MSR list always fits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_supported_msrs() {
        let msrs = boot_msrs(&[MSR_IA32_TSC, MSR_MTRR_DEF_TYPE, 0x10a]);
        let got: Vec<(u32, u64)> = msrs.as_slice().iter().map(|e| (e.index, e.data)).collect();
        assert_eq!(got, vec![(MSR_IA32_TSC, 0), (MSR_MTRR_DEF_TYPE, 0x806)]);
        assert_eq!(boot_msrs(&[]).as_slice().len(), 0);
    }
}
