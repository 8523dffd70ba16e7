# SPDX-License-Identifier: Apache-2.0
"""What a process holds, from /proc: descriptors, threads, resident memory. Used by the limit
and churn tests and by scripts/soak.sh."""

import os


def fd_count(pid) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid) -> dict:
    """What each descriptor is (its /proc link), by number."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except (FileNotFoundError, ProcessLookupError):
            pass  # closed meanwhile
    return out


def thread_count(pid) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def thread_names(pid) -> list:
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended meanwhile (ENOENT, or ESRCH while it is being reaped)
    return sorted(names)


def rss_kib(pid) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def seccomp_mode(pid) -> int:
    """The seccomp mode of process `pid`'s main thread (0 off, 2 filtered)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Seccomp:"):
                return int(line.split()[1])
    return 0


def open_files_limit(pid) -> tuple:
    """(soft, hard) "Max open files" of the process."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError(f"no open-file limit for {pid}")


def is_io_uring_worker(name) -> bool:
    """The kernel's io_uring workers (`iou-wrk-PID`, `iou-sqp-PID`) are tasks of the process
    that come and go with the ring's load (a guest's flushes are punted to them), bounded by
    the kernel, not by vmm."""
    return name.startswith(("iou-wrk-", "iou-sqp-"))


class Usage:
    """A snapshot of a process's descriptors, threads (the kernel's io_uring workers apart)
    and RSS."""

    def __init__(self, pid):
        self.pid = pid
        self.fds = fd_count(pid)
        names = thread_names(pid)
        self.io_workers = sum(1 for n in names if is_io_uring_worker(n))
        self.threads = len(names) - self.io_workers
        self.rss_kib = rss_kib(pid)

    def __repr__(self):
        return (f"fds={self.fds} threads={self.threads} (+{self.io_workers} io_uring workers) "
                f"rss={self.rss_kib / 1024:.1f} MiB")

    def within(self, baseline, rss_slack_kib) -> bool:
        """No more descriptors or threads than `baseline`, RSS at most `rss_slack_kib` above."""
        return (self.fds <= baseline.fds and self.threads <= baseline.threads
                and self.rss_kib <= baseline.rss_kib + rss_slack_kib)
