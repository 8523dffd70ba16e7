// SPDX-License-Identifier: Apache-2.0
//! The command line: parsed with clap, then checked into a [`VmConfig`] plus run options.

use std::path::PathBuf;

use clap::Parser;

use monitor::{SocketSpec, DEFAULT_MAX_CLIENTS};

use crate::device_manager::{SerialConfig, SerialMode};
use crate::disk::DiskSpec;
use crate::machine::Lifecycle;
use crate::runner::RunOptions;
use crate::vm::VmConfig;

/// Smallest guest RAM we accept, in MiB.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Largest vCPU count.
pub const MAX_CPUS: u8 = 64;

/// A minimal KVM virtual machine monitor with a QEMU-compatible control plane.
#[derive(Debug, Parser)]
#[command(name = "vmm", version, about, long_about = None)]
pub struct Cli {
    /// Kernel to boot: a Linux bzImage, or an ELF vmlinux with a PVH note.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STRING", default_value = "")]
    pub cmdline: String,
    /// Number of vCPUs (1 to 64).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_CPUS)))]
    pub cpus: u8,
    /// Guest RAM in MiB; RAM beyond 3 GiB is placed above the 32-bit MMIO hole.
    #[arg(long, value_name = "MIB", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(MIN_MEMORY_MIB..=(1 << 30)))]
    pub memory: u64,
    /// Serial console: stdio, file:PATH or none.
    #[arg(long, value_name = "MODE", default_value = "stdio", value_parser = parse_serial)]
    pub serial: SerialMode,
    /// Exit instead of rebooting when the guest resets.
    #[arg(long)]
    pub no_reboot: bool,
    /// Start with the vCPUs paused.
    #[arg(short = 'S', long)]
    pub paused: bool,
    /// Log each guest write to the debug port 0x80 on stderr, with the time since vmm
    /// started (boot-progress codes; the probe guest writes 0x41 when it is ready).
    #[arg(long)]
    pub debug_port: bool,
    /// A name for the VM (reported by query-name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// A raw disk image as a virtio-blk device (repeatable, in guest order vda, vdb, ...):
    /// PATH or path=PATH[,id=ID][,node-name=NAME][,readonly=on|off][,cache=writeback|none|unsafe][,serial=STR].
    #[arg(long, value_name = "DISK", value_parser = parse_disk)]
    pub disk: Vec<DiskSpec>,
    /// QMP monitor socket (repeatable): unix:PATH or tcp:HOST:PORT, with ,server=on|off and
    /// ,wait=on|off as in QEMU (server=on alone waits for the first client before starting)
    /// and ,max-clients=N (most clients on this socket at once); a comma in the path is
    /// written ,,.
    #[arg(long, value_name = "SOCKET", value_parser = parse_qmp)]
    pub qmp: Vec<SocketSpec>,
    /// Most QMP clients connected at once, over all --qmp sockets; one more is refused with an
    /// error message instead of the greeting.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CLIENTS,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub qmp_max_clients: u16,
    /// Wait for an incoming migration instead of booting: unix:PATH, tcp:HOST:PORT, fd:N,
    /// exec:COMMAND, file:PATH (a snapshot to restore), or defer (the URI comes with QMP's
    /// migrate-incoming). The guest runs once it has arrived (paused with -S).
    #[arg(long, value_name = "URI", value_parser = parse_incoming)]
    pub incoming: Option<crate::migration::control::IncomingSpec>,
    /// seccomp filters on every thread: on (a forbidden system call ends vmm with a one-line
    /// error), log (the kernel logs it and lets it run), off.
    #[arg(long, value_name = "MODE", default_value = "on")]
    pub seccomp: crate::seccomp::SeccompMode,
}

fn parse_disk(s: &str) -> Result<DiskSpec, String> {
    s.parse()
        .map_err(|e: crate::disk::DiskSpecError| e.to_string())
}

fn parse_incoming(s: &str) -> Result<crate::migration::control::IncomingSpec, String> {
    s.parse()
        .map_err(|e: crate::migration::uri::UriError| e.to_string())
}

fn parse_qmp(s: &str) -> Result<SocketSpec, String> {
    crate::qmp_socket::parse_qmp(s).map_err(|e| e.to_string())
}

fn parse_serial(s: &str) -> Result<SerialMode, String> {
    match s {
        "stdio" => Ok(SerialMode::Stdio),
        "none" => Ok(SerialMode::None),
        _ => match s.strip_prefix("file:") {
            Some("") => Err("file: needs a path, as in file:/tmp/console.log".into()),
            Some(p) => Ok(SerialMode::File(PathBuf::from(p))),
            None => Err(format!("'{s}' is not one of stdio, file:PATH, none")),
        },
    }
}

/// Errors of the checks clap cannot express.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// More RAM than the host has.
    #[error("--memory {asked} MiB is more than this host's {host} MiB of RAM")]
    MemoryTooLarge {
        /// Requested MiB.
        asked: u64,
        /// Host RAM in MiB.
        host: u64,
    },
    /// The same QMP socket twice.
    #[error("--qmp {0} is given twice")]
    QmpTwice(String),
}

/// The host's RAM in MiB (`u64::MAX` when it cannot be read).
pub fn host_memory_mib() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 on error, handled below.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page_size <= 0 {
        return u64::MAX;
    }
    (pages as u64).saturating_mul(page_size as u64) >> 20
}

