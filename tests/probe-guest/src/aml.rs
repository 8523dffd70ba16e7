//! A small AML reader: finds `Device` objects in a DSDT with their `_HID`,
//! `_UID` and `_CRS`, and the `\_S5_` sleep package.
//!
//! It understands the structure of named objects (Scope, Device, Name and
//! the length-prefixed opcodes it can skip) but evaluates no methods. When it
//! meets an opcode it does not know inside a scope, it skips the rest of that
//! scope (whose end is known from its PkgLength) and carries on after it.

use crate::bytes::{u16_at, u32_at, u64_at};

/// A device's hardware id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hid<'a> {
    /// A string id such as `LNRO0005` or `ACPI0013`.
    Str(&'a [u8]),
    /// An EISA id (compressed integer), e.g. `EISAID("PNP0501")`.
    Eisa(u32),
}

impl Hid<'_> {
    /// Whether the id equals the 7- or 8-character text `id`.
    pub fn is(&self, id: &str) -> bool {
        match *self {
            Hid::Str(s) => s == id.as_bytes(),
            Hid::Eisa(v) => &eisa_decode(v)[..] == id.as_bytes(),
        }
    }
}

/// Decodes a compressed EISA id (as stored in AML, little-endian) into its
/// seven characters, e.g. `0x0C0CD041` -> `PNP0C0C`.
pub fn eisa_decode(v: u32) -> [u8; 7] {
    let b = v.swap_bytes();
    let hex = |n: u32| b"0123456789ABCDEF"[(n & 0xf) as usize];
    [
        b'@' + ((b >> 26) & 0x1f) as u8,
        b'@' + ((b >> 21) & 0x1f) as u8,
        b'@' + ((b >> 16) & 0x1f) as u8,
        hex(b >> 12),
        hex(b >> 8),
        hex(b >> 4),
        hex(b),
    ]
}

/// A `Device` found in the AML.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Device<'a> {
    /// The device's own 4-character name.
    pub name: [u8; 4],
    /// `_HID`, if it is a constant.
    pub hid: Option<Hid<'a>>,
    /// `_UID`, if it is an integer constant.
    pub uid: Option<u64>,
    /// The bytes of `_CRS`, if it is a constant buffer (a resource template).
    pub crs: Option<&'a [u8]>,
}

/// Malformed AML (a length runs past the end of its enclosing object).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmlError {
    /// Offset in the AML stream where decoding failed.
    pub offset: usize,
}

/// What one pass over the AML found besides devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Globals {
    /// `SLP_TYPa` from `Name(_S5_, Package() {a, b, ...})`.
    pub s5_slp_typ: Option<u8>,
}

/// A decoded constant data object.
enum Value<'a> {
    Int(u64),
    Str(&'a [u8]),
    Buffer(&'a [u8]),
    Package(Option<u64>),
    Other,
}

struct Reader<'a> {
    aml: &'a [u8],
}

impl<'a> Reader<'a> {
    fn err(&self, offset: usize) -> AmlError {
        AmlError { offset }
    }

    fn byte(&self, pos: usize) -> Result<u8, AmlError> {
        self.aml.get(pos).copied().ok_or(self.err(pos))
    }

    /// PkgLength at `pos`: returns (end of the package, position after the
    /// encoding). The length counts from `pos`.
    fn pkg_length(&self, pos: usize, limit: usize) -> Result<(usize, usize), AmlError> {
        let lead = self.byte(pos)?;
        let extra = (lead >> 6) as usize;
        let mut len = if extra == 0 {
            (lead & 0x3f) as usize
        } else {
            (lead & 0x0f) as usize
        };
        for i in 0..extra {
            len |= (self.byte(pos + 1 + i)? as usize) << (4 + 8 * i);
        }
        let end = pos + len;
        if end > limit || len < 1 + extra {
            return Err(self.err(pos));
        }
        Ok((end, pos + 1 + extra))
    }

    /// NameString at `pos`: returns (last NameSeg or zeros, position after).
    fn name_string(&self, mut pos: usize) -> Result<([u8; 4], usize), AmlError> {
        while matches!(self.byte(pos)?, b'\\' | b'^') {
            pos += 1;
        }
        let count = match self.byte(pos)? {
            0x00 => return Ok(([0; 4], pos + 1)),
            0x2e => {
                pos += 1;
                2
            }
            0x2f => {
                pos += 2;
                self.byte(pos - 1)? as usize
            }
            _ => 1,
        };
        let end = pos + 4 * count;
        if end > self.aml.len() || count == 0 {
            return Err(self.err(pos));
        }
        let mut seg = [0u8; 4];
        seg.copy_from_slice(&self.aml[end - 4..end]);
        Ok((seg, end))
    }

