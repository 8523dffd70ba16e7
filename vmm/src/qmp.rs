// SPDX-License-Identifier: Apache-2.0
//! The VMM's side of the generated QMP interface: the in-band commands, run by the main loop
//! on the [`Machine`], and the out-of-band ones, run by the monitor thread on shared state.

use std::sync::Arc;
use std::time::Duration;

use block::{Backend, Bucket, FaultRule, IoKind, Limit, ThrottleConfig, YankTable};
use qapi::commands::{QmpCommands, QmpHandles, QmpOobCommands};
use qapi::rt::{ErrorClass, QmpError};
use qapi::types::{
    BlockDeviceInfo, BlockIOThrottle, BlockInfo, BlockInjectErrno, BlockInjectOperation,
    BlockInjectRule, BlockInjectRuleId, BlockStats, Blockdev, ChardevInfo, CommandInfo,
    CommandLineOptionInfo, CpuInfoFast, CpuInfoFastBranch, CpuInstanceProperties, JobInfo, KvmInfo,
    MachineInfo, MigrateSetParameters, MigrationCapability, MigrationCapabilityStatus,
    MigrationInfo, MigrationParameters, MigrationStatus, NameInfo, ObjectPropertyInfo,
    ObjectTypeInfo, RunState, SchemaInfo, ShutdownCause, StatusInfo, SysEmuTarget, TargetInfo,
    VersionInfo, VersionTriple, YankInstance, YankInstanceBlockNode, YankInstanceBranch,
};

use crate::device_manager::Disk;
use crate::machine::{Machine, SharedRunState};
use crate::qom::{self, PeripheralDevice};
use crate::vm::Vm;

/// The QEMU version we report: management tools gate features on it, and our QMP follows
/// QEMU 7.2's.
const QEMU_COMPAT: (i64, i64, i64) = (7, 2, 0);

/// The `query-version` value.
pub fn version_info() -> VersionInfo {
    VersionInfo {
        qemu: VersionTriple {
            major: QEMU_COMPAT.0,
            minor: QEMU_COMPAT.1,
            micro: QEMU_COMPAT.2,
        },
        package: format!("vmm {}", env!("CARGO_PKG_VERSION")),
    }
}

fn status_info(state: RunState) -> StatusInfo {
    StatusInfo {
        running: state == RunState::Running,
        singlestep: false,
        status: state,
    }
}

/// A `Blockdev` handle names a disk by drive id or node-name; anything else is refused
/// before the command runs.
fn resolve(names: &[String], handle: &Blockdev) -> Result<(), QmpError> {
    if names.contains(&handle.0) {
        Ok(())
    } else {
        Err(QmpError::device_not_found(&handle.0))
    }
}

/// The disk a `Blockdev` handle names (by backend id or node-name).
fn find_disk<'a>(vm: &'a Vm, handle: &Blockdev) -> Result<&'a Disk, QmpError> {
    vm.disks()
        .iter()
        .find(|d| d.backend.id() == handle.0 || d.backend.root().node_name() == handle.0)
        .ok_or_else(|| QmpError::device_not_found(&handle.0))
}

/// The disk `block_set_io_throttle` names: by `device`, the backend's name; by `id`, the
/// device's id (the drive id: vmm's disks have one) or its QOM path, as QEMU's
/// `qmp_get_blk` does. Returns the name it was found by (the group a disk without limits
/// joins by default).
fn throttle_target<'a, 'n>(
    vm: &'a Vm,
    device: Option<&'n str>,
    id: Option<&'n str>,
) -> Result<(&'a Disk, &'n str), QmpError> {
    let (name, found) = match (device, id) {
        (Some(name), None) => (name, vm.disks().iter().find(|d| d.backend.id() == name)),
        (None, Some(name)) => {
            let device_path = |d: &Disk| format!("/machine/peripheral/{}", d.backend.id());
            (
                name,
                vm.disks()
                    .iter()
                    .find(|d| d.backend.id() == name || d.qdev == name || device_path(d) == name),
            )
        }
        _ => return Err(QmpError::generic("Need exactly one of 'device' and 'id'")),
    };
    found
        .map(|d| (d, name))
        .ok_or_else(|| QmpError::device_not_found(name))
}

