// SPDX-License-Identifier: Apache-2.0
//! The human monitor (HMP) behind `human-monitor-command`: its own command table, implemented
//! on top of the QMP command traits (so it runs wherever QMP commands run, on any
//! implementation of them), with human-readable output and errors as QEMU prints them.

use qapi::commands::QmpCommands;
use qapi::rt::QmpError;
use qapi::types::RunState;

/// The server HMP commands run on.
type Server<'a> = &'a mut dyn QmpCommands;

/// One HMP command: its name, argument synopsis, help text and handler.
struct HmpCommand {
    name: &'static str,
    help: &'static str,
    run: fn(Server<'_>) -> Result<String, QmpError>,
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
        run: |m| m.quit().map(|()| String::new()),
    },
    HmpCommand {
        name: "stop",
        help: "stop emulation",
        run: |m| m.stop().map(|()| String::new()),
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

fn info_status(m: Server<'_>) -> Result<String, QmpError> {
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

fn info_version(m: Server<'_>) -> Result<String, QmpError> {
    let v = m.query_version()?;
    Ok(format!(
        "{}.{}.{} ({})\n",
        v.qemu.major, v.qemu.minor, v.qemu.micro, v.package
    ))
}

fn info_block(m: Server<'_>) -> Result<String, QmpError> {
    let mut out = String::new();
    for b in m.query_block()? {
        let Some(ins) = b.inserted else { continue };
        let node = ins.node_name.map(|n| n.0).unwrap_or_default();
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
        if [
            ins.bps,
            ins.bps_rd,
            ins.bps_wr,
            ins.iops,
            ins.iops_rd,
            ins.iops_wr,
        ] != [0; 6]
        {
            let o = |v: Option<i64>| v.unwrap_or(0);
            out.push_str(&format!(
                "    I/O throttling:   bps={} bps_rd={} bps_wr={} bps_max={} bps_rd_max={} \
                 bps_wr_max={} iops={} iops_rd={} iops_wr={} iops_max={} iops_rd_max={} \
                 iops_wr_max={} iops_size={} group={}\n",
                ins.bps,
                ins.bps_rd,
                ins.bps_wr,
                o(ins.bps_max),
                o(ins.bps_rd_max),
                o(ins.bps_wr_max),
                ins.iops,
                ins.iops_rd,
                ins.iops_wr,
                o(ins.iops_max),
                o(ins.iops_rd_max),
                o(ins.iops_wr_max),
                o(ins.iops_size),
                ins.group.unwrap_or_default(),
            ));
        }
    }
    Ok(out)
}

/// Runs one HMP command line; the result is what a human would see (errors included), with
/// QEMU's CRLF line ends.
pub fn run(m: Server<'_>, line: &str) -> String {
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

#[cfg(test)]
mod tests {
    use qapi::types::{
        BlockInfo, BlockStats, Blockdev, CommandInfo, CpuInfoFast, KvmInfo, NameInfo, SchemaInfo,
        StatusInfo, VersionInfo, VersionTriple,
    };

    use super::*;

    /// A server that records what HMP asked of it.
    #[derive(Default)]
    struct Fake {
        status: Option<RunState>,
        calls: Vec<&'static str>,
        fail_cont: bool,
        /// The disk has I/O limits.
        throttled: bool,
    }

    impl qapi::commands::QmpHandles for Fake {
        fn resolve_blockdev(&self, _: &Blockdev) -> Result<(), QmpError> {
            Ok(())
        }
    }

    impl qapi::commands::QmpOobCommands for Fake {
        fn query_block(&self) -> Result<Vec<BlockInfo>, QmpError> {
            // A read-only cache=none disk, as query-block reports it.
            let info = serde_json::json!([{
                "device": "drive0",
                "qdev": "/machine/peripheral/drive0/virtio-backend",
                "type": "unknown", "removable": false, "locked": false,
                "inserted": {
                    "file": "disk.raw", "node-name": "#block100", "ro": true, "drv": "file",
                    "backing_file_depth": 0, "encrypted": false, "detect_zeroes": "off",
                    "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0,
                    "write_threshold": 0,
                    "image": {"filename": "disk.raw", "format": "file", "virtual-size": 1048576,
                              "dirty-flag": false},
                    "cache": {"writeback": true, "direct": true, "no-flush": false}
                }
            }]);
            let mut info = info;
            if self.throttled {
                let ins = &mut info[0]["inserted"];
                ins["bps_wr"] = 5.into();
                ins["iops"] = 100.into();
                ins["iops_max"] = 200.into();
                ins["iops_max_length"] = 1.into();
                ins["group"] = "drive0".into();
            }
            serde_json::from_value(info).map_err(|e| QmpError::generic(e.to_string()))
        }

        // HMP has no yank command; the fake has no instances.
        fn yank(&self, _: Vec<qapi::types::YankInstance>) -> Result<(), QmpError> {
            Err(QmpError::new(
                qapi::rt::ErrorClass::DeviceNotFound,
                "Instance not found",
            ))
        }

        fn query_yank(&self) -> Result<Vec<qapi::types::YankInstance>, QmpError> {
            Ok(Vec::new())
        }

        fn query_migrate(&self) -> Result<qapi::types::MigrationInfo, QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn migrate_pause(&self) -> Result<(), QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn migrate_recover(&self, _: String) -> Result<(), QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }

        fn query_status(&self) -> Result<StatusInfo, QmpError> {
            let status = self.status.unwrap_or(RunState::Running);
            Ok(StatusInfo {
                running: status == RunState::Running,
                singlestep: false,
                status,
            })
        }
        fn query_name(&self) -> Result<NameInfo, QmpError> {
            Ok(NameInfo { name: None })
        }
    }

    impl QmpCommands for Fake {
        fn query_version(&mut self) -> Result<VersionInfo, QmpError> {
            Ok(VersionInfo {
                qemu: VersionTriple {
                    major: 7,
                    minor: 2,
                    micro: 0,
                },
                package: "vmm 0.1.0".into(),
            })
        }
        fn query_commands(&mut self) -> Result<Vec<CommandInfo>, QmpError> {
            Ok(Vec::new())
        }
        fn query_qmp_schema(&mut self) -> Result<Vec<SchemaInfo>, QmpError> {
            Ok(Vec::new())
        }
        fn stop(&mut self) -> Result<(), QmpError> {
            self.calls.push("stop");
            Ok(())
        }
        fn cont(&mut self) -> Result<(), QmpError> {
            self.calls.push("cont");
            if self.fail_cont {
                return Err(QmpError::generic(
                    "Resetting the Virtual Machine is required",
                ));
            }
            Ok(())
        }
        fn system_reset(&mut self) -> Result<(), QmpError> {
            self.calls.push("system_reset");
            Ok(())
        }
        fn system_powerdown(&mut self) -> Result<(), QmpError> {
            self.calls.push("system_powerdown");
            Ok(())
        }
        fn quit(&mut self) -> Result<(), QmpError> {
            self.calls.push("quit");
            Ok(())
        }
        fn query_kvm(&mut self) -> Result<KvmInfo, QmpError> {
            Ok(KvmInfo {
                enabled: true,
                present: true,
            })
        }
        fn query_cpus_fast(&mut self) -> Result<Vec<CpuInfoFast>, QmpError> {
            Ok(Vec::new())
        }
        fn blockdev_inject_error(
            &mut self,
            _: Blockdev,
            _: qapi::types::BlockInjectOperation,
            _: Option<qapi::types::BlockInjectErrno>,
            _: Option<u64>,
            _: Option<u64>,
            _: Option<bool>,
            _: Option<u64>,
        ) -> Result<qapi::types::BlockInjectRuleId, QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn blockdev_inject_error_remove(
            &mut self,
            _: Blockdev,
            _: Option<i64>,
        ) -> Result<(), QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn query_blockdev_inject_errors(
            &mut self,
            _: Blockdev,
        ) -> Result<Vec<qapi::types::BlockInjectRule>, QmpError> {
            Ok(Vec::new())
        }
        fn block_set_io_throttle(
            &mut self,
            _: qapi::types::BlockIOThrottle,
        ) -> Result<(), QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn query_named_block_nodes(
            &mut self,
            _: Option<bool>,
        ) -> Result<Vec<qapi::types::BlockDeviceInfo>, QmpError> {
            Ok(Vec::new())
        }
        fn query_blockstats(&mut self, _: Option<bool>) -> Result<Vec<BlockStats>, QmpError> {
            Ok(Vec::new())
        }
        fn human_monitor_command(
            &mut self,
            command_line: String,
            _: Option<i64>,
        ) -> Result<String, QmpError> {
            Ok(run(self, &command_line))
        }
        fn query_target(&mut self) -> Result<qapi::types::TargetInfo, QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn query_machines(&mut self) -> Result<Vec<qapi::types::MachineInfo>, QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn query_chardev(&mut self) -> Result<Vec<qapi::types::ChardevInfo>, QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn qom_list(
            &mut self,
            _: String,
        ) -> Result<Vec<qapi::types::ObjectPropertyInfo>, QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn qom_list_types(
            &mut self,
            _: Option<String>,
            _: Option<bool>,
        ) -> Result<Vec<qapi::types::ObjectTypeInfo>, QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn device_list_properties(
            &mut self,
            _: String,
        ) -> Result<Vec<qapi::types::ObjectPropertyInfo>, QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn qom_list_properties(
            &mut self,
            _: String,
        ) -> Result<Vec<qapi::types::ObjectPropertyInfo>, QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn query_migrate_capabilities(
            &mut self,
        ) -> Result<Vec<qapi::types::MigrationCapabilityStatus>, QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn migrate_set_capabilities(
            &mut self,
            _: Vec<qapi::types::MigrationCapabilityStatus>,
        ) -> Result<(), QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn migrate_set_parameters(
            &mut self,
            _: qapi::types::MigrateSetParameters,
        ) -> Result<(), QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn query_migrate_parameters(
            &mut self,
        ) -> Result<qapi::types::MigrationParameters, QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn migrate(
            &mut self,
            _: String,
            _: Option<bool>,
            _: Option<bool>,
            _: Option<bool>,
            _: Option<bool>,
        ) -> Result<(), QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn migrate_incoming(&mut self, _: String) -> Result<(), QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn migrate_cancel(&mut self) -> Result<(), QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn migrate_start_postcopy(&mut self) -> Result<(), QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn getfd(&mut self, _: String) -> Result<(), QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn closefd(&mut self, _: String) -> Result<(), QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn query_jobs(&mut self) -> Result<Vec<qapi::types::JobInfo>, QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
        fn query_command_line_options(
            &mut self,
            _: Option<String>,
        ) -> Result<Vec<qapi::types::CommandLineOptionInfo>, QmpError> {
            Err(QmpError::generic("not used by HMP"))
        }
    }

    #[test]
    fn commands_call_their_qmp_twins() {
        let mut f = Fake::default();
        for line in ["stop", "cont", "system_reset", "system_powerdown", "quit"] {
            assert_eq!(run(&mut f, line), "");
        }
        assert_eq!(
            f.calls,
            ["stop", "cont", "system_reset", "system_powerdown", "quit"]
        );
    }

    #[test]
    fn errors_and_unknown_commands_read_as_qemu_prints_them() {
        let mut f = Fake {
            fail_cont: true,
            ..Fake::default()
        };
        assert_eq!(
            run(&mut f, "cont"),
            "Error: Resetting the Virtual Machine is required\r\n"
        );
        assert_eq!(
            run(&mut f, "frobnicate"),
            "unknown command: 'frobnicate'\r\n"
        );
        assert_eq!(
            run(&mut f, "info nothing"),
            "unknown command: 'info nothing'\r\n"
        );
        assert_eq!(run(&mut f, "stop now"), "stop: too many arguments\r\n");
        assert_eq!(run(&mut f, "   "), "");
        assert!(f.calls == ["cont"], "{:?}", f.calls);
    }

    #[test]
    fn info_status_names_states_other_than_paused() {
        let mut f = Fake::default();
        assert_eq!(run(&mut f, "info status"), "VM status: running\r\n");
        f.status = Some(RunState::Paused);
        assert_eq!(run(&mut f, "info status"), "VM status: paused\r\n");
        f.status = Some(RunState::InternalError);
        assert_eq!(
            run(&mut f, "info status"),
            "VM status: paused (internal-error)\r\n"
        );
    }

    #[test]
    fn info_version_and_block() {
        let mut f = Fake::default();
        assert_eq!(run(&mut f, "info version"), "7.2.0 (vmm 0.1.0)\r\n");
        assert_eq!(
            run(&mut f, "info block"),
            "drive0 (#block100): disk.raw (file), read-only\r\n    Attached to:      /machine/peripheral/drive0/virtio-backend\r\n    Cache mode:       writeback, direct\r\n"
        );
        // QEMU 7.2's line for a throttled disk.
        f.throttled = true;
        assert!(run(&mut f, "info block").ends_with(
            "    Cache mode:       writeback, direct\r\n    I/O throttling:   bps=0 bps_rd=0 \
             bps_wr=5 bps_max=0 bps_rd_max=0 bps_wr_max=0 iops=100 iops_rd=0 iops_wr=0 \
             iops_max=200 iops_rd_max=0 iops_wr_max=0 iops_size=0 group=drive0\r\n"
        ));
    }

    #[test]
    fn help_lists_every_command() {
        let mut f = Fake::default();
        let help = run(&mut f, "help");
        assert_eq!(help, run(&mut f, "?"));
        for c in COMMANDS {
            assert!(
                help.contains(&format!("{} -- {}\r\n", c.name, c.help)),
                "{help}"
            );
        }
        let info = run(&mut f, "info");
        for c in INFO {
            assert!(info.contains(&format!("info {} -- ", c.name)), "{info}");
        }
    }
}
