#!/usr/bin/env bash
# Builds the fuzz targets of tests/fuzz/ (cargo-fuzz, libFuzzer, nightly) and runs each for
# its share of a bounded time; fails if any target finds a crash, a hang or an OOM.
#
#   scripts/fuzz.sh [SECONDS_TOTAL] [TARGET...]   build, then fuzz (default: 270 s in all,
#                                                 the build included, to fit CI's 5-minute box)
#   scripts/fuzz.sh --merge [TARGET...]           merge what earlier runs found into the
#                                                 committed corpus (minimized)
#   scripts/fuzz.sh --list                        the targets
#
# The committed corpus (tests/fuzz/corpus/<target>/, written by tests/fuzz/make-corpus.py with
# the dictionaries in tests/fuzz/dict/) seeds every run; new inputs go to
# target/fuzz/corpus/<target>/ and carry over between runs on this machine. A crash is left in
# target/fuzz/artifacts/<target>/ with the command that reproduces it.
#
# Environment: FUZZ_SANITIZER (none by default, which builds and runs about twice as fast;
# address for AddressSanitizer), FUZZ_JOBS (cargo's build jobs).
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

FUZZ_DIR=tests/fuzz
OUT="$TARGET/fuzz"
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
SANITIZER=${FUZZ_SANITIZER:-none}
START=$SECONDS

targets() {
  sed -n 's/^name = "\([a-z_]*\)"$/\1/p' "$FUZZ_DIR/Cargo.toml"
}

MODE=run
TOTAL=270
case ${1:-} in
  --list) targets; exit 0 ;;
  --merge) MODE=merge; shift ;;
  '' | *[!0-9]*) ;;
  *) TOTAL=$1; shift ;;
esac
if (($#)); then
  SELECTED=("$@")
  for t in "${SELECTED[@]}"; do targets | grep -qx "$t" || die "no fuzz target '$t' (scripts/fuzz.sh --list)"; done
else
  mapfile -t SELECTED < <(targets)
fi

# What the build needs: a nightly toolchain (cargo-fuzz's instrumentation flags are
# nightly-only) and cargo-fuzz itself. Both are installed once.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  log "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal >/dev/null
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked -q
fi

log "building ${#SELECTED[@]} fuzz targets (sanitizer: $SANITIZER)"
build_args=(--fuzz-dir "$FUZZ_DIR" --target-dir "$OUT" --sanitizer "$SANITIZER")
[[ -n ${FUZZ_JOBS:-} ]] && export CARGO_BUILD_JOBS=$FUZZ_JOBS
if ((${#SELECTED[@]} == $(targets | wc -l))); then
  cargo +nightly fuzz build "${build_args[@]}"
else
  for t in "${SELECTED[@]}"; do cargo +nightly fuzz build "${build_args[@]}" "$t"; done
fi
BIN="$OUT/$TRIPLE/release"
BUILT=$((SECONDS - START))
log "built in ${BUILT}s"

if [[ $MODE == merge ]]; then
  for t in "${SELECTED[@]}"; do
    mkdir -p "$OUT/corpus/$t" "$FUZZ_DIR/corpus/$t"
    log "merging target/fuzz/corpus/$t into $FUZZ_DIR/corpus/$t"
    "$BIN/$t" -merge=1 "$FUZZ_DIR/corpus/$t" "$OUT/corpus/$t" 2>&1 | tail -1
  done
  exit 0
fi

# Each target gets an equal share of what the build left, at least 5 s.
left=$((TOTAL - BUILT))
share=$((left / ${#SELECTED[@]}))
if ((share < 5)); then
  log "warning: the build took ${BUILT}s of ${TOTAL}s; running each target for 5s anyway"
  share=5
fi
log "fuzzing each target for ${share}s"

failed=()
for t in "${SELECTED[@]}"; do
  corpus="$OUT/corpus/$t"
  artifacts="$OUT/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  logfile="$OUT/$t.log"
  stamp="$OUT/.run-$t"
  touch "$stamp"
  dict=()
  [[ -f $FUZZ_DIR/dict/$t.dict ]] && dict=(-dict="$FUZZ_DIR/dict/$t.dict")
  # The targets' scratch files (images, kernels, schema directories) go to a directory of
  # their own, removed after the run.
  scratch="$OUT/tmp/$t"
  rm -rf "$scratch" && mkdir -p "$scratch"
  # -timeout: an input that runs for 10 s is a hang; -rss_limit_mb: 2 GiB is an OOM.
  if TMPDIR="$scratch" "$BIN/$t" -max_total_time="$share" -timeout=10 -rss_limit_mb=2048 \
      "${dict[@]}" -print_final_stats=1 -artifact_prefix="$artifacts/" \
      "$corpus" "$FUZZ_DIR/corpus/$t" >"$logfile" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logfile")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logfile")
    cov=$(grep -o 'cov: [0-9]*' "$logfile" | tail -1)
    log "$t: ok, $runs runs ($rate/s), $cov"
  else
    failed+=("$t")
    log "$t: FAILED (log: ${logfile#"$ROOT"/})"
    grep -E "panicked at|^SUMMARY|Test unit written" "$logfile" | head -5 >&2 || true
    find "$artifacts" -type f -newer "$stamp" | while read -r a; do
      log "  reproduce: ${BIN#"$ROOT"/}/$t ${a#"$ROOT"/}"
    done
  fi
  rm -rf "$scratch"
done

log "done in $((SECONDS - START))s"
((${#failed[@]} == 0)) || die "fuzz targets failed: ${failed[*]}"
