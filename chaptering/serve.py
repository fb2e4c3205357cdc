"""The FastAPI service: chapters for a transcript, feedback on them, and which model answered.

It serves whatever version holds the MLflow alias `champion` (the base model until the first promotion)
and polls the registry off the request path: a new champion is loaded beside the old one and swapped
in with one reference assignment, so requests already running finish on the model they started with.

Limits are enforced before any model work: body size (413), transcript length (413), field sanity
(422, strict types, the schema's one text rule); the body must arrive within a read timeout (408);
generation runs in a bounded worker pool (requests queue instead of piling onto the CPU) under a
deadline checked inside the decoding loops, over prompts the chapterer keeps inside the model's context,
so a slow request ends with 503/504 rather than hanging. `run_server` adds what only the HTTP layer can
do: a deadline for request headers, a keep-alive timeout and a connection cap.

Feedback is authenticated before its body is even parsed, must cite a prediction the service made, and
honours an idempotency key. Answers name models without local paths and errors without exception text
(the server log has both).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chaptering.schema import FeedbackEvent, PredictedChapter, Prediction, TextModel, Transcript, text_problem

if TYPE_CHECKING:  # pragma: no cover
    from chaptering.config import Settings

log = logging.getLogger("chaptering.serve")

# Field bounds no real transcript comes near, but that keep one request from costing unbounded compute:
# a 5 MB single "word" would otherwise become a million-token prompt line.
MAX_SEGMENT_CHARS = 20_000
MAX_SECONDS = 7 * 24 * 3600.0
MAX_ID_CHARS = 255  # what the feedback store can index
_GRACE_S = 2.0  # the worker's own deadline check normally answers first; this catches a stuck prefill

Loader = Callable[[str, "Settings"], Any]


# --------------------------------------------------------------------------------------- wire models


class SegmentIn(TextModel):
    """A segment as clients may send it: finite, bounded times and text."""

    model_config = ConfigDict(extra="ignore")

    text: str = Field(max_length=MAX_SEGMENT_CHARS)
    speaker: str | None = Field(default=None, max_length=MAX_ID_CHARS)
    start: float | None = Field(default=None, ge=0, le=MAX_SECONDS, allow_inf_nan=False)
    end: float | None = Field(default=None, ge=0, le=MAX_SECONDS, allow_inf_nan=False)


class TranscriptIn(TextModel):
    """Request body of POST /v1/chapters (DESIGN.md transcript; `chapters`, if sent, are ignored)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    source: str = Field(default="external", max_length=MAX_ID_CHARS)
    language: str | None = Field(default="en", max_length=32)
    segments: list[SegmentIn] = Field(min_length=1)
    meta: dict[str, Any] = Field(default_factory=dict)

    def to_transcript(self) -> Transcript:
        return Transcript.model_validate({**self.model_dump(), "chapters": None})


class ChaptersOut(BaseModel):
    prediction_id: str = Field(description="Cite this in POST /v1/feedback")
    transcript_id: str
    model_version: str = Field(description="Registered version number, or `base` before any promotion")
    model: str
    chapters: list[PredictedChapter]
    youtube: str | None = Field(description="YouTube description chapters; null without timestamps")
    webvtt: str | None = Field(description="WebVTT chapters track; null without timestamps")
    health: str | None = None
    latency_s: float = Field(description="Seconds in the service: waiting for a model slot + generating")
    generation_s: float | None = Field(default=None, description="Seconds the model itself took")
    warnings: list[str] = Field(default_factory=list)


class FeedbackIn(FeedbackEvent):
    """Request body of POST /v1/feedback: the DESIGN feedback event, plus an optional idempotency key
    (or send it as the `Idempotency-Key` header)."""

    idempotency_key: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)

    def event(self) -> FeedbackEvent:
        return FeedbackEvent.model_validate(self.model_dump(exclude={"idempotency_key"}))


class FeedbackOut(BaseModel):
    id: int = Field(description="Sequence number of the stored event")
    prediction_id: str | None
    kind: str
    replayed: bool = Field(default=False, description="True when the idempotency key was seen before: "
                                                      "this is the first request's event, stored once")


class ModelOut(BaseModel):
    version: str
    model: str
    source: str = Field(description="registry | base (no champion yet) | fixed (--model given)")
    loaded_at: str
    metrics: dict[str, float] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    registry_champion: str | None = None
    last_check: str | None = None
    last_error: str | None = None


