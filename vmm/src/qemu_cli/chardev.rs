// SPDX-License-Identifier: Apache-2.0
//! Character devices of QEMU's command line and their frontends: `-chardev`, `-mon`, `-qmp`,
//! `-serial` and `-device isa-serial`. vmm has one serial port (COM1) and any number of QMP
//! monitors; a monitor needs a socket chardev (a path, an inherited listening descriptor
//! `fd=N`, or a TCP address), the serial port takes a `pty`, `file`, `null`, `stdio` or
//! listening `socket` one (`wait=off`: the guest does not wait for a console client).

use std::path::PathBuf;

use monitor::{Endpoint, SocketSpec};
use qapi::types::ChardevInfo;

use super::{keyval, OptResult, Problem};
use crate::device_manager::{SerialConfig, SerialLog, SerialMode};

/// A chardev backend vmm implements.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Backend {
    Pty,
    File { path: PathBuf, append: bool },
    Null,
    Stdio,
    Socket(SocketSpec),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Def {
    id: String,
    backend: Backend,
    log: Option<SerialLog>,
}

/// A QMP monitor: its socket and the label `query-chardev` shows (the chardev's id for
/// `-mon`, QEMU's `compat_monitorN` for `-qmp`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Monitor {
    label: String,
    spec: SocketSpec,
    /// The `-chardev` it uses, for `-mon`.
    chardev: Option<String>,
}

/// The serial port's backend.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Serial {
    /// `-device isa-serial,chardev=ID` or `-serial chardev:ID`.
    Chardev {
        id: String,
        device_id: Option<String>,
    },
    /// `-serial pty|null|stdio|file:PATH|none`: QEMU's chardev `serial0`.
    Own(SerialMode),
}

/// The character devices and their users.
#[derive(Debug, Default)]
pub struct Chardevs {
    defs: Vec<Def>,
    monitors: Vec<Monitor>,
    serial: Option<Serial>,
    qmp_count: usize,
}

fn unsupported(s: impl Into<String>) -> Problem {
    Problem::Unsupported(s.into())
}

impl Chardevs {
    /// `-chardev BACKEND,id=ID[,...]`.
    ///
    /// # Errors
    /// A backend vmm does not implement, missing or unknown keys, a repeated id.
    pub fn define(&mut self, value: &str) -> OptResult<()> {
        let mut l = keyval(value, Some("backend"))?;
        let kind = l.take_str("backend")?.ok_or(Problem::Missing("backend"))?;
        let id = l.take_str("id")?.ok_or(Problem::Missing("id"))?;
        if self.defs.iter().any(|d| d.id == id) {
            return Err(Problem::Invalid(format!("Duplicate ID '{id}' for chardev")));
        }
        let logfile = l.take_str("logfile")?;
        let logappend = l.take_bool("logappend")?.unwrap_or(false);
        if l.take_bool("mux")? == Some(true) {
            return Err(unsupported(
                "mux=on is not supported: a chardev serves one frontend",
            ));
        }
        let backend = match kind.as_str() {
            "pty" => Backend::Pty,
            "null" => Backend::Null,
            "stdio" => {
                let _ = l.take_bool("signal")?;
                Backend::Stdio
            }
            "file" => {
                let path = l.take_str("path")?.ok_or(Problem::Missing("path"))?;
                let append = l.take_bool("append")?.unwrap_or(false);
                Backend::File {
                    path: PathBuf::from(path),
                    append,
                }
            }
            "socket" => Backend::Socket(socket(&mut l)?),
            other => {
                return Err(Problem::Invalid(format!(
                    "'{other}' is not a valid char driver name"
                )))
            }
        };
        l.finish()?;
        let log = logfile.map(|p| SerialLog {
            path: PathBuf::from(p),
            append: logappend,
        });
        self.defs.push(Def { id, backend, log });
        Ok(())
    }

    fn def(&self, id: &str) -> OptResult<&Def> {
        self.defs
            .iter()
            .find(|d| d.id == id)
            .ok_or_else(|| Problem::Invalid(format!("chardev \"{id}\" not found")))
    }

    /// Whether a frontend already uses chardev `id`.
    fn in_use(&self, id: &str) -> bool {
        let by_monitor = self
            .monitors
            .iter()
            .any(|m| m.chardev.as_deref() == Some(id));
        let by_serial = matches!(&self.serial, Some(Serial::Chardev { id: c, .. }) if c == id);
        by_monitor || by_serial
    }

