// SPDX-License-Identifier: Apache-2.0
//! The kernel loader of the vmm binary (`vmm/src/boot/`: format identification, bzImage and
//! PVH ELF loading through linux-loader, command line, initrd placement, zero page and PVH
//! start info), on arbitrary kernel files.
//!
//! vmm is a binary crate, so its boot sources are compiled into this target as they are
//! (`#[path]` modules, with the `layout`, `memory` and `arch` modules they name as `crate::`):
//! the code fuzzed is the code vmm runs, with vmm's arguments, not linux-loader alone.
//!
//! Input: `[flags] [initrd KiB] [cmdline length] cmdline kernel...`; `flags` picks the guest's
//! RAM (8 MiB, 32 MiB, 256 MiB, or 3 GiB + 64 MiB, which puts RAM above the MMIO hole) and
//! whether there is an initrd (that many KiB of a pattern).
//!
//! Asserts, beyond not panicking, for a kernel that loads:
//! - a bzImage's zero page carries the boot flag, "HdrS", our loader type, the command line's
//!   address and length, the RSDP and an E820 map of sorted, disjoint entries whose RAM is
//!   the guest's RAM; a PVH start info its magic, the command line, the RSDP, the same map and
//!   the initrd module;
//! - the command line is in guest memory, NUL-terminated; the entry point is in RAM (bzImage);
//! - the initrd is page-aligned, above the kernel's load address, below the limits, in RAM,
//!   and holds the initrd's bytes;
//! - loading again (a VM reset) gives the same entry and the same boot structures.

#![no_main]
#![allow(dead_code)]

#[path = "../../../vmm/src/arch/mod.rs"]
mod arch;
#[path = "../../../vmm/src/boot/mod.rs"]
mod boot;
#[path = "../../../vmm/src/layout.rs"]
mod layout;
#[path = "../../../vmm/src/memory.rs"]
mod memory;

use std::path::PathBuf;
use std::sync::OnceLock;

use arch::regs::BootEntry;
use boot::BootImages;
use layout::{
    CMDLINE_START, HIGH_MEMORY_START, MMIO_HOLE_START, PVH_INFO_START, PVH_MEMMAP_START,
    RSDP_START, ZERO_PAGE_START,
};
use libfuzzer_sys::fuzz_target;
use linux_loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use devices::GuestMemoryMmap;

const RAM_SIZES: [u64; 4] = [8 << 20, 32 << 20, 256 << 20, (3 << 30) + (64 << 20)];

fn paths() -> &'static (PathBuf, PathBuf) {
    static P: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::temp_dir();
        let pid = std::process::id();
        (
            dir.join(format!("vmm-fuzz-kernel-{pid}")),
            dir.join(format!("vmm-fuzz-initrd-{pid}")),
        )
    })
}

/// Checks an E820-style map: sorted, disjoint, its RAM entries exactly the guest's RAM above
/// the reserved low area.
fn check_map(map: &[(u64, u64, u32)], mem: &GuestMemoryMmap, ram_size: u64) {
    let mut end = 0;
    let mut ram = 0;
    for &(addr, size, kind) in map {
        assert!(addr >= end, "map not sorted or overlapping: {map:x?}");
        assert!(size > 0, "empty entry");
        end = addr + size;
        match kind {
            1 => {
                assert!(
                    mem.check_range(GuestAddress(addr), size as usize),
                    "RAM {addr:#x}+{size:#x} not in guest memory"
                );
                ram += size;
            }
            2 => {}
            k => panic!("entry type {k}"),
        }
    }
    // Everything but the reserved system area below 1 MiB is usable RAM.
    let reserved: u64 = map
        .iter()
        .filter(|e| e.2 == 2 && e.0 < HIGH_MEMORY_START)
        .map(|e| e.1)
        .sum();
    assert_eq!(ram + reserved, ram_size, "RAM in the map: {map:x?}");
}

/// The boot structures as bytes (for comparing two loads).
fn structures(mem: &GuestMemoryMmap) -> Vec<u8> {
    let mut zero = vec![0u8; 4096];
    mem.read_slice(&mut zero, GuestAddress(ZERO_PAGE_START))
        .expect("zero page");
    let mut pvh = vec![0u8; 0x1000];
    mem.read_slice(&mut pvh, GuestAddress(PVH_INFO_START))
        .expect("start info");
    let mut cmdline = vec![0u8; 4096];
    mem.read_slice(&mut cmdline, GuestAddress(CMDLINE_START))
        .expect("cmdline");
    [zero, pvh, cmdline].concat()
}

fn check_initrd(mem: &GuestMemoryMmap, addr: u64, size: u64, initrd: &[u8], limit: u64) {
    assert_eq!(size, initrd.len() as u64, "initrd size");
    assert_eq!(addr % 4096, 0, "initrd not page-aligned");
    assert!(addr >= HIGH_MEMORY_START, "initrd over the low area");
    assert!(
        addr + size <= limit,
        "initrd {addr:#x}+{size:#x} above {limit:#x}"
    );
    let mut got = vec![0u8; initrd.len()];
    mem.read_slice(&mut got, GuestAddress(addr))
        .expect("initrd in RAM");
    assert!(got == initrd, "initrd bytes differ");
}

