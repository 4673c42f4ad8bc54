"""Python client for lmhead, the FP8 lm_head gRPC sidecar: hidden states in, tokens and logprobs out."""
from lmhead._types import (DeadlineExceeded, FailedPrecondition, InvalidArgument, LmHeadError, LogitsResult,
                           ModelInfo, ResourceExhausted, RowResult, Sampling, TlsConfig, Unauthenticated, Unavailable)
from lmhead.client import AsyncLmHeadClient, AsyncStreamSession, LmHeadClient, StreamSession
from lmhead.sharded import ShardedClient, ShardedStreamSession

__all__ = [
    "AsyncLmHeadClient", "AsyncStreamSession", "DeadlineExceeded", "FailedPrecondition", "InvalidArgument",
    "LmHeadClient", "LmHeadError", "LogitsResult", "ModelInfo", "ResourceExhausted", "RowResult", "Sampling",
    "ShardedClient", "ShardedStreamSession", "StreamSession", "TlsConfig", "Unauthenticated", "Unavailable",
]
