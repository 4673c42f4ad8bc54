"""Independent cross-checks of lmhead's FP8 codec and weight loading:
- the E4M3 encoder against ml_dtypes' float8_e4m3fn (every BF16 value, random floats, decode table);
- per_row / per_tensor / none quantization against a numpy + ml_dtypes re-implementation;
- checkpoints written by the reference `safetensors` library (single file, sharded, tied, FP8 with
  weight_scale) load identically to the demo tool's.

Run: LMHEAD_BUILD_DIR=build .venv/bin/python tests/python/quantization_crosscheck_test.py
"""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

import ml_dtypes
import numpy as np
from safetensors.numpy import load_file, save_file

import lmhead_testlib as lib

E4M3 = ml_dtypes.float8_e4m3fn


def lmhead_encode(values, tmp):
    src, dst = os.path.join(tmp, "in.f32"), os.path.join(tmp, "out.u8")
    values.astype("<f4").tofile(src)
    subprocess.run([lib.binary("lmhead-head-tool"), "encode", f"--in={src}", f"--out={dst}"], check=True)
    return np.fromfile(dst, dtype=np.uint8)


class CodecTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def test_every_bf16_value_matches_ml_dtypes(self):
        values = np.arange(65536, dtype=np.uint16).view(ml_dtypes.bfloat16).astype(np.float32)
        finite = np.isfinite(values) & (np.abs(values) <= 448)  # ml_dtypes does not saturate
        ours = lmhead_encode(values[finite], self.tmp)
        ref = values[finite].astype(E4M3).view(np.uint8)
        np.testing.assert_array_equal(ours, ref)

    def test_random_floats_match_ml_dtypes(self):
        rng = np.random.default_rng(0)
        values = np.concatenate([
            rng.normal(0, 1, 200000), rng.normal(0, 0.01, 200000), rng.uniform(-448, 448, 200000),
            rng.uniform(-2.0**-6, 2.0**-6, 200000)]).astype(np.float32)
        np.testing.assert_array_equal(lmhead_encode(values, self.tmp), values.astype(E4M3).view(np.uint8))

    def test_saturation_and_nan(self):
        values = np.array([449, 1e6, np.inf, -500, -np.inf, np.nan], dtype=np.float32)
        codes = lmhead_encode(values, self.tmp)
        self.assertEqual(list(codes[:5]), [0x7E, 0x7E, 0x7E, 0xFE, 0xFE])
        self.assertEqual(codes[5] & 0x7F, 0x7F)

    def test_decode_table_roundtrips(self):
        decoded = np.arange(256, dtype=np.uint8).view(E4M3).astype(np.float32)
        finite = ~np.isnan(decoded)
        ours = lmhead_encode(decoded[finite], self.tmp)
        np.testing.assert_array_equal(ours, np.arange(256, dtype=np.uint8)[finite])


def numpy_quantize(w, mode):
    """Reference quantizer: float32 scale = amax / 448, codes = RNE(w / scale) (ml_dtypes)."""
    w = w.astype(np.float32)
    if mode == "per_row":
        amax = np.abs(w).max(axis=1)
    elif mode == "per_tensor":
        amax = np.full(w.shape[0], np.abs(w).max(), dtype=np.float32)
    else:
        amax = np.full(w.shape[0], 448, dtype=np.float32)
    scales = np.where(amax > 0, amax / np.float32(448), np.float32(1)).astype(np.float32)
    codes = (w / scales[:, None]).astype(np.float32)
    return np.clip(codes, -448, 448).astype(E4M3).view(np.uint8), scales


class LoadingTest(unittest.TestCase):
    VOCAB, HIDDEN = 1000, 96

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp()
        cls.demo = os.path.join(cls.tmp, "demo")
        lib.make_checkpoint(cls.demo, cls.VOCAB, cls.HIDDEN, "--seed=3")
        cls.tensors = load_file(os.path.join(cls.demo, "model.safetensors"))  # reference reader
        with open(os.path.join(cls.demo, "config.json")) as f:
            cls.config = json.load(f)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def dump(self, ckpt, *flags):
        return lib.dump_head(ckpt, os.path.join(self.tmp, "dump.safetensors"), *flags)

    def write_reference(self, name, tensors, config=None, shards=None):
        """Writes a checkpoint with the reference safetensors library (optionally sharded)."""
        out = os.path.join(self.tmp, name)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(config or self.config, f)
        if shards is None:
            save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
            return out
        weight_map = {}
        for i, names in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file({n: tensors[n] for n in names}, os.path.join(out, file))
            weight_map.update({n: file for n in names})
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
        return out

    def test_quantization_matches_numpy_for_every_mode(self):
        w = self.tensors["lm_head.weight"].astype(np.float32)
        for mode in ("per_row", "per_tensor", "none"):
            codes, scales, meta = self.dump(self.demo, f"--scale_mode={mode}")
            ref_codes, ref_scales = numpy_quantize(w, mode)
            self.assertEqual(meta["scale_mode"], mode)
            np.testing.assert_array_equal(scales, ref_scales, err_msg=mode)
            np.testing.assert_array_equal(codes, ref_codes, err_msg=mode)

    def test_bf16_format_keeps_the_weights(self):
        weight, scales, meta = self.dump(self.demo, "--weight_format=bf16")
        self.assertIsNone(scales)
        self.assertEqual(meta["weight_format"], "bf16")
        np.testing.assert_array_equal(weight.view(np.uint16), self.tensors["lm_head.weight"].view(np.uint16))

    def test_reference_writer_single_and_sharded_load_identically(self):
        base = self.dump(self.demo)
        single = self.write_reference("ref_single", self.tensors)
        sharded = self.write_reference("ref_sharded", self.tensors,
                                       shards=[["model.norm.weight"], ["lm_head.weight"]])
        for ckpt in (single, sharded):
            got = self.dump(ckpt)
            np.testing.assert_array_equal(got[0], base[0])
            np.testing.assert_array_equal(got[1], base[1])

    def test_tied_embedding_is_served(self):
        tensors = {"model.embed_tokens.weight": self.tensors["lm_head.weight"],
                   "model.norm.weight": self.tensors["model.norm.weight"]}
        config = dict(self.config, tie_word_embeddings=True)
        got = self.dump(self.write_reference("ref_tied", tensors, config))
        base = self.dump(self.demo)
        self.assertEqual(got[2]["weight_name"], "model.embed_tokens.weight")
        np.testing.assert_array_equal(got[0], base[0])

    def test_prequantized_fp8_checkpoint_keeps_codes_and_scales(self):
        w = self.tensors["lm_head.weight"].astype(np.float32)
        codes, scales = numpy_quantize(w, "per_row")
        for name, scale in (("per_row", scales), ("per_tensor", scales[:1])):
            stored = codes if name == "per_row" else numpy_quantize(w, "per_tensor")[0]
            ckpt = self.write_reference(f"ref_fp8_{name}", {
                "lm_head.weight": stored.view(E4M3),
                "lm_head.weight_scale": scale.astype(np.float32)})
            got_codes, got_scales, meta = self.dump(ckpt)
            self.assertEqual(meta["scale_mode"], name)
            np.testing.assert_array_equal(got_codes, stored)
            np.testing.assert_array_equal(got_scales, np.broadcast_to(scale, (self.VOCAB,)))


if __name__ == "__main__":
    unittest.main(verbosity=2)
