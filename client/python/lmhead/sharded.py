"""A head split over vocab shards (servers started with --shard / --vocab_range), each possibly
with replicas: requests fan out to every shard at once and the compact per-shard results are
merged exactly (the same contract as the C++ client/shard_merge.h):

    logsumexp = logsumexp of the shards'; argmax = the best shard's; top-k = best k of the shards'
    top-k lists; logprob = shard logit - global normalizer; sample = the shard winner with the
    highest perturbed score (Gumbel-max over the union, so a seed draws the whole head's token);
    logits = the shards' columns side by side.

Rows whose sampling uses top_k / top_p / min_p take two rounds: the first gathers every shard's
best processed candidates, from which the whole head's kept set is computed (as in C++
client/shard_filters.h), and the second draws within that explicit set.

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


_MASS_ONE = float(1 << 40)


def _mass(z, m):
    """kernels/sampling_math.h TopPMass: exp(z - m) in float32, times 2^40, truncated."""
    return int(float(np.exp(np.float32(np.float32(z) - np.float32(m)))) * _MASS_ONE)


def _target(top_p, total):
    t = float(np.float32(top_p)) * float(total)
    target = int(t)
    if target < t:
        target += 1
    return max(target, 1)


def _needs_global_filter(s: Sampling) -> bool:
    greedy = s.temperature is not None and s.temperature < 1e-5
    return not greedy and (s.top_k > 0 or (s.top_p is not None and s.top_p < 1) or s.min_p > 0)


def _kept_set(s: Sampling, merged: RowResult, vocab: int, complete_above):
    """(keep_above, keep_tie_max_id) of the whole head's kept set, from merged processed candidates."""
    z = [float(v) for v in merged.top_logits]
    ids = [int(i) for i in merged.top_ids]
    last_id = vocab - 1
    m = np.float32(z[0])
    min_z = float(m + np.float32(np.log(np.float32(s.min_p)))) if s.min_p > 0 else -math.inf
    s0 = min(s.top_k, len(z)) if s.top_k > 0 else len(z)
    n = 0
    while n < s0 and math.isfinite(z[n]) and z[n] >= min_z:
        n += 1
    s0 = n
    top_p = 1.0 if s.top_p is None else s.top_p
    if top_p >= 1.0:
        return (z[s0 - 1], ids[s0 - 1]) if s.top_k > 0 else (min_z, last_id)
    mass = [_mass(v, m) for v in z[:s0]]
    total = sum(mass)
    if s.top_k == 0 and not complete_above(min_z):
        if s.min_p > 0:
            raise error_for(grpc.StatusCode.OUT_OF_RANGE, "top_p with min_p over vocab shards needs every token above "
                                                          "the min_p cut among the candidates; add top_k")
        total = int(math.exp(merged.logprob_logsumexp - float(m)) * _MASS_ONE)
    target = _target(top_p, total)
    cumulative = 0
    for i in range(s0):
        if mass[i] == 0:
            continue
        cumulative += mass[i]
        if cumulative < target:
            continue
        if s.top_k == 0:
            return z[i], last_id
        last = i
        while last + 1 < s0 and z[last + 1] == z[i]:
            last += 1
        return z[last], ids[last]
    raise error_for(grpc.StatusCode.OUT_OF_RANGE, f"the top_p nucleus spans more than the {len(z)} candidates the "
                                                  "shards returned; add top_k or raise the servers' --max_top_k")


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
    LmHeadClient (numpy / torch hidden states; sampling with every control)."""

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
            fixed = [s if s.seed is not None else dataclasses.replace(s, seed=random.getrandbits(63)) for s in specs]
            options[key] = fixed[0] if key == "sampling" else fixed
        return options

    def _fan_out(self, hidden, options):
        futures = [self._pool.submit(s.call, hidden, options) for s in self._shards]
        return [f.result() for f in futures]

    def _resolve_filters(self, hidden, options):
        """Rows with top_k / top_p / min_p: round 1 and per-row explicit kept sets for round 2."""
        shape = tuple(getattr(hidden, "shape", np.shape(hidden)))  # numpy arrays and torch tensors alike
        rows = int(shape[0]) if len(shape) == 2 else 1
        single = options.get("sampling")
        specs = [single] * rows if single is not None else list(options.get("row_sampling") or [])
        if len(self._shards) == 1 or not any(s is not None and _needs_global_filter(s) for s in specs):
            return options
        k = max((s.top_k if s.top_k > 0 else self._info.max_top_k) for s in specs if _needs_global_filter(s))
        if k > self._info.max_top_k:
            raise error_for(grpc.StatusCode.INVALID_ARGUMENT, f"sampling top_k {k} over vocab shards needs the "
                                                              f"servers' --max_top_k >= {k}")
        unfiltered = [dataclasses.replace(s, top_k=0, top_p=None, min_p=0.0) for s in specs]
        first = dict(top_k=k, processed_logprobs=True, row_sampling=unfiltered)
        parts = self._fan_out(hidden, first)
        merged = self._merge(parts, first)
        second = []
        for r, s in enumerate(specs):
            if not _needs_global_filter(s):
                second.append(s)
                continue

            def complete_above(t, r=r):
                return all(len(p.rows[r].top_logits) < k or p.rows[r].top_logits[-1] < t for p in parts)

            above, tie = _kept_set(s, merged.rows[r], self._info.vocab_size, complete_above)
            second.append(dataclasses.replace(s, top_k=0, top_p=None, min_p=0.0, keep_above=above,
                                              keep_tie_max_id=tie))
        options = dict(options)
        options.pop("sampling", None)
        options["row_sampling"] = second
        return options

    def compute_logits(self, hidden, **options) -> LogitsResult:
        options = self._resolve_filters(hidden, self._prepare(options))
        return self._merge(self._fan_out(hidden, options), options)

    def stream(self) -> "ShardedStreamSession":
        """One StreamLogits call per shard (one replica each); each step goes to all and is merged."""
        return ShardedStreamSession(self)

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
        top_k = options.get("top_k", 0)
        token_ids = list(options.get("logprob_token_ids", ()))
        rows = []
        for r in range(len(parts[0].rows)):
            shard_rows = [p.rows[r] for p in parts]
            norms = [row.logprob_logsumexp for row in shard_rows]  # -inf: a shard with no processed mass
            norm = _logsumexp(norms)
            best = min(shard_rows, key=lambda row: (-row.max_logit, row.argmax_id))
            candidates = sorted(((float(l), int(i)) for row in shard_rows for l, i in zip(row.top_logits, row.top_ids)),
                                key=lambda c: (-c[0], c[1]))[:top_k]
            token_logprobs = []
            for j, token in enumerate(token_ids):
                s = next(i for i, shard in enumerate(self._shards) if shard.begin <= token < shard.end)
                logit = -math.inf if norms[s] == -math.inf else float(shard_rows[s].token_logprobs[j]) + norms[s]
                token_logprobs.append(logit - norm)
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


class ShardedStreamSession:
    """A decode loop's stream over every shard: step() sends one message to each shard's stream,
    reads their answers and merges them (rows with top_k / top_p / min_p first take the unary
    candidate round). A bad message raises its error from every shard alike; the session goes on."""

    def __init__(self, client: ShardedClient):
        self._client = client
        self._sessions = [shard.clients[next(shard._next) % len(shard.clients)].stream() for shard in client._shards]

    def step(self, hidden, **options) -> LogitsResult:
        options = self._client._resolve_filters(hidden, self._client._prepare(options))
        for session in self._sessions:
            session.send(hidden, **options)
        parts, error = [], None
        for session in self._sessions:
            try:
                parts.append(session.receive())
            except LmHeadError as e:  # read every shard's answer to keep the streams in step
                error = error or e
        if error is not None:
            raise error
        return self._client._merge(parts, options)

    def close(self):
        for session in self._sessions:
            session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
