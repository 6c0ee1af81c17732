#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs and starts Cassandra (and a second node with
# password authentication) and ElasticMQ, stopping afterwards only what it started; installs the
# Python tools (moto's server, which the realtime tests start, among them); checks
# formatting; runs every test against the real services; builds the functions' binaries and starts
# each as Lambda does on its sample event; brings the local Lambda stack up (cargo lambda watch and
# the local SQS trigger) for a round trip through it; runs the benchmark at its tiny size, Schemathesis
# against the OpenAPI document and the fuzz targets for a bounded time; then validates and builds
# the SAM template, and runs the same binaries under `sam local invoke` and `sam local start-api`
# in Docker (scripts/sam-local.sh check: installs and starts the engine when none runs).
#   FEEDS_SKIP_SAM=1 scripts/test.sh        skip `sam validate --lint`, `sam build` and `sam local`
#   FEEDS_SKIP_SAM_LOCAL=1 scripts/test.sh  skip only `sam local` (Docker)
#   FEEDS_SKIP_FUZZ=1 scripts/test.sh       skip the fuzz targets (their first build takes minutes)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
log() { echo "test.sh: $*" >&2; }
# Runs one stage and logs its time; the summary at the end lists them all.
t_all=$SECONDS
timings=()
stage() {
  local name=$1 t=$SECONDS
  shift
  log "$name"
  "$@"
  timings+=("$(printf '%5d s  %s' $((SECONDS - t)) "$name")")
}

started=()
cleanup() {
  for service in "${started[@]}"; do
    bash "scripts/$service.sh" stop || log "could not stop $service"
  done
}
trap cleanup EXIT

start_services() {
  for service in cassandra elasticmq cassandra-auth; do
    if bash "scripts/$service.sh" status >/dev/null 2>&1; then
      log "$service is already running: using it"
    else
      bash "scripts/$service.sh" start
      started+=("$service")
    fi
  done
}
stage "starting Cassandra, the password-auth node and ElasticMQ" start_services
# moto's server, the Management API the realtime tests post to, lives in the tools' venv.
stage "installing the Python tools (SAM CLI, cargo-lambda, moto)" bash scripts/python-tools.sh

export FEEDS_CASSANDRA_NODES=${FEEDS_CASSANDRA_NODES:-127.0.0.1:9042}
export FEEDS_SQS_ENDPOINT=${FEEDS_SQS_ENDPOINT:-http://127.0.0.1:9324}
# ElasticMQ takes any credentials; the SDK only needs some.
export AWS_REGION=${AWS_REGION:-us-east-1} AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-local} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-local}

stage "checking formatting" cargo fmt --all -- --check
stage "clippy: every target of every crate, warnings are errors" \
  cargo clippy --workspace --all-targets --locked -- -D warnings
stage "building the tests" cargo test --workspace --locked --no-run
stage "running the tests" cargo test --workspace --locked --no-fail-fast

# The dev profile: the same code as the release binaries, which `sam build` below compiles and links
# for arm64; an x86 release build here would add minutes and test nothing more.
stage "building the functions' binaries (dev profile)" \
  cargo build --locked -p follow -p post-activity -p get-feed -p fanout -p realtime
binaries=${CARGO_TARGET_DIR:-target}/debug
[[ $binaries == /* ]] || binaries=$ROOT/$binaries
stage "starting each function binary as Lambda does" \
  env FEEDS_FUNCTIONS_DIR="$binaries" \
  cargo test --locked -p feeds-bench --test shipped_binaries -- --ignored --nocapture --test-threads=1 \
  --skip sam_local
# The functions built just above under `cargo lambda watch`, and the feeds-server the test build made.
stage "the local Lambda stack: cargo lambda watch, local-trigger, the round trip (scripts/local-lambda.sh check)" \
  env FEEDS_SERVER_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/feeds-server" bash scripts/local-lambda.sh check

stage "benchmark smoke check (tiny size, debug binaries: the numbers mean nothing)" \
  env FEEDS_BENCH_PROFILE=dev bash scripts/bench.sh --tiny

stage "Schemathesis against openapi.json and the standalone server" bash scripts/schemathesis.sh

if [[ ${FEEDS_SKIP_FUZZ:-0} != 1 ]]; then
  stage "fuzzing each target for a bounded time" bash scripts/fuzz.sh "${FEEDS_FUZZ_SECONDS:-30}"
fi

if [[ ${FEEDS_SKIP_SAM:-0} != 1 ]]; then
  stage "validating and building the SAM template (arm64, unoptimised)" \
    env FEEDS_SAM_QUICK=1 bash scripts/sam-check.sh
  if [[ ${FEEDS_SKIP_SAM_LOCAL:-0} != 1 ]]; then
    stage "sam local invoke and start-api in Docker (the binaries above, x86_64)" \
      env FEEDS_FUNCTIONS_DIR="$binaries" FEEDS_SERVER_BIN="$binaries/feeds-server" bash scripts/sam-local.sh check
  fi
fi
log "all passed in $((SECONDS - t_all)) s; by stage:"
printf 'test.sh: %s\n' "${timings[@]}" >&2
