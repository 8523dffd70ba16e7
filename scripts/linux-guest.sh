#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Decides which real Linux guest this host boots, and with which kernel command line: the one
# place that does, for tests/linux_boot.rs, scripts/demo.sh and scripts/bench-boot.sh. Builds
# or fetches what it picks, then prints `key=value` lines (the value is the rest of the line):
#   host=hardware|pvm
#   vmlinux=<ELF vmlinux with a PVH note>
#   bzimage=<bzImage>
#   initrd=<initramfs of scripts/guest-initramfs.sh>
#   cmdline=<kernel command line; callers append `vmmtest=<test>`>
#
# - Hardware virtualization (kvm_intel or kvm_amd loaded): Debian's stock cloud kernel
#   (scripts/guest-kernel.sh) and the initramfs with its modules.
# - A PVM host (kvm_pvm loaded; guest ring 0 is emulated): the project-built kernel
#   (scripts/pvm-kernel.sh; minutes on first use, then cached) and the uncompressed initramfs
#   without modules. Its command line adds the boot options of the kernel's workarounds
#   (tests/pvm-kernel/*.patch) and masks what the emulator cannot run (the host's CPUID shows
#   through in emulated ring 0): no XSAVE, no FSGSBASE, and the features listed in
#   clearcpuid (the kernel keeps only 128 bytes of that option; keep it short).
#   These are the test's choices: vmm itself never guesses the host.
# - Anything else (no KVM module): fails, so that a test run there cannot pass silently.
#
# Both command lines: console on COM1, reboot on panic (with --no-reboot: exit), reboot
# through the ACPI reset register (the PVM host's emulator cannot run the triple fault of
# reboot=t), and a quiet kernel (every console byte is a VM exit).
source "$(dirname "$0")/lib.sh"

COMMON="console=ttyS0 panic=-1 reboot=acpi quiet"
PVM_OPTIONS="skip_int3_selftest syscall_pf_fixup skip_fpu_fwait no-kvm-hypercalls noxsave nofsgsbase"
PVM_OPTIONS+=" clearcpuid=smap,popcnt,cx16,rdrand,rdseed,erms,fsrm,rtm,hle,umip,pku,avx,avx2,avx512f,bmi1,bmi2"
PVM_OPTIONS+=" 8250.nr_uarts=1"

if [[ -e /sys/module/kvm_intel || -e /sys/module/kvm_amd ]]; then
  initrd=$(bash "$ROOT/scripts/guest-initramfs.sh")
  kdir=$(bash "$ROOT/scripts/guest-kernel.sh")
  echo "host=hardware"
  echo "vmlinux=$kdir/vmlinux"
  echo "bzimage=$kdir/vmlinuz"
  echo "initrd=$initrd"
  echo "cmdline=$COMMON"
elif [[ -e /sys/module/kvm_pvm ]]; then
  vmlinux=$(bash "$ROOT/scripts/pvm-kernel.sh")
  initrd=$(bash "$ROOT/scripts/guest-initramfs.sh" pvm)
  echo "host=pvm"
  echo "vmlinux=$vmlinux"
  echo "bzimage=$(dirname "$vmlinux")/bzImage"
  echo "initrd=$initrd"
  echo "cmdline=$COMMON $PVM_OPTIONS"
else
  die "no KVM here that can run Linux to userspace (neither kvm_intel, kvm_amd nor kvm_pvm is loaded)"
fi
