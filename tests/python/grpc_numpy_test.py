"""A Python grpcio client generated from the proto gets results equal to a numpy float64
computation on the same FP8 weights (top-k ids equal, logprobs within 1e-3), for every hidden
dtype, the stream RPC, and full logits; the metrics endpoint passes promtool.

Run: LMHEAD_BUILD_DIR=build .venv/bin/python tests/python/grpc_numpy_test.py
"""
import os
import re
import shutil
import subprocess
import tempfile
import unittest
import urllib.request

import grpc
import ml_dtypes
import numpy as np

import lmhead_testlib as lib

pb, pb_grpc = lib.load_stubs()
VOCAB, HIDDEN = 4096, 384


def encode_hidden(x, dtype):
    if dtype == pb.DTYPE_FP32:
        return x.astype("<f4").tobytes()
    if dtype == pb.DTYPE_BF16:
        return x.astype(ml_dtypes.bfloat16).tobytes()
    return x.astype("<f2").tobytes()


def decoded(x, dtype):
    """The float64 values the server sees after the wire dtype's rounding."""
    if dtype == pb.DTYPE_FP32:
        return x.astype(np.float32).astype(np.float64)
    if dtype == pb.DTYPE_BF16:
        return x.astype(ml_dtypes.bfloat16).astype(np.float64)
    return x.astype(np.float16).astype(np.float64)


class GrpcNumpyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="lmhead_py_")
        cls.ckpt, cls.w, meta = lib.served_head(cls.tmp, VOCAB, HIDDEN, "--seed=7", "--final_logit_softcapping=30")
        cls.softcap = float(meta["final_logit_softcapping"])
        cls.server = lib.Server(cls.ckpt)
        cls.channel = grpc.insecure_channel(cls.server.target)
        cls.stub = pb_grpc.LmHeadStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.server.stop()
        shutil.rmtree(cls.tmp)

    def reference(self, h):
        logits = h @ self.w.T
        if self.softcap > 0:
            logits = self.softcap * np.tanh(logits / self.softcap)
        return logits, lib.logsumexp(logits)

    def check_rows(self, rows, h, top_k, ids):
        logits, lse = self.reference(h)
        for r, row in enumerate(rows):
            order = np.lexsort((np.arange(VOCAB), -logits[r]))[:top_k]
            self.assertEqual(list(row.top_ids), list(order), f"row {r}")
            self.assertEqual(row.argmax_id, order[0])
            np.testing.assert_allclose(row.top_logprobs, logits[r, order] - lse[r], atol=1e-3)
            np.testing.assert_allclose(row.logsumexp, lse[r], atol=1e-3)
            np.testing.assert_allclose(row.token_logprobs, logits[r, ids] - lse[r], atol=1e-3)

    def request(self, h, dtype, top_k=5, ids=(0, 17, VOCAB - 1), **output):
        return pb.LogitsRequest(
            request_id="r", hidden=pb.HiddenStates(rows=h.shape[0], dtype=dtype, data=encode_hidden(h, dtype)),
            output=pb.OutputSpec(top_k=top_k, logprob_token_ids=list(ids), **output))

    def test_unary_every_dtype_matches_float64(self):
        rng = np.random.default_rng(1)
        for dtype in (pb.DTYPE_FP32, pb.DTYPE_BF16, pb.DTYPE_FP16):
            h = rng.normal(0, 1, (6, HIDDEN)) * 3
            resp = self.stub.ComputeLogits(self.request(h, dtype, top_k=20), timeout=30)
            self.assertEqual(len(resp.rows), 6)
            self.check_rows(resp.rows, decoded(h, dtype), 20, [0, 17, VOCAB - 1])

    def test_full_logits_in_each_dtype(self):
        h = np.random.default_rng(2).normal(0, 1, (2, HIDDEN)) * 3
        logits, _ = self.reference(decoded(h, pb.DTYPE_FP32))
        for dtype, np_dtype, tol in ((pb.DTYPE_FP32, "<f4", 1e-3), (pb.DTYPE_BF16, ml_dtypes.bfloat16, 0.2),
                                     (pb.DTYPE_FP16, "<f2", 2e-2)):
            resp = self.stub.ComputeLogits(
                self.request(h, pb.DTYPE_FP32, return_logits=True, logits_dtype=dtype), timeout=30)
            self.assertEqual(resp.logits_dtype, dtype)
            got = np.frombuffer(resp.logits, dtype=np_dtype).astype(np.float64).reshape(2, VOCAB)
            np.testing.assert_allclose(got, logits, atol=tol)

    def test_stream_in_order_matches_float64(self):
        rng = np.random.default_rng(3)
        hs = [rng.normal(0, 1, (1 + i % 3, HIDDEN)) * 2 for i in range(12)]

        def requests():
            for i, h in enumerate(hs):
                req = self.request(h, pb.DTYPE_BF16)
                req.request_id = f"step-{i}"
                yield req
                if i == 5:  # a bad message in the middle gets its own error
                    yield pb.LogitsRequest(request_id="bad", hidden=pb.HiddenStates(rows=1, dtype=pb.DTYPE_FP32))

        responses = list(self.stub.StreamLogits(requests(), timeout=60))
        ids = [r.request_id for r in responses]
        self.assertEqual(ids, [f"step-{i}" for i in range(6)] + ["bad"] + [f"step-{i}" for i in range(6, 12)])
        self.assertEqual(responses[6].error.code, grpc.StatusCode.INVALID_ARGUMENT.value[0])
        good = [r for r in responses if r.request_id != "bad"]
        for h, resp in zip(hs, good):
            self.check_rows(resp.rows, decoded(h, pb.DTYPE_BF16), 5, [0, 17, VOCAB - 1])

    def test_cli_reads_npy_and_prints_the_reference_top_tokens(self):
        h = np.random.default_rng(5).normal(0, 2, (3, HIDDEN)).astype(np.float32)
        for name, arr in (("h32.npy", h), ("h16.npy", h.astype(np.float16)), ("h1.npy", h[0])):
            path = os.path.join(self.tmp, name)
            np.save(path, arr)
            out = subprocess.run([lib.binary("lmhead"), "logits", f"--target={self.server.target}", f"--npy={path}",
                                  "--dtype=fp32", "--top_k=3"], check=True, capture_output=True, text=True).stdout
            seen = np.asarray(arr, dtype=np.float32).reshape(-1, HIDDEN).astype(np.float64)
            logits, _ = self.reference(seen)
            argmax = [int(m) for m in re.findall(r"row \d+: argmax=(\d+)", out)]
            self.assertEqual(argmax, list(np.argmax(logits, axis=1)), out)
        bad = subprocess.run([lib.binary("lmhead"), "logits", f"--target={self.server.target}",
                              f"--npy={os.path.join(self.tmp, 'missing.npy')}"], capture_output=True, text=True)
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("cannot open", bad.stderr)

    def test_cli_stream_and_info(self):
        out = subprocess.run([lib.binary("lmhead"), "stream", f"--target={self.server.target}", "--steps=5"],
                             check=True, capture_output=True, text=True).stdout
        self.assertEqual(len(re.findall(r"step-\d+: argmax \d+", out)), 5, out)
        info = subprocess.run([lib.binary("lmhead"), "info", f"--target={self.server.target}"],
                              check=True, capture_output=True, text=True).stdout
        self.assertIn(f"[{VOCAB}, {HIDDEN}]", info)
        self.assertIn("fp8_e4m3 per_row", info)
        self.assertRegex(info, r"tuning +dot products: \w+ kernel, 2 thread\(s\)")

    def test_bad_flag_values_are_refused_at_startup(self):
        for flag, message in [("--gpu_gemv_blocks_per_sm=3", "--gpu_gemv_blocks_per_sm must be 0 (timed), 1 or 2"),
                              ("--gpu_gemv_blocks_per_sm=-1", "--gpu_gemv_blocks_per_sm must be 0 (timed), 1 or 2"),
                              ("--gpu_workspace_mb=0", "--gpu_workspace_mb must be positive"),
                              ("--backend=gpu", "--backend must be auto, cpu or cuda"),
                              ("--activation_precision=fp4", "--activation_precision must be bf16 or fp8")]:
            r = subprocess.run([lib.binary("lmhead-server"), f"--checkpoint={self.ckpt}", "--listen=127.0.0.1:0",
                                "--metrics_listen=127.0.0.1:0", flag], capture_output=True, text=True, timeout=60)
            self.assertNotEqual(r.returncode, 0, flag)
            self.assertIn(message, r.stderr, flag)

    def test_model_info(self):
        info = self.stub.GetModelInfo(pb.ModelInfoRequest(), timeout=10)
        self.assertEqual((info.vocab_size, info.hidden_size), (VOCAB, HIDDEN))
        self.assertEqual(info.weight_format, "fp8_e4m3")
        self.assertEqual(info.scale_mode, "per_row")
        self.assertEqual(info.weight_bytes, VOCAB * HIDDEN + 4 * VOCAB)
        self.assertEqual(info.reference_bytes, VOCAB * HIDDEN * 2)
        self.assertEqual(info.backend, "cpu")

    def test_metrics_pass_promtool(self):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.server.metrics_port}/metrics", timeout=10).read()
        self.assertIn(b"lmhead_weight_saved_bytes %d" % (VOCAB * HIDDEN - 4 * VOCAB), text)
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool (Debian package prometheus) is required")
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
