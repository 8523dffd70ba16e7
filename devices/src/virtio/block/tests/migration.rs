// SPDX-License-Identifier: Apache-2.0
//! virtio-blk across a migration: quiesce, save, restore into a new device on the same
//! backend and guest memory, and the driver goes on.

use super::*;
use crate::virtio::MmioState;

/// The virtio-blk device behind a transport.
fn block(t: &MmioTransport) -> &VirtioBlock {
    t.device().as_any().downcast_ref().unwrap()
}

fn block_mut(t: &mut MmioTransport) -> &mut VirtioBlock {
    t.device_mut().as_any_mut().downcast_mut().unwrap()
}

/// A destination: a new device and transport on `h`'s backend and guest memory, the driver's
/// rings as the source left them.
fn destination(h: Harness) -> Harness {
    let Harness {
        t,
        mem,
        q,
        image,
        backend,
        next_desc,
        used_seen,
        ..
    } = h;
    // The source goes away first (its I/O thread ends), as the source process would.
    drop(t);
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
    Harness {
        t,
        mem,
        irq,
        q,
        image,
        backend,
        next_desc,
        used_seen,
    }
}

#[test]
fn quiesce_save_restore_and_the_driver_goes_on() {
    let mut h = Harness::new("mig0", false);
    h.init_default();
    for i in 0..3u64 {
        h.fill(DATA_AT, 512, i as u8);
        assert_eq!(h.run(VIRTIO_BLK_T_OUT, i, DATA_AT, 512, false).1, S_OK);
    }
    // A write held in flight by storage that does not answer: the quiesce waits for it.
    let gate = Gate::on(&h.backend);
    h.fill(DATA_AT, 512, 0x77);
    let (head, status) = h.request(VIRTIO_BLK_T_OUT, 10, DATA_AT, 512, false);
    h.kick();
    gate.wait_waiting(1);
    let e = block(&h.t).quiesce(Duration::from_millis(50)).unwrap_err();
    assert!(
        matches!(e, QuiesceError::Timeout { outstanding: 1, .. }),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "disk mig0 still has 1 requests in flight after 50 ms"
    );
    // The device runs on after a refused quiesce.
    gate.release();
    assert_eq!(h.wait_used(1)[0].0, u32::from(head));
    assert_eq!(h.mem.read_obj::<u8>(GuestAddress(status)).unwrap(), S_OK);
    // A request the driver made available just before its vCPU stopped, not yet kicked: the
    // quiesce serves it too.
    h.fill(DATA_AT + 0x1000, 512, 0);
    let (head, _) = h.request(VIRTIO_BLK_T_IN, 10, DATA_AT + 0x1000, 512, true);
    block(&h.t).quiesce(WAIT).unwrap();
    assert_eq!(
        h.q.used_idx(),
        5,
        "the quiesce returned before the used ring was complete"
    );
    assert_eq!(h.wait_used(1)[0], (u32::from(head), 513));
    assert_eq!(h.guest(DATA_AT + 0x1000, 512), vec![0x77; 512]);

    // The saved indices are the running queue's (the transport's copy, of DRIVER_OK time,
    // says 0).
    let state = h.t.save_state();
    assert_eq!(
        (state.queues[0].next_avail, state.queues[0].next_used),
        (5, 5)
    );
    assert!(state.activated && state.queues[0].event_idx_enabled);
    let disk = block(&h.t).save_state();
    assert_eq!(disk.capacity, SECTORS);
    let json = serde_json::to_string(&(&state, &disk)).unwrap();
    let (state, disk): (MmioState, BlockState) = serde_json::from_str(&json).unwrap();

    let mut g = destination(h);
    block_mut(&mut g.t).restore_state(&disk).unwrap();
    g.t.restore_state(&state).unwrap();
    assert!(g.t.is_activated());
    assert_eq!(g.t.save_state(), state);
    // The driver goes on: its next request completes in the next used slot.
    h = g;
    let (head, status) = h.request(VIRTIO_BLK_T_IN, 1, DATA_AT + 0x2000, 512, true);
    h.kick();
    assert_eq!(h.wait_used(1)[0], (u32::from(head), 513));
    assert_eq!(h.q.used_idx(), 6);
    assert_eq!(h.mem.read_obj::<u8>(GuestAddress(status)).unwrap(), S_OK);
    assert_eq!(h.guest(DATA_AT + 0x2000, 512), vec![1; 512]);
    assert!(h.irq.read().unwrap() >= 1);
}

