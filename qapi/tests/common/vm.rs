// SPDX-License-Identifier: Apache-2.0
//! A fake VM implementing the main schema's traits, emitting events like QEMU does.

use std::sync::Arc;

use qapi::commands::{QmpCommands, QmpHandles, QmpOobCommands};
use qapi::events::{self, Event, EventSink};
use qapi::rt::{ErrorClass, QmpError, Timestamp};
use qapi::types::*;
use serde_json::{json, Value};

/// Collects emitted events as QEMU wire messages.
pub struct QueueSink(pub super::EventQueue);

impl EventSink for QueueSink {
    fn emit(&self, event: Event, timestamp: Timestamp) {
        self.0.lock().expect("lock").push(event.to_json(timestamp));
    }
}

/// The fake VM.
pub struct FakeVm {
    pub status: RunState,
    pub sink: Arc<dyn EventSink>,
    pub drives: Vec<String>,
    pub name: Option<String>,
    /// The URI of the last `migrate`.
    pub migrated: Option<String>,
    /// `downtime-limit`.
    pub downtime_limit: u64,
}

impl FakeVm {
    pub fn new(events: super::EventQueue) -> Self {
        FakeVm::with_sink(Arc::new(QueueSink(events)))
    }

    /// A fake VM emitting to `sink`.
    pub fn with_sink(sink: Arc<dyn EventSink>) -> Self {
        FakeVm {
            status: RunState::Running,
            sink,
            drives: vec!["drive0".into()],
            name: None,
            migrated: None,
            downtime_limit: 300,
        }
    }
}

impl QmpHandles for FakeVm {
    fn resolve_blockdev(&self, handle: &Blockdev) -> Result<(), QmpError> {
        if self.drives.contains(&handle.0) {
            Ok(())
        } else {
            Err(QmpError::device_not_found(&handle.0))
        }
    }
}

impl QmpOobCommands for FakeVm {
    fn query_block(&self) -> Result<Vec<BlockInfo>, QmpError> {
        Ok(vec![
            serde_json::from_value(sample_block_info()).expect("valid BlockInfo")
        ])
    }

    fn query_status(&self) -> Result<StatusInfo, QmpError> {
        Ok(StatusInfo {
            running: self.status == RunState::Running,
            singlestep: false,
            status: self.status,
        })
    }

    fn query_name(&self) -> Result<NameInfo, QmpError> {
        Ok(NameInfo {
            name: self.name.clone(),
        })
    }

    fn yank(&self, instances: Vec<YankInstance>) -> Result<(), QmpError> {
        let known = |i: &YankInstance| match &i.branch {
            YankInstanceBranch::BlockNode(b) => self.drives.contains(&b.node_name),
        };
        if instances.iter().all(known) {
            Ok(())
        } else {
            Err(QmpError::new(
                ErrorClass::DeviceNotFound,
                "Instance not found",
            ))
        }
    }

    fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        Ok(MigrationInfo {
            status: self.migrated.as_ref().map(|_| MigrationStatus::Completed),
            ram: None,
            total_time: None,
            expected_downtime: None,
            downtime: None,
            setup_time: None,
            error_desc: None,
        })
    }

    fn migrate_pause(&self) -> Result<(), QmpError> {
        Err(QmpError::generic(
            "migrate-pause is currently only supported during postcopy-active state",
        ))
    }

    fn migrate_recover(&self, _uri: String) -> Result<(), QmpError> {
        Err(QmpError::generic(
            "Migrate recover can only be run when postcopy is paused.",
        ))
    }

    fn query_yank(&self) -> Result<Vec<YankInstance>, QmpError> {
        Ok(self
            .drives
            .iter()
            .map(|d| YankInstance {
                branch: YankInstanceBranch::BlockNode(YankInstanceBlockNode {
                    node_name: d.clone(),
                }),
            })
            .collect())
    }
}

impl QmpCommands for FakeVm {
    fn query_version(&mut self) -> Result<VersionInfo, QmpError> {
        Ok(VersionInfo {
            qemu: VersionTriple {
                major: 7,
                minor: 2,
                micro: 0,
            },
            package: "vmm test".into(),
        })
    }

    fn query_commands(&mut self) -> Result<Vec<CommandInfo>, QmpError> {
        Ok(qapi::command_list())
    }

    fn query_qmp_schema(&mut self) -> Result<Vec<SchemaInfo>, QmpError> {
        Ok(qapi::schema_info().to_vec())
    }

    fn stop(&mut self) -> Result<(), QmpError> {
        if self.status == RunState::Running {
            self.status = RunState::Paused;
            events::emit_stop(&*self.sink);
        }
        Ok(())
    }

    fn cont(&mut self) -> Result<(), QmpError> {
        if self.status != RunState::Running {
            self.status = RunState::Running;
            events::emit_resume(&*self.sink);
        }
        Ok(())
    }

    fn system_reset(&mut self) -> Result<(), QmpError> {
        events::emit_reset(&*self.sink, false, ShutdownCause::HostQmpSystemReset);
        Ok(())
    }

