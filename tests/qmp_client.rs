// SPDX-License-Identifier: Apache-2.0
//! The QMP monitor driven by our own typed client (generated from the schema) against a VM
//! running the probe guest: commands, events and their order, run states, OOB.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{probe_bzimage, spawn, Running};
use qapi::client::{ClientError, Connection};
use qapi::events::Event;
use qapi::qmp::client::Client;
use qapi::types::{RunState, ShutdownCause};

const GUARD: Duration = Duration::from_secs(60);

fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vmm-qmp-{tag}-{}.sock", std::process::id()))
}

/// Starts vmm with the probe guest and a QMP socket; returns it and a negotiated client. The
/// VM is created paused and continued once the session exists, unless `extra` asks for `-S`.
fn start(tag: &str, workload: &str, extra: &[&str]) -> (Running, Client, PathBuf) {
    let sock = socket_path(tag);
    let qmp = format!("unix:{}", sock.display());
    let kernel = probe_bzimage();
    let mut args = vec![
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        workload,
        "--qmp",
        &qmp,
        "-S",
    ];
    args.extend(extra.iter().filter(|a| **a != "-S"));
    let vm = spawn(&args);
    let deadline = Instant::now() + GUARD;
    let conn = loop {
        match Connection::connect_unix(&sock) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("cannot connect to {}: {e}", sock.display()),
        }
    };
    assert_eq!(
        conn.greeting().capabilities,
        vec!["oob".to_string(), "explicit-handles".to_string()]
    );
    conn.negotiate(true).expect("qmp_capabilities");
    let c = Client::new(conn);
    if !extra.contains(&"-S") {
        // Started paused so that no event predates the session: run it now, as libvirt does.
        assert_eq!(c.query_status().unwrap().status, RunState::Prelaunch);
        c.cont().unwrap();
        assert!(matches!(next_event(&c), Event::Resume));
    }
    (vm, c, sock)
}

fn next_event(c: &Client) -> Event {
    c.next_event(Some(GUARD))
        .expect("event")
        .expect("an event before the guard")
        .0
}

#[test]
fn run_states_and_their_events() {
    let (mut vm, c, _) = start("states", "probe.test=idle", &["--name", "states-vm"]);
    vm.wait_line("PROBE idle", GUARD);
    assert_eq!(c.query_status().unwrap().status, RunState::Running);
    c.stop().unwrap();
    assert!(matches!(next_event(&c), Event::Stop));
    let s = c.query_status().unwrap();
    assert_eq!(
        (s.status, s.running, s.singlestep),
        (RunState::Paused, false, false)
    );
    // Out of band, the monitor thread reads the same state.
    assert_eq!(c.query_status_oob().unwrap().status, RunState::Paused);
    // stop while paused: no event, no error.
    c.stop().unwrap();
    assert_eq!(
        c.human_monitor_command("info status".into(), None).unwrap(),
        "VM status: paused\r\n"
    );
    c.cont().unwrap();
    assert!(matches!(next_event(&c), Event::Resume));
    assert_eq!(c.query_status().unwrap().status, RunState::Running);
    assert_eq!(c.query_name().unwrap().name.as_deref(), Some("states-vm"));
    assert_eq!(
        c.query_name_oob().unwrap().name.as_deref(),
        Some("states-vm")
    );
    c.quit().unwrap();
    match next_event(&c) {
        Event::Shutdown(a) => assert_eq!((a.guest, a.reason), (false, ShutdownCause::HostQmpQuit)),
        e => panic!("expected SHUTDOWN, got {e:?}"),
    }
    vm.finish(GUARD).assert_exit(0);
}

