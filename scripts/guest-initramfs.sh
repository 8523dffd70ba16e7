#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the initramfs of the full-Linux-boot tests (tests/linux_boot.rs) for Debian's cloud
# kernel (scripts/guest-kernel.sh): a static busybox, the kernel's virtio-mmio, virtio-blk,
# ACPI power button and evdev modules, and an /init that runs the test named by `vmmtest=` on
# the kernel command line and reports on the console in lines starting with `VMMTEST `:
#   vmmtest=boot         VMMTEST ready cpus=<online CPUs> mem_kib=<MemTotal>, then
#                        VMMTEST vda <size of /dev/vda in 512-byte sectors, or none>; power off
#   vmmtest=dd           VMMTEST vda-device <sysfs path of vda's virtio device>; writes a 1 MiB
#                        pattern to /dev/vda at sector `vmmtest.lba=` (default 0) and reads it
#                        back past the page cache: VMMTEST dd-write ok; then, if /dev/vdb
#                        exists, the md5 of its first MiB: VMMTEST vdb-md5 <md5>; power off
#   vmmtest=powerbutton  VMMTEST waiting-for-button once busybox acpid listens; the ACPI power
#                        button then prints VMMTEST power-button and powers off
#   anything else        VMMTEST error unknown-test, then power off
# Failures print `VMMTEST error <what>` and power off. Power off is `poweroff -f` (an ACPI S5
# through the FADT), after which the kernel prints `reboot: Power down`.
# The sector pattern written by `dd`: 2048 sectors of 512 bytes; the sector at LBA n holds the
# text `vmmtest lba <n>`, padded with spaces to 511 bytes, then a newline.
#
# Usage: guest-initramfs.sh [pvm]. With `pvm`, the same image without modules for the PVM test
# kernel (scripts/pvm-kernel.sh, tests/linux_pvm.rs), which has its drivers built in, and not
# compressed: where guest ring 0 is emulated, inflating the 1 MB gzip took the kernel 24 s
# (of a 36 s boot). The boot test is then the one to use (each fork+exec costs ~0.7 s there).
#
# Output: target/guest-initramfs/initrd.cpio.gz, with `pvm` target/guest-initramfs/pvm/initrd.cpio
# (its path is the last line printed).
# Idempotent (rebuilt only when this script, busybox or the modules change) and reproducible
# (sorted newc archive, fixed timestamps and owners, gzip -n).
source "$(dirname "$0")/lib.sh"

MODE=${1:-stock}
case "$MODE" in
  stock)
    OUT="$TARGET/guest-initramfs"
    MODULES=(virtio_ring virtio virtio_mmio virtio_blk button evdev) # load order
    KDIR=$(bash "$ROOT/scripts/guest-kernel.sh")
    IMG="$OUT/initrd.cpio.gz"
    compress() { gzip -n -9; }
    ;;
  pvm)
    OUT="$TARGET/guest-initramfs/pvm"
    MODULES=()
    IMG="$OUT/initrd.cpio"
    compress() { cat; }
    ;;
  *) die "usage: $0 [pvm]" ;;
esac

apt_install busybox-static cpio
BUSYBOX=/bin/busybox
file -b "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' ||
  ldd "$BUSYBOX" 2>&1 | grep -q 'not a dynamic executable' ||
  die "$BUSYBOX is not the static busybox (package busybox-static)"

mkdir -p "$OUT"
# What the image is made of: a change to any of these rebuilds it.
stamp=$( {
  sha256sum "$0" "$BUSYBOX"
  echo "$MODE"
  for m in ${MODULES[@]+"${MODULES[@]}"}; do sha256sum "$KDIR/modules/$m.ko"; done
} | awk '{print $1}' | sha256sum | cut -d' ' -f1)
if [[ -s $IMG && -f $OUT/stamp && $(cat "$OUT/stamp") == "$stamp" ]]; then
  echo "$IMG"
  exit 0
fi
exec 9>"$OUT/.lock"
flock 9
if [[ -s $IMG && -f $OUT/stamp && $(cat "$OUT/stamp") == "$stamp" ]]; then
  echo "$IMG"
  exit 0
fi

log "building $IMG"
tree="$OUT/tree"
rm -rf "$tree"
mkdir -p "$tree"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,root,lib/modules,etc/acpi/PWRF}
cp "$BUSYBOX" "$tree/bin/busybox"
# Every applet as a symlink at its usual place (bin/sh, sbin/insmod, usr/bin/md5sum, ...).
for applet in $("$BUSYBOX" --list-full); do
  [[ -e $tree/$applet || -L $tree/$applet ]] || ln -s /bin/busybox "$tree/$applet"
done
for m in ${MODULES[@]+"${MODULES[@]}"}; do
  cp "$KDIR/modules/$m.ko" "$tree/lib/modules/$m.ko"
done
printf '%s\n' ${MODULES[@]+"${MODULES[@]}"} > "$tree/lib/modules/load-order"

# busybox acpid runs /etc/acpi/PWRF/00000080 for the power button's KEY_POWER press.
cat > "$tree/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/busybox sh
echo "VMMTEST power-button"
exec /bin/busybox poweroff -f
EOF

