#!/usr/bin/env bash
# Boots a demo VM: builds vmm, prepares the guest, boots it with a disk and a QMP socket,
# and shows a QMP exchange that ends with an ACPI power-button shutdown.
# On PVM hosts (no VMX/SVM; unmodified Linux cannot reach userspace there) the guest is the
# project's probe guest; where the host has hardware virtualization, Debian's stock cloud
# kernel is booted afterwards too (it stops at "no root filesystem" without an initramfs).
source "$(dirname "$0")/lib.sh"
bash "$ROOT/scripts/deps.sh"
VMM=$(build_vmm)
bash "$ROOT/scripts/probe-guest.sh" >/dev/null

DISK="$TARGET/demo-disk.raw"
SOCK="$TARGET/demo-qmp.sock"
truncate -s 64M "$DISK"
log "booting the probe guest: 2 vCPUs, 256 MiB, $DISK as vda, QMP on $SOCK"
"$VMM" --kernel "$TARGET/probe-guest/bzImage" --cpus 2 --memory 256 --name demo \
  --disk "path=$DISK,id=vda" --qmp "unix:$SOCK" -S \
  --cmdline "console=ttyS0 probe.test=boot,blk-write,blk-read,idle probe.count=64 probe.seed=7" &
VMM_PID=$!
python3 - "$SOCK" <<'PY'
import json, socket, sys, time
path = sys.argv[1]
for _ in range(500):
    try:
        s = socket.socket(socket.AF_UNIX); s.connect(path); break
    except OSError:
        time.sleep(0.01)
f = s.makefile("rwb")
def show(direction, line):
    print(f"{direction} {line.strip()}", flush=True)
show("<-", f.readline().decode())
def execute(cmd, args=None, until=None):
    msg = {"execute": cmd, **({"arguments": args} if args else {})}
    line = json.dumps(msg)
    show("->", line)
    f.write(line.encode() + b"\n"); f.flush()
    while True:
        reply = f.readline().decode()
        if not reply:
            return
        show("<-", reply)
        obj = json.loads(reply)
        if until is None and ("return" in obj or "error" in obj):
            return
        if until is not None and obj.get("event") == until:
            return
execute("qmp_capabilities")
execute("query-status")
execute("cont")
time.sleep(0.5)
execute("query-block")
execute("query-blockstats")
execute("human-monitor-command", {"command-line": "info status"})
execute("system_powerdown", until="SHUTDOWN")
PY
wait "$VMM_PID"
log "guest powered off; vmm exited with $?"

if [[ -e /sys/module/kvm_intel || -e /sys/module/kvm_amd ]]; then
  KDIR=$(bash "$ROOT/scripts/guest-kernel.sh")
  log "hardware virtualization found: booting Debian's stock kernel (Ctrl-A x quits)"
  "$VMM" --kernel "$KDIR/vmlinuz" --cpus 2 --memory 512 --no-reboot \
    --cmdline "console=ttyS0 panic=-1" || true
else
  log "PVM host (no kvm_intel/kvm_amd): Debian's kernel cannot reach userspace here; see README"
fi
