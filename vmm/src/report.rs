// SPDX-License-Identifier: Apache-2.0
//! How vmm prints a message on stderr: one line, `PROGRAM: message`. The program is `vmm`, or
//! the name vmm was started as when it runs with QEMU's command line (`qemu-system-x86_64`, as
//! a QEMU user such as libvirt expects to read in its logs); QEMU's `-msg timestamp=on` puts
//! the time in front, as QEMU does (`2026-01-02T03:04:05.678901Z qemu-system-x86_64: ...`).
//!
//! The settings are made while the command line is read, before any thread starts.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static PROGRAM: OnceLock<String> = OnceLock::new();
static TIMESTAMP: AtomicBool = AtomicBool::new(false);
static GUEST_NAME: OnceLock<String> = OnceLock::new();

/// Sets the program name messages start with; only the first call counts.
pub fn configure(program: &str) {
    let _ = PROGRAM.set(program.to_owned());
}

/// Puts the time in front of every message from now on (`-msg timestamp=on`), and the guest's
/// name when `guest_name` is given (`-msg guest-name=on`).
pub fn set_format(timestamp: bool, guest_name: Option<&str>) {
    TIMESTAMP.store(timestamp, Ordering::Relaxed);
    if let Some(name) = guest_name {
        let _ = GUEST_NAME.set(name.to_owned());
    }
}

/// The current time as QEMU's `-msg timestamp=on` writes it (UTC, microseconds).
fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = libc::time_t::try_from(now.as_secs()).unwrap_or(libc::time_t::MAX);
    // SAFETY: a zeroed tm is valid; gmtime_r fills it from a live time_t.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals.
    unsafe { libc::gmtime_r(&secs, &mut tm) };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        now.subsec_micros()
    )
}

/// The line [`error`] prints, without its newline.
pub fn line(message: fmt::Arguments<'_>) -> String {
    let program = PROGRAM.get().map_or("vmm", String::as_str);
    let mut line = String::new();
    if TIMESTAMP.load(Ordering::Relaxed) {
        line.push_str(&timestamp());
        line.push(' ');
    }
    if let Some(name) = GUEST_NAME.get() {
        line.push_str(name);
        line.push(' ');
    }
    line.push_str(&format!("{program}: {message}"));
    line
}

/// Prints one message line on stderr.
pub fn error(message: fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{}", line(message));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_qemus_shape() {
        let t = timestamp();
        // 2026-01-02T03:04:05.678901Z
        assert_eq!(t.len(), 27, "{t}");
        assert_eq!(&t[4..5], "-");
        assert_eq!(&t[10..11], "T");
        assert_eq!(&t[19..20], ".");
        assert!(t.ends_with('Z'));
        assert!(t[..4].parse::<u32>().unwrap() >= 2024);
    }
}
