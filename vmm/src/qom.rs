// SPDX-License-Identifier: Apache-2.0
//! The machine described in QEMU's object-model terms, for the QMP commands managers use to
//! learn what an emulator has (`qom-list-types`, `device-list-properties`,
//! `qom-list-properties`) and which devices a machine has (`qom-list`).
//!
//! The types are the ones vmm implements, with the properties vmm really takes for them on
//! QEMU's command line ([`crate::qemu_cli`]): a test checks each listed `-device` property
//! against that parser.

use qapi::rt::{ErrorClass, QmpError};
use qapi::types::{ObjectPropertyInfo, ObjectTypeInfo};
use serde_json::Value;

/// A property of a type.
#[derive(Debug)]
pub struct Property {
    /// Its name.
    pub name: &'static str,
    /// Its type, as QEMU names it.
    pub ty: &'static str,
    /// What it is for.
    pub description: &'static str,
    /// Its default value (JSON), if it has one.
    pub default: Option<&'static str>,
}

/// An object type.
#[derive(Debug)]
pub struct QomType {
    /// Its name.
    pub name: &'static str,
    /// The type it derives from.
    pub parent: Option<&'static str>,
    /// No object is made of it directly.
    pub is_abstract: bool,
    /// A device type (`-device` takes it, `device-list-properties` describes it).
    pub device: bool,
    /// Its own properties (not its ancestors').
    pub properties: &'static [Property],
}

const fn prop(
    name: &'static str,
    ty: &'static str,
    description: &'static str,
    default: Option<&'static str>,
) -> Property {
    Property {
        name,
        ty,
        description,
        default,
    }
}

/// The properties of `virtio-blk-device` (see `qemu_cli::devices`).
pub const VIRTIO_BLK_PROPERTIES: &[Property] = &[
    prop(
        "drive",
        "str",
        "Node name of the -blockdev node the disk reads and writes",
        None,
    ),
    prop(
        "serial",
        "str",
        "The serial number the guest reads (GET_ID); the device id when not set",
        None,
    ),
    prop(
        "werror",
        "BlockdevOnError",
        "What a failed write, flush, discard or write-zeroes does (report, ignore, enospc, stop)",
        Some("\"enospc\""),
    ),
    prop(
        "rerror",
        "BlockdevOnError",
        "What a failed read does (report, ignore, stop)",
        Some("\"report\""),
    ),
    prop(
        "num-queues",
        "uint16",
        "Request queues, each with its own I/O thread (1 to 16)",
        Some("1"),
    ),
    prop(
        "write-cache",
        "OnOffAuto",
        "The disk has a write cache that guest flushes empty (on or auto; off is not supported)",
        Some("\"auto\""),
    ),
    prop(
        "bootindex",
        "int32",
        "Accepted for QEMU compatibility: the kernel is booted directly, without firmware",
        None,
    ),
];

/// The properties of `isa-serial`.
pub const ISA_SERIAL_PROPERTIES: &[Property] = &[
    prop(
        "chardev",
        "str",
        "ID of the chardev the port's bytes go to",
        None,
    ),
    prop(
        "index",
        "uint32",
        "The port's number; the machine has one, COM1 (0)",
        Some("0"),
    ),
    prop(
        "iobase",
        "uint32",
        "The port's I/O base; COM1's (0x3f8)",
        Some("1016"),
    ),
    prop(
        "irq",
        "uint32",
        "The port's interrupt; COM1's (4)",
        Some("4"),
    ),
];

/// The properties of `microvm-machine` (`-machine microvm,...`).
pub const MICROVM_PROPERTIES: &[Property] = &[
    prop(
        "usb",
        "bool",
        "A USB controller (the machine has none: only off)",
        Some("false"),
    ),
    prop(
        "acpi",
        "OnOffAuto",
        "ACPI tables (the machine is described by ACPI only: on or auto)",
        Some("\"auto\""),
    ),
    prop(
        "dump-guest-core",
        "bool",
        "Include guest RAM in core dumps of the VMM",
        Some("true"),
    ),
];

/// The properties of `secret` (`-object secret,...`).
pub const SECRET_PROPERTIES: &[Property] = &[
    prop("data", "str", "The secret's value", None),
    prop("file", "str", "A file holding the secret's value", None),
    prop(
        "format",
        "QCryptoSecretFormat",
        "How the value is written (raw, base64)",
        Some("\"raw\""),
    ),
];

