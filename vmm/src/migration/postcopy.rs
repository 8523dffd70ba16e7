// SPDX-License-Identifier: Apache-2.0
//! Postcopy's shared pieces: the destination's set of missing pages and the return path's
//! messages.
//!
//! **Return path** (destination to source, on the stream's socket), one ASCII line each:
//!
//! ```text
//! RUN                      the state is loaded: the destination runs (postcopy-active)
//! ERR <reason>             the destination refused the state (the source keeps the guest)
//! REQ <gpa> <count>        a vCPU or device waits on these pages: send them first
//! PENDING <gpa> <count>    after a RESUME: pages still missing (any number of lines) ...
//! READY                    ... and their end
//! OK                       every page has arrived: the migration is complete
//! ```
//!
//! `<gpa>` is hexadecimal with `0x`, page aligned; `<count>` decimal, 1 to
//! [`MAX_LINE_PAGES`]. A source trusts nothing it reads here: a line that does not parse,
//! or names pages outside guest RAM, breaks the stream (postcopy-paused), and a page
//! requested twice or already sent is not sent again.
//!
//! This file names nothing of the crate: the `postcopy_requests` fuzz target compiles it
//! as it is.

use std::sync::atomic::{AtomicU64, Ordering};

/// The page size.
pub const PAGE: u64 = 4096;
/// Most pages named by one line.
pub const MAX_LINE_PAGES: u32 = 1 << 20;
/// Longest line accepted.
pub const MAX_LINE: usize = 256;

/// One message of the return path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The destination runs.
    Run,
    /// The destination refused.
    Err(String),
    /// Pages wanted now.
    Req(u64, u32),
    /// Pages still missing after a resume.
    Pending(u64, u32),
    /// The end of the `PENDING` lines.
    Ready,
    /// Everything arrived.
    Ok,
}

/// A return-path line that is not one of the messages.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Corrupt return path from the destination: {0}")]
pub struct ProtocolError(pub String);

impl Reply {
    /// Parses one line (without its newline).
    ///
    /// # Errors
    /// Not a message, or a malformed range.
    pub fn parse(line: &str) -> Result<Self, ProtocolError> {
        let bad = || ProtocolError(format!("'{}'", line.escape_default()));
        if line.len() > MAX_LINE {
            return Err(ProtocolError(format!("a {}-byte line", line.len())));
        }
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let range = |rest: &str| -> Result<(u64, u32), ProtocolError> {
            let (gpa, count) = rest.split_once(' ').ok_or_else(bad)?;
            let gpa = gpa
                .strip_prefix("0x")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or_else(bad)?;
            let count: u32 = count.parse().map_err(|_| bad())?;
            if count == 0 || count > MAX_LINE_PAGES || !gpa.is_multiple_of(PAGE) {
                return Err(bad());
            }
            gpa.checked_add(u64::from(count) * PAGE).ok_or_else(bad)?;
            Ok((gpa, count))
        };
        match word {
            "RUN" if rest.is_empty() => Ok(Reply::Run),
            "READY" if rest.is_empty() => Ok(Reply::Ready),
            "OK" if rest.is_empty() => Ok(Reply::Ok),
            "ERR" => Ok(Reply::Err(rest.to_owned())),
            "REQ" => range(rest).map(|(g, c)| Reply::Req(g, c)),
            "PENDING" => range(rest).map(|(g, c)| Reply::Pending(g, c)),
            _ => Err(bad()),
        }
    }

    /// The line (with its newline).
    pub fn line(&self) -> String {
        match self {
            Reply::Run => "RUN\n".into(),
            Reply::Err(e) => format!("ERR {}\n", e.replace('\n', " ")),
            Reply::Req(g, c) => format!("REQ {g:#x} {c}\n"),
            Reply::Pending(g, c) => format!("PENDING {g:#x} {c}\n"),
            Reply::Ready => "READY\n".into(),
            Reply::Ok => "OK\n".into(),
        }
    }
}

