// SPDX-License-Identifier: Apache-2.0
//! Bad command lines and bad files: one clear line on stderr, exit code 1, never a panic.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use common::{run, vmm_bin};

/// Runs vmm expecting a refusal; returns its single stderr line.
fn refuse(args: &[&str]) -> String {
    let out = run(args, Duration::from_secs(60));
    out.assert_exit(1);
    assert!(
        out.serial.is_empty(),
        "no guest output expected: {}",
        out.serial
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one stderr line expected, got: {:?}",
        out.stderr
    );
    assert!(lines[0].starts_with("vmm: "), "{}", lines[0]);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    lines[0].to_owned()
}

fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

/// A file with a valid-looking bzImage header of the given boot protocol version.
fn fake_bzimage(name: &str, version: u16) -> std::path::PathBuf {
    let mut b = vec![0u8; 0x1000];
    b[0x1fe] = 0x55;
    b[0x1ff] = 0xaa;
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    b[0x211] = 1; // LOADED_HIGH
    b[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    b[0x236] = 1; // XLF_KERNEL_64
    temp_file(name, &b)
}

#[test]
fn help_and_version_succeed() {
    let out = Command::new(vmm_bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--cpus",
        "--memory",
        "--serial",
        "--no-reboot",
        "--paused",
        "--name",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let out = Command::new(vmm_bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("vmm "));
}

#[test]
fn missing_kernel_argument() {
    let l = refuse(&[]);
    assert!(l.contains("--kernel"), "{l}");
}

#[test]
fn unknown_flag() {
    let l = refuse(&["--kernel", "x", "--disk-typo", "y"]);
    assert!(l.contains("--disk-typo"), "{l}");
}

#[test]
fn cpus_out_of_range() {
    assert!(refuse(&["--kernel", "x", "--cpus", "0"]).contains("1..=64"));
    assert!(refuse(&["--kernel", "x", "--cpus", "65"]).contains("1..=64"));
    assert!(refuse(&["--kernel", "x", "--cpus", "two"]).contains("--cpus"));
}

#[test]
fn memory_too_small_or_too_large() {
    assert!(refuse(&["--kernel", "x", "--memory", "8"]).contains("--memory"));
    let l = refuse(&["--kernel", "x", "--memory", "100000000"]);
    // One line naming both: what was asked and what the host has (RAM, not swap).
    assert!(
        l.contains("--memory 100000000 MiB is more than this host's "),
        "{l}"
    );
    assert!(l.ends_with(" MiB of RAM"), "{l}");
}

#[test]
fn bad_serial_mode() {
    assert!(refuse(&["--kernel", "x", "--serial", "tcp:1"]).contains("stdio, file:PATH, none"));
}

#[test]
fn missing_and_unreadable_kernel() {
    let l = refuse(&["--kernel", "/nonexistent/vmlinuz"]);
    assert_eq!(
        l,
        "vmm: Cannot read kernel '/nonexistent/vmlinuz': No such file or directory (os error 2)"
    );
    let l = refuse(&["--kernel", "/tmp"]);
    assert_eq!(l, "vmm: kernel '/tmp' is not a regular file");
}

#[test]
fn kernel_that_is_not_a_kernel() {
    let p = temp_file("not-a-kernel", b"#!/bin/sh\necho hello\n");
    let l = refuse(&["--kernel", p.to_str().unwrap()]);
    assert!(
        l.ends_with("is neither a Linux bzImage nor an ELF vmlinux"),
        "{l}"
    );
}

#[test]
fn kernel_with_old_boot_protocol() {
    let p = fake_bzimage("old-bzimage", 0x0206);
    let l = refuse(&["--kernel", p.to_str().unwrap()]);
    assert!(
        l.ends_with("uses boot protocol 2.06; vmm needs 2.12 or newer"),
        "{l}"
    );
}

#[test]
fn missing_initrd() {
    let k = fake_bzimage("k-for-initrd", 0x020f);
    let l = refuse(&[
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        "/nonexistent/initrd",
    ]);
    assert!(
        l.starts_with("vmm: Cannot read initrd '/nonexistent/initrd'"),
        "{l}"
    );
}

#[test]
fn initrd_that_does_not_fit() {
    let k = fake_bzimage("k-for-big-initrd", 0x020f);
    let big = temp_file("big-initrd", &vec![0u8; 40 << 20]);
    let l = refuse(&[
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        big.to_str().unwrap(),
        "--memory",
        "32",
    ]);
    assert!(
        l.contains("does not fit in guest RAM") && l.contains("raise --memory"),
        "{l}"
    );
}

#[test]
fn command_line_too_long() {
    let k = fake_bzimage("k-for-cmdline", 0x020f);
    let long = "a".repeat(5000);
    let l = refuse(&["--kernel", k.to_str().unwrap(), "--cmdline", &long]);
    assert!(l.contains("Kernel command line is 5000 bytes"), "{l}");
}

/// Runs vmm in a private mount namespace where `setup` has changed /dev, through `prefix`
/// (e.g. a privilege drop). Returns vmm's stderr, or None where the test cannot run.
fn stderr_in_namespace(setup: &str, prefix: &str) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to fake /dev/kvm in a mount namespace");
        return None;
    }
    let k = fake_bzimage("k-for-namespace", 0x020f);
    let script = format!(
        "{setup} && exec {prefix} {} --kernel {}",
        vmm_bin().display(),
        k.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare(1) from util-linux");
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_owned();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    Some(stderr)
}

#[test]
fn dev_kvm_missing() {
    if let Some(l) = stderr_in_namespace("mount -t tmpfs none /dev", "") {
        assert!(l.starts_with("vmm: /dev/kvm does not exist"), "{l}");
    }
}

#[test]
fn dev_kvm_not_permitted() {
    // The binary and kernel must be reachable by the unprivileged user for this to test vmm.
    let setup = "mount -t tmpfs none /dev && mknod /dev/kvm c 10 232 && chmod 600 /dev/kvm && \
                 mknod /dev/null c 1 3 && chmod 666 /dev/null";
    let drop = "setpriv --reuid=65534 --regid=65534 --clear-groups";
    if let Some(l) = stderr_in_namespace(setup, drop) {
        if !l.starts_with("vmm:") {
            eprintln!("skipped: the unprivileged user cannot run vmm from here: {l}");
            return;
        }
        assert_eq!(
            l,
            "vmm: Permission denied opening /dev/kvm: add the user to the 'kvm' group or run as root"
        );
    }
}

#[test]
fn the_same_qmp_socket_twice_is_a_duplicate() {
    let sock = std::env::temp_dir().join(format!("vmm-cli-dup-{}.sock", std::process::id()));
    let spec = format!("unix:{}", sock.display());
    let l = refuse(&[
        "--kernel",
        "/nonexistent",
        "--qmp",
        &spec,
        "--qmp",
        &format!("{spec},server=on,wait=off"),
    ]);
    assert_eq!(l, format!("vmm: --qmp {spec} is given twice"));
    let l = refuse(&[
        "--kernel",
        "/nonexistent",
        "--qmp",
        "tcp:127.0.0.1:4444",
        "--qmp",
        "tcp:127.0.0.1:4444",
    ]);
    assert_eq!(l, "vmm: --qmp tcp:127.0.0.1:4444 is given twice");
}

fn fifo(name: &str) -> std::path::PathBuf {
    let p = temp_file(name, b"");
    std::fs::remove_file(&p).unwrap();
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    p
}

#[test]
fn a_fifo_kernel_is_refused_without_opening_it() {
    let k = fifo("kernel.fifo");
    let l = refuse(&["--kernel", k.to_str().unwrap()]);
    assert_eq!(
        l,
        format!("vmm: kernel '{}' is not a regular file", k.display())
    );
}

#[test]
fn termination_signals_work_while_the_vm_is_being_built() {
    // Opening a FIFO for writing blocks until a reader appears: vmm is stuck in setup.
    let out = fifo("serial.fifo");
    let kernel = common::probe_bzimage();
    for (sig, text) in [
        (
            libc::SIGTERM,
            "vmm: terminated (SIGTERM) before the VM started",
        ),
        (
            libc::SIGINT,
            "vmm: interrupted (SIGINT) before the VM started",
        ),
    ] {
        let vmm = common::spawn(&[
            "--kernel",
            kernel.to_str().unwrap(),
            "--serial",
            &format!("file:{}", out.display()),
        ]);
        // Wait until it is blocked in openat(2) (syscall 257 on x86_64).
        let syscall = format!("/proc/{}/syscall", vmm.pid());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&syscall).is_ok_and(|s| s.starts_with("257 ")) {
            assert!(
                std::time::Instant::now() < deadline,
                "vmm never blocked in open"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        vmm.signal(sig);
        let done = vmm.finish(Duration::from_secs(30));
        done.assert_exit(1);
        assert_eq!(done.stderr.trim_end(), text);
    }
}
