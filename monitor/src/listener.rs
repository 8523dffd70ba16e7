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
    /// An inherited file descriptor that is not a listening Unix socket (or not open).
    #[error("File descriptor {0} is not a listening Unix socket")]
    NotListening(RawFd),
}

/// A listening socket.
#[derive(Debug)]
pub enum Listener {
    /// Unix socket and its path (removed on drop).
    Unix(UnixListener, PathBuf),
    /// A listening Unix socket inherited as a file descriptor: its path (if any) belongs to
    /// whoever bound it and is left alone.
    Inherited(UnixListener),
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
            Endpoint::UnixFd(fd) => {
                let l = inherited_listener(*fd)?;
                l.set_nonblocking(true)
                    .map_err(|e| ListenError::Bind(format!("fd={fd}"), e))?;
                Ok(Listener::Inherited(l))
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
            Listener::Unix(l, _) | Listener::Inherited(l) => {
                l.accept().map(|(s, _)| Stream::Unix(s))
            }
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
            Listener::Unix(..) | Listener::Inherited(_) => None,
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
            Listener::Unix(l, _) | Listener::Inherited(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }
}

/// Reads an integer socket option of `fd`.
fn socket_option(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the live local `value`; a bad fd is
    // an error return, not undefined behaviour.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Takes ownership of the inherited descriptor `fd` once it is known to be a listening Unix
/// stream socket (so that a wrong number cannot make the monitor close some other file).
fn inherited_listener(fd: RawFd) -> Result<UnixListener, ListenError> {
    let check = |name| socket_option(fd, libc::SOL_SOCKET, name);
    let listening = matches!(check(libc::SO_DOMAIN), Ok(libc::AF_UNIX))
        && matches!(check(libc::SO_TYPE), Ok(libc::SOCK_STREAM))
        && matches!(check(libc::SO_ACCEPTCONN), Ok(1));
    if !listening {
        return Err(ListenError::NotListening(fd));
    }
    // SAFETY: fd is an open listening Unix socket (checked above) that this process
    // inherited for the monitor; nothing else in the process owns it, and the command line
    // refuses the same descriptor twice.
    Ok(unsafe { <UnixListener as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// The path a listening Unix socket is bound to, as `getsockname` reports it (`None` for an
/// unnamed or abstract socket).
pub fn unix_socket_path(fd: RawFd) -> Option<PathBuf> {
    // SAFETY: a zeroed sockaddr_un is a valid value; getsockname writes at most `len` bytes.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: addr and len are live locals of the sizes given.
    let ret =
        unsafe { libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_un).cast(), &mut len) };
    let header = std::mem::size_of::<libc::sa_family_t>();
    if ret != 0 || (len as usize) <= header || addr.sun_path[0] == 0 {
        return None;
    }
    let bytes: Vec<u8> = addr.sun_path[..(len as usize - header).min(addr.sun_path.len())]
        .iter()
        .map(|&c| c as u8)
        .take_while(|&c| c != 0)
        .collect();
    Some(PathBuf::from(
        <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(bytes),
    ))
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
    fn inherited_listening_fd() {
        use std::os::fd::IntoRawFd;
        let dir = std::env::temp_dir().join(format!("qmp-inherit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("q.sock");
        let fd = UnixListener::bind(&path).unwrap().into_raw_fd();
        assert_eq!(unix_socket_path(fd).as_deref(), Some(path.as_path()));
        let spec = SocketSpec {
            endpoint: Endpoint::UnixFd(fd),
            wait: false,
            max_clients: None,
        };
        let l = Listener::bind(&spec).unwrap();
        let _c = UnixStream::connect(&path).unwrap();
        assert!(l.accept().unwrap().is_some());
        drop(l);
        assert!(
            path.exists(),
            "an inherited socket's path is not ours to remove"
        );
        // Not a socket, a connected socket, a closed descriptor: refused, not taken.
        let file = std::fs::File::open(path.parent().unwrap()).unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        for fd in [file.as_raw_fd(), a.as_raw_fd(), 1_000_000] {
            let spec = SocketSpec {
                endpoint: Endpoint::UnixFd(fd),
                wait: false,
                max_clients: None,
            };
            assert!(matches!(Listener::bind(&spec), Err(ListenError::NotListening(n)) if n == fd));
        }
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
