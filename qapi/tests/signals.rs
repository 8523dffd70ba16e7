// SPDX-License-Identifier: Apache-2.0
//! The explicit-handles protocol from the client side, against the fake signal server over a
//! socket pair: negotiation, canonical handles in replies, connect/disconnect, signal streams,
//! default connections; and the generated signal metadata.

mod common;

use std::time::Duration;

use common::signals::spawn_signal_server;
use qapi::client::{Client, ClientError, Connection};
use qapi::events::{Event, SIGNALS};
use qapi::rt::{canonical_handle, ErrorClass, QmpError, Timestamp};
use qapi::types::*;
use serde_json::json;

const WAIT: Option<Duration> = Some(Duration::from_secs(5));
const SHORT: Option<Duration> = Some(Duration::from_millis(50));

fn machine() -> Machine {
    Machine("/machine".into())
}

fn client_with(pre: &[&str], caps: &[&str]) -> Client {
    let conn = Connection::from_unix_stream(spawn_signal_server()).expect("greeting");
    assert_eq!(conn.greeting().capabilities, ["oob", "explicit-handles"]);
    for cmd in pre {
        conn.execute(cmd, None).expect("capabilities-mode command");
    }
    conn.negotiate_with(caps).expect("negotiation");
    Client::new(conn)
}

#[test]
fn signals_table_names_every_event_with_its_owner() {
    let names: Vec<&str> = SIGNALS.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "SHUTDOWN",
            "POWERDOWN",
            "RESET",
            "STOP",
            "RESUME",
            "BLOCK_IO_ERROR",
            "MIGRATION",
            "MIGRATION_PASS"
        ]
    );
    for s in SIGNALS {
        if s.name == "BLOCK_IO_ERROR" {
            assert_eq!((s.owner, s.fixed_owner), ("Blockdev", None));
            assert!(s.data.is_some());
        } else {
            assert_eq!((s.owner, s.fixed_owner), ("Machine", Some("/machine")));
        }
    }
    let stop = qapi::events::signal_info("STOP").expect("STOP");
    assert!(stop.data.is_none());
    assert!(qapi::events::signal_info("RESET")
        .expect("RESET")
        .data
        .is_some());
    assert!(qapi::events::signal_info("NOPE").is_none());
}

#[test]
fn every_event_has_an_owner_and_a_signal_form() {
    let ts = Timestamp {
        seconds: 10,
        microseconds: 20,
    };
    assert_eq!(Event::Stop.owner_handle(), ("Machine", json!("/machine")));
    let m = json!({"__handle__": "Machine", "data": "/machine"});
    assert_eq!(Event::Resume.owner_json(), Some(m.clone()));
    assert_eq!(
        Event::Stop.to_signal_json(Some(&json!(3)), ts),
        json!({"signal": "STOP", "owner": m, "user_data": 3,
               "timestamp": {"seconds": 10, "microseconds": 20}})
    );
    // The broadcast form is unchanged (serde_json writes keys sorted).
    assert_eq!(
        Event::Stop.to_json(ts).to_string(),
        r#"{"event":"STOP","timestamp":{"microseconds":20,"seconds":10}}"#
    );
    let reset = Event::Reset(ResetArg {
        guest: true,
        reason: ShutdownCause::GuestReset,
    });
    assert_eq!(
        reset.to_json(ts).to_string(),
        r#"{"data":{"guest":true,"reason":"guest-reset"},"event":"RESET","timestamp":{"microseconds":20,"seconds":10}}"#
    );
    let sig = reset.to_signal_json(None, ts);
    assert_eq!(sig["data"], json!({"guest": true, "reason": "guest-reset"}));
    assert_eq!(sig["owner"]["__handle__"], "Machine");
    let io = Event::BlockIoError {
        owner: Some(Blockdev("drive0".into())),
        data: BlockIoErrorArg {
            qom_path: "/machine/peripheral/drive0/virtio-backend".into(),
            device: "drive0".into(),
            node_name: None,
            operation: IoOperationType::Read,
            action: BlockErrorAction::Report,
            nospace: None,
            reason: "x".into(),
        },
    };
    assert_eq!(io.owner_handle(), ("Blockdev", json!("drive0")));
    let unowned = Event::BlockIoError {
        owner: None,
        data: match io.clone() {
            Event::BlockIoError { data, .. } => data,
            _ => unreachable!(),
        },
    };
    assert_eq!(unowned.owner_json(), None);
    assert_eq!(unowned.to_signal_json(None, ts), unowned.to_json(ts));
    let other = Event::Other {
        name: "NEW".into(),
        data: None,
    };
    assert_eq!(other.owner_handle(), ("Machine", json!("/machine")));
}

