// SPDX-License-Identifier: Apache-2.0
//! The guest's physical memory map, shared by the Linux zero page and the PVH start info.

use vm_memory::Address;

use crate::layout::{HIGH_MEMORY_START, SYSTEM_MEM_START};
use crate::memory::ram_ranges;

/// Usable RAM.
pub const E820_RAM: u32 = 1;
/// Reserved (ACPI tables and the BIOS area live here).
pub const E820_RESERVED: u32 = 2;

/// One memory map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The memory map of a guest with `ram_size` bytes of RAM: low RAM up to the system area,
/// the reserved system/BIOS area up to 1 MiB, then RAM below and above the MMIO hole.
pub fn memory_map(ram_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: SYSTEM_MEM_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: SYSTEM_MEM_START,
            size: HIGH_MEMORY_START - SYSTEM_MEM_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, size) in ram_ranges(ram_size) {
        let start = start.raw_value();
        let (start, size) = if start == 0 {
            (HIGH_MEMORY_START, size.saturating_sub(HIGH_MEMORY_START))
        } else {
            (start, size)
        };
        if size > 0 {
            map.push(E820Entry {
                addr: start,
                size,
                kind: E820_RAM,
            });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_for_512_mib() {
        let m = memory_map(512 << 20);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[0],
            E820Entry {
                addr: 0,
                size: 0x9_fc00,
                kind: E820_RAM
            }
        );
        assert_eq!(
            m[1],
            E820Entry {
                addr: 0x9_fc00,
                size: 0x6_0400,
                kind: E820_RESERVED
            }
        );
        assert_eq!(
            m[2],
            E820Entry {
                addr: 0x10_0000,
                size: (512 << 20) - 0x10_0000,
                kind: E820_RAM
            }
        );
        let usable: u64 = m
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        // Only the 385 KiB system area is withheld: rounded to MiB, usable RAM is what was asked.
        assert_eq!((usable + (1 << 19)) >> 20, 512);
    }

    #[test]
    fn map_above_the_hole() {
        let m = memory_map(5 << 30);
        assert_eq!(m.len(), 4);
        assert_eq!(
            m[2],
            E820Entry {
                addr: 0x10_0000,
                size: (3 << 30) - 0x10_0000,
                kind: E820_RAM
            }
        );
        assert_eq!(
            m[3],
            E820Entry {
                addr: 4 << 30,
                size: 2 << 30,
                kind: E820_RAM
            }
        );
    }
}
