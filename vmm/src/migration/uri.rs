// SPDX-License-Identifier: Apache-2.0
//! Migration URIs, as QEMU spells them: `unix:PATH`, `tcp:HOST:PORT`, `fd:NAME`,
//! `exec:COMMAND` and `file:PATH`; and the channels they open on either side.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use crate::launcher::{self, Direction, ExecChild, LaunchError};

/// Where a migration goes or comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrationUri {
    /// A Unix socket: the destination listens at the path, the source connects.
    Unix(PathBuf),
    /// A TCP socket: the destination listens on the address, the source connects.
    Tcp(String),
    /// A descriptor: the monitor's named descriptor (`getfd`) or an inherited one's number.
    Fd(String),
    /// `/bin/sh -c COMMAND`: its standard input takes the stream (source), its standard
    /// output gives it (destination).
    Exec(String),
    /// A snapshot file.
    File(PathBuf),
    /// A snapshot restored through userfaultfd (`file:PATH,restore=uffd`, for
    /// `--incoming`): the guest runs at once, its pages read from the file as it touches
    /// them and in the background.
    FileUffd(PathBuf),
}

/// Errors of parsing or opening a migration URI.
#[derive(Debug, thiserror::Error)]
pub enum UriError {
    /// An unknown scheme; QEMU's text.
    #[error("unknown migration protocol: {0}")]
    Protocol(String),
    /// A scheme without its argument.
    #[error("Migration URI '{0}' lacks its {1}")]
    Empty(String, &'static str),
    /// `tcp:` without a port.
    #[error("Migration URI '{0}': expected tcp:HOST:PORT")]
    TcpAddress(String),
    /// `fd:NAME` names no descriptor.
    #[error("File descriptor named '{0}' has not been found")]
    FdName(String),
    /// Connecting, listening, accepting or opening failed.
    #[error("Cannot {0} '{1}'")]
    Io(&'static str, String, #[source] io::Error),
    /// The launcher process could not run an `exec:` command.
    #[error("Cannot run '{0}'")]
    Exec(String, #[source] LaunchError),
    /// `restore=` names no restore mode.
    #[error("Invalid restore mode '{0}' of a file: URI (map or uffd)")]
    Restore(String),
}

impl MigrationUri {
    /// Parses `uri`.
    ///
    /// # Errors
    /// An unknown scheme or a missing part.
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        let (scheme, rest) = uri
            .split_once(':')
            .ok_or_else(|| UriError::Protocol(uri.to_owned()))?;
        let need = |what| {
            if rest.is_empty() {
                Err(UriError::Empty(uri.to_owned(), what))
            } else {
                Ok(rest.to_owned())
            }
        };
        Ok(match scheme {
            "unix" => Self::Unix(need("path")?.into()),
            "tcp" => {
                let addr = need("address")?;
                match addr.rsplit_once(':') {
                    Some((_, port)) if port.parse::<u16>().is_ok() => Self::Tcp(addr),
                    _ => return Err(UriError::TcpAddress(uri.to_owned())),
                }
            }
            "fd" => Self::Fd(need("descriptor name")?),
            "exec" => Self::Exec(need("command")?),
            "file" => {
                let path = need("path")?;
                match path.rsplit_once(",restore=") {
                    Some((p, "uffd")) if !p.is_empty() => Self::FileUffd(p.into()),
                    Some((p, "map")) if !p.is_empty() => Self::File(p.into()),
                    Some((_, other)) => {
                        return Err(UriError::Restore(other.to_owned()));
                    }
                    None => Self::File(path.into()),
                }
            }
            _ => return Err(UriError::Protocol(uri.to_owned())),
        })
    }
}

/// An open migration channel: the stream, and the way back from the peer when the channel
/// has one (sockets; not pipes or files).
pub struct Channel {
    /// Where the stream is written or read.
    pub stream: Box<dyn ReadWrite>,
    /// Whether the peer can answer on the same channel (a socket).
    pub duplex: bool,
    /// A descriptor of the channel, to shut it down from another thread (cancel): the
    /// stream's own for sockets, descriptors and files; for `exec:` the command's status
    /// socket (a pipe cannot be shut down; the launcher then kills the command).
    pub raw: RawFd,
    /// The `exec:` command, waited for when the channel is done.
    pub child: Option<ExecChild>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("duplex", &self.duplex)
            .field("raw", &self.raw)
            .finish()
    }
}

/// A byte stream both ways.
pub trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// A one-way pipe seen as a stream: reads or writes fail on the missing side.
struct Pipe(File, bool);

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.1 {
            self.0.read(buf)
        } else {
            Err(io::Error::other("the channel is write-only"))
        }
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.1 {
            Err(io::Error::other("the channel is read-only"))
        } else {
            self.0.write(buf)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

fn io_err<'a>(what: &'static str, target: &'a str) -> impl FnOnce(io::Error) -> UriError + 'a {
    move |e| UriError::Io(what, target.to_owned(), e)
}

/// Whether `fd` is a socket (then it has a way back).
fn is_socket(fd: RawFd) -> bool {
    // SAFETY: fstat writes into the zeroed struct it is given; `fd` may be any number.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let ok = unsafe { libc::fstat(fd, &mut st) } == 0;
    ok && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
}

/// A duplicate of `fd` if it is a socket (`None` otherwise, or when it cannot be duplicated).
pub fn socket_dup(fd: std::os::fd::BorrowedFd<'_>) -> Option<OwnedFd> {
    if !is_socket(fd.as_raw_fd()) {
        return None;
    }
    fd.try_clone_to_owned().ok()
}

/// A channel on a descriptor the VMM owns now.
fn fd_channel(fd: OwnedFd, reading: bool) -> Channel {
    let raw = fd.as_raw_fd();
    if is_socket(raw) {
        Channel {
            stream: Box::new(UnixStream::from(fd)),
            duplex: true,
            raw,
            child: None,
        }
    } else {
        Channel {
            stream: Box::new(Pipe(File::from(fd), reading)),
            duplex: false,
            raw,
            child: None,
        }
    }
}

/// Finds the descriptor `fd:NAME` means: a name the monitor got with `getfd`, or a
/// number (a descriptor vmm inherited), which is duplicated so the channel owns its copy.
fn named_fd(name: &str, lookup: &dyn Fn(&str) -> Option<OwnedFd>) -> Result<OwnedFd, UriError> {
    if let Some(fd) = lookup(name) {
        return Ok(fd);
    }
    let n: RawFd = name
        .parse()
        .map_err(|_| UriError::FdName(name.to_owned()))?;
    // SAFETY: F_DUPFD_CLOEXEC on any number either fails or returns a new descriptor.
    let dup = unsafe { libc::fcntl(n, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(UriError::FdName(name.to_owned()));
    }
    // SAFETY: `dup` was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Runs an `exec:` command through the launcher process (see [`crate::launcher`]): vmm's
/// threads are confined and may not fork or exec.
fn spawn(command: &str, source: bool) -> Result<Channel, UriError> {
    let direction = if source {
        Direction::ToCommand
    } else {
        Direction::FromCommand
    };
    let (fd, child) = launcher::get()
        .and_then(|l| l.spawn(command, direction))
        .map_err(|e| UriError::Exec(command.to_owned(), e))?;
    // A pipe cannot be shut down: a cancel shuts the status socket down instead, and the
    // launcher kills the command, which breaks the pipe.
    let raw = child.raw();
    Ok(Channel {
        stream: Box::new(Pipe(File::from(fd), !source)),
        duplex: false,
        raw,
        child: Some(child),
    })
}

/// Opens the source's side of a stream URI (every scheme but `file:`, which the snapshot
/// writer opens itself).
///
/// # Errors
/// The destination does not listen, the descriptor is unknown, the command cannot run.
pub fn connect(
    uri: &MigrationUri,
    lookup: &dyn Fn(&str) -> Option<OwnedFd>,
) -> Result<Channel, UriError> {
    match uri {
        MigrationUri::Unix(path) => {
            let shown = path.display().to_string();
            let s = UnixStream::connect(path).map_err(io_err("connect to", &shown))?;
            let raw = s.as_raw_fd();
            Ok(Channel {
                stream: Box::new(s),
                duplex: true,
                raw,
                child: None,
            })
        }
        MigrationUri::Tcp(addr) => {
            let addrs: Vec<_> = addr
                .to_socket_addrs()
                .map_err(io_err("resolve", addr))?
                .collect();
            let s = TcpStream::connect(&addrs[..]).map_err(io_err("connect to", addr))?;
            let _ = s.set_nodelay(true);
            let raw = s.as_raw_fd();
            Ok(Channel {
                stream: Box::new(s),
                duplex: true,
                raw,
                child: None,
            })
        }
        MigrationUri::Fd(name) => Ok(fd_channel(named_fd(name, lookup)?, false)),
        MigrationUri::Exec(command) => spawn(command, true),
        MigrationUri::File(path) | MigrationUri::FileUffd(path) => Err(UriError::Io(
            "stream to",
            path.display().to_string(),
            io::Error::other("a file is a snapshot, not a stream"),
        )),
    }
}

/// The destination's side before the source has connected: a listening socket, or a
/// channel that is already there (a descriptor, a command's output).
pub enum Incoming {
    /// Waiting for the source to connect on a Unix socket (its path removed when done).
    Unix(UnixListener, PathBuf),
    /// Waiting for the source to connect over TCP.
    Tcp(TcpListener),
    /// Ready to read.
    Ready(Channel),
    /// A snapshot file.
    File(File, PathBuf),
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Incoming::Unix(..) => "Incoming::Unix",
            Incoming::Tcp(_) => "Incoming::Tcp",
            Incoming::Ready(_) => "Incoming::Ready",
            Incoming::File(..) => "Incoming::File",
        })
    }
}

impl Incoming {
    /// Sets up the destination's side of `uri`: binds and listens (so that a source started
    /// right after vmm finds it), or opens the descriptor, command or file.
    ///
    /// # Errors
    /// The address is in use, the file is missing, the command cannot run.
    pub fn listen(
        uri: &MigrationUri,
        lookup: &dyn Fn(&str) -> Option<OwnedFd>,
    ) -> Result<Self, UriError> {
        match uri {
            MigrationUri::Unix(path) => {
                let shown = path.display().to_string();
                // A socket file left by an earlier listener is replaced, as QEMU does (a
                // file of any other kind is not).
                if std::fs::symlink_metadata(path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    let _ = std::fs::remove_file(path);
                }
                let l = UnixListener::bind(path).map_err(io_err("listen on", &shown))?;
                Ok(Self::Unix(l, path.clone()))
            }
            MigrationUri::Tcp(addr) => {
                let l = TcpListener::bind(addr.as_str()).map_err(io_err("listen on", addr))?;
                Ok(Self::Tcp(l))
            }
            MigrationUri::Fd(name) => Ok(Self::Ready(fd_channel(named_fd(name, lookup)?, true))),
            MigrationUri::Exec(command) => Ok(Self::Ready(spawn(command, false)?)),
            MigrationUri::File(path) | MigrationUri::FileUffd(path) => {
                let shown = path.display().to_string();
                let f = File::open(path).map_err(io_err("open", &shown))?;
                Ok(Self::File(f, path.clone()))
            }
        }
    }

