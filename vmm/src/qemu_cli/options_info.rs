// SPDX-License-Identifier: Apache-2.0
//! What `query-command-line-options` reports: the `key=value` options of QEMU's command line
//! that vmm reads, named as QEMU names its option lists, with the parameters the parsers of
//! this module take. A test feeds every listed parameter to the real parser.

use qapi::types::{CommandLineOptionInfo, CommandLineParameterInfo, CommandLineParameterType};

use CommandLineParameterType::{Boolean as B, Number as N, Size as Z, String as S};

/// An option list: QEMU's name for it and its parameters.
pub struct OptionInfo {
    /// QEMU's name of the option list (`memory` for `-m`, `smp-opts` for `-smp`, `boot-opts`
    /// for `-boot`, the option's own name otherwise).
    pub name: &'static str,
    /// Parameters and their types.
    pub parameters: &'static [(&'static str, CommandLineParameterType)],
}

const fn o(
    name: &'static str,
    parameters: &'static [(&'static str, CommandLineParameterType)],
) -> OptionInfo {
    OptionInfo { name, parameters }
}

/// Every `key=value` option vmm reads.
pub const OPTION_LISTS: &[OptionInfo] = &[
    o("accel", &[("accel", S)]),
    o("add-fd", &[("fd", N), ("set", N), ("opaque", S)]),
    o(
        "boot-opts",
        &[("order", S), ("once", S), ("strict", B), ("menu", B)],
    ),
    o(
        "chardev",
        &[
            ("backend", S),
            ("id", S),
            ("path", S),
            ("fd", N),
            ("host", S),
            ("port", S),
            ("server", B),
            ("wait", B),
            ("nodelay", B),
            ("append", B),
            ("signal", B),
            ("logfile", S),
            ("logappend", B),
            ("mux", B),
        ],
    ),
    o("device", &[]),
    o("display", &[("type", S)]),
    o(
        "machine",
        &[
            ("type", S),
            ("accel", S),
            ("usb", B),
            ("dump-guest-core", B),
            ("acpi", B),
        ],
    ),
    o("memory", &[("size", Z)]),
    o(
        "mon",
        &[("chardev", S), ("mode", S), ("id", S), ("pretty", B)],
    ),
    o("msg", &[("timestamp", B), ("guest-name", B)]),
    o("name", &[("guest", S), ("debug-threads", B)]),
    o("overcommit", &[("mem-lock", B), ("cpu-pm", B)]),
    o("rtc", &[("base", S), ("clock", S), ("driftfix", S)]),
    o(
        "sandbox",
        &[
            ("enable", B),
            ("obsolete", S),
            ("elevateprivileges", S),
            ("spawn", S),
            ("resourcecontrol", S),
        ],
    ),
    o(
        "smp-opts",
        &[
            ("cpus", N),
            ("sockets", N),
            ("dies", N),
            ("clusters", N),
            ("cores", N),
            ("threads", N),
            ("maxcpus", N),
        ],
    ),
];

/// `query-command-line-options`.
///
/// # Errors
/// QEMU's text for an option vmm does not read.
pub fn query(option: Option<&str>) -> Result<Vec<CommandLineOptionInfo>, String> {
    let list: Vec<CommandLineOptionInfo> = OPTION_LISTS
        .iter()
        .filter(|i| option.is_none_or(|o| o == i.name))
        .map(|i| CommandLineOptionInfo {
            option: i.name.into(),
            parameters: i
                .parameters
                .iter()
                .map(|(name, ty)| CommandLineParameterInfo {
                    name: (*name).into(),
                    r#type: *ty,
                    help: None,
                    default: None,
                })
                .collect(),
        })
        .collect();
    match option {
        Some(o) if list.is_empty() => Err(format!("invalid option name: {o}")),
        _ => Ok(list),
    }
}