#[test]
fn handles_decode_in_both_forms_and_encode_plain() {
    let plain: Blockdev = serde_json::from_value(json!("drive0")).expect("plain");
    let canon: Blockdev =
        serde_json::from_value(json!({"__handle__": "Blockdev", "data": "drive0"}))
            .expect("canonical");
    assert_eq!(plain, canon);
    assert_eq!(
        serde_json::to_value(&canon).expect("encodes"),
        json!("drive0")
    );
    assert!(
        serde_json::from_value::<Blockdev>(json!({"__handle__": "Machine", "data": "drive0"}))
            .is_err()
    );
    assert_eq!(
        machine().canonical(),
        canonical_handle("Machine", &json!("/machine"))
    );
    let info: BlockStats = serde_json::from_value(json!({
        "device": {"__handle__": "Blockdev", "data": "drive0"},
        "node-name": "fmt0",
        "stats": common::vm::sample_stats()
    }))
    .expect("mixed forms");
    assert_eq!(info.device.as_deref(), Some("drive0"));
    assert_eq!(info.node_name.as_deref(), Some("fmt0"));
}

#[test]
fn command_info_has_the_return_descriptor() {
    let block = qapi::commands::command_info("query-block").expect("query-block");
    assert!(matches!(block.returns, Some(qapi::rt::TypeDesc::Array(_))));
    assert!(qapi::commands::command_info("stop")
        .expect("stop")
        .returns
        .is_none());
    let hmp = qapi::commands::command_info("human-monitor-command").expect("hmp");
    assert!(matches!(hmp.returns, Some(qapi::rt::TypeDesc::Str)));
    for c in ["set-explicit-handles", "disconnect-default-signals"] {
        let info = qapi::commands::command_info(c).expect("in the table");
        assert!(!info.generated && info.allow_preconfig && info.returns.is_none());
    }
}

#[test]
fn explicit_handles_make_replies_canonical_and_typed_replies_still_decode() {
    let c = client_with(&[], &["explicit-handles"]);
    let raw = c.connection().execute("query-block", None).expect("raw");
    assert_eq!(
        raw[0]["device"],
        json!({"__handle__": "Blockdev", "data": "drive0"})
    );
    assert_eq!(
        raw[0]["inserted"]["node-name"],
        json!({"__handle__": "Blockdev", "data": "fmt0"})
    );
    assert_eq!(raw[0]["qdev"], "/machine/peripheral/vblk0/virtio-backend");
    let typed = c.query_block().expect("typed");
    assert_eq!(typed[0].device, Blockdev("drive0".into()));
    let stats = c.query_blockstats(Some(true)).expect("stats");
    assert_eq!(
        stats[0]
            .parent
            .as_ref()
            .expect("parent")
            .node_name
            .as_deref(),
        Some("file0")
    );
    // Errors are unchanged.
    let e = c
        .human_monitor_command("inject-error nope".into(), None)
        .expect_err("unknown drive");
    assert_eq!(e, ClientError::Command(QmpError::device_not_found("nope")));
}

#[test]
fn plain_sessions_see_plain_handles() {
    let c = client_with(&[], &[]);
    let raw = c.connection().execute("query-block", None).expect("raw");
    assert_eq!(raw[0]["device"], "drive0");
}

