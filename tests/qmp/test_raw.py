# SPDX-License-Identifier: Apache-2.0
"""Wire-level behaviour over raw sockets: QEMU's qmp-test.c malformed-input cases, ids of
every JSON type, pipelining, event ordering, negotiation, flow control, nesting limit, big
replies, several clients and clients that misbehave."""

import json
import time

import pytest

from conftest import RawQmp, check_event_shape

NOT_FOUND = {"class": "CommandNotFound", "desc": "The command no-such-cmd has not been found"}


# libqtest's qtest_qmp() appends a newline to each message ("BUG: QMP doesn't react to input
# until it sees a newline, an object, or an array"): a bare `null` needs a delimiter in QEMU's
# lexer too. qtest_qmp_send_raw() sends the bytes as they are.
def assert_recovered(c: RawQmp, negotiated: bool):
    c.send(b"{ 'execute': 'no-such-cmd' }\n")
    r = c.reply()
    if negotiated:
        assert r == {"error": NOT_FOUND}, r
    else:
        assert r["error"]["class"] == "CommandNotFound", r


def generic_error(c: RawQmp, desc=None, id=None):
    r = c.reply()
    assert set(r) == ({"error"} if id is None else {"error", "id"}), r
    assert r["error"]["class"] == "GenericError", r
    if desc is not None:
        assert r["error"]["desc"] == desc, r
    if id is not None:
        assert r["id"] == id, r
    return r


def malformed(c: RawQmp, negotiated: bool):
    """tests/qtest/qmp-test.c test_malformed, byte for byte."""
    lexical = [
        b"{]\n",                                    # syntax error
        b"{\xff",                                   # impossible byte outside string
        b"{\x01",                                   # funny control character outside string
        b"{'bad \xff",                              # impossible byte in string
        b"{'execute': 'nonexistent', 'id':'\n",     # control character in string
        b"%p",                                      # interpolation
    ]
    for raw in lexical:
        c.send(raw)
        r = generic_error(c)
        assert r["error"]["desc"].startswith("JSON parse error"), (raw, r)
        assert_recovered(c, negotiated)
    shapes = [
        (b"null", "QMP input must be a JSON object"),
        (b"{}", "QMP input lacks member 'execute'"),
        (b"{ 'execute': true }", "QMP input member 'execute' must be a string"),
        (b"{ 'execute': 'no-such-cmd', 'arguments': [] }",
         "QMP input member 'arguments' must be an object"),
        (b"{ 'execute': 'no-such-cmd', 'extra': true }", "QMP input member 'extra' is unexpected"),
    ]
    for raw, desc in shapes:
        c.send(raw + b"\n")
        generic_error(c, desc)
        assert_recovered(c, negotiated)


