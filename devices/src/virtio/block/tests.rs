// SPDX-License-Identifier: Apache-2.0
//! virtio-blk driven through the MMIO registers, as a guest driver would.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::GuestMemoryMmap;
use block::{
    Aio, BackendConfig, BlockNode, Bucket, DevicePolicy, ErrorAction, FaultRule, IoBuf,
    IoErrorEvent, IoErrorSlot, IoKind, IoStatus, OnError, ThrottleConfig, ThrottleGroups,
};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET as DEVICE_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_DEVICE_FEATURES, VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_DRIVER_FEATURES, VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_MAGIC_VALUE,
    VIRTIO_MMIO_QUEUE_AVAIL_HIGH, VIRTIO_MMIO_QUEUE_AVAIL_LOW, VIRTIO_MMIO_QUEUE_DESC_HIGH,
    VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_NUM_MAX, VIRTIO_MMIO_QUEUE_READY, VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_QUEUE_USED_HIGH, VIRTIO_MMIO_QUEUE_USED_LOW, VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_VERSION,
};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EFD_NONBLOCK;
use vmm_sys_util::tempfile::TempFile;

use super::request::*;
use super::*;
use crate::bus::BusDevice;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::testing::{guest_memory, DriverQueue, F_INDIRECT, F_NEXT, F_WRITE};

const BASE: u64 = 0xd000_0000;
const MEM_SIZE: usize = 0x40_0000;
const QUEUE_AT: u64 = 0x1000;
const HDR_AT: u64 = 0x10000;
const DATA_AT: u64 = 0x20000;
const STATUS_AT: u64 = 0x30000;
const SECTORS: u64 = 128;
const WAIT: Duration = Duration::from_secs(10);

fn pattern(i: usize) -> u8 {
    (i / 512) as u8 ^ (i % 251) as u8
}

struct Harness {
    t: MmioTransport,
    mem: GuestMemoryMmap,
    irq: EventFd,
    q: DriverQueue,
    image: TempFile,
    backend: Arc<Backend>,
    next_desc: u16,
    used_seen: u16,
}

fn r32(t: &mut MmioTransport, off: u32) -> u32 {
    let mut d = [0u8; 4];
    t.read(BASE, u64::from(off), &mut d);
    u32::from_le_bytes(d)
}

fn w32(t: &mut MmioTransport, off: u32, v: u32) {
    t.write(BASE, u64::from(off), &v.to_le_bytes());
}

impl Harness {
    fn new(id: &str, read_only: bool) -> Self {
        Self::with_aio(id, read_only, Aio::default())
    }

    fn with_aio(id: &str, read_only: bool, aio: Aio) -> Self {
        let image = TempFile::new().unwrap();
        let data: Vec<u8> = (0..(SECTORS * 512) as usize).map(pattern).collect();
        std::fs::write(image.as_path(), data).unwrap();
        let backend = Arc::new(
            Backend::open(BackendConfig {
                read_only,
                aio,
                ..BackendConfig::new(id, image.as_path())
            })
            .unwrap(),
        );
        Self::on(backend, image)
    }

    fn on(backend: Arc<Backend>, image: TempFile) -> Self {
        Self::on_mem(backend, image, guest_memory(MEM_SIZE))
    }

    fn on_mem(backend: Arc<Backend>, image: TempFile, mem: GuestMemoryMmap) -> Self {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let t = MmioTransport::new(
            Box::new(VirtioBlock::new(backend.clone())),
            mem.clone(),
            irq.try_clone().unwrap(),
            BASE,
            6,
            0,
        )
        .unwrap();
        let q = DriverQueue::new(&mem, QUEUE_AT, QUEUE_SIZE);
        Self {
            t,
            mem,
            irq,
            q,
            image,
            backend,
            next_desc: 0,
            used_seen: 0,
        }
    }