class HealthOut(BaseModel):
    status: str
    model_version: str | None = None


class ErrorOut(BaseModel):
    detail: str
    errors: list[dict[str, Any]] = Field(default_factory=list)


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": why}
    for code, why in (
        (401, "missing or wrong bearer token"),
        (408, "the request body did not arrive in time"),
        (409, "idempotency key reused for a different event"),
        (413, "request body or transcript too large"),
        (415, "unsupported content type"),
        (422, "invalid transcript or feedback"),
        (503, "no model loaded, or the queue did not free up in time"),
        (504, "generation did not finish in time"),
    )
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _error_list(exc: ValidationError | RequestValidationError) -> list[dict[str, Any]]:
    """pydantic errors without `input`/`ctx`: they may echo megabytes back or hold non-JSON objects."""
    return [
        {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type", "")}
        for e in exc.errors()
    ]


def _summary(errors: list[dict[str, Any]], limit: int = 3) -> str:
    parts = []
    for e in errors[:limit]:
        loc = ".".join(x for x in e["loc"] if x != "body")
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = f"; and {len(errors) - limit} more" if len(errors) > limit else ""
    return "; ".join(parts) + more if parts else "invalid request"


def _invalid(exc: ValidationError) -> HTTPException:
    errors = _error_list(exc)
    return HTTPException(422, detail={"detail": _summary(errors), "errors": errors})


W = TypeVar("W", bound=BaseModel)


def parse_body(model: type[W], raw: bytes) -> W:
    """A JSON body -> `model`, strictly (`true` is not 1.0, "3" is not 3), the same way on every
    endpoint: malformed JSON, bad UTF-8 and invalid fields are all 422 with the field and the problem."""
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        bad_text = _bad_text(raw) if any(e["type"] == "json_invalid" for e in exc.errors()) else None
        if bad_text is not None:  # the schema's text rule in the schema's words, not the parser's
            raise HTTPException(422, detail={"detail": bad_text, "errors": [
                {"loc": bad_text.split(": ", 1)[0].split("."), "msg": bad_text, "type": "value_error"}]}) from None
        raise _invalid(exc) from None


def _bad_text(raw: bytes) -> str | None:
    """"loc: problem" when `raw` is JSON that only the text rule refuses (pydantic's parser rejects a
    lone surrogate escape as malformed JSON; Python's accepts it), else None."""
    import json

    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None

    def walk(value: Any, loc: str) -> str | None:
        if isinstance(value, str):
            problem = text_problem(value)
            return f"{loc or 'body'}: text {problem}" if problem else None
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            found = walk(key, loc) if isinstance(key, str) else None
            found = found or walk(item, f"{loc}.{key}" if loc else str(key))
            if found:
                return found
        return None

    return walk(obj, "")


def _json_content_type(request: Request) -> None:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise HTTPException(415, detail=f"unsupported content type {ctype!r}: send application/json")


def public_name(name: str) -> str:
    """A model label without local paths: `base:/srv/models/x` -> `base:x`, `/tmp/run/adapter` ->
    `local:adapter`; registry URIs, hub ids and baseline names pass unchanged."""
    if name.startswith("models:/"):
        return name
    prefix, sep, rest = name.partition(":")
    if not sep:
        prefix, rest = "local", name
    path = Path(rest)
    local = path.is_absolute() or rest.startswith((".", "~")) or ("/" in rest and path.exists())
    if not local:
        return name
    return f"{prefix}:{path.name or 'model'}"


# ------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class LiveModel:
    """One loaded chapterer and what it is; replaced whole, never mutated."""

    chapterer: Any
    version: str
    name: str
    source: str
    loaded_at: str
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class ModelUnavailable(RuntimeError):
    """No model could be loaded (the error says why)."""


class ModelHolder:
    """Holds the live model; `reload_now` follows the `champion` alias, a thread polls it."""

    def __init__(self, settings: Settings, loader: Loader, spec: str = "champion") -> None:
        self.settings, self.loader, self.spec = settings, loader, spec
        self._live: LiveModel | None = None
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.registry_champion: str | None = None
        self.last_check: str | None = None
        self.last_error: str | None = None

    @property
    def follows_registry(self) -> bool:
        return self.spec == "champion"

    @property
    def live(self) -> LiveModel | None:
        return self._live

    def _failed(self, exc: Exception, what: str) -> str:
        """Log the whole error; keep only its type for /v1/model (exception text can name local paths)."""
        log.warning("%s: %s: %s", what, type(exc).__name__, exc)
        self.last_error = f"{what}: {type(exc).__name__} (details in the server log)"
        return self.last_error

    def current(self) -> LiveModel:
        """The live model, loading it first if nothing is loaded yet (an app run without lifespan)."""
        live = self._live
        if live is None:
            try:
                self.reload_now()
            except Exception as exc:
                raise ModelUnavailable(self._failed(exc, "model load failed")) from exc
            live = self._live
        if live is None:  # pragma: no cover - reload_now always loads when nothing is live
            raise ModelUnavailable(self.last_error or "no model loaded")
        return live

    def reload_now(self) -> bool:
        """Load the model the registry names if it is not the live one; True when it swapped."""
        with self._reload_lock:
            target = self._target()
            if target is None:
                return False
            spec, version, source = target
            t0 = time.perf_counter()
            chapterer = self.loader(spec, self.settings)
            bound_generation(chapterer)
            metrics, details = self._describe(version, source)
            new = LiveModel(chapterer, version, str(getattr(chapterer, "name", spec)), source, _now(),
                            metrics, details)
            old, self._live = self._live, new  # the swap: one reference assignment
            self.last_error = None
            log.info("serving %s (version %s, was %s), loaded in %.1f s", new.name, version,
                     old.version if old else None, time.perf_counter() - t0)
            return True

    def _target(self) -> tuple[str, str, str] | None:
        """(spec to load, version label, source), or None to keep the live model."""
        live = self._live
        if not self.follows_registry:
            return None if live is not None else (self.spec, self.spec, "fixed")
        from chaptering import registry

        version = registry.champion_version(self.settings)
        self.registry_champion, self.last_check = version, _now()
        if version is None:
            # No champion: the base model at start-up; a vanished alias later is not a reason to downgrade.
            return None if live is not None else ("base", "base", "base")
        if live is not None and live.version == version:
            self.last_error = None  # the registry answers and names what we serve: nothing is wrong
            return None
        return f"models:/{self.settings.registered_model}/{version}", version, "registry"

    def _describe(self, version: str, source: str) -> tuple[dict[str, float], dict[str, Any]]:
        """Metrics and provenance of a registered version (informational: never blocks a load)."""
        if source != "registry":
            return {}, {}
        from chaptering import registry

        try:
            row = next((r for r in registry.list_versions(self.settings) if r["version"] == version), None)
            if row is None:
                return {}, {}
            metrics = dict(row.get("metrics") or {})
            if not metrics and self.registry_champion == version:
                report = registry.champion_report(self.settings)
                if report is not None:
                    metrics = {k: float(v["mean"]) for k, v in report.aggregate.items() if "mean" in v}
            details = {k: row.get(k) for k in ("aliases", "created", "decision", "base_model",
                                               "prompt_version", "run_id", "previous_champion")}
            if isinstance(details.get("base_model"), str):
                details["base_model"] = public_name(details["base_model"])
            return metrics, details
        except Exception as exc:  # noqa: BLE001 - a metrics lookup must not stop serving
            log.warning("could not read metrics of version %s: %s", version, exc)
            return {}, {}

    # -- polling -------------------------------------------------------------------------------------

    def start_polling(self) -> None:
        if not self.follows_registry or self.settings.serve.poll_seconds <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="chaptering-champion-poller", daemon=True)
        self._thread.start()

    def stop_polling(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.serve.poll_seconds):
            try:
                self.reload_now()
            except Exception as exc:  # noqa: BLE001 - keep serving the old model, report why
                self._failed(exc, "champion reload failed, still serving the old model")


