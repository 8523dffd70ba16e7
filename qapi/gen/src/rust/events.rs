// SPDX-License-Identifier: Apache-2.0
//! Typed events and signals: the `Event` enum, the `EventSink` trait, one emitter per
//! event (`emit_stop`, ...) and signal (`emit_block_io_error(sink, owner, ...)`), and
//! `SIGNALS`, the owner and data descriptor of each (plain events are owned by the schema's
//! `event-owner`).

use super::ident::{camel, snake, type_name, Namespace, NamingError};
use super::{def_doc_text, field_inits, params, Cx};
use crate::emit::CodeWriter;
use crate::model::{Definition, Member, TypeRef};
use crate::schema::{Schema, Visitor};

/// An event or signal, with what its variant, methods and emitter need.
struct Ev<'a> {
    def: &'a Definition,
    variant: String,
    data: Option<String>,
    members: Vec<Member>,
    boxed: bool,
    owner: Option<String>,
}

/// The `events` module as a schema visitor: events and signals are collected as they are
/// visited, and the `Event` enum, its methods, the sink trait and the emitters written at the
/// end.
pub(super) struct EventsGen<'a, 's> {
    cx: &'a Cx<'s>,
    w: &'a mut CodeWriter,
    /// The `Event` variant names claimed so far.
    ns: Namespace,
    /// The events and signals, in schema order.
    evs: Vec<Ev<'s>>,
}

impl<'a, 's> EventsGen<'a, 's> {
    /// A visitor writing to `w`.
    pub(super) fn new(cx: &'a Cx<'s>, w: &'a mut CodeWriter) -> Self {
        EventsGen {
            cx,
            w,
            ns: Namespace::new("event variant"),
            evs: Vec::new(),
        }
    }

    /// Records an event, or a signal when it has an `owner`.
    fn add(
        &mut self,
        def: &'s Definition,
        owner: Option<&str>,
        data: Option<&str>,
        boxed: bool,
    ) -> Result<(), NamingError> {
        let variant = camel(&def.name);
        self.ns.claim(&def.name, &variant)?;
        self.evs.push(Ev {
            def,
            variant,
            data: data.map(str::to_string),
            members: self.cx.arg_members(data),
            boxed,
            owner: owner.map(str::to_string),
        });
        Ok(())
    }
}

impl<'s> Visitor<'s, NamingError> for EventsGen<'_, 's> {
    fn visit_begin(&mut self, _schema: &'s Schema) -> Result<(), NamingError> {
        self.ns.claim("(unknown events)", "Other")
    }

    fn visit_event(
        &mut self,
        def: &'s Definition,
        data: Option<&'s str>,
        boxed: bool,
    ) -> Result<(), NamingError> {
        self.add(def, None, data, boxed)
    }

    fn visit_signal(
        &mut self,
        def: &'s Definition,
        owner: &'s str,
        data: Option<&'s str>,
        boxed: bool,
    ) -> Result<(), NamingError> {
        self.add(def, Some(owner), data, boxed)
    }

    fn visit_end(&mut self) -> Result<(), NamingError> {
        let (cx, evs) = (self.cx, &self.evs);
        let w = &mut *self.w;
        w.line(
            "/// Events and signals: the typed `Event`, the sink that delivers them, and emitters.",
        );
        w.block("pub mod events {", "}", |w| {
            w.line("use crate::rt::Timestamp;");
            w.blank();
            signal_table(cx, w, evs);
            w.blank();
            event_enum(w, evs);
            w.blank();
            event_impl(cx, w, evs);
            w.blank();
            w.code(
                "
                /// Where emitted events go (the monitor's broadcast, in-process slots, a test log).
                /// Called on the thread where the fact is known; implementations must not block.
                pub trait EventSink: Send + Sync {
                    /// Delivers one event with the time it happened.
                    fn emit(&self, event: Event, timestamp: Timestamp);
                }
                ",
            );
            w.blank();
            for e in evs {
                emitter(cx, w, e);
                w.blank();
            }
        });
        w.blank();
        Ok(())
    }
}

