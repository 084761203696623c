#!/usr/bin/env bash
# The whole test suite: installs what the tests need, builds, runs every test (unit, and
# end-to-end against real containerd 1.6 and a real registry). Run as root: the end-to-end
# tests mount, mknod, chown and set trusted.* xattrs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

# Keep Cargo's build directory outside the clone so repeated runs reuse it; works from empty.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/shoal-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

cargo build --workspace --all-targets --locked 2>&1 | tail -n 3
# The optional BitTorrent export (cargo feature `torrent`, off in the default build).
cargo build -p shoal-registry-ext --features torrent --all-targets --locked 2>&1 | tail -n 3
# Two cores: the end-to-end tests start containerd and registries of their own; two test
# threads keep them from starving each other.
log=$(mktemp /tmp/shoal-test.XXXXXX)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked -- --test-threads=2 2>&1 | tee "$log" || status=$?
# shoal-registry-ext again with the `torrent` feature (its unit tests, and tests/torrent.rs:
# a librqbit client downloads a blob from the seeder on 127.0.0.1).
cargo test -p shoal-registry-ext --features torrent --locked -- --test-threads=2 2>&1 |
    tee -a "$log" || status=$?
# One closing line for the whole run (cargo prints one per test binary, the last of which is
# often a crate's empty doc-test run).
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
