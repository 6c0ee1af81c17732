#!/usr/bin/env bash
# Local Redis on 127.0.0.1:6380 (not 6379, where a system instance may listen), from Debian's
# redis-server package, run by hand (no systemd): the Celery broker of the Stream-Framework peer.
#   scripts/redis.sh install|start|stop|restart|status
# State (config, log, pid) lives under $FEEDS_STATE_DIR (default <repo>/.local). Nothing is saved
# to disk: a broker for benchmark runs.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${FEEDS_STATE_DIR:-$ROOT/.local}
HOME_DIR=$STATE/redis
CONF=$HOME_DIR/redis.conf
LOG=$HOME_DIR/redis.log
PID_FILE=$HOME_DIR/redis.pid
PORT=${FEEDS_REDIS_PORT:-6380}
START_TIMEOUT=${FEEDS_REDIS_START_TIMEOUT:-30}

SERVICE_CMD=redis-server

log() { echo "redis.sh: $*" >&2; }
die() { log "$*"; exit 1; }
# shellcheck source=lib/service.sh
source "$ROOT/scripts/lib/service.sh"

# Debian's postinst may also start a system instance on 6379 where systemd runs; unused here.
install() {
  need redis-server redis-server
  log "installed: $(command -v redis-server)"
}

# A real Redis command over the wire (no redis-cli needed): PING answers +PONG.
answering() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$PORT" || exit 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 2 reply <&3 && [[ $reply == +PONG* ]]
  ) 2>/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

start() {
  local pid
  if pid=$(our_pid); then
    answering && { log "already running (pid $pid) and answering on 127.0.0.1:$PORT"; return 0; }
    log "pid $pid is still starting; waiting for it"
  elif answering; then
    log "something else already answers Redis on 127.0.0.1:$PORT; using it"; return 0
  elif port_open; then
    die "127.0.0.1:$PORT is taken by something that does not answer Redis"
  else
    install
    mkdir -p "$HOME_DIR"
    # Loopback only, no snapshots or append-only file (a broker for one run), foreground process.
    cat >"$CONF" <<EOF
bind 127.0.0.1
port $PORT
protected-mode yes
daemonize no
dir $HOME_DIR
save ""
appendonly no
databases 4
loglevel notice
EOF
    log "starting $(redis-server --version | grep -o 'v=[0-9.]*' | tr -d v=) on 127.0.0.1:$PORT"
    # setsid: its own session, so the caller's Ctrl-C or process-group cleanup leaves it running.
    setsid nohup redis-server "$CONF" >"$LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PID_FILE"
  fi

  await_answer "$pid" "$START_TIMEOUT"
  log "up (pid $pid) and answering PING on 127.0.0.1:$PORT"
}

stop() { stop_ours 20; }

status() {
  if answering; then
    log "answering PING on 127.0.0.1:$PORT$(pid=$(our_pid) && echo " (pid $pid, started by this script)")"
  else
    log "not answering on 127.0.0.1:$PORT"
    return 1
  fi
}

service_main "$@"
