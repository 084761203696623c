#!/usr/bin/env bash
# Unpacks the newer containerd releases the tests run against, beside the system's containerd
# (Debian 12's 1.6, from install-deps.sh), never replacing it:
#   1.7 from Debian 13 (trixie), 2.1 from Debian sid.
# Each is Debian's own `containerd` package, downloaded with a private apt configuration
# (its own sources list, lists and cache under $SHOAL_CONTAINERD_DIR/apt: the machine's apt
# sources, lists and installed packages are not touched) and unpacked with `dpkg-deb -x` into
# $SHOAL_CONTAINERD_DIR/<upstream version>/ (binaries in usr/bin). Idempotent: a release
# already unpacked is not fetched again. The test harness finds them there
# (integration/src/containerd.rs, SHOAL_CONTAINERD=1.7|2.1|2.1-local).
# Run as root (install-deps.sh calls it).
set -euo pipefail

dir="${SHOAL_CONTAINERD_DIR:-/var/tmp/shoal-containerd}"
# suite:upstream-version-prefix, one per release line to test.
wanted=("trixie:1.7." "sid:2.1.")

have_line() {
  # Whether a release of line $1 (e.g. "2.1.") is unpacked and runs.
  local d
  for d in "$dir/$1"*/; do
    [ -x "$d/usr/bin/containerd" ] && [ -x "$d/usr/bin/ctr" ] &&
      "$d/usr/bin/containerd" --version >/dev/null 2>&1 && return 0
  done
  return 1
}

missing=()
for w in "${wanted[@]}"; do
  have_line "${w#*:}" || missing+=("$w")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-containerd-versions: need root to fetch containerd ${missing[*]}" >&2
  exit 1
fi

. "$(dirname "$0")/private-apt.sh"
echo "install-containerd-versions: fetching containerd ${missing[*]} (Debian's packages, private apt lists)" >&2
private_apt_setup install-containerd-versions "$dir/apt" "${missing[@]%%:*}"

for w in "${missing[@]}"; do
  # The suite's newest `containerd` of the wanted line, into $dir/<upstream version>.
  private_apt_unpack containerd "${w%%:*}" "${w#*:}" "$dir/"
  version=$unpacked_version target=$unpacked_dir
  echo "install-containerd-versions: containerd $version -> $target ($("$target/usr/bin/containerd" --version))" >&2
done
