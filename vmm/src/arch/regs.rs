// SPDX-License-Identifier: Apache-2.0
//! Initial vCPU registers for the two boot protocols: the Linux 64-bit entry (long mode, paging
//! on, identity-mapped) and the PVH entry (32-bit protected mode, paging off).

use devices::GuestMemoryMmap;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Address, Bytes, GuestAddress};

use super::gdt::{
    gdt_entry, segment_from_entry, CODE32_FLAGS, CODE64_FLAGS, DATA_FLAGS, TSS_FLAGS,
};
use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
};

/// Errors while programming a vCPU's boot registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A boot structure could not be written to guest memory.
    #[error("Cannot write the boot {0} to guest memory")]
    GuestMemory(&'static str, #[source] vm_memory::GuestMemoryError),
    /// A KVM register ioctl failed.
    #[error("Cannot set the vCPU's {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
}

/// How the vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// Linux 64-bit boot protocol: long mode at `entry`, `rsi` = the zero page.
    Linux64 {
        /// The 64-bit entry point (bzImage load address + 0x200).
        entry: GuestAddress,
        /// The boot_params structure.
        zero_page: GuestAddress,
    },
    /// PVH: 32-bit protected mode with paging off at `entry`, `rbx` = the start info.
    Pvh {
        /// The entry from the kernel's `XEN_ELFNOTE_PHYS32_ENTRY` note.
        entry: GuestAddress,
        /// The `hvm_start_info` structure.
        start_info: GuestAddress,
    },
}

/// CR0: protection enable.
const X86_CR0_PE: u64 = 1 << 0;
/// CR0: extension type (always 1 on modern CPUs).
const X86_CR0_ET: u64 = 1 << 4;
/// CR0: paging.
const X86_CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension.
const X86_CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable.
const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
const EFER_LMA: u64 = 1 << 10;
/// Page table entry bits: present | writable.
const PTE_PRESENT_RW: u64 = 0x3;
/// Page directory entry bits: present | writable | 2 MiB page.
const PDE_LARGE: u64 = 0x83;
/// The VMM's page tables identity-map this many GiB (the 32-bit space, MMIO hole included).
const IDENTITY_MAPPED_GIB: u64 = 4;

/// Writes page tables identity-mapping the low 4 GiB with 2 MiB pages.
///
/// # Errors
/// Fails when the table area is not guest RAM.
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let err = |e| RegsError::GuestMemory("page tables", e);
    mem.write_obj(PDPTE_START | PTE_PRESENT_RW, GuestAddress(PML4_START))
        .map_err(err)?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = PDE_START + gib * 0x1000;
        mem.write_obj(pd | PTE_PRESENT_RW, GuestAddress(PDPTE_START + gib * 8))
            .map_err(err)?;
        let mut entries = [0u8; 4096];
        for (i, chunk) in entries.chunks_exact_mut(8).enumerate() {
            let addr = ((gib << 9) + i as u64) << 21;
            chunk.copy_from_slice(&(addr | PDE_LARGE).to_le_bytes());
        }
        mem.write_slice(&entries, GuestAddress(pd)).map_err(err)?;
    }
    Ok(())
}

/// The boot GDT: null, code (64- or 32-bit), data, TSS.
fn gdt_for(entry: &BootEntry) -> [u64; 4] {
    let code = match entry {
        BootEntry::Linux64 { .. } => CODE64_FLAGS,
        BootEntry::Pvh { .. } => CODE32_FLAGS,
    };
    [
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, 0xfffff),
    ]
}