#[test]
fn reset_and_powerdown_reach_the_guest() {
    let (mut vm, c, sock) = start("power", "probe.test=idle", &[]);
    vm.wait_line("PROBE idle", GUARD);
    c.system_reset().unwrap();
    match next_event(&c) {
        Event::Reset(a) => assert_eq!(
            (a.guest, a.reason),
            (false, ShutdownCause::HostQmpSystemReset)
        ),
        e => panic!("expected RESET, got {e:?}"),
    }
    vm.wait_line("PROBE ready", GUARD);
    vm.wait_line("PROBE idle", GUARD);
    c.system_powerdown().unwrap();
    assert!(matches!(next_event(&c), Event::Powerdown));
    vm.wait_line("PROBE power-button", GUARD);
    match next_event(&c) {
        Event::Shutdown(a) => assert_eq!((a.guest, a.reason), (true, ShutdownCause::GuestShutdown)),
        e => panic!("expected SHUTDOWN, got {e:?}"),
    }
    let out = vm.finish(GUARD);
    out.assert_exit(0);
    assert!(!sock.exists(), "socket file left behind");
    // The connection is closed once vmm is gone.
    assert!(matches!(
        c.query_status(),
        Err(ClientError::Closed | ClientError::Io(_))
    ));
}

#[test]
fn prelaunch_until_cont() {
    let (mut vm, c, _) = start("prelaunch", "probe.test=idle", &["-S"]);
    let s = c.query_status().unwrap();
    assert_eq!((s.status, s.running), (RunState::Prelaunch, false));
    c.cont().unwrap();
    assert!(matches!(next_event(&c), Event::Resume));
    vm.wait_line("PROBE ready", GUARD);
    vm.signal(libc::SIGTERM);
    match next_event(&c) {
        Event::Shutdown(a) => assert_eq!((a.guest, a.reason), (false, ShutdownCause::HostSignal)),
        e => panic!("expected SHUTDOWN, got {e:?}"),
    }
    vm.finish(GUARD).assert_exit(0);
}

#[test]
fn machine_queries() {
    let (vm, c, _) = start("queries", "probe.test=idle", &["--cpus", "3"]);
    let v = c.query_version().unwrap();
    assert_eq!((v.qemu.major, v.qemu.minor), (7, 2));
    assert!(v.package.starts_with("vmm "));
    let kvm = c.query_kvm().unwrap();
    assert!(kvm.enabled && kvm.present);
    let cpus = c.query_cpus_fast().unwrap();
    assert_eq!(cpus.len(), 3);
    for (i, cpu) in cpus.iter().enumerate() {
        assert_eq!(cpu.cpu_index, i as i64);
        let task = format!("/proc/{}/task/{}", vm.pid(), cpu.thread_id);
        assert!(
            std::path::Path::new(&task).exists(),
            "{task} is not a vmm thread"
        );
    }
    let names: Vec<String> = c
        .query_commands()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    for cmd in [
        "qmp_capabilities",
        "query-status",
        "human-monitor-command",
        "query-blockstats",
    ] {
        assert!(names.iter().any(|n| n == cmd), "{cmd} missing");
    }
    let schema = c.query_qmp_schema().unwrap();
    assert!(schema.len() > names.len());
    assert!(c.query_block().unwrap().is_empty());
    assert!(c.query_blockstats(None).unwrap().is_empty());
    // A command that is not allow-oob cannot be sent out of band.
    let e = c.connection().execute_oob("stop", None).unwrap_err();
    match e {
        ClientError::Command(q) => assert_eq!(q.desc, "The command stop does not support OOB"),
        e => panic!("{e:?}"),
    }
    assert_eq!(c.query_status().unwrap().status, RunState::Running);
    drop(c);
    vm.signal(libc::SIGTERM);
    vm.finish(GUARD).assert_exit(0);
}

#[test]
fn hmp_commands() {
    let (mut vm, c, _) = start("hmp", "probe.test=idle", &[]);
    vm.wait_line("PROBE idle", GUARD);
    let hmp = |line: &str| c.human_monitor_command(line.into(), None).unwrap();
    assert_eq!(hmp("info status"), "VM status: running\r\n");
    assert!(hmp("info version").starts_with("7.2.0 (vmm "));
    assert_eq!(hmp("info block"), "");
    assert!(hmp("help").contains("system_powerdown -- "));
    assert_eq!(hmp("frobnicate"), "unknown command: 'frobnicate'\r\n");
    assert_eq!(hmp("info frob"), "unknown command: 'info frob'\r\n");
    assert_eq!(hmp("stop"), "");
    assert!(matches!(next_event(&c), Event::Stop));
    assert_eq!(hmp("info status"), "VM status: paused\r\n");
    assert_eq!(hmp("cont"), "");
    assert!(matches!(next_event(&c), Event::Resume));
    let e = c
        .human_monitor_command("info status".into(), Some(7))
        .unwrap_err();
    assert!(
        matches!(e, ClientError::Command(ref q) if q.desc == "Parameter 'cpu-index' expects a CPU number"),
        "{e:?}"
    );
    assert_eq!(hmp("system_powerdown"), "");
    vm.wait_line("PROBE power-button", GUARD);
    vm.finish(GUARD).assert_exit(0);
}

