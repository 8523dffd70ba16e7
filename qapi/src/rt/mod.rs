// SPDX-License-Identifier: Apache-2.0
//! The runtime the generated code builds on: QMP errors, argument validation with QEMU's
//! texts, command metadata, and event message formatting.

mod error;
mod event;
mod validate;

pub use error::{ErrorClass, QmpError};
pub use event::{event_json, signal_json, Timestamp};
pub use validate::{
    check_arguments, decode_arguments, encode_return, MemberDesc, TypeDesc, Variants,
};

/// Static facts about one command, for routing and `query-commands`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandInfo {
    /// The command name.
    pub name: &'static str,
    /// May run out-of-band (`exec-oob`), on the monitor thread without the big lock.
    pub allow_oob: bool,
    /// `false` when the command sends no reply on success.
    pub success_response: bool,
    /// May run before the machine is initialized.
    pub allow_preconfig: bool,
    /// `false` when the schema says `gen: false`: the monitor handles it itself and the
    /// generated dispatcher does not know it.
    pub generated: bool,
    /// Feature names (e.g. `deprecated`).
    pub features: &'static [&'static str],
}

/// Deserializes an optional member that is present, keeping a JSON `null` as `Some(..)`
/// (plain `Option<T>` would turn it into `None`). Used with `#[serde(default)]` for members
/// whose type admits null (`any`, `null`, alternates).
pub fn deserialize_present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}
