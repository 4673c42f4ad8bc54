"""Sync and asyncio clients for lmhead.v1.LmHead with the same surface.

    client = LmHeadClient("127.0.0.1:50051")
    result = client.compute_logits(hidden, top_k=5, sampling=Sampling(temperature=0.8, seed=1))
    with client.stream() as session:          # one StreamLogits call for a decode loop
        token = session.step(hidden_step).tokens[0]

Errors raise LmHeadError subclasses carrying the gRPC code and the server's message. A target
like dns:///lmhead:50051 balances round-robin over every address the name resolves to.
"""
from __future__ import annotations

import queue
from typing import Optional

import grpc

from lmhead._codec import make_request, parse_model_info, parse_response
from lmhead._types import LmHeadError, LogitsResult, ModelInfo, TlsConfig, error_for
from lmhead.v1 import lmhead_pb2 as pb
from lmhead.v1 import lmhead_pb2_grpc as pb_grpc

_SERVICE = "lmhead.v1.LmHead"


def _channel_setup(tls: Optional[TlsConfig], max_message_bytes: int):
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes),
               ("grpc.lb_policy_name", "round_robin")]
    credentials = None
    if tls is not None:
        credentials = grpc.ssl_channel_credentials(tls.root_certificates, tls.private_key, tls.certificate_chain)
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
    return options, credentials


def _metadata(auth_token: Optional[str]):
    return (("authorization", f"Bearer {auth_token}"),) if auth_token else ()


# grpc.health.v1.Health/Check, encoded by hand to avoid another dependency:
# HealthCheckRequest {string service = 1}; HealthCheckResponse {ServingStatus status = 1}, SERVING = 1.
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def _health_request(service: str) -> bytes:
    name = service.encode()
    assert len(name) < 128
    return b"\x0a" + bytes([len(name)]) + name


def _is_serving(response: bytes) -> bool:
    return response[:2] == b"\x08\x01"


def _raise(e: grpc.RpcError):
    raise error_for(e.code(), e.details() or "") from None


class LmHeadClient:
    """Blocking client; thread-safe (one channel shared by all calls)."""

    def __init__(self, target: str, *, tls: Optional[TlsConfig] = None, auth_token: Optional[str] = None,
                 timeout: float = 30.0, max_message_bytes: int = 256 << 20):
        options, credentials = _channel_setup(tls, max_message_bytes)
        self._channel = (grpc.secure_channel(target, credentials, options) if credentials is not None
                         else grpc.insecure_channel(target, options))
        self._stub = pb_grpc.LmHeadStub(self._channel)
        self._health = self._channel.unary_unary(_HEALTH_CHECK)
        self._metadata = _metadata(auth_token)
        self._timeout = timeout

    def compute_logits(self, hidden, **options) -> LogitsResult:
        """hidden: [rows, hidden] or [hidden]; options: top_k, logprob_token_ids, return_logits,
        logits_dtype, sampling, row_sampling, processed_logprobs, request_id."""
        request = make_request(hidden, **options)
        try:
            response = self._stub.ComputeLogits(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            _raise(e)
        return parse_response(response)

    def model_info(self) -> ModelInfo:
        try:
            return parse_model_info(self._stub.GetModelInfo(pb.ModelInfoRequest(), timeout=self._timeout,
                                                            metadata=self._metadata))
        except grpc.RpcError as e:
            _raise(e)

    def is_serving(self) -> bool:
        try:
            return _is_serving(self._health(_health_request(_SERVICE), timeout=self._timeout))
        except grpc.RpcError as e:
            _raise(e)

    def stream(self) -> "StreamSession":
        return StreamSession(self._stub, self._metadata)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_END = object()


class StreamSession:
    """One StreamLogits call. send() may run ahead of receive(); responses come in send order.
    A bad message raises its LmHeadError from receive() and the stream stays usable; a broken
    stream raises Unavailable (or the call's final code)."""

    def __init__(self, stub, metadata):
        self._requests: "queue.Queue" = queue.Queue()
        self._responses = stub.StreamLogits(iter(self._requests.get, _END), metadata=metadata)
        self._closed = False

    def send(self, hidden, **options) -> None:
        if self._closed:
            raise LmHeadError(grpc.StatusCode.FAILED_PRECONDITION, "the stream is closed")
        self._requests.put(make_request(hidden, **options))

    def receive(self) -> LogitsResult:
        try:
            response = next(self._responses)
        except StopIteration:
            raise error_for(grpc.StatusCode.OUT_OF_RANGE, "the stream has ended") from None
        except grpc.RpcError as e:
            _raise(e)
        return parse_response(response)

    def step(self, hidden, **options) -> LogitsResult:
        self.send(hidden, **options)
        return self.receive()

    def close(self) -> None:
        """Half-closes and waits for the server to finish the call (unread responses are dropped)."""
        if self._closed:
            return
        self._closed = True
        self._requests.put(_END)
        try:
            for _ in self._responses:
                pass
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                _raise(e)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncLmHeadClient:
    """asyncio client (grpc.aio) with LmHeadClient's surface; methods are coroutines."""

    def __init__(self, target: str, *, tls: Optional[TlsConfig] = None, auth_token: Optional[str] = None,
                 timeout: float = 30.0, max_message_bytes: int = 256 << 20):
        options, credentials = _channel_setup(tls, max_message_bytes)
        self._channel = (grpc.aio.secure_channel(target, credentials, options) if credentials is not None
                         else grpc.aio.insecure_channel(target, options))
        self._stub = pb_grpc.LmHeadStub(self._channel)
        self._health = self._channel.unary_unary(_HEALTH_CHECK)
        self._metadata = _metadata(auth_token)
        self._timeout = timeout

    async def compute_logits(self, hidden, **options) -> LogitsResult:
        request = make_request(hidden, **options)
        try:
            response = await self._stub.ComputeLogits(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            _raise(e)
        return parse_response(response)

    async def model_info(self) -> ModelInfo:
        try:
            return parse_model_info(await self._stub.GetModelInfo(pb.ModelInfoRequest(), timeout=self._timeout,
                                                                  metadata=self._metadata))
        except grpc.RpcError as e:
            _raise(e)

    async def is_serving(self) -> bool:
        try:
            return _is_serving(await self._health(_health_request(_SERVICE), timeout=self._timeout))
        except grpc.RpcError as e:
            _raise(e)

    def stream(self) -> "AsyncStreamSession":
        return AsyncStreamSession(self._stub, self._metadata)

    async def close(self):
        await self._channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


class AsyncStreamSession:
    """StreamSession for asyncio: await send / receive / step / close."""

    def __init__(self, stub, metadata):
        self._call = stub.StreamLogits(metadata=metadata)
        self._closed = False

    async def send(self, hidden, **options) -> None:
        try:
            await self._call.write(make_request(hidden, **options))
        except grpc.RpcError as e:
            _raise(e)

    async def receive(self) -> LogitsResult:
        try:
            response = await self._call.read()
        except grpc.RpcError as e:
            _raise(e)
        if response is grpc.aio.EOF:
            raise error_for(grpc.StatusCode.OUT_OF_RANGE, "the stream has ended")
        return parse_response(response)

    async def step(self, hidden, **options) -> LogitsResult:
        await self.send(hidden, **options)
        return await self.receive()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._call.done_writing()
            while await self._call.read() is not grpc.aio.EOF:
                pass
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                _raise(e)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