cat > "$tree/init" <<'EOF'
#!/bin/busybox sh
# The full-Linux-boot test guest (scripts/guest-initramfs.sh describes the tests).
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

fail() {
  echo "--- the kernel's last messages ---"
  dmesg | tail -n 40
  echo "VMMTEST error $*"
  poweroff -f
  sleep 60
}

for m in $(cat /lib/modules/load-order); do
  insmod "/lib/modules/$m.ko" || fail "insmod-$m"
done

# Kernel messages from here on would interleave with our lines: keep only emergencies (such as
# the final `reboot: Power down`).
echo 1 > /proc/sys/kernel/printk

# The parameters we take from the kernel command line.
test_name=
lba=0
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    vmmtest=*) test_name=${arg#vmmtest=} ;;
    vmmtest.lba=*) lba=${arg#vmmtest.lba=} ;;
  esac
done

# The number of CPUs in a list like 0-3,5,7-8.
count_cpus() {
  n=0
  for range in $(echo "$1" | tr ',' ' '); do
    case "$range" in
      *-*) n=$((n + ${range#*-} - ${range%-*} + 1)) ;;
      *) n=$((n + 1)) ;;
    esac
  done
  echo "$n"
}

# Waits up to 10 s for a block device node; true when it is there.
wait_dev() {
  i=0
  while [ ! -b "$1" ]; do
    [ "$i" -ge 100 ] && return 1
    sleep 0.1
    i=$((i + 1))
  done
}

case "$test_name" in
  boot)
    cpus=$(count_cpus "$(cat /sys/devices/system/cpu/online)")
    mem=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    echo "VMMTEST ready cpus=$cpus mem_kib=$mem"
    # Drivers are probed by now (modules loaded above, or built in).
    if [ -r /sys/block/vda/size ]; then
      echo "VMMTEST vda $(cat /sys/block/vda/size)"
    else
      echo "VMMTEST vda none"
    fi
    ;;
  dd)
    case "$lba" in '' | *[!0-9]*) fail "bad-lba" ;; esac
    wait_dev /dev/vda || fail "no-vda"
    # Where the disk came from: a virtio-mmio device that ACPI describes shows up as
    # /sys/devices/platform/LNRO0005:<n>/virtio<m>.
    echo "VMMTEST vda-device $(readlink -f /sys/block/vda/device)"
    # 2048 sectors; the one at LBA n says `vmmtest lba <n>` (511 bytes with padding, newline).
    i=0
    while [ "$i" -lt 2048 ]; do
      printf '%-511s\n' "vmmtest lba $((lba + i))"
      i=$((i + 1))
    done > /tmp/pattern
    [ "$(wc -c < /tmp/pattern)" -eq 1048576 ] || fail "pattern-size"
    dd if=/tmp/pattern of=/dev/vda bs=512 seek="$lba" conv=notrunc 2>/dev/null || fail "dd-write"
    sync
    # Read it back past the page cache's copy of the device.
    echo 3 > /proc/sys/vm/drop_caches
    [ "$(dd if=/dev/vda bs=512 skip="$lba" count=2048 2>/dev/null | md5sum)" = \
      "$(md5sum < /tmp/pattern)" ] || fail "dd-readback"
    echo "VMMTEST dd-write ok"
    # vdb is optional. virtio_blk probed every virtio device while insmod ran, so a second
    # disk is there by now if the machine has one.
    if [ -b /dev/vdb ]; then
      sum=$(dd if=/dev/vdb bs=1M count=1 2>/dev/null | md5sum | cut -d' ' -f1)
      echo "VMMTEST vdb-md5 $sum"
    fi
    ;;
  powerbutton)
    # acpid opens /dev/input/event0, event1, ... and, in the foreground with -d, logs to the
    # console; the KEY_POWER press runs /etc/acpi/PWRF/00000080.
    [ -e /dev/input/event0 ] || fail "no-input-device"
    acpid -f -d -c /etc/acpi &
    acpid_pid=$!
    # Announce only once acpid has the event devices open, so that a press is never lost.
    i=0
    until ls -l "/proc/$acpid_pid/fd" 2>/dev/null | grep -q /dev/input/event; do
      [ "$i" -ge 100 ] && fail "acpid-not-listening"
      sleep 0.1
      i=$((i + 1))
    done
    echo "VMMTEST waiting-for-button"
    wait "$acpid_pid"
    fail "acpid-exited"
    ;;
  *)
    fail "unknown-test"
    ;;
esac
poweroff -f
sleep 60
EOF
chmod 755 "$tree/init" "$tree/etc/acpi/PWRF/00000080"

# Reproducible: fixed mtimes, root-owned entries, sorted names, no gzip name/time.
find "$tree" -exec touch -h -d @0 {} +
(cd "$tree" && find . -mindepth 1 | LC_ALL=C sort |
  cpio -o -H newc -R 0:0 --reproducible --quiet) | compress > "$IMG.tmp"
mv "$IMG.tmp" "$IMG"
echo "$stamp" > "$OUT/stamp"
rm -rf "$tree"
log "built $IMG ($(stat -c %s "$IMG") bytes)"
echo "$IMG"
