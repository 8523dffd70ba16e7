# SPDX-License-Identifier: Apache-2.0
"""Every command and event through qemu.qmp's asynchronous QMPClient, the reference client
(auto-enables oob, routes replies by id, aborts on an id-less error while commands are
pending, parses the greeting strictly)."""

import asyncio
import os

import pytest
from qemu.qmp import ExecuteError, QMPClient

from conftest import HANG, arun, check_event_shape, free_tcp_port

REQUIRED_COMMANDS = {
    "qmp_capabilities", "query-version", "query-commands", "query-qmp-schema", "query-status",
    "stop", "cont", "system_reset", "system_powerdown", "quit", "query-kvm", "query-name",
    "query-cpus-fast", "query-block", "query-blockstats", "human-monitor-command",
}
REQUIRED_EVENTS = {"STOP", "RESUME", "RESET", "POWERDOWN", "SHUTDOWN"}


async def connect(addr, name="pytest"):
    qmp = QMPClient(name)
    await asyncio.wait_for(qmp.connect(addr), HANG)
    return qmp


async def disconnect_after_exit(qmp):
    """vmm closes the socket as it exits; qemu.qmp then re-raises the reader's EOFError from
    disconnect() (it does the same with QEMU, whose python/qemu/machine tolerates it)."""
    try:
        await qmp.disconnect()
    except EOFError:
        pass


async def next_event(listener, name=None):
    ev = await asyncio.wait_for(listener.get(), HANG)
    if name is not None:
        assert ev["event"] == name, ev
    return dict(ev)


def test_greeting_version_commands(vm):
    async def body():
        qmp = await connect(vm.sock)
        g = qmp.greeting._asdict()["QMP"]
        assert g["capabilities"] == ["oob", "explicit-handles"]
        version = await qmp.execute("query-version")
        assert g["version"] == version
        assert set(version) == {"qemu", "package"}
        assert set(version["qemu"]) == {"major", "minor", "micro"}
        assert all(isinstance(x, int) for x in version["qemu"].values())
        assert isinstance(version["package"], str)
        cmds = await qmp.execute("query-commands")
        assert all(set(c) == {"name"} for c in cmds), cmds
        names = [c["name"] for c in cmds]
        assert len(names) == len(set(names)), "duplicate commands"
        assert REQUIRED_COMMANDS <= set(names), REQUIRED_COMMANDS - set(names)
        # A second negotiation is refused.
        with pytest.raises(ExecuteError) as e:
            await qmp.execute("qmp_capabilities")
        assert e.value.error_class == "CommandNotFound"
        assert str(e.value) == \
            "Capabilities negotiation is already complete, command ignored"
        await qmp.disconnect()
    arun(body())


def test_query_qmp_schema(vm):
    async def body():
        qmp = await connect(vm.sock)
        schema = await qmp.execute("query-qmp-schema")
        cmds = {c["name"] for c in await qmp.execute("query-commands")}
        await qmp.disconnect()
        return schema, cmds
    schema, cmds = arun(body())
    assert isinstance(schema, list) and schema
    by_name = {}
    for e in schema:
        assert e["meta-type"] in {"builtin", "enum", "array", "object", "alternate",
                                  "command", "event"}, e
        assert e["name"] not in by_name, f"duplicate schema entry {e['name']}"
        by_name[e["name"]] = e
    commands = {n for n, e in by_name.items() if e["meta-type"] == "command"}
    events = {n for n, e in by_name.items() if e["meta-type"] == "event"}
    assert cmds <= commands, f"commands missing from the schema: {cmds - commands}"
    assert REQUIRED_EVENTS <= events, REQUIRED_EVENTS - events
    assert by_name["query-status"].get("allow-oob") is True
    assert by_name["query-name"].get("allow-oob") is True
    assert "allow-oob" not in by_name["stop"]
    for n in commands:
        e = by_name[n]
        assert e["arg-type"] in by_name and e["ret-type"] in by_name, e
    for n in events:
        assert by_name[n]["arg-type"] in by_name, by_name[n]
    # Every type reference resolves.
    for e in schema:
        for m in e.get("members", []):
            if "type" in m:
                assert m["type"] in by_name, (e["name"], m)
        if e["meta-type"] == "array":
            assert e["element-type"] in by_name, e
    # The query-status return type has running/singlestep/status.
    ret = by_name[by_name["query-status"]["ret-type"]]
    assert {m["name"] for m in ret["members"]} >= {"running", "singlestep", "status"}
    shutdown = by_name[by_name["SHUTDOWN"]["arg-type"]]
    assert {m["name"] for m in shutdown["members"]} == {"guest", "reason"}


