// SPDX-License-Identifier: Apache-2.0
//! One client connection: its socket, its input splitter and backlog, its output buffer, and
//! the states its socket can be in. The monitor thread ([`crate::server`]) decides what runs;
//! this module only moves bytes and keeps the buffers small.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};

use event_manager::EventSet;

use crate::fds::Pending;
use crate::json_stream::{Item, JsonStream};
use crate::listener::Stream;
use crate::server::FdBudget;
use crate::signals::Connections;

/// Capacity a buffer may keep once it is empty again; a larger one (left by a large message)
/// is released.
const KEEP_CAPACITY: usize = 64 << 10;
/// Bytes read from a socket at a time. Each session gets one read per wake-up, so a client
/// sending a large message shares the monitor thread with the others.
pub const READ_CHUNK: usize = 64 << 10;

/// Output not yet written: a buffer and the offset of its first unwritten byte, so that
/// partial writes cost nothing (draining the front of a `Vec` on every write is quadratic).
#[derive(Debug, Default)]
pub struct OutBuf {
    buf: Vec<u8>,
    start: usize,
}

impl OutBuf {
    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a message.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            // Reclaim the written front before growing (amortized: at most the bytes written).
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The bytes to write next.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Marks `n` bytes written.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.clear();
        }
    }

    /// Drops everything, releasing a large buffer.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.buf.shrink_to(KEEP_CAPACITY);
    }
}

/// What reading a socket found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Bytes were fed to the splitter (how many).
    Data(usize),
    /// Nothing to read right now.
    Empty,
    /// The client closed its side (EOF): no more input, output may still be written.
    Closed,
    /// The socket failed: the client is gone.
    Failed,
}

/// A client connection.
pub struct Session {
    /// The socket.
    pub stream: Stream,
    /// The index of the listening socket it came from.
    pub socket: usize,
    /// The input splitter.
    pub reader: JsonStream,
    /// Items read but not yet handled (flow control holds them).
    pub backlog: VecDeque<Item>,
    /// In-band items with the main loop.
    pub inflight: usize,
    /// `qmp_capabilities` succeeded.
    pub negotiated: bool,
    /// The `oob` capability is enabled.
    pub oob: bool,
    /// Handles travel in canonical form (`explicit-handles`).
    pub explicit_handles: bool,
    /// The session receives the QEMU-shaped broadcast events (its default connections).
    pub default_connections: bool,
    /// Explicit signal connections.
    pub connections: Connections,
    /// Output not yet written.
    pub out: OutBuf,
    /// The epoll interest currently registered.
    pub interest: EventSet,
    /// The socket is in the epoll set.
    pub registered: bool,
    /// No more input will be read (EOF, or the client is gone).
    pub eof: bool,
    /// The client is gone: nothing can be written either. The session stays until the main
    /// loop has answered what it has of it.
    pub gone: bool,
    /// Descriptors received with `SCM_RIGHTS` that no `getfd` took yet (closed with the
    /// session).
    pub fds: Pending,
    /// A received descriptor among those the VMM keeps for itself is closed at once.
    pub fd_budget: Option<FdBudget>,
}

impl Session {
    /// A new session on a socket accepted from listening socket `socket`, registered for
    /// input.
    pub fn new(stream: Stream, socket: usize) -> Self {
        Self {
            stream,
            socket,
            reader: JsonStream::new(),
            backlog: VecDeque::new(),
            inflight: 0,
            negotiated: false,
            oob: false,
            explicit_handles: false,
            default_connections: true,
            connections: Connections::default(),
            out: OutBuf::default(),
            interest: EventSet::IN,
            registered: true,
            eof: false,
            gone: false,
            fds: Pending::default(),
            fd_budget: None,
        }
    }

    /// Memory held for this client: a partly read message and unsent output.
    pub fn buffered(&self) -> usize {
        self.reader.pending_len() + self.out.len()
    }

