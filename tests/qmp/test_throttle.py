# SPDX-License-Identifier: Apache-2.0
"""I/O throttling as QEMU 7.2 does it: limits set with `--disk throttling.*` or
`block_set_io_throttle` (with QEMU's argument names, checks and errors, and libvirt's `id` =
the qdev path) read back in `query-block`; throttle groups share limits; a throttled guest's
I/O is delayed, never failed. Also blockdev-add's `locking` option."""

import time

from conftest import RawQmp, wait_until

SECTORS = 8  # the guest's io-loop writes, flushes, reads back and verifies these sectors
RATES = {"bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0}


def image(tmp_path, name="disk.raw", size=1 << 20):
    p = tmp_path / name
    with open(p, "wb") as f:
        f.truncate(size)
    return p


def limits(c, i=0):
    """The throttling members of disk i's `inserted`."""
    ins = c.cmd("query-block")["return"][i]["inserted"]
    return {k: v for k, v in ins.items() if k.startswith(("bps", "iops")) or k == "group"}


def throttle(c, **args):
    return c.cmd("block_set_io_throttle", {**RATES, **args})


def ops(c):
    s = c.cmd("query-blockstats")["return"][0]["stats"]
    return s["rd_operations"] + s["wr_operations"]


def test_limits_round_trip_with_qemus_checks_and_errors(vmm_factory, tmp_path):
    img = image(tmp_path)
    vm = vmm_factory(extra=["--disk", f"path={img},id=vblk0"], paused=True)
    c = RawQmp(vm.sock).negotiate()
    qdev = c.cmd("query-block")["return"][0]["qdev"]
    assert qdev == "/machine/peripheral/vblk0/virtio-backend"
    assert limits(c) == RATES

    # The target: exactly one of device (the drive) and id (the device id or QOM path).
    for args, err in [
        ({}, ("GenericError", "Need exactly one of 'device' and 'id'")),
        ({"device": "vblk0", "id": "vblk0"},
         ("GenericError", "Need exactly one of 'device' and 'id'")),
        ({"device": "nope"}, ("DeviceNotFound", "Device 'nope' not found")),
        ({"id": "nope"}, ("DeviceNotFound", "Device 'nope' not found")),
    ]:
        r = throttle(c, **args)
        assert r.get("error") == {"class": err[0], "desc": err[1]}, (args, r)

    # QEMU 7.2's checks, in its order and words (negative values are out of range).
    rng = "bps/iops/max values must be within [0, 1000000000000000]"
    for args, desc in [
        ({"bps": -1}, rng),
        ({"bps": 10**15 + 1}, rng),
        ({"iops_rd": 1, "iops_rd_max": -1}, rng),
        ({"bps": 100, "bps_rd": 10},
         "bps/iops/max total values and read/write values cannot be used at the same time"),
        ({"bps_max": 100}, "bps_max/iops_max require corresponding bps/iops values"),
        ({"bps": 100, "bps_max": 10}, "bps_max/iops_max cannot be lower than bps/iops"),
        ({"bps": 100, "bps_max_length": 2}, "burst length set without burst rate"),
        ({"bps": 100, "bps_max": 200, "bps_max_length": 0}, "the burst length cannot be 0"),
        ({"bps": 100, "bps_max": 200, "bps_max_length": -1},
         "burst length too high for this burst rate"),
        ({"bps": 100, "iops_size": 4096}, "iops size requires an iops value to be set"),
    ]:
        r = throttle(c, device="vblk0", **args)
        assert r.get("error") == {"class": "GenericError", "desc": desc}, (args, r)
    # Refused limits changed nothing.
    assert limits(c) == RATES
    # A required rate left out is the schema's error.
    r = c.cmd("block_set_io_throttle", {"device": "vblk0", "bps": 0})
    assert r["error"]["class"] == "GenericError", r

    # libvirt's blkdeviotune: id is the qdev path; the group defaults to the name used.
    assert throttle(c, id=qdev, iops=100, iops_max=200, iops_max_length=30,
                    iops_size=4096) == {"return": {}}
    assert limits(c) == {**RATES, "iops": 100, "iops_max": 200, "iops_max_length": 30,
                         "iops_size": 4096, "group": qdev}
    # Every call sets every limit (bursts left out are gone); the group stays.
    assert throttle(c, id="vblk0", bps_rd=1 << 20, bps_wr=1 << 19, bps_wr_max=1 << 20,
                    iops_size=-1, iops_wr=10) == {"return": {}}
    assert limits(c) == {**RATES, "bps_rd": 1 << 20, "bps_wr": 1 << 19,
                         "bps_wr_max": 1 << 20, "bps_wr_max_length": 1, "iops_wr": 10,
                         "iops_size": -1, "group": qdev}
    # A named group moves the disk; all zeroes take it out of any group.
    assert throttle(c, device="vblk0", bps=5000, group="tenant") == {"return": {}}
    assert limits(c) == {**RATES, "bps": 5000, "group": "tenant"}
    assert throttle(c, device="vblk0") == {"return": {}}
    assert limits(c) == RATES
    assert throttle(c, device="vblk0", iops=7) == {"return": {}}
    assert limits(c)["group"] == "vblk0"
    # The command is in the schema as QEMU's, its deprecated member marked.
    schema = c.cmd("query-qmp-schema")["return"]
    cmd = next(e for e in schema if e["name"] == "block_set_io_throttle")
    arg = next(e for e in schema if e["name"] == cmd["arg-type"])
    device = next(m for m in arg["members"] if m["name"] == "device")
    assert device.get("features") == ["deprecated"], device
    assert {"name": "block_set_io_throttle"} in c.cmd("query-commands")["return"]


def test_disk_keys_and_groups(vmm_factory, tmp_path):
    a, b = image(tmp_path, "a.raw"), image(tmp_path, "b.raw")
    vm = vmm_factory(extra=[
        "--disk", f"path={a},id=d0,throttling.iops-total=10,throttling.group=g",
        "--disk", f"path={b},id=d1,throttling.bps-read=4096,throttling.bps-read-max=8192,"
                  "throttling.bps-read-max-length=5,throttling.group=g",
    ], paused=True)
    c = RawQmp(vm.sock).negotiate()
    # One group, one set of limits: the later disk's.
    want = {**RATES, "bps_rd": 4096, "bps_rd_max": 8192, "bps_rd_max_length": 5, "group": "g"}
    assert limits(c, 0) == want and limits(c, 1) == want
    # Limits set through one member are the group's.
    assert throttle(c, device="d0", iops_rd=50) == {"return": {}}
    assert limits(c, 1) == {**RATES, "iops_rd": 50, "group": "g"}
    # A member that moves takes the new limits along; the others keep theirs.
    assert throttle(c, device="d1", iops=9, group="h") == {"return": {}}
    assert limits(c, 0) == {**RATES, "iops_rd": 50, "group": "g"}
    assert limits(c, 1) == {**RATES, "iops": 9, "group": "h"}
    # HMP shows QEMU's line.
    hmp = c.cmd("human-monitor-command", {"command-line": "info block"})["return"]
    assert ("I/O throttling:   bps=0 bps_rd=0 bps_wr=0 bps_max=0 bps_rd_max=0 bps_wr_max=0 "
            "iops=9 iops_rd=0 iops_wr=0 iops_max=0 iops_rd_max=0 iops_wr_max=0 iops_size=0 "
            "group=h") in hmp, hmp


def test_bad_disk_limits_get_qemus_words(vmm_factory, tmp_path):
    img = image(tmp_path)
    for spec, err in [
        (f"path={img},throttling.bps-total=100,throttling.bps-read=5",
         "bps/iops/max total values and read/write values cannot be used at the same time"),
        (f"path={img},iops=1,throttling.iops-total=2",
         "'throttling.iops-total' and its alias 'iops' can't be used at the same time"),
        (f"path={img},throttling.iops-total=x",
         "option 'throttling.iops-total' takes a number, not 'x'"),
    ]:
        vm = vmm_factory(extra=["--disk", spec], wait_socket=False)
        assert vm.wait_exit() == 1
        # One line, as every --disk error: clap's frame, then QEMU's words.
        assert vm.stderr() == f"vmm: invalid value '{spec}' for '--disk <DISK>': --disk {err}\n", \
            vm.stderr()


def test_a_throttled_guest_completes_its_io_without_errors(vmm_factory, tmp_path):
    img = image(tmp_path)
    rate = 20
    vm = vmm_factory(cmdline=f"probe.test=io-loop probe.count={SECTORS}",
                     extra=["--disk", f"path={img},id=vblk0,throttling.iops-total={rate}"])
    c = RawQmp(vm.sock).negotiate()
    vm.wait_serial("PROBE io-loop iters=")
    # Reads and writes start no faster than the limit allows (the bucket holds a tenth of a
    # second, plus the request that fills it and one in flight): a generous lower bound on
    # the time for what was done, never an upper one.
    t0, n0 = time.monotonic(), ops(c)
    vm.wait_serial("PROBE io-loop iters=", count=3)
    n1 = ops(c)
    t1 = time.monotonic()
    assert n1 > n0
    assert (n1 - n0) <= rate * (t1 - t0) * 1.25 + 5, (n1 - n0, t1 - t0)
    # Tighter limits at run time, as libvirt sets them: the guest goes on, slower.
    qdev = c.cmd("query-block")["return"][0]["qdev"]
    assert throttle(c, id=qdev, iops=5, bps=64 << 10, bps_max=128 << 10) == {"return": {}}
    before = ops(c)
    wait_until(lambda: ops(c) >= before + 4, what="guest I/O under tighter limits")
    # Limits removed: still no error, and the loop goes on.
    assert throttle(c, id=qdev) == {"return": {}}
    before = ops(c)
    wait_until(lambda: ops(c) >= before + 100, what="guest I/O without limits")
    s = c.cmd("query-blockstats")["return"][0]["stats"]
    assert (s["failed_rd_operations"], s["failed_wr_operations"]) == (0, 0), s
    assert "PROBE io-error" not in vm.serial(), vm.serial()
    # Whole lines only: the guest still runs, its last line may be half written.
    lines = vm.serial().split("\n")[:-1]
    reports = [line for line in lines if line.startswith("PROBE io-loop iters=")]
    assert reports and all(line.endswith(" errors=0") for line in reports), reports


def test_blockdev_add_locking(vmm_factory, tmp_path):
    img = image(tmp_path)
    vm = vmm_factory(extra=["--disk", f"path={img},id=d0"], paused=True)
    c = RawQmp(vm.sock).negotiate()
    # The disk holds its image: another open of it is refused, unless it takes no locks.
    r = c.cmd("blockdev-add", {"driver": "file", "node-name": "f0", "filename": str(img)})
    assert r["error"] == {"class": "GenericError",
                          "desc": f'Failed to get "write" lock: is another process using the '
                                  f'image [{img}]?'}, r
    r = c.cmd("blockdev-add", {"driver": "file", "node-name": "f1", "filename": str(img),
                               "locking": "on"})
    assert "error" in r, r
    assert c.cmd("blockdev-add", {"driver": "file", "node-name": "f2", "filename": str(img),
                                  "locking": "off"}) == {"return": {}}
    r = c.cmd("blockdev-add", {"driver": "file", "node-name": "f3", "filename": str(img),
                               "locking": "maybe"})
    assert r["error"] == {"class": "GenericError",
                          "desc": "Parameter 'locking' does not accept value 'maybe'"}, r
    other = image(tmp_path, "other.raw")
    assert c.cmd("blockdev-add", {"driver": "file", "node-name": "f4",
                                  "filename": str(other), "locking": "auto"}) == {"return": {}}
