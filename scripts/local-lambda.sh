#!/usr/bin/env bash
# The local Lambda stack in one command: the four functions under `cargo lambda watch` (the HTTP API
# through its router, from [workspace.metadata.lambda.watch.router], and the Lambda Invoke API, both
# on one port), Cassandra and ElasticMQ (started only when none answers), and
# `feeds-server local-trigger`, which stands in for Lambda's SQS trigger: it polls the fan-out queue
# and invokes `fanout` as template.yaml maps them.
#   scripts/local-lambda.sh up       start it all (first use builds the functions: minutes); prints the API's URL
#   scripts/local-lambda.sh down     stop what `up` started, nothing else
#   scripts/local-lambda.sh status   what runs, and the logs
#   scripts/local-lambda.sh check    `up` on a free port with a queue of its own, the round-trip
#                                    tests (server/tests/local_lambda.rs) through it, then `down`
# Settings (the functions get the same):
#   FEEDS_LOCAL_LAMBDA_PORT   the HTTP API and the Invoke API (default 9000)
#   FEEDS_QUEUE_URL           the fan-out queue (default http://127.0.0.1:9324/000000000000/fanout;
#                             the trigger creates it and <name>-dlq if missing, and sets both as the template does)
#   FEEDS_CASSANDRA_KEYSPACE  the keyspace, migrated by `up` (default feeds)
#   FEEDS_SERVER_BIN          a feeds-server binary to use (default: cargo build -p feeds-server)
# Logs and pids live in $FEEDS_STATE_DIR/local-lambda (default <repo>/.local/local-lambda).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${FEEDS_STATE_DIR:-$ROOT/.local}
DIR=$STATE/local-lambda
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
FUNCTIONS=(follow post-activity get-feed fanout)
START_TIMEOUT=${FEEDS_LOCAL_LAMBDA_START_TIMEOUT:-600}

