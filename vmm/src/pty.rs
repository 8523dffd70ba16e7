// SPDX-License-Identifier: Apache-2.0
//! A pseudo-terminal for the guest's serial console (QEMU's `-chardev pty`): vmm holds the
//! master side; whoever opens the slave (`/dev/pts/N`, e.g. `virsh console`) talks to the
//! guest.
//!
//! As in QEMU, the slave is opened once to put it in raw mode (no echo, no line editing, no
//! CR/LF translation: the guest's output must not come back as its input) and closed again.
//! While nobody has the slave open, the master reports a hang-up: guest output is then
//! dropped instead of piling up for a later reader, and the main loop stops watching the
//! master for input until a reader appears. The main loop finds out ([`Pty::connected`], a
//! `poll`) and publishes it ([`Pty::set_reader`]) for the vCPU that writes, which makes no
//! other call than `write`. Output never blocks that vCPU: bytes the terminal has no room for
//! are dropped, as on a jammed line.

use std::ffi::CStr;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Errors creating the pseudo-terminal.
#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    /// A step of the allocation failed (`posix_openpt`, `grantpt`, ...).
    #[error("Cannot create a pseudo-terminal ({0} failed)")]
    Create(&'static str, #[source] io::Error),
    /// The slave could not be opened to put it in raw mode.
    #[error("Cannot set up the pseudo-terminal '{0}'")]
    Slave(PathBuf, #[source] io::Error),
}

/// The master side of a pseudo-terminal and the path of its slave.
#[derive(Debug)]
pub struct Pty {
    master: OwnedFd,
    path: PathBuf,
    /// Someone has the slave open, as the main loop last found.
    reader: AtomicBool,
}

/// Turns a libc return value into an error naming the failed step.
fn check(ret: libc::c_int, step: &'static str) -> Result<libc::c_int, PtyError> {
    if ret < 0 {
        Err(PtyError::Create(step, io::Error::last_os_error()))
    } else {
        Ok(ret)
    }
}

impl Pty {
    /// Allocates a pseudo-terminal, puts its slave in raw mode and makes the master
    /// non-blocking.
    ///
    /// # Errors
    /// Fails when the host has no free pseudo-terminal or refuses a step.
    pub fn open() -> Result<Self, PtyError> {
        // SAFETY: posix_openpt has no memory preconditions; the result is checked.
        let fd = check(
            unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) },
            "posix_openpt",
        )?;
        // SAFETY: fd is a new descriptor that nothing else owns.
        let master = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: grantpt and unlockpt take the master's descriptor; results are checked.
        check(unsafe { libc::grantpt(fd) }, "grantpt")?;
        // SAFETY: as above.
        check(unsafe { libc::unlockpt(fd) }, "unlockpt")?;
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: ptsname_r writes a NUL-terminated name of at most name.len() bytes.
        let ret = unsafe { libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) };
        if ret != 0 {
            return Err(PtyError::Create(
                "ptsname_r",
                io::Error::from_raw_os_error(ret),
            ));
        }
        // SAFETY: ptsname_r succeeded, so name holds a NUL-terminated string.
        let path = PathBuf::from(
            unsafe { CStr::from_ptr(name.as_ptr()) }
                .to_string_lossy()
                .into_owned(),
        );
        make_raw(&path).map_err(|e| PtyError::Slave(path.clone(), e))?;
        // SAFETY: F_GETFL on the owned master; the result is checked.
        let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) }, "fcntl")?;
        // SAFETY: F_SETFL on the owned master; the result is checked.
        let ret = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
        check(ret, "fcntl")?;
        Ok(Self {
            master,
            path,
            reader: AtomicBool::new(false),
        })
    }

    /// The slave's path (`/dev/pts/N`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Publishes whether someone has the slave open, for [`PtyWriter`].
    pub fn set_reader(&self, present: bool) {
        self.reader.store(present, Ordering::Release);
    }

    /// Whether someone has the slave open (the master reports no hang-up), asked now.
    pub fn connected(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.master.as_raw_fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: one live pollfd, timeout 0: poll only reports the current state.
        let ret = unsafe { libc::poll(&mut pfd, 1, 0) };
        ret >= 0 && pfd.revents & libc::POLLHUP == 0
    }

    /// Reads what the slave's user typed (non-blocking): `Ok(0)` when there is nothing, or
    /// nobody is connected.
    ///
    /// # Errors
    /// Read errors other than "would block" and the hang-up (EIO) of a missing reader.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reading into a live buffer of the given length.
        let got =
            unsafe { libc::read(self.master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if got >= 0 {
            return Ok(got.unsigned_abs());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EIO) => Ok(0),
            _ => Err(e),
        }
    }
}

impl AsRawFd for Pty {
    fn as_raw_fd(&self) -> RawFd {
        self.master.as_raw_fd()
    }
}

/// Opens the slave once and sets raw mode on it.
fn make_raw(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)?;
    // SAFETY: a zeroed termios is a valid value for tcgetattr to fill.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr/tcsetattr on the open slave with a live termios; cfmakeraw only
    // edits the struct.
    unsafe {
        if libc::tcgetattr(slave.as_raw_fd(), &mut tio) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::cfmakeraw(&mut tio);
        if libc::tcsetattr(slave.as_raw_fd(), libc::TCSAFLUSH, &tio) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The guest's output into the pty: dropped while nobody reads, never blocking.
#[derive(Debug)]
pub struct PtyWriter(pub Arc<Pty>);

impl Write for PtyWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.0.reader.load(Ordering::Acquire) {
            return Ok(buf.len());
        }
        // SAFETY: writing from a live buffer of the given length to the owned master.
        let put = unsafe { libc::write(self.0.master.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if put >= 0 {
            return Ok(put.unsigned_abs());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // No room, or the reader just left: the bytes are lost, as QEMU drops them.
            Some(libc::EAGAIN) | Some(libc::EIO) => Ok(buf.len()),
            _ => Err(e),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn output_reaches_a_reader_and_is_dropped_without_one() {
        let pty = Arc::new(Pty::open().unwrap());
        assert!(pty.path().starts_with("/dev/pts"), "{:?}", pty.path());
        assert!(!pty.connected(), "nobody has the slave open yet");
        let mut w = PtyWriter(pty.clone());
        // Nobody reads: accepted and dropped.
        assert_eq!(w.write(b"lost\n").unwrap(), 5);
        let mut slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pty.path())
            .unwrap();
        assert!(pty.connected());
        pty.set_reader(true);
        w.write_all(b"hello\n").unwrap();
        let mut buf = [0u8; 6];
        slave.read_exact(&mut buf).unwrap();
        // Raw mode: no CR added, and nothing of the earlier output.
        assert_eq!(&buf, b"hello\n");
        // Input typed on the slave is read from the master, not echoed back.
        slave.write_all(b"ab").unwrap();
        let mut got = Vec::new();
        for _ in 0..100 {
            let mut b = [0u8; 8];
            let n = pty.read(&mut b).unwrap();
            got.extend_from_slice(&b[..n]);
            if got.len() >= 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, b"ab");
        drop(slave);
        assert!(!pty.connected());
        assert_eq!(pty.read(&mut [0u8; 4]).unwrap(), 0);
    }
}
