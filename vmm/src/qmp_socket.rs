// SPDX-License-Identifier: Apache-2.0
//! The `--qmp` option, QEMU's chardev syntax for the cases a monitor needs:
//! `unix:PATH[,server=on|off][,wait=on|off]` and `tcp:HOST:PORT[,server=on|off][,wait=on|off]`,
//! plus our `max-clients=N` (the socket's own client limit), parsed by [`OptionList`] (so a
//! comma in the path is written `,,`, and the toggles are QEMU's on/off, yes/no, true/false)
//! into the monitor's [`SocketSpec`].

use std::path::PathBuf;

use monitor::{Endpoint, SocketSpec};

use crate::options::{OptionError, OptionList};

/// Errors in a `--qmp` value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QmpSpecError {
    /// Not unix: or tcp:.
    #[error("'{0}' is not a QMP socket: use unix:PATH or tcp:HOST:PORT")]
    Kind(String),
    /// unix: without a path.
    #[error("unix: needs a socket path, as in unix:/tmp/qmp.sock")]
    NoPath,
    /// tcp: without a usable port.
    #[error("'{0}' is not HOST:PORT with a port number")]
    BadAddress(String),
    /// An option we do not know.
    #[error("Unknown option '{0}' (known: server, wait, max-clients)")]
    UnknownOption(String),
    /// An option value other than a toggle.
    #[error("Option '{0}' takes on or off, not '{1}'")]
    BadValue(String, String),
    /// A client limit out of range.
    #[error("Option 'max-clients' takes 1 to {MAX_SOCKET_CLIENTS} clients, not {0}")]
    MaxClients(u64),
    /// Client mode.
    #[error("server=off (connecting out to a client) is not supported; the monitor listens")]
    ClientMode,
    /// A malformed option list (an empty item, a repeated option).
    #[error("--qmp {0}")]
    Syntax(OptionError),
}

impl From<OptionError> for QmpSpecError {
    fn from(e: OptionError) -> Self {
        match e {
            OptionError::Unknown(key) => Self::UnknownOption(key),
            OptionError::BadBool { key, value } => Self::BadValue(key, value),
            e => Self::Syntax(e),
        }
    }
}

/// How `query-chardev` and error messages show a monitor socket: `unix:PATH,server=on`,
/// `tcp:HOST:PORT,server=on`; an inherited descriptor shows the path it is bound to, as QEMU.
pub fn describe(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Unix(p) => format!("unix:{},server=on", p.display()),
        Endpoint::Tcp(h, p) => format!("tcp:{h}:{p},server=on"),
        Endpoint::UnixFd(fd) => match monitor::listener::unix_socket_path(*fd) {
            Some(p) => format!("unix:{},server=on", p.display()),
            None => format!("fd:{fd},server=on"),
        },
    }
}

/// Checks that no socket is given twice (port 0, any free port, is a new socket each time).
///
/// # Errors
/// The second of two equal sockets, as [`describe`] shows it.
pub fn check_distinct(specs: &[SocketSpec]) -> Result<(), String> {
    for (i, spec) in specs.iter().enumerate() {
        let again = specs[..i]
            .iter()
            .any(|earlier| match (&earlier.endpoint, &spec.endpoint) {
                (Endpoint::Unix(a), Endpoint::Unix(b)) => a == b,
                (Endpoint::UnixFd(a), Endpoint::UnixFd(b)) => a == b,
                (Endpoint::Tcp(h1, p1), Endpoint::Tcp(h2, p2)) => *p1 != 0 && h1 == h2 && p1 == p2,
                _ => false,
            });
        if again {
            return Err(match &spec.endpoint {
                Endpoint::Unix(p) => format!("unix:{}", p.display()),
                Endpoint::Tcp(h, p) => format!("tcp:{h}:{p}"),
                Endpoint::UnixFd(fd) => format!("fd={fd}"),
            });
        }
    }
    Ok(())
}

/// The largest `max-clients` (the same bound as `--qmp-max-clients`).
pub const MAX_SOCKET_CLIENTS: u64 = u16::MAX as u64;