/// The limits of a `block_set_io_throttle`, as QEMU reads them: QMP's integers taken as
/// unsigned (so a negative value is out of range), burst members left out 0, their lengths
/// 1.
fn throttle_config(a: &BlockIOThrottle) -> ThrottleConfig {
    let u = |v: i64| v as u64;
    let limit = |avg: i64, max: Option<i64>, len: Option<i64>| Limit {
        avg: u(avg),
        max: max.map_or(0, u),
        max_length: len.map_or(1, u),
    };
    let mut c = ThrottleConfig::default();
    for (b, l) in [
        (Bucket::BpsTotal, limit(a.bps, a.bps_max, a.bps_max_length)),
        (
            Bucket::BpsRead,
            limit(a.bps_rd, a.bps_rd_max, a.bps_rd_max_length),
        ),
        (
            Bucket::BpsWrite,
            limit(a.bps_wr, a.bps_wr_max, a.bps_wr_max_length),
        ),
        (
            Bucket::IopsTotal,
            limit(a.iops, a.iops_max, a.iops_max_length),
        ),
        (
            Bucket::IopsRead,
            limit(a.iops_rd, a.iops_rd_max, a.iops_rd_max_length),
        ),
        (
            Bucket::IopsWrite,
            limit(a.iops_wr, a.iops_wr_max, a.iops_wr_max_length),
        ),
    ] {
        *c.limit_mut(b) = l;
    }
    c.iops_size = a.iops_size.map_or(0, u);
    c
}

/// Rule ids count from 1 and never reach i64::MAX.
fn i64_of(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

fn errno_value(e: BlockInjectErrno) -> i32 {
    match e {
        BlockInjectErrno::Eio => libc::EIO,
        BlockInjectErrno::Enospc => libc::ENOSPC,
        BlockInjectErrno::Eperm => libc::EPERM,
        BlockInjectErrno::Erofs => libc::EROFS,
        BlockInjectErrno::Edquot => libc::EDQUOT,
    }
}

fn errno_enum(errno: i32) -> Option<BlockInjectErrno> {
    [
        BlockInjectErrno::Eio,
        BlockInjectErrno::Enospc,
        BlockInjectErrno::Eperm,
        BlockInjectErrno::Erofs,
        BlockInjectErrno::Edquot,
    ]
    .into_iter()
    .find(|e| errno_value(*e) == errno)
}

/// The names a `Blockdev` handle may use: every disk's id and node-name.
pub fn blockdev_names(vm: &crate::vm::Vm) -> Vec<String> {
    vm.disks()
        .iter()
        .flat_map(|d| {
            [
                d.backend.id().to_owned(),
                d.backend.root().node_name().to_owned(),
            ]
        })
        .collect()
}

/// The out-of-band side: what the monitor thread may do without the big lock. It sees only
/// state that is safe to read from any thread.
#[derive(Debug)]
pub struct OobServer {
    state: Arc<SharedRunState>,
    name: Option<String>,
    blockdevs: Vec<String>,
    /// Every disk's backend (shared state of the block layer, not the machine's) and QOM path.
    disks: Vec<(Arc<Backend>, String)>,
    /// The block graph's yank instances, published by the device manager.
    yank: Arc<YankTable>,
    /// The current migration's counters and controls.
    migration: Arc<crate::migration::Published>,
}

impl OobServer {
    /// Creates the out-of-band server over the machine's shared run state, its name and its
    /// disks (fixed for the VM's life: there is no device hotplug).
    pub fn new(
        state: Arc<SharedRunState>,
        name: Option<String>,
        vm: &Vm,
        migration: &Arc<crate::migration::Published>,
    ) -> Self {
        Self {
            state,
            name,
            blockdevs: blockdev_names(vm),
            disks: vm
                .disks()
                .iter()
                .map(|d| (d.backend.clone(), d.qdev.clone()))
                .collect(),
            yank: vm.devices().yank_table().clone(),
            migration: migration.clone(),
        }
    }
}

impl QmpHandles for OobServer {
    fn resolve_blockdev(&self, handle: &Blockdev) -> Result<(), QmpError> {
        resolve(&self.blockdevs, handle)
    }
}

impl QmpOobCommands for OobServer {
    fn query_status(&self) -> Result<StatusInfo, QmpError> {
        Ok(status_info(self.state.get()))
    }

    fn query_block(&self) -> Result<Vec<BlockInfo>, QmpError> {
        Ok(self
            .disks
            .iter()
            .map(|(b, qdev)| crate::qmp_block::block_info(b, qdev))
            .collect())
    }

    fn query_name(&self) -> Result<NameInfo, QmpError> {
        Ok(NameInfo {
            name: self.name.clone(),
        })
    }

    fn yank(&self, instances: Vec<YankInstance>) -> Result<(), QmpError> {
        yank(&self.yank, &instances)
    }

    fn query_yank(&self) -> Result<Vec<YankInstance>, QmpError> {
        Ok(query_yank(&self.yank))
    }

    fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        Ok(self.migration.info())
    }

    fn migrate_pause(&self) -> Result<(), QmpError> {
        crate::migration::control::pause(self.migration.get())
    }

    fn migrate_recover(&self, uri: String) -> Result<(), QmpError> {
        crate::migration::control::recover(self.migration.get(), &uri)
    }
}

