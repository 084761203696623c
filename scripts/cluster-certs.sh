#!/usr/bin/env bash
# Makes the cluster CA (once) and a certificate per name, for shoal's mutual TLS between
# nodes (shoald [swarm.tls]) and shoal-registry-ext ([tls]).
#
#   scripts/cluster-certs.sh DIR NAME...
#
# DIR/ca.pem and DIR/ca-key.pem are created if missing (keep ca-key.pem off the nodes); for
# each NAME, DIR/NAME.pem and DIR/NAME-key.pem (ECDSA P-256, valid 825 days, usable as
# server and client). Give each node ca.pem and its own pair. Peers are dialled by IP and
# need not match their certificate's name: the cluster CA is the authority.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 DIR NAME..." >&2
  exit 2
fi
dir=$1
shift
mkdir -p "$dir"
umask 077
if [ ! -f "$dir/ca.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=shoal cluster CA" -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  echo "created the cluster CA: $dir/ca.pem"
fi
for name in "$@"; do
  case $name in
    */* | "" | .*) echo "bad name: $name" >&2; exit 2 ;;
  esac
  ext=$(mktemp)
  trap 'rm -f "$ext"' EXIT
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:%s\n' "$name" >"$ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=$name" -keyout "$dir/$name-key.pem" 2>/dev/null |
    openssl x509 -req -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" -CAcreateserial \
      -days 825 -extfile "$ext" -out "$dir/$name.pem" 2>/dev/null
  rm -f "$ext"
  echo "issued $dir/$name.pem and $dir/$name-key.pem"
done
chmod 644 "$dir/ca.pem"
