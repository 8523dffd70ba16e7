#!/usr/bin/env bash
# Debian 12's libvirt (9.0, its QEMU driver unchanged) driving vmm, for the tests in
# tests/libvirt/ and for trying it by hand.
#
#   scripts/libvirt.sh install    install libvirt-daemon-system, libvirt-clients and
#                                 libvirt-daemon-driver-qemu (idempotent; needs root)
#   scripts/libvirt.sh start VMM  start virtlogd and libvirtd with the configuration below and
#                                 an <emulator> link named qemu-system-x86_64 to VMM
#   scripts/libvirt.sh restart-libvirtd   stop libvirtd only and start it again (domains keep
#                                 running and are reconnected)
#   scripts/libvirt.sh stop       destroy the domains, stop libvirtd and virtlogd
#   scripts/libvirt.sh uri        print the connection URI (virsh -c "$(scripts/libvirt.sh uri)")
#
# There is no systemd here, and the host's libvirt (if any) stays untouched: the daemons run in
# a private mount namespace where /etc/libvirt, /run/libvirt, /var/lib/libvirt,
# /var/cache/libvirt and /var/log/libvirt are directories under target/libvirt/, so their
# configuration, state, capability cache and logs live there (the system's files are copied in
# once). virsh connects with qemu:///system?socket=... from outside. The configuration:
# qemu.conf runs domains as root (no chown of images and sockets); libvirtd.conf logs the QMP
# traffic to target/libvirt/log/libvirtd.log.
source "$(dirname "$0")/lib.sh"

LV="$TARGET/libvirt"
DIRS=(etc:/etc/libvirt run:/run/libvirt lib:/var/lib/libvirt cache:/var/cache/libvirt log:/var/log/libvirt)
SOCK="$LV/run/libvirt-sock"
URI="qemu:///system?socket=$SOCK"

install() {
  apt_install libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu
}

pid_of() { [[ -f $LV/$1.pid ]] && cat "$LV/$1.pid" 2>/dev/null || true; }
alive() { local p; p=$(pid_of "$1"); [[ -n $p ]] && kill -0 "$p" 2>/dev/null; }

# Waits up to $2 tenths of a second for the command $1 to succeed.
wait_for() {
  local i
  for ((i = 0; i < $2; i++)); do
    eval "$1" && return 0
    sleep 0.1
  done
  return 1
}

configure() {
  local d
  for d in "${DIRS[@]}"; do mkdir -p "$LV/${d%%:*}"; done
  if [[ ! -f $LV/etc/.copied ]]; then
    cp -a /etc/libvirt/. "$LV/etc/"
    touch "$LV/etc/.copied"
  fi
  cat >"$LV/etc/qemu.conf" <<'EOF'
# Written by scripts/libvirt.sh: domains run as root, so libvirt changes no owners.
user = "root"
group = "root"
EOF
  cat >"$LV/etc/libvirtd.conf" <<'EOF'
# Written by scripts/libvirt.sh: log the QMP traffic and process handling.
log_filters = "1:qemu.qemu_monitor 1:qemu.qemu_process 1:qemu.qemu_capabilities 3:*"
log_outputs = "1:file:/var/log/libvirt/libvirtd.log"
EOF
}

# Runs "$@" in the daemons' mount namespace: a new one with the bind mounts when no daemon is
# up, else virtlogd's.
in_namespace() {
  if alive virtlogd; then
    nsenter --mount="/proc/$(pid_of virtlogd)/ns/mnt" -- "$@"
  else
    local mounts="" d
    for d in "${DIRS[@]}"; do
      mounts+="mkdir -p ${d#*:} && mount --bind '$LV/${d%%:*}' ${d#*:} && "
    done
    unshare --mount --propagation private -- sh -c "${mounts} exec \"\$@\"" sh "$@"
  fi
}

start_libvirtd() {
  # Pinned to one CPU: libvirt drops its cached capabilities of every emulator (and probes
  # them again, seconds each) when the host CPUID it reads differs from the cached one, and on
  # PVM hosts CPUID differs between CPUs. Domains get every CPU back (libvirt sets their
  # affinity itself).
  in_namespace taskset -c 0 libvirtd --daemon --pid-file "$LV/libvirtd.pid"
  wait_for "alive libvirtd && [[ -S $SOCK ]] && virsh -q -c '$URI' version >/dev/null 2>&1" 300 ||
    die "libvirtd did not come up (see $LV/log/libvirtd.log)"
}

start() {
  local vmm=${1:?usage: scripts/libvirt.sh start VMM}
  [[ -x $vmm ]] || die "$vmm is not an executable"
  alive libvirtd && die "libvirtd is already running (scripts/libvirt.sh stop)"
  install
  configure
  mkdir -p "$LV/bin"
  ln -sfn "$(realpath "$vmm")" "$LV/bin/qemu-system-x86_64"
  if ! alive virtlogd; then
    in_namespace virtlogd --daemon --pid-file "$LV/virtlogd.pid"
    wait_for "alive virtlogd && [[ -S $LV/run/virtlogd-sock ]]" 100 || die "virtlogd did not come up"
  fi
  start_libvirtd
  log "libvirtd is up: virsh -c '$URI'"
}

# Stops the daemon $1 (SIGTERM, then SIGKILL after 10 s).
stop_daemon() {
  local p; p=$(pid_of "$1")
  [[ -n $p ]] || return 0
  kill "$p" 2>/dev/null || true
  wait_for "! kill -0 $p 2>/dev/null" 100 || kill -9 "$p" 2>/dev/null || true
  rm -f "$LV/$1.pid"
}

restart_libvirtd() {
  alive virtlogd || die "the daemons are not running (scripts/libvirt.sh start VMM)"
  stop_daemon libvirtd
  start_libvirtd
}

stop() {
  local d
  if alive libvirtd; then
    for d in $(virsh -q -c "$URI" list --name 2>/dev/null); do
      virsh -q -c "$URI" destroy "$d" >/dev/null 2>&1 || true
    done
  fi
  stop_daemon libvirtd
  stop_daemon virtlogd
  # A domain libvirtd could not destroy (it died first) goes too, by the pid libvirt wrote.
  local f p
  for f in "$LV"/run/qemu/*.pid; do
    [[ -f $f ]] || continue
    p=$(cat "$f" 2>/dev/null) || continue
    [[ $(readlink "/proc/$p/exe" 2>/dev/null) == "$(readlink -f "$LV/bin/qemu-system-x86_64")" ]] &&
      kill -TERM "$p" 2>/dev/null || true
  done
}

case ${1:-} in
  install) install ;;
  start) start "${2:-}" ;;
  restart-libvirtd) restart_libvirtd ;;
  stop) stop ;;
  uri) echo "$URI" ;;
  *) die "usage: scripts/libvirt.sh install|start VMM|restart-libvirtd|stop|uri" ;;
esac