/// QMP `yank`: every instance must exist (QEMU's `DeviceNotFound` "Instance not found"
/// otherwise, and nothing is yanked), then each is yanked in order.
fn yank(table: &YankTable, instances: &[YankInstance]) -> Result<(), QmpError> {
    let name = |i: &YankInstance| match &i.branch {
        YankInstanceBranch::BlockNode(b) => b.node_name.clone(),
    };
    if instances.iter().any(|i| !table.contains(&name(i))) {
        return Err(QmpError::new(
            ErrorClass::DeviceNotFound,
            "Instance not found",
        ));
    }
    for i in instances {
        table.yank(&name(i));
    }
    Ok(())
}

/// QMP `query-yank`: one `block-node` per `file` node of the graph.
fn query_yank(table: &YankTable) -> Vec<YankInstance> {
    table
        .node_names()
        .into_iter()
        .map(|node_name| YankInstance {
            branch: YankInstanceBranch::BlockNode(YankInstanceBlockNode { node_name }),
        })
        .collect()
}

impl QmpHandles for Machine {
    fn resolve_blockdev(&self, handle: &Blockdev) -> Result<(), QmpError> {
        resolve(&blockdev_names(&self.vm), handle)
    }
}

/// In band, the same commands run on the main loop.
impl QmpOobCommands for Machine {
    fn query_status(&self) -> Result<StatusInfo, QmpError> {
        Ok(status_info(self.state()))
    }

    fn query_block(&self) -> Result<Vec<BlockInfo>, QmpError> {
        Ok(self
            .vm
            .disks()
            .iter()
            .map(|d| crate::qmp_block::block_info(&d.backend, &d.qdev))
            .collect())
    }

    fn query_name(&self) -> Result<NameInfo, QmpError> {
        Ok(NameInfo {
            name: self.name.clone(),
        })
    }

    fn yank(&self, instances: Vec<YankInstance>) -> Result<(), QmpError> {
        yank(self.vm.devices().yank_table(), &instances)
    }

    fn query_yank(&self) -> Result<Vec<YankInstance>, QmpError> {
        Ok(query_yank(self.vm.devices().yank_table()))
    }

    fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        Ok(self.migration.info())
    }

    fn migrate_pause(&self) -> Result<(), QmpError> {
        crate::migration::control::pause(self.migration.shared().cloned())
    }

    fn migrate_recover(&self, uri: String) -> Result<(), QmpError> {
        crate::migration::control::recover(self.migration.shared().cloned(), &uri)
    }
}

impl QmpCommands for Machine {
    fn query_version(&mut self) -> Result<VersionInfo, QmpError> {
        Ok(version_info())
    }

    fn query_commands(&mut self) -> Result<Vec<CommandInfo>, QmpError> {
        Ok(qapi::command_list())
    }

    fn query_qmp_schema(&mut self) -> Result<Vec<SchemaInfo>, QmpError> {
        Ok(qapi::schema_info().to_vec())
    }

