#!/usr/bin/env bash
# Creates a throw-away certificate authority and certificates for tests and the demo, with
# openssl: DIR/ca.{key,crt}, DIR/server.{key,crt} (for 127.0.0.1 and localhost) and, per
# client name given, DIR/<name>.{key,crt} with subject CN <name> (what the node maps to a
# principal's cert_cn). Also DIR/other-ca.{key,crt} and DIR/foreign.{key,crt}: a client signed
# by an unrelated CA, which a node must refuse at the handshake.
#   scripts/make_test_certs.sh DIR [CLIENT_CN ...]
# EC P-256 keys, valid 2 days. Not for production: keys are unencrypted.
set -euo pipefail
dir="${1:?usage: make_test_certs.sh DIR [CLIENT_CN ...]}"
shift
mkdir -p "$dir"
cd "$dir"

key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }

# issue NAME CN CA [server]: NAME.key and NAME.crt signed by CA.
issue() {
  local name="$1" cn="$2" ca="$3" ext
  key "$name.key"
  openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$name.csr" 2>/dev/null
  if [[ "${4:-}" == server ]]; then
    ext="subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth,clientAuth"
  else
    ext="extendedKeyUsage=clientAuth"
  fi
  openssl x509 -req -in "$name.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial -days 2 \
    -sha256 -extfile <(echo "$ext") -out "$name.crt" 2>/dev/null
  rm -f "$name.csr"
}

for ca in ca other-ca; do
  key "$ca.key"
  openssl req -x509 -new -key "$ca.key" -subj "/CN=strata test $ca" -days 2 -sha256 \
    -out "$ca.crt" 2>/dev/null
done
issue server localhost ca server
for cn in "$@"; do issue "$cn" "$cn" ca; done
issue foreign foreign.example other-ca
echo "make_test_certs: CA, server and ${#} client certificates in $dir"
