#!/usr/bin/env bash
# Boots a demo VM: builds vmm, prepares the guest, boots it and shows what it printed.
# On PVM hosts (no VMX/SVM; unmodified Linux cannot reach userspace there) the guest is the
# project's probe guest; where the host has hardware virtualization, Debian's stock cloud
# kernel is booted too (it stops at "no root filesystem" without an initramfs).
source "$(dirname "$0")/lib.sh"
bash "$ROOT/scripts/deps.sh"
VMM=$(build_vmm)
bash "$ROOT/scripts/probe-guest.sh" >/dev/null

log "booting the probe guest: 2 vCPUs, 256 MiB"
"$VMM" --kernel "$TARGET/probe-guest/bzImage" --cpus 2 --memory 256 \
  --cmdline "console=ttyS0 probe.test=boot"
log "guest powered off; vmm exited with $?"

if [[ -e /sys/module/kvm_intel || -e /sys/module/kvm_amd ]]; then
  KDIR=$(bash "$ROOT/scripts/guest-kernel.sh")
  log "hardware virtualization found: booting Debian's stock kernel (Ctrl-A x quits)"
  "$VMM" --kernel "$KDIR/vmlinuz" --cpus 2 --memory 512 --no-reboot \
    --cmdline "console=ttyS0 panic=-1" || true
else
  log "PVM host (no kvm_intel/kvm_amd): Debian's kernel cannot reach userspace here; see README"
fi
