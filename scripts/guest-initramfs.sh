#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the busybox initramfs of the real-Linux tests (tests/linux_boot.rs), the Linux demo
# (scripts/demo.sh) and the Linux boot benchmark (scripts/bench-boot.sh). Its /init runs the
# test named by `vmmtest=` on the kernel command line and reports on the console in lines
# starting with `VMMTEST `. Every test first prints
#   VMMTEST init                 as /init's first act (the benchmark's userspace marker)
#   VMMTEST ready cpus=<online CPUs> cpuinfo=<processor entries in /proc/cpuinfo> mem_kib=<MemTotal>
# then:
#   vmmtest=ready    powers off.
#   vmmtest=disks    vda: an ext4 filesystem; vdb: a raw disk; vdc: a read-only raw disk.
#                    First boot (no /direct.bin on vda):
#                      VMMTEST serial vdb=<its serial> vdc=<its serial>
#                      VMMTEST ro vdc=<the kernel's read-only flag of vdc>
#                      writes /hello.txt ("vmmtest ext4 file"), syncs, writes /direct.bin
#                      (the pattern, sectors 0..255) with dd oflag=direct, then
#                      VMMTEST ext4-written hello=<md5> direct=<md5>
#                      writes the pattern (sectors 100..355) to vdb at sector 100 with
#                      oflag=direct and reads it back with iflag=direct:
#                      VMMTEST raw-readback <md5>
#                      VMMTEST raw-read <md5 of vdb's sectors 2048..4095 (its 2nd MiB)>
#                      VMMTEST ro-read <md5 of vdc's first MiB>
#                      VMMTEST ro-write refused <dd's message>   (a write to vdc failed)
#                      VMMTEST rebooting, then `reboot -f` (with reboot=acpi: the FADT's
#                      reset register).
#                    Second boot (vda has /direct.bin):
#                      VMMTEST ext4-readback hello=<md5> direct=<md5>
#                      writes /after-reboot.txt ("written after the reboot"), unmounts vda,
#                      starts acpid, VMMTEST waiting-for-button; the ACPI power button then
#                      prints VMMTEST power-button and powers off.
#   vmmtest=errors   vda: a raw disk whose writes fail (werror=report); vdb: a raw disk whose
#                    writes fail until the host says otherwise (werror=stop).
#                      VMMTEST eio-write status=<dd's exit status> <dd's message>
#                      VMMTEST stop-write start, then the pattern (sectors 100..355) to vdb
#                      at sector 100 with oflag=direct; when dd returns:
#                      VMMTEST stop-write status=<dd's exit status>
#                      VMMTEST stop-readback <md5 of vdb's sectors 100..355, iflag=direct>
#                      then powers off.
#   vmmtest=shell    starts acpid (the power button powers off), prints VMMTEST shell and
#                    runs an interactive shell on the console.
#   anything else    VMMTEST error unknown-test, then power off.
# Failures print `VMMTEST error <what>` and power off. Power off is `poweroff -f` (an ACPI S5
# through the FADT), after which the kernel prints `reboot: Power down`.
# The pattern: sector n (512 bytes) holds the text `vmmtest lba <n>`, padded with spaces to 511
# bytes, then a newline.
#
# /init is lean on purpose: where guest ring 0 is emulated (PVM hosts) a fork+exec costs about
# 0.3 s and every system call about 0.7 ms, and the shell's `read` makes one system call per
# byte. So it uses shell builtins where it can, reads only short files with `read`, and the
# image holds no applet symlinks (unpacking ~400 of them took the kernel 4 s there): busybox's
# standalone shell runs its applets without them once /proc is mounted.
#
# Usage: guest-initramfs.sh [pvm]. Without an argument, for Debian's cloud kernel
# (scripts/guest-kernel.sh): with its virtio-mmio, virtio-blk, ACPI power button and evdev
# modules, gzip-compressed. With `pvm`, for the project-built kernel (scripts/pvm-kernel.sh),
# which has those drivers built in: no modules, and not compressed (inflating the gzip in
# emulated ring 0 took 24 s of a 36 s boot).
#
# Also installs e2fsprogs (mkfs.ext4, debugfs, e2fsck: the tests make and check ext4 images on
# the host). Output: target/guest-initramfs/initrd.cpio.gz, with `pvm`
# target/guest-initramfs/pvm/initrd.cpio (its path is the last line printed).
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