/// Parses one `--qmp` value.
///
/// # Errors
/// A target other than `unix:PATH` or `tcp:HOST:PORT`, unknown or repeated options, values that
/// are not toggles or (`max-clients`) numbers from 1, and `server=off`.
pub fn parse_qmp(s: &str) -> Result<SocketSpec, QmpSpecError> {
    let (target, mut opts) = OptionList::parse_with_head(s)?;
    let endpoint = if let Some(path) = target.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(QmpSpecError::NoPath);
        }
        Endpoint::Unix(PathBuf::from(path))
    } else if let Some(addr) = target.strip_prefix("tcp:") {
        let bad = || QmpSpecError::BadAddress(addr.into());
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        let port = port.parse::<u16>().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Endpoint::Tcp(host.into(), port)
    } else {
        return Err(QmpSpecError::Kind(s.into()));
    };
    // A bare `server` is server=on; QEMU's deprecated `noserver`/`nowait` are not taken.
    let server = opts.take_flag("server")?;
    let wait = opts.take_flag("wait")?;
    let max_clients = match opts.take_u64("max-clients")? {
        Some(n) if (1..=MAX_SOCKET_CLIENTS).contains(&n) => Some(n as usize),
        Some(n) => return Err(QmpSpecError::MaxClients(n)),
        None => None,
    };
    opts.finish()?;
    if server == Some(false) {
        return Err(QmpSpecError::ClientMode);
    }
    // As in QEMU, an explicit server waits for its first client unless told not to; with
    // no server option (our default is to listen) it does not wait.
    let wait = wait.unwrap_or(server == Some(true));
    Ok(SocketSpec {
        endpoint,
        wait,
        max_clients,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<SocketSpec, QmpSpecError> {
        parse_qmp(s)
    }

    #[test]
    fn unix_forms() {
        assert_eq!(
            p("unix:/tmp/q").unwrap(),
            SocketSpec {
                endpoint: Endpoint::Unix("/tmp/q".into()),
                wait: false,
                max_clients: None,
            }
        );
        assert!(p("unix:/tmp/q,server=on").unwrap().wait);
        assert!(p("unix:/tmp/q,server").unwrap().wait);
        assert!(!p("unix:/tmp/q,server=on,wait=off").unwrap().wait);
        assert!(p("unix:/tmp/q,wait=on").unwrap().wait);
        // A path may hold '=' as it is, and a comma written ',,'.
        assert_eq!(
            p("unix:/tmp/a=b,,c.sock,server=on,wait=off").unwrap(),
            SocketSpec {
                endpoint: Endpoint::Unix("/tmp/a=b,c.sock".into()),
                wait: false,
                max_clients: None,
            }
        );
    }

    #[test]
    fn qemu_toggles() {
        for (v, wait) in [
            ("on", true),
            ("yes", true),
            ("true", true),
            ("off", false),
            ("no", false),
            ("false", false),
        ] {
            assert_eq!(p(&format!("unix:/q,wait={v}")).unwrap().wait, wait, "{v}");
        }
        assert!(p("unix:/q,server=yes").unwrap().wait);
        assert!(!p("unix:/q,server=true,wait=no").unwrap().wait);
        assert!(p("unix:/q,wait").unwrap().wait);
        assert_eq!(p("unix:/q,server=no"), Err(QmpSpecError::ClientMode));
    }

    #[test]
    fn max_clients() {
        assert_eq!(p("unix:/q").unwrap().max_clients, None);
        assert_eq!(p("unix:/q,max-clients=3").unwrap().max_clients, Some(3));
        assert_eq!(
            p("tcp::4444,server=on,wait=off,max-clients=0x10")
                .unwrap()
                .max_clients,
            Some(16)
        );
        assert_eq!(p("unix:/q,max-clients=0"), Err(QmpSpecError::MaxClients(0)));
        assert_eq!(
            p("unix:/q,max-clients=65536"),
            Err(QmpSpecError::MaxClients(65536))
        );
        assert_eq!(
            p("unix:/q,max-clients=two"),
            Err(QmpSpecError::Syntax(OptionError::BadNumber {
                key: "max-clients".into(),
                value: "two".into()
            }))
        );
    }

    #[test]
    fn tcp_forms() {
        assert_eq!(
            p("tcp:127.0.0.1:4444").unwrap().endpoint,
            Endpoint::Tcp("127.0.0.1".into(), 4444)
        );
        assert_eq!(
            p("tcp::4444,server=on,wait=off").unwrap().endpoint,
            Endpoint::Tcp("".into(), 4444)
        );
        assert_eq!(
            p("tcp:[::1]:4444").unwrap().endpoint,
            Endpoint::Tcp("::1".into(), 4444)
        );
    }

    #[test]
    fn errors() {
        assert_eq!(p("stdio"), Err(QmpSpecError::Kind("stdio".into())));
        assert_eq!(p(""), Err(QmpSpecError::Kind("".into())));
        assert_eq!(p("unix:"), Err(QmpSpecError::NoPath));
        assert_eq!(
            p("tcp:localhost"),
            Err(QmpSpecError::BadAddress("localhost".into()))
        );
        assert_eq!(
            p("tcp:localhost:99999"),
            Err(QmpSpecError::BadAddress("localhost:99999".into()))
        );
        assert_eq!(
            p("unix:/q,nowait"),
            Err(QmpSpecError::UnknownOption("nowait".into()))
        );
        assert_eq!(
            p("unix:/q,wait=maybe"),
            Err(QmpSpecError::BadValue("wait".into(), "maybe".into()))
        );
        assert_eq!(p("unix:/q,server=off"), Err(QmpSpecError::ClientMode));
        assert_eq!(
            p("unix:/q,wait=on,wait=off"),
            Err(QmpSpecError::Syntax(OptionError::Repeated("wait".into())))
        );
        assert_eq!(
            p("unix:/q,"),
            Err(QmpSpecError::Syntax(OptionError::EmptyItem))
        );
    }

    #[test]
    fn messages() {
        let m = |s: &str| p(s).unwrap_err().to_string();
        assert_eq!(
            m("stdio"),
            "'stdio' is not a QMP socket: use unix:PATH or tcp:HOST:PORT"
        );
        assert_eq!(
            m("unix:/q,nowait"),
            "Unknown option 'nowait' (known: server, wait, max-clients)"
        );
        assert_eq!(
            m("unix:/q,max-clients=0"),
            "Option 'max-clients' takes 1 to 65535 clients, not 0"
        );
        assert_eq!(
            m("unix:/q,max-clients=x"),
            "--qmp option 'max-clients' takes a number, not 'x'"
        );
        assert_eq!(
            m("unix:/q,wait=maybe"),
            "Option 'wait' takes on or off, not 'maybe'"
        );
        assert_eq!(
            m("unix:/q,server,server"),
            "--qmp option 'server' is given twice"
        );
    }
}
