// SPDX-License-Identifier: Apache-2.0
//! The vmm QMP interface, generated at build time from the QAPI schema in
//! `resources/qapi/` by [`qapi_gen`](../qapi_gen/index.html).
//!
//! - [`types`]: every schema type, with serde and the wire names of the schema.
//! - [`commands`]: the traits the VMM implements ([`commands::QmpCommands`] for in-band
//!   commands, [`commands::QmpOobCommands`] for `allow-oob` ones, [`commands::QmpHandles`]
//!   to resolve handles), the dispatchers ([`commands::dispatch`],
//!   [`commands::dispatch_oob`]) and per-command metadata ([`commands::COMMANDS`]).
//! - [`events`]: the typed [`events::Event`], the [`events::EventSink`] trait and one
//!   emitter per event or signal.
//! - [`QMP_SCHEMA_JSON`]: the `query-qmp-schema` reply, built at compile time.
//! - [`client`]: the client library (our libqmp): [`client::Connection`] and the typed
//!   [`client::Client`].
//! - [`rt`]: the runtime the generated code uses (errors, validation, event formatting).
//!
//! # For the monitor
//!
//! ```text
//! request {"execute"|"exec-oob": name, "arguments"?: A, "id"?: I}
//!   ├─ commands::command_info(name)      None → QmpError::command_not_found(name)
//!   │    .generated == false             the monitor implements it itself
//!   ├─ exec-oob && info.allow_oob        commands::dispatch_oob(&*oob_server, name, A)
//!   │                                    on the monitor thread, no big lock
//!   ├─ exec-oob && !info.allow_oob       dispatch_oob gives "The command X does not support OOB"
//!   └─ execute                           commands::dispatch(&mut *vm, name, A)  under the big lock
//! result: Ok(v) → {"return": v, "id": I}   (skip when !info.success_response)
//!         Err(e) → {"error": e.to_json(), "id": I}
//! ```
//!
//! Argument errors come back as `GenericError` with QEMU's texts (`Parameter 'x' is missing`,
//! ...). Handles in arguments are resolved through [`commands::QmpHandles`] before the method
//! runs. Events: implement [`events::EventSink`] (called on the emitting thread, must not
//! block) and call the emitters, e.g. `events::emit_stop(&sink)` or, for the signal,
//! `events::emit_block_io_error(&sink, &owner, ...)`; [`events::Event::to_json`] gives the QEMU
//! broadcast message, [`events::Event::to_signal_json`] the explicit-handles form.
//!
//! # Explicit handles and signal connections
//!
//! Every event is a signal: [`events::Event::owner_handle`] names its owner (`Blockdev` for
//! `BLOCK_IO_ERROR`, `("Machine", "/machine")` for plain events, from the schema's
//! `event-owner` pragma); [`events::SIGNALS`] lists each signal's owner type and data
//! descriptor. A session with `explicit-handles` gets handle-typed values in canonical form:
//! pass replies through [`rt::canonicalize_handles`] with [`rt::CommandInfo::returns`], and
//! signal data with [`rt::SignalInfo::data`]. `{"connect": SIGNAL, "owner": H}` names the
//! owner in canonical form ([`rt::parse_canonical_handle`]); emissions to a connection are
//! [`events::Event::to_signal_json`] with its `user_data`. `set-explicit-handles` and
//! `disconnect-default-signals` are `gen: false` capabilities-mode commands.

pub mod client;
pub mod rt;

/// Everything generated from the schema.
#[allow(clippy::large_enum_variant, clippy::too_many_arguments)]
pub mod qmp {
    include!(concat!(env!("OUT_DIR"), "/qmp.rs"));
}

pub use qmp::{commands, descriptors, events, types};

/// The `query-qmp-schema` return value (SchemaInfo array) as compact JSON.
pub const QMP_SCHEMA_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/qmp-schema.json"));

/// The generated QMP reference (the expected content of `docs/qmp-reference.md`).
pub const QMP_REFERENCE_MD: &str = include_str!(concat!(env!("OUT_DIR"), "/qmp-reference.md"));

/// The `query-qmp-schema` value, decoded once into the schema's own `SchemaInfo` type.
pub fn schema_info() -> &'static [types::SchemaInfo] {
    static INFO: std::sync::OnceLock<Vec<types::SchemaInfo>> = std::sync::OnceLock::new();
    INFO.get_or_init(|| {
        serde_json::from_str(QMP_SCHEMA_JSON).expect("generated introspection matches SchemaInfo")
    })
}

/// The `query-commands` value: every command the dispatcher knows, in schema order.
pub fn command_list() -> Vec<types::CommandInfo> {
    commands::COMMANDS
        .iter()
        .map(|c| types::CommandInfo {
            name: c.name.to_string(),
        })
        .collect()
}