impl Cli {
    /// Checks the options of the run beyond the VM's configuration.
    ///
    /// # Errors
    /// Fails when a QMP socket is given twice.
    pub fn run_options(&self) -> Result<RunOptions, CliError> {
        crate::qmp_socket::check_distinct(&self.qmp).map_err(CliError::QmpTwice)?;
        Ok(RunOptions {
            lifecycle: Lifecycle {
                no_reboot: self.no_reboot,
                no_shutdown: false,
            },
            paused: self.paused,
            name: self.name.clone(),
            qmp: self.qmp.clone(),
            qmp_max_clients: usize::from(self.qmp_max_clients),
            monitor_chardevs: self
                .qmp
                .iter()
                .enumerate()
                .map(|(i, spec)| qapi::types::ChardevInfo {
                    label: format!("compat_monitor{i}"),
                    filename: crate::qmp_socket::describe(&spec.endpoint),
                    frontend_open: true,
                })
                .collect(),
            incoming: self.incoming.clone(),
        })
    }

    /// Checks what clap could not and builds the VM configuration.
    ///
    /// # Errors
    /// Fails on values that are well-formed but impossible on this host.
    pub fn vm_config(&self) -> Result<VmConfig, CliError> {
        let host = host_memory_mib();
        if self.memory > host {
            return Err(CliError::MemoryTooLarge {
                asked: self.memory,
                host,
            });
        }
        Ok(VmConfig {
            kernel: Some(self.kernel.clone()),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            cpus: self.cpus,
            memory_mib: self.memory,
            serial: SerialConfig::new(self.serial.clone()),
            blockdevs: Vec::new(),
            disks: self.disk.clone(),
            debug_port: self.debug_port,
            started: std::time::Instant::now(),
            dump_guest_core: true,
            snapshot: crate::migration::control::snapshot_path(self.incoming.as_ref()),
            inactive_images: self.incoming.is_some(),
        })
    }
}

/// Turns a clap error into one line without the usage block, as the rest of vmm reports
/// errors.
pub fn one_line(e: &clap::Error) -> String {
    // The message proper is the first paragraph; some messages continue on indented lines
    // ("the following required arguments were not provided:\n  --kernel <PATH>").
    let rendered = e.to_string();
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = message.join(" ");
    match line.strip_prefix("error: ") {
        Some(rest) => rest.to_owned(),
        None if line.is_empty() => "invalid command line".to_owned(),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, String> {
        let mut v = vec!["vmm"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map_err(|e| one_line(&e))
    }

    #[test]
    fn defaults() {
        let c = parse(&["--kernel", "k"]).unwrap();
        assert_eq!(
            (c.cpus, c.memory, c.no_reboot, c.paused),
            (1, 512, false, false)
        );
        assert_eq!(c.serial, SerialMode::Stdio);
        assert_eq!(c.cmdline, "");
    }

    #[test]
    fn all_options() {
        let c = parse(&[
            "--kernel",
            "k",
            "--initrd",
            "i",
            "--cmdline",
            "console=ttyS0",
            "--cpus",
            "4",
            "--memory",
            "1024",
            "--serial",
            "file:/tmp/x",
            "--no-reboot",
            "-S",
            "--name",
            "vm1",
        ])
        .unwrap();
        assert_eq!(c.cpus, 4);
        assert_eq!(c.memory, 1024);
        assert_eq!(c.serial, SerialMode::File("/tmp/x".into()));
        assert!(c.no_reboot && c.paused);
        assert_eq!(c.name.as_deref(), Some("vm1"));
        assert!(c.qmp.is_empty());
        assert_eq!(c.vm_config().unwrap().cmdline, "console=ttyS0");
    }

    #[test]
    fn bad_values_give_one_line() {
        let e = parse(&["--kernel", "k", "--cpus", "0"]).unwrap_err();
        assert!(e.contains("--cpus") && e.contains("1..=64"), "{e}");
        assert!(!e.contains('\n'));
        let e = parse(&["--kernel", "k", "--cpus", "65"]).unwrap_err();
        assert!(e.contains("65"), "{e}");
        let e = parse(&["--kernel", "k", "--memory", "8"]).unwrap_err();
        assert!(e.contains("--memory"), "{e}");
        let e = parse(&["--kernel", "k", "--serial", "pty"]).unwrap_err();
        assert!(
            e.contains("'pty' is not one of stdio, file:PATH, none"),
            "{e}"
        );
        let e = parse(&["--kernel", "k", "--serial", "file:"]).unwrap_err();
        assert!(e.contains("needs a path"), "{e}");
        let e = parse(&["--cpus", "1"]).unwrap_err();
        assert!(e.contains("--kernel"), "{e}");
        let e = parse(&["--kernel", "k", "--bogus"]).unwrap_err();
        assert!(e.contains("--bogus"), "{e}");
    }

    #[test]
    fn qmp_sockets() {
        let c = parse(&[
            "--kernel",
            "k",
            "--qmp",
            "unix:/tmp/a",
            "--qmp",
            "tcp:127.0.0.1:4444,server=on,wait=off",
        ])
        .unwrap();
        assert_eq!(c.qmp.len(), 2);
        assert!(!c.qmp[0].wait && !c.qmp[1].wait);
        let e = parse(&["--kernel", "k", "--qmp", "stdio"]).unwrap_err();
        assert!(e.contains("'stdio' is not a QMP socket"), "{e}");
    }

    #[test]
    fn memory_beyond_host_is_refused() {
        let c = parse(&["--kernel", "k", "--memory", "1073741824"]).unwrap();
        let e = c.vm_config().unwrap_err().to_string();
        assert!(
            e.starts_with("--memory 1073741824 MiB is more than this host's"),
            "{e}"
        );
    }
}