/// Every type vmm implements, with its abstract ancestors.
pub const TYPES: &[QomType] = &[
    QomType {
        name: "object",
        parent: None,
        is_abstract: true,
        device: false,
        properties: &[],
    },
    QomType {
        name: "machine",
        parent: Some("object"),
        is_abstract: true,
        device: false,
        properties: &[],
    },
    QomType {
        name: "microvm-machine",
        parent: Some("machine"),
        is_abstract: false,
        device: false,
        properties: MICROVM_PROPERTIES,
    },
    QomType {
        name: "device",
        parent: Some("object"),
        is_abstract: true,
        device: true,
        properties: &[],
    },
    QomType {
        name: "sys-bus-device",
        parent: Some("device"),
        is_abstract: true,
        device: true,
        properties: &[],
    },
    QomType {
        name: "virtio-mmio",
        parent: Some("sys-bus-device"),
        is_abstract: false,
        device: true,
        properties: &[],
    },
    QomType {
        name: "virtio-device",
        parent: Some("device"),
        is_abstract: true,
        device: true,
        properties: &[],
    },
    QomType {
        name: "virtio-blk-device",
        parent: Some("virtio-device"),
        is_abstract: false,
        device: true,
        properties: VIRTIO_BLK_PROPERTIES,
    },
    QomType {
        name: "isa-device",
        parent: Some("device"),
        is_abstract: true,
        device: true,
        properties: &[],
    },
    QomType {
        name: "isa-serial",
        parent: Some("isa-device"),
        is_abstract: false,
        device: true,
        properties: ISA_SERIAL_PROPERTIES,
    },
    QomType {
        name: "secret",
        parent: Some("object"),
        is_abstract: false,
        device: false,
        properties: SECRET_PROPERTIES,
    },
];

fn find(name: &str) -> Option<&'static QomType> {
    TYPES.iter().find(|t| t.name == name)
}

/// Whether `t` is `ancestor` or derives from it.
fn derives(t: &QomType, ancestor: &str) -> bool {
    let mut cur = Some(t);
    while let Some(c) = cur {
        if c.name == ancestor {
            return true;
        }
        cur = c.parent.and_then(find);
    }
    false
}

/// `qom-list-types`.
pub fn list_types(implements: Option<&str>, include_abstract: bool) -> Vec<ObjectTypeInfo> {
    TYPES
        .iter()
        .filter(|t| include_abstract || !t.is_abstract)
        .filter(|t| implements.is_none_or(|i| derives(t, i)))
        .map(|t| ObjectTypeInfo {
            name: t.name.into(),
            r#abstract: t.is_abstract.then_some(true),
            parent: t.parent.map(Into::into),
        })
        .collect()
}

fn info(p: &Property) -> ObjectPropertyInfo {
    ObjectPropertyInfo {
        name: p.name.into(),
        r#type: p.ty.into(),
        description: Some(p.description.into()),
        default_value: p
            .default
            .and_then(|d| serde_json::from_str::<Value>(d).ok()),
    }
}

/// The properties of `t` and its ancestors.
fn properties(t: &QomType) -> Vec<ObjectPropertyInfo> {
    let mut out = Vec::new();
    let mut cur = Some(t);
    while let Some(c) = cur {
        out.extend(c.properties.iter().map(info));
        cur = c.parent.and_then(find);
    }
    out
}

/// `device-list-properties`, with QEMU's errors.
///
/// # Errors
/// `DeviceNotFound` for a type vmm does not have; a type that is not a device, or abstract.
pub fn device_properties(typename: &str) -> Result<Vec<ObjectPropertyInfo>, QmpError> {
    let t = find(typename).ok_or_else(|| {
        QmpError::new(
            ErrorClass::DeviceNotFound,
            format!("Device '{typename}' not found"),
        )
    })?;
    if !t.device || t.is_abstract {
        return Err(QmpError::generic(
            "Parameter 'typename' expects non-abstract device type",
        ));
    }
    Ok(properties(t))
}

/// `qom-list-properties`: a type vmm does not have has none.
pub fn type_properties(typename: &str) -> Vec<ObjectPropertyInfo> {
    find(typename).map(properties).unwrap_or_default()
}

/// A device of the running machine, for `qom-list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeripheralDevice {
    /// Its id.
    pub id: String,
    /// Its type.
    pub type_name: &'static str,
}

fn child(name: &str, type_name: &str) -> ObjectPropertyInfo {
    ObjectPropertyInfo {
        name: name.into(),
        r#type: format!("child<{type_name}>"),
        description: None,
        default_value: None,
    }
}

fn type_property() -> ObjectPropertyInfo {
    ObjectPropertyInfo {
        name: "type".into(),
        r#type: "string".into(),
        description: None,
        default_value: None,
    }
}

