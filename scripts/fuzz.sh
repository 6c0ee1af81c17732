#!/usr/bin/env bash
# Fuzzes the parsers that take untrusted input, with cargo-fuzz (libFuzzer, nightly toolchain):
#   request_body  POST bodies: NewActivity / FollowRequest parsing and validation
#   activity_patch  PATCH bodies: ActivityPatch parsing, checks, and the changes applied
#   cursor        pagination cursors: CursorCodec::decode on any string, encode/decode round trips
#   sqs_message   fan-out queue bodies: FanoutJob parsing, Fanout::run_message on an SQLite world
#
#   scripts/fuzz.sh [seconds-per-target]    each target for that long (default 30), then a summary
#
# Installs cargo-fuzz on first use. The build (one for all targets, reused by the runs) and the
# corpus live under $FEEDS_STATE_DIR/fuzz (default <repo>/.local/fuzz), so a second run rebuilds
# nothing; crashing inputs go to fuzz/artifacts/<target>/. Exits non-zero when a target crashed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${FEEDS_STATE_DIR:-$ROOT/.local}
SECS=${1:-30}
CARGO_FUZZ_VERSION=0.13.2
TARGETS=(request_body activity_patch cursor sqs_message)
# No sanitizer: the fuzzed code has no `unsafe`; AddressSanitizer would double build and run time
# and find nothing the Rust checks do not (overflow and debug assertions stay on).
FLAGS=(--sanitizer none --target-dir "$STATE/fuzz/target")

log() { echo "fuzz.sh: $*" >&2; }
die() { log "$*"; exit 1; }

[[ $SECS =~ ^[1-9][0-9]*$ ]] || die "usage: $0 [seconds-per-target]"
cargo +nightly --version >/dev/null 2>&1 ||
  die "the nightly Rust toolchain is missing (rustup toolchain install nightly)"
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION (first use: a few minutes)"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

cd "$ROOT/fuzz"
t0=$SECONDS
log "building ${TARGETS[*]}"
cargo +nightly fuzz build "${FLAGS[@]}"
build_secs=$((SECONDS - t0))
log "built in $build_secs s"

summary=()
crashed=0
for target in "${TARGETS[@]}"; do
  corpus=$STATE/fuzz/corpus/$target
  artifacts=$ROOT/fuzz/artifacts/$target
  mkdir -p "$corpus" "$artifacts"
  dict=()
  [[ $target != cursor ]] && dict=(-dict="$ROOT/fuzz/dict/json.dict")
  out=$STATE/fuzz/$target.log
  log "running $target for ${SECS} s"
  set +e
  cargo +nightly fuzz run "${FLAGS[@]}" "$target" "$corpus" "$ROOT/fuzz/seeds/$target" -- \
    -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "${dict[@]}" >"$out" 2>&1
  status=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -n 1)
  if [[ -z $runs ]]; then
    # A crash ends the run before the final stats: the last status line has the count.
    runs=$(grep -oE '^#[0-9]+' "$out" | tail -n 1 | tr -d '#')
  fi
  # libFuzzer stops at the first crash (or timeout, or out-of-memory) and writes its input.
  found=0
  if ((status != 0)); then
    crashed=1
    found=$(grep -c 'Test unit written to' "$out" || true)
    ((found == 0)) && found=1
    log "$target failed (exit $status); its log: $out"
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$out" | head -n 10 >&2 || true
  fi
  summary+=("$(printf '%-13s %12s inputs tried  %6s in corpus  %s crashes' "$target" "${runs:-?}" \
    "$(find "$corpus" -type f | wc -l)" "$found")")
done

echo "fuzz.sh: ${SECS} s per target (build: $build_secs s)"
printf '%s\n' "${summary[@]}"
if ((crashed)); then
  echo "fuzz.sh: crashes found; inputs in fuzz/artifacts/ (reproduce: cd fuzz && cargo +nightly fuzz run ${FLAGS[*]} <target> <input>)"
  exit 1
fi
echo "fuzz.sh: no crashes"
