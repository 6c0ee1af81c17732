#!/usr/bin/env bash
# `sam local start-api` and `sam local invoke` on this machine, offline: no image is pulled.
#   scripts/sam-local.sh up       the Docker engine (scripts/docker.sh: installed and started when
#                                 none answers), the stand-in Lambda base image (built once), Cassandra
#                                 and ElasticMQ where containers reach them (the Docker bridge's
#                                 gateway address, the feeds keyspace and the fanout queue), the
#                                 functions' x86_64 binaries, and a local template and env.json in
#                                 .local/sam-local/; then prints the sam commands to run
#   scripts/sam-local.sh down     stops what `up` started, nothing else
#   scripts/sam-local.sh check    up, then `sam local invoke` of every function on its sample event, a
#                                 `sam local start-api` round trip over HTTP, and `feeds-server
#                                 local-trigger` in front of `sam local start-lambda` (the sam_local
#                                 test in bench/tests/shipped_binaries.rs), then stops what this run
#                                 started
#   scripts/sam-local.sh fanout [ENV_FILE]   hands the messages waiting in the fan-out queue to
#                                 the fanout function (`sam local invoke`), as Lambda's SQS trigger
#                                 does, until the queue is empty; the queue is FEEDS_QUEUE_URL of
#                                 ENV_FILE (default .local/sam-local/env.json)
#   scripts/sam-local.sh status   what runs, and the files
#   scripts/sam-local.sh render DIR   only writes DIR/template.yaml and DIR/env.json (the test
#                                 shared/tests/template_env.rs checks them against template.yaml)
# The local template is template.yaml with this machine's architecture and each CodeUri pointing at
# a directory holding the function's binary as `bootstrap`: generated on every run, never edited.
#   FEEDS_FUNCTIONS_DIR       the functions' binaries (default: `cargo build` them, dev profile)
#   FEEDS_SERVER_BIN          check: the feeds-server binary (default: `cargo build` it, dev profile)
#   FEEDS_SAM_LOCAL_ADDRESS   where containers reach the services (default: the bridge's gateway)
# State lives under $FEEDS_STATE_DIR (default <repo>/.local).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${FEEDS_STATE_DIR:-$ROOT/.local}
DIR=$STATE/sam-local
STARTED=$DIR/started # what `up` started, one service a line, stopped by `down`
FUNCTIONS=(follow post-activity get-feed fanout realtime)
# The services' own instances: the loopback ones (scripts/cassandra.sh, scripts/elasticmq.sh)
# cannot be reached from a container, and a driver given a forwarded port dials the address the
# node advertises.
CASSANDRA_INSTANCE=cassandra-sam-local
ELASTICMQ_INSTANCE=elasticmq-sam-local
KEYSPACE=feeds

log() { echo "sam-local.sh: $*" >&2; }
die() { log "$*"; exit 1; }
# shellcheck source=lib/service.sh
source "$ROOT/scripts/lib/service.sh" # apt_install
t_start=$SECONDS
took() { echo "$((SECONDS - $1)) s"; }

case $(uname -m) in
  x86_64) ARCH=x86_64 ;;
  aarch64 | arm64) ARCH=arm64 ;;
  *) die "no Lambda architecture for this machine ($(uname -m))" ;;
esac
# The tag `sam local --skip-pull-image` builds its emulator image on
# (samcli/local/docker/lambda_image.py: provided.al2023 -> provided:al2023-<arch>).
BASE_IMAGE=public.ecr.aws/lambda/provided:al2023-$ARCH
RAPID_IMAGE=public.ecr.aws/lambda/provided:al2023-rapid-$ARCH
# Debian's minimal packages for a runtime that only runs `bootstrap`: the C library the binaries
# link (the host's release, so the host-built binaries fit), /bin/sh, mv and chmod (SAM's
# Dockerfile runs them) and the CA bundle the AWS SDK loads at start-up. Unpacked without
# maintainer scripts (mmdebstrap's extract variant: ~15 s, where a debootstrap minbase takes ~90 s),
# so the CA bundle is assembled by hand.
BASE_PACKAGES=libc6,libgcc-s1,dash,coreutils,ca-certificates
BASE_RECIPE=mmdebstrap-extract:$BASE_PACKAGES:v1

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# --- the local template and env.json ----------------------------------------------------------

