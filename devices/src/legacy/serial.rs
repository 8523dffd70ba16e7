// SPDX-License-Identifier: Apache-2.0
//! A 16550A-compatible UART (COM1) backed by vm-superio, wired to an irqfd.

use std::io::Write;

use acpi_tables::{aml, Aml, AmlSink};
use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::state::StateError;

/// The receive FIFO's size (vm-superio's, a 16550A's).
const FIFO_SIZE: usize = 64;

/// COM1's guest-visible state: every register of the 16550A and the bytes of host input the
/// guest has not read yet. The output side is host-side (where the bytes go) and not saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialDeviceState {
    /// Divisor latch, low byte (DLL, offset 0 with LCR.DLAB set).
    pub divisor_low: u8,
    /// Divisor latch, high byte (DLM, offset 1 with LCR.DLAB set).
    pub divisor_high: u8,
    /// Interrupt enable register (IER, offset 1).
    pub interrupt_enable: u8,
    /// Interrupt identification (IIR, offset 2, without the FIFO bits): the pending
    /// interrupts (bit 0 set means none is pending).
    pub interrupt_identification: u8,
    /// Line control register (LCR, offset 3; bit 7 is DLAB).
    pub line_control: u8,
    /// Line status register (LSR, offset 5; bit 0 is "data ready").
    pub line_status: u8,
    /// Modem control register (MCR, offset 4; bit 4 is loopback).
    pub modem_control: u8,
    /// Modem status register (MSR, offset 6).
    pub modem_status: u8,
    /// Scratch register (SCR, offset 7).
    pub scratch: u8,
    /// Received bytes not yet read by the guest, oldest first (at most 64).
    pub rx_fifo: Vec<u8>,
}

/// Raises a guest interrupt by writing an eventfd registered with KVM as an irqfd.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The guest's COM1: I/O ports `base..base + 8`, interrupt `gsi`.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
    base: u16,
    gsi: u32,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice")
            .field("base", &self.base)
            .field("gsi", &self.gsi)
            .finish()
    }
}

impl SerialDevice {
    /// Creates the UART. Guest output goes to `out`; interrupts go through `irq`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>, base: u16, gsi: u32) -> Self {
        Self {
            uart: Serial::new(IrqTrigger(irq), out),
            base,
            gsi,
        }
    }

    /// Returns the UART to its power-on state (a system reset): interrupts disabled, line and
    /// modem control at their defaults, the receive FIFO empty. Without this the next boot
    /// would find the previous driver's interrupt enables and take interrupts it did not ask
    /// for. Guest output keeps going where it went.
    ///
    /// # Errors
    /// Fails when the interrupt eventfd cannot be duplicated (file descriptor limit); the UART
    /// is then left as it was.
    pub fn reset(&mut self) -> std::io::Result<()> {
        let irq = self.uart.interrupt_evt().0.try_clone()?;
        let spare = irq.try_clone()?;
        let old = std::mem::replace(
            &mut self.uart,
            Serial::new(IrqTrigger(spare), Box::new(std::io::sink())),
        );
        self.uart = Serial::new(IrqTrigger(irq), old.into_writer());
        Ok(())
    }

    /// The UART's registers and unread input, for a migration.
    pub fn save_state(&self) -> SerialDeviceState {
        let s = self.uart.state();
        SerialDeviceState {
            divisor_low: s.baud_divisor_low,
            divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            rx_fifo: s.in_buffer,
        }
    }

    /// The checks of [`SerialDevice::restore_state`], changing nothing.
    ///
    /// # Errors
    /// A receive FIFO longer than the UART's.
    pub fn check_state(state: &SerialDeviceState) -> Result<(), StateError> {
        if state.rx_fifo.len() > FIFO_SIZE {
            return Err(StateError::SerialFifo(state.rx_fifo.len()));
        }
        Ok(())
    }

    /// Takes the registers and unread input of `state`; output keeps going where it went. An
    /// interrupt that is pending and enabled in `state` is raised again (an edge the source
    /// raised may not have reached the interrupt controller before it was saved; a spurious
    /// one is harmless: the driver finds IIR says nothing is pending).
    ///
    /// # Errors
    /// A receive FIFO longer than the UART's (nothing changes), or the interrupt could not be
    /// raised (the registers are restored).
    pub fn restore_state(&mut self, state: &SerialDeviceState) -> Result<(), StateError> {
        Self::check_state(state)?;
        let irq = self
            .uart
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(StateError::SerialInterrupt)?;
        let saved = SerialState {
            baud_divisor_low: state.divisor_low,
            baud_divisor_high: state.divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.rx_fifo.clone(),
        };
        // Built with a throw-away writer: if raising the interrupt fails, the UART in use is
        // left as it was.
        let mut uart = Serial::from_state(
            &saved,
            IrqTrigger(irq),
            vm_superio::serial::NoEvents,
            Box::new(std::io::sink()) as Box<dyn Write + Send>,
        )
        .map_err(|e| match e {
            vm_superio::serial::Error::Trigger(e) => StateError::SerialInterrupt(e),
            vm_superio::serial::Error::IOError(e) => StateError::SerialInterrupt(e),
            vm_superio::serial::Error::FullFifo => StateError::SerialFifo(state.rx_fifo.len()),
        })?;
        std::mem::swap(uart.writer_mut(), self.uart.writer_mut());
        self.uart = uart;
        Ok(())
    }

    /// Feeds host input (the user's keystrokes) to the guest; returns how many bytes the FIFO
    /// took. Bytes beyond the FIFO's room are dropped, as on real hardware.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if let (Ok(off), [byte, ..]) = (u8::try_from(offset), data) {
            *byte = self.uart.read(off);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let (Ok(off), [byte, ..]) = (u8::try_from(offset), data) {
            // The only failures are a full host writer or a failed irqfd write; the guest
            // cannot do anything about either and the byte is lost, as with a jammed line.
            let _ = self.uart.write(off, *byte);
        }
    }
}

