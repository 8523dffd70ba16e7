// SPDX-License-Identifier: Apache-2.0
//! The guest physical address map and the fixed I/O resources of the machine.
//!
//! ```text
//! 0x0000_0000  real-mode IVT/BDA (RAM)
//! 0x0000_0500  GDT                    0x0000_0520  IDT (empty, limit 7)
//! 0x0000_6000  PVH start info + memory map
//! 0x0000_7000  Linux zero page (boot_params)
//! 0x0000_8ff0  initial stack top
//! 0x0000_9000  PML4, 0xa000 PDPT, 0xb000..0xf000 four page directories (4 GiB of 2 MiB pages)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  reserved: ACPI tables (XSDT, FADT, MADT, DSDT) up to 0xe_0000
//! 0x000e_0000  RSDP (inside the BIOS area the spec tells OSes to scan), reserved to 1 MiB
//! 0x0010_0000  kernel (bzImage protected-mode part or vmlinux segments), RAM continues
//! 0xc000_0000  32-bit MMIO hole: virtio-mmio windows, IOAPIC, LAPIC (no RAM up to 4 GiB)
//! 0x1_0000_0000 RAM above the hole, when the guest has more than 3 GiB
//! ```

/// Global descriptor table written by the VMM for the initial mode switch.
pub const BOOT_GDT_START: u64 = 0x500;
/// Interrupt descriptor table: empty; the kernel installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure, followed by its memory map.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map entries, right after the start info and the single module entry.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// The Linux "zero page" (struct boot_params).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// The initial stack pointer the boot protocol hands the kernel.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table. The VMM identity-maps the low 4 GiB with 2 MiB pages.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of four page directories (one per GiB).
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// The longest command line we accept (the kernel may accept less: its header says).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the reserved system area holding the ACPI tables (the EBDA position PCs use).
pub const SYSTEM_MEM_START: u64 = 0x9_fc00;
/// The RSDP, inside the 0xe0000..0xfffff range a guest scans for it.
pub const RSDP_START: u64 = 0xe_0000;
/// End of the reserved low area: the kernel is loaded here (1 MiB).
pub const HIGH_MEMORY_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO hole; guest RAM stops here and resumes at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole (4 GiB).
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// First virtio-mmio window; each device gets [`VIRTIO_MMIO_SIZE`] bytes after it.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The IOAPIC's MMIO address (fixed by KVM's in-kernel IOAPIC).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APICs' MMIO address.
pub const APIC_START: u64 = 0xfee0_0000;
/// Where KVM keeps the three pages of its real-mode TSS: at the top of the hole, out of RAM.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// COM1's I/O ports.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's eight 16550A registers.
pub const COM1_PORT_LEN: u64 = 8;
/// COM1's interrupt (ISA IRQ 4).
pub const COM1_GSI: u32 = 4;
/// The i8042 data port; the command port is 4 above it.
pub const I8042_PORT: u16 = 0x60;
/// The i8042's ports: data at 0x60 up to the command/status port at 0x64.
pub const I8042_PORT_LEN: u64 = 5;
/// The debug (POST code) port, our boot timer.
pub const DEBUG_PORT: u16 = 0x80;
/// The debug port is one byte wide.
pub const DEBUG_PORT_LEN: u64 = 1;
/// The ACPI sleep control/status and reset registers.
pub const ACPI_PM_PORT: u16 = 0x600;
/// The power-button GED's interrupt.
pub const GED_GSI: u32 = 5;
/// First GSI handed to virtio-mmio devices; they use GSIs up to [`LAST_DEVICE_GSI`].
pub const VIRTIO_FIRST_GSI: u32 = 6;
/// Last GSI of the IOAPIC's 24 pins.
pub const LAST_DEVICE_GSI: u32 = 23;
