// SPDX-License-Identifier: Apache-2.0
//! QEMU's command line, as a manager such as libvirt writes it for a `microvm` machine, read
//! into the same [`VmConfig`] and [`RunOptions`] as vmm's own command line ([`crate::cli`]), so
//! that there is one path through the VMM whichever command line started it.
//!
//! It is selected when vmm runs under the name `qemu-system-x86_64` (a link with that name is
//! what a libvirt domain's `<emulator>` points at), or when its first argument other than
//! `-S` (which both command lines have) is a single-dash QEMU option other than `-h` (vmm's
//! help): `vmm -S -machine none -qmp unix:/tmp/q,server=on,wait=off` is QEMU's command line,
//! `vmm -S --kernel k` vmm's. Option names take one dash or two (`--name`), as QEMU's.
//!
//! Every option value goes through [`crate::options`] (QEMU's `key=value` syntax with `,,`,
//! and the JSON form where QEMU takes it: `-blockdev`, `-device`, `-audiodev`, `-object`);
//! `-blockdev` is read into QMP's `BlockdevOptions` by the runtime's keyval visitor and checked
//! as `blockdev-add` checks it. What vmm does not implement is refused with one line naming
//! the option, in QEMU's format (`qemu-system-x86_64: -no-acpi: ...`), and exit code 1; an
//! option QEMU does not know gets QEMU's `invalid option`.

mod chardev;
mod devices;
mod machine;
pub mod options_info;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use crate::device_manager::SerialConfig;
use crate::disk::DiskSpec;
use crate::machine::Lifecycle;
use crate::options::{OptionError, OptionList};
use crate::runner::RunOptions;
use crate::vm::VmConfig;

use self::chardev::Chardevs;

/// The program name QEMU's command line is selected by, and that messages then carry.
pub const PROGRAM: &str = "qemu-system-x86_64";

/// What is wrong with one option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// An option QEMU does not have (QEMU's words).
    #[error("invalid option")]
    InvalidOption,
    /// An option without its argument (QEMU's words).
    #[error("requires an argument")]
    NeedsArgument,
    /// A key nobody takes (QEMU's words for its option lists).
    #[error("Invalid parameter '{0}'")]
    UnknownKey(String),
    /// A malformed option list or value.
    #[error("{0}")]
    Syntax(OptionError),
    /// A key QEMU's option has but a required one is missing (QEMU's words).
    #[error("Parameter '{0}' is missing")]
    Missing(&'static str),
    /// A value of the wrong form.
    #[error("{0}")]
    Invalid(String),
    /// Something QEMU does that vmm does not; the text says what and, where there is one,
    /// what to do instead.
    #[error("{0}")]
    Unsupported(String),
}

impl From<OptionError> for Problem {
    fn from(e: OptionError) -> Self {
        match e {
            OptionError::Unknown(key) => Problem::UnknownKey(key),
            e => Problem::Syntax(e),
        }
    }
}

/// An error of QEMU's command line: the option (with its argument, as QEMU shows it) and what
/// is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {problem}")]
pub struct QemuCliError {
    /// `-name`, `-blockdev driver=file,...`, or a bare argument.
    pub location: String,
    /// What is wrong.
    pub problem: Problem,
}

/// Errors of one option's value, before the location is known.
type OptResult<T> = Result<T, Problem>;

/// One option of the command line: its name and argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Opt {
    /// The name without dashes.
    pub name: &'static str,
    /// The argument of an option that takes one.
    pub arg: Option<String>,
}

impl Opt {
    /// Where an error of this option is, as QEMU writes it.
    fn location(&self) -> String {
        match &self.arg {
            Some(arg) => format!("-{} {arg}", self.name),
            None => format!("-{}", self.name),
        }
    }

    fn fail(&self, problem: Problem) -> QemuCliError {
        QemuCliError {
            location: self.location(),
            problem,
        }
    }

    /// The argument (the walker guarantees one for options that take it).
    fn value(&self) -> &str {
        self.arg.as_deref().unwrap_or_default()
    }
}