    /// The Linux driver's sequence: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queue
    /// setup, DRIVER_OK.
    fn init(&mut self, driver_features: u64) {
        let t = &mut self.t;
        w32(t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(r32(t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(r32(t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(r32(t, VIRTIO_MMIO_DEVICE_ID), 2);
        w32(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
        w32(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
        w32(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let lo = r32(t, VIRTIO_MMIO_DEVICE_FEATURES);
        w32(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let hi = r32(t, VIRTIO_MMIO_DEVICE_FEATURES);
        let offered = (u64::from(hi) << 32) | u64::from(lo);
        let f = offered & driver_features;
        w32(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        w32(t, VIRTIO_MMIO_DRIVER_FEATURES, f as u32);
        w32(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        w32(t, VIRTIO_MMIO_DRIVER_FEATURES, (f >> 32) as u32);
        w32(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_ne!(
            r32(t, VIRTIO_MMIO_STATUS) & FEATURES_OK,
            0,
            "features refused"
        );
        // Fresh rings before the device may look at them (at DRIVER_OK), as a driver does.
        self.q = DriverQueue::new(&self.mem, QUEUE_AT, QUEUE_SIZE);
        self.next_desc = 0;
        self.used_seen = 0;
        w32(t, VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(r32(t, VIRTIO_MMIO_QUEUE_READY), 0);
        assert_eq!(r32(t, VIRTIO_MMIO_QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
        w32(t, VIRTIO_MMIO_QUEUE_NUM, u32::from(QUEUE_SIZE));
        w32(t, VIRTIO_MMIO_QUEUE_DESC_LOW, self.q.desc.0 as u32);
        w32(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
        w32(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, self.q.avail.0 as u32);
        w32(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
        w32(t, VIRTIO_MMIO_QUEUE_USED_LOW, self.q.used.0 as u32);
        w32(t, VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
        w32(t, VIRTIO_MMIO_QUEUE_READY, 1);
        w32(
            t,
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert_eq!(
            r32(t, VIRTIO_MMIO_STATUS),
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
        );
    }

    fn init_default(&mut self) {
        self.init(u64::MAX);
    }

    fn alloc(&mut self, n: u16) -> u16 {
        let first = self.next_desc;
        self.next_desc = (self.next_desc + n) % QUEUE_SIZE;
        first
    }

    fn write_header(&self, slot: u64, req_type: u32, sector: u64) -> u64 {
        let at = HDR_AT + slot * 16;
        self.mem.write_obj(req_type, GuestAddress(at)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
        at
    }

    /// Makes a three-descriptor request available: header, data (`len` bytes at `data`,
    /// device-writable if `data_write`), status. Returns (head, status address).
    fn request(
        &mut self,
        req_type: u32,
        sector: u64,
        data: u64,
        len: u32,
        data_write: bool,
    ) -> (u16, u64) {
        let head = self.alloc(3);
        let slot = u64::from(head);
        let hdr = self.write_header(slot, req_type, sector);
        let status = STATUS_AT + slot;
        self.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let d = (head + 1) % QUEUE_SIZE;
        let s = (head + 2) % QUEUE_SIZE;
        self.q.set_desc(head, hdr, 16, F_NEXT, d);
        let wf = if data_write { F_WRITE } else { 0 };
        self.q.set_desc(d, data, len, F_NEXT | wf, s);
        self.q.set_desc(s, status, 1, F_WRITE, 0);
        self.q.push(head);
        (head, status)
    }

    fn kick(&self) {
        self.t.queue_events()[0].write(1).unwrap();
    }

    /// Waits until `n` more used entries appear; returns them.
    fn wait_used(&mut self, n: u16) -> Vec<(u32, u32)> {
        let deadline = Instant::now() + WAIT;
        while self.q.used_idx().wrapping_sub(self.used_seen) < n {
            assert!(Instant::now() < deadline, "device did not complete");
            std::thread::sleep(Duration::from_millis(1));
        }
        let out = (0..n)
            .map(|i| self.q.used_elem(self.used_seen.wrapping_add(i)))
            .collect();
        self.used_seen = self.used_seen.wrapping_add(n);
        out
    }

    /// Submits one request, kicks, waits for it; returns (used length, status byte).
    fn run(&mut self, req_type: u32, sector: u64, data: u64, len: u32, write: bool) -> (u32, u8) {
        let (head, status) = self.request(req_type, sector, data, len, write);
        self.kick();
        let used = self.wait_used(1);
        assert_eq!(used[0].0, u32::from(head));
        (used[0].1, self.mem.read_obj(GuestAddress(status)).unwrap())
    }

    fn wait_needs_reset(&mut self) {
        let deadline = Instant::now() + WAIT;
        while r32(&mut self.t, VIRTIO_MMIO_STATUS) & DEVICE_NEEDS_RESET == 0 {
            assert!(Instant::now() < deadline, "device did not ask for a reset");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn file(&self) -> Vec<u8> {
        std::fs::read(self.image.as_path()).unwrap()
    }

    fn fill(&self, at: u64, len: usize, byte: u8) {
        self.mem
            .write_slice(&vec![byte; len], GuestAddress(at))
            .unwrap();
    }

    fn guest(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }
}

/// Waits until a thread named `name` exists (`present`) or not. A thread the device joined
/// is still listed for a few tens of microseconds while the kernel finishes its exit (its
/// io_uring's teardown comes after the join returns).
fn wait_thread(name: &str, present: bool) {
    wait_threads(name, |n| n == name, present);
}

/// Waits until some thread whose name `matches` exists (`present`) or none does; `what`
/// names them in the failure.
fn wait_threads(what: &str, matches: impl Fn(&str) -> bool, present: bool) {
    let deadline = Instant::now() + WAIT;
    while thread_names().iter().any(|n| matches(n)) != present {
        assert!(
            Instant::now() < deadline,
            "thread {what} present: {}",
            !present
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

#[test]
fn config_space_and_features() {
    let h = Harness::new("cfg0", false);
    let dev = VirtioBlock::new(h.backend.clone());
    let f = dev.device_features();
    for bit in [
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_TOPOLOGY,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_F_VERSION_1,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature {bit}");
    }
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), SECTORS);
    let c = dev.config_space();
    let u32_at = |o: usize| u32::from_le_bytes(c[o..o + 4].try_into().unwrap());
    assert_eq!(u32_at(8), SIZE_MAX);
    assert_eq!(u32_at(12), u32::from(QUEUE_SIZE) - 2);
    assert_eq!(u32_at(20), 512);
    assert_eq!(u32_at(36), MAX_DISCARD_SECTORS);
    assert_eq!(u32_at(40), MAX_DISCARD_SEGMENTS);
    assert_eq!(u32_at(44), 1);
    assert_eq!(u32_at(48), MAX_DISCARD_SECTORS);
    assert_eq!(c[56], 1);
    // Through the transport, at any width; beyond the config space reads 0.
    let mut t = h.t;
    let mut b = [0u8; 4];
    t.read(BASE, u64::from(VIRTIO_MMIO_CONFIG) + 20, &mut b);
    assert_eq!(u32::from_le_bytes(b), 512);
    let mut b = [0xffu8; 8];
    t.read(BASE, u64::from(VIRTIO_MMIO_CONFIG) + 60, &mut b);
    assert_eq!(b, [0; 8]);
    dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0; 8]);

    let ro = Harness::new("cfg1", true);
    let dev = VirtioBlock::new(ro.backend.clone());
    let f = dev.device_features();
    assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_eq!(dev.config_space()[36..60], [0; 24]);
}

/// With `O_DIRECT` the io_uring engine writes straight from aligned guest buffers and
/// through its bounce buffer from unaligned ones; the image gets the guest's bytes either way,
/// and they read back.
#[test]
fn direct_and_bounced_writes_land_with_o_direct() {
    let image = TempFile::new().unwrap();
    std::fs::write(image.as_path(), vec![0u8; (SECTORS * 512) as usize]).unwrap();
    let backend = Arc::new(
        Backend::open(BackendConfig {
            aio: Aio::IoUring,
            cache: block::CacheMode::None,
            ..BackendConfig::new("odirect0", image.as_path())
        })
        .unwrap(),
    );
    let mut h = Harness::on(backend, image);
    h.init_default();
    // Page-aligned guest buffer: direct.
    h.fill(DATA_AT, 8192, 0x5a);
    assert_eq!(h.run(VIRTIO_BLK_T_OUT, 8, DATA_AT, 8192, false), (1, 0));
    // 4 bytes past a page (O_DIRECT refuses such memory): through the bounce buffer.
    h.fill(DATA_AT + 0x4004, 4096, 0xc3);
    assert_eq!(
        h.run(VIRTIO_BLK_T_OUT, 40, DATA_AT + 0x4004, 4096, false),
        (1, 0)
    );
    let f = h.file();
    assert!(f[8 * 512..24 * 512].iter().all(|&b| b == 0x5a));
    assert!(f[40 * 512..48 * 512].iter().all(|&b| b == 0xc3));
    assert!(f[24 * 512..40 * 512].iter().all(|&b| b == 0));
    h.fill(DATA_AT + 0x8000, 8192, 0);
    assert_eq!(
        h.run(VIRTIO_BLK_T_IN, 8, DATA_AT + 0x8000, 8192, true),
        (8193, 0)
    );
    assert_eq!(h.guest(DATA_AT + 0x8000, 8192), vec![0x5a; 8192]);
}

#[test]
fn end_to_end_write_then_read_back() {
    end_to_end_write_then_read_back_on(Aio::IoUring);
}

#[test]
fn end_to_end_write_then_read_back_threads() {
    end_to_end_write_then_read_back_on(Aio::Threads);
}

fn end_to_end_write_then_read_back_on(aio: Aio) {
    let mut h = Harness::with_aio("e2e0", false, aio);
    h.init_default();
    wait_thread("blk-e2e0", true);

    // Write 8 sectors at sector 10.
    h.fill(DATA_AT, 4096, 0xa5);
    let (used, status) = h.run(VIRTIO_BLK_T_OUT, 10, DATA_AT, 4096, false);
    assert_eq!((used, status), (1, S_OK));
    assert!(h.irq.read().unwrap() >= 1);
    assert_eq!(r32(&mut h.t, VIRTIO_MMIO_INTERRUPT_STATUS) & 1, 1);
    w32(&mut h.t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(r32(&mut h.t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);

    // Flush, then read it back (and the neighbours) into fresh memory.
    assert_eq!(h.run(VIRTIO_BLK_T_FLUSH, 0, DATA_AT, 0, false).1, 0);
    let file = h.file();
    assert!(file[10 * 512..18 * 512].iter().all(|&b| b == 0xa5));
    assert_eq!(file[9 * 512], pattern(9 * 512));
    h.fill(DATA_AT + 0x8000, 6144, 0);
    let (used, status) = h.run(VIRTIO_BLK_T_IN, 9, DATA_AT + 0x8000, 6144, true);
    assert_eq!((used, status), (6145, S_OK));
    let back = h.guest(DATA_AT + 0x8000, 6144);
    assert_eq!(back[..512], file[9 * 512..10 * 512]);
    assert!(back[512..4608].iter().all(|&b| b == 0xa5));
    assert_eq!(back[4608..], file[18 * 512..21 * 512]);

    let q = h.backend.stats().snapshot().qmp();
    assert_eq!(q.wr_bytes, 4096);
    assert_eq!(q.rd_bytes, 6144);
    assert_eq!(q.flush_operations, 1);
    assert_eq!(q.wr_highest_offset, 18 * 512);

    // Many requests in one kick.
    for i in 0..40u64 {
        h.fill(DATA_AT + i * 512, 512, i as u8);
        h.request(VIRTIO_BLK_T_OUT, 64 + i, DATA_AT + i * 512, 512, false);
    }
    h.kick();
    assert_eq!(h.wait_used(40).len(), 40);
    let file = h.file();
    for i in 0..40usize {
        assert!(file[(64 + i) * 512..(65 + i) * 512]
            .iter()
            .all(|&b| b == i as u8));
    }
}

#[test]
fn kick_through_the_notify_register() {
    let mut h = Harness::new("kick0", false);
    h.init_default();
    let (_, status) = h.request(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true);
    // No ioeventfd: the write reaches the transport.
    w32(&mut h.t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    h.wait_used(1);
    assert_eq!(h.mem.read_obj::<u8>(GuestAddress(status)).unwrap(), 0);
    assert_eq!(h.guest(DATA_AT, 512), h.file()[..512]);
}

#[test]
fn get_id_flush_discard_write_zeroes() {
    get_id_flush_discard_write_zeroes_on(Aio::IoUring);
}

#[test]
fn get_id_flush_discard_write_zeroes_threads() {
    get_id_flush_discard_write_zeroes_on(Aio::Threads);
}

fn get_id_flush_discard_write_zeroes_on(aio: Aio) {
    let mut h = Harness::with_aio("ops0", false, aio);
    h.init_default();
    h.fill(DATA_AT, 32, 0xee);
    let (used, status) = h.run(VIRTIO_BLK_T_GET_ID, 0, DATA_AT, 20, true);
    assert_eq!((used, status), (21, 0));
    assert_eq!(
        h.guest(DATA_AT, 21),
        b"ops0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\xee"
    );

    // Discard sectors 0..8 and write zeroes (unmap) on 16..24, write zeroes on 32..40.
    let mem = h.mem.clone();
    let seg = |at: u64, sector: u64, num: u32, flags: u32| {
        mem.write_obj(sector, GuestAddress(at)).unwrap();
        mem.write_obj(num, GuestAddress(at + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
    };
    seg(DATA_AT, 0, 8, 0);
    seg(DATA_AT + 16, 16, 8, 1);
    seg(DATA_AT + 32, 32, 8, 0);
    assert_eq!(h.run(VIRTIO_BLK_T_DISCARD, 0, DATA_AT, 16, false), (1, 0));
    assert_eq!(
        h.run(VIRTIO_BLK_T_WRITE_ZEROES, 0, DATA_AT + 16, 32, false),
        (1, 0)
    );
    let file = h.file();
    assert_eq!(file.len() as u64, SECTORS * 512);
    assert!(file[..8 * 512].iter().all(|&b| b == 0));
    assert_eq!(file[8 * 512], pattern(8 * 512));
    assert!(file[16 * 512..24 * 512].iter().all(|&b| b == 0));
    assert!(file[32 * 512..40 * 512].iter().all(|&b| b == 0));
    assert_eq!(file[40 * 512 + 7], pattern(40 * 512 + 7));

    // Discard with the unmap flag, unknown flags: UNSUPP; beyond the disk: IOERR.
    seg(DATA_AT, 0, 8, 1);
    assert_eq!(h.run(VIRTIO_BLK_T_DISCARD, 0, DATA_AT, 16, false).1, 2);
    seg(DATA_AT, 0, 8, 4);
    assert_eq!(h.run(VIRTIO_BLK_T_WRITE_ZEROES, 0, DATA_AT, 16, false).1, 2);
    seg(DATA_AT, SECTORS - 4, 8, 0);
    assert_eq!(h.run(VIRTIO_BLK_T_DISCARD, 0, DATA_AT, 16, false).1, 1);
    seg(DATA_AT, u64::MAX / 256, 8, 0);
    assert_eq!(h.run(VIRTIO_BLK_T_DISCARD, 0, DATA_AT, 16, false).1, 1);
    seg(DATA_AT, 0, MAX_DISCARD_SECTORS + 1, 0);
    assert_eq!(h.run(VIRTIO_BLK_T_DISCARD, 0, DATA_AT, 16, false).1, 1);
    // A valid range then one beyond the disk: IOERR, and the valid one is not done either
    // (it used to be: each range was checked only as it ran).
    for op in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        seg(DATA_AT, 48, 8, 0);
        seg(DATA_AT + 16, SECTORS - 4, 8, 0);
        assert_eq!(h.run(op, 0, DATA_AT, 32, false).1, 1);
        let file = h.file();
        assert!(
            (48 * 512..56 * 512).all(|i| file[i] == pattern(i)),
            "request {op}: the range before the bad one was done"
        );
    }
    // Not a whole number of segments, too many segments: UNSUPP.
    assert_eq!(h.run(VIRTIO_BLK_T_DISCARD, 0, DATA_AT, 20, false).1, 2);
    let many = (MAX_DISCARD_SEGMENTS + 1) * 16;
    assert_eq!(h.run(VIRTIO_BLK_T_DISCARD, 0, DATA_AT, many, false).1, 2);
    let q = h.backend.stats().snapshot().qmp();
    assert_eq!(q.unmap_operations, 1);
    assert_eq!(q.invalid_unmap_operations, 4);
}

#[test]
fn discard_not_negotiated_is_unsupported() {
    let mut h = Harness::new("nodisc0", false);
    h.init(!(1 << VIRTIO_BLK_F_DISCARD));
    h.mem.write_obj(0u64, GuestAddress(DATA_AT)).unwrap();
    h.mem.write_obj(8u32, GuestAddress(DATA_AT + 8)).unwrap();
    assert_eq!(h.run(VIRTIO_BLK_T_DISCARD, 0, DATA_AT, 16, false).1, 2);
    assert_eq!(h.file()[0], pattern(0));
}

#[test]
fn invalid_requests_fail_with_a_status() {
    invalid_requests_fail_with_a_status_on(Aio::IoUring);
}

#[test]
fn invalid_requests_fail_with_a_status_threads() {
    invalid_requests_fail_with_a_status_on(Aio::Threads);
}

fn invalid_requests_fail_with_a_status_on(aio: Aio) {
    let mut h = Harness::with_aio("bad0", false, aio);
    h.init_default();
    let before = h.file();
    // Beyond capacity, straddling the end, sector overflow.
    assert_eq!(h.run(VIRTIO_BLK_T_IN, SECTORS, DATA_AT, 512, true), (1, 1));
    assert_eq!(
        h.run(VIRTIO_BLK_T_OUT, SECTORS - 1, DATA_AT, 1024, false),
        (1, 1)
    );
    assert_eq!(
        h.run(VIRTIO_BLK_T_OUT, u64::MAX, DATA_AT, 512, false),
        (1, 1)
    );
    assert_eq!(
        h.run(VIRTIO_BLK_T_IN, u64::MAX >> 9, DATA_AT, 512, true),
        (1, 1)
    );
    // Not a multiple of 512.
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 100, true), (1, 1));
    assert_eq!(h.run(VIRTIO_BLK_T_OUT, 0, DATA_AT, 513, false), (1, 1));
    // Unknown types.
    assert_eq!(h.run(3, 0, DATA_AT, 512, true), (1, 2));
    assert_eq!(h.run(0xdead_beef, 0, DATA_AT, 512, false), (1, 2));
    // Reading into a device-readable buffer, writing from a device-writable one.
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, false), (1, 1));
    assert_eq!(h.run(VIRTIO_BLK_T_OUT, 0, DATA_AT, 512, true), (1, 1));
    // GET_ID into a readable buffer.
    assert_eq!(h.run(VIRTIO_BLK_T_GET_ID, 0, DATA_AT, 20, false), (1, 1));
    // Data outside guest RAM, or wrapping around the address space.
    assert_eq!(
        h.run(VIRTIO_BLK_T_IN, 0, MEM_SIZE as u64 - 512, 1024, true),
        (1, 1)
    );
    assert_eq!(
        h.run(VIRTIO_BLK_T_OUT, 0, 0x1_0000_0000, 512, false),
        (1, 1)
    );
    assert_eq!(
        h.run(VIRTIO_BLK_T_OUT, 0, u64::MAX - 100, 512, false),
        (1, 1)
    );
    assert_eq!(h.file(), before);
    let q = h.backend.stats().snapshot().qmp();
    assert!(q.invalid_rd_operations >= 5 && q.invalid_wr_operations >= 5);
    assert_eq!(q.rd_operations + q.wr_operations, 0);
    // The device still works.
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true), (513, 0));
    assert_eq!(r32(&mut h.t, VIRTIO_MMIO_STATUS) & DEVICE_NEEDS_RESET, 0);
}

#[test]
fn read_only_disk_refuses_writes() {
    read_only_disk_refuses_writes_on(Aio::IoUring);
}

#[test]
fn read_only_disk_refuses_writes_threads() {
    read_only_disk_refuses_writes_on(Aio::Threads);
}

fn read_only_disk_refuses_writes_on(aio: Aio) {
    let mut h = Harness::with_aio("ro0", true, aio);
    h.init_default();
    let before = h.file();
    assert_eq!(h.run(VIRTIO_BLK_T_OUT, 0, DATA_AT, 512, false), (1, 1));
    h.mem.write_obj(0u64, GuestAddress(DATA_AT)).unwrap();
    h.mem.write_obj(8u32, GuestAddress(DATA_AT + 8)).unwrap();
    h.mem.write_obj(0u32, GuestAddress(DATA_AT + 12)).unwrap();
    assert_eq!(h.run(VIRTIO_BLK_T_DISCARD, 0, DATA_AT, 16, false).1, 2);
    assert_eq!(h.run(VIRTIO_BLK_T_WRITE_ZEROES, 0, DATA_AT, 16, false).1, 2);
    assert_eq!(h.run(VIRTIO_BLK_T_FLUSH, 0, 0, 0, false).1, 0);
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 1, DATA_AT, 512, true), (513, 0));
    assert_eq!(h.file(), before);
    assert_eq!(h.backend.stats().snapshot().qmp().invalid_wr_operations, 1);
}

#[test]
fn odd_descriptor_layouts_are_accepted() {
    odd_descriptor_layouts_are_accepted_on(Aio::IoUring);
}

#[test]
fn odd_descriptor_layouts_are_accepted_threads() {
    odd_descriptor_layouts_are_accepted_on(Aio::Threads);
}

fn odd_descriptor_layouts_are_accepted_on(aio: Aio) {
    let mut h = Harness::with_aio("layout0", false, aio);
    h.init_default();
    // Header and data in one readable descriptor, status alone.
    let hdr = h.write_header(0, VIRTIO_BLK_T_OUT, 2);
    h.fill(hdr + 16, 512, 0x42);
    h.q.set_desc(0, hdr, 16 + 512, F_NEXT, 1);
    h.q.set_desc(1, STATUS_AT, 1, F_WRITE, 0);
    h.q.push(0);
    h.kick();
    // Requests in flight together may complete in any order: the read below depends on the
    // write, so it is made available only once the write is done.
    assert_eq!(h.wait_used(1), vec![(0, 1)]);
    // A read whose data and status share the last descriptor, after a zero-length one.
    let hdr2 = h.write_header(64, VIRTIO_BLK_T_IN, 2);
    h.q.set_desc(2, hdr2, 16, F_NEXT, 3);
    h.q.set_desc(3, DATA_AT, 0, F_NEXT | F_WRITE, 4);
    h.q.set_desc(4, DATA_AT, 513, F_WRITE, 0);
    h.q.push(2);
    h.kick();
    assert_eq!(h.wait_used(1), vec![(2, 513)]);
    assert_eq!(h.mem.read_obj::<u8>(GuestAddress(STATUS_AT)).unwrap(), 0);
    assert!(h.guest(DATA_AT, 512).iter().all(|&b| b == 0x42));
    assert_eq!(
        h.mem.read_obj::<u8>(GuestAddress(DATA_AT + 512)).unwrap(),
        0
    );
}

#[test]
fn indirect_descriptors() {
    indirect_descriptors_on(Aio::IoUring);
}

#[test]
fn indirect_descriptors_threads() {
    indirect_descriptors_on(Aio::Threads);
}

fn indirect_descriptors_on(aio: Aio) {
    let mut h = Harness::with_aio("indir0", false, aio);
    h.init_default();
    let table = GuestAddress(0x5000);
    let hdr = h.write_header(0, VIRTIO_BLK_T_IN, 3);
    h.q.write_desc_at(table, 0, hdr, 16, F_NEXT, 1);
    h.q.write_desc_at(table, 1, DATA_AT, 256, F_NEXT | F_WRITE, 2);
    h.q.write_desc_at(table, 2, DATA_AT + 0x1000, 256, F_NEXT | F_WRITE, 3);
    h.q.write_desc_at(table, 3, STATUS_AT, 1, F_WRITE, 0);
    h.q.set_desc(0, table.0, 64, F_INDIRECT, 0);
    h.q.push(0);
    h.kick();
    assert_eq!(h.wait_used(1), vec![(0, 513)]);
    let file = h.file();
    assert_eq!(h.guest(DATA_AT, 256), file[3 * 512..3 * 512 + 256]);
    assert_eq!(h.guest(DATA_AT + 0x1000, 256), file[3 * 512 + 256..4 * 512]);
}

#[test]
fn event_idx_suppresses_interrupts() {
    event_idx_suppresses_interrupts_on(Aio::IoUring);
}

#[test]
fn event_idx_suppresses_interrupts_threads() {
    event_idx_suppresses_interrupts_on(Aio::Threads);
}

fn event_idx_suppresses_interrupts_on(aio: Aio) {
    let mut h = Harness::with_aio("evidx0", false, aio);
    h.init_default();
    // The driver wants an interrupt only after the 3rd used entry (used_event = 2).
    h.q.set_used_event(2);
    for _ in 0..2 {
        h.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true);
    }
    assert!(h.irq.read().is_err(), "interrupt despite used_event");
    h.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true);
    assert_eq!(h.irq.read().unwrap(), 1);

    // Without EVENT_IDX every completion interrupts.
    let mut h = Harness::with_aio("evidx1", false, aio);
    h.init(!(1 << VIRTIO_RING_F_EVENT_IDX));
    h.q.set_used_event(100);
    h.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true);
    assert_eq!(h.irq.read().unwrap(), 1);
}

#[test]
fn broken_chains_need_reset() {
    type Breaker = fn(&mut Harness);
    let cases: [(&str, Breaker); 6] = [
        ("status descriptor readable", |h| {
            let hdr = h.write_header(0, VIRTIO_BLK_T_IN, 0);
            h.q.set_desc(0, hdr, 16, F_NEXT, 1);
            h.q.set_desc(1, STATUS_AT, 1, 0, 0);
            h.q.push(0);
        }),
        ("header too short", |h| {
            let hdr = h.write_header(0, VIRTIO_BLK_T_IN, 0);
            h.q.set_desc(0, hdr, 8, F_NEXT, 1);
            h.q.set_desc(1, STATUS_AT, 1, F_WRITE, 0);
            h.q.push(0);
        }),
        ("header device-writable", |h| {
            let hdr = h.write_header(0, VIRTIO_BLK_T_IN, 0);
            h.q.set_desc(0, hdr, 16, F_NEXT | F_WRITE, 1);
            h.q.set_desc(1, STATUS_AT, 1, F_WRITE, 0);
            h.q.push(0);
        }),
        ("status outside guest memory", |h| {
            let hdr = h.write_header(0, VIRTIO_BLK_T_IN, 0);
            h.q.set_desc(0, hdr, 16, F_NEXT, 1);
            h.q.set_desc(1, 0x1_0000_0000, 1, F_WRITE, 0);
            h.q.push(0);
        }),
        ("head index beyond the queue", |h| h.q.push(QUEUE_SIZE + 5)),
        ("available index runs ahead", |h| {
            h.q.set_avail_idx(QUEUE_SIZE + 1)
        }),
    ];
    for (name, breaker) in cases {
        let mut h = Harness::new(&format!("brk{}", name.len()), false);
        h.init_default();
        breaker(&mut h);
        h.kick();
        h.wait_needs_reset();
        assert_ne!(
            r32(&mut h.t, VIRTIO_MMIO_INTERRUPT_STATUS) & 2,
            0,
            "{name}: no config interrupt"
        );
        // Further kicks are ignored, nothing was used.
        h.kick();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(h.q.used_idx(), 0, "{name}");
        // A driver reset brings the device back.
        h.init_default();
        assert_eq!(
            h.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true),
            (513, 0),
            "{name}"
        );
    }
}

/// Makes `h` break on what `breaker` makes available, with nothing used, nothing of the
/// image changed and no byte of guest memory written; then a driver reset brings it back.
fn assert_needs_reset_untouched(name: &str, breaker: fn(&mut Harness)) {
    let mut h = Harness::new(&format!("trunc{}", name.len()), false);
    h.init_default();
    // Guest memory and image as they are before the chain is made available (the rings
    // aside, which the breaker writes).
    h.fill(DATA_AT, 0x10000, 0x5a);
    h.fill(STATUS_AT, 0x100, 0xee);
    let image = h.file();
    breaker(&mut h);
    h.kick();
    h.wait_needs_reset();
    assert_ne!(
        r32(&mut h.t, VIRTIO_MMIO_INTERRUPT_STATUS) & 2,
        0,
        "{name}: no config interrupt"
    );
    settle();
    assert_eq!(h.q.used_idx(), 0, "{name}: a used entry");
    assert!(
        h.guest(DATA_AT, 0x10000).iter().all(|&b| b == 0x5a),
        "{name}: data buffers written"
    );
    assert!(
        h.guest(STATUS_AT, 0x100).iter().all(|&b| b == 0xee),
        "{name}: a status written"
    );
    assert!(h.file() == image, "{name}: the image changed");
    h.init_default();
    assert_eq!(
        h.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true),
        (513, 0),
        "{name}"
    );
}

#[test]
fn chains_that_cannot_be_followed_to_their_end_need_reset() {
    type Breaker = fn(&mut Harness);
    // Before the fix, virtio-queue's silent end of these chains made each look like a
    // well-formed request, which ran.
    let cases: [(&str, Breaker); 8] = [
        // 0 -> 1 -> 2 -> 1 -> ...
        ("loop to an earlier descriptor", |h| {
            let hdr = h.write_header(0, VIRTIO_BLK_T_IN, 0);
            h.q.set_desc(0, hdr, 16, F_NEXT, 1);
            h.q.set_desc(1, DATA_AT, 512, F_NEXT | F_WRITE, 2);
            h.q.set_desc(2, STATUS_AT, 1, F_NEXT | F_WRITE, 1);
            h.q.push(0);
        }),
        // The header, then a 255-byte buffer that names itself: a queue's worth of
        // descriptors is 16 + 255 x 255 bytes, 127 sectors and a status byte.
        ("self-loop that reads as a request", |h| {
            let hdr = h.write_header(0, VIRTIO_BLK_T_IN, 0);
            h.q.set_desc(0, hdr, 16, F_NEXT, 1);
            h.q.set_desc(1, DATA_AT, 255, F_NEXT | F_WRITE, 1);
            h.q.push(0);
        }),
        // A write whose status descriptor goes on to a descriptor beyond the queue.
        ("next beyond the queue", |h| {
            let hdr = h.write_header(0, VIRTIO_BLK_T_OUT, 1);
            h.q.set_desc(0, hdr, 16, F_NEXT, 1);
            h.q.set_desc(1, DATA_AT, 512, F_NEXT, 2);
            h.q.set_desc(2, STATUS_AT, 1, F_NEXT | F_WRITE, QUEUE_SIZE + 3);
            h.q.push(0);
        }),
        // An indirect table whose last entry loops back to its first.
        ("indirect table that loops", |h| {
            let table = GuestAddress(0x5000);
            let hdr = h.write_header(0, VIRTIO_BLK_T_IN, 0);
            h.q.write_desc_at(table, 0, hdr, 16, F_NEXT, 1);
            h.q.write_desc_at(table, 1, DATA_AT, 512, F_NEXT | F_WRITE, 2);
            h.q.write_desc_at(table, 2, STATUS_AT, 1, F_NEXT | F_WRITE, 0);
            h.q.set_desc(0, table.0, 48, F_INDIRECT, 0);
            h.q.push(0);
        }),
        // A complete request in the table, whose status entry goes on to a nested table.
        ("nested indirect table", |h| {
            let table = GuestAddress(0x5000);
            let hdr = h.write_header(0, VIRTIO_BLK_T_IN, 0);
            h.q.write_desc_at(table, 0, hdr, 16, F_NEXT, 1);
            h.q.write_desc_at(table, 1, DATA_AT, 512, F_NEXT | F_WRITE, 2);
            h.q.write_desc_at(table, 2, STATUS_AT, 1, F_NEXT | F_WRITE, 3);
            h.q.write_desc_at(table, 3, 0x6000, 48, F_INDIRECT, 0);
            h.q.set_desc(0, table.0, 64, F_INDIRECT, 0);
            h.q.push(0);
        }),
        // The table's last entry says "next" past the table's end.
        ("indirect next beyond the table", |h| {
            let table = GuestAddress(0x5000);
            let hdr = h.write_header(0, VIRTIO_BLK_T_IN, 0);
            h.q.write_desc_at(table, 0, hdr, 16, F_NEXT, 1);
            h.q.write_desc_at(table, 1, DATA_AT, 512, F_NEXT | F_WRITE, 2);
            h.q.write_desc_at(table, 2, STATUS_AT, 1, F_NEXT | F_WRITE, 3);
            h.q.set_desc(0, table.0, 48, F_INDIRECT, 0);
            h.q.push(0);
        }),
        // A table that runs off the end of guest memory after a complete request.
        ("indirect table past guest memory", |h| {
            let table = GuestAddress(MEM_SIZE as u64 - 48);
            let hdr = h.write_header(0, VIRTIO_BLK_T_IN, 0);
            h.q.write_desc_at(table, 0, hdr, 16, F_NEXT, 1);
            h.q.write_desc_at(table, 1, DATA_AT, 512, F_NEXT | F_WRITE, 2);
            h.q.write_desc_at(table, 2, STATUS_AT, 1, F_NEXT | F_WRITE, 3);
            h.q.set_desc(0, table.0, 64, F_INDIRECT, 0);
            h.q.push(0);
        }),
        // A read whose status descriptor is empty: the status used to go to the last byte
        // of the data buffer before it.
        ("zero-length status descriptor", |h| {
            let hdr = h.write_header(0, VIRTIO_BLK_T_IN, 0);
            h.q.set_desc(0, hdr, 16, F_NEXT, 1);
            h.q.set_desc(1, DATA_AT, 513, F_NEXT | F_WRITE, 2);
            h.q.set_desc(2, STATUS_AT, 0, F_WRITE, 0);
            h.q.push(0);
        }),
    ];
    for (name, breaker) in cases {
        assert_needs_reset_untouched(name, breaker);
    }
}

#[test]
fn oversized_chains_need_reset() {
    // A chain whose total length overflows 32 bits.
    assert_needs_reset_untouched("over 4 GiB", |h| {
        let hdr = h.write_header(0, VIRTIO_BLK_T_IN, 0);
        h.q.set_desc(0, hdr, 16, F_NEXT, 1);
        h.q.set_desc(1, DATA_AT, u32::MAX, F_NEXT | F_WRITE, 2);
        h.q.set_desc(2, STATUS_AT, 1, F_WRITE, 0);
        h.q.push(0);
    });
    // A self-referencing indirect table.
    assert_needs_reset_untouched("self-referencing table", |h| {
        let table = GuestAddress(0x5000);
        let hdr = h.write_header(0, VIRTIO_BLK_T_IN, 0);
        h.q.write_desc_at(table, 0, hdr, 16, F_NEXT, 0);
        h.q.set_desc(0, table.0, 16, F_INDIRECT, 0);
        h.q.push(0);
    });
}

#[test]
fn more_chains_than_the_queue_holds_need_reset() {
    let mut h = Harness::new("over0", false);
    // Reads wait in the backend, so that the chains stay with the device.
    let mut hang = FaultRule::new(IoKind::Read, libc::EIO);
    hang.errno = None;
    hang.delay = Some(block::inject::MAX_DELAY);
    h.backend.inject(hang).unwrap();
    h.init_default();
    let (head, _) = h.request(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true);
    // A queue's worth of the same chain, allowed by the index (it is one queue size ahead)...
    for _ in 1..QUEUE_SIZE {
        h.q.push(head);
    }
    h.kick();
    settle();
    assert_eq!(
        r32(&mut h.t, VIRTIO_MMIO_STATUS) & DEVICE_NEEDS_RESET,
        0,
        "a queue's worth is allowed"
    );
    // ... and one more while the device holds them all: it took them before, forever.
    h.q.push(head);
    h.kick();
    h.wait_needs_reset();
    w32(&mut h.t, VIRTIO_MMIO_STATUS, 0);
    h.backend.remove_injection(None).unwrap();
    h.init_default();
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true), (513, 0));
}

#[test]
fn reset_stops_the_thread_and_reinit_works() {
    let mut h = Harness::new("rst0", false);
    h.init_default();
    wait_thread("blk-rst0", true);
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true).1, 0);
    w32(&mut h.t, VIRTIO_MMIO_STATUS, 0);
    assert!(!h.t.is_activated());
    // The queue's thread stays, idle, for the next activation; it ends with the device.
    assert!(thread_names().iter().any(|n| n == "blk-rst0"));
    assert_eq!(r32(&mut h.t, VIRTIO_MMIO_STATUS), 0);
    // Requests while reset are not processed.
    h.request(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true);
    h.kick();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(h.q.used_idx(), 1);
    h.init_default();
    h.fill(DATA_AT, 512, 0x77);
    assert_eq!(h.run(VIRTIO_BLK_T_OUT, 5, DATA_AT, 512, false), (1, 0));
    assert!(h.file()[5 * 512..6 * 512].iter().all(|&b| b == 0x77));
    drop(h.t);
    wait_thread("blk-rst0", false);
}

#[test]
fn hostile_register_writes_while_running() {
    let mut h = Harness::new("hostile0", false);
    h.init_default();
    // Queue registers are frozen while running; bad widths ignored; config writes ignored.
    w32(&mut h.t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0xdead_0000);
    w32(&mut h.t, VIRTIO_MMIO_QUEUE_NUM, 2);
    h.t.write(BASE, u64::from(VIRTIO_MMIO_STATUS), &[0]);
    h.t.write(BASE, u64::from(VIRTIO_MMIO_CONFIG), &[0xff; 8]);
    w32(&mut h.t, VIRTIO_MMIO_QUEUE_NOTIFY, 0xffff);
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true), (513, 0));
    let mut cap = [0u8; 8];
    h.t.read(BASE, u64::from(VIRTIO_MMIO_CONFIG), &mut cap);
    assert_eq!(u64::from_le_bytes(cap), SECTORS);
}

/// A filter logging every request that reaches it: (kind, first sector, first data byte).
#[derive(Debug)]
struct Recorder {
    child: Arc<dyn BlockNode>,
    log: Mutex<Vec<(IoKind, u64, u8)>>,
}

impl Recorder {
    fn on(backend: &Backend) -> Arc<Self> {
        let r = Arc::new(Self {
            child: backend.root(),
            log: Mutex::new(Vec::new()),
        });
        backend.set_root(r.clone());
        r
    }

    fn log(&self) -> Vec<(IoKind, u64, u8)> {
        self.log.lock().unwrap().clone()
    }
}

impl BlockNode for Recorder {
    fn node_name(&self) -> &str {
        "rec0"
    }
    fn driver(&self) -> &str {
        "recorder"
    }
    fn child(&self) -> Option<Arc<dyn BlockNode>> {
        Some(self.child.clone())
    }
    fn write_vectored(&self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()> {
        let first = bufs
            .first()
            .and_then(|b| b.read_obj::<u8>(0).ok())
            .unwrap_or(0);
        self.log
            .lock()
            .unwrap()
            .push((IoKind::Write, offset / 512, first));
        self.child.write_vectored(offset, bufs)
    }
    fn read_vectored(&self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()> {
        self.log
            .lock()
            .unwrap()
            .push((IoKind::Read, offset / 512, 0));
        self.child.read_vectored(offset, bufs)
    }
    fn flush(&self) -> io::Result<()> {
        self.log.lock().unwrap().push((IoKind::Flush, 0, 0));
        self.child.flush()
    }
}

/// Counts emissions of the I/O-error signal, by action.
#[derive(Debug, Default)]
struct Emissions(Mutex<Vec<ErrorAction>>);

impl IoErrorSlot for Emissions {
    fn on_io_error(&self, e: &IoErrorEvent<'_>) {
        self.0.lock().unwrap().push(e.action);
    }
}

impl Emissions {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn wait(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "{} emissions, not {n}",
                self.count()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn stop_policy() -> Arc<DevicePolicy> {
    Arc::new(DevicePolicy {
        read: OnError::Stop,
        write: OnError::Stop,
    })
}

/// Lets the I/O thread run a little: what must not happen has had a chance to.
fn settle() {
    std::thread::sleep(Duration::from_millis(20));
}

#[test]
fn host_errors_are_reported_or_parked_for_retry() {
    let mut h = Harness::new("err0", false);
    let mut once = FaultRule::new(IoKind::Write, libc::EIO);
    once.once = true;
    h.backend.inject(once.clone()).unwrap();
    let signals = Arc::new(Emissions::default());
    h.backend.connect_io_error(signals.clone());
    h.init_default();
    // Report: IOERR to the guest, one emission.
    h.fill(DATA_AT, 512, 0x99);
    h.backend.set_error_policy(Arc::new(DevicePolicy {
        read: OnError::Report,
        write: OnError::Report,
    }));
    assert_eq!(h.run(VIRTIO_BLK_T_OUT, 1, DATA_AT, 512, false), (1, 1));
    assert_eq!(h.backend.stats().snapshot().qmp().failed_wr_operations, 1);
    assert_eq!(h.backend.io_status(), IoStatus::Ok);
    assert_eq!(*signals.0.lock().unwrap(), vec![ErrorAction::Report]);

    // The default policy (werror=enospc) reports EIO and stops on ENOSPC.
    h.backend
        .set_error_policy(Arc::new(DevicePolicy::default()));
    h.backend.inject(once.clone()).unwrap();
    assert_eq!(h.run(VIRTIO_BLK_T_OUT, 1, DATA_AT, 512, false), (1, 1));
    let mut nospc = once;
    nospc.errno = Some(libc::ENOSPC);
    h.backend.inject(nospc).unwrap();
    let (write_head, write_status) = h.request(VIRTIO_BLK_T_OUT, 2, DATA_AT, 512, false);
    h.kick();
    signals.wait(3);
    assert_eq!(h.backend.io_status(), IoStatus::NoSpace);
    settle();
    assert_eq!(h.q.used_idx(), h.used_seen);
    assert_eq!(
        h.mem.read_obj::<u8>(GuestAddress(write_status)).unwrap(),
        0xff
    );
    h.backend.resume();
    let used = h.wait_used(1);
    assert_eq!(used[0], (u32::from(write_head), 1));
    assert_eq!(h.mem.read_obj::<u8>(GuestAddress(write_status)).unwrap(), 0);
    assert!(h.file()[2 * 512..3 * 512].iter().all(|&b| b == 0x99));
    assert_eq!(h.backend.io_status(), IoStatus::Ok);
    assert_eq!(signals.count(), 3);
}

/// (a) Parked requests are retried in their original order, one at a time.
#[test]
fn parked_requests_retry_in_order() {
    let mut h = Harness::new("ord0", false);
    h.backend.set_error_policy(stop_policy());
    let signals = Arc::new(Emissions::default());
    h.backend.connect_io_error(signals.clone());
    let rule = h
        .backend
        .inject(FaultRule::new(IoKind::Write, libc::EIO))
        .unwrap();
    h.init_default();
    // Once a request completed, the I/O thread has done its start-up pass: it pops the next
    // requests on the kick, all together.
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true).1, 0);
    // Eight writes made available at once run on the pool, all fail and all park.
    let mut heads = Vec::new();
    for i in 0..8u64 {
        let at = DATA_AT + i * 0x1000;
        h.fill(at, 512, 0x40 + i as u8);
        heads.push(h.request(VIRTIO_BLK_T_OUT, 10 + i, at, 512, false).0);
    }
    h.kick();
    signals.wait(8);
    settle();
    assert_eq!(signals.count(), 8);
    assert_eq!(h.q.used_idx(), h.used_seen);
    let rec = Recorder::on(&h.backend);
    h.backend.remove_injection(Some(rule)).unwrap();
    h.backend.resume();
    let used = h.wait_used(8);
    let want: Vec<_> = (0..8u64)
        .map(|i| (IoKind::Write, 10 + i, 0x40 + i as u8))
        .collect();
    assert_eq!(rec.log(), want);
    // One at a time: they also complete in that order.
    assert_eq!(
        used.iter().map(|u| u.0).collect::<Vec<_>>(),
        heads.iter().map(|&h| u32::from(h)).collect::<Vec<_>>()
    );
    for i in 0..8usize {
        assert!(h.file()[(10 + i) * 512..(11 + i) * 512]
            .iter()
            .all(|&b| b == 0x40 + i as u8));
    }
    assert_eq!(signals.count(), 8);
}

/// (b) A flush never completes before a write made available before it that parks; (c)
/// nothing new runs while a request is parked; (d) `cont` with the fault still there parks
/// again, with one more emission, and completes nothing.
#[test]
fn flushes_and_new_requests_wait_behind_parked_writes() {
    let mut h = Harness::new("bar0", false);
    h.backend.set_error_policy(stop_policy());
    let signals = Arc::new(Emissions::default());
    h.backend.connect_io_error(signals.clone());
    let rec = Recorder::on(&h.backend);
    let mut rule = FaultRule::new(IoKind::Write, libc::EIO);
    rule.sector = Some(5);
    rule.count = Some(2);
    let rule = h.backend.inject(rule).unwrap();
    h.init_default();
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true).1, 0);
    rec.log.lock().unwrap().clear();
    let base = h.used_seen;

    // A good write, a failing write and a flush, made available together.
    h.fill(DATA_AT, 512, 0x11);
    h.fill(DATA_AT + 0x1000, 1024, 0x22);
    let ok = h.request(VIRTIO_BLK_T_OUT, 1, DATA_AT, 512, false).0;
    let bad = h
        .request(VIRTIO_BLK_T_OUT, 4, DATA_AT + 0x1000, 1024, false)
        .0;
    let flush = h.request(VIRTIO_BLK_T_FLUSH, 0, 0, 0, false).0;
    h.kick();
    signals.wait(1);
    // The good write may complete; the flush must not.
    settle();
    let done: Vec<u32> = (base..h.q.used_idx()).map(|i| h.q.used_elem(i).0).collect();
    assert!(done.iter().all(|&d| d == u32::from(ok)), "{done:?}");
    assert!(!rec.log().iter().any(|l| l.0 == IoKind::Flush));

    // (c) New requests do not start while the write is parked.
    let read = h.request(VIRTIO_BLK_T_IN, 0, DATA_AT + 0x4000, 512, true).0;
    let flush2 = h.request(VIRTIO_BLK_T_FLUSH, 0, 0, 0, false).0;
    h.kick();
    settle();
    assert!(!rec.log().iter().any(|l| l.0 != IoKind::Write));
    assert_eq!(h.backend.stats().snapshot().qmp().rd_operations, 1);

    // (d) Resume with the fault still there: the write alone runs again (the fault node above
    // the recorder fails it: one more emission) and parks again.
    let before = rec.log().len();
    h.backend.resume();
    signals.wait(2);
    settle();
    assert_eq!(signals.count(), 2);
    assert_eq!(rec.log().len(), before);
    assert!(!rec.log().iter().any(|l| l.0 != IoKind::Write));
    assert!(h.q.used_idx() <= base + 1);
    assert_eq!(h.backend.io_status(), IoStatus::Failed);

    // The fault goes: everything completes, in order behind the write.
    h.backend.remove_injection(Some(rule)).unwrap();
    h.backend.resume();
    let deadline = Instant::now() + WAIT;
    while h.q.used_idx() < base + 5 {
        assert!(Instant::now() < deadline, "not all completed");
        std::thread::sleep(Duration::from_millis(1));
    }
    let order: Vec<u32> = (base..base + 5).map(|i| h.q.used_elem(i).0).collect();
    let tail: Vec<u32> = order
        .iter()
        .copied()
        .filter(|&d| d != u32::from(ok))
        .collect();
    assert_eq!(
        tail,
        [bad, flush, read, flush2].map(u32::from).to_vec(),
        "{order:?}"
    );
    let kinds: Vec<IoKind> = rec.log().iter().map(|l| l.0).collect();
    let last_write = kinds.iter().rposition(|k| *k == IoKind::Write).unwrap();
    let first_flush = kinds.iter().position(|k| *k == IoKind::Flush).unwrap();
    assert!(last_write < first_flush, "{kinds:?}");
    for i in base..base + 5 {
        assert_eq!(
            h.mem
                .read_obj::<u8>(GuestAddress(STATUS_AT + u64::from(h.q.used_elem(i).0)))
                .unwrap(),
            0
        );
    }
    assert!(h.file()[4 * 512..6 * 512].iter().all(|&b| b == 0x22));
    assert_eq!(signals.count(), 2);
    assert_eq!(h.backend.io_status(), IoStatus::Ok);
}

/// A resume that comes before the I/O thread has seen the request stop still releases it.
#[test]
fn a_resume_racing_the_stop_is_not_lost() {
    let mut h = Harness::new("race0", false);
    h.backend.set_error_policy(stop_policy());
    /// Resumes the backend from inside the signal, before the request is parked.
    #[derive(Debug)]
    struct ResumeAtOnce(Mutex<Option<Arc<Backend>>>);
    impl IoErrorSlot for ResumeAtOnce {
        fn on_io_error(&self, _e: &IoErrorEvent<'_>) {
            if let Some(b) = self.0.lock().unwrap().take() {
                b.remove_injection(None).unwrap();
                b.resume();
            }
        }
    }
    h.backend
        .connect_io_error(Arc::new(ResumeAtOnce(Mutex::new(Some(h.backend.clone())))));
    h.backend
        .inject(FaultRule::new(IoKind::Read, libc::EIO))
        .unwrap();
    h.init_default();
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true), (513, 0));
}

/// A request an injected delay holds does not hold a device reset.
#[test]
fn reset_releases_delayed_requests() {
    let mut h = Harness::new("slow0", false);
    let mut hang = FaultRule::new(IoKind::Read, libc::EIO);
    hang.errno = None;
    hang.delay = Some(block::inject::MAX_DELAY);
    h.backend.inject(hang).unwrap();
    h.init_default();
    h.request(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true);
    h.request(VIRTIO_BLK_T_IN, 1, DATA_AT + 0x1000, 512, true);
    h.kick();
    settle();
    assert_eq!(h.q.used_idx(), 0);
    w32(&mut h.t, VIRTIO_MMIO_STATUS, 0);
    assert!(!h.t.is_activated());
    h.backend.remove_injection(None).unwrap();
    h.init_default();
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true).1, 0);
}

#[test]
fn requests_queued_before_driver_ok_are_served() {
    let image = TempFile::new().unwrap();
    std::fs::write(image.as_path(), vec![3u8; 4096]).unwrap();
    let backend = Arc::new(Backend::open(BackendConfig::new("early0", image.as_path())).unwrap());
    let mut h = Harness::on(backend, image);
    h.init_default();
    // The worker drains the ring at start: a request made available without a kick after
    // activation is found on the next kick or at the next start.
    h.request(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true);
    h.kick();
    h.wait_used(1);
    assert!(h.guest(DATA_AT, 512).iter().all(|&b| b == 3));
}

#[test]
fn buffers_spanning_memory_regions() {
    let image = TempFile::new().unwrap();
    let data: Vec<u8> = (0..(SECTORS * 512) as usize).map(pattern).collect();
    std::fs::write(image.as_path(), &data).unwrap();
    let backend = Arc::new(Backend::open(BackendConfig::new("span0", image.as_path())).unwrap());
    // Two regions meeting at 2 MiB: one descriptor covers both.
    let mem = crate::virtio::testing::shared_memory(&[
        (GuestAddress(0), 0x20_0000),
        (GuestAddress(0x20_0000), MEM_SIZE - 0x20_0000),
    ]);
    let mut h = Harness::on_mem(backend, image, mem);
    h.init_default();
    let at = 0x20_0000 - 1024;
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 4, at, 4096, true), (4097, 0));
    assert_eq!(h.guest(at, 4096), data[4 * 512..4 * 512 + 4096]);
    h.fill(at, 2048, 0x5c);
    assert_eq!(h.run(VIRTIO_BLK_T_OUT, 20, at, 2048, false), (1, 0));
    assert!(h.file()[20 * 512..24 * 512].iter().all(|&b| b == 0x5c));
}

