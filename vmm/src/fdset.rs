// SPDX-License-Identifier: Apache-2.0
//! QEMU's file descriptor sets (`-add-fd fd=N,set=S[,opaque=TEXT]`): descriptors the process
//! inherited, grouped in numbered sets. A file name `/dev/fdset/S` then stands for a duplicate
//! of the descriptor of set S whose access mode is the one asked for; that is how libvirt hands
//! over files it opened itself (a serial console's log behind virtlogd, a file serial).
//!
//! The sets belong to the process, as the descriptors do: they are registered while the
//! command line is read, before any thread starts, and only read afterwards.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The prefix of a file name that refers to a descriptor set.
const PREFIX: &str = "/dev/fdset/";

/// Errors of `-add-fd` and of opening `/dev/fdset/S`.
#[derive(Debug, thiserror::Error)]
pub enum FdSetError {
    /// Standard input, output and error stay what they are.
    #[error("fd cannot be a standard I/O stream")]
    StandardStream,
    /// The descriptor is not open.
    #[error("fd={0} is not an open file descriptor")]
    NotOpen(RawFd),
    /// The same descriptor twice.
    #[error("fd={0} is already in a descriptor set")]
    Twice(RawFd),
    /// `/dev/fdset/` followed by something other than a number.
    #[error("'{0}' does not name a descriptor set (/dev/fdset/N)")]
    BadName(PathBuf),
    /// No descriptor of the set has the access mode asked for.
    #[error("Descriptor set {set} has no descriptor open for {mode}")]
    NoMatch {
        /// The set.
        set: u64,
        /// `reading`, `writing` or `reading and writing`.
        mode: &'static str,
    },
    /// Duplicating the descriptor failed.
    #[error("Cannot duplicate a descriptor of set {0}")]
    Dup(u64, #[source] io::Error),
}

#[derive(Debug)]
struct Entry {
    set: u64,
    fd: OwnedFd,
}

static SETS: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

fn sets() -> MutexGuard<'static, Vec<Entry>> {
    SETS.lock().unwrap_or_else(|e| e.into_inner())
}

fn access_flags(fd: RawFd) -> Option<libc::c_int> {
    // SAFETY: F_GETFL only reads the descriptor's status flags; -1 means it is not open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    (flags >= 0).then_some(flags & libc::O_ACCMODE)
}

/// Adds the inherited descriptor `fd` to set `set` (`-add-fd`); the set owns it from now on
/// (close-on-exec). `-add-fd`'s `opaque` text is for the manager's bookkeeping: vmm keeps
/// nothing of it, as it has no `query-fdsets` to show it in.
///
/// # Errors
/// A standard stream, a descriptor that is not open, or one given twice.
pub fn add(set: u64, fd: RawFd) -> Result<(), FdSetError> {
    if fd <= libc::STDERR_FILENO {
        return Err(FdSetError::StandardStream);
    }
    if access_flags(fd).is_none() {
        return Err(FdSetError::NotOpen(fd));
    }
    let mut sets = sets();
    if sets.iter().any(|e| e.fd.as_raw_fd() == fd) {
        return Err(FdSetError::Twice(fd));
    }
    // SAFETY: F_SETFD on an open descriptor (checked above).
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the descriptor is open, was handed to this process for this set, and is not
    // owned by anything else here (checked above that no set holds it).
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    sets.push(Entry { set, fd });
    Ok(())
}

/// The set a file name refers to, if it is `/dev/fdset/S`.
///
/// # Errors
/// [`FdSetError::BadName`] for `/dev/fdset/` followed by anything but a number.
pub fn set_of(path: &Path) -> Result<Option<u64>, FdSetError> {
    let Some(rest) = path.to_str().and_then(|p| p.strip_prefix(PREFIX)) else {
        return Ok(None);
    };
    rest.parse()
        .map(Some)
        .map_err(|_| FdSetError::BadName(path.to_owned()))
}

/// A duplicate of the descriptor of `set` opened with access mode `mode` (`O_RDONLY`,
/// `O_WRONLY` or `O_RDWR`), as QEMU's `/dev/fdset/` lookup.
///
/// # Errors
/// No such descriptor, or `dup` failed.
pub fn dup(set: u64, mode: libc::c_int) -> Result<File, FdSetError> {
    let sets = sets();
    let entry = sets
        .iter()
        .find(|e| e.set == set && access_flags(e.fd.as_raw_fd()) == Some(mode))
        .ok_or(FdSetError::NoMatch {
            set,
            mode: match mode {
                libc::O_RDONLY => "reading",
                libc::O_WRONLY => "writing",
                _ => "reading and writing",
            },
        })?;
    let fd = entry.fd.try_clone().map_err(|e| FdSetError::Dup(set, e))?;
    Ok(File::from(fd))
}

/// Opens `path` for writing output (a console, a log): created or truncated, or appended to
/// with `append`; `/dev/fdset/S` is a duplicate of the set's descriptor open for writing (or
/// reading and writing), used as it is.
///
/// # Errors
/// The open, or the descriptor set lookup, failed.
pub fn open_output(path: &Path, append: bool) -> io::Result<File> {
    let set = set_of(path).map_err(io::Error::other)?;
    let Some(set) = set else {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true);
        if append {
            o.append(true);
        } else {
            o.truncate(true);
        }
        return o.open(path);
    };
    dup(set, libc::O_WRONLY)
        .or_else(|_| dup(set, libc::O_RDWR))
        .map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, Write};
    use std::os::fd::IntoRawFd;

    use super::*;

    #[test]
    fn sets_hand_out_duplicates_by_access_mode() {
        let f = vmm_sys_util::tempfile::TempFile::new().unwrap();
        let path = f.as_path().to_owned();
        let w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let r = File::open(&path).unwrap();
        let (w, r) = (w.into_raw_fd(), r.into_raw_fd());
        add(7, w).unwrap();
        add(7, r).unwrap();
        assert!(matches!(add(8, w), Err(FdSetError::Twice(n)) if n == w));
        assert!(matches!(add(8, 2), Err(FdSetError::StandardStream)));
        assert!(matches!(add(8, 999_999), Err(FdSetError::NotOpen(_))));

        let mut out = open_output(Path::new("/dev/fdset/7"), true).unwrap();
        out.write_all(b"through the set").unwrap();
        let mut back = dup(7, libc::O_RDONLY).unwrap();
        back.rewind().unwrap();
        let mut s = String::new();
        back.read_to_string(&mut s).unwrap();
        assert_eq!(s, "through the set");
        assert!(matches!(
            dup(7, libc::O_RDWR),
            Err(FdSetError::NoMatch { set: 7, .. })
        ));
        assert!(open_output(Path::new("/dev/fdset/9"), false).is_err());
        assert!(matches!(
            set_of(Path::new("/dev/fdset/x")),
            Err(FdSetError::BadName(_))
        ));
        assert_eq!(set_of(Path::new("/tmp/x")).unwrap(), None);
    }
}
