// SPDX-License-Identifier: Apache-2.0
//! `vmm`: boots a Linux kernel on KVM with ACPI-described devices.

mod acpi;
mod arch;
mod block_signals;
mod blockdev;
mod boot;
mod cli;
mod console;
mod daemon;
mod device_manager;
mod disk;
mod error;
mod fdset;
mod host;
mod launcher;
mod layout;
mod machine;
mod memory;
mod migration;
mod options;
mod pty;
mod qemu_cli;
mod qmp;
mod qmp_async;
mod qmp_block;
mod qmp_socket;
mod qom;
mod report;
mod runner;
mod seccomp;
mod signals;
mod socket_console;
mod uffd;
mod vcpu;
mod vm;

use std::ffi::OsString;

use clap::Parser;

use crate::qemu_cli::Invocation;

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    let code = if qemu_cli::selected(&args) {
        qemu_main(&args)
    } else {
        vmm_main()
    };
    std::process::exit(code);
}

/// vmm's own command line.
fn vmm_main() -> i32 {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            report::error(format_args!("{}", cli::one_line(&e)));
            return 1;
        }
    };
    let (config, options) = match cli.vm_config().and_then(|c| Ok((c, cli.run_options()?))) {
        Ok(c) => c,
        Err(e) => {
            report::error(format_args!("{e}"));
            return 1;
        }
    };
    if let Err(e) = seccomp::set_mode(cli.seccomp) {
        report::error(format_args!("{}", error::chain(&e)));
        return 1;
    }
    // One thread, no filter, no guest RAM yet.
    launcher::start(false);
    finish(runner::run(&config, &options, None))
}

/// QEMU's command line (see [`qemu_cli`]): messages carry the name vmm was started as.
fn qemu_main(args: &[OsString]) -> i32 {
    let program = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| qemu_cli::PROGRAM.to_owned());
    report::configure(&program);
    let run = match qemu_cli::parse(&args[1..]) {
        Ok(Invocation::Run(run)) => run,
        Ok(Invocation::Version) => {
            print!("{}", qemu_cli::version_text());
            return 0;
        }
        Ok(Invocation::Help) => {
            print!("{}", qemu_cli::help_text());
            return 0;
        }
        Err(e) => {
            report::error(format_args!("{e}"));
            return 1;
        }
    };
    let guest_name = run
        .options
        .name
        .as_deref()
        .filter(|_| run.messages.guest_name);
    report::set_format(run.messages.timestamp, guest_name);
    let ready = if run.daemonize {
        match daemon::daemonize() {
            Ok(r) => Some(r),
            Err(e) => {
                report::error(format_args!("{}", error::chain(&e)));
                return 1;
            }
        }
    } else {
        None
    };
    // After the daemon's fork, while there is one thread, no filter and no guest RAM.
    launcher::start(run.daemonize);
    // Held (locked) until vmm exits, then removed.
    let _pidfile = match run
        .pidfile
        .as_deref()
        .map(daemon::Pidfile::create)
        .transpose()
    {
        Ok(p) => p,
        Err(e) => {
            report::error(format_args!("{}", error::chain(&e)));
            return 1;
        }
    };
    if let Err(e) = seccomp::set_mode(run.seccomp) {
        report::error(format_args!("{}", error::chain(&e)));
        return 1;
    }
    finish(runner::run(&run.config, &run.options, ready))
}

fn finish(result: Result<i32, runner::RunError>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            report::error(format_args!("{}", runner::describe(&e)));
            1
        }
    }
}
