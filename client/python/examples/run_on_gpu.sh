#!/usr/bin/env bash
# Runs examples/hf_decoder.py on the GPU machine (device tool) from the repository root, with
# .gpu/bundle.tgz (server binaries) and .gpu/pylib (the lmhead package, built here with stubs
# from proto/) carried. Results go to $OUT/hf_decoder.md. Make .gpu/pylib here with a grpcio-tools old
# enough for the GPU machine's protobuf (1.62 generates code any protobuf >= 4.25 loads):
#   bash kernels/bench/make_gpu_bundle.sh
#   python3 -m venv /tmp/tools && /tmp/tools/bin/pip install grpcio-tools==1.62.3 setuptools wheel
#   /tmp/tools/bin/pip install --no-build-isolation --no-deps --target .gpu/pylib ./client/python
set -uo pipefail
source kernels/bench/gpu_bundle_env.sh
python3 -c "import torch, transformers, grpc, google.protobuf as p; print('torch', torch.__version__, 'transformers', transformers.__version__, 'grpcio', grpc.__version__, 'protobuf', p.__version__)"
# Prefer building the package here (stubs from this machine's grpcio-tools); else the carried one.
if python3 -c "import grpc_tools, setuptools" 2>/dev/null && \
   python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/pylib ./client/python 2>/dev/null; then
  export PYTHONPATH=/tmp/pylib
else
  export PYTHONPATH=$PWD/.gpu/pylib
fi
python3 -c "import lmhead; print('lmhead package from', lmhead.__file__)"
python3 client/python/examples/hf_decoder.py --server=$BIN/lmhead-server --backend=cuda "$@" \
  --out="$OUT/hf_decoder.md" 2>&1 | grep -v -E "Warning|warn|forward_call"
