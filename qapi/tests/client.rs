// SPDX-License-Identifier: Apache-2.0
//! The generated client and the generated dispatcher talking over a Unix socket pair, through a
//! tiny QMP server loop (greeting, negotiation, events before replies, exec-oob).

mod common;

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

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{block_on, spawn_server, EventQueue};
use qapi::client::{Client, ClientError, Connection};
use qapi::events::Event;
use qapi::rt::{ErrorClass, QmpError, Timestamp};
use qapi::types::*;
use serde_json::json;

const WAIT: Option<Duration> = Some(Duration::from_secs(5));

fn main_client() -> Client {
    let events = EventQueue::default();
    let vm = Arc::new(Mutex::new(common::vm::FakeVm::new(events.clone())));
    let handler = Box::new(move |name: &str, args, oob| {
        let mut vm = vm.lock().expect("lock");
        if oob {
            qapi::commands::dispatch_oob(&*vm, name, args)
        } else {
            qapi::commands::dispatch(&mut *vm, name, args)
        }
    });
    let stream = spawn_server(handler, events);
    let conn = Connection::from_unix_stream(stream).expect("greeting");
    conn.negotiate(true).expect("negotiation");
    Client::new(conn)
}

#[test]
fn greeting_and_negotiation() {
    let events = EventQueue::default();
    let stream = spawn_server(Box::new(|_, _, _| Ok(json!({}))), events);
    let conn = Connection::from_unix_stream(stream).expect("greeting");
    assert_eq!(conn.greeting().capabilities, ["oob"]);
    assert_eq!(conn.greeting().version["qemu"]["major"], 7);
    let before = conn
        .execute("query-status", None)
        .expect_err("not negotiated");
    assert_eq!(
        before,
        ClientError::Command(QmpError::new(
            ErrorClass::CommandNotFound,
            "Expecting capabilities negotiation with 'qmp_capabilities'"
        ))
    );
    conn.negotiate(false).expect("negotiation");
    let again = conn.negotiate(false).expect_err("twice");
    assert!(matches!(again, ClientError::Command(e) if e.class == ErrorClass::CommandNotFound));
    // exec-oob without the oob capability is rejected as in QEMU.
    let e = conn
        .execute_oob("query-status", None)
        .expect_err("oob not enabled");
    assert_eq!(
        e,
        ClientError::Command(QmpError::generic(
            "QMP input member 'exec-oob' is unexpected"
        ))
    );
}

#[test]
fn typed_commands_and_events_blocking() {
    let c = main_client();
    let st = c.query_status().expect("query-status");
    assert_eq!(st.status, RunState::Running);
    assert!(st.running);
    c.stop().expect("stop");
    let (ev, ts) = c.next_event(WAIT).expect("ok").expect("STOP arrives");
    assert_eq!(ev, Event::Stop);
    assert!(ts.seconds > 0);
    assert_eq!(c.query_status().expect("status").status, RunState::Paused);
    c.cont().expect("cont");
    assert_eq!(
        c.next_event(WAIT).expect("ok").expect("event").0,
        Event::Resume
    );
    c.system_reset().expect("reset");
    let (ev, _) = c.next_event(WAIT).expect("ok").expect("RESET");
    assert_eq!(
        ev,
        Event::Reset(ResetArg {
            guest: false,
            reason: ShutdownCause::HostQmpSystemReset
        })
    );
    assert_eq!(
        c.next_event(Some(Duration::from_millis(20))).expect("ok"),
        None
    );

    let version = c.query_version().expect("version");
    assert_eq!(version.qemu.minor, 2);
    let kvm = c.query_kvm().expect("kvm");
    assert!(kvm.enabled && kvm.present);
    assert_eq!(c.query_name().expect("name").name, None);
    let cpus = c.query_cpus_fast().expect("cpus");
    assert_eq!(cpus[0].branch, CpuInfoFastBranch::X8664);
    let blocks = c.query_block().expect("block");
    assert_eq!(blocks[0].io_status, Some(BlockDeviceIoStatus::Ok));
    assert_eq!(
        blocks[0]
            .inserted
            .as_ref()
            .expect("inserted")
            .node_name
            .as_deref(),
        Some("fmt0")
    );
    let stats = c.query_blockstats(Some(true)).expect("stats");
    assert_eq!(stats.len(), 2);
    assert_eq!(
        stats[0]
            .parent
            .as_ref()
            .expect("parent")
            .node_name
            .as_deref(),
        Some("file0")
    );
    assert_eq!(stats[0].device, None);
    let cmds = c.query_commands().expect("commands");
    assert!(cmds.iter().any(|c| c.name == "query-blockstats"));
    let schema = c.query_qmp_schema().expect("schema");
    assert_eq!(schema.len(), qapi::schema_info().len());
    assert_eq!(
        c.human_monitor_command("info status".into(), None)
            .expect("hmp"),
        "VM status: running\r\n"
    );
    let err = c
        .human_monitor_command("bogus".into(), None)
        .expect_err("fails");
    assert_eq!(
        err,
        ClientError::Command(QmpError::generic("unknown command: 'bogus'"))
    );
}

