// SPDX-License-Identifier: Apache-2.0
//! The checked schema model: definitions with resolved shapes, as consumed by the generators.

use crate::doc::Doc;
use crate::source::SourceInfo;

/// A condition from an `if` key: a configuration name, or a combination of conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// True when the name is enabled.
    Name(String),
    /// True when all are true.
    All(Vec<Cond>),
    /// True when any is true.
    Any(Vec<Cond>),
    /// True when the inner one is false.
    Not(Box<Cond>),
}

impl Cond {
    /// Evaluates against the set of enabled configuration names.
    pub fn eval(&self, enabled: &dyn Fn(&str) -> bool) -> bool {
        match self {
            Cond::Name(n) => enabled(n),
            Cond::All(v) => v.iter().all(|c| c.eval(enabled)),
            Cond::Any(v) => v.iter().any(|c| c.eval(enabled)),
            Cond::Not(c) => !c.eval(enabled),
        }
    }
}

/// A reference to a type: a name, or an array of a named type.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TypeRef {
    /// A named type (built-in or defined).
    Named(String),
    /// `['T']`
    Array(String),
}

impl TypeRef {
    /// The element name (for arrays) or the name.
    pub fn name(&self) -> &str {
        match self {
            TypeRef::Named(n) | TypeRef::Array(n) => n,
        }
    }
}

/// A feature flag on a definition or member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    /// The feature name (e.g. `deprecated`, `unstable`).
    pub name: String,
    /// Condition, if any.
    pub ifcond: Option<Cond>,
}

/// A member of an object type (struct member or command/event parameter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Wire name, without the `*` marker.
    pub name: String,
    /// The member's type.
    pub ty: TypeRef,
    /// Declared with a leading `*`.
    pub optional: bool,
    /// Condition, if any.
    pub ifcond: Option<Cond>,
    /// Features.
    pub features: Vec<Feature>,
    /// Name of the type that declares the member.
    pub defined_in: String,
}

/// An enum value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnumValue {
    /// The wire string.
    pub name: String,
    /// Condition, if any.
    pub ifcond: Option<Cond>,
}

/// A branch of a union or alternate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    /// Union: the discriminator value. Alternate: the branch name.
    pub name: String,
    /// The branch type (a struct for unions).
    pub ty: String,
    /// Condition, if any.
    pub ifcond: Option<Cond>,
}

/// What a definition is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefKind {
    /// `enum`
    Enum {
        /// The values.
        values: Vec<EnumValue>,
    },
    /// `struct` (also the implicit argument/base types).
    Struct {
        /// The base struct, whose members come first.
        base: Option<String>,
        /// Local members.
        members: Vec<Member>,
    },
    /// A flat union: base members, one of which is the enum-typed discriminator.
    Union {
        /// The base struct (possibly implicit).
        base: String,
        /// The discriminator member name.
        discriminator: String,
        /// Branches (after checking: one per enum value, missing ones use the empty type).
        branches: Vec<Branch>,
    },
    /// `alternate`: one of several JSON types.
    Alternate {
        /// Branches.
        branches: Vec<Branch>,
    },
    /// `command`
    Command {
        /// Argument type (an object type name, possibly implicit).
        data: Option<String>,
        /// Return type.
        returns: Option<TypeRef>,
        /// Arguments passed as one struct.
        boxed: bool,
        /// Can run out-of-band.
        allow_oob: bool,
        /// `false` for commands that send no reply.
        success_response: bool,
        /// `false` to not generate the marshaller (the monitor handles the command itself).
        gen: bool,
        /// Can run before machine initialization.
        allow_preconfig: bool,
    },
    /// `event`
    Event {
        /// Data type (an object type name, possibly implicit).
        data: Option<String>,
        /// Data passed as one struct.
        boxed: bool,
    },
    /// Our extension: a named reference to a server object, carried as `data` on the wire.
    Handle {
        /// The built-in type that carries the handle (`str` or `int`).
        data: String,
    },
    /// Our extension: an event owned by an object named by a handle.
    Signal {
        /// The owning handle type.
        owner: String,
        /// Data type (an object type name, possibly implicit).
        data: Option<String>,
        /// Data passed as one struct.
        boxed: bool,
    },
}

/// One definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// The schema name.
    pub name: String,
    /// The keyword that defines it (`struct`, `command`, ...).
    pub meta: &'static str,
    /// Where it is defined (for implicit types: the definition that caused it).
    pub info: SourceInfo,
    /// Documentation.
    pub doc: Option<Doc>,
    /// Condition, if any.
    pub ifcond: Option<Cond>,
    /// Features.
    pub features: Vec<Feature>,
    /// The shape.
    pub kind: DefKind,
    /// Implicitly defined (command/event arguments, union base, empty object).
    pub implicit: bool,
}

impl Definition {
    /// A description as QEMU prints it in errors: `struct type 'Foo'`, `command 'x'`.
    pub fn describe(&self) -> String {
        match self.kind {
            DefKind::Command { .. } | DefKind::Event { .. } | DefKind::Signal { .. } => {
                format!("{} '{}'", self.meta, self.name)
            }
            _ => format!("{} type '{}'", self.meta, self.name),
        }
    }

    /// True for enums, structs, unions, alternates and handles.
    pub fn is_type(&self) -> bool {
        !matches!(
            self.kind,
            DefKind::Command { .. } | DefKind::Event { .. } | DefKind::Signal { .. }
        )
    }
}

/// Name of the implicit empty object type.
pub const EMPTY_OBJECT: &str = "q_empty";

/// The built-in types: name and JSON type.
pub const BUILTINS: &[(&str, &str)] = &[
    ("str", "string"),
    ("number", "number"),
    ("int", "int"),
    ("int8", "int"),
    ("int16", "int"),
    ("int32", "int"),
    ("int64", "int"),
    ("uint8", "int"),
    ("uint16", "int"),
    ("uint32", "int"),
    ("uint64", "int"),
    ("size", "int"),
    ("bool", "boolean"),
    ("null", "null"),
    ("any", "value"),
];

/// The JSON type of a built-in type, if `name` is one.
pub fn builtin_json_type(name: &str) -> Option<&'static str> {
    BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, j)| *j)
}
