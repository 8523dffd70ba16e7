// SPDX-License-Identifier: Apache-2.0
//! The QMP monitor: listening sockets, a streaming JSON reader with QEMU's rules, request
//! checking, per-client sessions, and the routing of in-band commands to the main loop and
//! out-of-band commands to the monitor thread.

pub mod json_stream;
pub mod request;
pub mod spec;

pub use spec::{Endpoint, SocketSpec, SpecError};