    /// A constant data object at `pos` (the forms a DSDT uses in `Name`).
    fn data_object(&self, pos: usize, limit: usize) -> Result<(Value<'a>, usize), AmlError> {
        let aml = self.aml;
        let int =
            |n: usize, v: Option<u64>| v.map(|v| (Value::Int(v), pos + 1 + n)).ok_or(self.err(pos));
        match self.byte(pos)? {
            0x00 => Ok((Value::Int(0), pos + 1)),
            0x01 => Ok((Value::Int(1), pos + 1)),
            0xff => Ok((Value::Int(u64::MAX), pos + 1)),
            0x0a => int(1, aml.get(pos + 1).map(|&b| u64::from(b))),
            0x0b => int(2, u16_at(aml, pos + 1).map(u64::from)),
            0x0c => int(4, u32_at(aml, pos + 1).map(u64::from)),
            0x0e => int(8, u64_at(aml, pos + 1)),
            0x0d => {
                let start = pos + 1;
                let len = aml[start.min(limit)..limit]
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(self.err(pos))?;
                Ok((Value::Str(&aml[start..start + len]), start + len + 1))
            }
            0x11 => {
                let (end, p) = self.pkg_length(pos + 1, limit)?;
                let (size, p) = match self.data_object(p, end)? {
                    (Value::Int(n), p) => (n as usize, p),
                    _ => return Ok((Value::Other, end)),
                };
                let data_end = (p + size).min(end);
                Ok((Value::Buffer(&aml[p..data_end]), end))
            }
            0x12 | 0x13 => {
                let (end, p) = self.pkg_length(pos + 1, limit)?;
                let first = match self.data_object(p + 1, end) {
                    Ok((Value::Int(v), _)) if self.byte(p)? > 0 => Some(v),
                    _ => None,
                };
                Ok((Value::Package(first), end))
            }
            _ => Ok((Value::Other, limit)),
        }
    }

    /// Walks the term list in `[pos, end)`; `dev` collects the names that
    /// belong to the enclosing device.
    fn term_list(
        &self,
        mut pos: usize,
        end: usize,
        mut dev: Option<&mut Device<'a>>,
        g: &mut Globals,
        f: &mut dyn FnMut(&Device<'a>),
    ) -> Result<(), AmlError> {
        while pos < end {
            let op = self.byte(pos)?;
            pos = match op {
                0x08 => {
                    let (name, p) = self.name_string(pos + 1)?;
                    let (value, next) = self.data_object(p, end)?;
                    match (&name, value, dev.as_deref_mut()) {
                        (b"_HID", Value::Str(s), Some(d)) => d.hid = Some(Hid::Str(s)),
                        (b"_HID", Value::Int(v), Some(d)) => d.hid = Some(Hid::Eisa(v as u32)),
                        (b"_UID", Value::Int(v), Some(d)) => d.uid = Some(v),
                        (b"_CRS", Value::Buffer(b), Some(d)) => d.crs = Some(b),
                        (b"_S5_", Value::Package(Some(t)), _) => g.s5_slp_typ = Some(t as u8),
                        _ => {}
                    }
                    next
                }
                0x10 => {
                    let (pend, p) = self.pkg_length(pos + 1, end)?;
                    let (_, p) = self.name_string(p)?;
                    self.term_list(p, pend, None, g, f)?;
                    pend
                }
                0x5b => {
                    let ext = self.byte(pos + 1)?;
                    match ext {
                        0x82 => {
                            let (pend, p) = self.pkg_length(pos + 2, end)?;
                            let (name, p) = self.name_string(p)?;
                            let mut d = Device {
                                name,
                                ..Device::default()
                            };
                            self.term_list(p, pend, Some(&mut d), g, f)?;
                            f(&d);
                            pend
                        }
                        // Field, Processor, PowerRes, ThermalZone, IndexField, BankField.
                        0x81 | 0x83 | 0x84 | 0x85 | 0x86 | 0x87 => self.pkg_length(pos + 2, end)?.0,
                        // OperationRegion: NameString, space, offset, length.
                        0x80 => {
                            let (_, p) = self.name_string(pos + 2)?;
                            let (off, p) = self.data_object(p + 1, end)?;
                            let (len, p) = self.data_object(p, end)?;
                            match (off, len) {
                                (Value::Int(_), Value::Int(_)) => p,
                                _ => return Ok(()),
                            }
                        }
                        0x01 => self.name_string(pos + 2)?.1 + 1, // Mutex
                        0x02 => self.name_string(pos + 2)?.1,     // Event
                        _ => return Ok(()),
                    }
                }
                // Method, If, Else, While, Buffer, Package, VarPackage.
                0x14 | 0xa0 | 0xa1 | 0xa2 | 0x11 | 0x12 | 0x13 => self.pkg_length(pos + 1, end)?.0,
                0x06 => {
                    let (_, p) = self.name_string(pos + 1)?;
                    self.name_string(p)?.1
                }
                0x15 => self.name_string(pos + 1)?.1 + 2, // External
                0xa3 => pos + 1,                          // Noop
                _ => return Ok(()),
            };
        }
        Ok(())
    }
}

/// Calls `f` for every `Device` in `aml` (a DSDT/SSDT body without its
/// 36-byte header), innermost devices first, in table order otherwise.
pub fn walk_devices<'a>(
    aml: &'a [u8],
    f: &mut dyn FnMut(&Device<'a>),
) -> Result<Globals, AmlError> {
    let mut g = Globals::default();
    Reader { aml }.term_list(0, aml.len(), None, &mut g, f)?;
    Ok(g)
}

#[cfg(test)]
pub(crate) mod build {
    //! AML encoders for test fixtures.

