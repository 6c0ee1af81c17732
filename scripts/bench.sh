#!/usr/bin/env bash
# The benchmark of BENCHMARKS.md, in one command: starts Cassandra and ElasticMQ unless they already
# run (and stops afterwards only what it started), builds the release binaries, runs every workload
# of feeds-bench, then Stream-Framework (the peer, with Redis as its Celery broker: started for its run
# unless already running, and stopped after it if started here), prints the tables, writes the
# results as JSON and the plots as PNG, and records them with the machine, the commands and the date.
#   scripts/bench.sh           full run (~25 min on 2 cores before workloads 3b and 3c, whose set-ups
#                              add 24,000 deliveries, half on SQLite, and 100,000, and before the
#                              peer's fan-out at 100,000): bench/results/ and BENCHMARKS.md
#   scripts/bench.sh --tiny    smoke check (N = 100, few repetitions; no Stream-Framework, no sam):
#                              everything in target/bench-tiny/, BENCHMARKS.md untouched
# Release builds go to target/bench/ with thin LTO and 8 codegen units (the workspace profile's fat
# LTO takes many minutes per binary on 2 cores); FEEDS_BENCH_FAT_LTO=1 keeps the profile as it is.
# FEEDS_BENCH_PROFILE=dev (with --tiny only) uses debug binaries instead: after `cargo test` (CI)
# only this crate compiles, where a cold release build takes 20 minutes or more.
# Bootstrap sizes are read from .aws-sam/build/ (scripts/sam-check.sh builds them).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STATE=${FEEDS_STATE_DIR:-$ROOT/.local}
log() { echo "bench.sh: $*" >&2; }

size=full
case ${1:-} in
  --tiny) size=tiny ;;
  --full | "") ;;
  *) echo "usage: scripts/bench.sh [--tiny]" >&2; exit 2 ;;
esac
t_start=$SECONDS
load_start=$(uptime)
command_line="scripts/bench.sh${1:+ $1}"

started=()
cleanup() {
  for service in "${started[@]}"; do
    bash "scripts/$service.sh" stop || log "could not stop $service"
  done
}
trap cleanup EXIT

# A node that another command (re)started and that is still booting is waited for, not taken over:
# this script stops only what it started itself.
alive_pid() { local pid; pid=$(cat "$1" 2>/dev/null) && [[ -d /proc/$pid ]] && echo "$pid"; }
for service in cassandra elasticmq; do
  if ! bash "scripts/$service.sh" status >/dev/null 2>&1 && pid=$(alive_pid "$STATE/$service/$service.pid"); then
    log "$service (pid $pid) is starting: waiting for it"
    for _ in $(seq 180); do bash "scripts/$service.sh" status >/dev/null 2>&1 && break; sleep 1; done
  fi
  if bash "scripts/$service.sh" status >/dev/null 2>&1; then
    log "$service is already running: using it"
  else
    # A Cassandra started here gets the full JIT (the script's default is C1 only, for fast starts).
    if [[ $service == cassandra ]]; then
      FEEDS_CASSANDRA_JVM_OPTS="${FEEDS_CASSANDRA_JVM_OPTS:-} -XX:TieredStopAtLevel=4" bash scripts/cassandra.sh start
    else
      bash "scripts/$service.sh" start
    fi
    started+=("$service")
  fi
done

export FEEDS_CASSANDRA_NODES=${FEEDS_CASSANDRA_NODES:-127.0.0.1:9042}
export FEEDS_SQS_ENDPOINT=${FEEDS_SQS_ENDPOINT:-http://127.0.0.1:9324}
export AWS_REGION=${AWS_REGION:-us-east-1} AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-local} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-local}

# Python: matplotlib for the plots; Stream-Framework and its era's dependencies for the peer.
VENV=$STATE/bench-venv
if [[ ! -x $VENV/bin/pip ]]; then
  log "creating Python venv $VENV"
  python3 -m venv "$VENV" 2>/dev/null || { rm -rf "$VENV"; apt-get install -y python3-venv >&2; python3 -m venv "$VENV"; }
fi
install_pinned() {
  local stamp; stamp=$VENV/.bench.$(printf '%s\n' "$@" | sha256sum | cut -c1-16)
  [[ -e $stamp ]] && return 0
  log "installing $* into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
  touch "$stamp"
}
install_pinned 'matplotlib==3.11.2'
if [[ $size == full ]]; then
  # redis-py as kombu's Redis transport requires it (>= 6.1); the package's own import of the
  # pre-3.0 name redis.client.BasePipeline is shimmed by bench/peer/peer_app.py.
  install_pinned 'stream-framework[cassandra]==1.4.0' 'cassandra-driver==3.30.1' 'celery[redis]==5.7.0' 'redis==8.1.0'
fi

if [[ $size == full ]]; then
  OUT=bench/results
  MD=BENCHMARKS.md
else
  OUT=target/bench-tiny
  MD=$OUT/BENCHMARKS.md
fi
mkdir -p "$OUT"
rm -f "$OUT/ours.json" "$OUT/peer.json"

