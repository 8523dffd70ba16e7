// SPDX-License-Identifier: Apache-2.0
//! The PVH boot protocol's start info: command line, memory map, RSDP and the initrd module.

use devices::GuestMemoryMmap;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Address, Bytes, GuestAddress};

use super::e820::memory_map;
use super::BootError;
use crate::layout::{CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_START};

/// `XEN_HVM_START_MAGIC_VALUE`.
const START_MAGIC: u32 = 0x336e_c578;
/// Version 1 of the structure (it has the memory map fields).
const START_VERSION: u32 = 1;
/// Where the one module entry (the initrd) goes: right after the start info.
const MODLIST_START: u64 = PVH_INFO_START + 0x40;

/// Builds the start info and its memory map.
pub(super) fn start_info(
    ram_size: u64,
    initrd: Option<(GuestAddress, u64)>,
    rsdp: GuestAddress,
) -> (
    hvm_start_info,
    Vec<hvm_memmap_table_entry>,
    Option<hvm_modlist_entry>,
) {
    let map: Vec<hvm_memmap_table_entry> = memory_map(ram_size)
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let module = initrd.map(|(addr, size)| hvm_modlist_entry {
        paddr: addr.raw_value(),
        size,
        ..Default::default()
    });
    let info = hvm_start_info {
        magic: START_MAGIC,
        version: START_VERSION,
        nr_modules: u32::from(module.is_some()),
        modlist_paddr: if module.is_some() { MODLIST_START } else { 0 },
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp.raw_value(),
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    (info, map, module)
}

/// Writes the start info, module list and memory map to their fixed places.
pub(super) fn write_start_info(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    initrd: Option<(GuestAddress, u64)>,
    rsdp: GuestAddress,
) -> Result<(), BootError> {
    let err = |e| BootError::GuestMemory("the PVH start info", e);
    let (info, map, module) = start_info(ram_size, initrd, rsdp);
    mem.write_obj(info, GuestAddress(PVH_INFO_START))
        .map_err(err)?;
    if let Some(m) = module {
        mem.write_obj(m, GuestAddress(MODLIST_START)).map_err(err)?;
    }
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    for (i, e) in map.iter().enumerate() {
        mem.write_obj(
            *e,
            GuestAddress(PVH_MEMMAP_START).unchecked_add(i as u64 * entry_size),
        )
        .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_info_fields() {
        let (info, map, module) = start_info(
            128 << 20,
            Some((GuestAddress(0x700_0000), 4096)),
            GuestAddress(0xe_0000),
        );
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, MODLIST_START);
        assert_eq!(info.rsdp_paddr, 0xe_0000);
        assert_eq!(info.memmap_entries, 3);
        assert_eq!(map[2].size, (127 << 20));
        assert_eq!(module.unwrap().paddr, 0x700_0000);
        // The module entry must not overlap the start info.
        assert!(MODLIST_START >= PVH_INFO_START + std::mem::size_of::<hvm_start_info>() as u64);
        assert!(
            PVH_MEMMAP_START >= MODLIST_START + std::mem::size_of::<hvm_modlist_entry>() as u64
        );
    }

    #[test]
    fn writes_to_guest_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_start_info(&mem, 64 << 20, None, GuestAddress(0xe_0000)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(
            (info.magic, info.nr_modules, info.modlist_paddr),
            (START_MAGIC, 0, 0)
        );
        let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(PVH_MEMMAP_START)).unwrap();
        assert_eq!((e.addr, e.size, e.type_), (0, 0x9_fc00, 1));
    }
}
