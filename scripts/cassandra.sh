#!/usr/bin/env bash
# Local single-node Apache Cassandra 5.0 on 127.0.0.1:9042, run from Maven Central jars (no Docker).
#   scripts/cassandra.sh install|start|stop|restart|status
# State (jars, data, logs, pid) lives under $FEEDS_STATE_DIR (default <repo>/.local).
# FEEDS_CASSANDRA_YAML points at another cassandra.yaml; a second node beside the first takes its
# own FEEDS_CASSANDRA_INSTANCE (state directory name, default cassandra) and
# FEEDS_CASSANDRA_ADDRESS (default 127.0.0.1): scripts/cassandra-auth.sh is one.
# Also: FEEDS_CASSANDRA_START_TIMEOUT (s, default 180), FEEDS_CASSANDRA_JVM_OPTS (extra JVM flags).
# Query it with scripts/cql -e "SELECT release_version FROM system.local"
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${FEEDS_STATE_DIR:-$ROOT/.local}
INSTANCE=${FEEDS_CASSANDRA_INSTANCE:-cassandra}
HOME_DIR=$STATE/$INSTANCE
LIB=$STATE/cassandra/lib # the jars, shared by every instance
LOGS=$HOME_DIR/logs
PID_FILE=$HOME_DIR/cassandra.pid
POM=$ROOT/etc/maven/cassandra/pom.xml
YAML=$(realpath "${FEEDS_CASSANDRA_YAML:-$ROOT/etc/cassandra.yaml}")
ADDRESS=${FEEDS_CASSANDRA_ADDRESS:-127.0.0.1}
PORT=9042
START_TIMEOUT=${FEEDS_CASSANDRA_START_TIMEOUT:-180}

log() { echo "cassandra.sh${FEEDS_CASSANDRA_INSTANCE:+ ($INSTANCE)}: $*" >&2; }
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
  # The jar set is keyed by the pom's checksum, so bumping the version re-installs.
  local sum; sum=$(sha256sum "$POM" | cut -d' ' -f1)
  if [[ $(cat "$LIB/.pom.sha256" 2>/dev/null) != "$sum" ]]; then
    log "copying Cassandra jars from Maven Central into $LIB (first use; ~1 min)"
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
  fi
  # cqlsh (in the state dir's venv) is the readiness probe; scripts/cql installs it on first use.
  "$ROOT/scripts/cql" --version >/dev/null
}

