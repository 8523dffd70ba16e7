// SPDX-License-Identifier: Apache-2.0
//! The command traits (`QmpOobCommands`, `QmpCommands`), the handle resolver trait
//! (`QmpHandles`), per-command metadata and the dispatchers.

use std::fmt::Write as _;

use super::ident::{snake, type_name, Namespace, NamingError};
use super::{def_doc_text, doc_comment, field_inits, member_doc, params, sanitize, Cx};
use crate::model::{DefKind, Definition, Member, TypeRef};

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

fn commands<'a>(cx: &Cx<'a>) -> Result<Vec<Cmd<'a>>, NamingError> {
    let mut ns = Namespace::new("method");
    let mut out = Vec::new();
    for def in cx.defs() {
        if let DefKind::Command {
            data,
            returns,
            boxed,
            allow_oob,
            success_response,
            gen,
            allow_preconfig,
        } = &def.kind
        {
            let method = snake(&def.name);
            ns.claim(&def.name, &method)?;
            out.push(Cmd {
                def,
                method,
                members: cx.arg_members(data.as_deref()),
                arg_type: data.clone(),
                returns: returns.clone(),
                boxed: *boxed,
                allow_oob: *allow_oob,
                success_response: *success_response,
                gen: *gen,
                allow_preconfig: *allow_preconfig,
            });
        }
    }
    Ok(out)
}

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

fn method_doc(out: &mut String, c: &Cmd<'_>) {
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
    doc_comment(
        out,
        "        ",
        &text,
        &format!("Command `{}`.", c.def.name),
    );
}