/// Computes the special registers for `entry` and writes the GDT, IDT (and page tables for the
/// 64-bit entry) they refer to. Starts from `base` (the vCPU's current sregs) so that fields KVM
/// owns, such as the APIC base, are kept.
///
/// # Errors
/// Fails when the tables cannot be written to guest memory.
pub fn boot_sregs(
    mem: &GuestMemoryMmap,
    entry: &BootEntry,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    let gdt = gdt_for(entry);
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START).unchecked_add(i as u64 * 8))
            .map_err(|e| RegsError::GuestMemory("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|e| RegsError::GuestMemory("IDT", e))?;

    let code = segment_from_entry(gdt[1], 1);
    let data = segment_from_entry(gdt[2], 2);
    let tss = segment_from_entry(gdt[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match entry {
        BootEntry::Linux64 { .. } => {
            write_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootEntry::Pvh { .. } => {
            sregs.cr0 = (sregs.cr0 & !X86_CR0_PG) | X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(sregs)
}

/// The general-purpose registers at the entry point.
pub fn boot_regs(entry: &BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match *entry {
        BootEntry::Linux64 { entry, zero_page } => {
            regs.rip = entry.raw_value();
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = zero_page.raw_value();
        }
        BootEntry::Pvh { entry, start_info } => {
            regs.rip = entry.raw_value();
            regs.rbx = start_info.raw_value();
        }
    }
    regs
}

/// The x87/SSE state at reset: FCW 0x37f (all exceptions masked), MXCSR 0x1f80.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Programs a vCPU's general, special and FPU registers for `entry`.
///
/// # Errors
/// Fails when guest memory or a KVM ioctl fails.
pub fn setup_boot_registers(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    entry: &BootEntry,
) -> Result<(), RegsError> {
    let current = vcpu.get_sregs().map_err(|e| RegsError::Kvm("sregs", e))?;
    let sregs = boot_sregs(mem, entry, current)?;
    vcpu.set_sregs(&sregs)
        .map_err(|e| RegsError::Kvm("sregs", e))?;
    vcpu.set_regs(&boot_regs(entry))
        .map_err(|e| RegsError::Kvm("registers", e))?;
    vcpu.set_fpu(&boot_fpu())
        .map_err(|e| RegsError::Kvm("FPU", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn read_u64(mem: &GuestMemoryMmap, addr: u64) -> u64 {
        mem.read_obj(GuestAddress(addr)).unwrap()
    }

    #[test]
    fn page_tables_identity_map_4gib() {
        let mem = mem();
        write_page_tables(&mem).unwrap();
        assert_eq!(read_u64(&mem, PML4_START), 0xa003);
        for gib in 0..4 {
            assert_eq!(read_u64(&mem, PDPTE_START + gib * 8), 0xb003 + gib * 0x1000);
        }
        assert_eq!(read_u64(&mem, PDPTE_START + 32), 0);
        assert_eq!(read_u64(&mem, PDE_START), 0x83);
        assert_eq!(read_u64(&mem, PDE_START + 8), 0x20_0083);
        // Last 2 MiB page below 4 GiB (covers the LAPIC).
        assert_eq!(read_u64(&mem, PDE_START + 0x3ff8), 0xffe0_0083);
    }

    #[test]
    fn long_mode_sregs() {
        let mem = mem();
        let entry = BootEntry::Linux64 {
            entry: GuestAddress(0x10_0200),
            zero_page: GuestAddress(0x7000),
        };
        let s = boot_sregs(&mem, &entry, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(
            (s.cs.l, s.cs.selector, s.ds.selector, s.tr.selector),
            (1, 8, 16, 24)
        );
        assert_eq!(s.gdt.limit, 31);
        assert_eq!(read_u64(&mem, BOOT_GDT_START + 8), 0x00af_9b00_0000_ffff);
        let r = boot_regs(&entry);
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x10_0200, 0x7000, 0x8ff0, 2)
        );
    }

    #[test]
    fn pvh_sregs_are_32bit_without_paging() {
        let mem = mem();
        let entry = BootEntry::Pvh {
            entry: GuestAddress(0x100_0000),
            start_info: GuestAddress(0x6000),
        };
        let start = kvm_sregs {
            cr0: X86_CR0_PG,
            efer: EFER_LME,
            ..Default::default()
        };
        let s = boot_sregs(&mem, &entry, start).unwrap();
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr0 & X86_CR0_PE, 0);
        assert_eq!((s.efer, s.cs.l, s.cs.db), (0, 0, 1));
        let r = boot_regs(&entry);
        assert_eq!((r.rip, r.rbx), (0x100_0000, 0x6000));
        // PVH does not need the VMM's page tables.
        assert_eq!(read_u64(&mem, PML4_START), 0);
    }

    #[test]
    fn fpu_defaults() {
        let f = boot_fpu();
        assert_eq!((f.fcw, f.mxcsr), (0x37f, 0x1f80));
    }
}