    fn claim(&self, id: &str) -> OptResult<&Def> {
        let def = self.def(id)?;
        if self.in_use(id) {
            return Err(Problem::Invalid(format!(
                "chardev '{id}' is already in use by another frontend"
            )));
        }
        Ok(def)
    }

    /// `-mon chardev=ID,mode=control[,id=..][,pretty=off]`: a QMP monitor on a socket
    /// chardev.
    ///
    /// # Errors
    /// The human monitor (`mode=readline`, QEMU's default), a chardev that is not a socket,
    /// an unknown or used chardev.
    pub fn monitor(&mut self, value: &str) -> OptResult<()> {
        let mut l = keyval(value, Some("chardev"))?;
        let chardev = l.take_str("chardev")?.ok_or(Problem::Missing("chardev"))?;
        let mode = l.take_str("mode")?;
        let _ = l.take_str("id")?;
        if l.take_bool("pretty")? == Some(true) {
            return Err(unsupported(
                "pretty=on is not supported: QMP replies are one line each",
            ));
        }
        l.finish()?;
        if mode.as_deref() != Some("control") {
            return Err(unsupported(
                "only mode=control (QMP) is supported; the human monitor is reached through \
                 QMP's human-monitor-command",
            ));
        }
        let def = self.claim(&chardev)?;
        let Backend::Socket(spec) = &def.backend else {
            return Err(unsupported(format!(
                "the monitor's chardev '{chardev}' must be a socket"
            )));
        };
        if def.log.is_some() {
            return Err(unsupported(
                "logfile is not supported for a monitor's chardev",
            ));
        }
        let spec = spec.clone();
        self.monitors.push(Monitor {
            label: chardev.clone(),
            spec,
            chardev: Some(chardev),
        });
        Ok(())
    }

    /// `-qmp unix:PATH,server=on,wait=off` (or `tcp:HOST:PORT,...`): `--qmp`'s syntax, with
    /// QEMU's label `compat_monitorN`.
    ///
    /// # Errors
    /// Those of `--qmp`.
    pub fn qmp(&mut self, value: &str) -> OptResult<()> {
        let spec =
            crate::qmp_socket::parse_qmp(value).map_err(|e| Problem::Invalid(e.to_string()))?;
        let label = format!("compat_monitor{}", self.qmp_count);
        self.qmp_count += 1;
        self.monitors.push(Monitor {
            label,
            spec,
            chardev: None,
        });
        Ok(())
    }

    fn set_serial(&mut self, serial: Serial) -> OptResult<()> {
        if self.serial.is_some() {
            return Err(unsupported(
                "vmm's machine has one serial port (COM1), and it is taken",
            ));
        }
        self.serial = Some(serial);
        Ok(())
    }

    /// `-serial pty|null|none|stdio|file:PATH|chardev:ID`.
    ///
    /// # Errors
    /// Another backend, or a second serial port.
    pub fn serial_option(&mut self, value: &str) -> OptResult<()> {
        let serial = match value {
            "pty" => Serial::Own(SerialMode::Pty),
            "null" | "none" => Serial::Own(SerialMode::None),
            "stdio" => Serial::Own(SerialMode::Stdio),
            _ => {
                if let Some(path) = value.strip_prefix("file:") {
                    Serial::Own(SerialMode::File(PathBuf::from(path)))
                } else if let Some(id) = value.strip_prefix("chardev:") {
                    self.serial_chardev(id)?;
                    Serial::Chardev {
                        id: id.to_owned(),
                        device_id: None,
                    }
                } else {
                    return Err(unsupported(format!(
                        "serial backend '{value}' is not supported: use pty, file:PATH, null, \
                         stdio or chardev:ID"
                    )));
                }
            }
        };
        self.set_serial(serial)
    }

    fn serial_chardev(&self, id: &str) -> OptResult<()> {
        if matches!(&self.claim(id)?.backend, Backend::Socket(spec) if spec.wait) {
            return Err(unsupported(format!(
                "chardev '{id}': a serial console socket needs wait=off (the guest does not \
                 wait for a console client)"
            )));
        }
        Ok(())
    }

    /// `-device isa-serial,chardev=ID[,id=..][,index=0]`.
    ///
    /// # Errors
    /// An unknown, used or socket chardev, or a second serial port.
    pub fn isa_serial(&mut self, chardev: &str, device_id: Option<String>) -> OptResult<()> {
        self.serial_chardev(chardev)?;
        self.set_serial(Serial::Chardev {
            id: chardev.to_owned(),
            device_id,
        })
    }

