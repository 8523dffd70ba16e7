// SPDX-License-Identifier: Apache-2.0
//! In-band commands that may wait on storage, run without holding the big lock.
//!
//! Opening a file (`blockdev-add`), closing one (`blockdev-del`) and draining in-flight I/O
//! (`stop`) can block for as long as the storage does not answer (a dead NFS server, a suspended
//! device). QEMU's main loop freezes then; here each such command is split in three:
//!
//! 1. [`start`], on the main loop: checks the arguments (with the generated descriptor, as the
//!    dispatcher does) and everything that needs the machine, and either answers at once or
//!    returns a [`Job`];
//! 2. [`Job::run`], on a worker thread (`qmp-job`): the part that may wait — and only that;
//! 3. [`finish`], back on the main loop: applies the result and builds the reply.
//!
//! The main loop keeps the session's later in-band items queued behind the job (so its replies
//! stay in order) while other sessions are served and the VM runs. `blockdev-add` and
//! `blockdev-del` are `'gen': false` in the schema: this module is their only implementation.
//! `stop` (and HMP's `stop`) is generated; the main loop routes it here so that its reply waits
//! for the drain.

use std::sync::Arc;

use block::{Backend, BlockNode, FileNode, OpenError};
use qapi::rt::{check_arguments, decode_arguments, QmpError};
use qapi::types::{BlockdevDelArg, BlockdevOptions};
use serde_json::{json, Value};

use crate::blockdev::{self, OpenFile, Plan};
use crate::error::chain;
use crate::machine::Machine;

/// What [`start`] decided.
#[derive(Debug)]
pub enum Start {
    /// Answered without waiting.
    Done(Result<Value, QmpError>),
    /// Run this off the main loop, then [`finish`].
    Wait(Job),
}

/// The waiting part of a command.
#[derive(Debug)]
pub enum Job {
    /// Open a `file` node.
    Open(OpenFile),
    /// Close a deleted node (drop its last reference).
    Close(Arc<dyn BlockNode>),
    /// Wait until no request of these backends is running, then answer with the value.
    Drain(Vec<Arc<Backend>>, Value),
}

/// What a [`Job`] produced.
#[derive(Debug)]
pub enum Outcome {
    /// The node opened (or not).
    Opened(Result<FileNode, OpenError>),
    /// The node is closed.
    Closed,
    /// In-flight I/O is drained: the command's return value.
    Drained(Value),
}

impl Job {
    /// Runs the job: it may block for as long as the storage does not answer. Never called
    /// with the big lock: the caller is a worker thread.
    pub fn run(self) -> Outcome {
        match self {
            Job::Open(file) => Outcome::Opened(file.open()),
            Job::Close(node) => {
                drop(node);
                Outcome::Closed
            }
            Job::Drain(backends, reply) => {
                for b in &backends {
                    b.drain();
                }
                Outcome::Drained(reply)
            }
        }
    }
}

/// Starts `command` if this module runs it (`None` otherwise): see the module doc.
pub fn start(machine: &mut Machine, command: &str, arguments: Option<Value>) -> Option<Start> {
    Some(match command {
        "blockdev-add" => start_add(machine, arguments),
        "blockdev-del" => start_del(machine, arguments),
        "stop" => start_stop(machine, arguments),
        "human-monitor-command" => return start_hmp(machine, arguments),
        _ => return None,
    })
}

fn start_add(machine: &mut Machine, arguments: Option<Value>) -> Start {
    let options = match decode::<BlockdevOptions>(&qapi::descriptors::D_BlockdevOptions, arguments)
    {
        Ok(o) => o,
        Err(e) => return Start::Done(Err(e)),
    };
    match blockdev::plan(machine.vm.devices(), options) {
        Err(e) => Start::Done(Err(QmpError::generic(e))),
        Ok(Plan::Open(file)) => Start::Wait(Job::Open(file)),
        Ok(Plan::Ready(node)) => Start::Done(
            blockdev::add(machine.vm.devices_mut(), node)
                .map(|()| json!({}))
                .map_err(QmpError::generic),
        ),
    }
}

fn start_del(machine: &mut Machine, arguments: Option<Value>) -> Start {
    let arg =
        match decode::<BlockdevDelArg>(&qapi::descriptors::D_q_obj_blockdev_del_arg, arguments) {
            Ok(a) => a,
            Err(e) => return Start::Done(Err(e)),
        };
    match machine.vm.devices_mut().remove_monitor_node(&arg.node_name) {
        Ok(node) => Start::Wait(Job::Close(node)),
        Err(e) => Start::Done(Err(QmpError::generic(e))),
    }
}

fn start_stop(machine: &mut Machine, arguments: Option<Value>) -> Start {
    if let Err(e) = decode::<Value>(&qapi::descriptors::D_q_empty, arguments) {
        return Start::Done(Err(e));
    }
    stop_and_drain(machine, json!({}))
}

/// As QEMU's `do_vm_stop`: the vCPUs pause and STOP goes out, then in-flight I/O drains, and
/// only then does the command return (with `reply`).
fn stop_and_drain(machine: &mut Machine, reply: Value) -> Start {
    machine.stop();
    let backends = machine
        .vm
        .disks()
        .iter()
        .map(|d| d.backend.clone())
        .collect();
    Start::Wait(Job::Drain(backends, reply))
}

/// HMP's `stop` is QMP's `stop`, drain included (its output is empty); every other HMP line
/// runs as usual (`None`).
fn start_hmp(machine: &mut Machine, arguments: Option<Value>) -> Option<Start> {
    let is_stop = arguments
        .as_ref()
        .and_then(|a| a.get("command-line"))
        .and_then(Value::as_str)
        .is_some_and(|line| line.split_whitespace().eq(["stop"]));
    if !is_stop {
        return None;
    }
    // The arguments are checked as the dispatcher checks them (cpu-index included).
    let arg = match decode::<qapi::types::HumanMonitorCommandArg>(
        &qapi::descriptors::D_q_obj_human_monitor_command_arg,
        arguments,
    ) {
        Ok(a) => a,
        Err(e) => return Some(Start::Done(Err(e))),
    };
    if let Err(e) = crate::qmp::check_cpu_index(&machine.vm, arg.cpu_index) {
        return Some(Start::Done(Err(e)));
    }
    Some(stop_and_drain(machine, json!("")))
}

/// Applies a job's outcome on the main loop and gives the command's result.
pub fn finish(machine: &mut Machine, outcome: Outcome) -> Result<Value, QmpError> {
    match outcome {
        Outcome::Opened(Ok(node)) => blockdev::add(machine.vm.devices_mut(), Arc::new(node))
            .map(|()| json!({}))
            .map_err(QmpError::generic),
        Outcome::Opened(Err(e)) => Err(QmpError::generic(chain(&e))),
        Outcome::Closed => Ok(json!({})),
        Outcome::Drained(reply) => Ok(reply),
    }
}

/// Checks `arguments` against `desc` (QEMU's texts) and decodes them.
fn decode<T: serde::de::DeserializeOwned>(
    desc: &qapi::rt::TypeDesc,
    arguments: Option<Value>,
) -> Result<T, QmpError> {
    // These arguments hold no handles.
    let args = check_arguments(desc, arguments, &|_, _| Ok(()))?;
    decode_arguments(args)
}
