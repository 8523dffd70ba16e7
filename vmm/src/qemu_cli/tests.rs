// SPDX-License-Identifier: Apache-2.0
//! QEMU's command line as libvirt 9.0 writes it, and what vmm refuses.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use monitor::Endpoint;

use super::*;
use crate::device_manager::SerialMode;
use crate::disk::DiskSource;

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn run(args: &[&str]) -> Result<QemuRun, QemuCliError> {
    match parse(&os(args))? {
        Invocation::Run(r) => Ok(*r),
        other => panic!("not a run: {other:?}"),
    }
}

fn err(args: &[&str]) -> String {
    run(args).unwrap_err().to_string()
}

/// The argv libvirt 9.0 generates for a microvm domain (`../shared/reference/libvirt-facts.md`),
/// with the secret file, the serial log's descriptor set and the monitor descriptor real.
#[test]
fn libvirts_domain_command_line() {
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let key = dir.as_path().join("master-key.aes");
    std::fs::write(&key, [7u8; 32]).unwrap();
    let log = std::fs::File::create(dir.as_path().join("serial.log")).unwrap();
    // -add-fd takes ownership of the descriptor: hand it a duplicate.
    let log_fd = nix_dup(log.as_raw_fd());
    let listener =
        std::os::unix::net::UnixListener::bind(dir.as_path().join("monitor.sock")).unwrap();
    let mon_fd = nix_dup(listener.as_raw_fd());
    let secret = format!("secret,id=masterKey0,format=raw,file={}", key.display());
    let monitor = format!("socket,id=charmonitor,fd={mon_fd},server=on,wait=off");
    let add_fd = format!("set=3,fd={log_fd},opaque=serial0-log");
    let r = run(&[
        "-name", "guest=vm1,debug-threads=on", "-S", "-object", &secret,
        "-machine", "microvm,usb=off,dump-guest-core=off", "-accel", "kvm", "-m", "256",
        "-overcommit", "mem-lock=off", "-smp", "1,sockets=1,cores=1,threads=1",
        "-uuid", "2085fafb-940b-4d34-81f3-c8103a9a1260", "-display", "none",
        "-no-user-config", "-nodefaults", "-chardev", &monitor,
        "-mon", "chardev=charmonitor,id=monitor,mode=control", "-rtc", "base=utc",
        "-no-shutdown", "-boot", "strict=on", "-kernel", "/k", "-append", "console=ttyS0",
        "-blockdev", r#"{"driver":"file","filename":"/img","node-name":"libvirt-1-storage","cache":{"direct":true,"no-flush":false},"auto-read-only":true,"discard":"unmap"}"#,
        "-blockdev", r#"{"node-name":"libvirt-1-format","read-only":false,"cache":{"direct":true,"no-flush":false},"driver":"raw","file":"libvirt-1-storage"}"#,
        "-device", "virtio-blk-device,drive=libvirt-1-format,id=virtio-disk0,bootindex=1,write-cache=on,werror=stop,rerror=report",
        "-add-fd", &add_fd,
        "-chardev", "pty,id=charserial0,logfile=/dev/fdset/3,logappend=on",
        "-device", "isa-serial,chardev=charserial0,id=serial0,index=0",
        "-audiodev", r#"{"id":"audio1","driver":"none"}"#, "-msg", "timestamp=on",
    ])
    .unwrap();
    let c = &r.config;
    assert_eq!(c.kernel.as_deref(), Some(std::path::Path::new("/k")));
    assert_eq!(
        (c.cmdline.as_str(), c.cpus, c.memory_mib),
        ("console=ttyS0", 1, 256)
    );
    assert!(!c.dump_guest_core);
    assert_eq!(c.blockdevs.len(), 2);
    assert_eq!(
        c.blockdevs[0].node_name.as_deref(),
        Some("libvirt-1-storage")
    );
    assert_eq!(
        c.blockdevs[1].node_name.as_deref(),
        Some("libvirt-1-format")
    );
    assert_eq!(c.disks.len(), 1);
    let d = &c.disks[0];
    assert_eq!(d.source, DiskSource::Node("libvirt-1-format".into()));
    assert_eq!(d.id.as_deref(), Some("virtio-disk0"));
    assert_eq!(
        (d.policy.write, d.policy.read),
        (block::OnError::Stop, block::OnError::Report)
    );
    assert_eq!(c.serial.mode, SerialMode::Pty);
    assert_eq!(c.serial.label, "charserial0");
    assert_eq!(c.serial.device_id.as_deref(), Some("serial0"));
    let log = c.serial.log.as_ref().unwrap();
    assert_eq!(
        (log.path.as_path(), log.append),
        (std::path::Path::new("/dev/fdset/3"), true)
    );
    let o = &r.options;
    assert!(o.paused && o.lifecycle.no_shutdown && !o.lifecycle.no_reboot);
    assert_eq!(o.name.as_deref(), Some("vm1"));
    assert_eq!(o.qmp.len(), 1);
    assert_eq!(o.qmp[0].endpoint, Endpoint::UnixFd(mon_fd));
    assert!(!o.qmp[0].wait);
    assert_eq!(o.monitor_chardevs[0].label, "charmonitor");
    assert_eq!(
        o.monitor_chardevs[0].filename,
        format!(
            "unix:{},server=on",
            dir.as_path().join("monitor.sock").display()
        )
    );
    assert!(r.messages.timestamp);
    assert!(!r.daemonize && r.pidfile.is_none());
    // The monitor descriptor now belongs to the monitor's endpoint; nothing here closes it.
    drop(listener);
}