fuzz_target!(|data: &[u8]| {
    let [flags, initrd_kib, cmdline_len, rest @ ..] = data else {
        return;
    };
    let ram_size = RAM_SIZES[usize::from(flags & 3)];
    let low_ram_end = ram_size.min(MMIO_HOLE_START);
    let n = usize::from(*cmdline_len).min(rest.len());
    let (cmdline, kernel) = rest.split_at(n);
    let Ok(cmdline) = std::str::from_utf8(cmdline) else {
        return;
    };
    let initrd: Option<Vec<u8>> = (flags & 4 != 0).then(|| {
        (0..usize::from(*initrd_kib) * 1024)
            .map(|i| (i % 253) as u8)
            .collect()
    });
    let (kernel_path, initrd_path) = paths();
    std::fs::write(kernel_path, kernel).expect("write kernel");
    if let Some(i) = &initrd {
        std::fs::write(initrd_path, i).expect("write initrd");
    }
    let Ok(mut images) = BootImages::open(
        kernel_path,
        initrd.as_ref().map(|_| initrd_path.as_path()),
        cmdline,
    ) else {
        return;
    };
    let mem = memory::create_guest_memory(ram_size).expect("guest memory");
    let rsdp = GuestAddress(RSDP_START);
    let Ok(entry) = images.load(&mem, ram_size, rsdp) else {
        return;
    };

    let mut line = vec![0u8; cmdline.len() + 1];
    mem.read_slice(&mut line, GuestAddress(CMDLINE_START))
        .expect("cmdline");
    assert_eq!(&line[..cmdline.len()], cmdline.as_bytes(), "command line");
    assert_eq!(line[cmdline.len()], 0, "command line not NUL-terminated");

    match entry {
        BootEntry::Linux64 { entry, zero_page } => {
            assert_eq!(zero_page.0, ZERO_PAGE_START);
            assert!(
                entry.0 >= HIGH_MEMORY_START && entry.0 < low_ram_end,
                "entry {entry:?}"
            );
            let p: boot_params = mem.read_obj(zero_page).expect("zero page");
            let h = p.hdr;
            assert_eq!({ h.boot_flag }, 0xaa55);
            assert_eq!({ h.header }, 0x5372_6448);
            assert_eq!({ h.type_of_loader }, 0xff);
            assert_eq!(u64::from(h.cmd_line_ptr), CMDLINE_START);
            assert_eq!({ h.cmdline_size } as usize, cmdline.len());
            assert_eq!({ p.acpi_rsdp_addr }, RSDP_START);
            assert_eq!({ h.setup_data }, 0, "a setup_data list from nowhere");
            let count = usize::from(p.e820_entries);
            assert!(count <= p.e820_table.len());
            let table = { p.e820_table };
            let map: Vec<(u64, u64, u32)> = table[..count]
                .iter()
                .map(|e| ({ e.addr }, { e.size }, { e.r#type }))
                .collect();
            check_map(&map, &mem, ram_size);
            match &initrd {
                Some(i) => {
                    let max = match u64::from(h.initrd_addr_max) {
                        0 => 0x37ff_ffff,
                        m => m,
                    };
                    let (addr, size) = (u64::from(h.ramdisk_image), u64::from(h.ramdisk_size));
                    assert!(addr > entry.0, "initrd below the kernel");
                    check_initrd(&mem, addr, size, i, low_ram_end.min(max.saturating_add(1)));
                }
                None => assert_eq!({ h.ramdisk_image }, 0, "an initrd from nowhere"),
            }
        }
        BootEntry::Pvh { start_info, .. } => {
            assert_eq!(start_info.0, PVH_INFO_START);
            let s: hvm_start_info = mem.read_obj(start_info).expect("start info");
            assert_eq!(s.magic, 0x336e_c578);
            assert_eq!(s.cmdline_paddr, CMDLINE_START);
            assert_eq!(s.rsdp_paddr, RSDP_START);
            assert_eq!(s.memmap_paddr, PVH_MEMMAP_START);
            let size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
            let map: Vec<(u64, u64, u32)> = (0..u64::from(s.memmap_entries))
                .map(|i| {
                    let e: hvm_memmap_table_entry = mem
                        .read_obj(GuestAddress(PVH_MEMMAP_START + i * size))
                        .expect("memmap entry");
                    (e.addr, e.size, e.type_)
                })
                .collect();
            check_map(&map, &mem, ram_size);
            match &initrd {
                Some(i) => {
                    assert_eq!(s.nr_modules, 1);
                    let m: hvm_modlist_entry =
                        mem.read_obj(GuestAddress(s.modlist_paddr)).expect("module");
                    check_initrd(&mem, m.paddr, m.size, i, low_ram_end);
                }
                None => assert_eq!(s.nr_modules, 0),
            }
        }
    }

    // A reset loads the same kernel the same way.
    let before = structures(&mem);
    let again = images
        .load(&mem, ram_size, rsdp)
        .expect("a kernel that loaded loads again");
    assert_eq!(again, entry, "another entry on reload");
    assert!(
        structures(&mem) == before,
        "other boot structures on reload"
    );
});
