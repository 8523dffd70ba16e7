#!/usr/bin/env bash
# QMP benchmark: vmm and Debian's QEMU (-M microvm) side by side, both running the probe guest
# (probe.test=idle), driven by the same raw-socket client:
#   - latency: query-status round trips from one client, one request at a time (p50/p99),
#     and the same for query-kvm (vmm answers query-status, an allow-oob command, on its
#     monitor thread; query-kvm goes through the main loop, like most commands);
#   - throughput with 8 pipelined query-status requests in flight on one connection;
#   - throughput with 16 clients, each on its own socket (QEMU serves one client per -qmp
#     socket, so both VMMs get 16 extra sockets), one request in flight per client.
# The client is one Python thread (selectors); it may be the bottleneck of the throughput
# figures, identically for both VMMs.
# Usage: scripts/bench-qmp.sh [REQUESTS]   (default 10000 latency samples)
source "$(dirname "$0")/lib.sh"
REQUESTS=${1:-10000}
bench_setup
exec python3 - "$VMM" "$KERNEL" "$REQUESTS" <<'PY'
import json, os, selectors, shutil, socket, statistics, subprocess, sys, tempfile, time

vmm, kernel, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
MEM = "256"
CLIENTS = 16
QUERY = b'{"execute": "query-status"}\n'
KVM = b'{"execute": "query-kvm"}\n'
tmp = tempfile.mkdtemp(prefix="bench-qmp-")


def socks(name):
    return [os.path.join(tmp, f"{name}-{i}.sock") for i in range(CLIENTS + 1)]


def vmm_argv(serial, paused):
    argv = [vmm, "--kernel", kernel, "--cmdline", "probe.test=idle", "--memory", MEM,
            "--serial", serial]
    if paused:
        argv.append("-S")
    for s in socks("vmm"):
        argv += ["--qmp", f"unix:{s}"]
    return argv


def qemu_argv(serial, paused):
    argv = ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off",
            "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", MEM, "-nodefaults",
            "-no-user-config", "-display", "none", "-serial", serial, "-kernel", kernel,
            "-append", "probe.test=idle"]
    if paused:
        argv.append("-S")
    for s in socks("qemu"):
        argv += ["-qmp", f"unix:{s},server=on,wait=off"]
    return argv


