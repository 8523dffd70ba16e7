// SPDX-License-Identifier: Apache-2.0
//! The vmm's block layer: a small BlockDriverState-like graph.
//!
//! A [`Backend`] is what a device sees. It is named by the drive id (`drive0`, `drive1`, ...) and
//! sits on a root [`BlockNode`]; nodes carry a `node-name` (given, or generated in QEMU's shape,
//! `#block123`) and a driver: [`FileNode`] (`file`) reads and writes a raw image with positional
//! I/O, and filter nodes (fault injection, throttling, ...) wrap another node through
//! [`BlockNode::child`] and override only what they intercept.
//!
//! Every request of a device goes through [`Backend::submit`] (or, for a device that must be
//! able to abandon it, [`Backend::admit`] then [`Backend::run`]: see [`yank`]), which validates it (read-only,
//! range), runs it through the backend's implicit fault-injection filter ([`FaultNode`],
//! QEMU's `blkdebug`, invisible to queries) on the root node, keeps the statistics QMP's
//! `query-blockstats` reports, and on failure asks the backend's [`ErrorPolicy`] (usually a
//! [`DevicePolicy`]: QEMU's `rerror`/`werror`) what to do: report the error to the guest,
//! ignore it, or stop and keep the request for a retry. Each failure is then one emission of
//! the backend's I/O-error signal, on the thread that ran the request, calling its
//! [`IoErrorSlot`]s in connection order: the backend's own [`StatsSlot`] (failure accounting)
//! and [`IoStatusSlot`] (I/O status `ok`, `failed`, `nospace`) first, then the connected ones
//! (the VMM's `BLOCK_IO_ERROR` and VM-stop slots). Host errors
//! (ENOSPC from a full file system, EIO) and injected ones take the same path. A [`Registry`]
//! holds the graph: backends by id, nodes by node-name.
//!
//! Requests can be throttled as QEMU throttles them ([`throttle`]: leaky buckets per limit,
//! shared by the disks of a named group): each backend carries a [`Throttle`], and each I/O
//! thread of its device asks its [`ThrottleQueue`] before it starts a request.
//!
//! Images are locked in QEMU's scheme ([`lock`]: OFD byte-range locks at offsets 100 and
//! 200 plus the permission bit), so that vmm processes, and vmm and QEMU, do not write one
//! image at the same time.
//!
//! Buffers are [`IoBuf`]s ([`vm_memory::VolatileSlice`]): guest memory handed down by a device;
//! reads and writes pass through the running thread's bounce buffer ([`buf`]), so that a
//! syscall a yank abandoned never touches guest memory.

mod backend;
pub mod buf;
mod file;
pub mod inject;
pub mod lock;
mod node;
mod policy;
mod raw;
mod registry;
mod signal;
mod stats;
pub mod throttle;
pub mod yank;

pub use backend::{
    Admission, Admitted, Backend, BackendConfig, Completion, InvalidRequest, Request, Watcher,
};
pub use file::{FileNode, HandOverError, HostFile, OpenError};
pub use inject::{errno_name, parse_errno, FaultNode, FaultRule, InjectError};
pub use lock::{LockConflict, LockError, Locking, ParseLockingError, Perm, Perms};
pub use node::{
    io_uring_available, Aio, BlockNode, CacheMode, IoBuf, IoKind, ParseAioError,
    ParseCacheModeError, SECTOR_SIZE,
};
pub use policy::{
    DevicePolicy, ErrorAction, ErrorPolicy, IoErrorInfo, IoStatus, IoStatusCell, OnError,
    ParseOnErrorError, ReportPolicy,
};
pub use raw::RawNode;
pub use registry::{generate_node_name, validate_name, NameError, Registry, RegistryError};
pub use signal::{IoErrorEvent, IoErrorSlot, IoStatusSlot, SlotId, StatsSlot};
pub use stats::{BlockStats, BlockStatsSnapshot, OpStatsSnapshot, QmpBlockStats};
pub use throttle::{
    Bucket, Limit, Throttle, ThrottleConfig, ThrottleConfigError, ThrottleGroups, ThrottleLimits,
    ThrottleQueue, Throttled,
};
pub use yank::{Ticket, TicketState, YankTable};