impl Aml for SerialDevice {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        aml::Device::new(
            "_SB_.COM1".into(),
            vec![
                &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
                &aml::Name::new("_UID".into(), &aml::ZERO),
                &aml::Name::new(
                    "_CRS".into(),
                    &aml::ResourceTemplate::new(vec![
                        &aml::Interrupt::new(true, true, false, false, self.gsi),
                        &aml::IO::new(self.base, self.base, 1, 8),
                    ]),
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
    use crate::test_utils::SharedBuf;

    #[test]
    fn transmits_guest_bytes_and_receives_input() {
        let out = SharedBuf::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone()), 0x3f8, 4);
        for b in b"hi\n" {
            dev.write(0x3f8, 0, &[*b]);
        }
        assert_eq!(&*out.bytes(), b"hi\n");
        // Enable the "received data available" interrupt, then send input.
        dev.write(0x3f8, 1, &[0x01]);
        assert_eq!(dev.enqueue_input(b"x"), 1);
        assert!(irq.read().unwrap() >= 1);
        let mut data = [0u8; 1];
        dev.read(0x3f8, 0, &mut data);
        assert_eq!(data[0], b'x');
        // Out-of-range offsets are ignored instead of panicking.
        dev.write(0x3f8, 0x1_0000, &[1]);
        dev.read(0x3f8, u64::MAX, &mut data);
    }

    #[test]
    fn reset_returns_to_power_on_and_keeps_the_output() {
        let out = SharedBuf::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone()), 0x3f8, 4);
        // A driver's settings: all interrupts on, 7 data bits, loopback off, a scratch byte,
        // and input waiting.
        dev.write(0x3f8, 1, &[0x0f]);
        dev.write(0x3f8, 3, &[0x02]);
        dev.write(0x3f8, 7, &[0x5a]);
        dev.enqueue_input(b"abc");
        dev.reset().unwrap();
        let _ = irq.read();
        let mut reg = |off: u64| {
            let mut b = [0u8; 1];
            dev.read(0x3f8, off, &mut b);
            b[0]
        };
        assert_eq!(reg(1), 0, "IER: interrupts off");
        assert_eq!(reg(2) & 0x01, 0x01, "IIR: nothing pending");
        assert_eq!(reg(3), 0x03, "LCR: 8N1");
        assert_eq!(reg(7), 0, "scratch");
        assert_eq!(
            reg(5) & 0x01,
            0,
            "LSR: no data ready (the FIFO was emptied)"
        );
        // No interrupt was raised by the reset itself, and output still reaches the writer.
        assert!(irq.read().is_err(), "an interrupt after reset");
        dev.write(0x3f8, 0, b"!");
        assert_eq!(&*out.bytes(), b"!");
    }

    /// Every register the guest can read, with DLAB off then on (restoring LCR).
    fn registers(dev: &mut SerialDevice) -> Vec<u8> {
        let mut reg = |off: u64| {
            let mut b = [0u8; 1];
            dev.read(0x3f8, off, &mut b);
            b[0]
        };
        // IIR is read first: reading it clears a pending THR-empty indication.
        let mut v: Vec<u8> = [2, 1, 3, 4, 5, 6, 7].iter().map(|&o| reg(o)).collect();
        let lcr = v[2];
        dev.write(0x3f8, 3, &[lcr | 0x80]);
        let mut reg = |off: u64| {
            let mut b = [0u8; 1];
            dev.read(0x3f8, off, &mut b);
            b[0]
        };
        v.push(reg(0));
        v.push(reg(1));
        dev.write(0x3f8, 3, &[lcr]);
        v
    }

    #[test]
    fn state_survives_save_and_restore_with_the_unread_input() {
        let out = SharedBuf::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut src = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone()), 0x3f8, 4);
        // A driver's settings: divisor 3 (38400 baud), 7E1, RTS/DTR/OUT2, the RX interrupt,
        // a scratch byte; then input it has not read.
        src.write(0x3f8, 3, &[0x80]);
        src.write(0x3f8, 0, &[0x03]);
        src.write(0x3f8, 1, &[0x00]);
        src.write(0x3f8, 3, &[0x1a]);
        src.write(0x3f8, 4, &[0x0b]);
        src.write(0x3f8, 1, &[0x01]);
        src.write(0x3f8, 7, &[0x5a]);
        assert_eq!(src.enqueue_input(b"hello"), 5);
        let state = src.save_state();
        assert_eq!(state.rx_fifo, b"hello");
        assert_eq!((state.divisor_low, state.divisor_high), (3, 0));
        // The state is plain data: it goes through JSON unchanged.
        let json = serde_json::to_string(&state).unwrap();
        let state: SerialDeviceState = serde_json::from_str(&json).unwrap();

        let dst_out = SharedBuf::default();
        let dst_irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dst = SerialDevice::new(
            dst_irq.try_clone().unwrap(),
            Box::new(dst_out.clone()),
            0x3f8,
            4,
        );
        dst.restore_state(&state).unwrap();
        // The pending, enabled RX interrupt is raised again on the destination.
        assert_eq!(dst_irq.read().unwrap(), 1);
        assert_eq!(registers(&mut dst), registers(&mut src));
        // The guest reads the same bytes on either side.
        let mut byte = [0u8; 1];
        let mut read_all = |dev: &mut SerialDevice| {
            let mut got = Vec::new();
            loop {
                let mut lsr = [0u8; 1];
                dev.read(0x3f8, 5, &mut lsr);
                if lsr[0] & 1 == 0 {
                    return got;
                }
                dev.read(0x3f8, 0, &mut byte);
                got.push(byte[0]);
            }
        };
        assert_eq!(read_all(&mut dst), b"hello");
        assert_eq!(read_all(&mut src), b"hello");
        // Output goes to the destination's own writer.
        dst.write(0x3f8, 0, b"!");
        assert_eq!(&*dst_out.bytes(), b"!");
        assert!(out.bytes().is_empty());

        // An oversized FIFO is refused and changes nothing.
        let mut bad = dst.save_state();
        bad.rx_fifo = vec![0; 65];
        bad.scratch = 0x11;
        let e = dst.restore_state(&bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            "COM1: the saved receive FIFO holds 65 bytes, more than the UART's 64"
        );
        assert_eq!(dst.save_state().scratch, 0x5a);
    }

    #[test]
    fn aml_names_com1_with_its_port_and_irq() {
        let dev = SerialDevice::new(
            EventFd::new(EFD_NONBLOCK).unwrap(),
            Box::new(std::io::sink()),
            0x3f8,
            4,
        );
        let mut bytes = Vec::new();
        dev.to_aml_bytes(&mut bytes);
        assert_eq!(bytes[0], 0x5b); // ExtOpPrefix
        assert_eq!(bytes[1], 0x82); // DeviceOp
        let find = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"COM1"));
        // IO descriptor: 0x47, decode16, min 0x3f8, max 0x3f8, align 1, len 8.
        assert!(find(&[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]));
        // Extended interrupt descriptor for GSI 4.
        assert!(find(&[
            0x89, 0x06, 0x00, 0x03, 0x01, 0x04, 0x00, 0x00, 0x00
        ]));
    }
}
