// SPDX-License-Identifier: Apache-2.0
//! The typed client (our libqmp): one blocking and one async method per command, `_oob`
//! variants for `allow-oob` commands, a typed event stream, and one `connect_<signal>` per
//! event and signal giving a typed `SignalStream` of an explicit connection.

use super::ident::{snake, type_name, NamingError};
use super::{def_doc_text, field_inits, params, Cx};
use crate::emit::CodeWriter;
use crate::model::{Definition, TypeRef};
use crate::schema::{CommandFlags, Schema, Visitor};

/// The `client` module as a schema visitor: the `Client` methods of each command are
/// written as it is visited.
pub(super) struct ClientGen<'a, 's> {
    cx: &'a Cx<'s>,
    w: &'a mut CodeWriter,
}

impl<'a, 's> ClientGen<'a, 's> {
    /// A visitor writing to `w`.
    pub(super) fn new(cx: &'a Cx<'s>, w: &'a mut CodeWriter) -> Self {
        ClientGen { cx, w }
    }
}

impl<'s> Visitor<'s, NamingError> for ClientGen<'_, 's> {
    /// Opens the module and `impl Client`, and writes the methods every client has.
    fn visit_begin(&mut self, _schema: &'s Schema) -> Result<(), NamingError> {
        let w = &mut *self.w;
        w.line("/// The typed QMP client generated from the schema.");
        w.line("pub mod client {");
        w.indent();
        w.code(
            "
            use crate::client::{ClientError, Connection, EventWait, RawEvent, Reply, SignalStream};
            use crate::rt::Timestamp;

            /// A typed QMP client over a [`Connection`]: commands are methods returning typed
            /// results (blocking, or `_async` futures usable with any executor), events and
            /// signals arrive as typed [`super::events::Event`]s.
            pub struct Client {
                conn: Connection,
            }

            fn decode_event(raw: RawEvent) -> Result<(super::events::Event, Timestamp), ClientError> {
                let event = super::events::Event::from_wire(&raw.name, raw.data, raw.owner)
                    .map_err(|e| ClientError::Decode(e.to_string()))?;
                Ok((event, raw.timestamp))
            }

            #[allow(clippy::too_many_arguments)]
            impl Client {
            ",
        );
        w.indent();
        client_basics(w);
        Ok(())
    }

    fn visit_command(
        &mut self,
        def: &'s Definition,
        data: Option<&'s str>,
        returns: Option<&'s TypeRef>,
        flags: CommandFlags,
    ) -> Result<(), NamingError> {
        let shape = method_shape(self.cx, data, returns, flags.boxed);
        command_methods(self.w, def, &shape, flags.allow_oob);
        Ok(())
    }

    fn visit_event(
        &mut self,
        def: &'s Definition,
        data: Option<&'s str>,
        _boxed: bool,
    ) -> Result<(), NamingError> {
        if let Some(eo) = &self.cx.schema.event_owner {
            connect_method(self.w, def, &eo.handle, data);
        }
        Ok(())
    }

    fn visit_signal(
        &mut self,
        def: &'s Definition,
        owner: &'s str,
        data: Option<&'s str>,
        _boxed: bool,
    ) -> Result<(), NamingError> {
        connect_method(self.w, def, owner, data);
        Ok(())
    }

    /// Closes `impl Client` and the module.
    fn visit_end(&mut self) -> Result<(), NamingError> {
        for _ in 0..2 {
            self.w.dedent();
            self.w.line("}");
        }
        Ok(())
    }
}

/// The constructor, the connection accessor and the event methods.
fn client_basics(w: &mut CodeWriter) {
    w.code(
        "
        /// Wraps a connection (already past the greeting; see [`Connection::negotiate`]).
        pub fn new(conn: Connection) -> Self {
            Client { conn }
        }

        /// The untyped connection, for raw `execute` and `exec-oob`.
        pub fn connection(&self) -> &Connection {
            &self.conn
        }

        /// Waits for the next event or signal, up to `timeout` (`None`: forever).
        /// Returns `Ok(None)` on timeout.
        pub fn next_event(
            &self,
            timeout: Option<std::time::Duration>,
        ) -> Result<Option<(super::events::Event, Timestamp)>, ClientError> {
            self.conn.next_event(timeout)?.map(decode_event).transpose()
        }

        /// A future for the next event or signal.
        pub fn next_event_async(&self) -> EventWait<(super::events::Event, Timestamp)> {
            self.conn.event_async(decode_event)
        }
        ",
    );
}

/// `connect_<signal>`: an explicit connection to signal (or event) `def` of an `owner`, with
/// its messages decoded on a typed stream.
fn connect_method(w: &mut CodeWriter, def: &Definition, owner: &str, data: Option<&str>) {
    let (t, decode) = match data {
        Some(d) => {
            let t = format!("super::types::{}", type_name(d));
            let decode = format!("crate::client::decode_signal_data::<{t}>");
            (t, decode)
        }
        None => (
            "()".to_string(),
            "crate::client::decode_no_data".to_string(),
        ),
    };
    w.blank();
    w.line(format!(
        "/// Connects to signal `{}` of `owner` (`{{\"connect\": \"{}\", \"owner\": ...}}`, the",
        def.name, def.name
    ));
    w.line("/// owner in canonical form); its messages, with their data decoded, arrive on the");
    w.line("/// returned stream. `user_data` comes back with every message.");
    w.block(
        format!(
            "pub fn connect_{}(&self, owner: &super::types::{}, user_data: Option<serde_json::Value>) -> Result<SignalStream<{t}>, ClientError> {{",
            snake(&def.name),
            type_name(owner)
        ),
        "}",
        |w| {
            w.line(format!(
                "self.conn.connect_stream(\"{}\", owner.canonical(), user_data, {decode})",
                def.name
            ))
        },
    );
}

/// How a client method of one command is written.
struct Method {
    /// The parameter list after `&self`.
    plist: String,
    /// The `arguments` expression of the request.
    args: String,
    /// The Rust return type.
    ret: String,
    /// The reply decoder.
    decode: String,
    /// The arguments passed on from the blocking to the async method.
    call_args: String,
}

/// The blocking and async methods of a command, and their `_oob` variants if it allows
/// out-of-band execution.
fn command_methods(w: &mut CodeWriter, def: &Definition, sig: &Method, allow_oob: bool) {
    let method = snake(&def.name);
    let text = def_doc_text(def.doc.as_ref());
    let mut variants = vec![(method.clone(), false)];
    if allow_oob {
        variants.push((format!("{method}_oob"), true));
    }
    for (m, oob) in variants {
        w.blank();
        let how = if oob { "`exec-oob`" } else { "`execute`" };
        w.doc(
            &format!(
                "{text}\n\nSends `{}` with {how} and waits for the reply.",
                def.name
            ),
            "",
        );
        let Method {
            plist,
            args,
            ret,
            decode,
            call_args,
        } = sig;
        w.block(
            format!("pub fn {m}(&self{plist}) -> Result<{ret}, ClientError> {{"),
            "}",
            |w| {
                w.line(format!(
                    "self.{m}_async({}).wait()",
                    call_args.trim_start_matches(", ")
                ))
            },
        );
        w.blank();
        w.line(format!(
            "/// Sends `{}` with {how}; the returned future (or its `wait`) gives the reply.",
            def.name
        ));
        w.block(
            format!("pub fn {m}_async(&self{plist}) -> Reply<{ret}> {{"),
            "}",
            |w| {
                w.line(format!(
                    "self.conn.request(\"{}\", {args}, {oob}, {decode})",
                    def.name
                ))
            },
        );
    }
}

/// The parameters, request arguments and reply type of a command's client methods.
fn method_shape(cx: &Cx<'_>, data: Option<&str>, returns: Option<&TypeRef>, boxed: bool) -> Method {
    let members = cx.arg_members(data);
    let (plist, args) = match (data, boxed) {
        (Some(t), true) => (
            format!(", arguments: super::types::{}", type_name(t)),
            "Some(serde_json::to_value(arguments).expect(\"arguments serialize\"))".to_string(),
        ),
        (Some(t), false) => (
            params(cx, &members, t),
            format!(
                "Some(serde_json::to_value(super::types::{} {{ {} }}).expect(\"arguments serialize\"))",
                type_name(t),
                field_inits(&members)
            ),
        ),
        (None, _) => (String::new(), "None".to_string()),
    };
    let (ret, decode) = match returns {
        Some(r) => {
            let t = cx.rust_type(r);
            (t.clone(), format!("crate::client::decode::<{t}>"))
        }
        None => ("()".to_string(), "crate::client::decode_unit".to_string()),
    };
    let call_args: String = if boxed && data.is_some() {
        ", arguments".into()
    } else {
        members
            .iter()
            .map(|m| format!(", {}", snake(&m.name)))
            .collect()
    };
    Method {
        plist,
        args,
        ret,
        decode,
        call_args,
    }
}
