#!/usr/bin/env bash
# Installs what the Kubernetes manifests' tests (integration/tests/k8s_manifests.rs) and
# docs/kubernetes.md use, idempotently, under $SHOAL_K8S_TOOLS_DIR (default
# /var/tmp/shoal-k8s-tools), touching nothing else on the machine:
#   bin/kubectl                  kubectl 1.36 (`kubectl kustomize` renders deploy/), Debian
#                                sid's `kubectl` package: Debian 12's archive has none new
#                                enough (its kubernetes-client is 1.20). Downloaded with a
#                                private apt configuration (its own sources, lists and cache
#                                under apt/; the machine's apt sources and installed packages
#                                are not touched) and unpacked with `dpkg-deb -x`
#                                (scripts/private-apt.sh, shared with
#                                install-containerd-versions.sh).
#   venv/bin/kubernetes-validate the `kubernetes-validate` PyPI package (pinned below), which
#                                ships the Kubernetes JSON schemas up to 1.37, in a venv of
#                                its own: validates the rendered manifests offline.
# Run as root (install-deps.sh calls it).
set -euo pipefail

dir="${SHOAL_K8S_TOOLS_DIR:-/var/tmp/shoal-k8s-tools}"
kubectl_suite=sid
kubectl_line="1.36."                 # the kubectl release line (the schemas are 1.36's too)
kubernetes_validate="kubernetes-validate==1.37.0"

mkdir -p "$dir/bin"

have_kubectl() {
  local v
  [ -x "$dir/bin/kubectl" ] && v=$("$dir/bin/kubectl" version --client 2>/dev/null) &&
    [[ $v == *"Client Version: v${kubectl_line}"* ]]
}

if ! have_kubectl; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-k8s-tools: need root to fetch kubectl" >&2
    exit 1
  fi
  . "$(dirname "$0")/private-apt.sh"
  echo "install-k8s-tools: fetching kubectl ${kubectl_line}x (Debian $kubectl_suite's package, private apt lists)" >&2
  private_apt_setup install-k8s-tools "$dir/apt" "$kubectl_suite"
  private_apt_unpack kubectl "$kubectl_suite" "$kubectl_line" "$dir/kubectl-"
  target=$unpacked_dir
  ln -sfn "$target/usr/bin/kubectl" "$dir/bin/kubectl"
  have_kubectl || { echo "install-k8s-tools: $dir/bin/kubectl does not run" >&2; exit 1; }
  echo "install-k8s-tools: $("$dir/bin/kubectl" version --client | head -n 1) in $dir/bin" >&2
fi

venv="$dir/venv"
# The pinned version's dist-info in the venv, and the venv's python running.
if ! { compgen -G "$venv/lib/python3*/site-packages/kubernetes_validate-${kubernetes_validate#*==}.dist-info" >/dev/null &&
    "$venv/bin/python" -c 'import kubernetes_validate, yaml' 2>/dev/null; }; then
  echo "install-k8s-tools: installing $kubernetes_validate into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$kubernetes_validate"
fi