/// The QEMU options vmm reads, and whether each takes an argument. Everything else is
/// QEMU's "invalid option" (even where QEMU has it, since vmm would not do it).
const OPTIONS: &[(&str, bool)] = &[
    ("add-fd", true),
    ("accel", true),
    ("append", true),
    ("audiodev", true),
    ("blockdev", true),
    ("boot", true),
    ("chardev", true),
    ("cpu", true),
    ("daemonize", false),
    ("device", true),
    ("display", true),
    ("enable-kvm", false),
    ("h", false),
    ("help", false),
    ("incoming", true),
    ("initrd", true),
    ("kernel", true),
    ("m", true),
    ("machine", true),
    ("M", true),
    ("mon", true),
    ("msg", true),
    ("name", true),
    ("no-acpi", false),
    ("no-reboot", false),
    ("no-shutdown", false),
    ("no-user-config", false),
    ("nodefaults", false),
    ("nographic", false),
    ("object", true),
    ("overcommit", true),
    ("pidfile", true),
    ("qmp", true),
    ("rtc", true),
    ("S", false),
    ("sandbox", true),
    ("serial", true),
    ("smp", true),
    ("uuid", true),
    ("version", false),
];

fn lookup(arg: &str) -> Option<(&'static str, bool)> {
    let name = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    OPTIONS.iter().find(|(n, _)| *n == name).copied()
}

/// Whether vmm was started with QEMU's command line (see the module documentation).
pub fn selected(args: &[OsString]) -> bool {
    let named_qemu = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == OsStr::new(PROGRAM));
    let first_is_qemu = args
        .iter()
        .skip(1)
        .find(|a| *a != "-S")
        .and_then(|a| a.to_str())
        .is_some_and(|a| !a.starts_with("--") && a != "-h" && lookup(a).is_some());
    named_qemu || first_is_qemu
}

/// Splits the arguments (after the program name) into options with their arguments.
///
/// # Errors
/// An option vmm does not read, a missing argument, an argument that is not UTF-8, or a bare
/// argument (QEMU's disk image shorthand).
pub(crate) fn walk(args: &[OsString]) -> Result<Vec<Opt>, QemuCliError> {
    let mut opts = Vec::new();
    let mut it = args.iter();
    while let Some(raw) = it.next() {
        let shown = raw.to_string_lossy().into_owned();
        let fail = |problem| QemuCliError {
            location: shown.clone(),
            problem,
        };
        if !shown.starts_with('-') {
            return Err(fail(Problem::Unsupported(
                "a disk image without an option is not supported: use -blockdev and -device".into(),
            )));
        }
        let (name, takes_arg) = lookup(&shown).ok_or_else(|| fail(Problem::InvalidOption))?;
        let arg = if takes_arg {
            let value = it.next().ok_or_else(|| fail(Problem::NeedsArgument))?;
            let value = value.to_str().ok_or_else(|| {
                fail(Problem::Invalid(format!(
                    "argument '{}' is not valid UTF-8",
                    value.to_string_lossy()
                )))
            })?;
            Some(value.to_owned())
        } else {
            None
        };
        opts.push(Opt { name, arg });
    }
    Ok(opts)
}

/// How messages look (`-msg`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageFormat {
    /// Put the time in front of each message.
    pub timestamp: bool,
    /// Put the guest's name (`-name`) in front of each message.
    pub guest_name: bool,
}

/// A run from QEMU's command line: vmm's configuration plus the process options.
#[derive(Debug)]
pub struct QemuRun {
    /// The VM.
    pub config: VmConfig,
    /// The run.
    pub options: RunOptions,
    /// `-daemonize`: fork, and let the parent exit once the monitor listens.
    pub daemonize: bool,
    /// `-pidfile`.
    pub pidfile: Option<PathBuf>,
    /// `-msg`.
    pub messages: MessageFormat,
    /// `-sandbox`: vmm's seccomp filters (on unless `-sandbox off`).
    pub seccomp: crate::seccomp::SeccompMode,
}

/// What QEMU's command line asks for.
#[derive(Debug)]
pub enum Invocation {
    /// Run a VM (or, with `-machine none`, a monitor only).
    Run(Box<QemuRun>),
    /// `-version`: print the version line.
    Version,
    /// `-help`, `-h`: print the options vmm reads.
    Help,
}

/// The `-version` text: QEMU's first line (which tools parse for the version they drive) and
/// what this really is.
pub fn version_text() -> String {
    let v = crate::qmp::version_info();
    format!(
        "QEMU emulator version {}.{}.{} ({})\nvmm {}: a KVM virtual machine monitor reading QEMU's command line; it is not QEMU\n",
        v.qemu.major,
        v.qemu.minor,
        v.qemu.micro,
        v.package,
        env!("CARGO_PKG_VERSION")
    )
}

