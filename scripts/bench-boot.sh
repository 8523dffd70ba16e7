#!/usr/bin/env bash
# Boot benchmark: vmm and Debian's QEMU (-M microvm) boot the same probe guest N times each.
# Prints, for each VMM: median and p90 time from process start to the guest's ready line,
# median peak RSS, and the VMM's own memory (RSS minus the guest RAM pages it touched), and the
# vmm/QEMU ratios. Usage: scripts/bench-boot.sh [RUNS]   (default 20)
source "$(dirname "$0")/lib.sh"
RUNS=${1:-20}
bench_setup
MEM_MIB=256
exec python3 - "$VMM" "$KERNEL" "$RUNS" "$MEM_MIB" <<'PY'
import os, statistics, subprocess, sys, time

vmm, kernel, runs, mem_mib = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cmdline = "probe.test=idle"
commands = {
    "vmm": [vmm, "--kernel", kernel, "--cmdline", cmdline, "--memory", str(mem_mib)],
    "qemu": ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off",
             "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", str(mem_mib),
             "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
             "-kernel", kernel, "-append", cmdline],
}

def guest_ram_rss_kib(pid):
    """Rss of the mapping that holds guest RAM (the anonymous mapping of exactly its size)."""
    size_kib = mem_mib * 1024
    best = 0
    with open(f"/proc/{pid}/smaps") as f:
        cur_size = None
        for line in f:
            if line.startswith("Size:"):
                cur_size = int(line.split()[1])
            elif line.startswith("Rss:") and cur_size is not None and cur_size >= size_kib:
                best = max(best, int(line.split()[1]))
    return best

def one(argv):
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    ready = None
    for raw in p.stdout:
        line = raw.decode(errors="replace")
        if ready is None and line.startswith("PROBE ready"):
            ready = time.monotonic() - t0
        if line.startswith("PROBE idle"):
            break
    if ready is None:
        p.kill(); p.wait()
        raise SystemExit(f"{argv[0]} never printed the ready line")
    with open(f"/proc/{p.pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    guest = guest_ram_rss_kib(p.pid)
    p.terminate()
    _, _, usage = os.wait4(p.pid, 0)
    return ready, usage.ru_maxrss, rss - guest

results = {}
for name, argv in commands.items():
    one(argv)  # warm-up: page cache, module loading
    samples = [one(argv) for _ in range(runs)]
    t = sorted(s[0] for s in samples)
    results[name] = {
        "median_ms": statistics.median(t) * 1000,
        "p90_ms": t[int(0.9 * (len(t) - 1))] * 1000,
        "peak_rss_mib": statistics.median(s[1] for s in samples) / 1024,
        "overhead_mib": statistics.median(s[2] for s in samples) / 1024,
    }

print(f"boot to 'PROBE ready', {runs} runs each, {mem_mib} MiB guest, 1 vCPU")
print(f"{'':10}{'median ms':>12}{'p90 ms':>10}{'peak RSS MiB':>14}{'VMM own MiB':>13}")
for name, r in results.items():
    print(f"{name:10}{r['median_ms']:12.1f}{r['p90_ms']:10.1f}{r['peak_rss_mib']:14.1f}{r['overhead_mib']:13.1f}")
v, q = results["vmm"], results["qemu"]
print(f"{'ratio':10}{v['median_ms']/q['median_ms']:12.2f}{v['p90_ms']/q['p90_ms']:10.2f}"
      f"{v['peak_rss_mib']/q['peak_rss_mib']:14.2f}{v['overhead_mib']/q['overhead_mib']:13.2f}")
print("goals: time ratio <= 0.5; vmm's own memory <= 5 MiB")
PY
