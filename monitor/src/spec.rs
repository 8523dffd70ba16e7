// SPDX-License-Identifier: Apache-2.0
//! Where a monitor listens: the typed form of a `--qmp` value, which the command line (vmm's
//! `qmp_socket`, with its one option parser) builds and [`crate::listener`] binds.

use std::path::PathBuf;

/// Where the monitor listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix domain socket path.
    Unix(PathBuf),
    /// A TCP host and port (host may be empty for all addresses).
    Tcp(String, u16),
    /// A listening Unix socket the process inherited as this file descriptor (QEMU's
    /// `-chardev socket,fd=N,server=on`, how libvirt hands over a monitor socket it bound
    /// itself). The monitor accepts on it and never unlinks or re-binds its path.
    UnixFd(std::os::fd::RawFd),
}

/// A parsed `--qmp` value (or QEMU's `-qmp`, `-chardev socket` + `-mon`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSpec {
    /// Where to listen.
    pub endpoint: Endpoint,
    /// Hold the guest until the first client connects.
    pub wait: bool,
    /// Most clients connected to this socket at once (`None`: only the monitor's total
    /// limit applies); one more is refused with an error message instead of the greeting.
    pub max_clients: Option<usize>,
}
