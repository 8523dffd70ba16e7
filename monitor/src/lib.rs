// SPDX-License-Identifier: Apache-2.0
//! The QMP monitor: listening sockets, a streaming JSON reader with QEMU's rules, request
//! checking, per-client sessions, the routing of in-band commands to the main loop and
//! out-of-band commands to the monitor thread ([`server`]), the decisions QMP makes about a
//! request ([`dispatch`]), and the human monitor behind `human-monitor-command` ([`hmp`]).

pub mod dispatch;
pub mod fds;
pub mod hmp;
pub mod json_stream;
pub mod listener;
pub mod request;
pub mod scm;
pub mod server;
pub mod session;
pub mod signals;
pub mod spec;
pub mod wire;

pub use dispatch::{reply, Inband};
pub use server::{
    FdBudget, Limits, Monitor, MonitorConfig, MonitorError, MonitorHandle, SessionId, ToMain,
    DEFAULT_MAX_CLIENTS,
};
pub use spec::{Endpoint, SocketSpec};