def test_status_stop_cont_states(vmm_factory):
    """prelaunch (-S) -> cont -> running -> stop -> paused -> stop (no event) -> cont."""
    v = vmm_factory(paused=True)

    async def body():
        qmp = await connect(v.sock)
        with qmp.listener() as events:
            st = await qmp.execute("query-status")
            assert st == {"running": False, "singlestep": False, "status": "prelaunch"}
            assert v.serial() == "", "guest ran while in prelaunch"
            assert await qmp.execute("cont") == {}
            check_event_shape(await next_event(events), "RESUME")
            v.wait_serial("PROBE idle")
            st = await qmp.execute("query-status")
            assert st == {"running": True, "singlestep": False, "status": "running"}
            # cont while running: no error, no event.
            assert await qmp.execute("cont") == {}
            assert await qmp.execute("stop") == {}
            # The STOP event was read before the reply (the client routes in order).
            assert not events.empty(), "STOP must arrive before stop's return"
            check_event_shape(await next_event(events), "STOP")
            st = await qmp.execute("query-status")
            assert st == {"running": False, "singlestep": False, "status": "paused"}
            assert await qmp.execute("stop") == {}
            assert await qmp.execute("query-status") == st
            assert events.empty(), f"stop when paused sent an event: {events.clear()}"
            assert await qmp.execute("cont") == {}
            assert not events.empty(), "RESUME must arrive before cont's return"
            check_event_shape(await next_event(events), "RESUME")
            assert (await qmp.execute("query-status"))["status"] == "running"
        await qmp.disconnect()
    arun(body())
    assert v.alive()


def test_system_reset(vm):
    async def body():
        qmp = await connect(vm.sock)
        with qmp.listener() as events:
            assert await qmp.execute("system_reset") == {}
            ev = await next_event(events)
            check_event_shape(ev, "RESET", {"guest": False, "reason": "host-qmp-system-reset"})
        vm.wait_serial("PROBE ready", count=2)
        vm.wait_serial("PROBE idle", count=2)
        assert (await qmp.execute("query-status"))["status"] == "running"
        await qmp.disconnect()
    arun(body())


def test_system_reset_while_paused_stays_paused(vm):
    async def body():
        qmp = await connect(vm.sock)
        await qmp.execute("stop")
        with qmp.listener("RESET") as events:
            await qmp.execute("system_reset")
            await next_event(events, "RESET")
        assert (await qmp.execute("query-status"))["status"] == "paused"
        await qmp.execute("cont")
        await qmp.disconnect()
    arun(body())
    vm.wait_serial("PROBE ready", count=2)


def test_guest_reboot_gives_reset_event(vmm_factory):
    """probe.test=reboot resets the machine from inside: RESET {guest:true, guest-reset}."""
    v = vmm_factory(paused=True, cmdline="probe.test=reboot")

    async def body():
        qmp = await connect(v.sock)
        with qmp.listener("RESET") as events:
            await qmp.execute("cont")
            ev = await next_event(events, "RESET")
            check_event_shape(ev, "RESET", {"guest": True, "reason": "guest-reset"})
        # The guest reboots in place and reboots again: it keeps running the same test.
        v.wait_serial("PROBE ready", count=2)
        await qmp.execute("stop")
        await qmp.disconnect()
    arun(body())


