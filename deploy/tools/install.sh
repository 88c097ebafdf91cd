#!/usr/bin/env bash
# The tools tests/deploy validates the container and Kubernetes files with,
# built or fetched from the Go module proxy into a cache outside the repo
# (once; later runs only check they are there). Needs Go (go.mod's version or
# newer). hadolint, yamllint and kubernetes-validate come from PyPI with the
# venv's dev extra instead.
#
#   install.sh install   build/fetch what is missing (the default)
#   install.sh path      print the folder holding the tools
#   install.sh versions  print the pinned versions
#
# What it puts in $DIR (DEPLOY_TOOLS_DIR, default
# ${KINESIS_DESTINATION_CACHE:-${XDG_CACHE_HOME:-~/.cache}/kinesis-destination}/deploy-tools):
#   bin/kustomize      sigs.k8s.io/kustomize/kustomize/v5 (renders deploy/kubernetes)
#   bin/composecheck   deploy/tools/composecheck: compose-go, Docker Compose's own
#                      loader, validating deploy/compose.yaml without an engine
#   crds/*.yaml        the CustomResourceDefinitions of KEDA's ScaledObject and
#                      the Prometheus Operator's PodMonitor, ServiceMonitor and
#                      PrometheusRule, from those projects' Go modules
set -euo pipefail

KUSTOMIZE_VERSION=v5.8.2                 # v5.8.3 needs Go 1.27
KEDA_VERSION=v2.21.0                     # github.com/kedacore/keda/v2
PROMETHEUS_OPERATOR_VERSION=v0.85.0      # github.com/prometheus-operator/prometheus-operator

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KINESIS_DESTINATION_CACHE=${KINESIS_DESTINATION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kinesis-destination}
DIR=${DEPLOY_TOOLS_DIR:-$KINESIS_DESTINATION_CACHE/deploy-tools}
# Never let go fetch another toolchain: fail with the version it wants instead.
export GOTOOLCHAIN=local

say() { printf 'deploy-tools: %s\n' "$*" >&2; }
die() { printf 'deploy-tools: error: %s\n' "$*" >&2; exit 1; }

require_go() {
  command -v go >/dev/null || die "go not found: install Go 1.26 or newer (https://go.dev/doc/install; Debian: golang-go from bookworm-backports)"
}

install_kustomize() {
  local dest=$DIR/kustomize-$KUSTOMIZE_VERSION
  if [[ ! -x $dest/kustomize ]]; then
    require_go
    say "building kustomize $KUSTOMIZE_VERSION with go install (once, about 2 minutes)"
    rm -rf "$dest.partial"; mkdir -p "$dest.partial"
    GOBIN=$dest.partial go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" \
      || die "go install sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION failed"
    rm -rf "$dest"; mv "$dest.partial" "$dest"
  fi
  ln -sfn "$dest/kustomize" "$DIR/bin/kustomize"
}

install_composecheck() {
  local src=$here/composecheck hash dest
  hash=$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-16)
  dest=$DIR/composecheck-$hash
  if [[ ! -x $dest/composecheck ]]; then
    require_go
    say "building composecheck (compose-go $(awk '$1 == "github.com/compose-spec/compose-go/v2" {print $2}' "$src/go.mod"))"
    rm -rf "$dest.partial"; mkdir -p "$dest.partial"
    (cd "$src" && go build -trimpath -o "$dest.partial/composecheck" .) \
      || die "building deploy/tools/composecheck failed"
    rm -rf "$dest"; mv "$dest.partial" "$dest"
  fi
  ln -sfn "$dest/composecheck" "$DIR/bin/composecheck"
}

# `go mod download` fetches one module's zip (checked against the Go checksum
# database) without its dependencies; the CRDs are files of that module.
module_dir() {
  local json
  json=$(go mod download -json "$1") || die "go mod download $1 failed"
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json"
}

install_crds() {
  local dest=$DIR/crds-keda-$KEDA_VERSION-prometheus-operator-$PROMETHEUS_OPERATOR_VERSION
  if [[ ! -f $dest/.complete ]]; then
    require_go
    say "fetching the CRDs of KEDA $KEDA_VERSION and prometheus-operator $PROMETHEUS_OPERATOR_VERSION"
    local keda promop
    keda=$(module_dir "github.com/kedacore/keda/v2@$KEDA_VERSION")
    promop=$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")
    [[ -d $keda && -d $promop ]] || die "module folders not found after go mod download"
    rm -rf "$dest.partial"; mkdir -p "$dest.partial"
    cp "$keda/config/crd/bases/keda.sh_scaledobjects.yaml" "$dest.partial/"
    local kind
    for kind in podmonitors servicemonitors prometheusrules; do
      cp "$promop/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$dest.partial/"
    done
    chmod -R u+w "$dest.partial"
    printf 'github.com/kedacore/keda/v2 %s\ngithub.com/prometheus-operator/prometheus-operator %s\n' \
      "$KEDA_VERSION" "$PROMETHEUS_OPERATOR_VERSION" > "$dest.partial/VERSIONS"
    touch "$dest.partial/.complete"
    rm -rf "$dest"; mv "$dest.partial" "$dest"
  fi
  ln -sfn "$dest" "$DIR/crds"
}

case ${1:-install} in
  install)
    mkdir -p "$DIR/bin"
    install_kustomize
    install_composecheck
    install_crds
    say "ready in $DIR"
    ;;
  path) printf '%s\n' "$DIR" ;;
  versions)
    printf 'kustomize %s\nkeda %s\nprometheus-operator %s\n' \
      "$KUSTOMIZE_VERSION" "$KEDA_VERSION" "$PROMETHEUS_OPERATOR_VERSION"
    ;;
  *) die "usage: $0 [install|path|versions]" ;;
esac
