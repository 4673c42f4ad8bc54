"""The Python ShardedClient over separate shard servers on loopback equals one unsharded server on
the same checkpoint (ids equal, logprobs within 1e-5, identical seeded samples — top_k / top_p /
min_p included —, concatenated logits), including an uneven 3-way split, and survives losing one
replica of a shard."""
import os
import shutil
import tempfile
import unittest

import numpy as np

import lmhead
import lmhead_testlib as lib

VOCAB, HIDDEN = 1200, 64


class ShardedClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="lmhead_sharded_")
        cls.ckpt = os.path.join(cls.tmp, "ckpt")
        lib.make_checkpoint(cls.ckpt, VOCAB, HIDDEN, "--seed=5")
        cls.whole = lib.Server(cls.ckpt)
        cls.client = lmhead.LmHeadClient(cls.whole.target)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.whole.stop()
        shutil.rmtree(cls.tmp)

    def compare(self, got, want):
        for g, w in zip(got.rows, want.rows):
            self.assertEqual(g.argmax_id, w.argmax_id)
            self.assertAlmostEqual(g.logsumexp, w.logsumexp, delta=1e-5)
            np.testing.assert_array_equal(g.top_ids, w.top_ids)
            np.testing.assert_allclose(g.top_logprobs, w.top_logprobs, atol=1e-5)
            np.testing.assert_allclose(g.token_logprobs, w.token_logprobs, atol=1e-5)
            self.assertEqual(g.sampled_id, w.sampled_id)
            if g.sampled_id is not None:
                self.assertAlmostEqual(g.sampled_logprob, w.sampled_logprob, delta=1e-5)
        if want.logits is not None:
            np.testing.assert_array_equal(got.logits, want.logits)

    def test_shards_merge_to_the_unsharded_result(self):
        x = np.random.default_rng(1).normal(0, 20, (4, HIDDEN)).astype(np.float32)
        samplings = [lmhead.Sampling(temperature=0.0), lmhead.Sampling(temperature=0.7, seed=3, step=1),
                     lmhead.Sampling(seed=9, logit_bias={1100: 5.0}, banned_token_ids=[0]),
                     lmhead.Sampling(seed=4, allowed_token_ids=[10, 20, 30], repetition_penalty=1.3,
                                     previous_token_ids=[10])]
        options = dict(top_k=12, logprob_token_ids=[0, 399, 400, 1199], return_logits=True, row_sampling=samplings)
        for layout in (["--shard=0/2", "--shard=1/2"], ["--vocab_range=700:1200", "--vocab_range=0:50",
                                                        "--vocab_range=50:700"]):
            servers = [lib.Server(self.ckpt, flag) for flag in layout]
            try:
                with lmhead.ShardedClient([[s.target] for s in servers]) as sharded:
                    self.assertEqual(sharded.model_info().vocab_size, VOCAB)
                    for processed in (False, True):
                        want = self.client.compute_logits(x, processed_logprobs=processed, **options)
                        got = sharded.compute_logits(x, processed_logprobs=processed, **options)
                        self.compare(got, want)
                    # top_k / top_p / min_p: two rounds, the same tokens as one server.
                    filtered = [lmhead.Sampling(seed=20 + r, temperature=0.8, top_k=5) if r % 3 == 0 else
                                lmhead.Sampling(seed=20 + r, top_p=0.8) if r % 3 == 1 else
                                lmhead.Sampling(seed=20 + r, min_p=0.1, top_p=0.9) for r in range(4)]
                    want = self.client.compute_logits(x, row_sampling=filtered, top_k=3)
                    got = sharded.compute_logits(x, row_sampling=filtered, top_k=3)
                    self.compare(got, want)
                    # A sharded stream session: steps merged like unary calls; a bad step raises.
                    with sharded.stream() as session:
                        for step in range(10):
                            s = lmhead.Sampling(seed=7, step=step, temperature=0.9, top_p=0.9)
                            self.compare(session.step(x[step % 4], sampling=s, top_k=4),
                                         self.client.compute_logits(x[step % 4], sampling=s, top_k=4))
                        with self.assertRaises(lmhead.InvalidArgument):
                            session.step(np.zeros(3, np.float32))
                        self.compare(session.step(x, top_k=2), self.client.compute_logits(x, top_k=2))
            finally:
                for s in servers:
                    s.stop()

    def test_a_lost_replica_is_retried_on_another(self):
        servers = [lib.Server(self.ckpt, "--shard=0/2"), lib.Server(self.ckpt, "--shard=0/2"),
                   lib.Server(self.ckpt, "--shard=1/2")]
        try:
            with lmhead.ShardedClient([[servers[0].target, servers[1].target], [servers[2].target]]) as sharded:
                x = np.random.default_rng(2).normal(0, 20, (2, HIDDEN)).astype(np.float32)
                want = self.client.compute_logits(x, top_k=5)
                for i in range(20):
                    if i == 5:
                        servers[0].stop()
                    self.compare(sharded.compute_logits(x, top_k=5), want)
                servers[2].stop()
                with self.assertRaises(lmhead.Unavailable) as e:
                    sharded.compute_logits(x)
                self.assertIn("vocab range [608, 1200) has no live replica", e.exception.message)
        finally:
            for s in servers:
                s.stop()


if __name__ == "__main__":
    unittest.main()
