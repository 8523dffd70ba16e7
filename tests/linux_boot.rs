// SPDX-License-Identifier: Apache-2.0
//! Full Linux boots: Debian's stock cloud kernel (scripts/guest-kernel.sh) with the test
//! initramfs (scripts/guest-initramfs.sh) reaches userspace on our machine, through the bzImage
//! and the PVH entry, counts the CPUs of our MADT, finds our virtio-mmio disks through ACPI
//! alone and moves data through them with `dd`, and powers off through our FADT, by itself or
//! when the ACPI power button is pressed over QMP.
//!
//! These need hardware virtualization (KVM on VMX/SVM). On PVM hosts, like this project's own
//! machines and CI, guest ring 0 is emulated and an unmodified kernel cannot reach userspace
//! (README, "PVM hosts"), so every test here is `#[ignore]`d: a plain run reports them as
//! ignored, and scripts/test.sh runs them (`--run-ignored only`) where `kvm_intel` or
//! `kvm_amd` is loaded. Run with `--ignored` on a PVM host, each fails at once saying why.
//!
//! The initramfs reports in console lines starting with `VMMTEST ` (scripts/guest-initramfs.sh
//! documents them) and ends with `poweroff -f`, an ACPI S5, after which the kernel prints
//! `reboot: Power down`. That line is what tells a power-off from a panic: with `panic=-1` and
//! `--no-reboot` both end in exit 0.

mod common;

use std::io::Write;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{script, spawn, Finished, Running};
use qapi::client::Connection;
use qapi::events::Event;
use qapi::qmp::client::Client;
use qapi::types::ShutdownCause;

/// A guard against hangs, not a performance assertion: on hardware KVM each boot takes a few
/// seconds, but nested virtualization on CI runners can be much slower.
const GUARD: Duration = Duration::from_secs(300);
const SECTOR: usize = 512;
const MIB: usize = 1 << 20;
/// Sectors the `dd` test writes (1 MiB).
const PATTERN_SECTORS: usize = MIB / SECTOR;

/// Fails loudly when the host cannot run an unmodified kernel to userspace, so that running
/// the ignored tests on a PVM host never looks like a pass.
fn require_hardware_kvm() {
    assert!(
        common::hardware_kvm(),
        "this test boots an unmodified Linux kernel to userspace, which needs hardware \
         virtualization (/sys/module/kvm_intel or /sys/module/kvm_amd); this host's KVM is \
         something else (PVM: guest ring 0 is emulated and the kernel dies before userspace, \
         see README \"PVM hosts\")"
    );
}

/// The guest: the kernel directory (vmlinuz, vmlinux) and the initramfs, built if needed.
struct Guest {
    bzimage: PathBuf,
    vmlinux: PathBuf,
    initrd: PathBuf,
}

fn guest() -> Guest {
    require_hardware_kvm();
    // guest-initramfs.sh runs guest-kernel.sh first; both are idempotent and take a lock.
    let initrd = PathBuf::from(script("guest-initramfs.sh"));
    let kdir = PathBuf::from(script("guest-kernel.sh"));
    Guest {
        bzimage: kdir.join("vmlinuz"),
        vmlinux: kdir.join("vmlinux"),
        initrd,
    }
}

/// vmm's arguments for `kernel` with the initramfs and `vmmtest=<test>`, then `extra`.
fn args(kernel: &Path, initrd: &Path, test: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--kernel".into(),
        kernel.to_str().unwrap().into(),
        "--initrd".into(),
        initrd.to_str().unwrap().into(),
        "--cmdline".into(),
        format!("console=ttyS0 panic=-1 vmmtest={test}"),
        "--no-reboot".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn spawn_vm(args: &[String]) -> Running {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn(&refs)
}

/// Runs `f` on a live VM; if it fails (a line that never comes, a QMP error), the VM is
/// killed before the test fails with that message, so that no guest outlives its test.
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
        out.serial.contains("reboot: Power down"),
        "the guest did not power off through ACPI (a panic or reset also ends in exit 0 with \
         --no-reboot)\n--- serial ---\n{}",
        out.serial
    );
    assert!(
        !out.serial.contains("Kernel panic"),
        "--- serial ---\n{}",
        out.serial
    );
    assert!(out.stderr.is_empty(), "vmm stderr: {}", out.stderr);
}

