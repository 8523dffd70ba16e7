// SPDX-License-Identifier: Apache-2.0
//! seccomp-bpf filters, one per kind of thread, installed by each thread on itself before it
//! runs guest code or reads client input (`--seccomp on|log|off`, QEMU's `-sandbox`).
//!
//! Filters are allowlists of system calls (no argument checks yet). A few calls that the C
//! library makes on its own in any thread are refused with `EACCES` instead of trapping:
//! glibc opens `/proc/sys/vm/overcommit_memory` the first time it trims a thread's heap, and
//! copes with the refusal; that is a second, stacked filter (the kernel takes the stricter
//! answer of the two). A thread inherits the
//! filter of the thread that created it and adds its own, so a thread that creates others
//! allows what they need: the main thread (which creates the `qmp-job` and `vm-teardown`
//! threads) allows what those do; a block I/O thread (which creates its request threads)
//! allows what they do. Threads that must stay narrow are created before the main thread
//! confines itself: the vCPUs, the monitor, the block I/O threads (created with their device).
//!
//! With `on`, a forbidden call raises SIGSYS; the handler writes one line naming the thread's
//! kind and the call's number to stderr and ends the process with status 159 (128 + SIGSYS,
//! as a process QEMU's sandbox kills). With `log` the kernel logs the call and lets it run
//! (`SECCOMP_RET_LOG`); with `off` no filter is installed.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// What `--seccomp` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SeccompMode {
    /// Forbidden calls end the process with a one-line error.
    #[default]
    On,
    /// Forbidden calls are logged by the kernel and allowed.
    Log,
    /// No filters.
    Off,
}

/// The kinds of threads, each with its filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main loop (and what it creates: `qmp-job`, `vm-teardown`).
    Main,
    /// A vCPU thread.
    Vcpu,
    /// The QMP monitor thread.
    Monitor,
    /// A block device queue's I/O thread (and what it creates: its request threads).
    BlockIo,
    /// A block request thread (`aio=threads`).
    BlockRequest,
    /// A `qmp-job` thread: the open, `stat` or close of a user's file, or a drain.
    QmpJob,
    /// The `vm-teardown` thread: drops the machine at exit.
    Teardown,
    /// The `migration` thread (created at start-up, before the main thread confines
    /// itself): the stream's socket or file, guest RAM and the dirty log.
    Migration,
    /// The `uffd` thread (created at start-up too): a postcopy destination's or a lazy
    /// restore's missing-page faults, the return path's writes, a snapshot's reads.
    Uffd,
}

impl ThreadKind {
    /// Every kind.
    #[cfg(test)]
    pub const ALL: [ThreadKind; 9] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Monitor,
        ThreadKind::BlockIo,
        ThreadKind::BlockRequest,
        ThreadKind::QmpJob,
        ThreadKind::Teardown,
        ThreadKind::Migration,
        ThreadKind::Uffd,
    ];

    /// The name in messages.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Monitor => "qmp-monitor",
            ThreadKind::BlockIo => "block I/O",
            ThreadKind::BlockRequest => "block request",
            ThreadKind::QmpJob => "qmp-job",
            ThreadKind::Teardown => "vm-teardown",
            ThreadKind::Migration => "migration",
            ThreadKind::Uffd => "uffd",
        }
    }

    /// The calls refused with `EACCES` rather than trapped (see the module's doc).
    pub fn refused(self) -> &'static [i64] {
        match self {
            ThreadKind::Main | ThreadKind::QmpJob | ThreadKind::Migration => &[],
            _ => &[libc::SYS_openat],
        }
    }

    /// The system calls this kind may make.
    pub fn allowed(self) -> Vec<i64> {
        let mut calls = COMMON.to_vec();
        calls.extend_from_slice(match self {
            ThreadKind::Main => MAIN,
            ThreadKind::Vcpu => VCPU,
            ThreadKind::Monitor => MONITOR,
            ThreadKind::BlockIo => BLOCK_IO,
            ThreadKind::BlockRequest => BLOCK_REQUEST,
            ThreadKind::QmpJob => QMP_JOB,
            ThreadKind::Teardown => TEARDOWN,
            ThreadKind::Migration => MIGRATION,
            ThreadKind::Uffd => UFFD,
        });
        if matches!(self, ThreadKind::Main | ThreadKind::BlockIo) {
            // They create threads, which inherit their filter and then add their own.
            calls.extend_from_slice(CREATE_THREADS);
        }
        if self == ThreadKind::Main {
            calls.extend_from_slice(QMP_JOB);
            calls.extend_from_slice(BLOCK_REQUEST);
        }
        if self == ThreadKind::BlockIo {
            calls.extend_from_slice(BLOCK_REQUEST);
        }
        calls.extend_from_slice(self.refused());
        calls.sort_unstable();
        calls.dedup();
        calls
    }
}