    fn system_powerdown(&mut self) -> Result<(), QmpError> {
        events::emit_powerdown(&*self.sink);
        Ok(())
    }

    fn quit(&mut self) -> Result<(), QmpError> {
        events::emit_shutdown(&*self.sink, false, ShutdownCause::HostQmpQuit);
        Ok(())
    }

    fn query_kvm(&mut self) -> Result<KvmInfo, QmpError> {
        Ok(KvmInfo {
            enabled: true,
            present: true,
        })
    }

    fn query_cpus_fast(&mut self) -> Result<Vec<CpuInfoFast>, QmpError> {
        Ok(vec![CpuInfoFast {
            cpu_index: 0,
            qom_path: "/machine/unattached/device[0]".into(),
            thread_id: 4242,
            props: Some(CpuInstanceProperties {
                node_id: None,
                book_id: None,
                socket_id: Some(0),
                die_id: None,
                cluster_id: None,
                core_id: Some(0),
                thread_id: Some(0),
            }),
            branch: CpuInfoFastBranch::X8664,
        }])
    }

    fn blockdev_inject_error(
        &mut self,
        device: Blockdev,
        _operation: qapi::types::BlockInjectOperation,
        _errno: Option<qapi::types::BlockInjectErrno>,
        _sector: Option<u64>,
        _count: Option<u64>,
        _once: Option<bool>,
        _delay_ms: Option<u64>,
    ) -> Result<qapi::types::BlockInjectRuleId, QmpError> {
        self.resolve_blockdev(&device)?;
        Ok(qapi::types::BlockInjectRuleId { id: 1 })
    }

    fn blockdev_inject_error_remove(
        &mut self,
        device: Blockdev,
        _id: Option<i64>,
    ) -> Result<(), QmpError> {
        self.resolve_blockdev(&device)
    }

    fn query_blockdev_inject_errors(
        &mut self,
        device: Blockdev,
    ) -> Result<Vec<qapi::types::BlockInjectRule>, QmpError> {
        self.resolve_blockdev(&device)?;
        Ok(Vec::new())
    }

    fn block_set_io_throttle(&mut self, arg: BlockIOThrottle) -> Result<(), QmpError> {
        match (arg.device, arg.id) {
            (Some(d), None) | (None, Some(d)) if self.drives.contains(&d) => Ok(()),
            (Some(d), None) | (None, Some(d)) => Err(QmpError::device_not_found(&d)),
            _ => Err(QmpError::generic("Need exactly one of 'device' and 'id'")),
        }
    }

    fn query_named_block_nodes(
        &mut self,
        _flat: Option<bool>,
    ) -> Result<Vec<qapi::types::BlockDeviceInfo>, QmpError> {
        Ok(Vec::new())
    }

    fn query_blockstats(&mut self, query_nodes: Option<bool>) -> Result<Vec<BlockStats>, QmpError> {
        let stats: BlockDeviceStats = serde_json::from_value(sample_stats()).expect("valid stats");
        let file = BlockStats {
            device: None,
            qdev: None,
            node_name: Some("file0".into()),
            stats: stats.clone(),
            parent: None,
            backing: None,
        };
        let nodes = query_nodes == Some(true);
        let top = BlockStats {
            device: (!nodes).then(|| "drive0".into()),
            qdev: (!nodes).then(|| "/machine/peripheral/vblk0/virtio-backend".to_string()),
            node_name: Some("fmt0".into()),
            stats,
            parent: Some(Box::new(file.clone())),
            backing: None,
        };
        Ok(if nodes { vec![top, file] } else { vec![top] })
    }

