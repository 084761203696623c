# Sourced by install-containerd-versions.sh and install-k8s-tools.sh: fetches Debian packages
# of other suites (trixie, sid) with a private apt configuration (its own sources list,
# lists and cache under one directory: the machine's apt sources, lists and installed
# packages are not touched) and unpacks them with `dpkg-deb -x`, never installing them.

# private_apt_setup NAME DIR SUITE...: the apt configuration in DIR for SUITEs' main
# component, its lists updated; sets `private_apt_opts` (the options for apt-get and
# apt-cache) and `private_apt_name` (NAME, for messages).
private_apt_setup() {
  private_apt_name=$1
  local dir=$2 suite
  shift 2
  mkdir -p "$dir/etc/sources.list.d" "$dir/etc/preferences.d" \
    "$dir/state/lists/partial" "$dir/cache/archives/partial" "$dir/debs"
  touch "$dir/state/status"
  : >"$dir/etc/sources.list"
  for suite in "$@"; do
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" \
      >>"$dir/etc/sources.list"
  done
  private_apt_dir=$dir
  private_apt_opts=(
    -o "Dir::Etc=$dir/etc"
    -o "Dir::Etc::sourcelist=$dir/etc/sources.list"
    -o "Dir::Etc::sourceparts=$dir/etc/sources.list.d"
    -o "Dir::Etc::preferencesparts=$dir/etc/preferences.d"
    -o "Dir::State=$dir/state"
    -o "Dir::State::status=$dir/state/status"
    -o "Dir::Cache=$dir/cache"
    -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=root"
  )
  apt-get "${private_apt_opts[@]}" -qq update
}

# private_apt_unpack PACKAGE SUITE LINE PREFIX: the newest version of PACKAGE in SUITE whose
# version starts with LINE (e.g. "2.1."), downloaded and unpacked into PREFIX<upstream
# version> (replacing what was there; the .deb is removed). Sets `unpacked_version` (the
# Debian version) and `unpacked_dir`. Exits, saying so, when SUITE has no such version.
private_apt_unpack() {
  local package=$1 suite=$2 line=$3 prefix=$4 debs="$private_apt_dir/debs" deb
  unpacked_version=$(apt-cache "${private_apt_opts[@]}" madison "$package" |
    awk -F'|' -v s="$suite/" -v p="$line" '
      { gsub(/ /, "", $2); gsub(/^ +| +$/, "", $3) }
      index($3, s) && index($2, p) == 1 { print $2; exit }')
  if [ -z "$unpacked_version" ]; then
    echo "$private_apt_name: Debian $suite has no $package $line* package" >&2
    exit 1
  fi
  rm -f "$debs/${package}_"*.deb
  (cd "$debs" && apt-get "${private_apt_opts[@]}" -qq download "$package=$unpacked_version")
  deb=$(ls "$debs/${package}_"*.deb | head -n 1)
  unpacked_dir="$prefix${unpacked_version%%[~+-]*}"
  rm -rf "$unpacked_dir.tmp"
  dpkg-deb -x "$deb" "$unpacked_dir.tmp"
  rm -rf "$unpacked_dir"
  mv "$unpacked_dir.tmp" "$unpacked_dir"
  rm -f "$deb"
}
