#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the project's PVM test kernel: Debian's linux-source-6.12 with the patches of
# tests/pvm-kernel/ (boot-option-guarded workarounds for hosts whose KVM emulates guest ring 0,
# see each patch's header) and the config fragment tests/pvm-kernel/config on top of
# `make tinyconfig`. Prints the path of the cached vmlinux (an ELF with the PVH entry note);
# bzImage (gzip), config and System.map sit next to it.
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/vmm/pvm-kernel/<key>/, outside the clone, where <key>
# hashes the source package's version, the patches, the config fragment and RECIPE below. A run
# whose key is built does nothing. Concurrent runs serialize on a lock (flock) and the key's
# directory appears atomically (built aside, then renamed). The source tree is deleted after a
# build unless PVM_KERNEL_KEEP_TREE=1 (then it stays in <key>/tree for quick rebuilds by hand).
source "$(dirname "$0")/lib.sh"

# Bump when the build steps below change in a way that changes the output.
RECIPE=1
PKG=linux-source-6.12
KDIR="$ROOT/tests/pvm-kernel"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/vmm/pvm-kernel"

apt_install "$PKG" build-essential bc bison flex libelf-dev xz-utils patch
version=$(dpkg-query -W -f='${Version}' "$PKG")
patches=("$KDIR"/*.patch)
[[ -e ${patches[0]} && -f $KDIR/config ]] || die "no patches or config in $KDIR"
key=$( {
  echo "recipe $RECIPE"
  echo "$PKG $version"
  sha256sum "${patches[@]}" "$KDIR/config" | awk '{print $1}'
} | sha256sum | cut -c1-16)
OUT="$CACHE/$key"

if [[ -s $OUT/vmlinux ]]; then
  echo "$OUT/vmlinux"
  exit 0
fi
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [[ -s $OUT/vmlinux ]]; then # another run built it while we waited
  echo "$OUT/vmlinux"
  exit 0
fi

work="$CACHE/.build-$key"
rm -rf "$work"
mkdir -p "$work"
log "unpacking $PKG $version into $work"
tar -xf "/usr/src/$PKG.tar.xz" -C "$work"
src="$work/$PKG"
[[ -d $src ]] || die "the $PKG tarball did not unpack to $src"
for p in "${patches[@]}"; do
  log "applying $(basename "$p")"
  patch -d "$src" -p1 -s --no-backup-if-mismatch < "$p"
done

log "configuring (tinyconfig + $(basename "$KDIR")/config)"
make -s -C "$src" tinyconfig >/dev/null
(cd "$src" && scripts/kconfig/merge_config.sh -m .config "$KDIR/config") >/dev/null
make -s -C "$src" olddefconfig
# Every line of the fragment must have survived olddefconfig (a missing dependency drops it).
bad=0
while IFS= read -r line; do
  [[ $line == CONFIG_* ]] || continue
  sym=${line%%=*}
  if [[ ${line#*=} == n ]]; then
    ! grep -q "^$sym=" "$src/.config" || { log "config: $line did not stick"; bad=1; }
  else
    grep -qxF "$line" "$src/.config" || { log "config: $line did not stick"; bad=1; }
  fi
done < "$KDIR/config"
((bad == 0)) || die "the config fragment does not hold (see above)"

log "building (make -j$(nproc) vmlinux bzImage; minutes)"
start=$SECONDS
# Build stamps from the source package, not the clock (reproducible uname -v).
stamp=$(date -u -R -d "@$(stat -c %Y "/usr/src/$PKG.tar.xz")")
make -s -C "$src" -j"$(nproc)" KBUILD_BUILD_TIMESTAMP="$stamp" \
  KBUILD_BUILD_USER=vmm KBUILD_BUILD_HOST=vmm vmlinux bzImage >&2
log "built in $((SECONDS - start)) s"
readelf -n "$src/vmlinux" | grep -q 'Xen.*0x00000012' ||
  die "vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"

stage="$work/out"
mkdir -p "$stage"
cp "$src/vmlinux" "$src/arch/x86/boot/bzImage" "$src/System.map" "$stage/"
cp "$src/.config" "$stage/config"
printf '%s %s\n' "$PKG" "$version" > "$stage/source"
if [[ ${PVM_KERNEL_KEEP_TREE:-0} == 1 ]]; then
  mv "$src" "$stage/tree"
fi
rm -rf "$OUT"
mv "$stage" "$OUT"
rm -rf "$work"
log "cached in $OUT"
echo "$OUT/vmlinux"
