"""A head split over vocab shards (servers started with --shard / --vocab_range), each possibly
with replicas: requests fan out to every shard at once and the compact per-shard results are
merged exactly (the same contract as the C++ client/shard_merge.h):

    logsumexp = logsumexp of the shards'; argmax = the best shard's; top-k = best k of the shards'
    top-k lists; logprob = shard logit - global normalizer; sample = the shard winner with the
    highest perturbed score (Gumbel-max over the union, so a seed draws the whole head's token);
    logits = the shards' columns side by side.

A failed replica is retried on the next one of its shard; when a vocab range has no live replica
the request raises Unavailable naming the range — never a partial answer.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import random
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence

import grpc
import numpy as np

from lmhead._types import LmHeadError, LogitsResult, ModelInfo, RowResult, Sampling, error_for
from lmhead.client import LmHeadClient

_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
              grpc.StatusCode.CANCELLED, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNKNOWN,
              grpc.StatusCode.INTERNAL}


def _logsumexp(values):
    m = max(values)
    if not math.isfinite(m):
        return m
    return m + math.log(sum(math.exp(v - m) for v in values))


class _Shard:
    def __init__(self, addresses, clients, begin, end):
        self.addresses, self.clients, self.begin, self.end = addresses, clients, begin, end
        self._next = itertools.count()

    def call(self, hidden, options):
        failures = []
        start = next(self._next)
        for i in range(len(self.clients)):
            k = (start + i) % len(self.clients)
            try:
                return self.clients[k].compute_logits(hidden, **options)
            except LmHeadError as e:
                if e.code not in _RETRYABLE:
                    raise
                failures.append(f"{self.addresses[k]}: {e.message}")
        raise error_for(grpc.StatusCode.UNAVAILABLE, f"vocab range [{self.begin}, {self.end}) has no live replica "
                                                     f"({'; '.join(failures)})")


class ShardedClient:
    """shards: one list of replica addresses per shard (any order). Same compute_logits surface as
    LmHeadClient; top_k / top_p / min_p sampling need the whole distribution and raise
    NotImplementedError with more than one shard."""

    def __init__(self, shards: Sequence[Sequence[str]], **client_options):
        built = []
        for addresses in shards:
            clients = [LmHeadClient(a, **client_options) for a in addresses]
            info = None
            for c in clients:
                try:
                    info = c.model_info()
                    break
                except LmHeadError:
                    continue
            if info is None:
                raise error_for(grpc.StatusCode.UNAVAILABLE, f"no replica of shard {list(addresses)} answers")
            built.append((_Shard(list(addresses), clients, info.vocab_begin, info.vocab_end or info.vocab_size), info))
        built.sort(key=lambda b: b[0].begin)
        self._shards = [b[0] for b in built]
        expected = 0
        for s in self._shards:
            if s.begin != expected:
                raise ValueError(f"the shards do not tile the vocabulary: [{s.begin}, {s.end}) follows rows up to {expected}")
            expected = s.end
        first = built[0][1]
        if expected != first.vocab_size:
            raise ValueError(f"the shards cover rows [0, {expected}) of a {first.vocab_size}-row head")
        self._info = dataclasses.replace(first, vocab_begin=0, vocab_end=first.vocab_size,
                                         weight_bytes=sum(b[1].weight_bytes for b in built),
                                         reference_bytes=sum(b[1].reference_bytes for b in built))
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self._shards)) * 4)

    def model_info(self) -> ModelInfo:
        return self._info

    def _prepare(self, options):
        options = dict(options)
        for key in ("sampling", "row_sampling"):
            value = options.get(key)
            if value is None:
                continue
            specs = [value] if key == "sampling" else list(value)
            fixed = []
            for s in specs:
                if len(self._shards) > 1 and (s.top_k > 0 or (s.top_p is not None and s.top_p < 1) or s.min_p > 0):
                    raise NotImplementedError("top_k, top_p and min_p sampling are not supported over vocab shards")
                fixed.append(s if s.seed is not None else dataclasses.replace(s, seed=random.getrandbits(63)))
            options[key] = fixed[0] if key == "sampling" else fixed
        return options

    def compute_logits(self, hidden, **options) -> LogitsResult:
        options = self._prepare(options)
        futures = [self._pool.submit(s.call, hidden, options) for s in self._shards]
        parts = [f.result() for f in futures]
        return self._merge(parts, options)

    def close(self):
        self._pool.shutdown()
        for s in self._shards:
            for c in s.clients:
                c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _merge(self, parts: List[LogitsResult], options) -> LogitsResult:
        sampling = options.get("sampling") is not None or bool(options.get("row_sampling"))
        processed = bool(options.get("processed_logprobs")) and sampling
        top_k = options.get("top_k", 0)
        token_ids = list(options.get("logprob_token_ids", ()))
        rows = []
        for r in range(len(parts[0].rows)):
            shard_rows = [p.rows[r] for p in parts]
            norms = [(-math.inf if processed and row.sampled_id is None else row.logprob_logsumexp) for row in shard_rows]
            norm = _logsumexp(norms)
            best = min(shard_rows, key=lambda row: (-row.max_logit, row.argmax_id))
            candidates = sorted(((float(l), int(i)) for row, n in zip(shard_rows, norms) if n != -math.inf or not processed
                                 for l, i in zip(row.top_logits, row.top_ids)), key=lambda c: (-c[0], c[1]))[:top_k]
            token_logprobs = []
            for j, token in enumerate(token_ids):
                s = next(i for i, shard in enumerate(self._shards) if shard.begin <= token < shard.end)
                token_logprobs.append(float(shard_rows[s].token_logprobs[j]) + norms[s] - norm)
            winners = [row for row in shard_rows if row.sampled_id is not None]
            winner = min(winners, key=lambda row: (-row.sampled_score, row.sampled_id)) if winners else None
            rows.append(RowResult(
                argmax_id=best.argmax_id, max_logit=best.max_logit,
                logsumexp=float(_logsumexp([row.logsumexp for row in shard_rows])),
                top_ids=np.array([c[1] for c in candidates], dtype=np.int64),
                top_logits=np.array([c[0] for c in candidates], dtype=np.float32),
                top_logprobs=np.array([c[0] - norm for c in candidates], dtype=np.float32),
                token_logprobs=np.array(token_logprobs, dtype=np.float32),
                sampled_id=winner.sampled_id if winner else None,
                sampled_logprob=(winner.sampled_logprob + winner.logprob_logsumexp - norm) if winner else None,
                seed=winner.seed if winner else None,
                logprob_logsumexp=norm, sampled_score=winner.sampled_score if winner else None))
        logits = None
        if parts[0].logits is not None:
            logits = np.concatenate([p.logits for p in parts], axis=1)
        return LogitsResult(request_id=parts[0].request_id, rows=rows, logits=logits,
                            queue_us=max(p.queue_us for p in parts), compute_us=max(p.compute_us for p in parts),
                            batch_rows=max(p.batch_rows for p in parts))