    /// Whether the serial port was given a backend.
    pub fn has_serial(&self) -> bool {
        self.serial.is_some()
    }

    fn serial_mode(&self, nodefaults: bool, nographic: bool) -> SerialMode {
        self.serial_config(nodefaults, nographic).mode
    }

    /// Whether `-daemonize` can go with the serial port (not on stdio, as QEMU).
    pub fn serial_allows_daemon(&self, nodefaults: bool, nographic: bool) -> bool {
        self.serial_mode(nodefaults, nographic) != SerialMode::Stdio
    }

    /// The serial port's configuration: its chardev, else QEMU's default (stdio with
    /// `-nographic` unless `-nodefaults`), else none.
    pub fn serial_config(&self, nodefaults: bool, nographic: bool) -> SerialConfig {
        match &self.serial {
            Some(Serial::Own(mode)) => SerialConfig::new(mode.clone()),
            Some(Serial::Chardev { id, device_id }) => {
                let Some(def) = self.defs.iter().find(|d| &d.id == id) else {
                    return SerialConfig::new(SerialMode::None);
                };
                let mode = match &def.backend {
                    Backend::Pty => SerialMode::Pty,
                    Backend::File {
                        path,
                        append: false,
                    } => SerialMode::File(path.clone()),
                    Backend::File { path, append: true } => SerialMode::Append(path.clone()),
                    Backend::Stdio => SerialMode::Stdio,
                    Backend::Socket(spec) => SerialMode::Socket(spec.clone()),
                    Backend::Null => SerialMode::None,
                };
                SerialConfig {
                    mode,
                    log: def.log.clone(),
                    label: def.id.clone(),
                    device_id: device_id.clone(),
                }
            }
            None if nographic && !nodefaults => SerialConfig::new(SerialMode::Stdio),
            None => SerialConfig::new(SerialMode::None),
        }
    }

    /// The monitors' sockets, in order, and what `query-chardev` shows of them.
    pub fn monitors(&self) -> (Vec<SocketSpec>, Vec<ChardevInfo>) {
        let infos = self
            .monitors
            .iter()
            .map(|m| ChardevInfo {
                label: m.label.clone(),
                filename: crate::qmp_socket::describe(&m.spec.endpoint),
                frontend_open: true,
            })
            .collect();
        (
            self.monitors.iter().map(|m| m.spec.clone()).collect(),
            infos,
        )
    }
}

/// The keys of a `socket` chardev: `path=P`, `fd=N` (an inherited listening socket) or
/// `host=H,port=P`, with `server=on` and `wait=on|off`.
fn socket(l: &mut crate::options::OptionList) -> OptResult<SocketSpec> {
    let path = l.take_str("path")?;
    let fd = l.take_u64("fd")?;
    let host = l.take_str("host")?;
    let port = l.take_str("port")?;
    let server = l.take_flag("server")?;
    let wait = l.take_flag("wait")?;
    let _ = l.take_bool("nodelay")?;
    for key in ["telnet", "websocket", "reconnect", "tls-creds", "abstract"] {
        if l.take_str(key)?.is_some() {
            return Err(unsupported(format!(
                "socket option '{key}' is not supported"
            )));
        }
    }
    if server != Some(true) {
        return Err(unsupported(
            "a socket chardev must listen (server=on): vmm does not connect out",
        ));
    }
    let endpoint = match (path, fd, host, port) {
        (Some(p), None, None, None) if !p.is_empty() => Endpoint::Unix(PathBuf::from(p)),
        (None, Some(fd), None, None) => Endpoint::UnixFd(
            i32::try_from(fd)
                .map_err(|_| Problem::Invalid(format!("fd={fd} is not a descriptor")))?,
        ),
        (None, None, host, Some(port)) => {
            let port = port
                .parse::<u16>()
                .map_err(|_| Problem::Invalid(format!("port '{port}' is not a number")))?;
            Endpoint::Tcp(host.unwrap_or_default(), port)
        }
        _ => {
            return Err(Problem::Invalid(
                "a socket chardev takes one of path=, fd= or host=/port=".into(),
            ))
        }
    };
    Ok(SocketSpec {
        endpoint,
        // As QEMU: a server waits for its first client unless told not to.
        wait: wait.unwrap_or(true),
        // QEMU has no per-socket limit: the monitor's total applies.
        max_clients: None,
    })
}
