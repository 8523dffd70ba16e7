// SPDX-License-Identifier: Apache-2.0
//! Per-vCPU CPUID: what KVM supports, with the APIC id and the topology of this VM patched in.

use kvm_bindings::CpuId;

/// CPUID.1:ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28: the package has more than one logical processor.
const EDX_HTT: u32 = 1 << 28;
/// Leaf 0xB/0x1F level types.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Number of bits needed to number `count` cores.
fn core_id_bits(count: u8) -> u32 {
    u32::from(count).next_power_of_two().trailing_zeros()
}

/// Patches `cpuid` (KVM's supported list) for vCPU `apic_id` of a VM with `count` vCPUs, all
/// single-threaded cores of one package.
pub fn patch_cpuid(cpuid: &mut CpuId, apic_id: u8, count: u8) {
    let count32 = u32::from(count);
    let apic32 = u32::from(apic_id);
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (apic32 << 24) | (count32 << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            0x4 => {
                // Bits 31..26: cores per package minus one. Bits 25..14: logical processors
                // sharing this cache minus one: all of them for the L3, one otherwise.
                let cache_level = (entry.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 { count32 - 1 } else { 0 };
                entry.eax = (entry.eax & 0x3fff) | (sharing << 14) | ((count32 - 1) << 26);
            }
            0xb | 0x1f => {
                entry.edx = apic32;
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = (LEVEL_TYPE_SMT << 8) | entry.index;
                    }
                    1 => {
                        entry.eax = core_id_bits(count);
                        entry.ebx = count32;
                        entry.ecx = (LEVEL_TYPE_CORE << 8) | entry.index;
                    }
                    _ => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = entry.index;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use kvm_bindings::kvm_cpuid_entry2;

    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn patches_apic_id_and_topology() {
        let mut c = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0x0008_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 4,
                eax: 3 << 5 | 0x1,
                ..Default::default()
            },
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
        ])
        .unwrap();
        patch_cpuid(&mut c, 2, 4);
        let e = c.as_slice();
        assert_eq!(e[0].ebx, 0x0204_0800);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!(e[1].eax >> 26, 3);
        assert_eq!((e[1].eax >> 14) & 0xfff, 3);
        assert_eq!((e[2].ebx, e[2].ecx, e[2].edx), (1, 0x100, 2));
        assert_eq!((e[3].eax, e[3].ebx, e[3].ecx, e[3].edx), (2, 4, 0x201, 2));
        assert_eq!((e[4].ebx, e[4].ecx), (0, 2));
    }

    #[test]
    fn id_bits() {
        assert_eq!(core_id_bits(1), 0);
        assert_eq!(core_id_bits(2), 1);
        assert_eq!(core_id_bits(3), 2);
        assert_eq!(core_id_bits(64), 6);
    }
}
