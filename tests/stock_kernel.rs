// SPDX-License-Identifier: Apache-2.0
//! Debian's stock cloud kernel (the project's reference guest) against our boot protocol and
//! ACPI tables.
//!
//! On PVM hosts (like this project's CI) guest ring 0 is emulated and the kernel dies on an
//! instruction the emulator refuses, so these are smoke tests of what the kernel reports in
//! its own log before that: the command line, our e820 map, every ACPI table we built, and the
//! CPU count from our MADT. On hardware KVM the kernel goes on to panic for lack of a root
//! filesystem and reboots (`panic=-1`), which `--no-reboot` turns into a clean exit.

mod common;

use std::time::Duration;

use common::{script, spawn};

/// The kernel, fetched by scripts/guest-kernel.sh (idempotent).
fn kernel_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(script("guest-kernel.sh"))
}

/// How the run may end: a clean exit after the guest's reset (hardware KVM), or one error
/// line naming KVM's emulation failure and the guest RIP (PVM).
fn assert_ended_as_expected(out: &common::Finished) {
    match out.status.code() {
        Some(0) => {}
        Some(1) => {
            let lines: Vec<&str> = out.stderr.lines().collect();
            assert_eq!(lines.len(), 1, "one error line expected: {}", out.stderr);
            assert!(
                lines[0].starts_with("vmm: KVM internal error") && lines[0].contains(" at RIP 0x"),
                "{}",
                lines[0]
            );
        }
        other => panic!("unexpected exit {other:?}: {}", out.stderr),
    }
}

#[test]
fn pvh_boot_reports_our_machine() {
    let k = kernel_dir().join("vmlinux");
    let cmdline = "console=ttyS0 earlyprintk=serial panic=-1 vmm.test=pvh-smoke";
    let mut vm = spawn(&[
        "--kernel",
        k.to_str().unwrap(),
        "--cmdline",
        cmdline,
        "--cpus",
        "2",
        "--memory",
        "512",
        "--no-reboot",
    ]);
    // The guard is generous because ring 0 is emulated on PVM (about a minute there).
    vm.wait_line("[    0.000000] Linux version", Duration::from_secs(300));
    let out = vm.finish(Duration::from_secs(600));
    let log = &out.serial;
    assert!(log.contains(&format!("Command line: {cmdline}")), "{log}");
    for e820 in [
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
        "BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved",
        "BIOS-e820: [mem 0x0000000000100000-0x000000001fffffff] usable",
    ] {
        assert!(log.contains(e820), "missing {e820:?}\n{log}");
    }
    for table in ["RSDP 0x00000000000E0000", "XSDT", "FACP", "DSDT", "APIC"] {
        assert!(
            log.contains(&format!("ACPI: {table} ")),
            "table {table} not listed\n{log}"
        );
    }
    assert!(!log.contains("Incorrect checksum"), "{log}");
    assert!(!log.contains("ACPI BIOS Error"), "{log}");
    assert!(
        log.contains("ACPI: Using ACPI (MADT) for SMP configuration information"),
        "{log}"
    );
    assert!(
        log.contains("smpboot: Allowing 2 CPUs, 0 hotplug CPUs"),
        "{log}"
    );
    assert_ended_as_expected(&out);
}

#[test]
fn bzimage_boot_reaches_the_kernel() {
    let k = kernel_dir().join("vmlinuz");
    let cmdline = "console=ttyS0 earlyprintk=serial panic=-1 vmm.test=bzimage-smoke";
    let mut vm = spawn(&[
        "--kernel",
        k.to_str().unwrap(),
        "--cmdline",
        cmdline,
        "--memory",
        "256",
        "--no-reboot",
    ]);
    // On PVM the decompressor runs in emulated ring 0 for minutes before this line.
    let first = vm.wait_line("[    0.000000] Linux version", Duration::from_secs(900));
    assert!(first.contains("6.1.0"), "{first}");
    let line = vm.wait_line("[    0.000000] Command line:", Duration::from_secs(120));
    assert!(line.ends_with(cmdline), "{line}");
    vm.signal(libc::SIGTERM);
    let out = vm.finish(Duration::from_secs(60));
    // SIGTERM is a clean exit; the guest may also have died on PVM or rebooted on hardware KVM
    // in the meantime.
    assert_ended_as_expected(&out);
}

/// With a monitor, a KVM internal error leaves the VM paused in `internal-error` for the
/// manager to inspect, instead of exiting. On PVM hosts Debian's kernel reliably stops on an
/// instruction the emulator refuses; on hardware KVM it does not, so there is nothing to test.
#[test]
fn internal_error_is_kept_for_inspection_with_a_monitor() {
    use qapi::client::{ClientError, Connection};
    use qapi::events::Event;
    use qapi::qmp::client::Client;
    use qapi::types::{RunState, ShutdownCause};

    if common::hardware_kvm() {
        eprintln!("skipped: on hardware KVM the stock kernel does not hit an emulation failure");
        return;
    }
    let k = kernel_dir().join("vmlinux");
    let sock = std::env::temp_dir().join(format!("vmm-internal-error-{}.sock", std::process::id()));
    let qmp = format!("unix:{}", sock.display());
    let vm = spawn(&[
        "--kernel",
        k.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0 panic=-1",
        "--memory",
        "256",
        "--qmp",
        &qmp,
        "-S",
    ]);
    let conn = {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match Connection::connect_unix(&sock) {
                Ok(c) => break c,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("cannot connect: {e}"),
            }
        }
    };
    conn.negotiate(false).unwrap();
    let c = Client::new(conn);
    c.cont().unwrap();
    // RESUME from the cont, then STOP when the emulation failure pauses the VM.
    loop {
        match c.next_event(Some(Duration::from_secs(600))).unwrap() {
            Some((Event::Resume, _)) => {}
            Some((Event::Stop, _)) => break,
            other => panic!("unexpected event {other:?}"),
        }
    }
    let s = c.query_status().unwrap();
    assert_eq!((s.status, s.running), (RunState::InternalError, false));
    match c.cont() {
        Err(ClientError::Command(e)) => {
            assert_eq!(e.desc, "Resetting the Virtual Machine is required")
        }
        other => panic!("cont after an internal error: {other:?}"),
    }
    c.quit().unwrap();
    match c.next_event(Some(Duration::from_secs(60))).unwrap() {
        Some((Event::Shutdown(a), _)) => {
            assert_eq!((a.guest, a.reason), (false, ShutdownCause::HostQmpQuit))
        }
        other => panic!("expected SHUTDOWN, got {other:?}"),
    }
    let out = vm.finish(Duration::from_secs(60));
    out.assert_exit(1);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(
        lines[0].starts_with("vmm: KVM internal error") && lines[0].contains(" at RIP 0x"),
        "{}",
        lines[0]
    );
}