fn nix_dup(fd: i32) -> i32 {
    // SAFETY: dup of an open descriptor; the result is checked.
    let d = unsafe { libc::dup(fd) };
    assert!(d > 2);
    d
}

#[test]
fn libvirts_probe_command_line() {
    let r = run(&[
        "-S",
        "-no-user-config",
        "-nodefaults",
        "-nographic",
        "-machine",
        "none,accel=kvm:tcg",
        "-qmp",
        "unix:/run/x/qmp.monitor,server=on,wait=off",
        "-pidfile",
        "/run/x/qmp.pid",
        "-daemonize",
    ])
    .unwrap();
    assert_eq!(r.config.kernel, None);
    assert_eq!(r.config.cpus, 0);
    assert_eq!(r.config.serial.mode, SerialMode::None);
    assert!(r.daemonize);
    assert_eq!(r.pidfile, Some(PathBuf::from("/run/x/qmp.pid")));
    assert_eq!(
        r.options.qmp[0].endpoint,
        Endpoint::Unix("/run/x/qmp.monitor".into())
    );
    assert_eq!(r.options.monitor_chardevs[0].label, "compat_monitor0");
}

#[test]
fn selection_by_name_or_first_option() {
    assert!(selected(&os(&[
        "/usr/bin/qemu-system-x86_64",
        "--kernel",
        "k"
    ])));
    assert!(selected(&os(&["vmm", "-machine", "none"])));
    assert!(selected(&os(&["vmm", "-S", "-nodefaults"])));
    assert!(!selected(&os(&["vmm", "--nodefaults"])));
    assert!(!selected(&os(&["vmm", "--kernel", "k", "-m", "64"])));
    assert!(!selected(&os(&["vmm", "-S", "--kernel", "k"])));
    assert!(!selected(&os(&["vmm", "-h"])));
    assert!(!selected(&os(&["vmm"])));
    assert!(!selected(&os(&["qemu-system-aarch64", "--kernel", "k"])));
}

#[test]
fn version_and_help() {
    assert!(matches!(parse(&os(&["-version"])), Ok(Invocation::Version)));
    assert!(matches!(
        parse(&os(&["-machine", "none", "--help"])),
        Ok(Invocation::Help)
    ));
    assert!(version_text().starts_with("QEMU emulator version 7.2.0 (vmm "));
    assert!(help_text().contains("  -blockdev ...\n"));
}

