// SPDX-License-Identifier: Apache-2.0
//! Hostile guests (the probe's `pio-chaos` and `virtq-chaos`): random port I/O and MMIO to
//! every device vmm emulates and to the gaps between them, and hostile virtqueue rings
//! (loops, chains past the queue size, bad indirect tables, addresses outside RAM, wrong
//! directions, the available index running ahead, other vCPUs scribbling on the rings while
//! requests are in flight). vmm must neither crash nor print errors, each device must end up
//! reporting a status, ignoring the access or asking for a reset as virtio allows, and work
//! again afterwards; the disk image must hold exactly what the valid writes put there.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{probe_bzimage, spawn};
use qapi::client::Connection;
use qapi::qmp::client::Client;

const GUARD: Duration = Duration::from_secs(120);
const SECTOR: usize = 512;
/// The image: 4 MiB.
const SECTORS: usize = 8192;
/// virtq-chaos: every hostile write aims at sectors 0..1024 (which hold this seed's pattern),
/// the valid writes land at 2048..2057, the round trip at 4096..4104.
const PROTECTED_SEED: u64 = 77;
const PROTECTED: std::ops::Range<usize> = 0..1024;
const VALID: std::ops::Range<usize> = 2048..2057;
const ROUND_TRIP: std::ops::Range<usize> = 4096..4104;

/// The probe's pattern: sector `x` holds the little-endian u64 `x ^ (seed << 40)` 64 times.
fn pattern(x: u64, seed: u64) -> Vec<u8> {
    (x ^ (seed << 40)).to_le_bytes().repeat(SECTOR / 8)
}

fn temp(tag: &str, ext: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vmm-hostile-{tag}-{}.{ext}", std::process::id()))
}

/// What vmm may print on stderr in these runs: nothing but the io_uring notice of a host
/// that refuses rings.
fn assert_quiet(stderr: &str, serial: &str) {
    let unexpected: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("io_uring is not available here"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "vmm printed on stderr:\n{stderr}\n--- serial ---\n{serial}"
    );
}

/// The value of `key=` in `line`.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let k = format!(" {key}=");
    let at = line
        .find(&k)
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"));
    line[at + k.len()..].split(' ').next().unwrap_or_default()
}

/// Kills vmm if the test panics while the guest idles (it would wait for the power button
/// forever).
struct KillOnPanic(u32);

impl KillOnPanic {
    /// For `Running::finish`, which kills vmm itself when it does not exit and reaps it
    /// (after which the pid may belong to someone else).
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SAFETY: kill has no memory effects; the pid is the child this test started and
            // has not reaped yet.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

/// Starts vmm with a QMP socket; returns it and a negotiated client.
fn start_with_qmp(tag: &str, args: &[&str]) -> (common::Running, Client, PathBuf, KillOnPanic) {
    let sock = temp(tag, "sock");
    let qmp = format!("unix:{}", sock.display());
    let mut all = args.to_vec();
    all.extend(["--qmp", &qmp]);
    let vm = spawn(&all);
    let guard = KillOnPanic(vm.pid());
    let deadline = Instant::now() + GUARD;
    let conn = loop {
        match Connection::connect_unix(&sock) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("cannot connect to {}: {e}", sock.display()),
        }
    };
    conn.negotiate(true).expect("qmp_capabilities");
    (vm, Client::new(conn), sock, guard)
}

