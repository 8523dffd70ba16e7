// SPDX-License-Identifier: Apache-2.0
//! Global descriptor table entries and the KVM segment registers that match them.

use kvm_bindings::kvm_segment;

/// Flat 64-bit code segment: present, DPL 0, execute/read, long mode (L=1), 4 KiB granularity.
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Flat 32-bit code segment: present, DPL 0, execute/read, D=1, 4 KiB granularity.
pub const CODE32_FLAGS: u16 = 0xc09b;
/// Flat data segment: present, DPL 0, read/write, B=1, 4 KiB granularity.
pub const DATA_FLAGS: u16 = 0xc093;
/// A busy 64-bit TSS; only loaded so that TR is valid.
pub const TSS_FLAGS: u16 = 0x008b;

/// Encodes one 8-byte descriptor from its flags (access byte in bits 0..8, flags nibble in bits
/// 12..16), base and 20-bit limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << (56 - 24))
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << (48 - 16))
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    let raw = ((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0x0000_0000_0000_ffff);
    let granular = (entry >> 55) & 1 == 1;
    // Truncation is impossible: raw is at most 20 bits, and the scaled value fits in 32 bits.
    let raw = raw as u32;
    if granular {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

/// Builds the KVM segment register that a descriptor load of `entry` at `table_index` gives.
pub fn segment_from_entry(entry: u64, table_index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        padding: 0,
        unusable: u8::from(bit(47) == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_entry_encodes_and_decodes() {
        let e = gdt_entry(CODE64_FLAGS, 0, 0xfffff);
        assert_eq!(e, 0x00af_9b00_0000_ffff);
        let s = segment_from_entry(e, 1);
        assert_eq!(s.selector, 8);
        assert_eq!(s.type_, 0xb);
        assert_eq!((s.present, s.dpl, s.s, s.l, s.db, s.g), (1, 0, 1, 1, 0, 1));
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(s.base, 0);
        assert_eq!(s.unusable, 0);
    }

    #[test]
    fn data_and_tss_entries() {
        let d = segment_from_entry(gdt_entry(DATA_FLAGS, 0, 0xfffff), 2);
        assert_eq!((d.type_, d.db, d.l, d.selector), (3, 1, 0, 16));
        let t = segment_from_entry(gdt_entry(TSS_FLAGS, 0x1234_5678, 0x67), 3);
        assert_eq!(
            (t.type_, t.s, t.g, t.limit, t.base),
            (0xb, 0, 0, 0x67, 0x1234_5678)
        );
        let null = segment_from_entry(0, 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn code32_is_not_long_mode() {
        let s = segment_from_entry(gdt_entry(CODE32_FLAGS, 0, 0xfffff), 1);
        assert_eq!((s.l, s.db), (0, 1));
    }
}
