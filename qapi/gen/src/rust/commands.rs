// SPDX-License-Identifier: Apache-2.0
//! The command traits (`QmpOobCommands`, `QmpCommands`), the handle resolver trait
//! (`QmpHandles`), per-command metadata and the dispatchers.

use std::fmt::Write as _;

use super::ident::{snake, type_name, Namespace, NamingError};
use super::{def_doc_text, field_inits, member_doc, params, sanitize, Cx};
use crate::emit::CodeWriter;
use crate::model::{Definition, Member, TypeRef};
use crate::schema::{CommandFlags, Visitor};

/// A command, with what its trait method and dispatcher arm need.
struct Cmd<'a> {
    def: &'a Definition,
    method: String,
    members: Vec<Member>,
    arg_type: Option<String>,
    returns: Option<TypeRef>,
    boxed: bool,
    allow_oob: bool,
    success_response: bool,
    gen: bool,
    allow_preconfig: bool,
}

/// The `commands` module as a schema visitor: commands and handles are collected as they
/// are visited, and the traits, tables and dispatchers written at the end.
pub(super) struct CommandsGen<'a, 's> {
    cx: &'a Cx<'s>,
    w: &'a mut CodeWriter,
    /// The method names claimed so far.
    ns: Namespace,
    /// The commands, in schema order.
    cmds: Vec<Cmd<'s>>,
    /// The handle types, in schema order.
    handles: Vec<&'s Definition>,
}

impl<'a, 's> CommandsGen<'a, 's> {
    /// A visitor writing to `w`.
    pub(super) fn new(cx: &'a Cx<'s>, w: &'a mut CodeWriter) -> Self {
        CommandsGen {
            cx,
            w,
            ns: Namespace::new("method"),
            cmds: Vec::new(),
            handles: Vec::new(),
        }
    }
}

impl<'s> Visitor<'s, NamingError> for CommandsGen<'_, 's> {
    fn visit_command(
        &mut self,
        def: &'s Definition,
        data: Option<&'s str>,
        returns: Option<&'s TypeRef>,
        flags: CommandFlags,
    ) -> Result<(), NamingError> {
        let method = snake(&def.name);
        self.ns.claim(&def.name, &method)?;
        self.cmds.push(Cmd {
            def,
            method,
            members: self.cx.arg_members(data),
            arg_type: data.map(str::to_string),
            returns: returns.cloned(),
            boxed: flags.boxed,
            allow_oob: flags.allow_oob,
            success_response: flags.success_response,
            gen: flags.gen,
            allow_preconfig: flags.allow_preconfig,
        });
        Ok(())
    }

    fn visit_handle(&mut self, def: &'s Definition, _data: &'s str) -> Result<(), NamingError> {
        self.handles.push(def);
        Ok(())
    }

    fn visit_end(&mut self) -> Result<(), NamingError> {
        let (cx, cmds, handles) = (self.cx, &self.cmds, &self.handles);
        let w = &mut *self.w;
        w.line("/// Commands: traits the server implements, metadata, and the dispatchers.");
        w.block("pub mod commands {", "}", |w| {
            w.line("use crate::rt::QmpError;");
            w.blank();
            handles_trait(cx, w, handles);
            w.blank();
            command_traits(cx, w, cmds);
            w.blank();
            command_table(cx, w, cmds);
            w.blank();
            resolve_handle(w, handles);
            w.blank();
            dispatch(w, cmds);
            w.blank();
            dispatch_oob(w, cmds);
        });
        w.blank();
        Ok(())
    }
}

/// The trait method signature of command `c`, with the given receiver.
fn signature(cx: &Cx<'_>, c: &Cmd<'_>, receiver: &str) -> String {
    let ret = match &c.returns {
        Some(r) => cx.rust_type(r),
        None => "()".to_string(),
    };
    let args = match (&c.arg_type, c.boxed) {
        (Some(t), true) => format!(", arguments: super::types::{}", type_name(t)),
        (Some(t), false) => params(cx, &c.members, t),
        (None, _) => String::new(),
    };
    format!(
        "fn {}({receiver}{args}) -> Result<{ret}, crate::rt::QmpError>",
        c.method
    )
}

/// The doc comment of a command's trait method: its documentation and its parameters.
fn method_doc(w: &mut CodeWriter, c: &Cmd<'_>) {
    let mut text = def_doc_text(c.def.doc.as_ref());
    if !c.boxed {
        for m in &c.members {
            let d = member_doc(c.def.doc.as_ref(), &m.name);
            let _ = write!(
                text,
                "\n\n- `{}`{}: {}",
                snake(&m.name).trim_start_matches("r#"),
                if m.optional { " (optional)" } else { "" },
                if d.is_empty() {
                    "not documented".to_string()
                } else {
                    d.replace('\n', " ")
                }
            );
        }
    }
    w.doc(&text, &format!("Command `{}`.", c.def.name));
}