def test_qmp_protocol(vm, raw_factory):
    """qmp-test.c test_qmp_protocol: greeting, pre-negotiation, malformed input before and
    after negotiation, repeated handshake, id echo."""
    c = raw_factory(vm.sock)
    q = c.greeting["QMP"]
    assert set(q) == {"version", "capabilities"}
    assert q["capabilities"] == ["oob", "explicit-handles"]
    assert set(q["version"]["qemu"]) == {"major", "minor", "micro"}
    assert c.cmd("query-version") == {"error": {
        "class": "CommandNotFound",
        "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}
    malformed(c, negotiated=False)
    c.send(b"{ 'execute': 'qmp_capabilities' }")
    assert c.reply() == {"return": {}}
    c.send(b"{ 'execute': 'qmp_capabilities' }")
    assert c.reply() == {"error": {
        "class": "CommandNotFound",
        "desc": "Capabilities negotiation is already complete, command ignored"}}
    r = c.cmd("query-version")
    assert set(r) == {"return"}
    malformed(c, negotiated=True)
    c.send(b"{ 'execute': 'query-name', 'id': 'cookie#1' }")
    assert c.reply() == {"return": {"name": "test-vm"}, "id": "cookie#1"}
    c.send(b"{ 'execute': 'human-monitor-command', 'id': 2 }")
    assert c.reply() == {"error": {"class": "GenericError",
                                   "desc": "Parameter 'command-line' is missing"}, "id": 2}
    # Other request-shape errors keep the id.
    c.send(b"{ 'id': 'err-2' }")
    generic_error(c, "QMP input lacks member 'execute'", id="err-2")
    c.send(b'{"execute": "query-name", "id": 3, "control": {"run-oob": true}}')
    generic_error(c, "QMP input member 'control' is unexpected", id=3)
    c.send(b'[1, 2]')
    generic_error(c, "QMP input must be a JSON object")
    c.send(b'"str"\n')
    generic_error(c, "QMP input must be a JSON object")
    c.send(b'{"execute": }')
    generic_error(c, "JSON parse error, expecting value")
    # Single quotes, several objects on a line, an object split over lines.
    c.send(b"{'execute':'query-status','id':'single'}{'execute':'query-name','id':'x'}\n"
           b"{'execute':\n'query-kvm',\n'id':\n'split'}")
    assert c.reply()["id"] == "single"
    assert c.reply() == {"return": {"name": "test-vm"}, "id": "x"}
    assert c.reply() == {"return": {"enabled": True, "present": True}, "id": "split"}
    assert vm.alive() and c.events == []


def test_pre_negotiation(vm, raw_factory):
    """exec-oob before negotiation; an unknown capability; no events before negotiation."""
    quiet = raw_factory(vm.sock)
    actor = raw_factory(vm.sock).negotiate()
    c = raw_factory(vm.sock)
    c.send(b'{"exec-oob": "query-status", "id": 1}')
    generic_error(c, "QMP input member 'exec-oob' is unexpected", id=1)
    r = c.cmd("qmp_capabilities", {"enable": ["cap-does-not-exist"]}, id="caps")
    assert "error" in r and r["id"] == "caps", r
    # Still not negotiated.
    assert c.cmd("query-status")["error"]["class"] == "CommandNotFound"
    # Events happen while `quiet` and `c` have not negotiated.
    assert actor.cmd("stop") == {"return": {}}
    assert actor.cmd("cont") == {"return": {}}
    assert [e["event"] for e in actor.events] == ["STOP", "RESUME"]
    assert quiet.quiet(0.3), f"event before negotiation: {quiet.buf!r}"
    # After negotiating, the first message is the reply: nothing was queued for later.
    assert quiet.cmd("qmp_capabilities") == {"return": {}}
    assert quiet.events == []
    assert quiet.cmd("query-status", id=1)["id"] == 1
    assert quiet.events == []
    # And from then on, events arrive.
    actor.cmd("stop")
    check_event_shape(quiet.event("STOP"), "STOP")
    actor.cmd("cont")


def test_event_before_return(vm, raw_factory):
    """STOP/RESUME/RESET/POWERDOWN/SHUTDOWN come before their command's return."""
    c = raw_factory(vm.sock).negotiate()
    for cmd, ev, data in [
        ("stop", "STOP", None),
        ("cont", "RESUME", None),
        ("system_reset", "RESET", {"guest": False, "reason": "host-qmp-system-reset"}),
        ("quit", "SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"}),
    ]:
        c.send({"execute": cmd, "id": cmd})
        first = c.recv()
        check_event_shape(first, ev, data)
        assert c.recv() == {"return": {}, "id": cmd}
    assert vm.wait_exit() == 0
    # The server closes the connection as vmm exits.
    with pytest.raises(EOFError):
        c.recv()


def test_powerdown_event_before_return(vm, raw_factory):
    c = raw_factory(vm.sock).negotiate()
    c.send({"execute": "system_powerdown", "id": "pd"})
    check_event_shape(c.recv(), "POWERDOWN")
    msgs = [c.recv(), c.recv()]
    assert {"return": {}, "id": "pd"} in msgs, msgs
    ev = next(m for m in msgs if "event" in m)
    check_event_shape(ev, "SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
    assert vm.wait_exit() == 0


IDS = [1, "two", None, 3.5, {"a": [1, 2]}, [1, "x", None], True, False, -7, "",
       9007199254740993, "ünï\u2603", {"nested": {"deep": [{}]}}]


def test_pipelined_mixed_ids(vm, raw_factory):
    """13 requests in one write, ids of every JSON type, replies in order with their ids."""
    c = raw_factory(vm.sock).negotiate()
    cmds = ["query-status", "query-name", "query-kvm", "no-such-cmd", "query-version"]
    reqs = [{"execute": cmds[i % len(cmds)], "id": ident} for i, ident in enumerate(IDS)]
    # An id-less request in the middle: its reply has no id.
    reqs.insert(5, {"execute": "query-name"})
    c.send(b"".join(json.dumps(r).encode() + b"\n" for r in reqs))
    for req in reqs:
        r = c.reply()
        if "id" in req:
            assert "id" in r and r["id"] == req["id"] and \
                type(r["id"]) is type(req["id"]), (req, r)
        else:
            assert "id" not in r, r
        if req["execute"] == "no-such-cmd":
            assert r["error"] == NOT_FOUND
        else:
            assert "return" in r, (req, r)
    # The same with oob ids and without a newline between requests.
    c2 = raw_factory(vm.sock).negotiate(oob=True)
    c2.send("".join(json.dumps({"execute": "query-name", "id": i}) for i in IDS))
    assert [c2.reply()["id"] for _ in IDS] == IDS


def test_big_id_and_unicode(vm, raw_factory):
    c = raw_factory(vm.sock).negotiate()
    big = "x" * 200_000
    assert c.cmd("query-name", id=big)["id"] == big
    # \u escapes, including a surrogate pair, come back as the same string.
    c.send(b'{"execute": "query-name", "id": "\\u00e9\\ud83d\\ude00\\u0001"}')
    assert c.reply()["id"] == "\u00e9\U0001F600\u0001"
    # Raw UTF-8 input is accepted too; output stays ASCII (QEMU escapes non-ASCII).
    c.send('{"execute": "query-name", "id": "é😀"}\n'.encode())
    line = c.recv_line()
    assert line.isascii(), line
    assert json.loads(line)["id"] == "é😀"


def test_exec_oob(vm, raw_factory):
    c = raw_factory(vm.sock).negotiate(oob=True)
    assert c.cmd("query-status", id="o1", oob=True) == {
        "return": {"running": True, "singlestep": False, "status": "running"}, "id": "o1"}
    assert c.cmd("query-name", id="o2", oob=True) == {"return": {"name": "test-vm"}, "id": "o2"}
    assert c.cmd("stop", id="o3", oob=True) == {"error": {
        "class": "GenericError", "desc": "The command stop does not support OOB"}, "id": "o3"}
    assert c.cmd("query-status", id=4)["return"]["status"] == "running"
    assert c.cmd("no-such-cmd", id="o5", oob=True)["error"]["class"] == "CommandNotFound"
    c.send(b'{"execute": "query-name", "exec-oob": "query-name", "id": 6}')
    generic_error(c, id=6)
    # A session without oob: exec-oob is an unexpected member.
    d = raw_factory(vm.sock).negotiate()
    d.send(b'{"exec-oob": "query-status", "id": 7}')
    generic_error(d, "QMP input member 'exec-oob' is unexpected", id=7)


def test_nesting_limit(vm, raw_factory):
    c = raw_factory(vm.sock).negotiate()
    # 1024 levels (the object itself and 1023 arrays) parse; the request is then just wrong.
    ok = b'{"execute": "query-name", "id": ' + b"[" * 1023 + b"]" * 1023 + b"}"
    c.send(ok)
    line = c.recv_line()  # too deep for Python's json module: check the text
    assert line.startswith(b'{"id": [[[[') or line.startswith(b'{"return"'), line[:100]
    assert b'"return": {"name": "test-vm"}' in line and line.count(b"[") == 1023, line[:100]
    deep = b'{"execute": "query-name", "id": ' + b"[" * 1024 + b"]" * 1024 + b"}"
    c.send(deep)
    generic_error(c, "JSON nesting depth limit exceeded")
    # QEMU then reports each leftover closing token as a parse error; drain until recovered.
    c.send(b'{"execute": "query-name", "id": "after"}')
    while True:
        r = c.reply()
        if r.get("id") == "after":
            break
        assert r["error"]["class"] == "GenericError", r
    assert r == {"return": {"name": "test-vm"}, "id": "after"}


def test_flow_control(vm, raw_factory):
    """More than 8 in-band requests at once: nothing dropped, all answered in order; OOB
    commands still answered meanwhile."""
    c = raw_factory(vm.sock).negotiate(oob=True)
    n = 200
    c.send(b"".join(b'{"execute": "query-status", "id": %d}\n' % i for i in range(n)))
    assert [c.reply()["id"] for _ in range(n)] == list(range(n))
    # 8 in flight + an OOB request: the OOB one is answered (in any position), all are.
    c.send(b"".join(b'{"execute": "query-cpus-fast", "id": %d}' % i for i in range(8)) +
           b'{"exec-oob": "query-name", "id": "oob"}')
    got = [c.reply()["id"] for _ in range(9)]
    assert sorted(got, key=str) == sorted(list(range(8)) + ["oob"], key=str), got
    assert [g for g in got if g != "oob"] == list(range(8))


def test_schema_reply_read_fully(vm, raw_factory):
    c = raw_factory(vm.sock).negotiate()
    c.send(b'{"execute": "query-qmp-schema", "id": "s"}\n{"execute": "query-name", "id": "n"}')
    line = c.recv_line()
    assert line.endswith(b"\r\n") and line.count(b"\n") == 1
    r = json.loads(line)
    assert r["id"] == "s" and isinstance(r["return"], list)
    # Size: a QEMU-like schema is about 120-200 KB; ours must at least decode in one line.
    assert len(line) > 1000
    assert c.reply() == {"return": {"name": "test-vm"}, "id": "n"}
    # Many schema requests in flight while the client does not read: all arrive intact.
    c.send(b"".join(b'{"execute": "query-qmp-schema", "id": %d}' % i for i in range(20)))
    time.sleep(0.2)
    for i in range(20):
        assert c.reply()["id"] == i


def test_garbage_does_not_affect_others(vm, raw_factory):
    good = raw_factory(vm.sock).negotiate()
    bad = raw_factory(vm.sock)
    bad.send(b"{\xff\x01]]]}}}" + b"[" * 5000 + b"\x00garbage\xfe" * 100 + b"{'execute':")
    # bad is mid-object (incomplete input): the good client is unaffected.
    for i in range(5):
        assert good.cmd("query-name", id=i) == {"return": {"name": "test-vm"}, "id": i}
    good.cmd("stop")
    good.cmd("cont")
    assert [e["event"] for e in good.events] == ["STOP", "RESUME"]
    # bad got only error replies, no events (not negotiated), and can still recover.
    bad.send(b"\x01")  # a control character resyncs the parser, per the QMP spec
    bad.send(b"{'execute': 'qmp_capabilities', 'id': 'neg'}")
    while True:
        r = bad.recv()
        assert "event" not in r, r
        if r.get("id") == "neg":
            break
        assert r["error"]["class"] == "GenericError" and "id" not in r, r
    assert r == {"return": {}, "id": "neg"}
    assert vm.alive()


def test_incomplete_then_disconnect(vm, raw_factory):
    """A client that leaves mid-command (partial JSON, or a command in flight) does not
    affect the VM; a new client can connect and query."""
    a = raw_factory(vm.sock).negotiate()
    a.send(b'{"execute": "query-sta')
    a.close()
    b = raw_factory(vm.sock).negotiate()
    # Commands in flight when the client disconnects: they run, replies go nowhere.
    b.send(b'{"execute": "stop", "id": 1}' + b'{"execute": "query-qmp-schema"}' * 8)
    b.close()
    c = raw_factory(vm.sock).negotiate()
    deadline = time.monotonic() + 10
    while c.cmd("query-status")["return"]["status"] != "paused":
        assert time.monotonic() < deadline, "stop from a departed client never ran"
        time.sleep(0.05)
    assert c.cmd("cont") == {"return": {}}
    assert c.cmd("query-status")["return"]["status"] == "running"
    # Half-close: the client shuts down its write side after a request; it still gets the
    # reply.
    d = raw_factory(vm.sock).negotiate()
    d.send(b'{"execute": "query-name", "id": "half"}')
    import socket as _s
    d.sock.shutdown(_s.SHUT_WR)
    assert d.reply() == {"return": {"name": "test-vm"}, "id": "half"}
    e = raw_factory(vm.sock).negotiate()
    assert e.cmd("query-name")["return"] == {"name": "test-vm"}
    assert vm.alive()


def test_many_clients(vm, raw_factory):
    clients = [raw_factory(vm.sock).negotiate() for _ in range(16)]
    for i, c in enumerate(clients):
        c.send({"execute": "query-name", "id": i})
    for i, c in enumerate(clients):
        assert c.reply() == {"return": {"name": "test-vm"}, "id": i}
    clients[3].cmd("stop")
    clients[7].cmd("cont")
    for c in clients:
        assert c.event("STOP")["event"] == "STOP"
        assert c.event("RESUME")["event"] == "RESUME"


# Invalid UTF-8 inside a string. QEMU 7.2's lexer accepts bytes 0x20-0xFD in strings (only
# 0xFE/0xFF are lexical errors) and its parser rejects the whole string with one "JSON parse
# error, invalid UTF-8 sequence in string" (it even accepts the modified-UTF-8 NUL C0 80). So
# a bad byte costs one error reply and the stream stays in sync.
BAD_UTF8 = [b"\xc0\x80", b"\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80",
            b"\xc1\xbf", b"\xf5\x80\x80\x80", b"\xfd"]


@pytest.mark.parametrize("bad", BAD_UTF8, ids=[b.hex() for b in BAD_UTF8])
def test_invalid_utf8_in_string_keeps_stream_in_sync(vm, raw_factory, bad):
    c = raw_factory(vm.sock).negotiate()
    c.send(b'{"execute": "query-name", "id": "' + bad + b'"}')
    c.send(b'{"execute": "query-name", "id": "next"}\n')
    replies = []
    while True:
        r = c.reply()
        replies.append(r)
        if r.get("id") == "next":
            break
        assert len(replies) <= 2, f"stream out of sync after {bad!r}: {replies}"
    assert replies[-1] == {"return": {"name": "test-vm"}, "id": "next"}, replies
    assert len(replies) == 2, f"expected exactly one reply before 'next': {replies}"
    if bad == b"\xc0\x80":
        # Modified UTF-8's NUL: QEMU reads it as U+0000 and runs the command.
        assert replies[0] == {"return": {"name": "test-vm"}, "id": "\u0000"}, replies
    else:
        assert replies[0]["error"] == {
            "class": "GenericError",
            "desc": "JSON parse error, invalid UTF-8 sequence in string",
        } and "id" not in replies[0], replies


def test_duplicate_key_rejected(vm, raw_factory):
    """QEMU 7.2 rejects duplicate keys ("JSON parse error, duplicate key"); a later
    "execute" must not silently replace the first one."""
    c = raw_factory(vm.sock).negotiate()
    c.send(b'{"execute": "query-name", "execute": "stop", "id": "dup"}\n')
    r = c.reply()
    assert r == {"error": {"class": "GenericError",
                           "desc": "JSON parse error, duplicate key"}}, r
    assert c.cmd("query-status")["return"]["status"] == "running"
    assert c.events == []
    c.send(b'{"execute": "query-name", "id": 1, "id": 2}\n')
    r = c.reply()
    assert r == {"error": {"class": "GenericError",
                           "desc": "JSON parse error, duplicate key"}}, r


def test_non_reading_client_does_not_block_others(vm, raw_factory):
    """A client that floods big requests and never reads must not stall the monitor for
    others (vmm buffers its output up to a limit, then drops that client)."""
    hog = raw_factory(vm.sock).negotiate()
    hog.sock.setblocking(False)
    req = b'{"execute": "query-qmp-schema"}' * 64
    sent = 0
    try:
        for _ in range(400):
            sent += hog.sock.send(req)
    except (BlockingIOError, BrokenPipeError, ConnectionResetError):
        pass
    other = raw_factory(vm.sock).negotiate()
    for i in range(20):
        assert other.cmd("query-name", id=i) == {"return": {"name": "test-vm"}, "id": i}
    other.cmd("stop")
    other.cmd("cont")
    assert [e["event"] for e in other.events] == ["STOP", "RESUME"]
    assert vm.alive()


def test_shutdown_state_is_transient(vm, raw_factory):
    """After quit, vmm exits: a query-status pipelined behind quit is either answered with
    the 'shutdown' state or not at all (the connection closes); nothing else."""
    c = raw_factory(vm.sock).negotiate(oob=True)
    c.send(b'{"execute": "quit", "id": "q"}{"execute": "query-status", "id": "s"}'
           b'{"exec-oob": "query-status", "id": "o"}')
    seen, order = {}, []
    try:
        while True:
            m = c.recv()
            if "event" in m:
                assert m["event"] == "SHUTDOWN", m
                order.append("SHUTDOWN")
                continue
            seen[m["id"]] = m
            order.append(m["id"])
    except EOFError:
        pass
    assert seen["q"] == {"return": {}, "id": "q"}, seen
    assert order.index("SHUTDOWN") < order.index("q"), order
    for key in ("s", "o"):
        # The out-of-band query may overtake quit (then it saw the VM running).
        if key in seen and order.index(key) > order.index("SHUTDOWN"):
            assert seen[key]["return"]["status"] == "shutdown", (order, seen)
            assert seen[key]["return"]["running"] is False, seen
    assert vm.wait_exit() == 0


def test_token_count_limit(vm, raw_factory):
    """QEMU's 2M-token limit (checked against QEMU 7.2: same first error, same recovery)."""
    c = raw_factory(vm.sock).negotiate()
    c.send(b'{"execute": "query-name", "id": [' + b"0," * 1_000_000 + b'0]}\n')
    r = c.reply()
    assert r["return"] == {"name": "test-vm"} and len(r["id"]) == 1_000_001
    c.send(b'{"execute": "query-name", "id": [' + b"0," * 1_100_000 + b'0]}\n'
           b'{"execute": "query-name", "id": "after"}\n')
    first = c.reply()
    assert first == {"error": {"class": "GenericError",
                               "desc": "JSON token count limit exceeded"}}, first
    # The rest of the oversized message is reported piecemeal, as QEMU does; then it recovers.
    while True:
        r = c.reply()
        if r.get("id") == "after":
            break
        assert r["error"]["class"] == "GenericError" and "id" not in r, r
    assert r == {"return": {"name": "test-vm"}, "id": "after"}


def test_inband_status_consistent_with_events(vm, raw_factory):
    """An in-band reply never reflects a state change whose event the same client has not
    received yet. QEMU guarantees this (the run-state change, its event and any later in-band
    reply are all produced in order under the big lock); a client that tracks the state from
    events and checks it with query-status relies on it. Another client toggles stop/cont
    while this one polls query-status one request at a time."""
    import threading
    poller = raw_factory(vm.sock).negotiate()
    toggler = raw_factory(vm.sock).negotiate()
    done = threading.Event()

    def toggle():
        while not done.is_set():
            toggler.send(b'{"execute": "stop"}{"execute": "cont"}' * 4)
            for _ in range(8):
                toggler.reply()
            toggler.events.clear()
    t = threading.Thread(target=toggle)
    t.start()
    state, bad = "running", []
    try:
        for _ in range(5000):
            poller.send(b'{"execute": "query-status"}\n')
            while True:
                m = poller.recv()
                if "event" not in m:
                    break
                state = {"STOP": "paused", "RESUME": "running"}.get(m["event"], state)
            if m["return"]["status"] != state:
                bad.append((state, m["return"]["status"]))
    finally:
        done.set()
        t.join()
    assert not bad, f"{len(bad)} of 5000 replies disagree with the events received before " \
                    f"them (state from events, reply): {bad[:5]}"


def test_negotiation_reply_precedes_events(vm, raw_factory):
    """A client that negotiates while other clients make the VM emit events gets its
    qmp_capabilities reply before any event (QEMU never sends an event first; qemu.qmp's
    clients fail with "Negotiation failed" otherwise). The actors keep the main loop busy with
    pipelined stop/cont, so a reply that travelled through the main loop would queue behind
    them while the events they emit reached the newcomer first."""
    actors = [raw_factory(vm.sock).negotiate() for _ in range(4)]
    for _ in range(20):
        for a in actors:
            # Eight in flight per session: the most the monitor hands the main loop.
            a.send(b'{"execute": "stop"}{"execute": "cont"}' * 4)
        newcomer = raw_factory(vm.sock)
        newcomer.send({"execute": "qmp_capabilities", "id": "neg"})
        first = newcomer.recv()
        assert first == {"return": {}, "id": "neg"}, f"before the negotiation reply: {first}"
        newcomer.close()
        for a in actors:
            replies = 0
            while replies < 8:
                m = a.recv()
                if "event" not in m:
                    assert m == {"return": {}}, m
                    replies += 1
    assert vm.alive()
