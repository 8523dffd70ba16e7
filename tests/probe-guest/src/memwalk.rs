//! The page format of the `mem-walk` workload: every 4 KiB page holds a
//! header of three little-endian u64 words (page index, generation, checksum
//! of the rest of the page) and 509 pattern words derived from (index,
//! generation). A page that lost a rewrite (a dirty page a migration did not
//! copy) still looks self-consistent, so the walker also keeps each page's
//! expected generation apart and [`check`] compares with it.
//!
//! The order of the rewrites is a [`Walk`]: every sweep visits every page
//! once, in a strided permutation that starts at a different page each
//! sweep, so consecutive rewrites land far apart.
//!
//! With `probe.touch` the walker times every rewrite and counts the slow ones
//! in a histogram of [`TOUCH_BUCKETS`] buckets ([`touch_bucket`]): under
//! postcopy, the first touch of a page the destination has not received yet
//! waits for it, so these are page-fault latencies as the guest sees them.

/// Bytes in a page.
pub const PAGE_BYTES: usize = 4096;
/// u64 words in a page.
pub const WORDS: usize = PAGE_BYTES / 8;
/// Header words: index, generation, checksum.
pub const HEADER_WORDS: usize = 3;

/// The pattern's step between consecutive words (the golden ratio in 64 bits).
const STEP: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's finaliser: a well-mixed u64 from `x`.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The first pattern word (word `HEADER_WORDS`) of page `index` at `generation`.
fn first_word(index: u64, generation: u64) -> u64 {
    mix(index ^ generation.rotate_left(32) ^ 0x6d65_6d2d_7761_6c6b)
}

/// A checksum of `words` that depends on their order (Fletcher-style sums
/// modulo 2^64 of the words and of the running sums).
pub fn checksum(words: &[u64]) -> u64 {
    let (mut a, mut b) = (0u64, 0u64);
    for &w in words {
        a = a.wrapping_add(w);
        b = b.wrapping_add(a);
    }
    a ^ b.rotate_left(32)
}

/// Writes page `index` at `generation`: pattern words, then the header.
pub fn fill(page: &mut [u64; WORDS], index: u64, generation: u64) {
    let mut w = first_word(index, generation);
    let (mut a, mut b) = (0u64, 0u64);
    for slot in page[HEADER_WORDS..].iter_mut() {
        *slot = w;
        a = a.wrapping_add(w);
        b = b.wrapping_add(a);
        w = w.wrapping_add(STEP);
    }
    page[0] = index;
    page[1] = generation;
    page[2] = a ^ b.rotate_left(32);
}

/// What is wrong with a page, the first check that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bad {
    /// The header names another page (found index).
    Index(u64),
    /// The page holds another generation than the walker last wrote (found generation).
    Generation(u64),
    /// The checksum does not match the page's words.
    Checksum,
    /// The words are not the pattern of the page's index and generation (first bad word).
    Pattern(usize),
}

impl Bad {
    /// The name printed in `why=`.
    pub fn name(self) -> &'static str {
        match self {
            Bad::Index(_) => "index",
            Bad::Generation(_) => "generation",
            Bad::Checksum => "checksum",
            Bad::Pattern(_) => "pattern",
        }
    }
}

/// Checks page `index`, which the walker last wrote at `generation`.
pub fn check(page: &[u64; WORDS], index: u64, generation: u64) -> Result<(), Bad> {
    if page[0] != index {
        return Err(Bad::Index(page[0]));
    }
    if page[1] != generation {
        return Err(Bad::Generation(page[1]));
    }
    if checksum(&page[HEADER_WORDS..]) != page[2] {
        return Err(Bad::Checksum);
    }
    let mut w = first_word(index, generation);
    for (i, &v) in page.iter().enumerate().skip(HEADER_WORDS) {
        if v != w {
            return Err(Bad::Pattern(i));
        }
        w = w.wrapping_add(STEP);
    }
    Ok(())
}

/// Buckets of the touch-latency histogram: microseconds 0 to 15 one each, then 8 buckets per
/// power of two (12.5% wide) up to 2^28 us; the last bucket also holds everything longer.
pub const TOUCH_BUCKETS: usize = 16 + 24 * 8;

/// The histogram bucket of a touch that took `us` microseconds.
pub fn touch_bucket(us: u64) -> usize {
    if us < 16 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros() as usize;
    if e >= 28 {
        return TOUCH_BUCKETS - 1;
    }
    16 + (e - 4) * 8 + ((us >> (e - 3)) & 7) as usize
}

