// SPDX-License-Identifier: Apache-2.0
//! A real Linux to userspace on any KVM, PVM hosts included: the project's PVM test kernel
//! (scripts/pvm-kernel.sh: Debian's linux-source-6.12 with the boot-option-guarded workarounds
//! and the config of tests/pvm-kernel/) boots through its PVH entry with the busybox initramfs
//! of `scripts/guest-initramfs.sh pvm`, sees both CPUs of our MADT and the virtio-mmio disk
//! that our DSDT describes (LNRO0005), and powers off through our FADT; vmm then exits 0.
//!
//! On PVM hosts guest ring 0 is emulated, so the guest's command line carries the three
//! workarounds' options and masks the CPU features the emulator cannot handle (the host's
//! CPUID shows through there); both are harmless on hardware KVM, where the same test runs.
//!
//! `#[ignore]`d: the first run builds the kernel (minutes, and root for apt-get), and a boot
//! takes about 19 s on a PVM host. Run it with
//! `cargo test -p vmm --test linux_pvm -- --ignored`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{script, script_with, spawn};

/// A guard against hangs, not a performance assertion (a PVM host boots it in ~19 s).
const GUARD: Duration = Duration::from_secs(300);
const SECTOR: u64 = 512;
/// The disk: 1 MiB.
const DISK_SECTORS: u64 = 2048;

/// The workarounds' boot options (tests/pvm-kernel/*.patch) and the PVM host's masks.
const PVM_CMDLINE: &str = "console=ttyS0 panic=-1 reboot=t quiet \
    skip_int3_selftest syscall_pf_fixup skip_fpu_fwait noxsave nofsgsbase \
    clearcpuid=smap,popcnt,cx16,rdrand,rdseed,erms,fsrm,rtm,hle,umip,pku,avx,avx2,avx512f,bmi1,bmi2 \
    8250.nr_uarts=1 vmmtest=boot";

/// A raw disk image removed on drop.
struct Disk(PathBuf);

impl Disk {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!("vmm-linux-pvm-{}.raw", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(DISK_SECTORS * SECTOR).unwrap();
        Disk(p)
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
#[ignore = "builds a kernel on first use (minutes, root for apt-get); run with --ignored"]
fn pvm_kernel_reaches_userspace_with_two_cpus_and_vda() {
    let kernel = script("pvm-kernel.sh");
    let initrd = script_with("guest-initramfs.sh", &["pvm"]);
    let disk = Disk::new();
    let started = Instant::now();
    let mut vm = spawn(&[
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--cmdline",
        PVM_CMDLINE,
        "--cpus",
        "2",
        "--memory",
        "512",
        "--disk",
        &format!("path={}", disk.0.to_str().unwrap()),
        "--no-reboot",
    ]);
    // wait_line panics on timeout; kill vmm then rather than leave it running.
    let lines = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ready = vm.wait_line("VMMTEST ready ", GUARD);
        let vda = vm.wait_line("VMMTEST vda ", GUARD);
        (ready, vda)
    }));
    let (ready, vda) = match lines {
        Ok(l) => l,
        Err(panic) => {
            vm.signal(libc::SIGKILL);
            std::panic::resume_unwind(panic)
        }
    };
    let userspace = started.elapsed();
    let out = vm.finish(GUARD);
    eprintln!(
        "userspace after {:.1} s, vmm exited after {:.1} s",
        userspace.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    out.assert_exit(0);
    let cpus = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cpus="))
        .unwrap_or_else(|| panic!("no cpus= in {ready:?}"));
    assert_eq!(
        cpus, "2",
        "online CPUs: {ready}\n--- serial ---\n{}",
        out.serial
    );
    assert_eq!(
        vda,
        format!("VMMTEST vda {DISK_SECTORS}"),
        "the virtio-mmio disk\n--- serial ---\n{}",
        out.serial
    );
    assert!(
        out.lines_with("VMMTEST error").is_empty(),
        "the guest reported an error\n--- serial ---\n{}",
        out.serial
    );
    // With panic=-1 and --no-reboot a panic also ends in exit 0: the ACPI S5 is what says
    // the guest powered itself off.
    assert!(
        out.serial.contains("reboot: Power down") && !out.serial.contains("Kernel panic"),
        "the guest did not power off through ACPI\n--- serial ---\n{}",
        out.serial
    );
    assert!(out.stderr.is_empty(), "vmm stderr: {}", out.stderr);
}
