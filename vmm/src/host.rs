// SPDX-License-Identifier: Apache-2.0
//! The host's limits on the process: vmm raises its open-file limit as far as the host
//! allows at start, and keeps part of it for its own needs so that QMP clients cannot take
//! every descriptor (see [`monitor::FdBudget`]).

use std::io;

/// Descriptors kept for vmm's own needs beyond its disks' queues: `blockdev-add` opens (with
/// the lock probe's transient `/dev/null`), `qmp-job` completions, and slack.
pub const FD_RESERVE_BASE: u64 = 64;
/// Descriptors kept per disk queue, which opens about ten when the guest's driver makes it
/// ready (its I/O thread's epoll and kill eventfd, the request pool's eventfd, the backend
/// watcher's retry and yank eventfds, the throttle timerfd, the io_uring and its eventfd:
/// 10 measured with `aio=io_uring`), with slack.
pub const FD_PER_QUEUE: u64 = 12;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (or, when that is unlimited, to the
/// kernel's `fs.nr_open`), as a VMM with many clients and disks needs, and returns the soft
/// limit in force afterwards.
///
/// # Errors
/// The limit cannot be read. A refused raise is not an error: the old limit stays.
pub fn raise_open_files() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the live local `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let target = if lim.rlim_max == libc::RLIM_INFINITY {
        // The kernel refuses a descriptor limit above fs.nr_open.
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(lim.rlim_cur)
    } else {
        lim.rlim_max
    };
    if target > lim.rlim_cur {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit from the live local `raised`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = target;
        }
    }
    Ok(lim.rlim_cur)
}

/// The descriptors QMP clients may not take, for a VM whose disks have `queues` queues in
/// all: [`FD_RESERVE_BASE`] plus [`FD_PER_QUEUE`] for each queue (a queue's descriptors are
/// opened when the guest's driver makes it ready, and again after a reset).
pub fn fd_reserve(queues: u64) -> u64 {
    FD_RESERVE_BASE + FD_PER_QUEUE * queues
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> libc::rlimit {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into the live local `lim`.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        lim
    }

    #[test]
    fn raise_reaches_the_hard_limit_and_is_idempotent() {
        // Each test runs in a process of its own (nextest), so the raise stays here.
        let raised = raise_open_files().unwrap();
        let now = limits();
        assert_eq!(raised, now.rlim_cur);
        if now.rlim_max != libc::RLIM_INFINITY {
            assert_eq!(raised, now.rlim_max);
        }
        assert_eq!(raise_open_files().unwrap(), raised);
    }

    #[test]
    fn reserve_grows_with_queues() {
        assert_eq!(fd_reserve(0), FD_RESERVE_BASE);
        assert_eq!(fd_reserve(1), FD_RESERVE_BASE + FD_PER_QUEUE);
        // The largest machine: 18 disks of 16 queues.
        assert_eq!(fd_reserve(18 * 16), 64 + 12 * 288);
    }
}
