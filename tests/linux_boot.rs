// SPDX-License-Identifier: Apache-2.0
//! Real Linux guests to userspace through vmm, on every KVM host. `scripts/linux-guest.sh` is
//! the one place that picks the guest for this host: Debian's stock cloud kernel where the
//! host has hardware virtualization, the project-built kernel (scripts/pvm-kernel.sh) with the
//! PVM command-line options on PVM hosts (guest ring 0 emulated), and a busybox initramfs
//! (scripts/guest-initramfs.sh) whose /init runs the test named by `vmmtest=`. A host without
//! either fails these tests.
//!
//! Two boots cover the scenarios, because a boot is expensive where ring 0 is emulated (about
//! 10 s through PVH, about a minute through the bzImage, whose decompressor is emulated too):
//! - PVH (ELF vmlinux), 4 CPUs, three disks: all CPUs online; an ext4 image made on the host
//!   is mounted, written, synced and written past the cache; a raw disk is written and read
//!   past the cache; a read-only disk reads and refuses a write; the serials are in sysfs; the
//!   guest reboots (a reset inside the same vmm, with QMP's RESET) and reads its files back;
//!   then QMP's `system_powerdown` presses the ACPI power button and busybox acpid powers
//!   off. The host then checks every image: the raw bytes, and the ext4 filesystem with
//!   e2fsck and debugfs.
//! - bzImage (the 64-bit boot protocol entry), 2 CPUs, two disks whose writes fail by fault
//!   injection: with `werror=report` the guest's `dd` gets EIO; with `werror=stop` the VM
//!   stops (BLOCK_IO_ERROR, STOP, `query-status` io-error), the rule is removed over QMP,
//!   `cont` resumes it and the guest's write completes into the image.
//!
//! The guest reports in console lines starting with `VMMTEST ` (scripts/guest-initramfs.sh
//! documents them) and ends with `poweroff -f`, an ACPI S5, after which the kernel prints
//! `reboot: Power down`: that line tells a power-off from a panic.
//!
//! `#[ignore]`d because the first run on a PVM host builds the kernel (minutes, and root for
//! apt-get): scripts/test.sh runs them with `--run-ignored only`; by hand,
//! `cargo test -p vmm --test linux_boot -- --ignored`.

mod common;

use std::io::Write;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{script_output, spawn, Finished, Running};
use qapi::client::Connection;
use qapi::events::Event;
use qapi::qmp::client::Client;
use qapi::types::{
    BlockDeviceIoStatus, BlockErrorAction, Blockdev, IoOperationType, RunState, ShutdownCause,
};

/// A guard against hangs, not a performance assertion: a boot takes seconds on hardware KVM,
/// about 10 s (PVH) to a minute (bzImage) on a PVM host, and several minutes on a loaded one
/// (the bzImage's emulated decompressor took over 300 s once while other builds ran).
const GUARD: Duration = Duration::from_secs(900);
const SECTOR: usize = 512;
const MIB: usize = 1 << 20;
/// Guest RAM: enough for the tests; every MiB costs boot time where ring 0 is emulated (the
/// kernel initialises and frees each page).
const MEMORY_MIB: u64 = 256;
/// Guest lines after which waiting for anything else is pointless.
const FATAL: [&str; 2] = ["VMMTEST error", "Kernel panic"];

/// The guest this host boots (scripts/linux-guest.sh decides).
struct Linux {
    /// `hardware` or `pvm`.
    host: String,
    vmlinux: PathBuf,
    bzimage: PathBuf,
    initrd: PathBuf,
    /// The command line; the tests append `vmmtest=<test>`.
    cmdline: String,
}

fn linux() -> Linux {
    let out = script_output("linux-guest.sh", &[]);
    let get = |key: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("scripts/linux-guest.sh printed no {key}=: {out}"))
            .to_owned()
    };
    let l = Linux {
        host: get("host"),
        vmlinux: get("vmlinux").into(),
        bzimage: get("bzimage").into(),
        initrd: get("initrd").into(),
        cmdline: get("cmdline"),
    };
    for p in [&l.vmlinux, &l.bzimage, &l.initrd] {
        assert!(p.is_file(), "{} is missing", p.display());
    }
    l
}

