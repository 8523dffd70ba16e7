// SPDX-License-Identifier: Apache-2.0
//! The probe guest booted through vmm on KVM: both entry protocols, the machine it finds
//! (RAM from e820, CPUs from the MADT, the command line), and the VM lifecycle (ACPI poweroff,
//! ACPI reset, triple fault, --no-reboot, host signals, console destinations).

mod common;

use std::time::Duration;

use common::{probe_bzimage, probe_elf, run, spawn};

/// Guard against hangs only; the probe guest normally finishes in well under a second.
const GUARD: Duration = Duration::from_secs(120);

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Boots the probe bzImage with `cmdline` and `extra` arguments, to completion.
fn probe(cmdline: &str, extra: &[&str]) -> common::Finished {
    let kernel = probe_bzimage();
    let mut args = vec!["--kernel", path(&kernel), "--cmdline", cmdline];
    args.extend_from_slice(extra);
    run(&args, GUARD)
}

/// Starts the probe bzImage with `cmdline` and `extra` arguments.
fn start_probe(cmdline: &str, extra: &[&str]) -> common::Running {
    let kernel = probe_bzimage();
    let mut args = vec!["--kernel", path(&kernel), "--cmdline", cmdline];
    args.extend_from_slice(extra);
    spawn(&args)
}

/// Boots `kernel` with the boot workload and checks what the probe reports.
fn boot_reports(kernel: &std::path::Path, entry: &str, cpus: u32, memory: u32) {
    let cmdline = format!("console=ttyS0 probe.test=boot vmm.tag=cpus{cpus}-mem{memory}");
    let out = run(
        &[
            "--kernel",
            path(kernel),
            "--cmdline",
            &cmdline,
            "--cpus",
            &cpus.to_string(),
            "--memory",
            &memory.to_string(),
        ],
        GUARD,
    );
    out.assert_exit(0);
    let ready = out.lines_with("PROBE ready");
    assert_eq!(
        ready,
        vec![format!("PROBE ready entry={entry} cpus={cpus}")]
    );
    let boot = out.lines_with("PROBE boot ");
    assert_eq!(boot.len(), 1, "{}", out.serial);
    assert!(
        boot[0].starts_with(&format!("PROBE boot ram_mib={memory} ")),
        "e820 RAM differs from --memory: {}",
        boot[0]
    );
    assert!(boot[0].contains(&format!(" cpus={cpus} ")), "{}", boot[0]);
    assert_eq!(
        out.lines_with("PROBE cmdline"),
        vec![format!("PROBE cmdline {cmdline}")]
    );
    assert_eq!(out.lines_with("PROBE-DONE"), vec!["PROBE-DONE rc=0"]);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
}

#[test]
fn bzimage_entry_reports_ram_cpus_and_cmdline() {
    boot_reports(&probe_bzimage(), "bzimage64", 2, 256);
}

#[test]
fn pvh_entry_reports_ram_cpus_and_cmdline() {
    boot_reports(&probe_elf(), "pvh", 3, 200);
}

#[test]
fn ram_above_the_mmio_hole_is_reported() {
    boot_reports(&probe_bzimage(), "bzimage64", 1, 3584 + 512);
}

#[test]
fn sixty_four_cpus_come_from_the_madt() {
    boot_reports(&probe_bzimage(), "bzimage64", 64, 128);
}

#[test]
fn acpi_tables_are_what_the_guest_uses() {
    let out = probe("probe.test=boot", &[]);
    out.assert_exit(0);
    let acpi = out.lines_with("PROBE acpi");
    assert_eq!(acpi.len(), 1, "{}", out.serial);
    for field in [
        "rsdp=0xe0000",
        "root=xsdt",
        "hw_reduced=1",
        "sleep_ctl=io:0x600",
        "reset=io:0x602=0x42",
        "ged_gsi=5",
    ] {
        assert!(acpi[0].contains(field), "{field} missing: {}", acpi[0]);
    }
}

