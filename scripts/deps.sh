#!/usr/bin/env bash
# Installs the host packages the build, tests and demo need (idempotent; needs root to install).
source "$(dirname "$0")/lib.sh"
# lz4: unpacks Debian's kernel; util-linux: unshare/setpriv for the /dev/kvm tests;
# qemu-system-x86: QEMU 7.2 for the image-locking cross-test (tests/blk.rs), the benchmarks and
# the hung-storage comparison (tests/qmp/test_hangfs.py); fuse3: fusermount3 and libfuse3-3 (the
# library mfusepy loads) for tests/qmp/hangfs.py, the FUSE filesystem whose calls can hang.
apt_install lz4 util-linux qemu-system-x86 fuse3
# libvirt-daemon-system, libvirt-clients, libvirt-daemon-driver-qemu: tests/libvirt (Debian's
# libvirt 9.0 with vmm as a domain's emulator); the list lives in scripts/libvirt.sh.
bash "$ROOT/scripts/libvirt.sh" install
