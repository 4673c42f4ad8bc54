"""The load generator and the decoder simulator against a real server on loopback: counts and
JSON summaries, queue-full rejections reported by code, and the simulator reconnecting after the
server restarts.

Run: LMHEAD_BUILD_DIR=build .venv/bin/python tests/python/loadgen_test.py
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

import lmhead_testlib as lib


class LoadgenTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="lmhead_loadgen_")
        cls.ckpt = os.path.join(cls.tmp, "ckpt")
        lib.make_checkpoint(cls.ckpt, 8192, 512)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def bench(self, target, *flags):
        out = subprocess.run([lib.binary("lmhead-bench"), f"--target={target}", "--json", "--progress=false", *flags],
                             capture_output=True, text=True, timeout=120)
        return out.returncode, json.loads(out.stdout)

    def test_counts_and_json_for_each_mode(self):
        with lib.Server(self.ckpt) as server:
            for flags in (["--mode=stream", "--concurrency=4", "--count=120", "--rows=2", "--top_k=5"],
                          ["--mode=unary", "--concurrency=3", "--count=60", "--rows=3"],
                          ["--mode=stream", "--concurrency=2", "--count=40", "--rate=200"]):
                rc, summary = self.bench(server.target, *flags)
                count = int([f for f in flags if f.startswith("--count")][0].split("=")[1])
                rows = int(next((f for f in flags if f.startswith("--rows")), "--rows=1").split("=")[1])
                self.assertEqual(rc, 0, flags)
                self.assertEqual(summary["ok"], count, flags)
                self.assertEqual(summary["errors"], {}, flags)
                self.assertEqual(summary["rows"], count * rows, flags)
                lat = summary["latency_ms"]
                self.assertTrue(0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"], lat)
                self.assertGreater(summary["requests_per_second"], 0)

    def test_queue_full_is_reported_by_code(self):
        with lib.Server(self.ckpt, "--max_rows_per_request=4", "--max_batch_rows=4", "--max_queued_rows=4") as server:
            rc, summary = self.bench(server.target, "--mode=unary", "--concurrency=16", "--count=400", "--rows=4")
            self.assertGreater(summary["errors"].get("RESOURCE_EXHAUSTED", 0), 0, summary)
            self.assertGreater(summary["ok"], 0, summary)
            self.assertEqual(summary["ok"] + sum(summary["errors"].values()), 400)

    def test_decoder_simulator_reconnects_after_a_restart(self):
        port = lib.free_port()
        server = lib.Server(self.ckpt, port=port)
        sim = subprocess.Popen([lib.binary("lmhead-decoder-sim"), f"--target=127.0.0.1:{port}", "--sequences=2",
                                "--steps_per_second=20", "--duration=10s"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        server.stop()
        time.sleep(1)
        server = lib.Server(self.ckpt, port=port)
        try:
            out, err = sim.communicate(timeout=60)
        finally:
            server.stop()
        self.assertEqual(sim.returncode, 0, err)
        m = re.search(r"steps=(\d+) tokens_per_second=([\d.]+) errors=(\d+) reconnects=(\d+)", out)
        self.assertIsNotNone(m, out)
        steps, reconnects = int(m.group(1)), int(m.group(4))
        self.assertGreaterEqual(reconnects, 2, err)  # both sequences lost their stream...
        lost_at = [int(n) for n in re.findall(r"stream lost at step (\d+)", err)]
        self.assertGreater(min(lost_at), 0, err)
        # ...and kept decoding on the restarted server.
        self.assertGreater(steps, sum(lost_at), (out, err))


if __name__ == "__main__":
    unittest.main(verbosity=2)