/// Errors installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be built (a bug in the tables).
    #[error("Cannot build the seccomp filter of the {0} thread")]
    Build(&'static str, #[source] seccompiler::BackendError),
    /// The kernel refused it.
    #[error("Cannot install the seccomp filter of the {0} thread")]
    Install(&'static str, #[source] seccompiler::Error),
    /// The SIGSYS handler could not be installed.
    #[error("Cannot install the seccomp violation handler")]
    Handler(#[source] std::io::Error),
}

/// Calls every thread makes: memory, locks, time, signals, exit, I/O on descriptors it has.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_sched_yield,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_restart_syscall,
    libc::SYS_getrandom,
    libc::SYS_fcntl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_tgkill,
];

/// A thread creating threads: the stack, the clone, and what the new thread does first.
const CREATE_THREADS: &[i64] = &[
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_sched_getaffinity,
    // The new thread installs its own filter on top.
    libc::SYS_seccomp,
];

const MAIN: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_ioctl,
    libc::SYS_eventfd2,
    libc::SYS_kill,
    libc::SYS_rt_sigaction,
    libc::SYS_wait4,
    libc::SYS_unlink,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    // The serial console: is anyone reading its pty (a zero-timeout poll), a client on its
    // socket.
    libc::SYS_poll,
    libc::SYS_accept4,
    // migrate_cancel: waking the migration thread blocked on its socket.
    libc::SYS_shutdown,
];

/// A `qmp-job` thread: the open, `stat` and close of a user's file (`blockdev-add`/`-del`).
const QMP_JOB: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_lseek,
    libc::SYS_flock,
];

const VCPU: &[i64] = &[libc::SYS_ioctl];

/// Dropping the machine: joins, closes, unmappings, and the last KVM and eventfd calls of the
/// devices' teardown.
const TEARDOWN: &[i64] = &[
    libc::SYS_ioctl,
    libc::SYS_epoll_ctl,
    libc::SYS_io_uring_enter,
    // Removing the serial console's socket file.
    libc::SYS_unlink,
    // Waking a migration thread blocked on its socket.
    libc::SYS_shutdown,
];

const MONITOR: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_ioctl,
    // Removing the socket files at exit.
    libc::SYS_unlink,
];

const BLOCK_IO: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_eventfd2,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
];

/// A `migration` thread: its socket (connect or listen and accept) or snapshot file, the
/// dirty log (`KVM_GET_DIRTY_LOG`, slot flags), the memory file's data ranges and holes.
/// An `exec:` command is the launcher process's (`crate::launcher`): this thread only asks
/// for it and receives the pipe and status socket (`sendmsg`, `recvmsg`), then waits for the
/// status (`recvfrom`) or, on a cancel, shuts the status socket down; it never forks or execs.
const MIGRATION: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_getsockname,
    libc::SYS_ioctl,
    libc::SYS_openat,
    libc::SYS_unlink,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fdatasync,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_poll,
    libc::SYS_userfaultfd,
    libc::SYS_eventfd2,
];