    /// Reads one chunk from the socket into the splitter; completed items go to the backlog.
    /// On a Unix socket, descriptors that came with the bytes are kept in [`Self::fds`].
    pub fn read_chunk(&mut self, buf: &mut [u8]) -> ReadOutcome {
        let read = match &self.stream {
            Stream::Unix(s) => crate::scm::recv_with_fds(s.as_fd(), buf, 0).map(|r| {
                let budget = self.fd_budget;
                let (kept, refused): (Vec<_>, Vec<_>) = r
                    .fds
                    .into_iter()
                    .partition(|fd| budget.is_none_or(|b| b.admits(fd.as_raw_fd())));
                self.fds
                    .receive(kept, usize::from(r.truncated) + refused.len());
                r.len
            }),
            Stream::Tcp(_) => self.stream.read(buf),
        };
        match read {
            Ok(0) => ReadOutcome::Closed,
            Ok(n) => {
                let items = self.reader.feed(&buf[..n]);
                self.backlog.extend(items);
                ReadOutcome::Data(n)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                ReadOutcome::Empty
            }
            Err(_) => ReadOutcome::Failed,
        }
    }

    /// Writes as much output as the socket takes. False when the socket failed (the client
    /// is gone).
    pub fn flush(&mut self) -> bool {
        while !self.out.is_empty() {
            match self.stream.write(self.out.pending()) {
                Ok(0) => return true,
                Ok(n) => self.out.consume(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        true
    }

    /// The client is gone: drop its output and read nothing more.
    pub fn mark_gone(&mut self) {
        self.gone = true;
        self.eof = true;
        self.out.clear();
    }

    /// Done with: nothing more to read, nothing with the main loop, nothing waiting.
    pub fn finished(&self) -> bool {
        self.eof && self.inflight == 0 && self.backlog.is_empty()
    }

    /// The epoll interest this session needs now.
    pub fn wanted_interest(&self, max_inflight: usize) -> EventSet {
        let mut want = EventSet::empty();
        if !self.eof && self.inflight < max_inflight && self.backlog.is_empty() {
            want |= EventSet::IN;
        }
        if !self.out.is_empty() && !self.gone {
            want |= EventSet::OUT;
        }
        want
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_passed_with_the_input_are_kept() {
        use std::os::unix::net::UnixStream;
        let (client, server) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut s = Session::new(Stream::Unix(server), 0);
        let (a, _b) = UnixStream::pair().unwrap();
        crate::scm::send_with_fds(client.as_fd(), b" ", &[a.as_fd()]).unwrap();
        (&client)
            .write_all(br#"{"execute": "getfd", "arguments": {"fdname": "x"}}"#)
            .unwrap();
        let mut buf = vec![0u8; READ_CHUNK];
        assert_eq!(s.read_chunk(&mut buf), ReadOutcome::Data(1));
        assert_eq!(s.fds.len(), 1);
        assert!(matches!(s.read_chunk(&mut buf), ReadOutcome::Data(_)));
        assert_eq!(
            s.backlog.len(),
            1,
            "the command after the descriptor's byte"
        );
        assert_eq!(s.read_chunk(&mut buf), ReadOutcome::Empty);
        assert!(s.fds.take().take().is_some_and(|r| r.is_ok()));
        // A descriptor among the VMM's reserve is closed at once, and counted.
        s.fd_budget = Some(FdBudget {
            limit: 64,
            reserve: 64,
        });
        crate::scm::send_with_fds(client.as_fd(), b" ", &[a.as_fd(), a.as_fd()]).unwrap();
        assert_eq!(s.read_chunk(&mut buf), ReadOutcome::Data(1));
        assert!(s.fds.is_empty());
        assert!(matches!(s.fds.take().take(), Some(Err(2))));
        drop(client);
        assert_eq!(s.read_chunk(&mut buf), ReadOutcome::Closed);
    }

    #[test]
    fn out_buf_partial_writes_and_release() {
        let mut b = OutBuf::default();
        b.push(b"hello ");
        b.push(b"world");
        assert_eq!(b.pending(), b"hello world");
        b.consume(6);
        assert_eq!(b.pending(), b"world");
        b.push(b"!");
        assert_eq!(b.pending(), b"world!");
        assert_eq!(b.len(), 6);
        b.consume(6);
        assert!(b.is_empty());

        b.push(&vec![0u8; 8 << 20]);
        b.consume(8 << 20);
        assert!(b.buf.capacity() <= KEEP_CAPACITY, "{}", b.buf.capacity());
    }

    #[test]
    fn out_buf_reclaims_the_written_front() {
        let mut b = OutBuf::default();
        b.push(&[1; 100]);
        b.consume(60);
        b.push(&[2; 10]);
        // The 60 written bytes were reclaimed before growing.
        assert_eq!(b.start, 0);
        let mut expected = vec![1; 40];
        expected.extend([2; 10]);
        assert_eq!(b.pending(), expected.as_slice());
    }
}