apt_install busybox-static cpio e2fsprogs
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
mkdir -p "$tree"/{bin,dev,proc,sys,tmp,mnt,lib/modules,etc/acpi/PWRF}
cp "$BUSYBOX" "$tree/bin/busybox"
ln -s busybox "$tree/bin/sh"
for m in ${MODULES[@]+"${MODULES[@]}"}; do
  cp "$KDIR/modules/$m.ko" "$tree/lib/modules/$m.ko"
done
printf '%s\n' ${MODULES[@]+"${MODULES[@]}"} > "$tree/lib/modules/load-order"

# One `mount -a` (one exec) mounts all three.
cat > "$tree/etc/fstab" <<'EOF'
proc /proc proc defaults 0 0
sysfs /sys sysfs defaults 0 0
devtmpfs /dev devtmpfs defaults 0 0
EOF

# busybox acpid runs /etc/acpi/PWRF/00000080 for the power button's KEY_POWER press (its
# output goes to acpid's log file, so the line goes to the console explicitly).
cat > "$tree/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/busybox sh
echo "VMMTEST power-button" > /dev/console
exec /bin/busybox poweroff -f
EOF

cat > "$tree/init" <<'EOF'
#!/bin/busybox sh
# The real-Linux test guest (scripts/guest-initramfs.sh describes the tests and their lines).
echo "VMMTEST init"
/bin/busybox mount -a
export PATH=/bin

fail() {
  echo "--- the kernel's last messages ---"
  dmesg | tail -n 40
  echo "VMMTEST error $*"
  poweroff -f
  sleep 60
}

while read -r m; do
  [ -n "$m" ] || continue
  insmod "/lib/modules/$m.ko" || fail "insmod-$m"
done < /lib/modules/load-order

# Kernel messages from here on would interleave with our lines: keep only emergencies (such as
# the final `reboot: Power down`).
echo 1 > /proc/sys/kernel/printk

