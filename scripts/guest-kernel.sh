#!/usr/bin/env bash
# Fetches Debian's stock cloud kernel (the project's reference guest) into target/guest-kernel/:
#   vmlinuz   the bzImage as Debian ships it
#   vmlinux   the uncompressed ELF (with its PVH note), cut from the bzImage's LZ4 payload
#   config    the kernel's build configuration
#   modules/  the few modules a test initramfs needs (scripts/guest-initramfs.sh), as `<name>.ko`,
#             and `release`, the kernel release they were built for
# Idempotent: does nothing when the files are there. Uses `apt-get download` (no root needed
# for the download itself once package lists exist) and caches the .deb under target/.
# Concurrent runs (parallel tests) serialize on a lock; the outputs appear atomically.
source "$(dirname "$0")/lib.sh"

OUT="$TARGET/guest-kernel"
# Virtio over virtio-mmio (found through ACPI), the virtio disk, the ACPI power button and the
# event device interface that makes its key press visible to userspace.
MODULES=(virtio_ring virtio virtio_mmio virtio_blk button evdev)

complete() {
  [[ -s $OUT/vmlinuz && -s $OUT/vmlinux && -s $OUT/config && -s $OUT/modules/release ]] || return 1
  local m
  for m in "${MODULES[@]}"; do
    [[ -s $OUT/modules/$m.ko ]] || return 1
  done
}

if complete; then
  echo "$OUT"
  exit 0
fi
mkdir -p "$OUT/deb"
exec 9>"$OUT/.lock"
flock 9
if complete; then # another run finished it while we waited
  echo "$OUT"
  exit 0
fi
apt_install lz4
cd "$OUT/deb"
if ! ls linux-image-*-cloud-amd64_*.deb >/dev/null 2>&1; then
  apt_update_once
  pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [[ -n $pkg ]] || die "cannot resolve linux-image-cloud-amd64 to a versioned kernel package"
  log "apt-get download $pkg"
  apt-get download -qq "$pkg" >/dev/null
fi
deb=$(ls linux-image-*-cloud-amd64_*.deb | head -1)
rm -rf root && mkdir root
dpkg-deb -x "$deb" root

if [[ ! -s $OUT/vmlinuz || ! -s $OUT/vmlinux || ! -s $OUT/config ]]; then
  vmlinuz=$(ls root/boot/vmlinuz-* | head -1)
  cp "$vmlinuz" "$OUT/vmlinuz.tmp" && mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
  cp root/boot/config-* "$OUT/config"
  # The payload is an LZ4 legacy stream: find its magic (02 21 4c 18) and decompress from there.
  offset=$(grep -obUaP '\x02\x21\x4c\x18' "$OUT/vmlinuz" | head -1 | cut -d: -f1)
  [[ -n $offset ]] || die "no LZ4 payload found in $vmlinuz"
  # lz4 reports trailing garbage after the stream; the ELF is complete by then.
  tail -c +$((offset + 1)) "$OUT/vmlinuz" | lz4 -dc > "$OUT/vmlinux.tmp" 2>/dev/null || true
  head -c 4 "$OUT/vmlinux.tmp" | grep -q $'\x7fELF' || die "decompressed payload is not an ELF"
  mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
fi

# The modules, flat, next to the release they belong to (the vmlinuz above comes from the same
# package, so the vermagic matches).
release=$(basename "$(ls -d root/lib/modules/* | head -1)")
[[ -n $release ]] || die "no lib/modules/<release> in $deb"
rm -rf "$OUT/modules.tmp" && mkdir "$OUT/modules.tmp"
for m in "${MODULES[@]}"; do
  ko=$(find "root/lib/modules/$release/kernel" -name "$m.ko" | head -1)
  [[ -n $ko ]] || die "module $m.ko is not in $deb"
  cp "$ko" "$OUT/modules.tmp/$m.ko"
done
echo "$release" > "$OUT/modules.tmp/release"
rm -rf "$OUT/modules" && mv "$OUT/modules.tmp" "$OUT/modules"
rm -rf root
echo "$OUT"