/// `SIGNALS`, every event and signal with its owner handle type and data descriptor, and its
/// lookup `signal_info`.
fn signal_table(cx: &Cx<'_>, w: &mut CodeWriter, evs: &[Ev<'_>]) {
    w.line("/// Every event and signal of the schema, in schema order, with its owner handle type");
    w.line("/// (plain events are owned by the schema's `event-owner`) and data descriptor.");
    w.block("pub static SIGNALS: &[crate::rt::SignalInfo] = &[", "];", |w| {
        for e in evs {
            let (owner, fixed) = match (&e.owner, &cx.schema.event_owner) {
                (Some(o), _) => (o.clone(), "None".to_string()),
                (None, Some(eo)) => (eo.handle.clone(), format!("Some({:?})", eo.data)),
                // The schema check requires `event-owner` when there are plain events.
                (None, None) => (String::new(), "None".to_string()),
            };
            let data = match &e.data {
                Some(d) => format!(
                    "Some(&super::descriptors::{})",
                    cx.desc_ident(&TypeRef::Named(d.clone()))
                ),
                None => "None".to_string(),
            };
            w.line(format!(
                "crate::rt::SignalInfo {{ name: \"{}\", owner: \"{owner}\", fixed_owner: {fixed}, data: {data} }},",
                e.def.name
            ));
        }
    });
    w.blank();
    w.code(
        "
        /// The metadata of event or signal `name`, if the schema has it.
        pub fn signal_info(name: &str) -> Option<&'static crate::rt::SignalInfo> {
            SIGNALS.iter().find(|s| s.name == name)
        }
        ",
    );
}

/// `owner_handle`: the owner handle type and carrier value of every event.
fn owner_handle(cx: &Cx<'_>, w: &mut CodeWriter, evs: &[Ev<'_>]) {
    w.line(
        "/// The owner of the event as (handle type name, plain carrier value): the object of a",
    );
    w.line("/// signal (`null` when it was received without one), the schema's `event-owner`");
    w.line(
        "/// for plain and unknown events (e.g. `(\"Machine\", \"/machine\")`). Route an event to",
    );
    w.line("/// the connections of `(name(), owner)` with it.");
    w.block(
        "pub fn owner_handle(&self) -> (&'static str, serde_json::Value) {",
        "}",
        |w| {
            let fixed = match &cx.schema.event_owner {
                Some(eo) => format!("(\"{}\", serde_json::json!({:?}))", eo.handle, eo.data),
                None => "(\"\", serde_json::Value::Null)".to_string(),
            };
            w.block("match self {", "}", |w| {
                for e in evs {
                    match &e.owner {
                        Some(o) => w.line(format!(
                            "Event::{} {{ owner, .. }} => (\"{o}\", owner.as_ref().map_or(serde_json::Value::Null, |o| serde_json::json!(o.0))),",
                            e.variant
                        )),
                        None => w.line(format!("{} => {fixed},", pattern(e))),
                    }
                }
                w.line(format!("Event::Other {{ .. }} => {fixed},"));
            })
        },
    );
}

