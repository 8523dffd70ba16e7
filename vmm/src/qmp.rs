// SPDX-License-Identifier: Apache-2.0
//! The VMM's side of the generated QMP interface: the in-band commands, run by the main loop
//! on the [`Machine`], and the out-of-band ones, run by the monitor thread on shared state.

use std::sync::Arc;

use qapi::commands::{QmpCommands, QmpHandles, QmpOobCommands};
use qapi::rt::QmpError;
use qapi::types::{
    BlockInfo, BlockStats, Blockdev, CommandInfo, CpuInfoFast, CpuInfoFastBranch,
    CpuInstanceProperties, KvmInfo, NameInfo, RunState, SchemaInfo, ShutdownCause, StatusInfo,
    VersionInfo, VersionTriple,
};

use crate::machine::{Machine, SharedRunState};

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
}

impl OobServer {
    /// Creates the out-of-band server over the machine's shared run state, its name and its
    /// block device names (fixed for the VM's life: there is no hotplug).
    pub fn new(state: Arc<SharedRunState>, name: Option<String>, blockdevs: Vec<String>) -> Self {
        Self {
            state,
            name,
            blockdevs,
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

    fn query_name(&self) -> Result<NameInfo, QmpError> {
        Ok(NameInfo {
            name: self.name.clone(),
        })
    }
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

    fn query_name(&self) -> Result<NameInfo, QmpError> {
        Ok(NameInfo {
            name: self.name.clone(),
        })
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

    fn query_block(&mut self) -> Result<Vec<BlockInfo>, QmpError> {
        Ok(self
            .vm
            .disks()
            .iter()
            .map(crate::qmp_block::block_info)
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

    fn human_monitor_command(
        &mut self,
        command_line: String,
        cpu_index: Option<i64>,
    ) -> Result<String, QmpError> {
        if let Some(i) = cpu_index {
            if i < 0 || i as usize >= self.vm.vcpu_count() {
                return Err(QmpError::generic(
                    "Parameter 'cpu-index' expects a CPU number",
                ));
            }
        }
        Ok(monitor::hmp::run(self, &command_line))
    }
}
