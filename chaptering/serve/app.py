"""The FastAPI app: `create_app`, its routes (chapters, feedback, model, health) and transcript retention."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from chaptering.schema import Prediction, Transcript
from chaptering.serve.holder import LiveModel, Loader, ModelHolder, ModelUnavailable, _default_loader
from chaptering.serve.limits import BodyLimit, GenerationTimeout, PredictRunner
from chaptering.serve.wire import (
    _ERRORS,
    MAX_ID_CHARS,
    ChaptersOut,
    FeedbackIn,
    FeedbackOut,
    HealthOut,
    ModelOut,
    TranscriptIn,
    _error_list,
    _invalid,
    _json_content_type,
    _summary,
    parse_body,
    public_name,
)

if TYPE_CHECKING:  # pragma: no cover
    from chaptering.config import Settings

log = logging.getLogger("chaptering.serve")


# ---------------------------------------------------------------------------------------- retention


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
