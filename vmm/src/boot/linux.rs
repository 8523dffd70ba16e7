// SPDX-License-Identifier: Apache-2.0
//! The Linux zero page (struct boot_params) for a bzImage's 64-bit entry.

use devices::GuestMemoryMmap;
use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Address, Bytes, GuestAddress};

use super::e820::memory_map;
use super::BootError;
use crate::layout::{CMDLINE_START, ZERO_PAGE_START};

/// Boot loader type "undefined" (0xff): we are not one of the registered loaders.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// The boot sector signature.
const BOOT_FLAG: u16 = 0xaa55;
/// "HdrS".
const HDR_MAGIC: u32 = 0x5372_6448;

/// Builds the zero page from the image's setup header and the machine description.
pub(super) fn zero_page(
    mut hdr: setup_header,
    ram_size: u64,
    initrd: Option<(GuestAddress, u64)>,
    rsdp: GuestAddress,
    cmdline_len: usize,
) -> boot_params {
    hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    hdr.boot_flag = BOOT_FLAG;
    hdr.header = HDR_MAGIC;
    hdr.cmd_line_ptr = CMDLINE_START as u32;
    hdr.cmdline_size = cmdline_len as u32;
    // The boot loader owns these fields: whatever the image's header holds there is not ours
    // to pass on (no initrd is 0, and vmm hands over no setup_data list).
    let (ramdisk_image, ramdisk_size) = match initrd {
        // The initrd is placed below initrd_addr_max, which is below 4 GiB.
        Some((addr, size)) => (addr.raw_value() as u32, size as u32),
        None => (0, 0),
    };
    hdr.ramdisk_image = ramdisk_image;
    hdr.ramdisk_size = ramdisk_size;
    hdr.setup_data = 0;
    let mut params = boot_params {
        hdr,
        acpi_rsdp_addr: rsdp.raw_value(),
        ..Default::default()
    };
    let map = memory_map(ram_size);
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    // At most four entries: far below the table's 128.
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    params
}

/// Writes the zero page to its fixed place in guest memory.
pub(super) fn write_zero_page(
    mem: &GuestMemoryMmap,
    hdr: setup_header,
    ram_size: u64,
    initrd: Option<(GuestAddress, u64)>,
    rsdp: GuestAddress,
    cmdline_len: usize,
) -> Result<(), BootError> {
    let params = zero_page(hdr, ram_size, initrd, rsdp, cmdline_len);
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|e| BootError::GuestMemory("the zero page", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_page_fields() {
        let hdr = setup_header {
            version: 0x020f,
            ..Default::default()
        };
        let p = zero_page(
            hdr,
            256 << 20,
            Some((GuestAddress(0x0f00_0000), 0x1234)),
            GuestAddress(0xe_0000),
            13,
        );
        let h = p.hdr;
        assert_eq!(h.type_of_loader, 0xff);
        assert_eq!({ h.boot_flag }, 0xaa55);
        assert_eq!({ h.header }, 0x5372_6448);
        assert_eq!({ h.cmd_line_ptr }, 0x2_0000);
        assert_eq!({ h.cmdline_size }, 13);
        assert_eq!(
            ({ h.ramdisk_image }, { h.ramdisk_size }),
            (0x0f00_0000, 0x1234)
        );
        assert_eq!({ p.acpi_rsdp_addr }, 0xe_0000);
        assert_eq!(p.e820_entries, 3);
        let last = p.e820_table[2];
        assert_eq!(
            ({ last.addr }, { last.size }, { last.r#type }),
            (0x10_0000, (255 << 20), 1)
        );
    }

    /// Found by the `boot_loader` fuzz target: a bzImage whose setup header carries an initrd
    /// (or a setup_data list) made vmm hand the kernel that bogus initrd when none was given.
    #[test]
    fn the_image_header_does_not_choose_the_initrd() {
        let hdr = setup_header {
            version: 0x020f,
            ramdisk_image: 0xf9_0000,
            ramdisk_size: 0x1000,
            setup_data: 0x5000,
            ..Default::default()
        };
        let h = zero_page(hdr, 256 << 20, None, GuestAddress(0xe_0000), 0).hdr;
        assert_eq!(({ h.ramdisk_image }, { h.ramdisk_size }), (0, 0));
        assert_eq!({ h.setup_data }, 0);
        let initrd = Some((GuestAddress(0x20_0000), 7));
        let h = zero_page(hdr, 256 << 20, initrd, GuestAddress(0), 0).hdr;
        assert_eq!(({ h.ramdisk_image }, { h.ramdisk_size }), (0x20_0000, 7));
        assert_eq!({ h.setup_data }, 0);
    }
}
