// SPDX-License-Identifier: Apache-2.0
//! Checking a parsed QMP message into a request, with QEMU's error texts: commands
//! (`execute`, `exec-oob`) and our signal connections (`connect`, `disconnect`).

use serde_json::{Map, Value};

/// How a command is to be executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `execute`: in band, in order, on the main loop.
    InBand,
    /// `exec-oob`: out of band, on the monitor thread.
    OutOfBand,
}

/// A well-formed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `execute` or `exec-oob`.
    pub mode: Mode,
    /// The command name.
    pub command: String,
    /// The arguments object, if given.
    pub arguments: Option<Map<String, Value>>,
    /// The client's id, echoed verbatim in the reply.
    pub id: Option<Value>,
}

/// A malformed request: the error text, and the id to answer with if one could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Malformed {
    /// QEMU's description of what is wrong.
    pub desc: String,
    /// The request's id, when it had one.
    pub id: Option<Value>,
}

/// `{"connect": SIGNAL, "owner": HANDLE, "user_data"?: ANY, "id"?: ANY}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    /// The signal's name.
    pub signal: String,
    /// The owner, as sent (the monitor checks it is a canonical handle).
    pub owner: Value,
    /// Echoed in every emission to this connection.
    pub user_data: Option<Value>,
    /// The client's id.
    pub id: Option<Value>,
}

/// `{"disconnect": CONNECTION, "owner": HANDLE, "id"?: ANY}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Disconnect {
    /// The connection id `connect` returned.
    pub connection: Value,
    /// The owner it was connected to.
    pub owner: Value,
    /// The client's id.
    pub id: Option<Value>,
}

/// A well-formed message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A command.
    Command(Request),
    /// A signal connection.
    Connect(Connect),
    /// The end of a signal connection.
    Disconnect(Disconnect),
}

/// Checks `msg` as a command or a signal (dis)connection.
///
/// # Errors
/// Returns the description of the first problem found (QEMU's texts for commands).
pub fn parse_message(msg: Value, oob_enabled: bool) -> Result<Message, Malformed> {
    let mut obj = match msg {
        Value::Object(o) if o.contains_key("connect") || o.contains_key("disconnect") => o,
        other => return parse_request(other, oob_enabled).map(Message::Command),
    };
    let id = obj.remove("id");
    let fail = |desc: String, id: Option<Value>| Err(Malformed { desc, id });
    let Some(owner) = obj.remove("owner") else {
        return fail("QMP input lacks member 'owner'".into(), id);
    };
    let user_data = obj.remove("user_data");
    let (verb, target) = match (obj.remove("connect"), obj.remove("disconnect")) {
        (Some(c), None) => ("connect", c),
        (None, Some(d)) => ("disconnect", d),
        _ => {
            return fail(
                "QMP input must not contain both 'connect' and 'disconnect'".into(),
                id,
            )
        }
    };
    if let Some(key) = obj.keys().next() {
        return fail(format!("QMP input member '{key}' is unexpected"), id);
    }
    if verb == "connect" {
        let Value::String(signal) = target else {
            return fail("QMP input member 'connect' must be a string".into(), id);
        };
        return Ok(Message::Connect(Connect {
            signal,
            owner,
            user_data,
            id,
        }));
    }
    if user_data.is_some() {
        return fail("QMP input member 'user_data' is unexpected".into(), id);
    }
    Ok(Message::Disconnect(Disconnect {
        connection: target,
        owner,
        id,
    }))
}