#[test]
fn reachable_through_the_mmio_bus() {
    use crate::bus::Bus;
    use crate::virtio::mmio::MMIO_WINDOW_SIZE;
    use std::sync::Mutex;

    let h = Harness::new("bus0", false);
    let transport = Arc::new(Mutex::new(h.t));
    let mut bus = Bus::new();
    bus.insert(transport.clone(), BASE, MMIO_WINDOW_SIZE)
        .unwrap();
    let mut d = [0u8; 4];
    assert!(bus.read(BASE, &mut d));
    assert_eq!(u32::from_le_bytes(d), 0x7472_6976);
    assert!(bus.read(BASE + u64::from(VIRTIO_MMIO_DEVICE_ID), &mut d));
    assert_eq!(u32::from_le_bytes(d), 2);
    let mut cap = [0u8; 8];
    assert!(bus.read(BASE + u64::from(VIRTIO_MMIO_CONFIG), &mut cap));
    assert_eq!(u64::from_le_bytes(cap), SECTORS);
    assert!(bus.write(BASE + u64::from(VIRTIO_MMIO_STATUS), &1u32.to_le_bytes()));
    assert!(bus.read(BASE + u64::from(VIRTIO_MMIO_STATUS), &mut d));
    assert_eq!(u32::from_le_bytes(d), ACKNOWLEDGE);
    assert!(!bus.read(BASE + MMIO_WINDOW_SIZE, &mut d));
}