# Is the process there and not a zombie? (An exited child of this shell stays a zombie.)
alive() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) && [[ ${s##*) } != Z* ]]; }

# Pid of the node this script started, if it still runs (a recycled pid runs something else).
our_pid() {
  local pid; pid=$(cat "$PID_FILE" 2>/dev/null) && alive "$pid" &&
    grep -qs CassandraDaemon "/proc/$pid/cmdline" && echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/$ADDRESS/$PORT") 2>/dev/null; }

# A real CQL round trip. If the node wants a login (PasswordAuthenticator), log in for real:
# FEEDS_CASSANDRA_USER/PASSWORD, else the default superuser cassandra/cassandra.
answering() {
  local q="SELECT release_version FROM system.local" out
  port_open || return 1
  out=$(FEEDS_CASSANDRA_HOST=$ADDRESS "$ROOT/scripts/cql" --connect-timeout=5 -e "$q" 2>&1) && return 0
  [[ $out == *"requires authentication"* ]] || return 1
  FEEDS_CASSANDRA_HOST=$ADDRESS FEEDS_CASSANDRA_USER=${FEEDS_CASSANDRA_USER:-cassandra} \
    FEEDS_CASSANDRA_PASSWORD=${FEEDS_CASSANDRA_PASSWORD:-cassandra} \
    "$ROOT/scripts/cql" --connect-timeout=5 -e "$q" >/dev/null 2>&1
}

start() {
  local pid
  if pid=$(our_pid); then
    if answering; then
      touch "$HOME_DIR/data/.booted"
      log "already running (pid $pid) and answering on $ADDRESS:$PORT"; return 0
    fi
    log "pid $pid is still starting; waiting for it"
  elif answering; then
    log "something else already answers CQL on $ADDRESS:$PORT; using it"; return 0
  elif port_open; then
    die "$ADDRESS:$PORT is taken by something that does not answer CQL"
  else
    [[ -f $YAML ]] || die "no such yaml: $YAML"
    install
    # A first boot cut short leaves half-written system tables that fail every later start
    # ("Columns not found in schema table"): such a data dir holds nothing worth keeping.
    if [[ -d $HOME_DIR/data && ! -e $HOME_DIR/data/.booted ]]; then
      log "wiping $HOME_DIR/data (its first boot never finished)"
      rm -rf "$HOME_DIR/data"
    fi
    mkdir -p "$HOME_DIR/data" "$HOME_DIR/triggers" "$LOGS"
    # A yaml with client_encryption_options (etc/cassandra.yaml: optional TLS on the same port)
    # gets the test key and certificate for cassandra.test.local, made here on first use.
    local tls=()
    if grep -q '^client_encryption_options:' "$YAML"; then
      bash "$ROOT/scripts/tls-test-certs.sh" "$STATE/tls"
      tls=(-Dcassandra.config.allow_system_properties=true
        "-Dcassandra.settings.client_encryption_options.keystore=$STATE/tls/server-keystore.pem")
    fi
    log "starting Cassandra ($(basename "$(ls "$LIB"/cassandra-all-*.jar)" .jar), yaml $YAML)"
    local jvm=(
      -Xms1G -Xmx1G
      -XX:+ExitOnOutOfMemoryError # Cassandra's advice: die rather than risk corrupt data
      # C1 only: starts in ~15 s instead of ~26 s on 2 cores; for benchmarks pass
      # FEEDS_CASSANDRA_JVM_OPTS=-XX:TieredStopAtLevel=4 (full JIT, the later flag wins).
      -XX:TieredStopAtLevel=1
      -Dcassandra-foreground=yes # without it the daemon closes stdout/stderr
      "-javaagent:$(ls "$LIB"/jamm-*.jar)"
      "-Dcassandra.config=file://$YAML"
      "-Dcassandra.storagedir=$HOME_DIR/data"
      "-Dcassandra.logdir=$LOGS"
      "-Dlogback.configurationFile=file://$ROOT/etc/cassandra-logback.xml"
      # Fast single-node start; cassandra/cassandra usable at once when auth is on.
      -Dcassandra.skip_wait_for_gossip_to_settle=0
      -Dcassandra.superuser_setup_delay_ms=0
      -Dcassandra.shutdown_announce_in_ms=0 # no peers to tell: stop 2 s sooner
      # Skips a ~3 s memtable overhead measurement at boot (181 is what 5.0 measures on JDK 17).
      -Dcassandra.memtable.row_overhead_size=181
      "-Dcassandra.triggers_dir=$HOME_DIR/triggers"
      -Dchronicle.analytics.disable=true
      # JDK 17: Cassandra's conf/jvm17-server.options (it reaches into JDK internals).
      -Djdk.attach.allowAttachSelf=true
      --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
      --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
      --add-exports java.management/com.sun.jmx.remote.security=ALL-UNNAMED
      --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
      --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
      --add-exports java.sql/java.sql=ALL-UNNAMED
      --add-exports java.base/java.lang.ref=ALL-UNNAMED
      --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
      --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
      --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
      --add-opens java.base/java.lang.module=ALL-UNNAMED
      --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
      --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
      --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
      --add-opens java.base/jdk.internal.math=ALL-UNNAMED
      --add-opens java.base/jdk.internal.module=ALL-UNNAMED
      --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
      --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
      --add-opens java.base/sun.nio.ch=ALL-UNNAMED
      --add-opens java.base/java.io=ALL-UNNAMED
      --add-opens java.base/java.lang.reflect=ALL-UNNAMED
      --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
      --add-opens java.base/java.lang=ALL-UNNAMED
      --add-opens java.base/java.util=ALL-UNNAMED
      --add-opens java.base/java.nio=ALL-UNNAMED
      -Dio.netty.tryReflectionSetAccessible=true
      -Dio.netty.allocator.useCacheForAllThreads=true
      -Dio.netty.allocator.maxOrder=11
    )
    # setsid: its own session, so the caller's Ctrl-C or process-group cleanup leaves it running.
    # FEEDS_CASSANDRA_JVM_OPTS: extra JVM flags (word-split), e.g. to try another heap size.
    # shellcheck disable=SC2206
    jvm+=("${tls[@]}" ${FEEDS_CASSANDRA_JVM_OPTS:-})
    setsid nohup java "${jvm[@]}" -cp "$LIB/*" org.apache.cassandra.service.CassandraDaemon \
      >"$LOGS/stdout.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PID_FILE"
  fi

  local t0=$SECONDS
  until answering; do
    if ! alive "$pid"; then
      tail -n 40 "$LOGS/stdout.log" "$LOGS/system.log" >&2 2>/dev/null || true
      rm -f "$PID_FILE"
      die "Cassandra (pid $pid) exited during startup"
    fi
    if (( SECONDS - t0 >= START_TIMEOUT )); then
      tail -n 40 "$LOGS/system.log" >&2 2>/dev/null || tail -n 40 "$LOGS/stdout.log" >&2
      stop
      die "no CQL answer on $ADDRESS:$PORT after ${START_TIMEOUT}s"
    fi
    sleep 1
  done
  touch "$HOME_DIR/data/.booted"
  log "up (pid $pid) and answering CQL on $ADDRESS:$PORT after $((SECONDS - t0))s"
}

stop() {
  local pid
  if ! pid=$(our_pid); then
    rm -f "$PID_FILE"
    log "not running (no process started by this script)"
    return 0
  fi
  # SIGTERM runs Cassandra's shutdown hook, a drain (flushes memtables, syncs the commitlog):
  # a restart keeps every acknowledged write.
  log "stopping pid $pid"
  kill "$pid"
  for _ in $(seq 300); do alive "$pid" || break; sleep 0.2; done
  if alive "$pid"; then
    log "pid $pid still alive after 60s; killing it"
    kill -9 "$pid"
    while alive "$pid"; do sleep 0.2; done
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

status() {
  if answering; then
    log "answering CQL on $ADDRESS:$PORT$(pid=$(our_pid) && echo " (pid $pid, started by this script)")"
  else
    log "no CQL answer (or login refused) on $ADDRESS:$PORT"
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