#[test]
fn guest_reset_with_no_reboot_is_a_shutdown() {
    let (vm, c, _) = start("noreboot", "probe.test=reboot", &["--no-reboot"]);
    match next_event(&c) {
        Event::Shutdown(a) => assert_eq!((a.guest, a.reason), (true, ShutdownCause::GuestReset)),
        e => panic!("expected SHUTDOWN, got {e:?}"),
    }
    vm.finish(GUARD).assert_exit(0);
}

#[test]
fn typed_signal_connections_with_explicit_handles() {
    use qapi::types::{
        BlockDeviceIoStatus, BlockErrorAction, BlockInjectErrno, BlockInjectOperation, Blockdev,
        IoOperationType, Machine,
    };

    let img = std::env::temp_dir().join(format!("vmm-qmp-signals-{}.raw", std::process::id()));
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(1 << 20))
        .unwrap();
    let sock = socket_path("signals");
    let qmp = format!("unix:{}", sock.display());
    let disk = format!("path={},werror=stop", img.display());
    let kernel = probe_bzimage();
    let mut vm = spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "probe.test=blk-write,idle probe.count=8",
        "--disk",
        &disk,
        "--qmp",
        &qmp,
        "-S",
    ]);
    let deadline = Instant::now() + GUARD;
    let conn = loop {
        match Connection::connect_unix(&sock) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("cannot connect to {}: {e}", sock.display()),
        }
    };
    conn.negotiate_with(&["explicit-handles"]).unwrap();
    let c = Client::new(conn);
    let drive = Blockdev("drive0".into());
    let errors = c
        .connect_block_io_error(&drive, Some(serde_json::json!("tag")))
        .unwrap();
    let stops = c.connect_stop(&Machine("/machine".into()), None).unwrap();
    let rule = c
        .blockdev_inject_error(
            drive.clone(),
            BlockInjectOperation::Write,
            Some(BlockInjectErrno::Eio),
            None,
            None,
            None,
            None,
        )
        .unwrap();
    assert_eq!(rule.id, 1);
    c.cont().unwrap();
    let e = errors.next(Some(GUARD)).unwrap().expect("BLOCK_IO_ERROR");
    assert_eq!(e.user_data, Some(serde_json::json!("tag")));
    assert_eq!(e.data.device, "drive0");
    assert_eq!(e.data.qom_path, "/machine/peripheral/drive0/virtio-backend");
    assert_eq!(e.data.operation, IoOperationType::Write);
    assert_eq!(e.data.action, BlockErrorAction::Stop);
    assert_eq!(e.data.nospace, Some(false));
    assert_eq!(e.data.reason, "Input/output error");
    stops.next(Some(GUARD)).unwrap().expect("STOP");
    assert_eq!(c.query_status().unwrap().status, RunState::IoError);
    // Replies carry handles in canonical form; the typed client reads them as handles.
    let blocks = c.query_block().unwrap();
    assert_eq!(blocks[0].device, drive);
    assert_eq!(blocks[0].io_status, Some(BlockDeviceIoStatus::Failed));
    c.blockdev_inject_error_remove(drive.clone(), None).unwrap();
    c.cont().unwrap();
    vm.wait_line("PROBE blk-write dev=0 lba=0 count=8 status=ok", GUARD);
    assert_eq!(
        c.query_block().unwrap()[0].io_status,
        Some(BlockDeviceIoStatus::Ok)
    );
    errors.disconnect().unwrap();
    stops.disconnect().unwrap();
    c.quit().unwrap();
    vm.finish(GUARD).assert_exit(0);
    let _ = std::fs::remove_file(&img);
}