impl Linux {
    /// vmm's arguments booting `kernel` with the initramfs, `vmmtest=<test>`, `cpus` vCPUs and
    /// a QMP socket at `sock`, then `extra`.
    fn args(
        &self,
        kernel: &Path,
        test: &str,
        cpus: u32,
        sock: &Path,
        extra: &[&str],
    ) -> Vec<String> {
        let mut a: Vec<String> = [
            "--kernel",
            path(kernel),
            "--initrd",
            path(&self.initrd),
            "--cmdline",
            &format!("{} vmmtest={test}", self.cmdline),
            "--cpus",
            &cpus.to_string(),
            "--memory",
            &MEMORY_MIB.to_string(),
            "--qmp",
            &format!("unix:{}", sock.display()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn spawn_vm(args: &[String]) -> Running {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn(&refs)
}

/// Waits for the guest line starting with `prefix`; fails at once on a guest error, a
/// panic or vmm's own error line.
fn line(vm: &mut Running, prefix: &str) -> String {
    vm.wait_line_unless(prefix, &FATAL, GUARD)
}

/// A QMP session with vmm's socket, negotiated, for broadcast events.
fn qmp(sock: &Path) -> Client {
    let deadline = Instant::now() + GUARD;
    let conn = loop {
        match Connection::connect_unix(sock) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("cannot connect to {}: {e}", sock.display()),
        }
    };
    conn.negotiate(false).expect("qmp_capabilities");
    Client::new(conn)
}

/// The next QMP event; panics when none comes within the guard.
fn next_event(c: &Client) -> Event {
    c.next_event(Some(GUARD))
        .expect("QMP event")
        .unwrap_or_else(|| panic!("no QMP event within {GUARD:?}"))
        .0
}

/// Runs `f` on a live VM; if it fails, the VM is killed before the test fails with that
/// message, so that no guest outlives its test.
fn guarded<T>(vm: &mut Running, f: impl FnOnce(&mut Running) -> T) -> T {
    match catch_unwind(AssertUnwindSafe(|| f(&mut *vm))) {
        Ok(v) => v,
        Err(panic) => {
            // vmm is our child and not yet reaped, so its pid is still its own.
            vm.signal(libc::SIGKILL);
            resume_unwind(panic)
        }
    }
}

/// Asserts that the guest powered itself off through ACPI (not a panic, not a reset) and that
/// vmm exited 0 without complaint.
fn assert_powered_off(out: &Finished) {
    out.assert_exit(0);
    assert!(
        out.lines_with("VMMTEST error").is_empty(),
        "the guest reported an error\n--- serial ---\n{}",
        out.serial
    );
    assert!(
        out.serial.contains("reboot: Power down") && !out.serial.contains("Kernel panic"),
        "the guest did not power off through ACPI\n--- serial ---\n{}",
        out.serial
    );
    assert!(out.stderr.is_empty(), "vmm stderr: {}", out.stderr);
}

/// The value of `name=` in a guest line such as `VMMTEST ready cpus=4 mem_kib=1234`.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// Checks the guest's `VMMTEST ready` line: `cpus` CPUs online and in /proc/cpuinfo, and
/// about `MEMORY_MIB` of RAM (MemTotal is the RAM minus what the kernel keeps: its image,
/// struct pages, reserved areas).
fn check_ready(ready: &str, cpus: u32) {
    assert_eq!(
        field(ready, "cpus"),
        cpus.to_string(),
        "online CPUs: {ready}"
    );
    assert_eq!(
        field(ready, "cpuinfo"),
        cpus.to_string(),
        "/proc/cpuinfo: {ready}"
    );
    let mem_kib: u64 = field(ready, "mem_kib").parse().expect("mem_kib");
    let total_kib = MEMORY_MIB * 1024;
    assert!(
        mem_kib <= total_kib && mem_kib >= total_kib - 64 * 1024,
        "MemTotal {mem_kib} KiB for --memory {MEMORY_MIB}: {ready}"
    );
}

/// A temporary file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, contents: &[u8]) -> Self {
        let p = std::env::temp_dir().join(format!("vmm-linux-{tag}-{}", std::process::id()));
        std::fs::write(&p, contents).unwrap();
        TempFile(p)
    }

    fn path(&self) -> &str {
        path(&self.0)
    }

    fn read(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The path of vmm's QMP socket, removed on drop if vmm did not remove it (a test that failed
/// and killed vmm).
struct SocketPath(PathBuf);

impl SocketPath {
    fn new(tag: &str) -> Self {
        SocketPath(
            std::env::temp_dir().join(format!("vmm-linux-{tag}-{}.sock", std::process::id())),
        )
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Deterministic bytes that look random (xorshift64*), so that no two sectors are alike.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        v.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The md5 of `data` as `md5sum` prints it (the guest's busybox md5sum is the other side).
fn md5_hex(data: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot run md5sum (coreutils)");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "md5sum failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .expect("md5sum output")
        .to_owned()
}

/// The guest's pattern (scripts/guest-initramfs.sh) for sectors `first .. first + count`:
/// sector n holds `vmmtest lba <n>` padded with spaces to 511 bytes, then a newline.
fn pattern(first: usize, count: usize) -> Vec<u8> {
    (first..first + count)
        .flat_map(|n| format!("{:<511}\n", format!("vmmtest lba {n}")).into_bytes())
        .collect()
}

/// Runs a host tool and returns its stdout; panics with its stderr when it fails.
fn tool(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (e2fsprogs): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The stats of backend `id` in `query-blockstats`.
fn blockstats(c: &Client, id: &str) -> qapi::types::BlockDeviceStats {
    c.query_blockstats(None)
        .expect("query-blockstats")
        .into_iter()
        .find(|s| s.device.as_ref().map(|d| d.0.as_str()) == Some(id))
        .unwrap_or_else(|| panic!("no {id} in query-blockstats"))
        .stats
}

const EXT4_HELLO: &[u8] = b"vmmtest ext4 file\n";
const EXT4_AFTER_REBOOT: &[u8] = b"written after the reboot\n";
/// Where the guest writes on raw disks, in sectors (not page aligned, so that the kernel also
/// reads around it), and how much.
const RAW_LBA: usize = 100;
const RAW_SECTORS: usize = 256;

#[test]
#[ignore = "builds the guest kernel on first use on PVM hosts (minutes); scripts/test.sh runs it"]
fn pvh_four_cpus_ext4_raw_and_read_only_disks_reboot_and_power_button() {
    let g = linux();
    // vda: ext4, made here. vdb: raw, 2 MiB of noise; the guest writes the pattern at RAW_LBA
    // and reads the second MiB. vdc: read-only, 1 MiB of noise.
    let ext4 = TempFile::new("ext4.img", &[]);
    std::fs::File::options()
        .write(true)
        .open(&ext4.0)
        .and_then(|f| f.set_len(16 * MIB as u64))
        .unwrap();
    // Inode tables and journal initialised here, not lazily by the guest's kernel.
    tool(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            ext4.path(),
        ],
    );
    let vdb_data = noise(2 * MIB, 0x5eed_1234_abcd_0001);
    let vdb = TempFile::new("vdb.raw", &vdb_data);
    let vdc_data = noise(MIB, 0x5eed_1234_abcd_0002);
    let vdc = TempFile::new("vdc.raw", &vdc_data);
    let sock_guard = SocketPath::new("pvh");
    let sock = sock_guard.0.clone();
    let disks = [
        format!("path={},serial=vmm-ext4", ext4.path()),
        format!("path={},serial=vmm-raw-vdb", vdb.path()),
        format!("path={},readonly=on,serial=vmm-ro-vdc", vdc.path()),
    ];
    // No --no-reboot: the guest's reboot resets the VM in place.
    let args = g.args(
        &g.vmlinux,
        "disks",
        4,
        &sock,
        &[
            "--disk", &disks[0], "--disk", &disks[1], "--disk", &disks[2],
        ],
    );
    let started = Instant::now();
    let mut vm = spawn_vm(&args);
    let direct = pattern(0, RAW_SECTORS);
    let raw = pattern(RAW_LBA, RAW_SECTORS);
    guarded(&mut vm, |vm| {
        let c = qmp(&sock);
        check_ready(&line(vm, "VMMTEST ready "), 4);
        eprintln!(
            "{} host: userspace after {:.1} s",
            g.host,
            started.elapsed().as_secs_f64()
        );
        assert_eq!(
            line(vm, "VMMTEST serial "),
            "VMMTEST serial vdb=vmm-raw-vdb vdc=vmm-ro-vdc",
            "the disks' serials in /sys/block/vdX/serial"
        );
        assert_eq!(line(vm, "VMMTEST ro "), "VMMTEST ro vdc=1", "vdc's ro flag");
        assert_eq!(
            line(vm, "VMMTEST ext4-written "),
            format!(
                "VMMTEST ext4-written hello={} direct={}",
                md5_hex(EXT4_HELLO),
                md5_hex(&direct)
            ),
            "the files the guest wrote on ext4"
        );
        assert_eq!(
            line(vm, "VMMTEST raw-readback "),
            format!("VMMTEST raw-readback {}", md5_hex(&raw)),
            "the pattern read back from vdb past the page cache"
        );
        assert_eq!(
            line(vm, "VMMTEST raw-read "),
            format!("VMMTEST raw-read {}", md5_hex(&vdb_data[MIB..])),
            "vdb's second MiB (host noise) in the guest"
        );
        assert_eq!(
            line(vm, "VMMTEST ro-read "),
            format!("VMMTEST ro-read {}", md5_hex(&vdc_data)),
            "vdc (read-only, host noise) in the guest"
        );
        let refused = line(vm, "VMMTEST ro-write ");
        assert!(
            refused.starts_with("VMMTEST ro-write refused ") && refused.contains("error writing"),
            "a write to the read-only disk: {refused}"
        );
        let ro = blockstats(&c, "drive2");
        assert_eq!(ro.wr_operations, 0, "writes reached read-only vdc");
        assert!(ro.rd_operations > 0, "the guest never read vdc");

        // The reboot: ACPI reset register, vmm resets the VM in place, the kernel boots again.
        line(vm, "VMMTEST rebooting");
        // The launch's RESUME comes first when the client negotiated before vmm started
        // the guest (vmm listens before it has built the VM).
        let first = match next_event(&c) {
            Event::Resume => next_event(&c),
            e => e,
        };
        match first {
            Event::Reset(a) => assert_eq!(
                (a.guest, a.reason),
                (true, ShutdownCause::GuestReset),
                "RESET event"
            ),
            e => panic!("expected RESET, got {e:?}"),
        }
        line(vm, "VMMTEST init");
        check_ready(&line(vm, "VMMTEST ready "), 4);
        assert_eq!(
            line(vm, "VMMTEST ext4-readback "),
            format!(
                "VMMTEST ext4-readback hello={} direct={}",
                md5_hex(EXT4_HELLO),
                md5_hex(&direct)
            ),
            "the ext4 files after the reboot"
        );

        // The power button: acpid in the guest runs its handler, which powers off.
        line(vm, "VMMTEST waiting-for-button");
        c.system_powerdown().expect("system_powerdown");
        match next_event(&c) {
            Event::Powerdown => {}
            e => panic!("expected POWERDOWN, got {e:?}"),
        }
        line(vm, "VMMTEST power-button");
        match next_event(&c) {
            Event::Shutdown(a) => assert_eq!(
                (a.guest, a.reason),
                (true, ShutdownCause::GuestShutdown),
                "SHUTDOWN event"
            ),
            e => panic!("expected SHUTDOWN, got {e:?}"),
        }
    });
    let out = vm.finish(GUARD);
    eprintln!("vmm exited after {:.1} s", started.elapsed().as_secs_f64());
    assert_powered_off(&out);
    assert_eq!(
        out.lines_with("VMMTEST init").len(),
        2,
        "two boots\n{}",
        out.serial
    );
    assert!(!sock.exists(), "socket file left behind");

    // vdb: the host's noise, with the guest's pattern exactly where it wrote it.
    let mut want = vdb_data.clone();
    want[RAW_LBA * SECTOR..(RAW_LBA + RAW_SECTORS) * SECTOR].copy_from_slice(&raw);
    let image = vdb.read();
    assert_eq!(image.len(), want.len(), "vdb changed size");
    if let Some(i) = (0..image.len() / SECTOR)
        .find(|&i| image[i * SECTOR..(i + 1) * SECTOR] != want[i * SECTOR..(i + 1) * SECTOR])
    {
        panic!(
            "sector {i} of vdb is not what the guest wrote there (or left alone): {:?}",
            String::from_utf8_lossy(&image[i * SECTOR..i * SECTOR + 40])
        );
    }
    assert!(vdc.read() == vdc_data, "the read-only image changed");

    // ext4: clean after the guest unmounted it, holding what the guest wrote.
    tool("e2fsck", &["-f", "-n", ext4.path()]);
    let cat = |file: &str| tool("debugfs", &["-R", &format!("cat {file}"), ext4.path()]);
    assert_eq!(cat("/hello.txt"), EXT4_HELLO, "/hello.txt on the host");
    assert_eq!(
        cat("/after-reboot.txt"),
        EXT4_AFTER_REBOOT,
        "/after-reboot.txt on the host"
    );
    assert!(cat("/direct.bin") == direct, "/direct.bin on the host");
}

#[test]
#[ignore = "builds the guest kernel on first use on PVM hosts (minutes); scripts/test.sh runs it"]
fn bzimage_two_cpus_write_errors_report_eio_and_stop_until_cont() {
    let g = linux();
    // Both disks fail every write (injected EIO): vda reports it to the guest, vdb stops.
    let vda = TempFile::new("eio.raw", &vec![0u8; MIB]);
    let vdb = TempFile::new("stop.raw", &vec![0u8; MIB]);
    let inject = "inject.0.operation=write,inject.0.errno=eio";
    let disks = [
        format!("path={},werror=report,{inject}", vda.path()),
        format!("path={},werror=stop,{inject}", vdb.path()),
    ];
    let sock_guard = SocketPath::new("bz");
    let sock = sock_guard.0.clone();
    let args = g.args(
        &g.bzimage,
        "errors",
        2,
        &sock,
        &["--no-reboot", "--disk", &disks[0], "--disk", &disks[1]],
    );
    let started = Instant::now();
    let mut vm = spawn_vm(&args);
    let raw = pattern(RAW_LBA, RAW_SECTORS);
    guarded(&mut vm, |vm| {
        let c = qmp(&sock);
        check_ready(&line(vm, "VMMTEST ready "), 2);
        eprintln!(
            "{} host: userspace after {:.1} s (bzImage)",
            g.host,
            started.elapsed().as_secs_f64()
        );

        // werror=report: the guest's write fails with EIO, and the VM runs on.
        let eio = line(vm, "VMMTEST eio-write ");
        assert!(
            !eio.starts_with("VMMTEST eio-write status=0") && eio.contains("Input/output error"),
            "dd to vda (werror=report, injected EIO): {eio}"
        );
        let first = next_event(&c);
        match &first {
            Event::BlockIoError { data, .. } => {
                assert_eq!(
                    (data.device.as_str(), data.operation, data.action),
                    ("drive0", IoOperationType::Write, BlockErrorAction::Report),
                    "{first:?}"
                );
                assert_eq!(data.reason, "Input/output error");
            }
            e => panic!("expected BLOCK_IO_ERROR for drive0, got {e:?}"),
        }
        assert!(blockstats(&c, "drive0").failed_wr_operations >= 1);
        assert_eq!(c.query_status().unwrap().status, RunState::Running);

        // werror=stop: the VM stops on the guest's write to vdb.
        line(vm, "VMMTEST stop-write start");
        loop {
            match next_event(&c) {
                // More failed writes on vda (the first is rate-limited, later ones too).
                Event::BlockIoError { data, .. } if data.device == "drive0" => {}
                Event::BlockIoError { data, .. } => {
                    assert_eq!(
                        (data.device.as_str(), data.operation, data.action),
                        ("drive1", IoOperationType::Write, BlockErrorAction::Stop)
                    );
                    assert_eq!(data.nospace, Some(false));
                    break;
                }
                e => panic!("expected BLOCK_IO_ERROR for drive1, got {e:?}"),
            }
        }
        match next_event(&c) {
            Event::Stop => {}
            e => panic!("expected STOP, got {e:?}"),
        }
        let status = c.query_status().unwrap();
        assert_eq!(
            (status.status, status.running),
            (RunState::IoError, false),
            "query-status after the stop"
        );
        let drive1 = c
            .query_block()
            .unwrap()
            .into_iter()
            .find(|b| b.device == Blockdev("drive1".into()))
            .expect("drive1 in query-block");
        assert_eq!(drive1.io_status, Some(BlockDeviceIoStatus::Failed));
        // Stopped: the guest's write has not reached the image, and dd has not returned.
        assert!(
            vdb.read().iter().all(|&b| b == 0),
            "vdb was written while the VM was stopped"
        );
        let early: Vec<String> = vm
            .pending_lines()
            .into_iter()
            .filter(|l| l.starts_with("VMMTEST stop-write status"))
            .collect();
        assert!(
            early.is_empty(),
            "dd returned while the VM was stopped: {early:?}"
        );

        // The fault is gone: cont retries the kept request and the guest's dd completes.
        c.blockdev_inject_error_remove(Blockdev("drive1".into()), None)
            .expect("blockdev-inject-error-remove");
        c.cont().expect("cont");
        match next_event(&c) {
            Event::Resume => {}
            e => panic!("expected RESUME, got {e:?}"),
        }
        assert_eq!(
            line(vm, "VMMTEST stop-write status="),
            "VMMTEST stop-write status=0",
            "dd to vdb after cont"
        );
        assert_eq!(
            line(vm, "VMMTEST stop-readback "),
            format!("VMMTEST stop-readback {}", md5_hex(&raw)),
            "vdb read back in the guest"
        );
        loop {
            match next_event(&c) {
                Event::Shutdown(a) => {
                    assert_eq!((a.guest, a.reason), (true, ShutdownCause::GuestShutdown));
                    break;
                }
                // The broadcast of vda's errors may still deliver the last of its window.
                Event::BlockIoError { data, .. } if data.device == "drive0" => {}
                e => panic!("expected SHUTDOWN, got {e:?}"),
            }
        }
    });
    let out = vm.finish(GUARD);
    eprintln!("vmm exited after {:.1} s", started.elapsed().as_secs_f64());
    assert_powered_off(&out);
    assert!(!sock.exists(), "socket file left behind");

    // vdb holds the guest's bytes where it wrote them; vda never took a write.
    let image = vdb.read();
    let at = RAW_LBA * SECTOR;
    assert!(
        image[at..at + raw.len()] == raw[..],
        "vdb does not hold the guest's write at sector {RAW_LBA}"
    );
    assert!(
        image[..at]
            .iter()
            .chain(&image[at + raw.len()..])
            .all(|&b| b == 0),
        "vdb changed outside the guest's write"
    );
    assert_eq!(image.len(), MIB, "vdb changed size");
    assert!(
        vda.read().iter().all(|&b| b == 0),
        "vda took a failed write"
    );
}
