#!/usr/bin/env bash
# Makes (or remakes) the cluster certificates for shoal on Kubernetes (deploy/), with
# scripts/cluster-certs.sh, and lays them out for the cluster:
#
#   scripts/k8s-certs.sh [--cert-manager] DIR NODE...
#
#   e.g. scripts/k8s-certs.sh ~/shoal-pki $(kubectl get nodes -o jsonpath='{.items[*].metadata.name}')
#
# DIR keeps the cluster CA (ca.pem, ca-key.pem: made once, reused on every later run, so
# re-running renews certificates the cluster already trusts) and writes:
#   DIR/k8s/shoal-registry-ext-tls.yaml  Secret shoal-registry-ext-tls (ca.crt, tls.crt,
#                                        tls.key): the registry side's certificate
#                                        (shoal://registry-side/registry-ext), shared by every
#                                        shoal-registry-ext replica. kubectl apply -f it.
#   DIR/nodes/NODE/{ca.pem,node.pem,node-key.pem}
#                                        each node's own certificate (shoal://node/NODE):
#                                        copy to /etc/shoal/pki/ on that node (mode 0600 for
#                                        the key), where the shoald DaemonSet reads it.
#   with --cert-manager, DIR/k8s/shoal-ca.yaml instead of the registry side's Secret:
#                                        Secret shoal-ca (tls.crt, tls.key: the CA and its
#                                        KEY) for deploy/overlays/cert-manager's Issuer, which
#                                        then issues and renews the registry side's certificate.
# NODE: the Kubernetes node names (each is that node's swarm name). The Secrets are written
# with `kubectl create secret --dry-run=client` ($KUBECTL, default kubectl): no cluster is
# contacted. Rotation and the CA's key: docs/kubernetes.md, "Certificates".
set -euo pipefail

cert_manager=false
if [ "${1:-}" = --cert-manager ]; then
  cert_manager=true
  shift
fi
if [ $# -lt 2 ]; then
  echo "usage: $0 [--cert-manager] DIR NODE..." >&2
  exit 2
fi
dir=$1
shift
kubectl=${KUBECTL:-kubectl}
namespace=${SHOAL_NAMESPACE:-shoal}
registry_side=registry-ext
here=$(dirname "$0")

"$here/cluster-certs.sh" "$dir" "$@" "registry-side:$registry_side"

umask 077
mkdir -p "$dir/k8s" "$dir/nodes"
for node in "$@"; do
  out="$dir/nodes/$node"
  mkdir -p "$out"
  cp "$dir/ca.pem" "$out/ca.pem"
  cp "$dir/$node.pem" "$out/node.pem"
  cp "$dir/$node-key.pem" "$out/node-key.pem"
  chmod 644 "$out/ca.pem" "$out/node.pem"
done

if $cert_manager; then
  "$kubectl" create secret tls shoal-ca --namespace "$namespace" \
    --cert "$dir/ca.pem" --key "$dir/ca-key.pem" --dry-run=client -o yaml >"$dir/k8s/shoal-ca.yaml"
  rm -f "$dir/k8s/shoal-registry-ext-tls.yaml"
  secret="$dir/k8s/shoal-ca.yaml (the CA's key: for cert-manager's Issuer only)"
else
  "$kubectl" create secret generic shoal-registry-ext-tls --namespace "$namespace" \
    --from-file=ca.crt="$dir/ca.pem" --from-file=tls.crt="$dir/$registry_side.pem" \
    --from-file=tls.key="$dir/$registry_side-key.pem" --dry-run=client -o yaml \
    >"$dir/k8s/shoal-registry-ext-tls.yaml"
  rm -f "$dir/k8s/shoal-ca.yaml"
  secret="$dir/k8s/shoal-registry-ext-tls.yaml"
fi

cat <<EOF
next:
  kubectl apply -f $secret
  on each node NODE: install -d -m 0700 /etc/shoal/pki && copy $dir/nodes/NODE/* there
  keep $dir/ca-key.pem off the nodes and out of the cluster$($cert_manager && echo " (but in the Secret shoal-ca)")
EOF