#[test]
fn requests_available_at_the_save_are_served_by_the_destination() {
    let mut h = Harness::new("mig4", false);
    h.init_default();
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 512, true).1, S_OK);
    block(&h.t).quiesce(WAIT).unwrap();
    let state = h.t.save_state();
    let disk = block(&h.t).save_state();
    let mut h = destination(h);
    // Made available after the source stopped serving (the last guest instructions before
    // the vCPUs parked): the destination's I/O thread serves it as it starts.
    let (head, _) = h.request(VIRTIO_BLK_T_IN, 3, DATA_AT + 0x1000, 512, true);
    block_mut(&mut h.t).restore_state(&disk).unwrap();
    h.t.restore_state(&state).unwrap();
    assert_eq!(h.wait_used(1)[0], (u32::from(head), 513));
    assert_eq!(h.guest(DATA_AT + 0x1000, 512), h.file()[3 * 512..4 * 512]);
}

#[test]
fn quiesce_refuses_requests_stopped_by_an_error() {
    let mut h = Harness::new("mig1", false);
    h.backend.set_error_policy(stop_policy());
    let signals = Arc::new(Emissions::default());
    h.backend.connect_io_error(signals.clone());
    let rule = h
        .backend
        .inject(FaultRule::new(IoKind::Write, libc::EIO))
        .unwrap();
    h.init_default();
    let (head, _) = h.request(VIRTIO_BLK_T_OUT, 1, DATA_AT, 512, false);
    h.kick();
    signals.wait(1);
    let e = block(&h.t).quiesce(WAIT).unwrap_err();
    assert!(matches!(e, QuiesceError::Stopped(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "disk mig1 has requests stopped by an I/O error: resume or fix them first"
    );
    // Once resumed the request completes, and a quiesce succeeds.
    h.backend.remove_injection(Some(rule)).unwrap();
    h.backend.resume();
    assert_eq!(h.wait_used(1)[0], (u32::from(head), 1));
    block(&h.t).quiesce(WAIT).unwrap();
}

#[test]
fn quiesce_starts_throttled_requests_without_their_limits() {
    let groups = ThrottleGroups::new();
    let mut h = Harness::new("mig2", false);
    // 1 IOPS of 512-byte operations: after a 64 KiB read the next request waits two minutes.
    h.backend
        .throttle()
        .set_limits(&groups, limits(Bucket::IopsTotal, 1, 512), None, "mig2")
        .unwrap();
    h.init_default();
    assert_eq!(
        h.run(VIRTIO_BLK_T_IN, 0, DATA_AT, 65536, true),
        (65537, S_OK)
    );
    let (head, _) = h.request(VIRTIO_BLK_T_IN, 1, DATA_AT, 512, true);
    h.kick();
    settle();
    assert_eq!(h.q.used_idx(), h.used_seen, "the read waits for its limit");
    let started = Instant::now();
    block(&h.t).quiesce(WAIT).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(h.wait_used(1)[0], (u32::from(head), 513));
    // Afterwards the limits hold again.
    h.request(VIRTIO_BLK_T_IN, 2, DATA_AT, 512, true);
    h.kick();
    settle();
    assert_eq!(
        h.q.used_idx(),
        h.used_seen,
        "the limits were lifted for good"
    );
}

#[test]
fn a_different_disk_refuses_the_state() {
    let h = Harness::new("mig3", false);
    let saved = VirtioBlock::new(h.backend.clone()).save_state();
    let open = |sectors: u64, read_only: bool| {
        let image = TempFile::new().unwrap();
        std::fs::write(image.as_path(), vec![0u8; (sectors * 512) as usize]).unwrap();
        let backend = Backend::open(BackendConfig {
            read_only,
            ..BackendConfig::new("mig3", image.as_path())
        })
        .unwrap();
        (Arc::new(backend), image)
    };
    let (bigger, _i1) = open(2 * SECTORS, false);
    let e = VirtioBlock::new(bigger).restore_state(&saved).unwrap_err();
    assert_eq!(
        e.to_string(),
        "disk mig3: size differs (source 128 sectors, here 256 sectors)"
    );
    let (same, _i2) = open(SECTORS, false);
    let e = VirtioBlock::with_queues(same.clone(), 2)
        .restore_state(&saved)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "disk mig3: num-queues differs (source 1, here 2)"
    );
    let (ro, _i3) = open(SECTORS, true);
    let e = VirtioBlock::new(ro).restore_state(&saved).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("disk mig3: offered feature set differs (source 0x"),
        "{e}"
    );
    VirtioBlock::new(same).restore_state(&saved).unwrap();
    // The transport of a two-queue device refuses a one-queue device's state.
    let mut t = MmioTransport::new(
        Box::new(VirtioBlock::with_queues(h.backend.clone(), 2)),
        h.mem.clone(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
        BASE,
        6,
        0,
    )
    .unwrap();
    let e = t.restore_state(&h.t.save_state()).unwrap_err();
    assert!(e.to_string().contains("differs"), "{e}");
}

#[test]
fn every_queue_of_a_multi_queue_disk_is_quiesced_and_restored() {
    let image = TempFile::new().unwrap();
    std::fs::write(image.as_path(), vec![0u8; (SECTORS * 512) as usize]).unwrap();
    let backend = Arc::new(Backend::open(BackendConfig::new("migmq", image.as_path())).unwrap());
    let mem = guest_memory(MEM_SIZE);
    let transport = |mem: &GuestMemoryMmap| {
        MmioTransport::new(
            Box::new(VirtioBlock::with_queues(backend.clone(), 2)),
            mem.clone(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
            BASE,
            6,
            0,
        )
        .unwrap()
    };
    let mut t = transport(&mem);
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
    for q in 0..2u32 {
        let dq = DriverQueue::new(&mem, QUEUE_AT + u64::from(q) * 0x4000, QUEUE_SIZE);
        w32(&mut t, VIRTIO_MMIO_QUEUE_SEL, q);
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
    // A read on queue `q` in slot `slot`; made available, not kicked.
    let submit = |queues: &mut Vec<DriverQueue>, q: usize, slot: u16| {
        let hdr = HDR_AT + (q as u64 * 64 + u64::from(slot)) * 16;
        mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(hdr)).unwrap();
        mem.write_obj(0u32, GuestAddress(hdr + 4)).unwrap();
        mem.write_obj(u64::from(slot), GuestAddress(hdr + 8))
            .unwrap();
        let status = STATUS_AT + q as u64 * 64 + u64::from(slot);
        let head = slot * 3;
        let data = DATA_AT + (q as u64 * 64 + u64::from(slot)) * 512;
        let dq = &mut queues[q];
        dq.set_desc(head, hdr, 16, F_NEXT, head + 1);
        dq.set_desc(head + 1, data, 512, F_NEXT | F_WRITE, head + 2);
        dq.set_desc(head + 2, status, 1, F_WRITE, 0);
        dq.push(head);
    };
    for slot in 0..3 {
        submit(&mut queues, 0, slot);
    }
    submit(&mut queues, 1, 0);
    block(&t).quiesce(WAIT).unwrap();
    assert_eq!((queues[0].used_idx(), queues[1].used_idx()), (3, 1));
    let state = t.save_state();
    let saved: Vec<_> = state
        .queues
        .iter()
        .map(|q| (q.next_avail, q.next_used))
        .collect();
    assert_eq!(saved, vec![(3, 3), (1, 1)]);
    let disk = block(&t).save_state();
    assert_eq!(disk.num_queues, 2);
    drop(t);

    let mut t = transport(&mem);
    block_mut(&mut t).restore_state(&disk).unwrap();
    t.restore_state(&state).unwrap();
    submit(&mut queues, 1, 1);
    t.queue_events()[1].write(1).unwrap();
    let deadline = Instant::now() + WAIT;
    while queues[1].used_idx() < 2 {
        assert!(Instant::now() < deadline, "queue 1 did not go on");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(queues[1].used_elem(1), (3, 513));
    assert_eq!(queues[0].used_idx(), 3);
}