/// `qom-list` over the machine's tree: the root, the machine, its container of named devices
/// and those devices (a disk also under `ID/virtio-backend`, the path `query-block` reports).
///
/// # Errors
/// `DeviceNotFound` (QEMU's text) for any other path.
pub fn list(path: &str, devices: &[PeripheralDevice]) -> Result<Vec<ObjectPropertyInfo>, QmpError> {
    let path = path.trim_end_matches('/');
    let device = |id: &str| devices.iter().find(|d| d.id == id);
    let mut out = vec![type_property()];
    match path.strip_prefix("/machine/peripheral/") {
        Some(rest) => {
            let (id, backend) = match rest.strip_suffix("/virtio-backend") {
                Some(id) => (id, true),
                None => (rest, false),
            };
            let d = device(id)
                .filter(|d| !backend || d.type_name == "virtio-blk-device")
                .ok_or_else(|| not_found(path))?;
            if let Some(t) = find(d.type_name) {
                out.extend(properties(t));
            }
            if d.type_name == "virtio-blk-device" && !backend {
                out.push(child("virtio-backend", d.type_name));
            }
        }
        None => match path {
            "" => out.push(child("machine", "microvm-machine")),
            "/machine" => {
                out.extend(MICROVM_PROPERTIES.iter().map(info));
                out.push(child("peripheral", "container"));
            }
            "/machine/peripheral" => {
                out.extend(devices.iter().map(|d| child(&d.id, d.type_name)));
            }
            _ => return Err(not_found(path)),
        },
    }
    Ok(out)
}

fn not_found(path: &str) -> QmpError {
    QmpError::new(
        ErrorClass::DeviceNotFound,
        format!("Device '{path}' not found"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(types: &[ObjectTypeInfo]) -> Vec<&str> {
        types.iter().map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn types_and_their_ancestry() {
        let types = list_types(None, false);
        let concrete = names(&types);
        for t in [
            "virtio-mmio",
            "virtio-blk-device",
            "isa-serial",
            "microvm-machine",
        ] {
            assert!(concrete.contains(&t), "{t}");
        }
        assert!(!concrete.contains(&"device"));
        assert!(names(&list_types(None, true)).contains(&"device"));
        assert_eq!(
            names(&list_types(Some("virtio-device"), false)),
            ["virtio-blk-device"]
        );
        assert_eq!(
            names(&list_types(Some("device"), false)),
            ["virtio-mmio", "virtio-blk-device", "isa-serial"]
        );
        assert!(list_types(Some("pci-device"), true).is_empty());
        // Every parent is a listed type.
        for t in TYPES {
            assert!(t.parent.is_none_or(|p| find(p).is_some()), "{}", t.name);
        }
    }

    #[test]
    fn device_properties_and_errors() {
        let p = device_properties("virtio-blk-device").unwrap();
        assert!(p.iter().any(|p| p.name == "drive" && p.r#type == "str"));
        assert_eq!(
            p.iter().find(|p| p.name == "werror").unwrap().default_value,
            Some(Value::from("enospc"))
        );
        let e = device_properties("virtio-blk-pci").unwrap_err();
        assert_eq!(e.class, ErrorClass::DeviceNotFound);
        assert_eq!(e.desc, "Device 'virtio-blk-pci' not found");
        assert_eq!(
            device_properties("device").unwrap_err().class,
            ErrorClass::GenericError
        );
        assert_eq!(
            device_properties("secret").unwrap_err().class,
            ErrorClass::GenericError
        );
        assert!(type_properties("memory-backend-file").is_empty());
        assert_eq!(type_properties("secret").len(), 3);
    }

    #[test]
    fn the_tree() {
        let devices = [
            PeripheralDevice {
                id: "virtio-disk0".into(),
                type_name: "virtio-blk-device",
            },
            PeripheralDevice {
                id: "serial0".into(),
                type_name: "isa-serial",
            },
        ];
        let l = list("/machine/peripheral", &devices).unwrap();
        let shown: Vec<(&str, &str)> = l
            .iter()
            .map(|p| (p.name.as_str(), p.r#type.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                ("type", "string"),
                ("virtio-disk0", "child<virtio-blk-device>"),
                ("serial0", "child<isa-serial>")
            ]
        );
        let disk = list("/machine/peripheral/virtio-disk0", &devices).unwrap();
        assert!(disk.iter().any(|p| p.name == "virtio-backend"));
        let backend = list("/machine/peripheral/virtio-disk0/virtio-backend", &devices).unwrap();
        assert!(backend.iter().any(|p| p.name == "drive"));
        assert!(list("/machine/peripheral/serial0/virtio-backend", &devices).is_err());
        assert!(list("/", &devices)
            .unwrap()
            .iter()
            .any(|p| p.name == "machine"));
        assert!(list("/machine", &devices)
            .unwrap()
            .iter()
            .any(|p| p.name == "peripheral"));
        let e = list("/machine/unattached/device[0]", &devices).unwrap_err();
        assert_eq!(e.class, ErrorClass::DeviceNotFound);
        assert_eq!(e.desc, "Device '/machine/unattached/device[0]' not found");
    }
}