pub(super) fn generate(cx: &Cx<'_>) -> Result<String, NamingError> {
    let cmds = commands(cx)?;
    let mut out = String::new();
    out.push_str(
        "/// Commands: traits the server implements, metadata, and the dispatchers.\n\
         pub mod commands {\n\
         \x20   use crate::rt::QmpError;\n\n",
    );

    // Handle resolver.
    out.push_str(
        "    /// Server-side validation of handles: every handle a client sends is resolved before\n\
         \x20   /// the command runs, so commands only ever see objects that exist.\n\
         \x20   pub trait QmpHandles {\n",
    );
    for h in cx.handles() {
        let t = type_name(&h.name);
        let _ = writeln!(
            out,
            "        /// Checks that the `{}` named by `handle` exists. Return an error such as\n\
             \x20       /// [`QmpError::device_not_found`] when it does not.\n\
             \x20       fn resolve_{}(&self, handle: &super::types::{t}) -> Result<(), QmpError>;",
            h.name,
            snake(&h.name)
        );
    }
    out.push_str("    }\n\n");

    // OOB trait.
    out.push_str(
        "    /// Commands that allow out-of-band execution (`allow-oob`). They run on the monitor\n\
         \x20   /// thread, without the big lock, so they take `&self` and must not block.\n\
         \x20   pub trait QmpOobCommands: QmpHandles + Send + Sync {\n",
    );
    for c in cmds.iter().filter(|c| c.gen && c.allow_oob) {
        method_doc(&mut out, c);
        let _ = writeln!(out, "        {};", signature(cx, c, "&self"));
    }
    out.push_str("    }\n\n");

    // In-band trait.
    out.push_str(
        "    /// In-band commands, run one at a time by the main loop under the big lock.\n\
         \x20   #[allow(clippy::too_many_arguments)]\n\
         \x20   pub trait QmpCommands: QmpOobCommands {\n",
    );
    for c in cmds.iter().filter(|c| c.gen && !c.allow_oob) {
        method_doc(&mut out, c);
        let _ = writeln!(out, "        {};", signature(cx, c, "&mut self"));
    }
    out.push_str("    }\n\n");

    // Metadata.
    out.push_str("    /// Every command of the schema, in schema order.\n    pub static COMMANDS: &[crate::rt::CommandInfo] = &[\n");
    for c in &cmds {
        let features = c
            .def
            .features
            .iter()
            .map(|f| format!("\"{}\"", f.name))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "        crate::rt::CommandInfo {{ name: \"{}\", allow_oob: {}, success_response: {}, allow_preconfig: {}, generated: {}, features: &[{features}] }},",
            c.def.name, c.allow_oob, c.success_response, c.allow_preconfig, c.gen
        );
    }
    out.push_str(
        "    ];\n\n\
         \x20   /// The metadata of command `name`, if the schema has it.\n\
         \x20   pub fn command_info(name: &str) -> Option<&'static crate::rt::CommandInfo> {\n\
         \x20       COMMANDS.iter().find(|c| c.name == name)\n\
         \x20   }\n\n",
    );

    // Handle resolution dispatch.
    out.push_str(
        "    /// Resolves a handle value of schema type `type_name` through `resolver`.\n\
         \x20   pub fn resolve_handle<H: QmpHandles + ?Sized>(\n\
         \x20       resolver: &H,\n\
         \x20       type_name: &str,\n\
         \x20       value: &serde_json::Value,\n\
         \x20   ) -> Result<(), QmpError> {\n\
         \x20       match type_name {\n",
    );
    for h in cx.handles() {
        let _ = writeln!(
            out,
            "            \"{}\" => {{\n\
             \x20               let handle: super::types::{} = serde_json::from_value(value.clone())\n\
             \x20                   .map_err(|e| QmpError::generic(format!(\"Invalid handle: {{e}}\")))?;\n\
             \x20               resolver.resolve_{}(&handle)\n\
             \x20           }}",
            h.name,
            type_name(&h.name),
            snake(&h.name)
        );
    }
    out.push_str(
        "            _ => Err(QmpError::generic(format!(\"Unknown handle type '{type_name}'\"))),\n\
         \x20       }\n\
         \x20   }\n\n",
    );

    // Dispatchers.
    let arm = |c: &Cmd<'_>, recv: &str| -> String {
        let mut s = String::new();
        let desc = match &c.arg_type {
            Some(t) => format!("super::descriptors::D_{}", sanitize(t)),
            None => "super::descriptors::D_q_empty".to_string(),
        };
        let _ = writeln!(
            s,
            "            \"{}\" => {{\n\
             \x20               let arguments = crate::rt::check_arguments(&{desc}, arguments, &|t, v| resolve_handle(&*{recv}, t, v))?;",
            c.def.name
        );
        let call = match (&c.arg_type, c.boxed) {
            (Some(t), true) => format!(
                "let arguments: super::types::{} = crate::rt::decode_arguments(arguments)?;\n\
                 \x20               {recv}.{}(arguments)",
                type_name(t),
                c.method
            ),
            (Some(t), false) => {
                let inits = field_inits(&c.members);
                let fields: String = c
                    .members
                    .iter()
                    .map(|m| format!("{}, ", snake(&m.name)))
                    .collect();
                format!(
                    "let super::types::{} {{ {inits} }} = crate::rt::decode_arguments(arguments)?;\n\
                     \x20               {recv}.{}({fields})",
                    type_name(t),
                    c.method
                )
            }
            (None, _) => format!("let _ = arguments;\n                {recv}.{}()", c.method),
        };
        let _ = writeln!(
            s,
            "                {call}\n                    .and_then(crate::rt::encode_return)"
        );
        s.push_str("            }\n");
        s
    };

    out.push_str(
        "    /// Runs command `name` in-band: checks `arguments` with QEMU's error texts, resolves\n\
         \x20   /// handles, calls the method and serializes its return value (`{}` for none).\n\
         \x20   /// Unknown commands give `CommandNotFound`; commands with `gen: false` must be\n\
         \x20   /// handled by the caller and are reported as not found here.\n\
         \x20   pub fn dispatch<C: QmpCommands + ?Sized>(\n\
         \x20       server: &mut C,\n\
         \x20       name: &str,\n\
         \x20       arguments: Option<serde_json::Value>,\n\
         \x20   ) -> Result<serde_json::Value, QmpError> {\n\
         \x20       match name {\n",
    );
    for c in cmds.iter().filter(|c| c.gen) {
        out.push_str(&arm(c, "server"));
    }
    out.push_str(
        "            _ => Err(QmpError::command_not_found(name)),\n\
         \x20       }\n\
         \x20   }\n\n\
         \x20   /// Runs command `name` out-of-band (`exec-oob`). Only `allow-oob` commands are\n\
         \x20   /// accepted; others get QEMU's `The command X does not support OOB`.\n\
         \x20   pub fn dispatch_oob<C: QmpOobCommands + ?Sized>(\n\
         \x20       server: &C,\n\
         \x20       name: &str,\n\
         \x20       arguments: Option<serde_json::Value>,\n\
         \x20   ) -> Result<serde_json::Value, QmpError> {\n",
    );
    if !cmds.iter().any(|c| c.gen && c.allow_oob) {
        out.push_str("        // No command allows out-of-band execution.\n        let _ = (server, &arguments);\n");
    }
    out.push_str("        match name {\n");
    for c in cmds.iter().filter(|c| c.gen && c.allow_oob) {
        out.push_str(&arm(c, "server"));
    }
    out.push_str(
        "            _ if command_info(name).is_some() => Err(QmpError::generic(format!(\n\
         \x20               \"The command {name} does not support OOB\"\n\
         \x20           ))),\n\
         \x20           _ => Err(QmpError::command_not_found(name)),\n\
         \x20       }\n\
         \x20   }\n\
         }\n\n",
    );
    Ok(out)
}
