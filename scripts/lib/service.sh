# Sourced by the scripts that run a local service by hand (scripts/redis.sh, scripts/docker.sh): the
# process checks, the Debian install, the stop sequence and the command line. The caller defines
# log(), die(), PID_FILE,
# SERVICE_CMD (a string its process's command line holds), LOG (the server's output), answering()
# (a real request to it) and the install/start/stop/status functions.

# Install a Debian package only when its command is missing (a fresh machine, whose
# package lists may be empty until the first apt-get update).
need() {
  command -v "$1" >/dev/null && return 0
  log "installing Debian package $2"
  apt-get install -y "$2" >&2 || { apt-get update >&2 && apt-get install -y "$2" >&2; }
}

# apt_install LOG PACKAGE...: Debian packages without their recommends, apt's output in LOG (its
# tail shown on failure); the package lists are updated first if they lack them (a fresh machine).
apt_install() {
  local apt_log=$1
  shift
  [[ $(id -u) == 0 ]] || die "$* missing; installing it needs root (apt-get)"
  mkdir -p "$(dirname "$apt_log")"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" ||
      { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"; }; } \
      >"$apt_log" 2>&1; then
    tail -n 20 "$apt_log" >&2
    die "apt-get could not install $* (log: $apt_log)"
  fi
}

# Is the process there and not a zombie? (An exited child of this shell stays a zombie.)
alive() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) && [[ ${s##*) } != Z* ]]; }

# Pid of the server this script started, if it still runs (a recycled pid runs something else).
our_pid() {
  local pid; pid=$(cat "$PID_FILE" 2>/dev/null) && alive "$pid" &&
    grep -qs "$SERVICE_CMD" "/proc/$pid/cmdline" && echo "$pid"
}

# Waits until the server started as pid $1 answers; fails (its log's tail shown, and stopped) if
# it exits first or does not answer within $2 seconds.
await_answer() {
  local pid=$1 timeout=$2 t0=$SECONDS
  until answering; do
    if ! alive "$pid"; then
      tail -n 40 "$LOG" >&2
      rm -f "$PID_FILE"
      log "pid $pid exited during startup"
      exit 1
    fi
    if (( SECONDS - t0 >= timeout )); then
      tail -n 40 "$LOG" >&2
      stop
      log "no answer after ${timeout}s"
      exit 1
    fi
    sleep 0.2
  done
}

# SIGTERM to what this script started, SIGKILL after $1 seconds; nothing else is touched.
stop_ours() {
  local grace=$1 pid
  if ! pid=$(our_pid); then
    rm -f "$PID_FILE"
    log "not running (no process started by this script)"
    return 0
  fi
  log "stopping pid $pid"
  kill "$pid"
  for _ in $(seq $((grace * 5))); do alive "$pid" || break; sleep 0.2; done
  if alive "$pid"; then
    log "pid $pid still alive after ${grace}s; killing it"
    kill -9 "$pid"
    while alive "$pid"; do sleep 0.2; done
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

# The command line: install|start|stop|restart|status.
service_main() {
  case ${1:-} in
    install) install ;;
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    status) status ;;
    *) echo "usage: $0 install|start|stop|restart|status" >&2; exit 2 ;;
  esac
}
