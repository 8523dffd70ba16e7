// SPDX-License-Identifier: Apache-2.0
//! The runtime the generated code builds on: QMP errors, argument validation with QEMU's
//! texts, command and signal metadata, handles in canonical form, and event message
//! formatting.

mod error;
mod event;
mod handles;
mod keyval;
mod validate;

pub use error::{ErrorClass, QmpError};
pub use event::{event_json, signal_json, Timestamp};
pub use handles::{
    canonical_handle, canonicalize_handles, deserialize_handle, parse_canonical_handle, HANDLE_KEY,
};
pub use keyval::from_keyval;
pub use validate::{
    check_arguments, decode_arguments, encode_return, MemberDesc, TypeDesc, Variants,
};

/// Static facts about one command, for routing and `query-commands`. Equality compares the
/// `returns` descriptors by address (they are statics).
#[derive(Debug, Clone, Copy)]
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
    /// The descriptor of the return type (`None` when the command returns nothing), e.g. to
    /// [`canonicalize_handles`] in the reply of an explicit-handles session.
    pub returns: Option<&'static TypeDesc>,
}

impl PartialEq for CommandInfo {
    fn eq(&self, other: &Self) -> bool {
        let same_returns = match (self.returns, other.returns) {
            (Some(a), Some(b)) => std::ptr::eq(a, b),
            (None, None) => true,
            _ => false,
        };
        self.name == other.name
            && self.allow_oob == other.allow_oob
            && self.success_response == other.success_response
            && self.allow_preconfig == other.allow_preconfig
            && self.generated == other.generated
            && self.features == other.features
            && same_returns
    }
}

impl Eq for CommandInfo {}

/// Static facts about one signal. Every event is a signal: a schema `signal` is owned by its
/// declared handle type, a plain `event` by the schema's `event-owner` (the `Machine`).
#[derive(Debug, Clone, Copy)]
pub struct SignalInfo {
    /// The signal (event) name.
    pub name: &'static str,
    /// The schema name of the owner's handle type (e.g. `Blockdev`, `Machine`).
    pub owner: &'static str,
    /// For plain events, the one owner value (e.g. `"/machine"`); `None` for signals, whose
    /// owner is the object that raises them.
    pub fixed_owner: Option<&'static str>,
    /// The descriptor of the `data` member (`None` when the signal has no data).
    pub data: Option<&'static TypeDesc>,
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