    /// PkgLength encoding for a package whose contents are `body_len` bytes.
    pub fn pkg(body_len: usize) -> Vec<u8> {
        for extra in 0..4usize {
            let total = body_len + 1 + extra;
            if extra == 0 && total < 0x40 {
                return vec![total as u8];
            }
            if extra > 0 && total < (1 << (4 + 8 * extra)) {
                let mut v = vec![((extra as u8) << 6) | (total & 0xf) as u8];
                for i in 0..extra {
                    v.push((total >> (4 + 8 * i)) as u8);
                }
                return v;
            }
        }
        unreachable!()
    }

    /// `op PkgLength body`.
    pub fn with_pkg(op: &[u8], body: &[u8]) -> Vec<u8> {
        let mut v = op.to_vec();
        v.extend(pkg(body.len()));
        v.extend_from_slice(body);
        v
    }

    /// `Name(name, value)`.
    pub fn name(n: &[u8; 4], value: &[u8]) -> Vec<u8> {
        let mut v = vec![0x08];
        v.extend_from_slice(n);
        v.extend_from_slice(value);
        v
    }

    /// A string constant.
    pub fn string(s: &str) -> Vec<u8> {
        let mut v = vec![0x0d];
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        v
    }

    /// A dword constant.
    pub fn dword(x: u32) -> Vec<u8> {
        let mut v = vec![0x0c];
        v.extend_from_slice(&x.to_le_bytes());
        v
    }

    /// `Buffer() { bytes }`.
    pub fn buffer(bytes: &[u8]) -> Vec<u8> {
        let mut body = vec![0x0a, bytes.len() as u8];
        body.extend_from_slice(bytes);
        with_pkg(&[0x11], &body)
    }

    /// `Device(name) { body }`.
    pub fn device(n: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = n.to_vec();
        b.extend_from_slice(body);
        with_pkg(&[0x5b, 0x82], &b)
    }