def start(argv, paths):
    for p in paths:
        if os.path.exists(p):
            os.unlink(p)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not all(os.path.exists(p) for p in paths):
        if proc.poll() is not None:
            raise SystemExit(f"{argv[0]} exited: {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"{argv[0]}: QMP sockets never appeared")
        time.sleep(0.01)
    return proc


def stop(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Client:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(30)
        self.s.connect(path)
        self.buf = b""
        self.line()  # greeting
        self.s.sendall(b'{"execute": "qmp_capabilities"}\n')
        assert json.loads(self.line()) == {"return": {}}

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line


def boots(argv_fn, name):
    """Whether the guest reaches 'PROBE idle' (checked once with a serial file)."""
    serial = os.path.join(tmp, f"{name}-serial.txt")
    proc = start(argv_fn(f"file:{serial}", False), socks(name))
    ok = False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.exists(serial) and "PROBE idle" in open(serial, errors="replace").read():
            ok = True
            break
        time.sleep(0.02)
    stop(proc)
    return ok


def latency(path, n, query=QUERY):
    c = Client(path)
    for _ in range(500):  # warm-up
        c.s.sendall(query)
        c.line()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        c.s.sendall(query)
        line = c.line()
        samples.append(clock() - t0)
        if b'"return"' not in line:
            raise SystemExit(f"unexpected reply {line!r}")
    c.s.close()
    samples.sort()
    return {"p50_us": samples[len(samples) // 2] / 1000,
            "p99_us": samples[int(len(samples) * 0.99)] / 1000,
            "mean_us": statistics.fmean(samples) / 1000}


def pipelined(path, n, depth=8, query=QUERY):
    c = Client(path)
    c.s.settimeout(None)
    c.s.sendall(query * depth)
    sent, got = depth, 0
    buf = c.buf
    t0 = time.perf_counter()
    while got < n:
        chunk = c.s.recv(1 << 20)
        if not chunk:
            raise EOFError
        buf += chunk
        k = buf.count(b"\n")
        if k:
            buf = buf[buf.rfind(b"\n") + 1:]
            got += k
            more = min(k, n - sent)
            if more > 0:
                c.s.sendall(query * more)
                sent += more
    dt = time.perf_counter() - t0
    c.s.close()
    return n / dt


def many_clients(paths, n, query=QUERY):
    clients = [Client(p) for p in paths]
    sel = selectors.DefaultSelector()
    for c in clients:
        c.s.setblocking(False)
        sel.register(c.s, selectors.EVENT_READ, c)
    per = n // len(clients)
    left = {id(c): per for c in clients}
    done = 0
    t0 = time.perf_counter()
    for c in clients:
        c.s.send(query)
    while done < per * len(clients):
        for key, _ in sel.select():
            c = key.data
            chunk = c.s.recv(65536)
            if not chunk:
                raise EOFError
            c.buf += chunk
            k = c.buf.count(b"\n")
            if k:
                c.buf = c.buf[c.buf.rfind(b"\n") + 1:]
                done += k
                left[id(c)] -= k
                if left[id(c)] > 0:
                    c.s.send(query)
    dt = time.perf_counter() - t0
    for c in clients:
        c.s.close()
    return per * len(clients) / dt


results, modes = {}, {}
try:
    for name, argv_fn in (("vmm", vmm_argv), ("qemu", qemu_argv)):
        paused = not boots(argv_fn, name)
        modes[name] = "paused (-S): the probe guest did not boot" if paused else \
            "running the probe guest (probe.test=idle)"
        paths = socks(name)
        proc = start(argv_fn("none" if name == "vmm" else "null", paused), paths)
        try:
            kvm = latency(paths[0], requests, KVM)
            results[name] = {
                **latency(paths[0], requests),
                "kvm_p50_us": kvm["p50_us"], "kvm_p99_us": kvm["p99_us"],
                "pipelined_rps": pipelined(paths[0], max(requests, 20000)),
                "clients_rps": many_clients(paths[1:], max(requests, 20000)),
                "kvm_pipelined_rps": pipelined(paths[0], max(requests, 20000), query=KVM),
                "kvm_clients_rps": many_clients(paths[1:], max(requests, 20000), query=KVM),
            }
            if proc.poll() is not None:
                raise SystemExit(f"{name} died during the benchmark")
        finally:
            stop(proc)
finally:
    shutil.rmtree(tmp, ignore_errors=True)

v, q = results["vmm"], results["qemu"]
print(f"QMP benchmark, query-status unless marked query-kvm ({requests} latency samples; unix sockets; 1 vCPU, {MEM} MiB)")
for name in ("vmm", "qemu"):
    print(f"  {name}: {modes[name]}")
print(f"{'':34}{'vmm':>12}{'QEMU':>12}{'vmm/QEMU':>10}   better")
rows = [
    ("latency p50 (us)", "p50_us", "lower"),
    ("latency p99 (us)", "p99_us", "lower"),
    ("latency mean (us)", "mean_us", "lower"),
    ("query-kvm latency p50 (us)", "kvm_p50_us", "lower"),
    ("query-kvm latency p99 (us)", "kvm_p99_us", "lower"),
    ("throughput, 8 pipelined (req/s)", "pipelined_rps", "higher"),
    (f"throughput, {CLIENTS} clients (req/s)", "clients_rps", "higher"),
    ("query-kvm, 8 pipelined (req/s)", "kvm_pipelined_rps", "higher"),
    (f"query-kvm, {CLIENTS} clients (req/s)", "kvm_clients_rps", "higher"),
]
for label, key, better in rows:
    print(f"{label:34}{v[key]:12.1f}{q[key]:12.1f}{v[key] / q[key]:10.2f}   {better}")
print("ratio = vmm/QEMU: below 1 means vmm is faster for latency; above 1 means vmm has "
      "more throughput")
PY