#[test]
fn refusals_name_the_option_in_qemus_format() {
    let k = ["-kernel", "/k"];
    let with_k = |more: &[&str]| {
        let mut v = k.to_vec();
        v.extend_from_slice(more);
        err(&v)
    };
    assert_eq!(err(&["-bogus"]), "-bogus: invalid option");
    assert_eq!(err(&["-m"]), "-m: requires an argument");
    assert_eq!(
        err(&["disk.img"]),
        "disk.img: a disk image without an option is not supported: use -blockdev and -device"
    );
    assert!(with_k(&["-no-acpi"]).starts_with("-no-acpi: vmm's machine is described by ACPI only"));
    assert!(with_k(&["-no-acpi"]).contains("<features><acpi/></features>"));
    assert!(
        with_k(&["-machine", "pc"]).starts_with("-machine pc: machine type 'pc' is not supported")
    );
    assert!(with_k(&["-accel", "tcg"]).contains("KVM only"));
    assert_eq!(
        with_k(&["-machine", "microvm,x-option-roms=off"]),
        "-machine microvm,x-option-roms=off: Invalid parameter 'x-option-roms'"
    );
    assert!(with_k(&["-smp", "2,sockets=2,cores=1,threads=1"])
        .contains("sockets='1' dies='1' cores='2'"));
    assert!(with_k(&["-smp", "2,maxcpus=4"]).contains("no CPU hotplug"));
    assert_eq!(run(&["-kernel", "/k", "-smp", "4"]).unwrap().config.cpus, 4);
    assert!(with_k(&["-smp", "65"]).contains("1 to 64"));
    assert!(with_k(&["-device", "virtio-blk-pci,drive=x"]).contains("no PCI"));
    assert_eq!(
        with_k(&["-device", "e1000"]),
        "-device e1000: 'e1000' is not a valid device model name"
    );
    assert_eq!(
        with_k(&["-device", "virtio-blk-device"]),
        "-device virtio-blk-device: drive property not set"
    );
    assert!(
        with_k(&["-device", "virtio-blk-device,drive=n,write-cache=off"])
            .contains("write-cache=off is not supported")
    );
    assert_eq!(
        with_k(&["-device", "virtio-blk-device,drive=n,werror=panic"]),
        "-device virtio-blk-device,drive=n,werror=panic: 'panic' invalid write error action"
    );
    assert_eq!(
        with_k(&["-chardev", "vc,id=x"]),
        "-chardev vc,id=x: 'vc' is not a valid char driver name"
    );
    assert_eq!(
        with_k(&["-chardev", "pty"]),
        "-chardev pty: Parameter 'id' is missing"
    );
    assert_eq!(
        with_k(&["-chardev", "pty,id=a", "-chardev", "null,id=a"]),
        "-chardev null,id=a: Duplicate ID 'a' for chardev"
    );
    assert_eq!(
        with_k(&["-device", "isa-serial,chardev=nope"]),
        "-device isa-serial,chardev=nope: chardev \"nope\" not found"
    );
    assert!(
        with_k(&["-chardev", "pty,id=a", "-mon", "chardev=a,mode=control"])
            .contains("must be a socket")
    );
    assert!(with_k(&[
        "-chardev",
        "socket,id=m,path=/q,server=on",
        "-mon",
        "chardev=m"
    ])
    .contains("only mode=control"));
    assert!(with_k(&["-chardev", "socket,id=m,path=/q"]).contains("server=on"));
    assert!(with_k(&["-serial", "pty", "-serial", "null"]).contains("one serial port"));
    assert!(with_k(&[
        "-chardev",
        "pty,id=a",
        "-device",
        "isa-serial,chardev=a,index=1"
    ])
    .contains("COM1"));
    assert!(with_k(&["-display", "gtk"]).contains("no display"));
    assert!(with_k(&["-rtc", "base=localtime"]).contains("no RTC"));
    assert!(with_k(&["-overcommit", "mem-lock=on"]).contains("mem-lock=on is not supported"));
    assert!(
        with_k(&["-machine", "microvm,usb=on"]).contains("<controller type='usb' model='none'/>")
    );
    assert_eq!(
        with_k(&["-uuid", "x"]),
        "-uuid x: Fail to parse UUID string."
    );
    assert!(with_k(&["-object", "memory-backend-ram,id=m,size=1G"])
        .ends_with("invalid object type: memory-backend-ram"));
    assert!(with_k(&["-object", "secret,id=s,file=/nonexistent/key"])
        .contains("Unable to read /nonexistent/key"));
    assert!(with_k(&["-audiodev", "pa,id=a"]).contains("no sound device"));
    assert_eq!(
        with_k(&["-blockdev", "driver=nbd,node-name=x"]),
        "-blockdev driver=nbd,node-name=x: Parameter 'driver' does not accept value 'nbd'"
    );
    assert_eq!(
        with_k(&[
            "-blockdev",
            "driver=file,node-name=x,filename=/i,aio=native"
        ]),
        "-blockdev driver=file,node-name=x,filename=/i,aio=native: Parameter 'aio' is unexpected"
    );
    assert_eq!(
        with_k(&["-blockdev", "file,filename=/i"]),
        "-blockdev file,filename=/i: Expected '=' after parameter 'file'"
    );
    assert!(with_k(&["-m", "8"]).contains("too little"));
    assert!(with_k(&["-cpu", "Skylake-Client"]).contains("-cpu host"));
    assert_eq!(
        err(&["-m", "64"]).split(':').nth(1).map(str::trim),
        Some("-kernel is required")
    );
    assert!(err(&["-machine", "none", "-kernel", "/k"]).contains("runs no guest"));
    assert!(err(&["-machine", "none", "-nographic", "-daemonize"])
        .contains("-nographic cannot be used with -daemonize"));
}

