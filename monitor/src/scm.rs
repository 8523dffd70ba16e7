// SPDX-License-Identifier: Apache-2.0
//! Descriptors over Unix sockets (`SCM_RIGHTS`): what a QMP client passes before `getfd`,
//! and what vmm's launcher process hands back.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The most descriptors one message may carry here (the kernel's `SCM_MAX_FD` is 253).
pub const MAX_FDS_PER_MESSAGE: usize = 16;

/// What [`recv_with_fds`] read.
#[derive(Debug, Default)]
pub struct Received {
    /// Bytes read into the buffer (0: end of file).
    pub len: usize,
    /// The descriptors that came with them (close-on-exec).
    pub fds: Vec<OwnedFd>,
    /// The sender passed more descriptors than fit: the kernel closed the rest.
    pub truncated: bool,
}

/// Control buffer of [`MAX_FDS_PER_MESSAGE`] descriptors, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct ControlBuf([u8; 128]);

const _: () = assert!(
    // CMSG_SPACE(16 * 4) = 16 (header) + 64, rounded to 8.
    std::mem::size_of::<ControlBuf>() >= 16 + 4 * MAX_FDS_PER_MESSAGE
);

/// Reads once from `fd` (a Unix socket) into `buf`, taking any descriptors that came along.
/// `flags` are `recvmsg`'s (`MSG_DONTWAIT`, ...); `MSG_CMSG_CLOEXEC` is always added.
///
/// # Errors
/// `recvmsg` failed (`WouldBlock` included).
pub fn recv_with_fds(fd: BorrowedFd<'_>, buf: &mut [u8], flags: i32) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = ControlBuf([0; 128]);
    // SAFETY: an all-zero msghdr is valid (null name, no iovecs); fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len() as _;
    // SAFETY: msg points at a live iovec over `buf` and at `control`, both outliving the call.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within
    // msg_controllen; each SCM_RIGHTS payload is an array of descriptors now ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let raw = std::ptr::read_unaligned(data.add(i));
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Received {
        len: n as usize,
        fds,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// Sends `data` on `fd` (a Unix socket) with `fds` attached (at most
/// [`MAX_FDS_PER_MESSAGE`]). Returns the bytes sent.
///
/// # Errors
/// Too many descriptors, or `sendmsg` failed.
pub fn send_with_fds(fd: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    let mut control = ControlBuf([0; 128]);
    // SAFETY: as in recv_with_fds.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = std::mem::size_of_val(fds) as u32;
        msg.msg_control = control.0.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is arithmetic.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload) } as _;
        // SAFETY: the buffer holds CMSG_SPACE(payload) bytes (checked at compile time for
        // MAX_FDS_PER_MESSAGE), so the header and its data fit.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, f) in fds.iter().enumerate() {
                std::ptr::write_unaligned(data.add(i), f.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: msg points at live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn descriptors_travel_with_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let (p, q) = UnixStream::pair().unwrap();
        send_with_fds(a.as_fd(), b" ", &[p.as_fd(), q.as_fd()]).unwrap();
        (&a).write_all(b"more").unwrap();
        let mut buf = [0u8; 16];
        let r = recv_with_fds(b.as_fd(), &mut buf, 0).unwrap();
        assert_eq!(r.len, 1, "a message with descriptors is read on its own");
        assert_eq!(r.fds.len(), 2);
        assert!(!r.truncated);
        // SAFETY: F_GETFD on a descriptor we own.
        let flags = unsafe { libc::fcntl(r.fds[0].as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        let r = recv_with_fds(b.as_fd(), &mut buf, 0).unwrap();
        assert_eq!(&buf[..r.len], b"more");
        assert!(r.fds.is_empty());
        drop(a);
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf, 0).unwrap().len, 0);
    }

    #[test]
    fn too_many_descriptors_are_refused_by_the_sender() {
        let (a, _b) = UnixStream::pair().unwrap();
        let many: Vec<_> = (0..=MAX_FDS_PER_MESSAGE).map(|_| a.as_fd()).collect();
        assert!(send_with_fds(a.as_fd(), b"x", &many).is_err());
    }
}
