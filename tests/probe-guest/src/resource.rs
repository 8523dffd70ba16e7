//! Reader for ACPI resource templates (`_CRS` buffers, ACPI 6.4 section 6.4).

use crate::bytes::{u16_at, u32_at, u64_at};

/// An interrupt line from a resource template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Irq {
    /// Global system interrupt number.
    pub gsi: u32,
    /// Edge-triggered (else level-triggered).
    pub edge: bool,
    /// Active-low (else active-high).
    pub active_low: bool,
}

/// The first memory window and interrupt of a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// First memory range: (base, length).
    pub mem: Option<(u64, u64)>,
    /// First interrupt.
    pub irq: Option<Irq>,
    /// First I/O port range: (base, length).
    pub io: Option<(u16, u16)>,
}

/// Decodes the descriptors of a resource template, keeping the first of each
/// kind. Stops at the end tag or at the first malformed descriptor.
pub fn parse(crs: &[u8]) -> Resources {
    let mut r = Resources::default();
    let mut pos = 0;
    while pos < crs.len() {
        let tag = crs[pos];
        if tag & 0x80 == 0 {
            let (kind, len) = ((tag >> 3) & 0xf, (tag & 7) as usize);
            let body = match crs.get(pos + 1..pos + 1 + len) {
                Some(b) => b,
                None => break,
            };
            match kind {
                0x4 if len >= 2 => {
                    let mask = u16_at(body, 0).unwrap_or(0);
                    let flags = if len >= 3 { body[2] } else { 1 };
                    if mask != 0 && r.irq.is_none() {
                        r.irq = Some(Irq {
                            gsi: mask.trailing_zeros(),
                            edge: flags & 1 != 0,
                            active_low: flags & 8 != 0,
                        });
                    }
                }
                0x8 if len >= 7 && r.io.is_none() => {
                    r.io = Some((u16_at(body, 1).unwrap_or(0), u16::from(body[6])));
                }
                0x9 if len >= 3 && r.io.is_none() => {
                    r.io = Some((u16_at(body, 0).unwrap_or(0), u16::from(body[2])));
                }
                0xf => break,
                _ => {}
            }
            pos += 1 + len;
        } else {
            let Some(len) = u16_at(crs, pos + 1) else {
                break;
            };
            let len = len as usize;
            let body = match crs.get(pos + 3..pos + 3 + len) {
                Some(b) => b,
                None => break,
            };
            match tag & 0x7f {
                // Memory32Fixed: info, base, length.
                0x06 if len >= 9 && r.mem.is_none() => {
                    r.mem = Some((
                        u64::from(u32_at(body, 1).unwrap_or(0)),
                        u64::from(u32_at(body, 5).unwrap_or(0)),
                    ));
                }
                // Memory32: info, min, max, align, length.
                0x05 if len >= 17 && r.mem.is_none() => {
                    r.mem = Some((
                        u64::from(u32_at(body, 1).unwrap_or(0)),
                        u64::from(u32_at(body, 13).unwrap_or(0)),
                    ));
                }
                // DWord / QWord address space of type memory (0).
                0x07 if len >= 23 && body[0] == 0 && r.mem.is_none() => {
                    r.mem = Some((
                        u64::from(u32_at(body, 7).unwrap_or(0)),
                        u64::from(u32_at(body, 19).unwrap_or(0)),
                    ));
                }
                0x0a if len >= 43 && body[0] == 0 && r.mem.is_none() => {
                    r.mem = Some((u64_at(body, 11).unwrap_or(0), u64_at(body, 35).unwrap_or(0)));
                }
                // Extended interrupt: flags, count, GSIs.
                0x09 if len >= 6 && r.irq.is_none() && body[1] >= 1 => {
                    r.irq = Some(Irq {
                        gsi: u32_at(body, 2).unwrap_or(0),
                        edge: body[0] & 2 != 0,
                        active_low: body[0] & 4 != 0,
                    });
                }
                _ => {}
            }
            pos += 3 + len;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_style_edge_interrupt() {
        let mut crs = vec![0x86, 9, 0, 1];
        crs.extend_from_slice(&0xd000_0000u32.to_le_bytes());
        crs.extend_from_slice(&0x1000u32.to_le_bytes());
        crs.extend_from_slice(&[0x89, 6, 0, 0x03, 1, 5, 0, 0, 0, 0x79, 0]);
        let r = parse(&crs);
        assert_eq!(r.mem, Some((0xd000_0000, 0x1000)));
        assert_eq!(
            r.irq,
            Some(Irq {
                gsi: 5,
                edge: true,
                active_low: false
            })
        );
    }

    #[test]
    fn qemu_microvm_level_interrupt() {
        // Memory32Fixed(ReadWrite, 0xfeb00e00, 0x200), Interrupt(.., Level, ActiveHigh, Shared) {23}
        let mut crs = vec![0x86, 9, 0, 1];
        crs.extend_from_slice(&0xfeb0_0e00u32.to_le_bytes());
        crs.extend_from_slice(&0x200u32.to_le_bytes());
        crs.extend_from_slice(&[0x89, 6, 0, 0x09, 1, 23, 0, 0, 0, 0x79, 0]);
        let r = parse(&crs);
        assert_eq!(r.mem, Some((0xfeb0_0e00, 0x200)));
        assert_eq!(
            r.irq,
            Some(Irq {
                gsi: 23,
                edge: false,
                active_low: false
            })
        );
    }

    #[test]
    fn small_irq_and_io() {
        // IO(Decode16, 0x3f8, 0x3f8, 0, 8), IRQNoFlags() {4}
        let crs = [0x47, 1, 0xf8, 3, 0xf8, 3, 0, 8, 0x22, 0x10, 0, 0x79, 0];
        let r = parse(&crs);
        assert_eq!(r.io, Some((0x3f8, 8)));
        assert_eq!(
            r.irq,
            Some(Irq {
                gsi: 4,
                edge: true,
                active_low: false
            })
        );
        assert_eq!(r.mem, None);
    }

    #[test]
    fn truncated_descriptor_stops() {
        let crs = [0x86, 9, 0, 1, 0, 0];
        assert_eq!(parse(&crs), Resources::default());
    }
}
