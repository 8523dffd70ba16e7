// SPDX-License-Identifier: Apache-2.0
//! The source's side of postcopy on arbitrary input: the return path (`vmm/src/migration/
//! postcopy.rs`: `take_lines`, `Reply::parse`, `Reply::line`) as the destination's bytes
//! arrive, cut anywhere, and the `PageSet` of pages the source still has to send, served
//! as `outgoing.rs` serves them.
//!
//! vmm is a binary crate, so this source is compiled into this target as it is (a `#[path]`
//! module: it names nothing of the crate).
//!
//! Input: `[max][run][n][n chunk lengths]` then the bytes the destination sends. They reach
//! the source in chunks of `length + 1` bytes, the lengths taken in turn (`n` = 0: all at
//! once), so lines are split across reads. `max` (0: `MAX_LINE_PAGES`) is the run length
//! `runs` is asked for; `1 + run % 32` the pages the source sends in address order after
//! each read (the real source sends 16).
//!
//! The source (a model of `outgoing.rs`'s `serve` and `reconnect`): guest RAM is 1024 pages
//! at 0 and 67 above 4 GiB (like a VM with more RAM than fits below the MMIO hole; 67, so
//! that the bitmap's last word is partly unused); its `todo` starts full, as when POSTCOPY
//! went out. Serving: `RUN` once, `ERR` before `RUN` (refused: the migration is over),
//! `REQ` inside RAM (its pages still to send are taken out of `todo`), `OK` once `todo` ran
//! empty (the end: complete); anything else, a line that does not parse or an overlong or
//! non-UTF-8 line breaks the stream. Broken: a new connection (its bytes are the ones after
//! the chunk that broke it), a new empty `todo` that `PENDING` lines inside RAM fill, until
//! `READY`; anything else breaks it again. As in `outgoing.rs`, what follows the breaking
//! line or `READY` in the same read is dropped (a new connection, a new read loop).
//!
//! Asserts, beyond not panicking (and no allocation proportional to a count or address the
//! input names: only the fixed bitmap and models of its 1091 pages):
//! - every error is one line;
//! - `take_lines` returns exactly the complete lines (their bytes and newlines are what was
//!   buffered up to its last newline), keeps the rest, and fails exactly when a complete
//!   line is not UTF-8 or the rest exceeds `MAX_LINE`;
//! - a reply that parses prints (`line()`: one newline, at its end) and parses back to the
//!   same reply; its range is page aligned, 1 to `MAX_LINE_PAGES` pages, without overflow;
//!   a line over `MAX_LINE` does not parse;
//! - `contains_range` is exactly "every page inside one region of RAM" (the model's);
//! - `todo` is the model (a plain array of its pages): `insert` and `remove` say whether
//!   the page was out or in, `contains` of every page and of addresses around the regions,
//!   `count`; no page is ever served twice (a std `HashSet` of pages taken out of `todo`
//!   since they were last put in: a page `PENDING` lists again may go again);
//! - `next_from(from)` is the model's first page at or after `from`, wrapping (index and
//!   address), `None` exactly when `todo` is empty;
//! - `runs(max)` are ascending, 1 to `max` pages each, cover exactly the pages of `todo`,
//!   and are maximal (a run ends where the next starts only at `max` pages);
//! - `OK` is taken only once every page went.

#![no_main]

#[path = "../../../vmm/src/error.rs"]
mod error;
#[path = "../../../vmm/src/migration/postcopy.rs"]
mod postcopy;

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use postcopy::{take_lines, PageSet, Reply, MAX_LINE, MAX_LINE_PAGES, PAGE};

/// Guest RAM of the source: (start, bytes).
const RAM: [(u64, u64); 2] = [(0, 1024 * PAGE), (1 << 32, 67 * PAGE)];
/// Its pages.
const PAGES: usize = 1024 + 67;
/// Addresses just outside RAM: the end of each region, the page before the second, the top.
const OUTSIDE: [u64; 4] = [
    1024 * PAGE,
    (1 << 32) - PAGE,
    (1 << 32) + 67 * PAGE,
    u64::MAX - (PAGE - 1),
];

/// The model's index of the page at `gpa` (pages numbered across the regions in order).
fn index_of(gpa: u64) -> Option<usize> {
    let mut base = 0;
    for (start, len) in RAM {
        if gpa >= start && gpa - start < len {
            return Some(base + ((gpa - start) / PAGE) as usize);
        }
        base += (len / PAGE) as usize;
    }
    None
}

