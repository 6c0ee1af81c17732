#!/usr/bin/env bash
# Property-based tests of the HTTP API against its OpenAPI document (openapi.json) with Schemathesis:
# starts the standalone server on the embedded default (a temporary SQLite file) on a free port,
# mints a development token for usr_01 (with `feeds:admin`, so that generated bodies acting for any
# user reach the store), generates requests for every documented operation (valid and invalid ones)
# and checks every answer against the document: no 5xx, documented status codes, content types,
# headers and bodies, schema-invalid input refused, missing auth refused. Stops the server.
#   scripts/schemathesis.sh [max-examples-per-operation]    (default 30)
# FEEDS_SCHEMATHESIS_MAX_TIME is the run's time budget in seconds (default 75; fuzzing goes on
# until it is spent). Exits non-zero on any failure.
# Schemathesis is installed from PyPI into $FEEDS_STATE_DIR/venv (default <repo>/.local/venv).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${FEEDS_STATE_DIR:-$ROOT/.local}
VENV=$STATE/venv
VERSION=4.32.5
MAX_EXAMPLES=${1:-30}
MAX_TIME=${FEEDS_SCHEMATHESIS_MAX_TIME:-75}

log() { echo "schemathesis.sh: $*" >&2; }
die() { log "$*"; exit 1; }

[[ $MAX_EXAMPLES =~ ^[1-9][0-9]*$ ]] || die "usage: $0 [max-examples-per-operation]"
mkdir -p "$STATE"
if [[ ! -x $VENV/bin/pip ]]; then
  log "creating Python venv $VENV"
  # Debian's system python3 ships venv without ensurepip; python3-venv brings it.
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    apt-get install -y python3-venv >&2 || { apt-get update >&2 && apt-get install -y python3-venv >&2; }
    python3 -m venv "$VENV"
  fi
fi
if [[ $("$VENV/bin/schemathesis" --version 2>/dev/null) != *" $VERSION" ]]; then
  log "installing schemathesis $VERSION into $VENV (first use: a minute or two)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION" >&2
fi

cd "$ROOT"
cargo build -q -p feeds-server
SERVER=${CARGO_TARGET_DIR:-$ROOT/target}/debug/feeds-server
TOKEN=$("$SERVER" mint-token --admin usr_01)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
WORK=$(mktemp -d)
pid=
cleanup() {
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# The embedded default whatever the caller's environment says.
env FEEDS_STORE=sqlite FEEDS_QUEUE=embedded FEEDS_SQLITE_PATH="$WORK/feeds.db" \
  FEEDS_BIND="127.0.0.1:$PORT" FEEDS_LOG_FORMAT=text RUST_LOG=warn \
  "$SERVER" serve >"$WORK/server.log" 2>&1 </dev/null &
pid=$!
for _ in $(seq 300); do
  curl -fsS -m 2 "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$WORK/server.log" >&2; die "the server exited"; }
  sleep 0.2
done
curl -fsS -m 2 "http://127.0.0.1:$PORT/health" >/dev/null || die "the server did not answer on port $PORT"
log "server on 127.0.0.1:$PORT (embedded default, $WORK/feeds.db); up to $MAX_EXAMPLES examples per operation, at most ${MAX_TIME} s"

# Every check but `positive_data_acceptance` (a schema-valid request must succeed): cursors are
# opaque and only those the server issued are valid, and following oneself and times before 1970
# are refused by rules a JSON Schema cannot state; such requests are rightly 400.
# One worker: with two, Hypothesis parses lambda sources from two threads at once, and Python
# 3.11's parser then fails now and then with "AST constructor recursion depth mismatch" (a
# Runtime Error reported against whichever operation it hit, not a finding about the API).
set +e
timeout --signal=INT --kill-after=15 "$((MAX_TIME + 90))" \
  "$VENV/bin/schemathesis" --no-color run "$ROOT/openapi.json" \
  --url "http://127.0.0.1:$PORT" \
  --header "Authorization: Bearer $TOKEN" \
  --checks all \
  --exclude-checks positive_data_acceptance \
  --max-examples "$MAX_EXAMPLES" \
  --max-time "$MAX_TIME" \
  --request-timeout 10 \
  --workers 1 \
  --continue-on-failure \
  --report ndjson --report-ndjson-path "$WORK/events.ndjson" \
  2>&1 | tee "$WORK/schemathesis.log"
status=${PIPESTATUS[0]}
set -e

# Inputs tried: every request Schemathesis sent (its NDJSON report holds one event per scenario).
tried=$(python3 - "$WORK/events.ndjson" <<'EOF' || echo "?"
import json, sys
cases = 0
try:
    with open(sys.argv[1]) as f:
        for line in f:
            event = json.loads(line)
            scenario = event.get("ScenarioFinished")
            if scenario:
                cases += len((scenario.get("recorder") or {}).get("cases") or {})
except FileNotFoundError:
    pass
print(cases)
EOF
)
if grep -q "panicked" "$WORK/server.log"; then
  log "the server panicked:"
  grep -B2 -A10 panicked "$WORK/server.log" >&2
  status=1
fi
if ((status == 0)); then
  log "$tried inputs tried, no failures"
else
  log "$tried inputs tried; failures above (exit $status)"
fi
exit "$status"
