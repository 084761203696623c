#!/usr/bin/env bash
# The main job, end to end on one machine. Run as root.
#  1. Installs what is needed, builds shoal, starts a local registry (Debian's docker-registry)
#     on 127.0.0.1, writes a test image (a rootfs-like layer of many small files, a layer of a
#     few large files, a binaries layer; gzip, zstd and uncompressed), pushes it with skopeo,
#     and streams every layer through `shoald unpack`, printing per-layer time and throughput.
#  2. A real pull through shoal as kubelet does it: a private containerd (1.6, then 2.1
#     through its transfer service; configured by shoald containerd-config's code) with
#     shoald as its CRI snapshotter pulls a multi-layer image through CRI PullImage from a
#     registry in a network namespace capped at 400 Mbit/s, next to the same pull with
#     containerd's own overlayfs snapshotter (the cri_pull benchmark, one run each).
#
# Environment: SHOAL_DEMO_PORT (default 5055), SHOAL_DEMO_DIR (default a new temp dir, removed
# at the end unless SHOAL_DEMO_KEEP=1), CARGO_TARGET_DIR (default /var/tmp/shoal-target).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/shoal-target}"
cargo build --release --locked -p shoal-plugin -p shoal-registry-ext -p shoal-integration --bins
bin="$CARGO_TARGET_DIR/release"

port="${SHOAL_DEMO_PORT:-5055}"
work="${SHOAL_DEMO_DIR:-$(mktemp -d /var/tmp/shoal-demo.XXXXXX)}"
mkdir -p "$work"
keep="${SHOAL_DEMO_KEEP:-0}"
registry="127.0.0.1:$port"

cat >"$work/registry.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $work/registry
  delete:
    enabled: true
http:
  addr: $registry
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
cleanup() {
  kill "$registry_pid" 2>/dev/null || true
  if [ "$keep" = 1 ]; then
    echo "kept: registry log $work/registry.log, layers in $work/unpacked"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
for _ in $(seq 100); do
  curl -fsS "http://$registry/v2/" >/dev/null 2>&1 && break
  kill -0 $registry_pid 2>/dev/null || { cat "$work/registry.log"; exit 1; }
  sleep 0.1
done

echo "== building and pushing $registry/shoal-demo:latest"
"$bin/shoal-testimage" --out "$work/layout" --tag latest \
  --layer gzip:/usr/include \
  --layer zstd:random:96:6 \
  --layer none:/usr/bin \
  --layer gzip:/usr/share/doc \
  --push "$registry/shoal-demo"

echo "== shoald unpack"
rm -rf "$work/unpacked"
"$bin/shoald" unpack "$registry/shoal-demo:latest" --plain-http "$registry" --dest "$work/unpacked"

echo "== CRI pull through shoal (as kubelet) vs containerd's overlayfs snapshotter"
SHOAL_BENCH_RUNS="${SHOAL_BENCH_RUNS:-1}" cargo bench --locked -p shoal-integration --bench cri_pull

echo "== the swarm: 8 nodes pull one image at once, through shoal vs straight from the registry"
SHOAL_BENCH_NODES="${SHOAL_BENCH_NODES:-8}" SHOAL_BENCH_IMAGE_MIB="${SHOAL_BENCH_IMAGE_MIB:-32}" \
  SHOAL_BENCH_MODES="${SHOAL_BENCH_MODES:-swarm,native}" \
  cargo bench --locked -p shoal-integration --bench swarm
