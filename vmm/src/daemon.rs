// SPDX-License-Identifier: Apache-2.0
//! QEMU's `-daemonize` and `-pidfile`.
//!
//! `-daemonize` forks before anything else happens (no thread exists yet): the parent waits
//! until the child says it is ready, that is once its monitor sockets listen, and then exits 0;
//! if the child fails first, its one-line error is already on the shared stderr and the parent
//! exits 1. The child leaves the parent's session and, once ready, its standard streams point
//! at `/dev/null`. A caller such as libvirt can therefore connect to the monitor as soon as the
//! command it ran has exited.
//!
//! `-pidfile` writes the process id (of the child, when daemonized) to a file that stays
//! locked while vmm runs, so that two vmm (or QEMU) processes cannot share one, and is removed
//! when vmm exits.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Errors of `-daemonize` and `-pidfile`.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// pipe, fork or setsid failed.
    #[error("Cannot daemonize ({0} failed)")]
    Daemonize(&'static str, #[source] io::Error),
    /// The pid file cannot be opened or written.
    #[error("Cannot write pid file '{0}'")]
    Pidfile(PathBuf, #[source] io::Error),
    /// Another process holds the pid file.
    #[error("Cannot lock pid file '{0}': another process is using it")]
    PidfileLocked(PathBuf),
}

/// The child's end of the pipe its waiting parent reads.
#[derive(Debug)]
pub struct Ready(File);

impl Ready {
    /// Tells the parent the child is ready (the parent exits 0) and detaches the child's
    /// standard streams.
    pub fn notify(mut self) {
        let _ = self.0.write_all(&[1]);
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            for fd in 0..=2 {
                // SAFETY: dup2 onto the standard descriptors, which stay open (now on
                // /dev/null); nothing in the process holds a Rust owner of them.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
    }
}

/// Forks. Returns in the child only, with what [`Ready::notify`] needs; the parent waits and
/// exits. Call before any thread is started.
///
/// # Errors
/// The pipe, the fork or the new session failed (in the process that called it).
pub fn daemonize() -> Result<Ready, DaemonError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array; the result is checked.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(DaemonError::Daemonize("pipe", io::Error::last_os_error()));
    }
    // SAFETY: both descriptors are new and owned here only.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the process has a single thread (the caller's contract), so the child may run
    // any code after fork.
    match unsafe { libc::fork() } {
        -1 => Err(DaemonError::Daemonize("fork", io::Error::last_os_error())),
        0 => {
            drop(read_end);
            // SAFETY: setsid has no memory preconditions.
            if unsafe { libc::setsid() } < 0 {
                return Err(DaemonError::Daemonize("setsid", io::Error::last_os_error()));
            }
            Ok(Ready(File::from(write_end)))
        }
        _child => {
            drop(write_end);
            let mut byte = [0u8; 1];
            let ready = matches!(File::from(read_end).read(&mut byte), Ok(1));
            // The child reported its own failure; the parent only passes the verdict on.
            std::process::exit(if ready { 0 } else { 1 });
        }
    }
}

/// A locked pid file, removed on drop.
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    _file: File,
}

impl Pidfile {
    /// Creates (or takes over) `path`, locks it and writes this process's id.
    ///
    /// # Errors
    /// The file cannot be opened, locked or written.
    pub fn create(path: &Path) -> Result<Self, DaemonError> {
        use std::os::unix::fs::OpenOptionsExt;
        let fail = |e| DaemonError::Pidfile(path.to_owned(), e);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(fail)?;
        let lock = libc::flock {
            l_type: libc::F_WRLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        // SAFETY: F_OFD_SETLK with a live flock struct on the open file.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) } != 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EACCES) => {
                    DaemonError::PidfileLocked(path.to_owned())
                }
                _ => fail(e),
            });
        }
        file.set_len(0).map_err(fail)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(fail)?;
        Ok(Self {
            path: path.to_owned(),
            _file: file,
        })
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfile_is_written_locked_and_removed() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let path = dir.as_path().join("vmm.pid");
        std::fs::write(&path, "stale contents that are longer\n").unwrap();
        let p = Pidfile::create(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert!(matches!(
            Pidfile::create(&path),
            Err(DaemonError::PidfileLocked(_))
        ));
        drop(p);
        assert!(!path.exists());
        assert!(matches!(
            Pidfile::create(Path::new("/nonexistent/dir/x.pid")),
            Err(DaemonError::Pidfile(..))
        ));
    }
}