#[test]
fn capabilities_mode_commands() {
    let conn = Connection::from_unix_stream(spawn_signal_server()).expect("greeting");
    let c = Client::new(conn);
    c.set_explicit_handles().expect("set-explicit-handles");
    c.disconnect_default_signals()
        .expect("disconnect-default-signals");
    c.connection().negotiate_with(&[]).expect("negotiate");
    let raw = c.connection().execute("query-block", None).expect("raw");
    assert_eq!(raw[0]["device"]["__handle__"], "Blockdev");
    // No default connections: STOP is not broadcast.
    c.stop().expect("stop");
    assert_eq!(c.next_event(SHORT).expect("ok"), None);
    // Only valid in capabilities mode.
    let e = c.set_explicit_handles().expect_err("command mode");
    assert!(matches!(e, ClientError::Command(q) if q.class == ErrorClass::CommandNotFound));
    // A capability the server did not offer is refused before sending.
    let conn = Connection::from_unix_stream(spawn_signal_server()).expect("greeting");
    assert!(matches!(
        conn.negotiate_with(&["bogus"]),
        Err(ClientError::Protocol(_))
    ));
}

#[test]
fn typed_stream_of_a_machine_signal() {
    let c = client_with(&[], &["explicit-handles"]);
    let stop = c
        .connect_stop(&machine(), Some(json!({"tag": "mine"})))
        .expect("connect");
    assert!(stop.id() > 0);
    assert_eq!(stop.owner(), &machine().canonical());
    c.stop().expect("stop");
    let sig = stop.next(WAIT).expect("ok").expect("STOP on the stream");
    assert_eq!(sig.user_data, Some(json!({"tag": "mine"})));
    assert!(sig.timestamp.seconds > 0);
    // The default connection still gets the broadcast, and only it.
    assert_eq!(
        c.next_event(WAIT).expect("ok").expect("broadcast").0,
        Event::Stop
    );
    assert_eq!(c.next_event(SHORT).expect("ok"), None);
    assert!(stop.next(SHORT).expect("ok").is_none());

    let reset = c.connect_reset(&machine(), None).expect("connect reset");
    c.system_reset().expect("reset");
    let r = reset.next(WAIT).expect("ok").expect("RESET");
    assert_eq!(
        r.data,
        ResetArg {
            guest: false,
            reason: ShutdownCause::HostQmpSystemReset
        }
    );
    assert_eq!(r.user_data, None);

    stop.disconnect().expect("disconnect");
    c.cont().expect("cont");
    c.stop().expect("stop again");
    let mut names = Vec::new();
    while let Some((ev, _)) = c.next_event(SHORT).expect("ok") {
        names.push(ev.name().to_string());
    }
    assert_eq!(names, ["RESET", "RESUME", "STOP"], "only broadcasts remain");
}

#[test]
fn block_signal_with_canonical_owner_and_no_defaults() {
    let c = client_with(&["disconnect-default-signals"], &["explicit-handles"]);
    let errors = c
        .connect_block_io_error(&Blockdev("drive0".into()), Some(json!(7)))
        .expect("connect");
    let stops = c.connect_stop(&machine(), None).expect("connect stop");
    c.human_monitor_command("inject-error drive0".into(), None)
        .expect("inject");
    let e = errors.next(WAIT).expect("ok").expect("BLOCK_IO_ERROR");
    assert_eq!(e.user_data, Some(json!(7)));
    assert_eq!(e.data.action, BlockErrorAction::Stop);
    assert_eq!(e.data.node_name.as_deref(), Some("fmt0"));
    assert!(stops.next(WAIT).expect("ok").is_some());
    assert_eq!(c.next_event(SHORT).expect("ok"), None, "no broadcasts");
    // Unknown owners, wrong owner types and unknown signals are refused by the server.
    let e = c
        .connect_block_io_error(&Blockdev("nope".into()), None)
        .expect_err("unknown drive");
    assert_eq!(e, ClientError::Command(QmpError::device_not_found("nope")));
    let conn = c.connection();
    let wrong = conn
        .connect_signal("STOP", Blockdev("drive0".into()).canonical(), None)
        .expect_err("wrong owner type");
    assert!(matches!(wrong, ClientError::Command(_)));
    assert!(conn
        .connect_signal("NOPE", machine().canonical(), None)
        .is_err());
    assert!(conn.disconnect_signal(999, machine().canonical()).is_err());
}