#[test]
fn overlong_indirect_chain_needs_reset() {
    let mut h = Harness::new("long0", false);
    h.init_default();
    let table = GuestAddress(0x10_0000);
    let n = MAX_CHAIN_DESCRIPTORS as u16 + 10;
    let hdr = h.write_header(0, VIRTIO_BLK_T_IN, 0);
    h.q.write_desc_at(table, 0, hdr, 16, F_NEXT, 1);
    for i in 1..n - 1 {
        h.q.write_desc_at(table, i, DATA_AT, 512, F_NEXT | F_WRITE, i + 1);
    }
    h.q.write_desc_at(table, n - 1, STATUS_AT, 1, F_WRITE, 0);
    h.q.set_desc(0, table.0, u32::from(n) * 16, F_INDIRECT, 0);
    h.q.push(0);
    h.kick();
    h.wait_needs_reset();
    assert_eq!(h.q.used_idx(), 0);
}

#[test]
fn reset_during_io_does_not_hang() {
    reset_during_io_does_not_hang_on(Aio::IoUring);
}

#[test]
fn reset_during_io_does_not_hang_threads() {
    reset_during_io_does_not_hang_on(Aio::Threads);
}

fn reset_during_io_does_not_hang_on(aio: Aio) {
    let mut h = Harness::with_aio("rio0", false, aio);
    for round in 0..5 {
        h.init_default();
        for i in 0..100u64 {
            h.request(
                VIRTIO_BLK_T_OUT,
                i % SECTORS,
                DATA_AT,
                4096.min(512 * (SECTORS - i % SECTORS)) as u32,
                false,
            );
        }
        h.kick();
        if round % 2 == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        w32(&mut h.t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(r32(&mut h.t, VIRTIO_MMIO_STATUS), 0);
        assert!(!h.t.is_activated());
    }
    h.init_default();
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true), (513, 0));
}

