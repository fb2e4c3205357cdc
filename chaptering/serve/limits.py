"""Limits on one request's cost: body size and read deadline, bounded generation, slow headers."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chaptering.schema import Chapterer, Prediction, Transcript

log = logging.getLogger("chaptering.serve")

_GRACE_S = 2.0  # the worker's own deadline check normally answers first; this catches a stuck prefill


# ------------------------------------------------------------------------------------ bounded predict


class GenerationTimeout(RuntimeError):
    def __init__(self, queued: bool) -> None:
        self.queued = queued
        super().__init__("timed out waiting for a free model slot" if queued else "generation timed out")


_deadline = threading.local()  # the running request's deadline (time.monotonic), per worker thread


def _past_deadline() -> bool:
    limit = getattr(_deadline, "value", None)
    return limit is not None and time.monotonic() >= limit


def bound_generation(chapterer: Chapterer) -> None:
    """Make `chapterer.model.generate` and the structured decoder (`should_stop`) honour the per-thread
    deadline: decoding stops at it, and no new window starts after it. A no-op for chapterers without a
    generating model (baselines)."""
    if hasattr(chapterer, "should_stop"):
        chapterer.should_stop = _past_deadline
    model = getattr(chapterer, "model", None)
    generate = getattr(model, "generate", None)
    if generate is None or getattr(generate, "_chaptering_bounded", False):
        return
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _PastDeadline(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            hit = _past_deadline()
            return torch.full((input_ids.shape[0],), hit, dtype=torch.bool, device=input_ids.device)

    def bounded(*args: Any, **kwargs: Any) -> Any:
        if _past_deadline():
            raise GenerationTimeout(queued=False)
        criteria = StoppingCriteriaList([*(kwargs.pop("stopping_criteria", None) or []), _PastDeadline()])
        return generate(*args, stopping_criteria=criteria, **kwargs)

    bounded._chaptering_bounded = True  # type: ignore[attr-defined]
    model.generate = bounded


class PredictRunner:
    """At most `workers` predictions at once (a FIFO queue behind them), each under one deadline that
    covers waiting and generating."""

    def __init__(self, workers: int, timeout_s: float) -> None:
        self.workers, self.timeout_s = max(1, workers), timeout_s
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="chaptering-predict")
            return self._pool

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _job(chapterer: Chapterer, transcript: Transcript, deadline: float, started: threading.Event) -> Prediction:
        started.set()
        if time.monotonic() >= deadline:
            raise GenerationTimeout(queued=True)
        _deadline.value = deadline
        try:
            pred = chapterer.predict(transcript)
        finally:
            _deadline.value = None
        if time.monotonic() > deadline:  # decoding was cut short: the answer is truncated, not usable
            raise GenerationTimeout(queued=False)
        return pred

    async def run(self, chapterer: Chapterer, transcript: Transcript) -> Prediction:
        deadline = time.monotonic() + self.timeout_s
        started = threading.Event()
        future = self._executor().submit(self._job, chapterer, transcript, deadline, started)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s + _GRACE_S)
        except TimeoutError:
            future.cancel()  # a queued job never starts; a running one stops at its deadline
            raise GenerationTimeout(queued=not started.is_set()) from None


# ------------------------------------------------------------------------------------- body limiting


class BodyLimit:
    """Refuse bodies over their limit with 413 before any parsing, declared or streamed, and bodies that
    do not arrive within `read_timeout_s` with 408 (and a closed connection): a client that sends a
    byte now and then cannot hold a connection and its buffer for ever. `path_limits` sets a smaller
    limit for some paths (a feedback event is kilobytes)."""

    def __init__(self, app: ASGIApp, limit: int, read_timeout_s: float = 30.0,
                 path_limits: dict[str, int] | None = None) -> None:
        self.app, self.limit, self.read_timeout_s = app, limit, read_timeout_s
        self.path_limits = path_limits or {}

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, detail: str,
                      close: bool = False) -> None:
        headers = {"connection": "close"} if close else None
        await JSONResponse({"detail": detail, "errors": []}, status_code=status, headers=headers)(
            scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope.get("path", ""), self.limit)
        setting = "serve.max_feedback_bytes" if limit != self.limit else "serve.max_request_bytes"
        too_big = f"request body exceeds {limit} bytes ({setting})"
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await self._refuse(scope, receive, send, 400, "invalid Content-Length header")
                return
            if int(declared) > limit:
                await self._refuse(scope, receive, send, 413, too_big, close=True)
                return
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                await self._refuse(scope, receive, send, 408, f"request body not received within "
                                   f"{self.read_timeout_s:g} s (serve.request_read_timeout_s)", close=True)
                return
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await self._refuse(scope, receive, send, 413, too_big, close=True)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# ------------------------------------------------------------------------------------ slow clients


def header_timeout_protocol(timeout_s: float) -> type:
    """uvicorn's h11 protocol with a deadline for a request's line and headers.

    uvicorn times out idle keep-alive connections only: a client that connects and then sends a header
    byte now and then (or nothing at all) holds its connection for ever. This closes a connection whose
    next request has not got its headers complete `timeout_s` after the connection opened or the last
    response ended. Bodies are bounded by `BodyLimit`'s read timeout.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self._header_timer = self.loop.call_later(timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            idle = self.cycle is None or self.cycle.response_complete
            if idle and self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.info("closing a connection whose request headers did not arrive within %g s", timeout_s)
                self.transport.close()

    return HeaderTimeoutH11Protocol