read -r cmdline < /proc/cmdline
test_name=
for arg in $cmdline; do
  case "$arg" in
    vmmtest=*) test_name=${arg#vmmtest=} ;;
  esac
done

# The number of CPUs in a list like 0-3,5,7-8, into $cpus.
count_cpus() {
  cpus=0
  saved_ifs=$IFS
  IFS=,
  for range in $1; do
    case "$range" in
      *-*) cpus=$((cpus + ${range#*-} - ${range%-*} + 1)) ;;
      *) cpus=$((cpus + 1)) ;;
    esac
  done
  IFS=$saved_ifs
}

# The first word a command printed into /tmp/out, into $word.
first_word() {
  read -r word rest < /tmp/out || word=
}

# The pattern, sectors $1 .. $1+$2-1, into the file $3.
make_pattern() {
  i=0
  while [ "$i" -lt "$2" ]; do
    printf '%-511s\n' "vmmtest lba $(($1 + i))"
    i=$((i + 1))
  done > "$3"
}

# Waits up to 10 s for a block device node.
wait_dev() {
  i=0
  while [ ! -b "$1" ]; do
    [ "$i" -ge 50 ] && fail "no-$1"
    sleep 0.2
    i=$((i + 1))
  done
}

# Starts acpid and returns once it has the button's event device open (so that no press is
# lost).
start_acpid() {
  [ -c /dev/input/event0 ] || fail "no-input-device"
  acpid -f -c /etc/acpi -l /tmp/acpid.log &
  acpid_pid=$!
  i=0
  while :; do
    for fd in /proc/"$acpid_pid"/fd/*; do
      [ "$fd" -ef /dev/input/event0 ] && return 0
    done
    [ "$i" -ge 50 ] && fail "acpid-not-listening"
    sleep 0.2
    i=$((i + 1))
  done
}

read -r online < /sys/devices/system/cpu/online
count_cpus "$online"
grep -c '^processor' /proc/cpuinfo > /tmp/out
first_word
read -r key mem_kib unit < /proc/meminfo
[ "$key" = MemTotal: ] || fail "meminfo"
echo "VMMTEST ready cpus=$cpus cpuinfo=$word mem_kib=$mem_kib"

case "$test_name" in
  ready) ;;
  disks)
    wait_dev /dev/vda
    wait_dev /dev/vdb
    wait_dev /dev/vdc
    mount -t ext4 /dev/vda /mnt || fail "mount-vda"
    if [ ! -e /mnt/direct.bin ]; then
      read -r serial_b < /sys/block/vdb/serial
      read -r serial_c < /sys/block/vdc/serial
      echo "VMMTEST serial vdb=$serial_b vdc=$serial_c"
      read -r ro < /sys/block/vdc/ro
      echo "VMMTEST ro vdc=$ro"
      # Files on ext4: one through the page cache and sync, one past it (O_DIRECT).
      echo "vmmtest ext4 file" > /mnt/hello.txt
      sync
      make_pattern 0 256 /tmp/pattern0
      dd if=/tmp/pattern0 of=/mnt/direct.bin bs=64k oflag=direct 2>/tmp/err ||
        fail "dd-ext4-direct"
      md5sum /mnt/hello.txt /mnt/direct.bin > /tmp/out || fail "md5-ext4"
      { read -r hello rest && read -r direct rest; } < /tmp/out
      echo "VMMTEST ext4-written hello=$hello direct=$direct"
      # The raw disk: written at sector 100 (not page aligned) and read back past the cache.
      make_pattern 100 256 /tmp/pattern100
      dd if=/tmp/pattern100 of=/dev/vdb bs=512 seek=100 oflag=direct conv=notrunc \
        2>/tmp/err || fail "dd-raw-write"
      dd if=/dev/vdb bs=512 skip=100 count=256 iflag=direct 2>/dev/null | md5sum > /tmp/out
      first_word
      echo "VMMTEST raw-readback $word"
      dd if=/dev/vdb bs=64k skip=16 count=16 iflag=direct 2>/dev/null | md5sum > /tmp/out
      first_word
      echo "VMMTEST raw-read $word"
      # The read-only disk: readable, and a write is refused.
      dd if=/dev/vdc bs=64k count=16 iflag=direct 2>/dev/null | md5sum > /tmp/out
      first_word
      echo "VMMTEST ro-read $word"
      if dd if=/tmp/pattern0 of=/dev/vdc bs=4096 count=1 oflag=direct conv=notrunc \
        2>/tmp/err; then
        fail "ro-write-accepted"
      fi
      read -r msg < /tmp/err
      echo "VMMTEST ro-write refused $msg"
      echo "VMMTEST rebooting"
      reboot -f
      sleep 60
      fail "reboot"
    fi
    md5sum /mnt/hello.txt /mnt/direct.bin > /tmp/out || fail "md5-ext4-readback"
    { read -r hello rest && read -r direct rest; } < /tmp/out
    echo "VMMTEST ext4-readback hello=$hello direct=$direct"
    echo "written after the reboot" > /mnt/after-reboot.txt
    umount /mnt || fail "umount-vda"
    start_acpid
    echo "VMMTEST waiting-for-button"
    wait "$acpid_pid"
    fail "acpid-exited"
    ;;
  errors)
    wait_dev /dev/vda
    wait_dev /dev/vdb
    make_pattern 100 256 /tmp/pattern100
    dd if=/tmp/pattern100 of=/dev/vda bs=4096 count=1 oflag=direct conv=notrunc 2>/tmp/err
    status=$?
    msg=
    while read -r line; do
      case "$line" in *error*) msg=$line ;; esac
    done < /tmp/err
    echo "VMMTEST eio-write status=$status $msg"
    echo "VMMTEST stop-write start"
    dd if=/tmp/pattern100 of=/dev/vdb bs=512 seek=100 oflag=direct conv=notrunc 2>/tmp/err
    echo "VMMTEST stop-write status=$?"
    dd if=/dev/vdb bs=512 skip=100 count=256 iflag=direct 2>/dev/null | md5sum > /tmp/out
    first_word
    echo "VMMTEST stop-readback $word"
    ;;
  shell)
    start_acpid
    echo "VMMTEST shell"
    exec setsid cttyhack sh
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
