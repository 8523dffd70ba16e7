# SPDX-License-Identifier: Apache-2.0
"""What a process holds, from /proc: descriptors, threads, resident memory. Used by the limit
and churn tests and by scripts/soak.sh."""

import os


def fd_count(pid) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def thread_names(pid) -> list:
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:
            pass  # the thread ended meanwhile
    return sorted(names)


def rss_kib(pid) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def open_files_limit(pid) -> tuple:
    """(soft, hard) "Max open files" of the process."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError(f"no open-file limit for {pid}")


class Usage:
    """A snapshot of a process's descriptors, threads and RSS."""

    def __init__(self, pid):
        self.pid = pid
        self.fds = fd_count(pid)
        self.threads = thread_count(pid)
        self.rss_kib = rss_kib(pid)

    def __repr__(self):
        return f"fds={self.fds} threads={self.threads} rss={self.rss_kib / 1024:.1f} MiB"

    def within(self, baseline, rss_slack_kib) -> bool:
        """No more descriptors or threads than `baseline`, RSS at most `rss_slack_kib` above."""
        return (self.fds <= baseline.fds and self.threads <= baseline.threads
                and self.rss_kib <= baseline.rss_kib + rss_slack_kib)
