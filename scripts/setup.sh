#!/usr/bin/env bash
# Installs the Debian packages Strata builds and tests with. Idempotent: packages already
# present are skipped, and apt is not touched at all when nothing is missing.
# Runs as root, or through sudo when not root.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev librocksdb-dev libucx-dev ucx-utils
  libssl-dev libxxhash-dev libzstd-dev liblz4-dev
  prometheus-cpp-dev libspdlog-dev libfmt-dev libcli11-dev libyaml-cpp-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  etcd-server etcd-client
  golang-etcd-server-dev golang-github-gogo-protobuf-dev
  golang-github-grpc-ecosystem-grpc-gateway-dev
  redis-server redis-tools
  curl openssl
  nodejs unzip python3-yaml
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

fetch_helm() {
  bash "$(dirname "$0")/get_helm.sh" ||
    echo "setup: helm not fetched; the helm tests retry (scripts/get_helm.sh)" >&2
}

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  fetch_helm
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
fetch_helm
