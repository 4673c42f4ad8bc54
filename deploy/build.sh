#!/usr/bin/env bash
# Configures and builds lmhead into ./build (Release). Extra arguments go to cmake's configure
# step, e.g. deploy/build.sh -DLMHEAD_TEST_PYTHON=$PWD/.venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" > build.configure.log 2>&1 || { cat build.configure.log; exit 1; }
cmake --build build -j"$(nproc)"
