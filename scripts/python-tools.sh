#!/usr/bin/env bash
# Python-packaged tools in the state dir's venv: AWS SAM CLI and cargo-lambda (with zig, its cross
# linker) to build, and moto's server, the stand-in for API Gateway's Management API that the
# realtime tests post to (`moto_server`).
#   scripts/python-tools.sh          install (idempotent), then print the versions
#   source <(scripts/python-tools.sh --env)   put the venv's bin/ on PATH in this shell
# The venv is shared with scripts/cql (cqlsh); creating it again is harmless.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${FEEDS_STATE_DIR:-$ROOT/.local}
VENV=$STATE/venv
# Pinned together: sam's rust-cargolambda builder runs `cargo lambda build`, which links with zig.
SPECS=(
  'aws-sam-cli==1.170.0'
  'cargo-lambda==1.9.2'
  'ziglang==0.15.2'
  'moto[server]==5.2.5'
)

log() { echo "python-tools: $*" >&2; }

if [[ ${1:-} == --env ]]; then
  echo "export PATH=\"$VENV/bin:\$PATH\""
  exit 0
fi

mkdir -p "$STATE"
if [[ ! -x $VENV/bin/pip ]]; then
  log "creating Python venv $VENV"
  # Debian's system python3 ships venv without ensurepip; python3-venv brings it.
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    log "python3 -m venv failed; installing Debian's python3-venv"
    apt-get install -y python3-venv >&2
    python3 -m venv "$VENV"
  fi
fi

# pip's own check is slow-ish; skip it when every pin is already there.
stamp=$VENV/.python-tools.$(printf '%s\n' "${SPECS[@]}" | sha256sum | cut -c1-16)
if [[ ! -e $stamp ]]; then
  log "installing ${SPECS[*]} into $VENV (first use: a minute or two)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${SPECS[@]}" >&2
  touch "$stamp"
else
  log "already installed: ${SPECS[*]}"
fi

log "$("$VENV/bin/sam" --version)"
log "$("$VENV/bin/cargo-lambda" lambda --version 2>/dev/null || "$VENV/bin/cargo-lambda" --version)"
log "zig $("$VENV/bin/python" -m ziglang version)"
log "moto $("$VENV/bin/python" -c 'import moto; print(moto.__version__)')"
