// SPDX-License-Identifier: Apache-2.0
//! Devices, block nodes and objects of QEMU's command line: `-blockdev`, `-device`,
//! `-object`, `-audiodev`, `-add-fd`.

use std::path::Path;

use block::{CacheMode, DevicePolicy, OnError};
use qapi::descriptors::D_BlockdevOptions;
use qapi::rt::{check_arguments, decode_arguments, from_keyval};
use qapi::types::BlockdevOptions;

use super::{keyval, OptResult, Problem};
use crate::disk::{DiskSource, DiskSpec};
use crate::options::OptionList;
use devices::virtio::block::MAX_QUEUES;

fn unsupported(s: impl Into<String>) -> Problem {
    Problem::Unsupported(s.into())
}

/// `-blockdev` (key=value or JSON): a `BlockdevOptions`, read by the keyval visitor and
/// checked as `blockdev-add` checks its arguments.
///
/// # Errors
/// Malformed syntax, and whatever `blockdev-add` would refuse in the arguments themselves.
pub fn parse_blockdev(value: &str) -> OptResult<BlockdevOptions> {
    let list = OptionList::parse_any(value, None)?;
    let mut pairs = Vec::new();
    for (key, value) in list.into_entries() {
        match value {
            Some(v) => pairs.push((key, v)),
            // QEMU's keyval words.
            None => {
                return Err(Problem::Invalid(format!(
                    "Expected '=' after parameter '{key}'"
                )))
            }
        }
    }
    let fail = |e: qapi::rt::QmpError| Problem::Invalid(e.desc);
    let value = from_keyval(&D_BlockdevOptions, pairs).map_err(fail)?;
    let value = check_arguments(&D_BlockdevOptions, Some(value), &|_, _| Ok(())).map_err(fail)?;
    decode_arguments(value).map_err(fail)
}

/// A device of the command line.
#[derive(Debug)]
pub enum Device {
    /// `virtio-blk-device`.
    Disk(Box<DiskSpec>),
    /// `isa-serial`: COM1 on a chardev.
    Serial {
        /// The chardev id.
        chardev: String,
        /// The device id.
        id: Option<String>,
    },
}

/// Device types QEMU has that a domain might ask for, and why vmm has none of them.
fn missing_device_hint(driver: &str) -> Option<&'static str> {
    if driver.ends_with("-pci") || driver.starts_with("pcie-") || driver.starts_with("pci-") {
        Some("vmm's machine has no PCI (give libvirt's virtio devices <address type='virtio-mmio'/>)")
    } else if driver.starts_with("usb") || driver.ends_with("-usb") {
        Some(
            "the machine has no USB (a libvirt domain needs <controller type='usb' model='none'/>)",
        )
    } else if driver.starts_with("virtio-balloon") {
        Some("there is no balloon (a libvirt domain needs <memballoon model='none'/>)")
    } else {
        None
    }
}

/// `-device DRIVER,...` (key=value or JSON).
///
/// # Errors
/// A device type vmm does not have, unknown or malformed properties.
pub fn parse_device(value: &str) -> OptResult<Device> {
    let mut l = OptionList::parse_any(value, Some("driver"))?;
    let driver = l.take_str("driver")?.ok_or(Problem::Missing("driver"))?;
    let device = match driver.as_str() {
        "virtio-blk-device" => virtio_blk(&mut l)?,
        "isa-serial" => isa_serial(&mut l)?,
        other => {
            let base = format!("'{other}' is not a valid device model name");
            return Err(match missing_device_hint(other) {
                Some(hint) => Problem::Invalid(format!("{base}: {hint}")),
                None => Problem::Invalid(base),
            });
        }
    };
    l.finish()?;
    Ok(device)
}

/// `virtio-blk-device`: `drive` (a `-blockdev` node), `id`, `serial`, `werror`, `rerror`,
/// `num-queues`, `write-cache` (`on`/`auto`: the device has a write cache the guest flushes)
/// and `bootindex` (kept by nothing: vmm boots `-kernel` directly).
fn virtio_blk(l: &mut OptionList) -> OptResult<Device> {
    let drive = l
        .take_str("drive")?
        .ok_or_else(|| Problem::Invalid("drive property not set".into()))?;
    let id = l.take_str("id")?;
    let serial = l.take_str("serial")?;
    let mut policy = DevicePolicy::default();
    if let Some(v) = l.take_str("werror")? {
        policy.write = OnError::parse_write(&v).map_err(|e| Problem::Invalid(e.to_string()))?;
    }
    if let Some(v) = l.take_str("rerror")? {
        policy.read = OnError::parse_read(&v).map_err(|e| Problem::Invalid(e.to_string()))?;
    }
    let num_queues = match l.take_u64("num-queues")? {
        None => 1,
        Some(n) => match u16::try_from(n) {
            Ok(n) if (1..=MAX_QUEUES).contains(&n) => n,
            _ => {
                return Err(Problem::Invalid(format!(
                    "num-queues property must be between 1 and {MAX_QUEUES}"
                )))
            }
        },
    };
    match l.take_str("write-cache")?.as_deref() {
        None | Some("on") | Some("auto") => {}
        Some("off") => {
            return Err(unsupported(
                "write-cache=off is not supported: the disk has a write cache the guest \
                 flushes (libvirt's cache modes none, writeback and unsafe)",
            ))
        }
        Some(other) => {
            return Err(Problem::Invalid(format!(
                "Parameter 'write-cache' does not accept value '{other}'"
            )))
        }
    }
    let _ = l.take_u64("bootindex")?;
    Ok(Device::Disk(Box::new(DiskSpec {
        source: DiskSource::Node(drive),
        id,
        node_name: None,
        read_only: false,
        cache: CacheMode::default(),
        aio: None,
        num_queues,
        io_threads: None,
        serial,
        policy,
        inject: Vec::new(),
        // The node's own `locking` applies (a -blockdev file option).
        locking: block::Locking::default(),
        // QEMU's -device has no limits: block_set_io_throttle sets them.
        throttle: block::ThrottleConfig::default(),
        throttle_group: None,
    })))
}

