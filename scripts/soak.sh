#!/usr/bin/env bash
# The soak test: scripts/soak.sh MINUTES (default 3, what scripts/test.sh runs).
# The probe guest's io-loop verifies every read while 8 QMP clients issue random commands
# (queries, stop/cont, signal connect/disconnect, injected faults and their removal, yank,
# blockdev-add/del) and reconnect, and one more churns connections; then it checks the image
# against the guest's log, vmm's descriptors, threads and RSS against the baseline, its stderr
# and exit, and prints a report (scripts/soak/soak.py). VMM_BIN selects the binary (default:
# the debug build, as the QMP suite tests).
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

minutes="${1:-3}"
bash scripts/probe-guest.sh >/dev/null
bash scripts/qmp-venv.sh >/dev/null
if [[ -z "${VMM_BIN:-}" ]]; then
  cargo build -q -p vmm
  VMM_BIN="${CARGO_TARGET_DIR:-$TARGET}/debug/vmm"
fi
exec target/qmp-venv/bin/python -B scripts/soak/soak.py --vmm "$VMM_BIN" \
  --kernel "$TARGET/probe-guest/bzImage" --minutes "$minutes"
