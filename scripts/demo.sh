#!/usr/bin/env bash
# Boots a demo VM: builds vmm, prepares the guest, boots it with a disk and a QMP socket, and
# shows a QMP exchange that ends with an ACPI power-button shutdown.
#
# Usage: scripts/demo.sh [probe|linux|linux-shell]
#   probe (default)  the project's probe guest (tests/probe-guest/): boots in milliseconds,
#                    writes and reads its disk, idles; QMP queries, then system_powerdown.
#   linux            real Linux to a busybox shell prompt on the serial console: this host's
#                    guest from scripts/linux-guest.sh (the project-built kernel on PVM hosts,
#                    whose first build takes 3-7 minutes on 2 cores and is cached; Debian's
#                    stock cloud kernel where the host has hardware virtualization). A few
#                    commands are typed at the prompt, then the same QMP exchange; the guest's
#                    acpid powers it off when the button is pressed.
#   linux-shell      the same guest with the serial console on your terminal: type at the
#                    shell yourself (`poweroff -f` or Ctrl-A x ends it); QMP on the socket
#                    printed (e.g. qmp-shell from target/qmp-venv).
source "$(dirname "$0")/lib.sh"
MODE=${1:-probe}
case "$MODE" in
  probe | linux | linux-shell) ;;
  *) die "usage: $0 [probe|linux|linux-shell]" ;;
esac
bash "$ROOT/scripts/deps.sh"
VMM=$(build_vmm)

DISK="$TARGET/demo-disk.raw"
SOCK="$TARGET/demo-qmp.sock"
truncate -s 64M "$DISK"

if [[ $MODE == probe ]]; then
  bash "$ROOT/scripts/probe-guest.sh" >/dev/null
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
  log "real Linux to a shell prompt: scripts/demo.sh linux (or linux-shell to type yourself)"
  exit 0
fi

declare -A guest
while IFS='=' read -r key value; do
  guest[$key]=$value
done < <(bash "$ROOT/scripts/linux-guest.sh")
ARGS=(--kernel "${guest[vmlinux]}" --initrd "${guest[initrd]}"
  --cmdline "${guest[cmdline]} vmmtest=shell" --cpus 2 --memory 256 --name demo-linux
  --disk "path=$DISK,id=vda,serial=demo-disk" --qmp "unix:$SOCK")
log "booting real Linux (${guest[host]} host: ${guest[vmlinux]}) through PVH: 2 vCPUs, 256 MiB,"
log "  $DISK as vda, QMP on $SOCK"

if [[ $MODE == linux-shell ]]; then
  log "the serial console is yours: type at the shell; \`poweroff -f\` or Ctrl-A x ends it"
  exec "$VMM" "${ARGS[@]}"
fi

# A scripted session: the console's output is shown as it comes, commands are typed at each
# prompt, then QMP presses the power button.
python3 - "$VMM" "$SOCK" "${ARGS[@]}" <<'PY'
import json, os, socket, subprocess, sys, threading, time

vmm, sock, args = sys.argv[1], sys.argv[2], sys.argv[3:]
COMMANDS = [
    "uname -sr",
    "cat /sys/devices/system/cpu/online",
    "grep -c ^processor /proc/cpuinfo",
    "head -n 1 /proc/meminfo",
    "cat /sys/block/vda/size /sys/block/vda/serial",
]
PROMPT = b"/ # "
GUARD = 300  # seconds; a PVM host boots this in 10-20 s

p = subprocess.Popen([vmm, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
console = bytearray()
lock = threading.Condition()

def pump():
    while True:
        chunk = os.read(p.stdout.fileno(), 4096)
        if not chunk:
            break
        # busybox's line editor asks the terminal for the cursor position (ESC [6n); there is
        # no terminal here to answer, so do not show the question.
        sys.stdout.buffer.write(chunk.replace(b"\x1b[6n", b""))
        sys.stdout.flush()
        with lock:
            console.extend(chunk)
            lock.notify_all()
    with lock:
        lock.notify_all()

threading.Thread(target=pump, daemon=True).start()

def wait_for(text, start):
    """Waits until `text` appears in the console output after offset `start`; returns the
    offset after it."""
    deadline = time.monotonic() + GUARD
    with lock:
        while True:
            i = console.find(text, start)
            if i >= 0:
                return i + len(text)
            if p.poll() is not None or time.monotonic() > deadline:
                p.kill()
                raise SystemExit(f"\nno {text!r} on the console")
            lock.wait(0.5)

t0 = time.monotonic()
pos = wait_for(b"VMMTEST shell", 0)
pos = wait_for(PROMPT, pos)
print(f"\n[demo.sh] shell prompt after {time.monotonic() - t0:.1f} s", file=sys.stderr)
for cmd in COMMANDS:
    p.stdin.write(cmd.encode() + b"\n")
    p.stdin.flush()
    pos = wait_for(PROMPT, pos)
print("\n[demo.sh] QMP:", file=sys.stderr)

s = socket.socket(socket.AF_UNIX)
s.connect(sock)
f = s.makefile("rwb")
def show(direction, line):
    print(f"{direction} {line.strip()}", flush=True)
show("<-", f.readline().decode())
def execute(cmd, args=None, until=None):
    line = json.dumps({"execute": cmd, **({"arguments": args} if args else {})})
    show("->", line)
    f.write(line.encode() + b"\n")
    f.flush()
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
execute("query-cpus-fast")
execute("query-block")
execute("human-monitor-command", {"command-line": "info status"})
execute("system_powerdown", until="SHUTDOWN")
p.stdin.close()
sys.exit(p.wait(GUARD))
PY
log "guest powered off; vmm exited with $?"
