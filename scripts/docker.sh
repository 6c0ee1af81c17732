#!/usr/bin/env bash
# The Docker engine, from Debian's docker.io package, run by hand (no systemd needed): what
# `sam local` runs the functions in (scripts/sam-local.sh).
#   scripts/docker.sh install|start|stop|restart|status
# When an engine already answers (a system service), start uses it and stop leaves it alone; stop
# only ends a dockerd this script started. State (pid, log) lives under $FEEDS_STATE_DIR (default
# <repo>/.local); images and containers in Docker's own /var/lib/docker.
# Also: FEEDS_DOCKER_START_TIMEOUT (s, default 60).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${FEEDS_STATE_DIR:-$ROOT/.local}
HOME_DIR=$STATE/docker
LOG=$HOME_DIR/dockerd.log
PID_FILE=$HOME_DIR/dockerd.pid
START_TIMEOUT=${FEEDS_DOCKER_START_TIMEOUT:-60}

SERVICE_CMD=dockerd

log() { echo "docker.sh: $*" >&2; }
die() { log "$*"; exit 1; }
# shellcheck source=lib/service.sh
source "$ROOT/scripts/lib/service.sh"

install() {
  if command -v dockerd >/dev/null && command -v docker >/dev/null; then return 0; fi
  # Without recommends: the engine is all that is needed (they add needrestart, git, apparmor...).
  log "installing Debian's docker.io (dockerd, containerd, runc; ~20 s; apt's log: $HOME_DIR/apt.log)"
  apt_install "$HOME_DIR/apt.log" docker.io
  log "installed: $(command -v dockerd)"
}

# A real API call: the engine's version.
answering() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

start() {
  local pid
  if pid=$(our_pid); then
    answering && { log "already running (pid $pid) and answering"; return 0; }
    log "pid $pid is still starting; waiting for it"
  elif command -v docker >/dev/null && answering; then
    log "a Docker engine already answers (not started here): using it"; return 0
  else
    install
    mkdir -p "$HOME_DIR"
    log "starting dockerd ($(dockerd --version | cut -d, -f1); log $LOG)"
    # setsid: its own session, so the caller's Ctrl-C or process-group cleanup leaves it running.
    setsid nohup dockerd --pidfile "$HOME_DIR/dockerd.own.pid" >"$LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PID_FILE"
  fi
  await_answer "$pid" "$START_TIMEOUT"
  log "up (pid $pid): engine $(docker version --format '{{.Server.Version}}'), bridge gateway $(bridge_gateway)"
}

# The address containers on the default bridge reach this host at.
bridge_gateway() {
  local gw
  gw=$(docker network inspect bridge --format '{{range .IPAM.Config}}{{.Gateway}}{{end}}' 2>/dev/null) || true
  [[ -n $gw ]] || gw=$(ip -4 -o addr show docker0 2>/dev/null | awk '{print $4}' | cut -d/ -f1)
  [[ -n $gw ]] || die "no address for the Docker bridge (docker0)"
  echo "$gw"
}

# dockerd stops its containers first (10 s each at most).
stop() { stop_ours 60; }

status() {
  if answering; then
    log "answering: engine $(docker version --format '{{.Server.Version}}')$(pid=$(our_pid) && echo " (pid $pid, started by this script)")"
  else
    log "no Docker engine answering"
    return 1
  fi
}

case ${1:-} in
  gateway) bridge_gateway ;;
  *) service_main "$@" ;;
esac
