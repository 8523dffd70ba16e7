// SPDX-License-Identifier: Apache-2.0
//! The error policy seam (`rerror`/`werror`) and the I/O status of a backend.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::node::IoKind;

/// What to do with a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// Fail the request to the guest (`report`).
    Report,
    /// Complete the request as if it had succeeded (`ignore`).
    Ignore,
    /// Keep the request for a retry and stop the VM (`stop`, `enospc` on ENOSPC). The backend's
    /// I/O status becomes `failed` or `nospace`; [`crate::Backend::resume`] asks the device to
    /// retry.
    Stop,
}

impl ErrorAction {
    /// The `action` of QMP's `BLOCK_IO_ERROR`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorAction::Report => "report",
            ErrorAction::Ignore => "ignore",
            ErrorAction::Stop => "stop",
        }
    }
}

/// One side of a device's error policy: QEMU's `BlockdevOnError` without `auto` (the value of
/// `rerror=` or `werror=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Fail the request to the guest.
    Report,
    /// Complete the request as if it had succeeded.
    Ignore,
    /// Stop the VM on ENOSPC; report any other error.
    Enospc,
    /// Stop the VM on any error.
    Stop,
}

impl OnError {
    /// The QEMU spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Report => "report",
            OnError::Ignore => "ignore",
            OnError::Enospc => "enospc",
            OnError::Stop => "stop",
        }
    }

    /// The action for an error (`nospace`: the error is ENOSPC), as QEMU's
    /// `blk_get_error_action`.
    pub fn action(self, nospace: bool) -> ErrorAction {
        match self {
            OnError::Report => ErrorAction::Report,
            OnError::Ignore => ErrorAction::Ignore,
            OnError::Enospc if nospace => ErrorAction::Stop,
            OnError::Enospc => ErrorAction::Report,
            OnError::Stop => ErrorAction::Stop,
        }
    }

    /// Whether this side can stop the VM.
    pub fn can_stop(self) -> bool {
        matches!(self, OnError::Enospc | OnError::Stop)
    }

    /// Parses the value of `rerror=` as QEMU's `-drive` does: `enospc` is refused for reads.
    ///
    /// # Errors
    /// Anything but `report`, `ignore` and `stop`.
    pub fn parse_read(s: &str) -> Result<Self, ParseOnErrorError> {
        match s.parse() {
            Ok(OnError::Enospc) | Err(_) => Err(ParseOnErrorError {
                value: s.to_string(),
                read: true,
            }),
            Ok(v) => Ok(v),
        }
    }

    /// Parses the value of `werror=` (the same as [`FromStr`]).
    ///
    /// # Errors
    /// Anything but `report`, `ignore`, `enospc` and `stop`.
    pub fn parse_write(s: &str) -> Result<Self, ParseOnErrorError> {
        s.parse()
    }
}

impl fmt::Display for OnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown error action, in the words of QEMU's `parse_block_error_action`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' invalid {} error action", if *.read { "read" } else { "write" })]
pub struct ParseOnErrorError {
    /// The rejected value.
    pub value: String,
    /// It was given for reads (`rerror`).
    pub read: bool,
}

impl FromStr for OnError {
    type Err = ParseOnErrorError;

    /// Accepts the four values of QEMU's `BlockdevOnError` but `auto` (what the device
    /// properties accept); the error reads as one for `werror`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "report" => Ok(OnError::Report),
            "ignore" => Ok(OnError::Ignore),
            "enospc" => Ok(OnError::Enospc),
            "stop" => Ok(OnError::Stop),
            other => Err(ParseOnErrorError {
                value: other.to_string(),
                read: false,
            }),
        }
    }
}

/// A device's error policy: QEMU's `rerror`/`werror` pair. Reads use `read`; writes, flushes,
/// discards and write-zeroes use `write` (QEMU's virtio-blk passes `is_read = false` for all
/// of them to `blk_get_error_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevicePolicy {
    /// `rerror`: failed reads.
    pub read: OnError,
    /// `werror`: failed writes, flushes, discards and write-zeroes.
    pub write: OnError,
}

impl Default for DevicePolicy {
    /// QEMU's defaults: `rerror=report`, `werror=enospc`.
    fn default() -> Self {
        Self {
            read: OnError::Report,
            write: OnError::Enospc,
        }
    }
}

impl DevicePolicy {
    /// The side that applies to `kind`.
    pub fn for_kind(&self, kind: IoKind) -> OnError {
        if kind.is_write() {
            self.write
        } else {
            self.read
        }
    }

