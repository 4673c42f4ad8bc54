#!/usr/bin/env bash
# Packs what the GPU machine needs into .gpu/ (git-ignored; carried by the device tool):
# the built binaries and CUDA module, plus their non-system shared libraries (gRPC, protobuf,
# Abseil, prometheus-cpp, ...). libc, libstdc++ and CUDA's libraries come from that machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
B=build
rm -rf .gpu && mkdir -p .gpu/bin .gpu/lib
cp $B/service/lmhead-server $B/service/lmhead-make-checkpoint $B/client/lmhead \
   $B/tests/cuda_backend_test $B/kernels/bench/lmhead-gpu-bench $B/service/liblmhead_cuda.so \
   $B/client/lmhead-bench $B/service/lmhead-echo-server $B/kernels/lmhead-selection-bench \
   $B/client/lmhead-shard-check .gpu/bin/
for f in .gpu/bin/*; do
  ldd "$f" | awk '/=> \//{print $3}'
done | sort -u | grep -v -E '/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|ld-linux[^/]*|libcuda|libcublas[^/]*|libcudart[^/]*)\.so' \
  | xargs -r -I{} cp -L {} .gpu/lib/
tar czf .gpu.tgz -C .gpu . && rm -rf .gpu && mkdir .gpu && mv .gpu.tgz .gpu/bundle.tgz
du -sh .gpu/bundle.tgz