    fn stop(&mut self) -> Result<(), QmpError> {
        Machine::stop(self);
        Ok(())
    }

    fn cont(&mut self) -> Result<(), QmpError> {
        Machine::cont(self)
    }

    fn system_reset(&mut self) -> Result<(), QmpError> {
        if self.in_incoming_postcopy() {
            return Err(QmpError::generic(
                "The VM cannot be reset during a postcopy migration: its RAM is still arriving",
            ));
        }
        self.reset(false, ShutdownCause::HostQmpSystemReset)
            .map_err(|e| QmpError::generic(crate::error::chain(&e)))
    }

    fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.powerdown()
    }

    fn quit(&mut self) -> Result<(), QmpError> {
        let code = self.quit_code();
        self.shutdown(false, ShutdownCause::HostQmpQuit, code);
        Ok(())
    }

    fn query_kvm(&mut self) -> Result<KvmInfo, QmpError> {
        Ok(KvmInfo {
            enabled: true,
            present: true,
        })
    }

    fn query_cpus_fast(&mut self) -> Result<Vec<CpuInfoFast>, QmpError> {
        Ok(self
            .vm
            .vcpu_thread_ids()
            .into_iter()
            .enumerate()
            .map(|(i, tid)| CpuInfoFast {
                cpu_index: i as i64,
                qom_path: format!("/machine/unattached/device[{i}]"),
                thread_id: i64::from(tid.unwrap_or(0)),
                props: Some(CpuInstanceProperties {
                    node_id: None,
                    book_id: None,
                    socket_id: Some(0),
                    die_id: None,
                    cluster_id: None,
                    core_id: Some(i as i64),
                    thread_id: Some(0),
                }),
                branch: CpuInfoFastBranch::X8664,
            })
            .collect())
    }

    fn query_blockstats(&mut self, query_nodes: Option<bool>) -> Result<Vec<BlockStats>, QmpError> {
        let nodes = query_nodes.unwrap_or(false);
        Ok(self
            .vm
            .disks()
            .iter()
            .map(|d| crate::qmp_block::block_stats(d, nodes))
            .collect())
    }

    fn blockdev_inject_error(
        &mut self,
        device: Blockdev,
        operation: BlockInjectOperation,
        errno: Option<BlockInjectErrno>,
        sector: Option<u64>,
        count: Option<u64>,
        once: Option<bool>,
        delay_ms: Option<u64>,
    ) -> Result<BlockInjectRuleId, QmpError> {
        let disk = find_disk(&self.vm, &device)?;
        let rule = FaultRule {
            operation: match operation {
                BlockInjectOperation::Read => IoKind::Read,
                BlockInjectOperation::Write => IoKind::Write,
                BlockInjectOperation::Flush => IoKind::Flush,
            },
            errno: errno.map(errno_value),
            sector,
            count,
            once: once.unwrap_or(false),
            delay: delay_ms.map(Duration::from_millis),
        };
        let id = disk
            .backend
            .inject(rule)
            .map_err(|e| QmpError::generic(e.to_string()))?;
        Ok(BlockInjectRuleId { id: i64_of(id) })
    }

    fn blockdev_inject_error_remove(
        &mut self,
        device: Blockdev,
        id: Option<i64>,
    ) -> Result<(), QmpError> {
        let disk = find_disk(&self.vm, &device)?;
        let id = match id {
            Some(n) => Some(u64::try_from(n).map_err(|_| {
                QmpError::generic(format!("No injection rule with id {n} on '{}'", device.0))
            })?),
            None => None,
        };
        disk.backend
            .remove_injection(id)
            .map_err(|e| QmpError::generic(e.to_string()))
    }

    fn query_blockdev_inject_errors(
        &mut self,
        device: Blockdev,
    ) -> Result<Vec<BlockInjectRule>, QmpError> {
        let disk = find_disk(&self.vm, &device)?;
        Ok(disk
            .backend
            .injections()
            .into_iter()
            .map(|(id, r)| BlockInjectRule {
                id: i64_of(id),
                operation: match r.operation {
                    IoKind::Read => BlockInjectOperation::Read,
                    IoKind::Flush => BlockInjectOperation::Flush,
                    _ => BlockInjectOperation::Write,
                },
                errno: r.errno.and_then(errno_enum),
                sector: r.sector,
                count: r.count,
                once: r.once,
                delay_ms: r
                    .delay
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                held: i64::try_from(disk.backend.fault_node().held_by(id)).unwrap_or(i64::MAX),
            })
            .collect())
    }

    fn block_set_io_throttle(&mut self, arg: BlockIOThrottle) -> Result<(), QmpError> {
        let (disk, name) = throttle_target(&self.vm, arg.device.as_deref(), arg.id.as_deref())?;
        disk.backend
            .throttle()
            .set_limits(
                self.vm.devices().throttle_groups(),
                throttle_config(&arg),
                arg.group.as_deref(),
                name,
            )
            .map_err(|e| QmpError::generic(e.to_string()))
    }

    fn query_named_block_nodes(
        &mut self,
        _flat: Option<bool>,
    ) -> Result<Vec<BlockDeviceInfo>, QmpError> {
        Ok(self
            .vm
            .devices()
            .block_graph()
            .nodes()
            .filter(|n| !n.implicit())
            .map(|n| crate::qmp_block::node_info(n.as_ref()))
            .collect())
    }

    fn human_monitor_command(
        &mut self,
        command_line: String,
        cpu_index: Option<i64>,
    ) -> Result<String, QmpError> {
        check_cpu_index(&self.vm, cpu_index)?;
        Ok(monitor::hmp::run(self, &command_line))
    }

    fn query_target(&mut self) -> Result<TargetInfo, QmpError> {
        Ok(TargetInfo {
            arch: SysEmuTarget::X8664,
        })
    }

    fn query_machines(&mut self) -> Result<Vec<MachineInfo>, QmpError> {
        Ok(vec![MachineInfo {
            name: "microvm".into(),
            alias: None,
            is_default: Some(true),
            cpu_max: i64::from(crate::cli::MAX_CPUS),
            hotpluggable_cpus: false,
            numa_mem_supported: false,
            deprecated: false,
            default_cpu_type: None,
            default_ram_id: None,
        }])
    }

    fn query_chardev(&mut self) -> Result<Vec<ChardevInfo>, QmpError> {
        let mut list = self.monitor_chardevs.clone();
        if let Some(serial) = self.vm.devices().serial_chardev() {
            list.push(ChardevInfo {
                label: serial.label.clone(),
                filename: serial.filename.clone(),
                frontend_open: true,
            });
        }
        Ok(list)
    }

    fn qom_list(&mut self, path: String) -> Result<Vec<ObjectPropertyInfo>, QmpError> {
        let mut devices: Vec<PeripheralDevice> = self
            .vm
            .disks()
            .iter()
            .map(|d| PeripheralDevice {
                id: d.backend.id().to_owned(),
                type_name: "virtio-blk-device",
            })
            .collect();
        if let Some(id) = self
            .vm
            .devices()
            .serial_chardev()
            .and_then(|c| c.device_id.clone())
        {
            devices.push(PeripheralDevice {
                id,
                type_name: "isa-serial",
            });
        }
        qom::list(&path, &devices)
    }

    fn qom_list_types(
        &mut self,
        implements: Option<String>,
        include_abstract: Option<bool>,
    ) -> Result<Vec<ObjectTypeInfo>, QmpError> {
        Ok(qom::list_types(
            implements.as_deref(),
            include_abstract.unwrap_or(false),
        ))
    }

    fn device_list_properties(
        &mut self,
        typename: String,
    ) -> Result<Vec<ObjectPropertyInfo>, QmpError> {
        qom::device_properties(&typename)
    }

    fn qom_list_properties(
        &mut self,
        typename: String,
    ) -> Result<Vec<ObjectPropertyInfo>, QmpError> {
        Ok(qom::type_properties(&typename))
    }

    fn query_migrate_capabilities(&mut self) -> Result<Vec<MigrationCapabilityStatus>, QmpError> {
        Ok(vec![
            MigrationCapabilityStatus {
                capability: MigrationCapability::Events,
                state: self.migration_events,
            },
            MigrationCapabilityStatus {
                capability: MigrationCapability::PostcopyRam,
                state: self.migration.postcopy_ram,
            },
        ])
    }

    fn migrate_set_capabilities(
        &mut self,
        capabilities: Vec<MigrationCapabilityStatus>,
    ) -> Result<(), QmpError> {
        // Every value of the enum is a capability vmm keeps; unknown ones were refused by the
        // argument check with QEMU's text. A running migration keeps the postcopy setting
        // it started with (QEMU's text); nothing is changed then.
        let postcopy = capabilities
            .iter()
            .any(|c| c.capability == MigrationCapability::PostcopyRam);
        // (A destination's waiting or running incoming migration does not count: QEMU
        // takes the capability there.)
        let outgoing = self.migration.shared().is_some_and(|s| !s.incoming);
        if postcopy && outgoing && self.migration.active() {
            return Err(QmpError::generic("There's a migration process in progress"));
        }
        for c in capabilities {
            match c.capability {
                MigrationCapability::Events => self.migration_events = c.state,
                MigrationCapability::PostcopyRam => self.migration.postcopy_ram = c.state,
            }
        }
        Ok(())
    }

    fn migrate_set_parameters(&mut self, arg: MigrateSetParameters) -> Result<(), QmpError> {
        let mut p = self.migration.params();
        if let Some(limit) = arg.downtime_limit {
            if limit > crate::migration::MAX_DOWNTIME_LIMIT {
                // QEMU's text.
                return Err(QmpError::generic(format!(
                    "Parameter 'downtime_limit' expects an integer in the range of 0 to {} milliseconds",
                    crate::migration::MAX_DOWNTIME_LIMIT
                )));
            }
            p.downtime_limit = limit;
        }
        if let Some(bw) = arg.max_bandwidth {
            p.max_bandwidth = bw;
        }
        self.migration.set_params(p);
        Ok(())
    }

    fn query_migrate_parameters(&mut self) -> Result<MigrationParameters, QmpError> {
        Ok(crate::migration::parameters(self.migration.params()))
    }

    fn migrate(
        &mut self,
        uri: String,
        blk: Option<bool>,
        inc: Option<bool>,
        _detach: Option<bool>,
        resume: Option<bool>,
    ) -> Result<(), QmpError> {
        crate::migration::control::start_outgoing(self, &uri, blk, inc, resume)
    }

    fn migrate_incoming(&mut self, uri: String) -> Result<(), QmpError> {
        crate::migration::control::start_incoming(self, &uri)
    }

    fn migrate_start_postcopy(&mut self) -> Result<(), QmpError> {
        crate::migration::control::start_postcopy(self)
    }

    fn migrate_cancel(&mut self) -> Result<(), QmpError> {
        if crate::migration::in_postcopy(self.migration.status()) {
            return Err(QmpError::generic(
                "Postcopy migration cannot be cancelled: the guest runs on the destination",
            ));
        }
        if self.migration.cancel() {
            self.migration_status(MigrationStatus::Cancelling);
        }
        Ok(())
    }

    fn query_jobs(&mut self) -> Result<Vec<JobInfo>, QmpError> {
        // vmm has no jobs: see the schema's job section.
        Ok(Vec::new())
    }

    fn query_command_line_options(
        &mut self,
        option: Option<String>,
    ) -> Result<Vec<CommandLineOptionInfo>, QmpError> {
        crate::qemu_cli::options_info::query(option.as_deref()).map_err(QmpError::generic)
    }

    fn getfd(&mut self, fdname: String) -> Result<(), QmpError> {
        self.fds.getfd(&fdname)
    }

    fn closefd(&mut self, fdname: String) -> Result<(), QmpError> {
        self.fds.closefd(&fdname)
    }
}

/// `human-monitor-command`'s `cpu-index` must name a vCPU.
///
/// # Errors
/// QEMU's text for an index out of range.
pub fn check_cpu_index(vm: &Vm, cpu_index: Option<i64>) -> Result<(), QmpError> {
    match cpu_index {
        Some(i) if !usize::try_from(i).is_ok_and(|i| i < vm.vcpu_count()) => Err(
            QmpError::generic("Parameter 'cpu-index' expects a CPU number"),
        ),
        _ => Ok(()),
    }
}
