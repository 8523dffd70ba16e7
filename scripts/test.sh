#!/usr/bin/env bash
# Runs every test of the project: the README's test command, and what CI runs.
#   1. installs what the tests need (idempotent, caches under target/)
#   2. style gates: cargo fmt --check, cargo clippy -D warnings
#   3. the probe guest's host-side unit tests (its ACPI/AML/boot-info parsers)
#   4. the workspace's unit and integration tests, which boot the probe guest and Debian's
#      stock kernel on KVM
#   5. the QMP suite with real clients (PyPI's qemu.qmp: QMPClient, the legacy client,
#      qmp-shell) against vmm running the probe guest, Debian's libvirt 9.0 running
#      probe-guest domains with vmm as their emulator (tests/libvirt), then a 3-minute soak
#      (scripts/soak.sh)
#   6. real Linux guests to userspace (tests/linux_boot.rs), on every KVM host: Debian's stock
#      kernel with hardware virtualization, the project-built kernel (tests/pvm-kernel/) on PVM
#      hosts; scripts/linux-guest.sh decides
#   7. the fuzz targets (tests/fuzz/), built and run for CI's budget: 5 minutes in all
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

bash scripts/deps.sh
bash scripts/probe-guest.sh >/dev/null
bash scripts/guest-kernel.sh >/dev/null
# This host's real Linux guest (on PVM hosts the project-built kernel, cached outside the
# clone: 3-7 minutes once per machine on 2 cores).
bash scripts/linux-guest.sh >/dev/null
bash scripts/qmp-venv.sh >/dev/null

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy -q --workspace --all-targets -- -D warnings

log "probe guest parser tests"
(cd tests/probe-guest && CARGO_TARGET_DIR="$TARGET/probe-guest-build" cargo test -q --lib)

log "workspace tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

log "QMP client tests (qemu.qmp, qmp-shell)"
cargo build -q -p vmm
target/qmp-venv/bin/python -B -m pytest -q tests/qmp

log "libvirt tests (Debian's libvirt 9.0 running vmm as qemu-system-x86_64)"
# The daemons are stopped by the tests' session fixture; this covers a killed pytest.
trap 'bash scripts/libvirt.sh stop >/dev/null 2>&1 || true' EXIT
target/qmp-venv/bin/python -B -m pytest -q -rs tests/libvirt
bash scripts/libvirt.sh stop
trap - EXIT

log "soak: 3 minutes of guest I/O, 8 random QMP clients and reconnect churn (scripts/soak.sh)"
bash scripts/soak.sh 3

log "real Linux guests to userspace (tests/linux_boot.rs)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run -p vmm --test linux_boot --run-ignored only --no-fail-fast
else
  cargo test -p vmm --test linux_boot -- --ignored
fi

log "fuzz targets (scripts/fuzz.sh: build and every target within 5 minutes)"
bash scripts/fuzz.sh