/// The handle resolver trait, one method per handle type. The `event-owner` handle gets a
/// default method accepting exactly the owner value.
fn handles_trait(cx: &Cx<'_>, w: &mut CodeWriter, handles: &[&Definition]) {
    w.line("/// Server-side validation of handles: every handle a client sends is resolved before");
    w.line("/// the command runs, so commands only ever see objects that exist.");
    w.block("pub trait QmpHandles {", "}", |w| {
        for h in handles {
            let sig = format!(
                "fn resolve_{}(&self, handle: &super::types::{}) -> Result<(), QmpError>",
                snake(&h.name),
                type_name(&h.name)
            );
            match cx.schema.event_owner.as_ref().filter(|eo| eo.handle == h.name) {
                Some(eo) => {
                    w.line(format!(
                        "/// Checks that the `{}` named by `handle` exists. By default only {:?}",
                        h.name, eo.data
                    ));
                    w.line("/// (the owner of plain events) does; others give `DeviceNotFound`.");
                    w.block(format!("{sig} {{"), "}", |w| {
                        w.line(format!("if handle.0 == {:?} {{", eo.data));
                        w.line("    Ok(())");
                        w.line("} else {");
                        w.line("    Err(QmpError::device_not_found(&handle.0))");
                        w.line("}");
                    });
                }
                None => {
                    w.line(format!(
                        "/// Checks that the `{}` named by `handle` exists. Return an error such as",
                        h.name
                    ));
                    w.line("/// [`QmpError::device_not_found`] when it does not.");
                    w.line(format!("{sig};"));
                }
            }
        }
    });
}

/// The out-of-band and in-band command traits.
fn command_traits(cx: &Cx<'_>, w: &mut CodeWriter, cmds: &[Cmd<'_>]) {
    w.line("/// Commands that allow out-of-band execution (`allow-oob`). They run on the monitor");
    w.line("/// thread, without the big lock, so they take `&self` and must not block.");
    w.block(
        "pub trait QmpOobCommands: QmpHandles + Send + Sync {",
        "}",
        |w| {
            for c in cmds.iter().filter(|c| c.gen && c.allow_oob) {
                method_doc(w, c);
                w.line(format!("{};", signature(cx, c, "&self")));
            }
        },
    );
    w.blank();
    w.line("/// In-band commands, run one at a time by the main loop under the big lock.");
    w.line("#[allow(clippy::too_many_arguments)]");
    w.block("pub trait QmpCommands: QmpOobCommands {", "}", |w| {
        for c in cmds.iter().filter(|c| c.gen && !c.allow_oob) {
            method_doc(w, c);
            w.line(format!("{};", signature(cx, c, "&mut self")));
        }
    });
}

/// `COMMANDS`, the metadata of every command, and its lookup `command_info`.
fn command_table(cx: &Cx<'_>, w: &mut CodeWriter, cmds: &[Cmd<'_>]) {
    w.line("/// Every command of the schema, in schema order.");
    w.block("pub static COMMANDS: &[crate::rt::CommandInfo] = &[", "];", |w| {
        for c in cmds {
            let features = c
                .def
                .features
                .iter()
                .map(|f| format!("\"{}\"", f.name))
                .collect::<Vec<_>>()
                .join(", ");
            let returns = match &c.returns {
                Some(r) => format!("Some(&super::descriptors::{})", cx.desc_ident(r)),
                None => "None".to_string(),
            };
            w.line(format!(
                "crate::rt::CommandInfo {{ name: \"{}\", allow_oob: {}, success_response: {}, allow_preconfig: {}, generated: {}, features: &[{features}], returns: {returns} }},",
                c.def.name, c.allow_oob, c.success_response, c.allow_preconfig, c.gen
            ));
        }
    });
    w.blank();
    w.code(
        "
        /// The metadata of command `name`, if the schema has it.
        pub fn command_info(name: &str) -> Option<&'static crate::rt::CommandInfo> {
            COMMANDS.iter().find(|c| c.name == name)
        }
        ",
    );
}