/// The model's address of the page with index `i`.
fn address_of(i: usize) -> u64 {
    let mut base = 0;
    for (start, len) in RAM {
        let pages = (len / PAGE) as usize;
        if i < base + pages {
            return start + (i - base) as u64 * PAGE;
        }
        base += pages;
    }
    panic!("page index {i} outside RAM")
}

/// Whether `count` pages at `gpa` are all RAM (inside one region: they are not adjacent).
fn in_ram(gpa: u64, count: u32) -> bool {
    RAM.iter().any(|&(start, len)| {
        gpa >= start
            && gpa
                .checked_add(u64::from(count) * PAGE)
                .is_some_and(|end| end <= start + len)
    })
}

fn one_line(e: &dyn std::error::Error) {
    let s = error::chain(e);
    assert!(
        !s.is_empty() && !s.contains('\n'),
        "error not one line: {s:?}"
    );
}

/// Checks a reply that parsed: its line, and its range.
fn check_reply(line: &str, r: &Reply) {
    assert!(line.len() <= MAX_LINE, "a {}-byte line parsed", line.len());
    let printed = r.line();
    assert!(
        printed.ends_with('\n') && printed.matches('\n').count() == 1,
        "not one line: {printed:?}"
    );
    assert_eq!(
        Reply::parse(&printed[..printed.len() - 1]).as_ref(),
        Ok(r),
        "{line:?} printed as {printed:?}"
    );
    if let Reply::Req(gpa, count) | Reply::Pending(gpa, count) = *r {
        assert!(
            (1..=MAX_LINE_PAGES).contains(&count)
                && gpa % PAGE == 0
                && gpa.checked_add(u64::from(count) * PAGE).is_some(),
            "{line:?} parsed as {r:?}"
        );
    }
}

