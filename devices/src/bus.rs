// SPDX-License-Identifier: Apache-2.0
//! An address-range bus that routes port I/O or MMIO accesses from vCPU threads to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through a [`Bus`].
///
/// `base` is the start of the range the device was inserted at and `offset` the distance of the
/// access from it. Implementations must accept any `data` length (1 to 8 bytes) and any offset in
/// their range: the guest chooses both.
pub trait BusDevice: Send {
    /// Handles a read; fill `data` (it starts zeroed).
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// Handles a write of `data`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// Errors of [`Bus::insert`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// A range of zero length was given.
    #[error("Bus range at {0:#x} has zero length")]
    ZeroLength(u64),
    /// The new range overlaps one already on the bus.
    #[error("Bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A map from non-overlapping address ranges to devices.
#[derive(Clone, Default)]
pub struct Bus {
    entries: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(b, e)| (*b, e.len)))
            .finish()
    }
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    ///
    /// # Errors
    /// Rejects zero-length ranges and ranges overlapping an existing one.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        let clash_below = self
            .entries
            .range(..end)
            .next_back()
            .is_some_and(|(b, e)| b + e.len > base);
        if clash_below {
            return Err(BusError::Overlap { base, len });
        }
        self.entries.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Entry)> {
        let (base, entry) = self.entries.range(..=addr).next_back()?;
        (addr - base < entry.len).then_some((*base, entry))
    }

    /// Routes a read; returns false when no device claims `addr` (`data` is left as is).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((base, entry)) = self.find(addr) else {
            return false;
        };
        data.fill(0);
        // A device that panicked while holding its lock has already aborted the process
        // (panic = abort); a poisoned lock cannot be observed here, but recover it anyway.
        let mut dev = entry.device.lock().unwrap_or_else(|e| e.into_inner());
        dev.read(base, addr - base, data);
        true
    }

    /// Routes a write; returns false when no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((base, entry)) = self.find(addr) else {
            return false;
        };
        let mut dev = entry.device.lock().unwrap_or_else(|e| e.into_inner());
        dev.write(base, addr - base, data);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last: Option<(u64, u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data[0] = offset as u8;
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.last = Some((base, offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut data = [0xffu8; 1];
        assert!(bus.read(0x3fa, &mut data));
        assert_eq!(data[0], 2);
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(dev.lock().unwrap().last, Some((0x3f8, 7, vec![7])));
        assert!(!bus.read(0x400, &mut data));
        assert!(!bus.write(0x3f7, &[1]));
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x100, 0x10).unwrap();
        assert_eq!(
            bus.insert(dev.clone(), 0x10f, 1),
            Err(BusError::Overlap {
                base: 0x10f,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(dev.clone(), 0xf8, 0x9),
            Err(BusError::Overlap { base: 0xf8, len: 9 })
        );
        assert_eq!(
            bus.insert(dev.clone(), 0x200, 0),
            Err(BusError::ZeroLength(0x200))
        );
        assert!(bus.insert(dev.clone(), u64::MAX, 2).is_err());
        bus.insert(dev.clone(), 0x110, 0x10).unwrap();
        bus.insert(dev, 0xf0, 0x10).unwrap();
    }
}
