//! Polled 8250 UART output on COM1 (0x3f8), the probe's only output channel.

use super::arch::{inb, outb};
use core::fmt;

const COM1: u16 = 0x3f8;
const LSR_THRE: u8 = 1 << 5;

/// The serial console (stateless: any number of handles may exist).
pub struct Console;

impl Console {
    /// Programs 115200 8N1, FIFOs on, interrupts off.
    pub fn init() {
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x80);
        outb(COM1, 0x01);
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03);
        outb(COM1 + 2, 0x07);
        outb(COM1 + 4, 0x03);
    }

    /// Writes raw bytes, waiting for the transmitter before each.
    pub fn write_bytes(bytes: &[u8]) {
        for &b in bytes {
            let mut spins = 0u32;
            loop {
                let lsr = inb(COM1 + 5);
                // 0xff: nothing there; give up waiting rather than hang.
                if lsr & LSR_THRE != 0 || lsr == 0xff || spins > 100_000 {
                    break;
                }
                spins += 1;
            }
            outb(COM1, b);
        }
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        Console::write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Formats into a line buffer, then writes it with a trailing newline.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        let mut line = $crate::guest::console::Line::new();
        let _ = core::fmt::Write::write_fmt(&mut line, format_args!($($arg)*));
        line.finish();
    }};
}

/// A line being formatted (so a line goes out in one piece).
pub struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            buf: [0; 512],
            len: 0,
        }
    }

    /// Appends raw bytes (non-printable ones become `?`).
    pub fn push_bytes(&mut self, b: &[u8]) {
        for &c in b {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = if (0x20..0x7f).contains(&c) { c } else { b'?' };
            self.len += 1;
        }
    }

    fn flush(&mut self) {
        Console::write_bytes(&self.buf[..self.len]);
        self.len = 0;
    }

    /// Writes the line and a newline.
    pub fn finish(mut self) {
        self.push_bytes(b"");
        if self.len == self.buf.len() {
            self.flush();
        }
        self.buf[self.len] = b'\n';
        self.len += 1;
        self.flush();
    }
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_bytes(s.as_bytes());
        Ok(())
    }
}
