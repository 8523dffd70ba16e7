// SPDX-License-Identifier: Apache-2.0
//! Round trip of every generated type (main and test schema): JSON samples synthesized from
//! each type's descriptor decode into the Rust type and encode back to the same JSON.

mod rt {
    pub use qapi::rt::*;
}
mod client {
    pub use qapi::client::*;
}
#[allow(clippy::too_many_arguments, dead_code)]
mod test_schema {
    include!(concat!(env!("OUT_DIR"), "/test-qmp.rs"));
}

use qapi::rt::TypeDesc;
use serde_json::{json, Map, Value};

const MAX_DEPTH: usize = 3;

/// (schema name, descriptor, round trip).
type Entry<'a> = (
    &'a str,
    &'a TypeDesc,
    fn(Value) -> Result<Value, serde_json::Error>,
);

fn one(desc: &TypeDesc, full: bool, depth: usize) -> Value {
    match desc {
        TypeDesc::Str => json!("text"),
        TypeDesc::Number => json!(1.5),
        TypeDesc::Bool => json!(true),
        TypeDesc::Null => Value::Null,
        TypeDesc::Any => json!({"any": [1, "two", null]}),
        TypeDesc::Int { max, .. } => {
            if full {
                json!(i64::try_from(*max).unwrap_or(i64::MAX))
            } else {
                json!(42)
            }
        }
        TypeDesc::Enum { values, .. } => json!(values[values.len() - 1]),
        TypeDesc::Array(elem) => {
            if full && depth < MAX_DEPTH {
                json!([one(elem, full, depth + 1), one(elem, false, depth + 1)])
            } else {
                json!([])
            }
        }
        TypeDesc::Object {
            members, variants, ..
        } => {
            let mut o = Map::new();
            for m in members.iter() {
                if !m.optional || (full && depth < MAX_DEPTH) {
                    o.insert(m.name.into(), one(m.ty, full, depth + 1));
                }
            }
            if let Some(v) = variants {
                let (case, branch) = v.branches[0];
                o.insert(v.tag.into(), json!(case));
                if let Value::Object(b) = one(branch, full, depth + 1) {
                    o.extend(b);
                }
            }
            Value::Object(o)
        }
        TypeDesc::Alternate { branches, .. } => one(branches[0], full, depth),
        TypeDesc::Handle { data, .. } => one(data, full, depth),
    }
}

/// Several samples per type: minimal and full, every enum value, every union branch, every
/// alternate branch.
fn samples(desc: &TypeDesc) -> Vec<Value> {
    let mut out = vec![one(desc, false, 0), one(desc, true, 0)];
    match desc {
        TypeDesc::Enum { values, .. } => out.extend(values.iter().map(|v| json!(v))),
        TypeDesc::Alternate { branches, .. } => {
            for b in branches.iter() {
                out.push(one(b, false, 0));
                out.push(one(b, true, 0));
            }
        }
        TypeDesc::Object {
            variants: Some(v), ..
        } => {
            for full in [false, true] {
                for (case, branch) in v.branches.iter() {
                    let Value::Object(mut o) = one(desc, full, 0) else {
                        unreachable!()
                    };
                    // Drop the first branch's members, then add this branch's.
                    if let (_, TypeDesc::Object { members, .. }) = v.branches[0] {
                        for m in members.iter() {
                            o.remove(m.name);
                        }
                    }
                    o.insert(v.tag.into(), json!(case));
                    if let Value::Object(b) = one(branch, full, 1) {
                        o.extend(b);
                    }
                    out.push(Value::Object(o));
                }
            }
        }
        _ => {}
    }
    out
}

fn check_all(types: &[Entry<'_>]) -> usize {
    let mut count = 0;
    for (name, desc, roundtrip) in types {
        for sample in samples(desc) {
            let back = roundtrip(sample.clone())
                .unwrap_or_else(|e| panic!("{name}: {sample} does not decode: {e}"));
            assert_eq!(back, sample, "{name} round trip changed the value");
            // The dispatcher's checker accepts what the types produce.
            if let TypeDesc::Object { .. } = desc {
                qapi::rt::check_arguments(desc, Some(sample.clone()), &|_, _| Ok(()))
                    .unwrap_or_else(|e| panic!("{name}: checker rejects {sample}: {e}"));
            }
            count += 1;
        }
    }
    count
}

#[test]
fn every_main_schema_type_round_trips() {
    let types: Vec<_> = qapi::descriptors::TYPES
        .iter()
        .map(|t| (t.name, t.desc, t.roundtrip))
        .collect();
    assert!(types.len() > 50);
    let n = check_all(&types);
    assert!(n > 200, "only {n} samples");
}

#[test]
fn every_test_schema_type_round_trips() {
    let types: Vec<_> = test_schema::descriptors::TYPES
        .iter()
        .map(|t| (t.name, t.desc, t.roundtrip))
        .collect();
    check_all(&types);
}

#[test]
fn wire_names_and_optional_members() {
    use qapi::types::*;
    let info: BlockInfo = serde_json::from_value(json!({
        "device": "d0", "type": "unknown", "removable": false, "locked": false,
        "io-status": "nospace", "tray_open": false
    }))
    .expect("decodes");
    assert_eq!(info.io_status, Some(BlockDeviceIoStatus::Nospace));
    assert_eq!(info.r#type, "unknown");
    let back = serde_json::to_value(&info).expect("encodes");
    assert!(
        back.get("qdev").is_none(),
        "absent optional members stay absent"
    );
    assert_eq!(back["io-status"], "nospace");
    assert_eq!(RunState::IoError.as_str(), "io-error");
    assert_eq!(
        serde_json::to_value(RunState::GuestPanicked).expect("enc"),
        "guest-panicked"
    );
    assert_eq!(RunState::ALL.len(), 16);
    let h = Blockdev("drive0".into());
    assert_eq!(serde_json::to_value(&h).expect("enc"), "drive0");
    assert_eq!(
        h.canonical(),
        json!({"__handle__": "Blockdev", "data": "drive0"})
    );
}

#[test]
fn union_and_alternate_wire_forms() {
    use test_schema::types::*;
    let s: Shape =
        serde_json::from_value(json!({"kind": "square", "name": "q", "side": 2})).expect("decodes");
    assert_eq!(
        s,
        Shape {
            name: "q".into(),
            branch: ShapeBranch::Square(Square {
                side: 2,
                rotated: None
            })
        }
    );
    let v: test_schema::types::Value = serde_json::from_value(json!("cyan")).expect("enum branch");
    assert_eq!(v, test_schema::types::Value::C(Color2::Cyan));
    let v: test_schema::types::Value = serde_json::from_value(json!({"x": 3})).expect("object");
    assert!(matches!(
        v,
        test_schema::types::Value::O(Inner { x: 3, .. })
    ));
    let cpu: qapi::types::CpuInfoFast = serde_json::from_value(json!({
        "cpu-index": 0, "qom-path": "/machine/unattached/device[0]", "thread-id": 7,
        "target": "s390x", "cpu-state": "operating"}))
    .expect("decodes");
    assert_eq!(
        cpu.branch,
        qapi::types::CpuInfoFastBranch::S390x(qapi::types::CpuInfoS390 {
            cpu_state: qapi::types::CpuS390State::Operating
        })
    );
}
