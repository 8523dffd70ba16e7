#!/usr/bin/env bash
# Fetches Debian's stock cloud kernel (the project's reference guest) into target/guest-kernel/:
#   vmlinuz   the bzImage as Debian ships it
#   vmlinux   the uncompressed ELF (with its PVH note), cut from the bzImage's LZ4 payload
#   config    the kernel's build configuration
# Idempotent: does nothing when the files are there. Uses `apt-get download` (no root needed
# for the download itself once package lists exist) and caches the .deb under target/.
source "$(dirname "$0")/lib.sh"

OUT="$TARGET/guest-kernel"
if [[ -s $OUT/vmlinuz && -s $OUT/vmlinux && -s $OUT/config ]]; then
  echo "$OUT"
  exit 0
fi
apt_install lz4
mkdir -p "$OUT/deb"
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
rm -rf root
echo "$OUT"