# The peer first: it needs no Rust binary. Its Celery broker is scripts/redis.sh's Redis
# (127.0.0.1:6380); the script starts and stops its 4 Celery worker processes itself.
if [[ $size == full ]]; then
  redis_started=0
  if bash scripts/redis.sh status >/dev/null 2>&1; then
    log "redis is already running: using it"
  else
    bash scripts/redis.sh start
    started+=(redis)
    redis_started=1
  fi
  log "running Stream-Framework 1.4.0 (the peer)"
  # FEEDS_BENCH_PEER_MAX_FOLLOWERS=10000 leaves out its N = 100,000 fan-out (several minutes).
  "$VENV/bin/python" bench/peer/stream_framework_bench.py --size full --out "$OUT/peer.json" \
    ${FEEDS_BENCH_PEER_MAX_FOLLOWERS:+--max-followers "$FEEDS_BENCH_PEER_MAX_FOLLOWERS"}
  if (( redis_started )); then
    bash scripts/redis.sh stop
    others=()
    for service in "${started[@]}"; do [[ $service == redis ]] || others+=("$service"); done
    started=("${others[@]}")
  fi
else
  log "Stream-Framework: skipped (tiny)"
fi

packages=(-p feeds-bench -p feeds-server -p follow -p post-activity -p get-feed -p fanout -p realtime)
t_build=$SECONDS
if [[ ${FEEDS_BENCH_PROFILE:-release} == dev ]]; then
  # Smoke checks only (CI): the test suite's debug build is reused, so only this crate compiles.
  [[ $size == tiny ]] || { log "FEEDS_BENCH_PROFILE=dev is for --tiny only"; exit 2; }
  build_note="cargo build (dev profile: a smoke check, the numbers mean nothing)"
  log "building the debug binaries"
  cargo build --locked -q "${packages[@]}"
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug
else
  export CARGO_TARGET_DIR=${FEEDS_BENCH_TARGET_DIR:-$ROOT/target/bench}
  build_note="cargo build --release (workspace profile: fat LTO, codegen-units 1)"
  if [[ ${FEEDS_BENCH_FAT_LTO:-0} != 1 ]]; then
    export CARGO_PROFILE_RELEASE_LTO=thin CARGO_PROFILE_RELEASE_CODEGEN_UNITS=8
    build_note="cargo build --release with CARGO_PROFILE_RELEASE_LTO=thin CARGO_PROFILE_RELEASE_CODEGEN_UNITS=8 into target/bench/ (the profile's fat LTO is slow on 2 cores)"
  fi
  log "building the release binaries into $CARGO_TARGET_DIR"
  cargo build --release --locked -q "${packages[@]}"
  BIN=$CARGO_TARGET_DIR/release
fi
build_seconds=$((SECONDS - t_build))


# The machine, as the report records it.
cass_pid=$(cat "$STATE/cassandra/cassandra.pid" 2>/dev/null || true)
cass_jit=unknown
if [[ -n $cass_pid && -r /proc/$cass_pid/cmdline ]]; then
  cass_jit=$(tr '\0' '\n' <"/proc/$cass_pid/cmdline" | grep -o 'TieredStopAtLevel=[0-9]' | tail -n1 || true)
  [[ -n $cass_jit ]] || cass_jit="default (full JIT)"
fi
"$VENV/bin/python" - "$OUT/env.json" <<EOF
import json, os, platform, subprocess, sys, datetime
def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60).stdout.strip()
    except Exception as e:
        return f"unknown ({e})"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
mem = next((l.split(":", 1)[1].strip() for l in open("/proc/meminfo") if l.startswith("MemTotal")), "unknown")
json.dump({
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "command": "$command_line",
    "nproc": os.cpu_count(),
    "cpu": cpu,
    "memory": mem,
    "kernel": platform.release(),
    "load_before": """$load_start""".strip(),
    "rustc": sh("rustc --version"),
    "build": "$build_note",
    "build_seconds": $build_seconds,
    "cassandra": sh("ls $STATE/cassandra/lib | grep -o 'cassandra-all-[0-9.]*' | head -n1"),
    "cassandra_jit": "$cass_jit",
    "cassandra_started_by_bench": "${started[*]:-}" .find("cassandra") >= 0,
    "elasticmq": sh("ls $STATE/elasticmq/lib | grep -o 'elasticmq-server_[0-9.]*-[0-9.]*' | head -n1"),
    "java": sh("java -version 2>&1 | head -n1"),
    "git": sh("git rev-parse --short HEAD") + (" (with uncommitted changes)" if sh("git status --porcelain") else ""),
}, open(sys.argv[1], "w"), indent=2)
EOF

log "running feeds-bench ($size)"
# Their pids, so that feeds-bench can tell the CPU each process spent per row and per request.
export FEEDS_BENCH_CASSANDRA_PID=${cass_pid:-} FEEDS_BENCH_ELASTICMQ_PID=$(alive_pid "$STATE/elasticmq/elasticmq.pid" || true)
"$BIN/feeds-bench" all --size "$size" --out "$OUT" --server-bin "$BIN/feeds-server" --functions-dir "$BIN"
# The servers' and functions' logs are for looking into a failure, not results.
mkdir -p target/bench-logs && mv -f "$OUT"/*.log target/bench-logs/ 2>/dev/null || true


"$VENV/bin/python" - "$OUT/env.json" <<'EOF'
import json, subprocess, sys
d = json.load(open(sys.argv[1]))
d["load_after"] = subprocess.run("uptime", capture_output=True, text=True).stdout.strip()
json.dump(d, open(sys.argv[1], "w"), indent=2)
EOF
"$VENV/bin/python" bench/report.py --results "$OUT" --markdown "$MD" --seconds $((SECONDS - t_start))
log "done in $((SECONDS - t_start)) s ($size): $OUT/, $MD"