#[test]
fn hostile_port_and_mmio_accesses_leave_the_devices_working() {
    let kernel = probe_bzimage();
    // A disk, so that there are gaps on both sides of a virtio-mmio window.
    let img = temp("pio", "raw");
    std::fs::write(&img, vec![0u8; SECTORS * SECTOR]).unwrap();
    for seed in [1u64, 7, 23] {
        let cmdline = format!("probe.test=pio-chaos,idle probe.seed={seed} probe.count=10000");
        let (mut vm, c, sock, guard) = start_with_qmp(
            &format!("pio{seed}"),
            &[
                "--kernel",
                kernel.to_str().unwrap(),
                "--disk",
                img.to_str().unwrap(),
                "--cmdline",
                &cmdline,
            ],
        );
        vm.wait_line_unless("PROBE idle", &["PROBE-DONE"], GUARD);
        // The GED still delivers the power button, and the guest's ACPI poweroff ends vmm.
        c.system_powerdown().unwrap();
        vm.wait_line("PROBE power-button", GUARD);
        guard.disarm();
        let out = vm.finish(GUARD);
        out.assert_exit(0);
        assert!(!sock.exists());
        let chaos = out.lines_with("PROBE pio-chaos");
        assert_eq!(chaos.len(), 1, "{}", out.serial);
        let line = chaos[0];
        for (key, want) in [
            ("status", "ok"),
            ("unclaimed_bad", "0"),
            ("com1", "ok"),
            ("debug_port", "ok"),
            ("i8042_status", "0x00"),
            ("pm_status", "0x00"),
        ] {
            assert_eq!(field(line, key), want, "{key} in {line}");
        }
        // Every kind of target was hit, and unclaimed reads were checked.
        let count = |k: &str| field(line, k).parse::<u64>().unwrap();
        assert!(count("pio") > 5_000 && count("mmio") > 1_500, "{line}");
        assert!(count("unclaimed_reads") > 1_000, "{line}");
        // Below and above the window, between the APICs, above the local APIC.
        assert!(count("gaps") >= 4, "{line}");
        assert_eq!(out.lines_with("PROBE-DONE"), vec!["PROBE-DONE rc=0"]);
        assert_quiet(&out.stderr, &out.serial);
        // The chaos did not touch the disk.
        assert!(std::fs::read(&img).unwrap().iter().all(|&b| b == 0));
    }
    let _ = std::fs::remove_file(&img);
}

/// The CPU time (user and system, all threads) process `pid` uses during `window`.
fn cpu_seconds(pid: u32, window: Duration) -> f64 {
    let ticks = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name (which may hold spaces): utime and stime are the
        // 12th and 13th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<u64> = rest
            .split(' ')
            .skip(11)
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        f[0] + f[1]
    };
    let before = ticks();
    std::thread::sleep(window);
    let used = ticks() - before;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    used as f64 / hz as f64
}

/// What the device must do with each hostile case (virtio 1.2: complete it with a status,
/// or set DEVICE_NEEDS_RESET and interrupt with the configuration-change bit).
fn expected(case: &str) -> (&'static str, &'static str) {
    match case {
        "valid-write" | "valid-write-zero-length-middle" => ("completed", "ok"),
        "data-across-ram-end"
        | "data-in-mmio-hole"
        | "data-wraps-2^64"
        | "data-length-past-ram"
        | "write-from-writable-data"
        | "write-past-capacity"
        | "get-id-into-readable-data"
        | "write-zeroes-then-beyond-disk"
        | "discard-then-beyond-disk"
        | "write-zeroes-offset-overflow"
        | "write-zeroes-too-many-sectors" => ("completed", "ioerr"),
        "unknown-type"
        | "write-zeroes-unknown-flags"
        | "discard-unmap-flag"
        | "discard-too-many-segments" => ("completed", "unsupp"),
        _ => ("needs-reset", "unset"),
    }
}

const CASES: usize = 36;

