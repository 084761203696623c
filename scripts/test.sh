#!/usr/bin/env bash
# The whole test suite: installs what the tests need, builds, runs every test (unit, and
# end-to-end against real containerd and a real registry), then the tests that exercise
# containerd again on each newer containerd of the matrix (1.7, and 2.1 through both CRI pull
# paths). Run as root: the end-to-end tests mount, mknod, chown and set trusted.* xattrs.
#
# SHOAL_TEST_MATRIX: the containerds the matrix runs after the main run on 1.6 (default
# "1.7 2.1 2.1-local"; empty for none).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

# Keep Cargo's build directory outside the clone so repeated runs reuse it; works from empty.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/shoal-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

cargo build --workspace --all-targets --locked 2>&1 | tail -n 3
# The optional BitTorrent export (cargo feature `torrent`, off in the default build).
cargo build -p shoal-registry-ext --features torrent --all-targets --locked 2>&1 | tail -n 3
# A test that cannot run (a tool or a containerd missing) fails instead of skipping.
export SHOAL_TEST_STRICT=1

# Prints which containerd a run uses (integration/src/containerd/flavor.rs finds the same).
containerd_of() {
  local bin=containerd
  if [ "$1" != 1.6 ]; then
    bin=$(ls -d "${SHOAL_CONTAINERD_DIR:-/var/tmp/shoal-containerd}/${1%-local}".*/usr/bin/containerd | sort -V | tail -n 1)
  fi
  "$bin" --version
}

# Two cores: the end-to-end tests start containerd and registries of their own; two test
# threads keep them from starving each other.
log=$(mktemp /tmp/shoal-test.XXXXXX)
trap 'rm -f "$log"' EXIT
status=0
echo "== containerd 1.6 (SHOAL_CONTAINERD=1.6): $(containerd_of 1.6)"
SHOAL_CONTAINERD=1.6 cargo test --workspace --locked -- --test-threads=2 2>&1 | tee "$log" || status=$?
# shoal-registry-ext again with the `torrent` feature (its unit tests, and tests/torrent.rs:
# a librqbit client downloads a blob from the seeder on 127.0.0.1).
cargo test -p shoal-registry-ext --features torrent --locked -- --test-threads=2 2>&1 |
    tee -a "$log" || status=$?
# The containerd matrix: the end-to-end tests (crate shoal-integration: CRI remote path,
# fallback, kill -9, re-pull, mirror with CRI and ctr --hosts-dir, discard_unpacked_layers,
# swarm clusters, faults, preheat) again on each newer release and CRI pull path: the same
# test binaries, the containerd chosen by SHOAL_CONTAINERD.
for c in ${SHOAL_TEST_MATRIX-1.7 2.1 2.1-local}; do
  echo "== containerd $c (SHOAL_CONTAINERD=$c): $(containerd_of "$c" 2>&1)"
  SHOAL_CONTAINERD=$c cargo test -p shoal-integration --locked -- --test-threads=2 2>&1 |
    tee -a "$log" || status=$?
done
# One closing line for the whole run (cargo prints one per test binary, the last of which is
# often a crate's empty doc-test run).
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
