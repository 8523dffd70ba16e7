// SPDX-License-Identifier: Apache-2.0
//! The launcher process: runs the `exec:` commands of migrations outside vmm's sandbox.
//!
//! A seccomp filter survives `execve`, so a command started by a confined vmm thread would
//! run under vmm's filters (and `fork`/`execve` are not in them anyway). Instead `main` forks
//! this small process before any thread exists, before any filter is installed and before
//! guest RAM is allocated (after `-daemonize`'s fork). It keeps only its end of a
//! `SOCK_SEQPACKET` socket pair and the standard streams, has no threads, and serves one
//! request at a time:
//!
//! - **request** (one message): a direction byte (`w`: vmm writes, the command's standard
//!   input is the pipe; `r`: vmm reads, its standard output is) and the command's text;
//! - **reply** (one message): `0` with two descriptors (vmm's end of the pipe and a status
//!   socket), or `1` and the error's text;
//! - **status** (on the status socket, one message once the command ended): its raw wait
//!   status as 4 bytes (native order); then the socket closes.
//!
//! The command runs as `/bin/sh -c COMMAND` in a process group of its own, with the pipe's
//! end on descriptor 0 or 1, `/dev/null` on the other, vmm's standard error on 2 and nothing
//! else open. The launcher watches each command through a pidfd and reaps it with `waitpid`
//! when it ends. When vmm shuts down or closes its end of a command's status socket (a
//! cancelled migration, whose thread may be blocked writing to a command that does not read;
//! a destination done with its stream) the launcher kills the command's group (`SIGKILL`),
//! so a write on the pipe fails and a read ends. A status
//! socket per command (rather than status messages on the control socket) keeps the control
//! socket a plain request/reply exchange that any thread may use under a lock, and lets the
//! thread that waits for one command block on it alone. vmm's side needs only `sendmsg`,
//! `recvmsg` and `recvfrom`, which the `migration` (and so the `main`) filter allows.
//!
//! The launcher dies with vmm: `PR_SET_PDEATHSIG` (`SIGKILL`; it fires when the thread that
//! forked ends, here vmm's main thread, which lives as long as the process) and, should vmm
//! close its end, end of file on the control socket. Commands still running then are left to
//! finish on their own (their pipe's other end is gone with vmm). It ignores the terminal's `SIGINT` and `SIGHUP` (vmm
//! handles them and may still need it); commands get the default dispositions back.
//! It is forked always, whatever `--seccomp` says: one path for every mode.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};

use monitor::scm::{recv_with_fds, send_with_fds};

/// The longest command the launcher takes (bytes).
pub const MAX_COMMAND: usize = 60 * 1024;

/// Which way the stream flows through the command's pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// vmm writes; the command reads its standard input (a migration's source).
    ToCommand,
    /// vmm reads; the command writes its standard output (a destination).
    FromCommand,
}

impl Direction {
    fn byte(self) -> u8 {
        match self {
            Direction::ToCommand => b'w',
            Direction::FromCommand => b'r',
        }
    }
}

/// Errors of running a command through the launcher.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The launcher could not be started when vmm started.
    #[error("the launcher process did not start: {0}")]
    NotStarted(String),
    /// The command is longer than [`MAX_COMMAND`].
    #[error("the command is longer than {MAX_COMMAND} bytes")]
    TooLong,
    /// Talking to the launcher failed (it is gone, or answered nonsense).
    #[error("the launcher process does not answer")]
    Gone(#[source] io::Error),
    /// The launcher could not run the command.
    #[error("{0}")]
    Refused(String),
}

/// vmm's side of the launcher: the control socket, one request at a time.
#[derive(Debug)]
pub struct Launcher {
    control: Mutex<OwnedFd>,
}

/// A command the launcher started: its exit status comes on [`wait`](Self::wait).
#[derive(Debug)]
pub struct ExecChild {
    status: OwnedFd,
}

