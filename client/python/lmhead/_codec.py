"""Tensors and options <-> lmhead.v1 messages. Accepts numpy arrays (float32, float16, and
bfloat16 through ml_dtypes) and torch tensors (CPU or CUDA, float32/float16/bfloat16)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from lmhead._types import LogitsResult, ModelInfo, RowResult, Sampling, code_from_int, error_for
from lmhead.v1 import lmhead_pb2 as pb

_NUMPY_DTYPES = {np.dtype(np.float32): pb.DTYPE_FP32, np.dtype(np.float16): pb.DTYPE_FP16}
try:  # bfloat16 numpy arrays come from ml_dtypes
    import ml_dtypes

    _NUMPY_DTYPES[np.dtype(ml_dtypes.bfloat16)] = pb.DTYPE_BF16
except ImportError:  # pragma: no cover - optional
    ml_dtypes = None


def _torch_payload(t):
    """(rows, dtype enum, bytes) of a torch tensor; one device-to-host copy for CUDA tensors."""
    import torch

    kinds = {torch.float32: pb.DTYPE_FP32, torch.float16: pb.DTYPE_FP16, torch.bfloat16: pb.DTYPE_BF16}
    if t.dtype not in kinds:
        raise TypeError(f"hidden states must be float32, float16 or bfloat16, not {t.dtype}")
    t = t.detach()
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2:
        raise ValueError(f"hidden states must be [rows, hidden] or [hidden], got shape {tuple(t.shape)}")
    t = t.contiguous().cpu()  # no-op for contiguous CPU tensors
    # Reinterpret the bits (bfloat16 has no numpy dtype) and hand protobuf one bytes copy.
    raw = t.view(torch.int16 if t.element_size() == 2 else torch.int32).numpy()
    return t.shape[0], kinds[t.dtype], raw.tobytes()


def hidden_payload(hidden):
    """(rows, dtype enum, bytes) from a numpy array or torch tensor [rows, hidden] or [hidden]."""
    if type(hidden).__module__.startswith("torch"):
        return _torch_payload(hidden)
    a = np.asarray(hidden)
    if a.dtype not in _NUMPY_DTYPES:
        hint = " (bfloat16 needs ml_dtypes)" if "bfloat16" in str(a.dtype) else ""
        raise TypeError(f"hidden states must be float32, float16 or bfloat16 arrays, not {a.dtype}{hint}")
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"hidden states must be [rows, hidden] or [hidden], got shape {a.shape}")
    a = np.ascontiguousarray(a)  # copies only when the layout is not row-major already
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a.shape[0], _NUMPY_DTYPES[a.dtype], a.tobytes()


def _sampling_proto(s: Sampling, out: pb.SamplingParams):
    if s.temperature is not None:
        out.temperature = s.temperature
    out.top_k = s.top_k
    if s.top_p is not None:
        out.top_p = s.top_p
    out.min_p = s.min_p
    if s.seed is not None:
        out.seed = s.seed
    out.step = s.step
    for token, bias in (s.logit_bias or {}).items():
        out.logit_bias[int(token)] = float(bias)
    out.allowed_token_ids.extend(int(i) for i in s.allowed_token_ids)
    out.banned_token_ids.extend(int(i) for i in s.banned_token_ids)
    if s.repetition_penalty is not None:
        out.repetition_penalty = s.repetition_penalty
    out.presence_penalty = s.presence_penalty
    out.frequency_penalty = s.frequency_penalty
    out.previous_token_ids.extend(int(i) for i in s.previous_token_ids)
    if s.keep_above is not None:
        out.keep_above = s.keep_above
        out.keep_tie_max_id = s.keep_tie_max_id


_LOGITS_DTYPES = {"float32": pb.DTYPE_FP32, "bfloat16": pb.DTYPE_BF16, "float16": pb.DTYPE_FP16}


def make_request(hidden, *, top_k: int = 0, logprob_token_ids: Sequence[int] = (), return_logits: bool = False,
                 logits_dtype: str = "float32", sampling: Optional[Sampling] = None,
                 row_sampling: Optional[Sequence[Sampling]] = None, processed_logprobs: bool = False,
                 request_id: str = "") -> pb.LogitsRequest:
    rows, dtype, data = hidden_payload(hidden)
    req = pb.LogitsRequest(request_id=request_id)
    req.hidden.rows = rows
    req.hidden.dtype = dtype
    req.hidden.data = data
    req.output.top_k = top_k
    req.output.logprob_token_ids.extend(int(i) for i in logprob_token_ids)
    req.output.return_logits = return_logits
    if return_logits:
        if logits_dtype not in _LOGITS_DTYPES:
            raise ValueError(f"logits_dtype must be one of {sorted(_LOGITS_DTYPES)}")
        req.output.logits_dtype = _LOGITS_DTYPES[logits_dtype]
    req.output.logprobs_mode = pb.LOGPROBS_MODE_PROCESSED if processed_logprobs else pb.LOGPROBS_MODE_RAW
    if sampling is not None:
        _sampling_proto(sampling, req.sampling)
    for s in row_sampling or ():
        _sampling_proto(s, req.row_sampling.add())
    return req


def _logits_array(resp: pb.LogitsResponse, rows: int) -> Optional[np.ndarray]:
    if not resp.logits:
        return None
    if resp.logits_dtype == pb.DTYPE_FP32:
        values = np.frombuffer(resp.logits, dtype="<f4")
    elif resp.logits_dtype == pb.DTYPE_FP16:
        values = np.frombuffer(resp.logits, dtype="<f2").astype(np.float32)
    else:  # bfloat16: the high half of a float32
        bits = np.frombuffer(resp.logits, dtype="<u2").astype(np.uint32) << 16
        values = bits.view(np.float32)
    return values.reshape(rows, -1)


def parse_response(resp: pb.LogitsResponse) -> LogitsResult:
    """A LogitsResult, or raises the typed LmHeadError a stream message carries."""
    if resp.error.code != 0:
        raise error_for(code_from_int(resp.error.code), resp.error.message)
    rows = []
    for r in resp.rows:
        sampled = r.HasField("sampled_id")
        rows.append(RowResult(
            argmax_id=r.argmax_id, max_logit=r.max_logit, logsumexp=r.logsumexp,
            top_ids=np.array(r.top_ids, dtype=np.int64), top_logits=np.array(r.top_logits, dtype=np.float32),
            top_logprobs=np.array(r.top_logprobs, dtype=np.float32),
            token_logprobs=np.array(r.token_logprobs, dtype=np.float32),
            sampled_id=r.sampled_id if sampled else None, sampled_logprob=r.sampled_logprob if sampled else None,
            seed=r.seed if sampled else None, logprob_logsumexp=r.logprob_logsumexp,
            sampled_score=r.sampled_score if sampled else None))
    return LogitsResult(request_id=resp.request_id, rows=rows, logits=_logits_array(resp, len(rows)),
                        queue_us=resp.timing.queue_us, compute_us=resp.timing.compute_us,
                        batch_rows=resp.timing.batch_rows)


def parse_model_info(p: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(**{f: getattr(p, f) for f in ModelInfo.__dataclass_fields__})