/// The `Event` enum: one variant per event and signal, and `Other`.
fn event_enum(w: &mut CodeWriter, evs: &[Ev<'_>]) {
    w.line("/// Every event and signal of the schema, with its data. Signals carry their owner.");
    w.line("#[derive(Debug, Clone, PartialEq)]");
    w.block("pub enum Event {", "}", |w| {
        for e in evs {
            w.doc(
                &def_doc_text(e.def.doc.as_ref()),
                &format!("Event `{}`.", e.def.name),
            );
            let data_t = e
                .data
                .as_ref()
                .map(|d| format!("super::types::{}", type_name(d)));
            match (&e.owner, data_t) {
                (None, None) => w.line(format!("{},", e.variant)),
                (None, Some(t)) => w.line(format!("{}({t}),", e.variant)),
                (Some(o), data) => w.block(format!("{} {{", e.variant), "},", |w| {
                    w.line(
                        "/// The object that raised the signal (`None` when a client received the",
                    );
                    w.line("/// QEMU-compatible broadcast form, which does not name it).");
                    w.line(format!("owner: Option<super::types::{}>,", type_name(o)));
                    if let Some(t) = data {
                        w.line("/// The signal's data.");
                        w.line(format!("data: {t},"));
                    }
                }),
            }
        }
        w.code(
            "
            /// An event this schema does not know (from a newer server).
            Other {
                /// Its name.
                name: String,
                /// Its data, if any.
                data: Option<serde_json::Value>,
            },
            ",
        );
    });
}

/// The pattern matching event `e` without binding anything.
fn pattern(e: &Ev<'_>) -> String {
    let v = &e.variant;
    match (&e.owner, e.data.is_some()) {
        (None, false) => format!("Event::{v}"),
        (None, true) => format!("Event::{v}(_)"),
        (Some(_), _) => format!("Event::{v} {{ .. }}"),
    }
}

/// `impl Event`: wire name, data and owner as JSON, the wire messages, and decoding.
fn event_impl(cx: &Cx<'_>, w: &mut CodeWriter, evs: &[Ev<'_>]) {
    w.block("impl Event {", "}", |w| {
        w.line("/// The wire name of the event or signal.");
        w.block("pub fn name(&self) -> &str {", "}", |w| {
            w.block("match self {", "}", |w| {
                for e in evs {
                    w.line(format!("{} => \"{}\",", pattern(e), e.def.name));
                }
                w.line("Event::Other { name, .. } => name,");
            })
        });
        w.blank();
        w.line("/// The `data` member as JSON (`None` when the event has no members).");
        w.block(
            "pub fn data_json(&self) -> Option<serde_json::Value> {",
            "}",
            |w| {
                w.block("match self {", "}", |w| {
                    for e in evs {
                        data_arm(w, e);
                    }
                    w.line("Event::Other { data, .. } => data.clone(),");
                })
            },
        );
        w.blank();
        owner_handle(cx, w, evs);
        w.blank();
        w.code(
            "
            /// The owner in canonical handle form (see [`Event::owner_handle`]); `None` for a
            /// signal received without its owner.
            pub fn owner_json(&self) -> Option<serde_json::Value> {
                match self.owner_handle() {
                    (_, serde_json::Value::Null) => None,
                    (name, data) => Some(crate::rt::canonical_handle(name, &data)),
                }
            }

            /// The metadata of this event's signal (`None` for [`Event::Other`]).
            pub fn signal_info(&self) -> Option<&'static crate::rt::SignalInfo> {
                signal_info(self.name())
            }
            ",
        );
        w.blank();
        wire_messages(w);
        w.blank();
        from_wire(w, evs);
    });
}

/// The arm of `data_json` for event `e`.
fn data_arm(w: &mut CodeWriter, e: &Ev<'_>) {
    let v = &e.variant;
    let (pat, expr) = match (&e.owner, e.data.is_some()) {
        (None, true) => (format!("Event::{v}(data)"), SOME_DATA),
        (Some(_), true) => (format!("Event::{v} {{ data, .. }}"), SOME_DATA),
        _ => (pattern(e), "None"),
    };
    w.line(format!("{pat} => {expr},"));
}

/// `data_json`'s value for an event with data.
const SOME_DATA: &str = "Some(serde_json::to_value(data).expect(\"event data serializes\"))";

