//! The workloads selected by `probe.test=`, run in order.

mod bench;
mod blkio;
mod boot;
mod chaos;
mod memwalk;
mod pio_chaos;
mod power;
mod smp;
mod virtq_chaos;
mod workers;

use super::apic::Apic;
use super::blk::Blk;
use super::mem::{Allocator, DmaBuf};
use super::platform::Platform;
use super::virtio::{InitError, Mmio};
use probe_guest::cmdline::{Params, Test};

/// Most disks the probe drives.
pub const MAX_DISKS: usize = 8;

/// State shared by the workloads.
pub struct Ctx {
    /// The machine.
    pub p: &'static Platform,
    /// Command-line parameters.
    pub params: Params,
    /// DMA memory.
    pub alloc: Allocator,
    /// Interrupt controllers.
    pub apic: Apic,
    /// Where the loader's boot information was (boot_params or start_info).
    pub boot_info_ptr: u64,
    disks: [Option<Blk>; MAX_DISKS],
    /// Queues asked for when each disk was brought up.
    asked: [usize; MAX_DISKS],
    scratch: Option<DmaBuf>,
}

/// Why a disk is not available.
#[derive(Clone, Copy, Debug)]
pub enum DiskError {
    /// Fewer block devices than `probe.dev`.
    NoSuchDisk,
    /// Bring-up failed.
    Init(InitError),
}

impl Ctx {
    /// Context for `p` with `params`.
    pub fn new(
        p: &'static Platform,
        params: Params,
        alloc: Allocator,
        apic: Apic,
        boot_info_ptr: u64,
    ) -> Self {
        Self {
            p,
            params,
            alloc,
            apic,
            boot_info_ptr,
            disks: [const { None }; MAX_DISKS],
            asked: [0; MAX_DISKS],
            scratch: None,
        }
    }

    /// The slot index of block device `n` (DSDT order among block devices).
    pub fn disk_slot(&self, n: u32) -> Option<usize> {
        self.p
            .virtio()
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(Mmio { base: s.base }.probe(), Ok(2)))
            .nth(n as usize)
            .map(|(i, _)| i)
    }

    /// Block device `n`, brought up on first use (with one queue).
    pub fn disk(&mut self, n: u32) -> Result<&mut Blk, DiskError> {
        self.disk_queues(n, 1)
    }

    /// Block device `n` with up to `queues` request queues: brought up (again,
    /// after a device reset) if it was up with fewer asked for.
    pub fn disk_queues(&mut self, n: u32, queues: usize) -> Result<&mut Blk, DiskError> {
        let idx = n as usize;
        if idx >= MAX_DISKS {
            return Err(DiskError::NoSuchDisk);
        }
        if self.disks[idx].is_some() && self.asked[idx] < queues {
            self.disks[idx] = None;
        }
        if self.disks[idx].is_none() {
            let slot = self.disk_slot(n).ok_or(DiskError::NoSuchDisk)?;
            let blk = Blk::init(
                &self.p.virtio()[slot],
                &mut self.alloc,
                &self.apic,
                self.params.irq,
                queues,
            )
            .map_err(DiskError::Init)?;
            if blk.irq_mode() {
                self.apic.start_tick();
            }
            self.disks[idx] = Some(blk);
            self.asked[idx] = queues;
        }
        Ok(self.disks[idx].as_mut().expect("just initialised"))
    }

    /// Takes the scratch DMA buffer, (re)allocated to hold `len` bytes.
    /// Give it back with `put_scratch`.
    pub fn take_scratch(&mut self, len: usize) -> Option<DmaBuf> {
        match self.scratch.take() {
            Some(b) if b.len >= len => Some(b),
            _ => self.alloc.alloc(len),
        }
    }

    /// Returns the scratch buffer for reuse.
    pub fn put_scratch(&mut self, b: DmaBuf) {
        self.scratch = Some(b);
    }

    /// Forgets disk `n` (after its registers were abused).
    pub fn drop_disk(&mut self, n: u32) {
        if let Some(d) = self.disks.get_mut(n as usize) {
            *d = None;
        }
    }
}

/// Prints the reason a disk is unusable and returns the failure rc.
pub fn disk_error(test: &str, dev: u32, e: DiskError) -> u32 {
    match e {
        DiskError::NoSuchDisk => crate::out!("PROBE {} dev={} status=nodev", test, dev),
        DiskError::Init(i) => crate::out!(
            "PROBE {} dev={} status=init-failed reason={:?}",
            test,
            dev,
            i
        ),
    }
    1
}

/// Runs every test in order; returns the rc (0 = all passed, 1 = a test failed).
pub fn run_all(ctx: &mut Ctx) -> u32 {
    let mut rc = 0;
    let tests = ctx.params;
    for &t in tests.tests() {
        let r = match t {
            Test::Boot => boot::run(ctx),
            Test::BlkWrite => blkio::write(ctx),
            Test::BlkRead => blkio::read(ctx),
            Test::BlkId => blkio::id(ctx),
            Test::IoLoop => blkio::io_loop(ctx),
            Test::BlkBench => bench::run(ctx),
            Test::Idle => power::idle(ctx),
            Test::Reboot => power::reboot(ctx),
            Test::TripleFault => power::triple_fault(),
            Test::KbdReset => power::kbd_reset(),
            Test::MmioChaos => chaos::run(ctx),
            Test::PioChaos => pio_chaos::run(ctx),
            Test::VirtqChaos => virtq_chaos::run(ctx),
            Test::Smp => smp::run(ctx),
            Test::MemWalk => memwalk::run(ctx),
        };
        rc = rc.max(r);
    }
    rc
}
