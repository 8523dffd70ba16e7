// SPDX-License-Identifier: Apache-2.0
//! The QEMU-style option parser of the vmm binary (`vmm/src/options.rs`: `key=value` lists
//! with `,,`, implied keys, positional heads, and the JSON form of `-blockdev`/`-device`), the
//! two options built on it, `--disk` (`vmm/src/disk.rs`) and `--qmp` (`vmm/src/qmp_socket.rs`),
//! and `-blockdev` of QEMU's command line, on arbitrary option text. Every parser runs on
//! every input.
//!
//! vmm is a binary crate, so these sources are compiled into this target as they are (`#[path]`
//! modules under the names they use for each other).
//!
//! Asserts, beyond not panicking (errors are also rendered, as the command line prints them):
//! - a parsed list printed back (`key=value` items, commas doubled, bare keys bare) parses to
//!   the same list, and printing is then stable; likewise for a list with a positional head;
//! - the JSON form flattens to values only (no bare keys), and printed as text parses to the
//!   same list (unless a key holds `=` or `,`, which a text key cannot always carry);
//!   `parse_any` is `parse_json` for input starting with `{` and `parse` otherwise;
//! - a parsed `--disk` printed back with every field explicit parses to the same `DiskSpec`;
//! - a parsed `--qmp` printed back parses to the same `SocketSpec`;
//! - a `-blockdev` (text or JSON, through qapi's keyval visitor and `blockdev-add`'s checks)
//!   that the checks accept decodes into `BlockdevOptions` ("Invalid arguments" would mean the
//!   checker and the generated type disagree), and printed as JSON or as text reads back the
//!   same.

#![no_main]
#![allow(dead_code)]

#[path = "../../../vmm/src/disk.rs"]
mod disk;
#[path = "../../../vmm/src/options.rs"]
mod options;
#[path = "../../../vmm/src/qmp_socket.rs"]
mod qmp_socket;

use block::{errno_name, Bucket, IoKind, Locking};
use disk::{DiskSource, DiskSpec};
use libfuzzer_sys::fuzz_target;
use monitor::{Endpoint, SocketSpec};
use options::{OptionError, OptionList};
use qapi::descriptors::D_BlockdevOptions;
use qapi::rt::{check_arguments, decode_arguments, from_keyval, QmpError};
use qapi::types::BlockdevOptions;

/// The items of a list, in order: `None` for a bare key.
fn items(list: &OptionList) -> Vec<(String, Option<String>)> {
    list.keys()
        .map(|k| {
            let value = match list.clone().take_str(k) {
                Ok(Some(v)) => Some(v),
                Err(OptionError::NoValue(_)) => None,
                other => panic!("key {k} listed but taken as {other:?}"),
            };
            (k.to_owned(), value)
        })
        .collect()
}