/// Checks `msg` as a request. `oob_enabled` says whether the session negotiated the `oob`
/// capability, without which `exec-oob` is an unexpected member.
///
/// # Errors
/// Returns QEMU's description of the first problem found.
pub fn parse_request(msg: Value, oob_enabled: bool) -> Result<Request, Malformed> {
    let Value::Object(mut obj) = msg else {
        return Err(Malformed {
            desc: "QMP input must be a JSON object".into(),
            id: None,
        });
    };
    let id = obj.remove("id");
    let fail = |desc: String, id: Option<Value>| Err(Malformed { desc, id });
    let mut execute = None;
    let mut exec_oob = None;
    let mut arguments = None;
    for (key, value) in obj {
        match key.as_str() {
            "execute" | "exec-oob" => {
                let Value::String(name) = value else {
                    return fail(format!("QMP input member '{key}' must be a string"), id);
                };
                if key == "execute" {
                    execute = Some(name);
                } else if oob_enabled {
                    exec_oob = Some(name);
                } else {
                    return fail("QMP input member 'exec-oob' is unexpected".into(), id);
                }
            }
            "arguments" => {
                let Value::Object(args) = value else {
                    return fail("QMP input member 'arguments' must be an object".into(), id);
                };
                arguments = Some(args);
            }
            _ => return fail(format!("QMP input member '{key}' is unexpected"), id),
        }
    }
    let (mode, command) = match (execute, exec_oob) {
        (Some(c), None) => (Mode::InBand, c),
        (None, Some(c)) => (Mode::OutOfBand, c),
        (Some(_), Some(_)) => {
            return fail(
                "QMP input must not contain both 'execute' and 'exec-oob'".into(),
                id,
            )
        }
        (None, None) => return fail("QMP input lacks member 'execute'".into(), id),
    };
    Ok(Request {
        mode,
        command,
        arguments,
        id,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn err(v: Value, oob: bool) -> (String, Option<Value>) {
        let e = parse_request(v, oob).unwrap_err();
        (e.desc, e.id)
    }

    #[test]
    fn well_formed() {
        let r = parse_request(json!({"execute":"stop","id":{"a":[1,2]}}), false).unwrap();
        assert_eq!(r.mode, Mode::InBand);
        assert_eq!(r.command, "stop");
        assert_eq!(r.id, Some(json!({"a":[1,2]})));
        assert_eq!(r.arguments, None);
        let r = parse_request(json!({"exec-oob":"x","arguments":{"k":1}}), true).unwrap();
        assert_eq!(r.mode, Mode::OutOfBand);
        assert_eq!(r.arguments.unwrap()["k"], 1);
    }

    #[test]
    fn signal_messages() {
        let owner = json!({"__handle__": "Blockdev", "data": "drive0"});
        assert_eq!(
            parse_message(
                json!({"connect": "BLOCK_IO_ERROR", "owner": owner, "user_data": [1], "id": 3}),
                false
            ),
            Ok(Message::Connect(Connect {
                signal: "BLOCK_IO_ERROR".into(),
                owner: owner.clone(),
                user_data: Some(json!([1])),
                id: Some(json!(3)),
            }))
        );
        assert_eq!(
            parse_message(json!({"disconnect": 4, "owner": owner}), false),
            Ok(Message::Disconnect(Disconnect {
                connection: json!(4),
                owner: owner.clone(),
                id: None,
            }))
        );
        let desc = |v: Value| parse_message(v, false).unwrap_err().desc;
        assert_eq!(
            desc(json!({"connect": "X"})),
            "QMP input lacks member 'owner'"
        );
        assert_eq!(
            desc(json!({"connect": 1, "owner": owner})),
            "QMP input member 'connect' must be a string"
        );
        assert_eq!(
            desc(json!({"connect": "X", "disconnect": 1, "owner": owner})),
            "QMP input must not contain both 'connect' and 'disconnect'"
        );
        assert_eq!(
            desc(json!({"connect": "X", "owner": owner, "execute": "stop"})),
            "QMP input member 'execute' is unexpected"
        );
        assert_eq!(
            desc(json!({"disconnect": 1, "owner": owner, "user_data": 1})),
            "QMP input member 'user_data' is unexpected"
        );
        assert!(matches!(
            parse_message(json!({"execute": "stop"}), false),
            Ok(Message::Command(_))
        ));
    }

    #[test]
    fn qemu_error_texts() {
        assert_eq!(err(json!(null), false).0, "QMP input must be a JSON object");
        assert_eq!(
            err(json!([1, 2]), false).0,
            "QMP input must be a JSON object"
        );
        assert_eq!(err(json!({}), false).0, "QMP input lacks member 'execute'");
        assert_eq!(
            err(json!({"id": "x"}), false),
            ("QMP input lacks member 'execute'".into(), Some(json!("x")))
        );
        assert_eq!(
            err(json!({"execute": true}), false).0,
            "QMP input member 'execute' must be a string"
        );
        assert_eq!(
            err(json!({"execute": "a", "arguments": []}), false).0,
            "QMP input member 'arguments' must be an object"
        );
        assert_eq!(
            err(json!({"execute": "a", "extra": true}), false).0,
            "QMP input member 'extra' is unexpected"
        );
        assert_eq!(
            err(json!({"exec-oob": "a"}), false).0,
            "QMP input member 'exec-oob' is unexpected"
        );
        assert_eq!(
            err(json!({"execute": "a", "control": {"run-oob": true}}), true).0,
            "QMP input member 'control' is unexpected"
        );
    }
}