impl ExecChild {
    /// The status socket: shutting it down (or closing it) makes the launcher kill the
    /// command's process group, which is how a cancel wakes a thread blocked on the pipe.
    pub fn raw(&self) -> RawFd {
        self.status.as_raw_fd()
    }

    /// Waits until the command has ended and gives its exit status.
    ///
    /// # Errors
    /// The launcher died before the command ended.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        let mut buf = [0u8; 4];
        loop {
            // SAFETY: recv into a live 4-byte buffer.
            let n = unsafe {
                libc::recv(
                    self.status.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                )
            };
            match n {
                4 => return Ok(ExitStatus::from_raw(i32::from_ne_bytes(buf))),
                n if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                n if n < 0 => return Err(io::Error::last_os_error()),
                _ => {
                    return Err(io::Error::other(
                        "the launcher process ended before the command did",
                    ))
                }
            }
        }
    }
}

static LAUNCHER: OnceLock<Result<Launcher, String>> = OnceLock::new();

/// Forks the launcher process. Call once, from `main`, while the process has one thread and
/// before any seccomp filter or guest RAM exists. A failure is remembered and reported by the
/// first `exec:` migration rather than ending vmm.
/// With `detached` (a daemon: its standard streams go to `/dev/null` once it is ready) the
/// launcher's point there from the start: a caller that waits for the end of the daemon's
/// output (libvirt, on `-daemonize`) must not wait for the launcher's copy.
pub fn start(detached: bool) {
    let _ = LAUNCHER.set(fork_launcher(detached).map_err(|e| e.to_string()));
}

/// The launcher [`start`] forked.
///
/// # Errors
/// It was not started, or did not start.
pub fn get() -> Result<&'static Launcher, LaunchError> {
    match LAUNCHER.get() {
        Some(Ok(l)) => Ok(l),
        Some(Err(e)) => Err(LaunchError::NotStarted(e.clone())),
        None => Err(LaunchError::NotStarted("never forked".into())),
    }
}

/// For unit tests elsewhere in vmm: a launcher served by a thread of the test process (see
/// the tests below), unless one is there already.
#[cfg(test)]
pub fn start_in_thread() {
    LAUNCHER.get_or_init(|| {
        let (ours, theirs) = seqpacket_pair().map_err(|e| e.to_string())?;
        std::thread::spawn(move || serve(theirs.as_fd()));
        Ok(Launcher::new(ours))
    });
}

fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills the two-element array; the result is checked.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned here only.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn fork_launcher(detached: bool) -> io::Result<Launcher> {
    let (ours, theirs) = seqpacket_pair()?;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the caller's contract: one thread, so the child may run any code after fork.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(ours);
            if detached {
                detach_standard_streams();
            }
            launcher_main(theirs, parent)
        }
        _ => {
            drop(theirs);
            Ok(Launcher::new(ours))
        }
    }
}

/// Points descriptors 0, 1 and 2 at `/dev/null`.
fn detach_standard_streams() {
    // SAFETY: open of a constant path; dup2 onto the standard descriptors of this
    // single-threaded child, which nothing in it owns; the temporary descriptor is closed.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..=2 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
}

/// The forked process: confine the descriptors, tie its life to vmm's, serve.
fn launcher_main(control: OwnedFd, parent: libc::pid_t) -> ! {
    // SAFETY: prctl with integer arguments; PR_SET_NAME reads the NUL-terminated name.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        libc::prctl(libc::PR_SET_NAME, c"vmm-launcher".as_ptr());
    }
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        // vmm died before the death signal was armed.
        // SAFETY: _exit ends the process without running the parent's atexit handlers.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: signal dispositions of this single-threaded process.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    // Nothing vmm inherited or opened stays here but the standard streams and the socket.
    let raw = control.as_raw_fd();
    // SAFETY: closes descriptors above `raw` and between 3 and `raw`; `control` stays valid.
    unsafe {
        libc::syscall(libc::SYS_close_range, raw + 1, u32::MAX, 0);
        if raw > 3 {
            libc::syscall(libc::SYS_close_range, 3, raw - 1, 0);
        }
    }
    serve(control.as_fd());
    // SAFETY: as above.
    unsafe { libc::_exit(0) }
}