#[test]
fn out_of_band_answers_while_stop_waits_for_hung_io() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use qapi::types::{BlockInjectOperation, Blockdev};

    let img = std::env::temp_dir().join(format!("vmm-qmp-oob-{}.raw", std::process::id()));
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(1 << 20))
        .unwrap();
    let disk = format!("path={},werror=report", img.display());
    let (mut vm, c, sock) = start(
        "oob-stall",
        "probe.test=io-loop probe.count=1",
        &["--disk", &disk, "-S"],
    );
    // Every guest write waits for an hour (a delay rule without an error): hung storage.
    c.blockdev_inject_error(
        Blockdev("drive0".into()),
        BlockInjectOperation::Write,
        None,
        None,
        None,
        None,
        Some(3_600_000),
    )
    .unwrap();
    c.cont().unwrap();
    vm.wait_line("PROBE io-loop dev=0", GUARD);
    let deadline = Instant::now() + GUARD;
    while c
        .query_blockdev_inject_errors(Blockdev("drive0".into()))
        .unwrap()[0]
        .held
        != 1
    {
        assert!(
            Instant::now() < deadline,
            "the guest's write was never held"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The guest's first write is held: `stop` waits for it to drain.
    let other = Client::new({
        let conn = Connection::connect_unix(&sock).unwrap();
        conn.negotiate(true).unwrap();
        conn
    });
    let done = Arc::new(AtomicBool::new(false));
    let stop = {
        let (reply, done) = (c.stop_async(), done.clone());
        std::thread::spawn(move || {
            let r = reply.wait();
            done.store(true, Ordering::Release);
            r
        })
    };
    let deadline = Instant::now() + GUARD;
    while c.query_status_oob().unwrap().status != RunState::Paused {
        assert!(Instant::now() < deadline, "STOP never published");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Out of band on the waiting session, and in band on another one, while stop waits.
    assert_eq!(c.query_name_oob().unwrap().name, None);
    assert_eq!(other.query_status().unwrap().status, RunState::Paused);
    assert!(
        !done.load(Ordering::Acquire),
        "stop returned before the drain"
    );
    other
        .blockdev_inject_error_remove(Blockdev("drive0".into()), None)
        .unwrap();
    stop.join().unwrap().unwrap();
    c.quit().unwrap();
    vm.finish(GUARD).assert_exit(0);
    let _ = std::fs::remove_file(&img);
}

#[test]
fn yank_out_of_band_ends_a_stop_waiting_for_hung_io() {
    use qapi::types::{
        BlockInjectOperation, Blockdev, YankInstance, YankInstanceBlockNode, YankInstanceBranch,
    };

    let img = std::env::temp_dir().join(format!("vmm-qmp-yank-{}.raw", std::process::id()));
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(1 << 20))
        .unwrap();
    let disk = format!("path={},node-name=disk0,werror=report", img.display());
    let (vm, c, _sock) = start(
        "yank-stall",
        "probe.test=io-loop probe.count=1",
        &["--disk", &disk, "-S"],
    );
    let node = YankInstance {
        branch: YankInstanceBranch::BlockNode(YankInstanceBlockNode {
            node_name: "disk0".into(),
        }),
    };
    assert_eq!(c.query_yank_oob().unwrap(), vec![node.clone()]);
    // Every guest write waits for an hour: storage that stopped answering.
    c.blockdev_inject_error(
        Blockdev("drive0".into()),
        BlockInjectOperation::Write,
        None,
        None,
        None,
        None,
        Some(3_600_000),
    )
    .unwrap();
    c.cont().unwrap();
    let deadline = Instant::now() + GUARD;
    while c
        .query_blockdev_inject_errors(Blockdev("drive0".into()))
        .unwrap()[0]
        .held
        != 1
    {
        assert!(
            Instant::now() < deadline,
            "the guest's write was never held"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let stop = c.stop_async();
    let deadline = Instant::now() + GUARD;
    while c.query_status_oob().unwrap().status != RunState::Paused {
        assert!(Instant::now() < deadline, "STOP never published");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The drain waits for the held write until the yank fails it (EIO, werror=report).
    c.yank_oob(vec![node]).unwrap();
    stop.wait().unwrap();
    let stats = c.query_blockstats(None).unwrap();
    assert_eq!(stats[0].stats.failed_wr_operations, 1);
    c.quit().unwrap();
    vm.finish(GUARD).assert_exit(0);
    let _ = std::fs::remove_file(&img);
}