/// `isa-serial`: `chardev`, `id`, and `index=0`, `iobase=0x3f8`, `irq=4` (COM1, the one port).
fn isa_serial(l: &mut OptionList) -> OptResult<Device> {
    let chardev = l.take_str("chardev")?.ok_or(Problem::Missing("chardev"))?;
    let id = l.take_str("id")?;
    for (key, com1) in [("index", 0), ("iobase", 0x3f8), ("irq", 4)] {
        if l.take_u64(key)?.is_some_and(|v| v != com1) {
            return Err(unsupported(format!(
                "{key}: vmm's machine has one serial port, COM1 (index 0, iobase 0x3f8, irq 4)"
            )));
        }
    }
    Ok(Device::Serial { chardev, id })
}

/// `-object secret,id=ID,(file=PATH|data=TEXT)[,format=raw|base64]`: read and checked (a
/// missing file is an error, as in QEMU). No vmm feature takes secrets yet (no encrypted
/// images, no TLS), so the value is not kept.
///
/// # Errors
/// Other object types, an unreadable file, a secret encrypted with another one (`keyid`).
pub fn check_object(value: &str) -> OptResult<()> {
    let mut l = OptionList::parse_any(value, Some("qom-type"))?;
    let kind = l
        .take_str("qom-type")?
        .ok_or(Problem::Missing("qom-type"))?;
    if kind != "secret" {
        return Err(Problem::Invalid(format!("invalid object type: {kind}")));
    }
    l.take_str("id")?.ok_or(Problem::Missing("id"))?;
    let format = l.take_str("format")?;
    let file = l.take_str("file")?;
    let data = l.take_str("data")?;
    if l.take_str("keyid")?.is_some() || l.take_str("iv")?.is_some() {
        return Err(unsupported(
            "secrets encrypted with another secret (keyid, iv) are not supported",
        ));
    }
    l.finish()?;
    let bytes = match (file, data) {
        (Some(path), None) => std::fs::read(Path::new(&path))
            .map_err(|e| Problem::Invalid(format!("Unable to read {path}: {e}")))?,
        (None, Some(data)) => data.into_bytes(),
        _ => {
            return Err(Problem::Invalid(
                "'file' or 'data' must be given, and not both".into(),
            ))
        }
    };
    match format.as_deref() {
        None | Some("raw") => Ok(()),
        Some("base64") => {
            let ok = bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n'));
            ok.then_some(())
                .ok_or_else(|| Problem::Invalid("secret is not valid base64".into()))
        }
        Some(other) => Err(Problem::Invalid(format!(
            "Parameter 'format' does not accept value '{other}'"
        ))),
    }
}

/// `-audiodev none,id=ID` (or its JSON form): vmm has no sound device, so only the `none`
/// backend, which libvirt always adds, is taken.
///
/// # Errors
/// Another audio backend, a missing id, other keys.
pub fn check_audiodev(value: &str) -> OptResult<()> {
    let mut l = OptionList::parse_any(value, Some("driver"))?;
    let driver = l.take_str("driver")?.ok_or(Problem::Missing("driver"))?;
    l.take_str("id")?.ok_or(Problem::Missing("id"))?;
    l.finish()?;
    if driver != "none" {
        return Err(unsupported(format!(
            "audio driver '{driver}' is not supported: vmm has no sound device"
        )));
    }
    Ok(())
}

/// `-add-fd fd=N,set=S[,opaque=TEXT]`: puts inherited descriptor N in set S.
///
/// # Errors
/// Missing keys, a descriptor that is not open, a standard stream, one given twice.
pub fn add_fd(value: &str) -> OptResult<()> {
    let mut l = keyval(value, None)?;
    let fd = l.take_u64("fd")?.ok_or(Problem::Missing("fd"))?;
    let set = l.take_u64("set")?.ok_or(Problem::Missing("set"))?;
    let _ = l.take_str("opaque")?;
    l.finish()?;
    let fd =
        i32::try_from(fd).map_err(|_| Problem::Invalid(format!("fd={fd} is not a descriptor")))?;
    crate::fdset::add(set, fd).map_err(|e| Problem::Invalid(e.to_string()))
}
