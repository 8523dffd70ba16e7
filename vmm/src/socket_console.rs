// SPDX-License-Identifier: Apache-2.0
//! The serial console on a listening socket (QEMU's `-chardev socket,server=on` behind the
//! serial port, libvirt's `<serial type='unix'>`): one client at a time gets the guest's output
//! and types its input. As QEMU's socket chardev, the next client is accepted only once the
//! current one has left, and output is dropped while nobody is connected (or faster than the
//! client reads): a vCPU never waits for a console client.
//!
//! The main loop accepts and reads ([`SocketConsole::accept`], [`SocketConsole::read`]); the
//! vCPU writing COM1 writes through [`SocketConsoleWriter`]. Only the main loop closes a
//! client, after taking it out of its epoll set. Reads and writes are plain `read(2)` and
//! `write(2)`, the calls those threads' seccomp filters have for every descriptor.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use monitor::listener::{ListenError, Listener, Stream};
use monitor::SocketSpec;

/// A listening socket and the console client connected to it, if any.
#[derive(Debug)]
pub struct SocketConsole {
    listener: Listener,
    client: Mutex<Option<Stream>>,
}

/// What a read of the client found.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientInput {
    /// Bytes for COM1.
    Data(Vec<u8>),
    /// Nothing now.
    Nothing,
    /// The client left (or failed): the caller takes it out of epoll, then [`SocketConsole::close_client`].
    Closed,
}

impl SocketConsole {
    /// Listens on `spec` (a path, an inherited listening descriptor, or a TCP address).
    ///
    /// # Errors
    /// The socket cannot be created.
    pub fn bind(spec: &SocketSpec) -> Result<Self, ListenError> {
        Ok(Self {
            listener: Listener::bind(spec)?,
            client: Mutex::new(None),
        })
    }

    fn client(&self) -> MutexGuard<'_, Option<Stream>> {
        self.client.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The listening descriptor, for epoll.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Accepts a waiting client when none is connected; returns its descriptor for epoll.
    ///
    /// # Errors
    /// `accept` failed.
    pub fn accept(&self) -> io::Result<Option<RawFd>> {
        let mut client = self.client();
        if client.is_some() {
            return Ok(None);
        }
        let Some(stream) = self.listener.accept()? else {
            return Ok(None);
        };
        let fd = stream.as_raw_fd();
        *client = Some(stream);
        Ok(Some(fd))
    }

    /// Reads what the client typed (non-blocking).
    pub fn read(&self) -> ClientInput {
        let client = self.client();
        let Some(stream) = client.as_ref() else {
            return ClientInput::Closed;
        };
        let mut buf = [0u8; 256];
        // SAFETY: reading into a live buffer of its length from the client's open socket.
        let got = unsafe { libc::read(stream.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match got {
            0 => ClientInput::Closed,
            n if n > 0 => ClientInput::Data(buf[..n.unsigned_abs()].to_vec()),
            _ => match io::Error::last_os_error().kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => ClientInput::Nothing,
                _ => ClientInput::Closed,
            },
        }
    }

    /// Closes the client (already out of the caller's epoll set).
    pub fn close_client(&self) {
        self.client().take();
    }
}

/// The guest's output to the console's client: dropped without one, never blocking.
#[derive(Debug)]
pub struct SocketConsoleWriter(pub Arc<SocketConsole>);

impl Write for SocketConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let client = self.0.client();
        if let Some(stream) = client.as_ref() {
            // A full or broken connection loses the bytes (EAGAIN, EPIPE: SIGPIPE is ignored
            // in Rust programs); the main loop sees a broken one hang up and closes it.
            // SAFETY: writing a live buffer of its length to the client's open socket.
            unsafe { libc::write(stream.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    use monitor::Endpoint;

    use super::*;

    #[test]
    fn one_client_at_a_time_gets_output_and_sends_input() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let path = dir.as_path().join("console.sock");
        let console = Arc::new(
            SocketConsole::bind(&SocketSpec {
                endpoint: Endpoint::Unix(path.clone()),
                wait: false,
                max_clients: None,
            })
            .unwrap(),
        );
        let mut out = SocketConsoleWriter(console.clone());
        assert_eq!(out.write(b"nobody hears this").unwrap(), 17);
        let mut a = UnixStream::connect(&path).unwrap();
        let b = UnixStream::connect(&path).unwrap();
        let accepted = (0..100).find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            console.accept().unwrap()
        });
        assert!(accepted.is_some());
        // The second waits until the first leaves.
        assert_eq!(console.accept().unwrap(), None);
        out.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        a.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        a.write_all(b"ls\r").unwrap();
        let input = (0..100)
            .map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(5));
                console.read()
            })
            .find(|r| *r != ClientInput::Nothing);
        assert_eq!(input, Some(ClientInput::Data(b"ls\r".to_vec())));
        drop(a);
        let closed = (0..100)
            .map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(5));
                console.read()
            })
            .find(|r| *r != ClientInput::Nothing);
        assert_eq!(closed, Some(ClientInput::Closed));
        console.close_client();
        assert!(
            console.accept().unwrap().is_some(),
            "the waiting client is next"
        );
        drop(b);
    }
}
