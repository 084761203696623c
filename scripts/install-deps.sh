#!/usr/bin/env bash
# Installs what shoal's builds, tests, demo and benchmarks need on Debian, idempotently:
# nothing is installed twice and nothing else is touched. Run as root.
set -euo pipefail

packages=(
  containerd      # containerd 1.6 + ctr: the tests run their own instance
  docker-registry # the distribution registry, started on 127.0.0.1 by the tests
  skopeo          # pushes the OCI layouts the tests write
  umoci           # OCI layout tool
  iproute2        # ip netns / veth / tc for the emulated nodes
  apache2-utils   # htpasswd, for the registry auth tests
  pigz            # unpigz, a baseline of the unpack benchmark
  zstd            # zstd, a baseline of the unpack benchmark
  tar
  curl            # the demo waits for the registry with it
  gcc             # the zstd crate builds libzstd
  pkg-config
  ca-certificates
  openssl         # scripts/cluster-certs.sh (the cluster CA and node certificates), tested
  protobuf-compiler # protoc: containerd-snapshots generates containerd's snapshots gRPC API at build time
  golang-go       # builds containerd's snapshotter conformance suite (conformance/)
  golang-github-containerd-containerd-dev # the suite's sources (containerd 1.6)
  attr            # getfattr/setfattr, for looking at unpacked layers by hand
  python3-venv    # scripts/build-image.py (python3) and the venv of install-k8s-tools.sh
  binutils        # strip, for scripts/build-image.py (gcc pulls it in too)
  prometheus      # prometheus + promtool: deploy/monitoring's rules checked and unit-tested,
                  # and the dashboard's queries run against a Prometheus the test starts on
                  # loopback (the package's own service, where systemd starts it, is not used)
  systemd         # systemd-analyze: the tests verify the unit files in systemd/ (where systemd is
                  # not PID 1, as in a container, this only adds its tools; nothing is started)
  fonts-dejavu-core # DejaVuSans.ttf: the text of shoal-sim's CDF plot (docs/simulator.md)
)

missing=()
for p in "${packages[@]}"; do
  # `dpkg-query` prints "install ok installed" only for a package fully installed.
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Debian packages start their services where systemd runs; the tests start their own
# instances on private sockets and ports, so the system ones are not needed.
if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found: install the Rust toolchain (rustup) first" >&2
  exit 1
fi

# containerd 1.7 and 2.1 (Debian 13's and sid's packages) unpacked beside the system's 1.6,
# for the tests' containerd matrix.
"$(dirname "$0")/install-containerd-versions.sh"

# kubectl 1.36 (Debian sid's package, unpacked privately) and kubernetes-validate (PyPI, in a
# venv of its own), for the Kubernetes manifests' tests (deploy/, docs/kubernetes.md).
"$(dirname "$0")/install-k8s-tools.sh"
