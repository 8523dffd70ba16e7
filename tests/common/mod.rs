// SPDX-License-Identifier: Apache-2.0
//! Helpers shared by the integration tests: locating the vmm binary and the guests, running a
//! VM with its serial console captured, and waiting for guest output.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The vmm binary under test.
pub fn vmm_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vmm"))
}

/// Runs a project script (idempotent installers/builders) and returns its last stdout line.
pub fn script(name: &str) -> String {
    script_with(name, &[])
}

/// Runs a project script with arguments and returns its last stdout line.
pub fn script_with(name: &str, args: &[&str]) -> String {
    script_output(name, args)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

/// Runs a project script with arguments and returns everything it printed on stdout; panics
/// when it fails (its stderr goes to the test's).
pub fn script_output(name: &str, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(root().join("scripts").join(name))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/{name}: {e}"));
    assert!(out.status.success(), "scripts/{name} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the probe guest if needed (scripts/probe-guest.sh) and returns its directory.
pub fn probe_dir() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        script("probe-guest.sh");
    });
    root().join("target/probe-guest")
}

/// The probe guest as a bzImage.
pub fn probe_bzimage() -> PathBuf {
    probe_dir().join("bzImage")
}

/// The probe guest as a PVH ELF.
pub fn probe_elf() -> PathBuf {
    probe_dir().join("probe.elf")
}

/// A finished vmm run.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything the guest printed on its serial console (vmm's stdout).
    pub serial: String,
    /// vmm's stderr.
    pub stderr: String,
}

impl Finished {
    /// The serial lines starting with `prefix`.
    pub fn lines_with(&self, prefix: &str) -> Vec<&str> {
        self.serial
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    /// Asserts a clean exit with code `code`.
    pub fn assert_exit(&self, code: i32) {
        assert_eq!(
            self.status.code(),
            Some(code),
            "vmm exit status {:?}\n--- serial ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.serial,
            self.stderr
        );
    }
}

/// A running vmm whose serial output is collected line by line.
pub struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: std::thread::JoinHandle<String>,
}

/// Starts vmm with `args`, console on stdout, stdin closed.
pub fn spawn(args: &[&str]) -> Running {
    let mut child = Command::new(vmm_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start vmm");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line.trim_end_matches('\r').to_owned()).is_err() {
                break;
            }
        }
    });
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    Running {
        child,
        lines: rx,
        seen: Vec::new(),
        stderr,
    }
}

impl Running {
    /// Waits for a serial line starting with `prefix`; panics with the output so far after
    /// `timeout` (a guard against hangs, not a performance assertion).
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no serial line starting with {prefix:?} within {timeout:?}\n--- serial ---\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Like [`Running::wait_line`], but panics at once, with the output so far, when a line
    /// starting with one of `fatal` arrives first (a guest reporting a failure, a kernel
    /// panic), instead of waiting out `timeout`.
    pub fn wait_line_unless(&mut self, prefix: &str, fatal: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                    if let Some(f) = fatal.iter().find(|f| line.starts_with(*f)) {
                        panic!(
                            "a serial line starting with {f:?} came while waiting for \
                             {prefix:?}\n--- serial ---\n{}",
                            self.seen.join("\n")
                        );
                    }
                }
                Err(_) => panic!(
                    "no serial line starting with {prefix:?} within {timeout:?} (or vmm's \
                     output ended)\n--- serial ---\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The serial lines received so far that no wait has consumed yet, without waiting.
    pub fn pending_lines(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line.clone());
            v.push(line);
        }
        v
    }

    /// vmm's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to vmm.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for vmm to exit (killing it after `timeout`) and collects the rest of its output.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let status = self.child.wait().expect("wait");
                let serial = self.seen.join("\n");
                panic!(
                    "vmm did not exit within {timeout:?} ({status:?})\n--- serial ---\n{serial}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        Finished {
            status,
            serial: self.seen.join("\n"),
            stderr: self.stderr.join().unwrap_or_default(),
        }
    }
}

/// Runs vmm to completion.
pub fn run(args: &[&str], timeout: Duration) -> Finished {
    spawn(args).finish(timeout)
}

/// True when the host has hardware virtualization (KVM on VMX/SVM) rather than PVM, where
/// unmodified Linux can reach userspace.
pub fn hardware_kvm() -> bool {
    Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists()
}