# ------------------------------------------------------------------------------------ bounded predict


class GenerationTimeout(RuntimeError):
    def __init__(self, queued: bool) -> None:
        self.queued = queued
        super().__init__("timed out waiting for a free model slot" if queued else "generation timed out")


_deadline = threading.local()  # the running request's deadline (time.monotonic), per worker thread


def _past_deadline() -> bool:
    limit = getattr(_deadline, "value", None)
    return limit is not None and time.monotonic() >= limit


def bound_generation(chapterer: Any) -> None:
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
    def _job(chapterer: Any, transcript: Transcript, deadline: float, started: threading.Event) -> Prediction:
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

    async def run(self, chapterer: Any, transcript: Transcript) -> Prediction:
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


def server_config(settings: Settings, app: Any, host: str | None = None, port: int | None = None,
                  log_level: str = "info") -> Any:
    """uvicorn's Config for `app` with the serve.* limits on slow and numerous clients."""
    import uvicorn

    serve = settings.serve
    return uvicorn.Config(
        app, host=host or serve.host, port=serve.port if port is None else port, log_level=log_level,
        http=header_timeout_protocol(serve.header_timeout_s), timeout_keep_alive=serve.keep_alive_s,
        limit_concurrency=serve.max_connections,  # h11's 16 KB bound on request line + headers stays
    )