    fn human_monitor_command(
        &mut self,
        command_line: String,
        _cpu_index: Option<i64>,
    ) -> Result<String, QmpError> {
        match command_line
            .split_whitespace()
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["info", "status"] => Ok(format!("VM status: {}\r\n", self.status.as_str())),
            ["inject-error", drive] => {
                let owner = Blockdev((*drive).to_string());
                self.resolve_blockdev(&owner)?;
                events::emit_block_io_error(
                    &*self.sink,
                    &owner,
                    format!("/machine/peripheral/{drive}/virtio-backend"),
                    String::new(),
                    Some("fmt0".into()),
                    IoOperationType::Read,
                    BlockErrorAction::Stop,
                    Some(false),
                    "Input/output error".into(),
                );
                self.status = RunState::IoError;
                events::emit_stop(&*self.sink);
                Ok(String::new())
            }
            _ => Err(QmpError::generic(format!(
                "unknown command: '{command_line}'"
            ))),
        }
    }

    fn query_target(&mut self) -> Result<TargetInfo, QmpError> {
        Ok(TargetInfo {
            arch: SysEmuTarget::X8664,
        })
    }

    fn query_machines(&mut self) -> Result<Vec<MachineInfo>, QmpError> {
        Ok(Vec::new())
    }

    fn query_chardev(&mut self) -> Result<Vec<ChardevInfo>, QmpError> {
        Ok(Vec::new())
    }

    fn qom_list(&mut self, path: String) -> Result<Vec<ObjectPropertyInfo>, QmpError> {
        Err(QmpError::new(
            ErrorClass::DeviceNotFound,
            format!("Device '{path}' not found"),
        ))
    }

    fn qom_list_types(
        &mut self,
        _implements: Option<String>,
        _abstract: Option<bool>,
    ) -> Result<Vec<ObjectTypeInfo>, QmpError> {
        Ok(Vec::new())
    }

    fn device_list_properties(
        &mut self,
        typename: String,
    ) -> Result<Vec<ObjectPropertyInfo>, QmpError> {
        Err(QmpError::new(
            ErrorClass::DeviceNotFound,
            format!("Device '{typename}' not found"),
        ))
    }

    fn qom_list_properties(
        &mut self,
        _typename: String,
    ) -> Result<Vec<ObjectPropertyInfo>, QmpError> {
        Ok(Vec::new())
    }

    fn query_migrate_capabilities(&mut self) -> Result<Vec<MigrationCapabilityStatus>, QmpError> {
        Ok(Vec::new())
    }

    fn migrate_set_capabilities(
        &mut self,
        _capabilities: Vec<MigrationCapabilityStatus>,
    ) -> Result<(), QmpError> {
        Ok(())
    }

    fn migrate_set_parameters(&mut self, arg: MigrateSetParameters) -> Result<(), QmpError> {
        if let Some(d) = arg.downtime_limit {
            self.downtime_limit = d;
        }
        Ok(())
    }

    fn query_migrate_parameters(&mut self) -> Result<MigrationParameters, QmpError> {
        Ok(MigrationParameters {
            max_bandwidth: None,
            downtime_limit: Some(self.downtime_limit),
        })
    }

    fn migrate(
        &mut self,
        uri: String,
        _blk: Option<bool>,
        _inc: Option<bool>,
        _detach: Option<bool>,
        _resume: Option<bool>,
    ) -> Result<(), QmpError> {
        self.migrated = Some(uri);
        Ok(())
    }

    fn migrate_incoming(&mut self, _uri: String) -> Result<(), QmpError> {
        Err(QmpError::generic("For use with '-incoming defer'"))
    }

    fn migrate_cancel(&mut self) -> Result<(), QmpError> {
        Ok(())
    }

    fn migrate_start_postcopy(&mut self) -> Result<(), QmpError> {
        Err(QmpError::generic(
            "Postcopy must be started after migration has been started",
        ))
    }

    fn query_jobs(&mut self) -> Result<Vec<JobInfo>, QmpError> {
        Ok(Vec::new())
    }

    fn query_command_line_options(
        &mut self,
        _option: Option<String>,
    ) -> Result<Vec<CommandLineOptionInfo>, QmpError> {
        Ok(Vec::new())
    }

    // No client passes descriptors to the fake: getfd never has one, closefd no name.
    fn getfd(&mut self, _fdname: String) -> Result<(), QmpError> {
        Err(QmpError::generic(
            "No file descriptor supplied via SCM_RIGHTS",
        ))
    }

    fn closefd(&mut self, fdname: String) -> Result<(), QmpError> {
        Err(QmpError::generic(format!(
            "File descriptor named '{fdname}' not found"
        )))
    }
}

pub fn sample_block_info() -> Value {
    json!({
        "device": "drive0", "qdev": "/machine/peripheral/vblk0/virtio-backend",
        "type": "unknown", "removable": false, "locked": false, "io-status": "ok",
        "inserted": {
            "file": "disk.img", "node-name": "fmt0", "ro": false, "drv": "raw",
            "backing_file_depth": 0, "encrypted": false, "detect_zeroes": "off",
            "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0,
            "image": {"filename": "disk.img", "format": "raw", "virtual-size": 1048576,
                      "actual-size": 4096, "dirty-flag": false},
            "cache": {"writeback": true, "direct": false, "no-flush": false},
            "write_threshold": 0
        }
    })
}

pub fn sample_stats() -> Value {
    json!({
        "rd_bytes": 512, "wr_bytes": 0, "unmap_bytes": 0, "rd_operations": 1,
        "wr_operations": 0, "unmap_operations": 0, "flush_operations": 0,
        "rd_total_time_ns": 1000, "wr_total_time_ns": 0, "unmap_total_time_ns": 0,
        "flush_total_time_ns": 0, "wr_highest_offset": 0, "rd_merged": 0, "wr_merged": 0,
        "unmap_merged": 0, "idle_time_ns": 5, "failed_rd_operations": 0,
        "failed_wr_operations": 0, "failed_unmap_operations": 0, "failed_flush_operations": 0,
        "invalid_rd_operations": 0, "invalid_wr_operations": 0, "invalid_unmap_operations": 0,
        "invalid_flush_operations": 0, "account_invalid": true, "account_failed": true,
        "timed_stats": []
    })
}
