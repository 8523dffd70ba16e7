// SPDX-License-Identifier: Apache-2.0
//! The virtio-mmio transport's register state machine (`devices::virtio::MmioTransport`)
//! driven by a sequence of register and config-space accesses of any width and offset, over a
//! fake device that checks what the transport hands it.
//!
//! Input: the first byte configures the fake device (whether its activation fails); then each
//! access is an opcode byte — bit 0 write, bits 1-3 the width (1, 2, 3, 4, 8, 0 or 16 bytes),
//! bit 4 an aligned register (the next byte times 4) rather than a raw offset (16 bits, taken
//! modulo the 4 KiB window) — followed
//! by the offset and, for writes, the bytes written.
//!
//! Asserts, beyond not panicking:
//! - the identification registers always read their constants, `QueueNumMax` the device's
//!   sizes, and anything but an aligned 32-bit access to a register reads as zeros;
//! - the status only gains bits (until a write of 0 resets it to 0 and every queue to not
//!   ready), never reads bits outside the spec's, and keeps the handshake order (DRIVER_OK
//!   needs FEATURES_OK, which needs DRIVER, which needs ACKNOWLEDGE);
//! - the device is activated at most once per reset, only with the status at DRIVER_OK, with
//!   its own number of queues, valid ready queues no larger than it offered, and features it
//!   offered including VERSION_1; the features and queues it gets are those the driver wrote
//!   while the transport's rules allowed (a model the harness keeps from the accesses alone); it is reset exactly when it was active (on a write of 0, and
//!   when the transport is dropped);
//! - config-space accesses reach the device at the right offset, with the right bytes.

#![no_main]

use std::sync::{Arc, Mutex};

use devices::virtio::{ActivateContext, ActivateError, MmioTransport, VirtioDevice};
use devices::BusDevice;
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FAILED as FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET as NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_DRIVER_FEATURES, VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    VIRTIO_MMIO_MAGIC_VALUE, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    VIRTIO_MMIO_QUEUE_DESC_HIGH, VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_NUM_MAX, VIRTIO_MMIO_QUEUE_READY, VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_QUEUE_USED_HIGH, VIRTIO_MMIO_QUEUE_USED_LOW, VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_VENDOR_ID, VIRTIO_MMIO_VERSION,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::GuestAddress;
use devices::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const BASE: u64 = 0xd000_0000;
const SIZES: [u16; 2] = [16, 8];
const FEATURES: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | 0b1011 | (1 << 40);
const CONFIG_LEN: u64 = 24;
const DEVICE_ID: u32 = 2;

/// One queue as the driver configured it: (ready, size, descriptor table, available ring,
/// used ring).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct QueueModel {
    max: u16,
    ready: bool,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueModel {
    /// Sets the low or high half of `addr`, if the result has the ring's alignment (virtio
    /// 1.2, 2.7: 16, 2 and 4 bytes; a misaligned address is ignored).
    fn set_half(addr: &mut u64, high: bool, v: u32, align: u64) {
        let new = if high {
            (*addr & 0xffff_ffff) | (u64::from(v) << 32)
        } else {
            (*addr & !0xffff_ffff) | u64::from(v)
        };
        if new % align == 0 {
            *addr = new;
        }
    }
}

/// What the driver configured, by the transport's documented rules (driver features between
/// DRIVER and FEATURES_OK, queue setup between FEATURES_OK and DRIVER_OK, a ready queue's
/// addresses fixed, sizes powers of 2 up to the maximum), kept by the harness from the
/// accesses alone.
#[derive(Clone)]
struct Model {
    driver_features: u64,
    driver_features_sel: u32,
    queue_sel: u32,
    queues: Vec<QueueModel>,
}

impl Model {
    fn new() -> Self {
        Self {
            driver_features: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            queues: SIZES
                .iter()
                .map(|&max| QueueModel {
                    max,
                    ready: false,
                    size: max,
                    desc: 0,
                    avail: 0,
                    used: 0,
                })
                .collect(),
        }
    }

    /// A 32-bit register write, with the status before it.
    fn write(&mut self, reg: u32, v: u32, status: u32) {
        let features = status & DRIVER != 0 && status & (FEATURES_OK | FAILED) == 0;
        let setup = status & FEATURES_OK != 0 && status & (DRIVER_OK | FAILED) == 0;
        let q = self.queues.get_mut(self.queue_sel as usize);
        match (reg, q) {
            (VIRTIO_MMIO_DRIVER_FEATURES_SEL, _) => self.driver_features_sel = v,
            (VIRTIO_MMIO_DRIVER_FEATURES, _) if features => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            (VIRTIO_MMIO_QUEUE_SEL, _) => self.queue_sel = v,
            (VIRTIO_MMIO_QUEUE_NUM, Some(q)) if setup => {
                if let Ok(n) = u16::try_from(v) {
                    if n != 0 && n.is_power_of_two() && n <= q.max {
                        q.size = n;
                    }
                }
            }
            (VIRTIO_MMIO_QUEUE_READY, Some(q)) if setup => q.ready = v == 1,
            (r, Some(q)) if setup && !q.ready => match r {
                VIRTIO_MMIO_QUEUE_DESC_LOW => QueueModel::set_half(&mut q.desc, false, v, 16),
                VIRTIO_MMIO_QUEUE_DESC_HIGH => QueueModel::set_half(&mut q.desc, true, v, 16),
                VIRTIO_MMIO_QUEUE_AVAIL_LOW => QueueModel::set_half(&mut q.avail, false, v, 2),
                VIRTIO_MMIO_QUEUE_AVAIL_HIGH => QueueModel::set_half(&mut q.avail, true, v, 2),
                VIRTIO_MMIO_QUEUE_USED_LOW => QueueModel::set_half(&mut q.used, false, v, 4),
                VIRTIO_MMIO_QUEUE_USED_HIGH => QueueModel::set_half(&mut q.used, true, v, 4),
                _ => {}
            },
            _ => {}
        }
    }
}

