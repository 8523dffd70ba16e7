// SPDX-License-Identifier: Apache-2.0
//! seccomp: with the default `--seccomp on` every thread of a running vmm (main loop, vCPUs,
//! QMP monitor, block I/O threads, block request threads) is confined (`Seccomp: 2`, filter
//! mode, in /proc/PID/task/*/status) while the guest does I/O through both engines and QMP is
//! used; with `--seccomp off` none is. That a forbidden call is caught on each kind of thread
//! is checked by the unit tests of `vmm/src/seccomp.rs` (the same filters with EPERM).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{probe_bzimage, spawn};
use qapi::client::Connection;
use qapi::qmp::client::Client;

const GUARD: Duration = Duration::from_secs(60);

/// Thread name → `Seccomp:` value of every thread of `pid`.
fn seccomp_modes(pid: u32) -> BTreeMap<String, Vec<u32>> {
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap();
        out.entry(comm.trim().to_owned()).or_default().push(mode);
    }
    out
}

fn image(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("vmm-seccomp-{tag}-{}.raw", std::process::id()));
    std::fs::File::create(&p)
        .and_then(|f| f.set_len(8 << 20))
        .unwrap();
    p
}

/// Starts vmm with two disks (io_uring and threads) running the probe's I/O loop on disk 1
/// (the threads engine, so request threads exist) and a QMP socket; returns it once the guest
/// has done I/O and QMP answered.
fn busy_vm(mode: &str, tag: &str) -> (common::Running, Client, [PathBuf; 2]) {
    let imgs = [image(&format!("{tag}-a")), image(&format!("{tag}-b"))];
    let sock = std::env::temp_dir().join(format!("vmm-seccomp-{tag}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let kernel = probe_bzimage();
    let disk_a = format!("path={},aio=io_uring", imgs[0].display());
    let disk_b = format!("path={},aio=threads", imgs[1].display());
    let qmp = format!("unix:{}", sock.display());
    let mut vm = spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "probe.test=io-loop probe.dev=1 probe.count=64",
        "--cpus",
        "2",
        "--disk",
        &disk_a,
        "--disk",
        &disk_b,
        "--qmp",
        &qmp,
        "--seccomp",
        mode,
    ]);
    vm.wait_line("PROBE io-loop iters=", GUARD);
    let deadline = Instant::now() + GUARD;
    let conn = loop {
        match Connection::connect_unix(&sock) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("cannot connect: {e}"),
        }
    };
    conn.negotiate(true).unwrap();
    let c = Client::new(conn);
    assert!(c.query_status().unwrap().running);
    assert_eq!(c.query_block().unwrap().len(), 2);
    (vm, c, imgs)
}

#[test]
fn every_thread_is_confined_by_default() {
    let (vm, c, imgs) = busy_vm("on", "on");
    let modes = seccomp_modes(vm.pid());
    for name in [
        "vmm",
        "vcpu0",
        "vcpu1",
        "qmp-monitor",
        "blk-drive0",
        "blk-drive1",
    ] {
        assert!(modes.contains_key(name), "no thread {name}: {modes:?}");
    }
    assert!(
        modes.keys().any(|n| n.starts_with("blk-drive1-r")),
        "no request thread of the threads engine: {modes:?}"
    );
    for (name, values) in &modes {
        assert!(
            values.iter().all(|&m| m == 2),
            "thread {name} is not confined: {values:?}"
        );
    }
    // The filters let everything the VM does run: QMP, I/O, stop/cont, quit.
    c.stop().unwrap();
    c.cont().unwrap();
    c.quit().unwrap();
    let out = vm.finish(GUARD);
    out.assert_exit(0);
    assert!(!out.stderr.contains("seccomp"), "{}", out.stderr);
    assert!(!out.serial.contains("PROBE io-error"), "{}", out.serial);
    for p in imgs {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn seccomp_off_confines_nothing() {
    let (vm, c, imgs) = busy_vm("off", "off");
    let modes = seccomp_modes(vm.pid());
    for (name, values) in &modes {
        // Kernel worker threads attached to the process (e.g. KVM's) are not ours.
        if name.starts_with("vmm") || name.starts_with("vcpu") || name.starts_with("blk-") {
            assert!(values.iter().all(|&m| m == 0), "{name}: {values:?}");
        }
    }
    c.quit().unwrap();
    vm.finish(GUARD).assert_exit(0);
    for p in imgs {
        let _ = std::fs::remove_file(p);
    }
}
