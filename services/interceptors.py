"""One interceptor: status codes for camseg errors, and the RPC metrics.

CamsegError subclasses carry their status code; any other exception answers INTERNAL
with a generic message while its traceback goes to the log, never to the caller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from camseg.core.errors import CamsegError
from services.batching import Arrivals
from services.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

MAPPED = ("/camseg.v1.", "/inference.")
"""The services whose calls are counted and whose errors are mapped: camseg's own and the
Open Inference Protocol's (``inference.GRPCInferenceService``)."""


class ErrorsAndMetrics(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: ServiceMetrics, arrivals: Arrivals | None = None):
        self.metrics = metrics
        self.arrivals = arrivals
        # each method's wrapped handler, made once (with its labelled metric children) rather
        # than once a call; kept while the server hands over the same handler
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._counted: dict[tuple[str, str], Any] = {}

    def _counter(self, rpc: str, code: str) -> Any:
        c = self._counted.get((rpc, code))
        if c is None:
            c = self._counted[(rpc, code)] = self.metrics.requests.labels(rpc, code)
        return c

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(MAPPED):
            return handler
        if self.arrivals is not None:
            self.arrivals.arrived()  # before its message is read: the batcher sees it coming
        made = self._wrapped.get(method)
        if made is None or made[0] is not handler:
            made = self._wrapped[method] = (handler, self._wrap(method.rsplit("/", 1)[-1], handler))
        return made[1]

    def _wrap(self, rpc: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` counted, timed and its errors mapped to status codes."""
        latency, in_flight = self.metrics.latency.labels(rpc), self.metrics.in_flight.labels(rpc)

        async def finish(context: grpc.aio.ServicerContext, exc: BaseException | None, start: float) -> None:
            code = grpc.StatusCode.OK
            if isinstance(exc, asyncio.CancelledError):
                remaining = context.time_remaining()
                expired = remaining is not None and remaining <= 0
                code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            elif isinstance(exc, CamsegError):
                code = grpc.StatusCode[exc.code.value]
            elif exc is not None and not isinstance(exc, grpc.aio.AbortError):
                code = grpc.StatusCode.INTERNAL
            elif context.code() is not None and context.code() != grpc.StatusCode.OK:
                code = context.code()
            self._counter(rpc, code.name).inc()
            latency.observe(time.perf_counter() - start)
            in_flight.dec()
            if isinstance(exc, asyncio.CancelledError):
                return
            if isinstance(exc, CamsegError):
                await context.abort(code, exc.message)
            if exc is not None and code is grpc.StatusCode.INTERNAL:
                logger.error("%s failed", rpc, exc_info=exc)
                await context.abort(code, "internal error")

        def single(inner: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
                   ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
            """A call with one reply (from one request or a stream of them), counted and mapped."""

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                start = time.perf_counter()
                if self.arrivals is not None:
                    context.add_done_callback(self.arrivals.finished())
                in_flight.inc()
                try:
                    reply = await inner(request, context)
                except BaseException as exc:  # mapped to a status (or counted) in finish
                    await finish(context, exc, start)
                    raise
                await finish(context, None, start)
                return reply

            return unary

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                single(handler.unary_unary), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                single(handler.stream_unary), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)

        def streamed(inner_stream: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]
                     ) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
            """A server stream (from one request or a stream of them), counted and mapped."""

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                start = time.perf_counter()
                if self.arrivals is not None:
                    context.add_done_callback(self.arrivals.finished())
                in_flight.inc()
                try:
                    async for reply in inner_stream(request, context):
                        yield reply
                except BaseException as exc:
                    await finish(context, exc, start)
                    raise
                await finish(context, None, start)

            return stream

        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                streamed(handler.unary_stream), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                streamed(handler.stream_stream), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler
