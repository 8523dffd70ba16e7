// SPDX-License-Identifier: Apache-2.0
//! The machine options of QEMU's command line: `-machine`, `-accel`, `-cpu`, `-m`, `-smp`,
//! `-overcommit`, `-name`, `-uuid`, `-display`, `-rtc`, `-boot`, `-msg`.

use super::{keyval, MessageFormat, OptResult, Problem};
use crate::cli::{host_memory_mib, MAX_CPUS, MIN_MEMORY_MIB};
use crate::options::{parse_size, parse_u64};

/// QEMU's default guest RAM when `-m` is not given, in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 128;

/// The machine types vmm has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MachineKind {
    /// vmm's machine (QEMU's `microvm` is the closest QEMU machine: no PCI, virtio-mmio,
    /// ACPI).
    #[default]
    Microvm,
    /// No guest at all: the monitor only (QEMU's `none`, what managers run to probe).
    None,
}

/// What the machine options set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSettings {
    /// The machine type.
    pub kind: MachineKind,
    /// `-m`.
    pub memory_mib: Option<u64>,
    /// `-smp`.
    pub cpus: Option<u8>,
    /// `dump-guest-core`: guest RAM in core dumps of vmm.
    pub dump_guest_core: bool,
}

impl Default for MachineSettings {
    fn default() -> Self {
        Self {
            kind: MachineKind::default(),
            memory_mib: None,
            cpus: None,
            dump_guest_core: true,
        }
    }
}

fn unsupported(s: impl Into<String>) -> Problem {
    Problem::Unsupported(s.into())
}

/// `-name [guest=]NAME[,debug-threads=on|off]`: the name. `debug-threads` names QEMU's threads
/// after what they do; vmm's threads always have such names (`vcpuN`, `blk-<id>`,
/// `qmp-monitor`), so the toggle is checked and either value describes vmm.
///
/// # Errors
/// Unknown keys, a bad toggle.
pub fn parse_name(value: &str) -> OptResult<Option<String>> {
    let mut l = keyval(value, Some("guest"))?;
    let name = l.take_str("guest")?;
    l.take_bool("debug-threads")?;
    l.finish()?;
    Ok(name)
}

/// The accelerators in an `accel=a:b` list: vmm runs on KVM, so `kvm` must be among them.
fn check_accel_list(list: &str) -> OptResult<()> {
    if list.split(':').any(|a| a == "kvm") {
        Ok(())
    } else {
        Err(unsupported(format!(
            "accelerator '{list}' is not supported: vmm runs guests on KVM only"
        )))
    }
}

/// `-machine [type=]TYPE[,accel=..][,usb=off][,dump-guest-core=on|off][,acpi=on]`.
///
/// # Errors
/// A machine type vmm does not have, USB, ACPI off, an accelerator other than KVM.
pub fn parse_machine(s: &mut MachineSettings, value: &str) -> OptResult<()> {
    let mut l = keyval(value, Some("type"))?;
    if let Some(t) = l.take_str("type")? {
        s.kind = match t.as_str() {
            "microvm" => MachineKind::Microvm,
            "none" => MachineKind::None,
            other => {
                return Err(unsupported(format!(
                    "machine type '{other}' is not supported: vmm has 'microvm' (no PCI, \
                     virtio-mmio, ACPI) and 'none'"
                )))
            }
        };
    }
    if let Some(accel) = l.take_str("accel")? {
        check_accel_list(&accel)?;
    }
    if l.take_bool("usb")? == Some(true) {
        return Err(unsupported(
            "usb=on: the machine has no USB controller (a libvirt domain needs \
             <controller type='usb' model='none'/>)",
        ));
    }
    if let Some(dump) = l.take_bool("dump-guest-core")? {
        s.dump_guest_core = dump;
    }
    if l.take_bool("acpi")? == Some(false) {
        return Err(unsupported(
            "acpi=off: vmm's machine is described by ACPI only",
        ));
    }
    l.finish()?;
    Ok(())
}

/// `-accel kvm`.
///
/// # Errors
/// Another accelerator, or options of it.
pub fn parse_accel(value: &str) -> OptResult<()> {
    let mut l = keyval(value, Some("accel"))?;
    let accel = l.take_str("accel")?.ok_or(Problem::Missing("accel"))?;
    l.finish()?;
    check_accel_list(&accel)
}

/// `-cpu host` (or `max`, the same here): the vCPUs are the host's, as KVM presents it.
///
/// # Errors
/// A named CPU model or feature flags.
pub fn parse_cpu(value: &str) -> OptResult<()> {
    match value {
        "host" | "max" => Ok(()),
        _ => Err(unsupported(format!(
            "CPU model '{value}' is not supported: the vCPUs are the host's CPU as KVM \
             supports it (-cpu host)"
        ))),
    }
}

/// `-m [size=]SIZE`: a number of MiB, or a size with a suffix (`512M`, `1G`).
///
/// # Errors
/// A malformed size, or one that is not whole MiB; `slots` and `maxmem` (no memory hotplug).
pub fn parse_memory(value: &str) -> OptResult<u64> {
    let mut l = keyval(value, Some("size"))?;
    let size = l.take_str("size")?.ok_or(Problem::Missing("size"))?;
    l.finish()?;
    let bytes = if !size.is_empty() && size.bytes().all(|b| b.is_ascii_digit()) {
        parse_u64("size", &size)?
            .checked_mul(1 << 20)
            .ok_or_else(|| Problem::Invalid(format!("ram size {size} is too large")))?
    } else {
        parse_size("size", &size)?
    };
    if bytes % (1 << 20) != 0 {
        return Err(Problem::Invalid(format!(
            "ram size {size} is not a whole number of MiB"
        )));
    }
    Ok(bytes >> 20)
}

/// Checks guest RAM against vmm's bounds (the same as `--memory`).
///
/// # Errors
/// Too little, or more than the host has.
pub fn check_memory(mib: u64) -> OptResult<()> {
    if mib < MIN_MEMORY_MIB {
        return Err(Problem::Invalid(format!(
            "{mib} MiB of RAM is too little: vmm needs at least {MIN_MEMORY_MIB}"
        )));
    }
    let host = host_memory_mib();
    if mib > host {
        return Err(Problem::Invalid(format!(
            "{mib} MiB is more than this host's {host} MiB of RAM"
        )));
    }
    Ok(())
}

/// `-overcommit mem-lock=off,cpu-pm=off`: vmm neither locks guest RAM nor passes CPU power
/// management through, which is what `off` asks for.
///
/// # Errors
/// `on` for either.
pub fn parse_overcommit(value: &str) -> OptResult<()> {
    let mut l = keyval(value, None)?;
    for key in ["mem-lock", "cpu-pm"] {
        if l.take_bool(key)? == Some(true) {
            return Err(unsupported(format!("{key}=on is not supported")));
        }
    }
    l.finish()?;
    Ok(())
}

/// `-smp [cpus=]N[,sockets=S][,dies=D][,clusters=C][,cores=K][,threads=T][,maxcpus=M]`.
/// vmm gives the guest one socket of single-threaded cores and no CPU hotplug, so the
/// topology must be that one.
///
/// # Errors
/// A topology other than one socket of N single-threaded cores, more CPUs than possible.
pub fn parse_smp(value: &str) -> OptResult<u8> {
    let mut l = keyval(value, Some("cpus"))?;
    let mut take = |k: &str| l.take_u64(k);
    let cpus = take("cpus")?;
    let sockets = take("sockets")?.unwrap_or(1);
    let dies = take("dies")?.unwrap_or(1);
    let clusters = take("clusters")?.unwrap_or(1);
    let threads = take("threads")?.unwrap_or(1);
    let cores = take("cores")?;
    let maxcpus = take("maxcpus")?;
    l.finish()?;
    let cpus = cpus
        .or(cores.map(|c| c * sockets * dies * clusters * threads))
        .or(maxcpus)
        .unwrap_or(1);
    if !(1..=u64::from(MAX_CPUS)).contains(&cpus) {
        return Err(Problem::Invalid(format!(
            "{cpus} CPUs: vmm runs 1 to {MAX_CPUS}"
        )));
    }
    let cores = cores.unwrap_or(cpus / (sockets * dies * clusters * threads).max(1));
    if maxcpus.is_some_and(|m| m != cpus) {
        return Err(unsupported(
            "maxcpus above cpus is not supported: vmm has no CPU hotplug",
        ));
    }
    if sockets != 1 || dies != 1 || clusters != 1 || threads != 1 || cores != cpus {
        return Err(unsupported(format!(
            "vmm gives the guest one socket of {cpus} single-threaded cores: use \
             -smp {cpus},sockets=1,cores={cpus},threads=1 (a libvirt domain needs \
             <cpu><topology sockets='1' dies='1' cores='{cpus}' threads='1'/></cpu>)"
        )));
    }
    u8::try_from(cpus).map_err(|_| Problem::Invalid(format!("{cpus} CPUs")))
}