#[test]
fn blockdev_keyval_and_json_agree() {
    let kv = devices::parse_blockdev(
        "driver=file,node-name=f,filename=/a,,b,cache.direct=on,read-only=off,auto-read-only=on",
    )
    .unwrap();
    let json = devices::parse_blockdev(
        r#"{"driver":"file","node-name":"f","filename":"/a,b","cache":{"direct":true},"read-only":false,"auto-read-only":true}"#,
    )
    .unwrap();
    assert_eq!(kv, json);
    assert_eq!(kv.cache.unwrap().direct, Some(true));
}

#[test]
fn serial_and_monitor_forms() {
    let r = run(&["-kernel", "/k", "-nographic"]).unwrap();
    assert_eq!(
        r.config.serial.mode,
        SerialMode::Stdio,
        "-nographic's default serial"
    );
    let r = run(&["-kernel", "/k", "-nographic", "-nodefaults"]).unwrap();
    assert_eq!(r.config.serial.mode, SerialMode::None);
    let r = run(&["-kernel", "/k", "-serial", "file:/tmp/s.log"]).unwrap();
    assert_eq!(r.config.serial.mode, SerialMode::File("/tmp/s.log".into()));
    assert_eq!(r.config.serial.label, "serial0");
    let r = run(&[
        "-kernel",
        "/k",
        "-chardev",
        "file,id=f,path=/tmp/x,append=on",
        "-serial",
        "chardev:f",
    ])
    .unwrap();
    assert_eq!(r.config.serial.mode, SerialMode::Append("/tmp/x".into()));
    let r = run(&[
        "-kernel",
        "/k",
        "-chardev",
        "socket,id=m,path=/tmp/m.sock,server=on,wait=off",
        "-mon",
        "chardev=m,mode=control",
        "-chardev",
        "socket,id=t,host=127.0.0.1,port=4444,server=on",
        "-mon",
        "t,mode=control",
        "-qmp",
        "unix:/tmp/q.sock,server=on,wait=off",
    ])
    .unwrap();
    let eps: Vec<_> = r
        .options
        .qmp
        .iter()
        .map(|s| (s.endpoint.clone(), s.wait))
        .collect();
    assert_eq!(
        eps,
        [
            (Endpoint::Unix("/tmp/m.sock".into()), false),
            (Endpoint::Tcp("127.0.0.1".into(), 4444), true),
            (Endpoint::Unix("/tmp/q.sock".into()), false),
        ]
    );
    let labels: Vec<_> = r
        .options
        .monitor_chardevs
        .iter()
        .map(|c| c.label.as_str())
        .collect();
    assert_eq!(labels, ["m", "t", "compat_monitor0"]);
    assert!(run(&[
        "-kernel",
        "/k",
        "-chardev",
        "socket,id=m,path=/q,server=on,wait=off",
        "-mon",
        "chardev=m,mode=control",
        "-qmp",
        "unix:/q,server=on,wait=off"
    ])
    .unwrap_err()
    .to_string()
    .contains("given twice"));
}

