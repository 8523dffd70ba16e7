// SPDX-License-Identifier: Apache-2.0
//! The QMP decisions about a request, each made here and only here:
//!
//! - **negotiation**: `qmp_capabilities` is `'gen': false` in the schema, so no trait method
//!   implements it; the monitor answers it itself, checking and decoding its arguments with the
//!   generated descriptor and type and the generated [`QMPCapability`] enum ([`negotiate`]);
//! - **whether a reply is sent**: a successful command whose schema says
//!   `'success-response': false` sends none ([`response`]), wherever it ran;
//! - **running an in-band item** on the main loop ([`Inband::run`]).

use qapi::commands::{command_info, dispatch, QmpCommands};
use qapi::rt::{canonicalize_handles, check_arguments, decode_arguments, ErrorClass, QmpError};
use qapi::types::{QMPCapability, QmpCapabilitiesArg};
use serde_json::{Map, Value};

/// The capabilities a session enabled with `qmp_capabilities`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Out-of-band execution (`exec-oob`).
    pub oob: bool,
    /// Handles in canonical form (`explicit-handles`).
    pub explicit_handles: bool,
}

/// The capabilities offered in the greeting: every value of the schema's capability enum.
pub const OFFERED: [QMPCapability; 2] = [QMPCapability::Oob, QMPCapability::ExplicitHandles];

/// Checks the arguments of `qmp_capabilities` as the generated dispatcher checks any command's
/// (QEMU 7.2's texts: `Parameter 'x' is unexpected`, `Parameter 'null' does not accept value
/// 'y'` — list elements have no name of their own there —, ...) and returns what they enable.
///
/// # Errors
/// The argument error, as QEMU words it.
pub fn negotiate(arguments: Option<Map<String, Value>>) -> Result<Capabilities, QmpError> {
    let args = check_arguments(
        &qapi::descriptors::D_q_obj_qmp_capabilities_arg,
        arguments.map(Value::Object),
        // The arguments hold no handles.
        &|_, _| Ok(()),
    )?;
    let QmpCapabilitiesArg { enable } = decode_arguments(args)?;
    let enable = enable.unwrap_or_default();
    Ok(Capabilities {
        oob: enable.contains(&QMPCapability::Oob),
        explicit_handles: enable.contains(&QMPCapability::ExplicitHandles),
    })
}

/// The error for `qmp_capabilities` in a session that has negotiated already.
pub fn already_negotiated() -> QmpError {
    QmpError::new(
        ErrorClass::CommandNotFound,
        "Capabilities negotiation is already complete, command ignored",
    )
}

/// The error for any other command before negotiation.
pub fn not_negotiated() -> QmpError {
    QmpError::new(
        ErrorClass::CommandNotFound,
        "Expecting capabilities negotiation with 'qmp_capabilities'",
    )
}

/// Builds the reply message for a command result.
pub fn reply(result: Result<Value, QmpError>, id: Option<Value>) -> Value {
    let mut msg = Map::new();
    match result {
        Ok(v) => msg.insert("return".into(), v),
        Err(e) => msg.insert("error".into(), e.to_json()),
    };
    if let Some(id) = id {
        msg.insert("id".into(), id);
    }
    Value::Object(msg)
}

/// The message to send for the result of `command`: its reply, or `None` for a successful
/// command declared with `'success-response': false`. With `explicit_handles`, the handles in
/// the return value are put in canonical form, as the command's return type says.
pub fn response(
    command: &str,
    mut result: Result<Value, QmpError>,
    id: Option<Value>,
    explicit_handles: bool,
) -> Option<Value> {
    let info = command_info(command);
    if result.is_ok() && !info.is_none_or(|c| c.success_response) {
        return None;
    }
    if let (true, Ok(value), Some(desc)) =
        (explicit_handles, &mut result, info.and_then(|c| c.returns))
    {
        canonicalize_handles(desc, value);
    }
    Some(reply(result, id))
}

/// An in-band item for the main loop.
#[derive(Debug, Clone, PartialEq)]
pub enum Inband {
    /// Run `command` under the big lock.
    Execute {
        /// The command name.
        command: String,
        /// Its arguments.
        arguments: Option<Value>,
        /// The id to echo.
        id: Option<Value>,
        /// The session uses canonical handles.
        explicit_handles: bool,
        /// For `getfd`: the oldest descriptor the session passed (see [`crate::fds`]).
        fd: Option<crate::fds::PassedFd>,
    },
    /// A reply the monitor already knows (an error); the main loop only passes it back so that
    /// it keeps its place in the session's order.
    Reply(Value),
}

impl Inband {
    /// Runs the item on `server` (the main loop's machine, under the big lock) and returns the
    /// message for the client, if any.
    pub fn run<C: QmpCommands + ?Sized>(self, server: &mut C) -> Option<Value> {
        match self {
            Inband::Reply(v) => Some(v),
            Inband::Execute {
                command,
                arguments,
                id,
                explicit_handles,
                fd: _,
            } => {
                let result = dispatch(server, &command, arguments);
                response(&command, result, id, explicit_handles)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn args(v: Value) -> Option<Map<String, Value>> {
        v.as_object().cloned()
    }

    #[test]
    fn negotiation_arguments() {
        assert_eq!(negotiate(None), Ok(Capabilities::default()));
        assert_eq!(
            negotiate(args(json!({"enable": ["oob"]}))),
            Ok(Capabilities {
                oob: true,
                explicit_handles: false
            })
        );
        assert_eq!(
            negotiate(args(json!({"enable": ["explicit-handles", "oob"]}))),
            Ok(Capabilities {
                oob: true,
                explicit_handles: true
            })
        );
        assert_eq!(
            negotiate(args(json!({"enable": []}))),
            Ok(Capabilities::default())
        );
        assert_eq!(
            negotiate(args(json!({"enable": ["cap-does-not-exist"]})))
                .unwrap_err()
                .desc,
            "Parameter 'null' does not accept value 'cap-does-not-exist'"
        );
        assert_eq!(
            negotiate(args(json!({"other": 1}))).unwrap_err().desc,
            "Parameter 'other' is unexpected"
        );
        assert_eq!(
            negotiate(args(json!({"enable": "oob"}))).unwrap_err().desc,
            "Invalid parameter type for 'enable', expected: array"
        );
        assert_eq!(
            negotiate(args(json!({"enable": [1]}))).unwrap_err().desc,
            "Invalid parameter type for 'enable[0]', expected: string"
        );
    }

    #[test]
    fn reply_shapes() {
        assert_eq!(
            reply(Ok(json!({})), Some(json!(1))),
            json!({"return": {}, "id": 1})
        );
        assert_eq!(reply(Ok(json!("s")), None), json!({"return": "s"}));
        assert_eq!(
            reply(Err(QmpError::command_not_found("x")), Some(json!(null))),
            json!({"error": {"class": "CommandNotFound", "desc": "The command x has not been found"}, "id": null})
        );
    }
}
