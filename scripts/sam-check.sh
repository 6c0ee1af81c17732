#!/usr/bin/env bash
# Checks and builds the SAM application without an AWS account or Docker:
#   1. installs the build tools (scripts/python-tools.sh) and checks the arm64 Rust target;
#   2. sam validate --lint;
#   3. sam build (cargo lambda build --release --arm64, linked with zig), timed;
#   4. prints the size of each function's bootstrap.
#   scripts/sam-check.sh [--no-build]
#   FEEDS_SAM_QUICK=1 scripts/sam-check.sh   no optimisation and no LTO (the test suite's check that
#                                            the template builds and links for arm64; the
#                                            bootstraps are larger and slower than the shipped
#                                            ones, whose sizes BENCHMARKS.md gives)
# sam build compiles every function into the workspace's shared target/ (target/lambda/<fn>/),
# so the dependencies are compiled once, not once per function; CARGO_TARGET_DIR overrides it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

build=1
case ${1:-} in
  --no-build) build=0 ;;
  "") ;;
  *) echo "usage: scripts/sam-check.sh [--no-build]" >&2; exit 2 ;;
esac

log() { echo "sam-check: $*" >&2; }

"$ROOT/scripts/python-tools.sh"
eval "$("$ROOT/scripts/python-tools.sh" --env)"
# sam needs a region to resolve pseudo parameters; nothing here talks to AWS.
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}
export SAM_CLI_TELEMETRY=0

TARGET=aarch64-unknown-linux-gnu
if ! rustup target list --installed | grep -qx "$TARGET"; then
  log "adding the Rust target $TARGET"
  rustup target add "$TARGET" || { log "rustup could not add $TARGET"; exit 1; }
fi

log "sam validate --lint"
sam validate --lint --template template.yaml

if [[ $build == 0 ]]; then
  exit 0
fi

if [[ ${FEEDS_SAM_QUICK:-0} == 1 ]]; then
  # Optimising and link-time optimising four binaries is most of a release build's time on 2 cores.
  export CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_LTO=off \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=256
  log "quick build: opt-level 0, no LTO (sizes below are not the shipped ones)"
fi
log "sam build (arm64, the release profile or the quick one above: the first build compiles every dependency; minutes on 2 cores)"
start=$(date +%s)
sam build --template template.yaml
log "sam build took $(($(date +%s) - start)) s"

for f in .aws-sam/build/*/bootstrap; do
  printf 'sam-check: %-28s %9d bytes  %s\n' "$(basename "$(dirname "$f")")" "$(stat -c %s "$f")" \
    "$(file -b "$f" | cut -d, -f1-2)" >&2
done
