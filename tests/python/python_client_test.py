"""The `lmhead` Python package (client/python, installed into the test venv) against a real server
on loopback: every call, every hidden dtype (numpy float32/float16/bfloat16, and torch when it is
installed), stream sessions over many steps with per-message errors, asyncio concurrency, bearer
tokens, and results equal to a float64 numpy reference on the same FP8 weights. Also the decode
loop of examples/hf_decoder.py with a numpy stand-in decoder.
"""
import asyncio
import os
import shutil
import tempfile
import unittest

import grpc
import ml_dtypes
import numpy as np

import lmhead
import lmhead_testlib as lib

VOCAB, HIDDEN = 3000, 256


def separated(ref_logits, k):
    """Ranks 0..k-1 of a reference row whose neighbours differ by more than a tolerance."""
    order = np.argsort(-ref_logits, kind="stable")
    gaps = np.diff(ref_logits[order[: k + 1]])
    return order, [i for i in range(k) if (i == 0 or -gaps[i - 1] > 2e-3) and -gaps[i] > 2e-3]


class PythonClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="lmhead_pyclient_")
        cls.ckpt, cls.w, _ = lib.served_head(cls.tmp, VOCAB, HIDDEN, "--seed=3")
        cls.token = "py-test-token"
        with open(os.path.join(cls.tmp, "token"), "w") as f:
            f.write(cls.token)
        cls.server = lib.Server(cls.ckpt, f"--auth_token_file={cls.tmp}/token", "--max_rows_per_request=32")
        cls.client = lmhead.LmHeadClient(cls.server.target, auth_token=cls.token)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()
        shutil.rmtree(cls.tmp)

    def reference(self, x64):
        logits = x64 @ self.w.T
        return logits, lib.logsumexp(logits)

    def check_rows(self, result, x64, k):
        logits, lse = self.reference(x64)
        self.assertEqual(len(result.rows), x64.shape[0])
        for r, row in enumerate(result.rows):
            order, ranks = separated(logits[r], k)
            for i in ranks:
                self.assertEqual(row.top_ids[i], order[i], f"row {r} rank {i}")
            np.testing.assert_allclose(row.top_logprobs, logits[r, row.top_ids] - lse[r], atol=1e-3)
            self.assertAlmostEqual(row.logsumexp, lse[r], delta=1e-3)

    def test_model_info_and_health(self):
        info = self.client.model_info()
        self.assertEqual((info.vocab_size, info.hidden_size), (VOCAB, HIDDEN))
        self.assertEqual(info.weight_format, "fp8_e4m3")
        self.assertEqual(info.backend, "cpu")
        self.assertRegex(info.backend_tuning, r"^dot products: (avx512|avx2|portable) kernel, \d+ thread\(s\)$")
        self.assertGreater(info.reference_bytes, info.weight_bytes)
        self.assertTrue(self.client.is_serving())

    def test_every_numpy_dtype_matches_the_float64_reference(self):
        rng = np.random.default_rng(1)
        x = rng.normal(0, 1.5, (5, HIDDEN))
        for dtype in (np.float32, np.float16, ml_dtypes.bfloat16):
            sent = x.astype(dtype)
            result = self.client.compute_logits(sent, top_k=8, logprob_token_ids=[0, VOCAB - 1])
            x64 = sent.astype(np.float64)
            self.check_rows(result, x64, 8)
            logits, lse = self.reference(x64)
            np.testing.assert_allclose([r.token_logprobs for r in result.rows],
                                       logits[:, [0, VOCAB - 1]] - lse[:, None], atol=1e-3)
        # A single vector is one row; a non-contiguous view is made contiguous.
        one = self.client.compute_logits(x[0].astype(np.float32), top_k=3)
        self.assertEqual(len(one.rows), 1)
        strided = np.asfortranarray(x.astype(np.float32))
        self.check_rows(self.client.compute_logits(strided, top_k=3), x.astype(np.float32).astype(np.float64), 3)

    def test_torch_tensors(self):
        try:
            import torch
        except ImportError:
            self.skipTest("torch is not installed in this venv (the GPU machine's python has it)")
        rng = np.random.default_rng(2)
        x = rng.normal(0, 1.5, (3, HIDDEN)).astype(np.float32)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            t = torch.from_numpy(x).to(dtype)
            result = self.client.compute_logits(t, top_k=5)
            self.check_rows(result, t.to(torch.float64).numpy(), 5)

    def test_full_logits_and_sampling(self):
        x = np.random.default_rng(3).normal(0, 1.5, (2, HIDDEN)).astype(np.float32)
        r32 = self.client.compute_logits(x, return_logits=True)
        logits, _ = self.reference(x.astype(np.float64))
        np.testing.assert_allclose(r32.logits, logits, atol=2e-4, rtol=1e-4)
        r16 = self.client.compute_logits(x, return_logits=True, logits_dtype="bfloat16")
        np.testing.assert_allclose(r16.logits, logits, rtol=1e-2, atol=1e-2)
        s = lmhead.Sampling(temperature=0.9, top_p=0.95, seed=11, step=4, banned_token_ids=[int(r32.argmax_ids[0])])
        a = self.client.compute_logits(x, sampling=s, top_k=3)
        b = self.client.compute_logits(x, sampling=s, top_k=3)
        np.testing.assert_array_equal(a.tokens, b.tokens)
        self.assertNotEqual(a.rows[0].sampled_id, r32.argmax_ids[0])
        self.assertEqual(a.rows[0].seed, 11)
        greedy = self.client.compute_logits(x, row_sampling=[lmhead.Sampling(temperature=0), s])
        self.assertEqual(greedy.rows[0].sampled_id, r32.rows[0].argmax_id)
        self.assertIsNone(r32.rows[0].sampled_id)

    def test_errors_are_typed_with_code_and_message(self):
        with self.assertRaises(lmhead.InvalidArgument) as e:
            self.client.compute_logits(np.zeros((1, HIDDEN + 1), np.float32))
        self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("hidden_size is 256", e.exception.message)
        with self.assertRaises(lmhead.InvalidArgument) as e:
            self.client.compute_logits(np.zeros((1, HIDDEN), np.float32), sampling=lmhead.Sampling(top_p=1.5))
        self.assertIn("sampling.top_p", e.exception.message)
        with self.assertRaises(TypeError):
            self.client.compute_logits(np.zeros((1, HIDDEN), np.float64))
        with lmhead.LmHeadClient(self.server.target) as anonymous:
            with self.assertRaises(lmhead.Unauthenticated):
                anonymous.compute_logits(np.zeros((1, HIDDEN), np.float32))
            self.assertTrue(anonymous.is_serving())  # health needs no token
        with lmhead.LmHeadClient("127.0.0.1:1", timeout=2) as nowhere:
            with self.assertRaises(lmhead.Unavailable):
                nowhere.model_info()

    def test_stream_session_many_steps_with_a_bad_message(self):
        rng = np.random.default_rng(4)
        steps = [rng.normal(0, 1.5, (1 + i % 3, HIDDEN)).astype(np.float32) for i in range(60)]
        with self.client.stream() as session:
            for i, x in enumerate(steps):
                result = session.step(x, top_k=4, request_id=f"s{i}")
                self.assertEqual(result.request_id, f"s{i}")
                self.check_rows(result, x.astype(np.float64), 4)
                if i == 30:  # a bad message gets its own error; the stream goes on
                    with self.assertRaises(lmhead.InvalidArgument):
                        session.step(np.zeros((1, 7), np.float32))
            # Pipelined: several sends before the receives, answers in order.
            for i in range(5):
                session.send(steps[i], request_id=f"p{i}")
            self.assertEqual([session.receive().request_id for _ in range(5)], [f"p{i}" for i in range(5)])

    def test_asyncio_concurrency_and_stream(self):
        rng = np.random.default_rng(5)
        xs = [rng.normal(0, 1.5, (2, HIDDEN)).astype(np.float32) for _ in range(24)]

        async def run():
            async with lmhead.AsyncLmHeadClient(self.server.target, auth_token=self.token) as client:
                info = await client.model_info()
                self.assertEqual(info.vocab_size, VOCAB)
                results = await asyncio.gather(*(client.compute_logits(x, top_k=3, request_id=str(i))
                                                 for i, x in enumerate(xs)))
                for i, (x, r) in enumerate(zip(xs, results)):
                    self.assertEqual(r.request_id, str(i))
                    self.check_rows(r, x.astype(np.float64), 3)
                async with client.stream() as session:
                    for i in range(20):
                        r = await session.step(xs[i], top_k=2)
                        self.check_rows(r, xs[i].astype(np.float64), 2)
                    with self.assertRaises(lmhead.InvalidArgument):
                        await session.step(np.zeros((1, 3), np.float32))
                    r = await session.step(xs[0], top_k=2)
                    self.assertEqual(len(r.rows), 2)

        asyncio.run(run())

    def test_decode_loop_with_a_numpy_stand_in_decoder(self):
        """examples/hf_decoder.py's loop: a decoder makes the hidden state, lmhead picks the token,
        the token is fed back. Greedy tokens equal the float64 reference head's on every step."""
        rng = np.random.default_rng(6)
        embed = rng.normal(0, 1, (VOCAB, HIDDEN)).astype(np.float32)
        mix = rng.normal(0, 1 / np.sqrt(HIDDEN), (HIDDEN, HIDDEN)).astype(np.float32)

        def decoder(tokens):  # stand-in for a transformer: a causal running state
            state = np.zeros(HIDDEN, np.float32)
            for t in tokens:
                state = np.tanh(state @ mix + embed[t]) * 4
            return state

        tokens = [1]
        agree = 0
        with self.client.stream() as session:
            for step in range(40):
                h = decoder(tokens)
                result = session.step(h, top_k=2)
                logits = h.astype(np.float64) @ self.w.T
                top2 = np.sort(logits)[-2:]
                if top2[1] - top2[0] > 2e-3:
                    agree += int(result.tokens[0] == int(np.argmax(logits)))
                else:
                    agree += 1  # a near tie: either token is right
                tokens.append(int(result.tokens[0]))
        self.assertEqual(agree, 40)
        self.assertGreater(len(set(tokens)), 3)


if __name__ == "__main__":
    unittest.main()
