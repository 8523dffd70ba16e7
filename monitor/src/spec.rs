// SPDX-License-Identifier: Apache-2.0
//! The `--qmp` socket specification, QEMU's chardev syntax for the cases a monitor needs:
//! `unix:PATH[,server=on|off][,wait=on|off]` and `tcp:HOST:PORT[,server=on|off][,wait=on|off]`.

use std::path::PathBuf;

/// Errors in a `--qmp` value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
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
    #[error("Unknown option '{0}' (known: server, wait)")]
    UnknownOption(String),
    /// An option value other than on/off.
    #[error("Option '{0}' takes on or off, not '{1}'")]
    BadValue(String, String),
    /// Client mode.
    #[error("server=off (connecting out to a client) is not supported; the monitor listens")]
    ClientMode,
}

/// Where the monitor listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix domain socket path.
    Unix(PathBuf),
    /// A TCP host and port (host may be empty for all addresses).
    Tcp(String, u16),
}

/// A parsed `--qmp` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSpec {
    /// Where to listen.
    pub endpoint: Endpoint,
    /// Hold the guest until the first client connects.
    pub wait: bool,
}

fn on_off(key: &str, value: &str) -> Result<bool, SpecError> {
    match value {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(SpecError::BadValue(key.into(), value.into())),
    }
}

impl std::str::FromStr for SocketSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut parts = s.split(',');
        let target = parts.next().unwrap_or_default();
        let endpoint = if let Some(path) = target.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(SpecError::NoPath);
            }
            Endpoint::Unix(PathBuf::from(path))
        } else if let Some(addr) = target.strip_prefix("tcp:") {
            let (host, port) = addr
                .rsplit_once(':')
                .ok_or_else(|| SpecError::BadAddress(addr.into()))?;
            let port = port
                .parse::<u16>()
                .map_err(|_| SpecError::BadAddress(addr.into()))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Endpoint::Tcp(host.into(), port)
        } else {
            return Err(SpecError::Kind(s.into()));
        };
        let (mut server, mut wait) = (None, None);
        for opt in parts {
            let (key, value) = opt.split_once('=').unwrap_or((opt, "on"));
            match key {
                "server" => server = Some(on_off(key, value)?),
                "wait" => wait = Some(on_off(key, value)?),
                _ => return Err(SpecError::UnknownOption(key.into())),
            }
        }
        if server == Some(false) {
            return Err(SpecError::ClientMode);
        }
        // As in QEMU, an explicit server waits for its first client unless told not to; with
        // no server option (our default is to listen) it does not wait.
        let wait = wait.unwrap_or(server == Some(true));
        Ok(Self { endpoint, wait })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<SocketSpec, SpecError> {
        s.parse()
    }

    #[test]
    fn unix_forms() {
        assert_eq!(
            p("unix:/tmp/q").unwrap(),
            SocketSpec {
                endpoint: Endpoint::Unix("/tmp/q".into()),
                wait: false
            }
        );
        assert!(p("unix:/tmp/q,server=on").unwrap().wait);
        assert!(p("unix:/tmp/q,server").unwrap().wait);
        assert!(!p("unix:/tmp/q,server=on,wait=off").unwrap().wait);
        assert!(p("unix:/tmp/q,wait=on").unwrap().wait);
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
        assert_eq!(p("stdio"), Err(SpecError::Kind("stdio".into())));
        assert_eq!(p("unix:"), Err(SpecError::NoPath));
        assert_eq!(
            p("tcp:localhost"),
            Err(SpecError::BadAddress("localhost".into()))
        );
        assert_eq!(
            p("tcp:localhost:99999"),
            Err(SpecError::BadAddress("localhost:99999".into()))
        );
        assert_eq!(
            p("unix:/q,nowait"),
            Err(SpecError::UnknownOption("nowait".into()))
        );
        assert_eq!(
            p("unix:/q,wait=maybe"),
            Err(SpecError::BadValue("wait".into(), "maybe".into()))
        );
        assert_eq!(p("unix:/q,server=off"), Err(SpecError::ClientMode));
    }
}