/// Splits the bytes read so far into complete lines; the incomplete rest stays in `buf`.
///
/// # Errors
/// A line longer than [`MAX_LINE`], or not UTF-8.
pub fn take_lines(buf: &mut Vec<u8>) -> Result<Vec<String>, ProtocolError> {
    let mut lines = Vec::new();
    while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buf.drain(..=nl).collect();
        let text = std::str::from_utf8(&line[..nl])
            .map_err(|_| ProtocolError("a line that is not UTF-8".into()))?;
        lines.push(text.to_owned());
    }
    if buf.len() > MAX_LINE {
        return Err(ProtocolError(format!(
            "a line of more than {MAX_LINE} bytes"
        )));
    }
    Ok(lines)
}

/// A set of guest pages over guest RAM's regions, one bit per page, safe to share between
/// threads (each bit changes atomically).
#[derive(Debug)]
pub struct PageSet {
    /// (region start, pages, index of its first page).
    regions: Vec<(u64, u64, u64)>,
    bits: Vec<AtomicU64>,
}

impl PageSet {
    /// An empty set over `ram`'s regions (start, length in bytes).
    pub fn new(ram: &[(u64, u64)]) -> Self {
        let mut regions = Vec::new();
        let mut total = 0u64;
        for &(start, len) in ram {
            let pages = len / PAGE;
            regions.push((start, pages, total));
            total += pages;
        }
        Self {
            regions,
            bits: (0..total.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn index(&self, gpa: u64) -> Option<u64> {
        self.regions.iter().find_map(|&(start, pages, base)| {
            (gpa >= start && gpa < start + pages * PAGE).then(|| base + (gpa - start) / PAGE)
        })
    }

    /// The guest address of the page with index `i`.
    fn address(&self, i: u64) -> u64 {
        self.regions
            .iter()
            .find(|&&(_, pages, base)| i >= base && i < base + pages)
            .map_or(u64::MAX, |&(start, _, base)| start + (i - base) * PAGE)
    }

    /// Whether `count` pages at `gpa` are all inside RAM.
    pub fn contains_range(&self, gpa: u64, count: u32) -> bool {
        let (Some(first), Some(last)) = (
            self.index(gpa),
            gpa.checked_add((u64::from(count).max(1) - 1) * PAGE)
                .and_then(|g| self.index(g)),
        ) else {
            return false;
        };
        last - first == u64::from(count.max(1)) - 1
    }

    /// Adds the page at `gpa`; `true` if it was not in the set.
    pub fn insert(&self, gpa: u64) -> bool {
        let Some(i) = self.index(gpa) else {
            return false;
        };
        let bit = 1u64 << (i % 64);
        self.bits[(i / 64) as usize].fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    /// Adds `count` pages from `gpa` (the part inside one region of RAM), a word at a time.
    pub fn insert_range(&self, gpa: u64, count: u64) {
        let Some(&(start, pages, base)) = self
            .regions
            .iter()
            .find(|&&(start, pages, _)| gpa >= start && gpa < start + pages * PAGE)
        else {
            return;
        };
        let first = base + (gpa - start) / PAGE;
        let end = first + count.min(pages - (gpa - start) / PAGE);
        let mut i = first;
        while i < end {
            let bit = i % 64;
            let n = (64 - bit).min(end - i);
            let mask = if n == 64 {
                !0
            } else {
                ((1u64 << n) - 1) << bit
            };
            self.bits[(i / 64) as usize].fetch_or(mask, Ordering::AcqRel);
            i += n;
        }
    }

    /// Takes the page at `gpa` out; `true` if it was in the set (exactly one caller sees
    /// `true` for each insertion).
    pub fn remove(&self, gpa: u64) -> bool {
        let Some(i) = self.index(gpa) else {
            return false;
        };
        let bit = 1u64 << (i % 64);
        self.bits[(i / 64) as usize].fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }

    /// Whether the page at `gpa` is in the set.
    pub fn contains(&self, gpa: u64) -> bool {
        self.index(gpa).is_some_and(|i| {
            self.bits[(i / 64) as usize].load(Ordering::Acquire) & (1 << (i % 64)) != 0
        })
    }

    /// How many pages are in the set.
    pub fn count(&self) -> u64 {
        self.bits
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// The first page in the set at or after the page index `from` (wrapping to the
    /// start), as (index, guest address).
    pub fn next_from(&self, from: u64) -> Option<(u64, u64)> {
        let n = self.bits.len() as u64;
        if n == 0 {
            return None;
        }
        // Past the last page: from the first.
        let from = if from / 64 >= n { 0 } else { from };
        let start_word = from / 64;
        let low = !(!0u64 << (from % 64));
        for k in 0..=n {
            let w = (start_word + k) % n;
            let mut word = self.bits[w as usize].load(Ordering::Acquire);
            if k == 0 {
                word &= !low;
            } else if k == n {
                // Back at the first word: its bits below `from`, skipped on the first look.
                word &= low;
            }
            if word != 0 {
                let i = w * 64 + u64::from(word.trailing_zeros());
                return Some((i, self.address(i)));
            }
        }
        None
    }

    /// The runs of consecutive pages in the set (guest address, pages), each at most
    /// `max` pages long, in ascending order.
    pub fn runs(&self, max: u32) -> Vec<(u64, u32)> {
        let mut out: Vec<(u64, u32)> = Vec::new();
        for (w, word) in self.bits.iter().enumerate() {
            let mut word = word.load(Ordering::Acquire);
            while word != 0 {
                let i = w as u64 * 64 + u64::from(word.trailing_zeros());
                word &= word - 1;
                let gpa = self.address(i);
                match out.last_mut() {
                    Some((g, c)) if *g + u64::from(*c) * PAGE == gpa && *c < max => *c += 1,
                    _ => out.push((gpa, 1)),
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_and_bad_lines_are_refused() {
        for r in [
            Reply::Run,
            Reply::Ok,
            Reply::Ready,
            Reply::Err("no".into()),
            Reply::Req(0x1000, 3),
            Reply::Pending(0x1_0000_0000, 1),
        ] {
            let line = r.line();
            assert_eq!(Reply::parse(line.trim_end_matches('\n')).unwrap(), r);
        }
        for bad in [
            "REQ 0x1001 1",
            "REQ 0x1000 0",
            "REQ 1000 1",
            "REQ 0xffffffffffffff000 1",
            "REQ 0xfffffffffffff000 2",
            "RUN now",
            "HELLO",
            "REQ 0x1000",
        ] {
            assert!(Reply::parse(bad).is_err(), "{bad}");
        }
        let mut buf = b"RUN\nREQ 0x".to_vec();
        assert_eq!(take_lines(&mut buf).unwrap(), ["RUN"]);
        assert_eq!(buf, b"REQ 0x");
        buf.extend_from_slice(&[b'1'; 300]);
        assert!(take_lines(&mut buf).is_err());
    }

    #[test]
    fn a_page_set_spans_regions_and_each_page_is_taken_once() {
        let s = PageSet::new(&[(0, 4 * PAGE), (1 << 32, 130 * PAGE)]);
        assert!(s.insert(PAGE));
        assert!(!s.insert(PAGE));
        assert!(s.insert((1 << 32) + 129 * PAGE));
        assert!(!s.insert(4 * PAGE), "outside RAM");
        assert!(s.contains_range(2 * PAGE, 2));
        assert!(!s.contains_range(3 * PAGE, 2), "runs into the hole");
        assert_eq!(s.count(), 2);
        assert_eq!(s.runs(256), [(PAGE, 1), ((1 << 32) + 129 * PAGE, 1)]);
        assert_eq!(s.next_from(2).map(|p| p.1), Some((1 << 32) + 129 * PAGE));
        assert_eq!(s.next_from(134).map(|p| p.1), Some(PAGE), "wraps");
        assert!(s.remove(PAGE));
        assert!(!s.remove(PAGE));
        let r = PageSet::new(&[(0, 200 * PAGE), (1 << 32, 10 * PAGE)]);
        r.insert_range(3 * PAGE, 130);
        r.insert_range((1 << 32) + 8 * PAGE, 5);
        assert_eq!(
            r.runs(1 << 20),
            [(3 * PAGE, 130), ((1 << 32) + 8 * PAGE, 2)]
        );
        r.insert_range(190 * PAGE, 64);
        assert_eq!(r.count(), 130 + 2 + 10);
        assert_eq!(s.next_from(0).map(|p| p.1), Some((1 << 32) + 129 * PAGE));
        for p in 0..4 {
            s.insert(p * PAGE);
        }
        assert_eq!(
            s.runs(3),
            [(0, 3), (3 * PAGE, 1), ((1 << 32) + 129 * PAGE, 1)]
        );
    }
}