#[test]
fn lifecycle_and_misc_options() {
    let r = run(&[
        "--kernel",
        "/k",
        "-no-reboot",
        "-enable-kvm",
        "-cpu",
        "host",
        "-m",
        "1G",
        "-msg",
        "timestamp=on,guest-name=on",
        "-name",
        "web",
        "-boot",
        "order=c,menu=off",
        "-rtc",
        "base=utc,clock=host,driftfix=none",
        "-overcommit",
        "cpu-pm=off",
    ])
    .unwrap();
    assert!(r.options.lifecycle.no_reboot && !r.options.lifecycle.no_shutdown);
    assert_eq!(r.config.memory_mib, 1024);
    assert!(r.messages.guest_name && r.messages.timestamp);
    assert_eq!(r.options.name.as_deref(), Some("web"));
    assert_eq!(r.config.memory_mib, 1024);
    assert_eq!(
        run(&["-kernel", "/k"]).unwrap().config.memory_mib,
        machine::DEFAULT_MEMORY_MIB
    );
    assert!(run(&["-kernel", "/k"]).unwrap().config.dump_guest_core);
}

/// Every parameter `query-command-line-options` lists is one the parser takes.
#[test]
fn listed_parameters_are_accepted() {
    for info in options_info::OPTION_LISTS {
        for (param, ty) in info.parameters {
            let value = match ty {
                qapi::types::CommandLineParameterType::Boolean => "off",
                qapi::types::CommandLineParameterType::Number => "1",
                qapi::types::CommandLineParameterType::Size => "64M",
                qapi::types::CommandLineParameterType::String => "x",
            };
            let arg = format!("{param}={value}");
            let option = match info.name {
                "memory" => "m",
                "smp-opts" => "smp",
                "boot-opts" => "boot",
                other => other,
            };
            let opt = Opt {
                name: OPTIONS.iter().find(|(n, _)| *n == option).unwrap().0,
                arg: Some(arg.clone()),
            };
            let mut g = Gathered::default();
            let result = if option == "chardev" {
                g.chardevs.define(&arg)
            } else {
                gather(&mut g, &opt)
            };
            if let Err(Problem::UnknownKey(k)) = &result {
                panic!("-{option} {arg}: {k} is listed but refused");
            }
        }
    }
    // Listed, so libvirt sends -sandbox (which maps onto the seccomp filters).
    assert_eq!(options_info::query(Some("sandbox")).unwrap().len(), 1);
    assert!(options_info::query(Some("spice")).is_err());
    assert_eq!(options_info::query(Some("memory")).unwrap().len(), 1);
}

/// Every property `device-list-properties` lists is one `-device` takes.
#[test]
fn listed_device_properties_are_accepted() {
    for (driver, props) in [
        ("virtio-blk-device", crate::qom::VIRTIO_BLK_PROPERTIES),
        ("isa-serial", crate::qom::ISA_SERIAL_PROPERTIES),
    ] {
        for p in props {
            let value = match p.name {
                "werror" | "rerror" => "report",
                "write-cache" => "on",
                "iobase" => "0x3f8",
                "irq" => "4",
                "index" | "bootindex" => "0",
                "num-queues" => "2",
                _ => "x",
            };
            let (required, sample) = if driver == "isa-serial" {
                ("chardev", "c")
            } else {
                ("drive", "n")
            };
            let spec = if p.name == required {
                format!("{driver},{required}={sample}")
            } else {
                format!("{driver},{required}={sample},{}={value}", p.name)
            };
            match devices::parse_device(&spec) {
                Ok(_) => {}
                Err(e) => panic!("{spec}: {e}"),
            }
        }
    }
}

/// `-sandbox` maps onto vmm's seccomp filters: on (also what libvirt sends once the option is
/// listed), off, and the default on without it; allowing what the filters deny is refused.
#[test]
fn sandbox_maps_onto_the_seccomp_filters() {
    use crate::seccomp::SeccompMode;
    let base = [
        "-machine",
        "none",
        "-qmp",
        "unix:/run/x/q,server=on,wait=off",
    ];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        run(&a)
    };
    assert_eq!(with(&[]).unwrap().seccomp, SeccompMode::On);
    let libvirt = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";
    assert_eq!(
        with(&["-sandbox", libvirt]).unwrap().seccomp,
        SeccompMode::On
    );
    assert_eq!(
        with(&["-sandbox", "off"]).unwrap().seccomp,
        SeccompMode::Off
    );
    let e = with(&["-sandbox", "on,spawn=allow"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spawn=allow") && e.contains("always deny"),
        "{e}"
    );
}
