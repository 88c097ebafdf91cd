#!/usr/bin/env bash
# Prometheus and promtool for tests and local use, from Debian's `prometheus`
# package: downloaded with `apt-get download` (no root, nothing installed
# system-wide) and unpacked with `dpkg -x` into a cache outside the repo.
#
#   prometheus.sh install   download and unpack once; no-op when already there
#   prometheus.sh path      print the folder holding `prometheus` and `promtool`
#   prometheus.sh version   print the unpacked package version
#
# Settings (environment): KINESIS_DESTINATION_CACHE (default ~/.cache/kinesis-destination),
# PROMETHEUS_DEB_VERSION (a Debian version to fetch, default: apt's candidate),
# PROMETHEUS_BIN_DIR (use this folder instead; must hold promtool and prometheus).
set -euo pipefail

KINESIS_DESTINATION_CACHE=${KINESIS_DESTINATION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kinesis-destination}

say() { printf 'prometheus: %s\n' "$*" >&2; }
die() { printf 'prometheus: error: %s\n' "$*" >&2; exit 1; }

# The newest complete unpacked copy in the cache, or nothing.
cached_dir() {
  local dirs=() d
  for d in "$KINESIS_DESTINATION_CACHE"/prometheus-*/; do
    [[ -f $d/.complete ]] || continue
    if [[ -n ${PROMETHEUS_DEB_VERSION:-} && $d != "$KINESIS_DESTINATION_CACHE/prometheus-$PROMETHEUS_DEB_VERSION/" ]]; then
      continue
    fi
    dirs+=("${d%/}")
  done
  ((${#dirs[@]})) || return 0
  printf '%s\n' "${dirs[@]}" | sort -V | tail -n 1
}

bin_dir() {
  if [[ -n ${PROMETHEUS_BIN_DIR:-} ]]; then
    [[ -x $PROMETHEUS_BIN_DIR/promtool && -x $PROMETHEUS_BIN_DIR/prometheus ]] \
      || die "PROMETHEUS_BIN_DIR=$PROMETHEUS_BIN_DIR has no executable promtool and prometheus"
    printf '%s\n' "$PROMETHEUS_BIN_DIR"
    return 0
  fi
  local dir
  dir=$(cached_dir)
  [[ -n $dir ]] || return 1
  printf '%s\n' "$dir/usr/bin"
}

download() {  # into the current folder
  local spec=prometheus${PROMETHEUS_DEB_VERSION:+=$PROMETHEUS_DEB_VERSION}
  apt-get download -q "$spec" >download.log 2>&1 && return 0
  say "apt-get download $spec failed; refreshing the package lists with apt-get update and retrying"
  apt-get update -q >>download.log 2>&1 || say "apt-get update failed (not root?); retrying anyway"
  apt-get download -q "$spec" >>download.log 2>&1 && return 0
  tail -n 20 download.log >&2
  die "could not download Debian's $spec package (needs apt and Debian's package archive)"
}

install() {
  if [[ -n ${PROMETHEUS_BIN_DIR:-} ]]; then bin_dir >/dev/null; return 0; fi
  local found
  found=$(cached_dir)
  if [[ -n $found ]]; then say "already unpacked in $found"; return 0; fi
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
    || die "apt-get and dpkg-deb are needed (Debian or Ubuntu); elsewhere set PROMETHEUS_BIN_DIR"
  mkdir -p "$KINESIS_DESTINATION_CACHE"
  tmp=$(mktemp -d "$KINESIS_DESTINATION_CACHE/.prometheus-download.XXXXXX")
  trap 'rm -rf "${tmp:-}"' EXIT
  # apt drops root to the _apt user while downloading: let it write here.
  chmod 0777 "$tmp"
  (cd "$tmp" && download)
  local deb version
  deb=$(ls "$tmp"/prometheus_*.deb 2>/dev/null | head -n 1)
  [[ -n $deb ]] || die "apt-get download left no prometheus_*.deb in $tmp"
  version=$(dpkg-deb -f "$deb" Version)
  local dest=$KINESIS_DESTINATION_CACHE/prometheus-$version
  say "unpacking prometheus $version into $dest"
  rm -rf "$dest.partial"
  dpkg-deb -x "$deb" "$dest.partial"
  local tool
  for tool in prometheus promtool; do
    [[ -x $dest.partial/usr/bin/$tool ]] || die "the package has no usr/bin/$tool"
  done
  "$dest.partial/usr/bin/promtool" --version >/dev/null 2>&1 \
    || die "$dest.partial/usr/bin/promtool does not run on this machine"
  printf '%s\n' "$version" >"$dest.partial/.complete"
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
  say "installed: $dest/usr/bin/{prometheus,promtool}"
}

cmd=${1:-}
case $cmd in
  install) install ;;
  path)
    bin_dir || die "Prometheus is not unpacked under $KINESIS_DESTINATION_CACHE: run 'make tools' (or '$0 install')"
    ;;
  version)
    dir=$(cached_dir)
    [[ -n $dir ]] || die "Prometheus is not unpacked under $KINESIS_DESTINATION_CACHE: run 'make tools' (or '$0 install')"
    cat "$dir/.complete"
    ;;
  *) echo "usage: $0 install|path|version" >&2; exit 2 ;;
esac