# render DIR ADDRESS CODE: DIR/template.yaml (CodeUri functions/<f> -> CODE/<f>) and DIR/env.json.
render() {
  local out=$1 address=$2 code=$3
  local template=$ROOT/template.yaml
  mkdir -p "$out"
  local functions arm
  functions=$(grep -c '^      CodeUri: functions/' "$template" || true)
  arm=$(grep -c '^    Architectures: \[arm64\]$' "$template" || true)
  [[ $functions -ge ${#FUNCTIONS[@]} && $arm == 1 ]] ||
    die "template.yaml: expected one Globals line \`Architectures: [arm64]\` and a \`CodeUri: functions/<name>\` line per function; found $arm and $functions (update render in $0)"
  sed -e "s/^    Architectures: \[arm64\]\$/    Architectures: [$ARCH]/" \
    -e "s#^      CodeUri: functions/\(.*\)\$#      CodeUri: $code/\1#" \
    "$template" >"$out/template.yaml.tmp"
  mv "$out/template.yaml.tmp" "$out/template.yaml"
  # Every name here must be declared in template.yaml (sam local drops the others): the test
  # shared/tests/template_env.rs checks it.
  FEEDS_SAM_ADDRESS=$address FEEDS_SAM_KEYSPACE=$KEYSPACE \
    python3 - "$ROOT/etc/dev-keys/dev-public.pem" >"$out/env.json.tmp" <<'EOF'
import json, os, sys
a = os.environ["FEEDS_SAM_ADDRESS"]
print(json.dumps({"Parameters": {
    "FEEDS_CASSANDRA_NODES": f"{a}:9042",
    "FEEDS_CASSANDRA_KEYSPACE": os.environ["FEEDS_SAM_KEYSPACE"],
    "FEEDS_CASSANDRA_AUTH": "none",
    "FEEDS_CASSANDRA_TLS": "false",
    "FEEDS_QUEUE_URL": f"http://{a}:9324/000000000000/fanout",
    "FEEDS_SQS_ENDPOINT": f"http://{a}:9324",
    "FEEDS_JWT_PUBLIC_KEY": open(sys.argv[1]).read(),
    "FEEDS_CURSOR_SECRET": "development cursor secret (sam local)",
}}, indent=2))
EOF
  mv "$out/env.json.tmp" "$out/env.json"
}

# --- the pieces `up` brings up --------------------------------------------------------------------

mark_started() { echo "$1" >>"$STARTED"; }

# ensure SERVICE: `SERVICE start` unless `SERVICE status` answers; remembers what it started.
ensure() {
  local service=$1
  if "$service" status >/dev/null 2>&1; then
    log "$service already answers: using it"
  else
    # Marked first: an interrupted start still gets stopped.
    mark_started "$service"
    "$service" start
  fi
}

# The services: the Docker engine, and the sam-local instances of Cassandra and ElasticMQ on
# $GATEWAY, with state directories of their own.
engine() { bash "$ROOT/scripts/docker.sh" "$@"; }
cassandra() {
  mkdir -p "$STATE/$CASSANDRA_INSTANCE"
  local yaml=$STATE/$CASSANDRA_INSTANCE/cassandra.yaml
  sed -e "s/127\.0\.0\.1/$GATEWAY/g" -e 's/^cluster_name: .*/cluster_name: feeds-sam-local/' \
    "$ROOT/etc/cassandra.yaml" >"$yaml"
  FEEDS_CASSANDRA_INSTANCE=$CASSANDRA_INSTANCE FEEDS_CASSANDRA_ADDRESS=$GATEWAY \
    FEEDS_CASSANDRA_YAML=$yaml bash "$ROOT/scripts/cassandra.sh" "$@"
}
elasticmq() {
  FEEDS_ELASTICMQ_INSTANCE=$ELASTICMQ_INSTANCE FEEDS_ELASTICMQ_ADDRESS=$GATEWAY \
    bash "$ROOT/scripts/elasticmq.sh" "$@"
}

base_image() {
  local label
  if label=$(docker image inspect --format '{{index .Config.Labels "feeds.stand-in"}}' "$BASE_IMAGE" 2>/dev/null); then
    if [[ $label == "$BASE_RECIPE" ]]; then
      log "stand-in base image $BASE_IMAGE: built before ($BASE_RECIPE)"; return 0
    elif [[ -z $label || $label == "<no value>" ]]; then
      log "$BASE_IMAGE is there and was not built here (the real image?): using it"; return 0
    fi
    log "$BASE_IMAGE was built by another recipe ($label): building it again"
  fi
  local suite id
  # shellcheck disable=SC1091
  suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}") id=$(. /etc/os-release && echo "$ID")
  [[ $id == debian && -n $suite ]] ||
    die "no $BASE_IMAGE, and it is built with Debian's mmdebstrap, for a Debian host ($id here): import a root filesystem holding glibc, /bin/sh, mv, chmod and /etc/ssl/certs/ca-certificates.crt under that tag"
  if ! command -v mmdebstrap >/dev/null; then
    log "installing Debian's mmdebstrap (apt's log: $DIR/apt.log)"
    apt_install "$DIR/apt.log" mmdebstrap
  fi
  local t=$SECONDS
  log "building the stand-in base image $BASE_IMAGE: Debian $suite's $BASE_PACKAGES (first run only; ~15 s)"
  if ! mmdebstrap --quiet --variant=extract --include="$BASE_PACKAGES" \
      --extract-hook='cat "$1"/usr/share/ca-certificates/mozilla/*.crt >"$1"/etc/ssl/certs/ca-certificates.crt' \
      "$suite" - 2>"$DIR/mmdebstrap.log" |
      docker import --change "LABEL feeds.stand-in=$BASE_RECIPE" - "$BASE_IMAGE" >/dev/null; then
    tail -n 20 "$DIR/mmdebstrap.log" >&2
    die "building $BASE_IMAGE failed (mmdebstrap log: $DIR/mmdebstrap.log)"
  fi
  # SAM builds its emulator image on the base once; it must build it again on the new one.
  docker image rm "$RAPID_IMAGE" >/dev/null 2>&1 || true
  log "built $BASE_IMAGE in $(took "$t") ($(docker image inspect --format '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
}

# Each function's binary as CODE/<function>/bootstrap (a hard link, or a copy across filesystems).
binaries() {
  local from=${FEEDS_FUNCTIONS_DIR:-}
  if [[ -z $from ]]; then
    local target=${CARGO_TARGET_DIR:-$ROOT/target}
    [[ $target == /* ]] || target=$ROOT/$target
    from=$target/debug
    local packages=() f
    for f in "${FUNCTIONS[@]}"; do packages+=(-p "$f"); done
    log "building the functions' binaries (cargo build, dev profile, into $from)"
    (cd "$ROOT" && cargo build --locked "${packages[@]}")
  fi
  local f missing=()
  for f in "${FUNCTIONS[@]}"; do
    [[ -x $from/$f ]] || missing+=("$from/$f")
  done
  [[ ${#missing[@]} == 0 ]] ||
    die "missing binaries: ${missing[*]} (cargo build --locked -p follow -p post-activity -p get-feed -p fanout -p realtime, or set FEEDS_FUNCTIONS_DIR)"
  for f in "${FUNCTIONS[@]}"; do
    mkdir -p "$DIR/code/$f"
    rm -f "$DIR/code/$f/bootstrap"
    ln "$from/$f" "$DIR/code/$f/bootstrap" 2>/dev/null || cp "$from/$f" "$DIR/code/$f/bootstrap"
  done
  log "the binaries of ${FUNCTIONS[*]} from $from are the bootstraps in $DIR/code/"
}

schema() {
  local cql=$DIR/schema.cql
  { echo "CREATE KEYSPACE IF NOT EXISTS $KEYSPACE WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1};"
    echo "USE $KEYSPACE;"
    cat "$ROOT/etc/schema.cql"; } >"$cql"
  log "keyspace $KEYSPACE: the tables of etc/schema.cql"
  FEEDS_CASSANDRA_HOST=$GATEWAY "$ROOT/scripts/cql" -f "$cql" 2>&1 | grep -v 'cqlsh was built against' >&2 || true
  FEEDS_CASSANDRA_HOST=$GATEWAY "$ROOT/scripts/cql" -e "SELECT id FROM $KEYSPACE.activities LIMIT 1" >/dev/null ||
    die "keyspace $KEYSPACE has no tables"
}

# up [--no-schema]
up() {
  local with_schema=1
  [[ ${1:-} == --no-schema ]] && with_schema=0
  mkdir -p "$DIR"
  touch "$STARTED"
  local t=$SECONDS
  log "sam (AWS SAM CLI) in the state dir's venv"
  bash "$ROOT/scripts/python-tools.sh"
  ensure engine
  GATEWAY=${FEEDS_SAM_LOCAL_ADDRESS:-$(engine gateway)}
  log "containers reach this host at $GATEWAY: Cassandra and ElasticMQ listen there"
  # The services start while the image is built and the binaries linked.
  local pids=() p failed=0
  ensure cassandra & pids+=($!)
  ensure elasticmq & pids+=($!)
  base_image
  binaries
  render "$DIR" "$GATEWAY" "$DIR/code"
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  [[ $failed == 0 ]] || die "a service did not start (above)"
  [[ $with_schema == 0 ]] || schema
  log "up in $(took "$t"): Docker, $BASE_IMAGE, Cassandra $GATEWAY:9042 (keyspace $KEYSPACE), ElasticMQ http://$GATEWAY:9324 (queue fanout)"
}

# The sam commands, with the generated files.
usage_hint() {
  local rel=${DIR#"$ROOT"/}
  cat >&2 <<EOF
sam-local.sh: ready. From the repository root:
  source <(scripts/python-tools.sh --env)
  sam local start-api -t $rel/template.yaml --env-vars $rel/env.json --skip-pull-image --warm-containers LAZY --port 3001
  sam local invoke FollowFunction -t $rel/template.yaml --env-vars $rel/env.json --skip-pull-image -e events/follow.json
  scripts/sam-local.sh fanout     # the queued fan-out messages to the fanout function
Stop with scripts/sam-local.sh down.
EOF
}

# Stops the services listed in $STARTED after its first $1 lines, newest first, and forgets them.
stop_started_after() {
  local keep=$1 services=() i
  [[ -f $STARTED ]] || return 0
  mapfile -t services < <(tail -n +"$((keep + 1))" "$STARTED")
  for ((i = ${#services[@]} - 1; i >= 0; i--)); do
    case ${services[i]} in
      engine | cassandra | elasticmq) "${services[i]}" stop || log "could not stop ${services[i]}" ;;
      *) log "unknown entry ${services[i]} in $STARTED" ;;
    esac
  done
  local kept; kept=$(head -n "$keep" "$STARTED")
  printf '%s' "${kept:+$kept$'\n'}" >"$STARTED"
}

down() {
  [[ -s $STARTED ]] || { log "nothing started by sam-local.sh up is running"; return 0; }
  # The services' address names their yaml: asked before the engine stops.
  GATEWAY=$(engine gateway 2>/dev/null || echo 127.0.0.1)
  stop_started_after 0
  log "down"
}

check() {
  mkdir -p "$DIR"
  touch "$STARTED"
  local before; before=$(wc -l <"$STARTED")
  # shellcheck disable=SC2064
  trap "stop_started_after $before" EXIT
  up --no-schema
  local t=$SECONDS
  log "sam local invoke and start-api: cargo test -p feeds-bench --test shipped_binaries sam_local"
  # The test's own keyspace and queue, on the services above; sam from the venv.
  # The local SQS trigger the test runs in front of `sam local start-lambda`.
  local server_bin=${FEEDS_SERVER_BIN:-}
  if [[ -z $server_bin ]]; then
    local target=${CARGO_TARGET_DIR:-$ROOT/target}
    [[ $target == /* ]] || target=$ROOT/$target
    server_bin=$target/debug/feeds-server
    log "building feeds-server (cargo build, dev profile), for its local-trigger"
    (cd "$ROOT" && cargo build --locked -p feeds-server)
  fi
  [[ -x $server_bin ]] || die "no feeds-server binary at $server_bin (FEEDS_SERVER_BIN)"
  (cd "$ROOT" && env PATH="$STATE/venv/bin:$PATH" FEEDS_SAM_LOCAL_DIR="$DIR" FEEDS_SERVER_BIN="$server_bin" \
    FEEDS_CASSANDRA_NODES="$GATEWAY:9042" FEEDS_SQS_ENDPOINT="http://$GATEWAY:9324" \
    AWS_REGION="${AWS_REGION:-us-east-1}" AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-local}" \
    AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-local}" \
    cargo test --locked -p feeds-bench --test shipped_binaries -- --ignored --nocapture \
    --test-threads=1 sam_local)
  log "the sam local checks took $(took "$t")"
  stop_started_after "$before"
  trap - EXIT
  log "check passed in $(took "$t_start")"
}

# fanout ENV_FILE: batches of up to 10 messages from the queue of ENV_FILE, each handed to
# `sam local invoke FanoutFunction` as an SQS event; the messages it did not report failed are
# deleted, the others come back after the queue's visibility timeout. Fails if any failed.
fanout() {
  local env_file=$1
  [[ -f $DIR/template.yaml && -f $env_file ]] ||
    die "no $DIR/template.yaml or $env_file: run scripts/sam-local.sh up first"
  local endpoint queue
  endpoint=$(param "$env_file" FEEDS_SQS_ENDPOINT) queue=$(param "$env_file" FEEDS_QUEUE_URL)
  local batch=$DIR/fanout-batch.json answer=$DIR/fanout-answer.json n failed=0 batches=0 line
  while :; do
    sqs "$endpoint" ReceiveMessage "{\"QueueUrl\": \"$queue\", \"MaxNumberOfMessages\": 10,
      \"WaitTimeSeconds\": 1, \"AttributeNames\": [\"All\"]}" >"$batch.received" ||
      die "no answer from ElasticMQ at $endpoint (scripts/sam-local.sh up starts it)"
    n=$(python3 "$ROOT/scripts/lib/sqs-event.py" event "$batch.received" "$batch")
    [[ $n == 0 ]] && break
    batches=$((batches + 1))
    # Without the shell's FEEDS_* variables: sam would pass them for what ENV_FILE leaves unset.
    # shellcheck disable=SC2046
    if ! (unset $(compgen -e | grep '^FEEDS_') && PATH="$STATE/venv/bin:$PATH" SAM_CLI_TELEMETRY=0 \
        sam local invoke FanoutFunction --template "$DIR/template.yaml" --env-vars "$env_file" \
        --skip-pull-image --event "$batch" >"$answer" 2>"$DIR/fanout.log"); then
      tail -n 20 "$DIR/fanout.log" >&2
      die "sam local invoke FanoutFunction failed (log: $DIR/fanout.log)"
    fi
    # Deleted: every message but the reported failures, as Lambda's event source does.
    local outcome
    outcome=$(python3 "$ROOT/scripts/lib/sqs-event.py" done "$batch" "$answer") ||
      die "the fanout function did not answer a batch response (log: $DIR/fanout.log)"
    while read -r line; do
      if [[ $line == failed:* ]]; then
        failed=$((failed + 1))
        log "message ${line#failed:} failed; it comes back after the visibility timeout (log: $DIR/fanout.log)"
      else
        sqs "$endpoint" DeleteMessage "{\"QueueUrl\": \"$queue\", \"ReceiptHandle\": \"$line\"}" >/dev/null
      fi
    done <<<"$outcome"
    log "batch $batches: $n messages handed to the fanout function ($failed failed so far)"
  done
  log "the fan-out queue is empty ($batches batches)"
  [[ $failed == 0 ]]
}

# A Parameters entry of an env.json.
param() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["Parameters"][sys.argv[2]])' "$1" "$2"; }

# sqs ENDPOINT ACTION JSON: one call of the SQS JSON protocol (ElasticMQ checks no signature).
sqs() {
  curl -fsS -m 30 -X POST "$1/" -H 'Content-Type: application/x-amz-json-1.0' \
    -H "X-Amz-Target: AmazonSQS.$2" -d "$3"
}

status() {
  engine status || true
  if GATEWAY=$(engine gateway 2>/dev/null); then
    cassandra status || true
    elasticmq status || true
    docker image inspect --format "{{index .RepoTags 0}} {{.Size}} bytes {{index .Config.Labels \"feeds.stand-in\"}}" "$BASE_IMAGE" 2>/dev/null || log "no $BASE_IMAGE"
  fi
  [[ -f $DIR/template.yaml ]] && log "files: $DIR/template.yaml, $DIR/env.json"
  [[ -s $STARTED ]] && log "started by up (down stops them): $(paste -sd' ' "$STARTED")"
  return 0
}

main() {
  case ${1:-} in
    up) up; usage_hint ;;
    down) down ;;
    check) check ;;
    status) status ;;
    fanout) fanout "$(realpath -m "${2:-$DIR/env.json}")" ;;
    render)
      [[ -n ${2:-} ]] || usage
      local out; out=$(realpath -m "$2")
      render "$out" "${FEEDS_SAM_LOCAL_ADDRESS:-$(engine gateway)}" "$out/code"
      ;;
    *) usage ;;
  esac
}

# One line: bash has read all of it before running it, so editing this file mid-run is harmless.
main "$@"; exit