def test_system_powerdown(vm):
    async def body():
        qmp = await connect(vm.sock)
        with qmp.listener() as events:
            assert await qmp.execute("system_powerdown") == {}
            check_event_shape(await next_event(events), "POWERDOWN")
            ev = await next_event(events)
            check_event_shape(ev, "SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
        await disconnect_after_exit(qmp)
    arun(body())
    assert vm.wait_exit() == 0
    assert "PROBE power-button" in vm.serial()
    assert not os.path.exists(vm.sock), "socket file left behind"


def test_quit(vm):
    async def body():
        qmp = await connect(vm.sock)
        with qmp.listener() as events:
            assert await qmp.execute("quit") == {}
            assert not events.empty(), "SHUTDOWN must arrive before quit's return"
            ev = await next_event(events)
            check_event_shape(ev, "SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        await disconnect_after_exit(qmp)
    arun(body())
    assert vm.wait_exit() == 0
    assert not os.path.exists(vm.sock), "socket file left behind"


def test_query_kvm_name_block(vm, vmm_factory, tmp_path):
    async def body(addr, expect_name):
        qmp = await connect(addr)
        assert await qmp.execute("query-kvm") == {"enabled": True, "present": True}
        assert await qmp.execute("query-name") == expect_name
        assert await qmp.execute("query-name", oob=True) == expect_name
        assert await qmp.execute("query-block") == []
        assert await qmp.execute("query-blockstats") == []
        assert await qmp.execute("query-blockstats", {"query-nodes": True}) == []
        assert await qmp.execute("query-blockstats", {"query-nodes": False}) == []
        with pytest.raises(ExecuteError) as e:
            await qmp.execute("query-blockstats", {"bogus": 1})
        assert e.value.error_class == "GenericError"
        assert str(e.value) == "Parameter 'bogus' is unexpected"
        await qmp.disconnect()
    arun(body(vm.sock, {"name": "test-vm"}))
    unnamed = vmm_factory(qmp=[f"unix:{tmp_path / 'unnamed.sock'}"])
    arun(body(unnamed.sock, {}))


@pytest.mark.parametrize("cpus", [1, 3])
def test_query_cpus_fast(vmm_factory, cpus):
    v = vmm_factory(cpus=cpus)
    v.wait_serial("PROBE idle")

    async def body():
        qmp = await connect(v.sock)
        r = await qmp.execute("query-cpus-fast")
        await qmp.disconnect()
        return r
    cpus_info = arun(body())
    assert len(cpus_info) == cpus
    tids = set()
    for i, c in enumerate(cpus_info):
        assert c["cpu-index"] == i
        assert c["target"] == "x86_64"
        assert isinstance(c["qom-path"], str) and c["qom-path"].startswith("/machine/")
        tid = c["thread-id"]
        assert tid != v.pid, "thread-id is the main thread, not a vCPU thread"
        assert os.path.isdir(f"/proc/{v.pid}/task/{tid}"), f"no thread {tid} in vmm"
        tids.add(tid)
        assert {"core-id", "socket-id", "thread-id"} <= set(c["props"]), c
    assert len(tids) == cpus, "vCPU thread ids are not distinct"


def test_exec_oob(vm):
    async def body():
        qmp = await connect(vm.sock)  # qemu.qmp enables oob since it is offered
        st = await qmp.execute("query-status", oob=True)
        assert st == {"running": True, "singlestep": False, "status": "running"}
        await qmp.execute("stop")
        assert (await qmp.execute("query-status", oob=True))["status"] == "paused"
        with pytest.raises(ExecuteError) as e:
            await qmp.execute("stop", oob=True)
        assert e.value.error_class == "GenericError"
        assert str(e.value) == "The command stop does not support OOB"
        with pytest.raises(ExecuteError) as e:
            await qmp.execute("query-cpus-fast", oob=True)
        assert str(e.value) == "The command query-cpus-fast does not support OOB"
        await qmp.execute("cont")
        await qmp.disconnect()
    arun(body())


def test_errors(vm):
    async def body():
        qmp = await connect(vm.sock)
        with pytest.raises(ExecuteError) as e:
            await qmp.execute("no-such-cmd")
        assert e.value.error_class == "CommandNotFound"
        assert str(e.value) == "The command no-such-cmd has not been found"
        with pytest.raises(ExecuteError) as e:
            await qmp.execute("query-status", {"x": 1})
        assert str(e.value) == "Parameter 'x' is unexpected"
        with pytest.raises(ExecuteError) as e:
            await qmp.execute("human-monitor-command")
        assert e.value.error_class == "GenericError"
        assert str(e.value) == "Parameter 'command-line' is missing"
        with pytest.raises(ExecuteError) as e:
            await qmp.execute("human-monitor-command", {"command-line": 5})
        assert str(e.value) == \
            "Invalid parameter type for 'command-line', expected: string"
        # The session is still usable and the VM unaffected.
        assert (await qmp.execute("query-status"))["status"] == "running"
        await qmp.disconnect()
    arun(body())


def test_two_clients(vm):
    """Both clients get every event; each gets only its own replies."""
    async def body():
        a = await connect(vm.sock, "a")
        b = await connect(vm.sock, "b")
        with a.listener() as ea, b.listener() as eb:
            # Interleave: each client's commands concurrently.
            ra, rb = await asyncio.gather(
                asyncio.gather(*(a.execute("query-name") for _ in range(20))),
                asyncio.gather(*(b.execute("query-kvm") for _ in range(20))))
            assert ra == [{"name": "test-vm"}] * 20
            assert rb == [{"enabled": True, "present": True}] * 20
            await a.execute("stop")
            await b.execute("cont")
            for ev in (ea, eb):
                assert (await next_event(ev))["event"] == "STOP"
                assert (await next_event(ev))["event"] == "RESUME"
            await a.disconnect()
            # b is unaffected by a leaving.
            await b.execute("stop")
            assert (await next_event(eb))["event"] == "STOP"
            await b.execute("cont")
            assert (await next_event(eb))["event"] == "RESUME"
        await b.disconnect()
    arun(body())


def test_tcp(vmm_factory, tmp_path):
    port = free_tcp_port()
    v = vmm_factory(qmp=[f"tcp:127.0.0.1:{port}", f"unix:{tmp_path / 'q.sock'}"], name="tcpvm")

    async def body():
        qmp = await connect(("127.0.0.1", port))
        assert await qmp.execute("query-name") == {"name": "tcpvm"}
        other = await connect(v.address(1))
        with other.listener() as events:
            await qmp.execute("stop")
            assert (await next_event(events))["event"] == "STOP"
        await qmp.execute("cont")
        await other.disconnect()
        await qmp.disconnect()
    arun(body())