def run_server(settings: Settings, host: str | None = None, port: int | None = None,
               model_spec: str = "champion") -> None:
    """`chaptering serve`: the app on uvicorn with every server-side timeout of `server_config`."""
    import uvicorn

    uvicorn.Server(server_config(settings, create_app(settings, model_spec=model_spec), host, port)).run()


class RetentionSweeper:
    """Drops stored transcripts past serve.transcript_retention_days, at most once per `every_s`
    (called at start-up and after each stored prediction, off the event loop)."""

    def __init__(self, store: Any, days: float | None, every_s: float = 3600.0) -> None:
        self.store, self.days, self.every_s = store, days, every_s
        self._last = float("-inf")
        self._lock = threading.Lock()

    def maybe_purge(self) -> int:
        if self.days is None or time.monotonic() - self._last < self.every_s:
            return 0
        if not self._lock.acquire(blocking=False):
            return 0  # another thread is purging
        try:
            self._last = time.monotonic()
            purged = self.store.purge_transcripts(datetime.now(UTC) - timedelta(days=self.days))
        except Exception as exc:  # noqa: BLE001 - retention must never fail a request
            log.warning("transcript retention sweep failed: %s: %s", type(exc).__name__, exc)
            return 0
        finally:
            self._lock.release()
        if purged:
            log.info("dropped %d stored transcripts older than %g days", purged, self.days)
        return purged


# ------------------------------------------------------------------------------------------ the app


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def _default_loader(spec: str, settings: Settings) -> Any:
    """`factory.load_chapterer`; a local folder given as the model must hold safetensors only (registry
    versions are checked by `registry.fetch_model`)."""
    from chaptering.factory import load_chapterer

    path = Path(spec)
    if path.is_dir():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise ValueError(f"{path}: refusing pickled weight files {pickles}: serve safetensors only")
    return load_chapterer(spec, settings)


_UPLOAD_TYPES = ("multipart/form-data",)


async def _read_transcript(request: Request, settings: Settings) -> Transcript:
    """JSON body or a multipart upload (`file`: .vtt/.srt/.json/.jsonl, optional `id`) -> transcript."""
    from starlette.formparsers import MultiPartException

    from chaptering.io import InputError, transcript_from_upload

    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    try:
        if ctype.startswith(_UPLOAD_TYPES):
            try:
                form = await request.form(max_files=1, max_fields=4)
            except MultiPartException as exc:  # starlette's own words for the client's mistake
                raise HTTPException(422, detail=f"malformed multipart body: {exc.message}") from None
            except Exception as exc:  # noqa: BLE001 - malformed multipart is the client's problem
                log.info("malformed multipart body: %s: %s", type(exc).__name__, exc)
                raise HTTPException(422, detail="malformed multipart body") from None
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise HTTPException(422, detail="multipart upload needs a file field named 'file'")
            try:
                parsed = transcript_from_upload(upload.filename or "", await upload.read())
            except InputError as exc:
                raise HTTPException(422, detail=str(exc)) from None
            data = parsed.model_dump()
            override = form.get("id")
            if isinstance(override, str) and override.strip():
                data["id"] = override.strip()
            incoming = TranscriptIn.model_validate(data)
        elif ctype == "application/json" or ctype.endswith("+json"):
            incoming = parse_body(TranscriptIn, await request.body())
        else:
            raise HTTPException(415, detail=f"unsupported content type {ctype!r}: send application/json "
                                            "or a multipart/form-data upload")
        limit = settings.serve.max_segments
        if len(incoming.segments) > limit:
            raise HTTPException(413, detail=f"transcript has {len(incoming.segments)} segments, more than "
                                            f"the limit of {limit} (serve.max_segments)")
        return incoming.to_transcript()
    except ValidationError as exc:
        raise _invalid(exc) from None