fn reboot_test(workload: &str, reboot_line: &str) {
    let cmdline = format!("probe.test={workload}");
    // With --no-reboot the reset ends the VM cleanly.
    let out = probe(&cmdline, &["--no-reboot"]);
    out.assert_exit(0);
    assert_eq!(out.lines_with("PROBE ready").len(), 1, "{}", out.serial);
    assert_eq!(out.lines_with(reboot_line).len(), 1, "{}", out.serial);
    // Without it the VM resets in place and the guest boots again, more than once.
    let mut vm = start_probe(&cmdline, &[]);
    for _ in 0..3 {
        vm.wait_line("PROBE ready entry=bzimage64", GUARD);
        vm.wait_line(reboot_line, GUARD);
    }
    vm.signal(libc::SIGTERM);
    let out = vm.finish(GUARD);
    out.assert_exit(0);
    assert!(out.lines_with("PROBE ready").len() >= 3);
}

#[test]
fn acpi_reset_register_reboots() {
    reboot_test("reboot", "PROBE reboot");
}

#[test]
fn i8042_reset_line_reboots() {
    // One line only: a "PROBE kbd-reset-ignored" would mean the write had no effect.
    reboot_test("kbd-reset", "PROBE kbd-reset");
}

#[test]
fn triple_fault_reboots() {
    reboot_test("triple-fault", "PROBE triple-fault");
}

fn signal_exits_cleanly(sig: i32) {
    let mut vm = start_probe("probe.test=idle", &[]);
    vm.wait_line("PROBE idle", GUARD);
    vm.signal(sig);
    let out = vm.finish(GUARD);
    out.assert_exit(0);
    assert!(out.lines_with("PROBE-DONE").is_empty(), "{}", out.serial);
}

#[test]
fn sigterm_exits_cleanly() {
    signal_exits_cleanly(libc::SIGTERM);
}

#[test]
fn sigint_exits_cleanly() {
    signal_exits_cleanly(libc::SIGINT);
}

#[test]
fn paused_start_runs_nothing() {
    let vm = start_probe("probe.test=boot", &["-S"]);
    std::thread::sleep(Duration::from_millis(500));
    vm.signal(libc::SIGTERM);
    let out = vm.finish(GUARD);
    out.assert_exit(0);
    assert!(
        out.serial.is_empty(),
        "a paused guest printed: {}",
        out.serial
    );
}

#[test]
fn serial_to_file_and_to_nowhere() {
    let file = std::env::temp_dir().join(format!("vmm-serial-{}.log", std::process::id()));
    let spec = format!("file:{}", file.display());
    let out = probe("probe.test=boot", &["--serial", &spec]);
    out.assert_exit(0);
    assert!(out.serial.is_empty());
    let logged = std::fs::read_to_string(&file).unwrap();
    assert!(logged.contains("PROBE-DONE rc=0"), "{logged}");
    let _ = std::fs::remove_file(&file);

    let out = probe("probe.test=boot", &["--serial", "none"]);
    out.assert_exit(0);
    assert!(out.serial.is_empty());
}

#[test]
fn unknown_workload_is_reported_by_the_guest() {
    let out = probe("probe.test=no-such-test", &[]);
    out.assert_exit(0);
    let done = out.lines_with("PROBE-DONE");
    assert_eq!(done.len(), 1, "{}", out.serial);
    assert!(done[0].starts_with("PROBE-DONE rc=2"), "{}", done[0]);
}

#[test]
fn debug_port_timestamps_the_ready_code() {
    let out = probe("probe.test=boot", &["--debug-port"]);
    out.assert_exit(0);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    let ms: f64 = lines[0]
        .strip_prefix("vmm: debug port: code 0x41 at ")
        .and_then(|r| r.strip_suffix(" ms"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {:?}", lines[0]));
    assert!(ms > 0.0);
    // Without the flag nothing is logged.
    let quiet = probe("probe.test=boot", &[]);
    assert!(quiet.stderr.is_empty(), "{}", quiet.stderr);
}
