// SPDX-License-Identifier: Apache-2.0
//! x86_64 vCPU state for booting: descriptor tables, page tables, registers, CPUID, MSRs and
//! the local APIC.

pub mod cpuid;
pub mod gdt;
pub mod lapic;
pub mod msr;
pub mod regs;