    /// Whether the policy can stop the VM: QEMU's `blk_iostatus_is_enabled` (`werror` is
    /// `enospc` or `stop`, or `rerror` is `stop`). The query shows `io-status` and
    /// `BLOCK_IO_ERROR` carries `nospace` only then. `rerror=enospc`, which QEMU's `-drive`
    /// refuses but its device property accepts, also counts here: it can stop, and QEMU would
    /// abort on the io-status assertion instead.
    pub fn can_stop(&self) -> bool {
        self.read.can_stop() || self.write.can_stop()
    }
}

impl ErrorPolicy for DevicePolicy {
    fn on_error(&self, info: &IoErrorInfo<'_>) -> ErrorAction {
        self.for_kind(info.operation).action(info.nospace())
    }

    fn can_stop(&self) -> bool {
        DevicePolicy::can_stop(self)
    }
}

/// Everything known about a failed request, as `BLOCK_IO_ERROR` needs it.
#[derive(Debug)]
pub struct IoErrorInfo<'a> {
    /// The backend's id (the drive id).
    pub device: &'a str,
    /// The node-name of the backend's root node as queries show it (implicit filters, such
    /// as the fault-injection node, skipped).
    pub node_name: &'a str,
    /// The failed operation.
    pub operation: IoKind,
    /// The host error.
    pub error: &'a io::Error,
}

impl IoErrorInfo<'_> {
    /// Whether the error is ENOSPC (`nospace` in `BLOCK_IO_ERROR`).
    pub fn nospace(&self) -> bool {
        self.error.raw_os_error() == Some(libc::ENOSPC)
    }

    /// The `reason` of `BLOCK_IO_ERROR`: the error text as QEMU's `strerror` gives it
    /// (`Input/output error`), without Rust's ` (os error N)` suffix.
    pub fn reason(&self) -> String {
        let text = self.error.to_string();
        match self.error.raw_os_error() {
            Some(code) => text
                .strip_suffix(&format!(" (os error {code})"))
                .map(str::to_string)
                .unwrap_or(text),
            None => text,
        }
    }
}

/// Decides what a failed request becomes. It is called on the thread that ran the request (a
/// block I/O thread or a request-pool thread) and must not block. Signals (`BLOCK_IO_ERROR`,
/// the VM stop) go to [`crate::IoErrorSlot`]s, not here.
pub trait ErrorPolicy: Send + Sync + fmt::Debug {
    /// Chooses the action for one failed request.
    fn on_error(&self, info: &IoErrorInfo<'_>) -> ErrorAction;

    /// Whether the policy can ever choose [`ErrorAction::Stop`] (QEMU's
    /// `blk_iostatus_is_enabled`): `io-status` is shown and `nospace` sent only then.
    fn can_stop(&self) -> bool;
}

/// The default policy: every error is reported to the guest.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReportPolicy;

impl ErrorPolicy for ReportPolicy {
    fn on_error(&self, _info: &IoErrorInfo<'_>) -> ErrorAction {
        ErrorAction::Report
    }

    fn can_stop(&self) -> bool {
        false
    }
}

/// QMP's `io-status` of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoStatus {
    /// No request is stopped on an error.
    #[default]
    Ok,
    /// A request stopped on an error other than ENOSPC.
    Failed,
    /// A request stopped on ENOSPC.
    NoSpace,
}

impl IoStatus {
    /// The QMP spelling (`ok`, `failed`, `nospace`).
    pub fn as_str(self) -> &'static str {
        match self {
            IoStatus::Ok => "ok",
            IoStatus::Failed => "failed",
            IoStatus::NoSpace => "nospace",
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => IoStatus::Failed,
            2 => IoStatus::NoSpace,
            _ => IoStatus::Ok,
        }
    }
}

/// A backend's `io-status`, shared between the backend (queries, [`crate::Backend::resume`])
/// and its [`crate::IoStatusSlot`] (which sets it on a stop).
#[derive(Debug)]
pub struct IoStatusCell(AtomicU8);

impl Default for IoStatusCell {
    fn default() -> Self {
        Self(AtomicU8::new(IoStatus::Ok.to_u8()))
    }
}