const UFFD: &[i64] = &[
    libc::SYS_ioctl,
    libc::SYS_poll,
    libc::SYS_sendto,
    libc::SYS_pread64,
];

const BLOCK_REQUEST: &[i64] = &[
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_fallocate,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
];

static MODE: OnceLock<SeccompMode> = OnceLock::new();

thread_local! {
    /// The kind of the calling thread's filter, for the violation message.
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// Sets the mode for the process (once, before any thread confines itself); with `on` it also
/// installs the SIGSYS handler.
///
/// # Errors
/// The handler could not be installed.
pub fn set_mode(mode: SeccompMode) -> Result<(), SeccompError> {
    let mode = *MODE.get_or_init(|| mode);
    if mode == SeccompMode::On {
        install_sigsys_handler().map_err(SeccompError::Handler)?;
    }
    Ok(())
}

/// The mode in force (`off` before [`set_mode`]).
pub fn mode() -> SeccompMode {
    MODE.get().copied().unwrap_or(SeccompMode::Off)
}

/// The BPF programs of `kind`, to install in order: the quiet refusals when the kind has
/// some, then the allowlist (with `mismatch` for forbidden calls).
///
/// # Errors
/// The tables do not make a valid filter.
pub fn programs(
    kind: ThreadKind,
    mismatch: SeccompAction,
) -> Result<Vec<BpfProgram>, SeccompError> {
    let build = |calls: &[i64], mismatch, matched| -> Result<BpfProgram, SeccompError> {
        let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
            calls.iter().map(|&nr| (nr, Vec::new())).collect();
        SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
            .and_then(TryInto::try_into)
            .map_err(|e| SeccompError::Build(kind.name(), e))
    };
    let mut progs = Vec::new();
    // The refusals first: installing a filter is itself a system call the allowlist forbids.
    if !kind.refused().is_empty() {
        progs.push(build(
            kind.refused(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EACCES as u32),
        )?);
    }
    progs.push(build(&kind.allowed(), mismatch, SeccompAction::Allow)?);
    Ok(progs)
}

/// Confines the calling thread with the filter of `kind`, as the mode says.
///
/// # Errors
/// The filter could not be built or installed.
pub fn confine(kind: ThreadKind) -> Result<(), SeccompError> {
    let mismatch = match mode() {
        SeccompMode::Off => return Ok(()),
        SeccompMode::On => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
    };
    let progs = programs(kind, mismatch)?;
    KIND.with(|k| k.set(Some(kind)));
    for prog in &progs {
        seccompiler::apply_filter(prog).map_err(|e| SeccompError::Install(kind.name(), e))?;
    }
    Ok(())
}

/// [`confine`] as an I/O error, for the hooks of threads created in other crates.
pub fn hook(kind: ThreadKind) -> std::sync::Arc<dyn Fn() -> std::io::Result<()> + Send + Sync> {
    std::sync::Arc::new(move || {
        confine(kind).map_err(|e| std::io::Error::other(crate::error::chain(&e)))
    })
}

/// Writes the violation line and ends the process. Only async-signal-safe calls.
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: for SIGSYS from seccomp the kernel fills `_sigsys`: after the three ints and
    // their padding (16 bytes) come the call address (8 bytes) and the call's number (int).
    let nr = unsafe {
        info.cast::<u8>()
            .add(24)
            .cast::<libc::c_int>()
            .read_unaligned()
    };
    let kind = KIND
        .with(|k| k.get())
        .map_or("unconfined", ThreadKind::name);
    let mut line = [0u8; 160];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        for &b in bytes {
            if len < line.len() {
                line[len] = b;
                len += 1;
            }
        }
    };
    put(b"vmm: seccomp: the ");
    put(kind.as_bytes());
    put(b" thread made a forbidden system call (number ");
    let mut digits = [0u8; 12];
    let mut n = nr.unsigned_abs();
    let mut d = digits.len();
    loop {
        d -= 1;
        digits[d] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    put(&digits[d..]);
    put(b"); exiting\n");
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is live for the call.
    unsafe {
        libc::write(2, line.as_ptr().cast(), len);
        libc::_exit(128 + libc::SIGSYS);
    }
}

