// SPDX-License-Identifier: Apache-2.0
//! The typed client (our libqmp): one blocking and one async method per command, `_oob`
//! variants for `allow-oob` commands, and a typed event stream.

use std::fmt::Write as _;

use super::ident::{snake, type_name, NamingError};
use super::{def_doc_text, doc_comment, field_inits, params, Cx};
use crate::model::DefKind;

pub(super) fn generate(cx: &Cx<'_>) -> Result<String, NamingError> {
    let mut out = String::new();
    out.push_str(
        "/// The typed QMP client generated from the schema.\n\
         pub mod client {\n\
         \x20   use crate::client::{ClientError, Connection, EventWait, RawEvent, Reply};\n\
         \x20   use crate::rt::Timestamp;\n\n\
         \x20   /// A typed QMP client over a [`Connection`]: commands are methods returning typed\n\
         \x20   /// results (blocking, or `_async` futures usable with any executor), events and\n\
         \x20   /// signals arrive as typed [`super::events::Event`]s.\n\
         \x20   pub struct Client {\n\
         \x20       conn: Connection,\n\
         \x20   }\n\n\
         \x20   fn decode_event(raw: RawEvent) -> Result<(super::events::Event, Timestamp), ClientError> {\n\
         \x20       let event = super::events::Event::from_wire(&raw.name, raw.data, raw.owner)\n\
         \x20           .map_err(|e| ClientError::Decode(e.to_string()))?;\n\
         \x20       Ok((event, raw.timestamp))\n\
         \x20   }\n\n\
         \x20   #[allow(clippy::too_many_arguments)]\n\
         \x20   impl Client {\n\
         \x20       /// Wraps a connection (already past the greeting; see [`Connection::negotiate`]).\n\
         \x20       pub fn new(conn: Connection) -> Self {\n\
         \x20           Client { conn }\n\
         \x20       }\n\n\
         \x20       /// The untyped connection, for raw `execute` and `exec-oob`.\n\
         \x20       pub fn connection(&self) -> &Connection {\n\
         \x20           &self.conn\n\
         \x20       }\n\n\
         \x20       /// Waits for the next event or signal, up to `timeout` (`None`: forever).\n\
         \x20       /// Returns `Ok(None)` on timeout.\n\
         \x20       pub fn next_event(\n\
         \x20           &self,\n\
         \x20           timeout: Option<std::time::Duration>,\n\
         \x20       ) -> Result<Option<(super::events::Event, Timestamp)>, ClientError> {\n\
         \x20           self.conn.next_event(timeout)?.map(decode_event).transpose()\n\
         \x20       }\n\n\
         \x20       /// A future for the next event or signal.\n\
         \x20       pub fn next_event_async(&self) -> EventWait<(super::events::Event, Timestamp)> {\n\
         \x20           self.conn.event_async(decode_event)\n\
         \x20       }\n",
    );
    for def in cx.defs() {
        let DefKind::Command {
            data,
            returns,
            boxed,
            allow_oob,
            ..
        } = &def.kind
        else {
            continue;
        };
        let method = snake(&def.name);
        let members = cx.arg_members(data.as_deref());
        let (plist, args) = match (data, boxed) {
            (Some(t), true) => (
                format!(", arguments: super::types::{}", type_name(t)),
                "Some(serde_json::to_value(arguments).expect(\"arguments serialize\"))"
                    .to_string(),
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
        let call_args: String = if *boxed && data.is_some() {
            ", arguments".into()
        } else {
            members
                .iter()
                .map(|m| format!(", {}", snake(&m.name)))
                .collect()
        };
        let text = def_doc_text(def.doc.as_ref());
        let mut variants = vec![(method.clone(), false)];
        if *allow_oob {
            variants.push((format!("{method}_oob"), true));
        }
        for (m, oob) in variants {
            out.push('\n');
            let how = if oob { "`exec-oob`" } else { "`execute`" };
            doc_comment(
                &mut out,
                "        ",
                &format!(
                    "{text}\n\nSends `{}` with {how} and waits for the reply.",
                    def.name
                ),
                "",
            );
            let _ = writeln!(
                out,
                "        pub fn {m}(&self{plist}) -> Result<{ret}, ClientError> {{\n\
                 \x20           self.{m}_async({}).wait()\n\
                 \x20       }}\n",
                call_args.trim_start_matches(", ")
            );
            let _ = writeln!(
                out,
                "        /// Sends `{}` with {how}; the returned future (or its `wait`) gives the reply.\n\
                 \x20       pub fn {m}_async(&self{plist}) -> Reply<{ret}> {{\n\
                 \x20           self.conn.request(\"{}\", {args}, {oob}, {decode})\n\
                 \x20       }}",
                def.name, def.name
            );
        }
    }
    out.push_str("    }\n}\n");
    Ok(out)
}