impl IoStatusCell {
    /// The current status.
    pub fn get(&self) -> IoStatus {
        IoStatus::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Sets `status` unless one is set already (QEMU's `blk_iostatus_set_err` keeps the first
    /// until the next reset); returns whether it was set.
    pub fn set_first(&self, status: IoStatus) -> bool {
        self.0
            .compare_exchange(
                IoStatus::Ok.to_u8(),
                status.to_u8(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Back to [`IoStatus::Ok`] (on resume).
    pub fn reset(&self) {
        self.0.store(IoStatus::Ok.to_u8(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_policy_reports_and_names() {
        let err = io::Error::from_raw_os_error(libc::ENOSPC);
        let info = IoErrorInfo {
            device: "drive0",
            node_name: "#block012",
            operation: IoKind::Write,
            error: &err,
        };
        assert!(info.nospace());
        assert_eq!(info.reason(), "No space left on device");
        let other = io::Error::other("injected");
        let info = IoErrorInfo {
            error: &other,
            ..info
        };
        assert!(!info.nospace());
        assert_eq!(info.reason(), "injected");
        assert_eq!(ReportPolicy.on_error(&info), ErrorAction::Report);
        assert_eq!(ErrorAction::Stop.as_str(), "stop");
        for s in [IoStatus::Ok, IoStatus::Failed, IoStatus::NoSpace] {
            assert_eq!(IoStatus::from_u8(s.to_u8()), s);
        }
        assert_eq!(IoStatus::NoSpace.as_str(), "nospace");
        assert!(!ReportPolicy.can_stop());
    }

    #[test]
    fn on_error_parses_as_qemu() {
        for v in [
            OnError::Report,
            OnError::Ignore,
            OnError::Enospc,
            OnError::Stop,
        ] {
            assert_eq!(v.as_str().parse(), Ok(v));
            assert_eq!(OnError::parse_write(v.as_str()), Ok(v));
            assert_eq!(v.to_string(), v.as_str());
        }
        assert_eq!(OnError::parse_read("stop"), Ok(OnError::Stop));
        assert_eq!(
            OnError::parse_read("enospc").unwrap_err().to_string(),
            "'enospc' invalid read error action"
        );
        assert_eq!(
            "auto".parse::<OnError>().unwrap_err().to_string(),
            "'auto' invalid write error action"
        );
        assert_eq!(
            DevicePolicy::default(),
            DevicePolicy {
                read: OnError::Report,
                write: OnError::Enospc
            }
        );
    }

    #[test]
    fn device_policy_actions_and_can_stop() {
        use ErrorAction::{Ignore, Report, Stop};
        let eio = io::Error::from_raw_os_error(libc::EIO);
        let enospc = io::Error::from_raw_os_error(libc::ENOSPC);
        // (policy side, error is ENOSPC) -> action
        let table = [
            (OnError::Report, false, Report),
            (OnError::Report, true, Report),
            (OnError::Ignore, false, Ignore),
            (OnError::Ignore, true, Ignore),
            (OnError::Enospc, false, Report),
            (OnError::Enospc, true, Stop),
            (OnError::Stop, false, Stop),
            (OnError::Stop, true, Stop),
        ];
        let other = OnError::Report;
        for (side, nospace, want) in table {
            let error = if nospace { &enospc } else { &eio };
            for kind in [
                IoKind::Read,
                IoKind::Write,
                IoKind::Flush,
                IoKind::Discard,
                IoKind::WriteZeroes,
            ] {
                let policy = if kind == IoKind::Read {
                    DevicePolicy {
                        read: side,
                        write: other,
                    }
                } else {
                    DevicePolicy {
                        read: other,
                        write: side,
                    }
                };
                let info = IoErrorInfo {
                    device: "drive0",
                    node_name: "disk0",
                    operation: kind,
                    error,
                };
                assert_eq!(policy.on_error(&info), want, "{side} {kind:?} {nospace}");
                // The other side never decides.
                let swapped = DevicePolicy {
                    read: policy.write,
                    write: policy.read,
                };
                assert_eq!(swapped.on_error(&info), Report);
            }
        }
        let p = |read, write| DevicePolicy { read, write };
        // QEMU's blk_iostatus_is_enabled.
        assert!(DevicePolicy::default().can_stop());
        assert!(p(OnError::Stop, OnError::Report).can_stop());
        assert!(p(OnError::Report, OnError::Stop).can_stop());
        assert!(!p(OnError::Report, OnError::Report).can_stop());
        assert!(!p(OnError::Ignore, OnError::Ignore).can_stop());
        assert!(!p(OnError::Report, OnError::Ignore).can_stop());
        assert!(ErrorPolicy::can_stop(&p(OnError::Enospc, OnError::Report)));
    }
}
