//! The disk sector pattern shared by `blk-write`, `blk-read` and `io-loop`:
//! sector `X` holds the little-endian u64 `X ^ (seed << 40)` repeated 64
//! times (512 bytes).

/// Sector size in bytes.
pub const SECTOR: usize = 512;

/// The u64 that fills sector `lba` for `seed`.
pub fn word(lba: u64, seed: u64) -> u64 {
    lba ^ (seed << 40)
}

/// Fills `buf` (a whole number of sectors) with the pattern of the sectors
/// starting at `lba`.
pub fn fill(buf: &mut [u8], lba: u64, seed: u64) {
    for (i, sector) in buf.chunks_exact_mut(SECTOR).enumerate() {
        let w = word(lba + i as u64, seed).to_le_bytes();
        for chunk in sector.chunks_exact_mut(8) {
            chunk.copy_from_slice(&w);
        }
    }
}

/// The first sector of `buf` (holding sectors from `lba` on) that does not
/// hold the pattern, if any.
pub fn first_mismatch(buf: &[u8], lba: u64, seed: u64) -> Option<u64> {
    buf.chunks_exact(SECTOR)
        .enumerate()
        .find_map(|(i, sector)| {
            let w = word(lba + i as u64, seed).to_le_bytes();
            let ok = sector.chunks_exact(8).all(|c| c == w);
            (!ok).then_some(lba + i as u64)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_roundtrip() {
        let mut buf = vec![0u8; 3 * SECTOR];
        fill(&mut buf, 10, 7);
        assert_eq!(&buf[0..8], &(10u64 ^ (7 << 40)).to_le_bytes());
        assert_eq!(
            &buf[SECTOR + 504..2 * SECTOR],
            &(11u64 ^ (7 << 40)).to_le_bytes()
        );
        assert_eq!(first_mismatch(&buf, 10, 7), None);
        assert_eq!(first_mismatch(&buf, 10, 8), Some(10));
        buf[2 * SECTOR + 100] ^= 1;
        assert_eq!(first_mismatch(&buf, 10, 7), Some(12));
    }
}
