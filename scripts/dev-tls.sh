#!/usr/bin/env bash
# Development TLS material: a CA, a server certificate for localhost/127.0.0.1 and a client
# certificate (for mTLS), all EC P-256. Usage: dev-tls.sh DIR [CLIENT_NAME [MORE_CLIENT_NAME...]]
# The first client is client.pem/client-key.pem; each further one NAME.pem/NAME-key.pem
# (for example a key custodian). Client identities are URI SANs spiffe://hsm-signer.dev/NAME.
set -euo pipefail
DIR=$1; CLIENT=${2:-dev-client}; shift $(( $# > 1 ? 2 : 1 ))
mkdir -p "$DIR"; chmod 700 "$DIR"; cd "$DIR"
umask 077
# What exists is kept (run it again to add a client); only missing files are made.
[ -s ca.pem ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca-key.pem -out ca.pem -days 825 \
  -subj "/CN=hsm-signer development CA" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
issue() { # name subject ext
  [ -s "$1.pem" ] && return 0
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1-key.pem" -out "$1.csr" -subj "$2" 2>/dev/null
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out "$1.pem" -days 825 -sha256 -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
issue server "/CN=localhost" "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth
keyUsage=critical,digitalSignature"
issue client "/CN=$CLIENT" "subjectAltName=URI:spiffe://hsm-signer.dev/$CLIENT
extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature"
for name in "$@"; do
  issue "$name" "/CN=$name" "subjectAltName=URI:spiffe://hsm-signer.dev/$name
extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature"
  chmod 644 "$name.pem"
done
chmod 644 ca.pem server.pem client.pem