/// The `-help` text.
pub fn help_text() -> String {
    let mut s = format!(
        "usage: {PROGRAM} [options]\n\nvmm {} reading QEMU's command line; the options it takes (see its README):\n",
        env!("CARGO_PKG_VERSION")
    );
    for (name, arg) in OPTIONS {
        s.push_str(&format!("  -{name}{}\n", if *arg { " ..." } else { "" }));
    }
    s
}

/// Everything gathered from the options, before it becomes a configuration.
#[derive(Debug, Default)]
struct Gathered {
    machine: machine::MachineSettings,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: Option<String>,
    lifecycle: Lifecycle,
    paused: bool,
    name: Option<String>,
    nodefaults: bool,
    nographic: bool,
    chardevs: Chardevs,
    blockdevs: Vec<qapi::types::BlockdevOptions>,
    disks: Vec<DiskSpec>,
    daemonize: bool,
    pidfile: Option<PathBuf>,
    messages: MessageFormat,
    seccomp: Option<crate::seccomp::SeccompMode>,
    incoming: Option<crate::migration::control::IncomingSpec>,
}

/// Reads QEMU's command line (`args` without the program name).
///
/// # Errors
/// The first option vmm cannot take, with what is wrong with it.
pub fn parse(args: &[OsString]) -> Result<Invocation, QemuCliError> {
    let opts = walk(args)?;
    if opts.iter().any(|o| o.name == "version") {
        return Ok(Invocation::Version);
    }
    if opts.iter().any(|o| matches!(o.name, "help" | "h")) {
        return Ok(Invocation::Help);
    }
    let mut g = Gathered::default();
    // Character devices first: -mon, -serial and -device name them by id wherever they are.
    for o in opts.iter().filter(|o| o.name == "chardev") {
        g.chardevs.define(o.value()).map_err(|p| o.fail(p))?;
    }
    for o in &opts {
        gather(&mut g, o).map_err(|p| o.fail(p))?;
    }
    build(g)
}

fn path_arg(o: &Opt) -> OptResult<PathBuf> {
    if o.value().is_empty() {
        return Err(Problem::Invalid("needs a file name".into()));
    }
    Ok(PathBuf::from(o.value()))
}

/// Takes one option into `g`.
fn gather(g: &mut Gathered, o: &Opt) -> OptResult<()> {
    match o.name {
        "chardev" => {}
        "name" => g.name = machine::parse_name(o.value())?,
        "S" => g.paused = true,
        "object" => devices::check_object(o.value())?,
        "machine" | "M" => machine::parse_machine(&mut g.machine, o.value())?,
        "accel" => machine::parse_accel(o.value())?,
        "enable-kvm" => {}
        "cpu" => machine::parse_cpu(o.value())?,
        "m" => g.machine.memory_mib = Some(machine::parse_memory(o.value())?),
        "overcommit" => machine::parse_overcommit(o.value())?,
        "smp" => g.machine.cpus = Some(machine::parse_smp(o.value())?),
        "uuid" => machine::check_uuid(o.value())?,
        "display" => machine::parse_display(o.value())?,
        "nographic" => g.nographic = true,
        "no-user-config" => {}
        "nodefaults" => g.nodefaults = true,
        "mon" => g.chardevs.monitor(o.value())?,
        "qmp" => g.chardevs.qmp(o.value())?,
        "serial" => g.chardevs.serial_option(o.value())?,
        "rtc" => machine::parse_rtc(o.value())?,
        "sandbox" => g.seccomp = Some(machine::parse_sandbox(o.value())?),
        "no-shutdown" => g.lifecycle.no_shutdown = true,
        "no-reboot" => g.lifecycle.no_reboot = true,
        "no-acpi" => {
            return Err(Problem::Unsupported(
                "vmm's machine is described by ACPI only and cannot run without it; \
                 a libvirt domain needs <features><acpi/></features>"
                    .into(),
            ))
        }
        "boot" => machine::parse_boot(o.value())?,
        "kernel" => g.kernel = Some(path_arg(o)?),
        "initrd" => g.initrd = Some(path_arg(o)?),
        "append" => g.append = Some(o.value().to_owned()),
        "blockdev" => g.blockdevs.push(devices::parse_blockdev(o.value())?),
        "device" => match devices::parse_device(o.value())? {
            devices::Device::Disk(spec) => g.disks.push(*spec),
            devices::Device::Serial { chardev, id } => g.chardevs.isa_serial(&chardev, id)?,
        },
        "audiodev" => devices::check_audiodev(o.value())?,
        "msg" => machine::parse_msg(&mut g.messages, o.value())?,
        "add-fd" => devices::add_fd(o.value())?,
        "pidfile" => g.pidfile = Some(path_arg(o)?),
        "daemonize" => g.daemonize = true,
        "incoming" => {
            g.incoming = Some(
                o.value()
                    .parse()
                    .map_err(|e: crate::migration::uri::UriError| {
                        Problem::Invalid(e.to_string())
                    })?,
            )
        }
        // Handled before the others.
        "version" | "help" | "h" => {}
        _ => return Err(Problem::InvalidOption),
    }
    Ok(())
}

