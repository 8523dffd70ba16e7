// SPDX-License-Identifier: Apache-2.0
//! Checking a parsed QMP message into a request, with QEMU's error texts.

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
