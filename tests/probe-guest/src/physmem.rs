//! Access to guest-physical memory by address.

/// Read access to physical memory: the guest implements it over its identity
/// map, the host tests over byte fixtures placed at fixed addresses.
pub trait PhysMem {
    /// The `len` bytes at physical address `addr`, or `None` when any part of
    /// the range is not accessible.
    fn read(&self, addr: u64, len: usize) -> Option<&[u8]>;
}

/// A set of byte regions at fixed physical addresses (used by tests and by
/// anyone who wants to run the parsers over a memory dump).
pub struct Regions<'a> {
    regions: &'a [(u64, &'a [u8])],
}

impl<'a> Regions<'a> {
    /// Memory made of `(address, bytes)` regions.
    pub const fn new(regions: &'a [(u64, &'a [u8])]) -> Self {
        Self { regions }
    }
}

impl PhysMem for Regions<'_> {
    fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        self.regions.iter().find_map(|&(base, bytes)| {
            let off = usize::try_from(addr.checked_sub(base)?).ok()?;
            bytes.get(off..off.checked_add(len)?)
        })
    }
}