    /// A descriptor to wake a thread blocked in [`accept`](Self::accept) (shut down).
    pub fn raw(&self) -> RawFd {
        match self {
            Incoming::Unix(l, _) => l.as_raw_fd(),
            Incoming::Tcp(l) => l.as_raw_fd(),
            Incoming::Ready(c) => c.raw,
            Incoming::File(f, _) => f.as_raw_fd(),
        }
    }

    /// Waits for the source (one connection) and gives the stream. Not for files.
    ///
    /// # Errors
    /// Accepting failed.
    pub fn accept(self) -> Result<Channel, UriError> {
        match self {
            Incoming::Unix(l, path) => {
                let accepted = l.accept();
                let _ = std::fs::remove_file(&path);
                let (s, _) = accepted.map_err(io_err("accept on", &path.display().to_string()))?;
                let raw = s.as_raw_fd();
                Ok(Channel {
                    stream: Box::new(s),
                    duplex: true,
                    raw,
                    child: None,
                })
            }
            Incoming::Tcp(l) => {
                let (s, _) = l.accept().map_err(io_err("accept on", "tcp"))?;
                let _ = s.set_nodelay(true);
                let raw = s.as_raw_fd();
                Ok(Channel {
                    stream: Box::new(s),
                    duplex: true,
                    raw,
                    child: None,
                })
            }
            Incoming::Ready(c) => Ok(c),
            Incoming::File(_, path) => Err(UriError::Io(
                "stream from",
                path.display().to_string(),
                io::Error::other("a file is a snapshot, not a stream"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert_eq!(
            MigrationUri::parse("unix:/tmp/m").unwrap(),
            MigrationUri::Unix("/tmp/m".into())
        );
        assert_eq!(
            MigrationUri::parse("tcp:127.0.0.1:4444").unwrap(),
            MigrationUri::Tcp("127.0.0.1:4444".into())
        );
        assert_eq!(
            MigrationUri::parse("tcp:[::1]:4444").unwrap(),
            MigrationUri::Tcp("[::1]:4444".into())
        );
        assert_eq!(
            MigrationUri::parse("exec:cat > /tmp/x").unwrap(),
            MigrationUri::Exec("cat > /tmp/x".into())
        );
        assert_eq!(
            MigrationUri::parse("fd:migrate").unwrap(),
            MigrationUri::Fd("migrate".into())
        );
        assert_eq!(
            MigrationUri::parse("file:/tmp/snap").unwrap(),
            MigrationUri::File("/tmp/snap".into())
        );
        assert_eq!(
            MigrationUri::parse("file:/tmp/a,b,restore=uffd").unwrap(),
            MigrationUri::FileUffd("/tmp/a,b".into())
        );
        assert_eq!(
            MigrationUri::parse("file:/tmp/snap,restore=map").unwrap(),
            MigrationUri::File("/tmp/snap".into())
        );
        assert_eq!(
            MigrationUri::parse("file:/tmp/snap,restore=lazy")
                .unwrap_err()
                .to_string(),
            "Invalid restore mode 'lazy' of a file: URI (map or uffd)"
        );
    }

    #[test]
    fn bad_uris_say_why() {
        for (uri, text) in [
            (
                "rdma:1.2.3.4:5",
                "unknown migration protocol: rdma:1.2.3.4:5",
            ),
            ("nonsense", "unknown migration protocol: nonsense"),
            ("unix:", "Migration URI 'unix:' lacks its path"),
            (
                "tcp:localhost",
                "Migration URI 'tcp:localhost': expected tcp:HOST:PORT",
            ),
            (
                "tcp:localhost:http",
                "Migration URI 'tcp:localhost:http': expected tcp:HOST:PORT",
            ),
        ] {
            assert_eq!(MigrationUri::parse(uri).unwrap_err().to_string(), text);
        }
    }

    #[test]
    fn unknown_descriptor_names_are_refused() {
        let none = |_: &str| None;
        let e = connect(&MigrationUri::Fd("nosuch".into()), &none).unwrap_err();
        assert_eq!(
            e.to_string(),
            "File descriptor named 'nosuch' has not been found"
        );
    }

    #[test]
    fn unix_listen_and_connect_meet() {
        let dir = std::env::temp_dir().join(format!("vmm-uri-{}", std::process::id()));
        let uri = MigrationUri::Unix(dir.clone());
        let none = |_: &str| None;
        let incoming = Incoming::listen(&uri, &none).unwrap();
        let t = std::thread::spawn(move || {
            let mut c = incoming.accept().unwrap();
            let mut b = [0u8; 5];
            c.stream.read_exact(&mut b).unwrap();
            c.stream.write_all(b"ok").unwrap();
            b
        });
        let mut c = connect(&uri, &none).unwrap();
        assert!(c.duplex);
        c.stream.write_all(b"hello").unwrap();
        let mut r = [0u8; 2];
        c.stream.read_exact(&mut r).unwrap();
        assert_eq!(&r, b"ok");
        assert_eq!(&t.join().unwrap(), b"hello");
        assert!(
            !dir.exists(),
            "the listener's path is removed once accepted"
        );
    }

    #[test]
    fn exec_pipes_one_way() {
        crate::launcher::start_in_thread();
        let out = std::env::temp_dir().join(format!("vmm-exec-{}", std::process::id()));
        let uri = MigrationUri::Exec(format!("cat > {}", out.display()));
        let none = |_: &str| None;
        let mut c = connect(&uri, &none).unwrap();
        assert!(!c.duplex);
        c.stream.write_all(b"stream bytes").unwrap();
        let mut child = c.child.take().unwrap();
        drop(c);
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read(&out).unwrap(), b"stream bytes");
        let back =
            Incoming::listen(&MigrationUri::Exec(format!("cat {}", out.display())), &none).unwrap();
        let mut c = back.accept().unwrap();
        let mut s = String::new();
        c.stream.read_to_string(&mut s).unwrap();
        assert_eq!(s, "stream bytes");
        std::fs::remove_file(&out).unwrap();
    }
}