#[test]
fn signal_arrives_as_typed_event() {
    let c = main_client();
    c.human_monitor_command("inject-error drive0".into(), None)
        .expect("inject");
    let (ev, _) = c.next_event(WAIT).expect("ok").expect("BLOCK_IO_ERROR");
    assert_eq!(
        ev,
        Event::BlockIoError {
            owner: None,
            data: BlockIoErrorArg {
                qom_path: "/machine/peripheral/drive0/virtio-backend".into(),
                device: String::new(),
                node_name: Some("fmt0".into()),
                operation: IoOperationType::Read,
                action: BlockErrorAction::Stop,
                nospace: Some(false),
                reason: "Input/output error".into(),
            }
        }
    );
    assert_eq!(
        c.next_event(WAIT).expect("ok").expect("STOP").0,
        Event::Stop
    );
    assert_eq!(c.query_status().expect("status").status, RunState::IoError);
    // An unknown drive is rejected by the handle resolver.
    let err = c
        .human_monitor_command("inject-error nope".into(), None)
        .expect_err("unknown drive");
    assert_eq!(
        err,
        ClientError::Command(QmpError::new(
            ErrorClass::DeviceNotFound,
            "Device 'nope' not found"
        ))
    );
}

#[test]
fn explicit_handle_signal_form_carries_the_owner() {
    let events = EventQueue::default();
    let q = events.clone();
    let handler = Box::new(move |_: &str, _, _| {
        let ev = Event::BlockIoError {
            owner: Some(Blockdev("drive0".into())),
            data: BlockIoErrorArg {
                qom_path: "/machine/peripheral/drive0/virtio-backend".into(),
                device: "drive0".into(),
                node_name: None,
                operation: IoOperationType::Write,
                action: BlockErrorAction::Report,
                nospace: None,
                reason: "No space left on device".into(),
            },
        };
        let ts = Timestamp::now();
        q.lock()
            .expect("lock")
            .push(ev.to_signal_json(Some(&json!("conn-1")), ts));
        Ok(json!({}))
    });
    let conn = Connection::from_unix_stream(spawn_server(handler, events)).expect("greeting");
    conn.negotiate(false).expect("negotiate");
    let c = Client::new(conn);
    c.stop().expect("stop");
    let (ev, _) = c.next_event(WAIT).expect("ok").expect("signal");
    let Event::BlockIoError { owner, data } = ev else {
        panic!("not the signal: {ev:?}")
    };
    assert_eq!(owner, Some(Blockdev("drive0".into())));
    assert_eq!(data.action, BlockErrorAction::Report);
}

#[test]
fn async_requests_resolve_out_of_order_and_events_stream() {
    let c = main_client();
    let a = c.query_kvm_async();
    let b = c.stop_async();
    let d = c.query_status_async();
    let status = block_on(d).expect("status");
    assert_eq!(status.status, RunState::Paused);
    block_on(b).expect("stop");
    assert!(block_on(a).expect("kvm").enabled);
    let (ev, _) = block_on(c.next_event_async()).expect("event");
    assert_eq!(ev, Event::Stop);
    let st = c
        .query_status_async()
        .wait_timeout(Duration::from_secs(5))
        .expect("status");
    assert!(!st.running);
}

#[test]
fn concurrent_threads_get_their_own_replies() {
    let c = Arc::new(main_client());
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let c = Arc::clone(&c);
            std::thread::spawn(move || {
                for _ in 0..25 {
                    if i % 2 == 0 {
                        assert!(c.query_kvm().expect("kvm").present);
                    } else {
                        assert_eq!(c.query_version().expect("version").qemu.major, 7);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
}

#[test]
fn exec_oob_with_the_test_schema() {
    struct S;
    impl test_schema::commands::QmpHandles for S {
        fn resolve_widget(&self, _: &test_schema::types::Widget) -> Result<(), QmpError> {
            Ok(())
        }
    }
    impl test_schema::commands::QmpOobCommands for S {
        fn ping(&self) -> Result<(), QmpError> {
            Ok(())
        }
        fn ping_args(&self, word: String) -> Result<test_schema::types::PokeResult, QmpError> {
            Ok(test_schema::types::PokeResult {
                id: word,
                done: false,
                color: None,
                inners: vec![],
            })
        }
    }
    let events = EventQueue::default();
    let handler = Box::new(move |name: &str, args, oob| {
        if oob {
            test_schema::commands::dispatch_oob(&S, name, args)
        } else {
            Err(QmpError::command_not_found(name))
        }
    });
    let conn = Connection::from_unix_stream(spawn_server(handler, events)).expect("greeting");
    conn.negotiate(true).expect("negotiate with oob");
    let c = test_schema::client::Client::new(conn);
    c.ping_oob().expect("ping");
    assert_eq!(c.ping_args_oob("hi".into()).expect("args").id, "hi");
    let e = c
        .connection()
        .execute_oob("poke", None)
        .expect_err("not oob");
    assert_eq!(
        e,
        ClientError::Command(QmpError::generic("The command poke does not support OOB"))
    );
}

#[test]
fn closed_connection_fails_pending_and_new_requests() {
    let (client, mut server) = std::os::unix::net::UnixStream::pair().expect("pair");
    writeln!(
        server,
        "{}",
        json!({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""},
            "capabilities": []}})
    )
    .expect("greeting");
    let conn = Connection::from_unix_stream(client).expect("greeting");
    let pending = conn.request("query-status", None, false, Ok);
    drop(server);
    assert_eq!(pending.wait(), Err(ClientError::Closed));
    let later = conn.execute("query-status", None).expect_err("closed");
    assert!(
        matches!(later, ClientError::Closed | ClientError::Io(_)),
        "{later}"
    );
    assert_eq!(conn.next_event(WAIT), Err(ClientError::Closed));
}

#[test]
fn bad_greeting_is_a_protocol_error() {
    let (client, mut server) = std::os::unix::net::UnixStream::pair().expect("pair");
    writeln!(server, "{}", json!({"QMP": {"capabilities": []}})).expect("write");
    let err = Connection::from_unix_stream(client)
        .err()
        .expect("rejected");
    assert_eq!(
        err,
        ClientError::Protocol("greeting lacks QMP.version".into())
    );
}