/// A filter whose reads and writes wait while it is closed, as storage that stops answering;
/// it logs (kind, first sector, first data byte) of what passes, when it passes.
#[derive(Debug)]
struct Gate {
    child: Arc<dyn BlockNode>,
    closed: Mutex<bool>,
    open: std::sync::Condvar,
    waiting: std::sync::atomic::AtomicUsize,
    log: Mutex<Vec<(IoKind, u64, u8)>>,
}

impl Gate {
    fn on(backend: &Backend) -> Arc<Self> {
        let g = Arc::new(Self {
            child: backend.root(),
            closed: Mutex::new(true),
            open: std::sync::Condvar::new(),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
        });
        backend.set_root(g.clone());
        g
    }

    fn pass(&self) {
        let mut closed = self.closed.lock().unwrap();
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        while *closed {
            closed = self.open.wait(closed).unwrap();
        }
        self.waiting
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn release(&self) {
        *self.closed.lock().unwrap() = false;
        self.open.notify_all();
    }

    fn wait_waiting(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.waiting.load(std::sync::atomic::Ordering::SeqCst) != n {
            assert!(
                Instant::now() < deadline,
                "the gate never held {n} requests"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn log(&self) -> Vec<(IoKind, u64, u8)> {
        self.log.lock().unwrap().clone()
    }
}

impl BlockNode for Gate {
    fn node_name(&self) -> &str {
        "gate0"
    }
    fn driver(&self) -> &str {
        "gate"
    }
    fn child(&self) -> Option<Arc<dyn BlockNode>> {
        Some(self.child.clone())
    }
    fn write_vectored(&self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()> {
        self.pass();
        let first = bufs
            .first()
            .and_then(|b| b.read_obj::<u8>(0).ok())
            .unwrap_or(0);
        self.log
            .lock()
            .unwrap()
            .push((IoKind::Write, offset / 512, first));
        self.child.write_vectored(offset, bufs)
    }
    fn read_vectored(&self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()> {
        self.pass();
        self.log
            .lock()
            .unwrap()
            .push((IoKind::Read, offset / 512, 0));
        self.child.read_vectored(offset, bufs)
    }
}

fn report_policy() -> Arc<DevicePolicy> {
    Arc::new(DevicePolicy {
        read: OnError::Report,
        write: OnError::Report,
    })
}

/// A yank completes a hung read at once with EIO (the policy's report), ends a drain, fences
/// new requests without reaching the storage, and drops the late result: the guest's buffer
/// never sees it. Once the abandoned read returns the disk works again.
#[test]
fn yank_fails_hung_requests_and_drops_late_results() {
    let mut h = Harness::new("yank0", false);
    h.backend.set_error_policy(report_policy());
    let signals = Arc::new(Emissions::default());
    h.backend.connect_io_error(signals.clone());
    h.init_default();
    let gate = Gate::on(&h.backend);
    h.fill(DATA_AT, 512, 0xaa);
    let (head, status) = h.request(VIRTIO_BLK_T_IN, 3, DATA_AT, 512, true);
    h.kick();
    gate.wait_waiting(1);
    assert_eq!(h.backend.in_flight(), 1);

    let drained = {
        let b = h.backend.clone();
        std::thread::spawn(move || b.drain())
    };
    settle();
    assert!(
        !drained.is_finished(),
        "a drain must wait for the hung read"
    );
    assert_eq!(h.backend.yank(), 1);
    drained.join().unwrap();
    let used = h.wait_used(1);
    assert_eq!(used[0], (u32::from(head), 1));
    assert_eq!(h.mem.read_obj::<u8>(GuestAddress(status)).unwrap(), 1);
    assert_eq!(*signals.0.lock().unwrap(), vec![ErrorAction::Report]);
    assert_eq!(h.backend.stats().snapshot().qmp().failed_rd_operations, 1);
    assert_eq!((h.backend.in_flight(), h.backend.abandoned()), (0, 1));

    // Fenced: a new write fails at once and never reaches the storage.
    h.fill(DATA_AT + 0x1000, 512, 0x5a);
    assert_eq!(
        h.run(VIRTIO_BLK_T_OUT, 9, DATA_AT + 0x1000, 512, false).1,
        1
    );
    assert_eq!(gate.log(), vec![]);
    assert_eq!(signals.count(), 2);

    // The storage answers: the late read is dropped, the guest's buffer is untouched.
    gate.release();
    let deadline = Instant::now() + WAIT;
    while h.backend.abandoned() > 0 {
        assert!(
            Instant::now() < deadline,
            "the abandoned read never returned"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    settle();
    assert!(h.guest(DATA_AT, 512).iter().all(|&b| b == 0xaa));
    assert_eq!(h.q.used_idx(), h.used_seen);
    // The fence lifted with the last abandoned syscall: reads reach the image again.
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 3, DATA_AT, 512, true), (513, 0));
    let want: Vec<u8> = (3 * 512..4 * 512).map(pattern).collect();
    assert_eq!(h.guest(DATA_AT, 512), want);
}

/// With `werror=stop`, a yanked write stops (parks); after the resume its retry waits for the
/// abandoned write over the same sectors to return, so the image ends with the retried
/// bytes and nothing lands after them.
#[test]
fn retried_yanked_write_waits_for_the_abandoned_one() {
    let mut h = Harness::new("yank1", false);
    h.backend.set_error_policy(stop_policy());
    let signals = Arc::new(Emissions::default());
    h.backend.connect_io_error(signals.clone());
    h.init_default();
    let gate = Gate::on(&h.backend);
    h.fill(DATA_AT, 1024, 0x11);
    let (head, status) = h.request(VIRTIO_BLK_T_OUT, 4, DATA_AT, 1024, false);
    h.kick();
    gate.wait_waiting(1);
    assert_eq!(h.backend.yank(), 1);
    signals.wait(1);
    assert_eq!(*signals.0.lock().unwrap(), vec![ErrorAction::Stop]);
    settle();
    assert_eq!(h.q.used_idx(), h.used_seen, "a stopped request is kept");

    // `cont`: the retry must not overtake the abandoned write, which still hangs. The guest
    // meanwhile reuses its buffer for newer data of the same sectors.
    h.fill(DATA_AT, 1024, 0x22);
    h.backend.resume();
    settle();
    assert_eq!(h.q.used_idx(), h.used_seen);
    assert_eq!(gate.waiting.load(std::sync::atomic::Ordering::SeqCst), 1);

    gate.release();
    let used = h.wait_used(1);
    assert_eq!(used[0], (u32::from(head), 1));
    assert_eq!(h.mem.read_obj::<u8>(GuestAddress(status)).unwrap(), 0);
    // The abandoned write (its bounce buffer held the old bytes) landed first, then the retry.
    assert_eq!(
        gate.log(),
        vec![(IoKind::Write, 4, 0x11), (IoKind::Write, 4, 0x22)]
    );
    assert!(h.file()[4 * 512..6 * 512].iter().all(|&b| b == 0x22));
    assert_eq!(signals.count(), 1);
    assert_eq!((h.backend.in_flight(), h.backend.abandoned()), (0, 0));
}

/// A reset does not wait for a request thread stuck in a syscall a yank abandoned.
#[test]
fn reset_leaves_abandoned_syscalls_behind() {
    let mut h = Harness::new("yank2", false);
    h.backend.set_error_policy(report_policy());
    h.init_default();
    let gate = Gate::on(&h.backend);
    h.request(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true);
    h.kick();
    gate.wait_waiting(1);
    h.backend.yank();
    h.wait_used(1);
    let started = Instant::now();
    w32(&mut h.t, VIRTIO_MMIO_STATUS, 0);
    assert!(started.elapsed() < WAIT);
    assert_eq!(h.backend.abandoned(), 1);
    gate.release();
    let deadline = Instant::now() + WAIT;
    while h.backend.abandoned() > 0 {
        assert!(
            Instant::now() < deadline,
            "the abandoned read never returned"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // The device works again after re-initialization.
    h.init_default();
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 1, DATA_AT, 512, true), (513, 0));
}

/// With io_uring no request thread serves a plain disk: the I/O thread submits and reaps;
/// the thread engine starts request threads for requests made available together.
#[test]
fn engines_differ_in_request_threads() {
    for (aio, id) in [(Aio::IoUring, "ring0"), (Aio::Threads, "thr0")] {
        let mut h = Harness::with_aio(id, false, aio);
        h.init_default();
        for i in 0..16u64 {
            h.fill(DATA_AT + i * 512, 512, 0x30 + i as u8);
            h.request(VIRTIO_BLK_T_OUT, i, DATA_AT + i * 512, 512, false);
        }
        h.kick();
        h.wait_used(16);
        let file = h.file();
        for i in 0..16usize {
            assert!(file[i * 512..(i + 1) * 512]
                .iter()
                .all(|&b| b == 0x30 + i as u8));
        }
        let workers = thread_names()
            .iter()
            .filter(|n| n.starts_with(&format!("blk-{id}-r")))
            .count();
        assert_eq!(
            workers > 0,
            aio == Aio::Threads,
            "{aio}: {workers} request threads"
        );
    }
}

/// With `num-queues` above 1 the device offers MQ and reports the count; every queue is
/// served by its own I/O thread, on the one backend: a write made on queue 1 reads back on
/// queue 0, and requests made on all queues at once all complete.
#[test]
fn multi_queue_serves_each_queue_on_its_own_thread() {
    multi_queue_on("mq0", 3);
}

/// As above with two I/O threads for three queues: queues 0 and 2 share thread `blk-mqs`,
/// queue 1 runs on `blk-mqs-q1`, and there is no third thread.
#[test]
fn multi_queue_shares_io_threads_among_queues() {
    multi_queue_on("mqs", 2);
}

fn multi_queue_on(id: &str, io_threads: u16) {
    const QUEUES: u16 = 3;
    let image = TempFile::new().unwrap();
    std::fs::write(image.as_path(), vec![0u8; (SECTORS * 512) as usize]).unwrap();
    let backend = Arc::new(Backend::open(BackendConfig::new(id, image.as_path())).unwrap());
    let mem = guest_memory(MEM_SIZE);
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let dev = VirtioBlock::build(backend.clone(), QUEUES, io_threads, ThreadHooks::default());
    assert_eq!(dev.io_threads(), io_threads);
    assert_ne!(dev.device_features() & (1 << VIRTIO_BLK_F_MQ), 0);
    assert_eq!(dev.config_space()[34..36], QUEUES.to_le_bytes());
    assert_eq!(
        VirtioBlock::new(backend.clone()).device_features() & (1 << VIRTIO_BLK_F_MQ),
        0
    );
    let mut t = MmioTransport::new(Box::new(dev), mem.clone(), irq, BASE, 6, 0).unwrap();
    w32(&mut t, VIRTIO_MMIO_STATUS, 0);
    w32(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
    for sel in 0..2 {
        w32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel);
        let f = r32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES);
        w32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
        w32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, f);
    }
    w32(
        &mut t,
        VIRTIO_MMIO_STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK,
    );
    let mut queues: Vec<DriverQueue> = Vec::new();
    for q in 0..QUEUES {
        let at = QUEUE_AT + u64::from(q) * 0x4000;
        let dq = DriverQueue::new(&mem, at, QUEUE_SIZE);
        w32(&mut t, VIRTIO_MMIO_QUEUE_SEL, u32::from(q));
        w32(&mut t, VIRTIO_MMIO_QUEUE_NUM, u32::from(QUEUE_SIZE));
        w32(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, dq.desc.0 as u32);
        w32(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, dq.avail.0 as u32);
        w32(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, dq.used.0 as u32);
        w32(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        queues.push(dq);
    }
    w32(
        &mut t,
        VIRTIO_MMIO_STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    wait_thread(&format!("blk-{id}"), true);
    for q in 1..QUEUES {
        let name = format!("blk-{id}-q{q}");
        if q < io_threads {
            wait_thread(&name, true);
        } else {
            assert!(!thread_names().contains(&name), "{name} exists");
        }
    }

    // One request on queue `q`, slot `slot`: header, 512 data bytes at `data`, status.
    let submit =
        |queues: &mut Vec<DriverQueue>, q: usize, slot: u16, typ: u32, sector: u64, data: u64| {
            let hdr = HDR_AT + (q as u64 * 64 + u64::from(slot)) * 16;
            mem.write_obj(typ, GuestAddress(hdr)).unwrap();
            mem.write_obj(0u32, GuestAddress(hdr + 4)).unwrap();
            mem.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
            let status = STATUS_AT + q as u64 * 64 + u64::from(slot);
            let head = slot * 3;
            let dq = &mut queues[q];
            dq.set_desc(head, hdr, 16, F_NEXT, head + 1);
            let wf = if typ == VIRTIO_BLK_T_IN { F_WRITE } else { 0 };
            dq.set_desc(head + 1, data, 512, F_NEXT | wf, head + 2);
            dq.set_desc(head + 2, status, 1, F_WRITE, 0);
            dq.push(head);
            status
        };
    let wait = |queues: &Vec<DriverQueue>, q: usize, n: u16| {
        let deadline = Instant::now() + WAIT;
        while queues[q].used_idx() < n {
            assert!(Instant::now() < deadline, "queue {q} did not complete");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    mem.write_slice(&[0x6b; 512], GuestAddress(DATA_AT))
        .unwrap();
    let st = submit(&mut queues, 1, 0, VIRTIO_BLK_T_OUT, 5, DATA_AT);
    t.queue_events()[1].write(1).unwrap();
    wait(&queues, 1, 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(st)).unwrap(), S_OK);
    let st = submit(&mut queues, 0, 0, VIRTIO_BLK_T_IN, 5, DATA_AT + 0x1000);
    t.queue_events()[0].write(1).unwrap();
    wait(&queues, 0, 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(st)).unwrap(), S_OK);
    let mut back = [0u8; 512];
    mem.read_slice(&mut back, GuestAddress(DATA_AT + 0x1000))
        .unwrap();
    assert_eq!(back, [0x6b; 512]);
    // All queues at once: each writes its own sectors.
    for q in 0..QUEUES as usize {
        for slot in 1..9u16 {
            let data = DATA_AT + 0x10000 + (q as u64 * 8 + u64::from(slot)) * 512;
            mem.write_slice(&[(q * 16) as u8 + slot as u8; 512], GuestAddress(data))
                .unwrap();
            submit(
                &mut queues,
                q,
                slot,
                VIRTIO_BLK_T_OUT,
                20 + (q as u64) * 8 + u64::from(slot),
                data,
            );
        }
    }
    for q in 0..QUEUES as usize {
        t.queue_events()[q].write(1).unwrap();
    }
    let file = |sector: u64| std::fs::read(image.as_path()).unwrap()[sector as usize * 512];
    for q in 0..QUEUES as usize {
        wait(&queues, q, if q < 2 { 9 } else { 8 });
        for slot in 1..9u16 {
            assert_eq!(
                file(20 + (q as u64) * 8 + u64::from(slot)),
                (q * 16) as u8 + slot as u8
            );
        }
    }
    // Each queue's running state is its own: queue q has consumed what its driver made
    // available.
    for (q, dq) in queues.iter().enumerate() {
        let state = t.device().running_queue_state(q).unwrap();
        assert_eq!(state.next_avail, dq.used_idx(), "queue {q}");
    }
    // Reset stops every queue's data path; dropping the device ends the threads.
    w32(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert!(!t.is_activated());
    drop(t);
    let prefix = format!("blk-{id}");
    wait_threads(&format!("{prefix}*"), |n| n.starts_with(&prefix), false);
}

/// Limits of `avg` on bucket `b` (and `iops_size`).
fn limits(b: Bucket, avg: u64, iops_size: u64) -> ThrottleConfig {
    let mut c = ThrottleConfig::default();
    c.limit_mut(b).avg = avg;
    c.iops_size = iops_size;
    c
}

/// Throttled requests all complete, with the right data, and not before the limits allow.
#[test]
fn throttled_requests_complete_after_the_limit_s_delay_on_io_uring() {
    throttled_requests_complete_after_the_limit_s_delay_on(Aio::IoUring, "tlu");
}

/// As above, with request threads.
#[test]
fn throttled_requests_complete_after_the_limit_s_delay_on_threads() {
    throttled_requests_complete_after_the_limit_s_delay_on(Aio::Threads, "tlt");
}

fn throttled_requests_complete_after_the_limit_s_delay_on(aio: Aio, id: &str) {
    let groups = ThrottleGroups::new();
    let mut h = Harness::with_aio(id, false, aio);
    // 20 IOPS: the bucket holds 2 operations, so 8 writes take at least (8 - 3) / 20 s.
    h.backend
        .throttle()
        .set_limits(&groups, limits(Bucket::IopsTotal, 20, 0), None, id)
        .unwrap();
    h.init_default();
    let started = Instant::now();
    let mut statuses = Vec::new();
    for i in 0..8u64 {
        h.fill(DATA_AT + i * 512, 512, 0x40 + i as u8);
        statuses.push(
            h.request(VIRTIO_BLK_T_OUT, i, DATA_AT + i * 512, 512, false)
                .1,
        );
    }
    h.kick();
    assert_eq!(h.wait_used(8).len(), 8);
    assert!(started.elapsed() >= Duration::from_millis(200));
    for s in statuses {
        assert_eq!(h.mem.read_obj::<u8>(GuestAddress(s)).unwrap(), S_OK);
    }
    let file = h.file();
    for i in 0..8usize {
        assert!(file[i * 512..(i + 1) * 512]
            .iter()
            .all(|&b| b == 0x40 + i as u8));
    }

    // 64 KiB/s of reads: four 8 KiB reads need at least (32 - 8 - 6.4) / 64 s.
    h.backend
        .throttle()
        .set_limits(&groups, limits(Bucket::BpsRead, 65536, 0), None, id)
        .unwrap();
    h.fill(DATA_AT, 32768, 0);
    let started = Instant::now();
    for i in 0..4u64 {
        h.request(VIRTIO_BLK_T_IN, 16 * i, DATA_AT + i * 8192, 8192, true);
    }
    h.kick();
    let used = h.wait_used(4);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(used.iter().all(|&(_, len)| len == 8193));
    assert_eq!(h.guest(DATA_AT, 32768), h.file()[..32768]);
    let q = h.backend.stats().snapshot().qmp();
    assert_eq!((q.wr_operations, q.rd_operations), (8, 4));
    assert_eq!((q.failed_rd_operations, q.failed_wr_operations), (0, 0));
}

/// A disk waiting on its limits does not hold another disk; new limits start it at once.
#[test]
fn a_throttled_disk_holds_no_other_disk_and_new_limits_release_it() {
    let groups = ThrottleGroups::new();
    let mut a = Harness::new("tla", false);
    let mut b = Harness::new("tlb", false);
    // 1 IOPS with 512-byte operations: after a 64 KiB read (128 operations) the next request
    // waits about two minutes.
    a.backend
        .throttle()
        .set_limits(&groups, limits(Bucket::IopsTotal, 1, 512), None, "tla")
        .unwrap();
    a.init_default();
    b.init_default();
    assert_eq!(
        a.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 65536, true),
        (65537, S_OK)
    );
    let (head, status) = a.request(VIRTIO_BLK_T_IN, 1, DATA_AT, 512, true);
    a.kick();
    // The other disk (no limits) is served while a's read waits.
    assert_eq!(b.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 4096, true), (4097, S_OK));
    assert_eq!(a.q.used_idx(), a.used_seen, "a's read waits for its limit");
    // Removing the limits starts the waiting read at once (its wait was two minutes).
    a.backend
        .throttle()
        .set_limits(&groups, ThrottleConfig::default(), None, "tla")
        .unwrap();
    assert_eq!(a.wait_used(1)[0], (u32::from(head), 513));
    assert_eq!(a.mem.read_obj::<u8>(GuestAddress(status)).unwrap(), S_OK);
    assert_eq!(a.guest(DATA_AT, 512), a.file()[512..1024]);
}

/// Disks of one group share its buckets; a disk reset while it holds the group's turn passes
/// it on, so the others go on.
#[test]
fn a_group_shares_limits_and_a_reset_passes_its_turn_on() {
    let groups = ThrottleGroups::new();
    let mut a = Harness::new("tlga", false);
    let mut b = Harness::new("tlgb", false);
    let slow = limits(Bucket::IopsTotal, 1, 512);
    for h in [&a, &b] {
        let name = h.backend.id().to_owned();
        h.backend
            .throttle()
            .set_limits(&groups, slow, Some("g"), &name)
            .unwrap();
    }
    assert_eq!(groups.names(), ["g"]);
    a.init_default();
    b.init_default();
    // a fills the shared bucket; then a's next read waits (holding the group's timer) and
    // b's read waits behind it.
    assert_eq!(
        a.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 65536, true),
        (65537, S_OK)
    );
    a.request(VIRTIO_BLK_T_IN, 1, DATA_AT, 512, true);
    a.kick();
    let (head, status) = b.request(VIRTIO_BLK_T_IN, 2, DATA_AT, 512, true);
    b.kick();
    settle();
    assert_eq!(b.q.used_idx(), b.used_seen, "b shares a's exhausted bucket");
    // a's device is reset (its data path ends before the reset returns): its waiting read
    // is dropped and its turn passes to b.
    w32(&mut a.t, VIRTIO_MMIO_STATUS, 0);
    // New limits for the group (set through a) start the member holding the turn at once.
    a.backend
        .throttle()
        .set_limits(&groups, limits(Bucket::IopsTotal, 1000, 0), None, "tlga")
        .unwrap();
    assert_eq!(b.wait_used(1)[0], (u32::from(head), 513));
    assert_eq!(b.mem.read_obj::<u8>(GuestAddress(status)).unwrap(), S_OK);
    assert_eq!(b.backend.throttle().limits().unwrap().group, "g");
}

/// With several queues, each I/O thread waits for its own turn: all of them complete.
#[test]
fn throttled_queues_of_one_disk_all_complete() {
    const QUEUES: u16 = 2;
    const PER_QUEUE: u16 = 6;
    let image = TempFile::new().unwrap();
    std::fs::write(image.as_path(), vec![0x5au8; (SECTORS * 512) as usize]).unwrap();
    let backend = Arc::new(Backend::open(BackendConfig::new("tlmq", image.as_path())).unwrap());
    let groups = ThrottleGroups::new();
    // 20 IOPS: 12 reads need at least (12 - 3) / 20 s.
    backend
        .throttle()
        .set_limits(&groups, limits(Bucket::IopsTotal, 20, 0), None, "tlmq")
        .unwrap();
    let mem = guest_memory(MEM_SIZE);
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let dev = VirtioBlock::with_queues(backend.clone(), QUEUES);
    let mut t = MmioTransport::new(Box::new(dev), mem.clone(), irq, BASE, 6, 0).unwrap();
    w32(&mut t, VIRTIO_MMIO_STATUS, 0);
    w32(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
    for sel in 0..2 {
        w32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel);
        let f = r32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES);
        w32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
        w32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, f);
    }
    w32(
        &mut t,
        VIRTIO_MMIO_STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK,
    );
    let mut queues = Vec::new();
    for q in 0..QUEUES {
        let dq = DriverQueue::new(&mem, QUEUE_AT + u64::from(q) * 0x4000, QUEUE_SIZE);
        w32(&mut t, VIRTIO_MMIO_QUEUE_SEL, u32::from(q));
        w32(&mut t, VIRTIO_MMIO_QUEUE_NUM, u32::from(QUEUE_SIZE));
        w32(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, dq.desc.0 as u32);
        w32(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, dq.avail.0 as u32);
        w32(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, dq.used.0 as u32);
        w32(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        queues.push(dq);
    }
    let status = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
    w32(&mut t, VIRTIO_MMIO_STATUS, status);
    let started = Instant::now();
    let mut statuses = Vec::new();
    for (q, dq) in queues.iter_mut().enumerate() {
        for slot in 0..PER_QUEUE {
            let n = q as u64 * 64 + u64::from(slot);
            let hdr = HDR_AT + n * 16;
            mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(hdr)).unwrap();
            mem.write_obj(0u32, GuestAddress(hdr + 4)).unwrap();
            mem.write_obj(n, GuestAddress(hdr + 8)).unwrap();
            let st = STATUS_AT + n;
            mem.write_obj(0xffu8, GuestAddress(st)).unwrap();
            let head = slot * 3;
            dq.set_desc(head, hdr, 16, F_NEXT, head + 1);
            dq.set_desc(head + 1, DATA_AT + n * 512, 512, F_NEXT | F_WRITE, head + 2);
            dq.set_desc(head + 2, st, 1, F_WRITE, 0);
            dq.push(head);
            statuses.push(st);
        }
    }
    for q in 0..QUEUES as usize {
        t.queue_events()[q].write(1).unwrap();
    }
    let deadline = Instant::now() + WAIT;
    while queues.iter().any(|dq| dq.used_idx() < PER_QUEUE) {
        assert!(
            Instant::now() < deadline,
            "a throttled queue did not complete"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(started.elapsed() >= Duration::from_millis(350));
    for st in statuses {
        assert_eq!(mem.read_obj::<u8>(GuestAddress(st)).unwrap(), S_OK);
    }
    assert_eq!(backend.stats().snapshot().qmp().rd_operations, 12);
    w32(&mut t, VIRTIO_MMIO_STATUS, 0);
}

mod migration;

/// Reads into whole pages go straight to guest memory, through the ring's alias of guest
/// RAM: pages across two regions, a 1 MiB read, one running past the end of an image that
/// shrank (the rest reads as zeroes); the bytes are the image's and the pages are marked
/// dirty for migration. A read into part of a page bounces and lands the same.
#[test]
fn whole_page_reads_land_in_guest_memory() {
    let image = TempFile::new().unwrap();
    let len = 2 << 20;
    let data: Vec<u8> = (0..len).map(pattern).collect();
    std::fs::write(image.as_path(), &data).unwrap();
    let backend = Arc::new(
        Backend::open(BackendConfig {
            aio: Aio::IoUring,
            ..BackendConfig::new("direct0", image.as_path())
        })
        .unwrap(),
    );
    let mem = crate::virtio::testing::shared_memory(&[
        (GuestAddress(0), 0x20_0000),
        (GuestAddress(0x20_0000), MEM_SIZE - 0x20_0000),
    ]);
    let mut h = Harness::on_mem(backend, image, mem);
    h.init_default();
    let clean = |h: &Harness| {
        for r in h.mem.iter() {
            let m: &vm_memory::MmapRegion<_> = r;
            m.bitmap().reset();
        }
    };
    let dirty = |h: &Harness, at: u64| {
        let r = h.mem.find_region(GuestAddress(at)).unwrap();
        let m: &vm_memory::MmapRegion<_> = r;
        m.bitmap()
            .dirty_at((at - r.start_addr().raw_value()) as usize)
    };

    let at = 0x20_0000 - 0x1000;
    h.fill(at, 0x2000, 0xee);
    clean(&h);
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 8, at, 0x2000, true), (0x2001, 0));
    assert_eq!(h.guest(at, 0x2000), data[8 * 512..8 * 512 + 0x2000]);
    assert!(
        dirty(&h, at) && dirty(&h, at + 0x1000),
        "read pages not marked dirty"
    );

    let big = 0x10_0000;
    h.fill(0x10_0000, big, 0xee);
    assert_eq!(
        h.run(VIRTIO_BLK_T_IN, 2048, 0x10_0000, big as u32, true),
        (big as u32 + 1, 0)
    );
    assert_eq!(h.guest(0x10_0000, big), data[1 << 20..(1 << 20) + big]);

    // Half a page: bounced.
    h.fill(DATA_AT + 0x800, 0x800, 0xee);
    assert_eq!(
        h.run(VIRTIO_BLK_T_IN, 4, DATA_AT + 0x800, 0x800, true),
        (0x801, 0)
    );
    assert_eq!(
        h.guest(DATA_AT + 0x800, 0x800),
        data[4 * 512..4 * 512 + 0x800]
    );

    // The image shrinks to 4 KiB into a two-page read.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(h.image.as_path())
        .unwrap();
    f.set_len(0x1000).unwrap();
    h.fill(DATA_AT, 0x2000, 0xee);
    assert_eq!(
        h.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 0x2000, true),
        (0x2001, 0)
    );
    let got = h.guest(DATA_AT, 0x2000);
    assert_eq!(got[..0x1000], data[..0x1000]);
    assert!(
        got[0x1000..].iter().all(|&b| b == 0),
        "past the end is not zeroes"
    );
}
