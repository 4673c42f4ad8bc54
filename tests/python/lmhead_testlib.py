"""Shared helpers for lmhead's Python cross-check tests (run with the test venv's python).

Binaries come from the build directory given by $LMHEAD_BUILD_DIR; proto stubs are generated at
run time with grpcio-tools from the proto in the source tree (never checked in).
"""
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD_DIR = os.environ.get("LMHEAD_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))


def binary(name):
    for sub in ("service", "client", "."):
        path = os.path.join(BUILD_DIR, sub, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{name} not found under {BUILD_DIR}")


def load_stubs():
    """Generates lmhead_pb2 / lmhead_pb2_grpc into a temp dir and imports them."""
    from grpc_tools import protoc
    out = tempfile.mkdtemp(prefix="lmhead_stubs_")
    proto_root = os.path.join(SOURCE_DIR, "proto")
    rc = protoc.main(["protoc", f"-I{proto_root}", f"--python_out={out}", f"--grpc_python_out={out}",
                      os.path.join(proto_root, "lmhead/v1/lmhead.proto")])
    assert rc == 0, "protoc failed"
    sys.path.insert(0, out)
    from lmhead.v1 import lmhead_pb2, lmhead_pb2_grpc  # noqa: E402
    return lmhead_pb2, lmhead_pb2_grpc


def make_checkpoint(out, vocab, hidden, *extra):
    subprocess.run([binary("lmhead-make-checkpoint"), f"--out={out}", f"--vocab={vocab}",
                    f"--hidden={hidden}", *extra], check=True, capture_output=True)


def dump_head(checkpoint, out, *extra):
    """Loads the head as the server does; returns (weight array, row_scales, metadata)."""
    from safetensors import safe_open
    subprocess.run([binary("lmhead-head-tool"), "dump", f"--checkpoint={checkpoint}", f"--out={out}",
                    *extra], check=True, capture_output=True)
    with safe_open(out, framework="numpy") as f:
        meta = f.metadata()
        weight = f.get_tensor("weight")
        scales = f.get_tensor("row_scales") if "row_scales" in f.keys() else None
    return weight, scales, meta


def dequantize(weight, scales):
    """float64 [vocab, hidden] from a dump: FP8 codes decoded by ml_dtypes, times row scales."""
    import ml_dtypes
    if scales is None:
        return weight.astype(np.float64)
    values = weight.view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    return values * scales.astype(np.float64)[:, None]


def served_head(tmp, vocab, hidden, *extra):
    """A demo checkpoint at tmp/ckpt (lmhead-make-checkpoint flags `extra`) and the head the server
    serves from it: returns (checkpoint path, float64 weights [vocab, hidden], metadata)."""
    ckpt = os.path.join(tmp, "ckpt")
    make_checkpoint(ckpt, vocab, hidden, *extra)
    weight, scales, meta = dump_head(ckpt, os.path.join(tmp, "head.safetensors"))
    return ckpt, dequantize(weight, scales), meta


class Server:
    """lmhead-server on loopback with free ports; stops on exit (SIGTERM, expects exit 0)."""

    def __init__(self, checkpoint, *flags, port=0):
        self.log = tempfile.NamedTemporaryFile(prefix="lmhead_server_", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [binary("lmhead-server"), f"--checkpoint={checkpoint}", f"--listen=127.0.0.1:{port}",
             "--metrics_listen=127.0.0.1:0", "--threads=2", *flags],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.port = self.metrics_port = None
        deadline = time.time() + 60
        while time.time() < deadline:
            text = self.log_text()
            m = re.search(r"listening on port (\d+) \(gRPC[^)]*\), metrics on port (\d+)", text)
            if m and "serving" in text:
                self.port, self.metrics_port = int(m.group(1)), int(m.group(2))
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{text}")
            time.sleep(0.05)
        raise RuntimeError("server did not become ready:\n" + self.log_text())

    def log_text(self):
        with open(self.log.name) as f:
            return f.read()

    @property
    def target(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            rc = self.proc.wait(timeout=60)
            assert rc == 0, f"server exited with {rc}:\n{self.log_text()}"
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logsumexp(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    return (m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))).squeeze(axis)
