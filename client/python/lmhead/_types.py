"""Plain result types, sampling settings and errors of the lmhead client (no gRPC objects)."""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

import grpc
import numpy as np


@dataclasses.dataclass
class Sampling:
    """Per-row token selection (lmhead.v1.SamplingParams; ranges and order of steps in the proto).

    temperature None = 1, 0 = greedy; top_p None = 1; seed None = drawn by the server (returned in
    RowResult.seed); step makes (seed, step) reproducible across a decode loop.
    """

    temperature: Optional[float] = None
    top_k: int = 0
    top_p: Optional[float] = None
    min_p: float = 0.0
    seed: Optional[int] = None
    step: int = 0
    logit_bias: Optional[Dict[int, float]] = None
    allowed_token_ids: Sequence[int] = ()
    banned_token_ids: Sequence[int] = ()
    repetition_penalty: Optional[float] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    previous_token_ids: Sequence[int] = ()
    # An explicit kept set replacing top_k / top_p / min_p (ShardedClient's second round).
    keep_above: Optional[float] = None
    keep_tie_max_id: int = 0


@dataclasses.dataclass
class RowResult:
    argmax_id: int
    max_logit: float
    logsumexp: float
    top_ids: np.ndarray        # int64 [top_k], descending logit (ties: lower id)
    top_logits: np.ndarray     # float32 [top_k]
    top_logprobs: np.ndarray   # float32 [top_k]
    token_logprobs: np.ndarray  # float32, parallel to logprob_token_ids
    sampled_id: Optional[int] = None
    sampled_logprob: Optional[float] = None
    seed: Optional[int] = None
    # What vocab shards need to merge exactly: the normalizer of the logprobs (logit = logprob +
    # this) and the winner's perturbed score.
    logprob_logsumexp: float = 0.0
    sampled_score: Optional[float] = None

    @property
    def token(self) -> int:
        """The sampled token when sampling was asked, else the greedy one."""
        return self.sampled_id if self.sampled_id is not None else self.argmax_id


@dataclasses.dataclass
class LogitsResult:
    request_id: str
    rows: List[RowResult]
    logits: Optional[np.ndarray]  # float32 [rows, vocab] when return_logits
    queue_us: int = 0
    compute_us: int = 0
    batch_rows: int = 0

    @property
    def tokens(self) -> np.ndarray:
        """One token per row: sampled where sampling was asked, else the argmax."""
        return np.array([r.token for r in self.rows], dtype=np.int64)

    @property
    def argmax_ids(self) -> np.ndarray:
        return np.array([r.argmax_id for r in self.rows], dtype=np.int64)


@dataclasses.dataclass
class ModelInfo:
    vocab_size: int
    hidden_size: int
    weight_format: str
    scale_mode: str
    weight_bytes: int
    reference_bytes: int
    model_path: str
    model_name: str
    backend: str
    weight_name: str
    source_dtype: str
    tied_embeddings: bool
    logit_scale: float
    final_logit_softcapping: float
    max_rows_per_request: int
    max_top_k: int
    max_message_bytes: int
    max_sampling_top_k: int
    vocab_begin: int  # rows this server holds: [vocab_begin, vocab_end) of vocab_size
    vocab_end: int
    backend_tuning: str  # what the backend chose for this machine and head at startup


@dataclasses.dataclass
class TlsConfig:
    """PEM bytes (or None): the CA to trust (None = system roots), and a client certificate + key
    for mutual TLS. server_name overrides the name checked in the server's certificate."""

    root_certificates: Optional[bytes] = None
    certificate_chain: Optional[bytes] = None
    private_key: Optional[bytes] = None
    server_name: Optional[str] = None

    @classmethod
    def from_files(cls, ca=None, cert=None, key=None, server_name=None) -> "TlsConfig":
        def read(path):
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()
        return cls(read(ca), read(cert), read(key), server_name)


class LmHeadError(Exception):
    """A failed call or stream message: `code` is the grpc.StatusCode, `message` the server's text."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidArgument(LmHeadError):
    pass


class ResourceExhausted(LmHeadError):
    """The server's queue is full: retry later or elsewhere."""


class Unavailable(LmHeadError):
    pass


class DeadlineExceeded(LmHeadError):
    pass


class Unauthenticated(LmHeadError):
    pass


class FailedPrecondition(LmHeadError):
    """The head is still loading."""


_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
}


def error_for(code: grpc.StatusCode, message: str) -> LmHeadError:
    return _ERRORS.get(code, LmHeadError)(code, message)


_CODES_BY_VALUE = {c.value[0]: c for c in grpc.StatusCode}


def code_from_int(value: int) -> grpc.StatusCode:
    return _CODES_BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)
