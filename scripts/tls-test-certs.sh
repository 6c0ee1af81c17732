#!/usr/bin/env bash
# Test TLS material for the Cassandra TLS tests (never for production), written as PEM into OUTDIR:
#   scripts/tls-test-certs.sh OUTDIR
#
#   ca.pem                      test CA (trust this one)
#   server.pem, server.key      cassandra.test.local, signed by the test CA
#   server-keystore.pem         server.key + server.pem in one file (Cassandra's PEMBasedSslContextFactory)
#   wrong-name.pem, .key        wrong-name.test.local, signed by the test CA
#   expired.pem, .key           cassandra.test.local, signed by the test CA, valid only during 2020
#   other-ca.pem                a second CA that nobody trusts
#   unknown-ca.pem, .key        cassandra.test.local, signed by the second CA
#
# Safe to run twice and concurrently: an OUTDIR whose files are all there and whose good certificate
# is valid for at least 30 more days is left as it is (a running Cassandra keeps serving a
# certificate that the test CA still verifies); otherwise everything is made anew and replaces OUTDIR's
# files at once. FEEDS_TLS_CERTS_FORCE=1 remakes them regardless. Needs openssl (1.1.1 or 3.x).
set -euo pipefail

log() { echo "tls-test-certs.sh: $*" >&2; }
die() { log "$*"; exit 1; }

[[ $# -eq 1 && -n $1 ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
command -v openssl >/dev/null || die "openssl is missing (Debian: apt-get install openssl)"

OUT=$1
NAME=cassandra.test.local
FILES=(ca.pem server.pem server.key server-keystore.pem wrong-name.pem wrong-name.key
  expired.pem expired.key other-ca.pem unknown-ca.pem unknown-ca.key)

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# One generator at a time per OUTDIR; the others wait, then find the files made.
exec 9>"$OUT/.lock"
flock 9

complete() {
  local f
  for f in "${FILES[@]}"; do [[ -s $OUT/$f ]] || return 1; done
  openssl x509 -in "$OUT/server.pem" -noout -checkend $((30 * 24 * 3600)) >/dev/null
}

if [[ ${FEEDS_TLS_CERTS_FORCE:-0} != 1 ]] && complete; then
  exit 0
fi

WORK=$(mktemp -d "$OUT/.new.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

key() { openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null; }

# A self-signed CA certificate, valid 10 years.
make_ca() { # name subject
  key "$1.key"
  openssl req -new -x509 -key "$1.key" -out "$1.pem" -days 3650 -sha256 -subj "/O=feeds tests/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash"
}

# The extensions of every server certificate, for DNS name $1.
server_ext() {
  cat <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:$1
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EOF
}

# A server certificate for DNS name $3 signed by CA $2, valid 825 days from now.
make_server() { # out ca dns-name
  key "$1.key"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "/O=feeds tests/CN=$3"
  server_ext "$3" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -out "$1.pem" \
    -days 825 -sha256 -extfile "$1.ext" 2>/dev/null
}

# A server certificate for DNS name $3 signed by CA $2 whose validity ended long ago: `x509 -days`
# cannot go back in time (and OpenSSL 3.0's x509 has no -not_before/-not_after), `openssl ca` can.
make_expired() { # out ca dns-name
  key "$1.key"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "/O=feeds tests/CN=$3"
  server_ext "$3" >"$1.ext"
  mkdir -p ca-db && : >ca-db/index.txt && echo 1000 >ca-db/serial
  cat >ca-db/ca.cnf <<EOF
[ca]
default_ca = test_ca
[test_ca]
database = $WORK/ca-db/index.txt
serial = $WORK/ca-db/serial
new_certs_dir = $WORK/ca-db
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[any]
organizationName = optional
commonName = supplied
EOF
  openssl ca -batch -notext -config ca-db/ca.cnf -cert "$2.pem" -keyfile "$2.key" \
    -in "$1.csr" -out "$1.pem" -extfile "$1.ext" \
    -startdate 20200101000000Z -enddate 20201231000000Z 2>/dev/null
}

make_ca ca "feeds test CA"
make_ca other-ca "feeds unknown test CA"
make_server server ca "$NAME"
make_server wrong-name ca wrong-name.test.local
make_server unknown-ca other-ca "$NAME"
make_expired expired ca "$NAME"
cat server.key server.pem >server-keystore.pem

# Sanity: each certificate is what its name says.
openssl verify -CAfile ca.pem server.pem wrong-name.pem >/dev/null
if openssl verify -CAfile ca.pem unknown-ca.pem >/dev/null 2>&1; then die "unknown-ca.pem verifies"; fi
if openssl x509 -in expired.pem -noout -checkend 0 >/dev/null; then die "expired.pem has not expired"; fi

chmod 644 ./*.pem ./*.key
for f in "${FILES[@]}"; do mv -f "$f" "$OUT/$f"; done
log "wrote test CA and server certificates for $NAME into $OUT"