fn virtq_chaos(cpus: u32, seed: u64) {
    let img = temp(&format!("vq{cpus}-{seed}"), "raw");
    let mut image = vec![0u8; SECTORS * SECTOR];
    for x in PROTECTED {
        image[x * SECTOR..(x + 1) * SECTOR].copy_from_slice(&pattern(x as u64, PROTECTED_SEED));
    }
    std::fs::write(&img, &image).unwrap();
    let kernel = probe_bzimage();
    let cpus_arg = cpus.to_string();
    let cmdline = format!("probe.test=virtq-chaos,idle probe.seed={seed} probe.count=20");
    let (mut vm, c, _sock, guard) = start_with_qmp(
        &format!("vq{cpus}-{seed}"),
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--cpus",
            &cpus_arg,
            "--disk",
            img.to_str().unwrap(),
            "--cmdline",
            &cmdline,
        ],
    );
    vm.wait_line_unless("PROBE idle", &["PROBE-DONE"], GUARD);
    // Nothing spins once the guest is idle: no I/O thread left looping on a broken queue.
    let busy = cpu_seconds(vm.pid(), Duration::from_secs(1));
    c.system_powerdown().unwrap();
    vm.wait_line("PROBE power-button", GUARD);
    guard.disarm();
    let out = vm.finish(GUARD);
    assert!(
        busy < 0.2,
        "vmm used {busy:.2} s of CPU in 1 s while the guest idled\n{}",
        out.serial
    );
    let after = std::fs::read(&img).unwrap();
    let _ = std::fs::remove_file(&img);
    out.assert_exit(0);
    let ctx = |what: &str| format!("{what} (cpus={cpus} seed={seed})\n{}", out.serial);

    let cases: Vec<&str> = out
        .lines_with("PROBE virtq-chaos case=")
        .into_iter()
        .filter(|l| !l.contains("case=race"))
        .collect();
    assert_eq!(cases.len(), CASES, "{}", ctx("case lines"));
    for line in cases {
        let case = line["PROBE virtq-chaos case=".len()..]
            .split(' ')
            .next()
            .unwrap();
        let (outcome, status) = expected(case);
        assert_eq!(field(line, "outcome"), outcome, "{}", ctx(line));
        assert_eq!(field(line, "status"), status, "{}", ctx(line));
        assert_eq!(field(line, "ro"), "ok", "{}", ctx(line));
        assert_eq!(field(line, "canary"), "ok", "{}", ctx(line));
        assert_eq!(field(line, "irq"), "yes", "{}", ctx(line));
        let isr = u32::from_str_radix(field(line, "isr").trim_start_matches("0x"), 16).unwrap();
        let bit = if outcome == "completed" { 1 } else { 2 };
        assert_eq!(isr, bit, "{}", ctx(line));
        if outcome == "completed" {
            // Only the status byte was written (nothing was read into the guest).
            assert_eq!(field(line, "used_len"), "1", "{}", ctx(line));
        }
    }

    // The races: the device never reads the used ring, so scribbling there changes nothing;
    // garbage in the available ring may break the queue, random register writes from other
    // vCPUs may fail or reset it; nothing else.
    let races = out.lines_with("PROBE virtq-chaos case=race");
    let names: Vec<&str> = races
        .iter()
        .map(|l| {
            l["PROBE virtq-chaos case=".len()..]
                .split(' ')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(
        names,
        ["race-used", "race-avail", "race-all", "race-registers"],
        "{}",
        ctx("races")
    );
    for line in &races {
        assert_eq!(field(line, "cpus"), cpus.to_string(), "{}", ctx(line));
        // Stores to the registers exit to vmm one by one: far fewer of them.
        let least = if line.contains("case=race-registers ") {
            10
        } else {
            1000
        };
        assert!(
            field(line, "stores").parse::<u64>().unwrap() > least,
            "{}",
            ctx(line)
        );
        assert!(
            field(line, "submitted").parse::<u64>().unwrap() > 0,
            "{}",
            ctx(line)
        );
        assert_eq!(field(line, "ro"), "ok", "{}", ctx(line));
        assert_eq!(field(line, "canary"), "ok", "{}", ctx(line));
        let outcome = field(line, "outcome");
        if line.contains("case=race-used ") {
            assert_eq!(outcome, "survived", "{}", ctx(line));
        } else {
            assert!(
                ["survived", "needs-reset"].contains(&outcome),
                "{}",
                ctx(line)
            );
        }
    }
    assert_eq!(
        out.lines_with("PROBE virtq-chaos round-trip"),
        vec!["PROBE virtq-chaos round-trip status=ok match=yes"],
        "{}",
        ctx("round trip")
    );
    assert_eq!(
        out.lines_with("PROBE-DONE"),
        vec!["PROBE-DONE rc=0"],
        "{}",
        ctx("rc")
    );
    assert_quiet(&out.stderr, &out.serial);

    // The image: exactly the protected pattern and the valid writes, zero elsewhere.
    let mut want = image;
    for x in VALID.chain(ROUND_TRIP) {
        want[x * SECTOR..(x + 1) * SECTOR].copy_from_slice(&pattern(x as u64, seed));
    }
    if let Some(x) = (0..SECTORS)
        .find(|&x| after[x * SECTOR..(x + 1) * SECTOR] != want[x * SECTOR..(x + 1) * SECTOR])
    {
        panic!(
            "sector {x} of the image is wrong: {:02x?}...\n{}",
            &after[x * SECTOR..x * SECTOR + 16],
            ctx("image")
        );
    }
}

#[test]
fn hostile_rings_on_two_vcpus_leave_the_image_exact() {
    for seed in [1, 2] {
        virtq_chaos(2, seed);
    }
}

#[test]
fn hostile_rings_on_four_vcpus_leave_the_image_exact() {
    for seed in [3, 4] {
        virtq_chaos(4, seed);
    }
}