log() { echo "local-lambda.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# Is the process there and not a zombie?
alive() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) && [[ ${s##*) } != Z* ]]; }

# Pid in $DIR/$1.pid if it still runs what we started ($2: words its command line holds).
our_pid() {
  local pid; pid=$(cat "$DIR/$1.pid" 2>/dev/null) && alive "$pid" &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2" && echo "$pid"
}

# The stack's settings: the environment's, or (for `down` and `status`, with `running`) those
# `up` wrote down.
load_settings() {
  # shellcheck source=/dev/null
  [[ ${1:-} == running && -f $DIR/settings ]] && source "$DIR/settings"
  PORT=${FEEDS_LOCAL_LAMBDA_PORT:-9000}
  QUEUE_URL=${FEEDS_QUEUE_URL:-http://127.0.0.1:9324/000000000000/fanout}
  KEYSPACE=${FEEDS_CASSANDRA_KEYSPACE:-feeds}
  URL=http://127.0.0.1:$PORT
}

# What the functions, the migration and the trigger read.
export_environment() {
  export FEEDS_STORE=cassandra FEEDS_QUEUE=sqs FEEDS_QUEUE_URL=$QUEUE_URL \
    FEEDS_CASSANDRA_KEYSPACE=$KEYSPACE \
    FEEDS_CASSANDRA_NODES=${FEEDS_CASSANDRA_NODES:-127.0.0.1:9042} \
    FEEDS_SQS_ENDPOINT=${FEEDS_SQS_ENDPOINT:-http://127.0.0.1:9324} \
    FEEDS_JWT_PUBLIC_KEY_FILE=${FEEDS_JWT_PUBLIC_KEY_FILE:-$ROOT/etc/dev-keys/dev-public.pem} \
    FEEDS_LOG_FORMAT=json \
    AWS_REGION=${AWS_REGION:-us-east-1} AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-local} \
    AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-local}
}

# One synchronous invocation of function $1 with the event in file $2 through the Invoke API,
# waiting for the answer up to START_TIMEOUT; fails unless it is a 200 without a function error.
invoke() {
  local out status
  out=$(curl -sS -m "$START_TIMEOUT" -o "$DIR/invoke-$1.out" -D - -X POST --data-binary "@$2" \
    "$URL/2015-03-31/functions/$1/invocations" 2>/dev/null) || return 1
  status=$(head -n1 <<<"$out" | cut -d' ' -f2)
  [[ $status == 200 ]] && ! grep -qi '^x-amz-function-error' <<<"$out"
}

# Waits until function $1 answers an invocation with the event in file $2.
await_function() {
  local t0=$SECONDS
  until invoke "$1" "$2"; do
    our_pid watch "lambda watch" >/dev/null || { log "cargo lambda watch exited"; return 1; }
    (( SECONDS - t0 < START_TIMEOUT )) || { log "$1 did not answer within ${START_TIMEOUT}s"; return 1; }
    sleep 1
  done
  log "$1 answers"
}

# Waits until each function answers: the first invocation of each starts its process (`cargo run`,
# which waits for any other cargo build to finish first), all four at once.
await_functions() {
  local f event pids=() failed=0
  echo '{"Records":[]}' >"$DIR/empty-sqs-event.json"
  for f in "${FUNCTIONS[@]}"; do
    event=$ROOT/events/health.json
    [[ $f == fanout ]] && event=$DIR/empty-sqs-event.json
    await_function "$f" "$event" &
    pids+=($!)
  done
  for f in "${pids[@]}"; do wait "$f" || failed=1; done
  (( failed == 0 )) || { tail -n 40 "$DIR/watch.log" >&2; die "the functions did not all start"; }
}

start_services() {
  local service
  : >"$DIR/started"
  for service in cassandra elasticmq; do
    if bash "$ROOT/scripts/$service.sh" status >/dev/null 2>&1; then
      log "$service is already running: using it"
    else
      bash "$ROOT/scripts/$service.sh" start
      echo "$service" >>"$DIR/started"
    fi
  done
}

server_bin() {
  if [[ -n ${FEEDS_SERVER_BIN:-} ]]; then
    echo "$FEEDS_SERVER_BIN"
  else
    (cd "$ROOT" && cargo build -q -p feeds-server >&2)
    echo "$TARGET/debug/feeds-server"
  fi
}

up() {
  mkdir -p "$DIR"
  if our_pid watch "lambda watch" >/dev/null || our_pid trigger local-trigger >/dev/null; then
    load_settings running
    die "already up on $URL (scripts/local-lambda.sh down first)"
  fi
  load_settings
  printf 'FEEDS_LOCAL_LAMBDA_PORT=%q\nFEEDS_QUEUE_URL=%q\nFEEDS_CASSANDRA_KEYSPACE=%q\n' \
    "$PORT" "$QUEUE_URL" "$KEYSPACE" >"$DIR/settings"
  export_environment
  local t0=$SECONDS
  # Whatever fails from here on, what was started is stopped again.
  trap 'log "up failed: stopping what it started"; down' EXIT
  bash "$ROOT/scripts/python-tools.sh"
  source <(bash "$ROOT/scripts/python-tools.sh" --env)
  start_services

  log "building the functions (dev profile; reused when up to date)"
  # shellcheck disable=SC2046 # one -p per function
  (cd "$ROOT" && cargo build -q $(printf -- '-p %s ' "${FUNCTIONS[@]}"))
  local server; server=$(server_bin)
  log "migrating keyspace $KEYSPACE"
  "$server" migrate >"$DIR/migrate.log" 2>&1 || { cat "$DIR/migrate.log" >&2; die "migrate failed"; }

  log "starting cargo lambda watch on $URL"
  # Its own session (and process group): `down` stops it with the functions it runs, nothing else.
  # shellcheck disable=SC2086 # the extra arguments are words
  (
    cd "$ROOT"
    setsid nohup cargo lambda watch -A 127.0.0.1 -P "$PORT" ${FEEDS_LOCAL_LAMBDA_WATCH_ARGS:-} \
      >"$DIR/watch.log" 2>&1 </dev/null &
    echo $! >"$DIR/watch.pid"
  )
  await_functions

  log "starting the trigger"
  setsid nohup "$server" local-trigger --endpoint "$URL" --template "$ROOT/template.yaml" \
    >"$DIR/trigger.log" 2>&1 </dev/null &
  echo $! >"$DIR/trigger.pid"
  local t1=$SECONDS
  until grep -q '"polling"' "$DIR/trigger.log" 2>/dev/null; do
    our_pid trigger local-trigger >/dev/null || { cat "$DIR/trigger.log" >&2; die "the trigger exited"; }
    (( SECONDS - t1 < 60 )) || { cat "$DIR/trigger.log" >&2; die "the trigger did not start polling"; }
    sleep 0.2
  done
  trap - EXIT
  log "up in $((SECONDS - t0)) s: the API on $URL (e.g. curl $URL/health), fan-out queue $QUEUE_URL," \
    "keyspace $KEYSPACE; logs in $DIR; stop with: scripts/local-lambda.sh down"
}

# SIGTERM to the process group $2 leads (pid file $1), SIGKILL after 10 s.
stop_group() {
  local pid=$2
  log "stopping $1 (pid $pid)"
  kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do alive "$pid" || break; sleep 0.2; done
  if alive "$pid"; then kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true; fi
  rm -f "$DIR/$1.pid"
}

down() {
  local pid service
  if pid=$(our_pid trigger local-trigger); then stop_group trigger "$pid"; fi
  if pid=$(our_pid watch "lambda watch"); then stop_group watch "$pid"; fi
  if [[ -f $DIR/started ]]; then
    while read -r service; do
      [[ -n $service ]] && { bash "$ROOT/scripts/$service.sh" stop || log "could not stop $service"; }
    done <"$DIR/started"
    rm -f "$DIR/started"
  fi
  rm -f "$DIR/settings"
  log "down"
}

status() {
  local pid ok=0
  load_settings running
  if pid=$(our_pid watch "lambda watch"); then log "cargo lambda watch: pid $pid, $URL ($DIR/watch.log)"; else log "cargo lambda watch: not running"; ok=1; fi
  if pid=$(our_pid trigger local-trigger); then log "trigger: pid $pid, $QUEUE_URL ($DIR/trigger.log)"; else log "trigger: not running"; ok=1; fi
  return $ok
}

# Deletes the queue named $1 on the local SQS server.
delete_queue() {
  curl -s -m 5 -X POST "${FEEDS_SQS_ENDPOINT:-http://127.0.0.1:9324}/" \
    -H 'Content-Type: application/x-amz-json-1.0' -H 'X-Amz-Target: AmazonSQS.DeleteQueue' \
    -d "{\"QueueUrl\": \"$1\"}" >/dev/null || true
}

check() {
  local t0=$SECONDS suffix
  suffix=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
  CHECK_QUEUE=${FEEDS_SQS_ENDPOINT:-http://127.0.0.1:9324}/000000000000/fanout_check_$suffix
  FEEDS_LOCAL_LAMBDA_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  export FEEDS_LOCAL_LAMBDA_PORT FEEDS_QUEUE_URL=$CHECK_QUEUE FEEDS_CASSANDRA_KEYSPACE=feeds_local_lambda
  export FEEDS_LOCAL_LAMBDA_WATCH_ARGS=--ignore-changes
  up
  trap 'down; delete_queue "$CHECK_QUEUE"; delete_queue "$CHECK_QUEUE-dlq"' EXIT
  log "round-trip tests through $URL"
  (cd "$ROOT" && FEEDS_LOCAL_LAMBDA_URL=$URL \
    cargo test --locked -p feeds-server --test local_lambda -- --ignored --nocapture --test-threads=1)
  log "check passed in $((SECONDS - t0)) s"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  check) check ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
