#!/usr/bin/env bash
# The test command: installs dependencies, creates the Python test venv (.venv: numpy,
# ml_dtypes, safetensors, grpcio, grpcio-tools, pyyaml from PyPI), builds, and runs every test with
# ctest (C++ unit + end-to-end tests, and the Python cross-checks). GPU tests skip without a GPU.
# The venv is made with the first `python3` on PATH (override with PYTHON=/path/to/python3).
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check \
  "numpy>=1.26" "ml_dtypes>=0.4" "safetensors>=0.4" "grpcio>=1.60" "grpcio-tools>=1.60" "pyyaml>=6"
# The Python client package (its gRPC stubs are generated from proto/ while it is built).
.venv/bin/python -m pip install -q --disable-pip-version-check ./client/python

bash deploy/build.sh -DLMHEAD_TEST_PYTHON="$PWD/.venv/bin/python"
ctest --test-dir build --output-on-failure -j"$(nproc)" --timeout 600
