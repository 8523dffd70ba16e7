// SPDX-License-Identifier: Apache-2.0
//! `vmm`: boots a Linux kernel on KVM with ACPI-described devices.

mod acpi;
mod arch;
mod block_signals;
mod boot;
mod cli;
mod console;
mod device_manager;
mod disk;
mod error;
mod host;
mod layout;
mod machine;
mod memory;
mod options;
mod qmp;
mod qmp_async;
mod qmp_block;
mod qmp_socket;
mod runner;
mod seccomp;
mod signals;
mod vcpu;
mod vm;

use clap::Parser;

fn main() {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("vmm: {}", cli::one_line(&e));
            std::process::exit(1);
        }
    };
    let (config, options) = match cli.vm_config().and_then(|c| Ok((c, cli.run_options()?))) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmm: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = seccomp::set_mode(cli.seccomp) {
        eprintln!("vmm: {}", error::chain(&e));
        std::process::exit(1);
    }
    match runner::run(&config, &options) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("vmm: {}", runner::describe(&e));
            std::process::exit(1);
        }
    }
}
