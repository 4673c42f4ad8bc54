# Sourced by the GPU run scripts (device tool, from the repository root, with .gpu/bundle.tgz
# carried): unpacks the bundle into /tmp/lmhead and sets OUT (results folder), BIN and the
# library path for the carried non-system .so files.
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/lmhead "$OUT"
tar xzf .gpu/bundle.tgz -C /tmp/lmhead
export LD_LIBRARY_PATH=/tmp/lmhead/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
BIN=/tmp/lmhead/bin
