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

Layout (each module imports only the ones above it): `wire` (request/response models, body parsing),
`limits` (body size and read deadline, bounded generation, slow headers), `holder` (the live model, the
registry poller, hot swap), `app` (`create_app`, the routes, transcript retention), `server` (`run_server`
on uvicorn). Everything other code imports from `chaptering.serve` is re-exported here.
"""

from __future__ import annotations

from chaptering.serve.app import RetentionSweeper, create_app
from chaptering.serve.holder import LiveModel, Loader, ModelHolder, ModelUnavailable
from chaptering.serve.limits import (
    _GRACE_S,
    BodyLimit,
    GenerationTimeout,
    PredictRunner,
    bound_generation,
    header_timeout_protocol,
)
from chaptering.serve.server import run_server, server_config
from chaptering.serve.wire import (
    MAX_ID_CHARS,
    MAX_SECONDS,
    MAX_SEGMENT_CHARS,
    ChaptersOut,
    ErrorOut,
    FeedbackIn,
    FeedbackOut,
    HealthOut,
    ModelOut,
    SegmentIn,
    TranscriptIn,
    parse_body,
    public_name,
)

__all__ = [
    "MAX_ID_CHARS",
    "MAX_SECONDS",
    "MAX_SEGMENT_CHARS",
    "_GRACE_S",
    "BodyLimit",
    "ChaptersOut",
    "ErrorOut",
    "FeedbackIn",
    "FeedbackOut",
    "GenerationTimeout",
    "HealthOut",
    "LiveModel",
    "Loader",
    "ModelHolder",
    "ModelOut",
    "ModelUnavailable",
    "PredictRunner",
    "RetentionSweeper",
    "SegmentIn",
    "TranscriptIn",
    "bound_generation",
    "create_app",
    "header_timeout_protocol",
    "parse_body",
    "public_name",
    "run_server",
    "server_config",
]
