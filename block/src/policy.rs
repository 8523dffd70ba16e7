// SPDX-License-Identifier: Apache-2.0
//! The error policy seam (`rerror`/`werror`) and the I/O status of a backend.

use std::fmt;
use std::io;

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

/// Everything known about a failed request, as `BLOCK_IO_ERROR` needs it.
#[derive(Debug)]
pub struct IoErrorInfo<'a> {
    /// The backend's id (the drive id).
    pub device: &'a str,
    /// The node-name of the backend's root node.
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
/// block I/O thread), so it may emit `BLOCK_IO_ERROR` from there, and it must not block on the
/// VM's big lock.
pub trait ErrorPolicy: Send + Sync + fmt::Debug {
    /// Chooses the action for one failed request.
    fn on_error(&self, info: &IoErrorInfo<'_>) -> ErrorAction;
}

/// The default policy: every error is reported to the guest.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReportPolicy;

impl ErrorPolicy for ReportPolicy {
    fn on_error(&self, _info: &IoErrorInfo<'_>) -> ErrorAction {
        ErrorAction::Report
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
    }
}
