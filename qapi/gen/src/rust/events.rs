// SPDX-License-Identifier: Apache-2.0
//! Typed events and signals: the `Event` enum, the `EventSink` trait, and one emitter per
//! event (`emit_stop`, ...) and signal (`emit_block_io_error(sink, owner, ...)`).

use std::fmt::Write as _;

use super::ident::{camel, snake, type_name, Namespace, NamingError};
use super::{def_doc_text, doc_comment, field_inits, params, Cx};
use crate::model::{DefKind, Definition, Member};

struct Ev<'a> {
    def: &'a Definition,
    variant: String,
    data: Option<String>,
    members: Vec<Member>,
    boxed: bool,
    owner: Option<String>,
}

pub(super) fn generate(cx: &Cx<'_>) -> Result<String, NamingError> {
    let mut evs = Vec::new();
    let mut ns = Namespace::new("event variant");
    ns.claim("(unknown events)", "Other")?;
    for def in cx.defs() {
        let (data, boxed, owner) = match &def.kind {
            DefKind::Event { data, boxed } => (data, *boxed, None),
            DefKind::Signal { owner, data, boxed } => (data, *boxed, Some(owner.clone())),
            _ => continue,
        };
        let variant = camel(&def.name);
        ns.claim(&def.name, &variant)?;
        evs.push(Ev {
            def,
            variant,
            data: data.clone(),
            members: cx.arg_members(data.as_deref()),
            boxed,
            owner,
        });
    }
    let mut out = String::new();
    out.push_str(
        "/// Events and signals: the typed `Event`, the sink that delivers them, and emitters.\n\
         pub mod events {\n\
         \x20   use crate::rt::Timestamp;\n\n\
         \x20   /// Every event and signal of the schema, with its data. Signals carry their owner.\n\
         \x20   #[derive(Debug, Clone, PartialEq)]\n\
         \x20   pub enum Event {\n",
    );
    for e in &evs {
        doc_comment(
            &mut out,
            "        ",
            &def_doc_text(e.def.doc.as_ref()),
            &format!("Event `{}`.", e.def.name),
        );
        let data_t = e
            .data
            .as_ref()
            .map(|d| format!("super::types::{}", type_name(d)));
        match (&e.owner, data_t) {
            (None, None) => {
                let _ = writeln!(out, "        {},", e.variant);
            }
            (None, Some(t)) => {
                let _ = writeln!(out, "        {}({t}),", e.variant);
            }
            (Some(o), data) => {
                let _ = writeln!(
                    out,
                    "        {} {{\n\
                     \x20           /// The object that raised the signal (`None` when a client received the\n\
                     \x20           /// QEMU-compatible broadcast form, which does not name it).\n\
                     \x20           owner: Option<super::types::{}>,",
                    e.variant,
                    type_name(o)
                );
                if let Some(t) = data {
                    let _ = writeln!(
                        out,
                        "            /// The signal's data.\n            data: {t},"
                    );
                }
                out.push_str("        },\n");
            }
        }
    }
    out.push_str(
        "        /// An event this schema does not know (from a newer server).\n\
         \x20       Other {\n\
         \x20           /// Its name.\n\
         \x20           name: String,\n\
         \x20           /// Its data, if any.\n\
         \x20           data: Option<serde_json::Value>,\n\
         \x20       },\n\
         \x20   }\n\n",
    );

    // name(), data_json(), owner_json(), from_wire(), to_json()
    let mut name_arms = String::new();
    let mut data_arms = String::new();
    let mut owner_arms = String::new();
    let mut parse_arms = String::new();
    for e in &evs {
        let n = &e.def.name;
        let v = &e.variant;
        let has_data = e.data.is_some();
        let pat_ignore = match (&e.owner, has_data) {
            (None, false) => format!("Event::{v}"),
            (None, true) => format!("Event::{v}(_)"),
            (Some(_), _) => format!("Event::{v} {{ .. }}"),
        };
        let _ = writeln!(name_arms, "                {pat_ignore} => \"{n}\",");
        let data_expr = if has_data {
            "Some(serde_json::to_value(data).expect(\"event data serializes\"))"
        } else {
            "None"
        };
        let _ = writeln!(
            data_arms,
            "                {} => {data_expr},",
            match (&e.owner, has_data) {
                (None, true) => format!("Event::{v}(data)"),
                (Some(_), true) => format!("Event::{v} {{ data, .. }}"),
                _ => pat_ignore.clone(),
            }
        );
        if e.owner.is_some() {
            let _ = writeln!(
                owner_arms,
                "                Event::{v} {{ owner, .. }} => owner.as_ref().map(|o| o.canonical()),"
            );
        }
        let build = match (&e.owner, has_data) {
            (None, false) => format!("Event::{v}"),
            (None, true) => format!("Event::{v}(decode(data)?)"),
            (Some(_), false) => format!("Event::{v} {{ owner: decode_owner(owner)? }}"),
            (Some(_), true) => {
                format!("Event::{v} {{ owner: decode_owner(owner)?, data: decode(data)? }}")
            }
        };
        let _ = writeln!(parse_arms, "            \"{n}\" => {build},");
    }
    let _ = write!(
        out,
        "    impl Event {{\n\
         \x20       /// The wire name of the event or signal.\n\
         \x20       pub fn name(&self) -> &str {{\n\
         \x20           match self {{\n{name_arms}\
         \x20               Event::Other {{ name, .. }} => name,\n\
         \x20           }}\n\
         \x20       }}\n\n\
         \x20       /// The `data` member as JSON (`None` when the event has no members).\n\
         \x20       pub fn data_json(&self) -> Option<serde_json::Value> {{\n\
         \x20           match self {{\n{data_arms}\
         \x20               Event::Other {{ data, .. }} => data.clone(),\n\
         \x20           }}\n\
         \x20       }}\n\n\
         \x20       /// The owner in canonical handle form, for signals that know it.\n\
         \x20       pub fn owner_json(&self) -> Option<serde_json::Value> {{\n\
         \x20           #[allow(clippy::match_single_binding)]\n\
         \x20           match self {{\n{owner_arms}\
         \x20               _ => None,\n\
         \x20           }}\n\
         \x20       }}\n\n\
         \x20       /// The QEMU wire message `{{\"event\", \"data\", \"timestamp\"}}` (no `data` when empty).\n\
         \x20       pub fn to_json(&self, timestamp: Timestamp) -> serde_json::Value {{\n\
         \x20           crate::rt::event_json(self.name(), self.data_json(), timestamp)\n\
         \x20       }}\n\n\
         \x20       /// The explicit-handles signal message `{{\"signal\", \"owner\", \"user_data\", \"data\",\n\
         \x20       /// \"timestamp\"}}`; plain events give the same as [`Event::to_json`].\n\
         \x20       pub fn to_signal_json(\n\
         \x20           &self,\n\
         \x20           user_data: Option<&serde_json::Value>,\n\
         \x20           timestamp: Timestamp,\n\
         \x20       ) -> serde_json::Value {{\n\
         \x20           match self.owner_json() {{\n\
         \x20               Some(owner) => crate::rt::signal_json(self.name(), owner, user_data, self.data_json(), timestamp),\n\
         \x20               None => self.to_json(timestamp),\n\
         \x20           }}\n\
         \x20       }}\n\n\
         \x20       /// Decodes an event from its wire parts; `owner` is the canonical handle of a\n\
         \x20       /// signal message, absent for broadcast events. Unknown names give [`Event::Other`].\n\
         \x20       pub fn from_wire(\n\
         \x20           name: &str,\n\
         \x20           data: Option<serde_json::Value>,\n\
         \x20           owner: Option<serde_json::Value>,\n\
         \x20       ) -> Result<Event, serde_json::Error> {{\n\
         \x20           #[allow(dead_code)]\n\
         \x20           fn decode<T: serde::de::DeserializeOwned>(data: Option<serde_json::Value>) -> Result<T, serde_json::Error> {{\n\
         \x20               serde_json::from_value(data.unwrap_or_else(|| serde_json::json!({{}})))\n\
         \x20           }}\n\
         \x20           #[allow(dead_code)]\n\
         \x20           fn decode_owner<T: serde::de::DeserializeOwned>(owner: Option<serde_json::Value>) -> Result<Option<T>, serde_json::Error> {{\n\
         \x20               match owner {{\n\
         \x20                   Some(serde_json::Value::Object(mut o)) => o.remove(\"data\").map(serde_json::from_value).transpose(),\n\
         \x20                   Some(other) => serde_json::from_value(other).map(Some),\n\
         \x20                   None => Ok(None),\n\
         \x20               }}\n\
         \x20           }}\n\
         \x20           let _ = &owner;\n\
         \x20           Ok(match name {{\n{parse_arms}\
         \x20               _ => Event::Other {{ name: name.to_string(), data }},\n\
         \x20           }})\n\
         \x20       }}\n\
         \x20   }}\n\n\
         \x20   /// Where emitted events go (the monitor's broadcast, in-process slots, a test log).\n\
         \x20   /// Called on the thread where the fact is known; implementations must not block.\n\
         \x20   pub trait EventSink: Send + Sync {{\n\
         \x20       /// Delivers one event with the time it happened.\n\
         \x20       fn emit(&self, event: Event, timestamp: Timestamp);\n\
         \x20   }}\n\n"
    );

    // Emitters.
    for e in &evs {
        let fname = format!("emit_{}", snake(&e.def.name));
        let mut text = def_doc_text(e.def.doc.as_ref());
        text.push_str("\n\nEmits it to `sink`, timestamped now.");
        doc_comment(&mut out, "    ", &text, "");
        let owner_param = e
            .owner
            .as_ref()
            .map(|o| format!(", owner: &super::types::{}", type_name(o)))
            .unwrap_or_default();
        let (data_params, data_build) = match &e.data {
            None => (String::new(), None),
            Some(d) if e.boxed => (
                format!(", data: super::types::{}", type_name(d)),
                Some("data".to_string()),
            ),
            Some(d) => (
                params(cx, &e.members, d),
                Some(format!(
                    "super::types::{} {{ {} }}",
                    type_name(d),
                    field_inits(&e.members)
                )),
            ),
        };
        let v = &e.variant;
        let value = match (&e.owner, data_build) {
            (None, None) => format!("Event::{v}"),
            (None, Some(b)) => format!("Event::{v}({b})"),
            (Some(_), None) => format!("Event::{v} {{ owner: Some(owner.clone()) }}"),
            (Some(_), Some(b)) => {
                format!("Event::{v} {{ owner: Some(owner.clone()), data: {b} }}")
            }
        };
        let nparams = 1 + usize::from(e.owner.is_some()) + e.members.len();
        if nparams > 7 && !e.boxed {
            out.push_str("    #[allow(clippy::too_many_arguments)]\n");
        }
        let _ = writeln!(
            out,
            "    pub fn {fname}(sink: &dyn EventSink{owner_param}{data_params}) {{\n\
             \x20       sink.emit({value}, Timestamp::now());\n\
             \x20   }}\n"
        );
    }
    out.push_str("}\n\n");
    Ok(out)
}
