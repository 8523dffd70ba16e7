#!/usr/bin/env bash
# Builds the probe guest (tests/probe-guest) into target/probe-guest/:
#   bzImage    Linux bzImage (16-bit setup, 32-bit entry at 1 MiB, 64-bit at +0x200)
#   probe.elf  the same guest as an ELF with a PVH note (XEN_ELFNOTE_PHYS32_ENTRY)
# Idempotent: cargo rebuilds only what changed; the images are repacked only
# when their inputs are newer.
#
# Usage: scripts/probe-guest.sh [--test]   (--test also runs the parser unit tests)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/tests/probe-guest"
out="$root/target/probe-guest"
export CARGO_TARGET_DIR="$root/target/probe-guest-build"
mkdir -p "$out"

cd "$src"
if [[ "${1:-}" == "--test" ]]; then
    cargo test --quiet --lib
fi

# The guest: freestanding, static, non-PIE, laid out by link.ld (see build.rs).
cargo rustc --quiet --release --bin probe -- \
    -C relocation-model=static -C target-feature=+crt-static
cargo build --quiet --release --bin mkbzimage

elf="$CARGO_TARGET_DIR/release/probe"
tool="$CARGO_TARGET_DIR/release/mkbzimage"
setup_obj="$CARGO_TARGET_DIR/setup.o"
setup_elf="$CARGO_TARGET_DIR/setup.elf"
setup_bin="$CARGO_TARGET_DIR/setup.bin"

if [[ ! -f "$setup_bin" || setup/setup.S -nt "$setup_bin" ]]; then
    gcc -c -o "$setup_obj" setup/setup.S
    # Linked at 0: offsets in the setup segment are its addresses.
    ld -m elf_x86_64 -Ttext=0 -e 0 -o "$setup_elf" "$setup_obj"
    objcopy -O binary -j .text "$setup_elf" "$setup_bin"
fi

if [[ ! -f "$out/probe.elf" || "$elf" -nt "$out/probe.elf" ]]; then
    cp "$elf" "$out/probe.elf.tmp"
    mv "$out/probe.elf.tmp" "$out/probe.elf"
fi

if [[ ! -f "$out/bzImage" || "$out/probe.elf" -nt "$out/bzImage" || "$setup_bin" -nt "$out/bzImage" || "$tool" -nt "$out/bzImage" ]]; then
    "$tool" "$setup_bin" "$out/probe.elf" "$out/bzImage.tmp"
    mv "$out/bzImage.tmp" "$out/bzImage"
fi

echo "$out/bzImage"
echo "$out/probe.elf"