/// `to_json` and `to_signal_json`.
fn wire_messages(w: &mut CodeWriter) {
    w.code(
        r#"
        /// The QEMU wire message `{"event", "data", "timestamp"}` (no `data` when empty).
        pub fn to_json(&self, timestamp: Timestamp) -> serde_json::Value {
            crate::rt::event_json(self.name(), self.data_json(), timestamp)
        }

        /// The signal message `{"signal", "owner", "user_data", "data", "timestamp"}` sent to
        /// an explicit connection; every event has one (plain events are owned by the
        /// `event-owner`). A signal received without its owner gives [`Event::to_json`].
        /// `data` is as [`Event::data_json`]; an explicit-handles session also passes it
        /// through [`crate::rt::canonicalize_handles`] with [`SignalInfo::data`](crate::rt::SignalInfo).
        pub fn to_signal_json(
            &self,
            user_data: Option<&serde_json::Value>,
            timestamp: Timestamp,
        ) -> serde_json::Value {
            match self.owner_json() {
                Some(owner) => crate::rt::signal_json(self.name(), owner, user_data, self.data_json(), timestamp),
                None => self.to_json(timestamp),
            }
        }
        "#,
    );
}

/// `from_wire`, which decodes an event from its name, data and owner.
fn from_wire(w: &mut CodeWriter, evs: &[Ev<'_>]) {
    w.code(
        r#"
        /// Decodes an event from its wire parts; `owner` is the canonical handle of a
        /// signal message, absent for broadcast events. Unknown names give [`Event::Other`].
        pub fn from_wire(
            name: &str,
            data: Option<serde_json::Value>,
            owner: Option<serde_json::Value>,
        ) -> Result<Event, serde_json::Error> {
            #[allow(dead_code)]
            fn decode<T: serde::de::DeserializeOwned>(data: Option<serde_json::Value>) -> Result<T, serde_json::Error> {
                serde_json::from_value(data.unwrap_or_else(|| serde_json::json!({})))
            }
            #[allow(dead_code)]
            fn decode_owner<T: serde::de::DeserializeOwned>(owner: Option<serde_json::Value>) -> Result<Option<T>, serde_json::Error> {
                // Handles decode from the plain and the canonical form.
                owner.map(serde_json::from_value).transpose()
            }
            let _ = &owner;
            Ok(match name {
        "#,
    );
    w.indent();
    // The known names' arms sit at the level of `Ok(match name {`, as they always have; the
    // output is kept byte for byte.
    for e in evs {
        let v = &e.variant;
        let build = match (&e.owner, e.data.is_some()) {
            (None, false) => format!("Event::{v}"),
            (None, true) => format!("Event::{v}(decode(data)?)"),
            (Some(_), false) => format!("Event::{v} {{ owner: decode_owner(owner)? }}"),
            (Some(_), true) => {
                format!("Event::{v} {{ owner: decode_owner(owner)?, data: decode(data)? }}")
            }
        };
        w.line(format!("\"{}\" => {build},", e.def.name));
    }
    w.indent();
    w.line("_ => Event::Other { name: name.to_string(), data },");
    w.dedent();
    w.line("})");
    w.dedent();
    w.line("}");
}

/// The emitter function of event `e`.
fn emitter(cx: &Cx<'_>, w: &mut CodeWriter, e: &Ev<'_>) {
    let mut text = def_doc_text(e.def.doc.as_ref());
    text.push_str("\n\nEmits it to `sink`, timestamped now.");
    w.doc(&text, "");
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
        (Some(_), Some(b)) => format!("Event::{v} {{ owner: Some(owner.clone()), data: {b} }}"),
    };
    let nparams = 1 + usize::from(e.owner.is_some()) + e.members.len();
    if nparams > 7 && !e.boxed {
        w.line("#[allow(clippy::too_many_arguments)]");
    }
    w.block(
        format!(
            "pub fn emit_{}(sink: &dyn EventSink{owner_param}{data_params}) {{",
            snake(&e.def.name)
        ),
        "}",
        |w| w.line(format!("sink.emit({value}, Timestamp::now());")),
    );
}