impl Launcher {
    fn new(control: OwnedFd) -> Self {
        Self {
            control: Mutex::new(control),
        }
    }

    /// Runs `/bin/sh -c command` with a pipe the other way round from `direction`'s side;
    /// gives vmm's end of it and the command's handle.
    ///
    /// # Errors
    /// The command is too long, the launcher is gone or could not run it.
    pub fn spawn(
        &self,
        command: &str,
        direction: Direction,
    ) -> Result<(OwnedFd, ExecChild), LaunchError> {
        if command.len() > MAX_COMMAND {
            return Err(LaunchError::TooLong);
        }
        let mut request = Vec::with_capacity(command.len() + 1);
        request.push(direction.byte());
        request.extend_from_slice(command.as_bytes());
        let control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        send_with_fds(control.as_fd(), &request, &[]).map_err(LaunchError::Gone)?;
        let mut buf = vec![0u8; 4096];
        let reply = loop {
            match recv_with_fds(control.as_fd(), &mut buf, 0) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r.map_err(LaunchError::Gone)?,
            }
        };
        drop(control);
        match (buf.first(), reply.len, reply.fds.len()) {
            (_, 0, _) => Err(LaunchError::Gone(io::ErrorKind::UnexpectedEof.into())),
            (Some(0), 1, 2) => {
                let mut fds = reply.fds.into_iter();
                let pipe = fds.next().expect("two descriptors");
                let status = fds.next().expect("two descriptors");
                Ok((pipe, ExecChild { status }))
            }
            (Some(1), n, 0) => Err(LaunchError::Refused(
                String::from_utf8_lossy(&buf[1..n]).into_owned(),
            )),
            _ => Err(LaunchError::Gone(io::Error::other("a malformed reply"))),
        }
    }
}

/// A command that runs: the pidfd the loop polls, where its status goes.
struct Running {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    status: OwnedFd,
    /// vmm shut down or closed its end of the status socket: the command's group was killed.
    abandoned: bool,
}

/// What a polled descriptor of [`serve`] is.
#[derive(Clone, Copy)]
enum Watched {
    Control,
    /// The command ended (index into the running commands).
    Ended(usize),
    /// vmm let go of the command (index into the running commands).
    Abandoned(usize),
}