#[test]
fn raw_connections_deliver_through_the_event_queue() {
    let c = client_with(&["disconnect-default-signals"], &[]);
    let conn = c.connection();
    let id = conn
        .connect_signal("STOP", machine().canonical(), Some(json!("raw")))
        .expect("connect");
    c.stop().expect("stop");
    let raw = conn.next_event(WAIT).expect("ok").expect("signal message");
    assert_eq!(raw.name, "STOP");
    assert_eq!(raw.owner, Some(machine().canonical()));
    conn.disconnect_signal(id, machine().canonical())
        .expect("disconnect");
    c.cont().expect("cont");
    c.stop().expect("stop");
    assert_eq!(conn.next_event(SHORT).expect("ok"), None);
    // The second disconnect finds nothing.
    assert!(conn.disconnect_signal(id, machine().canonical()).is_err());
}

#[test]
fn equal_connections_each_get_every_emission_once() {
    let c = client_with(&["disconnect-default-signals"], &["explicit-handles"]);
    let a = c.connect_stop(&machine(), None).expect("a");
    let b = c.connect_stop(&machine(), None).expect("b");
    assert_ne!(a.id(), b.id());
    c.stop().expect("stop");
    assert!(a.next(WAIT).expect("ok").is_some());
    assert!(b.next(WAIT).expect("ok").is_some());
    assert!(a.next(SHORT).expect("ok").is_none());
    assert!(b.next(SHORT).expect("ok").is_none());
    drop(a);
    c.cont().expect("cont");
    c.stop().expect("stop");
    // The dropped stream's messages (the server still has its connection) are shared out
    // to the remaining stream with the same key or, past it, land in the event queue.
    assert!(b.next(WAIT).expect("ok").is_some());
}

#[test]
fn streams_fail_when_the_connection_closes() {
    let (client, mut server) = std::os::unix::net::UnixStream::pair().expect("pair");
    use std::io::{BufRead, BufReader, Write};
    writeln!(
        server,
        "{}",
        json!({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""},
            "capabilities": ["explicit-handles"]}})
    )
    .expect("greeting");
    let conn = Connection::from_unix_stream(client).expect("greeting");
    let t = std::thread::spawn(move || {
        let mut lines = BufReader::new(server.try_clone().expect("clone")).lines();
        let req: serde_json::Value =
            serde_json::from_str(&lines.next().expect("line").expect("read")).expect("json");
        assert_eq!(req["connect"], "STOP");
        assert_eq!(req["owner"], machine().canonical());
        assert!(req.get("user_data").is_none());
        // Reply, then a signal right away: it must reach the stream.
        writeln!(server, "{}", json!({"return": 5, "id": req["id"]})).expect("reply");
        writeln!(
            server,
            "{}",
            json!({"signal": "STOP", "owner": machine().canonical(),
                   "timestamp": {"seconds": 1, "microseconds": 2}})
        )
        .expect("signal");
        server
    });
    let s = conn
        .connect_stream(
            "STOP",
            machine().canonical(),
            None,
            qapi::client::decode_no_data,
        )
        .expect("connect");
    assert_eq!(s.id(), 5);
    let server = t.join().expect("server");
    let sig = s.next(WAIT).expect("ok").expect("signal");
    assert_eq!(
        sig.timestamp,
        Timestamp {
            seconds: 1,
            microseconds: 2
        }
    );
    drop(server);
    assert_eq!(s.next(WAIT), Err(ClientError::Closed));
}