/// Turns what was gathered into vmm's configuration.
fn build(g: Gathered) -> Result<Invocation, QemuCliError> {
    let whole = |problem| QemuCliError {
        location: PROGRAM.into(),
        problem,
    };
    let at = |name: &str, problem| QemuCliError {
        location: format!("-{name}"),
        problem,
    };
    let guestless = g.machine.kind == machine::MachineKind::None;
    if guestless {
        for (present, what) in [
            (g.kernel.is_some(), "kernel"),
            (!g.disks.is_empty(), "device"),
            (g.chardevs.has_serial(), "device"),
        ] {
            if present {
                return Err(at(
                    what,
                    Problem::Unsupported(
                        "-machine none runs no guest: it takes no kernel and no devices".into(),
                    ),
                ));
            }
        }
    } else if g.kernel.is_none() {
        return Err(whole(Problem::Unsupported(
            "-kernel is required: vmm boots a kernel directly, without firmware \
             (a libvirt domain needs <os><kernel>...</kernel></os>)"
                .into(),
        )));
    }
    if g.daemonize && !g.chardevs.serial_allows_daemon(g.nodefaults, g.nographic) {
        return Err(at(
            "daemonize",
            Problem::Unsupported("-nographic cannot be used with -daemonize".into()),
        ));
    }
    let serial: SerialConfig = if guestless {
        SerialConfig::new(crate::device_manager::SerialMode::None)
    } else {
        g.chardevs.serial_config(g.nodefaults, g.nographic)
    };
    let (qmp, monitor_chardevs) = g.chardevs.monitors();
    crate::qmp_socket::check_distinct(&qmp).map_err(|shown| {
        at(
            "mon",
            Problem::Invalid(format!("the monitor socket {shown} is given twice")),
        )
    })?;
    let memory_mib = g.machine.memory_mib.unwrap_or(machine::DEFAULT_MEMORY_MIB);
    machine::check_memory(memory_mib).map_err(|p| at("m", p))?;
    let config = VmConfig {
        kernel: g.kernel,
        initrd: g.initrd,
        cmdline: g.append.unwrap_or_default(),
        cpus: if guestless {
            0
        } else {
            g.machine.cpus.unwrap_or(1)
        },
        memory_mib,
        serial,
        blockdevs: g.blockdevs,
        disks: g.disks,
        debug_port: false,
        started: std::time::Instant::now(),
        dump_guest_core: g.machine.dump_guest_core,
        snapshot: crate::migration::control::snapshot_path(g.incoming.as_ref()),
        inactive_images: g.incoming.is_some(),
    };
    let options = RunOptions {
        lifecycle: g.lifecycle,
        paused: g.paused,
        name: g.name,
        qmp,
        qmp_max_clients: usize::from(monitor::DEFAULT_MAX_CLIENTS),
        monitor_chardevs,
        incoming: g.incoming,
    };
    Ok(Invocation::Run(Box::new(QemuRun {
        config,
        options,
        daemonize: g.daemonize,
        pidfile: g.pidfile,
        messages: g.messages,
        seccomp: g.seccomp.unwrap_or_default(),
    })))
}

/// Reads `value` as an option list with an implied first key (QEMU's `implied_opt_name`).
fn keyval(value: &str, implied: Option<&str>) -> OptResult<OptionList> {
    OptionList::parse(value, implied).map_err(Problem::from)
}

#[cfg(test)]
mod tests;