#[derive(Default)]
struct Log {
    /// The configuration the next activation must carry.
    expected: Option<Model>,
    active: bool,
    activations: usize,
    resets: usize,
    /// Bytes of the config space (writes land here).
    config: Vec<u8>,
}

struct FakeDevice {
    log: Arc<Mutex<Log>>,
    mem: GuestMemoryMmap,
    fail: bool,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &SIZES
    }

    fn device_features(&self) -> u64 {
        FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        assert!(
            matches!(data.len(), 1 | 2 | 4 | 8),
            "config read of {}",
            data.len()
        );
        let log = self.log.lock().expect("lock");
        for (i, b) in data.iter_mut().enumerate() {
            *b = log
                .config
                .get((offset + i as u64) as usize)
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        assert!(
            matches!(data.len(), 1 | 2 | 4 | 8),
            "config write of {}",
            data.len()
        );
        let mut log = self.log.lock().expect("lock");
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = log.config.get_mut((offset + i as u64) as usize) {
                *slot = *b;
            }
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let mut log = self.log.lock().expect("lock");
        assert!(!log.active, "activated twice without a reset");
        assert_eq!(ctx.queues.len(), SIZES.len(), "queue count");
        assert_eq!(ctx.queue_events.len(), SIZES.len(), "queue event count");
        for (q, max) in ctx.queues.iter().zip(SIZES) {
            if q.ready() {
                assert!(q.is_valid(&self.mem), "an invalid queue handed over");
                assert!(q.size() <= max, "queue size {} over {max}", q.size());
            }
        }
        let m = log.expected.as_ref().expect("the harness set the model");
        assert_eq!(ctx.acked_features, m.driver_features, "acked features");
        for (i, (q, e)) in ctx.queues.iter().zip(&m.queues).enumerate() {
            let got = (
                q.ready(),
                q.size(),
                q.desc_table(),
                q.avail_ring(),
                q.used_ring(),
            );
            let want = (e.ready, e.size, e.desc, e.avail, e.used);
            assert_eq!(got, want, "queue {i} handed over");
        }
        assert_eq!(ctx.acked_features & !FEATURES, 0, "features not offered");
        assert_ne!(
            ctx.acked_features & (1 << VIRTIO_F_VERSION_1),
            0,
            "no VERSION_1"
        );
        if self.fail {
            return Err(ActivateError::QueueCount {
                expected: 0,
                got: 0,
            });
        }
        log.active = true;
        log.activations += 1;
        Ok(())
    }

    fn reset(&mut self) {
        let mut log = self.log.lock().expect("lock");
        assert!(log.active, "reset while not active");
        log.active = false;
        log.resets += 1;
    }

    fn running_queue_state(&self, _index: usize) -> Option<virtio_queue::QueueState> {
        None
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

const WIDTHS: [usize; 8] = [1, 2, 3, 4, 8, 0, 16, 4];
const KNOWN_STATUS: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | FAILED | NEEDS_RESET;

fn read_reg(t: &mut MmioTransport, reg: u32) -> u32 {
    let mut b = [0u8; 4];
    t.read(BASE, u64::from(reg), &mut b);
    u32::from_le_bytes(b)
}

/// Checks what can be checked at any moment.
fn check_state(t: &mut MmioTransport, log: &Arc<Mutex<Log>>, last_status: &mut u32) {
    assert_eq!(read_reg(t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(read_reg(t, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(read_reg(t, VIRTIO_MMIO_DEVICE_ID), DEVICE_ID);
    assert_eq!(read_reg(t, VIRTIO_MMIO_VENDOR_ID), 0x554d_4551);
    let status = read_reg(t, VIRTIO_MMIO_STATUS);
    assert_eq!(status & !KNOWN_STATUS, 0, "status {status:#x}");
    for (bit, needs) in [
        (DRIVER, ACKNOWLEDGE),
        (FEATURES_OK, DRIVER),
        (DRIVER_OK, FEATURES_OK),
    ] {
        assert!(
            status & bit == 0 || status & needs != 0,
            "status {status:#x} out of order"
        );
    }
    assert_eq!(
        *last_status & !status & !NEEDS_RESET,
        0,
        "status lost bits: {last_status:#x} -> {status:#x}"
    );
    *last_status = status;
    let active = log.lock().expect("lock").active;
    assert_eq!(active, t.is_activated(), "transport and device disagree");
    assert!(
        !active || status & DRIVER_OK != 0,
        "active without DRIVER_OK"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, mut ops)) = data.split_first() else {
        return;
    };
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("memory");
    let log = Arc::new(Mutex::new(Log {
        config: (0..CONFIG_LEN).map(|i| i as u8 ^ 0x5a).collect(),
        ..Log::default()
    }));
    let device = FakeDevice {
        log: log.clone(),
        mem: mem.clone(),
        fail: config & 1 != 0,
    };
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let mut t = MmioTransport::new(Box::new(device), mem, irq, BASE, 5, 0).expect("transport");
    let mut last_status = 0;
    let mut queue_sel = 0u32;
    let mut model = Model::new();

    while let Some((&op, rest)) = ops.split_first() {
        let write = op & 1 != 0;
        let width = WIDTHS[usize::from(op >> 1) & 7];
        let (offset, rest) = if op & 0x10 != 0 {
            let Some((&r, rest)) = rest.split_first() else {
                break;
            };
            (u64::from(r) * 4, rest)
        } else {
            let [a, b, rest @ ..] = rest else { break };
            // Within the device's window, as the bus routes accesses.
            (u64::from(u16::from_le_bytes([*a, *b]) & 0x0fff), rest)
        };
        ops = rest;
        let is_register = offset < 0x100;
        if write {
            let n = width.min(ops.len());
            let (bytes, rest) = ops.split_at(n);
            ops = rest;
            let was_active = t.is_activated();
            let value = <[u8; 4]>::try_from(bytes).map(u32::from_le_bytes).ok();
            if let (true, Some(v)) = (is_register && offset % 4 == 0, value) {
                model.write(offset as u32, v, last_status);
            }
            let resets = {
                let mut l = log.lock().expect("lock");
                l.expected = Some(model.clone());
                l.resets
            };
            t.write(BASE, offset, bytes);
            if is_register && offset == u64::from(VIRTIO_MMIO_QUEUE_SEL) {
                if let Some(v) = value {
                    queue_sel = v;
                }
            }
            if is_register && offset == u64::from(VIRTIO_MMIO_STATUS) && value == Some(0) {
                // A reset: everything back to the start.
                assert_eq!(
                    read_reg(&mut t, VIRTIO_MMIO_STATUS),
                    0,
                    "status after reset"
                );
                let new_resets = log.lock().expect("lock").resets;
                assert_eq!(new_resets, resets + usize::from(was_active), "device reset");
                assert!(!t.is_activated());
                for q in 0..SIZES.len() as u32 {
                    t.write(BASE, u64::from(VIRTIO_MMIO_QUEUE_SEL), &q.to_le_bytes());
                    assert_eq!(
                        read_reg(&mut t, VIRTIO_MMIO_QUEUE_READY),
                        0,
                        "queue {q} ready"
                    );
                }
                t.write(BASE, u64::from(VIRTIO_MMIO_QUEUE_SEL), &0u32.to_le_bytes());
                queue_sel = 0;
                last_status = 0;
                model = Model::new();
            }
            if !is_register && bytes.len() == width && matches!(width, 1 | 2 | 4 | 8) {
                let mut back = vec![0u8; width];
                t.read(BASE, offset, &mut back);
                let c = offset - 0x100;
                let expected: Vec<u8> = (0..width as u64)
                    .map(|i| {
                        let at = c + i;
                        if at < CONFIG_LEN {
                            bytes[i as usize]
                        } else {
                            0
                        }
                    })
                    .collect();
                assert_eq!(back, expected, "config space at {c:#x}");
            }
        } else {
            let mut buf = vec![0u8; width];
            t.read(BASE, offset, &mut buf);
            if is_register && (width != 4 || offset % 4 != 0) {
                assert!(
                    buf.iter().all(|&b| b == 0),
                    "odd register read gave {buf:?}"
                );
            }
            if is_register && width == 4 && offset == u64::from(VIRTIO_MMIO_QUEUE_NUM_MAX) {
                let max = SIZES.get(queue_sel as usize).map_or(0, |&m| u32::from(m));
                assert_eq!(u32::from_le_bytes(buf[..4].try_into().expect("4")), max);
            }
            if !is_register && matches!(width, 1 | 2 | 4 | 8) {
                let c = offset - 0x100;
                let l = log.lock().expect("lock");
                for (i, b) in buf.iter().enumerate() {
                    let at = (c + i as u64) as usize;
                    assert_eq!(*b, l.config.get(at).copied().unwrap_or(0), "config at {at}");
                }
            }
        }
        check_state(&mut t, &log, &mut last_status);
    }
    let was_active = t.is_activated();
    let l = log.lock().expect("lock");
    let (activations, resets) = (l.activations, l.resets);
    drop(l);
    drop(t);
    let l = log.lock().expect("lock");
    assert_eq!(l.resets, resets + usize::from(was_active), "reset on drop");
    assert_eq!(l.activations, activations);
    assert!(!l.active);
});
