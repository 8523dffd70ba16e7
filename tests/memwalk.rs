// SPDX-License-Identifier: Apache-2.0
//! The probe guest's `mem-walk` workload under vmm: the guest rewrites its pages with
//! generation counters and checksums, QMP's `system_powerdown` makes it verify every page, and
//! a `stop`/`cont` pause shows up as its longest stall (so that the stall detector the
//! migration tests rely on measures something); with two vCPUs each walks its own share.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{probe_bzimage, spawn, Running};
use qapi::client::Connection;
use qapi::events::Event;
use qapi::qmp::client::Client;

const GUARD: Duration = Duration::from_secs(60);
/// Lines that end a wait at once: the guest failed.
const FATAL: &[&str] = &[
    "PROBE-DONE",
    "PROBE fault",
    "PROBE error",
    "PROBE mem-walk bad",
];

fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vmm-memwalk-{tag}-{}.sock", std::process::id()))
}

/// vmm running `cmdline` with `mem_mib` MiB of RAM and `cpus` vCPUs, and a negotiated QMP
/// client.
fn start(tag: &str, cmdline: &str, mem_mib: u32, cpus: u32) -> (Running, Client) {
    let sock = socket_path(tag);
    let qmp = format!("unix:{}", sock.display());
    let kernel = probe_bzimage();
    let mem = mem_mib.to_string();
    let cpus = cpus.to_string();
    let vm = spawn(&[
        "--cpus",
        &cpus,
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        cmdline,
        "--memory",
        &mem,
        "--qmp",
        &qmp,
    ]);
    let deadline = Instant::now() + GUARD;
    let conn = loop {
        match Connection::connect_unix(&sock) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("cannot connect to {}: {e}", sock.display()),
        }
    };
    conn.negotiate(false).expect("qmp_capabilities");
    (vm, Client::new(conn))
}

/// The number after ` key=` in `line`.
fn field(line: &str, key: &str) -> u64 {
    let pat = format!(" {key}=");
    let at = line
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        + pat.len();
    let digits: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{key}= is not a number in {line:?}"))
}

fn next_event(c: &Client) -> Event {
    c.next_event(Some(GUARD))
        .expect("event")
        .expect("an event before the guard")
        .0
}

/// Presses the power button and returns the guest's verdict line once vmm has exited 0.
fn power_down(mut vm: Running, c: &Client) -> String {
    c.system_powerdown().expect("system_powerdown");
    vm.wait_line_unless("PROBE power-button", FATAL, GUARD);
    let verdict = vm.wait_line_unless("PROBE mem-walk pages=", FATAL, GUARD);
    vm.wait_line("PROBE-DONE rc=0", GUARD);
    vm.finish(GUARD).assert_exit(0);
    verdict
}

#[test]
fn every_page_verifies_after_the_power_button() {
    let (mut vm, c) = start("verify", "probe.test=mem-walk probe.mib=64", 256, 1);
    let start = vm.wait_line_unless("PROBE mem-walk start", FATAL, GUARD);
    assert_eq!(field(&start, "pages"), 16384, "{start}");
    let first = vm.wait_line_unless("PROBE mem-walk progress", FATAL, GUARD);
    let second = vm.wait_line_unless("PROBE mem-walk progress", FATAL, GUARD);
    // The walker runs at the CPU's speed: many rewrites a second, more in each line.
    assert!(
        field(&second, "rewrites") > field(&first, "rewrites") + 10_000,
        "{first}\n{second}"
    );
    let verdict = power_down(vm, &c);
    assert_eq!(field(&verdict, "pages"), 16384, "{verdict}");
    assert_eq!(field(&verdict, "bad"), 0, "{verdict}");
    assert_eq!(field(&verdict, "backwards"), 0, "{verdict}");
    // At least two seconds of rewrites over 16384 pages: several full sweeps.
    assert!(field(&verdict, "generations") >= 2, "{verdict}");
    assert!(
        field(&verdict, "rewrites") >= field(&second, "rewrites"),
        "{second}\n{verdict}"
    );
}

#[test]
fn a_two_second_pause_is_the_longest_stall() {
    let (mut vm, c) = start("stall", "probe.test=mem-walk probe.mib=16", 256, 1);
    let before = vm.wait_line_unless("PROBE mem-walk progress", FATAL, GUARD);
    // Without a pause the guest's clock does not stop for long (the host's scheduler can
    // take the vCPU away for a few hundred ms on a busy machine, not for the pause's 2 s).
    assert!(field(&before, "max_stall_ms") < 1500, "{before}");
    c.stop().expect("stop");
    assert!(matches!(next_event(&c), Event::Stop));
    let paused = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    c.cont().expect("cont");
    let held = paused.elapsed().as_millis() as u64;
    assert!(matches!(next_event(&c), Event::Resume));
    // Shorter stalls (the host's scheduler, 100 ms and more) may be reported first.
    let (stall, ms) = loop {
        let stall = vm.wait_line_unless("PROBE mem-walk stall", FATAL, GUARD);
        let ms = field(&stall, "ms");
        if ms >= 1000 {
            break (stall, ms);
        }
    };
    // At least the pause (less the clock's granularity); the upper bound is only a sanity
    // check: a loaded host may keep the vCPU from running for a while after `cont`.
    assert!(
        (1900..=held + 10_000).contains(&ms),
        "paused for {held} ms, the guest saw a stall of {ms} ms: {stall}"
    );
    let after = vm.wait_line_unless("PROBE mem-walk progress", FATAL, GUARD);
    assert_eq!(field(&after, "max_stall_ms"), ms, "{after}");
    let verdict = power_down(vm, &c);
    assert_eq!(field(&verdict, "bad"), 0, "{verdict}");
    assert_eq!(field(&verdict, "max_stall_ms"), ms, "{verdict}");
}

#[test]
fn two_vcpus_walk_their_own_shares() {
    let (mut vm, c) = start(
        "smp",
        "probe.test=mem-walk probe.mib=32 probe.cpus=2 probe.interval=200",
        256,
        2,
    );
    let start = vm.wait_line_unless("PROBE mem-walk start", FATAL, GUARD);
    assert_eq!(field(&start, "cpus"), 2, "{start}");
    vm.wait_line_unless("PROBE mem-walk progress", FATAL, GUARD);
    vm.wait_line_unless("PROBE mem-walk progress", FATAL, GUARD);
    let verdict = power_down(vm, &c);
    assert_eq!(field(&verdict, "pages"), 8192, "{verdict}");
    assert_eq!(field(&verdict, "bad"), 0, "{verdict}");
    assert_eq!(field(&verdict, "cpus"), 2, "{verdict}");
    // generations counts the sweeps of the slower walker: both of them went round.
    assert!(field(&verdict, "generations") >= 1, "{verdict}");
}

#[test]
fn more_pages_than_ram_is_one_clear_line() {
    let (mut vm, _c) = start("nomem", "probe.test=mem-walk probe.mib=512", 256, 1);
    let line = vm.wait_line_unless("PROBE mem-walk status=no-memory", &["PROBE-DONE"], GUARD);
    assert_eq!(field(&line, "mib"), 512, "{line}");
    assert!(field(&line, "avail_mib") < 256, "{line}");
    vm.wait_line("PROBE-DONE rc=1", GUARD);
    vm.finish(GUARD).assert_exit(0);
}
