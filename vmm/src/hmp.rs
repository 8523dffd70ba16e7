// SPDX-License-Identifier: Apache-2.0
//! The human monitor (HMP) behind `human-monitor-command`: its own command table, implemented
//! on top of the QMP commands, with human-readable output and errors as QEMU prints them.

use qapi::commands::{QmpCommands, QmpOobCommands};
use qapi::rt::QmpError;
use qapi::types::RunState;

use crate::machine::Machine;

/// One HMP command: its name, argument synopsis, help text and handler.
struct HmpCommand {
    name: &'static str,
    help: &'static str,
    run: fn(&mut Machine) -> Result<String, QmpError>,
}

const COMMANDS: &[HmpCommand] = &[
    HmpCommand {
        name: "cont",
        help: "resume emulation",
        run: |m| m.cont().map(|()| String::new()),
    },
    HmpCommand {
        name: "help",
        help: "show the help",
        run: |_| Ok(help()),
    },
    HmpCommand {
        name: "info",
        help: "show various information about the system state",
        run: |_| Ok(info_help()),
    },
    HmpCommand {
        name: "quit",
        help: "quit the emulator",
        run: |m| QmpCommands::quit(m).map(|()| String::new()),
    },
    HmpCommand {
        name: "stop",
        help: "stop emulation",
        run: |m| QmpCommands::stop(m).map(|()| String::new()),
    },
    HmpCommand {
        name: "system_powerdown",
        help: "send system power down event",
        run: |m| m.system_powerdown().map(|()| String::new()),
    },
    HmpCommand {
        name: "system_reset",
        help: "reset the system",
        run: |m| m.system_reset().map(|()| String::new()),
    },
];

const INFO: &[HmpCommand] = &[
    HmpCommand {
        name: "block",
        help: "show the block devices",
        run: info_block,
    },
    HmpCommand {
        name: "status",
        help: "show the current VM status (running|paused)",
        run: info_status,
    },
    HmpCommand {
        name: "version",
        help: "show the version of QEMU",
        run: info_version,
    },
];

fn help() -> String {
    COMMANDS
        .iter()
        .map(|c| format!("{} -- {}\n", c.name, c.help))
        .collect()
}

fn info_help() -> String {
    INFO.iter()
        .map(|c| format!("info {} -- {}\n", c.name, c.help))
        .collect()
}

fn info_status(m: &mut Machine) -> Result<String, QmpError> {
    let s = m.query_status()?;
    let mut out = format!(
        "VM status: {}",
        if s.running { "running" } else { "paused" }
    );
    if !s.running && s.status != RunState::Paused {
        let name = serde_json::to_value(s.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        out.push_str(&format!(" ({name})"));
    }
    out.push('\n');
    Ok(out)
}

fn info_version(m: &mut Machine) -> Result<String, QmpError> {
    let v = m.query_version()?;
    Ok(format!(
        "{}.{}.{} ({})\n",
        v.qemu.major, v.qemu.minor, v.qemu.micro, v.package
    ))
}

fn info_block(m: &mut Machine) -> Result<String, QmpError> {
    let mut out = String::new();
    for b in m.query_block()? {
        let Some(ins) = b.inserted else { continue };
        let node = ins.node_name.unwrap_or_default();
        out.push_str(&format!(
            "{} ({node}): {} ({})",
            b.device, ins.file, ins.drv
        ));
        if ins.ro {
            out.push_str(", read-only");
        }
        out.push('\n');
        if let Some(qdev) = b.qdev {
            out.push_str(&format!("    Attached to:      {qdev}\n"));
        }
        let mode = match (ins.cache.direct, ins.cache.no_flush) {
            (_, true) => "writeback, ignore flushes",
            (true, false) => "writeback, direct",
            (false, false) => "writeback",
        };
        out.push_str(&format!("    Cache mode:       {mode}\n"));
    }
    Ok(out)
}

/// Runs one HMP command line; the result is what a human would see (errors included), with
/// QEMU's CRLF line ends.
pub fn run(m: &mut Machine, line: &str) -> String {
    let mut words = line.split_whitespace();
    let Some(name) = words.next() else {
        return String::new();
    };
    let (table, name, shown) = if name == "info" {
        match words.next() {
            Some(sub) => (INFO, sub, format!("info {sub}")),
            None => (COMMANDS, name, name.to_owned()),
        }
    } else if name == "?" {
        (COMMANDS, "help", name.to_owned())
    } else {
        (COMMANDS, name, name.to_owned())
    };
    let out = match table.iter().find(|c| c.name == name) {
        Some(_) if words.next().is_some() => format!("{shown}: too many arguments\n"),
        Some(c) => match (c.run)(m) {
            Ok(s) => s,
            Err(e) => format!("Error: {}\n", e.desc),
        },
        None => format!("unknown command: '{shown}'\n"),
    };
    out.replace('\n', "\r\n")
}