/// `-uuid UUID`: checked (QEMU's format); the machine has no firmware table to carry it.
///
/// # Errors
/// Not a UUID.
pub fn check_uuid(value: &str) -> OptResult<()> {
    let groups: Vec<&str> = value.split('-').collect();
    let lengths = [8, 4, 4, 4, 12];
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip(lengths)
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(Problem::Invalid("Fail to parse UUID string.".into()))
    }
}

/// `-display none`: vmm has no display.
///
/// # Errors
/// Any display.
pub fn parse_display(value: &str) -> OptResult<()> {
    let mut l = keyval(value, Some("type"))?;
    let kind = l.take_str("type")?;
    l.finish()?;
    match kind.as_deref() {
        Some("none") => Ok(()),
        _ => Err(unsupported(
            "vmm has no display: only -display none (a libvirt domain has no <graphics>)",
        )),
    }
}

/// `-rtc base=utc`: the machine has no RTC; the guest's clock (kvmclock) is the host's UTC,
/// which is what `base=utc` asks for.
///
/// # Errors
/// Another base, a drift fix, another clock.
pub fn parse_rtc(value: &str) -> OptResult<()> {
    let mut l = keyval(value, None)?;
    let base = l.take_str("base")?;
    let clock = l.take_str("clock")?;
    let driftfix = l.take_str("driftfix")?;
    l.finish()?;
    if base.as_deref().is_some_and(|b| b != "utc")
        || clock.as_deref().is_some_and(|c| c != "host")
        || driftfix.as_deref().is_some_and(|d| d != "none")
    {
        return Err(unsupported(
            "the machine has no RTC: only base=utc (a libvirt domain's <clock offset='utc'/>, \
             without RTC timers)",
        ));
    }
    Ok(())
}

/// `-boot [order=..][,once=..][,strict=on|off][,menu=off]`: vmm boots `-kernel` directly,
/// without firmware, so there is no device order to follow nor a menu.
///
/// # Errors
/// `menu=on`, unknown keys.
pub fn parse_boot(value: &str) -> OptResult<()> {
    let mut l = keyval(value, Some("order"))?;
    let _ = l.take_str("order")?;
    let _ = l.take_str("once")?;
    let _ = l.take_bool("strict")?;
    if l.take_bool("menu")? == Some(true) {
        return Err(unsupported(
            "menu=on: vmm boots the kernel directly; there is no firmware boot menu",
        ));
    }
    l.finish()?;
    Ok(())
}

/// `-msg timestamp=on|off[,guest-name=on|off]`.
///
/// # Errors
/// Unknown keys, bad toggles.
pub fn parse_msg(m: &mut MessageFormat, value: &str) -> OptResult<()> {
    let mut l = keyval(value, None)?;
    if let Some(t) = l.take_bool("timestamp")? {
        m.timestamp = t;
    }
    if let Some(g) = l.take_bool("guest-name")? {
        m.guest_name = g;
    }
    l.finish()?;
    Ok(())
}

/// `-sandbox on|off[,obsolete=deny][,elevateprivileges=deny|children][,spawn=deny]
/// [,resourcecontrol=deny]`: vmm's seccomp filters (`--seccomp`). They always deny what
/// QEMU's sub-options can deny (obsolete calls, privilege changes, new programs, scheduler and
/// CPU-affinity changes), so only `deny` is accepted for them; `off` runs without filters.
///
/// # Errors
/// A value other than on/off, or a sub-option asking to allow what vmm's filters deny.
pub fn parse_sandbox(value: &str) -> OptResult<crate::seccomp::SeccompMode> {
    let mut l = keyval(value, Some("enable"))?;
    let on = l.take_bool("enable")?.unwrap_or(false);
    for key in ["obsolete", "elevateprivileges", "spawn", "resourcecontrol"] {
        match l.take_str(key)?.as_deref() {
            None | Some("deny") => {}
            Some("children") if key == "elevateprivileges" => {}
            Some(other) => {
                return Err(unsupported(format!(
                    "{key}={other}: vmm's seccomp filters always deny this"
                )))
            }
        }
    }
    l.finish()?;
    Ok(if on {
        crate::seccomp::SeccompMode::On
    } else {
        crate::seccomp::SeccompMode::Off
    })
}