/// `resolve_handle`, which dispatches a handle value to its resolver method.
fn resolve_handle(w: &mut CodeWriter, handles: &[&Definition]) {
    w.code(
        "
        /// Resolves a handle value of schema type `type_name` through `resolver`.
        pub fn resolve_handle<H: QmpHandles + ?Sized>(
            resolver: &H,
            type_name: &str,
            value: &serde_json::Value,
        ) -> Result<(), QmpError> {
        ",
    );
    w.indent();
    w.block("match type_name {", "}", |w| {
        for h in handles {
            w.block(format!("\"{}\" => {{", h.name), "}", |w| {
                w.line(format!(
                    "let handle: super::types::{} = serde_json::from_value(value.clone())",
                    type_name(&h.name)
                ));
                w.line("    .map_err(|e| QmpError::generic(format!(\"Invalid handle: {e}\")))?;");
                w.line(format!("resolver.resolve_{}(&handle)", snake(&h.name)));
            });
        }
        w.line("_ => Err(QmpError::generic(format!(\"Unknown handle type '{type_name}'\"))),");
    });
    w.dedent();
    w.line("}");
}

/// The in-band dispatcher.
fn dispatch(w: &mut CodeWriter, cmds: &[Cmd<'_>]) {
    w.code(
        "
        /// Runs command `name` in-band: checks `arguments` with QEMU's error texts, resolves
        /// handles, calls the method and serializes its return value (`{}` for none).
        /// Unknown commands give `CommandNotFound`; commands with `gen: false` must be
        /// handled by the caller and are reported as not found here.
        pub fn dispatch<C: QmpCommands + ?Sized>(
            server: &mut C,
            name: &str,
            arguments: Option<serde_json::Value>,
        ) -> Result<serde_json::Value, QmpError> {
        ",
    );
    w.indent();
    w.block("match name {", "}", |w| {
        for c in cmds.iter().filter(|c| c.gen) {
            dispatch_arm(w, c, "server");
        }
        w.line("_ => Err(QmpError::command_not_found(name)),");
    });
    w.dedent();
    w.line("}");
}

/// The out-of-band dispatcher.
fn dispatch_oob(w: &mut CodeWriter, cmds: &[Cmd<'_>]) {
    w.code(
        "
        /// Runs command `name` out-of-band (`exec-oob`). Only `allow-oob` commands are
        /// accepted; others get QEMU's `The command X does not support OOB`.
        pub fn dispatch_oob<C: QmpOobCommands + ?Sized>(
            server: &C,
            name: &str,
            arguments: Option<serde_json::Value>,
        ) -> Result<serde_json::Value, QmpError> {
        ",
    );
    w.indent();
    if !cmds.iter().any(|c| c.gen && c.allow_oob) {
        w.line("// No command allows out-of-band execution.");
        w.line("let _ = (server, &arguments);");
    }
    w.block("match name {", "}", |w| {
        for c in cmds.iter().filter(|c| c.gen && c.allow_oob) {
            dispatch_arm(w, c, "server");
        }
        w.code(
            r#"
            _ if command_info(name).is_some() => Err(QmpError::generic(format!(
                "The command {name} does not support OOB"
            ))),
            _ => Err(QmpError::command_not_found(name)),
            "#,
        );
    });
    w.dedent();
    w.line("}");
}

/// One dispatcher arm: check and decode the arguments, call the method, encode the return.
fn dispatch_arm(w: &mut CodeWriter, c: &Cmd<'_>, recv: &str) {
    let desc = match &c.arg_type {
        Some(t) => format!("super::descriptors::D_{}", sanitize(t)),
        None => "super::descriptors::D_q_empty".to_string(),
    };
    w.block(format!("\"{}\" => {{", c.def.name), "}", |w| {
        w.line(format!(
            "let arguments = crate::rt::check_arguments(&{desc}, arguments, &|t, v| resolve_handle(&*{recv}, t, v))?;"
        ));
        match (&c.arg_type, c.boxed) {
            (Some(t), true) => {
                w.line(format!(
                    "let arguments: super::types::{} = crate::rt::decode_arguments(arguments)?;",
                    type_name(t)
                ));
                w.line(format!("{recv}.{}(arguments)", c.method));
            }
            (Some(t), false) => {
                let fields: String = c
                    .members
                    .iter()
                    .map(|m| format!("{}, ", snake(&m.name)))
                    .collect();
                w.line(format!(
                    "let super::types::{} {{ {} }} = crate::rt::decode_arguments(arguments)?;",
                    type_name(t),
                    field_inits(&c.members)
                ));
                w.line(format!("{recv}.{}({fields})", c.method));
            }
            (None, _) => {
                w.line("let _ = arguments;");
                w.line(format!("{recv}.{}()", c.method));
            }
        }
        w.line("    .and_then(crate::rt::encode_return)");
    });
}
