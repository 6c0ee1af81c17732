#!/usr/bin/env bash
# Local ElasticMQ (SQS API, AWS JSON and query protocols) on 127.0.0.1:9324, run from Maven
# Central jars (no Docker). Queues come from etc/elasticmq.conf.
#   scripts/elasticmq.sh install|start|stop|restart|status
# State (jars, logs, pid) lives under $FEEDS_STATE_DIR (default <repo>/.local). A second server
# beside the first takes its own FEEDS_ELASTICMQ_INSTANCE (state directory name, default
# elasticmq) and FEEDS_ELASTICMQ_ADDRESS (default 127.0.0.1): scripts/sam-local.sh runs one.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${FEEDS_STATE_DIR:-$ROOT/.local}
INSTANCE=${FEEDS_ELASTICMQ_INSTANCE:-elasticmq}
HOME_DIR=$STATE/$INSTANCE
LIB=$STATE/elasticmq/lib # the jars, shared by every instance
LOG=$HOME_DIR/elasticmq.log
PID_FILE=$HOME_DIR/elasticmq.pid
POM=$ROOT/etc/maven/elasticmq/pom.xml
ADDRESS=${FEEDS_ELASTICMQ_ADDRESS:-127.0.0.1}
PORT=9324
URL=http://$ADDRESS:$PORT
START_TIMEOUT=${FEEDS_ELASTICMQ_START_TIMEOUT:-60}
# The queues etc/elasticmq.conf defines: ElasticMQ creates them just after it starts answering,
# so start waits until they are listed.
QUEUES=(fanout fanout-dlq)

log() { echo "elasticmq.sh${FEEDS_ELASTICMQ_INSTANCE:+ ($INSTANCE)}: $*" >&2; }
die() { log "$*"; exit 1; }

# Install a Debian package only when its command is missing (a fresh machine, whose
# package lists may be empty until the first apt-get update).
need() {
  command -v "$1" >/dev/null && return 0
  log "installing Debian package $2"
  apt-get install -y "$2" >&2 || { apt-get update >&2 && apt-get install -y "$2" >&2; }
}

install() {
  need java openjdk-17-jdk-headless
  need mvn maven
  need curl curl
  # The jar set is keyed by the pom's checksum, so bumping the version re-installs.
  local sum; sum=$(sha256sum "$POM" | cut -d' ' -f1)
  [[ $(cat "$LIB/.pom.sha256" 2>/dev/null) == "$sum" ]] && return 0
  log "copying ElasticMQ jars from Maven Central into $LIB (first use)"
  mkdir -p "$(dirname "$LIB")"
  rm -rf "$LIB.tmp"
  # Plugin pinned: Debian's Maven 3.8.7 would otherwise pick an old 2.x plugin.
  local install_log; install_log=$(dirname "$LIB")/install.log
  if ! mvn -B -ntp -f "$POM" -DoutputDirectory="$LIB.tmp" \
      org.apache.maven.plugins:maven-dependency-plugin:3.10.0:copy-dependencies >"$install_log" 2>&1; then
    tail -n 30 "$install_log" >&2
    die "maven failed (full log: $install_log)"
  fi
  echo "$sum" >"$LIB.tmp/.pom.sha256"
  rm -rf "$LIB" && mv "$LIB.tmp" "$LIB"
}

# Is the process there and not a zombie? (An exited child of this shell stays a zombie.)
alive() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) && [[ ${s##*) } != Z* ]]; }

# Pid of the server this script started, if it still runs (a recycled pid runs something else).
our_pid() {
  local pid; pid=$(cat "$PID_FILE" 2>/dev/null) && alive "$pid" &&
    grep -qs org.elasticmq.server.Main "/proc/$pid/cmdline" && echo "$pid"
}

# A real SQS call (ListQueues, AWS JSON protocol; ElasticMQ does not check signatures).
list_queues() {
  curl -fsS -m 5 -X POST "$URL/" \
    -H 'Content-Type: application/x-amz-json-1.0' -H 'X-Amz-Target: AmazonSQS.ListQueues' \
    -d '{}' 2>/dev/null
}

answering() { list_queues >/dev/null; }

# Answering, and every configured queue exists.
ready() {
  local body q; body=$(list_queues) || return 1
  for q in "${QUEUES[@]}"; do [[ $body == *"/$q\""* ]] || return 1; done
}

port_open() { (exec 3<>"/dev/tcp/$ADDRESS/$PORT") 2>/dev/null; }

# etc/elasticmq.conf, bound to (and naming in queue URLs) $ADDRESS instead of loopback.
config() {
  local conf=$ROOT/etc/elasticmq.conf
  if [[ $ADDRESS == 127.0.0.1 ]]; then echo "$conf"; return; fi
  mkdir -p "$HOME_DIR"
  sed -e "s/bind-hostname = \"127\.0\.0\.1\"/bind-hostname = \"$ADDRESS\"/" \
    -e "s/host = localhost/host = \"$ADDRESS\"/" "$conf" >"$HOME_DIR/elasticmq.conf"
  grep -q "bind-hostname = \"$ADDRESS\"" "$HOME_DIR/elasticmq.conf" ||
    die "etc/elasticmq.conf has no bind-hostname line to change"
  echo "$HOME_DIR/elasticmq.conf"
}

start() {
  local pid
  if pid=$(our_pid); then
    ready && { log "already running (pid $pid) and answering on $URL"; return 0; }
    log "pid $pid is still starting; waiting for it"
  elif answering; then
    log "something else already answers SQS on $URL; using it"; return 0
  elif port_open; then
    die "$ADDRESS:$PORT is taken by something that does not answer SQS"
  else
    install
    mkdir -p "$HOME_DIR"
    local conf; conf=$(config)
    log "starting ElasticMQ ($(basename "$(ls "$LIB"/elasticmq-server_*.jar)" .jar)) on $ADDRESS:$PORT"
    # setsid: its own session, so the caller's Ctrl-C or process-group cleanup leaves it running.
    # C1 only and a small heap: it starts in a few seconds and needs little for tests.
    setsid nohup java -Xms64m -Xmx512m -XX:TieredStopAtLevel=1 \
      "-Dconfig.file=$conf" -cp "$LIB/*" org.elasticmq.server.Main \
      >"$LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PID_FILE"
  fi

  local t0=$SECONDS
  until ready; do
    if ! alive "$pid"; then
      tail -n 40 "$LOG" >&2
      rm -f "$PID_FILE"
      die "ElasticMQ (pid $pid) exited during startup"
    fi
    if (( SECONDS - t0 >= START_TIMEOUT )); then
      tail -n 40 "$LOG" >&2
      stop
      die "no SQS answer on $URL after ${START_TIMEOUT}s"
    fi
    sleep 0.5
  done
  log "up (pid $pid) and answering SQS on $URL after $((SECONDS - t0))s"
}

stop() {
  local pid
  if ! pid=$(our_pid); then
    rm -f "$PID_FILE"
    log "not running (no process started by this script)"
    return 0
  fi
  log "stopping pid $pid"
  kill "$pid"
  for _ in $(seq 100); do alive "$pid" || break; sleep 0.2; done
  if alive "$pid"; then
    log "pid $pid still alive after 20s; killing it"
    kill -9 "$pid"
    while alive "$pid"; do sleep 0.2; done
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

status() {
  if answering; then
    log "answering SQS on $URL$(pid=$(our_pid) && echo " (pid $pid, started by this script)")"
  else
    log "not answering on $URL"
    return 1
  fi
}

case ${1:-} in
  install) install; log "installed in $HOME_DIR" ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|restart|status" >&2; exit 2 ;;
esac
