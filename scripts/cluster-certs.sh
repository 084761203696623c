#!/usr/bin/env bash
# Makes the cluster CA (once) and a certificate per name, for shoal's mutual TLS between
# nodes (shoald [swarm.tls]) and shoal-registry-ext ([tls]).
#
#   scripts/cluster-certs.sh DIR NAME... [registry-side:NAME]...
#
#   e.g. scripts/cluster-certs.sh /etc/shoal/pki node-1 node-2 registry-side:registry-ext
#
# DIR/ca.pem and DIR/ca-key.pem are created if missing (keep ca-key.pem off the nodes); an
# existing CA is reused, so re-running remakes certificates the cluster already trusts. For
# each NAME, DIR/NAME.pem and DIR/NAME-key.pem (ECDSA P-256, valid 825 days, usable as server
# and client). Give each node ca.pem and its own pair.
#
# Roles: a plain NAME is a node (shoald); registry-side:NAME is a shoal-registry-ext. The
# certificate names its holder and role in two subject alternative names:
#   DNS:NAME                              for ordinary TLS name checks
#   URI:shoal://node/NAME                 or URI:shoal://registry-side/NAME
# shoal reads the URI: only registry-side certificates act as tracker, chunk-manifest service,
# seeder and preheat coordinator, and a node announces only under its NAME (which is its
# swarm.node_name). Certificates made by this script before roles have no URI and are
# refused: remake them with the same names (registry-side: for the registry extension).
# NAME: letters, digits, '.', '_' and '-', starting with a letter or digit. Peers are dialled
# by IP and need not match the DNS name: the cluster CA is the authority.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 DIR NAME... [registry-side:NAME]..." >&2
  exit 2
fi
dir=$1
shift
for arg in "$@"; do
  name=${arg#registry-side:}
  if ! [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$ ]]; then
    echo "bad name: $arg (NAME or registry-side:NAME; NAME of letters, digits, '.', '_', '-')" >&2
    exit 2
  fi
done
mkdir -p "$dir"
umask 077
if [ ! -f "$dir/ca.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=shoal cluster CA" -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  echo "created the cluster CA: $dir/ca.pem"
fi
ext=$(mktemp)
trap 'rm -f "$ext"' EXIT
for arg in "$@"; do
  case $arg in
    registry-side:*) role=registry-side ;;
    *) role=node ;;
  esac
  name=${arg#registry-side:}
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:%s,URI:shoal://%s/%s\n' \
    "$name" "$role" "$name" >"$ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=$name" -keyout "$dir/$name-key.pem" 2>/dev/null |
    openssl x509 -req -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" -CAcreateserial \
      -days 825 -extfile "$ext" -out "$dir/$name.pem" 2>/dev/null
  echo "issued $dir/$name.pem and $dir/$name-key.pem ($role $name)"
  if [ "$role" = node ] && [[ $name == *registry* ]]; then
    echo "note: $name is a node certificate; for shoal-registry-ext use registry-side:$name" >&2
  fi
done
chmod 644 "$dir/ca.pem"