/// Parses `VMMTEST ready cpus=<n> mem_kib=<k>` into (n, k).
fn parse_ready(line: &str) -> (u32, u64) {
    let field = |name: &str| -> &str {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    (
        field("cpus=").parse().expect("cpus"),
        field("mem_kib=").parse().expect("mem_kib"),
    )
}

/// Boots `kernel` with `cpus` vCPUs and `mib` MiB and checks what Linux's userspace sees.
fn boot_and_check(kernel: &Path, initrd: &Path, cpus: u32, mib: u64) {
    let (c, m) = (cpus.to_string(), mib.to_string());
    let mut vm = spawn_vm(&args(
        kernel,
        initrd,
        "boot",
        &["--cpus", &c, "--memory", &m],
    ));
    let ready = guarded(&mut vm, |vm| vm.wait_line("VMMTEST ready ", GUARD));
    let out = vm.finish(GUARD);
    let (seen_cpus, mem_kib) = parse_ready(&ready);
    assert_eq!(seen_cpus, cpus, "online CPUs: {ready}\n{}", out.serial);
    // MemTotal is the RAM minus what the kernel keeps for itself (its image, struct pages,
    // reserved areas): about 38 MiB less at 256 MiB and 43 MiB less at 512 MiB for this
    // kernel (measured under QEMU), never more than --memory.
    let total_kib = mib * 1024;
    assert!(
        mem_kib <= total_kib && mem_kib >= total_kib - 64 * 1024,
        "MemTotal {mem_kib} KiB for --memory {mib}: {ready}"
    );
    assert_powered_off(&out);
}

#[test]
#[ignore = "needs hardware virtualization (kvm_intel/kvm_amd); scripts/test.sh runs these where the host has it"]
fn bzimage_boots_to_userspace_with_four_cpus_and_powers_off() {
    let g = guest();
    boot_and_check(&g.bzimage, &g.initrd, 4, 512);
}

#[test]
#[ignore = "needs hardware virtualization (kvm_intel/kvm_amd); scripts/test.sh runs these where the host has it"]
fn pvh_vmlinux_boots_to_userspace_and_powers_off() {
    let g = guest();
    boot_and_check(&g.vmlinux, &g.initrd, 2, 256);
}

/// A temporary raw image, removed on drop.
struct Image(PathBuf);

impl Image {
    fn new(tag: &str, contents: &[u8]) -> Self {
        let p =
            std::env::temp_dir().join(format!("vmm-linux-boot-{tag}-{}.raw", std::process::id()));
        std::fs::write(&p, contents).unwrap();
        Image(p)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Image {
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

/// The sector the guest writes at `lba` (scripts/guest-initramfs.sh): `vmmtest lba <lba>`
/// padded with spaces to 511 bytes, then a newline.
fn pattern_sector(lba: usize) -> Vec<u8> {
    format!("{:<511}\n", format!("vmmtest lba {lba}")).into_bytes()
}

#[test]
#[ignore = "needs hardware virtualization (kvm_intel/kvm_amd); scripts/test.sh runs these where the host has it"]
fn dd_through_virtio_blk_reaches_the_host_images() {
    let g = guest();
    // vda: blank, 4 MiB; the guest writes 1 MiB at sector 100 (not page aligned, so the
    // kernel also reads around it). vdb: 2 MiB written here, read-only, the guest reads 1 MiB.
    const LBA: usize = 100;
    let vda = Image::new("vda", &vec![0u8; 4 * MIB]);
    let vdb_data = noise(2 * MIB, 0x5eed_1234_abcd_0001);
    let vdb = Image::new("vdb", &vdb_data);
    let vdb_disk = format!("path={},readonly=on", vdb.path());
    let mut a = args(
        &g.bzimage,
        &g.initrd,
        "dd",
        &[
            "--cpus",
            "2",
            "--memory",
            "256",
            "--disk",
            vda.path(),
            "--disk",
            &vdb_disk,
        ],
    );
    // The initramfs takes the offset from the command line.
    let cmdline = a.iter_mut().find(|s| s.starts_with("console=")).unwrap();
    cmdline.push_str(&format!(" vmmtest.lba={LBA}"));
    let mut vm = spawn_vm(&a);
    let (device, md5) = guarded(&mut vm, |vm| {
        let device = vm.wait_line("VMMTEST vda-device ", GUARD);
        vm.wait_line("VMMTEST dd-write ok", GUARD);
        (device, vm.wait_line("VMMTEST vdb-md5 ", GUARD))
    });
    let out = vm.finish(GUARD);
    assert_powered_off(&out);

    // The disk came from a virtio-mmio device that only our DSDT describes.
    assert!(
        device.contains("/LNRO0005:"),
        "vda is not on an ACPI-described virtio-mmio device: {device}"
    );

    // The guest's bytes are in the image, where it put them, and nothing else changed.
    let image = std::fs::read(&vda.0).unwrap();
    assert_eq!(image.len(), 4 * MIB, "the image changed size");
    for (i, sector) in image.chunks(SECTOR).enumerate() {
        if (LBA..LBA + PATTERN_SECTORS).contains(&i) {
            assert!(
                sector == pattern_sector(i).as_slice(),
                "sector {i} of vda does not hold the guest's pattern: {:?}",
                String::from_utf8_lossy(&sector[..40])
            );
        } else {
            assert!(
                sector.iter().all(|&b| b == 0),
                "sector {i} of vda, outside the written range, is not zero"
            );
        }
    }

    // The guest read exactly what the host wrote into vdb.
    let want = md5_hex(&vdb_data[..MIB]);
    assert_eq!(
        md5.strip_prefix("VMMTEST vdb-md5 ").unwrap().trim(),
        want,
        "md5 of vdb's first MiB in the guest vs on the host"
    );
    assert_eq!(
        std::fs::read(&vdb.0).unwrap(),
        vdb_data,
        "the read-only image changed"
    );
}

#[test]
#[ignore = "needs hardware virtualization (kvm_intel/kvm_amd); scripts/test.sh runs these where the host has it"]
fn qmp_system_powerdown_presses_the_acpi_power_button() {
    let g = guest();
    let sock = std::env::temp_dir().join(format!("vmm-linux-boot-{}.sock", std::process::id()));
    let qmp = format!("unix:{}", sock.display());
    let mut vm = spawn_vm(&args(
        &g.bzimage,
        &g.initrd,
        "powerbutton",
        &["--memory", "256", "--qmp", &qmp],
    ));
    guarded(&mut vm, |vm| {
        // busybox acpid has the button's input device open once the guest says so.
        vm.wait_line("VMMTEST waiting-for-button", GUARD);
        let deadline = Instant::now() + GUARD;
        let conn = loop {
            match Connection::connect_unix(&sock) {
                Ok(c) => break c,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("cannot connect to {}: {e}", sock.display()),
            }
        };
        conn.negotiate(false).expect("qmp_capabilities");
        let c = Client::new(conn);
        let next_event = || {
            c.next_event(Some(GUARD))
                .expect("QMP event")
                .unwrap_or_else(|| panic!("no QMP event within {GUARD:?}"))
                .0
        };
        c.system_powerdown().expect("system_powerdown");
        match next_event() {
            Event::Powerdown => {}
            e => panic!("expected POWERDOWN, got {e:?}"),
        }
        // The guest's handler for the button runs `poweroff -f`.
        vm.wait_line("VMMTEST power-button", GUARD);
        match next_event() {
            Event::Shutdown(a) => assert_eq!(
                (a.guest, a.reason),
                (true, ShutdownCause::GuestShutdown),
                "SHUTDOWN event"
            ),
            e => panic!("expected SHUTDOWN, got {e:?}"),
        }
    });
    let out = vm.finish(GUARD);
    assert_powered_off(&out);
    assert!(!sock.exists(), "socket file left behind");
}