    /// `Scope(path) { body }`.
    pub fn scope(path: &[u8], body: &[u8]) -> Vec<u8> {
        let mut b = path.to_vec();
        b.extend_from_slice(body);
        with_pkg(&[0x10], &b)
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    /// The DSDT layout our VMM and Firecracker generate for a virtio-mmio slot.
    fn virtio_dev(n: &[u8; 4], uid: u8, base: u32, gsi: u32) -> Vec<u8> {
        let mut crs = vec![0x86, 9, 0, 1];
        crs.extend_from_slice(&base.to_le_bytes());
        crs.extend_from_slice(&0x1000u32.to_le_bytes());
        crs.extend_from_slice(&[0x89, 6, 0, 0x03, 1]);
        crs.extend_from_slice(&gsi.to_le_bytes());
        crs.extend_from_slice(&[0x79, 0]);
        let mut body = name(b"_HID", &string("LNRO0005"));
        body.extend(name(b"_UID", &[0x0a, uid]));
        body.extend(name(b"_CCA", &[0x01]));
        body.extend(name(b"_CRS", &buffer(&crs)));
        device(n, &body)
    }

    #[test]
    fn eisa_ids() {
        assert_eq!(&eisa_decode(0x0C0C_D041), b"PNP0C0C");
        assert_eq!(&eisa_decode(0x0105_D041), b"PNP0501");
        assert!(Hid::Eisa(0x0303_D041).is("PNP0303"));
        assert!(Hid::Str(b"ACPI0013").is("ACPI0013"));
        assert!(!Hid::Str(b"ACPI0013").is("LNRO0005"));
    }

    #[test]
    fn pkg_length_encodings() {
        assert_eq!(pkg(10), vec![11]);
        assert_eq!(pkg(100), vec![0x40 | (102 & 0xf), (102 >> 4) as u8]);
        let r = Reader { aml: &[0x4a, 0x06] };
        assert_eq!(r.pkg_length(0, 1000).unwrap(), (0x6a, 2));
        assert!(r.pkg_length(0, 10).is_err());
    }

    #[test]
    fn finds_devices_in_scope_with_methods_and_regions() {
        let mut sb = Vec::new();
        // A COM1 with an EISA id and a method, then a GED with an
        // OperationRegion + Field + _EVT method, then two virtio devices.
        let mut com = name(b"_HID", &dword(0x0105_D041));
        com.extend(name(b"_UID", &[0x00]));
        com.extend(with_pkg(&[0x14], b"_STA\x00\xa4\x0a\x0f"));
        sb.extend(device(b"COM1", &com));
        let mut ged = name(b"_HID", &string("ACPI0013"));
        ged.extend(name(
            b"_CRS",
            &buffer(&[0x89, 6, 0, 0x01, 1, 9, 0, 0, 0, 0x79, 0]),
        ));
        ged.extend_from_slice(&[0x5b, 0x80]);
        ged.extend_from_slice(b"EREG\x00\x0c\x00\x00\xa0\xfe\x0a\x04");
        ged.extend(with_pkg(&[0x5b, 0x81], b"EREG\x01ESEL\x20"));
        ged.extend(with_pkg(&[0x14], b"_EVT\x01\xa3"));
        sb.extend(device(b"GED_", &ged));
        sb.extend(virtio_dev(b"V000", 0, 0xd000_0000, 5));
        sb.extend(virtio_dev(b"V001", 1, 0xd000_1000, 6));
        // Name(_S5_, Package() {5, 0}) at the root, as QEMU writes it.
        let mut aml = name(b"_S5_", &with_pkg(&[0x12], &[2, 0x0a, 5, 0x00]));
        aml.extend(scope(b"\\_SB_", &sb));

        let mut found = Vec::new();
        let g = walk_devices(&aml, &mut |d| found.push(*d)).unwrap();
        assert_eq!(g.s5_slp_typ, Some(5));
        assert_eq!(found.len(), 4);
        assert_eq!(&found[0].name, b"COM1");
        assert!(found[0].hid.unwrap().is("PNP0501"));
        assert_eq!(found[0].uid, Some(0));
        assert!(found[1].hid.unwrap().is("ACPI0013"));
        assert_eq!(found[1].crs.unwrap().len(), 11);
        assert!(found[2].hid.unwrap().is("LNRO0005"));
        assert_eq!(found[3].uid, Some(1));
        assert_eq!(found[3].crs.unwrap()[0], 0x86);
    }

    #[test]
    fn unknown_opcode_skips_only_its_scope() {
        // Device A has an unknown statement (a method call) before _HID;
        // device B after it is still found.
        let mut a = vec![b'F', b'O', b'O', b'_'];
        a.extend(name(b"_HID", &string("AAAA0001")));
        let mut aml = device(b"DEVA", &a);
        aml.extend(device(b"DEVB", &name(b"_HID", &string("BBBB0002"))));
        let mut found = Vec::new();
        walk_devices(&aml, &mut |d| found.push(*d)).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].hid, None);
        assert!(found[1].hid.unwrap().is("BBBB0002"));
    }

    #[test]
    fn truncated_aml_is_an_error() {
        let aml = device(b"DEVA", &name(b"_HID", &string("AAAA0001")));
        assert!(walk_devices(&aml[..aml.len() - 3], &mut |_| {}).is_err());
    }

    #[test]
    fn nested_devices() {
        let inner = device(b"CHLD", &name(b"_HID", &string("LNRO0005")));
        let mut outer = name(b"_HID", &dword(0x030A_D041));
        outer.extend(inner);
        let aml = scope(b"\\_SB_", &device(b"PCI0", &outer));
        let mut names = Vec::new();
        walk_devices(&aml, &mut |d| names.push(d.name)).unwrap();
        assert_eq!(names, vec![*b"CHLD", *b"PCI0"]);
    }
}
