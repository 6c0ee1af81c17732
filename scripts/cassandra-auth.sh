#!/usr/bin/env bash
# A second local Cassandra node, with PasswordAuthenticator and CassandraAuthorizer on, for the
# service-specific-credentials test (shared/tests/cassandra_password.rs): 127.0.0.2:9042, its own
# cluster and state directory (<state>/cassandra-auth), the same jars as scripts/cassandra.sh.
# Its superuser is cassandra/cassandra.
#   scripts/cassandra-auth.sh start|stop|restart|status
# Its yaml is etc/cassandra.yaml with the address, the cluster name and the auth classes changed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${FEEDS_STATE_DIR:-$ROOT/.local}
ADDRESS=127.0.0.2
YAML=$STATE/cassandra-auth/cassandra.yaml

mkdir -p "$(dirname "$YAML")"
sed -e "s/127\.0\.0\.1/$ADDRESS/g" \
  -e 's/^cluster_name: .*/cluster_name: feeds-local-auth/' \
  -e 's/^authenticator: .*/authenticator: PasswordAuthenticator/' \
  -e 's/^authorizer: .*/authorizer: CassandraAuthorizer/' \
  "$ROOT/etc/cassandra.yaml" >"$YAML.tmp"
grep -q '^authenticator: PasswordAuthenticator$' "$YAML.tmp" ||
  { echo "cassandra-auth.sh: etc/cassandra.yaml has no authenticator line to change" >&2; exit 1; }
mv "$YAML.tmp" "$YAML"

FEEDS_CASSANDRA_INSTANCE=cassandra-auth FEEDS_CASSANDRA_ADDRESS=$ADDRESS FEEDS_CASSANDRA_YAML=$YAML \
  exec bash "$ROOT/scripts/cassandra.sh" "$@"
