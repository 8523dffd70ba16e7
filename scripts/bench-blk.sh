#!/usr/bin/env bash
# Block benchmark: the probe guest's blk-bench on the same raw image under vmm and under
# Debian's QEMU (-M microvm, virtio-blk-device, same cache mode). Prints sequential write/read
# MiB/s (1 MiB requests), 4 KiB random-read IOPS at queue depth 1 and 32, host CPU seconds per
# GiB moved (all threads, and without the vCPU threads), and the vmm/QEMU ratios (higher is
# better for throughput, lower for CPU).
# Each VMM runs ROUNDS times, alternating, and the medians are reported (host noise is large
# on shared machines).
# Usage: scripts/bench-blk.sh [SECONDS_PER_PHASE] [IMAGE_MIB] [CACHE] [ROUNDS]
#        (defaults 3, 1024, none, 3)
source "$(dirname "$0")/lib.sh"
SECS=${1:-3}
IMG_MIB=${2:-1024}
CACHE=${3:-none}
ROUNDS=${4:-3}
bench_setup
IMG="$TARGET/bench-blk.raw"
truncate -s "${IMG_MIB}M" "$IMG"
exec python3 - "$VMM" "$KERNEL" "$IMG" "$SECS" "$CACHE" "$ROUNDS" <<'PY'
import os, re, statistics, subprocess, sys, time

vmm, kernel, img, secs, cache, rounds = sys.argv[1:7]
rounds = int(rounds)
cmdline = f"probe.test=blk-bench probe.dev=0 probe.secs={secs}"
qemu_cache = {"none": "cache.direct=on", "writeback": "cache.direct=off",
              "unsafe": "cache.direct=off,cache.no-flush=on"}[cache]
runs = {
    "vmm": [vmm, "--kernel", kernel, "--memory", "256", "--cmdline", cmdline,
            "--disk", f"path={img},cache={cache}"],
    "qemu": ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off",
             "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", "256", "-nodefaults",
             "-no-user-config", "-display", "none", "-serial", "stdio", "-name", "bench,debug-threads=on",
             "-global", "virtio-mmio.force-legacy=false",
             "-drive", f"id=d0,file={img},format=raw,if=none,{qemu_cache}",
             "-device", "virtio-blk-device,drive=d0", "-kernel", kernel, "-append", cmdline],
}

def thread_ticks(pid):
    """CPU ticks per thread name of a running process, from /proc."""
    ticks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        ticks[(tid, name)] = int(fields[11]) + int(fields[12])
    return ticks

def run(argv):
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    os.set_blocking(p.stdout.fileno(), False)
    chunks, last = [], {}
    # Sample per-thread CPU until the guest powers off: vCPU threads ("vcpuN" in vmm,
    # "CPU N/KVM" in QEMU) run the guest; the rest is the VMM's own work.
    while p.poll() is None:
        try:
            last.update(thread_ticks(p.pid))
        except OSError:
            pass
        try:
            data = p.stdout.read()
            if data:
                chunks.append(data)
        except BlockingIOError:
            pass
        time.sleep(0.05)
    rest = p.stdout.read()
    if rest:
        chunks.append(rest)
    out = b"".join(chunks).decode(errors="replace")
    hz = os.sysconf("SC_CLK_TCK")
    vcpu = sum(t for (_, n), t in last.items() if n.startswith("vcpu") or n.startswith("CPU "))
    own = sum(t for (_, n), t in last.items() if not (n.startswith("vcpu") or n.startswith("CPU ")))
    summary = [l for l in out.splitlines() if l.startswith("PROBE blk-bench") and "seq_write_mib_s=" in l]
    if not summary:
        raise SystemExit(f"{argv[0]}: no blk-bench summary\n{out}")
    fields = dict(re.findall(r"(\w+)=(\S+)", summary[0]))
    phases = [dict(re.findall(r"(\w+)=(\S+)", l)) for l in out.splitlines()
              if l.startswith("PROBE blk-bench") and " test=" in l]
    gib = sum(int(ph.get("ios", 0)) * int(ph.get("bs", 0)) for ph in phases) / 2**30
    return {
        "seq_write": float(fields["seq_write_mib_s"]),
        "seq_read": float(fields["seq_read_mib_s"]),
        "iops_qd1": float(fields["rand_read_iops_qd1"]),
        "iops_qd32": float(fields["rand_read_iops_qd32"]),
        "cpu_s_per_gib": (own + vcpu) / hz / gib if gib else float("nan"),
        "vmm_cpu_s_per_gib": own / hz / gib if gib else float("nan"),
    }

samples = {name: [] for name in runs}
for _ in range(rounds):
    for name, argv in runs.items():
        samples[name].append(run(argv))
res = {name: {k: statistics.median(s[k] for s in ss) for k in ss[0]} for name, ss in samples.items()}
print(f"probe blk-bench, {secs} s per phase, cache={cache}, image {os.path.getsize(img) >> 20} MiB, "
      f"median of {rounds} alternating rounds")
cols = [("seq_write", "seq write MiB/s"), ("seq_read", "seq read MiB/s"),
        ("iops_qd1", "4k IOPS qd1"), ("iops_qd32", "4k IOPS qd32"), ("cpu_s_per_gib", "CPU s/GiB"),
        ("vmm_cpu_s_per_gib", "VMM CPU s/GiB")]
print(f"{'':8}" + "".join(f"{h:>17}" for _, h in cols))
for name in ("vmm", "qemu"):
    print(f"{name:8}" + "".join(f"{res[name][k]:17.2f}" for k, _ in cols))
print(f"{'vmm/qemu':8}" + "".join(f"{res['vmm'][k] / res['qemu'][k]:17.2f}" for k, _ in cols))
print("CPU s/GiB counts every thread; VMM CPU s/GiB leaves out the vCPU threads (the guest's own")
print("work), i.e. what the VMM spends on the I/O path.")
print("goal: >= 1.00 on throughput and IOPS, < 1.00 on CPU per GiB")
PY
