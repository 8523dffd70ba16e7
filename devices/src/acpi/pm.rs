// SPDX-License-Identifier: Apache-2.0
//! The hardware-reduced ACPI sleep and reset registers, one byte each in a small I/O port block.
//!
//! The FADT points the guest at these registers: it powers off by writing `SLP_TYP = 5` (the
//! value of `\_S5`) with `SLP_EN` to the sleep control register, and reboots by writing
//! [`RESET_VALUE`] to the reset register.

use acpi_tables::{aml, Aml, AmlSink};

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;
use crate::event::{ResetCause, VmEvent, VmEventSink};
use crate::state::StateError;

/// The register block's guest-visible state: none. This is hardware-reduced ACPI: there are
/// no PM1 status, enable or control registers (no fixed events, no SCI), the sleep control and
/// reset registers are write-only and act at once, and sleep status always reads "not woken".
/// The struct has no fields; it is saved so that the format names the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AcpiPmState {}

/// Offset of the sleep control register in the block.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of the sleep status register in the block.
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// Offset of the reset register in the block.
pub const RESET_OFFSET: u64 = 2;
/// Length of the register block in ports.
pub const BLOCK_LEN: u64 = 4;
/// The value the guest writes to the reset register (the FADT's `RESET_VALUE`).
pub const RESET_VALUE: u8 = 0x42;
/// The sleep type of S5 (soft off), as declared by `\_S5` in the DSDT.
pub const SLP_TYP_S5: u8 = 5;

/// `SLP_EN`: bit 5 of the sleep control register.
const SLP_EN: u8 = 1 << 5;
/// `SLP_TYPx`: bits 2..=4 of the sleep control register.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;

/// The sleep/reset register block.
#[derive(Debug)]
pub struct AcpiPm {
    events: VmEventSink,
}

impl AcpiPm {
    /// Creates the block; poweroff and reset requests go to `events`.
    pub fn new(events: VmEventSink) -> Self {
        Self { events }
    }
}

impl AcpiPm {
    /// The block's state (it has none; see [`AcpiPmState`]).
    pub fn save_state(&self) -> AcpiPmState {
        AcpiPmState {}
    }

    /// Restores [`AcpiPmState`]: nothing to take.
    ///
    /// # Errors
    /// None (the `Result` keeps the devices' restores alike).
    pub fn restore_state(&mut self, _state: &AcpiPmState) -> Result<(), StateError> {
        Ok(())
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        // Sleep status reads as "not woken"; the other registers are write-only.
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            SLEEP_CONTROL_OFFSET => {
                let slp_typ = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if value & SLP_EN != 0 && slp_typ == SLP_TYP_S5 {
                    self.events.send(VmEvent::PowerOff);
                }
            }
            RESET_OFFSET if value == RESET_VALUE => {
                self.events
                    .send(VmEvent::Reset(ResetCause::AcpiResetRegister));
            }
            _ => {}
        }
    }
}

/// Declares `\_S5` so the guest knows which sleep type means soft off.
impl Aml for AcpiPm {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        aml::Name::new(
            "_S5_".into(),
            &aml::Package::new(vec![&SLP_TYP_S5, &SLP_TYP_S5, &aml::ZERO, &aml::ZERO]),
        )
        .to_aml_bytes(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (sink, rx, _wake) = VmEventSink::new().unwrap();
        let mut pm = AcpiPm::new(sink);
        // SLP_TYP 5 without SLP_EN, and another sleep type with SLP_EN: no effect.
        pm.write(0x600, SLEEP_CONTROL_OFFSET, &[5 << 2]);
        pm.write(0x600, SLEEP_CONTROL_OFFSET, &[(3 << 2) | SLP_EN]);
        assert!(rx.try_recv().is_err());
        pm.write(0x600, SLEEP_CONTROL_OFFSET, &[0x34]);
        assert_eq!(rx.try_recv().unwrap(), VmEvent::PowerOff);
    }

    #[test]
    fn reset_value_resets() {
        let (sink, rx, _wake) = VmEventSink::new().unwrap();
        let mut pm = AcpiPm::new(sink);
        pm.write(0x600, RESET_OFFSET, &[1]);
        pm.write(0x600, RESET_OFFSET, &[]);
        assert!(rx.try_recv().is_err());
        pm.write(0x600, RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(
            rx.try_recv().unwrap(),
            VmEvent::Reset(ResetCause::AcpiResetRegister)
        );
    }

    #[test]
    fn s5_package_bytes() {
        let (sink, _rx, _wake) = VmEventSink::new().unwrap();
        let mut bytes = Vec::new();
        AcpiPm::new(sink).to_aml_bytes(&mut bytes);
        // NameOp "_S5_" PackageOp len=6 count=4 BytePrefix 5 BytePrefix 5 Zero Zero
        assert_eq!(
            bytes,
            [0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00]
        );
    }
}
