// SPDX-License-Identifier: Apache-2.0
//! virtio-blk through the probe guest: the guest writes its sector pattern and the host checks
//! the image bytes, the host writes and the guest reads, read-only disks, GET_ID, durability
//! of flushed data across SIGKILL, several disks, interrupt and polling modes, and bad
//! `--disk` values.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{probe_bzimage, run, spawn};

const GUARD: Duration = Duration::from_secs(120);
const SECTOR: usize = 512;

/// The probe's pattern: sector `x` holds the little-endian u64 `x ^ (seed << 40)` 64 times.
fn pattern(x: u64, seed: u64) -> Vec<u8> {
    (x ^ (seed << 40)).to_le_bytes().repeat(SECTOR / 8)
}

struct Image(PathBuf);

impl Image {
    fn new(tag: &str, sectors: u64) -> Self {
        let p = std::env::temp_dir().join(format!("vmm-blk-{tag}-{}.raw", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(sectors * SECTOR as u64).unwrap();
        Image(p)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    fn sector(&self, x: u64) -> Vec<u8> {
        let all = std::fs::read(&self.0).unwrap();
        all[x as usize * SECTOR..(x as usize + 1) * SECTOR].to_vec()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn kernel() -> PathBuf {
    probe_bzimage()
}

/// Boots the probe with `disks` (each a --disk value) and `cmdline`; returns the serial log.
fn probe(disks: &[&str], cmdline: &str) -> common::Finished {
    let k = kernel();
    let mut args = vec!["--kernel", k.to_str().unwrap(), "--cmdline", cmdline];
    for d in disks {
        args.push("--disk");
        args.push(d);
    }
    let out = run(&args, GUARD);
    out.assert_exit(0);
    out
}

fn one(out: &common::Finished, prefix: &str) -> String {
    let lines = out.lines_with(prefix);
    assert_eq!(
        lines.len(),
        1,
        "one {prefix:?} line expected:\n{}",
        out.serial
    );
    lines[0].to_owned()
}

#[test]
fn guest_writes_reach_the_image_at_several_offsets() {
    let sectors = 8192;
    let img = Image::new("write", sectors);
    for (lba, count, seed) in [
        (0, 8, 3),
        (1000, 300, 4),
        (sectors - 1, 1, 5),
        (sectors - 40, 40, 6),
    ] {
        let cmd =
            format!("probe.test=blk-write probe.lba={lba} probe.count={count} probe.seed={seed}");
        let out = probe(&[img.path()], &cmd);
        let line = one(&out, "PROBE blk-write");
        assert!(
            line.contains("status=ok") && line.contains("flush=ok"),
            "{line}"
        );
        for x in [lba, lba + count / 2, lba + count - 1] {
            assert_eq!(img.sector(x), pattern(x, seed), "sector {x} after {cmd}");
        }
        if lba > 0 && lba < 1000 {
            assert_eq!(img.sector(lba - 1), vec![0; SECTOR]);
        }
    }
    // Untouched sectors stay zero.
    assert_eq!(img.sector(500), vec![0; SECTOR]);
}

/// Both engines, with every cache mode, move the same bytes: the guest writes a pattern
/// (and flushes), reads it back and checks it, and the host finds it in the image.
#[test]
fn every_engine_and_cache_mode_moves_the_same_bytes() {
    for aio in ["io_uring", "threads"] {
        for cache in ["writeback", "none", "unsafe"] {
            let img = Image::new(&format!("engine-{aio}-{cache}"), 4096);
            let disk = format!("path={},aio={aio},cache={cache}", img.path());
            let out = probe(
                &[&disk],
                "probe.test=blk-write,blk-read probe.lba=100 probe.count=3000 probe.seed=21",
            );
            let w = one(&out, "PROBE blk-write");
            assert!(
                w.contains("status=ok") && w.contains("flush=ok"),
                "{disk}: {w}"
            );
            let r = one(&out, "PROBE blk-read");
            assert!(
                r.contains("status=ok") && r.contains("match=yes"),
                "{disk}: {r}"
            );
            for x in [100, 101, 1600, 3099] {
                assert_eq!(img.sector(x), pattern(x, 21), "sector {x} with {disk}");
            }
            assert_eq!(img.sector(99), vec![0; SECTOR], "{disk}");
            assert_eq!(img.sector(3100), vec![0; SECTOR], "{disk}");
        }
    }
}

/// A multi-queue disk serves a driver that uses queue 0 only (no MQ negotiated) as before.
#[test]
fn multi_queue_disk_serves_a_single_queue_driver() {
    let img = Image::new("mq-single", 2048);
    let disk = format!("path={},num-queues=4", img.path());
    let out = probe(
        &[&disk],
        "probe.test=blk-write,blk-read probe.lba=10 probe.count=64 probe.seed=5",
    );
    let r = one(&out, "PROBE blk-read");
    assert!(r.contains("status=ok") && r.contains("match=yes"), "{r}");
    assert_eq!(img.sector(40), pattern(40, 5));
}

/// A multi-queue disk driven by a multi-queue driver: the probe guest's blk-bench runs random
/// writes and reads on 3 queues from 3 vCPUs at once, every request succeeds, and every queue
/// moved requests, whether each queue has its I/O thread or two threads share them.
#[test]
fn multi_queue_disk_serves_every_queue_at_once() {
    for threads in [3, 2] {
        let img = Image::new(&format!("mq-many-{threads}"), 16384);
        let disk = format!("path={},num-queues=3,io-threads={threads}", img.path());
        let k = kernel();
        let out = run(
            &[
                "--kernel",
                k.to_str().unwrap(),
                "--cpus",
                "3",
                "--cmdline",
                "probe.test=blk-bench probe.bench=randw,randr probe.qd=8 probe.queues=3 probe.secs=1",
                "--disk",
                &disk,
            ],
            GUARD,
        );
        out.assert_exit(0);
        let done = one(&out, "PROBE blk-bench dev=0 done");
        assert!(
            done.contains("errors=0") && done.contains("queues=3"),
            "io-threads={threads}: {done}"
        );
        for q in 0..3 {
            let lines = out.lines_with(&format!("PROBE blk-bench-queue dev=0 queue={q} "));
            assert_eq!(lines.len(), 2, "io-threads={threads}: {}", out.serial);
            for l in lines {
                assert!(
                    l.contains("errors=0") && !l.contains(" ios=0 "),
                    "io-threads={threads}: {l}"
                );
            }
        }
    }
}

#[test]
fn host_written_pattern_reads_back_in_the_guest() {
    let img = Image::new("read", 4096);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&img.0)
            .unwrap();
        let mut data = Vec::new();
        for x in 0..4096u64 {
            data.extend(pattern(x, 9));
        }
        f.write_all(&data).unwrap();
    }
    for irq in ["on", "off"] {
        let cmd = format!(
            "probe.test=blk-read probe.lba=100 probe.count=2000 probe.seed=9 probe.irq={irq}"
        );
        let line = one(&probe(&[img.path()], &cmd), "PROBE blk-read");
        assert!(
            line.contains("match=yes") && line.contains(&format!("irq={irq}")),
            "{line}"
        );
    }
    // A wrong seed is noticed: the check can fail.
    let line = one(
        &probe(
            &[img.path()],
            "probe.test=blk-read probe.lba=7 probe.count=4 probe.seed=8",
        ),
        "PROBE blk-read",
    );
    assert!(line.contains("match=no first_bad=7"), "{line}");
}

#[test]
fn read_only_disk_refuses_writes_and_reports_ro() {
    let img = Image::new("ro", 1024);
    let spec = format!("path={},readonly=on", img.path());
    let out = probe(
        &[&spec],
        "probe.test=blk-id,blk-write probe.count=4 probe.seed=2",
    );
    assert!(
        one(&out, "PROBE blk-id").contains(" ro=1 "),
        "{}",
        out.serial
    );
    let w = one(&out, "PROBE blk-write");
    assert!(w.contains("status=ioerr"), "{w}");
    assert_eq!(img.sector(0), vec![0; SECTOR]);
}

#[test]
fn get_id_returns_the_id_or_serial() {
    // Two images: one image twice read-write is refused by its lock.
    let img = Image::new("id", 1024);
    let img1 = Image::new("id1", 1024);
    let a = format!("path={},id=data0", img.path());
    let b = format!("path={},id=data1,serial=SN-42", img1.path());
    for (dev, id) in [(0, "data0"), (1, "SN-42")] {
        let out = probe(&[&a, &b], &format!("probe.test=blk-id probe.dev={dev}"));
        let line = one(&out, "PROBE blk-id");
        assert!(line.ends_with(&format!("id={id}")), "{line}");
    }
}

#[test]
fn capacity_is_the_file_size() {
    let img = Image::new("cap", 12345);
    let line = one(&probe(&[img.path()], "probe.test=blk-id"), "PROBE blk-id");
    assert!(
        line.contains(" sectors=12345 ") && line.contains(" blk_size=512 "),
        "{line}"
    );
}

#[test]
fn two_disks_are_independent() {
    let a = Image::new("two-a", 2048);
    let b = Image::new("two-b", 2048);
    let out = probe(&[a.path(), b.path()], "probe.test=boot");
    assert!(
        one(&out, "PROBE boot").contains(" virtio=2 "),
        "{}",
        out.serial
    );
    let virtio = out.lines_with("PROBE virtio ");
    assert_eq!(virtio.len(), 2);
    assert!(
        virtio[0].contains("base=0xd0000000") && virtio[0].contains("gsi=6"),
        "{virtio:?}"
    );
    assert!(
        virtio[1].contains("base=0xd0001000") && virtio[1].contains("gsi=7"),
        "{virtio:?}"
    );
    probe(
        &[a.path(), b.path()],
        "probe.test=blk-write probe.dev=1 probe.lba=10 probe.count=5 probe.seed=11",
    );
    assert_eq!(b.sector(12), pattern(12, 11));
    assert_eq!(a.sector(12), vec![0; SECTOR], "disk 0 must be untouched");
}

#[test]
fn flushed_data_survives_sigkill() {
    let img = Image::new("kill", 4096);
    let k = kernel();
    // Write, flush, then idle: the guest announces idle only after the flush completed.
    let mut vm = spawn(&[
        "--kernel",
        k.to_str().unwrap(),
        "--disk",
        img.path(),
        "--cmdline",
        "probe.test=blk-write,idle probe.lba=64 probe.count=512 probe.seed=13",
    ]);
    let w = vm.wait_line("PROBE blk-write", GUARD);
    assert!(w.contains("status=ok flush=ok"), "{w}");
    vm.wait_line("PROBE idle", GUARD);
    vm.signal(libc::SIGKILL);
    let out = vm.finish(GUARD);
    assert_eq!(out.status.code(), None, "killed by a signal");
    for x in [64, 300, 575] {
        assert_eq!(img.sector(x), pattern(x, 13), "sector {x}");
    }
}

fn refuse(disk: &str) -> String {
    refuse_disks(&[disk])
}

/// Runs vmm with `disks`, expecting a refusal; returns its single stderr line.
fn refuse_disks(disks: &[&str]) -> String {
    let k = kernel();
    let mut args = vec!["--kernel", k.to_str().unwrap()];
    for d in disks {
        args.push("--disk");
        args.push(d);
    }
    let out = run(&args, GUARD);
    out.assert_exit(1);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(out.serial.is_empty());
    lines[0].to_owned()
}

#[test]
fn bad_disks_get_one_clear_line() {
    let dir = std::env::temp_dir().join(format!("vmm-blk-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.raw");
    std::fs::File::create(&empty).unwrap();
    let odd = dir.join("odd.raw");
    std::fs::write(&odd, vec![0u8; 1000]).unwrap();
    let good = dir.join("good.raw");
    std::fs::write(&good, vec![0u8; 4096]).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();

    assert!(
        refuse(&format!("{},format=qcow2", s(&good))).contains("Unknown --disk option 'format'")
    );
    assert!(refuse("/nonexistent/disk.raw").contains("No such file or directory"));
    assert!(refuse(&s(&dir)).contains("is a directory"));
    assert!(refuse(&s(&empty)).contains("is empty"));
    assert!(refuse(&s(&odd)).contains("not a multiple of 512"));
    assert!(refuse(&format!("{},cache=directsync", s(&good)))
        .contains("cache takes writeback, none or unsafe"));
    let k = kernel();
    let a = format!("path={},id=d", s(&good));
    let out = run(
        &["--kernel", k.to_str().unwrap(), "--disk", &a, "--disk", &a],
        GUARD,
    );
    out.assert_exit(1);
    assert!(
        out.stderr.contains("Duplicate ID 'd' for drive"),
        "{}",
        out.stderr
    );
    let many: Vec<String> = (0..19).map(|_| s(&good)).collect();
    let mut args = vec!["--kernel", k.to_str().unwrap()];
    for m in &many {
        args.push("--disk");
        args.push(m);
    }
    let out = run(&args, GUARD);
    out.assert_exit(1);
    assert!(out.stderr.contains("At most 18 disks"), "{}", out.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sixteen_disks_are_all_found() {
    let img = Image::new("sixteen", 64);
    let disks: Vec<String> = (0..16)
        .map(|i| format!("path={},id=d{i},readonly=on", img.path()))
        .collect();
    let refs: Vec<&str> = disks.iter().map(String::as_str).collect();
    let out = probe(&refs, "probe.test=boot");
    assert!(
        one(&out, "PROBE boot").contains(" virtio=16 "),
        "{}",
        out.serial
    );
}

#[test]
fn hostile_register_accesses_leave_a_working_device() {
    let img = Image::new("chaos", 8192);
    // Seeds 2, 5 and 9 crash QEMU 7.2's virtio-mmio; the device must survive them and work
    // again once the driver resets it.
    for seed in [1, 2, 5, 9, 13] {
        let cmd =
            format!("probe.test=mmio-chaos,blk-write,blk-read probe.seed={seed} probe.count=3000");
        let out = probe(&[img.path()], &cmd);
        assert!(
            one(&out, "PROBE mmio-chaos").contains("survived=yes"),
            "{}",
            out.serial
        );
        assert!(
            one(&out, "PROBE blk-read").contains("match=yes"),
            "{}",
            out.serial
        );
        assert_eq!(out.lines_with("PROBE-DONE"), vec!["PROBE-DONE rc=0"]);
    }
}

#[test]
fn non_images_are_refused_by_type_without_opening() {
    let dir = std::env::temp_dir().join(format!("vmm-blk-types-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path, which outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let f = fifo.to_str().unwrap();
    // Opening a FIFO blocks until a writer comes: vmm used to hang here. With cache=none it
    // used to blame O_DIRECT.
    for spec in [
        format!("path={f},readonly=on"),
        f.to_owned(),
        format!("path={f},readonly=on,cache=none"),
    ] {
        assert_eq!(
            refuse(&spec),
            format!("vmm: --disk {f}: '{f}' is a FIFO, not a regular file or block device")
        );
    }
    for dev in ["/dev/null", "/dev/kvm"] {
        assert_eq!(
            refuse(dev),
            format!("vmm: --disk {dev}: '{dev}' is a character device, not a regular file or block device")
        );
    }
    // A regular file by its type, refused by its size before it is opened read-write.
    assert_eq!(
        refuse("/proc/self/mem"),
        "vmm: --disk /proc/self/mem: Disk image '/proc/self/mem' is empty"
    );
    let d = dir.to_str().unwrap();
    assert_eq!(
        refuse(d),
        format!("vmm: --disk {d}: '{d}' is a directory, not a disk image")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn read_only_file_opened_read_write_says_its_cause_once() {
    // Root opens any file read-write whatever its mode: use a read-only bind mount.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root for a read-only bind mount in a mount namespace");
        return;
    }
    let dir = std::env::temp_dir().join(format!("vmm-blk-rofs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("ro.raw");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    let (d, p) = (dir.display(), img.display());
    let k = kernel();
    let script = format!(
        "mount --bind {d} {d} && mount -o remount,bind,ro {d} && \
         exec {} --kernel {} --disk {p}",
        common::vmm_bin().display(),
        k.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare(1) from util-linux");
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_owned();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        stderr,
        format!(
            "vmm: --disk {p}: Could not open '{p}' read-write (use read-only=on to open it \
             read-only): Read-only file system (os error 30)"
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The one-line refusal of an image another user holds.
fn locked(path: &str, shared: bool) -> String {
    let shared = if shared { "shared " } else { "" };
    format!(
        "vmm: --disk {path}: Failed to get {shared}\"write\" lock: is another process using the \
         image [{path}]?"
    )
}

/// Starts vmm on `disk` and waits until the guest is idle (the image is open and locked).
fn hold(disk: &str) -> common::Running {
    let k = kernel();
    let mut vm = spawn(&[
        "--kernel",
        k.to_str().unwrap(),
        "--disk",
        disk,
        "--cmdline",
        "probe.test=idle",
    ]);
    vm.wait_line("PROBE idle", GUARD);
    vm
}

fn stop(vm: common::Running) {
    vm.signal(libc::SIGKILL);
    vm.finish(GUARD);
}

#[test]
fn a_writer_excludes_every_other_user_of_its_image() {
    let img = Image::new("lock-rw", 1024);
    let p = img.path();
    let ro = format!("path={p},readonly=on");
    // The same image twice in one vmm: OFD locks conflict between two opens in one process.
    assert_eq!(
        refuse_disks(&[p, &format!("path={p},id=again")]),
        locked(p, false)
    );
    assert_eq!(refuse_disks(&[p, &ro]), locked(p, true));

    let vm = hold(p);
    assert_eq!(refuse(p), locked(p, false));
    assert_eq!(refuse(&ro), locked(p, true));
    stop(vm);
    // Its locks went with it.
    one(&probe(&[p], "probe.test=boot"), "PROBE boot");
}

#[test]
fn read_only_users_share_an_image_and_exclude_writers() {
    let img = Image::new("lock-ro", 1024);
    let p = img.path();
    let ro = format!("path={p},readonly=on");
    let vm = hold(&ro);
    one(&probe(&[&ro, &ro], "probe.test=boot"), "PROBE boot");
    assert_eq!(refuse(p), locked(p, false));
    stop(vm);
}

/// QEMU's command line for a virtio-blk disk on `path`, held open (paused, no display).
fn qemu_args(path: &str, read_only: bool) -> Vec<String> {
    let ro = if read_only { ",readonly=on" } else { "" };
    [
        "-M",
        "q35",
        "-nodefaults",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "none",
        "-S",
        "-drive",
        &format!("file={path},format=raw,if=none,id=d0{ro}"),
        "-device",
        "virtio-blk-pci,drive=d0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// True when some process holds an OFD lock on the file at `path`.
/// Whether some process holds the OFD lock on byte `byte` of `path` (from /proc/locks:
/// `N: OFDLCK ADVISORY READ|WRITE PID MAJ:MIN:INODE START END`).
fn ofd_locked(path: &str, byte: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(path).unwrap().ino();
    std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("OFDLCK") && l.contains(&format!(":{ino} ")))
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let range = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            matches!((range(6), range(7)), (Some(a), Some(b)) if a <= byte && byte <= b)
        })
}

#[test]
fn vmm_and_qemu_exclude_each_other() {
    let qemu = "qemu-system-x86_64";
    if std::process::Command::new(qemu)
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: {qemu} is not installed (Debian's qemu-system-x86)");
        return;
    }
    let img = Image::new("lock-qemu", 2048);
    let p = img.path();

    // vmm holds the image: QEMU refuses it, in its own words.
    let vm = hold(p);
    for read_only in [false, true] {
        let mut child = std::process::Command::new(qemu)
            .args(qemu_args(p, read_only))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("QEMU opened an image vmm holds (readonly={read_only})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let shared = if read_only { "shared " } else { "" };
        assert!(
            stderr.contains(&format!("Failed to get {shared}\"write\" lock"))
                && stderr.contains(&format!("Is another process using the image [{p}]?")),
            "{stderr}"
        );
    }
    stop(vm);

    // QEMU holds the image: vmm refuses it.
    for read_only in [false, true] {
        let mut child = std::process::Command::new(qemu)
            .args(qemu_args(p, read_only))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        // QEMU locks byte 100 when it opens the drive and the rest (201: write not shared)
        // only when the virtio-blk device takes its permissions: wait for the full set.
        while !ofd_locked(p, 201) {
            assert!(
                child.try_wait().unwrap().is_none(),
                "QEMU exited on a free image"
            );
            assert!(std::time::Instant::now() < deadline, "QEMU took no lock");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(refuse(p), locked(p, false));
        let ro = format!("path={p},readonly=on");
        if read_only {
            // Read-only users share.
            one(&probe(&[&ro], "probe.test=boot"), "PROBE boot");
        } else {
            assert_eq!(refuse(&ro), locked(p, true));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// QEMU started in the background on an image: `-daemonize` exits only once the devices are
/// set up (0) or failed (1, QEMU's error on stderr). Killed by its pid when dropped.
struct QemuDaemon {
    pid: i32,
    pidfile: PathBuf,
}

impl QemuDaemon {
    /// Starts QEMU on `path` with `drive_extra` appended to its `-drive`; its error if it
    /// refused the image.
    fn start(path: &str, read_only: bool, drive_extra: &str) -> Result<Self, String> {
        let pidfile = std::env::temp_dir().join(format!(
            "vmm-blk-qemu-{}-{}.pid",
            std::process::id(),
            QEMU_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut args = qemu_args(path, read_only);
        let drive = args.iter().position(|a| a == "-drive").unwrap() + 1;
        args[drive].push_str(drive_extra);
        let child = std::process::Command::new("qemu-system-x86_64")
            .args(&args)
            .args(["-daemonize", "-pidfile", pidfile.to_str().unwrap()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            let _ = std::fs::remove_file(&pidfile);
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Ok(Self { pid, pidfile })
    }
}

static QEMU_RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Drop for QemuDaemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of the QEMU this test started.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        // Not our child, so not ours to reap: wait until it is gone or a zombie (its files,
        // and so its locks, are closed by then).
        let deadline = std::time::Instant::now() + GUARD;
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid));
            let gone = stat.map_or(true, |s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('Z'))
            });
            if gone {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "QEMU did not die");
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(&self.pidfile);
    }
}

fn have_qemu() -> bool {
    let found = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        eprintln!("skipped: qemu-system-x86_64 is not installed (Debian's qemu-system-x86)");
    }
    found
}

/// QEMU's refusal of an image another user holds.
fn qemu_refused(e: &str, path: &str, shared: bool) -> bool {
    let shared = if shared { "shared " } else { "" };
    e.contains(&format!("Failed to get {shared}\"write\" lock"))
        && e.contains(&format!("Is another process using the image [{path}]?"))
}

#[test]
fn read_only_vmm_and_qemu_share_an_image_and_refuse_writers() {
    if !have_qemu() {
        return;
    }
    let img = Image::new("lock-ro-qemu", 2048);
    let p = img.path();
    let ro = format!("path={p},readonly=on");
    let vm = hold(&ro);
    // QEMU opens it read-only beside vmm, and is refused read-write.
    let qemu = QemuDaemon::start(p, true, "").unwrap();
    let e = QemuDaemon::start(p, false, "").map(|_| ()).unwrap_err();
    assert!(qemu_refused(&e, p, false), "{e}");
    // Another vmm, read-only, shares with both; read-write it is refused.
    one(&probe(&[&ro], "probe.test=boot"), "PROBE boot");
    assert_eq!(refuse(p), locked(p, false));
    drop(qemu);
    stop(vm);
}

#[test]
fn locking_off_opens_despite_qemus_locks_and_takes_none() {
    if !have_qemu() {
        return;
    }
    let img = Image::new("lock-off", 2048);
    let p = img.path();
    let off = format!("path={p},locking=off");

    // QEMU holds the image read-write: vmm refuses it with locking on or auto (the
    // default), and opens it with locking=off.
    let qemu = QemuDaemon::start(p, false, "").unwrap();
    assert_eq!(refuse(&format!("path={p},locking=on")), locked(p, false));
    assert_eq!(refuse(&format!("path={p},locking=auto")), locked(p, false));
    one(&probe(&[&off], "probe.test=boot"), "PROBE boot");
    drop(qemu);

    // vmm with locking=off holds no lock: QEMU opens the image read-write beside it.
    let vm = hold(&off);
    assert!(!(100..104).chain(200..204).any(|b| ofd_locked(p, b)));
    drop(QemuDaemon::start(p, false, "").unwrap());
    stop(vm);

    // vmm holds the image: QEMU's own file.locking=off opens it anyway, its default does not.
    let vm = hold(p);
    drop(QemuDaemon::start(p, false, ",file.locking=off").unwrap());
    let e = QemuDaemon::start(p, false, "").map(|_| ()).unwrap_err();
    assert!(qemu_refused(&e, p, false), "{e}");
    stop(vm);
}
