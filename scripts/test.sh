#!/usr/bin/env bash
# Runs every test of the project: the README's test command, and what CI runs.
#   1. installs what the tests need (idempotent, caches under target/)
#   2. style gates: cargo fmt --check, cargo clippy -D warnings
#   3. the probe guest's host-side unit tests (its ACPI/AML/boot-info parsers)
#   4. the workspace's unit and integration tests, which boot the probe guest and Debian's
#      stock kernel on KVM (tests needing hardware virtualization skip themselves on PVM hosts)
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

bash scripts/deps.sh
bash scripts/probe-guest.sh >/dev/null
bash scripts/guest-kernel.sh >/dev/null

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