/// The launcher's loop: requests on `control`, ends of commands on their pidfds, until
/// vmm closes its end.
fn serve(control: BorrowedFd<'_>) {
    let mut running: Vec<Running> = Vec::new();
    let mut buf = vec![0u8; MAX_COMMAND + 2];
    loop {
        let mut watched = vec![Watched::Control];
        let mut polled = vec![libc::pollfd {
            fd: control.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        for (i, r) in running.iter().enumerate() {
            watched.push(Watched::Ended(i));
            polled.push(libc::pollfd {
                fd: r.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            if !r.abandoned {
                // Only hang-ups: vmm never writes on it.
                watched.push(Watched::Abandoned(i));
                polled.push(libc::pollfd {
                    fd: r.status.as_raw_fd(),
                    events: libc::POLLRDHUP,
                    revents: 0,
                });
            }
        }
        // SAFETY: poll over the live array.
        let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        let mut ended = Vec::new();
        for (w, p) in watched.iter().zip(&polled) {
            if p.revents == 0 {
                continue;
            }
            match *w {
                Watched::Control => {}
                Watched::Ended(i) => ended.push(i),
                Watched::Abandoned(i) => {
                    let r = &mut running[i];
                    r.abandoned = true;
                    // SAFETY: the group of our own child, not reaped yet (so its id is not
                    // reused).
                    unsafe { libc::kill(-r.pid, libc::SIGKILL) };
                }
            }
        }
        // From the back, so the indices stay valid.
        ended.sort_unstable();
        for i in ended.into_iter().rev() {
            let r = running.swap_remove(i);
            reap(&r);
        }
        if polled[0].revents != 0 {
            match recv_with_fds(control, &mut buf, 0) {
                Ok(r) if r.len == 0 => return,
                Ok(r) => {
                    let reply = run_request(&buf[..r.len]);
                    let sent = match reply {
                        Ok((pipe, status, child)) => {
                            let sent =
                                send_with_fds(control, &[0], &[pipe.as_fd(), status.as_fd()]);
                            running.push(child);
                            sent
                        }
                        Err(text) => {
                            let mut msg = vec![1u8];
                            msg.extend_from_slice(text.as_bytes());
                            send_with_fds(control, &msg, &[])
                        }
                    };
                    if sent.is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

/// Reaps a command that ended and sends its status.
fn reap(r: &Running) {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child with a live status word.
        let got = unsafe { libc::waitpid(r.pid, &mut status, 0) };
        if got == r.pid {
            break;
        }
        if got < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        // Not ours any more (cannot happen): report a failure rather than nothing.
        status = 0x7f00;
        break;
    }
    // A status socket whose reader is gone only fails the send.
    let _ = send_with_fds(r.status.as_fd(), &status.to_ne_bytes(), &[]);
}

/// Starts the command a request asks for: vmm's end of the pipe, vmm's end of the status
/// socket, and what the loop keeps.
fn run_request(request: &[u8]) -> Result<(OwnedFd, OwnedFd, Running), String> {
    let (&dir, command) = request.split_first().ok_or("an empty request")?;
    let direction = match dir {
        b'w' => Direction::ToCommand,
        b'r' => Direction::FromCommand,
        _ => return Err("an unknown direction".into()),
    };
    let command = std::str::from_utf8(command).map_err(|_| "the command is not UTF-8")?;
    let (read_end, write_end) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let (vmm_status, our_status) = seqpacket_pair().map_err(|e| format!("socketpair: {e}"))?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(command).stderr(Stdio::inherit());
    let ours = match direction {
        Direction::ToCommand => {
            cmd.stdin(Stdio::from(read_end)).stdout(Stdio::null());
            write_end
        }
        Direction::FromCommand => {
            cmd.stdin(Stdio::null()).stdout(Stdio::from(write_end));
            read_end
        }
    };
    // SAFETY: runs in the forked child before exec: only close_range, signal and setpgid,
    // all async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            // Everything above the standard streams closes at exec (the launcher keeps its
            // own descriptors close-on-exec already; this also covers any that are not).
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            // Its own process group, so that everything it starts can be killed at once.
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| format!("/bin/sh: {e}"))?;
    // The Child handle holds no pipes (they were given as descriptors); dropping it neither
    // waits nor kills: the loop reaps through the pidfd.
    let pid = child.id() as libc::pid_t;
    drop(cmd);
    // SAFETY: pidfd_open with integer arguments; the result is checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        let e = io::Error::last_os_error();
        // Without a pidfd the command cannot be watched: wait for it here instead.
        // SAFETY: kill and waitpid on our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err(format!("pidfd_open: {e}"));
    }
    // SAFETY: a new descriptor owned here only.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    Ok((
        ours,
        vmm_status,
        Running {
            pid,
            pidfd,
            status: our_status,
            abandoned: false,
        },
    ))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array; the result is checked.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned here only.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// The serving loop on a thread of the test process (it reaps only its own children,
    /// through their pidfds, so it does not disturb the test harness).
    fn served() -> (Launcher, std::thread::JoinHandle<()>) {
        let (ours, theirs) = seqpacket_pair().unwrap();
        let t = std::thread::spawn(move || serve(theirs.as_fd()));
        (Launcher::new(ours), t)
    }

    #[test]
    fn commands_get_the_pipe_and_report_their_status() {
        let (launcher, t) = served();
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let file = dir.as_path().join("out");
        let (w, mut child) = launcher
            .spawn(&format!("cat > '{}'", file.display()), Direction::ToCommand)
            .unwrap();
        let mut w = std::fs::File::from(w);
        w.write_all(b"stream bytes").unwrap();
        drop(w);
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read(&file).unwrap(), b"stream bytes");

        let (r, mut child) = launcher
            .spawn(
                &format!("cat '{}'; read x; echo \"[$x]\"", file.display()),
                Direction::FromCommand,
            )
            .unwrap();
        let mut s = String::new();
        std::fs::File::from(r).read_to_string(&mut s).unwrap();
        assert_eq!(s, "stream bytes[]\n", "standard input is /dev/null");
        assert!(child.wait().unwrap().success());

        let (_r, mut child) = launcher.spawn("exit 3", Direction::FromCommand).unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(3));
        let (_r, mut child) = launcher
            .spawn("kill -9 $$", Direction::FromCommand)
            .unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(9));
        drop(launcher);
        t.join().unwrap();
    }

    #[test]
    fn letting_go_of_a_command_kills_its_group() {
        let (launcher, t) = served();
        // A shell that does not exec its last command: sleep is a grandchild in its group.
        let (w, mut child) = launcher
            .spawn("sleep 30; true", Direction::ToCommand)
            .unwrap();
        // SAFETY: shutdown of our own socket, as a migration's cancel does.
        unsafe { libc::shutdown(child.raw(), libc::SHUT_RDWR) };
        // The group is gone: nothing holds the pipe's read end any more.
        let mut w = std::fs::File::from(w);
        let started = std::time::Instant::now();
        loop {
            match w.write_all(&[0u8; 4096]) {
                Ok(()) => assert!(started.elapsed().as_secs() < 10, "the command still reads"),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
                    break;
                }
            }
        }
        assert!(
            child.wait().is_err(),
            "a shut-down status socket has nothing to say"
        );
        drop(launcher);
        t.join().unwrap();
    }

    #[test]
    fn only_the_standard_streams_reach_the_command() {
        let (launcher, t) = served();
        let (r, mut child) = launcher
            .spawn("ls /proc/self/fd", Direction::FromCommand)
            .unwrap();
        let mut s = String::new();
        std::fs::File::from(r).read_to_string(&mut s).unwrap();
        assert!(child.wait().unwrap().success());
        // 0, 1, 2 and the directory ls reads.
        let fds: Vec<&str> = s.split_whitespace().collect();
        assert_eq!(fds, ["0", "1", "2", "3"], "{s}");
        drop(launcher);
        t.join().unwrap();
    }

    #[test]
    fn the_launcher_refuses_what_it_cannot_run() {
        let (launcher, t) = served();
        let long = "x".repeat(MAX_COMMAND + 1);
        assert!(matches!(
            launcher.spawn(&long, Direction::ToCommand),
            Err(LaunchError::TooLong)
        ));
        {
            let control = launcher.control.lock().unwrap();
            send_with_fds(control.as_fd(), b"?cmd", &[]).unwrap();
            let mut buf = [0u8; 64];
            let r = recv_with_fds(control.as_fd(), &mut buf, 0).unwrap();
            assert_eq!(&buf[..r.len], b"\x01an unknown direction");
        }
        drop(launcher);
        t.join().unwrap();
    }

    #[test]
    fn a_dead_launcher_is_reported() {
        let (ours, theirs) = seqpacket_pair().unwrap();
        drop(theirs);
        let launcher = Launcher::new(ours);
        let e = launcher.spawn("true", Direction::ToCommand).unwrap_err();
        assert!(matches!(e, LaunchError::Gone(_)), "{e:?}");
    }
}
