// SPDX-License-Identifier: Apache-2.0
//! QMP errors: QEMU's error classes plus a human-readable description.

use std::fmt;

/// QEMU's `QapiErrorClass`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ErrorClass {
    /// Almost every error.
    GenericError,
    /// The command does not exist (or is not available in this state).
    CommandNotFound,
    /// The device exists but is not active.
    DeviceNotActive,
    /// The named device does not exist.
    DeviceNotFound,
    /// KVM lacks a needed capability.
    KVMMissingCap,
}

impl ErrorClass {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::KVMMissingCap => "KVMMissingCap",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error returned by a command: `{"error": {"class": ..., "desc": ...}}` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {desc}")]
pub struct QmpError {
    /// The error class.
    pub class: ErrorClass,
    /// The description shown to the user.
    pub desc: String,
}

impl QmpError {
    /// An error of class `class`.
    pub fn new(class: ErrorClass, desc: impl Into<String>) -> Self {
        QmpError {
            class,
            desc: desc.into(),
        }
    }

    /// A `GenericError`.
    pub fn generic(desc: impl Into<String>) -> Self {
        QmpError::new(ErrorClass::GenericError, desc)
    }

    /// QEMU's `CommandNotFound` for an unknown command: `The command X has not been found`.
    pub fn command_not_found(name: &str) -> Self {
        QmpError::new(
            ErrorClass::CommandNotFound,
            format!("The command {name} has not been found"),
        )
    }

    /// QEMU's `DeviceNotFound`: `Device 'x' not found`.
    pub fn device_not_found(name: &str) -> Self {
        QmpError::new(
            ErrorClass::DeviceNotFound,
            format!("Device '{name}' not found"),
        )
    }

    /// The `error` member of a response: `{"class": ..., "desc": ...}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"class": self.class.as_str(), "desc": self.desc})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_and_helpers() {
        assert_eq!(
            QmpError::command_not_found("nonexistent").to_json(),
            serde_json::json!({"class": "CommandNotFound",
                "desc": "The command nonexistent has not been found"})
        );
        assert_eq!(
            QmpError::device_not_found("drive9").to_string(),
            "DeviceNotFound: Device 'drive9' not found"
        );
        let class: ErrorClass =
            serde_json::from_value(serde_json::json!("KVMMissingCap")).expect("known class");
        assert_eq!(class.as_str(), "KVMMissingCap");
    }
}