fn escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// Prints items as an option list.
fn print(items: &[(String, Option<String>)]) -> String {
    items
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{}={}", escape(k), escape(v)),
            None => escape(k),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn check_list(s: &str, implied: Option<&str>) {
    let Ok(list) = OptionList::parse(s, implied).map_err(|e| e.to_string()) else {
        return;
    };
    let text = print(&items(&list));
    let again = OptionList::parse(&text, implied).expect("a printed list parses");
    assert_eq!(again, list, "{s:?} printed as {text:?}");
    assert_eq!(print(&items(&again)), text, "printing is not stable");
}

fn check_head(s: &str) {
    let Ok((head, list)) = OptionList::parse_with_head(s).map_err(|e| e.to_string()) else {
        return;
    };
    let items = items(&list);
    let mut text = escape(&head);
    if !items.is_empty() {
        text.push(',');
        text.push_str(&print(&items));
    }
    let again = OptionList::parse_with_head(&text).expect("a printed head and list parse");
    assert_eq!(again, (head, list), "{s:?} printed as {text:?}");
}

fn check_json(s: &str) {
    let json = OptionList::parse_json(s).map_err(|e| e.to_string());
    let any = OptionList::parse_any(s, Some("path")).map_err(|e| e.to_string());
    if s.trim_start().starts_with('{') {
        assert_eq!(any, json, "parse_any is not parse_json for {s:?}");
    } else {
        assert_eq!(
            any,
            OptionList::parse(s, Some("path")).map_err(|e| e.to_string()),
            "parse_any is not parse for {s:?}"
        );
    }
    let Ok(list) = json else { return };
    let items = items(&list);
    assert!(
        items.iter().all(|(_, v)| v.is_some()),
        "bare key from JSON: {items:?}"
    );
    // A JSON key may hold what a text key cannot: `=`, or a `,` at its start (`1,,,k` reads
    // as the value `1,` and the key `k`). QEMU's keyval keys hold neither.
    if items.iter().any(|(k, _)| k.contains(['=', ','])) {
        return;
    }
    let text = print(&items);
    let again = OptionList::parse(&text, None).expect("flattened JSON parses as text");
    assert_eq!(again, list, "{s:?} flattened to {text:?}");
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// A `--disk` value with every field of `d` explicit.
fn print_disk(d: &DiskSpec) -> String {
    let mut items: Vec<(String, Option<String>)> = Vec::new();
    let mut put = |k: &str, v: String| items.push((k.to_owned(), Some(v)));
    let DiskSource::Image(path) = &d.source else {
        panic!("--disk made a disk of a node: {:?}", d.source);
    };
    put("path", path.to_str().expect("UTF-8 path").to_owned());
    for (k, v) in [
        ("id", &d.id),
        ("node-name", &d.node_name),
        ("serial", &d.serial),
    ] {
        if let Some(v) = v {
            put(k, v.clone());
        }
    }
    put("readonly", on_off(d.read_only).into());
    put("cache", d.cache.as_str().into());
    if let Some(a) = d.aio {
        put("aio", a.as_str().into());
    }
    put("num-queues", d.num_queues.to_string());
    put("werror", d.policy.write.as_str().into());
    put("rerror", d.policy.read.as_str().into());
    let locking = match d.locking {
        Locking::Auto => "auto",
        Locking::On => "on",
        Locking::Off => "off",
    };
    put("locking", locking.into());
    for b in Bucket::ALL {
        let l = d.throttle.limit(b);
        let key = format!("throttling.{}", b.option_name());
        put(&key, l.avg.to_string());
        put(&format!("{key}-max"), l.max.to_string());
        put(&format!("{key}-max-length"), l.max_length.to_string());
    }
    put("throttling.iops-size", d.throttle.iops_size.to_string());
    if let Some(g) = &d.throttle_group {
        put("throttling.group", g.clone());
    }
    for (n, r) in d.inject.iter().enumerate() {
        let op = match r.operation {
            IoKind::Read => "read",
            IoKind::Write => "write",
            IoKind::Flush => "flush",
            other => panic!("a rule for {other:?}"),
        };
        put(&format!("inject.{n}.operation"), op.into());
        if let Some(e) = r.errno {
            let name = errno_name(e).expect("an injectable errno");
            put(&format!("inject.{n}.errno"), name.into());
        }
        if let Some(s) = r.sector {
            put(&format!("inject.{n}.sector"), s.to_string());
        }
        if let Some(c) = r.count {
            put(&format!("inject.{n}.count"), c.to_string());
        }
        put(&format!("inject.{n}.once"), on_off(r.once).into());
        if let Some(t) = r.delay {
            put(&format!("inject.{n}.delay-ms"), t.as_millis().to_string());
        }
    }
    print(&items)
}

fn check_disk(s: &str) {
    let Ok(spec) = s.parse::<DiskSpec>().map_err(|e| e.to_string()) else {
        return;
    };
    let text = print_disk(&spec);
    let again: DiskSpec = text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert_eq!(again, spec, "{s:?} printed as {text:?}");
}

fn print_qmp(q: &SocketSpec) -> String {
    let head = match &q.endpoint {
        Endpoint::Unix(p) => format!("unix:{}", p.to_str().expect("UTF-8 path")),
        Endpoint::Tcp(h, port) if h.contains(':') => format!("tcp:[{h}]:{port}"),
        Endpoint::Tcp(h, port) => format!("tcp:{h}:{port}"),
        Endpoint::UnixFd(fd) => panic!("--qmp made an inherited socket {fd}"),
    };
    format!("{},server=on,wait={}", escape(&head), on_off(q.wait))
}

fn check_qmp(s: &str) {
    let Ok(spec) = qmp_socket::parse_qmp(s).map_err(|e| e.to_string()) else {
        return;
    };
    let text = print_qmp(&spec);
    let again = qmp_socket::parse_qmp(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert_eq!(again, spec, "{s:?} printed as {text:?}");
}

/// `-blockdev` of QEMU's command line, as `qemu_cli::devices::parse_blockdev` reads it (that
/// module needs the whole binary, so its four steps are repeated here with the same library
/// calls): the option list, its pairs through the keyval visitor (`from_keyval`), the
/// `blockdev-add` checks (`check_arguments`), then the generated type.
fn parse_blockdev(s: &str) -> Option<Result<BlockdevOptions, QmpError>> {
    let list = OptionList::parse_any(s, None).ok()?;
    let mut pairs = Vec::new();
    for (k, v) in list.into_entries() {
        pairs.push((k, v?));
    }
    let run = || {
        let value = from_keyval(&D_BlockdevOptions, pairs)?;
        let value = check_arguments(&D_BlockdevOptions, Some(value), &|_, _| Ok(()))?;
        decode_arguments(value)
    };
    Some(run())
}

fn check_blockdev(s: &str) {
    let Some(Ok(opts)) = parse_blockdev(s).map(|r| {
        r.map_err(|e| {
            // The checker accepted what the generated type refused.
            assert!(
                !e.desc.starts_with("Invalid arguments"),
                "{s:?}: {}",
                e.desc
            );
        })
    }) else {
        return;
    };
    // The options printed as JSON, and as key=value text, read back the same.
    let json = serde_json::to_string(&opts).expect("serializable");
    let again = parse_blockdev(&json).expect("JSON parses");
    assert_eq!(again.as_ref(), Ok(&opts), "{s:?} printed as {json}");
    let list = OptionList::parse_json(&json).expect("JSON flattens");
    let text = print(&items(&list));
    if !items(&list).iter().any(|(k, _)| k.contains(['=', ','])) {
        let again = parse_blockdev(&text).expect("text parses");
        assert_eq!(again.as_ref(), Ok(&opts), "{s:?} printed as {text}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    check_list(s, None);
    check_list(s, Some("path"));
    check_head(s);
    check_json(s);
    check_disk(s);
    check_qmp(s);
    check_blockdev(s);
    // Numbers and sizes read back from their decimal form.
    if let Ok(n) = options::parse_size("size", s) {
        assert_eq!(options::parse_size("size", &n.to_string()), Ok(n), "{s:?}");
    }
    if let Ok(n) = options::parse_u64("n", s) {
        assert_eq!(options::parse_u64("n", &n.to_string()), Ok(n), "{s:?}");
    }
    if let Ok(b) = options::parse_bool("b", s) {
        assert_eq!(options::parse_bool("b", on_off(b)), Ok(b));
    }
});