/// The smallest number of microseconds in bucket `b` (what the touches line prints).
pub fn touch_floor(b: usize) -> u64 {
    if b < 16 {
        return b as u64;
    }
    let e = 4 + (b - 16) / 8;
    (8 + ((b - 16) % 8) as u64) << (e - 3)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The rewrite order over `pages` pages: sweep after sweep, each a strided
/// permutation of all pages (the stride is coprime with the page count and
/// near 0.618 of it), starting at a different page each sweep.
#[derive(Clone, Copy, Debug)]
pub struct Walk {
    pages: u64,
    stride: u64,
    start: u64,
    /// Position within the current sweep.
    pos: u64,
    next: u64,
    /// Sweeps completed.
    pub sweeps: u64,
}

impl Walk {
    /// A walk over `pages` (at least 1) pages.
    pub fn new(pages: u64) -> Self {
        let pages = pages.max(1);
        let mut stride = ((pages as u128 * 0x9e37_79b9 / 0x1_0000_0000) as u64).max(1);
        while gcd(stride, pages) != 1 {
            stride += 1;
        }
        Self {
            pages,
            stride: stride % pages,
            start: 0,
            pos: 0,
            next: 0,
            sweeps: 0,
        }
    }

    /// The next page to rewrite.
    pub fn next_page(&mut self) -> u64 {
        let page = self.next;
        self.pos += 1;
        if self.pos == self.pages {
            self.pos = 0;
            self.sweeps += 1;
            self.start = (self.start + self.stride / 2 + 1) % self.pages;
            self.next = self.start;
        } else {
            self.next = (self.next + self.stride) % self.pages;
        }
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(index: u64, generation: u64) -> Box<[u64; WORDS]> {
        let mut p = Box::new([0u64; WORDS]);
        fill(&mut p, index, generation);
        p
    }

    #[test]
    fn filled_pages_check_and_differ() {
        let p = page(7, 3);
        assert_eq!((p[0], p[1]), (7, 3));
        assert_eq!(check(&p, 7, 3), Ok(()));
        assert_eq!(p[2], checksum(&p[HEADER_WORDS..]));
        // Another generation or index is another pattern.
        let q = page(7, 4);
        assert_ne!(p[HEADER_WORDS..], q[HEADER_WORDS..]);
        let r = page(8, 3);
        assert_ne!(p[HEADER_WORDS..], r[HEADER_WORDS..]);
        // Generation 0 of page 0 is not a zero page.
        assert!(page(0, 0)[HEADER_WORDS..].iter().any(|&w| w != 0));
    }

    #[test]
    fn every_kind_of_damage_is_found() {
        // A page the walker rewrote since (a lost dirty page): self-consistent but old.
        assert_eq!(check(&page(7, 3), 7, 4), Err(Bad::Generation(3)));
        // A page copied to the wrong place.
        assert_eq!(check(&page(9, 3), 7, 3), Err(Bad::Index(9)));
        // A zero page (never copied at all).
        assert_eq!(check(&[0u64; WORDS], 7, 3), Err(Bad::Index(0)));
        assert_eq!(check(&[0u64; WORDS], 0, 0), Err(Bad::Pattern(HEADER_WORDS)));
        // One flipped bit anywhere in the body.
        for word in [HEADER_WORDS, 100, WORDS - 1] {
            let mut p = page(7, 3);
            p[word] ^= 1 << 17;
            assert_eq!(check(&p, 7, 3), Err(Bad::Checksum), "word {word}");
        }
        // A body that matches its checksum but not the pattern (swapped words).
        let mut p = page(7, 3);
        p.swap(10, 11);
        p[2] = checksum(&p[HEADER_WORDS..]);
        assert_eq!(check(&p, 7, 3), Err(Bad::Pattern(10)));
        // A torn page: the first half of generation 4 over generation 3.
        let mut p = page(7, 3);
        let q = page(7, 4);
        p[..WORDS / 2].copy_from_slice(&q[..WORDS / 2]);
        assert_eq!(check(&p, 7, 4), Err(Bad::Checksum));
        assert_eq!(Bad::Pattern(1).name(), "pattern");
    }

    #[test]
    fn touch_buckets_cover_every_latency_in_order() {
        assert_eq!(touch_bucket(0), 0);
        assert_eq!(touch_bucket(15), 15);
        assert_eq!((touch_bucket(16), touch_floor(16)), (16, 16));
        assert_eq!(touch_floor(TOUCH_BUCKETS - 1), 15 << 24);
        assert_eq!(touch_bucket(u64::MAX), TOUCH_BUCKETS - 1);
        for b in 0..TOUCH_BUCKETS {
            assert_eq!(touch_bucket(touch_floor(b)), b, "bucket {b}");
            if b + 1 < TOUCH_BUCKETS {
                let next = touch_floor(b + 1);
                assert!(next > touch_floor(b));
                assert_eq!(touch_bucket(next - 1), b, "end of bucket {b}");
                // At most 12.5% wide.
                assert!(
                    (next - touch_floor(b)) * 8 <= touch_floor(b).max(8),
                    "bucket {b}"
                );
            }
        }
        let mut last = 0;
        for us in (0..1 << 20).step_by(7).chain([(1 << 28) - 1, 1 << 28]) {
            let b = touch_bucket(us);
            assert!(b >= last, "{us}");
            assert!(touch_floor(b) <= us);
            last = b;
        }
    }

    #[test]
    fn the_walk_visits_every_page_once_per_sweep() {
        for pages in [1u64, 2, 3, 16, 1000, 16384, 65537] {
            let mut w = Walk::new(pages);
            for sweep in 0..3 {
                let mut seen = vec![false; pages as usize];
                for _ in 0..pages {
                    let p = w.next_page();
                    assert!(p < pages);
                    assert!(
                        !seen[p as usize],
                        "page {p} twice in sweep {sweep} of {pages}"
                    );
                    seen[p as usize] = true;
                }
                assert_eq!(w.sweeps, sweep + 1);
            }
        }
        // Consecutive rewrites are far apart.
        let mut w = Walk::new(16384);
        let (a, b) = (w.next_page(), w.next_page());
        assert!(a.abs_diff(b) > 1000, "{a} then {b}");
    }
}
