#!/usr/bin/env bash
# Installs every Debian 12 package lmhead's build, tests and tools need. Idempotent: does
# nothing when all are present. Run as root (or with sudo available).
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git curl ca-certificates
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  prometheus-cpp-dev nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev
  libopenblas-dev       # the CPU benchmark's fp32 GEMV baseline
  prometheus            # promtool and the server the deployment test scrapes with
  docker-compose        # `docker-compose config` validates the compose files (no engine needed)
  openssl               # the TLS tests make their certificates
  python3 python3-venv  # the tests' virtual environment (numpy, ml_dtypes, safetensors, grpcio)
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
