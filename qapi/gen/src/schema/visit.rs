// SPDX-License-Identifier: Apache-2.0
//! The walk over a checked schema that every backend is written against, in the spirit of
//! QEMU's `QAPISchemaVisitor`: [`Schema::visit`] calls one [`Visitor`] method per definition,
//! in definition order (implicit types included), with free documentation blocks where they
//! stand between definitions.

use std::convert::Infallible;

use super::Schema;
use crate::doc::Doc;
use crate::model::{Branch, DefKind, Definition, EnumValue, Member, TypeRef};

/// The flags of a command, as [`Visitor::visit_command`] receives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandFlags {
    /// Arguments passed as one struct.
    pub boxed: bool,
    /// Can run out-of-band.
    pub allow_oob: bool,
    /// `false` for commands that send no reply.
    pub success_response: bool,
    /// `false` to not generate the marshaller (the monitor handles the command itself).
    pub gen: bool,
    /// Can run before machine initialization.
    pub allow_preconfig: bool,
}

/// A backend's view of the schema: one method per metatype, each doing nothing by default.
/// `'s` is the lifetime of the schema, so a visitor may keep what it is shown; `E` is the
/// error a visitor may stop the walk with.
pub trait Visitor<'s, E = Infallible> {
    /// Called once before any definition.
    fn visit_begin(&mut self, _schema: &'s Schema) -> Result<(), E> {
        Ok(())
    }

    /// Called once after every definition and documentation block.
    fn visit_end(&mut self) -> Result<(), E> {
        Ok(())
    }

    /// A free-form documentation block (one not attached to a definition).
    fn visit_free_doc(&mut self, _doc: &'s Doc) -> Result<(), E> {
        Ok(())
    }

    /// An `enum`.
    fn visit_enum(&mut self, _def: &'s Definition, _values: &'s [EnumValue]) -> Result<(), E> {
        Ok(())
    }

    /// A `struct`, including the implicit argument, base and empty types.
    fn visit_object(
        &mut self,
        _def: &'s Definition,
        _base: Option<&'s str>,
        _members: &'s [Member],
    ) -> Result<(), E> {
        Ok(())
    }

    /// A flat `union`.
    fn visit_union(
        &mut self,
        _def: &'s Definition,
        _base: &'s str,
        _discriminator: &'s str,
        _branches: &'s [Branch],
    ) -> Result<(), E> {
        Ok(())
    }

    /// An `alternate`.
    fn visit_alternate(&mut self, _def: &'s Definition, _branches: &'s [Branch]) -> Result<(), E> {
        Ok(())
    }

    /// A `command`, with its argument type, return type and flags.
    fn visit_command(
        &mut self,
        _def: &'s Definition,
        _data: Option<&'s str>,
        _returns: Option<&'s TypeRef>,
        _flags: CommandFlags,
    ) -> Result<(), E> {
        Ok(())
    }

    /// An `event`, with its data type.
    fn visit_event(
        &mut self,
        _def: &'s Definition,
        _data: Option<&'s str>,
        _boxed: bool,
    ) -> Result<(), E> {
        Ok(())
    }

    /// A `handle` (our extension), with the built-in type that carries it.
    fn visit_handle(&mut self, _def: &'s Definition, _data: &'s str) -> Result<(), E> {
        Ok(())
    }

    /// A `signal` (our extension), with its owner handle type and data type.
    fn visit_signal(
        &mut self,
        _def: &'s Definition,
        _owner: &'s str,
        _data: Option<&'s str>,
        _boxed: bool,
    ) -> Result<(), E> {
        Ok(())
    }
}

impl Schema {
    /// Walks the schema: [`Visitor::visit_begin`], then every definition in order, each
    /// preceded by the free documentation blocks that stand before it, then the trailing
    /// blocks, then [`Visitor::visit_end`].
    pub fn visit<'s, E>(&'s self, v: &mut dyn Visitor<'s, E>) -> Result<(), E> {
        v.visit_begin(self)?;
        for (i, def) in self.defs.iter().enumerate() {
            for (_, doc) in self.free_docs.iter().filter(|(at, _)| *at == i) {
                v.visit_free_doc(doc)?;
            }
            visit_def(def, v)?;
        }
        let len = self.defs.len();
        for (_, doc) in self.free_docs.iter().filter(|(at, _)| *at >= len) {
            v.visit_free_doc(doc)?;
        }
        v.visit_end()
    }
}

/// Calls the visitor method for `def`'s metatype.
fn visit_def<'s, E>(def: &'s Definition, v: &mut dyn Visitor<'s, E>) -> Result<(), E> {
    match &def.kind {
        DefKind::Enum { values } => v.visit_enum(def, values),
        DefKind::Struct { base, members } => v.visit_object(def, base.as_deref(), members),
        DefKind::Union {
            base,
            discriminator,
            branches,
        } => v.visit_union(def, base, discriminator, branches),
        DefKind::Alternate { branches } => v.visit_alternate(def, branches),
        DefKind::Command {
            data,
            returns,
            boxed,
            allow_oob,
            success_response,
            gen,
            allow_preconfig,
        } => {
            let flags = CommandFlags {
                boxed: *boxed,
                allow_oob: *allow_oob,
                success_response: *success_response,
                gen: *gen,
                allow_preconfig: *allow_preconfig,
            };
            v.visit_command(def, data.as_deref(), returns.as_ref(), flags)
        }
        DefKind::Event { data, boxed } => v.visit_event(def, data.as_deref(), *boxed),
        DefKind::Handle { data } => v.visit_handle(def, data),
        DefKind::Signal { owner, data, boxed } => {
            v.visit_signal(def, owner, data.as_deref(), *boxed)
        }
    }
}