/// The complete lines of `buf` (`take_lines`), checked against the bytes it held.
fn lines_of(buf: &mut Vec<u8>) -> Option<Vec<String>> {
    let before = buf.clone();
    let got = take_lines(buf);
    let cut = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let (complete, rest) = before.split_at(cut);
    let utf8 = complete
        .split(|&b| b == b'\n')
        .all(|l| std::str::from_utf8(l).is_ok());
    match got {
        Ok(lines) => {
            assert!(utf8, "a line that is not UTF-8 was taken");
            assert!(
                rest.len() <= MAX_LINE,
                "{} bytes without a newline kept",
                rest.len()
            );
            assert!(*buf == rest, "not the incomplete rest kept");
            let mut joined = Vec::with_capacity(complete.len());
            for l in &lines {
                assert!(!l.contains('\n'), "a newline inside {l:?}");
                joined.extend_from_slice(l.as_bytes());
                joined.push(b'\n');
            }
            assert!(joined == complete, "the lines are not the bytes read");
            Some(lines)
        }
        Err(e) => {
            one_line(&e);
            assert!(!utf8 || rest.len() > MAX_LINE, "refused {before:?}: {e}");
            None
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Sending pages, serving requests.
    Serving,
    /// A new connection after a break: reading `PENDING` lines up to `READY`.
    Resuming,
    /// Complete (`OK`) or refused (`ERR` before `RUN`).
    Over,
}

/// What the rest of a read becomes after a line.
#[derive(PartialEq, Eq)]
enum Then {
    /// The next line.
    Next,
    /// Dropped: the stream broke, or a new read loop starts (after `READY`).
    Drop,
}

/// The source and its model.
struct Source {
    todo: PageSet,
    /// The model of `todo`: whether each page (by index) is in it, and how many are.
    model: [bool; PAGES],
    len: usize,
    /// Pages taken out of `todo` since they were last put in.
    served: HashSet<u64>,
    phase: Phase,
    ran: bool,
    ended: bool,
    cursor: u64,
    max: u32,
    run: u64,
    checks: u64,
}

impl Source {
    fn new(max: u8, run: u8) -> Self {
        let mut s = Self {
            todo: PageSet::new(&RAM),
            model: [false; PAGES],
            len: 0,
            served: HashSet::new(),
            phase: Phase::Serving,
            ran: false,
            ended: false,
            cursor: 0,
            max: if max == 0 {
                MAX_LINE_PAGES
            } else {
                u32::from(max)
            },
            run: u64::from(run % 32) + 1,
            checks: 0,
        };
        for i in 0..PAGES {
            assert!(s.todo.insert(address_of(i)), "insert({:#x})", address_of(i));
        }
        s.model = [true; PAGES];
        s.len = PAGES;
        s
    }

    /// The page at `gpa` was listed again (`insert_range`, as the source does): it is in
    /// `todo`, and in the model.
    fn listed(&mut self, gpa: u64) {
        assert!(self.todo.contains(gpa), "insert_range left out {gpa:#x}");
        if index_of(gpa).is_some_and(|i| !std::mem::replace(&mut self.model[i], true)) {
            self.len += 1;
        }
        // Listed again: it may go again.
        if !self.served.is_empty() {
            self.served.remove(&gpa);
        }
    }

    /// Takes the page at `gpa` out of `todo`, to send it: whether it was there.
    fn take(&mut self, gpa: u64) -> bool {
        let took = self.todo.remove(gpa);
        let want = index_of(gpa).is_some_and(|i| std::mem::replace(&mut self.model[i], false));
        assert_eq!(took, want, "remove({gpa:#x})");
        if took {
            self.len -= 1;
            assert!(self.served.insert(gpa), "page {gpa:#x} served twice");
        }
        took
    }

    /// The model's `next_from(from)` (`from` at most [`PAGES`]).
    fn next_from(&self, from: u64) -> Option<(u64, u64)> {
        let from = from as usize;
        (from..PAGES)
            .chain(0..from.min(PAGES))
            .find(|&i| self.model[i])
            .map(|i| (i as u64, address_of(i)))
    }

    /// The stream broke: a new connection, a new empty `todo` for its `PENDING` lines.
    fn broke(&mut self) {
        self.todo = PageSet::new(&RAM);
        self.model = [false; PAGES];
        self.len = 0;
        self.phase = Phase::Resuming;
        self.ran = true;
        self.ended = false;
        self.cursor = 0;
    }

    /// Whether `count` pages at `gpa` are inside RAM, as `todo` says and as the model says.
    fn inside(&self, gpa: u64, count: u32) -> bool {
        let inside = self.todo.contains_range(gpa, count);
        assert_eq!(
            inside,
            in_ram(gpa, count),
            "contains_range({gpa:#x}, {count})"
        );
        inside
    }

    /// The pages of a range just served or listed: `todo` says what the model says.
    fn check_range(&self, gpa: u64, count: u32) {
        for i in 0..u64::from(count) {
            let p = gpa + i * PAGE;
            let want = index_of(p).is_some_and(|i| self.model[i]);
            assert_eq!(self.todo.contains(p), want, "contains({p:#x})");
        }
        assert_eq!(self.todo.count(), self.len as u64, "count");
    }

    /// One line of the return path.
    fn line(&mut self, line: &str) -> Then {
        let reply = match Reply::parse(line) {
            Ok(r) => {
                check_reply(line, &r);
                r
            }
            Err(e) => {
                one_line(&e);
                self.broke();
                return Then::Drop;
            }
        };
        match (self.phase, reply) {
            (Phase::Serving, Reply::Run) if !self.ran => self.ran = true,
            (Phase::Serving, Reply::Err(_)) if !self.ran => {
                self.phase = Phase::Over;
                return Then::Drop;
            }
            (Phase::Serving, Reply::Req(gpa, count)) => {
                if !self.inside(gpa, count) {
                    self.broke();
                    return Then::Drop;
                }
                // The pages still to send go; the others went already.
                for i in 0..u64::from(count) {
                    self.take(gpa + i * PAGE);
                }
                self.check_range(gpa, count);
            }
            (Phase::Serving, Reply::Ok) if self.ended => {
                assert!(
                    self.len == 0 && self.todo.count() == 0,
                    "OK with pages to send"
                );
                self.phase = Phase::Over;
                return Then::Drop;
            }
            (Phase::Resuming, Reply::Pending(gpa, count)) if self.inside(gpa, count) => {
                self.todo.insert_range(gpa, u64::from(count));
                for i in 0..u64::from(count) {
                    self.listed(gpa + i * PAGE);
                }
                self.check_range(gpa, count);
            }
            (Phase::Resuming, Reply::Ready) => {
                self.phase = Phase::Serving;
                return Then::Drop;
            }
            (Phase::Over, _) => unreachable!("a line after the end"),
            _ => {
                self.broke();
                return Then::Drop;
            }
        }
        Then::Next
    }

    /// What the source does after a read: serves its lines, then sends the next pages in
    /// address order (or the end, once none is left).
    fn read(&mut self, buf: &mut Vec<u8>) {
        let mut changed = false;
        match lines_of(buf) {
            None => {
                buf.clear();
                self.broke();
                changed = true;
            }
            Some(lines) => {
                for line in lines {
                    changed |= matches!(line.split(' ').next(), Some("REQ" | "PENDING"));
                    if self.line(&line) == Then::Drop {
                        buf.clear();
                        changed = true;
                        break;
                    }
                }
            }
        }
        if changed && self.phase != Phase::Over {
            self.check(false);
        }
        if self.phase != Phase::Serving || self.ended {
            return;
        }
        let next = self.todo.next_from(self.cursor);
        assert_eq!(
            next,
            self.next_from(self.cursor),
            "next_from({})",
            self.cursor
        );
        match next {
            Some((i, gpa)) => {
                let mut n = 0;
                while n < self.run && self.take(gpa + n * PAGE) {
                    n += 1;
                }
                assert!(n > 0, "next_from gave {gpa:#x}, not in the set");
                self.cursor = i + n;
                assert_eq!(self.todo.count(), self.len as u64, "count");
            }
            None => {
                assert_eq!(
                    self.len, 0,
                    "next_from found nothing in a set of {}",
                    self.len
                );
                self.ended = true;
            }
        }
    }

    /// `todo` against the model after a read that changed it: `count`, `runs`, `next_from`;
    /// with `every_page` (at the end) also `contains` of each page of RAM and around it.
    fn check(&mut self, every_page: bool) {
        self.checks += 1;
        assert_eq!(self.todo.count(), self.len as u64, "count");
        if every_page {
            for (i, &want) in self.model.iter().enumerate() {
                let gpa = address_of(i);
                assert_eq!(self.todo.contains(gpa), want, "contains({gpa:#x})");
            }
            for gpa in OUTSIDE {
                assert!(!self.todo.contains(gpa), "contains({gpa:#x}) outside RAM");
            }
            for gpa in &self.served {
                assert!(
                    !self.todo.contains(*gpa),
                    "served page {gpa:#x} still to send"
                );
            }
        }
        let mut covered = 0usize;
        let mut prev: Option<(u64, u32)> = None;
        for (gpa, count) in self.todo.runs(self.max) {
            assert!(
                (1..=self.max).contains(&count),
                "a run of {count} pages (max {})",
                self.max
            );
            if let Some((g, c)) = prev {
                let end = g + u64::from(c) * PAGE;
                assert!(gpa >= end, "runs out of order: {gpa:#x} after {g:#x}+{c}");
                assert!(gpa > end || c == self.max, "run {g:#x}+{c} not maximal");
            }
            // Inside one region (they are not adjacent), so its pages are consecutive in
            // the model too.
            let last = gpa + (u64::from(count) - 1) * PAGE;
            let (Some(i), Some(j)) = (index_of(gpa), index_of(last)) else {
                panic!("a run {gpa:#x}+{count} outside RAM");
            };
            assert_eq!(
                j - i + 1,
                count as usize,
                "a run {gpa:#x}+{count} over the hole"
            );
            assert!(
                self.model[i..=j].iter().all(|&b| b),
                "a run {gpa:#x}+{count} over pages not in the set"
            );
            covered += count as usize;
            prev = Some((gpa, count));
        }
        assert_eq!(
            covered, self.len,
            "runs cover {covered} pages of {}",
            self.len
        );
        let from = (self.checks * 389) % (PAGES as u64 + 1);
        assert_eq!(
            self.todo.next_from(from),
            self.next_from(from),
            "next_from({from})"
        );
        assert_eq!(
            self.todo.next_from(0).is_none(),
            self.len == 0,
            "next_from(0)"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let [max, run, n, rest @ ..] = data else {
        return;
    };
    let (lengths, mut path) = rest.split_at(usize::from(*n).min(rest.len()));
    let mut source = Source::new(*max, *run);
    let mut buf = Vec::new();
    let mut k = 0;
    while !path.is_empty() && source.phase != Phase::Over {
        let len = match lengths {
            [] => path.len(),
            l => usize::from(l[k % l.len()]) + 1,
        };
        k += 1;
        let (chunk, tail) = path.split_at(len.min(path.len()));
        path = tail;
        buf.extend_from_slice(chunk);
        source.read(&mut buf);
    }
    if source.phase != Phase::Over {
        source.check(true);
    }
});
