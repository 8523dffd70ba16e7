#!/usr/bin/env bash
# Creates target/qmp-venv (python3 -m venv) with the QMP client test tools: qemu.qmp 0.0.6
# (QMPClient, the legacy sync QEMUMonitorProtocol and qmp-shell), pytest, pexpect and mfusepy
# 3.1.1 (ctypes bindings for libfuse 3, used by tests/qmp/hangfs.py; the library itself is
# Debian's libfuse3-3, installed with fuse3 by scripts/deps.sh).
# Idempotent: nothing is downloaded when the pinned versions are already installed.
# Prints the venv's python. Usage: scripts/qmp-venv.sh
source "$(dirname "$0")/lib.sh"
VENV="$TARGET/qmp-venv"
PY="$VENV/bin/python"
PKGS=("qemu.qmp==0.0.6" "pytest" "pexpect" "mfusepy==3.1.1")
STAMP="$VENV/.installed"
WANT="${PKGS[*]}"

if [[ ! -x $PY ]]; then
  python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
if [[ ! -f $STAMP ]] || [[ $(cat "$STAMP") != "$WANT" ]] ||
   ! "$PY" -c 'import qemu.qmp, qemu.qmp.legacy, pytest, pexpect, mfusepy' 2>/dev/null; then
  log "pip install ${PKGS[*]}"
  "$PY" -m pip install -q --disable-pip-version-check "${PKGS[@]}" >&2
  [[ $("$PY" -c 'from importlib.metadata import version; print(version("qemu.qmp"))') == 0.0.6 ]] ||
    die "qemu.qmp 0.0.6 did not install"
  [[ $("$PY" -c 'from importlib.metadata import version; print(version("mfusepy"))') == 3.1.1 ]] ||
    die "mfusepy 3.1.1 did not install"
  printf '%s' "$WANT" >"$STAMP"
fi
echo "$PY"
