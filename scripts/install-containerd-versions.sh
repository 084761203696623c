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

apt_dir="$dir/apt"
mkdir -p "$apt_dir/etc/sources.list.d" "$apt_dir/etc/preferences.d" \
  "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
touch "$apt_dir/state/status"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
: >"$apt_dir/etc/sources.list"
for w in "${missing[@]}"; do
  echo "deb [signed-by=$keyring] http://deb.debian.org/debian ${w%%:*} main" >>"$apt_dir/etc/sources.list"
done
apt_opts=(
  -o "Dir::Etc=$apt_dir/etc"
  -o "Dir::Etc::sourcelist=$apt_dir/etc/sources.list"
  -o "Dir::Etc::sourceparts=$apt_dir/etc/sources.list.d"
  -o "Dir::Etc::preferencesparts=$apt_dir/etc/preferences.d"
  -o "Dir::State=$apt_dir/state"
  -o "Dir::State::status=$apt_dir/state/status"
  -o "Dir::Cache=$apt_dir/cache"
  -o "Debug::NoLocking=1"
  -o "APT::Sandbox::User=root"
)
echo "install-containerd-versions: fetching containerd ${missing[*]} (Debian's packages, private apt lists)" >&2
apt-get "${apt_opts[@]}" -qq update

for w in "${missing[@]}"; do
  suite="${w%%:*}" prefix="${w#*:}"
  # The suite's versions of `containerd`; the first (newest) of the wanted line.
  version=$(apt-cache "${apt_opts[@]}" madison containerd |
    awk -F'|' -v s="$suite/" -v p="$prefix" '
      { gsub(/ /, "", $2); gsub(/^ +| +$/, "", $3) }
      index($3, s) && index($2, p) == 1 { print $2; exit }')
  if [ -z "$version" ]; then
    echo "install-containerd-versions: Debian $suite has no containerd $prefix* package" >&2
    exit 1
  fi
  (cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" -qq download "containerd=$version")
  deb=$(ls "$apt_dir/debs/"containerd_"${version/:/%3a}"_*.deb | head -n 1)
  upstream="${version%%[~+-]*}"
  target="$dir/$upstream"
  rm -rf "$target.tmp"
  dpkg-deb -x "$deb" "$target.tmp"
  rm -rf "$target"
  mv "$target.tmp" "$target"
  rm -f "$deb"
  echo "install-containerd-versions: containerd $version -> $target ($("$target/usr/bin/containerd" --version))" >&2
done
