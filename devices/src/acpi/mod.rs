// SPDX-License-Identifier: Apache-2.0
//! Hardware-reduced ACPI devices: the power-management registers and the generic event device.

pub mod ged;
pub mod pm;

pub use ged::{Ged, GedError, GedState};
pub use pm::{AcpiPm, AcpiPmState};
