//! Host-testable parts of the probe guest: readers for the boot information
//! (Linux `boot_params`, PVH `hvm_start_info`), ACPI tables, AML (DSDT) and
//! resource templates, the kernel command line, the disk sector pattern and
//! mem-walk's page format.
//!
//! Everything here is plain `no_std` Rust over byte slices, so the unit tests
//! run on the host with `cargo test --lib`; the guest binary (`src/main.rs`)
//! uses the same code on its identity-mapped physical memory.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

pub mod acpi;
pub mod aml;
pub mod bootinfo;
pub mod bytes;
pub mod cmdline;
pub mod memwalk;
pub mod pattern;
pub mod physmem;
pub mod resource;

#[cfg(test)]
mod fixture_tests;