fn install_sigsys_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid starting point; the handler only makes
    // async-signal-safe calls (see `on_sigsys`).
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigsys as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a new thread confined by `kind`'s filter with forbidden calls failing with
    /// EPERM (instead of ending the test process).
    fn confined<T: Send + 'static>(kind: ThreadKind, f: fn() -> T) -> T {
        std::thread::spawn(move || {
            for prog in programs(kind, SeccompAction::Errno(libc::EPERM as u32)).unwrap() {
                seccompiler::apply_filter(&prog).unwrap();
            }
            f()
        })
        .join()
        .unwrap()
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn every_kind_builds_and_forbids_a_socket() {
        for kind in ThreadKind::ALL {
            // SAFETY: socket(2) with constant arguments; a descriptor it returns is closed.
            let (ret, err) = confined(kind, || unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                let err = errno();
                if fd >= 0 {
                    libc::close(fd);
                }
                (fd, err)
            });
            if kind == ThreadKind::Migration {
                // Its job: connecting to the destination, listening for the source.
                assert!(ret >= 0, "{kind:?}: {err}");
                continue;
            }
            // The monitor accepts connections on its listeners but never creates a socket.
            assert_eq!((ret, err), (-1, libc::EPERM), "{kind:?}");
        }
    }

    #[test]
    fn vcpus_cannot_open_files_and_block_threads_cannot_exec() {
        // SAFETY: open(2) of a constant path; a descriptor it returns is closed.
        let (fd, err) = confined(ThreadKind::Vcpu, || unsafe {
            let fd = libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY);
            let err = errno();
            if fd >= 0 {
                libc::close(fd);
            }
            (fd, err)
        });
        // Refused quietly (EACCES), not trapped: glibc's own opens must not end vmm.
        assert_eq!((fd, err), (-1, libc::EACCES));
        for kind in [
            ThreadKind::BlockIo,
            ThreadKind::BlockRequest,
            ThreadKind::Monitor,
        ] {
            // SAFETY: execve(2) of a missing program with empty argument lists fails either
            // way; the filter decides how.
            let (ret, err) = confined(kind, || unsafe {
                let argv: [*const libc::c_char; 1] = [std::ptr::null()];
                let ret = libc::execve(c"/nonexistent".as_ptr(), argv.as_ptr(), argv.as_ptr());
                (ret, errno())
            });
            assert_eq!((ret, err), (-1, libc::EPERM), "{kind:?}");
        }
    }

    #[test]
    fn exec_commands_run_from_the_confined_migration_thread_through_the_launcher() {
        crate::launcher::start_in_thread();
        let got = confined(ThreadKind::Migration, || {
            let launcher = crate::launcher::get().unwrap();
            let (pipe, mut child) = launcher
                .spawn(
                    "echo streamed; exit 5",
                    crate::launcher::Direction::FromCommand,
                )
                .unwrap();
            let mut out = String::new();
            std::io::Read::read_to_string(&mut std::fs::File::from(pipe), &mut out).unwrap();
            (out, child.wait().unwrap().code())
        });
        assert_eq!(got, ("streamed\n".to_owned(), Some(5)));
    }

    #[test]
    fn allowed_calls_still_work_under_the_filters() {
        for kind in ThreadKind::ALL {
            // SAFETY: a write of zero bytes to stderr.
            let ok = confined(kind, || unsafe { libc::write(2, [].as_ptr(), 0) == 0 });
            assert!(ok, "{kind:?}");
        }
        let n = confined(ThreadKind::BlockRequest, || {
            let f = std::fs::File::open("/proc/self/status");
            f.is_err()
        });
        assert!(n, "a request thread must not open files");
    }
}