def _tracks(pred: Prediction, transcript: Transcript) -> tuple[str | None, str | None, list[str]]:
    """YouTube text and WebVTT chapters track, or None with the reason (no timestamps, equal starts)."""
    from chaptering.io import chapters_vtt, chapters_youtube

    times = [x for s in transcript.segments for x in (s.start, s.end) if x is not None]
    try:
        youtube = chapters_youtube(pred.chapters)
        last = max((c.start or 0.0) for c in pred.chapters)
        webvtt = chapters_vtt(pred.chapters, max([last, *times]))
    except ValueError as exc:
        return None, None, [f"no chapter tracks: {exc}"]
    return youtube, webvtt, []


def _openapi_feedback_body() -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/FeedbackIn"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _openapi_chapters_body() -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/TranscriptIn"}
    upload = {
        "type": "object",
        "required": ["file"],
        "additionalProperties": False,
        "properties": {
            "file": {"type": "string", "format": "binary", "description": ".vtt, .srt, .json or .jsonl"},
            "id": {"type": "string", "description": "transcript id (default: the file name's stem)"},
        },
    }
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": ref}, "multipart/form-data": {"schema": upload}}}}


def create_app(settings: Settings, chapterer_loader: Loader | None = None, model_spec: str = "champion") -> FastAPI:
    """The service over `settings`. `model_spec` other than `champion` pins one model (no polling);
    `chapterer_loader(spec, settings)` replaces `factory.load_chapterer` (tests)."""
    from chaptering.feedback import FeedbackStore, IdempotencyConflict, InvalidFeedback, UnknownPrediction

    serve = settings.serve
    if serve.require_token and not serve.token:
        raise ValueError("serve.require_token is set but serve.token is empty: set CHAPTERING_SERVE__TOKEN "
                         "(feedback would otherwise be open to anyone who reaches the port)")
    holder = ModelHolder(settings, chapterer_loader or _default_loader, model_spec)
    runner = PredictRunner(serve.max_concurrency, serve.generation_timeout_s)
    store = FeedbackStore(settings.feedback_db)
    sweeper = RetentionSweeper(store, serve.transcript_retention_days)
    bearer = HTTPBearer(auto_error=False, description="serve.token, when set")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(holder.reload_now)  # fail fast at start-up: a broken champion is loud
        await run_in_threadpool(sweeper.maybe_purge)
        holder.start_polling()
        try:
            yield
        finally:
            holder.stop_polling()
            runner.shutdown()
            store.close()

    app = FastAPI(title="chaptering", version="1", lifespan=lifespan,
                  description="Chapters for video transcripts from the registered `champion` model.")
    app.add_middleware(BodyLimit, limit=serve.max_request_bytes, read_timeout_s=serve.request_read_timeout_s,
                       path_limits={"/v1/feedback": min(serve.max_feedback_bytes, serve.max_request_bytes)})
    app.state.settings, app.state.models, app.state.runner, app.state.store = settings, holder, runner, store
    app.state.reload_now = holder.reload_now

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _error_list(exc)
        return JSONResponse({"detail": _summary(errors), "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = exc.detail if isinstance(exc.detail, dict) else {"detail": str(exc.detail), "errors": []}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    def _check_token(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        token = settings.serve.token
        if not token:
            return
        given = creds.credentials if creds is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, detail="missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    async def _live() -> LiveModel:
        try:
            return await run_in_threadpool(holder.current)
        except ModelUnavailable:
            raise HTTPException(503, detail="no model loaded (the server log says why)") from None

    def _record(transcript: Transcript, pred: Prediction, version: str) -> str:
        pid = store.record_prediction(transcript, pred.chapters, version)
        sweeper.maybe_purge()
        return pid

    @app.post("/v1/chapters", response_model=ChaptersOut, openapi_extra=_openapi_chapters_body(),
              responses={k: v for k, v in _ERRORS.items() if k != 401})
    async def chapters(request: Request) -> ChaptersOut:
        """Chapters for one transcript (JSON body, or a .vtt/.srt upload as multipart field `file`)."""
        transcript = await _read_transcript(request, settings)
        live = await _live()
        t0 = time.perf_counter()
        try:
            pred = await runner.run(live.chapterer, transcript)
        except GenerationTimeout as exc:
            limit = settings.serve.generation_timeout_s
            if exc.queued:
                raise HTTPException(503, detail=f"server busy: no model slot freed within {limit} s",
                                    headers={"Retry-After": "5"}) from None
            raise HTTPException(504, detail=f"generation exceeded {limit} s (serve.generation_timeout_s)") from None
        pid = await run_in_threadpool(_record, transcript, pred, live.version)
        youtube, webvtt, warnings = _tracks(pred, transcript)
        return ChaptersOut(prediction_id=pid, transcript_id=transcript.id, model_version=live.version,
                           model=public_name(pred.model), chapters=pred.chapters, youtube=youtube, webvtt=webvtt,
                           health=pred.meta.get("health"), latency_s=round(time.perf_counter() - t0, 3),
                           generation_s=pred.meta.get("latency_s"), warnings=warnings)

    @app.post("/v1/feedback", response_model=FeedbackOut, status_code=201, responses=_ERRORS,
              dependencies=[Depends(_check_token)], openapi_extra=_openapi_feedback_body())
    async def feedback(
        request: Request,
        idempotency_key: str | None = Header(
            default=None, alias="Idempotency-Key", min_length=1, max_length=MAX_ID_CHARS,
            description="Send the same key when retrying: the event is stored once"),
    ) -> Any:
        """Store an edit (corrected chapters) or a rating for a prediction this service made.

        The token is checked before the body is read (the route declares no body parameter, so FastAPI
        parses nothing first): strangers get 401, not schema hints."""
        _json_content_type(request)
        incoming = parse_body(FeedbackIn, await request.body())
        key = idempotency_key or incoming.idempotency_key
        if idempotency_key and incoming.idempotency_key and idempotency_key != incoming.idempotency_key:
            raise HTTPException(422, detail="the Idempotency-Key header and the idempotency_key field differ")
        event = incoming.event()
        try:
            seq, replayed = await run_in_threadpool(store.add_once, event, key)
        except IdempotencyConflict as exc:
            raise HTTPException(409, detail=str(exc)) from None
        except (UnknownPrediction, InvalidFeedback) as exc:
            raise HTTPException(422, detail=str(exc)) from None
        except (OverflowError, ValueError) as exc:  # e.g. a timestamp that cannot be moved to UTC
            log.info("feedback refused: %s: %s", type(exc).__name__, exc)
            raise HTTPException(422, detail="invalid feedback: a value cannot be stored (timestamp out of "
                                            "range?)") from None
        out = FeedbackOut(id=seq, prediction_id=event.prediction_id, kind=event.kind, replayed=replayed)
        headers = {"Idempotent-Replayed": "true"} if replayed else None
        return JSONResponse(out.model_dump(mode="json"), status_code=201, headers=headers)

    @app.get("/v1/model", response_model=ModelOut, responses={503: _ERRORS[503]})
    async def model() -> ModelOut:
        """The version answering requests now, its metrics, and what the registry last said."""
        live = await _live()
        return ModelOut(version=live.version, model=public_name(live.name), source=live.source,
                        loaded_at=live.loaded_at,
                        metrics=live.metrics, details=live.details, registry_champion=holder.registry_champion,
                        last_check=holder.last_check, last_error=holder.last_error)

    @app.get("/healthz", response_model=HealthOut, responses={503: {"model": HealthOut}})
    async def healthz() -> Any:
        """200 once a model is loaded (readiness); 503 before."""
        live = holder.live
        if live is None:
            return JSONResponse({"status": "loading", "model_version": None}, status_code=503)
        return HealthOut(status="ok", model_version=live.version)

    _add_transcript_schema(app)
    return app


def _add_transcript_schema(app: FastAPI) -> None:
    """The hand-written request bodies refer to TranscriptIn and FeedbackIn: put them (and their parts)
    in components."""
    plain: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = plain()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (TranscriptIn, FeedbackIn):
                extra = model.model_json_schema(ref_template="#/components/schemas/{model}")
                defs = extra.pop("$defs", {})
                components.update({**defs, model.__name__: extra})
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

