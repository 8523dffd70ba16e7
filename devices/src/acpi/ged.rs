// SPDX-License-Identifier: Apache-2.0
//! A Generic Event Device (`ACPI0013`) that delivers the ACPI power button.
//!
//! The GED owns one interrupt. Linux's `evged` driver runs the GED's `_EVT` method when it
//! fires, and `_EVT` notifies the power button device (`PNP0C0C`) with 0x80 ("button pressed"),
//! which the guest's button driver turns into an orderly shutdown.

use acpi_tables::{aml, Aml, AmlSink};
use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use crate::state::StateError;

/// The GED's guest-visible state: none. It has no event register: a press is an edge on its
/// interrupt (whose pending state is the interrupt controller's, saved with KVM's irqchip)
/// and `_EVT` always notifies the button. The struct has no fields; it is saved so that the
/// format names the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GedState {}

/// Errors of the GED.
#[derive(Debug, thiserror::Error)]
pub enum GedError {
    /// Writing the irqfd failed.
    #[error("Cannot raise the power-button interrupt")]
    Interrupt(#[source] std::io::Error),
}

/// The power-button GED: an interrupt line and its AML.
#[derive(Debug)]
pub struct Ged {
    irq: EventFd,
    gsi: u32,
}

impl Ged {
    /// Creates the GED on `gsi`; `irq` must be registered with KVM as the irqfd of `gsi`.
    pub fn new(irq: EventFd, gsi: u32) -> Self {
        Self { irq, gsi }
    }

    /// The GED's state (it has none; see [`GedState`]).
    pub fn save_state(&self) -> GedState {
        GedState {}
    }

    /// Restores [`GedState`]: nothing to take.
    ///
    /// # Errors
    /// None (the `Result` keeps the devices' restores alike).
    pub fn restore_state(&self, _state: &GedState) -> Result<(), StateError> {
        Ok(())
    }

    /// Presses the power button.
    ///
    /// # Errors
    /// Fails when the interrupt cannot be raised.
    pub fn press_power_button(&self) -> Result<(), GedError> {
        self.irq.write(1).map_err(GedError::Interrupt)
    }
}

impl Aml for Ged {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        aml::Device::new(
            "_SB_.PWRB".into(),
            vec![
                &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C")),
                &aml::Name::new("_UID".into(), &aml::ZERO),
            ],
        )
        .to_aml_bytes(sink);
        aml::Device::new(
            "_SB_.GED_".into(),
            vec![
                &aml::Name::new("_HID".into(), &"ACPI0013"),
                &aml::Name::new("_UID".into(), &aml::ZERO),
                &aml::Name::new(
                    "_CRS".into(),
                    &aml::ResourceTemplate::new(vec![&aml::Interrupt::new(
                        true, true, false, false, self.gsi,
                    )]),
                ),
                &aml::Method::new(
                    "_EVT".into(),
                    1,
                    true,
                    vec![&aml::Notify::new(&aml::Path::new("\\_SB_.PWRB"), &0x80u8)],
                ),
            ],
        )
        .to_aml_bytes(sink);
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;

    #[test]
    fn button_raises_the_interrupt() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let ged = Ged::new(irq.try_clone().unwrap(), 5);
        ged.press_power_button().unwrap();
        assert_eq!(irq.read().unwrap(), 1);
    }

    #[test]
    fn aml_declares_button_and_ged() {
        let ged = Ged::new(EventFd::new(EFD_NONBLOCK).unwrap(), 5);
        let mut bytes = Vec::new();
        ged.to_aml_bytes(&mut bytes);
        let find = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        // EISAID("PNP0C0C") = 0x0C0CD041 as a DWordConst.
        assert!(find(&[0x0c, 0x41, 0xd0, 0x0c, 0x0c]));
        assert!(find(b"ACPI0013\0"));
        // The interrupt descriptor for GSI 5, edge, active high, exclusive, consumer.
        assert!(find(&[
            0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00, 0x00, 0x00
        ]));
        // Notify(\_SB_.PWRB, 0x80)
        assert!(find(&[
            0x86, b'\\', 0x2e, b'_', b'S', b'B', b'_', b'P', b'W', b'R', b'B', 0x0a, 0x80
        ]));
    }
}
