// SPDX-License-Identifier: Apache-2.0
//! Listening sockets and client streams (Unix and TCP), non-blocking.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::spec::{Endpoint, SocketSpec};

/// Errors while creating a listening socket.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another process is serving on that Unix socket.
    #[error("QMP socket '{0}' is in use by a running process")]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("'{0}' exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// bind/listen/chmod failed.
    #[error("Cannot listen on QMP socket '{0}'")]
    Bind(String, #[source] io::Error),
}

/// A listening socket.
#[derive(Debug)]
pub enum Listener {
    /// Unix socket and its path (removed on drop).
    Unix(UnixListener, PathBuf),
    /// TCP socket.
    Tcp(TcpListener),
}

/// A connected client.
#[derive(Debug)]
pub enum Stream {
    /// Unix socket client.
    Unix(UnixStream),
    /// TCP client.
    Tcp(TcpStream),
}

fn prepare_unix_path(path: &Path) -> Result<(), ListenError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket(path.to_owned()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ListenError::InUse(path.to_owned())),
        // Nobody listens: a stale socket from a process that died. Replace it.
        Err(_) => {
            std::fs::remove_file(path).map_err(|e| ListenError::Bind(path.display().to_string(), e))
        }
    }
}

impl Listener {
    /// Creates the listening socket for `spec`: Unix sockets get mode 0600, a stale socket
    /// file is replaced and a live one is an error.
    ///
    /// # Errors
    /// Fails when the socket cannot be created.
    pub fn bind(spec: &SocketSpec) -> Result<Self, ListenError> {
        match &spec.endpoint {
            Endpoint::Unix(path) => {
                prepare_unix_path(path)?;
                let err = |e| ListenError::Bind(path.display().to_string(), e);
                let l = UnixListener::bind(path).map_err(err)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(err)?;
                l.set_nonblocking(true).map_err(err)?;
                Ok(Listener::Unix(l, path.clone()))
            }
            Endpoint::Tcp(host, port) => {
                let host = if host.is_empty() { "0.0.0.0" } else { host };
                let addr = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                let err = |e| ListenError::Bind(addr.clone(), e);
                let l = TcpListener::bind(&addr).map_err(err)?;
                l.set_nonblocking(true).map_err(err)?;
                Ok(Listener::Tcp(l))
            }
        }
    }

    /// Accepts one pending client, non-blocking; `Ok(None)` when none is waiting.
    ///
    /// # Errors
    /// Fails on accept errors other than "would block".
    pub fn accept(&self) -> io::Result<Option<Stream>> {
        let r = match self {
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                // Replies are small and latency matters more than packet count.
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
        };
        match r {
            Ok(s) => {
                s.set_nonblocking()?;
                Ok(Some(s))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The bound TCP port, for `tcp:HOST:0`.
    pub fn local_port(&self) -> Option<u16> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
            Listener::Unix(..) => None,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Listener::Unix(l, _) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }
}

impl Stream {
    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(true),
            Stream::Tcp(s) => s.set_nonblocking(true),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix_spec(path: &Path) -> SocketSpec {
        SocketSpec {
            endpoint: Endpoint::Unix(path.to_owned()),
            wait: false,
            max_clients: None,
        }
    }

    #[test]
    fn unix_socket_mode_stale_and_live() {
        let dir = std::env::temp_dir().join(format!("qmp-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("q.sock");
        // A stale socket (bound, listener gone without unlinking) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let l = Listener::bind(&unix_spec(&path)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A live one is refused.
        assert!(matches!(
            Listener::bind(&unix_spec(&path)),
            Err(ListenError::InUse(_))
        ));
        // The liveness probe itself was a connection; after it nothing is pending.
        assert!(l.accept().unwrap().is_some());
        assert!(l.accept().unwrap().is_none());
        let _c = UnixStream::connect(&path).unwrap();
        assert!(l.accept().unwrap().is_some());
        drop(l);
        assert!(!path.exists(), "socket file removed on drop");
        // A regular file is not replaced.
        std::fs::write(&path, b"x").unwrap();
        assert!(matches!(
            Listener::bind(&unix_spec(&path)),
            Err(ListenError::NotASocket(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tcp_ephemeral_port() {
        let spec = SocketSpec {
            endpoint: Endpoint::Tcp("127.0.0.1".into(), 0),
            wait: false,
            max_clients: None,
        };
        let l = Listener::bind(&spec).unwrap();
        let port = l.local_port().unwrap();
        let _c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // The connection may take a moment to become acceptable.
        let mut accepted = None;
        for _ in 0..100 {
            if let Some(s) = l.accept().unwrap() {
                accepted = Some(s);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(accepted.is_some());
    }
}
